"""``LoopThread``: one daemon thread that runs a loop until asked to stop, the start/stop/join code shared by the
serial link, every source and the board simulator (each loop polls or waits on ``stop_event``)."""

from __future__ import annotations

import threading
from collections.abc import Callable


class LoopThread:
    """Start a loop once (a second ``start`` while it runs does nothing); ``stop`` sets the event and joins it."""

    def __init__(self) -> None:
        self.stop_event = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self, target: Callable[[], None], name: str) -> bool:
        """Run ``target`` in a new daemon thread unless one is running; True when it started one."""
        if self.thread is not None:
            return False
        self.stop_event.clear()
        self.thread = threading.Thread(target=target, name=name, daemon=True)
        self.thread.start()
        return True

    def stop(self, timeout: float) -> None:
        """Ask the loop to end and wait for it up to ``timeout`` seconds; the next ``start`` runs a new thread."""
        self.stop_event.set()
        if self.thread is not None:
            self.thread.join(timeout)
            self.thread = None

    @property
    def running(self) -> bool:
        return self.thread is not None
