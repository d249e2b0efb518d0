"""The TensorRT builder calls, and nothing else (the rest of engine building is in ``edge.export.build``).

Kept small because TensorRT exists only on the device: this module is imported only by a real
build, and CI type-checks it against ``tensorrt-stubs`` with pyright (see [tool.pyright] in
pyproject.toml). It handles both TensorRT lines that JetPack and x86 ship:

- TensorRT 10.x (JetPack 6 has 10.3): a weakly typed network with the FP16 builder flag for FP16,
  and FP16 + INT8 flags for a QDQ (explicitly quantized) INT8 model, so that layers outside the
  Q/DQ pairs may run in FP16;
- TensorRT 11.x, which removed the precision flags: a strongly typed network, whose precisions come
  from the ONNX itself (``model.fp16.onnx``, or the QDQ ``model.int8.onnx``). 11.x also dropped DLA.

Which line is present is decided by what the module has (``BuilderFlag.FP16``), not by parsing
version strings.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.errors import BackendUnavailable, ModelError


@dataclass(frozen=True)
class BuildRequest:
    """Everything one engine build needs; ``edge.export.build`` fills it in."""

    onnx_path: Path
    precision: str  # fp32, fp16, int8 (the ONNX file already is in that form)
    min_batch: int = 1
    opt_batch: int = 1
    max_batch: int = 1
    workspace_mb: int | None = None
    dla_core: int | None = None
    timing_cache: Path | None = None
    # inputs with dynamic dimensions besides the batch (the scene decoder's tokens and key/value cache):
    # (name, min shape, opt shape, max shape), whole shapes including the batch
    shapes: tuple[tuple[str, tuple[int, ...], tuple[int, ...], tuple[int, ...]], ...] = ()


def _has_precision_flags(trt: Any) -> bool:
    return hasattr(trt.BuilderFlag, "FP16") and hasattr(trt.BuilderFlag, "INT8")


def build_serialized_engine(request: BuildRequest) -> tuple[bytes, dict[str, Any]]:
    """Build the engine; return its bytes and a description of how it was built (for the manifest)."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    strongly_typed = not _has_precision_flags(trt)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(request.onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ModelError(f"{request.onnx_path}: TensorRT {trt.__version__} cannot parse this ONNX: {errors}")

    config = builder.create_builder_config()
    if request.workspace_mb:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(request.workspace_mb) << 20)
    flag_names: list[str] = []
    if not strongly_typed:
        if request.precision in ("fp16", "int8"):
            config.set_flag(trt.BuilderFlag.FP16)
            flag_names.append("FP16")
        if request.precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)
            flag_names.append("INT8")
    if request.dla_core is not None:
        if strongly_typed:
            raise BackendUnavailable(f"TensorRT {trt.__version__} has no DLA support (dropped in 11.0); build without --dla")
        if request.dla_core >= builder.num_DLA_cores:
            raise BackendUnavailable(
                f"DLA core {request.dla_core} asked for, but this device has {builder.num_DLA_cores} DLA core(s)"
            )
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = request.dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
        flag_names.append("GPU_FALLBACK")

    profile = builder.create_optimization_profile()
    explicit = {name: (lo, opt, hi) for name, lo, opt, hi in request.shapes}
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        dims = [int(tensor.shape[j]) for j in range(len(tensor.shape))]
        if tensor.name in explicit:
            lo, opt, hi = explicit[tensor.name]
            profile.set_shape(tensor.name, trt.Dims(list(lo)), trt.Dims(list(opt)), trt.Dims(list(hi)))
            continue
        if any(d < 0 for d in dims[1:]):
            raise ModelError(
                f"{request.onnx_path}: input '{tensor.name}' has dynamic dimensions other than the batch {dims}"
            )

        def at(batch: int, dims: list[int] = dims) -> Any:
            return trt.Dims([batch, *dims[1:]])

        profile.set_shape(tensor.name, at(request.min_batch), at(request.opt_batch), at(request.max_batch))
    config.add_optimization_profile(profile)

    timing_bytes = b""
    if request.timing_cache is not None and request.timing_cache.is_file():
        timing_bytes = request.timing_cache.read_bytes()
    timing_cache = config.create_timing_cache(timing_bytes)
    config.set_timing_cache(timing_cache, ignore_mismatch=False)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ModelError(
            f"{request.onnx_path}: TensorRT {trt.__version__} could not build a {request.precision} engine "
            "(see TensorRT's log above; a larger --workspace can help)"
        )
    if request.timing_cache is not None:
        updated = config.get_timing_cache().serialize()
        tmp = request.timing_cache.with_name(f".{request.timing_cache.name}.tmp-{os.getpid()}")
        tmp.write_bytes(bytes(updated))
        tmp.replace(request.timing_cache)
    info = {
        "tensorrt": trt.__version__,
        "network": "strongly typed" if strongly_typed else "weakly typed",
        "flags": flag_names,
        "workspace_mb": request.workspace_mb,
        "dla_core": request.dla_core,
        "profile": [request.min_batch, request.opt_batch, request.max_batch],
        "shapes": {name: [list(lo), list(opt), list(hi)] for name, lo, opt, hi in request.shapes},
    }
    return bytes(serialized), info
