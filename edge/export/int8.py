"""INT8 as explicit quantization: a QDQ ONNX made by ONNX Runtime's static quantization.

The file is made for TensorRT as much as for ONNX Runtime: symmetric INT8 activations and weights
(every zero point 0, which TensorRT's explicit quantization requires), per-channel weight scales,
QuantizeLinear/DequantizeLinear pairs (QDQ format), opset at most 20 (ORT's static quantization does
not handle 21).

Weights use 7 of the 8 bits (``reduce_range``: integers in [-64, 64]) so that the file gives the same
answers on every CPU. ONNX Runtime's x86 INT8 kernels without VNNI (AVX2, and AVX-512 without VNNI)
multiply with ``vpmaddubsw``: unsigned 8-bit activations (the signed ones shifted by 128) times signed
8-bit weights, two products summed into a *saturating* 16-bit lane. With 8-bit weights a pair reaches
255 * 127 * 2 = 64,770 and clips at 32,767; with 7-bit weights it is at most 255 * 64 * 2 = 32,640, so
nothing clips. VNNI (``vpdpbusd``) and Arm's dot-product instructions accumulate in 32 bits and never
clipped. Measured on the face model (tools/cpu_check.py, 200 FER2013 validation images): full 8-bit
weights agree with FP32 on 97% of images with VNNI and on 61.5% under ``qemu-x86_64 -cpu Haswell``;
7-bit weights agree on 97% on both, with identical outputs. Unsigned activations (U8S8) do not help:
they saturate the same way (58.5%). The zero points stay 0, as TensorRT requires. The calibration method (how activation ranges are chosen from the calibration set)
is selectable: ``minmax`` (the full range seen), ``entropy`` (the range that keeps the most
information), ``percentile`` (clips the top 0.001 %).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge.errors import ModelError

log = logging.getLogger(__name__)

METHODS = ("minmax", "entropy", "percentile")
# What is quantized by default: the operators with weights, where INT8 pays (TensorRT's own placement
# advice: Q/DQ on the inputs of weighted layers), plus the data-movement and pooling operators that let
# INT8 run on between them. "all" quantizes every operator ONNX Runtime can (Add, Softmax, Div, ...),
# which costs accuracy on small models for little speed.
WEIGHTED_OP_TYPES = (
    "Conv", "ConvTranspose", "Gemm", "MatMul",
    "Relu", "Clip", "MaxPool", "AveragePool", "GlobalAveragePool",
    "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Concat",
)
MAX_OPSET = 20
# The recipe, recorded in every INT8 artifact's card record (see the module docstring for why).
RECIPE = "QDQ; activations int8 symmetric per-tensor; weights int8 symmetric per-channel, 7-bit (reduce_range)"
# Operators that carry weights: their second input must be a per-channel INT8 tensor after quantization.
WEIGHTED_OPS = {"Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1}


@dataclass
class QdqSummary:
    """What a QDQ graph quantized, checked for what TensorRT needs."""

    quantized_ops: dict[str, int] = field(default_factory=dict)  # op type -> count fed by DequantizeLinear
    float_ops: dict[str, int] = field(default_factory=dict)  # compute ops left in float
    nonzero_zero_points: list[str] = field(default_factory=list)
    per_tensor_weights: list[str] = field(default_factory=list)  # weights quantized with one scale
    qdq_nodes: int = 0


def inspect_qdq(model: Any, op_types: tuple[str, ...] | None = None) -> QdqSummary:
    """Summarise a QDQ ``onnx.ModelProto``: quantized and float ops, zero points, weight scales.

    An operator counts as quantized when it reads a DequantizeLinear output and is of a type that was
    asked to be quantized (``op_types``; None: any), so a float Add after a quantized MatMul is not.
    """
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    producers = {out: node for node in model.graph.node for out in node.output}
    summary = QdqSummary()
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            summary.qdq_nodes += 1
            if len(node.input) > 2 and node.input[2]:
                zp = inits.get(node.input[2])
                if zp is None or np.any(numpy_helper.to_array(zp) != 0):
                    summary.nonzero_zero_points.append(node.name or node.output[0])
            continue
        fed = [producers.get(i) for i in node.input]
        if any(p is not None and p.op_type == "DequantizeLinear" for p in fed) and (
            op_types is None or node.op_type in op_types
        ):
            summary.quantized_ops[node.op_type] = summary.quantized_ops.get(node.op_type, 0) + 1
            index = WEIGHTED_OPS.get(node.op_type)
            if index is not None and len(node.input) > index:
                dq = producers.get(node.input[index])
                if dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0] in inits:
                    scale = inits.get(dq.input[1])
                    if scale is None or numpy_helper.to_array(scale).ndim == 0:
                        summary.per_tensor_weights.append(node.name or node.output[0])
        elif node.op_type not in ("Constant", "Shape", "Cast", "Identity"):
            summary.float_ops[node.op_type] = summary.float_ops.get(node.op_type, 0) + 1
    return summary


def _equal_batches(batches: list[dict[str, np.ndarray]], largest: int = 32) -> list[dict[str, np.ndarray]]:
    """The same samples in batches of one size (ORT's histogram calibrators, entropy and percentile, stack
    the outputs of every batch and fail on a shorter last batch): the largest size up to ``largest``
    that divides the sample count."""
    merged = {k: np.concatenate([b[k] for b in batches], axis=0) for k in batches[0]}
    n = len(next(iter(merged.values())))
    size = max(d for d in range(1, min(largest, n) + 1) if n % d == 0)
    return [{k: v[i : i + size] for k, v in merged.items()} for i in range(0, n, size)]


@contextmanager
def _working_directory(path: Path) -> Iterator[None]:
    """ONNX Runtime's symbolic shape inference writes ``sym_shape_infer_temp.onnx`` into the working directory
    when it gives up on a graph: run it in the temporary folder so that nothing lands in the user's."""
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def default_opset(model: Any) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def quantize_int8(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    batches: list[dict[str, np.ndarray]],
    method: str = "minmax",
    op_types: str | tuple[str, ...] = "weighted",
    reduce_range: bool = True,
) -> QdqSummary:
    """Write the QDQ INT8 version of ``src`` to ``dst``, calibrated on ``batches``; return its summary.

    ``reduce_range=False`` (full 8-bit weights) exists only to reproduce the x86 saturation the module
    docstring describes (tests/test_cpu_portability.py); artifacts are always made with 7-bit weights.

    ``op_types``: "weighted" (``WEIGHTED_OP_TYPES``), "all" (whatever ONNX Runtime can), or a tuple of types.
    Raises ModelError when ONNX Runtime cannot quantize the model (e.g. an operator it cannot run),
    when nothing in it could be quantized, or when the result breaks what TensorRT requires.
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    if method not in METHODS:
        raise ModelError(f"unknown calibration method '{method}' (expected one of {', '.join(METHODS)})")
    if not batches or not any(len(next(iter(b.values()))) for b in batches):
        raise ModelError("the calibration set is empty: nothing to calibrate INT8 ranges on")
    batches = _equal_batches(batches)
    types = None if op_types == "all" else list(WEIGHTED_OP_TYPES if op_types == "weighted" else op_types)
    calibrate_method = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[method]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it: Iterator[dict[str, np.ndarray]] = iter(batches)

        def get_next(self) -> Any:  # a feed, or None when the batches are used up
            return next(self._it, None)

        def rewind(self) -> None:
            self._it = iter(batches)

    try:
        model = onnx.load(str(src))
    except Exception as exc:
        raise ModelError(f"{src}: not a readable ONNX model ({type(exc).__name__}: {exc})") from None
    with tempfile.TemporaryDirectory(prefix="emoedge-int8-") as tmp:
        staged = Path(tmp) / "model.onnx"
        opset = default_opset(model)
        if opset > MAX_OPSET:
            from onnx import version_converter

            try:
                model = version_converter.convert_version(model, MAX_OPSET)
            except Exception as exc:
                raise ModelError(
                    f"{src}: opset {opset} is above {MAX_OPSET}, which ONNX Runtime's static quantization needs, "
                    f"and converting it down failed ({exc}); export the model with opset <= {MAX_OPSET}"
                ) from None
            log.info("%s: converted opset %d -> %d for quantization", src, opset, MAX_OPSET)
        onnx.save(model, str(staged))
        prepared = Path(tmp) / "model.pre.onnx"
        try:
            with _working_directory(Path(tmp)):
                quant_pre_process(str(staged), str(prepared))
        except Exception as exc:  # symbolic shape inference gives up on some graphs: plain shape inference then
            log.info("quant_pre_process with symbolic shapes failed (%s); retrying without", exc)
            try:
                with _working_directory(Path(tmp)):
                    quant_pre_process(str(staged), str(prepared), skip_symbolic_shape=True)
            except Exception as exc2:
                raise ModelError(f"{src}: ONNX Runtime cannot prepare this model for quantization: {exc2}") from None
        try:
            quantize_static(
                str(prepared),
                str(dst),
                Reader(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                reduce_range=reduce_range,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=calibrate_method,
                op_types_to_quantize=types,
                extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
            )
        except Exception as exc:  # ORT raises Fail/InvalidGraph/... from the calibration session
            raise ModelError(f"{src}: ONNX Runtime could not quantize this model: {type(exc).__name__}: {exc}") from None
    summary = inspect_qdq(onnx.load(str(dst)), None if op_types == "all" else tuple(types or ()))
    if not summary.quantized_ops:
        Path(dst).unlink(missing_ok=True)
        ops = ", ".join(f"{k} x{v}" for k, v in sorted(summary.float_ops.items())) or "none"
        raise ModelError(
            f"{src}: no operator of this model is one ONNX Runtime can quantize (its operators: {ops}); "
            "an INT8 file would be the FP32 model with extra nodes, so none is written"
        )
    if summary.nonzero_zero_points or summary.per_tensor_weights:
        Path(dst).unlink(missing_ok=True)
        raise ModelError(
            f"{src}: the quantized graph breaks TensorRT's rules: non-zero zero points at {summary.nonzero_zero_points}, "
            f"per-tensor weights at {summary.per_tensor_weights}"
        )
    return summary


def store_weights_int8(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> tuple[int, int]:
    """Store every Conv and Gemm weight as symmetric per-output-channel INT8 behind a DequantizeLinear.

    Weight-only: activations and arithmetic stay FP32 and inputs/outputs keep their types, so the file is a
    drop-in FP32 model at a quarter of the size (used for the face teacher, which is shipped for
    distillation rather than for devices). Returns the file sizes before and after.
    """
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    dequantize, done = [], set()
    for node in graph.node:
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 2 or node.input[1] in done:
            continue
        name = node.input[1]
        if name not in initializers or initializers[name].data_type != onnx.TensorProto.FLOAT:
            continue
        weight = numpy_helper.to_array(initializers[name])
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        axis = 1 if node.op_type == "Gemm" and not trans_b else 0  # the output-channel axis
        other = tuple(i for i in range(weight.ndim) if i != axis)
        scale = np.abs(weight).max(axis=other) / 127.0
        scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
        shape = [1] * weight.ndim
        shape[axis] = -1
        quantized = np.clip(np.round(weight / scale.reshape(shape)), -127, 127).astype(np.int8)
        graph.initializer.remove(initializers[name])
        graph.initializer.extend([
            numpy_helper.from_array(quantized, f"{name}_int8"),
            numpy_helper.from_array(scale, f"{name}_scale"),
            numpy_helper.from_array(np.zeros_like(scale, dtype=np.int8), f"{name}_zero"),
        ])
        dequantize.append(helper.make_node("DequantizeLinear", [f"{name}_int8", f"{name}_scale", f"{name}_zero"],
                                           [name], name=f"{name}_dequantize", axis=axis))
        done.add(name)
    if not done:
        raise ModelError(f"{src}: no FP32 Conv or Gemm weights to store as INT8")
    nodes = dequantize + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(dst))
    return Path(src).stat().st_size if Path(src) != Path(dst) else -1, Path(dst).stat().st_size
