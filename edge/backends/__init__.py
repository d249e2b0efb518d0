"""Inference runners behind one interface, and the choice between them.

``auto`` picks TensorRT when it imports, a CUDA GPU is present and an engine for this exact model
file is in the cache; otherwise ONNX Runtime on the CPU. The choice comes with its reason, which is
logged and shown by ``emoedge doctor``. TensorRT is imported only when it is chosen.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edge.backends.base import Runner, TensorMeta
from edge.backends.engine_cache import engine_cache_dir, find_engine
from edge.card import Model, load_model
from edge.errors import BackendUnavailable
from edge.kinds import BACKENDS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackendChoice:
    backend: str
    reason: str
    engine: Path | None = None


def choose_backend(
    model: Model, requested: str = "auto", engine_cache: str | os.PathLike[str] | None = None
) -> BackendChoice:
    """Decide which backend runs ``model``; raises BackendUnavailable when an explicit request cannot be met."""
    from edge.backends import probe

    if requested not in BACKENDS:
        raise BackendUnavailable(f"unknown backend '{requested}' (expected one of {', '.join(BACKENDS)})")
    if requested == "onnxruntime":
        return BackendChoice("onnxruntime", "asked for")
    trt_version, why = probe.import_status("tensorrt")
    missing: str | None = None
    engine: Path | None = None
    if trt_version is None:
        missing = f"TensorRT does not import ({why})"
    else:
        gpus = probe.cuda_gpus()
        if not gpus:
            missing = "no CUDA GPU found"
        else:
            cache = engine_cache_dir(engine_cache)
            graph = model.card.graph
            engine = find_engine(cache, model.name, model.sha256, trt_version, gpus[0].name, model.precision, graph)
            if engine is None:
                from edge.backends.engine_cache import EngineKey, other_builds, staleness_reasons

                wanted = EngineKey(model.name, model.sha256, trt_version, gpus[0].name, model.precision, graph=graph)
                others = other_builds(cache, model.name, model.precision, graph)
                stale = sorted({"; ".join(staleness_reasons(m.key, wanted)) for m in others} - {""})
                missing = (
                    f"no {model.precision} engine for {model.name} (sha256 {model.sha256[:12]}) built with "
                    f"TensorRT {trt_version} on {gpus[0].name} in {cache}"
                    + (f" (cached ones do not fit: {' | '.join(stale)})" if stale else "")
                    + f"; build one with emoedge build {model.name}"
                    + (f" --graph {graph}" if model.card.graphs else "") + f" --precision {model.precision}"
                )
    if missing is None:
        return BackendChoice("tensorrt", f"TensorRT {trt_version} with a cached engine", engine)
    if requested == "tensorrt":
        raise BackendUnavailable(f"backend tensorrt for {model.name}: {missing}")
    return BackendChoice("onnxruntime", f"TensorRT not used: {missing}")


def open_runner(
    model: Model | str,
    backend: str = "auto",
    precision: str = "fp32",
    threads: int = 0,
    providers: Sequence[str] = ("cpu",),
    engine_cache: str | os.PathLike[str] | None = None,
    models: str | os.PathLike[str] | None = None,
) -> Runner:
    """A runner (not yet entered) for a model name, folder or loaded Model, on the chosen backend."""
    if not isinstance(model, Model):
        model = load_model(model, precision=precision, models=models)
    choice = choose_backend(model, backend, engine_cache)
    log.info("model %s (%s): backend %s: %s", model.name, model.precision, choice.backend, choice.reason)
    runner: Runner
    if choice.backend == "tensorrt":
        from edge.backends.tensorrt import TensorRTRunner

        assert choice.engine is not None
        runner = TensorRTRunner(choice.engine)
    else:
        from edge.backends.ort import OnnxRuntimeRunner

        runner = OnnxRuntimeRunner(model.path, providers=providers, threads=threads)
    runner.reason = choice.reason
    return runner


__all__ = ["BACKENDS", "BackendChoice", "Runner", "TensorMeta", "choose_backend", "open_runner"]
