"""Model outputs -> readings: which output carries which labels, probabilities, confidence, valence-arousal, OOD.

One definition for ``emoedge run`` and ``emoedge eval`` (which refuses a card whose labels do not
match its outputs through ``label_heads``, as ``run`` does).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from edge.card import ModelCard
from edge.confidence import ood_score, probabilities
from edge.errors import ConfigError
from edge.fusion import UNKNOWN, LabelMap, chance_corrected_confidence


class Reading(NamedTuple):
    """One item's reading of the model's outputs (a tuple, so that it unpacks in this order)."""

    probs: dict[str, float]
    label: str
    confidence: float
    valence: float | None
    arousal: float | None
    ood: float | None  # out-of-distribution score (1.0 = the card's threshold), None without [ood]


class Head(NamedTuple):
    """An output and the labels it carries (indices into the card's labels)."""

    output: str
    labels: list[int]
    are_probs: bool  # the output holds probabilities already (else logits)


class OutputReader:
    """Model outputs -> one ``Reading`` per item, using the card's labels.

    Two layouts: one output with a value per label (face, speech: softmax over all labels), or
    heads, with labels ``head:value`` and an output ``<head>_logits`` (or ``<head>``) per head (EEG:
    ``valence:negative``, ``valence:positive``, ``arousal:low``, ``arousal:high``). Each head is a
    softmax of its own; the confidence is the mean of the heads' chance-corrected confidences, and
    the label joins the heads' winners. Valence and arousal come from the labels' circumplex
    prototypes, or from an output ``va`` ([valence, arousal] in [-1, 1]) when the model has one.

    Logits become probabilities through ``edge.confidence.probabilities`` with the card's temperature
    (``[confidence]``), the same function ``emoedge eval`` measures. Where the card has ``[ood]``
    statistics, each item's ``embedding`` gets an out-of-distribution score (1.0 = the threshold); above
    it the label is ``unknown`` and the confidence 0, so fusion gives it no weight.
    """

    def __init__(self, card: ModelCard, overrides: Mapping[str, Any] | None = None) -> None:
        self.card = card
        self.labels = list(card.labels)
        self.heads = label_heads(card)
        # a card may place its own labels on the circumplex: {label: [valence, arousal]}, "none" for an open axis
        card_protos = {k: [None if isinstance(x, str) else x for x in va]
                       for k, va in (card.features.params.get("prototypes") or {}).items()}
        self.label_map = LabelMap.for_labels(self.labels, card.name, {**card_protos, **dict(overrides or {})})
        outputs = {o.name: o for o in card.outputs}
        va = outputs.get("va")
        self.va_output = va.name if va is not None and va.shape and va.shape[-1] == 2 else None
        self.temperatures = {head.output: card.temperature(head.output) for head in self.heads}
        self.ood_output = card.ood.output if card.ood is not None and card.ood.output in outputs else None
        self.ood = card.ood.stats() if card.ood is not None and self.ood_output is not None else None
        self.ood_threshold = card.ood.threshold if card.ood is not None else 1.0

    def read(self, outputs: Mapping[str, np.ndarray]) -> list[Reading]:
        """One reading per item of the batch."""
        n = len(next(iter(outputs.values())))
        probs = np.zeros((n, len(self.labels)))
        confidences = np.zeros((n, len(self.heads)))
        winners: list[list[str]] = [[] for _ in range(n)]
        for h, (name, idx, are_probs) in enumerate(self.heads):
            values = np.asarray(outputs[name], dtype=np.float64).reshape(n, -1)
            p = values if are_probs else probabilities(values, self.temperatures[name])
            probs[:, idx] = p
            for i in range(n):
                confidences[i, h] = chance_corrected_confidence(p[i])
                winners[i].append(self.labels[idx[int(p[i].argmax())]])
        va = np.asarray(outputs[self.va_output], dtype=np.float64).reshape(n, 2) if self.va_output else None
        ood = None
        if self.ood is not None and self.ood_output is not None and self.ood_output in outputs:
            ood = ood_score(np.asarray(outputs[self.ood_output]).reshape(n, -1), self.ood, self.ood_threshold)
        items = []
        for i in range(n):
            if va is not None:
                v, a = float(np.clip(va[i, 0], -1, 1)), float(np.clip(va[i, 1], -1, 1))
            else:
                v, a = self.label_map.read(probs[i] / len(self.heads))
            label, confidence = " ".join(winners[i]), float(confidences[i].mean())
            score = None if ood is None else float(ood[i])
            if score is not None and score > 1.0:  # unlike anything it was trained on: no reading, no weight
                label, confidence = UNKNOWN, 0.0
            items.append(Reading({lab: float(x) for lab, x in zip(self.labels, probs[i], strict=True)}, label,
                                 confidence, v, a, score))
        return items


def label_heads(card: ModelCard) -> list[Head]:
    """Which output carries which labels, one ``Head`` per head.

    A ConfigError when the card's labels do not match its outputs (7 labels, 8 logits): ``run`` and
    ``eval`` refuse such a card alike.
    """
    labels = list(card.labels)
    outputs = {o.name: o for o in card.outputs}
    heads: list[Head] = []
    single = next((o for o in card.outputs if o.shape and o.shape[-1] == len(labels)
                   and o.name not in ("embedding", "va")), None)
    groups: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        if ":" in label:
            groups.setdefault(label.split(":", 1)[0], []).append(i)
    if groups and len(groups) > 1:
        for head, idx in groups.items():
            spec = outputs.get(f"{head}_logits") or outputs.get(f"{head}_probs") or outputs.get(head)
            if spec is None or spec.shape[-1] != len(idx):
                raise ConfigError(f"model '{card.name}': labels '{head}:*' need an output '{head}_logits' with "
                                  f"{len(idx)} values; outputs: " + ", ".join(f"{o.name}{o.shape}" for o in card.outputs))
            heads.append(Head(spec.name, idx, are_probabilities(spec.meaning, spec.name)))
    elif single is not None:
        heads.append(Head(single.name, list(range(len(labels))), are_probabilities(single.meaning, single.name)))
    else:
        raise ConfigError(
            f"model '{card.name}': no output has {len(labels)} values (one per label); outputs: "
            + ", ".join(f"{o.name}{o.shape}" for o in card.outputs)
        )
    return heads


def are_probabilities(meaning: str | None, name: str) -> bool:
    """Whether an output holds probabilities (its meaning or name says so) rather than logits."""
    text = (meaning or name).lower()
    return "prob" in text and "logit" not in text
