"""The plain-text protocol for quick sketches: lines of numbers, one sample per line, with its own counters (a text
stream has no CRC, sequence or board clock, so it reports none)."""

from __future__ import annotations

import re
import time
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass
class TextCounters:
    """What the text decoder counted; ``stats()`` reports every field under its own name."""

    bytes: int = 0
    lines: int = 0  # good lines (samples)
    bad_lines: int = 0  # lines that are not numbers, hold NaN or infinity, or have another column count
    discarded_lines: int = 0  # the half line after opening, and the tail of a runaway line
    column_changes: int = 0  # times a new column count was taken (the sketch changed)
    oversize: int = 0  # lines longer than ``max_line`` (thrown away)
    board_errors: int = 0  # lines starting with ERR: the board's own error messages
    last_board_error: str | None = None


class TextLineDecoder:
    """Lines of comma-, tab- or space-separated numbers, one sample per line (what the Edge Impulse
    data forwarder accepts), for quick sketches that ``Serial.println`` their readings.

    The first line after opening is dropped (usually half a line). The column count is set by the
    first whole line; a line with another count is dropped and counted, and after ``reconfigure_after``
    consecutive lines of a new count the new count is taken (the sketch changed). Lines starting with
    ``ERR`` are the board's error messages: counted and kept, never parsed. The sample rate is
    estimated from the arrival rate of lines over the last ``rate_window_s`` seconds.
    """

    def __init__(self, max_line: int = 4096, rate_window_s: float = 2.5, reconfigure_after: int = 5) -> None:
        self.max_line = max_line
        self.rate_window_s = rate_window_s
        self.reconfigure_after = reconfigure_after
        self._buf = bytearray()
        self._first = True
        self._times: deque[float] = deque()
        self._new_columns: int | None = None
        self._new_count = 0
        self.columns: int | None = None
        self.counters = TextCounters()

    def feed(self, data: bytes | bytearray | memoryview, host_time: float | None = None) -> list[np.ndarray]:
        """Consume a chunk; return one float32 row per good line. Never raises on any input."""
        if host_time is None:
            host_time = time.time()
        self.counters.bytes += len(data)
        self._buf += data
        rows: list[np.ndarray] = []
        *complete, rest = self._buf.split(b"\n")
        self._buf = bytearray(rest)
        if len(self._buf) > self.max_line:
            self.counters.oversize += 1
            self._buf.clear()
            self._first = True  # the next newline ends the tail of the runaway line
        for raw in complete:
            if self._first:
                self._first = False
                self.counters.discarded_lines += 1
                continue
            row = self._parse(bytes(raw.strip()))
            if row is not None:
                rows.append(row)
                self.counters.lines += 1
                self._times.append(host_time)
        while self._times and self._times[0] < host_time - self.rate_window_s:
            self._times.popleft()
        return rows

    def _parse(self, line: bytes) -> np.ndarray | None:
        if not line:
            return None
        if line.startswith((b"ERR", b"<ERR")):
            self.counters.board_errors += 1
            self.counters.last_board_error = line.decode("utf-8", "replace")[:200]
            return None
        try:
            values = np.array([float(tok) for tok in re.split(rb"[,\t ]+", line) if tok], dtype=np.float32)
        except ValueError:
            self.counters.bad_lines += 1
            return None
        if values.size == 0:
            return None
        if not np.isfinite(values).all():  # "nan" and "inf" parse as floats; a window with one is poisoned
            self.counters.bad_lines += 1
            return None
        if self.columns is None:
            self.columns = values.size
        if values.size != self.columns:
            if values.size == self._new_columns:
                self._new_count += 1
            else:
                self._new_columns, self._new_count = values.size, 1
            if self._new_count >= self.reconfigure_after:
                self.columns = values.size
                self.counters.column_changes += 1
                self._new_columns, self._new_count = None, 0
                return values
            self.counters.bad_lines += 1
            return None
        self._new_columns, self._new_count = None, 0
        return values

    def rate_hz(self) -> float:
        if len(self._times) < 3:
            return 0.0
        span = self._times[-1] - self._times[0]
        return (len(self._times) - 1) / span if span > 0 else 0.0

    def stats(self) -> dict[str, Any]:
        """The counters, the column count and the measured rate; ``frames`` are the good lines (one sample each)."""
        return {**asdict(self.counters), "frames": self.counters.lines, "columns": self.columns,
                "rate_hz": round(self.rate_hz(), 3)}
