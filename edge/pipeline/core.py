"""The threaded pipeline: one reader and one inference thread per source (``worker``), fusion, the state and stats
timer, and the lifecycle. A context manager: ``with Pipeline(config, publisher) as pipe:`` starts everything and
closes every runner, tracker, source and thread limit it opened, also when building or starting fails half-way.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

import cv2

from edge import __version__
from edge.config import DeviceConfig
from edge.enroll import Enroller
from edge.errors import ConfigError
from edge.estimate import EmotionState, Estimate
from edge.features.recipes import FaceInputFn
from edge.fusion import Fusion, significant_change
from edge.pipeline.scene import shared_camera
from edge.pipeline.source_run import SourceRun, open_source_run
from edge.pipeline.worker import SourceWorker
from edge.ratelog import RateLimitedLog
from edge.tracker import DetectFn
from firmware_bridge.sources import make_source
from firmware_bridge.sources.base import Source
from firmware_bridge.sources.scene import FrameTap

if TYPE_CHECKING:
    from edge.publish.client import Publisher

log = logging.getLogger("edge.pipeline")


class Pipeline:
    """Build from a DeviceConfig (opens every source's model); ``start()``/``stop()`` or ``with``; ``snapshot()``
    for the live table, ``stats()`` for the ``stats`` topic."""

    def __init__(
        self,
        config: DeviceConfig,
        publisher: Publisher | None = None,
        sources: Mapping[str, Source] | None = None,
        detect: DetectFn | None = None,
        face_input: FaceInputFn | None = None,
        on_estimate: Callable[[Estimate], None] | None = None,
        on_state: Callable[[EmotionState], None] | None = None,
        on_explanation: Callable[[Estimate, dict[str, Any]], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.publisher = publisher
        self.on_estimate = on_estimate
        self.on_state = on_state
        self.on_explanation = on_explanation
        self.clock = clock
        self.fusion = Fusion(config.fusion)
        self._fusion_lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._started = 0.0
        self._blas_limit: Any = None
        self._cv_threads: int | None = None  # OpenCV's thread count before start (restored by stop)
        self.state: EmotionState | None = None
        self._published_state: EmotionState | None = None
        self._published_at = 0.0
        self.errors: list[str] = []
        self._ratelog = RateLimitedLog(log)
        self.runs: dict[str, SourceRun] = {}
        given = dict(sources or {})
        taps: list[tuple[str, FrameTap]] = []
        try:
            for src in config.sources:
                if not src.enabled:
                    continue
                owner = shared_camera(config, src)
                if owner is not None and src.name not in given:  # the camera is opened once: this source taps it
                    tap = FrameTap(src.name)
                    taps.append((owner, tap))
                    given[src.name] = tap
                source = given.pop(src.name, None) or make_source(src)
                self.runs[src.name] = open_source_run(config, src, source, detect, face_input, self._report_device_checks)
            for owner, tap in taps:
                self.runs[owner].taps.append(tap)
            if given:
                raise ConfigError(f"sources {sorted(given)} were given but are not in the config")
        except BaseException:
            self.close()  # a later source failed: the runners already opened are closed, not leaked
            raise
        # per-person heads: enrollment commands arrive on the publisher's enroll/set topic
        # Profiles belong to the FP32 model (its head and sha256), whichever precision runs it on this device.
        self.enroller = Enroller({name: run.runner.fp32 for name, run in self.runs.items()}, clock=clock)
        if publisher is not None:
            publisher.on_enroll = self.enroller.command
        self.workers = {name: SourceWorker(run, self.enroller, self._emit, self._stop, self._ratelog, self._explain)
                        for name, run in self.runs.items()}

    # --- lifecycle ---------------------------------------------------------------------------
    def __enter__(self) -> Pipeline:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def device_checks(self) -> dict[str, Any]:
        """Per source: the model's precision asked for and in use, and why (for the ``status`` payload)."""
        return {name: run.runner.summary() for name, run in self.runs.items()}

    def _report_device_checks(self) -> None:
        if self.publisher is not None:
            self.publisher.set_status_details({"models": self.device_checks()})

    def start(self) -> Pipeline:
        """Start every source and thread; if one fails to start, everything started is stopped and closed."""
        # One thread per source already uses the cores; BLAS threads on top of that oversubscribe them, and
        # under contention OpenBLAS' spinning threads turn the 0.4 ms mel filterbank product into 20+ ms.
        from threadpoolctl import threadpool_limits

        self._blas_limit = threadpool_limits(limits=1, user_api="blas")
        # The same for OpenCV: its pool runs each face detection on every core at once, and for those ~30 ms
        # every other source waits for a core. One thread keeps a core free: in `emoedge bench e2e` (2 cores,
        # three paired runs) the p99 fell 13.3-14.3 -> 10.1-11.0 ms (EEG) and 13.8-15.1 -> 10.0-11.3 ms (camera).
        self._cv_threads = cv2.getNumThreads()
        cv2.setNumThreads(1)
        try:
            self._report_device_checks()
            self._started = time.time()
            for name, run in self.runs.items():
                run.source.start()
                worker = self.workers[name]
                self._spawn(f"read-{name}", worker.read_loop, run)
                self._spawn(f"infer-{name}", worker.infer_loop, run)
            self._spawn("state", self._state_loop, None)
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self, name: str, target: Callable[[], None], run: SourceRun | None) -> None:
        def guarded() -> None:
            try:
                target()
            except Exception as exc:  # a broken source or model must not hang the others silently
                log.exception("pipeline thread %s failed", name)
                self.errors.append(f"{name}: {type(exc).__name__}: {exc}")
                if run is not None:  # only this source ends; the others keep publishing
                    run.failed = f"{type(exc).__name__}: {exc}"
                    self.workers[run.name].reading_ended()
                if run is None or all(r.failed for r in self.runs.values()):
                    self._stop.set()

        thread = threading.Thread(target=guarded, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the sources, finish every complete window already read, publish the last state, close everything."""
        self._stop.set()
        for run in self.runs.values():
            run.source.stop()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.1, deadline - time.monotonic()))
        self._publish_state(force=True)
        self.close()

    def close(self) -> None:
        """Close every runner and tracker opened and undo the BLAS thread limit (``stop`` stops the sources first)."""
        for run in self.runs.values():
            run.close()
        if self._blas_limit is not None:
            self._blas_limit.restore_original_limits()
            self._blas_limit = None
        if self._cv_threads is not None:
            cv2.setNumThreads(self._cv_threads)
            self._cv_threads = None

    def set_enabled(self, name: str, on: bool) -> None:
        """Turn a source on or off (from ``<source>/enabled/set``); a disabled source stops counting in fusion."""
        run = self.runs.get(name)
        if run is None:
            return
        run.enabled = on
        if not on:
            if run.windows is not None:
                run.windows.reset()
            with self._fusion_lock:
                self.fusion.forget(name)
        log.info("source %s %s", name, "enabled" if on else "disabled")

    # --- estimates, state, stats ---------------------------------------------------------------
    def _emit(self, run: SourceRun, estimates: list[Estimate], primary: Estimate | None) -> None:
        """Publish a batch's estimates (outbox first) and hand them (or the ``primary`` one) to fusion."""
        if not run.enabled:
            return
        started = time.perf_counter()
        with self._fusion_lock:  # first, so that the state that follows already holds these estimates
            for est in [primary] if primary is not None else estimates:
                self.fusion.update(est)
        fused_ms = (time.perf_counter() - started) * 1e3
        for est in estimates:
            est.latency_ms["fusion"] = est.latency_ms.get("fusion", 0.0) + fused_ms
            est.latency_ms["capture_to_publish"] = max(0.0, (time.time() - est.ts) * 1e3)
            if self.publisher is not None:
                est.seq = self.publisher.publish_estimate(est)
            run.times.add_all(est.latency_ms)
            run.estimates += 1
            run.latest = est
            if self.on_estimate is not None:
                self.on_estimate(est)

    def _explain(self, run: SourceRun, est: Estimate, payload: dict[str, Any]) -> None:
        """Publish the scene model's explanation of ``est`` on ``<source>/explanation`` with its ``seq``."""
        if self.publisher is not None and est.seq is not None and run.enabled:
            self.publisher.publish_explanation(run.name, est.seq, payload)
        if self.on_explanation is not None:
            self.on_explanation(est, payload)

    def _state_loop(self) -> None:
        mqtt = self.config.mqtt
        last_stats = time.monotonic()
        while not self._stop.wait(0.1):
            self._publish_state()
            if time.monotonic() - last_stats >= mqtt.stats_interval_s:
                last_stats = time.monotonic()
                if self.publisher is not None:
                    self.publisher.publish_stats(self.stats())

    def _publish_state(self, force: bool = False) -> None:
        now = self.clock()
        with self._fusion_lock:
            if not self.fusion.sources:  # nothing to say before the first estimate
                return
            state = self.fusion.state(now)
        self.state = state
        last = self._published_state
        due = last is None or force or significant_change(last, state) or (
            now - self._published_at >= self.config.mqtt.state_interval_s
        )
        if due:
            self._published_state, self._published_at = state, now
            if self.publisher is not None:
                self.publisher.publish_state(state)
            if self.on_state is not None:
                self.on_state(state)

    def stats(self) -> dict[str, Any]:
        """The ``stats`` payload: uptime, version, per source (``SourceRun.report``), the fused label."""
        now = time.time()
        sources = {name: run.report(now, self._started) for name, run in self.runs.items()}
        out: dict[str, Any] = {"uptime_s": round(now - self._started, 3), "version": __version__, "sources": sources}
        if self.state is not None:
            out["fusion"] = {"label": self.state.label, "confidence": round(self.state.confidence, 4)}
        return out

    def snapshot(self) -> list[dict[str, Any]]:
        """One row a source for the live table."""
        return [run.row() for run in self.runs.values()]
