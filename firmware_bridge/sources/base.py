"""The one interface every source implements, real or simulated: it yields timestamped samples.

A Sample carries both clocks: the sensor's own (``board_time``, seconds, first sample of the block;
None where the sensor has no clock) and the host's receive time (``host_time``, ``time.time()`` when
the block arrived), so that features can window by sensor time and latency is measured on the host.
"""

from __future__ import annotations

import logging
import queue
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from edge.errors import EmoEdgeError
from firmware_bridge.loop_thread import LoopThread

SampleKind = Literal["eeg", "audio", "video"]


class SourceError(EmoEdgeError):
    """A source cannot be opened or read; the message says which and why (and how to get what is missing)."""


@dataclass
class Sample:
    """One block from one source.

    data:
      eeg   -> float32 (channels, samples), microvolts
      audio -> float32 (samples,), mono, in [-1, 1]
      video -> uint8 (height, width, 3), BGR (OpenCV order)
    """

    source: str
    kind: SampleKind
    data: np.ndarray
    sample_rate: float  # Hz for eeg and audio, frames per second for video
    host_time: float
    board_time: float | None = None
    seq: int = 0
    channels: list[str] | None = None
    meta: dict[str, Any] = field(default_factory=dict)


class Source(ABC):
    """A source runs its own reader thread and hands samples out through a bounded queue.

    ``read(timeout)`` returns the next Sample or None on timeout; iterating yields until ``stop()``.
    ``stats()`` returns counters for the ``stats`` topic (frames, drops, gaps, reconnects, ...).
    """

    kind: SampleKind

    def __init__(self, name: str, max_queue: int = 256) -> None:
        self.name = name
        self._queue: queue.Queue[Sample] = queue.Queue(max_queue)
        self._loop = LoopThread()
        self._stop = self._loop.stop_event
        self.dropped = 0
        self.error: str | None = None  # why the reader thread ended, if it failed

    def start(self) -> Source:
        self._loop.start(self._run_guarded, f"source-{self.name}")
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._loop.stop(timeout)
        self._close()

    @property
    def running(self) -> bool:
        """Its reader thread was started and not yet stopped."""
        return self._loop.running

    def __enter__(self) -> Source:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def read(self, timeout: float | None = None) -> Sample | None:
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def __iter__(self) -> Iterator[Sample]:
        while not (self._stop.is_set() and self._queue.empty()):
            sample = self.read(timeout=0.1)
            if sample is not None:
                yield sample

    def _emit(self, sample: Sample, drop_oldest: bool = False) -> None:
        """Queue a sample. Video may drop the oldest (newest frame wins); others block (never drop)."""
        while True:
            try:
                self._queue.put(sample, timeout=0.1 if not drop_oldest else 0)
                return
            except queue.Full:
                if drop_oldest:
                    try:
                        self._queue.get_nowait()
                        self.dropped += 1
                    except queue.Empty:
                        pass
                elif self._stop.is_set():
                    return

    def _run_guarded(self) -> None:
        try:
            self._run()
        except Exception as exc:  # the reader thread has no caller: keep the reason for stats() and the log
            self.error = f"{type(exc).__name__}: {exc}"
            logging.getLogger(__name__).error("source %s stopped: %s", self.name, self.error)
        finally:
            self._stop.set()

    @abstractmethod
    def _run(self) -> None:
        """Reader loop: produce samples with ``_emit`` until ``self.stopped``."""

    def _close(self) -> None:  # noqa: B027 - optional hook, most sources release in _run
        """Release devices after the thread ended."""

    def stats(self) -> dict[str, Any]:
        return {"dropped": self.dropped, "queued": self._queue.qsize(), "error": self.error}


def now() -> float:
    return time.time()
