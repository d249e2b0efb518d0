"""The link protocol between sensor boards and the host (spec: ``firmware_bridge/PROTOCOL.md``).

One job a module:

* ``wire``: the format: constants, ``FrameType``, ``SampleFormat``, header and payload layouts, parsed bodies, checks;
* ``encoder``: ``FrameEncoder``, byte for byte the C reference encoder in ``firmware/`` (shared test vectors);
* ``decoder``: ``FrameDecoder`` (streaming, never raises) and its ``FrameCounters``;
* ``clock``: ``BoardClock``, the board's 32-bit clock unwrapped and its drift against the host's;
* ``rate``: ``ArrivalRate``, samples per host second as they arrive;
* ``text``: ``TextLineDecoder`` for sketches that print lines of numbers, with its ``TextCounters``.

This package re-exports the names callers use (``from firmware_bridge import protocol as P``; ``P.FrameDecoder``).
"""

from firmware_bridge.protocol.clock import BoardClock
from firmware_bridge.protocol.decoder import FrameCounters, FrameDecoder
from firmware_bridge.protocol.encoder import FrameEncoder
from firmware_bridge.protocol.rate import ArrivalRate
from firmware_bridge.protocol.text import TextCounters, TextLineDecoder
from firmware_bridge.protocol.wire import (
    AUDIO_HEAD,
    CRC_SIZE,
    EEG_HEAD,
    FLAG_FIRST,
    FLAG_OVERFLOW,
    FMT_FLOAT32,
    FMT_INT16,
    FMT_INT24,
    FORMAT_NAMES,
    FORMAT_SIZES,
    HEADER,
    HEADER_SIZE,
    HEARTBEAT_BODY,
    INFO_HEAD,
    INT24_MAX,
    INT24_MIN,
    LOG_HEAD,
    LOG_LEVELS,
    MAGIC,
    MAX_ENCODED,
    MAX_FRAME,
    MAX_PAYLOAD,
    SENSOR_AUDIO,
    SENSOR_EEG,
    SENSOR_IMU,
    SENSOR_NAMES,
    SENSOR_NONE,
    SENSOR_OTHER,
    VERSION,
    VERSION_MAJOR,
    VERSION_MINOR,
    AudioBlock,
    Body,
    DeviceInfo,
    EegBlock,
    Frame,
    FrameType,
    Heartbeat,
    LogText,
    MalformedPayload,
    SampleFormat,
    crc32,
    parse_body,
)

__all__ = [
    "AUDIO_HEAD", "CRC_SIZE", "EEG_HEAD", "FLAG_FIRST", "FLAG_OVERFLOW", "FMT_FLOAT32", "FMT_INT16", "FMT_INT24",
    "FORMAT_NAMES", "FORMAT_SIZES", "HEADER", "HEADER_SIZE", "HEARTBEAT_BODY", "INFO_HEAD", "INT24_MAX", "INT24_MIN",
    "LOG_HEAD", "LOG_LEVELS", "MAGIC", "MAX_ENCODED", "MAX_FRAME", "MAX_PAYLOAD", "SENSOR_AUDIO", "SENSOR_EEG",
    "SENSOR_IMU", "SENSOR_NAMES", "SENSOR_NONE", "SENSOR_OTHER", "VERSION", "VERSION_MAJOR", "VERSION_MINOR",
    "ArrivalRate", "AudioBlock", "Body", "BoardClock", "DeviceInfo", "EegBlock", "Frame", "FrameCounters",
    "FrameDecoder", "FrameEncoder", "FrameType", "Heartbeat", "LogText", "MalformedPayload", "SampleFormat",
    "TextCounters", "TextLineDecoder", "crc32", "parse_body",
]
