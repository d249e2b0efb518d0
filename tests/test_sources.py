"""Camera, replay and microphone sources, and make_source from the device config."""

from __future__ import annotations

import sys
import threading
import time
import wave
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.config import parse_config
from firmware_bridge.simulated_boards import EegBoardSimulator
from firmware_bridge.simulator import open_pty
from firmware_bridge.sources import SourceError, make_source
from firmware_bridge.sources.camera import CameraSource, describe_device
from firmware_bridge.sources.microphone import MicrophoneSource, to_mono_float32
from firmware_bridge.sources.replay import ReplaySource, load_eeg_recording, save_eeg_recording


def write_video(path: Path, n: int = 30, fps: float = 100.0, size: tuple[int, int] = (64, 48)) -> None:
    """Frame i is a flat grey of level 6 * i (MJPG keeps flat frames nearly exact)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    assert writer.isOpened()
    for i in range(n):
        writer.write(np.full((size[1], size[0], 3), 6 * i, np.uint8))
    writer.release()


def level(frame: np.ndarray) -> int:
    return int(round(frame.mean() / 6))


def write_wav(path: Path, pcm: np.ndarray, rate: int, channels: int = 1) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.astype("<i2").tobytes())


def read_all(source, quiet: float = 0.5) -> list:
    out = []
    while (s := source.read(timeout=quiet)) is not None:
        out.append(s)
    return out


def test_device_strings_are_told_apart() -> None:
    assert describe_device(0) == "index" and describe_device("1") == "index"
    assert describe_device("rtsp://10.0.0.2/stream") == "url"
    assert describe_device("videotestsrc ! videoconvert ! appsink") == "gstreamer"
    assert describe_device("/data/clip.mp4") == "file"


def test_camera_on_a_video_file_plays_every_frame_in_order(tmp_path: Path) -> None:
    path = tmp_path / "clip.avi"
    write_video(path)
    with CameraSource("cam", str(path), max_queue=64) as cam:
        frames = read_all(cam)
        stats = cam.stats()
    assert [level(s.data) for s in frames] == list(range(30))
    s = frames[0]
    assert s.kind == "video" and s.data.shape == (48, 64, 3) and s.data.dtype == np.uint8 and s.sample_rate == 100
    assert stats["frames"] == 30 and stats["dropped"] == 0 and stats["opens"] == 1
    assert frames[-1].board_time == pytest.approx(0.29, abs=0.011)


def test_camera_newest_frame_wins_for_a_slow_consumer(tmp_path: Path) -> None:
    path = tmp_path / "clip.avi"
    write_video(path, n=40)
    cam = CameraSource("cam", str(path), max_queue=2).start()
    got = []
    while not (cam.stopped and cam._queue.empty()):
        s = cam.read(timeout=0.5)
        if s is not None:
            got.append(level(s.data))
            time.sleep(0.05)  # a consumer at 20 fps behind a 100 fps camera
    cam.stop()
    assert cam.dropped > 10 and got[-1] == 39 and got == sorted(got)
    assert len(got) + cam.dropped == 40


def test_camera_reopens_until_the_device_appears(tmp_path: Path) -> None:
    path = tmp_path / "late.avi"
    cam = CameraSource("cam", str(path), max_queue=64, min_backoff_s=0.05, max_backoff_s=0.1).start()
    try:
        time.sleep(0.4)
        assert cam.stats()["open_failures"] >= 2 and cam.read(timeout=0.05) is None
        write_video(tmp_path / "tmp.avi", n=10)
        (tmp_path / "tmp.avi").rename(path)
        frames = read_all(cam)
    finally:
        cam.stop()
    assert [level(s.data) for s in frames] == list(range(10))


def test_replay_wav_as_fast_as_possible_is_exact_and_realtime_is_paced(tmp_path: Path) -> None:
    rate = 8000
    stereo = (np.random.default_rng(0).uniform(-0.5, 0.5, size=(rate, 2)) * 32767).astype(np.int16)
    path = tmp_path / "speech.wav"
    write_wav(path, stereo.reshape(-1), rate, channels=2)
    with ReplaySource("mic", path, realtime=False, block_s=0.1) as src:
        blocks = read_all(src)
    assert len(blocks) == 10 and all(b.kind == "audio" and b.sample_rate == rate for b in blocks)
    expected = (stereo.astype(np.float32) / 32768).mean(axis=1)
    np.testing.assert_allclose(np.concatenate([b.data for b in blocks]), expected, atol=1e-6)
    assert [b.board_time for b in blocks] == pytest.approx([i * 0.1 for i in range(10)])
    t0 = time.monotonic()
    with ReplaySource("mic", path, realtime=True, block_s=0.1) as src:
        paced = read_all(src, quiet=0.3)
    assert len(paced) == 10 and time.monotonic() - t0 >= 0.9


def test_replay_loops_with_continuing_time(tmp_path: Path) -> None:
    path = tmp_path / "short.wav"
    write_wav(path, np.arange(800, dtype=np.int16), 8000)
    src = ReplaySource("mic", path, realtime=False, loop=True, block_s=0.05).start()
    blocks = [src.read(timeout=2) for _ in range(6)]
    src.stop()
    assert [round(b.board_time, 3) for b in blocks] == [0.0, 0.05, 0.1, 0.15, 0.2, 0.25]
    assert blocks[2].meta["loop"] == 1


def test_replay_video_and_recorded_eeg(tmp_path: Path) -> None:
    video = tmp_path / "faces.avi"
    write_video(video, n=12)
    with ReplaySource("face", video, realtime=False) as src:
        frames = read_all(src)
    assert [level(f.data) for f in frames] == list(range(12)) and src.kind == "video"

    rng = np.random.default_rng(1)
    data = rng.normal(0, 20, size=(4, 100)).astype(np.float32)
    names = ["Fp1", "Fp2", "O1", "O2"]
    for suffix, tol in ((".npz", 0), (".csv", 1e-4)):
        path = save_eeg_recording(tmp_path / f"rec{suffix}", data, 128, names)
        loaded, rate, channels = load_eeg_recording(path)
        assert rate == 128 and channels == names
        np.testing.assert_allclose(loaded, data, rtol=tol, atol=tol)
        with ReplaySource("eeg", path, realtime=False, eeg_block=16) as src:
            blocks = read_all(src)
        assert len(blocks) == 7 and blocks[0].data.shape == (4, 16) and blocks[-1].data.shape == (4, 4)
        assert blocks[0].channels == names and blocks[1].board_time == pytest.approx(0.125)
        np.testing.assert_allclose(np.concatenate([b.data for b in blocks], axis=1), data, rtol=tol, atol=tol)


def test_replay_errors_say_what_and_where(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("Fp1,Fp2\n1,2\n")
    with pytest.raises(SourceError, match=r"bad.csv:1: expected '# sample_rate=HZ'"):
        ReplaySource("eeg", bad)
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("# sample_rate=128\nFp1,Fp2\n1,2\n3\n")
    with pytest.raises(SourceError, match="ragged.csv: bad data line"):
        load_eeg_recording(ragged)
    with pytest.raises(SourceError, match="cannot replay .txt"):
        ReplaySource("x", tmp_path / "notes.txt")
    with pytest.raises(SourceError, match="file to replay not found"):
        ReplaySource("x", tmp_path / "missing.wav")
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF0000WAVEjunk")
    with pytest.raises(SourceError, match="not a readable WAV"):
        ReplaySource("x", broken)


def test_microphone_block_handling_without_a_sound_card() -> None:
    """No sound card here: the callback body is driven directly; PortAudio capture itself is not tested."""
    stereo16 = np.array([[32767, -32768], [16384, 16384], [0, 0]], dtype=np.int16)
    np.testing.assert_allclose(to_mono_float32(stereo16), [-0.5 / 32768, 0.5, 0.0], atol=1e-6)
    np.testing.assert_array_equal(to_mono_float32(np.array([[2.0], [-0.25]], np.float32)), [1.0, -0.25])
    mic = MicrophoneSource("mic", sample_rate=16000, block_s=0.05, max_queue=2)
    assert mic.block == 800
    block = np.zeros((800, 1), np.float32)
    for i in range(3):
        mic.on_block(block, adc_time=10.0 + i * 0.05, overflow=(i == 1))
    assert mic.emitted == 2 and mic.dropped == 1 and mic.overflows == 1
    s = mic.read(timeout=0.1)
    assert s is not None and s.kind == "audio" and s.data.shape == (800,) and s.board_time == 10.0


def test_microphone_without_sounddevice_fails_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sounddevice", None)  # what a machine without the package sees
    mic = MicrophoneSource("mic")
    with pytest.raises(SourceError, match=r"needs sounddevice: pip install 'emoedge\[audio\]'"):
        mic.start()
    assert not mic.running


CONFIG = """
device_id = "test"
[models.eeg]
[models.face]
[models.speech]
[[sources]]
name = "eeg"
kind = "serial"
model = "eeg"
port = "{pty}"
[[sources]]
name = "cam"
kind = "camera"
model = "face"
device = "{video}"
[[sources]]
name = "mic"
kind = "microphone"
model = "speech"
[[sources]]
name = "replayed"
kind = "replay"
model = "speech"
path = "{wav}"
realtime = false
"""


def test_make_source_builds_every_kind_from_the_config(tmp_path: Path) -> None:
    video, wav = tmp_path / "c.avi", tmp_path / "s.wav"
    write_video(video, n=5)
    write_wav(wav, np.zeros(1600, np.int16), 16000)
    pair = open_pty()
    try:
        cfg = parse_config(CONFIG.format(pty=pair.slave_path, video=video, wav=wav))
        eeg, cam, mic, replay = (make_source(s) for s in cfg.sources)
        assert type(mic).__name__ == "MicrophoneSource" and mic.block == 800  # 50 ms: the default block
        assert len(read_all(cam.start())) == 5
        assert len(read_all(replay.start())) == 1
        with eeg:
            assert eeg.link.wait_connected(5)  # pyserial empties the input buffer on open
            with EegBoardSimulator(pair.master_fd, rate=256, seconds=0.5, realtime=False):
                got = read_all(eeg)
        assert len(got) == 16 and all(s.kind == "eeg" for s in got)
        cam.stop()
        replay.stop()
    finally:
        pair.close()
    assert threading.active_count() < 20


def test_microphone_blocks_divide_the_hop_so_windows_end_where_blocks_end() -> None:
    from firmware_bridge.sources.microphone import aligned_block_s

    for hop in (0.25, 0.3, 0.33, 1.0, 1.5):
        block = aligned_block_s(None, hop)
        assert block <= 0.05 + 1e-12
        assert abs(hop / block - round(hop / block)) < 1e-9, (hop, block)
    assert aligned_block_s(0.1, 0.25) == 0.1  # what the config says is kept
    assert aligned_block_s(None, None) == 0.05
