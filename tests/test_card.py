from __future__ import annotations

from pathlib import Path

import pytest
from conftest import CARD_TEMPLATE, make_linear_onnx

from edge.card import load_card, load_model, save_card, sha256_file
from edge.errors import CardError, ModelError


def test_load_model_checks_card_and_hashes(linear_model_folder: Path) -> None:
    model = load_model(linear_model_folder)
    assert model.name == "toy"
    assert model.sha256 == sha256_file(linear_model_folder / "model.onnx")
    assert len(model.sha256) == 64


def test_load_by_name_from_models_dir(linear_model_folder: Path) -> None:
    model = load_model("toy", models=linear_model_folder.parent)
    assert model.path == linear_model_folder / "model.onnx"


def test_unknown_model_lists_known(linear_model_folder: Path) -> None:
    with pytest.raises(ModelError, match="models there: toy"):
        load_model("nope", models=linear_model_folder.parent)


def test_card_mismatch_names_both_files(linear_model_folder: Path) -> None:
    make_linear_onnx(linear_model_folder / "model.onnx", n_out=5)
    with pytest.raises(CardError) as info:
        load_model(linear_model_folder)
    msg = str(info.value)
    assert "card.toml does not match" in msg and "model.onnx" in msg
    assert "card says shape ['batch', 3], model has ['batch', 5]" in msg


def test_card_input_name_mismatch(linear_model_folder: Path) -> None:
    make_linear_onnx(linear_model_folder / "model.onnx", input_name="eeg")
    with pytest.raises(CardError, match="input 'x' is in the card but not in the model"):
        load_model(linear_model_folder)


def test_corrupt_model_file(linear_model_folder: Path) -> None:
    (linear_model_folder / "model.onnx").write_bytes(b"\x08\x07garbage" * 10)
    with pytest.raises(ModelError, match="not a readable ONNX model"):
        load_model(linear_model_folder)


def test_missing_precision_artifact_says_how_to_make_it(linear_model_folder: Path) -> None:
    with pytest.raises(ModelError, match="emoedge quantize toy --precision int8"):
        load_model(linear_model_folder, precision="int8")


def test_invalid_card_names_field(tmp_path: Path) -> None:
    path = tmp_path / "card.toml"
    path.write_text(CARD_TEMPLATE.format(name="toy").replace("parameters = 15", "parameters = -1"))
    with pytest.raises(CardError, match="parameters"):
        load_card(path)


def test_untrained_card_refuses_to_load(linear_model_folder: Path) -> None:
    card_path = linear_model_folder / "card.toml"
    card_path.write_text('status = "untrained"\n' + card_path.read_text())
    with pytest.raises(ModelError, match="ships no trained weights"):
        load_model(linear_model_folder)


def test_save_card_round_trip(linear_model_folder: Path) -> None:
    card = load_card(linear_model_folder / "card.toml")
    card.notes = "round trip"
    (linear_model_folder / "card.toml").chmod(0o640)
    save_card(card, linear_model_folder / "card.toml")
    assert load_card(linear_model_folder / "card.toml") == card
    # written beside and renamed over: the file keeps its permissions and no temporary is left behind
    assert (linear_model_folder / "card.toml").stat().st_mode & 0o777 == 0o640
    assert not [p for p in linear_model_folder.iterdir() if p.name.endswith(".tmp")]
