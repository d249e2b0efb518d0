"""FP16 ONNX with FP32 inputs and outputs, made by onnxconverter-common's float16 converter.

Keeping the inputs and outputs FP32 (``keep_io_types``) means the card, the feature code and every
runner feed the FP16 file exactly as they feed the FP32 one; the converter inserts the casts. On
TensorRT 11 this file is what a strongly typed network builds from.
"""

from __future__ import annotations

import os
from pathlib import Path

from edge.errors import BackendUnavailable, ModelError


def _separate_consumed_outputs(model: object) -> int:
    """Give every graph output that other nodes also read its own Identity node; return how many.

    The converter keeps such an output FP32 by casting it under its own name, after which the nodes
    that read it would get FP32 where they expect FP16 (an invalid graph, e.g. a Gemm with mixed
    types). With an Identity in between, the internal tensor stays FP16 and only the output is cast.
    """
    from onnx import helper

    graph = model.graph  # type: ignore[attr-defined]
    consumed = {name for node in graph.node for name in node.input}
    outputs = [o.name for o in graph.output if o.name in consumed]
    for name in outputs:
        internal = f"{name}__internal"
        for node in graph.node:
            node.output[:] = [internal if o == name else o for o in node.output]
            node.input[:] = [internal if i == name else i for i in node.input]
        graph.node.append(helper.make_node("Identity", [internal], [name], name=f"{name}__output"))
    return len(outputs)


def convert_fp16(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Write the FP16 version of ``src`` to ``dst``."""
    import onnx

    try:
        from onnxconverter_common import float16
    except ImportError:
        raise BackendUnavailable(
            "FP16 conversion needs onnxconverter-common: pip install 'emoedge[train]' (or pip install onnxconverter-common)"
        ) from None
    try:
        model = onnx.load(str(src))
    except Exception as exc:
        raise ModelError(f"{src}: not a readable ONNX model ({type(exc).__name__}: {exc})") from None
    _separate_consumed_outputs(model)
    try:
        converted = float16.convert_float_to_float16(model, keep_io_types=True)
    except Exception as exc:  # the converter raises plain Exceptions for graphs it cannot handle
        raise ModelError(f"{src}: the FP16 converter failed: {type(exc).__name__}: {exc}") from None
    onnx.save(converted, str(Path(dst)))
