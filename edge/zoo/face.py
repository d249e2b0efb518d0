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
    recipe_from_args,
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
# The recipe of `emoedge train face` (student) and `emoedge train face-teacher`; --epochs/--batch-size/--lr
# override the first three. alpha and temperature only apply when a teacher is given.
RECIPE: dict[str, Any] = {"epochs": 60, "batch_size": 128, "lr": 4e-3, "alpha": 0.5, "temperature": 4.0,
                          "smoothing": 0.1, "weight_power": 0.5, "weight_decay": 0.01, "mirror_average": True}
TEACHER_RECIPE: dict[str, Any] = {**RECIPE, "epochs": 60, "batch_size": 128, "lr": 2e-3, "weight_decay": 0.05}
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
    """Random affine (shift +-10%, scale 0.9-1.1, rotation +-10 deg, flip given) and brightness/contrast.

    The random numbers come from the (CPU) ``generator`` whatever ``x``'s device, so a seed means the same
    augmentation on a CPU and on a GPU.
    """
    n = x.shape[0]
    u = lambda lo, hi: torch.empty(n).uniform_(lo, hi, generator=generator).to(x.device)  # noqa: E731
    flip = flip.to(x.device)
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


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with batch norm (ResNet's basic block), the first one striding when asked."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
        )
        self.shortcut: nn.Module = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.main(x) + self.shortcut(x))


class FaceTeacher(nn.Module):
    """A narrow ResNet-18 for 48x48 gray faces (about 2.8M parameters): the teacher the student is distilled from.

    It is trained here (``emoedge train face-teacher``, minutes on a GPU) because the mini-Xception teachers
    in shared/ reach only 0.61 on FER2013 validation, which caps what a student can learn from them.
    """

    def __init__(self, widths: tuple[int, ...] = (32, 64, 128, 256), blocks: int = 2, n_classes: int = 7,
                 dropout: float = 0.3) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, widths[0], 3, padding=1, bias=False), nn.BatchNorm2d(widths[0]),
                                  nn.ReLU(inplace=True))
        layers: list[nn.Module] = []
        cin = widths[0]
        for i, width in enumerate(widths):
            for j in range(blocks):
                layers.append(ResidualBlock(cin, width, stride=2 if i > 0 and j == 0 else 1))
                cin = width
        self.blocks = nn.Sequential(*layers)
        self.embedding_size = widths[-1]
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(widths[-1], n_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = self.blocks(self.stem(x)).mean(dim=(2, 3))
        return self.head(self.dropout(embedding)), embedding


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
    """Teacher files: ``spec`` (comma-separated ONNX/HDF5 files or model folders), 'none', or the default.

    The default is the teacher shipped in ``models/face/teacher`` (trained by ``emoedge train face-teacher``),
    else the mini-Xception ensemble in the data folder's ``teachers/``.
    """
    if spec and spec.lower() == "none":
        return []
    if spec:
        return [Path(p) / "model.onnx" if Path(p).is_dir() else Path(p) for p in spec.split(",")]
    shipped = models_dir() / "face" / "teacher" / "model.onnx"
    if shipped.exists():
        return [shipped]
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


def teacher_logits(paths: list[Path], images: np.ndarray, show: bool) -> np.ndarray:
    """Average logits (in LABELS order) of the teachers over ``images`` and their mirror: (2, N, 7), cached.

    HDF5 teachers are converted to ONNX (into the cache) with tools/convert_mini_xception.py first. The cache
    key holds the teachers' bytes, so a retrained teacher is run again.
    """
    import onnxruntime as ort

    digest = hashlib.sha256()
    for path in paths:
        digest.update(str(path).encode() + (path.read_bytes() if path.exists() else b""))
    digest.update(images[:: max(1, len(images) // 64)].tobytes() + str(images.shape).encode())
    cache = cache_dir() / "face" / f"teacher-logits-{digest.hexdigest()[:16]}.npy"
    if cache.exists():
        return np.load(cache)
    total = np.zeros((2, len(images), len(LABELS)), dtype=np.float32)
    for path in paths:
        labels = teacher_labels(path)
        order = [labels.index(label) for label in LABELS]
        if path.suffix in (".hdf5", ".h5"):
            onnx_path = cache_dir() / "face" / "teachers" / (path.stem + ".onnx")
            if not onnx_path.exists():
                _converter().convert(path, onnx_path)
            path = onnx_path
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        size = session.get_inputs()[0].shape[-1]
        size = size if isinstance(size, int) else TEACHER_SIZE
        for flip in (0, 1):
            for start in progress(range(0, len(images), 512), show, desc=f"teacher {path.stem} flip={flip}"):
                batch = images[start : start + 512]
                batch = batch[:, :, ::-1] if flip else batch
                logits = np.asarray(session.run(["logits"], {name: teacher_input(batch, size)})[0])
                total[flip, start : start + len(batch)] += logits[:, order]
    total /= max(len(paths), 1)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache, total)
    return total


def teacher_input(images: np.ndarray, size: int = TEACHER_SIZE) -> np.ndarray:
    """uint8 (N, 48, 48) -> a teacher's input (N, 1, size, size) in [-1, 1] (mini-Xception: 64x64)."""
    import cv2

    if images.shape[-1] != size:
        images = np.stack([cv2.resize(np.ascontiguousarray(im), (size, size), interpolation=cv2.INTER_LINEAR)
                           for im in images])
    return (images.astype(np.float32) / 255.0 * 2.0 - 1.0)[:, None]


# ---------------------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------------------

def predict(model: nn.Module, x: torch.Tensor, mirror_average: bool = False, batch: int = 512) -> np.ndarray:
    """Predicted classes, as the shipped graph makes them (mirror-averaged when asked)."""
    model.eval()
    view = MirrorAverage(model) if mirror_average and isinstance(model, FaceStudent) else model
    out = []
    with torch.no_grad():
        for start in range(0, len(x), batch):
            out.append(view(x[start : start + batch])[0].argmax(dim=1).cpu().numpy())
    return np.concatenate(out)


def class_weights(y: np.ndarray, power: float) -> torch.Tensor:
    """(1 / count)^power, scaled to mean 1 over samples: power 0 is plain CE, 1 fully balanced."""
    counts = np.bincount(y, minlength=len(LABELS)).astype(np.float64)
    w = (1.0 / np.maximum(counts, 1.0)) ** power
    w /= (w[y]).mean()
    return torch.tensor(w, dtype=torch.float32)


def fit(
    model: nn.Module, x_train_u8: np.ndarray, y_train: np.ndarray, x_val_u8: np.ndarray, y_val: np.ndarray,
    soft: np.ndarray | None, recipe: dict[str, Any], generator: torch.Generator, device: str = "cpu",
    show: bool = False, max_steps: int | None = None, on_better: Any = None,
) -> tuple[dict[str, Any], list[dict[str, float]], int]:
    """Train ``model`` on the arrays by ``recipe``; returns the best epoch (by validation accuracy), history, steps.

    ``soft`` holds teacher logits (2, N, 7) for the plain and mirrored images, or None. ``on_better(best)``
    is called after each epoch that beats the previous best (the CLI writes a checkpoint there). On a GPU
    the forward pass runs in bfloat16 autocast; the random numbers come from the CPU ``generator`` anyway.
    """
    epochs, batch_size, lr = recipe["epochs"], recipe["batch_size"], recipe["lr"]
    x_train, x_val = to_tensor(x_train_u8).to(device), to_tensor(x_val_u8).to(device)
    soft_t = torch.from_numpy(soft).to(device) if soft is not None else None
    # channels_last: about 20% faster on CPU (depthwise convs); torch accepts memory_format, its stubs do not say so
    model = model.to(device).to(memory_format=torch.channels_last)  # pyright: ignore[reportCallIssue]
    steps_per_epoch = math.ceil(len(y_train) / batch_size)
    total_steps = epochs * steps_per_epoch if not max_steps else min(max_steps, epochs * steps_per_epoch)
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=recipe["weight_decay"])
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=max(total_steps, 2),
                                                   pct_start=0.15)
    weights = class_weights(y_train, recipe["weight_power"]).to(device)
    y_train_t = torch.from_numpy(y_train).to(device)
    autocast = device.startswith("cuda")
    best: dict[str, Any] = {"accuracy": -1.0, "epoch": 0}
    history: list[dict[str, float]] = []
    step = 0
    for epoch in range(epochs):
        epoch_started = time.perf_counter()
        model.train()
        order = torch.randperm(len(y_train), generator=generator)
        flips = torch.rand(len(y_train), generator=generator) < 0.5
        running = torch.zeros((), device=device)
        seen = 0
        bar = progress(range(steps_per_epoch), show, desc=f"epoch {epoch + 1}/{epochs}")
        for b in bar:
            idx = order[b * batch_size : (b + 1) * batch_size]
            flip = flips[idx]
            idx_d = idx.to(device)
            xb = augment(x_train[idx_d], generator, flip).contiguous(memory_format=torch.channels_last)
            t = soft_t[flip.long().to(device), idx_d] if soft_t is not None else None
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=autocast):
                logits, _ = model(xb)
            loss = distillation_loss(logits.float(), y_train_t[idx_d], t, recipe["temperature"],
                                     recipe["alpha"] if t is not None else 0.0, weights, recipe["smoothing"])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            step += 1
            running += loss.detach() * len(idx)
            seen += len(idx)
            if show and hasattr(bar, "set_postfix") and b % 20 == 0:
                bar.set_postfix(loss=f"{float(running) / seen:.3f}")  # type: ignore[attr-defined]
            if step >= total_steps:
                break
        metrics = classification_metrics(y_val, predict(model, x_val, recipe["mirror_average"]), LABELS)
        loss_mean = float(running) / max(seen, 1)
        history.append({"epoch": epoch + 1, "loss": loss_mean, "accuracy": metrics["accuracy"],
                        "macro_f1": metrics["macro_f1"]})
        print(f"epoch {epoch + 1}: loss {loss_mean:.4f}  validation accuracy {metrics['accuracy']:.4f}"
              f"  macro-F1 {metrics['macro_f1']:.4f}  ({time.perf_counter() - epoch_started:.1f} s)", flush=True)
        if metrics["accuracy"] > best["accuracy"]:
            state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            best = {"accuracy": metrics["accuracy"], "epoch": epoch + 1, "state": state}
            if on_better is not None and step < total_steps and epoch + 1 < epochs:
                on_better(best, epoch + 1)
        if step >= total_steps:
            break
    return best, history, step


def train(data_dir: str | None, out_dir: Path | None, args: argparse.Namespace, teacher_model: bool = False) -> Path:
    """``emoedge train face`` (the student, distilled) or, with ``teacher_model``, ``emoedge train face-teacher``."""
    started = time.perf_counter()
    name = "face-teacher" if teacher_model else "face"
    data = Path(data_dir) if data_dir else default_data_dir() / "fer2013"
    out = Path(out_dir) if out_dir else models_dir() / "face" / ("teacher" if teacher_model else "")
    recipe = recipe_from_args(TEACHER_RECIPE if teacher_model else RECIPE, args)
    seed = int(getattr(args, "seed", 0) or 0)
    max_steps = getattr(args, "max_steps", None)
    device = getattr(args, "device", None) or "cpu"
    show = not getattr(args, "no_progress", False)
    generator = seed_everything(seed, getattr(args, "threads", 0) or None)

    train_root, val_root = class_folder_root(data, "train"), class_folder_root(data, "validation")
    if train_root == val_root:
        raise InputError(f"{data}: needs train/ and validation/ folders of class folders")
    x_train_u8, y_train = load_images_cached(train_root)
    x_val_u8, y_val = load_images_cached(val_root)
    print(f"{name}: {len(y_train)} training and {len(y_val)} validation images from {data}")

    teachers = [] if teacher_model else teacher_paths(getattr(args, "teacher", None), data)
    soft = teacher_logits(teachers, x_train_u8, show) if teachers else None
    if soft is not None:
        agreement = (soft[0].argmax(1) == y_train).mean()
        print(f"teacher: {', '.join(_teacher_name(p) for p in teachers)} "
              f"(training-set accuracy {agreement:.3f})")

    model: nn.Module = FaceTeacher() if teacher_model else FaceStudent()
    parameters = count_parameters(model)
    if not teacher_model and parameters > MAX_PARAMETERS:
        raise InputError(f"face student has {parameters} parameters, more than the {MAX_PARAMETERS} allowed")
    example = to_tensor(x_val_u8[:8])

    def _export(best: dict[str, Any], epochs_done: int, final: bool = False) -> float:
        """Write model.onnx and card.toml for ``best``; before the end, as a checkpoint of the run in progress."""
        net: nn.Module = FaceTeacher() if teacher_model else FaceStudent()
        net.load_state_dict(best["state"])
        export_model = MirrorAverage(net).eval() if recipe["mirror_average"] and isinstance(net, FaceStudent) \
            else net.eval()
        out.mkdir(parents=True, exist_ok=True)
        diffs = export_onnx(export_model, example, out / "model.onnx", "face", ["logits", "embedding"])
        if teacher_model:  # shipped for distillation, not for devices: a quarter of the size, same outputs to ~1e-2
            from edge.export.int8 import store_weights_int8

            store_weights_int8(out / "model.onnx", out / "model.onnx")
        seconds = time.perf_counter() - started
        write_card(face_card(name, recipe, parameters, int(export_model.embedding_size), teachers, best, diffs,
                             seconds, seed, device, len(y_train), len(y_val), train_root, val_root, epochs_done,
                             final, step_note=f" Stopped after {max_steps} steps (--max-steps)." if max_steps else ""),
                   out)
        return seconds

    best, history, _ = fit(model, x_train_u8, y_train, x_val_u8, y_val, soft, recipe, generator, device, show,
                           max_steps, on_better=None if max_steps else _export)
    seconds = _export(best, len(history), final=True)
    print(f"{name}: best validation accuracy {best['accuracy']:.4f} at epoch {best['epoch']}; {parameters} "
          f"parameters; {seconds:.0f} s")
    return out


def _teacher_name(path: Path) -> str:
    """A teacher as the card names it: the file name, or a model folder relative to the project when inside it."""
    if path.name != "model.onnx":
        return path.name
    folder = path.parent.resolve()
    return folder.relative_to(PROJECT_ROOT).as_posix() if folder.is_relative_to(PROJECT_ROOT) else folder.as_posix()


def face_card(name: str, recipe: dict[str, Any], parameters: int, embedding_size: int, teachers: list[Path],
              best: dict[str, Any], diffs: dict[str, float], seconds: float, seed: int, device: str, n_train: int,
              n_val: int, train_root: Path, val_root: Path, epochs_done: int, final: bool,
              step_note: str = "") -> dict[str, Any]:
    """The card of a face model (student or teacher) as ``edge.card.ModelCard`` fields."""
    teacher_model = name == "face-teacher"
    mirror = recipe["mirror_average"] and not teacher_model
    architecture = ("a narrow ResNet-18 (teacher for the face student; not meant for devices)" if teacher_model
                    else "an Xception-style CNN")
    return {
        "name": name,
        "version": "1.0.0",
        "modality": "face",
        "description": (
            f"Facial expression (7 FER2013 classes) from a {DEFAULT_SIZE}x{DEFAULT_SIZE} gray face crop: "
            f"{architecture} of {parameters} parameters"
            + (f", distilled from {'the face-teacher model' if any(p.name == 'model.onnx' for p in teachers) else 'the mini-Xception ensemble'}"
               if teachers else "") + "."
        ),
        "labels": LABELS,
        "inputs": [{
            "name": "face", "shape": ["batch", 1, DEFAULT_SIZE, DEFAULT_SIZE], "dtype": "float32",
            "layout": "NCHW", "normalisation": NORMALISATION,
        }],
        "outputs": [
            {"name": "logits", "shape": ["batch", len(LABELS)], "dtype": "float32", "meaning": "logits over labels"},
            {"name": "embedding", "shape": ["batch", embedding_size], "dtype": "float32",
             "meaning": "global-average-pooled features that the final linear layer reads"
                        + (" (mean of the face's and its mirror image's)" if mirror else "")},
        ],
        "features": {"recipe": "edge.features.face.face_input", "params": {
            "size": DEFAULT_SIZE, "margin": DEFAULT_MARGIN, "detector": "OpenCV haarcascade_frontalface_default",
            "face": "largest detected face, square box grown by the margin on each side, gray, resized",
        }},
        "parameters": parameters,
        "training": {
            "data": f"FER2013 train ({n_train} images, {train_root}); selected on FER2013 validation "
                    f"(PublicTest, {n_val} images, {val_root})",
            "terms": FER2013_TERMS,
            "command": command_line(),
            "teacher": ", ".join(_teacher_name(p) for p in teachers) if teachers else None,
            "seconds": round(seconds, 1),
            "seed": seed,
        },
        "notes": (
            ("" if final else f"CHECKPOINT of a run in progress (after epoch {epochs_done} of {recipe['epochs']}); "
             "seconds so far. ")
            + f"Trained on {device}. Recipe: {recipe['epochs']} epochs (best epoch {best['epoch']}, by validation "
            f"accuracy), batch {recipe['batch_size']}, AdamW lr {recipe['lr']} one-cycle, weight decay "
            f"{recipe['weight_decay']}, label smoothing {recipe['smoothing']}, class weights "
            f"(1/count)^{recipe['weight_power']}, augmentation shift 10% / scale 0.9-1.1 / rotation 10 deg / flip / "
            "brightness-contrast"
            + (f", distillation alpha {recipe['alpha']} T {recipe['temperature']} from the teachers' mean logits on "
               "the unaugmented (or mirrored) training images" if teachers else "")
            + (". The graph averages the embedding of the face and of its mirror image (test-time flip; "
               "selection on validation used the same)" if mirror else "")
            + (". Conv and Gemm weights are stored as per-channel INT8 behind DequantizeLinear (weight-only: the "
               "arithmetic stays FP32), so the file is a quarter of the FP32 size; the ONNX Runtime check below is of "
               "the FP32 export before that step" if teacher_model else "")
            + ". ONNX Runtime vs torch max abs difference: "
            + ", ".join(f"{k} {v:.2g}" for k, v in diffs.items()) + " (tolerance 1e-4 + 1e-3*|x|)." + step_note
        ),
    }
