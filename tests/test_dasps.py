"""DASPS loader on small files written in its HDF5 layout, the rating levels and their binary views,
the per-subject front end, and a tiny `emoedge train histn` + `emoedge eval histn --json` on generated subjects."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

h5py = pytest.importorskip("h5py")

from edge.errors import EmoEdgeError  # noqa: E402
from edge.zoo import dasps  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def fake_subject(seed: int, seconds: int = 15) -> tuple[np.ndarray, np.ndarray]:
    """[12, time, 14] band-limited noise whose alpha power follows valence, and [2, 12] paired ratings."""
    rng = np.random.default_rng(seed)
    situations = rng.integers(1, 10, size=(2, 6)).astype(np.float64)
    labels = np.repeat(situations, 2, axis=1)
    t = np.arange(seconds * 128) / 128
    data = rng.normal(0, 5, (12, seconds * 128, 14))
    for k in range(12):
        data[k] += (3 + labels[0, k]) * np.sin(2 * np.pi * 10 * t)[:, None] * rng.uniform(0.5, 1.5, 14)
    return data.astype(np.float32), labels


def write_folder(folder: Path, numbers: list[int], seconds: int = 15) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for n in numbers:
        data, labels = fake_subject(n, seconds)
        dasps.write_dasps_like(folder / f"S{n:02d}.mat", data, labels, theme="accident", hamilton=(10.0 + n, 12.0))


def test_levels_and_views_are_exact_functions_of_the_rating() -> None:
    from edge.evaluation.ordinal import derived_views

    ratings = np.arange(1, 10)
    levels = dasps.rating_level(ratings)
    assert levels.tolist() == [0, 0, 1, 1, 2, 3, 3, 4, 4]
    one_hot = np.eye(5)[levels]
    for v in ratings:  # every valence x arousal pair: the views derived from certain levels are the data set's rules
        views = derived_views(np.eye(5)[dasps.rating_level(np.full(9, v))], one_hot, dasps.LEVEL_UPPER)
        assert (views["valence_high"] == (v >= 5)).all()
        assert (views["arousal_high"] == (ratings >= 5)).all()
        assert (views["anxious"] == dasps.anxious(np.full(9, v), ratings)).all()
    with pytest.raises(EmoEdgeError, match="whole numbers 1-9"):
        dasps.rating_level([0])
    with pytest.raises(EmoEdgeError, match="whole numbers 1-9"):
        dasps.rating_level([4.5])


def test_loader_reads_the_layout(tmp_path: Path) -> None:
    write_folder(tmp_path, [2, 1])
    subjects = dasps.load_dasps(tmp_path)
    assert [s.index for s in subjects] == [1, 2]
    s = subjects[1]
    data, labels = fake_subject(2)
    assert s.name == "S02" and s.theme == "accident" and s.hamilton == (12.0, 12.0)
    assert [g.phase for g in s.segments[:4]] == ["recitation", "recall", "recitation", "recall"]
    assert [g.situation for g in s.segments] == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6]
    assert [g.valence for g in s.segments] == labels[0].astype(int).tolist()
    assert [g.arousal for g in s.segments] == labels[1].astype(int).tolist()
    np.testing.assert_array_equal(s.segments[5].eeg, data[5])
    w = dasps.prepared_windows(subjects)
    assert w.x.shape == (2 * 12 * 15, 14, 128) and w.x.dtype == np.float32
    assert set(np.unique(w.segment)) == {100 + k for k in range(12)} | {200 + k for k in range(12)}
    assert (w.phase[w.segment % 2 == 1] == 1).all() and (w.valence[w.subject == 2][:15] == labels[0, 0]).all()
    assert len(dasps.load_dasps(tmp_path, subjects=[2])) == 1


def test_front_end_uses_the_first_minute_and_no_labels(tmp_path: Path) -> None:
    write_folder(tmp_path, [1])
    subj = dasps.load_subject(tmp_path / "S01.mat")
    prepared = dasps.prepare_subject(subj, norm_s=60.0, clip=6.0)
    first_minute = np.concatenate([x for _, x in prepared[:4]], axis=1)  # 4 x 15 s
    np.testing.assert_allclose(first_minute.std(1), 1.0, atol=0.05)
    np.testing.assert_allclose(first_minute.mean(1), 0.0, atol=0.05)
    # relabelling changes nothing the model sees
    for seg in subj.segments:
        seg.valence, seg.arousal = 9, 1
    again = dasps.prepare_subject(subj, norm_s=60.0, clip=6.0)
    for (_, a), (_, b) in zip(prepared, again, strict=True):
        np.testing.assert_array_equal(a, b)
    # a 1,000-uV artefact is clipped, not passed on
    subj.segments[6].eeg[100:110, 3] = 1000.0
    clipped = dasps.prepare_subject(subj)[6][1]
    assert np.abs(clipped).max() <= 6.0


def test_loader_errors_name_what_is_missing(tmp_path: Path) -> None:
    data, labels = fake_subject(0)
    dasps.write_dasps_like(tmp_path / "S01.mat", data, labels, drop=("labels",))
    with pytest.raises(EmoEdgeError, match=r"S01.mat: no dataset 'labels' \(not the DASPS layout"):
        dasps.load_subject(tmp_path / "S01.mat")
    dasps.write_dasps_like(tmp_path / "S02.mat", data[:, :, :8], labels)
    with pytest.raises(EmoEdgeError, match=r"dataset 'data' has shape \(12, 1920, 8\)"):
        dasps.load_subject(tmp_path / "S02.mat")
    bad = labels.copy()
    bad[0, 1] += 1
    dasps.write_dasps_like(tmp_path / "S03.mat", data, bad)
    with pytest.raises(EmoEdgeError, match="different ratings"):
        dasps.load_subject(tmp_path / "S03.mat")
    from scipy.io import savemat

    savemat(str(tmp_path / "S04.mat"), {"data": np.zeros(3)})  # MATLAB v5, not HDF5
    with pytest.raises(EmoEdgeError, match="not an HDF5 file"):
        dasps.load_subject(tmp_path / "S04.mat")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EmoEdgeError, match="no S<number>.mat files"):
        dasps.load_dasps(tmp_path / "empty")


def test_tiny_train_then_eval_json(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    data = tmp_path / "dasps"
    write_folder(data, [1, 2, 4], seconds=4)  # S04 is one of the model's held-out subjects
    out = tmp_path / "histn"
    proc = subprocess.run(
        [sys.executable, "-m", "edge", "train", "histn", "--data", str(data), "--out", str(out), "--max-steps", "3",
         "--no-progress", "--threads", "1", "--set", "norm_s=8"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    from edge.card import load_model

    model = load_model(out)
    card = model.card
    assert card.status == "trained" and card.training.holdout["subjects"] == [4]
    assert card.training.holdout["train_subjects"] == [1, 2]
    assert card.parameters == 1181 and card.features.params["norm_s"] == 8.0
    proc = subprocess.run(
        [sys.executable, "-m", "edge", "eval", str(out), "--data", str(data), "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    for target in ("valence", "arousal"):
        # the level metrics, and the level probabilities' calibration (``emoedge eval``'s confidence report)
        assert set(result[target]) >= {"levels", "binary", "ece", "mean_confidence", "ece_floor", "temperature"}
        assert result[target]["temperature"] == 1.0  # a freshly trained card has no [confidence] yet
        assert set(result[target]["levels"]) == {"accuracy", "weighted_f1", "balanced_accuracy", "top2_accuracy", "tri_p", "seq2hr"}
        assert set(result[target]["binary"]) == {"accuracy", "balanced_accuracy"}
    assert set(result["anxious"]) == {"balanced_accuracy"}
    assert result["n"] == 12 * 4 and set(result["per_subject"]) == {"S04"}
    assert result["per_subject"]["S04"]["n"] == 48
    assert "split validation, subjects [4]" in result["data"]
