"""Training utilities shared by the zoo recipes (torch; the ``train`` extra).

* ``seed_everything``: python, numpy and torch seeds plus deterministic torch kernels;
* ``progress``: a tqdm progress bar that can be switched off (``--no-progress``);
* ``setup``, ``feature_cache``, ``prepare_out``, ``training_command``: what the recipes read from the train
  verb's arguments (seed, threads), the feature cache, the output folder and the command for the card;
* ``save_cache``: every cache file (decoded features, teacher logits) written whole or not at all;
* ``distillation_loss``: KL(teacher || student) at temperature T scaled by T^2 (Hinton et al. 2015),
  mixed with cross-entropy on the labels;
* ``export_onnx``: torch.onnx.export with a dynamic batch, then ``onnx.checker`` and an ONNX Runtime
  vs torch comparison within a stated tolerance (raises ``ModelError`` when they disagree);
* ``write_card``: a validated ``card.toml`` next to the model, with the parameter count computed.
"""

from __future__ import annotations

import argparse
import os
import random
import shlex
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edge.card import ModelCard, save_card
from edge.errors import ConfigError, ModelError
from edge.paths import atomic_write, cache_dir

T = TypeVar("T")

OPSET = 17
ATOL = 1e-4  # ONNX Runtime vs torch, absolute, on every output (FP32 on CPU)
RTOL = 1e-3


def seed_everything(seed: int, threads: int | None = None) -> torch.Generator:
    """Seed python, numpy and torch, ask torch for deterministic kernels, and return a seeded generator."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    if threads:
        torch.set_num_threads(threads)
    return torch.Generator().manual_seed(seed)


def progress(items: Iterable[T], enabled: bool | argparse.Namespace = True, **kwargs: Any) -> Iterable[T]:
    """``items`` wrapped in a tqdm bar (to stderr), or unchanged when ``enabled`` is false or is the train verb's
    arguments with ``--no-progress``."""
    if isinstance(enabled, argparse.Namespace):
        enabled = not getattr(enabled, "no_progress", False)
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, dynamic_ncols=True, leave=False, **kwargs)


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters (BatchNorm running statistics are buffers and not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def distillation_loss(
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    teacher_logits: torch.Tensor | None = None,
    temperature: float = 4.0,
    alpha: float = 0.5,
    class_weights: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """``alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, labels)``.

    The T^2 factor keeps the soft term's gradients on the same scale as the hard term's whatever T is.
    Without a teacher (or with ``alpha = 0``) this is the (weighted, smoothed) cross-entropy alone.
    """
    hard = F.cross_entropy(student_logits, labels, weight=class_weights, label_smoothing=label_smoothing)
    if teacher_logits is None or alpha <= 0:
        return hard
    log_p_student = F.log_softmax(student_logits / temperature, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits / temperature, dim=1)
    soft = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True) * temperature**2
    return alpha * soft + (1.0 - alpha) * hard


def export_onnx(
    model: nn.Module,
    example: torch.Tensor,
    path: str | os.PathLike[str],
    input_name: str,
    output_names: Sequence[str],
    atol: float = ATOL,
    rtol: float = RTOL,
) -> dict[str, float]:
    """Export ``model`` (eval mode) to ONNX with a dynamic batch, check it, and compare ORT with torch.

    Returns the largest absolute difference per output. Raises ModelError when an output differs by
    more than ``atol + rtol * |torch|``.
    """
    import onnx
    import onnxruntime as ort

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    dynamic = {input_name: {0: "batch"}} | {name: {0: "batch"} for name in output_names}
    with torch.no_grad():
        torch.onnx.export(
            model, (example,), str(path), input_names=[input_name], output_names=list(output_names),
            dynamic_axes=dynamic, opset_version=OPSET, do_constant_folding=True, dynamo=False,
        )
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = model(example)
    expected = expected if isinstance(expected, (tuple, list)) else (expected,)
    got = session.run(list(output_names), {input_name: example.numpy()})
    diffs: dict[str, float] = {}
    for name, want, have in zip(output_names, expected, got, strict=True):
        want_np = want.numpy()
        have = np.asarray(have)
        diffs[name] = float(np.max(np.abs(want_np - have))) if want_np.size else 0.0
        if not np.allclose(have, want_np, atol=atol, rtol=rtol):
            raise ModelError(
                f"{path}: ONNX Runtime output '{name}' differs from torch by up to {diffs[name]:.3g} "
                f"(tolerance atol={atol}, rtol={rtol})"
            )
    return diffs


def write_card(card: ModelCard | dict[str, Any], out_dir: str | os.PathLike[str]) -> Path:
    """Validate and write ``out_dir/card.toml``; returns its path."""
    card = card if isinstance(card, ModelCard) else ModelCard.model_validate(card)
    path = Path(out_dir) / "card.toml"
    save_card(card, path)
    return path


def command_line() -> str:
    """The command that is running, as ``emoedge VERB ...`` (for the card)."""
    argv = sys.argv[1:]
    return shlex.join(["emoedge", *argv]) if argv else "emoedge"


def training_command(default: str) -> str:
    """The command line that ran this training (argv when run through ``emoedge train``, else ``default``)."""
    return command_line() if sys.argv[1:2] == ["train"] else default


def setup(args: argparse.Namespace, default_threads: int = 2) -> int:
    """Seed every generator and pin torch to a few threads (the training machines are shared); returns the seed."""
    seed = int(getattr(args, "seed", 0) or 0)
    seed_everything(seed, int(getattr(args, "threads", 0) or 0) or default_threads)
    return seed


def feature_cache(name: str) -> Path:
    """Folder for decoded features of one recipe (EMOEDGE_CACHE or the user cache; never the repo)."""
    path = cache_dir() / "features" / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def save_cache(path: Path, arrays: np.ndarray | dict[str, np.ndarray]) -> None:
    """Write one array (``.npy``) or several (``.npz``) to ``path`` whole or not at all (``edge.paths.atomic_write``):
    two training runs that fill the same cache at once (leave-speakers-out folds side by side) each land a whole
    file, and a run killed mid-write leaves no torn cache for the next one to load."""
    with atomic_write(path, "wb") as f:
        if isinstance(arrays, dict):
            np.savez(f, **cast(dict[str, Any], arrays))  # cast: pyright would match a key to allow_pickle
        else:
            np.save(f, arrays)


def prepare_out(out: Path) -> Path:
    """Create the output model folder; refuse a file in its place."""
    if out.exists() and not out.is_dir():
        raise ModelError(f"{out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    return out


def recipe_overrides(items: list[str], recipe: dict[str, Any]) -> dict[str, Any]:
    """``["alpha=0.9", "mirror_average=true", "widths=16,32"]`` -> typed overrides of ``recipe`` (``--set``).

    Each value takes the type of the recipe's default; an unknown key or a value of the wrong type is an error
    that names the key and what it takes.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in recipe:
            raise ConfigError(f"--set {item}: expected KEY=VALUE with KEY one of {', '.join(sorted(recipe))}")
        kind = type(recipe[key])
        try:
            if kind is tuple:
                out[key] = tuple(int(v) for v in value.split(","))
            elif kind is bool:
                if value.strip().lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                out[key] = value.strip().lower() in ("true", "1", "yes")
            else:
                out[key] = kind(value)
        except ValueError:
            raise ConfigError(f"--set {item}: {key} takes a {kind.__name__}, not {value!r}") from None
    return out


def recipe_from_args(defaults: dict[str, Any], args: Any) -> dict[str, Any]:
    """A recipe's ``RECIPE`` table with the train verb's --epochs, --batch-size, --lr and --set applied."""
    recipe = dict(defaults)
    for key in ("epochs", "batch_size", "lr"):
        recipe[key] = getattr(args, key, None) or recipe[key]
    recipe.update(recipe_overrides(getattr(args, "set", None) or [], recipe))
    return recipe
