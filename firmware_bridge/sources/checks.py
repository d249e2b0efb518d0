"""What a Sample must be before it reaches the windows and the models: checked at the edge, per block.

A board's frame can pass its CRC and still be nonsense (sample rate 0, NaN, a channel count that
changes in the middle of a stream); a text-mode sketch can print ``nan``. One such block must not
end the bridge (a division by zero, a shape error in a concatenation) or poison every window after
it. ``sample_problem`` says what is wrong with one block; ``LayoutGuard`` holds a stream to one
layout (channels and rate) and takes a new one only after the board says it restarted (``FIRST``)
or after the new layout persists, so that one corrupt frame is dropped and a real change of the
board's layout restarts that source's windows.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

from firmware_bridge.sources.base import Sample

MAX_RATE_HZ = {"eeg": 100_000.0, "audio": 384_000.0}
MIN_RATE_HZ = 0.1
MAX_ABS_VALUE = 1e9  # microvolts or [-1, 1] audio: anything beyond is a broken scale
LAYOUT_CONFIRM = 8  # blocks in a row of a new layout, without FIRST, before it is taken
RATE_TOLERANCE = 0.1  # rates within 10 % are one layout (text mode estimates its rate from arrival times)
FLAG_FIRST = 0x01  # the protocol's FIRST flag, carried in Sample.meta["flags"]


def sample_problem(sample: Sample) -> str | None:
    """Why this eeg/audio block must be dropped (rate absurd or zero, wrong shape, non-finite values), or None."""
    if sample.kind == "video":  # frames are not windowed by rate (and some cameras report 0 fps)
        return None
    rate = sample.sample_rate
    if not isinstance(rate, int | float) or not math.isfinite(rate) or not (
        MIN_RATE_HZ <= rate <= MAX_RATE_HZ.get(sample.kind, 1e6)
    ):
        return f"sample rate {rate!r} is outside {MIN_RATE_HZ}..{MAX_RATE_HZ.get(sample.kind, 1e6):g} Hz"
    data = sample.data
    if not isinstance(data, np.ndarray) or data.dtype.kind not in "fiu":
        return f"data of type {type(data).__name__}, expected a numeric array"
    want = 2 if sample.kind == "eeg" else 1
    if data.ndim != want or (want == 2 and data.shape[0] == 0):
        return f"{sample.kind} block of shape {list(data.shape)}, expected {'(channels, samples)' if want == 2 else '(samples,)'}"
    if data.size and not np.isfinite(data).all():
        return f"{int(data.size - np.isfinite(data).sum())} value(s) are NaN or infinite"
    if data.size and float(np.abs(data).max()) > MAX_ABS_VALUE:
        return f"values up to {float(np.abs(data).max()):.3g}, beyond any sensor's range"
    return None


def _same(a: tuple[int, float], b: tuple[int, float]) -> bool:
    return a[0] == b[0] and abs(a[1] - b[1]) <= RATE_TOLERANCE * max(a[1], b[1])


class LayoutGuard:
    """Holds a stream to one layout (channels, rate); ``check`` says keep, drop, or take a new one."""

    def __init__(self, confirm: int = LAYOUT_CONFIRM) -> None:
        self.confirm = confirm
        self.layout: tuple[int, float] | None = None
        self._candidate: tuple[int, float] | None = None
        self._count = 0
        self.changes = 0

    def check(self, sample: Sample) -> Literal["same", "new", "drop"]:
        """``same``: the stream's layout; ``new``: a layout now taken (restart windows); ``drop``: not (yet) believed."""
        channels = int(sample.data.shape[0]) if sample.kind == "eeg" else 1
        layout = (channels, float(sample.sample_rate))
        if self.layout is None or _same(layout, self.layout):
            first = self.layout is None
            self.layout, self._candidate, self._count = layout, None, 0
            return "new" if first else "same"
        if int(sample.meta.get("flags", 0)) & FLAG_FIRST:  # the board restarted, perhaps with new firmware
            return self._take(layout)
        if self._candidate is not None and _same(layout, self._candidate):
            self._count += 1
        else:
            self._candidate, self._count = layout, 1
        return self._take(layout) if self._count >= self.confirm else "drop"

    def _take(self, layout: tuple[int, float]) -> Literal["new"]:
        self.layout, self._candidate, self._count = layout, None, 0
        self.changes += 1
        return "new"

    def describe(self, layout: tuple[int, float] | None = None) -> str:
        channels, rate = layout or self.layout or (0, 0.0)
        return f"{channels} channel(s) at {rate:g} Hz"
