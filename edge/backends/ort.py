"""ONNX Runtime runner: CPU by default with explicit threads; CUDA and TensorRT execution providers on request."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from edge.backends.base import Runner, TensorMeta
from edge.errors import BackendUnavailable, InferenceError, ModelError

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


def available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


class OnnxRuntimeRunner(Runner):
    """Runs an ONNX file in an InferenceSession.

    ``providers`` are short names (cpu, cuda, tensorrt) tried in order; CPU is always appended as the
    fallback. ``threads`` sets intra-op threads explicitly (0 = ONNX Runtime's default, one per core).
    """

    backend = "onnxruntime"

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        providers: Sequence[str] = ("cpu",),
        threads: int = 0,
        inter_op_threads: int = 1,
    ) -> None:
        super().__init__()
        self.model_path = Path(model_path)
        self.threads = threads
        self.inter_op_threads = inter_op_threads
        have = set(available_providers())
        chosen: list[str] = []
        for short in providers:
            full = PROVIDERS.get(short, short)
            if full not in have:
                raise BackendUnavailable(
                    f"ONNX Runtime execution provider '{short}' ({full}) is not available here; "
                    f"this onnxruntime has {sorted(have)}. For CUDA install onnxruntime-gpu "
                    f"(on a Jetson: the JetPack build of onnxruntime-gpu)."
                )
            chosen.append(full)
        if "CPUExecutionProvider" not in chosen:
            chosen.append("CPUExecutionProvider")
        self.providers = chosen
        self._session = None
        self._inputs: list[TensorMeta] = []
        self._outputs: list[TensorMeta] = []
        self._output_names: list[str] = []

    def _activate(self) -> None:
        import onnxruntime as ort

        if not self.model_path.is_file():
            raise ModelError(f"{self.model_path}: model file not found")
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = self.inter_op_threads
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        try:
            session = ort.InferenceSession(str(self.model_path), sess_options=options, providers=self.providers)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
            raise ModelError(f"{self.model_path}: ONNX Runtime cannot load this model: {exc}") from None

        def meta(args) -> list[TensorMeta]:  # type: ignore[no-untyped-def]
            return [
                TensorMeta(a.name, tuple(d if isinstance(d, int) else (d or None) for d in a.shape), np.dtype(_ORT_TYPES.get(a.type, np.float32)))
                for a in args
            ]

        self._inputs = meta(session.get_inputs())
        self._outputs = meta(session.get_outputs())
        self._output_names = [m.name for m in self._outputs]
        self._session = session

    def _deactivate(self) -> None:
        self._session = None

    @property
    def inputs(self) -> Sequence[TensorMeta]:
        return self._inputs

    @property
    def outputs(self) -> Sequence[TensorMeta]:
        return self._outputs

    @property
    def active_providers(self) -> list[str]:
        return list(self._session.get_providers()) if self._session is not None else []

    def _infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        assert self._session is not None
        try:
            values = self._session.run(self._output_names, dict(feed))
        except Exception as exc:  # onnxruntime's own Fail/InvalidArgument/RuntimeException types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InferenceError(f"{self.model_path.name}: ONNX Runtime failed on this batch: {first[:300]}") from exc
        return {name: np.asarray(value) for name, value in zip(self._output_names, values, strict=True)}
