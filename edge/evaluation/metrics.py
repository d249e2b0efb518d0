"""Classification metrics in plain numpy (the runtime does not depend on scikit-learn)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, labels: Sequence[str]) -> dict[str, Any]:
    """balanced_accuracy (the headline), accuracy, macro_f1, n, per_class (recall, precision, f1, support) and confusion.

    ``y_true`` and ``y_pred`` are integer indices into ``labels``. A class with no true samples has
    recall None and is left out of balanced accuracy and macro-F1 (as scikit-learn does with zero
    division set aside), so a label the data set lacks does not drag the averages down.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    k = len(labels)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (y_true, y_pred), 1)
    support = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)
    tp = np.diag(confusion)
    per_class: dict[str, dict[str, Any]] = {}
    recalls, f1s = [], []
    for i, label in enumerate(labels):
        recall = tp[i] / support[i] if support[i] else None
        precision = tp[i] / predicted[i] if predicted[i] else 0.0
        f1 = (2 * precision * recall / (precision + recall) if (precision + recall) else 0.0) if recall is not None else None
        per_class[label] = {
            "recall": None if recall is None else float(recall),
            "precision": float(precision),
            "f1": None if f1 is None else float(f1),
            "support": int(support[i]),
        }
        if recall is not None:
            recalls.append(recall)
            f1s.append(f1)
    n = int(len(y_true))
    return {  # balanced accuracy (unweighted average recall) first: the headline, fair to unbalanced corpora
        "balanced_accuracy": float(np.mean(recalls)) if recalls else 0.0,
        "accuracy": float(tp.sum() / n) if n else 0.0,
        "macro_f1": float(np.mean(f1s)) if f1s else 0.0,
        "n": n,
        "per_class": per_class,
        "confusion": confusion.tolist(),
        "labels": list(labels),
    }
