"""``FrameEncoder``: writes the same bytes as the C reference encoder in ``firmware/`` (held to it by shared test
vectors); the simulator and the tests speak through it."""

from __future__ import annotations

import struct

import numpy as np
from cobs import cobs

from firmware_bridge.protocol.wire import (
    AUDIO_HEAD,
    EEG_HEAD,
    FLAG_FIRST,
    FLAG_OVERFLOW,
    FMT_FLOAT32,
    FMT_INT16,
    FMT_INT24,
    HEADER,
    HEARTBEAT_BODY,
    INFO_HEAD,
    INT24_MAX,
    INT24_MIN,
    LOG_HEAD,
    MAGIC,
    MAX_PAYLOAD,
    SENSOR_EEG,
    VERSION,
    FrameType,
    crc32,
)


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

    def frame(self, ftype: FrameType | int, payload: bytes, t_us: int, flags: int = 0) -> bytes:
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
        return self.frame(FrameType.INFO, payload, t_us)

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
        return self.frame(FrameType.EEG, EEG_HEAD.pack(sample_format, channels, samples, sample_rate, scale) + raw, t_us)

    def audio(self, t_us: int, pcm: np.ndarray, sample_rate: int) -> bytes:
        return self.frame(FrameType.AUDIO, AUDIO_HEAD.pack(sample_rate) + np.asarray(pcm).astype("<i2").tobytes(), t_us)

    def heartbeat(self, t_us: int, board_dropped: int = 0) -> bytes:
        return self.frame(FrameType.HEARTBEAT, HEARTBEAT_BODY.pack(board_dropped & 0xFFFFFFFF), t_us)

    def log(self, t_us: int, text: str, level: int = 1) -> bytes:
        return self.frame(FrameType.LOG, LOG_HEAD.pack(level) + text.encode()[: MAX_PAYLOAD - 1], t_us)
