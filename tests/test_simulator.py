"""The simulated boards: EEG band powers follow the valence/arousal script; audio streams a WAV;
``emoedge simulate`` and ``emoedge listen`` work together through a pseudo-terminal."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import wave
from pathlib import Path

import numpy as np
import pytest

from firmware_bridge import protocol as P
from firmware_bridge.simulated_boards import (
    DEAP_CHANNELS,
    LEFT_FRONTAL,
    RIGHT_FRONTAL,
    AudioBoardSimulator,
    EegBoardSimulator,
    script_state,
)
from firmware_bridge.simulator import open_pty
from firmware_bridge.sources.serial import SerialBoardSource

ROOT = Path(__file__).resolve().parent.parent


def band_power(x: np.ndarray, rate: float, lo: float, hi: float) -> np.ndarray:
    """Mean periodogram power in [lo, hi) Hz per channel."""
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.shape[-1]), axis=-1)) ** 2
    freqs = np.fft.rfftfreq(x.shape[-1], 1 / rate)
    return spectrum[..., (freqs >= lo) & (freqs < hi)].mean(axis=-1)


def segment(state: tuple[float, float], seconds: float = 8.0, rate: float = 128.0) -> np.ndarray:
    sim = EegBoardSimulator(-1, rate=rate, script=[(1e9, *state)], seed=11)
    sim.microvolts(0.0, int(5 * rate))  # let the 1 s smoothing settle
    return sim.microvolts(5.0, int(seconds * rate))


def test_arousal_raises_beta_and_gamma_and_lowers_alpha() -> None:
    calm, excited = segment((0.0, -0.8)), segment((0.0, 0.8))
    for lo, hi, direction in ((8, 12, -1), (13, 30, +1), (30, 45, +1)):
        ratio = band_power(excited, 128, lo, hi).mean() / band_power(calm, 128, lo, hi).mean()
        assert (ratio > 1.5) if direction > 0 else (ratio < 0.67), (lo, hi, ratio)
    amplitude = np.abs(excited).max()
    assert 5 < amplitude < 200  # microvolts, as scalp EEG


def test_valence_shifts_frontal_alpha_asymmetry() -> None:
    left = [DEAP_CHANNELS.index(c) for c in sorted(LEFT_FRONTAL)]
    right = [DEAP_CHANNELS.index(c) for c in sorted(RIGHT_FRONTAL)]

    def asymmetry(x: np.ndarray) -> float:  # ln(right alpha) - ln(left alpha): higher = more left activity
        alpha = band_power(x, 128, 8, 12)
        return float(np.log(alpha[right].mean()) - np.log(alpha[left].mean()))

    assert asymmetry(segment((0.8, 0.0))) - asymmetry(segment((-0.8, 0.0))) > 0.5


def test_script_segments_loop() -> None:
    script = [(2.0, 0.5, -0.5), (3.0, -1.0, 1.0)]
    assert script_state(script, 0.0) == (0.5, -0.5)
    assert script_state(script, 2.5) == (-1.0, 1.0)
    assert script_state(script, 5.5) == (0.5, -0.5)


def test_audio_board_streams_the_wav_exactly(tmp_path: Path) -> None:
    rate = 16000
    pcm = (np.sin(np.arange(rate) * 2 * np.pi * 440 / rate) * 12000).astype("<i2")
    wav_path = tmp_path / "tone.wav"
    with wave.open(str(wav_path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    pair = open_pty()
    try:
        with SerialBoardSource("mic-board", port=pair.slave_path) as source:
            assert source.link.wait_connected(5)
            with AudioBoardSimulator(pair.master_fd, wav=wav_path, block=400, loop=False, realtime=False) as sim:
                blocks = [source.read(timeout=5) for _ in range(rate // 400)]
                assert sim.wait(5)
            stats = source.stats()
    finally:
        pair.close()
    assert all(b is not None and b.kind == "audio" and b.sample_rate == rate for b in blocks)
    audio = np.concatenate([b.data for b in blocks])  # type: ignore[union-attr]
    np.testing.assert_array_equal(audio, pcm.astype(np.float32) / 32768)
    assert stats["lost_frames"] == 0 and stats["frames_by_type"]["audio"] == rate // 400


def test_audio_board_refuses_non_pcm16(tmp_path: Path) -> None:
    path = tmp_path / "u8.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(1)
        w.setframerate(8000)
        w.writeframes(b"\x80" * 800)
    with pytest.raises(ValueError, match="8-bit WAV"):
        AudioBoardSimulator(-1, wav=path)


def test_board_drops_and_flags_blocks_when_nobody_reads() -> None:
    """A realtime board on a pty whose reader never reads: the buffer fills, blocks are dropped and flagged."""
    pair = open_pty()
    try:
        sim = EegBoardSimulator(pair.master_fd, rate=4096, block=32, write_timeout_s=0.01, seconds=2.0)
        with sim:
            assert sim.wait(10)
        assert sim.board_dropped > 0 and sim.blocks_sent > 0 and sim.error is None
        assert sim.board_dropped + sim.blocks_sent * 32 == 2 * 4096
    finally:
        pair.close()
    with pytest.raises(ValueError, match="use a smaller block"):
        EegBoardSimulator(-1, block=64)


def test_simulate_and_listen_commands_through_a_pty() -> None:
    sim = subprocess.Popen([sys.executable, "-m", "edge", "simulate", "eeg", "--pty", "--seconds", "5", "--rate", "256",
                            "--channels", "8"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        port = sim.stdout.readline().strip()  # type: ignore[union-attr]
        assert port.startswith("/dev/pts/"), port
        result = subprocess.run([sys.executable, "-m", "edge", "listen", port, "--seconds", "2", "--json"], cwd=ROOT,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        stats = json.loads(result.stdout)
    finally:
        sim.terminate()
        sim.wait(10)
    for key in ("frames", "crc_errors", "lost_frames", "resyncs"):
        assert isinstance(stats[key], int)
    assert stats["frames_by_type"]["eeg"] >= 40 and stats["crc_errors"] == 0 and stats["lost_frames"] == 0
    assert stats["rate_hz"] == pytest.approx(256, rel=0.1) and stats["nominal_rate_hz"] == 256
    assert stats["device"]["channels"] == DEAP_CHANNELS[:8]
    assert "drift_ppm" in stats


def test_simulate_rejects_a_bad_script() -> None:
    result = subprocess.run([sys.executable, "-m", "edge", "simulate", "eeg", "--pty", "--script", "10:2:0"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "valence, arousal in [-1, 1]" in result.stderr


def test_listen_text_mode_and_missing_port() -> None:
    result = subprocess.run([sys.executable, "-m", "edge", "listen", "/dev/no-such-board", "--seconds", "1"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "cannot open /dev/no-such-board" in result.stderr
    pair = open_pty()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "edge", "listen", pair.slave_path, "--text", "--seconds", "2.5",
                                 "--json"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(1.0)  # the interpreter starts and opens the port
        t0 = time.monotonic()
        for i in range(100):
            import os

            os.write(pair.master_fd, f"{i},{i * 2}\n".encode())
            time.sleep(max(0.0, t0 + (i + 1) / 100 - time.monotonic()))
        out, err = proc.communicate(timeout=30)
    finally:
        pair.close()
    stats = json.loads(out)
    assert stats["mode"] == "text" and stats["columns"] == 2 and stats["frames"] >= 90, err
    assert stats["rate_hz"] == pytest.approx(100, rel=0.2)
    assert P.FrameDecoder().stats().keys() >= {"frames", "crc_errors", "lost_frames", "resyncs", "rate_hz"}


def test_ports_command_lists_json() -> None:
    result = subprocess.run([sys.executable, "-m", "edge", "ports", "--json"], cwd=ROOT, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    ports = json.loads(result.stdout)
    assert isinstance(ports, list)
    for p in ports:  # whatever this machine has (no USB boards in CI): the fields are there
        assert {"device", "usb", "vid", "pid", "serial_number", "description"} <= set(p)
