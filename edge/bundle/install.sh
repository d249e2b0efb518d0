#!/usr/bin/env bash
# Install (or remove) an EmoEdge bundle on a Jetson or any Linux machine.
#
#   sudo ./install.sh                          install into /opt/emoedge, /etc/emoedge, enable the service
#   sudo ./install.sh --uninstall              remove all of that again
#   ./install.sh --root DIR --no-systemd       install into DIR (for tests; no service, no user)
#
# The manifest is checked first: a missing, altered or unexpected file stops the install before
# anything is written. Running it again with the same bundle changes nothing; with a newer bundle it
# replaces the models and EmoEdge, keeping a changed config as config.toml.bak.
set -euo pipefail

usage() {
  sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
  cat <<'USAGE'
options:
  --root DIR          install under DIR instead of /
  --no-systemd        do not create the service user, write no unit into systemd, enable nothing
  --uninstall         remove what an install put there (service, venv, models, config, engine cache)
  --python PY         interpreter for the virtual environment (default: python3)
  --pip-args ARGS     extra pip arguments, e.g. "--no-index --find-links /path" on an offline device
  --user NAME         user the service runs as (default: emoedge)
  --check-only        check the bundle's manifest and stop
USAGE
}

ROOT=""
SYSTEMD=1
UNINSTALL=0
CHECK_ONLY=0
PYTHON=python3
PIP_ARGS=""
SERVICE_USER=emoedge
while [ $# -gt 0 ]; do
  case "$1" in
    --root) ROOT="${2:?--root needs a folder}"; shift 2 ;;
    --no-systemd) SYSTEMD=0; shift ;;
    --uninstall) UNINSTALL=1; shift ;;
    --check-only) CHECK_ONLY=1; shift ;;
    --python) PYTHON="${2:?--python needs an interpreter}"; shift 2 ;;
    --pip-args) PIP_ARGS="${2?--pip-args needs a value}"; shift 2 ;;
    --user) SERVICE_USER="${2:?--user needs a name}"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [ -n "$ROOT" ]; then
  mkdir -p "$ROOT"
  ROOT="$(cd "$ROOT" && pwd)"
fi
PREFIX="$ROOT/opt/emoedge"
CONFDIR="$ROOT/etc/emoedge"
UNITDIR="$ROOT/etc/systemd/system"
CACHE="$ROOT/var/cache/emoedge"
UNIT="$UNITDIR/emoedge.service"
VENV="$PREFIX/venv"

say() { echo "emoedge install: $*"; }
die() { echo "emoedge install: error: $*" >&2; exit 1; }

if [ -z "$ROOT" ] && [ "$(id -u)" -ne 0 ]; then
  die "installing into / needs root: run it with sudo (or use --root DIR --no-systemd for a folder)"
fi
have_systemctl() { [ "$SYSTEMD" -eq 1 ] && command -v systemctl >/dev/null 2>&1; }

if [ "$UNINSTALL" -eq 1 ]; then
  if have_systemctl; then
    systemctl disable --now emoedge.service 2>/dev/null || true
  fi
  rm -f "$UNIT"
  if have_systemctl; then systemctl daemon-reload || true; fi
  rm -rf "$PREFIX" "$CONFDIR" "$CACHE"
  say "removed $PREFIX, $CONFDIR, $CACHE and $UNIT"
  if [ "$SYSTEMD" -eq 1 ] && id "$SERVICE_USER" >/dev/null 2>&1; then
    say "the user '$SERVICE_USER' is kept (remove it with: sudo userdel $SERVICE_USER)"
  fi
  exit 0
fi

command -v "$PYTHON" >/dev/null 2>&1 || die "'$PYTHON' not found: install Python 3.10 or newer (JetPack 6 ships python3.10)"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
  || die "$("$PYTHON" -V 2>&1) is too old: EmoEdge needs Python 3.10 or newer"

# 1. The manifest, before anything is written: every listed file present with its sha256, nothing extra.
"$PYTHON" - "$HERE" <<'PY' || die "the bundle failed its manifest check: nothing was installed"
import hashlib, json, sys
from pathlib import Path

here = Path(sys.argv[1])
try:
    manifest = json.loads((here / "manifest.json").read_text())
    files = manifest["files"]
except (OSError, ValueError, KeyError) as exc:
    sys.exit(f"manifest.json missing or unreadable: {exc}")
problems = []
for name, record in sorted(files.items()):
    path = here / name
    if not path.is_file():
        problems.append(f"missing: {name}")
        continue
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != record["sha256"]:
        problems.append(f"altered: {name} (sha256 {digest[:12]}..., manifest says {record['sha256'][:12]}...)")
present = {p.relative_to(here).as_posix() for p in here.rglob("*") if p.is_file()}
for name in sorted(present - set(files) - {"manifest.json"}):
    problems.append(f"not in the manifest: {name}")
for line in problems:
    print("  " + line, file=sys.stderr)
if problems:
    sys.exit(1)
print(f"emoedge install: manifest ok: {len(files)} files, emoedge {manifest.get('emoedge_version')}, "
      f"models {', '.join(manifest.get('models', {})) or 'none'}")
PY
if [ "$CHECK_ONLY" -eq 1 ]; then exit 0; fi

WHEELS=("$HERE"/wheels/emoedge-*.whl)
WHEEL="${WHEELS[0]}"
[ -f "$WHEEL" ] || die "no wheels/emoedge-*.whl in the bundle"

# 2. A virtual environment that sees JetPack's TensorRT and OpenCV (system site packages).
mkdir -p "$PREFIX" "$CONFDIR" "$CACHE"
if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV (with system site packages)"
  "$PYTHON" -m venv --system-site-packages "$VENV" \
    || die "could not create a virtual environment (on Ubuntu/JetPack: sudo apt install python3-venv)"
fi
# shellcheck disable=SC2086  # PIP_ARGS is a list of words on purpose
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check $PIP_ARGS "$WHEEL" \
  || die "pip could not install EmoEdge and its dependencies (offline? use --pip-args '--no-index --find-links DIR')"
# The same version again replaces the package files (a rebuilt bundle keeps its version number).
# shellcheck disable=SC2086
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps --force-reinstall $PIP_ARGS "$WHEEL" \
  || die "pip could not reinstall EmoEdge from $WHEEL"

# 3. Models, calibration sets and the manifest, replaced as a whole.
replace_dir() {  # replace_dir SRC DEST
  rm -rf "$2.new"
  if [ -d "$1" ]; then cp -R "$1" "$2.new"; else mkdir -p "$2.new"; fi
  rm -rf "$2.old"
  if [ -e "$2" ]; then mv "$2" "$2.old"; fi
  mv "$2.new" "$2"
  rm -rf "$2.old"
}
replace_dir "$HERE/models" "$PREFIX/models"
replace_dir "$HERE/calibration" "$PREFIX/calibration"
cp "$HERE/manifest.json" "$PREFIX/manifest.json"

# 4. The config: a changed one on the device is kept as config.toml.bak.
if [ -f "$CONFDIR/config.toml" ] && ! cmp -s "$HERE/config/config.toml" "$CONFDIR/config.toml"; then
  cp "$CONFDIR/config.toml" "$CONFDIR/config.toml.bak"
  say "the config on the device differed: kept it as $CONFDIR/config.toml.bak"
fi
cp "$HERE/config/config.toml" "$CONFDIR/config.toml"
chmod 0644 "$CONFDIR/config.toml"

# 5. The unit.
mkdir -p "$UNITDIR"
sed -e "s|@PREFIX@|$PREFIX|g" -e "s|@CONFDIR@|$CONFDIR|g" -e "s|@CACHE@|$CACHE|g" -e "s|@USER@|$SERVICE_USER|g" \
  "$HERE/emoedge.service" > "$UNIT.new"
mv "$UNIT.new" "$UNIT"

# 6. Which backend it will run on.
"$VENV/bin/emoedge" --version >/dev/null || die "the installed emoedge does not start"
if TRT="$("$VENV/bin/python" -c 'import tensorrt; print(tensorrt.__version__)' 2>/dev/null)"; then
  say "TensorRT $TRT found: engines are built on the first start of the service (or: $VENV/bin/python -m edge.bundle.prepare --config $CONFDIR/config.toml)"
  if ! "$VENV/bin/python" -c 'import pycuda' 2>/dev/null; then
    say "installing pycuda for the TensorRT runner (compiles against CUDA: a few minutes)"
    # shellcheck disable=SC2086
    PATH="/usr/local/cuda/bin:$PATH" "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check $PIP_ARGS pycuda \
      || say "pycuda did not install: until it does, EmoEdge runs on ONNX Runtime (see docs/jetson.md)"
  fi
else
  say "TensorRT not found: EmoEdge will run on ONNX Runtime (CPU). On a Jetson install JetPack's python3-libnvinfer; the venv sees it through its system site packages."
fi

# 7. The service.
if [ "$SYSTEMD" -eq 1 ]; then
  if ! id "$SERVICE_USER" >/dev/null 2>&1; then
    useradd --system --no-create-home --shell /usr/sbin/nologin "$SERVICE_USER"
  fi
  for group in video audio dialout render; do
    if getent group "$group" >/dev/null; then usermod -a -G "$group" "$SERVICE_USER"; fi
  done
  chown -R "$SERVICE_USER:" "$CACHE"
  if command -v systemctl >/dev/null 2>&1; then
    systemctl daemon-reload
    systemctl enable emoedge.service
    say "service enabled; start it with: sudo systemctl restart emoedge"
  else
    say "systemctl not found: the unit is in $UNIT, enable it by hand"
  fi
fi
say "installed emoedge into $PREFIX (config $CONFDIR/config.toml)"
