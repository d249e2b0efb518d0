"""Scene data sets (Emotion6, OASIS) as lists of items, and the held-out split by image.

The split is a hash of the data set's name, the image's file name and the seed: reproducible
without a list of files, independent of listing order, and the same in training and in
``emoedge eval scene`` (the card records seed and fraction).
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.errors import InputError

EMOTIONS = ["anger", "disgust", "fear", "joy", "sadness", "surprise", "neutral"]
SCALES = {"emotion6": (1.0, 9.0), "oasis": (1.0, 7.0)}  # rating scales of valence and arousal
HOLDOUT_FRACTION = 0.2
HOLDOUT_SEED = 0


@dataclass
class SceneItem:
    """One rated image: valence/arousal on the set's own scale, the emotion distribution where rated, a caption where written."""

    path: Path
    key: str  # file name relative to the set's folder: what the split hashes
    valence: float
    arousal: float
    emotion: np.ndarray | None = None  # 7 probabilities in EMOTIONS order
    caption: str | None = None


def to_unit(value: float | np.ndarray, dataset: str) -> float | np.ndarray:
    """A rating on the set's scale mapped onto [-1, 1] (what the encoder predicts)."""
    lo, hi = SCALES[dataset]
    return (value - (lo + hi) / 2) / ((hi - lo) / 2)


def from_unit(value: float | np.ndarray, dataset: str) -> float | np.ndarray:
    """[-1, 1] back onto the set's own rating scale (MAE is reported there)."""
    lo, hi = SCALES[dataset]
    return value * ((hi - lo) / 2) + (lo + hi) / 2


def detect(folder: str | Path) -> str:
    """Which layout a folder has: 'emotion6' (ground_truth.txt) or 'oasis' (oasis_labels.csv)."""
    root = Path(folder)
    if (root / "ground_truth.txt").is_file():
        return "emotion6"
    if (root / "oasis_labels.csv").is_file():
        return "oasis"
    if not root.is_dir():
        raise InputError(f"{root}: no such data folder")
    raise InputError(f"{root}: neither an Emotion6 folder (ground_truth.txt) nor an OASIS folder (oasis_labels.csv)")


def read_emotion6(folder: str | Path) -> list[SceneItem]:
    root = Path(folder)
    items = []
    with open(root / "ground_truth.txt", encoding="utf-8") as f:
        next(f)
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 10:
                continue
            dist = np.array([float(x) for x in parts[3:10]], dtype=np.float32)
            # file order: anger disgust fear joy sadness surprise neutral = EMOTIONS
            items.append(SceneItem(root / "images" / parts[0], parts[0], float(parts[1]), float(parts[2]),
                                   emotion=dist / max(float(dist.sum()), 1e-6)))
    return items


def read_oasis(folder: str | Path) -> list[SceneItem]:
    root = Path(folder)
    items = []
    with open(root / "oasis_labels.csv", encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            caption = " ".join((row.get("human_caption_elkhand") or "").split()) or None
            items.append(SceneItem(root / row["file"], row["file"], float(row["valence_mean"]),
                                   float(row["arousal_mean"]), caption=caption))
    return items


def read(folder: str | Path) -> tuple[str, list[SceneItem]]:
    """(layout name, items) of a data folder."""
    kind = detect(folder)
    return kind, (read_emotion6(folder) if kind == "emotion6" else read_oasis(folder))


def is_held_out(dataset: str, key: str, seed: int = HOLDOUT_SEED, fraction: float = HOLDOUT_FRACTION) -> bool:
    """Whether an image belongs to the held-out split (about ``fraction`` of each set)."""
    digest = hashlib.sha256(f"{dataset}|{key}|{seed}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def split(dataset: str, items: list[SceneItem], part: str, seed: int = HOLDOUT_SEED,
          fraction: float = HOLDOUT_FRACTION) -> list[SceneItem]:
    """'train', 'validation' (the held-out images) or 'all'."""
    if part == "all":
        return list(items)
    if part not in ("train", "validation"):
        raise InputError(f"unknown split '{part}' (expected train, validation or all)")
    held = part == "validation"
    return [it for it in items if is_held_out(dataset, it.key, seed, fraction) == held]
