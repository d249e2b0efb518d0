"""Speech features: the log-mel is checked against librosa, resampling keeps the pitch, windows pad and cut."""

from __future__ import annotations

import numpy as np
import pytest

from edge.errors import InputError
from edge.features import speech as F


def chirp(seconds: float = 2.0, rate: int = 16_000, seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    rng = np.random.default_rng(seed)
    return (0.3 * np.sin(2 * np.pi * (200 + 900 * t) * t) + 0.05 * rng.standard_normal(len(t))).astype(np.float32)


def test_log_mel_matches_librosa() -> None:
    librosa = pytest.importorskip("librosa", reason="librosa (the dev extra) is the reference for the log-mel")
    y = chirp()
    ours = F.mel_power(y)
    ref = librosa.feature.melspectrogram(
        y=y.astype(np.float64), sr=F.SAMPLE_RATE, n_fft=F.N_FFT, hop_length=F.HOP, win_length=F.WIN_LENGTH,
        window="hann", center=True, pad_mode="constant", power=2.0, n_mels=F.N_MELS, fmin=F.FMIN, fmax=F.FMAX,
    )
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-7 * ref.max())
    np.testing.assert_allclose(F.log_mel(y), np.log(ref + F.LOG_FLOOR), atol=1e-3)
    np.testing.assert_allclose(
        F.mel_filterbank(), librosa.filters.mel(sr=F.SAMPLE_RATE, n_fft=F.N_FFT, n_mels=F.N_MELS, fmin=F.FMIN, fmax=F.FMAX),
        rtol=1e-5, atol=1e-9,
    )


def test_resample_keeps_frequency_and_mixes_to_mono() -> None:
    rate = 44_100
    t = np.arange(rate) / rate
    stereo = np.stack([np.sin(2 * np.pi * 1000 * t), np.sin(2 * np.pi * 1000 * t)], axis=1)
    y = F.to_mono_16k((stereo * 16000).astype(np.int16), rate)
    assert y.dtype == np.float32 and len(y) == 16_000
    spectrum = np.abs(np.fft.rfft(y))
    assert np.argmax(spectrum) == pytest.approx(1000, abs=1)  # 1 Hz bins over 1 s
    assert np.abs(y).max() == pytest.approx(16000 / 32768, rel=0.02)
    with pytest.raises(InputError, match="NaN"):
        F.to_mono_16k(np.array([0.0, np.nan]), 16_000)


def test_windows_pad_short_clips_and_cut_long_ones() -> None:
    short = np.zeros((F.N_MELS, 120), dtype=np.float32)
    w = F.windows(short)
    assert w.shape == (1, F.N_MELS, F.WINDOW_FRAMES)
    assert np.all(w[0, :, :120] == 0) and np.all(w[0, :, 120:] == F.SILENCE)
    long = np.arange(F.N_MELS * 450, dtype=np.float32).reshape(F.N_MELS, 450)
    w = F.windows(long)
    assert w.shape == (3, F.N_MELS, F.WINDOW_FRAMES)  # starts 0, 100, and 149 (ends at the clip's end)
    np.testing.assert_array_equal(w[-1], long[:, -F.WINDOW_FRAMES :])
    with pytest.raises(InputError, match="expected"):
        F.windows(np.zeros((10, 20)))


def test_three_seconds_make_one_window() -> None:
    m = F.log_mel(chirp(seconds=F.WINDOW_S))
    assert m.shape == (F.N_MELS, F.WINDOW_FRAMES)


def test_speaker_statistics() -> None:
    a, b = F.log_mel(chirp(seed=1)), F.log_mel(chirp(seed=2))
    mean, std = F.bin_statistics([a, b])
    z = F.standardise(np.concatenate([a, b], axis=1), mean, std)
    np.testing.assert_allclose(z.mean(axis=1), 0, atol=1e-4)
    np.testing.assert_allclose(z.std(axis=1), 1, atol=1e-3)


def test_model_windows_from_any_rate() -> None:
    y = chirp(seconds=4.5)
    from scipy.signal import resample_poly

    y48 = resample_poly(y, 3, 1).astype(np.float32)
    mean, std = np.zeros(F.N_MELS), np.ones(F.N_MELS)
    a, b = F.model_windows(y, 16_000, mean, std), F.model_windows(y48, 48_000, mean, std)
    assert a.shape == b.shape == (3, 1, F.N_MELS, F.WINDOW_FRAMES)
    assert np.abs(a - b).mean() < 0.1  # the same speech at 48 kHz gives nearly the same input


def test_read_wav_pcm_without_soundfile_matches_soundfile(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import wave

    sf = pytest.importorskip("soundfile")
    y = chirp(seconds=1.0, rate=22_050)
    pcm = (np.stack([y, -y], axis=1) * 32767).astype(np.int16)
    with wave.open(str(tmp_path / "a.wav"), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(22_050)
        w.writeframes(pcm.tobytes())
    ours = F.read_wav(tmp_path / "a.wav")
    ref, rate = sf.read(str(tmp_path / "a.wav"), dtype="float32")
    np.testing.assert_allclose(ours, F.to_mono_16k(ref, rate), atol=1e-6)
    sf.write(str(tmp_path / "f.wav"), y, 22_050, subtype="FLOAT")  # float wav: the soundfile path
    assert F.read_wav(tmp_path / "f.wav").shape == (16_000,)
    with pytest.raises(InputError, match="not found"):
        F.read_wav(tmp_path / "missing.wav")


def test_sliding_log_mel_equals_the_whole_computation_and_reuses_the_overlap() -> None:
    rng = np.random.default_rng(3)
    stream = (rng.standard_normal(16000 * 6) * 0.1).astype(np.float32)
    hop, size = 4000, 48000
    sliding = F.SlidingLogMel(hop)
    starts = list(range(0, len(stream) - size + 1, hop))
    for start in starts:
        window = stream[start : start + size]
        np.testing.assert_allclose(sliding(window), F.log_mel(window), rtol=0, atol=1e-6)
    assert sliding.reused == len(starts) - 1
    # a gap (not the next window) or another length is computed whole, and still right
    other = stream[1000 : 1000 + size]
    np.testing.assert_allclose(sliding(other), F.log_mel(other), rtol=0, atol=1e-6)
    short = stream[:16000]
    np.testing.assert_allclose(sliding(short), F.log_mel(short), rtol=0, atol=1e-6)
    assert sliding.reused == len(starts) - 1
