"""How samples wait for inference: sliding windows for EEG and audio (never skipped), one newest-frame slot for video."""

from __future__ import annotations

import threading
import time

import numpy as np

from edge.errors import ConfigError
from firmware_bridge.sources.base import Sample


class WindowBuffer:
    """Cuts a stream of blocks into windows of ``size`` samples every ``hop`` samples, never skipping one.

    ``ts`` of a window is the host time of its last sample: the receive time of the newest block
    minus the samples that came after the window's end, at the stream's rate.

    The newest window a block completes ends at the block's end rather than inside it (it moves later by
    less than a hop, and the windows stay on the hop grid): its last sample arrived with the block, and
    cutting it earlier would only make the estimate older by the rest of the block (half a block on
    average when the hop is not a whole number of blocks, or a replay loops a file whose length is not).
    """

    def __init__(self, size: int, hop: int) -> None:
        if size < 1 or hop < 1:
            raise ConfigError(f"window of {size} samples with hop {hop}: both must be at least one sample")
        self.size, self.hop = size, hop
        self._buf: np.ndarray | None = None
        self._start = 0  # absolute sample index of _buf[..., 0]
        self._next = 0  # absolute sample index where the next window starts
        self._total = 0
        self._last_time = 0.0
        self._rate = 1.0

    def push(self, sample: Sample) -> list[tuple[np.ndarray, float]]:
        """Every complete window the block finishes, each with its host time."""
        data = np.asarray(sample.data, dtype=np.float32)
        self._buf = data if self._buf is None else np.concatenate([self._buf, data], axis=-1)
        self._total += data.shape[-1]
        self._last_time, self._rate = sample.host_time, float(sample.sample_rate)
        out = []
        while self._next + self.size <= self._total:
            newest = self._next + self.hop + self.size > self._total  # the last window this block completes
            end = self._total if newest else self._next + self.size
            begin = end - self.size - self._start
            window = self._buf[..., begin : begin + self.size]
            out.append((window.copy(), self._last_time - (self._total - end) / self._rate))
            self._next += self.hop
        drop = self._next - self._start
        if drop > 0:
            self._buf = self._buf[..., min(drop, self._buf.shape[-1]) :]
            self._start += min(drop, self._total - self._start)
        return out

    def reset(self) -> None:
        self._buf, self._start, self._next, self._total = None, 0, 0, 0


class NewestFrame:
    """A one-frame slot: a newer frame replaces one not yet taken, and that skip is counted."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._frame: tuple[Sample, float] | None = None
        self.skipped = 0
        self.closed = False

    def put(self, sample: Sample) -> None:
        with self._cond:
            if self._frame is not None:
                self.skipped += 1
            self._frame = (sample, time.perf_counter())
            self._cond.notify()

    def take(self, timeout: float) -> tuple[Sample, float] | None:
        """The newest frame and when it was put, or None after ``timeout`` (at once once closed)."""
        with self._cond:
            if self._frame is None and not self.closed:
                self._cond.wait(timeout)
            frame, self._frame = self._frame, None
            return frame

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()
