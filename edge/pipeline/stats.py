"""Stage timing: the one place that names the pipeline's stages and keeps their latencies for p50/p99.

Every latency in ``stats`` (``sources.<name>.latency_ms``), in each estimate's ``latency_ms`` and in
``emoedge bench e2e`` comes from a ``Lap`` (successive marks within one batch) into a ``StageTimes``
(a bounded window of samples per stage). A new stage is one more name in ``STAGES``.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

LATENCY_WINDOW = 2048  # latency samples kept per stage for p50/p99

#: the stages, in data-flow order: from the capture time (the window's last sample, the frame) to its queue
#: (reading, windowing), waiting in the queue or slot, face detection and tracking (video), features,
#: inference of the batch, fusion (reading the outputs: labels, calibrated confidence, OOD, the person's
#: profile; and the fusion update), and the whole way from the capture time to the publish call.
Stage = Literal["capture", "queue", "detect_track", "features", "infer", "fusion", "capture_to_publish"]
STAGES: tuple[Stage, ...] = ("capture", "queue", "detect_track", "features", "infer", "fusion", "capture_to_publish")


class Lap:
    """Successive ``perf_counter`` marks within one batch: ``mark(stage)`` records the time since the last mark."""

    def __init__(self) -> None:
        self.start = self._last = time.perf_counter()
        self.wall_start = time.time()  # the same instant on the clock that capture times use
        self.ms: dict[str, float] = {}

    def mark(self, stage: Stage, items: int = 1) -> None:
        """The time since the previous mark is ``stage``'s, shared by ``items`` (per-item cost)."""
        now = time.perf_counter()
        self.ms[stage] = (now - self._last) * 1e3 / max(1, items)
        self._last = now

    def since(self, ready: float) -> float:
        """Milliseconds from ``ready`` (a ``perf_counter`` time: when an item was queued) to the lap's start."""
        return (self.start - ready) * 1e3

    def waited(self, captured: float, ready: float) -> dict[str, float]:
        """``capture`` (from ``captured``, a ``time.time()`` capture time, to ``ready``, when the item was queued)
        and ``queue`` (from ``ready`` to the lap's start)."""
        queued = self.since(ready)
        return {"capture": max(0.0, (self.wall_start - captured) * 1e3 - queued), "queue": queued}


@dataclass
class StageTimes:
    """Latencies (ms) per stage, the last ``LATENCY_WINDOW`` of each, for p50/p99 in stats."""

    samples: dict[str, deque[float]] = field(default_factory=dict)

    def add(self, stage: str, ms: float) -> None:
        self.samples.setdefault(stage, deque(maxlen=LATENCY_WINDOW)).append(ms)

    def add_all(self, latencies: dict[str, float]) -> None:
        for stage, ms in latencies.items():
            self.add(stage, ms)

    def summary(self) -> dict[str, dict[str, float]]:
        """``{stage: {"p50", "p99", "n"}}`` over the samples kept."""
        out = {}
        for stage, values in list(self.samples.items()):
            if values:
                arr = np.fromiter(values, dtype=np.float64)
                out[stage] = {"p50": round(float(np.percentile(arr, 50)), 3),
                              "p99": round(float(np.percentile(arr, 99)), 3), "n": int(arr.size)}
        return out


def jsonable(value: Any) -> Any:
    """Numbers, strings and containers as JSON takes them (numpy scalars as Python numbers, anything else as text)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, int | float | str | bool) or value is None:
        return value
    return str(value)
