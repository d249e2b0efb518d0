"""The scene path of a video source whose model has a decoder (``models/scene``): one frame every
``interval_s`` (the source's ``hop_s``; the newest frame wins), the encoder through the source's checked
runner, the estimate published at once, then the explanation on ``<source>/explanation`` with the
estimate's ``seq`` (none for an estimate the OOD gate calls ``unknown``). A frame whose estimate or explanation fails is skipped and counted like any window."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from edge.card import Model
from edge.estimate import Estimate
from edge.features.scene import scene_input
from edge.fusion import UNKNOWN
from edge.pipeline.readout import OutputReader
from edge.pipeline.stats import Lap
from edge.scene.model import SceneModel, estimate_of

if TYPE_CHECKING:
    from edge.pipeline.worker import SourceWorker

DEFAULT_INTERVAL_S = 3.0


def has_decoder(model: Model) -> bool:
    return any(g.name == "decoder" for g in model.card.graphs)


def open_scene(model: Model, encoder: Any, threads: int, reader: OutputReader) -> SceneModel:
    """The decoder side of the scene model around the source's (already active) encoder runner and its reader."""
    return SceneModel(model, threads=max(threads, 1), encoder=encoder, reader=reader).__enter__()


def explanation_payload(est: Estimate, text: str, tokens: int, truncated: bool, decode_ms: float) -> dict[str, Any]:
    """The ``explanation`` topic's body (``edge/publish/schema/explanation.json``; seq and envelope added by the publisher)."""
    return {"source": est.source, "ts": round(est.ts, 6), "label": est.label,
            "valence": None if est.valence is None else round(est.valence, 4),
            "arousal": None if est.arousal is None else round(est.arousal, 4),
            "text": text, "tokens": tokens, "truncated": truncated, "model": est.model.payload(),
            "latency_ms": {"decode": round(decode_ms, 3)}}


def scene_loop(worker: SourceWorker) -> None:
    """The inference loop of a scene source (``SourceWorker.infer_loop`` hands over to it)."""
    run = worker.run
    assert run.slot is not None and run.scene is not None
    next_at = 0.0
    while (got := worker.next_frame()) is not None:
        sample, ready = got
        if time.monotonic() < next_at:
            continue  # between two sampled frames: the newest one waits for its turn
        next_at = time.monotonic() + run.scene_interval
        run.frames += 1
        lap = Lap()
        try:
            item = scene_input(sample.data, run.scene.size)[None]
            lap.mark("features", 1)
            outputs = run.runner.infer({run.runner.inputs[0].name: item})
            lap.mark("infer")
            reading = run.scene.reading(item[0], outputs)  # a flat frame: unknown, no weight, no explanation
            lap.mark("fusion")
        except Exception as exc:  # noqa: BLE001 - one bad frame is skipped and counted
            worker.skip(1, exc)
            continue
        run.consecutive_errors = 0
        est = Estimate(run.name, run.model.card.modality, reading.probs, reading.label, reading.confidence,
                       reading.valence, reading.arousal, sample.host_time, None, run.info,
                       {**lap.waited(sample.host_time, ready), **lap.ms}, ood=reading.ood)
        worker.emit(run, [est], est)  # the estimate goes out before the explanation is written
        if worker.explain is None or not run.enabled:
            continue
        if reading.label == UNKNOWN:  # no scene the model knows (a covered lens, noise): nothing to explain
            run.unexplained_unknown += 1
            continue
        try:
            t0 = time.perf_counter()
            exp = run.scene.explain(estimate_of(outputs))
            ms = (time.perf_counter() - t0) * 1e3
        except Exception as exc:  # noqa: BLE001 - the estimate stands; this explanation is skipped and counted
            worker.skip(1, exc)
            continue
        run.times.add("explain", ms)
        run.explained += 1
        worker.explain(run, est, explanation_payload(est, exp.text, len(exp.tokens), exp.truncated, ms))


def shared_camera(config: Any, src: Any) -> str | None:
    """The earlier source whose camera ``src`` shares (the same ``device`` of a camera, the same ``path`` of a video
    replay), or None: that source's reader hands its frames to ``src`` (``FrameTap``) instead of a second open."""
    def address(s: Any) -> tuple[str, str] | None:
        if s.kind == "camera":
            return ("camera", str(s.device))
        if s.kind == "replay" and str(s.path).lower().endswith((".mp4", ".avi", ".mkv", ".mov", ".webm")):
            return ("replay", str(s.path))
        return None

    mine = address(src)
    if mine is None:
        return None
    for other in config.sources:
        if other is src:
            return None
        if other.enabled and address(other) == mine:
            return other.name
    return None
