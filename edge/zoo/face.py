"""Face expression student (7 FER2013 classes, at most 60,000 parameters), trained and distilled on FER2013.

``emoedge train face --data DIR --out models/face_fast``: DIR holds ``train/`` and ``validation/`` folders of
class folders (fer2013). The recipe (``RECIPE``) is split over four modules: ``edge.zoo.face_data`` (images
decoded once and cached, augmentation, the teachers' cached logits), ``edge.zoo.face_nets`` (the networks and
the warm start from an exported student), ``edge.zoo.face_fit`` (the training loop) and this one (the
command and the card). The names the rest of the project and the tests use are re-exported here.

The recipe's student (v2, shipped as ``models/face_fast``) runs one pass per face, built so that ONNX Runtime's
fused NCHWc kernels cover the whole graph on AVX2 and AVX-512 CPUs (see ``edge.zoo.face_nets``). It is
warm-started from the shipped v1 student (``models/face``, which averages each face with its mirror image
inside the graph: twice the work, and 3.7 points more accurate) and distilled from the mean logits of that
v1 and the ResNet teacher (``models/face/teacher``),
with on-the-fly augmentation, AdamW with a one-cycle schedule, label smoothing and a class-balanced
cross-entropy (disgust is 1.5% of the data). The epoch with the best validation accuracy is exported to
ONNX (outputs ``logits`` and ``embedding``) and described in ``card.toml``.
"""

from __future__ import annotations

import argparse
import hashlib
import time
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from edge.errors import InputError
from edge.evaluation.face import class_folder_root
from edge.features.face import DEFAULT_MARGIN, DEFAULT_SIZE, NORMALISATION
from edge.paths import PROJECT_ROOT, models_dir
from edge.paths import data_dir as default_data_dir
from edge.zoo.common import (
    command_line,
    count_parameters,
    export_onnx,
    recipe_from_args,
    seed_everything,
    write_card,
)
from edge.zoo.face_data import (
    LABELS,
    TEACHER_FILES,
    TEACHER_LABELS,
    TEACHER_SIZE,
    augment,
    augmented_views,
    load_images_cached,
    teacher_input,
    teacher_labels,
    teacher_logits,
    teacher_paths,
    to_tensor,
)
from edge.zoo.face_fit import class_weights, fit, predict
from edge.zoo.face_nets import (
    FaceStudent,
    FaceTeacher,
    MirrorAverage,
    ResidualBlock,
    XceptionBlock,
    init_from_onnx,
)

__all__ = [
    "LABELS", "MAX_PARAMETERS", "RECIPE", "TEACHER_FILES", "TEACHER_LABELS", "TEACHER_RECIPE", "TEACHER_SIZE",
    "FaceStudent", "FaceTeacher", "MirrorAverage", "ResidualBlock", "XceptionBlock", "augment", "class_weights",
    "face_card", "fit", "load_images_cached", "predict", "teacher_input", "teacher_labels", "teacher_logits",
    "teacher_paths", "to_tensor", "train",
]

MAX_PARAMETERS = 60_000
# The recipe of `emoedge train face` (student) and `emoedge train face-teacher`; --epochs/--batch-size/--lr
# override the first three, --set the others. alpha and temperature only apply when a teacher is given;
# init is the exported student to warm-start from ('none': random weights), relative to the project; ema is
# the decay of the moving average of the weights that is validated and exported (0: the weights themselves);
# augment scales the augmentation's ranges (1: as below, 0: flip only); teacher_views above 0 distils
# consistently, from that many augmented copies of each image run through the teachers once (0: the teachers
# see the unaugmented image and its mirror only).
RECIPE: dict[str, Any] = {"epochs": 14, "batch_size": 128, "lr": 2e-3, "alpha": 0.7, "temperature": 4.0,
                          "smoothing": 0.1, "weight_power": 0.5, "weight_decay": 0.01, "mirror_average": False,
                          "widths": (16, 32, 64, 128), "extra": 1, "pool_early": True, "separable_stem": False,
                          "init": "models/face/model.onnx", "ema": 0.0,
                          "augment": 1.0, "teacher_views": 0}
TEACHER_RECIPE: dict[str, Any] = {**RECIPE, "epochs": 60, "batch_size": 128, "lr": 2e-3, "alpha": 0.5,
                                  "weight_decay": 0.05, "mirror_average": True, "init": "none"}
WARM_START_IMAGES = 2048  # training images that set the warm student's BatchNorm statistics
FER2013_TERMS = (
    "FER2013 (Goodfellow et al., ICML 2013 Kaggle challenge 'Challenges in Representation Learning'): "
    "no licence; images collected by Google image search and distributed by Kaggle for the research challenge. "
    "Research and non-commercial use only; do not redistribute in a product. The weights inherit these terms."
)


def student(recipe: dict[str, Any]) -> FaceStudent:
    """The student the recipe describes (widths, extra blocks, where blocks pool, the stem)."""
    return FaceStudent(tuple(recipe["widths"]), extra=recipe["extra"], pool_early=recipe["pool_early"],
                       separable_stem=recipe["separable_stem"])


def init_path(recipe: dict[str, Any]) -> Path | None:
    """The recipe's warm start file (relative paths are the project's), or None for 'none'."""
    init = str(recipe.get("init") or "none")
    if init.lower() == "none":
        return None
    path = Path(init) if Path(init).is_absolute() else PROJECT_ROOT / init
    if not path.is_file():
        raise InputError(f"recipe init: {path} not found (--set init=none trains from random weights)")
    return path


def train(data_dir: str | None, out_dir: Path | None, args: argparse.Namespace, teacher_model: bool = False) -> Path:
    """``emoedge train face`` (the student, distilled) or, with ``teacher_model``, ``emoedge train face-teacher``."""
    started = time.perf_counter()
    name = "face-teacher" if teacher_model else "face"
    data = Path(data_dir) if data_dir else default_data_dir() / "fer2013"
    out = Path(out_dir) if out_dir else models_dir() / ("face/teacher" if teacher_model else "face_fast")
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
    views = None
    if teachers and int(recipe["teacher_views"]) > 0:
        views = augmented_views(x_train_u8, int(recipe["teacher_views"]), seed, float(recipe["augment"]))
        soft = teacher_logits(teachers, views, show)
    else:
        soft = teacher_logits(teachers, x_train_u8, show) if teachers else None
    if soft is not None:
        agreement = (soft.argmax(2) == y_train[None]).mean()
        print(f"teacher: {', '.join(_teacher_name(p) for p in teachers)} "
              f"(training-set accuracy {agreement:.3f} over {len(soft)} view(s) of each image)")

    model: nn.Module = FaceTeacher() if teacher_model else student(recipe)
    parameters = count_parameters(model)
    if not teacher_model and parameters > MAX_PARAMETERS:
        raise InputError(f"face student has {parameters} parameters, more than the {MAX_PARAMETERS} allowed")
    warm = None if teacher_model else init_path(recipe)
    warm_digest = ""
    if warm is not None and isinstance(model, FaceStudent):
        rows = np.random.default_rng(seed).choice(len(y_train), min(WARM_START_IMAGES, len(y_train)), replace=False)
        copied = init_from_onnx(model, warm, to_tensor(x_train_u8[np.sort(rows)]))
        # the file's digest goes into the card: a run that writes where it started from overwrites that file
        warm_digest = hashlib.sha256(warm.read_bytes()).hexdigest()
        print(f"warm start: {len(copied)} weight tensors from {_teacher_name(warm)} (sha256 {warm_digest})")
    example = to_tensor(x_val_u8[:8])

    def _export(best: dict[str, Any], epochs_done: int, final: bool = False) -> float:
        """Write model.onnx and card.toml for ``best``; before the end, as a checkpoint of the run in progress."""
        net: nn.Module = FaceTeacher() if teacher_model else student(recipe)
        net.load_state_dict(best["state"])
        export_model = MirrorAverage(net).eval() if recipe["mirror_average"] and isinstance(net, FaceStudent) \
            else net.eval()
        out.mkdir(parents=True, exist_ok=True)
        diffs = export_onnx(export_model, example, out / "model.onnx", "face", ["logits", "embedding"])
        if teacher_model:  # shipped for distillation, not for devices: a quarter of the size, same outputs to ~1e-2
            from edge.export.int8 import store_weights_int8

            store_weights_int8(out / "model.onnx", out / "model.onnx")
        seconds = time.perf_counter() - started
        # a student's card is named after its folder (models/face, models/face_fast), the name emoedge resolves
        write_card(face_card(name if teacher_model else out.resolve().name, recipe, parameters, int(export_model.embedding_size), teachers, best, diffs,
                             seconds, seed, device, len(y_train), len(y_val), train_root, val_root, epochs_done,
                             final, warm=warm, warm_sha256=warm_digest, step_note=f" Stopped after {max_steps} steps (--max-steps)." if max_steps else ""),
                   out)
        return seconds

    best, history, _ = fit(model, x_train_u8, y_train, x_val_u8, y_val, soft, recipe, generator, device, show,
                           max_steps, on_better=None if max_steps else _export, views=views)
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


def _augmentation(strength: float) -> str:
    """The card's words for the augmentation at ``strength`` (the ranges of ``edge.zoo.face_data.augment``)."""
    if strength == 1.0:
        return "augmentation shift 10% / scale 0.9-1.1 / rotation 10 deg / flip / brightness-contrast"
    return (f"augmentation at {strength:g} of the full ranges (shift {10 * strength:g}% / scale +-{0.1 * strength:g} / "
            f"rotation {10 * strength:g} deg / flip / brightness +-{0.25 * strength:g}, contrast +-{0.3 * strength:g})")


def face_card(name: str, recipe: dict[str, Any], parameters: int, embedding_size: int, teachers: list[Path],
              best: dict[str, Any], diffs: dict[str, float], seconds: float, seed: int, device: str, n_train: int,
              n_val: int, train_root: Path, val_root: Path, epochs_done: int, final: bool,
              warm: Path | None = None, step_note: str = "", warm_sha256: str = "") -> dict[str, Any]:
    """The card of a face model (student or teacher) as ``edge.card.ModelCard`` fields."""
    teacher_model = name == "face-teacher"  # a student's name is its folder's
    mirror = recipe["mirror_average"] and not teacher_model
    architecture = ("a narrow ResNet-18 (teacher for the face student; not meant for devices)" if teacher_model
                    else "an Xception-style CNN" + ("" if mirror else " (one pass per face)"))
    shape = "" if teacher_model else (
        f". Student: widths {'/'.join(str(w) for w in recipe['widths'])}, {recipe['extra']} extra block(s) at "
        f"12x12, {'separable' if recipe['separable_stem'] else 'full'} strided stem convolution, max-pool "
        + ("between the two separable convolutions of a block" if recipe["pool_early"] else "at the end of a block")
        + (f"; warm-started from {_teacher_name(warm)}" if warm is not None else "")
        + (f" (the file of sha256 {warm_sha256})" if warm is not None and warm_sha256 else ""))
    return {
        "name": name,
        "version": "1.0.0",
        "modality": "face",
        "description": (
            f"Facial expression (7 FER2013 classes) from a {DEFAULT_SIZE}x{DEFAULT_SIZE} gray face crop: "
            f"{architecture} of {parameters} parameters"
            + (f", distilled from {' and '.join(_teacher_name(p) for p in teachers)}" if teachers else "") + "."
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
            f"(1/count)^{recipe['weight_power']}, "
            + (f"exponential moving average of the weights (decay {recipe['ema']}, validated and exported), "
               if float(recipe.get("ema") or 0.0) > 0.0 else "")
            + _augmentation(float(recipe.get("augment", 1.0))) + shape
            + (f"; distillation alpha {recipe['alpha']} T {recipe['temperature']} from the teachers' mean logits on "
               + (f"the very image the student sees ({int(recipe['teacher_views'])} augmented views of each training "
                  "image, one drawn per sample)" if int(recipe.get("teacher_views") or 0) > 0
                  else "the unaugmented (or mirrored) training images") if teachers else "")
            + (". The graph averages the embedding of the face and of its mirror image (test-time flip; "
               "selection on validation used the same)" if mirror else "")
            + (". Conv and Gemm weights are stored as per-channel INT8 behind DequantizeLinear (weight-only: the "
               "arithmetic stays FP32), so the file is a quarter of the FP32 size; the ONNX Runtime check below is of "
               "the FP32 export before that step" if teacher_model else "")
            + ". ONNX Runtime vs torch max abs difference: "
            + ", ".join(f"{k} {v:.2g}" for k, v in diffs.items()) + " (tolerance 1e-4 + 1e-3*|x|)." + step_note
        ),
    }
