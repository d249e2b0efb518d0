"""Raw EEG for models that read samples (HiSTN): band-pass, wearer normalisation and the front end, the same in
training (``edge.zoo.dasps``) and at run time (the ``edge.features.eeg.raw_eeg`` recipe)."""

from __future__ import annotations

import numpy as np

from edge.errors import InputError
from edge.features.eeg import reorder_channels

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
