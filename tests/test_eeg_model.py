"""The shipped EEG band-power model: loads, matches its card, runs, evaluates; a tiny training run works."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge.card import load_model

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"


def test_shipped_model_loads_matches_its_card_and_runs() -> None:
    from edge.backends import open_runner

    model = load_model("eeg", models=MODELS)
    card = model.card
    assert card.status == "trained" and 0 < card.parameters <= 1500
    assert card.training.holdout["subjects"] and card.training.seconds is not None
    modes = {m.mode for m in card.metrics}
    assert {"subject-norm", "population-norm"} <= modes
    x = np.random.default_rng(0).standard_normal((5, 160)).astype(np.float32)
    with open_runner(model, backend="onnxruntime") as runner:
        out = runner.infer({"band_power": x})
    assert out["valence_logits"].shape == (5, 2) and out["arousal_logits"].shape == (5, 2)
    assert out["embedding"].shape == (5, card.output("embedding").shape[1])
    va = out["va"]
    assert np.all(np.abs(va) <= 1)
    # va is p(positive) - p(negative), p(high) - p(low)
    for i, key in enumerate(("valence_logits", "arousal_logits")):
        z = out[key]
        p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
        np.testing.assert_allclose(va[:, i], p[:, 1] - p[:, 0], atol=1e-5)


def test_card_parameter_count_is_the_architecture_count() -> None:
    pytest.importorskip("torch")
    from edge.zoo.common import count_parameters
    from edge.zoo.eeg import BandPowerHiSTN

    assert load_model("eeg", models=MODELS).card.parameters == count_parameters(BandPowerHiSTN())


def run_eval(*args: str) -> dict:  # type: ignore[type-arg]
    proc = subprocess.run(
        [sys.executable, "-m", "edge", "eval", "eeg", "--models", str(MODELS), "--json", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.data
def test_eval_on_the_data(data_dir: Path) -> None:
    folder = data_dir / "eeg_deap_bandpower"
    if not folder.is_dir():
        pytest.skip(f"{folder} not found")
    # the subjects it was trained on: well above chance (the pipeline, labels and normalisation agree)
    train = run_eval("--data", str(folder), "--split", "train", "--limit", "300")
    for key in ("valence", "arousal"):
        assert train[key]["balanced_accuracy"] > 0.55, key
        assert train[key]["n"] == 300 or train[key]["n"] >= 290
    # held-out subjects: it runs and counts; the card reports how well it does (near chance, honestly)
    val = run_eval("--data", str(folder), "--mode", "population-norm")
    assert val["valence"]["n"] == val["arousal"]["n"] > 0 and val["skipped"] == 0
    assert val["mode"] == "population-norm"
    assert set(val["valence"]) >= {"accuracy", "macro_f1", "balanced_accuracy", "n", "per_class", "confusion"}


def test_unknown_labels_are_skipped_and_counted(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    n = 40
    np.savetxt(tmp_path / "EEG_feature.txt", rng.normal(5, 1, (n, 160)))
    np.savetxt(tmp_path / "subject_video.txt", np.stack([np.repeat([30, 31], n // 2), np.arange(n)], 1), fmt="%d")
    labels = rng.integers(1, 3, (n, 2))
    labels[:3, 0] = 3  # not a valence code the model knows
    np.savetxt(tmp_path / "valence_arousal_label.txt", labels, fmt="%d")
    result = run_eval("--data", str(tmp_path))
    assert result["skipped"] == 3 and result["valence"]["n"] == n - 3


def test_tiny_training_run(tmp_path: Path, data_dir: Path) -> None:
    pytest.importorskip("torch")
    folder = data_dir / "eeg_deap_bandpower"
    if not folder.is_dir():
        pytest.skip(f"{folder} not found")
    out = tmp_path / "eeg"
    proc = subprocess.run(
        [sys.executable, "-m", "edge", "train", "eeg", "--data", str(folder), "--out", str(out), "--max-steps", "3",
         "--no-progress"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "parameters: " in proc.stdout
    model = load_model(out)
    assert model.card.training.seed == 0 and model.card.features.params["trained_mode"] == "subject-norm"
