"""Speech features: any audio -> 16 kHz mono -> log-mel spectrogram -> fixed windows for the speech model.

One definition for training and runtime. The log-mel follows librosa's conventions (centred frames
with zero padding, periodic Hann window of ``WIN_LENGTH`` padded to ``N_FFT``, power spectrum,
Slaney-style mel scale and area-normalised filters), and ``tests/test_features_speech.py`` checks it
against librosa itself; librosa is not needed at runtime.
"""

from __future__ import annotations

import os
from math import gcd
from pathlib import Path

import numpy as np

from edge.errors import InputError

SAMPLE_RATE = 16_000
N_FFT = 512  # 32 ms FFT
WIN_LENGTH = 400  # 25 ms analysis window
HOP = 160  # 10 ms hop
N_MELS = 64
FMIN = 50.0
FMAX = 8_000.0
LOG_FLOOR = 1e-6  # added to the mel power before the natural log
WINDOW_S = 3.0  # model input: 3 s of speech
WINDOW_FRAMES = 1 + int(WINDOW_S * SAMPLE_RATE) // HOP  # 301 frames (centred framing of 3 s)
WINDOW_HOP_FRAMES = 100  # clips longer than a window: windows every 1 s, logits averaged

PARAMS = {
    "sample_rate": SAMPLE_RATE, "n_fft": N_FFT, "win_length": WIN_LENGTH, "hop_length": HOP, "n_mels": N_MELS,
    "fmin": FMIN, "fmax": FMAX, "window": "hann", "center": True, "pad_mode": "constant", "power": 2.0,
    "mel_scale": "slaney", "mel_norm": "slaney", "log": "ln(mel + 1e-6)", "window_s": WINDOW_S,
    "window_frames": WINDOW_FRAMES, "window_hop_frames": WINDOW_HOP_FRAMES,
}


def to_mono_16k(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Mix to mono (mean of channels, ``[time]`` or ``[time, channels]``) and resample to 16 kHz (polyphase)."""
    from scipy.signal import resample_poly

    x = np.asarray(audio)
    if x.dtype.kind in "iu":  # integer PCM -> [-1, 1)
        x = x.astype(np.float32) / float(np.iinfo(x.dtype).max + 1)
    x = x.astype(np.float32)
    if x.ndim == 2:
        x = x.mean(axis=1)
    if x.ndim != 1:
        raise InputError(f"audio: expected [time] or [time, channels], got shape {x.shape}")
    if sample_rate <= 0:
        raise InputError(f"audio: sample rate must be positive, got {sample_rate}")
    if not np.all(np.isfinite(x)):
        raise InputError("audio contains NaN or infinity")
    sample_rate = int(sample_rate)
    if sample_rate != SAMPLE_RATE:
        g = gcd(SAMPLE_RATE, sample_rate)
        x = resample_poly(x, SAMPLE_RATE // g, sample_rate // g).astype(np.float32)
    return x


def read_wav(path: str | os.PathLike[str]) -> np.ndarray:
    """A wav file as 16 kHz mono float32. PCM wav (8/16/32-bit) needs only the standard library;
    other formats (float wav, FLAC, ...) use soundfile when it is installed."""
    import wave

    try:
        with wave.open(str(path), "rb") as w:
            rate, channels, width = w.getframerate(), w.getnchannels(), w.getsampwidth()
            raw = w.readframes(w.getnframes())
        dtype = {1: np.uint8, 2: np.int16, 4: np.int32}.get(width)
        if dtype is None:
            raise wave.Error(f"{8 * width}-bit samples")
        audio = np.frombuffer(raw, dtype=dtype).reshape(-1, channels)
        if dtype is np.uint8:
            audio = (audio.astype(np.float32) - 128.0) / 128.0
        return to_mono_16k(audio if channels > 1 else audio[:, 0], rate)
    except (wave.Error, EOFError) as exc:
        reason = str(exc)
    except FileNotFoundError:
        raise InputError(f"{path}: audio file not found") from None
    try:
        import soundfile as sf
    except ImportError:
        raise InputError(f"{path}: not a PCM wav file ({reason}); install soundfile to read other formats") from None
    try:
        audio, rate = sf.read(str(path), dtype="float32", always_2d=False)
    except (RuntimeError, sf.LibsndfileError) as exc:
        raise InputError(f"{path}: not a readable audio file ({exc})") from None
    return to_mono_16k(audio, rate)


def hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz, logarithmic above (librosa's default, htk=False)."""
    f = np.asarray(hz, dtype=np.float64)
    f_sp, min_log_hz, logstep = 200.0 / 3, 1000.0, np.log(6.4) / 27.0
    mel = f / f_sp
    return np.where(f >= min_log_hz, min_log_hz / f_sp + np.log(np.maximum(f, 1e-10) / min_log_hz) / logstep, mel)


def mel_to_hz(mel: np.ndarray) -> np.ndarray:
    m = np.asarray(mel, dtype=np.float64)
    f_sp, min_log_hz, logstep = 200.0 / 3, 1000.0, np.log(6.4) / 27.0
    min_log_mel = min_log_hz / f_sp
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


def mel_filterbank(
    sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT, n_mels: int = N_MELS, fmin: float = FMIN, fmax: float = FMAX
) -> np.ndarray:
    """Triangular mel filters ``[n_mels, n_fft // 2 + 1]``, each normalised to unit area (Slaney)."""
    fft_freqs = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    mel_f = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_f[2 : n_mels + 2] - mel_f[:n_mels]))[:, None]
    return weights


_FILTERS: dict[tuple[int, int, int, float, float], np.ndarray] = {}


def _analysis_window() -> np.ndarray:
    if "window" not in _WINDOWS:
        from scipy.signal import get_window

        window = np.zeros(N_FFT)
        left = (N_FFT - WIN_LENGTH) // 2
        window[left : left + WIN_LENGTH] = get_window("hann", WIN_LENGTH, fftbins=True)
        _WINDOWS["window"] = window
    return _WINDOWS["window"]


_WINDOWS: dict[str, np.ndarray] = {}


def _frames_power(padded: np.ndarray, first: int, last: int) -> np.ndarray:
    """Mel power ``[N_MELS, last - first]`` of frames ``first..last-1`` of centre-padded float64 audio."""
    key = (SAMPLE_RATE, N_FFT, N_MELS, FMIN, FMAX)
    if key not in _FILTERS:
        _FILTERS[key] = mel_filterbank()
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[first * HOP : (last - 1) * HOP + 1 : HOP]
    spectrum = np.abs(np.fft.rfft(frames * _analysis_window(), axis=1)) ** 2  # [frames, bins]
    return (_FILTERS[key] @ spectrum.T).astype(np.float32)


def mel_power(audio16k: np.ndarray) -> np.ndarray:
    """Mel power spectrogram ``[N_MELS, frames]`` of 16 kHz mono audio (librosa.feature.melspectrogram's definition)."""
    y = np.asarray(audio16k, dtype=np.float64)
    if y.ndim != 1:
        raise InputError(f"mel_power: expected mono audio [time], got shape {y.shape}")
    padded = np.pad(y, N_FFT // 2, mode="constant")
    return _frames_power(padded, 0, 1 + (len(padded) - N_FFT) // HOP)


def log_mel(audio16k: np.ndarray) -> np.ndarray:
    """Natural-log mel spectrogram ``[N_MELS, frames]``: ln(mel power + 1e-6)."""
    return np.log(mel_power(audio16k) + LOG_FLOOR).astype(np.float32)


class SlidingLogMel:
    """``log_mel`` of the successive windows of one stream, which overlap by all but ``hop`` samples: only the
    frames that see new samples or the zero padding at either end are computed; the others are the previous
    window's, shifted. The overlap is compared sample for sample, so that anything else (the first window, a
    restart, a gap) is computed whole; the result equals ``log_mel(window)`` up to float rounding. At a 0.25 s
    hop over 3 s that is 29 of 301 frames."""

    def __init__(self, hop: int) -> None:
        self.hop = int(hop)
        self._audio: np.ndarray | None = None
        self._mel: np.ndarray | None = None
        self.reused = 0  # windows that took the short way (for tests and profiling)

    def __call__(self, audio16k: np.ndarray) -> np.ndarray:
        y = np.asarray(audio16k, dtype=np.float32)
        prev, mel, hop = self._audio, self._mel, self.hop
        self._audio = y.copy()
        if (prev is None or mel is None or y.ndim != 1 or prev.shape != y.shape or hop % HOP or not 0 < hop < len(y)
                or not np.array_equal(prev[hop:], y[:-hop])):
            self._mel = log_mel(y)
            return self._mel
        n, shift, edge = mel.shape[1], hop // HOP, -(-(N_FFT // 2) // HOP)  # edge: frames reaching into the left pad
        last_shared = (len(y) - N_FFT // 2) // HOP - shift  # the last frame whose span lies inside the old window
        padded = np.pad(y.astype(np.float64), N_FFT // 2, mode="constant")
        out = np.empty_like(mel)
        out[:, :edge] = np.log(_frames_power(padded, 0, edge) + LOG_FLOOR)
        out[:, edge : last_shared + 1] = mel[:, edge + shift : last_shared + 1 + shift]
        out[:, last_shared + 1 :] = np.log(_frames_power(padded, last_shared + 1, n) + LOG_FLOOR)
        self._mel = out
        self.reused += 1
        return out


SILENCE = float(np.log(LOG_FLOOR))  # the log-mel value of digital silence, used to pad short clips


def windows(logmel: np.ndarray, frames: int = WINDOW_FRAMES, hop: int = WINDOW_HOP_FRAMES) -> np.ndarray:
    """Fixed windows ``[n, N_MELS, frames]`` of a log-mel: a short clip is padded with silence at the end,
    a long one cut into windows every ``hop`` frames (the last window ends at the clip's end)."""
    m = np.asarray(logmel, dtype=np.float32)
    if m.ndim != 2 or m.shape[0] != N_MELS:
        raise InputError(f"log-mel windows: expected [{N_MELS}, frames], got shape {m.shape}")
    t = m.shape[1]
    if t <= frames:
        out = np.full((N_MELS, frames), SILENCE, dtype=np.float32)
        out[:, :t] = m
        return out[None]
    starts = list(range(0, t - frames + 1, hop))
    if starts[-1] != t - frames:
        starts.append(t - frames)
    return np.stack([m[:, s : s + frames] for s in starts])


def standardise(logmel: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Per-mel-bin z-score (``mean``/``std`` of length N_MELS) of ``[..., N_MELS, frames]``."""
    mean = np.asarray(mean, dtype=np.float32)[:, None]
    std = np.maximum(np.asarray(std, dtype=np.float32), 1e-6)[:, None]
    return ((np.asarray(logmel, dtype=np.float32) - mean) / std).astype(np.float32)


LOUDNESS_REFERENCE_PERCENTILE = 90  # the level of a window: this percentile of its frames' mean log-mel


def normalise_loudness(logmel: np.ndarray) -> np.ndarray:
    """Log-mel ``[..., N_MELS, frames]`` shifted so that its loud frames sit at 0: the level (the 90th
    percentile over frames of the log of the frame's mean mel power, ignoring digital silence and padding) is subtracted
    from every frame that is not silence. Gain, microphone sensitivity and distance then no longer
    move the input; the same function runs in training and at run time (card param ``loudness_norm``)."""
    m = np.asarray(logmel, dtype=np.float32)
    top = m.max(axis=-2, keepdims=True)  # a frame's level: its mean mel power, in log units (log-mean-exp)
    frame = (top + np.log(np.exp(m - top).mean(axis=-2, keepdims=True)))[..., 0, :]  # [..., frames]
    sound = frame > SILENCE + 1.0
    masked = np.where(sound, frame, np.nan)
    with np.errstate(all="ignore"):
        level = np.nanpercentile(masked, LOUDNESS_REFERENCE_PERCENTILE, axis=-1) if sound.any() else np.zeros(frame.shape[:-1])
    level = np.nan_to_num(np.asarray(level, dtype=np.float32))
    return np.where(sound[..., None, :], m - level[..., None, None], m).astype(np.float32)


def model_input(windows_: np.ndarray, mean: np.ndarray, std: np.ndarray, loudness_norm: bool = False) -> np.ndarray:
    """Log-mel windows ``[..., N_MELS, frames]`` -> the speech model's input values: loudness-normalised
    where the model was trained so (card param ``loudness_norm``), then z-scored per mel bin."""
    x = normalise_loudness(windows_) if loudness_norm else windows_
    return standardise(x, mean, std)


def bin_statistics(logmels: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std per mel bin over all frames of some clips (a speaker's unlabeled history, or a corpus)."""
    if not logmels:
        raise InputError("speech statistics: no clips given")
    frames = np.concatenate([np.asarray(m, dtype=np.float64) for m in logmels], axis=1)
    return frames.mean(axis=1).astype(np.float32), frames.std(axis=1).astype(np.float32)


def clip_inputs(path_or_audio: str | os.PathLike[str] | np.ndarray, sample_rate: int | None = None) -> np.ndarray:
    """Un-normalised log-mel of one clip, from a file path or (audio, sample_rate)."""
    if isinstance(path_or_audio, (str, os.PathLike, Path)):
        return log_mel(read_wav(path_or_audio))
    if sample_rate is None:
        raise InputError("clip_inputs: audio given as an array needs its sample_rate")
    return log_mel(to_mono_16k(path_or_audio, sample_rate))


def model_windows(
    audio: np.ndarray, sample_rate: int, mean: np.ndarray, std: np.ndarray, loudness_norm: bool = False
) -> np.ndarray:
    """Audio at any rate -> the speech model's input ``[n, 1, N_MELS, WINDOW_FRAMES]``, z-scored with
    ``mean``/``std`` (the card's population statistics, or a speaker's own from ``bin_statistics``).
    Average the model's logits over the n windows for one estimate of the clip."""
    return model_input(windows(log_mel(to_mono_16k(audio, sample_rate))), mean, std, loudness_norm)[:, None]
