"""``emoedge build``: a TensorRT engine for one graph of a model, in the device-keyed cache, gated.

A model has one graph (``model.onnx``), or, like the scene model, a main graph (``encoder.onnx``) and
further graphs in its card (``[[graphs]]``: ``decoder.onnx``); ``--graph`` says which to build. The steps,
under a lock file per engine (so two processes never build the same engine at once):

1. a cached engine for exactly this graph file, TensorRT, GPU, precision and profile is reused,
   unless its file is missing or corrupt (sha256 in its manifest);
2. engines of the same graph, precision and profile built for another graph file, TensorRT or GPU
   are stale: they are removed, with a log line saying why, and rebuilt;
3. the builder (``edge.export.engine``, the only TensorRT calls) makes the engine, with the timing
   cache of this TensorRT and GPU kept in the cache folder across builds. A one-input graph gets a batch
   profile; a decoder gets one covering its key/value cache (``edge.export.scene_engine``);
4. the engine is compared with ONNX Runtime FP32. A graph with class scores: top-1 predictions on the
   calibration samples (or on the held-out split of ``--data``); it may disagree with FP32 by no more than
   the artifact itself does on ONNX Runtime, plus the card's allowance. A decoder: whole explanations of
   the held-out images of ``--data`` against the FP32 decoder (``quantize_decoder.gate_decoder``: token
   agreement and emotion consistency). An engine that fails is moved to ``rejected/`` (manifest status
   "rejected") and never used.

The builder and the engine runner are parameters so that everything around TensorRT runs, and is
tested, on machines without it.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edge.backends.base import Runner
from edge.backends.engine_cache import (
    EngineKey,
    EngineManifest,
    engine_cache_dir,
    engine_lock,
    engine_problem,
    read_manifests,
    rejected_dir,
    slug,
    staleness_reasons,
)
from edge.card import ModelCard, artifact_name, load_card, load_model, resolve_model_folder, sha256_file
from edge.errors import BackendUnavailable, InputError, ModelError
from edge.export.calibrate import load_calibration_set, split_batches
from edge.export.engine import BuildRequest
from edge.export.gate import GateResult, judge, run_batches, top1_agreement
from edge.export.quantize_decoder import DecoderGate, gate_decoder
from edge.export.scene_engine import decoder_build_request, decoder_spec, decoding_profile
from edge.paths import calibration_dir

log = logging.getLogger(__name__)
Builder = Callable[[BuildRequest], "tuple[bytes, dict[str, Any]]"]
EngineOpener = Callable[[Path], Runner]
LOCK_TIMEOUT_S = 3600.0


@dataclass
class BuildOutcome:
    status: str  # "cached", "built" or "rejected"
    engine: Path
    manifest: EngineManifest
    reasons: list[str] = field(default_factory=list)  # why it was (re)built
    gate: GateResult | DecoderGate | None = None


def timing_cache_path(cache: Path, trt_version: str, gpu: str) -> Path:
    return cache / f"timing-trt{slug(trt_version)}-{slug(gpu)}.cache"


def _remove(manifest_path: Path) -> None:
    manifest_path.with_suffix(".engine").unlink(missing_ok=True)
    manifest_path.unlink(missing_ok=True)


def tensorrt_runtime() -> tuple[EngineOpener, str, str]:
    """TensorRT's engine runner, this machine's TensorRT version and GPU; or BackendUnavailable saying why not."""
    from edge.backends import probe
    from edge.backends.tensorrt import TensorRTRunner, require_tensorrt

    require_tensorrt()
    version = probe.tensorrt_version()
    gpu = probe.gpu_key()
    if version is None or gpu is None:
        raise BackendUnavailable("TensorRT imports but no CUDA GPU was found (pycuda and nvidia-smi see none)")
    return TensorRTRunner, version, gpu


def _real_builder() -> tuple[Builder, EngineOpener, str, str]:
    """TensorRT's builder and runner, this machine's TensorRT version and GPU; or BackendUnavailable saying why not."""
    from edge.export.engine import build_serialized_engine

    opener, version, gpu = tensorrt_runtime()
    return build_serialized_engine, opener, version, gpu


def graph_to_build(card: ModelCard, graph: str | None) -> str:
    """The graph ``--graph`` names, or the card's only one; a card with several needs ``--graph``."""
    names = [card.graph] + [g.name for g in card.graphs]
    if graph is None:
        if len(names) == 1:
            return names[0]
        raise ModelError(f"model '{card.name}' has {len(names)} graphs ({', '.join(names)}): say which to build, "
                         f"e.g. emoedge build {card.name} --graph {names[0]} (each graph gets its own engine)")
    if graph not in names:
        raise ModelError(f"model '{card.name}' has no graph '{graph}' (its graphs: {', '.join(names)})")
    return graph


def gate_engine(
    card: Any, batches: list[dict[str, Any]], fp32: Runner, artifact: Runner | None, engine: Runner, allowance: float,
    data: str,
) -> GateResult:
    """Top-1 agreement of the engine with ONNX Runtime FP32, against the artifact's own agreement on ONNX Runtime."""
    reference = run_batches(fp32, batches)
    expected = 1.0
    if artifact is not None:
        expected, _ = top1_agreement(card, reference, run_batches(artifact, batches))
    got, per_output = top1_agreement(card, reference, run_batches(engine, batches))
    n = int(next(iter(reference.values())).shape[0])
    return judge(
        "top1_agreement_with_fp32", {"all": expected}, {"all": got}, got, allowance, n, per_output, data,
        note="reference: the artifact's agreement with FP32 on ONNX Runtime" if artifact is not None else "",
    )


def _gate_new_engine(card: Any, batches: list[dict[str, Any]], data: str, fp32_path: Path, artifact_path: Path,
                     precision: str, engine_path: Path, open_engine: EngineOpener) -> GateResult:
    from edge.backends.ort import OnnxRuntimeRunner

    with OnnxRuntimeRunner(fp32_path) as fp32:
        artifact_runner = OnnxRuntimeRunner(artifact_path) if precision != "fp32" else None
        try:
            if artifact_runner is not None:
                artifact_runner.activate()
            with open_engine(engine_path) as engine:
                return gate_engine(card, batches, fp32, artifact_runner, engine, card.quantization.max_loss_points, data)
        finally:
            if artifact_runner is not None:
                artifact_runner.deactivate()


def build_engine(
    name_or_path: str | os.PathLike[str],
    precision: str = "fp32",
    max_batch: int | None = None,
    opt_batch: int | None = None,
    workspace_mb: int | None = None,
    dla_core: int | None = None,
    models: str | os.PathLike[str] | None = None,
    calibration: str | os.PathLike[str] | None = None,
    cache: str | os.PathLike[str] | None = None,
    force: bool = False,
    builder: Builder | None = None,
    open_engine: EngineOpener | None = None,
    trt_version: str | None = None,
    gpu: str | None = None,
    lock_timeout: float = LOCK_TIMEOUT_S,
    graph: str | None = None,
    beam: int | None = None,
    max_tokens: int | None = None,
    data: str | os.PathLike[str] | None = None,
    limit: int | None = None,
    threads: int = 1,
) -> BuildOutcome:
    """Build (or reuse) the engine of one graph at one precision; see the module docstring for the steps.

    ``max_batch``/``opt_batch`` shape a one-input graph's profile (default 8); ``beam``/``max_tokens`` a
    decoder's (default: the card's). ``data``/``limit``: the held-out images the gate runs on (a decoder's
    gate needs them; other graphs use the calibration samples without them).
    """

    if dla_core is not None and precision == "fp32":
        raise ModelError("a DLA core runs FP16 or INT8 only: build with --precision fp16 or int8 for --dla")
    folder = resolve_model_folder(name_or_path, models)
    card = load_card(folder / "card.toml")
    graph = graph_to_build(card, graph)
    is_decoder = graph != card.graph
    if is_decoder:
        if graph != "decoder":
            raise ModelError(f"graph '{graph}' of '{card.name}': emoedge build knows the profiles of a main graph "
                             "and of a decoder only")
        if max_batch is not None or opt_batch is not None:
            raise ModelError("a decoder's batch is its beam (twice over with guidance): give --beam, not --max-batch")
        if data is None:
            raise InputError("the decoder engine's gate decodes held-out images: give --data (a folder like "
                             "emotion6_256)")
    elif beam is not None or max_tokens is not None:
        raise ModelError(f"--beam and --max-tokens shape a decoder's profile; graph '{graph}' takes --max-batch")
    if data is not None and not Path(data).is_dir():
        raise InputError(f"--data {data}: no such folder")
    max_batch = max_batch or 8
    if max_batch < 1:
        raise ModelError(f"--max-batch must be at least 1 (got {max_batch})")
    opt = opt_batch or max_batch
    if not 1 <= opt <= max_batch:
        raise ModelError(f"the optimal batch {opt} must lie in 1..{max_batch}")
    if builder is None or open_engine is None or trt_version is None or gpu is None:
        real_builder, real_opener, real_version, real_gpu = _real_builder()
        builder, open_engine = builder or real_builder, open_engine or real_opener
        trt_version, gpu = trt_version or real_version, gpu or real_gpu
    root = engine_cache_dir(cache)
    root.mkdir(parents=True, exist_ok=True)
    timing = timing_cache_path(root, trt_version, gpu)
    batches: list[dict[str, Any]] = []
    gate_data = ""
    cap: int | None = None
    if is_decoder:
        model = load_model(folder, "fp32")  # the card checked against the encoder; the decoder file is the request's
        request = decoder_build_request(model, precision, beam, max_tokens, workspace_mb=workspace_mb,
                                        timing_cache=timing, dla_core=dla_core)
        cap = decoding_profile(decoder_spec(model), beam, max_tokens)[1]
        graph_sha = sha256_file(request.onnx_path)
    else:
        model = load_model(folder, precision)
        request = BuildRequest(
            onnx_path=model.path, precision=precision, min_batch=1, opt_batch=opt, max_batch=max_batch,
            workspace_mb=workspace_mb, dla_core=dla_core, timing_cache=timing,
        )
        graph_sha = model.sha256
        if data is not None:
            from edge.evaluation import load_split

            held_out = load_split(card, Path(data), "validation", limit=limit)
            if len(held_out) == 0:
                raise InputError(f"{data}: no held-out samples to compare the engine with FP32 on")
            batches, gate_data = split_batches(held_out.inputs, min(max_batch, 32)), held_out.description
        else:
            calib = load_calibration_set(calibration_dir(calibration) / card.name, card)
            batches, gate_data = calib.batches(min(max_batch, 32)), f"calibration/{card.name} ({len(calib)} samples)"
    fp32_path = folder / artifact_name(graph, "fp32")
    key = EngineKey(card.name, graph_sha, trt_version, gpu, precision, request.min_batch, request.opt_batch,
                    request.max_batch, dla_core, graph=graph, max_tokens=cap)
    manifest_path = root / key.manifest_name
    engine_path = root / key.engine_name

    lock = engine_lock(root, key)
    try:
        lock.acquire(timeout=0)
    except Exception:
        log.warning("another process is building %s; waiting for it (lock file %s)", key.engine_name, lock.lock_file)
        try:
            lock.acquire(timeout=lock_timeout)
        except Exception:
            raise ModelError(
                f"gave up after {lock_timeout:.0f} s waiting for the build of {key.engine_name} by another process "
                f"(lock file {lock.lock_file})"
            ) from None
    try:
        reasons: list[str] = []
        if manifest_path.is_file():
            try:
                manifest = EngineManifest.from_json(manifest_path.read_text(encoding="utf-8"))
                problem = engine_problem(manifest_path, manifest)
            except (OSError, ValueError, TypeError, KeyError) as exc:
                problem = f"its manifest is unreadable ({exc})"
                manifest = None
            if problem is None and not force and manifest is not None:
                log.info("using cached engine %s", engine_path)
                return BuildOutcome("cached", engine_path, manifest)
            reasons.append(problem or "asked to rebuild (--force)")
            _remove(manifest_path)
        for other_path, other in read_manifests(root):
            if other_path != manifest_path and other.key.same_slot(key):
                why = staleness_reasons(other.key, key)
                if why:
                    reasons.extend(why)
                    log.warning("engine %s is stale: %s; removing it and building a new one",
                                other_path.with_suffix(".engine").name, "; ".join(why))
                    _remove(other_path)
        if reasons:
            log.warning("rebuilding %s: %s", key.engine_name, "; ".join(reasons))
        log.warning("building %s from %s (this can take minutes on a Jetson)", key.engine_name, request.onnx_path.name)

        start = time.perf_counter()
        blob, info = builder(request)
        seconds = time.perf_counter() - start
        tmp = root / f".{key.engine_name}.tmp-{os.getpid()}"
        tmp.write_bytes(blob)
        tmp.replace(engine_path)

        gate: GateResult | DecoderGate
        try:
            if is_decoder:
                assert data is not None
                with open_engine(engine_path) as engine:
                    gate = gate_decoder(model, engine, Path(data), limit, threads, beam=beam, max_tokens=cap)
            else:
                gate = _gate_new_engine(card, batches, gate_data, fp32_path, request.onnx_path, precision, engine_path,
                                        open_engine)
        except BaseException:
            engine_path.unlink(missing_ok=True)  # an engine that cannot even be checked is never left behind
            raise
        manifest = EngineManifest(
            key=key, onnx_file=request.onnx_path.name, created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            build_seconds=round(seconds, 3), status="ok" if gate.passed else "rejected",
            gate=asdict(gate),
            engine_sha256=sha256_file(engine_path), builder=info, rebuilt_because=reasons,
        )
        if isinstance(gate, GateResult):  # the runtime's device check of the graph it runs (a decoder has none)
            from edge.trust import record_engine_verdict

            record_engine_verdict(card.name, precision, engine_path, trt_version, gpu, gate.top1_agreement, gate.fp32,
                                  gate.n, gate.data, cache=cache)
        if gate.passed:
            manifest.write(manifest_path)
            return BuildOutcome("built", engine_path, manifest, reasons, gate)
        aside = rejected_dir(root)
        aside.mkdir(exist_ok=True)
        shutil.move(str(engine_path), aside / key.engine_name)
        manifest.write(aside / key.manifest_name)
        return BuildOutcome("rejected", aside / key.engine_name, manifest, reasons, gate)
    finally:
        lock.release()
