"""Training helpers of the speech, EEG and HiSTN recipes, on top of ``edge.zoo.common``.

Seeding, progress, parameter counts and the ONNX export with its ORT-vs-torch check live in
``edge.zoo.common`` (shared with the face recipe); this module adds what the signal recipes read from
the train verb's arguments (threads, --no-progress), the feature cache and the output folder.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from edge.errors import ModelError
from edge.paths import cache_dir
from edge.zoo.common import progress as common_progress
from edge.zoo.common import seed_everything

OPSET = 17


def setup(args: argparse.Namespace, default_threads: int = 2) -> int:
    """Seed every generator and pin torch to a few threads (the training machines are shared)."""
    seed = int(getattr(args, "seed", 0) or 0)
    seed_everything(seed, int(getattr(args, "threads", 0) or 0) or default_threads)
    return seed


def feature_cache(name: str) -> Path:
    """Folder for decoded features of one recipe (EMOEDGE_CACHE or the user cache; never the repo)."""
    path = cache_dir() / "features" / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def progress(iterable: Iterable[Any], args: argparse.Namespace, **kwargs: Any) -> Any:
    """A tqdm bar unless --no-progress."""
    return common_progress(iterable, enabled=not getattr(args, "no_progress", False), **kwargs)


def training_command(default: str) -> str:
    """The command line that ran this training (argv when run through the CLI, else ``default``)."""
    if len(sys.argv) > 1 and sys.argv[1] == "train":
        return shlex.join(["emoedge", *sys.argv[1:]])
    return default


def prepare_out(out: Path) -> Path:
    """Create the output model folder; refuse a file in its place."""
    if out.exists() and not out.is_dir():
        raise ModelError(f"{out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    return out
