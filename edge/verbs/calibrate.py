"""``emoedge calibrate NAME --data DIR``: draw a calibration set for INT8 from the training split."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from edge.verbs import add_verb


def recorded_command(verb: str, fallback: str) -> str:
    """The command line as typed, for cards and manifests, with the data folder written as ``$EMOEDGE_DATA/...``
    so that no machine path lands in a committed file."""
    from edge.paths import data_dir

    if sys.argv[1:2] != [verb]:
        return fallback
    root = data_dir().resolve()
    words = ["emoedge", verb]
    for word in sys.argv[2:]:
        try:
            path = Path(word).resolve()
            if word and os.path.exists(word) and path.is_relative_to(root):
                word = "$EMOEDGE_DATA/" + path.relative_to(root).as_posix()
        except (OSError, ValueError):
            pass
        words.append(word)
    return " ".join(w if w.startswith("$EMOEDGE_DATA") else shlex.quote(w) for w in words)


def register(sub: Any) -> None:
    parser = add_verb(
        sub, "calibrate", "draw a calibration set (model-ready inputs, stratified by class, seeded) for INT8",
        "  emoedge calibrate face --data ../shared/data/fer2013\n"
        "  emoedge calibrate speech --data ../shared/data/ravdess_speech_16k --count 128 --seed 1\n"
        "  emoedge calibrate eeg --data ../shared/data/eeg_deap_bandpower --out /tmp/calib",
    )
    parser.add_argument("name", help="model name or folder")
    parser.add_argument("--data", required=True, help="data folder in the layout of the matching shared data set")
    parser.add_argument("--split", default="train", help="which split to draw from (default: train)")
    parser.add_argument("--count", type=int, default=200, help="how many samples (default: 200)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", help="models folder")
    parser.add_argument("--out", help="calibration folder (default: calibration/NAME, or EMOEDGE_CALIBRATION/NAME)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edge.card import load_model
    from edge.export.calibrate import make_calibration_set
    from edge.paths import calibration_dir

    model = load_model(args.name, "fp32", models=args.models)
    out = Path(args.out) if args.out else calibration_dir() / model.card.name
    command = recorded_command("calibrate", f"emoedge calibrate {model.card.name} --count {args.count} --seed {args.seed}")
    calib = make_calibration_set(
        model.card, args.data, out, count=args.count, seed=args.seed, split=args.split,
        command=command, model_sha256=model.sha256,
    )
    m = calib.manifest
    stored = ", ".join(f"{k} {v['stored']}" for k, v in m["inputs"].items())
    print(f"calibration set for {model.card.name}: {m['count']} samples of {m['available']} drawn ({m['split']} split, "
          f"seed {m['seed']}), {m['samples_bytes'] / 1024:.0f} KiB ({stored}) in {out}")
    print(f"per class: {m['per_class']}")
    if m["samples_bytes"] > 5 * (1 << 20):
        print(f"warning: {m['samples_bytes'] / (1 << 20):.1f} MiB is large for a committed set; try a smaller --count",
              file=sys.stderr)
    return 0
