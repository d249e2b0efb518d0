"""Binary frame codec between sensor boards and the host (spec: ``firmware_bridge/PROTOCOL.md``).

A frame on the wire is ``0x00 COBS(header | payload | crc32) 0x00``. COBS removes every zero byte
from the frame, so 0x00 only ever means "frame boundary": after any corruption the decoder
resynchronises at the next delimiter and loses at most the frame that was hit; the leading
delimiter keeps line noise between frames (a boot message, a glitch) from merging into the next. The CRC-32 (zlib's) catches what
COBS cannot; the 16-bit sequence number reveals frames lost in between; the board's microsecond
timestamp lets the host measure the board clock's drift against its own.

``FrameEncoder`` writes the same bytes as the C reference encoder in ``firmware/`` (held to it by
shared test vectors). ``FrameDecoder`` is a streaming decoder that is fed arbitrary chunks and never
raises: every anomaly is a counter in ``stats()``.
"""

from __future__ import annotations

import re
import struct
import time
import zlib
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from cobs import cobs

MAGIC = 0xEE
VERSION_MAJOR = 1
VERSION_MINOR = 0
VERSION = (VERSION_MAJOR << 4) | VERSION_MINOR

# frame types
INFO, EEG, AUDIO, HEARTBEAT, LOG = 0x01, 0x02, 0x03, 0x04, 0x05
FRAME_TYPE_NAMES = {INFO: "info", EEG: "eeg", AUDIO: "audio", HEARTBEAT: "heartbeat", LOG: "log"}

# sensor kinds (header byte 3: what the board is)
SENSOR_NONE, SENSOR_EEG, SENSOR_AUDIO, SENSOR_IMU, SENSOR_OTHER = 0, 1, 2, 3, 255
SENSOR_NAMES = {SENSOR_NONE: "none", SENSOR_EEG: "eeg", SENSOR_AUDIO: "audio", SENSOR_IMU: "imu", SENSOR_OTHER: "other"}

# header flags
FLAG_FIRST = 0x01  # first frame since the board (re)started: the host resets sequence and clock tracking
FLAG_OVERFLOW = 0x02  # the board dropped samples before this frame (its buffer overflowed)

# sample formats of EEG blocks
FMT_INT16, FMT_INT24, FMT_FLOAT32 = 1, 2, 3
FORMAT_NAMES = {FMT_INT16: "int16", FMT_INT24: "int24", FMT_FLOAT32: "float32"}
FORMAT_SIZES = {FMT_INT16: 2, FMT_INT24: 3, FMT_FLOAT32: 4}

LOG_LEVELS = {0: "debug", 1: "info", 2: "warning", 3: "error"}

HEADER = struct.Struct("<BBBBBBHIH")  # magic, version, type, sensor, flags, reserved, seq, t_us, payload_len
HEADER_SIZE = HEADER.size  # 14
CRC_SIZE = 4
MAX_PAYLOAD = 4096
MAX_FRAME = HEADER_SIZE + MAX_PAYLOAD + CRC_SIZE
MAX_ENCODED = MAX_FRAME + MAX_FRAME // 254 + 1  # COBS overhead, without the delimiter

EEG_HEAD = struct.Struct("<BBHff")  # format, channels, samples, sample_rate, scale (uV per count)
AUDIO_HEAD = struct.Struct("<I")  # sample_rate
INFO_HEAD = struct.Struct("<BBHffB")  # format, channels, reserved, sample_rate, scale, name_len
HEARTBEAT_BODY = struct.Struct("<I")  # board_dropped
LOG_HEAD = struct.Struct("<B")  # level

INT24_MIN, INT24_MAX = -(1 << 23), (1 << 23) - 1

# what a frame may declare (a good CRC proves only that the board sent it, not that it makes sense)
MIN_RATE_HZ = 0.1
MAX_EEG_RATE_HZ = 100_000.0  # research amplifiers stop at 16-32 kHz
MAX_AUDIO_RATE_HZ = 384_000
MAX_ABS_SCALE = 1e6  # microvolts per count; beyond it a 24-bit count overflows float32


def crc32(data: bytes | bytearray | memoryview) -> int:
    """CRC-32/ISO-HDLC (zlib's): the C encoder computes the same."""
    return zlib.crc32(data) & 0xFFFFFFFF


# ---------------------------------------------------------------------------------------------
# payload bodies


@dataclass
class DeviceInfo:
    """What the board is: sent first and then every few seconds so a host that attaches late learns it."""

    sample_format: int
    channels: int
    sample_rate: float
    scale: float
    name: str
    channel_names: list[str]


@dataclass
class EegBlock:
    """``samples`` samples of ``channels`` channels, sample-major on the wire (as an ADC reads them)."""

    sample_format: int
    channels: int
    samples: int
    sample_rate: float
    scale: float
    raw: bytes

    def counts(self) -> np.ndarray:
        """The raw values, (channels, samples): int32 for integer formats, float32 for float32."""
        if self.sample_format == FMT_INT16:
            flat = np.frombuffer(self.raw, dtype="<i2").astype(np.int32)
        elif self.sample_format == FMT_INT24:
            # each 3-byte value into the top of a 4-byte word, then an arithmetic shift sign-extends it
            words = np.zeros((len(self.raw) // 3, 4), dtype=np.uint8)
            words[:, 1:] = np.frombuffer(self.raw, dtype=np.uint8).reshape(-1, 3)
            flat = words.view("<i4")[:, 0] >> 8
        else:
            flat = np.frombuffer(self.raw, dtype="<f4").astype(np.float32)
        return flat.reshape(self.samples, self.channels).T

    def microvolts(self) -> np.ndarray:
        """float32 (channels, samples) in microvolts."""
        return (self.counts().astype(np.float32) * np.float32(self.scale)).astype(np.float32, copy=False)


@dataclass
class AudioBlock:
    """PCM16 mono."""

    sample_rate: int
    raw: bytes

    @property
    def samples(self) -> int:
        return len(self.raw) // 2

    def pcm(self) -> np.ndarray:
        return np.frombuffer(self.raw, dtype="<i2")

    def floats(self) -> np.ndarray:
        """float32 in [-1, 1)."""
        return self.pcm().astype(np.float32) / np.float32(32768.0)


@dataclass
class Heartbeat:
    board_dropped: int  # samples the board could not send since it started (its own overflow counter)


@dataclass
class LogText:
    level: int
    text: str


Body = DeviceInfo | EegBlock | AudioBlock | Heartbeat | LogText


@dataclass
class Frame:
    type: int
    sensor: int
    flags: int
    seq: int
    board_time_us: int  # unwrapped (the wire carries 32 bits, which wrap every 71.6 minutes)
    host_time: float
    body: Body
    version: int = VERSION
    gap: int = 0  # frames lost just before this one (a window spanning it has a hole)

    @property
    def type_name(self) -> str:
        return FRAME_TYPE_NAMES.get(self.type, f"type{self.type}")

    @property
    def board_time(self) -> float:
        return self.board_time_us / 1e6


class MalformedPayload(ValueError):
    """A frame whose CRC is good but whose payload does not match its type (an encoder bug)."""


def check_rate(rate: float, most: float, what: str) -> None:
    """A sample rate is finite and between MIN_RATE_HZ and ``most``; else MalformedPayload."""
    if not (MIN_RATE_HZ <= rate <= most):  # also false for NaN
        raise MalformedPayload(f"{what} sample rate {rate!r} Hz is outside {MIN_RATE_HZ}..{most:g}")


def check_scale(scale: float) -> None:
    if not (0 < abs(scale) <= MAX_ABS_SCALE):  # zero, NaN, infinity or absurd
        raise MalformedPayload(f"eeg scale {scale!r} uV per count is not a finite non-zero value up to {MAX_ABS_SCALE:g}")


def parse_body(ftype: int, payload: bytes) -> Body:
    """Parse a payload of a known type; raise MalformedPayload when its sizes do not add up."""
    n = len(payload)
    if ftype == EEG:
        if n < EEG_HEAD.size:
            raise MalformedPayload("eeg payload shorter than its head")
        fmt, channels, samples, rate, scale = EEG_HEAD.unpack_from(payload)
        size = FORMAT_SIZES.get(fmt)
        if size is None:
            raise MalformedPayload(f"unknown sample format {fmt}")
        if channels == 0 or n != EEG_HEAD.size + channels * samples * size:
            raise MalformedPayload("eeg payload size does not match channels x samples")
        check_rate(rate, MAX_EEG_RATE_HZ, "eeg")
        check_scale(scale)
        block = EegBlock(fmt, channels, samples, rate, scale, payload[EEG_HEAD.size:])
        if fmt == FMT_FLOAT32 and not np.isfinite(np.frombuffer(block.raw, dtype="<f4")).all():
            raise MalformedPayload("eeg float32 samples are not all finite (NaN or infinity)")
        return block
    if ftype == AUDIO:
        if n < AUDIO_HEAD.size or (n - AUDIO_HEAD.size) % 2:
            raise MalformedPayload("audio payload is not a rate and whole PCM16 samples")
        (rate,) = AUDIO_HEAD.unpack_from(payload)
        check_rate(rate, MAX_AUDIO_RATE_HZ, "audio")
        return AudioBlock(rate, payload[AUDIO_HEAD.size:])
    if ftype == INFO:
        if n < INFO_HEAD.size:
            raise MalformedPayload("info payload shorter than its head")
        fmt, channels, _reserved, rate, scale, name_len = INFO_HEAD.unpack_from(payload)
        end = INFO_HEAD.size + name_len
        if end > n:
            raise MalformedPayload("info name runs past the payload")
        name = payload[INFO_HEAD.size:end].decode("utf-8", "replace")
        labels = payload[end:].decode("utf-8", "replace")
        names = labels.split(",") if labels else []
        if names and len(names) != channels:
            raise MalformedPayload(f"info names {len(names)} channels but declares {channels}")
        check_rate(rate, MAX_EEG_RATE_HZ if fmt in FORMAT_SIZES else MAX_AUDIO_RATE_HZ, "info")
        return DeviceInfo(fmt, channels, rate, scale, name, names)
    if ftype == HEARTBEAT:
        if n != HEARTBEAT_BODY.size:
            raise MalformedPayload("heartbeat payload must be 4 bytes")
        return Heartbeat(HEARTBEAT_BODY.unpack(payload)[0])
    if ftype == LOG:
        if n < LOG_HEAD.size:
            raise MalformedPayload("empty log payload")
        return LogText(payload[0], payload[1:].decode("utf-8", "replace"))
    raise MalformedPayload(f"unknown frame type {ftype}")


# ---------------------------------------------------------------------------------------------
# encoder


class FrameEncoder:
    """Builds wire frames exactly as ``firmware/emoedge_frame.c`` does (one sequence counter per board)."""

    def __init__(self, sensor: int = SENSOR_EEG, seq: int = 0) -> None:
        self.sensor = sensor
        self.seq = seq & 0xFFFF
        self.first = True  # the next frame carries FLAG_FIRST (as after emoedge_encoder_init)
        self.overflow = False

    def mark_overflow(self) -> None:
        """Flag the next frame: the board dropped samples before it."""
        self.overflow = True

    def frame(self, ftype: int, payload: bytes, t_us: int, flags: int = 0) -> bytes:
        if len(payload) > MAX_PAYLOAD:
            raise ValueError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
        if self.first:
            flags |= FLAG_FIRST
        if self.overflow:
            flags |= FLAG_OVERFLOW
        self.first = self.overflow = False
        head = HEADER.pack(MAGIC, VERSION, ftype, self.sensor, flags, 0, self.seq, t_us & 0xFFFFFFFF, len(payload))
        self.seq = (self.seq + 1) & 0xFFFF
        body = head + payload
        return b"\x00" + cobs.encode(body + struct.pack("<I", crc32(body))) + b"\x00"

    def info(self, t_us: int, sample_format: int, channels: int, sample_rate: float, scale: float,
             name: str, channel_names: list[str] | None = None) -> bytes:
        name_b = name.encode()[:255]
        labels = ",".join(channel_names or []).encode()
        payload = INFO_HEAD.pack(sample_format, channels, 0, sample_rate, scale, len(name_b)) + name_b + labels
        return self.frame(INFO, payload, t_us)

    def eeg(self, t_us: int, counts: np.ndarray, sample_rate: float, scale: float, sample_format: int = FMT_INT16) -> bytes:
        """``counts``: (channels, samples), integers for int16/int24 (microvolts = counts x scale), floats for float32."""
        counts = np.asarray(counts)
        channels, samples = counts.shape
        interleaved = counts.T
        if sample_format == FMT_INT16:
            raw = interleaved.astype("<i2").tobytes()
        elif sample_format == FMT_INT24:
            v = np.clip(interleaved.astype(np.int64), INT24_MIN, INT24_MAX).astype("<i4").reshape(-1)
            raw = v.view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
        elif sample_format == FMT_FLOAT32:
            raw = interleaved.astype("<f4").tobytes()
        else:
            raise ValueError(f"unknown sample format {sample_format}")
        return self.frame(EEG, EEG_HEAD.pack(sample_format, channels, samples, sample_rate, scale) + raw, t_us)

    def audio(self, t_us: int, pcm: np.ndarray, sample_rate: int) -> bytes:
        return self.frame(AUDIO, AUDIO_HEAD.pack(sample_rate) + np.asarray(pcm).astype("<i2").tobytes(), t_us)

    def heartbeat(self, t_us: int, board_dropped: int = 0) -> bytes:
        return self.frame(HEARTBEAT, HEARTBEAT_BODY.pack(board_dropped & 0xFFFFFFFF), t_us)

    def log(self, t_us: int, text: str, level: int = 1) -> bytes:
        return self.frame(LOG, LOG_HEAD.pack(level) + text.encode()[: MAX_PAYLOAD - 1], t_us)


# ---------------------------------------------------------------------------------------------
# decoder


@dataclass
class _Clock:
    """Unwraps the board's 32-bit microsecond clock and fits its rate against the host clock."""

    window: int = 4096
    last_us: int | None = None
    points: deque[tuple[float, float]] = field(default_factory=deque)

    def unwrap(self, raw: int) -> int:
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


class FrameDecoder:
    """Streaming decoder: ``feed(chunk)`` returns the good frames completed by that chunk; never raises.

    Counters (``stats()``):
      frames          good frames (CRC, version and payload all good)
      crc_errors      frames whose CRC-32 failed
      framing_errors  segments that are not valid COBS or are shorter than a header
      oversize        runs of bytes longer than the largest legal frame without a delimiter
      unsupported_version  frames with a good CRC but a major version this host cannot read
      unknown_type    frames of a type this version does not know (a newer minor version): skipped
      malformed       frames with a good CRC whose payload does not match its type, or declares a sample
                      rate, scale or values that make no sense (zero, NaN, infinite, absurd)
      lost_frames     frames missing from the sequence (gaps, modulo 2^16)
      duplicates      frames repeating the last sequence number (dropped)
      seq_jumps       backward sequence jumps without the FIRST flag (tracking restarts)
      board_resets    FIRST flags after the first frame (the board restarted)
      board_overflows frames flagged OVERFLOW (the board lost samples before sending)
      resyncs         times the decoder threw bytes away and restarted at the next delimiter
      discarded_bytes bytes thrown away
    """

    def __init__(self, max_payload: int = MAX_PAYLOAD, drift_window: int = 4096) -> None:
        self.max_encoded = HEADER_SIZE + max_payload + CRC_SIZE
        self.max_encoded += self.max_encoded // 254 + 1
        self._buf = bytearray()
        self._discarding = False
        self._synced = False
        self._last_seq: int | None = None
        self._clock = _Clock(drift_window)
        self.started = time.time()
        self.bytes = 0
        self.frames = 0
        self.frames_by_type: dict[str, int] = {}
        self.crc_errors = 0
        self.framing_errors = 0
        self.oversize = 0
        self.unsupported_version = 0
        self.versions_seen: set[str] = set()
        self.unknown_type = 0
        self.malformed = 0
        self.lost_frames = 0
        self.duplicates = 0
        self.seq_jumps = 0
        self.board_resets = 0
        self.board_overflows = 0
        self.board_dropped = 0
        self.resyncs = 0
        self.discarded_bytes = 0
        self.samples = {"eeg": 0, "audio": 0}
        self.info: DeviceInfo | None = None
        self.logs: deque[LogText] = deque(maxlen=32)
        self._rate_first: dict[str, float] = {}
        self._rate_last: dict[str, tuple[float, int]] = {}
        self._nominal_rate: dict[str, float] = {}

    # -- bytes in

    def feed(self, data: bytes | bytearray | memoryview, host_time: float | None = None) -> list[Frame]:
        """Consume a chunk; return the good frames it completed. Never raises on any input."""
        if host_time is None:
            host_time = time.time()
        self.bytes += len(data)
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
                self.discarded_bytes += end - start
                self._discarding = False
            elif end > start:
                self._segment(bytes(buf[start:end]), host_time, out)
            self._synced = True
            start = end + 1
        if start:
            del buf[:start]
        if len(buf) > self.max_encoded:
            if not self._discarding:
                self.oversize += 1
                self.resyncs += 1
                self._discarding = True
            self.discarded_bytes += len(buf)
            buf.clear()
        return out

    def _reject(self, segment_len: int) -> None:
        self.resyncs += 1
        self.discarded_bytes += segment_len + 1

    def _segment(self, seg: bytes, host_time: float, out: list[Frame]) -> None:
        first_partial = not self._synced
        if len(seg) > self.max_encoded:
            self.oversize += 1
            self._reject(len(seg))
            return
        try:
            raw = cobs.decode(seg)
        except cobs.DecodeError:
            if not first_partial:
                self.framing_errors += 1
            self._reject(len(seg))
            return
        if len(raw) < HEADER_SIZE + CRC_SIZE:
            if not first_partial:
                self.framing_errors += 1
            self._reject(len(seg))
            return
        if zlib.crc32(memoryview(raw)[:-CRC_SIZE]) != int.from_bytes(raw[-CRC_SIZE:], "little"):
            if not first_partial:  # the first bytes after opening a port are usually half a frame
                self.crc_errors += 1
            self._reject(len(seg))
            return
        magic, version, ftype, sensor, flags, _res, seq, t_us, plen = HEADER.unpack_from(raw)
        if magic != MAGIC or version >> 4 != VERSION_MAJOR:
            self.unsupported_version += 1
            self.versions_seen.add(f"magic 0x{magic:02x} version {version >> 4}.{version & 15}")
            return
        payload = raw[HEADER_SIZE:-CRC_SIZE]
        if plen != len(payload):
            self.malformed += 1
            return
        if ftype not in FRAME_TYPE_NAMES:
            self.unknown_type += 1
            self._track_sequence(seq, flags)  # still a frame of this board: keeps gap counting exact
            return
        try:
            body = parse_body(ftype, payload)
        except MalformedPayload:
            self.malformed += 1
            return
        lost_before = self.lost_frames
        if not self._track_sequence(seq, flags):
            return
        board_us = self._clock.unwrap(t_us)
        self._clock.add(host_time, board_us)
        frame = Frame(ftype, sensor, flags, seq, board_us, host_time, body, version, self.lost_frames - lost_before)
        self.frames += 1
        name = FRAME_TYPE_NAMES[ftype]
        self.frames_by_type[name] = self.frames_by_type.get(name, 0) + 1
        if flags & FLAG_OVERFLOW:
            self.board_overflows += 1
        if isinstance(body, EegBlock | AudioBlock):
            self._count_samples(name, body.samples, host_time, float(body.sample_rate))
        elif isinstance(body, DeviceInfo):
            self.info = body
        elif isinstance(body, Heartbeat):
            self.board_dropped = body.board_dropped
        elif isinstance(body, LogText):
            self.logs.append(body)
        out.append(frame)

    def _track_sequence(self, seq: int, flags: int) -> bool:
        """Count gaps and duplicates; False for a duplicate (dropped)."""
        if flags & FLAG_FIRST:
            if self._last_seq is not None:
                self.board_resets += 1
            self._clock.reset()
            self._rate_first.clear()
            self._rate_last.clear()
        elif self._last_seq is not None:
            delta = (seq - self._last_seq) & 0xFFFF
            if delta == 0:
                self.duplicates += 1
                return False
            if delta < 0x8000:
                self.lost_frames += delta - 1
            else:
                self.seq_jumps += 1
        self._last_seq = seq
        return True

    def _count_samples(self, kind: str, n: int, host_time: float, nominal: float) -> None:
        self.samples[kind] = self.samples.get(kind, 0) + n
        self._nominal_rate[kind] = nominal
        if kind not in self._rate_first:
            self._rate_first[kind] = host_time
            self._rate_last[kind] = (host_time, 0)
        else:
            _, counted = self._rate_last[kind]
            self._rate_last[kind] = (host_time, counted + n)

    # -- numbers out

    def rate_hz(self, kind: str | None = None) -> float:
        """Samples per host second of the main stream (EEG, else audio), measured from arrival times."""
        kinds = [kind] if kind else [k for k in ("eeg", "audio") if k in self._rate_first]
        for k in kinds:
            if k in self._rate_first:
                last, counted = self._rate_last[k]
                span = last - self._rate_first[k]
                return counted / span if span > 0 else 0.0
        return 0.0

    def drift_ppm(self) -> float | None:
        return self._clock.drift_ppm()

    def stats(self) -> dict[str, Any]:
        drift = self.drift_ppm()
        main = next((k for k in ("eeg", "audio") if k in self._rate_first), None)
        return {
            "bytes": self.bytes,
            "frames": self.frames,
            "frames_by_type": dict(sorted(self.frames_by_type.items())),
            "crc_errors": self.crc_errors,
            "framing_errors": self.framing_errors,
            "oversize": self.oversize,
            "unsupported_version": self.unsupported_version,
            "versions_seen": sorted(self.versions_seen),
            "unknown_type": self.unknown_type,
            "malformed": self.malformed,
            "lost_frames": self.lost_frames,
            "duplicates": self.duplicates,
            "seq_jumps": self.seq_jumps,
            "board_resets": self.board_resets,
            "board_overflows": self.board_overflows,
            "board_dropped": self.board_dropped,
            "resyncs": self.resyncs,
            "discarded_bytes": self.discarded_bytes,
            "samples": dict(self.samples),
            "stream": main,
            "rate_hz": round(self.rate_hz(), 3),
            "nominal_rate_hz": self._nominal_rate.get(main) if main else None,
            "drift_ppm": None if drift is None else round(drift, 1),
            "device": None if self.info is None else {
                "name": self.info.name, "channels": self.info.channel_names or self.info.channels,
                "sample_rate": self.info.sample_rate, "format": FORMAT_NAMES.get(self.info.sample_format),
            },
        }


# ---------------------------------------------------------------------------------------------
# plain-text mode


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
        self.bytes = 0
        self.lines = 0
        self.bad_lines = 0
        self.discarded_lines = 0
        self.column_changes = 0
        self.oversize = 0
        self.board_errors = 0
        self.last_error: str | None = None

    def feed(self, data: bytes | bytearray | memoryview, host_time: float | None = None) -> list[np.ndarray]:
        """Consume a chunk; return one float32 row per good line. Never raises on any input."""
        if host_time is None:
            host_time = time.time()
        self.bytes += len(data)
        self._buf += data
        rows: list[np.ndarray] = []
        *complete, rest = self._buf.split(b"\n")
        self._buf = bytearray(rest)
        if len(self._buf) > self.max_line:
            self.oversize += 1
            self._buf.clear()
            self._first = True  # the next newline ends the tail of the runaway line
        for raw in complete:
            if self._first:
                self._first = False
                self.discarded_lines += 1
                continue
            row = self._parse(bytes(raw.strip()))
            if row is not None:
                rows.append(row)
                self.lines += 1
                self._times.append(host_time)
        while self._times and self._times[0] < host_time - self.rate_window_s:
            self._times.popleft()
        return rows

    def _parse(self, line: bytes) -> np.ndarray | None:
        if not line:
            return None
        if line.startswith((b"ERR", b"<ERR")):
            self.board_errors += 1
            self.last_error = line.decode("utf-8", "replace")[:200]
            return None
        try:
            values = np.array([float(tok) for tok in re.split(rb"[,\t ]+", line) if tok], dtype=np.float32)
        except ValueError:
            self.bad_lines += 1
            return None
        if values.size == 0:
            return None
        if not np.isfinite(values).all():  # "nan" and "inf" parse as floats; a window with one is poisoned
            self.bad_lines += 1
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
                self.column_changes += 1
                self._new_columns, self._new_count = None, 0
                return values
            self.bad_lines += 1
            return None
        self._new_columns, self._new_count = None, 0
        return values

    def rate_hz(self) -> float:
        if len(self._times) < 3:
            return 0.0
        span = self._times[-1] - self._times[0]
        return (len(self._times) - 1) / span if span > 0 else 0.0

    def stats(self) -> dict[str, Any]:
        return {
            "bytes": self.bytes, "frames": self.lines, "lines": self.lines, "columns": self.columns,
            "bad_lines": self.bad_lines, "discarded_lines": self.discarded_lines,
            "column_changes": self.column_changes, "oversize": self.oversize,
            "board_errors": self.board_errors, "last_board_error": self.last_error,
            "crc_errors": 0, "lost_frames": 0, "resyncs": self.discarded_lines + self.oversize,
            "rate_hz": round(self.rate_hz(), 3), "drift_ppm": None, "frames_by_type": {"text": self.lines},
        }
