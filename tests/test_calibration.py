"""Calibration sets: drawn stratified and seeded, stored compactly and reproducibly, checked on load."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import quant_toys

from edge.card import load_card
from edge.errors import CardError, InputError
from edge.export.calibrate import (
    decode,
    encode,
    load_calibration_set,
    make_calibration_set,
    stratified_indices,
    stratum_keys,
)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def toy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    from edge import evaluation

    monkeypatch.setitem(evaluation.EVALUATORS, "toyconv", "quant_toys")
    models = tmp_path / "models"
    folder = quant_toys.make_model_folder(models)
    data = quant_toys.make_data(tmp_path / "data", folder / "model.onnx")
    return {"models": models, "folder": folder, "data": data, "calibration": tmp_path / "calibration"}


def emoedge(*args: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'tests'}", **(env_extra or {}))
    # the toy evaluator is registered by a tiny wrapper, as a test would register it in-process
    code = "import sys; from edge import evaluation; evaluation.EVALUATORS['toyconv'] = 'quant_toys'; " \
           "from edge.cli import main; sys.argv[0] = 'emoedge'; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=300)


def test_stratified_indices_keep_class_shares_and_are_seeded() -> None:
    keys = np.repeat([0, 1, 2, 3], [500, 300, 150, 50])
    index = stratified_indices(keys, 100, seed=3)
    assert len(index) == 100 and len(set(index.tolist())) == 100
    assert np.bincount(keys[index]).tolist() == [50, 30, 15, 5]
    assert np.array_equal(index, stratified_indices(keys, 100, seed=3))
    assert not np.array_equal(index, stratified_indices(keys, 100, seed=4))


def test_rare_class_is_never_dropped() -> None:
    keys = np.array([0] * 990 + [1] * 9 + [2])
    counts = np.bincount(keys[stratified_indices(keys, 20, seed=0)], minlength=3)
    assert counts.sum() == 20 and counts.min() >= 1


def test_two_label_heads_stratify_on_their_combination() -> None:
    valence = np.array([0, 0, 1, 1] * 25)
    arousal = np.array([0, 1, 0, 1] * 25)
    keys = stratum_keys({"valence": valence, "arousal": arousal})
    assert len(np.unique(keys)) == 4
    index = stratified_indices(keys, 40, seed=0)
    assert np.bincount(keys[index]).tolist() == [10, 10, 10, 10]


def test_encoding_is_exact_for_8bit_images_and_close_for_other_floats() -> None:
    rng = np.random.default_rng(0)
    image = (rng.integers(0, 256, (10, 1, 8, 8)) / 127.5 - 1).astype(np.float32)
    stored, spec = encode(image)
    assert stored.dtype == np.uint8 and spec["stored"] == "uint8-affine"
    np.testing.assert_allclose(decode(stored, spec), image, atol=1e-6)
    mel = (rng.standard_normal((10, 64, 20)) * 20 - 40).astype(np.float32)
    stored, spec = encode(mel)
    assert stored.dtype == np.float16 and spec["stored"] == "float16"
    np.testing.assert_allclose(decode(stored, spec), mel, rtol=2**-11)
    huge = np.array([1e6, 2.5e6, 3.1e5], np.float32)
    assert encode(huge)[1]["stored"] == "float32"


def test_calibrate_cli_writes_a_small_reproducible_set(toy: dict[str, Path]) -> None:
    out = toy["calibration"] / "toyconv"
    result = emoedge("calibrate", "toyconv", "--data", str(toy["data"]), "--count", "80", "--seed", "5",
                     "--models", str(toy["models"]), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "80 samples" in result.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["count"] == 80 and manifest["seed"] == 5 and manifest["split"] == "train"
    assert manifest["inputs"]["image"]["stored"] == "uint8-affine"
    assert manifest["features"] == {"recipe": "toy-image", "params": {}}
    assert sum(manifest["per_class"].values()) == 80
    assert set(manifest["per_class"]) <= set(quant_toys.LABELS)
    assert manifest["command"].startswith("emoedge calibrate toyconv --data")
    # class shares follow the training split (the evaluator's seeded slice of it, so a few samples off)
    with np.load(toy["data"] / "train.npz") as npz:
        train_y = npz["y"]
    for label, count in manifest["per_class"].items():
        share = np.mean(train_y == quant_toys.LABELS.index(label))
        assert abs(count - share * 80) <= 4, (label, count, share)
    calib = load_calibration_set(out, load_card(toy["folder"] / "card.toml"))
    assert calib.inputs["image"].shape == (80, 1, 16, 16) and calib.inputs["image"].dtype == np.float32
    assert (out / "samples.npz").stat().st_size < 80 * 256 + 4096  # at most a byte a pixel
    first = (out / "samples.npz").read_bytes()
    assert emoedge("calibrate", "toyconv", "--data", str(toy["data"]), "--count", "80", "--seed", "5",
                   "--models", str(toy["models"]), "--out", str(out)).returncode == 0
    assert (out / "samples.npz").read_bytes() == first


def test_samples_come_from_the_training_split_unchanged(toy: dict[str, Path]) -> None:
    card = load_card(toy["folder"] / "card.toml")
    calib = make_calibration_set(card, toy["data"], toy["calibration"] / "toyconv", count=50, seed=1)
    with np.load(toy["data"] / "train.npz") as npz:
        train = npz["x"].reshape(len(npz["x"]), -1)
    rows = calib.inputs["image"].reshape(50, -1)
    distances = np.abs(rows[:, None, :] - train[None, :, :]).max(axis=2).min(axis=1)
    assert distances.max() < 1e-6


def test_empty_split_is_refused_and_keeps_the_previous_set(toy: dict[str, Path], tmp_path: Path) -> None:
    card = load_card(toy["folder"] / "card.toml")
    out = toy["calibration"] / "toyconv"
    make_calibration_set(card, toy["data"], out, count=20)
    before = (out / "samples.npz").read_bytes()
    empty = tmp_path / "empty"
    empty.mkdir()
    np.savez(empty / "train.npz", x=np.zeros((0, 1, 16, 16), np.float32), y=np.zeros(0, np.int64))
    with pytest.raises(InputError, match="gave no samples.*previous calibration set"):
        make_calibration_set(card, empty, out, count=20)
    assert (out / "samples.npz").read_bytes() == before


def test_set_that_does_not_fit_the_card_is_refused(toy: dict[str, Path]) -> None:
    card = load_card(toy["folder"] / "card.toml")
    out = toy["calibration"] / "toyconv"
    make_calibration_set(card, toy["data"], out, count=20)
    other = card.model_copy(deep=True)
    other.inputs[0].name = "pixels"
    with pytest.raises(CardError, match=r"inputs \['image'\] but the card of 'toyconv' declares \['pixels'\]"):
        load_calibration_set(out, other)
    other = card.model_copy(deep=True)
    other.inputs[0].shape = ["batch", 1, 48, 48]
    with pytest.raises(CardError, match=r"input 'image' has shape \[20, 1, 16, 16\], the card says \['batch', 1, 48, 48\]"):
        load_calibration_set(out, other)


def test_changed_samples_file_is_refused(toy: dict[str, Path]) -> None:
    card = load_card(toy["folder"] / "card.toml")
    out = toy["calibration"] / "toyconv"
    make_calibration_set(card, toy["data"], out, count=20)
    data = bytearray((out / "samples.npz").read_bytes())
    data[-40] ^= 0xFF
    (out / "samples.npz").write_bytes(bytes(data))
    with pytest.raises(CardError, match="does not match its manifest"):
        load_calibration_set(out, card)


def test_missing_set_says_how_to_make_one(toy: dict[str, Path]) -> None:
    card = load_card(toy["folder"] / "card.toml")
    with pytest.raises(CardError, match="emoedge calibrate toyconv --data DIR"):
        load_calibration_set(toy["calibration"] / "toyconv", card)
