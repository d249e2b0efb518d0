"""The value lists typed once: precisions and backends. argparse ``choices``, config validation (``edge.config``),
cards and artifact names all take them from here.

``Precision`` and ``Backend`` are string enumerations (``StrEnum`` semantics, also on Python 3.10): a member is
its value wherever a string is expected (``Precision.INT8 == "int8"``, ``f"{Precision.INT8}" == "int8"``).
"""

from __future__ import annotations

from enum import Enum


class _StrEnum(str, Enum):
    """``enum.StrEnum`` (3.11+) for 3.10 too: str() and format() give the value."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


class Precision(_StrEnum):
    """A model artifact's numeric precision; ``auto`` asks for the fastest one that passed the device check."""

    AUTO = "auto"
    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"


class Backend(_StrEnum):
    """The runtime that runs a model; ``auto`` picks TensorRT where it can run and ONNX Runtime elsewhere."""

    AUTO = "auto"
    ONNXRUNTIME = "onnxruntime"
    TENSORRT = "tensorrt"


#: every precision an artifact file can have (``models/<name>/model[.fp16|.int8].onnx``)
PRECISIONS: tuple[str, ...] = (Precision.FP32.value, Precision.FP16.value, Precision.INT8.value)
#: the precisions ``emoedge quantize`` derives from FP32
DERIVED_PRECISIONS: tuple[str, ...] = (Precision.FP16.value, Precision.INT8.value)
#: every value of ``precision`` in the config (``auto`` and the artifacts)
PRECISION_CHOICES: tuple[str, ...] = tuple(p.value for p in Precision)
#: every value of ``backend`` in the config and ``--backend``
BACKENDS: tuple[str, ...] = tuple(b.value for b in Backend)
#: what ``emoedge bench`` measures: the backends plus ONNX Runtime's CUDA provider
BENCH_BACKENDS: tuple[str, ...] = (Backend.ONNXRUNTIME.value, "onnxruntime-cuda", Backend.TENSORRT.value)
