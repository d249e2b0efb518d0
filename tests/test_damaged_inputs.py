"""Issue 17, finding 8: a video damaged in the middle, an empty WAV, and an outbox that has to evict.

Real files (an MJPEG AVI written by OpenCV, then overwritten with noise in the middle), the real
replay source, and the real publisher with its SQLite outbox against a broker that is not there.
"""

from __future__ import annotations

import logging
import wave
from pathlib import Path

import numpy as np
import pytest

from edge.config import DeviceConfig
from edge.verbs.run import serve
from firmware_bridge.sources.base import SourceError
from firmware_bridge.sources.replay import ReplaySource
from tests.mqtt_broker import free_port
from tests.pipeline_helpers import RAVDESS, ListSource, make_model


def damaged_video(path: Path, frames: int = 60) -> Path:
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for i in range(frames):
        frame = np.full((48, 64, 3), (i * 4) % 255, np.uint8)
        frame[10:20, i % 60: i % 60 + 4] = 255
        writer.write(frame)
    writer.release()
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle: middle + 3000] = np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    return path


def test_a_video_damaged_in_the_middle_skips_its_bad_frames(tmp_path: Path) -> None:
    source = ReplaySource("cam", damaged_video(tmp_path / "clip.avi"), realtime=False).start()
    frames = []
    while True:
        sample = source.read(timeout=2.0)
        if sample is None:
            break
        frames.append(sample)
    source.stop()
    assert source.error is None
    assert source.bad_frames >= 1 and source.stats()["bad_frames"] == source.bad_frames
    assert len(frames) >= 55, len(frames)  # it used to end at the first bad frame (frame 51)
    times = [f.board_time for f in frames]
    assert times == sorted(times) and times[-1] == pytest.approx(5.9)  # the last frame's place in the file


def test_an_empty_wav_says_why(tmp_path: Path) -> None:
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(SourceError, match=r"empty.wav: not a readable WAV: the file is empty"):
        ReplaySource("mic", empty)
    short = tmp_path / "short.wav"
    short.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt ")
    with pytest.raises(SourceError, match=r"short.wav: not a readable WAV: \S"):
        ReplaySource("mic", short)
    silent = tmp_path / "silent.wav"
    with wave.open(str(silent), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
    with pytest.raises(SourceError, match="holds no audio"):
        ReplaySource("mic", silent)


def test_evictions_are_logged_once_per_interval_and_reported_at_exit(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> None:
    models = tmp_path / "models"
    make_model(models, "speech", 1600, RAVDESS, "speech", window_s=0.1)
    cfg = DeviceConfig.model_validate({
        "device_id": "evictdev",
        "mqtt": {"url": f"mqtt://127.0.0.1:{free_port()}", "outbox": {"path": str(tmp_path / "o.sqlite"), "max_messages": 10}},
        "models": {"speech": {"path": str(models / "speech")}}, "backend": {"threads": 1},
        "sources": [{"name": "mic", "kind": "replay", "path": "x", "model": "speech", "hop_s": 0.1}],
    })
    rng = np.random.default_rng(0)
    mic = ListSource("mic", "audio", [rng.uniform(-1, 1, 1600).astype(np.float32) for _ in range(40)], 16000.0, interval=0.02)
    with caplog.at_level(logging.WARNING):
        assert serve(cfg, duration=2.0, plain=True, extra_sources={"mic": mic}) == 0
    lines = [r.getMessage() for r in caplog.records if "evicted" in r.getMessage()]
    assert 1 <= len(lines) <= 2, lines  # once in the interval, once at exit: never one a message
    assert "outbox full (10 messages)" in lines[0]
    out = capsys.readouterr().out
    assert "oldest message(s) evicted from the full outbox" in out
    evicted = int(out.split("oldest message(s) evicted")[0].rsplit("; ", 1)[-1])
    assert evicted >= 25  # 40 estimates into room for 10
