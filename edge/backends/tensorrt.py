"""TensorRT runner: the named-tensor API of TensorRT 10 and 11 with pycuda buffers.

Kept thin on purpose: TensorRT and pycuda exist only on the device, so this module is imported only
when the TensorRT backend is asked for, and CI type-checks it against ``tensorrt-stubs`` with pyright
(which catches calls that TensorRT 10 removed, such as ``execute_async_v2`` and the bindings API).
Buffers are allocated once, for the largest batch of the engine's optimization profile, and reused;
pinned host buffers and one CUDA stream carry every call.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge.backends.base import Runner, TensorMeta
from edge.errors import BackendUnavailable, InputError, ModelError

TRT_MISSING = (
    "TensorRT is not available: {why}. On a Jetson it comes with JetPack 6 (apt install python3-libnvinfer, "
    "and a virtual environment made with --system-site-packages); on x86 install the extra: pip install 'emoedge[trt]'."
)


def require_tensorrt() -> None:
    """Check that tensorrt and pycuda import, or raise BackendUnavailable saying how to get them."""
    from edge.backends.probe import import_status

    version, why = import_status("tensorrt")
    if version is None:
        raise BackendUnavailable(TRT_MISSING.format(why=why))
    version, why = import_status("pycuda.driver")
    if version is None:
        raise BackendUnavailable(f"pycuda is not available ({why}); install it with pip install 'emoedge[trt]'")


def _dims(dims: Any) -> tuple[int, ...]:
    """A TensorRT Dims as a tuple (Dims indexes like a tuple but declares no __iter__)."""
    return tuple(int(dims[i]) for i in range(len(dims)))


@dataclass
class _Binding:
    name: str
    is_input: bool
    dtype: np.dtype
    shape: tuple[int, ...]  # engine shape; -1 where dynamic
    max_shape: tuple[int, ...]
    host: Any = None  # pycuda pagelocked numpy array sized for max_shape
    device: Any = None  # pycuda DeviceAllocation


class TensorRTRunner(Runner):
    """Runs a serialized TensorRT engine (a plain engine file, loadable by trtexec as well)."""

    backend = "tensorrt"

    def __init__(self, engine_path: str | os.PathLike[str], device: int = 0) -> None:
        super().__init__()
        self.engine_path = Path(engine_path)
        self.device_index = device
        self._bindings: list[_Binding] = []
        self._engine: Any = None
        self._context: Any = None
        self._cuda_context: Any = None
        self._stream: Any = None

    def _activate(self) -> None:
        require_tensorrt()
        import pycuda.driver as cuda  # pyright: ignore[reportMissingImports]
        import tensorrt as trt
  # pyright: ignore[reportMissingImports]

        try:
            blob = self.engine_path.read_bytes()
        except OSError as exc:
            raise ModelError(f"{self.engine_path}: cannot read engine: {exc}") from None
        cuda.init()
        self._cuda_context = cuda.Device(self.device_index).make_context()
        try:
            logger = trt.Logger(trt.Logger.WARNING)
            runtime = trt.Runtime(logger)
            engine = runtime.deserialize_cuda_engine(blob)
            if engine is None:
                raise ModelError(
                    f"{self.engine_path}: TensorRT {trt.__version__} cannot deserialize this engine "
                    "(corrupt, or built by another TensorRT version or for another GPU); rebuild it with emoedge build"
                )
            self._engine = engine
            context = engine.create_execution_context()
            if context is None:
                raise ModelError(f"{self.engine_path}: could not create an execution context (out of GPU memory?)")
            self._context = context
            self._stream = cuda.Stream()
            self._bindings = []
            for i in range(engine.num_io_tensors):
                name = engine.get_tensor_name(i)
                is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
                dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
                shape = _dims(engine.get_tensor_shape(name))
                if is_input:
                    max_shape = _dims(engine.get_tensor_profile_shape(name, 0)[2]) if -1 in shape else shape
                    context.set_input_shape(name, max_shape)
                else:
                    max_shape = shape
                self._bindings.append(_Binding(name, is_input, dtype, shape, max_shape))
            for b in self._bindings:  # output shapes at max batch are known once every input shape is set
                if not b.is_input:
                    b.max_shape = _dims(context.get_tensor_shape(b.name))
                size = int(np.prod(b.max_shape))
                b.host = cuda.pagelocked_empty(size, b.dtype)
                b.device = cuda.mem_alloc(max(1, b.host.nbytes))
                context.set_tensor_address(b.name, int(b.device))
        except BaseException:
            self._cuda_context.pop()
            self._cuda_context = None
            raise
        self._cuda_context.pop()

    def _deactivate(self) -> None:
        if self._cuda_context is not None:
            self._cuda_context.push()
            for b in self._bindings:
                if b.device is not None:
                    b.device.free()
            self._bindings = []
            self._context = None
            self._engine = None
            self._stream = None
            self._cuda_context.pop()
            self._cuda_context.detach()
            self._cuda_context = None

    @property
    def inputs(self) -> Sequence[TensorMeta]:
        return [TensorMeta(b.name, tuple(None if d < 0 else d for d in b.shape), b.dtype) for b in self._bindings if b.is_input]

    @property
    def outputs(self) -> Sequence[TensorMeta]:
        return [TensorMeta(b.name, tuple(None if d < 0 else d for d in b.shape), b.dtype) for b in self._bindings if not b.is_input]

    def _infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        import pycuda.driver as cuda  # pyright: ignore[reportMissingImports]

        context = self._context
        self._cuda_context.push()
        try:
            for b in self._bindings:
                if not b.is_input:
                    continue
                array = np.ascontiguousarray(feed[b.name])
                if array.shape[0] > b.max_shape[0]:
                    raise InputError(
                        f"input '{b.name}': batch {array.shape[0]} is above the engine's profile maximum "
                        f"{b.max_shape[0]}; rebuild with emoedge build --max-batch {array.shape[0]}"
                    )
                if not context.set_input_shape(b.name, array.shape):
                    raise InputError(f"input '{b.name}': shape {array.shape} is outside the engine's profile")
                host = b.host[: array.size]
                host[:] = array.ravel()
                cuda.memcpy_htod_async(b.device, host, self._stream)
            if not context.execute_async_v3(self._stream.handle):
                raise ModelError(f"{self.engine_path}: TensorRT execution failed")
            results: dict[str, np.ndarray] = {}
            pending = []
            for b in self._bindings:
                if b.is_input:
                    continue
                shape = _dims(context.get_tensor_shape(b.name))
                host = b.host[: int(np.prod(shape))]
                cuda.memcpy_dtoh_async(host, b.device, self._stream)
                pending.append((b.name, host, shape))
            self._stream.synchronize()
            for name, host, shape in pending:
                results[name] = host.reshape(shape).copy()
            return results
        finally:
            self._cuda_context.pop()
