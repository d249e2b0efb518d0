"""The simulated boards: EEG whose band powers follow a valence/arousal script (``EegBoardSimulator``), an Emotiv
EPOC-like headset (``EmotivBoardSimulator``) and a microphone board (``AudioBoardSimulator``), each a
``firmware_bridge.simulator.BoardSimulator``.

Arousal raises beta and gamma and lowers alpha; valence shifts frontal alpha asymmetry (positive valence: less
alpha over the left frontal electrodes, i.e. more left-frontal activity).
"""

from __future__ import annotations

import math
import os
import wave
from pathlib import Path
from typing import Any

import numpy as np

from firmware_bridge import protocol as P
from firmware_bridge.simulator import BoardSimulator

DEAP_CHANNELS = [
    "Fp1", "AF3", "F3", "F7", "FC5", "FC1", "C3", "T7", "CP5", "CP1", "P3", "P7", "PO3", "O1", "Oz", "Pz",
    "Fp2", "AF4", "Fz", "F4", "F8", "FC6", "FC2", "Cz", "C4", "T8", "CP6", "CP2", "P4", "P8", "PO4", "O2",
]
#: Emotiv EPOC / EPOC+ electrode names in the headset's order (DREAMER's and DASPS's order too)
EMOTIV_CHANNELS = ["AF3", "F7", "F3", "FC5", "T7", "P7", "O1", "O2", "P8", "T8", "FC6", "F4", "F8", "AF4"]
EMOTIV_LSB_UV = 0.51  # EPOC: 14-bit samples, 0.51 uV per count
EMOTIV_OFFSET_UV = 4200.0  # the EPOC's raw samples sit near 4,200 uV (its DC level), not at zero
LEFT_FRONTAL = {"Fp1", "AF3", "F3", "F7", "FC5", "FC1"}
RIGHT_FRONTAL = {"Fp2", "AF4", "F4", "F8", "FC6", "FC2"}

# (low Hz, high Hz, amplitude uV at neutral)
BANDS = {
    "theta": (4.0, 8.0, 6.0),
    "slow_alpha": (8.0, 10.0, 6.0),
    "alpha": (8.0, 12.0, 10.0),
    "beta": (12.0, 30.0, 4.0),
    "gamma": (30.0, 45.0, 1.5),
}
ADS1299_SCALE_UV = 4.5e6 / 24 / (1 << 23)  # uV per count at gain 24: 0.02235...
DEFAULT_SCRIPT = [(10.0, 0.0, 0.0), (10.0, 0.7, 0.7), (10.0, -0.7, 0.7), (10.0, -0.6, -0.6), (10.0, 0.6, -0.6)]


def band_gains(valence: float, arousal: float) -> dict[str, float]:
    """Gain of each band (1 = neutral) for a valence/arousal state in [-1, 1]."""
    a = float(np.clip(arousal, -1, 1))
    return {
        "theta": 1.0 - 0.1 * a,
        "slow_alpha": 1.0 - 0.45 * a,
        "alpha": 1.0 - 0.45 * a,
        "beta": 1.0 + 0.6 * a,
        "gamma": 1.0 + 0.8 * a,
    }


def script_state(script: list[tuple[float, float, float]], t: float) -> tuple[float, float]:
    """(valence, arousal) at time t of a script of (seconds, valence, arousal) segments, looped."""
    total = sum(max(0.0, s) for s, _, _ in script)
    if not script or total <= 0:
        return 0.0, 0.0
    t = t % total
    for seconds, valence, arousal in script:
        if t < seconds:
            return valence, arousal
        t -= seconds
    return script[-1][1], script[-1][2]


class EegBoardSimulator(BoardSimulator):
    """EEG as sums of band-limited oscillations plus noise, band powers following a valence/arousal script.

    script: [(seconds, valence, arousal), ...] segments in [-1, 1], looped. Each channel has three
    oscillators per band at fixed random frequencies within the band and random phases; their
    amplitudes follow ``band_gains`` of the script's state, smoothed with a 1 s time constant.
    """

    sensor = P.SENSOR_EEG

    def __init__(self, port: str | int, rate: float = 128.0, channels: list[str] | None = None,
                 script: list[tuple[float, float, float]] | None = None, block: int = 8,
                 sample_format: int = P.FMT_INT24, scale_uv: float = ADS1299_SCALE_UV, noise_uv: float = 2.0,
                 seed: int = 0, name: str = "emoedge-sim-eeg", **kwargs: Any) -> None:
        super().__init__(port, rate=rate, block=block, **kwargs)
        self.channels = list(channels or DEAP_CHANNELS)
        self.script = list(script or DEFAULT_SCRIPT)
        self.sample_format = sample_format
        self.scale_uv = scale_uv if sample_format != P.FMT_FLOAT32 else 1.0
        self.noise_uv = noise_uv
        self.name = name
        payload = P.EEG_HEAD.size + len(self.channels) * block * P.FORMAT_SIZES[sample_format]
        if payload > P.MAX_PAYLOAD:
            raise ValueError(f"{len(self.channels)} channels x {block} samples make a {payload}-byte frame; "
                             f"the protocol allows {P.MAX_PAYLOAD}: use a smaller block")
        rng = np.random.default_rng(seed)
        self._rng = rng
        n = len(self.channels)
        self._bands = list(BANDS)
        nyquist = self.rate / 2
        self._freqs = {}
        self._phases = {}
        for b in self._bands:
            lo, hi, _ = BANDS[b]
            self._freqs[b] = rng.uniform(lo, min(hi, nyquist * 0.95), size=(n, 3))
            self._phases[b] = rng.uniform(0, 2 * np.pi, size=(n, 3))
        side = np.zeros(n)
        for i, ch in enumerate(self.channels):
            side[i] = -1.0 if ch in LEFT_FRONTAL else (1.0 if ch in RIGHT_FRONTAL else 0.0)
        self._side = side
        self._gain = {b: 1.0 for b in self._bands}
        self._valence = 0.0

    def state_at(self, t: float) -> tuple[float, float]:
        """The script's (valence, arousal) at time t: the ground truth of the signal."""
        return script_state(self.script, t)

    def microvolts(self, t: float, n: int) -> np.ndarray:
        """(channels, n) float64 microvolts of the n samples starting at time t (advances the smoothing)."""
        valence, arousal = self.state_at(t)
        target = band_gains(valence, arousal)
        k = 1.0 - math.exp(-(n / self.rate) / 1.0)
        for b in self._bands:
            self._gain[b] += k * (target[b] - self._gain[b])
        self._valence += k * (valence - self._valence)
        ts = t + np.arange(n) / self.rate
        out = self.noise_uv * self._rng.standard_normal((len(self.channels), n))
        for b in self._bands:
            amp = BANDS[b][2] * self._gain[b]
            per_channel = np.full(len(self.channels), amp)
            if b in ("alpha", "slow_alpha"):  # positive valence: left frontal alpha down, right up
                per_channel = per_channel * (1.0 + 0.3 * self._valence * self._side)
            waves = np.sin(2 * np.pi * self._freqs[b][:, :, None] * ts[None, None, :] + self._phases[b][:, :, None])
            out += (per_channel[:, None] / math.sqrt(3)) * waves.sum(axis=1)
        return out

    def make_block(self, index: int, t: float) -> bytes:
        uv = self.microvolts(t, self.block)
        data = uv if self.sample_format == P.FMT_FLOAT32 else np.round(uv / self.scale_uv)
        return self.encoder.eeg(self.board_us(t), data, self.rate, self.scale_uv, self.sample_format)

    def make_info(self, t: float) -> bytes:
        return self.encoder.info(self.board_us(t), self.sample_format, len(self.channels), self.rate,
                                 self.scale_uv, self.name, self.channels)


class EmotivBoardSimulator(EegBoardSimulator):
    """A 14-channel Emotiv EPOC-like headset: the EPOC's electrode names and order, 128 Hz (256 Hz as the EPOC+
    can), int16 samples of 0.51 uV around the headset's ~4,200 uV DC level, band powers following the same
    valence/arousal script as ``EegBoardSimulator``.

    For bad-input tests: ``flat`` channels send the DC level only (an electrode off the head), ``saturated``
    channels are clipped a few microvolts around it (an amplifier at its rail); ``channels`` may be given
    in another order or with other names.
    """

    def __init__(self, port: str | int, rate: float = 128.0, channels: list[str] | None = None,
                 offset_uv: float = EMOTIV_OFFSET_UV, flat: tuple[str, ...] | list[str] = (),
                 saturated: tuple[str, ...] | list[str] = (), name: str = "emoedge-sim-epoc", **kwargs: Any) -> None:
        kwargs.setdefault("sample_format", P.FMT_INT16)
        kwargs.setdefault("scale_uv", EMOTIV_LSB_UV)
        super().__init__(port, rate=rate, channels=list(channels or EMOTIV_CHANNELS), name=name, **kwargs)
        unknown = [c for c in (*flat, *saturated) if c not in self.channels]
        if unknown:
            raise ValueError(f"flat/saturated channels {unknown} are not among {self.channels}")
        self.offset_uv = offset_uv
        self.flat = [self.channels.index(c) for c in flat]
        self.saturated = [self.channels.index(c) for c in saturated]

    def microvolts(self, t: float, n: int) -> np.ndarray:
        out = super().microvolts(t, n) + self.offset_uv
        for i in self.flat:
            out[i] = self.offset_uv
        for i in self.saturated:
            out[i] = np.clip(out[i], self.offset_uv - 3.0, self.offset_uv + 3.0)
        return out


def read_wav_mono16(path: str | os.PathLike[str]) -> tuple[np.ndarray, int]:
    """PCM16 mono samples and the rate of a WAV file (stereo is averaged). Raises ValueError when not PCM16."""
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2:
            raise ValueError(f"{path}: {8 * w.getsampwidth()}-bit WAV; the audio board streams 16-bit PCM only")
        rate, channels = w.getframerate(), w.getnchannels()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    if channels > 1:
        pcm = pcm.reshape(-1, channels).mean(axis=1).round().astype(np.int16)
    return pcm.astype(np.int16), rate


def synthetic_voice(seconds: float = 4.0, rate: int = 16000, seed: int = 0) -> np.ndarray:
    """A voice-like PCM16 signal: a gliding harmonic tone with syllable-rate loudness and a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    f0 = 140 + 40 * np.sin(2 * np.pi * 0.5 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 8))
    envelope = 0.5 * (1 + np.sin(2 * np.pi * 4 * t)) ** 2 / 2
    x = 0.3 * envelope * voice / 2.6 + 0.01 * rng.standard_normal(t.size)
    return np.clip(x * 32767, -32768, 32767).astype(np.int16)


class AudioBoardSimulator(BoardSimulator):
    """A microphone board: PCM16 mono blocks from a WAV file (looped), or a synthetic voice when none."""

    sensor = P.SENSOR_AUDIO

    def __init__(self, port: str | int, wav: str | os.PathLike[str] | None = None, block: int = 256,
                 rate: int | None = None, loop: bool = True, name: str = "emoedge-sim-audio", **kwargs: Any) -> None:
        if wav is not None:
            pcm, wav_rate = read_wav_mono16(wav)
        else:
            wav_rate = rate or 16000
            pcm = synthetic_voice(rate=wav_rate)
        if rate is not None and wav is not None and rate != wav_rate:
            raise ValueError(f"{wav} is {wav_rate} Hz; --rate {rate} differs (resampling is not the board's job)")
        if pcm.size == 0:
            raise ValueError(f"{wav}: no samples")
        seconds = kwargs.pop("seconds", None)
        if not loop and seconds is None:
            seconds = pcm.size / wav_rate
        super().__init__(port, rate=wav_rate, block=block, seconds=seconds, **kwargs)
        self.pcm = pcm
        self.name = name
        self.source = Path(wav).name if wav is not None else "synthetic voice"

    def make_block(self, index: int, t: float) -> bytes:
        start = (index * self.block) % self.pcm.size
        idx = (start + np.arange(self.block)) % self.pcm.size
        return self.encoder.audio(self.board_us(t), self.pcm[idx], int(self.rate))

    def make_info(self, t: float) -> bytes:
        return self.encoder.info(self.board_us(t), P.FMT_INT16, 1, self.rate, 1.0 / 32768, self.name, ["mic"])
