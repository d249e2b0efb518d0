"""The wire format of a frame (spec: ``firmware_bridge/PROTOCOL.md``): constants, header and payload layouts, frame
types, the parsed bodies and their checks. What the encoder writes and the decoder reads, in one place.

A frame on the wire is ``0x00 COBS(header | payload | crc32) 0x00``. COBS removes every zero byte
from the frame, so 0x00 only ever means "frame boundary": after any corruption the decoder
resynchronises at the next delimiter and loses at most the frame that was hit; the leading
delimiter keeps line noise between frames (a boot message, a glitch) from merging into the next. The CRC-32 (zlib's) catches what
COBS cannot; the 16-bit sequence number reveals frames lost in between; the board's microsecond
timestamp lets the host measure the board clock's drift against its own.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from enum import IntEnum

import numpy as np

MAGIC = 0xEE
VERSION_MAJOR = 1
VERSION_MINOR = 0
VERSION = (VERSION_MAJOR << 4) | VERSION_MINOR



class FrameType(IntEnum):
    """Header byte 2: what the payload is (``PROTOCOL.md``, "Frame types")."""

    INFO = 0x01
    EEG = 0x02
    AUDIO = 0x03
    HEARTBEAT = 0x04
    LOG = 0x05

    @property
    def label(self) -> str:
        """The name in ``stats`` (``frames_by_type``): lower case."""
        return self.name.lower()

    @classmethod
    def known(cls, value: int) -> bool:
        return value in cls._value2member_map_


# sensor kinds (header byte 3: what the board is)
SENSOR_NONE, SENSOR_EEG, SENSOR_AUDIO, SENSOR_IMU, SENSOR_OTHER = 0, 1, 2, 3, 255
SENSOR_NAMES = {SENSOR_NONE: "none", SENSOR_EEG: "eeg", SENSOR_AUDIO: "audio", SENSOR_IMU: "imu", SENSOR_OTHER: "other"}

# header flags
FLAG_FIRST = 0x01  # first frame since the board (re)started: the host resets sequence and clock tracking
FLAG_OVERFLOW = 0x02  # the board dropped samples before this frame (its buffer overflowed)



class SampleFormat(IntEnum):
    """How an EEG block's values are stored (and INFO's format byte)."""

    INT16 = 1
    INT24 = 2
    FLOAT32 = 3


FMT_INT16, FMT_INT24, FMT_FLOAT32 = SampleFormat.INT16, SampleFormat.INT24, SampleFormat.FLOAT32
FORMAT_NAMES: dict[int, str] = {f: f.name.lower() for f in SampleFormat}
FORMAT_SIZES: dict[int, int] = {SampleFormat.INT16: 2, SampleFormat.INT24: 3, SampleFormat.FLOAT32: 4}

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
    type: FrameType
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
        return self.type.label

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


def parse_body(ftype: FrameType | int, payload: bytes) -> Body:
    """Parse a payload of a known type; raise MalformedPayload when its sizes do not add up."""
    n = len(payload)
    if ftype == FrameType.EEG:
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
    if ftype == FrameType.AUDIO:
        if n < AUDIO_HEAD.size or (n - AUDIO_HEAD.size) % 2:
            raise MalformedPayload("audio payload is not a rate and whole PCM16 samples")
        (rate,) = AUDIO_HEAD.unpack_from(payload)
        check_rate(rate, MAX_AUDIO_RATE_HZ, "audio")
        return AudioBlock(rate, payload[AUDIO_HEAD.size:])
    if ftype == FrameType.INFO:
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
    if ftype == FrameType.HEARTBEAT:
        if n != HEARTBEAT_BODY.size:
            raise MalformedPayload("heartbeat payload must be 4 bytes")
        return Heartbeat(HEARTBEAT_BODY.unpack(payload)[0])
    if ftype == FrameType.LOG:
        if n < LOG_HEAD.size:
            raise MalformedPayload("empty log payload")
        return LogText(payload[0], payload[1:].decode("utf-8", "replace"))
    raise MalformedPayload(f"unknown frame type {ftype}")
