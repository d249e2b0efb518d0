"""The board's clock against the host's: unwraps the 32-bit microsecond timestamp and fits its drift (least squares)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np


@dataclass
class BoardClock:
    """Unwraps the board's 32-bit microsecond clock and fits its rate against the host clock over ``window`` points."""

    window: int = 4096
    last_us: int | None = None
    points: deque[tuple[float, float]] = field(default_factory=deque)

    def unwrap(self, raw: int) -> int:
        """The board time in microseconds since its first frame, continuous across the 71.6-minute wrap."""
        if self.last_us is None:
            self.last_us = raw
        else:
            delta = (raw - self.last_us) & 0xFFFFFFFF
            if delta >= 1 << 31:
                delta -= 1 << 32  # a timestamp a little older than the last one (another frame type)
            self.last_us += delta
        return self.last_us

    def add(self, host: float, board_us: int) -> None:
        self.points.append((host, board_us / 1e6))
        if len(self.points) > self.window:
            self.points.popleft()

    def reset(self) -> None:
        """The board restarted: its clock starts again."""
        self.last_us = None
        self.points.clear()

    def drift_ppm(self, min_span_s: float = 1.0) -> float | None:
        """(board seconds per host second - 1) x 1e6, least-squares over the window; None until it spans min_span_s."""
        if len(self.points) < 8:
            return None
        pts = np.asarray(self.points, dtype=np.float64)
        host = pts[:, 0] - pts[0, 0]
        board = pts[:, 1] - pts[0, 1]
        if host[-1] - host[0] < min_span_s:
            return None
        hc = host - host.mean()
        denom = float(hc @ hc)
        if denom <= 0:
            return None
        slope = float(hc @ (board - board.mean())) / denom
        return (slope - 1.0) * 1e6
