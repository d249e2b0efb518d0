"""EEG features: band power puts a known signal's power in the right band, at the DEAP scale."""

from __future__ import annotations

import numpy as np
import pytest

from edge.errors import InputError
from edge.features.eeg import (
    DEAP_BANDS,
    DEAP_ELECTRODES,
    DEAP_GENEVA_ELECTRODES,
    SubjectNormaliser,
    band_power,
    eeg_windows,
    load_deap_features,
    reorder_channels,
)

RATE = 128


def sine(freq: float, amplitude: float, seconds: float = 8.0, rate: float = RATE) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return amplitude * np.sin(2 * np.pi * freq * t)


@pytest.mark.parametrize(
    ("freq", "band", "share"),
    # Welch with 1-s Hann segments spreads a 1-Hz-bin sine over bins f-1, f, f+1 (1/6, 2/3, 1/6):
    # a band holding all three gets all the power, one holding two of them 5/6.
    [(6.0, "theta", 1.0), (10.0, "alpha", 1.0), (9.0, "slow_alpha", 5 / 6), (20.0, "beta", 1.0), (40.0, "gamma", 1.0)],
)
def test_sine_power_lands_in_its_band(freq: float, band: str, share: float) -> None:
    quiet = 0.01 * np.random.default_rng(0).standard_normal(8 * RATE)
    x = np.stack([sine(freq, 10.0), quiet])
    bp = band_power(x, RATE).reshape(len(DEAP_BANDS), 2)
    expected = np.log(10.0**2 / 2 * share)  # a sine of amplitude A has power A^2 / 2
    for i, (name, low, high) in enumerate(DEAP_BANDS):
        if name == band:
            assert bp[i, 0] == pytest.approx(expected, abs=0.05), name
        elif high <= freq - 1 or low > freq + 1:  # no bin of the sine's main lobe in this band
            assert bp[i, 0] < expected - 5, name
    assert np.all(bp[:, 1] < expected - 6)  # the quiet channel stays quiet in every band


def test_band_power_is_rate_independent_and_band_major() -> None:
    x128 = np.stack([sine(6.0, 5.0), sine(20.0, 5.0)])
    x256 = np.stack([sine(6.0, 5.0, rate=256), sine(20.0, 5.0, rate=256)])
    a, b = band_power(x128, 128), band_power(x256, 256)
    np.testing.assert_allclose(a[[0, 7]], b[[0, 7]], atol=0.05)  # theta of ch0, beta of ch1
    assert a.shape == (10,) and a[0] > a[1] and a[7] > a[6]


@pytest.mark.parametrize(("shape", "rate", "segment_s"), [((32, 256), 128.0, 1.0), ((3, 14, 301), 100.0, 0.73),
                                                      ((5, 999), 250.0, 0.5)])
def test_band_power_equals_scipy_welch(shape: tuple[int, ...], rate: float, segment_s: float) -> None:
    """The precomputed-plan Welch is scipy.signal.welch's (Hann, 50 % overlap, constant detrend, density, mean),
    band sums and log included, for even and odd segments, 2-D and batched input."""
    from scipy.signal import welch

    x = np.random.default_rng(1).standard_normal(shape) * 10
    nperseg = int(round(segment_s * rate))
    freqs, psd = welch(x, fs=rate, window="hann", nperseg=nperseg, noverlap=nperseg // 2, axis=-1)
    df = freqs[1] - freqs[0]
    bands = [(n, lo, hi) for n, lo, hi in DEAP_BANDS if ((freqs >= lo) & (freqs < hi)).any()]
    want = np.concatenate([np.log(psd[..., (freqs >= lo) & (freqs < hi)].sum(axis=-1) * df) for _, lo, hi in bands], axis=-1)
    np.testing.assert_allclose(band_power(x, rate, bands, segment_s), want, rtol=1e-5, atol=1e-5)


def test_white_noise_scale() -> None:
    """White noise of variance s^2 has one-sided PSD 2 s^2 / fs, so theta (4 Hz wide) holds 8 s^2 / fs."""
    rng = np.random.default_rng(1)
    x = 20.0 * rng.standard_normal((1, 600 * RATE))
    theta = band_power(x, RATE)[0]
    assert theta == pytest.approx(np.log(4 * 2 * 400.0 / RATE), abs=0.05)


def test_batch_and_errors() -> None:
    x = np.random.default_rng(2).standard_normal((3, 32, 4 * RATE))
    assert band_power(x, RATE).shape == (3, 160)
    with pytest.raises(InputError, match="shorter than one"):
        band_power(x[..., :64], RATE)
    with pytest.raises(InputError, match="NaN"):
        band_power(np.full((2, 256), np.nan), RATE)


def test_windows_and_reorder() -> None:
    x = np.arange(2 * 640, dtype=np.float32).reshape(2, 640)
    w = eeg_windows(x, RATE, 1.0, 0.5)
    assert w.shape == (9, 2, 128) and w[1, 0, 0] == 64
    assert eeg_windows(x[:, :100], RATE, 1.0).shape == (0, 2, 128)
    geneva = np.arange(32)[:, None] * np.ones((1, 4))
    twente = reorder_channels(geneva, DEAP_GENEVA_ELECTRODES)
    assert [DEAP_GENEVA_ELECTRODES[int(i)] for i in twente[:, 0]] == list(DEAP_ELECTRODES)
    with pytest.raises(InputError, match="needs"):
        reorder_channels(geneva[:3], DEAP_GENEVA_ELECTRODES[:3])


def test_subject_normaliser_matches_numpy() -> None:
    rng = np.random.default_rng(3)
    rows = rng.normal(5.0, 2.0, (50, 160))
    norm = SubjectNormaliser(160, min_count=10)
    pop_mean, pop_std = np.full(160, 5.0), np.full(160, 2.0)
    assert not norm.transform(rows[0]).any()  # no history and no population: an average wearer
    norm.update(rows[:3])
    np.testing.assert_allclose(norm.transform(rows[0], pop_mean, pop_std), (rows[0] - 5.0) / 2.0, rtol=1e-5)  # not ready yet
    norm.update(rows[3:])
    np.testing.assert_allclose(norm.mean, rows.mean(0), rtol=1e-10)
    np.testing.assert_allclose(norm.std, rows.std(0, ddof=1), rtol=1e-10)
    assert norm.transform(rows).mean() == pytest.approx(0.0, abs=1e-6)


def test_deap_file_matches_the_inferred_transform(data_dir) -> None:  # type: ignore[no-untyped-def]
    """The facts the transform was inferred from, checked on the real file."""
    folder = data_dir / "eeg_deap_bandpower"
    if not folder.is_dir():
        pytest.skip(f"{folder} not found")
    features, subject_video, labels = load_deap_features(folder)
    x = features.reshape(-1, 5, 32)
    assert np.all(x[:, 2] > x[:, 1])  # alpha (8-12) contains slow alpha (8-10): log of a band sum
    theta = x[:, 0].mean(0)
    assert {int(i) for i in np.argsort(-theta)[:2]} == {DEAP_ELECTRODES.index("Fp1"), DEAP_ELECTRODES.index("Fp2")}


def test_load_deap_features_errors(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from edge.errors import EmoEdgeError

    with pytest.raises(EmoEdgeError, match="no EEG_feature.txt"):
        load_deap_features(tmp_path)
    (tmp_path / "EEG_feature.txt").write_text("1 2 3\n")
    (tmp_path / "subject_video.txt").write_text("1 1\n")
    (tmp_path / "valence_arousal_label.txt").write_text("1 1\n")
    with pytest.raises(EmoEdgeError, match="expected 160 columns"):
        load_deap_features(tmp_path)


def test_band_power_input_from_a_named_board() -> None:
    """The run-time recipe (one definition, also used by eval and the gates): channels put in the model's order."""
    from edge.features.eeg import BandPowerInput

    rng = np.random.default_rng(4)
    x = rng.standard_normal((32, 4 * RATE))
    x[DEAP_GENEVA_ELECTRODES.index("O1")] += sine(10.0, 20.0, seconds=4)
    front = BandPowerInput(160)
    f = front.features(x, RATE, DEAP_GENEVA_ELECTRODES).reshape(5, 32)
    assert int(np.argmax(f[2])) == DEAP_ELECTRODES.index("O1")  # alpha is highest at O1 in the model's order
    with pytest.raises(InputError, match="names no channels"):
        front(x[:14], RATE, None)
    unnamed = front.features(x, RATE, [f"ch{i}" for i in range(32)])  # unnamed: taken in the model's order
    np.testing.assert_allclose(unnamed, band_power(x, RATE))
