"""One source's part of the pipeline: its model (checked on this device), features or face path, queue, counters,
and its row of ``stats``. ``open_source_run`` builds it and closes what it opened if a step fails."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge.backends import open_runner
from edge.backends.base import Runner
from edge.card import Model
from edge.config import CameraConfig, DeviceConfig, SourceConfig
from edge.errors import ConfigError
from edge.estimate import Estimate, ModelInfo
from edge.features.recipes import FaceInputFn, FeatureFn, build_features, face_functions
from edge.pipeline.readout import OutputReader
from edge.pipeline.scene import DEFAULT_INTERVAL_S, has_decoder, open_scene
from edge.pipeline.stats import StageTimes, jsonable
from edge.pipeline.windows import NewestFrame, WindowBuffer
from edge.tracker import DetectFn, FaceTracker
from edge.trust import CheckedRunner
from firmware_bridge.sources.base import Source
from firmware_bridge.sources.checks import LayoutGuard

FAILING_AFTER = 10  # windows in a row that failed: the source is reported as failing
QUEUE_WINDOWS = 256  # windows waiting for inference per eeg/audio source (a full queue pushes back on the source)


@dataclass
class SourceRun:
    """Everything the pipeline keeps for one source."""

    config: SourceConfig
    source: Source
    model: Model
    runner: CheckedRunner
    reader: OutputReader
    info: ModelInfo
    max_batch: int
    enabled: bool = True
    windows: WindowBuffer | None = None
    window_s: float | None = None
    queue: queue.Queue[tuple[np.ndarray, float, float]] | None = None
    slot: NewestFrame | None = None
    features: FeatureFn | None = None
    tracker: FaceTracker | None = None
    face_input: FaceInputFn | None = None
    times: StageTimes = field(default_factory=StageTimes)
    sample_rate: float = 0.0
    channels: list[str] | None = None
    received: int = 0  # samples (eeg/audio) or frames (video)
    estimates: int = 0
    errors: int = 0  # windows or faces skipped because features or the model refused them
    consecutive_errors: int = 0
    last_error: str | None = None
    malformed: int = 0  # blocks dropped at the edge (sample_problem, or a layout not (yet) taken)
    layout: LayoutGuard = field(default_factory=LayoutGuard)
    failed: str | None = None  # why this source's thread ended, if it did
    faces: int = 0
    frames: int = 0  # video frames taken by the face path (with or without a face in them)
    latest: Estimate | None = None
    scene: Any = None  # the scene model's decoder side (edge.scene.model.SceneModel) when the card has a decoder
    scene_interval: float = 3.0  # seconds between two frames the scene path takes
    explained: int = 0
    unexplained_unknown: int = 0  # scene frames whose estimate was 'unknown' (out of distribution): not explained
    taps: list[Any] = field(default_factory=list)  # sources sharing this camera (FrameTap.offer gets every frame)
    reading_done: threading.Event = field(default_factory=threading.Event)
    last_rate: tuple[float, int, int] = (0.0, 0, 0)  # (time, received, estimates) at the last stats

    @property
    def kind(self) -> str:
        return self.source.kind

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def dropped(self) -> int:
        """Frames replaced before inference took them, plus what the source itself dropped."""
        return (self.slot.skipped if self.slot is not None else 0) + self.source.dropped

    @property
    def failing(self) -> bool:
        return self.consecutive_errors >= FAILING_AFTER or self.failed is not None

    def close(self) -> None:
        """Release the tracker's thread and the runner (the pipeline stops the source itself)."""
        if self.tracker is not None:
            self.tracker.close()
        if self.scene is not None:
            self.scene.__exit__(None, None, None)
        self.runner.deactivate()

    def report(self, now: float, started: float) -> dict[str, Any]:
        """This source's entry in ``stats`` (rates since the previous report)."""
        t_prev, r_prev, e_prev = self.last_rate
        dt = now - (t_prev or started)
        rate = (self.received - r_prev) / dt if dt > 0 else 0.0
        est_rate = (self.estimates - e_prev) / dt if dt > 0 else 0.0
        self.last_rate = (now, self.received, self.estimates)
        entry: dict[str, Any] = {
            "kind": self.kind, "enabled": self.enabled, "model": self.model.name, "backend": self.info.backend,
            "precision": self.info.precision, "device_check": self.runner.status(), "rate_hz": round(rate, 2),
            "estimates": self.estimates, "estimate_hz": round(est_rate, 2), "dropped": int(self.dropped),
            "errors": self.errors, "latency_ms": self.times.summary(), "link": jsonable(self.source.stats()),
            "malformed": self.malformed, "layout_changes": self.layout.changes, "failing": self.failing,
        }
        if self.last_error is not None:
            entry["last_error"] = self.last_error
        if self.failed is not None:
            entry["failed"] = self.failed
        signal = getattr(self.features, "stats", None)
        if signal is not None:
            entry["signal"] = jsonable(signal())
        if self.scene is not None:
            entry["frames"], entry["explanations"] = self.frames, self.explained
            entry["unexplained_unknown"] = self.unexplained_unknown
        if self.tracker is not None:
            entry["faces"] = self.faces
            entry["frames"] = self.frames
            entry["tracks"] = len(self.tracker.tracks)
        return entry

    def row(self) -> dict[str, Any]:
        """This source's row of the live table."""
        lat = self.times.summary().get("capture_to_publish", {})
        est = self.latest
        return {
            "source": self.name, "kind": self.kind, "enabled": self.enabled, "received": self.received,
            "estimates": self.estimates, "dropped": self.dropped, "p50": lat.get("p50"), "p99": lat.get("p99"),
            "backend": self.info.backend, "latest": f"{est.label} {est.confidence:.2f}" if est else "-",
        }


def open_source_run(config: DeviceConfig, src: SourceConfig, source: Source, detect: DetectFn | None,
                    face_input: FaceInputFn | None, on_change: Callable[[], None]) -> SourceRun:
    """Open (activate) the source's model, checked against FP32 on this device, warm it up, and set up its features.

    ``on_change`` is called when the device check changes what runs. If any step fails, the runner is closed.
    """
    settings = config.models[src.model]
    backend = settings.backend or config.backend.default

    def open_for(model: Model) -> Runner:
        return open_runner(model, backend=backend, precision=model.precision, threads=config.backend.threads,
                           engine_cache=config.backend.engine_cache)

    # Anything but FP32 is checked against FP32 on this device before its estimates are published.
    def reference(model: Model) -> Runner:
        return open_runner(model, backend="onnxruntime", threads=config.backend.threads)

    runner = CheckedRunner(settings.path or src.model, settings.precision, open_for, reference=reference)
    runner.activate()
    run: SourceRun | None = None
    try:
        model = runner.model
        reader = OutputReader(model.card, config.fusion.prototypes)
        run = SourceRun(src, source, model, runner, reader, runner.model_info(), settings.max_batch)
        this = run

        def changed(checked: CheckedRunner) -> None:
            this.model, this.info = checked.model, checked.model_info()
            on_change()

        runner.on_change = changed
        input_meta = runner.inputs[0]
        item_shape = tuple(int(d) if isinstance(d, int) else -1 for d in input_meta.shape[1:])
        if all(d > 0 for d in item_shape):  # warm up: the first run of a session is slow (allocation, kernels)
            runner.infer({input_meta.name: np.zeros((1, *item_shape), dtype=input_meta.dtype)})
        if source.kind == "video" and has_decoder(model):  # the scene model: sampled frames, estimate + explanation
            run.scene = open_scene(model, runner, config.backend.threads, reader)
            run.scene_interval = src.hop_s or DEFAULT_INTERVAL_S
            run.slot = NewestFrame()
        elif source.kind == "video":
            if detect is None or face_input is None:
                default_detect, default_input = face_functions(model.card.features.params)
                detect, face_input = detect or default_detect, face_input or default_input
            every = src.detect_every if isinstance(src, CameraConfig) else 5
            run.tracker = FaceTracker(detect, detect_every=every, background=True)
            run.face_input = face_input
            run.slot = NewestFrame()
        else:
            window_s = src.window_s or model.card.inputs[0].window_s
            if window_s is None:
                raise ConfigError(f"source '{src.name}': no window_s in the config and none in model '{model.name}''s card")
            run.window_s = window_s
            run.features = build_features(model.card, item_shape, {"window_s": window_s, "hop_s": src.hop_s or window_s / 2})
            run.queue = queue.Queue(maxsize=QUEUE_WINDOWS)
    except BaseException:
        if run is not None:
            run.close()
        else:
            runner.deactivate()
        raise
    return run
