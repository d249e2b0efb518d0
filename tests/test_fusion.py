"""Fusion scenarios: prototypes, freshness, confidence, disagreement, smoothing, the unknown floor."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edge.config import FusionConfig, parse_config
from edge.errors import ConfigError
from edge.estimate import Estimate, ModelInfo
from edge.fusion import (
    UNKNOWN,
    Fusion,
    LabelMap,
    chance_corrected_confidence,
    decode_label,
    prototype,
    significant_change,
)

MODEL = ModelInfo("toy", "0", "0" * 64, "onnxruntime", "fp32")
FER = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]


def est(source: str, label: str, confidence: float, ts: float, modality: str = "face") -> Estimate:
    v, a = prototype(label) or (None, None)
    return Estimate(source, modality, {label: 1.0}, label, confidence, v, a, ts, 1.0, MODEL)


def test_label_map_places_fer_labels_on_the_circumplex() -> None:
    lm = LabelMap.for_labels(FER, "face")
    happy = np.eye(len(FER))[FER.index("happy")]
    v, a = lm.read(happy)
    assert (v, a) == pytest.approx((0.8, 0.5))
    v, a = lm.read(np.full(len(FER), 1 / len(FER)))
    assert v is not None and v < 0  # six of seven basic emotions are unpleasant


def test_one_axis_labels_leave_the_other_axis_open() -> None:
    lm = LabelMap.for_labels(["low_valence", "high_valence"], "eeg")
    v, a = lm.read(np.array([0.2, 0.8]))
    assert v == pytest.approx(0.6 * 0.8 - 0.6 * 0.2)
    assert a is None


def test_unknown_label_is_a_clear_error_and_overrides_fix_it() -> None:
    with pytest.raises(ConfigError, match=r"no circumplex prototype for label\(s\) \['wistful'\].*fusion.prototypes"):
        LabelMap.for_labels(["happy", "wistful"], "art")
    lm = LabelMap.for_labels(["happy", "wistful"], "art", {"Wistful": (-0.3, math.nan)})
    assert lm.read(np.array([0.0, 1.0])) == (pytest.approx(-0.3), None)


def test_config_rejects_prototypes_out_of_range() -> None:
    with pytest.raises(ConfigError, match="prototype 'odd'"):
        parse_config('device_id = "d"\n[fusion.prototypes]\nodd = [2.0, 0.0]\n')
    cfg = parse_config('device_id = "d"\n[fusion.prototypes]\nwistful = [-0.3, nan]\n')
    assert math.isnan(cfg.fusion.prototypes["wistful"][1])


def test_chance_corrected_confidence() -> None:
    assert chance_corrected_confidence(np.full(4, 0.25)) == pytest.approx(0.0)
    assert chance_corrected_confidence(np.array([0.0, 1.0, 0.0])) == pytest.approx(1.0)
    assert chance_corrected_confidence(np.array([0.25, 0.75])) == pytest.approx(0.5)


def test_decode_label() -> None:
    assert decode_label(0.8, 0.5) == "happiness"
    assert decode_label(-0.6, -0.3) == "sadness"
    assert decode_label(0.05, -0.05) == "neutral"
    assert decode_label(-0.45, 0.62) == "anger"


def test_single_confident_source_gives_its_label() -> None:
    f = Fusion(FusionConfig(smoothing_s=0))
    f.update(est("camera", "happy", 0.9, ts=100.0))
    s = f.state(100.0)
    assert s.label == "happiness"
    assert s.confidence == pytest.approx(0.9)
    assert s.contributions["camera"].weight == pytest.approx(1.0)


def test_confident_source_dominates() -> None:
    f = Fusion(FusionConfig(smoothing_s=0, confidence_floor=0.0))
    f.update(est("camera", "happy", 0.95, ts=100.0))
    f.update(est("mic", "sad", 0.1, ts=100.0, modality="speech"))
    s = f.state(100.0)
    assert s.valence > 0.5 and s.label == "happiness"
    assert s.contributions["camera"].weight > 0.85


def test_disagreement_lowers_confidence_below_each_source() -> None:
    agree = Fusion(FusionConfig(smoothing_s=0))
    agree.update(est("camera", "happy", 0.8, ts=100.0))
    agree.update(est("mic", "happy", 0.8, ts=100.0, modality="speech"))
    disagree = Fusion(FusionConfig(smoothing_s=0))
    disagree.update(est("camera", "happy", 0.8, ts=100.0))
    disagree.update(est("mic", "sad", 0.8, ts=100.0, modality="speech"))
    a, d = agree.state(100.0), disagree.state(100.0)
    assert a.confidence == pytest.approx(0.8)
    assert d.confidence < 0.4 < a.confidence
    assert d.label == UNKNOWN


def test_stale_source_stops_counting() -> None:
    cfg = FusionConfig(smoothing_s=0, stale_after_s=3.0, half_life_s=1.0)
    f = Fusion(cfg)
    f.update(est("camera", "sad", 0.9, ts=100.0))
    f.update(est("mic", "happy", 0.6, ts=104.5, modality="speech"))
    s = f.state(105.0)
    assert s.contributions["camera"].weight == 0.0
    assert s.contributions["mic"].weight == pytest.approx(1.0)
    assert s.label == "happiness"
    assert s.valence == pytest.approx(0.8)


def test_freshness_decays_weight_and_confidence() -> None:
    f = Fusion(FusionConfig(smoothing_s=0, half_life_s=1.0, stale_after_s=10))
    f.update(est("camera", "happy", 0.8, ts=100.0))
    assert f.fuse(100.0).confidence == pytest.approx(0.8)
    assert f.fuse(101.0).confidence == pytest.approx(0.4)
    f.update(est("mic", "sad", 0.8, ts=101.0, modality="speech"))
    s = f.fuse(101.0)
    assert s.contributions["mic"].weight == pytest.approx(2 / 3)


def test_below_floor_is_unknown_and_everything_stale_fades_to_unknown() -> None:
    f = Fusion(FusionConfig(smoothing_s=0, confidence_floor=0.35))
    f.update(est("camera", "happy", 0.3, ts=100.0))
    assert f.state(100.0).label == UNKNOWN
    g = Fusion(FusionConfig(smoothing_s=0.5, stale_after_s=2.0))
    g.update(est("camera", "happy", 0.9, ts=100.0))
    assert g.state(100.0).label == "happiness"
    late = g.state(110.0)
    assert late.label == UNKNOWN and late.confidence < 0.01
    assert late.valence == pytest.approx(0.8)  # the point is held, only the confidence fades


def test_smoothing_moves_gradually() -> None:
    f = Fusion(FusionConfig(smoothing_s=1.0, half_life_s=100, stale_after_s=100))
    f.update(est("camera", "happy", 0.9, ts=100.0))
    first = f.state(100.0)
    f.update(est("camera", "sad", 0.9, ts=100.5))
    step = f.state(100.5)
    assert first.valence == pytest.approx(0.8)
    expected = 0.8 + (1 - math.exp(-0.5)) * (-0.65 - 0.8)
    assert step.valence == pytest.approx(expected, abs=1e-6)
    assert significant_change(first, step)
    assert not significant_change(step, step)


def test_prior_weights_by_source_or_modality() -> None:
    f = Fusion(FusionConfig(smoothing_s=0, weights={"speech": 3.0}, confidence_floor=0))
    f.update(est("camera", "happy", 0.5, ts=100.0))
    f.update(est("mic", "sad", 0.5, ts=100.0, modality="speech"))
    assert f.state(100.0).contributions["mic"].weight == pytest.approx(0.75)


def test_eeg_valence_only_combines_with_face_arousal() -> None:
    f = Fusion(FusionConfig(smoothing_s=0, confidence_floor=0))
    lm = LabelMap.for_labels(["low_valence", "high_valence"])
    v, a = lm.read(np.array([0.0, 1.0]))
    f.update(Estimate("eeg", "eeg", {"high_valence": 1.0}, "high_valence", 0.8, v, a, 100.0, 2.0, MODEL))
    f.update(est("camera", "anger", 0.8, ts=100.0))
    s = f.state(100.0)
    assert s.arousal == pytest.approx(0.6)  # only the face names arousal
    assert s.valence == pytest.approx((0.6 - 0.5) / 2)
