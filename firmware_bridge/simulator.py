"""Virtual sensor boards that speak the frame protocol on a serial port or pseudo-terminal.

They stand in for hardware in tests, in ``emoedge simulate`` and in ``emoedge run --demo``, and
behave like a board: they pace themselves by their own (optionally drifting) clock, send device info
and heartbeats, and when the host does not read fast enough or the port vanishes they drop blocks,
flag the overflow and count it, instead of blocking forever.

This module owns what every board shares (``BoardSimulator``: pacing, the port, drops, the thread) and the
pseudo-terminal (``open_pty``); the boards themselves (EEG, Emotiv headset, microphone) are
``firmware_bridge.simulated_boards``.
"""

from __future__ import annotations

import logging
import os
import select
import threading
import time
import tty
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from firmware_bridge import protocol as P
from firmware_bridge.loop_thread import LoopThread

log = logging.getLogger(__name__)


@dataclass
class PtyPair:
    """A pseudo-terminal: the simulator writes ``master_fd``; a reader opens ``slave_path`` like a serial port."""

    master_fd: int
    slave_fd: int
    slave_path: str

    def close(self) -> None:
        for fd in (self.master_fd, self.slave_fd):
            try:
                os.close(fd)
            except OSError:
                pass


def open_pty() -> PtyPair:
    """Open a raw pseudo-terminal pair (no echo, no newline translation, so binary frames pass intact).

    The slave end stays open in this process so that its raw settings hold while readers come and go.
    """
    master, slave = os.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    os.set_blocking(master, False)
    return PtyPair(master, slave, os.ttyname(slave))


class BoardSimulator(ABC):
    """A paced frame writer on a serial port path or an open file descriptor (e.g. a pty master).

    realtime: pace blocks by the board clock; when the port cannot take a frame within
    ``write_timeout_s`` the block is dropped and counted (as a board with a full USB buffer would).
    Not realtime: send as fast as the reader takes them, never dropping (for throughput tests).
    """

    sensor = P.SENSOR_NONE

    def __init__(self, port: str | int, baudrate: int = 921600, realtime: bool = True, clock_ppm: float = 0.0,
                 start_us: int = 0, block: int = 8, rate: float = 128.0, write_timeout_s: float = 0.25,
                 info_every_s: float = 1.0, seconds: float | None = None) -> None:
        self.port = port
        self.baudrate = baudrate
        self.realtime = realtime
        self.clock_ppm = clock_ppm
        self.start_us = start_us
        self.block = block
        self.rate = float(rate)
        self.write_timeout_s = write_timeout_s
        self.info_every_s = info_every_s
        self.seconds = seconds
        self.encoder = P.FrameEncoder(self.sensor)
        self.frames_sent = 0
        self.blocks_sent = 0
        self.bytes_sent = 0
        self.board_dropped = 0  # samples not sent (port full or gone)
        self.reopens = 0
        self.partial_frames = 0  # frames cut short when the port stopped taking bytes mid-frame
        self._fd: int | None = None
        self._serial: Any = None
        self._loop = LoopThread()
        self._stop = self._loop.stop_event
        self.done = threading.Event()
        self.error: str | None = None

    # -- port handling

    def _open(self) -> bool:
        if isinstance(self.port, int):
            self._fd = self.port
            return True
        try:
            import serial

            self._serial = serial.Serial(self.port, self.baudrate, timeout=0, write_timeout=0)
            fd = self._serial.fileno()
            os.set_blocking(fd, False)
            self._fd = fd
            return True
        except Exception as exc:  # the port is not there (yet): a board keeps sampling meanwhile
            self.error = str(exc)
            self._fd = None
            return False

    def _close_port(self) -> None:
        if self._serial is not None:
            try:
                self._serial.close()
            except Exception:
                pass
        self._serial = None
        self._fd = None

    def _write(self, data: bytes, may_drop: bool) -> bool:
        """Write a whole frame; False when the port stays full past the write timeout or is gone."""
        if self._fd is None and not (not isinstance(self.port, int) and self._reopen()):
            return False
        view = memoryview(data)
        started = False
        deadline = time.monotonic() + self.write_timeout_s
        while view:
            try:
                n = os.write(self._fd, view)  # type: ignore[arg-type]
                started = started or n > 0
                view = view[n:]
                continue
            except BlockingIOError:
                pass
            except OSError as exc:  # port vanished
                self.error = str(exc)
                if isinstance(self.port, int):
                    return False
                self._close_port()
                return False
            if self._stop.is_set():
                return False
            wait = 0.05
            if may_drop:
                wait = min(wait, deadline - time.monotonic())
                if wait <= 0:  # a board cannot wait: drop the frame (cut short if it had begun)
                    self.partial_frames += started
                    return False
            if self._fd is None:
                return False
            try:
                select.select([], [self._fd], [], wait)
            except (OSError, ValueError):
                return False
        return True

    def _reopen(self) -> bool:
        ok = self._open()
        if ok:
            self.reopens += 1
        return ok

    # -- clock

    def board_us(self, t: float) -> int:
        """The board's timestamp for ideal time t (s since start), on a clock running clock_ppm fast."""
        return (self.start_us + int(round(t * (1.0 + self.clock_ppm * 1e-6) * 1e6))) & 0xFFFFFFFF

    # -- frames

    @abstractmethod
    def make_block(self, index: int, t: float) -> bytes:
        """Encode data block ``index`` whose first sample is at time t."""

    @abstractmethod
    def make_info(self, t: float) -> bytes:
        """Encode the device info frame."""

    def _send(self, frame: bytes, samples: int = 0) -> None:
        ok = self._write(frame, may_drop=self.realtime)
        if ok:
            self.frames_sent += 1
            self.bytes_sent += len(frame)
            if samples:
                self.blocks_sent += 1
        else:
            self.board_dropped += samples
            self.encoder.mark_overflow()

    def _run(self) -> None:
        if not self._open():
            self._reopen_until_stopped()
        block_s = self.block / self.rate
        t0 = time.monotonic()
        next_info = 0.0
        index = 0
        try:
            while not self._stop.is_set():
                t = index * block_s
                if self.seconds is not None and t >= self.seconds:
                    break
                if self.realtime:
                    delay = t0 + t - time.monotonic()
                    if delay > 0 and self._stop.wait(delay):
                        break
                if t >= next_info:
                    self._send(self.make_info(t))
                    self._send(self.encoder.heartbeat(self.board_us(t), self.board_dropped))
                    next_info = t + self.info_every_s
                if self._fd is None and not isinstance(self.port, int) and not self._reopen():
                    self.board_dropped += self.block  # unplugged: the board samples on, and loses the block
                    self.encoder.mark_overflow()
                    index += 1
                    continue
                self._send(self.make_block(index, t), samples=self.block)
                index += 1
        except Exception as exc:  # report, never kill the caller's process from a daemon thread
            self.error = f"{type(exc).__name__}: {exc}"
            log.exception("simulator stopped")
        finally:
            self.done.set()

    def _reopen_until_stopped(self) -> None:
        while not self._stop.is_set() and not self._reopen():
            self._stop.wait(0.05)

    # -- lifecycle

    def start(self) -> BoardSimulator:
        if not self._loop.running:
            self.done.clear()
            self._loop.start(self._run, f"sim-{type(self).__name__}")
        return self

    def stop(self, timeout: float = 3.0) -> None:
        self._loop.stop(timeout)
        if not isinstance(self.port, int):
            self._close_port()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until a run with ``seconds`` has sent everything."""
        return self.done.wait(timeout)

    def __enter__(self) -> BoardSimulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stats(self) -> dict[str, Any]:
        return {"frames_sent": self.frames_sent, "blocks_sent": self.blocks_sent, "bytes_sent": self.bytes_sent,
                "board_dropped": self.board_dropped, "partial_frames": self.partial_frames, "reopens": self.reopens, "seq_next": self.encoder.seq,
                "error": self.error}
