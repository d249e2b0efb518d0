"""One source's two threads: the reader (samples -> windows or the newest-frame slot) and the inference loop
(windows or faces -> features -> runner -> readings -> estimates), and where a fault stops: a bad block is
dropped and counted (``malformed``), a window whose features or inference raise is skipped and counted
(``errors``, ``last_error``); after ``FAILING_AFTER`` in a row the source is reported as failing and every
next window is still tried."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from edge.enroll import Enroller
from edge.errors import EmoEdgeError
from edge.estimate import Estimate
from edge.pipeline.source_run import FAILING_AFTER, SourceRun
from edge.pipeline.stats import Lap
from edge.pipeline.windows import WindowBuffer
from edge.ratelog import RateLimitedLog
from firmware_bridge.sources.base import Sample
from firmware_bridge.sources.checks import sample_problem

log = logging.getLogger("edge.pipeline")
EmitFn = Callable[[SourceRun, list[Estimate], "Estimate | None"], None]  # run, estimates, the one fusion takes
ExplainFn = Callable[[SourceRun, Estimate, dict[str, Any]], None]  # run, the estimate explained, the explanation body


class SourceWorker:
    """The reader and inference loops of one source; ``emit`` hands its estimates to the pipeline."""

    def __init__(self, run: SourceRun, enroller: Enroller, emit: EmitFn, stopping: threading.Event,
                 ratelog: RateLimitedLog, explain: ExplainFn | None = None) -> None:
        self.run, self.enroller, self.emit, self.stopping, self.ratelog = run, enroller, emit, stopping, ratelog
        self.explain = explain

    # --- reading ------------------------------------------------------------------------------
    def read_loop(self) -> None:
        run = self.run
        try:
            while True:
                sample = run.source.read(timeout=0.1)
                if sample is None:
                    if run.source.stopped:
                        if not self.stopping.is_set():
                            log.warning("source %s ended (end of its file, or its reader failed: see above)", run.name)
                        break
                    continue
                problem = sample_problem(sample)
                if problem is not None:
                    self.malformed(problem)
                    continue
                run.received += 1 if run.kind == "video" else int(np.asarray(sample.data).shape[-1])
                for tap in run.taps:  # another source on this camera (the scene path beside the faces)
                    tap.offer(sample)
                if not run.enabled:
                    continue
                if run.slot is not None:
                    run.slot.put(sample)
                    continue
                self.window_sample(sample)
        finally:
            self.reading_ended()

    def reading_ended(self) -> None:
        """No more samples come: the inference loop finishes what is queued and ends."""
        self.run.reading_done.set()
        if self.run.slot is not None:
            self.run.slot.close()

    def window_sample(self, sample: Sample) -> None:
        """One eeg/audio block into the source's windows; a new layout restarts them, a bad block is dropped."""
        run = self.run
        before = run.layout.layout
        verdict = run.layout.check(sample)
        if verdict == "drop":
            have = (int(sample.data.shape[0]) if sample.data.ndim == 2 else 1, float(sample.sample_rate))
            self.malformed(f"layout {run.layout.describe(have)} differs from the stream's {run.layout.describe()}")
            return
        if verdict == "new" and before is not None:
            log.warning("source %s: the board's layout changed from %s to %s; restarting its windows",
                        run.name, run.layout.describe(before), run.layout.describe())
            run.windows = None
        run.sample_rate, run.channels = float(sample.sample_rate), sample.channels
        if run.windows is None:
            rate = float(sample.sample_rate)
            size = max(1, round((run.window_s or 1.0) * rate))
            hop = max(1, round((run.config.hop_s or (run.window_s or 1.0) / 2) * rate))
            run.windows = WindowBuffer(size, hop)
        assert run.queue is not None
        try:
            windows = run.windows.push(sample)
        except Exception as exc:  # noqa: BLE001 - the windows restart; the stream goes on
            run.windows = None
            self.malformed(f"{type(exc).__name__}: {exc}")
            return
        for window, ts in windows:
            run.queue.put((window, ts, time.perf_counter()))  # blocks: EEG and audio are never dropped

    def malformed(self, why: str) -> None:
        run = self.run
        run.malformed += 1
        self.ratelog.warn(f"malformed:{run.name}", "source %s: dropped a block (%d so far): %s", run.name, run.malformed, why)

    # --- inference ----------------------------------------------------------------------------
    def infer_loop(self) -> None:
        if self.run.scene is not None:
            from edge.pipeline.scene import scene_loop

            scene_loop(self)
        elif self.run.slot is not None:
            self.face_loop()
        else:
            self.window_loop()

    def next_frame(self) -> tuple[Sample, float] | None:
        """The newest video frame and when it was put in the slot; None once reading has ended."""
        assert self.run.slot is not None
        while (got := self.run.slot.take(timeout=0.1)) is None:
            if self.run.reading_done.is_set():
                return None
        return got

    def next_batch(self) -> list[tuple[np.ndarray, float, float]] | None:
        """Every window waiting, up to ``max_batch``; None once reading has ended and the queue is empty."""
        run = self.run
        assert run.queue is not None
        while True:
            try:
                batch = [run.queue.get(timeout=0.1)]
                break
            except queue.Empty:
                if run.reading_done.is_set():
                    return None
        while len(batch) < run.max_batch:
            try:
                batch.append(run.queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def window_loop(self) -> None:
        run = self.run
        assert run.features is not None
        while (batch := self.next_batch()) is not None:
            lap = Lap()
            try:
                items = np.stack([run.features(window, run.sample_rate, run.channels) for window, _, _ in batch])
                lap.mark("features", len(batch))
                outputs = run.runner.infer({run.runner.inputs[0].name: items})
                lap.mark("infer")
                outputs, person, adapted = self.enroller.process(run.name, outputs, [ts for _, ts, _ in batch])
                readings = run.reader.read(outputs)
                lap.mark("fusion")  # the rest of this stage, the fusion update, is added by emit
            except Exception as exc:  # noqa: BLE001 - one bad window is skipped and counted, never the end of the run
                self.skip(len(batch), exc)
                continue
            run.consecutive_errors = 0
            estimates = []
            for (_, ts, ready), r in zip(batch, readings, strict=True):
                lat = {**lap.waited(ts, ready), **lap.ms}
                estimates.append(Estimate(run.name, run.model.card.modality, r.probs, r.label, r.confidence, r.valence,
                                          r.arousal, ts, run.window_s, run.info, lat, profile=person, adapted=adapted,
                                          ood=r.ood))
            annotate = getattr(run.features, "annotate", None)
            if annotate is not None:
                annotate(estimates)
            self.emit(run, estimates, None)

    def face_loop(self) -> None:
        run = self.run
        assert run.slot is not None and run.tracker is not None and run.face_input is not None
        while (got := self.next_frame()) is not None:
            sample, ready = got
            run.frames += 1
            frame = sample.data
            lap = Lap()
            tracks = run.tracker.update(frame)
            lap.mark("detect_track")
            run.times.add("detect_track", lap.ms["detect_track"])
            if not tracks:
                continue
            tracks = tracks[: run.max_batch]
            try:
                items = np.stack([run.face_input(frame, t.box) for t in tracks])
                lap.mark("features", len(tracks))
                outputs = run.runner.infer({run.runner.inputs[0].name: items})
                lap.mark("infer")
                outputs, person, adapted = self.enroller.process(run.name, outputs, [sample.host_time] * len(tracks))
                readings = run.reader.read(outputs)
                lap.mark("fusion")
            except Exception as exc:  # noqa: BLE001 - one bad frame is skipped and counted
                self.skip(len(tracks), exc)
                continue
            run.consecutive_errors = 0
            run.faces += len(tracks)
            estimates = []
            for track, r in zip(tracks, readings, strict=True):
                x, y, w, h = (int(v) for v in track.box)
                estimates.append(Estimate(run.name, run.model.card.modality, r.probs, r.label, r.confidence, r.valence,
                                          r.arousal, sample.host_time, None, run.info,
                                          {**lap.waited(sample.host_time, ready), **lap.ms}, track_id=track.id, box=(x, y, w, h),
                                          profile=person, adapted=adapted, ood=r.ood))
            self.emit(run, estimates, estimates[0])  # the largest face speaks for the source in fusion

    def skip(self, n: int, exc: Exception) -> None:
        """A window or face the features or the model refused or failed on: counted and logged, the stream goes on.

        Every next window is tried again; after FAILING_AFTER in a row the source is reported as failing.
        """
        run = self.run
        run.errors += n
        run.consecutive_errors += n
        run.last_error = str(exc)[:300] if isinstance(exc, EmoEdgeError) else f"{type(exc).__name__}: {str(exc)[:300]}"
        if run.consecutive_errors >= FAILING_AFTER:
            self.ratelog.warn(f"failing:{run.name}", "source %s keeps failing: %d window(s) in a row (%d in all); "
                              "trying every next one: %s", run.name, run.consecutive_errors, run.errors, run.last_error)
        else:
            self.ratelog.warn(f"skip:{run.name}", "source %s: %d input(s) skipped (%d so far): %s",
                              run.name, n, run.errors, run.last_error)
