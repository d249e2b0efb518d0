"""Small real models, data and a toy evaluator for the quantization and engine tests.

The toy evaluator is a real ``edge.evaluation`` module: tests register it in ``EVALUATORS`` under
the toy model's name. Its data folder holds ``train.npz`` and ``validation.npz`` (images as 8-bit
pixels scaled to [-1, 1], like a face crop, and class labels).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edge.evaluation import LabelledSet
from edge.evaluation.metrics import classification_metrics

LABELS = ["calm", "happy", "sad", "angry"]
SIDE = 16

CARD = """\
name = "{name}"
version = "0.0.1"
modality = "face"
labels = ["calm", "happy", "sad", "angry"]
parameters = {parameters}

[[inputs]]
name = "image"
shape = ["batch", 1, {side}, {side}]
dtype = "float32"
layout = "NCHW"
normalisation = "pixels / 127.5 - 1"

[[outputs]]
name = "logits"
shape = ["batch", 4]
dtype = "float32"
meaning = "logits over labels"

[features]
recipe = "toy-image"

[training]
data = "synthetic images made in the test"
terms = "none"

[quantization]
max_loss_points = {allowance}
metric = "{metric}"
"""


def make_conv_onnx(path: Path, seed: int = 0, opset: int = 17) -> int:
    """A small real conv net (two convs, pooling, a dense layer) made with onnx.helper; returns its parameter count."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)

    def init(name: str, shape: tuple[int, ...], scale: float) -> Any:
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    weights = [
        init("w1", (8, 1, 3, 3), 0.5), init("b1", (8,), 0.1),
        init("w2", (16, 8, 3, 3), 0.2), init("b2", (16,), 0.1),
        init("wf", (4, 16), 0.5), init("bf", (4,), 0.1),
    ]
    nodes = [
        helper.make_node("Conv", ["image", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "toyconv",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, SIDE, SIDE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    # Random weights favour one class; shift the output bias until every class is predicted about equally often.
    images = (rng.integers(0, 256, (512, 1, SIDE, SIDE)) / 127.5 - 1).astype(np.float32)
    logits = _predict(path, images)
    shift = np.zeros(4)
    for _ in range(300):
        shares = np.bincount((logits + shift).argmax(axis=1), minlength=4) / len(logits)
        shift -= 0.2 * (shares - 0.25) * logits.std()
    bias = next(w for w in model.graph.initializer if w.name == "bf")
    bias.CopyFrom(numpy_helper.from_array((numpy_helper.to_array(bias) + shift).astype(np.float32), "bf"))
    onnx.save(model, str(path))
    return int(sum(np.prod(w.dims) for w in weights))


def make_model_folder(root: Path, name: str = "toyconv", allowance: float = 1.0, metric: str = "accuracy") -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    parameters = make_conv_onnx(folder / "model.onnx")
    (folder / "card.toml").write_text(
        CARD.format(name=name, parameters=parameters, side=SIDE, allowance=allowance, metric=metric)
    )
    return folder


def _predict(model_path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    return session.run(None, {"image": x})[0]


def make_data(folder: Path, model_path: Path, n_train: int = 400, n_val: int = 300, seed: int = 0,
              outliers: int = 0) -> Path:
    """Images as 8-bit pixels scaled to [-1, 1], labelled by the FP32 model (90 %) or at random (10 %),
    so that FP32 has a realistic accuracy and the gate has something to lose. ``outliers`` training
    images are scaled by 1000 (a broken calibration source)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("validation", n_val)):
        # keep the images the model is sure about (top-2 margin in the upper third), as a trained model is on
        # most real samples; near-ties would make any rounding look like an accuracy loss
        pixels = rng.integers(0, 256, size=(4 * n, 1, SIDE, SIDE))
        x = (pixels / 127.5 - 1.0).astype(np.float32)
        logits = _predict(model_path, x)
        top2 = np.sort(logits, axis=1)[:, -2:]
        margin = top2[:, 1] - top2[:, 0]
        keep = np.sort(np.argsort(-margin)[:n])
        x, logits = x[keep], logits[keep]
        y = logits.argmax(axis=1)
        noisy = rng.random(n) < 0.1
        y[noisy] = rng.integers(0, len(LABELS), size=int(noisy.sum()))
        if split == "train" and outliers:
            x[:outliers] *= 1000.0
        np.savez(folder / f"{split}.npz", x=x, y=y)
    return folder


# --- the evaluator module interface --------------------------------------------------------------


def load_split(card: Any, data_dir: Path, split: str, limit: int | None = None, seed: int = 0,
               mode: str | None = None) -> LabelledSet:
    path = Path(data_dir) / f"{split}.npz"
    if not path.is_file():
        from edge.errors import InputError

        raise InputError(f"{path}: no {split} split here")
    with np.load(path) as npz:
        x, y = npz["x"], npz["y"]
    if limit is not None and limit < len(y):
        index = np.sort(np.random.default_rng(seed).choice(len(y), size=limit, replace=False))
        x, y = x[index], y[index]
    return LabelledSet(inputs={"image": x}, labels=y, description=f"toy images ({path.parent.name}, {split})")


def evaluate(runner: Any, card: Any, data: LabelledSet) -> dict[str, Any]:
    preds = []
    x = data.inputs["image"]
    for i in range(0, len(data), 16):
        preds.append(runner.infer({"image": x[i : i + 16]})["logits"].argmax(axis=1))
    return classification_metrics(np.asarray(data.labels), np.concatenate(preds), card.labels)
