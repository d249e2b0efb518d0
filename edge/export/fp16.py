"""FP16 ONNX with FP32 inputs and outputs, made by onnxconverter-common's float16 converter.

Keeping the inputs and outputs FP32 (``keep_io_types``) means the card, the feature code and every
runner feed the FP16 file exactly as they feed the FP32 one; the converter inserts the casts. On
TensorRT 11 this file is what a strongly typed network builds from.
"""

from __future__ import annotations

import os
from pathlib import Path

from edge.errors import BackendUnavailable, ModelError


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
    try:
        converted = float16.convert_float_to_float16(model, keep_io_types=True)
    except Exception as exc:  # the converter raises plain Exceptions for graphs it cannot handle
        raise ModelError(f"{src}: the FP16 converter failed: {type(exc).__name__}: {exc}") from None
    onnx.save(converted, str(Path(dst)))
