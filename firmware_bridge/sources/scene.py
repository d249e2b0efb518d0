"""A source fed by another source's frames: two ``[[sources]]`` on one camera (the face path and the scene
model) share it, opened once. The pipeline hands every frame the camera's reader takes to ``offer``; the tap
keeps one every ``interval_s`` (the scene model's sampling interval, the source's ``hop_s``)."""

from __future__ import annotations

import time

import numpy as np

from firmware_bridge.sources.base import Sample, Source


class FrameTap(Source):
    kind = "video"

    def __init__(self, name: str, interval_s: float = 0.0) -> None:
        super().__init__(name, max_queue=2)
        self.interval_s = interval_s
        self.offered = 0
        self.taken = 0
        self._last = -float("inf")

    def offer(self, sample: Sample) -> None:
        """A frame of the shared camera (called from its reader thread): taken when ``interval_s`` has passed."""
        self.offered += 1
        now = time.monotonic()
        if self.stopped or now - self._last < self.interval_s:
            return
        self._last = now
        self._emit(Sample(self.name, "video", np.asarray(sample.data), sample.sample_rate, sample.host_time,
                          sample.board_time, seq=self.taken), drop_oldest=True)
        self.taken += 1

    def _run(self) -> None:
        self._stop.wait()  # frames arrive through offer()

    def stats(self) -> dict[str, object]:
        return {**super().stats(), "offered": self.offered, "taken": self.taken}
