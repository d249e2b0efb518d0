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

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edge.errors import EmoEdgeError, InputError

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


def band_power(
    samples: np.ndarray,
    sample_rate: float,
    bands: Sequence[tuple[str, float, float]] = DEAP_BANDS,
    segment_s: float = 1.0,
) -> np.ndarray:
    """Log band power per electrode, band-major: ``[channels, time]`` -> ``[len(bands) * channels]``.

    Welch's PSD (Hann segments of ``segment_s``, 50 % overlap, constant detrend, one-sided density),
    summed over the bins in [low, high) times the bin width, then the natural log. Input in microvolts
    gives the scale of the DEAP features (see the module docstring). Any sample rate works: the band
    sums are in physical units, so no resampling is needed. A batch ``[n, channels, time]`` gives ``[n, ...]``.
    """
    from scipy.signal import welch

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
    freqs, psd = welch(x, fs=sample_rate, window="hann", nperseg=nperseg, noverlap=nperseg // 2, axis=-1)
    df = freqs[1] - freqs[0]
    out = []
    for name, low, high in bands:
        sel = (freqs >= low) & (freqs < high)
        if not sel.any():
            raise InputError(f"band_power: band {name} ({low}-{high} Hz) has no bins at {sample_rate} Hz")
        out.append(np.log(np.maximum(psd[..., sel].sum(axis=-1) * df, BAND_POWER_FLOOR)))
    return np.concatenate(out, axis=-1).astype(np.float32)


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
        if self.ready:
            return standardise(features, self.mean, self.std)
        if population_mean is None or population_std is None:
            raise InputError(f"subject normaliser has seen {self.count} of {self.min_count} vectors and no fallback")
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


def deap_features(
    samples: np.ndarray, sample_rate: float, channels: Sequence[str] | None = None
) -> np.ndarray:
    """Raw EEG ``[channels, time]`` in microvolts (at least 1 s; the DEAP features used 60 s) -> the
    160 log band powers of the DEAP layout, reordered from the board's ``channels`` names when given.
    Normalise the result per subject (``SubjectNormaliser``) before the band-power model."""
    x = np.asarray(samples)
    if channels is not None:
        x = reorder_channels(x, channels, DEAP_ELECTRODES)
    elif x.shape[0] != len(DEAP_ELECTRODES):
        raise InputError(f"EEG: {x.shape[0]} channels without names; the band-power model needs the 32 DEAP electrodes")
    return band_power(x, sample_rate)


# ---------------------------------------------------------------------------------------------
# raw EEG for models that read samples (HiSTN): the same front end in training and at run time

#: pass band of the raw-EEG front end (DASPS was band-passed 4-45 Hz before release)
RAW_BAND_HZ = (4.0, 45.0)


class BandPass:
    """Causal Butterworth band-pass (second-order sections) that keeps its state between blocks, per channel.

    Run on every block a headset sends, it removes the electrode offset (an Emotiv channel sits near
    4,000 uV) and mains and muscle noise above the band, exactly as it does on the training segments.
    """

    def __init__(self, channels: int, rate: float, band: tuple[float, float] = RAW_BAND_HZ, order: int = 2) -> None:
        from scipy.signal import butter

        if not 0 < band[0] < band[1] < rate / 2:
            raise InputError(f"EEG band-pass {band[0]}-{band[1]} Hz does not fit under the Nyquist rate of {rate:g} Hz")
        self.sos = butter(order, band, btype="bandpass", fs=rate, output="sos")
        self.channels = channels
        self.reset()

    def reset(self) -> None:
        """Forget the state: the next block starts a new stream (its first sample sets the steady state)."""
        self._zi: np.ndarray | None = None

    def __call__(self, block: np.ndarray) -> np.ndarray:
        """[channels, time] -> filtered [channels, time] (float64 state, float32 out).

        The state starts as the filter's steady state for the first sample held constant (scipy's
        ``sosfilt_zi``), so an electrode offset of thousands of microvolts gives no start-up transient.
        """
        from scipy.signal import sosfilt, sosfilt_zi

        x = np.asarray(block, dtype=np.float64)
        if x.ndim != 2 or x.shape[0] != self.channels:
            raise InputError(f"EEG band-pass: expected [{self.channels}, time], got shape {x.shape}")
        if x.shape[1] == 0:
            return x.astype(np.float32)
        if self._zi is None:
            self._zi = sosfilt_zi(self.sos)[:, None, :] * x[None, :, 0, None]
        y, self._zi = sosfilt(self.sos, x, axis=1, zi=self._zi)
        return y.astype(np.float32)


class WearerNormaliser:
    """Per-channel mean and std of the first ``seconds`` of band-passed EEG a wearer gives, then z-scores.

    This is the per-subject normalisation of the raw-EEG model: training computes it from the first
    minute of each subject's recording (no labels), a device from the first minute of wear, so a new
    wearer's estimates start once ``ready``. Values are clipped to +-``clip`` standard deviations so one
    artefact cannot dominate a window.
    """

    def __init__(self, channels: int, rate: float, seconds: float = 60.0, clip: float = 6.0) -> None:
        self.channels, self.rate, self.seconds, self.clip = channels, float(rate), float(seconds), float(clip)
        self.needed = max(1, int(round(self.seconds * self.rate)))
        self.count = 0
        self._sum = np.zeros(channels)
        self._sq = np.zeros(channels)
        self.mean = np.zeros(channels)
        self.std = np.ones(channels)

    @property
    def ready(self) -> bool:
        return self.count >= self.needed

    @property
    def progress(self) -> float:
        """Share of the calibration period seen so far, 0-1."""
        return min(1.0, self.count / self.needed)

    def update(self, block: np.ndarray) -> None:
        """Feed band-passed samples [channels, time]; only the first ``seconds`` count."""
        if self.ready:
            return
        x = np.asarray(block, dtype=np.float64)[:, : self.needed - self.count]
        self._sum += x.sum(1)
        self._sq += (x * x).sum(1)
        self.count += x.shape[1]
        self.mean = self._sum / self.count
        self.std = np.sqrt(np.maximum(self._sq / self.count - self.mean**2, 0.0))

    def transform(self, x: np.ndarray) -> np.ndarray:
        """[..., channels, time] -> z-scored and clipped float32 (a flat channel gives zeros, not inf)."""
        std = np.where(self.std > 1e-6, self.std, np.inf)
        z = (np.asarray(x, dtype=np.float64) - self.mean[:, None]) / std[:, None]
        return np.clip(z, -self.clip, self.clip).astype(np.float32)


#: Emotiv EPOC electrode order (also DREAMER's and DASPS's)
EMOTIV_ELECTRODES: tuple[str, ...] = (
    "AF3", "F7", "F3", "FC5", "T7", "P7", "O1", "O2", "P8", "T8", "FC6", "F4", "F8", "AF4",
)


class RawEEGFeatures:
    """Raw headset windows -> the raw-EEG model's input [electrodes, model window], for one wearer (one source).

    The pipeline cuts overlapping windows (``hop_s``); this keeps one continuous stream behind them: the
    samples new in each window go through the causal ``BandPass`` at the board's rate, are decimated to
    the model's rate when the board runs at an integer multiple of it (a 256 Hz EPOC+, said once in the
    log), feed the ``WearerNormaliser`` until its first ``norm_s`` seconds are in, and the newest model
    window of them is z-scored. Until the normaliser is ready the statistics so far are used (from 2 s
    on; zeros before) and ``status`` says how far it is. A flat or saturated channel is flagged in
    ``status``/``stats`` and fed to the model as zeros (the average wearer), never as garbage.
    Channel names from the board pick and order the model's electrodes; a board without names must
    send exactly the model's count (assumed in its order, said once).
    """

    def __init__(
        self, electrodes: list[str] | tuple[str, ...] = EMOTIV_ELECTRODES, model_rate: float = 128.0,
        window_s: float = 1.0, hop_s: float | None = None, norm_s: float = 60.0, clip: float = 6.0,
        band: tuple[float, float] = RAW_BAND_HZ, flat_uv: float = 0.5, saturated_share: float = 0.05, name: str = "model",
    ) -> None:
        self.electrodes = list(electrodes)
        self.model_rate, self.window_s, self.hop_s = float(model_rate), float(window_s), hop_s
        self.norm_s, self.clip, self.band = float(norm_s), float(clip), band
        self.flat_uv, self.saturated_share, self.name = flat_uv, saturated_share, name
        self.width = int(round(self.window_s * self.model_rate))
        self.normaliser = WearerNormaliser(len(self.electrodes), self.model_rate, self.norm_s, self.clip)
        self._filter: BandPass | None = None
        self._rate: float | None = None
        self._factor = 1
        self._phase = 0  # input samples seen, for the decimation phase
        self._prev: np.ndarray | None = None
        self._ring = np.zeros((len(self.electrodes), 0), np.float32)
        self._said: set[str] = set()
        self.windows = 0
        self.flagged_windows = 0
        self.flat: list[str] = []
        self.saturated: list[str] = []
        self.resampled_from: float | None = None
        self.discontinuities = 0

    def _once(self, key: str, message: str, *args: object) -> None:
        import logging

        if key not in self._said:
            self._said.add(key)
            logging.getLogger(__name__).warning(message, *args)

    def _pick(self, window: np.ndarray, channels: list[str] | None) -> np.ndarray:
        import re

        generic = channels is None or all(re.fullmatch(r"ch\d+", c) for c in channels)
        if not generic:
            assert channels is not None
            if [c.lower() for c in channels] != [e.lower() for e in self.electrodes]:
                picked = reorder_channels(window, channels, self.electrodes)  # names what is missing
                self._once("order", "model '%s': board channels %s picked and reordered to %s", self.name,
                           ",".join(channels), ",".join(self.electrodes))
                return picked
            return window
        if window.shape[0] != len(self.electrodes):
            raise InputError(f"model '{self.name}': the board names no channels and sends {window.shape[0]}; the model "
                             f"needs {len(self.electrodes)} in the order {', '.join(self.electrodes)}")
        self._once("generic", "model '%s': the board does not name its %d EEG channels; assuming %s", self.name,
                   window.shape[0], ", ".join(self.electrodes))
        return window

    def _setup(self, rate: float) -> None:
        factor = rate / self.model_rate
        if factor < 1 or abs(factor - round(factor)) > 1e-6:
            raise InputError(f"model '{self.name}': the board sends {rate:g} Hz; this model needs {self.model_rate:g} Hz "
                             f"or an integer multiple of it (256, 384, 512 Hz) to decimate from")
        self._rate, self._factor = rate, int(round(factor))
        self._filter = BandPass(len(self.electrodes), rate, self.band)
        self._phase = 0
        self._prev = None
        if self._factor > 1:
            self.resampled_from = rate
            self._once(f"rate{rate}", "model '%s': the board sends %g Hz; band-passing %g-%g Hz and keeping every %d. "
                       "sample for %g Hz", self.name, rate, self.band[0], self.band[1], self._factor, self.model_rate)

    def _new_samples(self, window: np.ndarray) -> np.ndarray:
        prev, self._prev = self._prev, window
        if prev is None or prev.shape != window.shape or self._rate is None:
            return window
        hop = int(round((self.hop_s or self.window_s / 2) * self._rate))
        overlap = window.shape[1] - hop
        if 0 <= overlap <= window.shape[1] and np.array_equal(window[:, :overlap], prev[:, hop:]):
            return window[:, overlap:]
        self.discontinuities += 1  # the stream restarted (source re-enabled): filter from the new window on
        assert self._filter is not None
        self._filter.reset()
        return window

    def _quality(self, raw: np.ndarray) -> tuple[list[str], list[str]]:
        flat, saturated = [], []
        ptp = raw.max(1) - raw.min(1)
        for i, name in enumerate(self.electrodes):
            if ptp[i] < self.flat_uv:
                flat.append(name)
                continue
            at_rail = np.mean((raw[i] == raw[i].max()) | (raw[i] == raw[i].min()))
            if at_rail >= self.saturated_share:
                saturated.append(name)
        return flat, saturated

    def __call__(self, window: np.ndarray, rate: float, channels: list[str] | None) -> np.ndarray:
        x = self._pick(np.asarray(window, dtype=np.float64), channels)
        if not np.all(np.isfinite(x)):
            raise InputError(f"model '{self.name}': EEG window holds NaN or infinity")
        if self._rate != float(rate):
            self._setup(float(rate))
        assert self._filter is not None
        new = self._new_samples(x)
        filtered = self._filter(new)
        keep = (self._phase + np.arange(new.shape[1])) % self._factor == 0
        self._phase += new.shape[1]
        filtered = filtered[:, keep]
        self.normaliser.update(filtered)
        self._ring = np.concatenate([self._ring, filtered], axis=1)[:, -self.width :]
        self.flat, self.saturated = self._quality(x)
        self.windows += 1
        self.flagged_windows += bool(self.flat or self.saturated)
        if self.normaliser.count < 2 * self.model_rate or self._ring.shape[1] < self.width:
            out = np.zeros((len(self.electrodes), self.width), np.float32)
        else:
            out = self.normaliser.transform(self._ring)
        for name in self.flat + self.saturated:
            out[self.electrodes.index(name)] = 0.0
        return out

    def status(self) -> dict[str, object]:
        """The wearer normalisation and the signal quality of the newest window (published with estimates)."""
        return {
            "wearer_ready": self.normaliser.ready,
            "wearer_progress": round(self.normaliser.progress, 3),
            "flat": list(self.flat),
            "saturated": list(self.saturated),
        }

    def stats(self) -> dict[str, object]:
        """Counters for the ``stats`` topic."""
        return {
            **self.status(),
            "windows": self.windows,
            "flagged_windows": self.flagged_windows,
            "rate_hz": self._rate,
            "resampled_from_hz": self.resampled_from,
            "discontinuities": self.discontinuities,
        }

    def confidence_factor(self) -> float:
        """How much to trust the newest window: scaled down while the wearer's minute is not in yet
        and by the share of flagged channels."""
        bad = len(self.flat) + len(self.saturated)
        return float(self.normaliser.progress) * (1.0 - bad / len(self.electrodes))
