"""Training-time augmentation of the speech recipe: one batch of standardised 3-s log-mel windows, with
random placement, gain, mel shift, SpecAugment masks and what changes between microphones and rooms
(``device_augment``). The recipe's switches come from ``edge.zoo.speech.RECIPE``."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from edge.features import speech as F


class Augmenter:
    """Builds one training batch of standardised 3-s windows with the augmentations above."""

    def __init__(
        self, mels: list[np.ndarray], actors: np.ndarray, mean: np.ndarray, std: np.ndarray, seed: int,
        recipe: dict[str, Any] | None = None,
    ) -> None:
        self.mels, self.actors = mels, actors
        self.recipe = recipe or default_recipe()
        self.pop = (mean, std)
        self.speaker = {int(a): F.bin_statistics([m for m, b in zip(mels, actors, strict=False) if b == a]) for a in np.unique(actors)}
        self.rng = np.random.default_rng(seed)

    def window(self, i: int) -> np.ndarray:
        rng, m = self.rng, self.mels[i]
        t, w = m.shape[1], F.WINDOW_FRAMES
        out = np.full((F.N_MELS, w), F.SILENCE, dtype=np.float32)
        if t >= w:
            s = int(rng.integers(0, t - w + 1))
            out[:] = m[:, s : s + w]
        else:
            s = int(rng.integers(0, w - t + 1))
            out[:, s : s + t] = m
        shift = int(rng.integers(-3, 4))  # mel-axis shift (vocal tract length), silence fills the edge
        if shift:
            out = np.roll(out, shift, axis=0)
            if shift > 0:
                out[:shift] = out[shift]
            else:
                out[shift:] = out[shift - 1]
        gain = float(rng.uniform(-1.0, 1.0))  # +-8.7 dB (natural-log units of power)
        speech = out > F.SILENCE + 1e-3
        out = np.where(speech, out + gain, out)
        if self.recipe["device_aug_p"] > 0:
            out = np.where(speech, device_augment(out, rng, self.recipe["device_aug_p"]), out)
        mean, std = self.speaker[int(self.actors[i])] if rng.random() < self.recipe["speaker_norm_p"] else self.pop
        x = F.model_input(out, mean, std, bool(self.recipe["loudness_norm"]))
        for _ in range(self.recipe["spec_masks"]):  # SpecAugment masks, filled with 0 (the mean)
            f = int(rng.integers(0, 9))
            f0 = int(rng.integers(0, F.N_MELS - f + 1))
            x[f0 : f0 + f] = 0.0
            tt = int(rng.integers(0, 31))
            t0 = int(rng.integers(0, w - tt + 1))
            x[:, t0 : t0 + tt] = 0.0
        return x

    def batch(self, idx: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.stack([self.window(int(i)) for i in idx])[:, None])


MEL_HZ = F.mel_to_hz(np.linspace(F.hz_to_mel(F.FMIN), F.hz_to_mel(F.FMAX), F.N_MELS + 2))[1:-1]  # bin centres


def device_augment(logmel: np.ndarray, rng: np.random.Generator, p: float) -> np.ndarray:
    """What changes between microphones and rooms, in the mel power domain (each with chance ``p``):
    an EQ curve, band-limiting, room reverberation, additive noise at 0-30 dB SNR and codec-like
    (telephone band, coarse levels) distortion."""
    power = np.exp(np.asarray(logmel, dtype=np.float64))
    bins = np.arange(F.N_MELS)
    if rng.random() < p:  # EQ: a smooth random tilt and ripple, up to about +-6 dB
        curve = rng.uniform(-0.7, 0.7) * (bins / F.N_MELS - 0.5) * 2
        for _ in range(2):
            curve = curve + rng.uniform(-0.5, 0.5) * np.cos(np.pi * bins * rng.uniform(1, 4) / F.N_MELS + rng.uniform(0, np.pi))
        power *= np.exp(curve)[:, None]
    if rng.random() < p:  # band-limiting: a low-pass (3-7.5 kHz) and a high-pass (80-300 Hz)
        low, high = rng.uniform(3000, 7500), rng.uniform(80, 300)
        gain = 1 / (1 + (MEL_HZ / low) ** 8) / (1 + (high / MEL_HZ) ** 4)
        power *= gain[:, None]
    if rng.random() < p:  # reverberation: an exponentially decaying tail (RT60 0.2-1.0 s) in each band
        from scipy.signal import lfilter

        decay = np.exp(-6.9 * F.HOP / F.SAMPLE_RATE / rng.uniform(0.2, 1.0))
        tail = lfilter([0.0, 1.0], [1.0, -decay], power, axis=1)
        power = power + rng.uniform(0.1, 0.6) * (1 - decay) * tail
    if rng.random() < p:  # additive noise: white to brown, steady or fluctuating, at 0-30 dB SNR
        shape = (MEL_HZ / 1000.0) ** -rng.uniform(0, 2)
        fluct = np.exp(rng.uniform(0, 0.5) * rng.standard_normal(power.shape[1]))
        noise = shape[:, None] * fluct[None, :]
        snr = 10 ** (rng.uniform(0, 30) / 10)
        power = power + noise * power.mean() / noise.mean() / snr
    if rng.random() < p / 2:  # codec-like: telephone band and levels quantised to 1.5 dB
        power *= (1 / (1 + (MEL_HZ / 3400) ** 12) / (1 + (300 / MEL_HZ) ** 6))[:, None]
        power = np.exp(np.round(np.log(power + F.LOG_FLOOR) / 0.35) * 0.35)
    return np.log(power + F.LOG_FLOOR).astype(np.float32)




def default_recipe() -> dict[str, Any]:
    from edge.zoo.speech import RECIPE

    return RECIPE
