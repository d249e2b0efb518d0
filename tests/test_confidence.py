"""Calibrated confidence and out-of-distribution scores (edge.confidence), as eval measures them and the
runtime applies them: temperature fitting, ECE, Mahalanobis scores from a card, the 'unknown' gate in
the output reader and in fusion, and the estimate schema's ``ood``."""

from __future__ import annotations

import time

import numpy as np
import pytest

from edge import confidence as C
from edge.card import ModelCard, OodRecord


def _labels_from(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    cum = np.cumsum(probs, axis=1)
    return np.minimum((rng.random((len(probs), 1)) > cum).sum(axis=1), probs.shape[1] - 1)


def test_fit_temperature_recovers_the_temperature_that_made_the_labels() -> None:
    rng = np.random.default_rng(0)
    logits = 3.0 * rng.standard_normal((20000, 5))
    labels = _labels_from(C.probabilities(logits, 2.5), rng)
    t = C.fit_temperature(logits, labels)
    assert t == pytest.approx(2.5, rel=0.05)
    # calibrated by construction at T = 2.5: small ECE there, large at T = 1 (over-confident)
    assert C.expected_calibration_error(C.probabilities(logits, t), labels) < 0.02
    over = C.calibration_metrics(C.probabilities(logits, 1.0), labels)
    assert over["ece"] > 0.1 and over["mean_confidence"] > C.calibration_metrics(C.probabilities(logits, t), labels)["mean_confidence"]


def test_ece_of_a_known_case_and_its_small_sample_floor() -> None:
    # every prediction at 0.9 and half of them right: ECE 0.4
    probs = np.tile([[0.9, 0.1]], (10, 1))
    labels = np.array([0] * 5 + [1] * 5)
    assert C.expected_calibration_error(probs, labels) == pytest.approx(0.4)
    rng = np.random.default_rng(1)
    p = C.probabilities(rng.standard_normal((4000, 8)) * 2, 1.0)
    assert C.ece_floor(p[:100]) > 2 * C.ece_floor(p)  # a small set shows ECE even when perfectly calibrated
    # labels drawn from the probabilities (calibrated) read as noise; over-confident probabilities do not
    small = p[:300]
    calibrated = np.minimum((rng.random((300, 1)) > np.cumsum(small, axis=1)).sum(axis=1), 7)
    null = C.ece_null(small)
    assert C.ece_p_value(null, C.expected_calibration_error(small, calibrated)) > 0.05
    sharp = C.probabilities(np.log(small), 0.5)  # the same winners, far more confident than they are right
    assert C.ece_p_value(C.ece_null(sharp), C.expected_calibration_error(sharp, calibrated)) < 0.01


def test_samples_that_share_a_label_widen_the_null_as_few_samples_do() -> None:
    """48 rated segments of 15 windows each (HiSTN's held-out set): the windows share their segment's label, so
    a calibrated model's ECE spreads as on 48 samples. Taken as 720 independent samples, the null calls a
    calibrated model miscalibrated most of the time; with the clusters, about as often as a 5% test should."""
    rng = np.random.default_rng(8)
    clusters = np.repeat(np.arange(48), 15)
    small_p, wide_p = [], []
    for _ in range(20):
        segment = C.probabilities(rng.standard_normal((48, 5)) * 1.5, 1.0)
        probs = C.probabilities(np.log(segment[clusters]) + 0.05 * rng.standard_normal((720, 5)), 1.0)
        labels = np.minimum((rng.random((48, 1)) > np.cumsum(segment, axis=1)).sum(axis=1), 4)[clusters]
        ece = C.expected_calibration_error(probs, labels)
        small_p.append(C.ece_p_value(C.ece_null(probs, draws=100), ece))
        wide_p.append(C.ece_p_value(C.ece_null(probs, draws=100, clusters=clusters), ece))
    assert np.mean(np.array(small_p) < 0.05) > 0.5 and np.mean(np.array(wide_p) < 0.05) <= 0.2
    assert C.ece_floor(probs, clusters=clusters) > 2 * C.ece_floor(probs)


def test_cross_fitting_scores_each_group_with_a_temperature_fitted_on_the_others() -> None:
    rng = np.random.default_rng(2)
    logits = rng.standard_normal((300, 4)) * 3
    groups = np.repeat(["a", "b", "c"], 100)
    labels = _labels_from(C.softmax(logits / np.where(groups == "a", 1.0, 3.0)[:, None]), rng)
    folds = C.folds_of(labels, groups)
    assert sorted(set(folds.tolist())) == [0, 1, 2] and (folds[:100] == folds[0]).all()
    _, temps = C.cross_fitted_probabilities(logits, labels, folds)
    assert temps[0] > temps[1]  # fold "a" was fitted on the two hot groups only
    assert len(set(C.folds_of(labels, None, k=5).tolist())) == 5


def test_auroc_counts_pairs_and_ties() -> None:
    assert C.auroc(np.array([0.0, 1.0]), np.array([2.0, 3.0])) == 1.0
    assert C.auroc(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == 0.0
    assert C.auroc(np.array([1.0, 2.0]), np.array([1.0, 3.0])) == pytest.approx((0.5 + 1 + 0 + 1) / 4)  # pairs (1,1) (1,3) (2,1) (2,3)


def _fitted_stats(rng: np.random.Generator, dim: int = 40, n: int = 2000) -> tuple[dict, np.ndarray, np.ndarray]:
    scales = np.linspace(3.0, 0.05, dim)  # a few axes the training data hardly varies in
    labels = rng.integers(0, 3, n)
    centres = rng.standard_normal((3, dim)) * scales
    x = centres[labels] + rng.standard_normal((n, dim)) * scales
    return C.fit_mahalanobis(x, labels, minor=8, major=4), x, scales


def test_mahalanobis_flags_what_the_training_data_never_varies_in() -> None:
    rng = np.random.default_rng(3)
    stats, x, scales = _fitted_stats(rng)
    inliers = x[:500] + rng.standard_normal((500, x.shape[1])) * scales * 0.1
    outliers = x[:500].copy()
    outliers[:, -5:] += 1.0  # a small step along the quiet axes: invisible in Euclidean distance
    s_in, s_out = C.mahalanobis(inliers, stats), C.mahalanobis(outliers, stats)
    assert C.auroc(s_in, s_out) > 0.99
    assert 0.4 < np.median(C.mahalanobis(x, stats)) < 1.2  # about 1 (a little less: the nearest of 3 centres)
    threshold = C.choose_threshold(s_in, 0.05)
    assert (s_in > threshold).mean() <= 0.05 and (s_out > threshold).mean() > 0.95


def test_a_background_direction_catches_what_the_distance_does_not_measure() -> None:
    """``fit_background``: the statistics measure along the loudest and the quietest axes only, and the
    background differs along a middle one; the distance misses it, the direction learnt from other examples of
    that background flags fresh ones, and the product stays a positive distance with the same threshold use."""
    rng = np.random.default_rng(6)
    stats, x, scales = _fitted_stats(rng)  # axes 0-3 and 32-39 measured
    def background(n: int) -> np.ndarray:
        b = x[rng.integers(0, len(x), n)] + rng.standard_normal((n, x.shape[1])) * scales * 0.1
        b[:, 15:18] += 3.0 * scales[15:18]
        return b
    inliers = x[:1000] + rng.standard_normal((1000, x.shape[1])) * scales * 0.1
    fresh = background(400)
    assert C.auroc(C.ood_distance(inliers, stats), C.ood_distance(fresh, stats)) < 0.65  # the distance alone: blind
    np.testing.assert_array_equal(C.ood_distance(inliers, stats), C.mahalanobis(inliers, stats))
    direction = C.fit_background(x[1000:], background(1000), stats)
    assert direction["weights"].shape == (x.shape[1],) and np.isfinite(direction["bias"])
    with_direction = {**stats, "background": (direction["weights"], direction["bias"])}
    s_in, s_out = C.ood_distance(inliers, with_direction), C.ood_distance(fresh, with_direction)
    assert C.auroc(s_in, s_out) > 0.95 and (s_in > 0).all()
    threshold = C.choose_threshold(s_in, 0.05)
    assert (C.ood_score(fresh, with_direction, threshold) > 1).mean() > 0.8
    # the direction scales the distance both ways (that is how a face model keeps blurred faces in), so it can
    # also hide what the distance alone flags: here the quiet-axis outliers of the test above. eval --fit-ood
    # therefore chooses the statistics by the worst kind among outliers of every sort, not the background's.
    quiet = inliers.copy()
    quiet[:, -5:] += 1.0
    assert C.auroc(C.mahalanobis(inliers, stats), C.mahalanobis(quiet, stats)) > 0.99
    assert C.auroc(s_in, C.ood_distance(quiet, with_direction)) < 0.9
    with pytest.raises(ValueError, match="needs inliers and background"):
        C.fit_background(x[:0], fresh, stats)


def test_ood_statistics_survive_the_card() -> None:
    rng = np.random.default_rng(4)
    stats, x, _ = _fitted_stats(rng, dim=12, n=300)
    record = OodRecord(
        threshold=2.0, components=stats["components"], minor=8, major=4, mean=OodRecord.encode(stats["mean"]),
        projection=[OodRecord.encode(r) for r in stats["projection"]],
        centres=[OodRecord.encode(r) for r in stats["centres"]], command="test", data="test", measured_at="now",
    )
    again = OodRecord.model_validate(record.model_dump())
    np.testing.assert_allclose(C.mahalanobis(x, again.stats()), C.mahalanobis(x, stats), rtol=1e-4)
    assert again.stats()["background"] is None
    weights = rng.standard_normal(x.shape[1])
    directed = OodRecord.model_validate({**record.model_dump(), "background": OodRecord.encode(weights),
                                         "background_bias": -0.5})
    np.testing.assert_allclose(C.ood_distance(x, directed.stats()),
                               C.ood_distance(x, {**stats, "background": (weights, -0.5)}), rtol=1e-4)
    # a damaged card says which vector does not fit
    with pytest.raises(ValueError, match="background has 11 weights, the mean 12"):
        OodRecord.model_validate({**record.model_dump(), "background": OodRecord.encode(weights[:-1])})
    with pytest.raises(ValueError, match="projection row 2 has 11 numbers"):
        rows = list(record.projection)
        rows[2] = " ".join(rows[2].split()[:-1])
        OodRecord.model_validate({**record.model_dump(), "projection": rows})
    with pytest.raises(ValueError, match="centres row 0: not a list of numbers"):
        OodRecord.model_validate({**record.model_dump(), "centres": ["1 2 x"] + list(record.centres[1:])})
    with pytest.raises(ValueError):
        C.transform_embedding(x, "cube")


def _card(stats: dict | None, temperature: float | None) -> ModelCard:
    data: dict = {
        "name": "toy", "version": "1", "modality": "speech", "parameters": 1,
        "labels": ["neutral", "happy", "sad", "angry"],
        "inputs": [{"name": "x", "shape": ["batch", 4]}],
        "outputs": [{"name": "logits", "shape": ["batch", 4], "meaning": "logits over labels"},
                    {"name": "embedding", "shape": ["batch", 12]}],
        "features": {"recipe": "identity"}, "training": {"data": "x", "terms": "x"},
    }
    if temperature is not None:
        data["confidence"] = {"temperatures": {"logits": temperature}, "command": "t", "data": "t", "fit": "t",
                              "measured_at": "now"}
    if stats is not None:
        data["ood"] = {"threshold": float(np.quantile(C.mahalanobis(stats["x"], stats), 0.95)),
                       "components": stats["components"], "mean": OodRecord.encode(stats["mean"]),
                       "projection": [OodRecord.encode(r) for r in stats["projection"]],
                       "centres": [OodRecord.encode(r) for r in stats["centres"]], "command": "t", "data": "t",
                       "measured_at": "now"}
    return ModelCard.model_validate(data)


def test_the_runtime_applies_the_cards_temperature_and_says_unknown_out_of_distribution() -> None:
    from edge.estimate import Estimate, ModelInfo
    from edge.fusion import Fusion
    from edge.pipeline.readout import OutputReader
    from edge.publish.schemas import validate

    rng = np.random.default_rng(5)
    stats, x, _ = _fitted_stats(rng, dim=12, n=400)
    stats["x"] = x
    logits = np.array([[4.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 5.0]], np.float32)
    embedding = np.stack([x[0], x[1] + 50.0]).astype(np.float32)
    plain = OutputReader(_card(None, None)).read({"logits": logits, "embedding": embedding})
    assert plain[0][5] is None and plain[0][0]["neutral"] == pytest.approx(C.softmax(logits[0].astype(np.float64))[0])
    items = OutputReader(_card(stats, 2.0)).read({"logits": logits, "embedding": embedding})
    (probs, label, conf, _, _, ood), (probs2, label2, conf2, _, _, ood2) = items
    assert probs["neutral"] == pytest.approx(C.probabilities(logits[0], 2.0)[0]) and probs["neutral"] < plain[0][0]["neutral"]
    assert label == "neutral" and conf > 0 and ood is not None and ood <= 1.0
    assert label2 == "unknown" and conf2 == 0.0 and ood2 is not None and ood2 > 1.0
    assert max(probs2, key=probs2.get) == "angry"  # the model's reading is kept, only not trusted

    info = ModelInfo("toy", "1", "0" * 64, "onnxruntime", "fp32")
    now = time.time()
    mic = Estimate("mic", "speech", probs2, label2, conf2, -0.5, 0.6, now, 3.0, info, ood=ood2)
    cam = Estimate("cam", "face", {"happy": 0.9, "sad": 0.1}, "happy", 0.8, 0.8, 0.5, now, None, info)
    fusion = Fusion()
    fusion.update(mic)
    fusion.update(cam)
    state = fusion.fuse(now)
    assert state.contributions["mic"].weight == 0.0 and state.contributions["cam"].weight == pytest.approx(1.0)
    assert state.valence == pytest.approx(0.8)
    payload = mic.payload("dev") | {"seq": 0, "pub_ts": now}
    assert payload["ood"] == pytest.approx(round(ood2, 4)) and payload["label"] == "unknown"
    validate("estimate", payload)
