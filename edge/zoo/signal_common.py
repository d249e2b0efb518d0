"""Training helpers shared by the speech and EEG recipes: seeding, threads, progress, export, cards.

Kept separate from the face recipe's helpers for now (the two were written in parallel); they do
the same jobs and can be merged.
"""

from __future__ import annotations

import argparse
import random
import shlex
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edge.errors import ModelError
from edge.paths import cache_dir

OPSET = 17


def setup(args: argparse.Namespace, default_threads: int = 2) -> int:
    """Seed every generator and pin torch to a few threads (the training machines are shared)."""
    seed = int(getattr(args, "seed", 0) or 0)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    threads = int(getattr(args, "threads", 0) or 0) or default_threads
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    return seed


def feature_cache(name: str) -> Path:
    """Folder for decoded features of one recipe (EMOEDGE_CACHE or the user cache; never the repo)."""
    path = cache_dir() / "features" / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def count_parameters(model: torch.nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad))


def progress(iterable: Iterable[Any], args: argparse.Namespace, **kwargs: Any) -> Any:
    """A tqdm bar unless --no-progress."""
    from tqdm import tqdm

    return tqdm(iterable, disable=bool(getattr(args, "no_progress", False)), file=sys.stderr, **kwargs)


def training_command(default: str) -> str:
    """The command line that ran this training (argv when run through the CLI, else ``default``)."""
    if len(sys.argv) > 1 and sys.argv[1] == "train":
        return shlex.join(["emoedge", *sys.argv[1:]])
    return default


def export_onnx(
    model: torch.nn.Module,
    examples: Sequence[torch.Tensor],
    input_names: Sequence[str],
    output_names: Sequence[str],
    path: Path,
    atol: float = 1e-4,
    rtol: float = 1e-3,
) -> float:
    """Export FP32 with a dynamic batch (opset 17), run onnx.checker, and check ONNX Runtime against torch.

    Returns the largest absolute difference seen; raises ModelError when it exceeds ``atol + rtol*|torch|``.
    """
    import onnx
    import onnxruntime as ort

    model = model.eval()
    dynamic = {name: {0: "batch"} for name in [*input_names, *output_names]}
    with torch.no_grad():
        torch.onnx.export(
            model, tuple(examples), str(path), input_names=list(input_names), output_names=list(output_names),
            dynamic_axes=dynamic, opset_version=OPSET, do_constant_folding=True, dynamo=False,
        )
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = model(*examples)
    if isinstance(expected, torch.Tensor):
        expected = (expected,)
    got = session.run(list(output_names), {n: e.numpy() for n, e in zip(input_names, examples)})
    worst = 0.0
    for name, want, have in zip(output_names, expected, got):
        want = want.numpy()
        diff = np.abs(want - have)
        worst = max(worst, float(diff.max(initial=0.0)))
        if not np.all(diff <= atol + rtol * np.abs(want)):
            raise ModelError(f"{path}: ONNX Runtime output '{name}' differs from torch by {diff.max():.3g} (> {atol})")
    return worst


def prepare_out(out: Path) -> Path:
    """Create the output model folder; refuse a file in its place."""
    if out.exists() and not out.is_dir():
        raise ModelError(f"{out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    return out
