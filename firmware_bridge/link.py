"""Serial transport (pyserial): open a board by device path or by USB identity, read it on a thread,
and survive the cable being pulled.

A USB identity ``VID:PID[:SERIAL]`` (hex, as ``emoedge ports`` prints it) is resolved to a device
path at every (re)connect, because ``/dev/ttyACM0`` may come back as ``/dev/ttyACM1`` after a replug.
When the port disappears the reader counts an outage, closes, and reopens with exponential backoff;
bytes keep flowing to ``on_data(chunk, host_time)`` as soon as it is back. The decoder on the other
side sees the frames lost meanwhile as a sequence gap.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edge.errors import EmoEdgeError
from firmware_bridge.loop_thread import LoopThread

log = logging.getLogger(__name__)

USB_ID = re.compile(r"^([0-9a-fA-F]{4}):([0-9a-fA-F]{4})(?::(\S+))?$")


class LinkError(EmoEdgeError):
    """A serial port cannot be found or opened (the message lists what is there)."""


@dataclass(frozen=True)
class PortInfo:
    device: str
    vid: int | None
    pid: int | None
    serial_number: str | None
    description: str
    manufacturer: str | None
    location: str | None

    @property
    def usb_id(self) -> str | None:
        """``VID:PID[:SERIAL]`` in hex: what ``SerialConfig.usb`` and ``--usb`` accept."""
        if self.vid is None or self.pid is None:
            return None
        base = f"{self.vid:04x}:{self.pid:04x}"
        return f"{base}:{self.serial_number}" if self.serial_number else base

    def as_dict(self) -> dict[str, Any]:
        return {
            "device": self.device, "usb": self.usb_id, "vid": None if self.vid is None else f"{self.vid:04x}",
            "pid": None if self.pid is None else f"{self.pid:04x}", "serial_number": self.serial_number,
            "description": self.description, "manufacturer": self.manufacturer, "location": self.location,
        }


def list_ports() -> list[PortInfo]:
    """Serial ports of this machine with their USB identities (pseudo-terminals are not listed)."""
    from serial.tools import list_ports as lp

    ports = [
        PortInfo(p.device, p.vid, p.pid, p.serial_number, p.description or "", p.manufacturer, p.location)
        for p in lp.comports()
    ]
    return sorted(ports, key=lambda p: p.device)


def is_usb_id(text: str) -> bool:
    return bool(USB_ID.match(text))


def resolve_port(port: str | None = None, usb: str | None = None) -> str:
    """The device path to open: ``port`` as given, or the port whose USB identity matches ``usb``."""
    if port:
        return port
    if not usb:
        raise LinkError("no serial port given: pass a device path or a USB VID:PID[:SERIAL]")
    m = USB_ID.match(usb)
    if not m:
        raise LinkError(f"USB identity must be VID:PID[:SERIAL] in hex, got {usb!r}")
    vid, pid, serial_number = int(m.group(1), 16), int(m.group(2), 16), m.group(3)
    ports = list_ports()
    hits = [p for p in ports if p.vid == vid and p.pid == pid and (serial_number is None or p.serial_number == serial_number)]
    if not hits:
        known = ", ".join(f"{p.device} ({p.usb_id})" for p in ports if p.usb_id) or "no USB serial ports"
        raise LinkError(f"no serial port with USB identity {usb} (present: {known})")
    if len(hits) > 1:
        log.warning("%d ports match %s; using %s (add :SERIAL to choose)", len(hits), usb, hits[0].device)
    return hits[0].device


class SerialLink:
    """A serial port read on its own thread, reopened with backoff whenever it fails.

    ``on_data(chunk, host_time)`` is called on the reader thread with every chunk read; ``host_time``
    is ``time.time()`` right after the read returned.
    """

    def __init__(
        self,
        port: str | None = None,
        usb: str | None = None,
        baudrate: int = 921600,
        on_data: Callable[[bytes, float], None] | None = None,
        min_backoff_s: float = 0.05,
        max_backoff_s: float = 2.0,
        read_timeout_s: float = 0.1,
    ) -> None:
        if not port and not usb:
            raise LinkError("no serial port given: pass a device path or a USB VID:PID[:SERIAL]")
        if usb and not is_usb_id(usb):
            raise LinkError(f"USB identity must be VID:PID[:SERIAL] in hex, got {usb!r}")
        self.port = port
        self.usb = usb
        self.baudrate = baudrate
        self.on_data = on_data or (lambda data, t: None)
        self.min_backoff_s = min_backoff_s
        self.max_backoff_s = max_backoff_s
        self.read_timeout_s = read_timeout_s
        self._serial: Any = None
        self._loop = LoopThread()
        self._stop = self._loop.stop_event
        self._lock = threading.Lock()
        self.device: str | None = None
        self.connected = threading.Event()
        self.connects = 0
        self.outages = 0
        self.open_failures = 0
        self.callback_errors = 0
        self.bytes = 0
        self.last_error: str | None = None
        self.offline_s = 0.0
        self._offline_since: float | None = time.monotonic()

    @property
    def name(self) -> str:
        return self.port or f"usb {self.usb}"

    # -- lifecycle

    def start(self) -> SerialLink:
        self._loop.start(self._run, f"link-{self.name}")
        return self

    def stop(self, timeout: float = 3.0) -> None:
        self._stop.set()
        with self._lock:
            ser = self._serial
        if ser is not None:
            try:
                ser.cancel_read()
            except Exception:  # already closed
                pass
        self._loop.stop(timeout)
        self._close()

    def __enter__(self) -> SerialLink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_connected(self, timeout: float) -> bool:
        return self.connected.wait(timeout)

    def open_once(self) -> None:
        """Open now, raising LinkError with the reason (for commands that should fail fast on a typo)."""
        self._open()

    # -- reader thread

    def _open(self) -> None:
        import serial

        path = resolve_port(self.port, self.usb)
        try:
            ser = serial.Serial(path, self.baudrate, timeout=self.read_timeout_s)
        except (serial.SerialException, OSError, ValueError) as exc:
            raise LinkError(f"cannot open {path}: {exc}") from None
        with self._lock:
            self._serial = ser
        self.device = path
        self.connects += 1
        if self._offline_since is not None:
            self.offline_s += time.monotonic() - self._offline_since
            self._offline_since = None
        self.connected.set()
        log.info("serial link %s open (%d baud)", path, self.baudrate)

    def _close(self) -> None:
        with self._lock:
            ser, self._serial = self._serial, None
        if ser is not None:
            try:
                ser.close()
            except Exception:  # closing a vanished device may fail; it is gone either way
                pass
        if self.connected.is_set():
            self.connected.clear()
            self._offline_since = time.monotonic()

    def _run(self) -> None:
        import serial

        backoff = self.min_backoff_s
        while not self._stop.is_set():
            if self._serial is None:
                try:
                    self._open()
                    backoff = self.min_backoff_s
                except LinkError as exc:
                    self.open_failures += 1
                    if str(exc) != self.last_error:
                        log.warning("%s", exc)
                    self.last_error = str(exc)
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, self.max_backoff_s)
                    continue
            ser = self._serial
            if ser is None:
                continue
            try:
                data = ser.read(max(1, ser.in_waiting))
            except (serial.SerialException, OSError, TypeError, AttributeError) as exc:
                if self._stop.is_set():
                    break
                self.outages += 1
                self.last_error = f"{self.device}: {exc}"
                log.warning("serial link lost: %s; reconnecting", self.last_error)
                self._close()
                continue
            if data:
                self.bytes += len(data)
                try:
                    self.on_data(data, time.time())
                except Exception:  # a consumer's bug must not end the reader (the board keeps sending)
                    self.callback_errors += 1
                    log.exception("serial link %s: on_data failed", self.device)

    def write(self, data: bytes) -> int:
        """Send bytes to the board (commands); 0 while disconnected."""
        with self._lock:
            ser = self._serial
        if ser is None:
            return 0
        try:
            return int(ser.write(data) or 0)
        except Exception:
            return 0

    def stats(self) -> dict[str, Any]:
        offline = self.offline_s + (time.monotonic() - self._offline_since if self._offline_since is not None else 0.0)
        return {
            "port": self.device or self.name, "connected": self.connected.is_set(), "connects": self.connects,
            "outages": self.outages, "open_failures": self.open_failures, "link_bytes": self.bytes,
            "callback_errors": self.callback_errors,
            "offline_s": round(offline, 3), "last_error": self.last_error,
        }
