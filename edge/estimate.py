"""What leaves the device: one modality's Estimate and the fused EmotionState.

Both are plain dataclasses; ``payload()`` turns them into the JSON objects of the MQTT contract
(``edge/publish/schema/*.json``). The publisher adds the envelope fields that only it knows:
the per-source sequence number ``seq`` and the publish time ``pub_ts``. No image or audio is ever
part of either: only labels, probabilities, valence/arousal and timings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class ModelInfo:
    """Which model and backend made an estimate."""

    name: str
    version: str
    sha256: str
    backend: str
    precision: str

    def payload(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "sha": self.sha256[:12],
            "backend": self.backend,
            "precision": self.precision,
        }


@dataclass
class Estimate:
    """One modality's reading of one window (or one face in one frame).

    ``ts`` is the capture time of the end of the window (host clock, UNIX seconds): latency is
    measured from it. ``valence``/``arousal`` are None where the model's labels say nothing about
    that axis (a valence-only EEG model, for one).
    """

    source: str
    modality: str
    probs: dict[str, float]
    label: str
    confidence: float
    valence: float | None
    arousal: float | None
    ts: float
    window_s: float | None
    model: ModelInfo
    latency_ms: dict[str, float] = field(default_factory=dict)
    track_id: int | None = None
    box: tuple[int, int, int, int] | None = None
    profile: str | None = None  # the person whose profile was used (edge.enroll), None: no person active
    adapted: bool = False  # whether that person's adapted head made this estimate
    views: dict[str, Any] | None = None  # raw EEG: derived views and the front end's status (edge.features.recipes.RawEEGInput)
    ood: float | None = None  # out-of-distribution score, 1.0 = the card's threshold (None: the card has none)
    seq: int | None = None  # the seq the publisher gave it (set when published; an explanation reuses it)

    def payload(self, device: str) -> dict[str, Any]:
        out: dict[str, Any] = {
            "v": SCHEMA_VERSION,
            "device": device,
            "source": self.source,
            "modality": self.modality,
            "ts": round(self.ts, 6),
            "label": self.label,
            "confidence": round(self.confidence, 4),
            "valence": None if self.valence is None else round(self.valence, 4),
            "arousal": None if self.arousal is None else round(self.arousal, 4),
            "probs": {k: round(v, 4) for k, v in self.probs.items()},
            "model": self.model.payload(),
            "latency_ms": {k: round(v, 3) for k, v in self.latency_ms.items()},
        }
        if self.window_s is not None:
            out["window_s"] = self.window_s
        if self.track_id is not None:
            out["track_id"] = self.track_id
        if self.box is not None:
            out["box"] = list(self.box)
        if self.profile is not None:
            out["profile"] = self.profile
            out["adapted"] = self.adapted
        if self.views is not None:
            out["views"] = self.views
        if self.ood is not None:
            out["ood"] = round(self.ood, 4)
        return out


@dataclass
class Contribution:
    """How much one source counted in a fused state, and why."""

    weight: float
    confidence: float
    valence: float | None
    arousal: float | None
    age_s: float
    label: str


@dataclass
class EmotionState:
    """The fused reading across modalities, smoothed over time."""

    label: str
    valence: float
    arousal: float
    confidence: float
    ts: float  # capture time of the newest estimate that counted
    contributions: dict[str, Contribution] = field(default_factory=dict)

    def payload(self, device: str) -> dict[str, Any]:
        return {
            "v": SCHEMA_VERSION,
            "device": device,
            "ts": round(self.ts, 6),
            "label": self.label,
            "valence": round(self.valence, 4),
            "arousal": round(self.arousal, 4),
            "confidence": round(self.confidence, 4),
            "sources": {
                name: {
                    "weight": round(c.weight, 4),
                    "confidence": round(c.confidence, 4),
                    "valence": None if c.valence is None else round(c.valence, 4),
                    "arousal": None if c.arousal is None else round(c.arousal, 4),
                    "age_s": round(c.age_s, 3),
                    "label": c.label,
                }
                for name, c in self.contributions.items()
            },
        }
