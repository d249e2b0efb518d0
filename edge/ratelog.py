"""Rate-limited warnings: one line per key and interval, with how many were held back.

A bridge that runs for months must not let a flood from outside (2,000 control messages a second, a
board spewing bad frames) turn into a flood of log lines that fills the disk and stalls the threads
that write them. Every warning about something an outsider can repeat goes through here.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any


class RateLimitedLog:
    """``warn(key, msg, *args)`` logs at most once per ``interval_s`` per key; the next line says how many were held."""

    def __init__(self, logger: logging.Logger, interval_s: float = 10.0) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def warn(self, key: str, msg: str, *args: Any, level: int = logging.WARNING) -> bool:
        """Log now if this key has not logged within the interval; True when a line was written."""
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.interval_s:
                self._held[key] = self._held.get(key, 0) + 1
                return False
            self._last[key] = now
            held = self._held.pop(key, 0)
        if held:
            msg += " (%d more like this in the last %.0f s)"
            args = (*args, held, self.interval_s)
        self.logger.log(level, msg, *args)
        return True

    def held(self) -> int:
        """Lines held back and not yet reported."""
        with self._lock:
            return sum(self._held.values())
