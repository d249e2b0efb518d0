"""``emoedge bundle``: the archive that ``tools/flash_jetson.sh`` installs on a Jetson."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from edge.verbs import add_verb


def register(sub: Any) -> None:
    parser = add_verb(
        sub, "bundle",
        "pack a configured EmoEdge for a device: models (FP32/FP16/INT8), calibration sets, config, wheel, "
        "systemd unit, install.sh and a sha256 manifest",
        "  emoedge bundle --config device.toml --out bundle.tar.gz\n"
        "  emoedge bundle --config device.toml --names face,eeg --out face-eeg.tar.gz\n"
        "  tools/flash_jetson.sh ubuntu@jetson.local bundle.tar.gz   # then install it on the device",
    )
    parser.add_argument("--config", required=True, help="the device config (checked first)")
    parser.add_argument("--names", help="comma-separated model names (default: the config's enabled models)")
    parser.add_argument("--out", default="emoedge-bundle.tar.gz", help="archive to write (default: emoedge-bundle.tar.gz)")
    parser.add_argument("--models", dest="models_dir", help="models folder, as in every verb (default: EMOEDGE_MODELS or models/)")
    parser.add_argument("--calibration", help="calibration folder (default: EMOEDGE_CALIBRATION or calibration/)")
    parser.add_argument("--wheel", help="an emoedge-*.whl to ship instead of building one from this checkout")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from edge.bundle import build_bundle

    names = [n.strip() for n in args.names.split(",") if n.strip()] if args.names else None
    manifest = build_bundle(args.config, args.out, names, args.models_dir, args.calibration, args.wheel)
    size = Path(args.out).stat().st_size
    print(f"wrote {args.out} ({size / 1024:.0f} KiB, {len(manifest['files'])} files, emoedge {manifest['emoedge_version']})")
    for name, record in manifest["models"].items():
        extra = f", calibration {record['calibration']}" if "calibration" in record else ""
        print(f"  {name} {record['version']}: {', '.join(record['artifacts'])} (runs {record['precision']}){extra}")
    print("install on the device with: sudo ./install.sh (inside the unpacked folder), or tools/flash_jetson.sh USER@HOST "
          + args.out, file=sys.stderr)
    return 0
