"""HiSTN for raw EEG: size, ONNX export, the DREAMER loader on a generated file, the shipped model (trained
on DASPS: size per target, outputs, its card's metrics reproduced by `emoedge eval`), and the ordinal
metrics (Seq2HR, Tri-P) on hand-checked examples. The DASPS loader and a tiny training run: test_dasps.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge.evaluation.ordinal import (
    gaussian_ordinal_targets,
    ordinal_metrics,
    seq2hr,
    top2_accuracy,
    tri_p,
    weighted_f1,
)

ROOT = Path(__file__).resolve().parent.parent


def test_gaussian_ordinal_targets_match_the_paper_code() -> None:
    p = gaussian_ordinal_targets(np.array([2, 0]))
    np.testing.assert_allclose(p[0], [0.0003, 0.1065, 0.7866, 0.1065, 0.0003], atol=1e-4)
    np.testing.assert_allclose(p[1], [0.8805, 0.1192, 0.0003, 0.0, 0.0], atol=1e-4)


def test_seq2hr_tri_p_top2_by_hand() -> None:
    scores = np.array([
        [0.1, 0.6, 0.3, 0.0, 0.0],  # top 1, 2 (neighbours); y=2 -> hit
        [0.6, 0.0, 0.3, 0.1, 0.0],  # top 0, 2 (not neighbours); y=2 -> in top 2, no Seq2HR
        [0.0, 0.0, 0.2, 0.7, 0.1],  # top 3, 2 (neighbours); y=4 -> miss
        [0.0, 0.0, 0.1, 0.2, 0.7],  # top 4, 3 (neighbours); y=4 -> hit
    ])
    y = np.array([2, 2, 4, 4])
    assert seq2hr(scores, y) == pytest.approx(2 / 4)
    assert top2_accuracy(scores, y) == pytest.approx(3 / 4)
    # predictions 1, 0, 3, 4 against 2, 2, 4, 4: off by 1, 2, 1, 0
    assert tri_p(scores.argmax(1), y) == pytest.approx(3 / 4)
    m = ordinal_metrics(scores, y)
    assert m["accuracy"] == pytest.approx(1 / 4) and m["n"] == 4
    assert np.array(m["confusion"]).shape == (5, 5)  # every level, even those missing from y


def test_weighted_f1_by_hand() -> None:
    pred = np.array([0, 1, 1, 1])
    y = np.array([0, 0, 1, 1])
    # class 0: tp 1, predicted 1, support 2 -> p 1, r 0.5, f1 2/3; class 1: tp 2, predicted 3 -> p 2/3, r 1, f1 0.8
    assert weighted_f1(pred, y, 5) == pytest.approx((2 / 3 * 2 + 0.8 * 2) / 4)


def test_model_size_and_onnx_export(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from edge.zoo.common import export_onnx
    from edge.zoo.histn_net import HiSTN, parameter_counts

    model = HiSTN()
    trainable, stats = parameter_counts(model)
    assert trainable == 1181 and stats == 84  # the research notes derive 1,181 + 84 from the authors' code
    torch.manual_seed(0)
    x = torch.randn(3, 14, 128)
    worst = max(export_onnx(model, x, tmp_path / "m.onnx", "eeg", ["logits", "embedding"]).values())
    assert worst < 1e-4
    import onnxruntime as ort

    out = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, {"eeg": np.random.randn(7, 14, 128).astype(np.float32)})
    assert out[0].shape == (7, 5) and out[1].shape == (7, 19)


def fake_subjects(n_subjects: int = 3, trials: int = 2, seconds: int = 62, seed: int = 0):  # type: ignore[no-untyped-def]
    from edge.zoo.dreamer import Subject

    rng = np.random.default_rng(seed)
    out = []
    for s in range(n_subjects):
        base = [rng.normal(0, 4, (7808, 14)) + 4200 for _ in range(trials)]
        stim = [rng.normal(0, 6, (seconds * 128 + 17 * t, 14)) + 4200 for t in range(trials)]
        scores = {k: rng.integers(1, 6, trials) for k in ("valence", "arousal", "dominance")}
        out.append(Subject(index=s + 1, baseline=base, stimuli=stim, scores=scores))
    return out


def test_dreamer_loader_reads_a_generated_file(tmp_path: Path) -> None:
    from scipy.io import loadmat

    from edge.zoo.dreamer import (
        EMOTIV_ELECTRODES,
        load_dreamer,
        preprocess_trial,
        windows_and_labels,
        write_dreamer_like,
    )

    subjects = fake_subjects()
    path = tmp_path / "DREAMER.mat"
    write_dreamer_like(path, subjects)
    # the indexing the research notes give for the real file works on ours
    m = loadmat(str(path))["DREAMER"][0, 0]
    assert m["Data"][0, 1]["EEG"][0, 0]["stimuli"][0, 0][1, 0].shape == (62 * 128 + 17, 14)
    loaded, meta = load_dreamer(path)
    assert meta == {"sample_rate": 128, "electrodes": list(EMOTIV_ELECTRODES)}
    assert len(loaded) == 3 and loaded[2].index == 3
    np.testing.assert_array_equal(loaded[1].stimuli[1], subjects[1].stimuli[1])
    np.testing.assert_array_equal(loaded[0].scores["arousal"], subjects[0].scores["arousal"])
    trial = preprocess_trial(loaded[0].stimuli[0], loaded[0].baseline[0])
    assert trial.shape == (14, 7680) and np.abs(trial).max() == pytest.approx(1.0)
    x, y, owner = windows_and_labels(loaded, "valence")
    assert x.shape == (3 * 2 * 60, 14, 128) and set(owner) == {1, 2, 3}
    assert y[0] == subjects[0].scores["valence"][0] - 1


def test_dreamer_loader_errors(tmp_path: Path) -> None:
    from scipy.io import savemat

    from edge.errors import EmoEdgeError
    from edge.zoo.dreamer import load_dreamer

    with pytest.raises(EmoEdgeError, match="not found"):
        load_dreamer(tmp_path / "missing.mat")
    savemat(str(tmp_path / "other.mat"), {"X": np.zeros(3)})
    with pytest.raises(EmoEdgeError, match="no variable 'DREAMER'"):
        load_dreamer(tmp_path / "other.mat")


def test_shipped_model_is_trained_small_and_its_card_metrics_reproduce() -> None:
    import json

    from edge.card import load_model
    from edge.paths import data_dir

    folder = ROOT / "models" / "histn"
    model = load_model(folder)
    card = model.card
    assert card.status == "trained" and card.parameters <= 1500  # per target: one HiSTN per target
    assert [o.name for o in card.outputs] == ["valence_logits", "arousal_logits", "embedding"]
    import onnxruntime as ort

    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    out = session.run(None, {"eeg": np.random.default_rng(0).normal(size=(3, 14, 128)).astype(np.float32)})
    assert [o.shape for o in out] == [(3, 5), (3, 5), (3, 38)]
    record = next(m for m in card.metrics if m.precision == "fp32" and m.split == "validation")
    data = data_dir() / "dasps"
    if not data.is_dir():
        pytest.skip("the shared DASPS folder is not here (set EMOEDGE_DATA)")
    proc = subprocess.run([sys.executable, "-m", "edge", "eval", "histn", "--data", str(data), "--json"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    for key in ("valence", "arousal", "anxious", "per_subject", "n"):
        recorded = flat(record.values[key])  # what the card records; figures added to eval later (ece_p) are new keys
        measured = flat(result[key])
        assert {k: measured[k] for k in recorded} == pytest.approx(recorded, abs=1e-6), key


def flat(value: object, prefix: str = "") -> dict[str, float]:
    """A nested dict of numbers as {dotted.key: number}, for one approx comparison."""
    if isinstance(value, dict):
        out: dict[str, float] = {}
        for k, v in value.items():
            out.update(flat(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): float(value)}  # type: ignore[arg-type]


def test_shipped_model_is_calibrated_and_flags_made_up_artefacts(tmp_path: Path) -> None:
    """The card's temperatures reach the runtime, and a fresh set of made-up artefact windows (seed 2,
    never used to fit or choose) is told apart from held-out DASPS windows by the card's OOD statistics."""
    import json

    from edge.card import load_model
    from edge.evaluation.outliers import raw_eeg_outliers
    from edge.paths import data_dir
    from edge.pipeline.readout import OutputReader

    card = load_model(ROOT / "models" / "histn").card
    assert card.confidence is not None and card.ood is not None
    reader = OutputReader(card)
    assert set(reader.temperatures) == {"valence_logits", "arousal_logits"}
    assert all(t != 1.0 for t in reader.temperatures.values())
    data = data_dir() / "dasps"
    if not data.is_dir():
        pytest.skip("the shared DASPS folder is not here (set EMOEDGE_DATA)")
    assert raw_eeg_outliers(tmp_path / "outliers", n=60, seed=2) == {"noise": 60, "blinks": 60, "muscle": 60}
    proc = subprocess.run([sys.executable, "-m", "edge", "eval", "histn", "--data", str(data), "--ood",
                           str(tmp_path / "outliers"), "--json"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["ood_auroc"] >= 0.9 and result["ood_flagged"]["inliers"] <= 0.1
    for key in ("valence", "arousal"):
        assert result[key]["temperature"] == pytest.approx(reader.temperatures[f"{key}_logits"])
        assert result[key]["ece"] < result[key]["uncalibrated"]["ece"] + 1e-9
        # the null that ECE is read against draws one label per rated situation, as the data has them
        assert result[key]["ece_clusters"] == 24  # 4 held-out subjects x 6 situations (720 windows)


def test_outlier_windows_of_the_wrong_shape_are_refused_by_name(tmp_path: Path) -> None:
    from edge.card import load_model
    from edge.errors import InputError
    from edge.evaluation.histn import load_outliers

    card = load_model(ROOT / "models" / "histn").card
    (tmp_path / "noise").mkdir()
    np.save(tmp_path / "noise" / "bad.npy", np.zeros((4, 14, 64), np.float32))
    with pytest.raises(InputError, match=r"bad\.npy.*\[N, 14, 128\]"):
        load_outliers(card, tmp_path)
    with pytest.raises(InputError, match="no outliers"):
        load_outliers(card, tmp_path / "missing")
