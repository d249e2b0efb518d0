"""Face training data: FER2013 images decoded once and cached, augmentation, and the teachers' cached logits.

Split from ``edge.zoo.face`` (the ``emoedge train face`` recipe) so that each part stays readable: this module
holds what turns folders of JPEGs and teacher models into arrays; ``edge.zoo.face_nets`` the networks,
``edge.zoo.face_fit`` the training loop. Teachers are ONNX models (this project's model folders, whose card
gives the label order) or the mini-Xception HDF5 files, converted once into the cache.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from edge.errors import InputError
from edge.evaluation.face import list_images, read_images
from edge.features.face import DEFAULT_SIZE
from edge.paths import PROJECT_ROOT, cache_dir, models_dir
from edge.paths import data_dir as default_data_dir
from edge.zoo.common import progress, save_cache

LABELS = ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]
# mini-Xception (oarriaga/face_classification) output order -> index into LABELS
TEACHER_LABELS = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
TEACHER_FILES = ["fer2013_mini_XCEPTION.102-0.66.hdf5", "fer2013_mini_XCEPTION.107-0.66.hdf5",
                 "fer2013_big_XCEPTION.54-0.66.hdf5"]
TEACHER_SIZE = 64
# The shipped teachers of the student, in models/face: the mirror-averaged v1 student (models/face itself, also
# the warm start) and the narrow ResNet-18 (``emoedge train face-teacher``, models/face/teacher).
SHIPPED_TEACHERS = (".", "teacher")


def load_images_cached(root: Path, size: int = DEFAULT_SIZE, labels: list[str] = LABELS) -> tuple[np.ndarray, np.ndarray]:
    """All images under ``root/<class>/`` as uint8 (N, size, size) and int64 labels, decoded once and cached.

    The cache key is the folder, the file list and the size, so a changed folder is decoded again.
    """
    paths, targets, _ = list_images(root, labels)
    if not paths:
        raise InputError(f"{root}: no images in class folders named {', '.join(labels)}")
    key = hashlib.sha256(("\n".join(str(p) for p in paths) + f"|{size}").encode()).hexdigest()[:16]
    cache = cache_dir() / "face" / f"{root.name}-{key}.npz"
    if cache.exists():
        with np.load(cache) as stored:
            return stored["x"], stored["y"]
    x = read_images(paths, size)
    y = np.asarray(targets, dtype=np.int64)
    save_cache(cache, {"x": x, "y": y})
    return x, y


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, S, S) -> float32 (N, 1, S, S) normalised as ``edge.features.face.normalise``."""
    return torch.from_numpy(images).float().mul_(2.0 / 255.0).sub_(1.0).unsqueeze(1)


def augment(x: torch.Tensor, generator: torch.Generator, flip: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
    """Random affine (shift +-10%, scale 0.9-1.1, rotation +-10 deg, flip given) and brightness/contrast.

    The random numbers come from the (CPU) ``generator`` whatever ``x``'s device, so a seed means the same
    augmentation on a CPU and on a GPU. ``strength`` scales every range (0: flip only), for a gentler last
    pass of a small student whose validation images are never shifted or rotated; the same numbers are drawn.
    """
    n = x.shape[0]

    def u(lo: float, hi: float, centre: float = 0.0) -> torch.Tensor:
        """Uniform in [lo, hi] shrunk towards ``centre`` by ``strength`` (the range itself at 1, bit for bit)."""
        if strength != 1.0:
            lo, hi = centre + (lo - centre) * strength, centre + (hi - centre) * strength
        return torch.empty(n).uniform_(lo, hi, generator=generator).to(x.device)

    flip = flip.to(x.device)
    angle = u(-10.0, 10.0) * math.pi / 180.0
    scale = u(0.9, 1.1, centre=1.0)
    sign = 1.0 - 2.0 * flip.float()
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([
        torch.stack([cos * sign, -sin, u(-0.2, 0.2)], dim=1),
        torch.stack([sin * sign, cos, u(-0.2, 0.2)], dim=1),
    ], dim=1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    contrast = u(0.7, 1.3, centre=1.0).view(n, 1, 1, 1)
    brightness = u(-0.25, 0.25).view(n, 1, 1, 1)
    return (x * contrast + brightness).clamp_(-1.0, 1.0)


def _converter() -> Any:
    path = PROJECT_ROOT / "tools" / "convert_mini_xception.py"
    spec = importlib.util.spec_from_file_location("convert_mini_xception", path)
    if spec is None or spec.loader is None or not path.exists():
        raise InputError(f"{path}: the teacher converter is missing (it ships in the source checkout)")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def teacher_paths(spec: str | None, data: Path) -> list[Path]:
    """Teacher files: ``spec`` (comma-separated ONNX/HDF5 files or model folders), 'none', or the default.

    The default is the teachers shipped in ``models/face`` (``SHIPPED_TEACHERS``: the mirror-averaged v1
    student and the ResNet trained by ``emoedge train face-teacher``) that exist, else the mini-Xception
    ensemble in the data folder's ``teachers/``.
    """
    if spec and spec.lower() == "none":
        return []
    if spec:
        return [Path(p) / "model.onnx" if Path(p).is_dir() else Path(p) for p in spec.split(",")]
    shipped = [models_dir() / "face" / name / "model.onnx" for name in SHIPPED_TEACHERS]
    if any(p.exists() for p in shipped):
        return [p for p in shipped if p.exists()]
    folder = data.parent / "teachers" / "fer_mini_xception"
    if not folder.is_dir():
        folder = default_data_dir() / "teachers" / "fer_mini_xception"
    return [folder / name for name in TEACHER_FILES if (folder / name).exists()]


def teacher_labels(path: Path) -> list[str]:
    """The label order of a teacher: its card's (a model folder of this project), else mini-Xception's."""
    card = path.parent / "card.toml"
    if path.suffix == ".onnx" and card.exists():
        from edge.card import load_card

        return list(load_card(card).labels)
    return TEACHER_LABELS


def augmented_views(images: np.ndarray, views: int, seed: int, strength: float = 1.0) -> np.ndarray:
    """``views`` augmented copies of uint8 ``images`` (N, S, S) as uint8 (views, N, S, S), each a random flip and
    ``augment``; the same seed gives the same views, so their teacher logits can be cached.

    Consistent distillation: the student trains on these very images against the teachers' logits on them,
    where the plain recipe pairs an augmented image with the teachers' view of the unaugmented one.
    """
    out = np.empty((views, *images.shape), dtype=np.uint8)
    for view in range(views):
        generator = torch.Generator().manual_seed(seed * 1_000_003 + view)
        flips = torch.rand(len(images), generator=generator) < 0.5
        for start in range(0, len(images), 4096):
            x = augment(to_tensor(images[start : start + 4096]), generator, flips[start : start + 4096], strength)
            out[view, start : start + len(x)] = x.add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8)[:, 0].numpy()
    return out


def teacher_logits(paths: list[Path], images: np.ndarray, show: bool) -> np.ndarray:
    """Average logits (in LABELS order) of the teachers over ``images`` and their mirror: (2, N, 7), cached.

    ``images`` may be (N, S, S) or a stack of views (V, N, S, S) from ``augmented_views``; a stack is run
    without mirroring (its views are flipped already) and gives (V, N, 7). HDF5 teachers are converted to ONNX
    (into the cache) with tools/convert_mini_xception.py first. The cache key holds the teachers' bytes, so a
    retrained teacher is run again.
    """
    import onnxruntime as ort

    stacked = images.ndim == 4
    groups = images if stacked else images[None]
    passes = [(g, 0) for g in range(len(groups))] if stacked else [(0, 0), (0, 1)]
    digest = hashlib.sha256()
    for path in paths:
        digest.update(str(path).encode() + (path.read_bytes() if path.exists() else b""))
    sample = images.reshape(-1, *images.shape[-2:])
    digest.update(sample[:: max(1, len(sample) // 64)].tobytes() + str(images.shape).encode())
    cache = cache_dir() / "face" / f"teacher-logits-{digest.hexdigest()[:16]}.npy"
    if cache.exists():
        return np.load(cache)
    total = np.zeros((len(passes), groups.shape[1], len(LABELS)), dtype=np.float32)
    for path in paths:
        labels = teacher_labels(path)
        shown = path.parent.name if path.stem == "model" else path.stem  # a model folder's file is model.onnx
        order = [labels.index(label) for label in LABELS]
        if path.suffix in (".hdf5", ".h5"):
            onnx_path = cache_dir() / "face" / "teachers" / (path.stem + ".onnx")
            if not onnx_path.exists():
                _converter().convert(path, onnx_path)
            path = onnx_path
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()  # --threads, as training uses
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        size = session.get_inputs()[0].shape[-1]
        size = size if isinstance(size, int) else TEACHER_SIZE
        for row, (group, flip) in enumerate(passes):
            view = groups[group]
            for start in progress(range(0, len(view), 512), show, desc=f"teacher {shown} pass {row + 1}/{len(passes)}"):
                batch = view[start : start + 512]
                batch = batch[:, :, ::-1] if flip else batch
                logits = np.asarray(session.run(["logits"], {name: teacher_input(batch, size)})[0])
                total[row, start : start + len(batch)] += logits[:, order]
    total /= max(len(paths), 1)
    save_cache(cache, total)
    return total


def teacher_input(images: np.ndarray, size: int = TEACHER_SIZE) -> np.ndarray:
    """uint8 (N, 48, 48) -> a teacher's input (N, 1, size, size) in [-1, 1] (mini-Xception: 64x64)."""
    import cv2

    if images.shape[-1] != size:
        images = np.stack([cv2.resize(np.ascontiguousarray(im), (size, size), interpolation=cv2.INTER_LINEAR)
                           for im in images])
    return (images.astype(np.float32) / 255.0 * 2.0 - 1.0)[:, None]


