#!/usr/bin/env bash
# Put an EmoEdge bundle on a Jetson over ssh: copy it, check and install it, (re)start the service,
# and print `emoedge doctor` from the device.
#
#   tools/flash_jetson.sh USER@HOST bundle.tar.gz [--ssh-opts "-p 2222 -i key"] [--no-start]
#
# The device needs JetPack 6.x with python3-venv and python3-libnvinfer (see docs/jetson.md), sshd,
# and sudo for USER (it asks for the password on the terminal when sudo needs one).
set -euo pipefail

usage() { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; }

if [ $# -lt 2 ]; then usage >&2; exit 2; fi
case "$1" in -h|--help) usage; exit 0 ;; esac
TARGET="$1"
BUNDLE="$2"
shift 2
SSH_OPTS=""
START=1
while [ $# -gt 0 ]; do
  case "$1" in
    --ssh-opts) SSH_OPTS="${2?--ssh-opts needs a value}"; shift 2 ;;
    --no-start) START=0; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "flash_jetson.sh: unknown option '$1'" >&2; exit 2 ;;
  esac
done

[[ "$TARGET" == *@* ]] || { echo "flash_jetson.sh: '$TARGET' is not USER@HOST" >&2; exit 2; }
[ -f "$BUNDLE" ] || { echo "flash_jetson.sh: bundle '$BUNDLE' not found (make one with: emoedge bundle --config FILE --out $BUNDLE)" >&2; exit 2; }
tar tzf "$BUNDLE" emoedge-bundle/manifest.json >/dev/null 2>&1 \
  || { echo "flash_jetson.sh: '$BUNDLE' is not an emoedge bundle (no emoedge-bundle/manifest.json inside)" >&2; exit 2; }

# shellcheck disable=SC2206  # the options are words on purpose
SSH=(ssh $SSH_OPTS)
# scp spells the port -P where ssh spells it -p.
# shellcheck disable=SC2206
SCP=(scp ${SSH_OPTS//-p /-P })
REMOTE_DIR="/tmp/emoedge-flash-$$"
NAME="$(basename "$BUNDLE")"

step() { echo "==> $*"; }

step "copying $BUNDLE to $TARGET:$REMOTE_DIR"
"${SSH[@]}" "$TARGET" "mkdir -p '$REMOTE_DIR'"
"${SCP[@]}" "$BUNDLE" "$TARGET:$REMOTE_DIR/$NAME"

step "checking the manifest and installing (sudo on the device)"
"${SSH[@]}" -t "$TARGET" "set -e; cd '$REMOTE_DIR'; tar xzf '$NAME'; sudo ./emoedge-bundle/install.sh"

if [ "$START" -eq 1 ]; then
  step "starting the service (the first start builds TensorRT engines: minutes)"
  "${SSH[@]}" -t "$TARGET" "sudo systemctl restart emoedge.service; sleep 3; systemctl --no-pager --lines=15 status emoedge.service || true"
fi

step "emoedge doctor on $TARGET"
"${SSH[@]}" "$TARGET" "sudo -u emoedge env EMOEDGE_MODELS=/opt/emoedge/models EMOEDGE_CACHE=/var/cache/emoedge /opt/emoedge/venv/bin/emoedge doctor --config /etc/emoedge/config.toml" || true

"${SSH[@]}" "$TARGET" "rm -rf '$REMOTE_DIR'"
step "done: follow the service with: ssh $TARGET journalctl -u emoedge -f"
