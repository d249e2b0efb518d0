"""EEG features: windows of raw samples, and log band power per electrode in the DEAP feature layout.

The band-power model (``models/eeg``) was trained on a public DEAP feature file whose extraction is
undocumented (``EEG_feature.txt``: 160 = 5 bands x 32 electrodes, band-major). What we infer from its
numbers, so that a board streaming raw EEG can feed that model:

* **Transform: natural log of the band power (PSD summed over the band), in uV^2.** Evidence: every row
  has ln P(alpha 8-12) - ln P(slow alpha 8-10) > 0 (min 0.04, mean 0.67 = ln 1.96): alpha contains slow
  alpha and has about twice its width; a log10 would give 0.29, a mean PSD about 0, and differential
  entropy (0.5 ln) about 0.35. Confidence: high for "natural log of a band sum", medium for the
  estimator (Welch, 1-s Hann segments, 50 % overlap, 1 Hz bins summed over [lo, hi)), as in the DEAP
  paper (Koelstra et al. 2012, section 6.1: Welch with 128-sample windows, log spectral power of theta,
  slow alpha, alpha, beta and gamma). The absolute offset (reference montage, filtering, units of the
  source recording) cannot be checked without the raw data, so features from a new device will sit at
  a different level: z-scoring per subject (``SubjectNormaliser``, mode ``subject-norm``) removes any
  such constant offset per feature, which is why that mode is the one to use on a device.
* **Electrode order: DEAP's original (Twente/BioSemi) order, not the Geneva order of the preprocessed
  release.** Evidence: theta is highest at columns 1 and 30 (Fp1, Fp2 in Twente order: eye blinks;
  column 30 would be P8 in Geneva order), gamma highest at columns 7, 3, 24, 28 (T7, F7, T8, F8: jaw
  muscle), alpha highest at 14 and 18 (PO3, PO4), gamma lowest at 13, 9, 22, 32 (Pz, CP1, CP2, Cz).
  Confidence: high. ``DEAP_ELECTRODES`` lists that order.
"""

from __future__ import annotations

import functools
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edge.errors import EmoEdgeError, InputError

log = logging.getLogger(__name__)

#: band name, low edge (Hz, inclusive), high edge (Hz, exclusive): the DEAP feature bands, in file order.
DEAP_BANDS: tuple[tuple[str, float, float], ...] = (
    ("theta", 4.0, 8.0),
    ("slow_alpha", 8.0, 10.0),
    ("alpha", 8.0, 12.0),
    ("beta", 12.0, 30.0),
    ("gamma", 30.0, 45.0),
)

#: electrode order of the DEAP feature columns (inferred: DEAP's Twente/BioSemi recording order).
DEAP_ELECTRODES: tuple[str, ...] = (
    "Fp1", "AF3", "F7", "F3", "FC1", "FC5", "T7", "C3", "CP1", "CP5", "P7", "P3", "Pz", "PO3", "O1", "Oz",
    "O2", "PO4", "P4", "P8", "CP6", "CP2", "C4", "T8", "FC6", "FC2", "F4", "F8", "AF4", "Fp2", "Fz", "Cz",
)

#: the electrode order of DEAP's preprocessed release (data_preprocessed_python), for boards using it.
DEAP_GENEVA_ELECTRODES: tuple[str, ...] = (
    "Fp1", "AF3", "F3", "F7", "FC5", "FC1", "C3", "T7", "CP5", "CP1", "P3", "P7", "PO3", "O1", "Oz", "Pz",
    "Fp2", "AF4", "Fz", "F4", "F8", "FC6", "FC2", "Cz", "C4", "T8", "CP6", "CP2", "P4", "P8", "PO4", "O2",
)

BAND_POWER_FLOOR = 1e-12  # uV^2; keeps the log finite on a flat (disconnected) channel


def eeg_windows(samples: np.ndarray, sample_rate: float, window_s: float, hop_s: float | None = None) -> np.ndarray:
    """Cut raw EEG ``[channels, time]`` into windows ``[n, channels, window]`` (no padding; a short tail is dropped)."""
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim != 2:
        raise InputError(f"EEG samples: expected [channels, time], got shape {x.shape}")
    width = int(round(window_s * sample_rate))
    hop = int(round((hop_s or window_s) * sample_rate))
    if width <= 0 or hop <= 0:
        raise InputError(f"EEG windows: window {window_s} s and hop {hop_s} s must be at least one sample")
    if x.shape[1] < width:
        return np.zeros((0, x.shape[0], width), dtype=np.float32)
    starts = range(0, x.shape[1] - width + 1, hop)
    return np.stack([x[:, s : s + width] for s in starts])


@functools.lru_cache(maxsize=16)
def _band_power_plan(nperseg: int, sample_rate: float, bands: tuple[tuple[str, float, float], ...]) -> tuple[np.ndarray, np.ndarray]:
    """Welch's Hann window and a ``[bins, bands]`` matrix that turns a periodogram into band powers, made once per
    (segment, rate, bands): the per-window work is then a few array operations, not scipy's ~700 Python calls."""
    from scipy.signal import get_window

    window = np.asarray(get_window("hann", nperseg), dtype=np.float64)  # periodic, as scipy.signal.welch uses
    freqs = np.fft.rfftfreq(nperseg, 1.0 / sample_rate)
    density = np.full(freqs.size, 2.0 / (sample_rate * float(np.sum(window**2))))  # one-sided PSD scale
    density[0] /= 2.0
    if nperseg % 2 == 0:
        density[-1] /= 2.0  # DC and Nyquist appear once in a one-sided spectrum
    df = freqs[1] - freqs[0]
    to_bands = np.zeros((freqs.size, len(bands)))
    for j, (name, low, high) in enumerate(bands):
        sel = (freqs >= low) & (freqs < high)
        if not sel.any():
            raise InputError(f"band_power: band {name} ({low}-{high} Hz) has no bins at {sample_rate} Hz")
        to_bands[sel, j] = density[sel] * df
    return window, to_bands


def band_power(
    samples: np.ndarray,
    sample_rate: float,
    bands: Sequence[tuple[str, float, float]] = DEAP_BANDS,
    segment_s: float = 1.0,
) -> np.ndarray:
    """Log band power per electrode, band-major: ``[channels, time]`` -> ``[len(bands) * channels]``.

    Welch's PSD (Hann segments of ``segment_s``, 50 % overlap, constant detrend, one-sided density, mean over
    segments: ``scipy.signal.welch``'s defaults, which the tests compare it with), summed over the bins in
    [low, high) times the bin width, then the natural log. Input in microvolts gives the scale of the DEAP
    features (see the module docstring). Any sample rate works: the band sums are in physical units, so no
    resampling is needed. A batch ``[n, channels, time]`` gives ``[n, ...]``.
    """
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim not in (2, 3):
        raise InputError(f"band_power: expected [channels, time] or [n, channels, time], got shape {x.shape}")
    nperseg = int(round(segment_s * sample_rate))
    if x.shape[-1] < nperseg:
        raise InputError(
            f"band_power: {x.shape[-1]} samples is shorter than one {segment_s} s Welch segment at {sample_rate} Hz"
        )
    if not np.all(np.isfinite(x)):
        raise InputError("band_power: EEG samples contain NaN or infinity")
    window, to_bands = _band_power_plan(nperseg, float(sample_rate), tuple((str(n), float(lo), float(hi)) for n, lo, hi in bands))
    step = nperseg - nperseg // 2
    segments = np.lib.stride_tricks.sliding_window_view(x, nperseg, axis=-1)[..., ::step, :]
    segments = (segments - segments.mean(axis=-1, keepdims=True)) * window
    spectrum = np.fft.rfft(segments, axis=-1)
    periodogram = (spectrum.real**2 + spectrum.imag**2).mean(axis=-2)  # [..., channels, bins]
    power = periodogram @ to_bands  # [..., channels, bands]
    out = np.log(np.maximum(power, BAND_POWER_FLOOR))
    return np.swapaxes(out, -1, -2).reshape(*x.shape[:-2], -1).astype(np.float32)


def reorder_channels(samples: np.ndarray, have: Sequence[str], want: Sequence[str] = DEAP_ELECTRODES) -> np.ndarray:
    """Pick and reorder the rows of ``[channels, ...]`` from a board's electrode order to the model's."""
    index = {name.lower(): i for i, name in enumerate(have)}
    missing = [name for name in want if name.lower() not in index]
    if missing:
        raise InputError(f"EEG channels: the model needs {', '.join(missing)}, the board has {', '.join(have)}")
    return np.asarray(samples)[[index[name.lower()] for name in want]]


def standardise(features: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """(x - mean) / std per feature, as float32 (std floored so a constant feature gives 0, not inf)."""
    return ((np.asarray(features) - mean) / np.maximum(std, 1e-6)).astype(np.float32)


class SubjectNormaliser:
    """Running per-feature mean and std of one subject's (or speaker's) unlabeled history (Welford).

    A device keeps one per user: ``update`` with every feature vector it computes, ``transform`` with
    the statistics so far. Until ``min_count`` vectors are seen it falls back to the given population
    statistics, so a new user still gets an estimate.
    """

    def __init__(self, size: int, min_count: int = 10) -> None:
        self.count = 0
        self.mean = np.zeros(size, dtype=np.float64)
        self._m2 = np.zeros(size, dtype=np.float64)
        self.min_count = min_count

    def update(self, features: np.ndarray) -> None:
        rows = np.asarray(features, dtype=np.float64).reshape(-1, self.mean.size)
        for row in rows:
            self.count += 1
            delta = row - self.mean
            self.mean += delta / self.count
            self._m2 += delta * (row - self.mean)

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(self._m2 / max(self.count - 1, 1))

    @property
    def ready(self) -> bool:
        return self.count >= self.min_count

    def transform(
        self, features: np.ndarray, population_mean: np.ndarray | None = None, population_std: np.ndarray | None = None
    ) -> np.ndarray:
        """z-scores by this subject's statistics once ``ready`` (or when there is no population fallback), by the
        population's until then; before the subject's history has any spread (fewer than two vectors) and with no
        fallback, the result is zeros: the model sees an average wearer."""
        if self.ready or population_mean is None or population_std is None:
            if self.count < 2:
                return np.zeros(np.shape(features), np.float32)
            return standardise(features, self.mean, self.std)
        return standardise(features, population_mean, population_std)


def load_deap_features(folder: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read a DEAP-style feature folder: features [N,160], subject/video [N,2], labels [N,2] (1/2 codes)."""
    folder = Path(folder)
    arrays = []
    for name, cols in (("EEG_feature.txt", 160), ("subject_video.txt", 2), ("valence_arousal_label.txt", 2)):
        path = folder / name
        if not path.is_file():
            raise EmoEdgeError(f"{folder}: no {name} (expected DEAP-style text files: EEG_feature.txt, "
                               "subject_video.txt, valence_arousal_label.txt)")
        try:
            a = np.loadtxt(path, ndmin=2)
        except ValueError as exc:
            raise EmoEdgeError(f"{path}: not a whitespace-separated table of numbers ({exc})") from None
        if a.shape[1] != cols:
            raise EmoEdgeError(f"{path}: expected {cols} columns, found {a.shape[1]}")
        arrays.append(a)
    n = {a.shape[0] for a in arrays}
    if len(n) != 1:
        raise EmoEdgeError(f"{folder}: the three files have different row counts {[a.shape[0] for a in arrays]}")
    return arrays[0].astype(np.float32), arrays[1].astype(np.int64), arrays[2].astype(np.int64)


class BandPowerInput:
    """The ``edge.features.eeg.band_power`` recipe for one source: raw EEG ``[channels, time]`` -> the band-power
    model's input, one definition for run time, evaluation and the gates.

    Channels are put in the model's electrode order by name; a board that names none (``ch0``, ``ch1`` ...)
    must send exactly the model's electrodes, in its order (said once in the log). The log band powers are
    z-scored by the wearer's own history (``SubjectNormaliser``, mode ``subject-norm``: every window updates
    it) once there is enough of it and by the population statistics until then, or by the population's
    always (any other ``trained_mode``), or not at all when the card has none.
    """

    def __init__(self, size: int, electrodes: Sequence[str] = DEAP_ELECTRODES,
                 bands: Sequence[tuple[str, float, float]] = DEAP_BANDS, segment_s: float = 1.0,
                 population_mean: np.ndarray | None = None, population_std: np.ndarray | None = None,
                 subject_norm: bool = True, name: str = "eeg") -> None:
        self.electrodes, self.bands, self.segment_s = list(electrodes), list(bands), float(segment_s)
        self.population_mean, self.population_std = population_mean, population_std
        self.subject_norm, self.name = subject_norm, name
        self.normaliser = SubjectNormaliser(size)
        self._warned = False

    def features(self, samples: np.ndarray, rate: float, channels: Sequence[str] | None) -> np.ndarray:
        """The log band powers (band-major) of one window, before normalisation."""
        x = np.asarray(samples)
        generic = channels is None or all(re.fullmatch(r"ch\d+", c) for c in channels)
        if not generic:
            x = reorder_channels(x, list(channels or []), self.electrodes)
        elif x.shape[0] == len(self.electrodes):
            if not self._warned:
                self._warned = True
                log.warning("model '%s': the board does not name its %d EEG channels; assuming the model's order (%s ...)",
                            self.name, x.shape[0], ", ".join(self.electrodes[:4]))
        else:
            raise InputError(f"model '{self.name}': the board names no channels and sends {x.shape[0]}; the model needs "
                             f"{len(self.electrodes)} in the order {', '.join(self.electrodes)}")
        return band_power(x, rate, self.bands, self.segment_s)

    def __call__(self, samples: np.ndarray, rate: float, channels: Sequence[str] | None) -> np.ndarray:
        features = self.features(samples, rate, channels)
        if self.subject_norm:
            self.normaliser.update(features)
            return self.normaliser.transform(features, self.population_mean, self.population_std)
        if self.population_mean is not None and self.population_std is not None:
            return standardise(features, self.population_mean, self.population_std)
        return features.astype(np.float32)
