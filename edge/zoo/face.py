"""Face expression student (7 FER2013 classes, at most 60,000 parameters), trained and distilled on FER2013.

``emoedge train face --data DIR --out models/face``: DIR holds ``train/`` and ``validation/`` folders of
class folders (fer2013). The JPEGs are decoded once into a uint8 array cached under ``edge.paths.cache_dir()``.
The student is an Xception-style CNN (separable convolutions with residual shortcuts) on the 48x48 gray crop
made by ``edge.features.face``; it is trained with on-the-fly augmentation (shift, scale, small rotation,
horizontal flip, brightness/contrast), AdamW with a one-cycle schedule, label smoothing, a class-balanced
cross-entropy (the disgust class is 1.5% of the data) and, when a teacher is given, distillation from the
teacher's logits (precomputed once with ONNX Runtime and cached). The epoch with the best validation
accuracy is kept, exported to ONNX (outputs ``logits`` and ``embedding``) and described in ``card.toml``.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import importlib.util
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edge.errors import InputError
from edge.evaluation.face import class_folder_root, list_images, read_images
from edge.evaluation.metrics import classification_metrics
from edge.features.face import DEFAULT_MARGIN, DEFAULT_SIZE, NORMALISATION
from edge.paths import PROJECT_ROOT, cache_dir, models_dir
from edge.paths import data_dir as default_data_dir
from edge.zoo.common import (
    command_line,
    count_parameters,
    distillation_loss,
    export_onnx,
    progress,
    seed_everything,
    write_card,
)

LABELS = ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]
# mini-Xception (oarriaga/face_classification) output order -> index into LABELS
TEACHER_LABELS = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
TEACHER_FILES = ["fer2013_mini_XCEPTION.102-0.66.hdf5", "fer2013_mini_XCEPTION.107-0.66.hdf5",
                 "fer2013_big_XCEPTION.54-0.66.hdf5"]
TEACHER_SIZE = 64
MAX_PARAMETERS = 60_000
# True: the exported graph averages the face and its mirror image (see MirrorAverage; about twice the compute).
# Off for the shipped model so that its command reproduces it: no run with it finished in this session.
MIRROR_AVERAGE = False
DEFAULTS = {"epochs": 15, "batch_size": 128, "lr": 4e-3}
FER2013_TERMS = (
    "FER2013 (Goodfellow et al., ICML 2013 Kaggle challenge 'Challenges in Representation Learning'): "
    "no licence; images collected by Google image search and distributed by Kaggle for the research challenge. "
    "Research and non-commercial use only; do not redistribute in a product. The weights inherit these terms."
)


# ---------------------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------------------

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
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp.npz")
    np.savez(tmp, x=x, y=y)
    tmp.replace(cache)
    return x, y


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, S, S) -> float32 (N, 1, S, S) normalised as ``edge.features.face.normalise``."""
    return torch.from_numpy(images).float().mul_(2.0 / 255.0).sub_(1.0).unsqueeze(1)


def augment(x: torch.Tensor, generator: torch.Generator, flip: torch.Tensor) -> torch.Tensor:
    """Random affine (shift +-10%, scale 0.9-1.1, rotation +-10 deg, flip given) and brightness/contrast."""
    n = x.shape[0]
    u = lambda lo, hi: torch.empty(n).uniform_(lo, hi, generator=generator)  # noqa: E731
    angle = u(-10.0, 10.0) * math.pi / 180.0
    scale = u(0.9, 1.1)
    sign = 1.0 - 2.0 * flip.float()
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([
        torch.stack([cos * sign, -sin, u(-0.2, 0.2)], dim=1),
        torch.stack([sin * sign, cos, u(-0.2, 0.2)], dim=1),
    ], dim=1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    contrast = u(0.7, 1.3).view(n, 1, 1, 1)
    brightness = u(-0.25, 0.25).view(n, 1, 1, 1)
    return (x * contrast + brightness).clamp_(-1.0, 1.0)


# ---------------------------------------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------------------------------------

class SeparableConv(nn.Sequential):
    """Depthwise 3x3 then pointwise 1x1 convolution, each followed by batch norm."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(
            nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False),
            nn.Conv2d(cin, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )


class XceptionBlock(nn.Module):
    """Two separable convolutions, then max-pool /2 (or no pooling), plus a 1x1 (or identity) shortcut."""

    def __init__(self, cin: int, cout: int, downsample: bool = True) -> None:
        super().__init__()
        self.main = nn.Sequential(
            SeparableConv(cin, cout), nn.ReLU(inplace=True), SeparableConv(cout, cout),
            nn.MaxPool2d(3, stride=2, padding=1) if downsample else nn.Identity(),
        )
        if downsample or cin != cout:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=2 if downsample else 1, bias=False), nn.BatchNorm2d(cout)
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.main(x) + self.shortcut(x))


class FaceStudent(nn.Module):
    """Xception-style CNN for 48x48 gray faces: returns (logits, embedding).

    A two-convolution stem halves the resolution early (the 48x48 layers dominate CPU time), then
    Xception blocks widen and halve it again; ``extra`` identity blocks run at 12x12, where they are cheap.
    """

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64, 126), extra: int = 1, n_classes: int = 7,
                 dropout: float = 0.2) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, widths[0], 3, padding=1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True),
            nn.Conv2d(widths[0], widths[1], 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(widths[1]),
            nn.ReLU(inplace=True),
        )
        blocks: list[nn.Module] = []
        for i, (cin, cout) in enumerate(zip(widths[1:-1], widths[2:], strict=True)):
            blocks.append(XceptionBlock(cin, cout))
            if i == 0:
                blocks += [XceptionBlock(cout, cout, downsample=False) for _ in range(extra)]
        self.blocks = nn.Sequential(*blocks)
        self.embedding_size = widths[-1]
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(widths[-1], n_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = self.blocks(self.stem(x)).mean(dim=(2, 3))
        return self.head(self.dropout(embedding)), embedding


class MirrorAverage(nn.Module):
    """The shipped graph: the student's embedding averaged over the face and its mirror image, then its head.

    Faces are left-right symmetric in meaning, so averaging both views is a cheap gain (twice the compute,
    no extra parameters). The head is linear, so ``logits = head(embedding)`` still holds for the outputs.
    """

    def __init__(self, student: FaceStudent) -> None:
        super().__init__()
        self.student = student
        self.embedding_size = student.embedding_size

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        both = torch.cat([x, torch.flip(x, dims=[3])], dim=0)
        features = self.student.blocks(self.student.stem(both)).mean(dim=(2, 3))
        embedding = 0.5 * (features[: x.shape[0]] + features[x.shape[0] :])
        return self.student.head(embedding), embedding


# ---------------------------------------------------------------------------------------------------------
# teacher
# ---------------------------------------------------------------------------------------------------------

def _converter() -> Any:
    path = PROJECT_ROOT / "tools" / "convert_mini_xception.py"
    spec = importlib.util.spec_from_file_location("convert_mini_xception", path)
    if spec is None or spec.loader is None or not path.exists():
        raise InputError(f"{path}: the teacher converter is missing (it ships in the source checkout)")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def teacher_paths(spec: str | None, data: Path) -> list[Path]:
    """Teacher ONNX/HDF5 files: ``spec`` (comma-separated paths), 'none', or the default mini-Xception ensemble."""
    if spec and spec.lower() == "none":
        return []
    if spec:
        return [Path(p) for p in spec.split(",")]
    folder = data.parent / "teachers" / "fer_mini_xception"
    if not folder.is_dir():
        folder = default_data_dir() / "teachers" / "fer_mini_xception"
    return [folder / name for name in TEACHER_FILES if (folder / name).exists()]


def teacher_logits(paths: list[Path], images: np.ndarray, show: bool) -> np.ndarray:
    """Average logits (in LABELS order) of the teachers over ``images`` and their mirror: (2, N, 7), cached.

    HDF5 teachers are converted to ONNX (into the cache) with tools/convert_mini_xception.py first.
    """
    import onnxruntime as ort

    key = hashlib.sha256(("|".join(str(p) for p in paths)).encode() + images[:: max(1, len(images) // 64)].tobytes()
                         + str(images.shape).encode()).hexdigest()[:16]
    cache = cache_dir() / "face" / f"teacher-logits-{key}.npy"
    if cache.exists():
        return np.load(cache)
    order = [TEACHER_LABELS.index(label) for label in LABELS]
    total = np.zeros((2, len(images), len(LABELS)), dtype=np.float32)
    for path in paths:
        if path.suffix in (".hdf5", ".h5"):
            onnx_path = cache_dir() / "face" / "teachers" / (path.stem + ".onnx")
            if not onnx_path.exists():
                _converter().convert(path, onnx_path)
            path = onnx_path
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        for flip in (0, 1):
            for start in progress(range(0, len(images), 512), show, desc=f"teacher {path.stem} flip={flip}"):
                batch = images[start : start + 512]
                batch = batch[:, :, ::-1] if flip else batch
                x = teacher_input(batch)
                logits = session.run(["logits"], {name: x})[0]
                total[flip, start : start + len(batch)] += logits[:, order]
    total /= max(len(paths), 1)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache, total)
    return total


def teacher_input(images: np.ndarray) -> np.ndarray:
    """uint8 (N, 48, 48) -> the mini-Xception input (N, 1, 64, 64) in [-1, 1]."""
    import cv2

    resized = np.stack([cv2.resize(np.ascontiguousarray(im), (TEACHER_SIZE, TEACHER_SIZE),
                                   interpolation=cv2.INTER_LINEAR) for im in images])
    return (resized.astype(np.float32) / 255.0 * 2.0 - 1.0)[:, None]


# ---------------------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------------------

def predict(model: nn.Module, x: torch.Tensor, batch: int = 512) -> np.ndarray:
    """Predicted classes, as the shipped graph makes them (mirror-averaged when ``MIRROR_AVERAGE``)."""
    model.eval()
    view = MirrorAverage(model) if MIRROR_AVERAGE and isinstance(model, FaceStudent) else model
    out = []
    with torch.no_grad():
        for start in range(0, len(x), batch):
            out.append(view(x[start : start + batch])[0].argmax(dim=1).numpy())
    return np.concatenate(out)


def class_weights(y: np.ndarray, power: float) -> torch.Tensor:
    """(1 / count)^power, scaled to mean 1 over samples: power 0 is plain CE, 1 fully balanced."""
    counts = np.bincount(y, minlength=len(LABELS)).astype(np.float64)
    w = (1.0 / np.maximum(counts, 1.0)) ** power
    w /= (w[y]).mean()
    return torch.tensor(w, dtype=torch.float32)


def train(data_dir: str | None, out_dir: Path | None, args: argparse.Namespace) -> Path:
    started = time.perf_counter()
    data = Path(data_dir) if data_dir else default_data_dir() / "fer2013"
    out = Path(out_dir) if out_dir else models_dir() / "face"
    epochs = getattr(args, "epochs", None) or DEFAULTS["epochs"]
    batch_size = getattr(args, "batch_size", None) or DEFAULTS["batch_size"]
    lr = getattr(args, "lr", None) or DEFAULTS["lr"]
    seed = int(getattr(args, "seed", 0) or 0)
    max_steps = getattr(args, "max_steps", None)
    show = not getattr(args, "no_progress", False)
    checkpoints = not max_steps  # a full run writes its best model so far after each better epoch
    alpha, temperature, smoothing, weight_power, weight_decay = 0.5, 4.0, 0.1, 0.5, 0.01
    generator = seed_everything(seed, getattr(args, "threads", 0) or None)

    train_root, val_root = class_folder_root(data, "train"), class_folder_root(data, "validation")
    if train_root == val_root:
        raise InputError(f"{data}: needs train/ and validation/ folders of class folders")
    x_train_u8, y_train = load_images_cached(train_root)
    x_val_u8, y_val = load_images_cached(val_root)
    x_train, x_val = to_tensor(x_train_u8), to_tensor(x_val_u8)
    print(f"face: {len(y_train)} training and {len(y_val)} validation images from {data}")

    teachers = teacher_paths(getattr(args, "teacher", None), data)
    soft = torch.from_numpy(teacher_logits(teachers, x_train_u8, show)) if teachers else None
    if teachers:
        agreement = (soft[0].argmax(1).numpy() == y_train).mean()  # type: ignore[index]
        print(f"teacher: {', '.join(p.name for p in teachers)} (training-set accuracy {agreement:.3f})")

    model = FaceStudent()
    parameters = count_parameters(model)
    model = model.to(memory_format=torch.channels_last)  # about 20% faster on CPU for depthwise convolutions
    if parameters > MAX_PARAMETERS:
        raise InputError(f"face student has {parameters} parameters, more than the {MAX_PARAMETERS} allowed")
    steps_per_epoch = math.ceil(len(y_train) / batch_size)
    total_steps = epochs * steps_per_epoch if not max_steps else min(max_steps, epochs * steps_per_epoch)
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=max(total_steps, 2),
                                                   pct_start=0.15)
    weights = class_weights(y_train, weight_power)
    y_train_t = torch.from_numpy(y_train)
    def _export(state: dict[str, torch.Tensor], epochs_done: int, final: bool) -> float:
        """Write model.onnx and card.toml for ``state``; before the end, as a checkpoint of the run in progress."""
        student = FaceStudent()
        student.load_state_dict(state)
        export_model = MirrorAverage(student).eval() if MIRROR_AVERAGE else student.eval()
        out.mkdir(parents=True, exist_ok=True)
        diffs = export_onnx(export_model, x_val[:8], out / "model.onnx", "face", ["logits", "embedding"])
        seconds = time.perf_counter() - started
        card = {
            "name": "face",
            "version": "1.0.0",
            "modality": "face",
            "description": (
                f"Facial expression (7 FER2013 classes) from a {DEFAULT_SIZE}x{DEFAULT_SIZE} gray face crop: an "
                f"Xception-style CNN of {parameters} parameters"
                + (", distilled from the mini-Xception ensemble" if teachers else "") + "."
            ),
            "labels": LABELS,
            "inputs": [{
                "name": "face", "shape": ["batch", 1, DEFAULT_SIZE, DEFAULT_SIZE], "dtype": "float32",
                "layout": "NCHW", "normalisation": NORMALISATION,
            }],
            "outputs": [
                {"name": "logits", "shape": ["batch", len(LABELS)], "dtype": "float32",
                 "meaning": "logits over labels"},
                {"name": "embedding", "shape": ["batch", export_model.embedding_size], "dtype": "float32",
                 "meaning": "global-average-pooled features that the final linear layer reads"},
            ],
            "features": {"recipe": "edge.features.face.face_input", "params": {
                "size": DEFAULT_SIZE, "margin": DEFAULT_MARGIN, "detector": "OpenCV haarcascade_frontalface_default",
                "face": "largest detected face, square box grown by the margin on each side, gray, resized",
            }},
            "parameters": parameters,
            "training": {
                "data": f"FER2013 train ({len(y_train)} images, {train_root}); selected on FER2013 validation "
                        f"(PublicTest, {len(y_val)} images, {val_root})",
                "terms": FER2013_TERMS,
                "command": command_line(),
                "teacher": ", ".join(p.name for p in teachers) if teachers else None,
                "seconds": round(seconds, 1),
                "seed": seed,
            },
            "notes": (
                ("" if final else f"CHECKPOINT of a run in progress (after epoch {epochs_done} of {epochs}); "
                 "seconds so far. ")
                + f"Recipe: {epochs} epochs (best epoch {best['epoch']}, by validation accuracy), batch {batch_size}, "
                f"AdamW lr {lr} one-cycle, weight decay {weight_decay}, label smoothing {smoothing}, class weights "
                f"(1/count)^{weight_power}, augmentation shift 10% / scale 0.9-1.1 / rotation 10 deg / flip / "
                f"brightness-contrast"
                + (f", distillation alpha {alpha} T {temperature} from the teachers' mean logits on the unaugmented "
                   f"(or mirrored) training images" if teachers else "")
                + (". The graph averages the embedding of the face and of its mirror image (test-time flip; "
                   "selection on validation used the same)" if MIRROR_AVERAGE else "")
                + ". ONNX Runtime vs torch max abs difference: "
                + ", ".join(f"{k} {v:.2g}" for k, v in diffs.items()) + " (tolerance 1e-4 + 1e-3*|x|)."
                + (f" Stopped after {step} steps (--max-steps)." if max_steps else "")
            ),
        }
        write_card(card, out)
        return seconds

    best: dict[str, Any] = {"accuracy": -1.0}
    history = []
    step = 0
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(y_train), generator=generator)
        flips = torch.rand(len(y_train), generator=generator) < 0.5
        running, seen = 0.0, 0
        bar = progress(range(steps_per_epoch), show, desc=f"epoch {epoch + 1}/{epochs}")
        for b in bar:
            idx = order[b * batch_size : (b + 1) * batch_size]
            flip = flips[idx]
            xb = augment(x_train[idx], generator, flip).contiguous(memory_format=torch.channels_last)
            t = soft[flip.long(), idx] if soft is not None else None
            logits, _ = model(xb)
            loss = distillation_loss(logits, y_train_t[idx], t, temperature, alpha if t is not None else 0.0,
                                     weights, smoothing)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            step += 1
            running += loss.item() * len(idx)
            seen += len(idx)
            if show and hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{running / seen:.3f}")  # type: ignore[attr-defined]
            if step >= total_steps:
                break
        metrics = classification_metrics(y_val, predict(model, x_val), LABELS)
        history.append({"epoch": epoch + 1, "loss": running / max(seen, 1), "accuracy": metrics["accuracy"],
                        "macro_f1": metrics["macro_f1"]})
        print(f"epoch {epoch + 1}: loss {running / max(seen, 1):.4f}  validation accuracy {metrics['accuracy']:.4f}"
              f"  macro-F1 {metrics['macro_f1']:.4f}", flush=True)
        if metrics["accuracy"] > best["accuracy"]:
            best = {"accuracy": metrics["accuracy"], "epoch": epoch + 1, "state": copy.deepcopy(model.state_dict())}
            if checkpoints and step < total_steps and epoch + 1 < epochs:
                _export(best["state"], epochs_done=epoch + 1, final=False)
        if step >= total_steps:
            break

    final = _export(best["state"], epochs_done=len(history), final=True)
    print(f"face: best validation accuracy {best['accuracy']:.4f} at epoch {best['epoch']}; {parameters} parameters; "
          f"{final:.0f} s")
    return out
