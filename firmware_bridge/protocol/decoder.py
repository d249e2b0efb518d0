"""``FrameDecoder``: the streaming decoder of binary frames, fed arbitrary chunks; it never raises, and every anomaly
is a counter (``FrameCounters``) in ``stats()``. Sequence tracking is here; the board clock is ``clock.BoardClock``
and the measured rate ``rate.ArrivalRate``."""

from __future__ import annotations

import time
import zlib
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

from cobs import cobs

from firmware_bridge.protocol.clock import BoardClock
from firmware_bridge.protocol.rate import ArrivalRate
from firmware_bridge.protocol.wire import (
    CRC_SIZE,
    FLAG_FIRST,
    FLAG_OVERFLOW,
    FORMAT_NAMES,
    HEADER,
    HEADER_SIZE,
    MAGIC,
    MAX_PAYLOAD,
    VERSION_MAJOR,
    AudioBlock,
    DeviceInfo,
    EegBlock,
    Frame,
    FrameType,
    Heartbeat,
    LogText,
    MalformedPayload,
    parse_body,
)


@dataclass
class FrameCounters:
    """What the decoder counted; ``stats()`` reports every field under its own name."""

    bytes: int = 0
    frames: int = 0  # good frames (CRC, version and payload all good)
    frames_by_type: dict[str, int] = field(default_factory=dict)
    crc_errors: int = 0  # frames whose CRC-32 failed
    framing_errors: int = 0  # segments that are not valid COBS or are shorter than a header
    oversize: int = 0  # runs of bytes longer than the largest legal frame without a delimiter
    unsupported_version: int = 0  # frames with a good CRC but a major version this host cannot read
    versions_seen: set[str] = field(default_factory=set)
    unknown_type: int = 0  # frames of a type this version does not know (a newer minor version): skipped
    # frames with a good CRC whose payload does not match its type, or declares a sample rate, scale or values
    # that make no sense (zero, NaN, infinite, absurd)
    malformed: int = 0
    lost_frames: int = 0  # frames missing from the sequence (gaps, modulo 2^16)
    duplicates: int = 0  # frames repeating the last sequence number (dropped)
    seq_jumps: int = 0  # backward sequence jumps without the FIRST flag (tracking restarts)
    board_resets: int = 0  # FIRST flags after the first frame (the board restarted)
    board_overflows: int = 0  # frames flagged OVERFLOW (the board lost samples before sending)
    board_dropped: int = 0  # the board's own count of samples it could not send (from heartbeats)
    resyncs: int = 0  # times the decoder threw bytes away and restarted at the next delimiter
    discarded_bytes: int = 0  # bytes thrown away
    samples: dict[str, int] = field(default_factory=lambda: {"eeg": 0, "audio": 0})

    def as_stats(self) -> dict[str, Any]:
        out = asdict(self)
        out["frames_by_type"] = dict(sorted(self.frames_by_type.items()))
        out["versions_seen"] = sorted(self.versions_seen)
        return out


class FrameDecoder:
    """Streaming decoder: ``feed(chunk)`` returns the good frames completed by that chunk; never raises.

    ``counters`` holds what it counted (see ``FrameCounters``), ``info`` the board's last INFO frame and
    ``logs`` its last log lines.
    """

    def __init__(self, max_payload: int = MAX_PAYLOAD, drift_window: int = 4096) -> None:
        self.max_encoded = HEADER_SIZE + max_payload + CRC_SIZE
        self.max_encoded += self.max_encoded // 254 + 1
        self._buf = bytearray()
        self._discarding = False
        self._synced = False
        self._last_seq: int | None = None
        self.clock = BoardClock(drift_window)
        self.rate = ArrivalRate()
        self.started = time.time()
        self.counters = FrameCounters()
        self.info: DeviceInfo | None = None
        self.logs: deque[LogText] = deque(maxlen=32)

    # -- bytes in

    def feed(self, data: bytes | bytearray | memoryview, host_time: float | None = None) -> list[Frame]:
        """Consume a chunk; return the good frames it completed. Never raises on any input."""
        if host_time is None:
            host_time = time.time()
        c = self.counters
        c.bytes += len(data)
        out: list[Frame] = []
        buf = self._buf
        buf += data
        start = 0
        find = buf.find
        while True:
            end = find(0, start)
            if end < 0:
                break
            if self._discarding:  # the tail of an oversize run ends here
                c.discarded_bytes += end - start
                self._discarding = False
            elif end > start:
                self._segment(bytes(buf[start:end]), host_time, out)
            self._synced = True
            start = end + 1
        if start:
            del buf[:start]
        if len(buf) > self.max_encoded:
            if not self._discarding:
                c.oversize += 1
                c.resyncs += 1
                self._discarding = True
            c.discarded_bytes += len(buf)
            buf.clear()
        return out

    def _reject(self, segment_len: int) -> None:
        self.counters.resyncs += 1
        self.counters.discarded_bytes += segment_len + 1

    def _segment(self, seg: bytes, host_time: float, out: list[Frame]) -> None:
        c = self.counters
        first_partial = not self._synced  # the first bytes after opening a port are usually half a frame
        if len(seg) > self.max_encoded:
            c.oversize += 1
            self._reject(len(seg))
            return
        try:
            raw = cobs.decode(seg)
        except cobs.DecodeError:
            c.framing_errors += not first_partial
            self._reject(len(seg))
            return
        if len(raw) < HEADER_SIZE + CRC_SIZE:
            c.framing_errors += not first_partial
            self._reject(len(seg))
            return
        if zlib.crc32(memoryview(raw)[:-CRC_SIZE]) != int.from_bytes(raw[-CRC_SIZE:], "little"):
            c.crc_errors += not first_partial
            self._reject(len(seg))
            return
        magic, version, ftype, sensor, flags, _res, seq, t_us, plen = HEADER.unpack_from(raw)
        if magic != MAGIC or version >> 4 != VERSION_MAJOR:
            c.unsupported_version += 1
            c.versions_seen.add(f"magic 0x{magic:02x} version {version >> 4}.{version & 15}")
            return
        payload = raw[HEADER_SIZE:-CRC_SIZE]
        if plen != len(payload):
            c.malformed += 1
            return
        if not FrameType.known(ftype):
            c.unknown_type += 1
            self._track_sequence(seq, flags)  # still a frame of this board: keeps gap counting exact
            return
        kind = FrameType(ftype)
        try:
            body = parse_body(kind, payload)
        except MalformedPayload:
            c.malformed += 1
            return
        lost_before = c.lost_frames
        if not self._track_sequence(seq, flags):
            return
        board_us = self.clock.unwrap(t_us)
        self.clock.add(host_time, board_us)
        frame = Frame(kind, sensor, flags, seq, board_us, host_time, body, version, c.lost_frames - lost_before)
        c.frames += 1
        c.frames_by_type[kind.label] = c.frames_by_type.get(kind.label, 0) + 1
        if flags & FLAG_OVERFLOW:
            c.board_overflows += 1
        if isinstance(body, EegBlock | AudioBlock):
            c.samples[kind.label] = c.samples.get(kind.label, 0) + body.samples
            self.rate.add(kind.label, body.samples, host_time, float(body.sample_rate))
        elif isinstance(body, DeviceInfo):
            self.info = body
        elif isinstance(body, Heartbeat):
            c.board_dropped = body.board_dropped
        elif isinstance(body, LogText):
            self.logs.append(body)
        out.append(frame)

    def _track_sequence(self, seq: int, flags: int) -> bool:
        """Count gaps and duplicates; False for a duplicate (dropped)."""
        c = self.counters
        if flags & FLAG_FIRST:
            if self._last_seq is not None:
                c.board_resets += 1
            self.clock.reset()
            self.rate.reset()
        elif self._last_seq is not None:
            delta = (seq - self._last_seq) & 0xFFFF
            if delta == 0:
                c.duplicates += 1
                return False
            if delta < 0x8000:
                c.lost_frames += delta - 1
            else:
                c.seq_jumps += 1
        self._last_seq = seq
        return True

    # -- numbers out

    def rate_hz(self, kind: str | None = None) -> float:
        """Samples per host second of the main stream (EEG, else audio), measured from arrival times."""
        return self.rate.hz(kind)

    def drift_ppm(self) -> float | None:
        return self.clock.drift_ppm()

    def stats(self) -> dict[str, Any]:
        drift = self.drift_ppm()
        main = self.rate.main
        return {
            **self.counters.as_stats(),
            "stream": main,
            "rate_hz": round(self.rate_hz(), 3),
            "nominal_rate_hz": self.rate.nominal.get(main) if main else None,
            "drift_ppm": None if drift is None else round(drift, 1),
            "device": None if self.info is None else {
                "name": self.info.name, "channels": self.info.channel_names or self.info.channels,
                "sample_rate": self.info.sample_rate, "format": FORMAT_NAMES.get(self.info.sample_format),
            },
        }
