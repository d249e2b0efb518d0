#!/usr/bin/env python3
"""Convert the Keras (2.x, HDF5) mini-Xception face-expression models of Arriaga et al. to ONNX, without TensorFlow.

The HDF5 file holds both the architecture (``model_config``) and the weights; this script walks the layer graph
and writes the same graph with ``onnx.helper``: Conv2D and SeparableConv2D (depthwise Conv with group=C, then a
pointwise Conv), BatchNormalization, ReLU, MaxPooling2D, Add, GlobalAveragePooling2D and the final softmax.

The ONNX model takes ``image`` float32 (batch, 1, 64, 64) NCHW, gray scaled as ``x / 255 * 2 - 1`` (the
repository's preprocess_input), and returns ``logits`` (the pooled scores before the softmax) and
``probabilities``, in the Keras label order of the file (FER2013: angry, disgust, fear, happy, sad, surprise,
neutral). Every HDF5 weight becomes one initializer, so the parameter counts match exactly.

    python tools/convert_mini_xception.py ../shared/data/teachers/fer_mini_xception/fer2013_mini_XCEPTION.102-0.66.hdf5 \
        --out /tmp/mini_xception.onnx [--check ../shared/data/fer2013/validation]

``convert(h5_path, onnx_path) -> Path`` is the API (used by ``edge.zoo.face`` and the benchmarks).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

FER2013_KERAS_LABELS = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
INPUT_NAME = "image"
OPSET = 17


class ConversionError(ValueError):
    """The HDF5 file is not a Keras model this converter understands."""


def _weights(h5: Any, layer: str) -> dict[str, np.ndarray]:
    """The weights of one layer by short name (kernel, bias, gamma, ...), from model_weights/<layer>."""
    group = h5["model_weights"][layer] if "model_weights" in h5 else h5[layer]
    out: dict[str, np.ndarray] = {}

    def visit(name: str, obj: Any) -> None:
        if hasattr(obj, "shape"):
            out[name.split("/")[-1].split(":")[0]] = np.asarray(obj, dtype=np.float32)

    group.visititems(visit)
    return out


def hdf5_weight_count(h5_path: str | Path) -> int:
    """Number of weight values stored in the file (Keras 'total params', BN statistics included)."""
    import h5py

    with h5py.File(h5_path, "r") as h5:
        total = 0

        def visit(_: str, obj: Any) -> None:
            nonlocal total
            if hasattr(obj, "shape"):
                total += int(np.prod(obj.shape))

        h5["model_weights"].visititems(visit)
    return total


def _same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow 'same' padding (extra at the end) for one spatial axis."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def convert(h5_path: str | Path, onnx_path: str | Path) -> Path:
    """Convert a Keras mini-Xception HDF5 file to ONNX at ``onnx_path`` (parent folders are made); returns it."""
    import h5py
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    h5_path, onnx_path = Path(h5_path), Path(onnx_path)
    try:
        h5 = h5py.File(h5_path, "r")
    except OSError as exc:
        raise ConversionError(f"{h5_path}: not a readable HDF5 file ({exc})") from None
    with h5:
        if "model_config" not in h5.attrs:
            raise ConversionError(f"{h5_path}: no model_config attribute (a weights-only file?)")
        config = json.loads(h5.attrs["model_config"])
        layers = config["config"]["layers"]
        nodes: list[Any] = []
        inits: list[Any] = []
        shapes: dict[str, tuple[int, int, int]] = {}  # layer -> (C, H, W)
        names: dict[str, str] = {}  # layer -> ONNX tensor name of its output
        graph_input = None
        final = None

        def init(name: str, array: np.ndarray) -> str:
            inits.append(numpy_helper.from_array(np.ascontiguousarray(array, dtype=np.float32), name))
            return name

        for layer in layers:
            kind, name, cfg = layer["class_name"], layer["name"], layer["config"]
            inbound = [n[0] for n in layer["inbound_nodes"][0]] if layer["inbound_nodes"] else []
            src = names[inbound[0]] if inbound else None
            c, h, w = shapes[inbound[0]] if inbound else (0, 0, 0)
            out = name
            if kind == "InputLayer":
                _, h, w, c = cfg["batch_input_shape"]
                graph_input = helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", c, h, w])
                names[name], shapes[name] = INPUT_NAME, (c, h, w)
                continue
            if kind in ("Conv2D", "SeparableConv2D"):
                if cfg.get("data_format", "channels_last") != "channels_last" or cfg.get("dilation_rate", [1, 1]) != [1, 1]:
                    raise ConversionError(f"{h5_path}: layer {name}: only channels_last, undilated convolutions")
                if cfg.get("activation", "linear") != "linear":
                    raise ConversionError(f"{h5_path}: layer {name}: fused activation {cfg['activation']} not supported")
                wts = _weights(h5, name)
                (kh, kw), (sh, sw) = cfg["kernel_size"], cfg["strides"]
                if cfg["padding"] == "same":
                    (pt, pb), (pl, pr) = _same_pads(h, kh, sh), _same_pads(w, kw, sw)
                else:
                    pt = pb = pl = pr = 0
                pads = [pt, pl, pb, pr]
                ho, wo = (h + pt + pb - kh) // sh + 1, (w + pl + pr - kw) // sw + 1
                x = src
                if kind == "SeparableConv2D":
                    dw = wts["depthwise_kernel"]  # (kh, kw, C, mult)
                    mult = dw.shape[3]
                    dw_w = init(f"{name}.depthwise", dw.transpose(2, 3, 0, 1).reshape(c * mult, 1, kh, kw))
                    nodes.append(helper.make_node("Conv", [x, dw_w], [f"{name}.dw"], group=c, kernel_shape=[kh, kw],
                                                  strides=[sh, sw], pads=pads, name=f"{name}/depthwise"))
                    x, kernel = f"{name}.dw", wts["pointwise_kernel"]
                    kshape, kstrides, kpads = [1, 1], [1, 1], [0, 0, 0, 0]
                else:
                    kernel = wts["kernel"]
                    kshape, kstrides, kpads = [kh, kw], [sh, sw], pads
                inputs = [x, init(f"{name}.kernel", kernel.transpose(3, 2, 0, 1))]
                if cfg.get("use_bias", False):
                    inputs.append(init(f"{name}.bias", wts["bias"]))
                nodes.append(helper.make_node("Conv", inputs, [out], kernel_shape=kshape, strides=kstrides,
                                              pads=kpads, name=name))
                shapes[name] = (kernel.shape[3], ho, wo)
            elif kind == "BatchNormalization":
                if cfg.get("axis", -1) not in (-1, 3) or not cfg.get("scale", True) or not cfg.get("center", True):
                    raise ConversionError(f"{h5_path}: layer {name}: only channel-axis BN with scale and center")
                wts = _weights(h5, name)
                ins = [init(f"{name}.{k}", wts[k]) for k in ("gamma", "beta", "moving_mean", "moving_variance")]
                nodes.append(helper.make_node("BatchNormalization", [src, *ins], [out], epsilon=float(cfg["epsilon"]),
                                              name=name))
                shapes[name] = (c, h, w)
            elif kind == "Activation":
                act = cfg["activation"]
                if act == "relu":
                    nodes.append(helper.make_node("Relu", [src], [out], name=name))
                elif act == "softmax":
                    nodes.append(helper.make_node("Identity", [src], ["logits"], name=f"{name}/logits"))
                    nodes.append(helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1, name=name))
                    final = name
                    out = "probabilities"
                else:
                    raise ConversionError(f"{h5_path}: layer {name}: activation '{act}' not supported")
                shapes[name] = (c, h, w)
            elif kind == "MaxPooling2D":
                (kh, kw), (sh, sw) = cfg["pool_size"], cfg["strides"] or cfg["pool_size"]
                if cfg["padding"] == "same":
                    (pt, pb), (pl, pr) = _same_pads(h, kh, sh), _same_pads(w, kw, sw)
                else:
                    pt = pb = pl = pr = 0
                nodes.append(helper.make_node("MaxPool", [src], [out], kernel_shape=[kh, kw], strides=[sh, sw],
                                              pads=[pt, pl, pb, pr], name=name))
                shapes[name] = (c, (h + pt + pb - kh) // sh + 1, (w + pl + pr - kw) // sw + 1)
            elif kind == "Add":
                nodes.append(helper.make_node("Add", [names[i] for i in inbound], [out], name=name))
                shapes[name] = (c, h, w)
            elif kind == "GlobalAveragePooling2D":
                nodes.append(helper.make_node("GlobalAveragePool", [src], [f"{name}.4d"], name=name))
                nodes.append(helper.make_node("Flatten", [f"{name}.4d"], [out], axis=1, name=f"{name}/flatten"))
                shapes[name] = (c, 1, 1)
            elif kind == "Dropout":
                nodes.append(helper.make_node("Identity", [src], [out], name=name))
                shapes[name] = (c, h, w)
            else:
                raise ConversionError(f"{h5_path}: layer {name}: Keras layer type {kind} is not supported")
            names[name] = out
        if graph_input is None or final is None:
            raise ConversionError(f"{h5_path}: expected an input layer and a final softmax activation")
        n_classes = shapes[final][0]
        graph = helper.make_graph(
            nodes, h5_path.stem, [graph_input],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", n_classes]),
             helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", n_classes])],
            inits,
        )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="convert_mini_xception")
    model.ir_version = 8
    model.doc_string = f"converted from {h5_path.name} (Keras {config.get('keras_version', '2.x')}); input x/255*2-1"
    onnx.checker.check_model(model, full_check=True)
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(onnx_path))
    return onnx_path


def onnx_parameter_count(onnx_path: str | Path) -> int:
    """Number of values in the ONNX initializers."""
    import onnx

    return sum(int(np.prod(t.dims)) for t in onnx.load(str(onnx_path)).graph.initializer)


def preprocess(gray_u8: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W) faces -> (N, 1, 64, 64) float32 in [-1, 1] (bilinear resize, as cv2.resize in the repo)."""
    import cv2

    resized = np.stack([cv2.resize(np.ascontiguousarray(im), (64, 64)) for im in gray_u8])
    return (resized.astype(np.float32) / 255.0 * 2.0 - 1.0)[:, None]


def check_on_folder(onnx_path: str | Path, folder: str | Path, labels: list[str] = FER2013_KERAS_LABELS) -> dict[str, Any]:
    """Accuracy and macro-F1 of the converted model with ONNX Runtime on a folder of class folders."""
    import onnxruntime as ort

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from edge.evaluation.face import list_images, read_images
    from edge.evaluation.metrics import classification_metrics

    paths, targets, _ = list_images(Path(folder), labels)
    images = read_images(paths, 48)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    predictions = np.concatenate([
        session.run(["logits"], {INPUT_NAME: preprocess(images[i : i + 256])})[0].argmax(1)
        for i in range(0, len(images), 256)
    ])
    return classification_metrics(np.asarray(targets), predictions, labels)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("h5", help="Keras HDF5 file (e.g. fer2013_mini_XCEPTION.102-0.66.hdf5)")
    parser.add_argument("--out", required=True, help="ONNX file to write (a cache or tmp path; never commit it)")
    parser.add_argument("--check", help="folder of FER2013 class folders: print accuracy and macro-F1 with ONNX Runtime")
    args = parser.parse_args(argv)
    try:
        path = convert(args.h5, args.out)
    except ConversionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path}: {onnx_parameter_count(path)} parameters (HDF5 holds {hdf5_weight_count(args.h5)})")
    if args.check:
        m = check_on_folder(path, args.check)
        recall = ", ".join(f"{k} {v['recall']:.3f}" for k, v in m["per_class"].items() if v["recall"] is not None)
        print(f"{args.check}: accuracy {m['accuracy']:.4f}, macro-F1 {m['macro_f1']:.4f}, n {m['n']}; recall: {recall}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
