"""Metrics for ordinal ratings (DREAMER's 1-5 self-reports), as used for HiSTN (Kuang et al. 2024).

Re-implemented from the authors' code (``Metrics.adj_score``, ``count_off_neibor``), in numpy:

* ``seq2hr``: share of samples whose two best guesses are neighbouring levels (|r1 - r2| = 1) and
  together contain the true level;
* ``tri_p``: share of predictions at most one level off (mass on the confusion matrix tri-diagonal);
* ``top2_accuracy``; ``weighted_f1`` (the paper's "F1": sklearn's average='weighted').

The confusion matrix always spans every level (``labels=range(k)``), unlike the original code, so a
level missing from the data does not shift the tri-diagonal.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def gaussian_ordinal_targets(y: np.ndarray, n_classes: int = 5, sigma: float = 0.5) -> np.ndarray:
    """Soft labels p_k proportional to exp(-(k - y)^2 / (2 sigma^2)), normalised (the training targets)."""
    k = np.arange(n_classes)[None, :]
    p = np.exp(-((k - np.asarray(y)[:, None]) ** 2) / (2.0 * sigma**2))
    return p / p.sum(axis=1, keepdims=True)


def _top2(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(-np.asarray(scores), axis=1, kind="stable")
    return order[:, 0], order[:, 1]


def seq2hr(scores: np.ndarray, y: np.ndarray) -> float:
    r1, r2 = _top2(scores)
    y = np.asarray(y)
    hit = (np.abs(r1 - r2) == 1) & ((y == r1) | (y == r2))
    return float(hit.mean()) if len(y) else 0.0


def tri_p(pred: np.ndarray, y: np.ndarray) -> float:
    pred, y = np.asarray(pred), np.asarray(y)
    return float((np.abs(pred - y) <= 1).mean()) if len(y) else 0.0


def top2_accuracy(scores: np.ndarray, y: np.ndarray) -> float:
    r1, r2 = _top2(scores)
    y = np.asarray(y)
    return float(((y == r1) | (y == r2)).mean()) if len(y) else 0.0


def weighted_f1(pred: np.ndarray, y: np.ndarray, n_classes: int) -> float:
    """F1 per class weighted by the class's support (sklearn's average='weighted')."""
    pred, y = np.asarray(pred), np.asarray(y)
    total, score = 0, 0.0
    for c in range(n_classes):
        support = int((y == c).sum())
        if not support:
            continue
        tp = int(((pred == c) & (y == c)).sum())
        predicted = int((pred == c).sum())
        precision = tp / predicted if predicted else 0.0
        recall = tp / support
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        score += support * f1
        total += support
    return score / total if total else 0.0


def ordinal_metrics(scores: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    scores = np.asarray(scores)
    pred = scores.argmax(axis=1)
    k = scores.shape[1]
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (np.asarray(y), pred), 1)
    return {
        "accuracy": float((pred == np.asarray(y)).mean()) if len(y) else 0.0,
        "weighted_f1": weighted_f1(pred, y, k),
        "top2_accuracy": top2_accuracy(scores, y),
        "tri_p": tri_p(pred, y),
        "seq2hr": seq2hr(scores, y),
        "n": int(len(y)),
        "confusion": confusion.tolist(),
    }


def level_masks(level_upper: list[int] | tuple[int, ...]) -> dict[str, np.ndarray]:
    """Which rating levels make up each binary view, from the levels' upper ratings (1-9 SAM scale).

    A level counts as ``high`` (rating >= 5) when its lowest rating is >= 5, as ``below_mid`` (rating < 5)
    when its highest is < 5, and as ``above_mid`` (rating > 5) when its lowest is > 5; the level cuts must
    fall on those thresholds for the views to be exact (``edge.zoo.dasps`` chooses them so).
    """
    upper = np.asarray(level_upper, dtype=np.int64)
    lower = np.concatenate([[1], upper[:-1] + 1])
    return {"high": lower >= 5, "below_mid": upper < 5, "above_mid": lower > 5}


def derived_views(valence_p: np.ndarray, arousal_p: np.ndarray, level_upper: list[int] | tuple[int, ...]) -> dict[str, np.ndarray]:
    """Level probabilities [N, levels] of valence and arousal -> P(valence high), P(arousal high) and
    P(anxious) = P(valence < 5) * P(arousal > 5) (the DASPS rule; the two heads are separate networks)."""
    m = level_masks(level_upper)
    v, a = np.asarray(valence_p, dtype=np.float64), np.asarray(arousal_p, dtype=np.float64)
    return {
        "valence_high": v[:, m["high"]].sum(1),
        "arousal_high": a[:, m["high"]].sum(1),
        "anxious": v[:, m["below_mid"]].sum(1) * a[:, m["above_mid"]].sum(1),
    }
