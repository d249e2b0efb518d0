"""``emoedge train NAME --data DIR --out models/NAME``: train or distil a zoo model (needs the train extra)."""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path
from typing import Any

from edge.verbs import add_verb


def register(sub: Any) -> None:
    from edge.zoo import RECIPES

    parser = add_verb(
        sub, "train", "train or distil a model of the zoo on a data folder (seeded, reproducible)",
        "  emoedge train eeg --data ../shared/data/eeg_deap_bandpower --out models/eeg\n"
        "  emoedge train face --data ../shared/data/fer2013 --out models/face --epochs 30\n"
        "  emoedge train speech --data ../shared/data/ravdess_speech_16k --out /tmp/speech --max-steps 5\n"
        "  emoedge train histn --data ../shared/data/dasps --out models/histn --threads 1\n"
        "  emoedge train histn --data ../shared/data/dasps --out /tmp/histn --cv 6 --set epochs=15",
    )
    parser.add_argument("name", choices=sorted(RECIPES), help="which model recipe")
    parser.add_argument("--data", help="data folder (default: the matching folder in EMOEDGE_DATA)")
    parser.add_argument("--out", help="output model folder (default: models/NAME)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, help="default: the recipe's")
    parser.add_argument("--batch-size", type=int, help="default: the recipe's")
    parser.add_argument("--lr", type=float, help="default: the recipe's")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    parser.add_argument("--device", default="cpu",
                        help="torch device to train on: cpu, cuda, cuda:1 (face, face-teacher, speech)")
    parser.add_argument("--teacher", help="teacher for distillation (path); default: the recipe's")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one entry of the recipe's RECIPE table (face, face-teacher, speech, histn), e.g. --set alpha=0.9")
    parser.add_argument("--max-steps", type=int, help="stop after this many optimiser steps (smoke tests)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--mode", help="input normalisation to train with, where the recipe has several "
                        "(eeg: subject-norm | population-norm)")
    parser.add_argument("--target", help="which rating to learn, where the recipe has several")
    parser.add_argument("--cv", type=int, default=0,
                        help="run K-fold leave-groups-out cross-validation over the training groups "
                        "(subjects, actors) and print it, instead of training (where the recipe has it)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edge.errors import BackendUnavailable, ConfigError
    from edge.zoo import RECIPES

    try:
        import torch  # noqa: F401
    except ImportError:
        raise BackendUnavailable("training needs torch: pip install 'emoedge[train]'") from None
    recipe = importlib.import_module(RECIPES[args.name])
    if (args.set or args.device != "cpu") and not hasattr(recipe, "RECIPE"):
        raise ConfigError(f"train {args.name}: this recipe trains on the CPU only and takes no --set overrides")
    out = Path(args.out) if args.out else None
    folder = recipe.train(args.data, out, args)
    print(f"trained {args.name}: {folder}")
    return 0
