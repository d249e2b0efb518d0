"""Face model evaluation on a folder of class folders (the layout of ``fer2013/train`` and ``fer2013/validation``).

DIR may be the data set root that holds split folders (``fer2013`` -> ``fer2013/<split>``) or a folder that
holds class folders directly (``fer2013/validation``). Images go through ``edge.features.face.face_input``
(the crops are already faces, so no detection): the same code the runtime uses after detection.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge.card import ModelCard
from edge.errors import InputError
from edge.evaluation import Head, LabelledSet, infer_outputs, outlier_files
from edge.evaluation.metrics import classification_metrics
from edge.features.face import DEFAULT_SIZE, load_image, normalise, resize_gray

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".pgm", ".tif", ".tiff", ".webp"}
BATCH = 256


def class_folder_root(data_dir: str | os.PathLike[str], split: str) -> Path:
    """The folder that holds the class folders: ``DIR/<split>`` if it exists, else DIR itself."""
    root = Path(data_dir)
    if not root.is_dir():
        raise InputError(f"{root}: data folder not found")
    if (root / split).is_dir():
        return root / split
    if not any(p.is_dir() for p in root.iterdir()):
        raise InputError(f"{root}: expected class folders (angry/, happy/, ...) or a '{split}' folder of them")
    return root


def list_images(root: Path, labels: Sequence[str]) -> tuple[list[Path], list[int], dict[str, int]]:
    """Image paths and label indices under ``root/<class>/``, sorted; unknown classes counted per folder."""
    index = {label: i for i, label in enumerate(labels)}
    paths: list[Path] = []
    targets: list[int] = []
    skipped: dict[str, int] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        if folder.name not in index:
            if files:
                skipped[folder.name] = len(files)
            continue
        paths += files
        targets += [index[folder.name]] * len(files)
    return paths, targets, skipped


def stratified_slice(targets: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """Indices of at most ``limit`` samples with class proportions kept (seeded), in their original order."""
    if limit >= len(targets):
        return np.arange(len(targets))
    rng = np.random.default_rng(seed)
    chosen: list[np.ndarray] = []
    classes, counts = np.unique(targets, return_counts=True)
    quotas = np.floor(counts / len(targets) * limit).astype(int)
    quotas[np.argsort(-(counts / len(targets) * limit - quotas))[: limit - quotas.sum()]] += 1
    for cls, quota in zip(classes, quotas, strict=True):
        members = np.flatnonzero(targets == cls)
        chosen.append(rng.choice(members, size=min(quota, len(members)), replace=False))
    return np.sort(np.concatenate(chosen))


def read_images(paths: Sequence[Path], size: int = DEFAULT_SIZE) -> np.ndarray:
    """Gray uint8 images (N, size, size) from files."""
    out = np.empty((len(paths), size, size), dtype=np.uint8)
    for i, path in enumerate(paths):
        out[i] = resize_gray(load_image(path), size)
    return out


def load_split(
    card: ModelCard, data_dir: Path, split: str, limit: int | None = None, seed: int = 0, mode: str | None = None
) -> LabelledSet:
    """Model-ready inputs (N, 1, S, S) and labels of one split; classes the card lacks are skipped and counted."""
    if mode not in (None, "default"):
        raise InputError(f"face model: unknown evaluation mode '{mode}' (face models have only 'default')")
    spec = card.inputs[0]
    size = int(spec.shape[-1]) if isinstance(spec.shape[-1], int) else DEFAULT_SIZE
    root = class_folder_root(data_dir, split)
    paths, targets, skipped = list_images(root, card.labels)
    if not paths:
        raise InputError(f"{root}: no images in class folders named like the model's labels ({', '.join(card.labels)})")
    y = np.asarray(targets, dtype=np.int64)
    if limit is not None:
        keep = stratified_slice(y, limit, seed)
        paths, y = [paths[i] for i in keep], y[keep]
    x = normalise(read_images(paths, size))[:, None]
    description = f"{root} ({len(y)} images" + (f", stratified slice seed {seed}" if limit is not None else "") + ")"
    return LabelledSet(
        inputs={spec.name: x}, labels=y, skipped=sum(skipped.values()), description=description,
        extra={"skipped_classes": skipped, "files": [str(p) for p in paths], "present": sorted(set(y.tolist()))},
    )


def heads(card: ModelCard, data: LabelledSet, raw: dict[str, np.ndarray]) -> list[Head]:
    """The logits output per image with the true labels."""
    return [Head("logits", raw["logits"], np.asarray(data.labels), list(card.labels), None, data.extra.get("present"))]


def evaluate(runner: Any, card: ModelCard, data: LabelledSet, raw: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Run the model in batches on ``data`` and return ``classification_metrics`` plus ``skipped``."""
    raw = raw if raw is not None else infer_outputs(runner, card, data, BATCH)
    result = classification_metrics(np.asarray(data.labels), np.argmax(raw["logits"], axis=1), card.labels)
    result["skipped"] = data.skipped
    if data.extra.get("skipped_classes"):
        result["skipped_classes"] = data.extra["skipped_classes"]
    return result


DEGRADED_SIDES = (12, 28)  # a degraded face is shrunk to 12-27 px and scaled back up: far away or out of focus


def degraded(card: ModelCard, data: LabelledSet, seed: int = 0) -> LabelledSet:
    """The same faces shrunk to a random 12-27 px and scaled back (seeded): a far or out-of-focus face, which
    a camera sends the model often. They join the inliers of the background direction
    (``edge.confidence.fit_background``), so that the direction learns "not a face", not "not sharp"."""
    import cv2

    name = card.inputs[0].name
    x = data.inputs[name]
    rng = np.random.default_rng(seed)
    out = np.empty_like(x)
    for i, image in enumerate(x[:, 0]):
        side = int(rng.integers(*DEGRADED_SIDES))
        small = cv2.resize(image, (side, side), interpolation=cv2.INTER_AREA)
        out[i, 0] = cv2.resize(small, image.shape[::-1], interpolation=cv2.INTER_LINEAR)
    return LabelledSet(inputs={name: out}, labels=data.labels, description=f"{data.description}, degraded")


def load_outliers(card: ModelCard, folder: str | Path, mode: str | None = None) -> dict[str, LabelledSet]:
    """Unlabelled images of ``folder/<kind>/`` as model inputs (resized gray, normalised), per kind."""
    spec = card.inputs[0]
    size = int(spec.shape[-1]) if isinstance(spec.shape[-1], int) else DEFAULT_SIZE
    kinds = outlier_files(folder, IMAGE_SUFFIXES, "images: noise/, shapes/, ...")
    return {kind: LabelledSet(inputs={spec.name: normalise(read_images(files, size))[:, None]},
                              labels=np.zeros(len(files), np.int64), description=f"{Path(folder) / kind} ({len(files)} images)")
            for kind, files in kinds.items()}


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def print_report(result: dict[str, Any]) -> None:
    """Accuracy, macro-F1, balanced accuracy, per-class recall and the confusion matrix as rich tables."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    labels = result["labels"]
    console.print(
        f"[bold]{result.get('model', 'model')}[/] on {result.get('data', '?')} "
        f"({result.get('backend', '?')}, {result.get('precision', '?')})"
    )
    summary = Table(show_header=False)
    for key in ("balanced_accuracy", "accuracy", "macro_f1", "ece", "mean_confidence"):
        if key in result:
            summary.add_row(key, f"{result[key]:.4f}")
    summary.add_row("n", str(result["n"]))
    summary.add_row("skipped", str(result.get("skipped", 0)))
    console.print(summary)
    per_class = Table("class", "recall", "precision", "f1", "support", title="per class")
    for label in labels:
        row = result["per_class"][label]
        per_class.add_row(label, _fmt(row["recall"]), _fmt(row["precision"]), _fmt(row["f1"]), str(row["support"]))
    console.print(per_class)
    confusion = Table("true \\ predicted", *labels, title="confusion matrix")
    for label, row in zip(labels, result["confusion"], strict=True):
        confusion.add_row(label, *(str(v) for v in row))
    console.print(confusion)
