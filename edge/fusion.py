"""Per-modality estimates -> one emotion state.

Every model speaks its own labels (FER2013's seven, RAVDESS's eight, EEG's low/high valence and
arousal). Fusion puts them all on one plane, Russell's circumplex: each label has a prototype
(valence, arousal) in [-1, 1] (table in research/models-and-datasets.md section 7), and a model's
reading is the probability-weighted sum of its labels' prototypes. Labels that say nothing about an
axis (``high_valence``) leave that axis to the other modalities.

The fused state weighs each source by prior x confidence x freshness (halving every
``half_life_s``; ignored after ``stale_after_s``), lowers the confidence when the sources disagree,
smooths over time (time constant ``smoothing_s``) and is ``unknown`` below ``confidence_floor``. An
estimate whose own label is ``unknown`` (its model found the input out of distribution) counts for nothing.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from edge.confidence import softmax as softmax  # re-exported: the one definition lives in edge.confidence
from edge.config import FusionConfig
from edge.errors import ConfigError
from edge.estimate import Contribution, EmotionState, Estimate

Axis = float | None
Prototype = tuple[Axis, Axis]

# Canonical circumplex prototypes (valence, arousal).
PROTOTYPES: dict[str, Prototype] = {
    "happiness": (0.8, 0.5),
    "surprise": (0.2, 0.85),
    "fear": (-0.35, 0.65),
    "anger": (-0.5, 0.6),
    "disgust": (-0.65, 0.3),
    "contempt": (-0.55, 0.15),
    "sadness": (-0.65, -0.3),
    "neutral": (0.0, 0.0),
    "calm": (0.55, -0.3),
    "amusement": (0.7, 0.45),
    "awe": (0.45, 0.55),
    "contentment": (0.7, -0.25),
    "excitement": (0.6, 0.75),
    "boredom": (-0.66, -0.63),
    "tired": (0.04, -0.63),
    # one-axis labels (binary EEG heads); the axis they do not name is left open
    "high_valence": (0.6, None),
    "low_valence": (-0.6, None),
    "high_arousal": (None, 0.6),
    "low_arousal": (None, -0.6),
    # quadrants (four-class EEG heads)
    "hvha": (0.6, 0.6),
    "hvla": (0.6, -0.6),
    "lvha": (-0.6, 0.6),
    "lvla": (-0.6, -0.6),
}

SYNONYMS: dict[str, str] = {
    "happy": "happiness", "joy": "happiness", "pleased": "happiness",
    "surprised": "surprise", "astonished": "surprise",
    "fearful": "fear", "afraid": "fear", "scared": "fear",
    "angry": "anger",
    "disgusted": "disgust",
    "sad": "sadness",
    "relaxed": "calm",
    "excited": "excitement",
    "bored": "boredom",
    "positive": "high_valence", "negative": "low_valence",
    "valence_high": "high_valence", "valence_low": "low_valence",
    "arousal_high": "high_arousal", "arousal_low": "low_arousal",
    # head:value labels of multi-head models (models/eeg)
    "valence:positive": "high_valence", "valence:negative": "low_valence",
    "valence:high": "high_valence", "valence:low": "low_valence",
    "arousal:high": "high_arousal", "arousal:low": "low_arousal",
}

# Labels the fused state may take: the nearest of these prototypes to the fused (valence, arousal).
STATE_LABELS = ("happiness", "surprise", "fear", "anger", "disgust", "sadness", "calm", "neutral")
NEUTRAL_RADIUS = 0.2  # fused points closer than this to the origin are "neutral"
DISAGREEMENT_SCALE = 1.0  # a weighted spread of this much (in VA units) drives the confidence to zero
UNKNOWN = "unknown"


def canonical(label: str) -> str:
    return re.sub(r"[\s\-]+", "_", label.strip().lower())


def prototype(label: str, overrides: Mapping[str, Sequence[float | None]] | None = None) -> Prototype | None:
    """The (valence, arousal) prototype of a label, or None when it has none."""
    key = canonical(label)
    if overrides:
        for name, va in overrides.items():
            if canonical(name) == key:
                return (_axis(va[0]), _axis(va[1]))
    key = SYNONYMS.get(key, key)
    return PROTOTYPES.get(key)


def _axis(x: float | None) -> float | None:
    return None if x is None or math.isnan(x) else float(x)


@dataclass(frozen=True)
class LabelMap:
    """A model's labels as arrays of prototype coordinates, NaN where a label leaves an axis open."""

    labels: tuple[str, ...]
    valence: np.ndarray
    arousal: np.ndarray

    @classmethod
    def for_labels(
        cls, labels: Sequence[str], model: str = "?", overrides: Mapping[str, Sequence[float | None]] | None = None
    ) -> LabelMap:
        if not labels:
            raise ConfigError(f"model '{model}': its card lists no labels, so fusion cannot place it on the circumplex")
        protos = [prototype(label, overrides) for label in labels]
        missing = [label for label, p in zip(labels, protos, strict=True) if p is None]
        if missing:
            raise ConfigError(
                f"model '{model}': no circumplex prototype for label(s) {missing}; add them under "
                f"[fusion.prototypes] as label = [valence, arousal] (use nan for an axis the label does not name)"
            )
        val = np.array([np.nan if p[0] is None else p[0] for p in protos if p], dtype=np.float64)
        aro = np.array([np.nan if p[1] is None else p[1] for p in protos if p], dtype=np.float64)
        return cls(tuple(labels), val, aro)

    def read(self, probs: np.ndarray) -> tuple[float | None, float | None]:
        """Probability-weighted valence and arousal of one probability vector (None: no label names the axis)."""
        return _weighted_axis(probs, self.valence), _weighted_axis(probs, self.arousal)


def _weighted_axis(probs: np.ndarray, axis: np.ndarray) -> float | None:
    known = ~np.isnan(axis)
    mass = float(probs[known].sum())
    if mass <= 1e-9:
        return None
    return float(np.dot(probs[known], axis[known]) / mass)


def chance_corrected_confidence(probs: np.ndarray) -> float:
    """0 for a uniform vector, 1 for a one-hot one: (p_max - 1/K) / (1 - 1/K)."""
    k = probs.shape[-1]
    if k < 2:
        return float(probs.max())
    return float(max(0.0, (probs.max() - 1.0 / k) / (1.0 - 1.0 / k)))


def decode_label(valence: float, arousal: float) -> str:
    """Nearest state prototype to (valence, arousal); 'neutral' near the origin."""
    if math.hypot(valence, arousal) < NEUTRAL_RADIUS:
        return "neutral"
    best, best_d = "neutral", math.inf
    for name in STATE_LABELS:
        v, a = PROTOTYPES[name]
        assert v is not None and a is not None
        d = (valence - v) ** 2 + (arousal - a) ** 2
        if d < best_d:
            best, best_d = name, d
    return best


def significant_change(old: EmotionState | None, new: EmotionState, eps: float = 0.1) -> bool:
    """Whether ``new`` differs enough from ``old`` to publish the retained state now."""
    if old is None:
        return True
    return (
        old.label != new.label
        or abs(old.valence - new.valence) > eps
        or abs(old.arousal - new.arousal) > eps
        or abs(old.confidence - new.confidence) > eps
    )


class Fusion:
    """Keeps the latest estimate of every source and fuses them on demand."""

    def __init__(self, config: FusionConfig | None = None) -> None:
        self.config = config or FusionConfig()
        self._latest: dict[str, Estimate] = {}
        self._state: EmotionState | None = None
        self._last_time: float | None = None

    def update(self, estimate: Estimate) -> None:
        """Record a source's newest estimate (an older capture never replaces a newer one)."""
        current = self._latest.get(estimate.source)
        if current is None or estimate.ts >= current.ts:
            self._latest[estimate.source] = estimate

    @property
    def sources(self) -> list[str]:
        """The sources with an estimate to fuse (none before the first estimate)."""
        return list(self._latest)

    def forget(self, source: str) -> None:
        """Stop counting a source (it was disabled)."""
        self._latest.pop(source, None)

    def _prior(self, estimate: Estimate) -> float:
        weights = self.config.weights
        return float(weights.get(estimate.source, weights.get(estimate.modality, 1.0)))

    def fuse(self, now: float) -> EmotionState:
        """The instantaneous fused reading at ``now`` (before smoothing)."""
        cfg = self.config
        contributions: dict[str, Contribution] = {}
        items: list[tuple[float, float, float | None, float | None]] = []  # (w, p*c, v, a)
        newest_ts = 0.0
        weighted_conf = 0.0
        for name, est in self._latest.items():
            age = max(0.0, now - est.ts)
            prior = self._prior(est)
            fresh = 0.0 if age > cfg.stale_after_s else 0.5 ** (age / cfg.half_life_s)
            weight = prior * fresh * est.confidence
            contributions[name] = Contribution(weight, est.confidence, est.valence, est.arousal, age, est.label)
            if fresh == 0.0 or prior <= 0.0 or est.label == UNKNOWN:  # "unknown" (out of distribution): no weight
                contributions[name].weight = 0.0
                continue
            items.append((weight, prior * est.confidence, est.valence, est.arousal))
            weighted_conf += weight * est.confidence
            newest_ts = max(newest_ts, est.ts)
        valence = _axis_mean([(w, v) for w, _, v, _ in items])
        arousal = _axis_mean([(w, a) for w, _, _, a in items])
        total_pc = sum(pc for _, pc, _, _ in items)
        confidence = weighted_conf / total_pc if total_pc > 0 else 0.0
        spread = _spread(items, valence, arousal)
        confidence *= max(0.0, 1.0 - spread / DISAGREEMENT_SCALE)
        total_w = sum(w for w, *_ in items)
        for c in contributions.values():
            c.weight = c.weight / total_w if total_w > 0 else 0.0
        v = 0.0 if valence is None else valence
        a = 0.0 if arousal is None else arousal
        return EmotionState(self._label(v, a, confidence), v, a, confidence, newest_ts or now, contributions)

    def state(self, now: float) -> EmotionState:
        """The smoothed fused state at ``now``."""
        raw = self.fuse(now)
        prev, last = self._state, self._last_time
        if prev is None or last is None or self.config.smoothing_s == 0:
            alpha = 1.0
        else:
            alpha = 1.0 - math.exp(-max(0.0, now - last) / self.config.smoothing_s)
        if prev is not None and raw.confidence == 0.0:
            raw.valence, raw.arousal = prev.valence, prev.arousal  # nothing counts: hold the point, fade the confidence
        if prev is not None:
            raw.valence = prev.valence + alpha * (raw.valence - prev.valence)
            raw.arousal = prev.arousal + alpha * (raw.arousal - prev.arousal)
            raw.confidence = prev.confidence + alpha * (raw.confidence - prev.confidence)
        raw.label = self._label(raw.valence, raw.arousal, raw.confidence)
        self._state, self._last_time = raw, now
        return raw

    def _label(self, valence: float, arousal: float, confidence: float) -> str:
        return UNKNOWN if confidence < self.config.confidence_floor else decode_label(valence, arousal)


def _axis_mean(pairs: list[tuple[float, float | None]]) -> float | None:
    num = sum(w * x for w, x in pairs if x is not None)
    den = sum(w for w, x in pairs if x is not None)
    return num / den if den > 0 else None


def _spread(items: list[tuple[float, float, float | None, float | None]], v: float | None, a: float | None) -> float:
    """Weighted RMS distance of the sources from the fused point, on the axes each source names."""
    num = den = 0.0
    for w, _, sv, sa in items:
        d2 = 0.0
        if sv is not None and v is not None:
            d2 += (sv - v) ** 2
        if sa is not None and a is not None:
            d2 += (sa - a) ** 2
        num += w * d2
        den += w
    return math.sqrt(num / den) if den > 0 else 0.0
