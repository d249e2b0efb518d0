from __future__ import annotations

import numpy as np
import pytest

from edge.evaluation.metrics import classification_metrics


def test_metrics_on_a_hand_checked_example() -> None:
    # 3 classes; class 2 never appears in the truth.
    y_true = np.array([0, 0, 0, 1, 1])
    y_pred = np.array([0, 0, 1, 1, 2])
    m = classification_metrics(y_true, y_pred, ["a", "b", "c"])
    assert m["n"] == 5
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["per_class"]["a"]["recall"] == pytest.approx(2 / 3)
    assert m["per_class"]["b"]["recall"] == pytest.approx(1 / 2)
    assert m["per_class"]["c"]["recall"] is None
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    f1_a = 2 * 1.0 * (2 / 3) / (1.0 + 2 / 3)
    f1_b = 2 * 0.5 * 0.5 / 1.0
    assert m["macro_f1"] == pytest.approx((f1_a + f1_b) / 2)
    assert m["confusion"] == [[2, 1, 0], [0, 1, 1], [0, 0, 0]]


def test_metrics_agree_with_a_brute_force_count() -> None:
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 4, 500)
    y_pred = np.where(rng.random(500) < 0.6, y_true, rng.integers(0, 4, 500))
    m = classification_metrics(y_true, y_pred, list("wxyz"))
    assert m["accuracy"] == pytest.approx(np.mean(y_true == y_pred))
    recalls = [np.mean(y_pred[y_true == k] == k) for k in range(4)]
    assert m["balanced_accuracy"] == pytest.approx(np.mean(recalls))
    assert np.array(m["confusion"]).sum() == 500
