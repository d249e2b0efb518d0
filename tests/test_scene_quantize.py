"""The scene decoder's FP16/INT8 gate: whole explanations compared by token agreement and emotion consistency
(edge.export.quantize_decoder), on a copy of the shipped model and held-out Emotion6 images."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from edge.card import load_card, sha256_file
from edge.export import quantize_decoder as qd
from edge.paths import PROJECT_ROOT, data_dir

SCENE = PROJECT_ROOT / "models" / "scene"


def test_token_agreement_counts_positions_over_the_longer_sentence() -> None:
    assert qd.token_agreement([1, 2, 3], [1, 2, 3]) == 1.0
    assert qd.token_agreement([1, 2, 3, 4], [1, 2]) == 0.5
    assert qd.token_agreement([5, 2], [1, 2]) == 0.5
    assert qd.token_agreement([], []) == 1.0


@pytest.fixture
def scene_copy(tmp_path: Path) -> tuple[Path, Path]:
    folder = data_dir() / "emotion6_256"
    if not (SCENE / "decoder.onnx").is_file():
        pytest.skip("models/scene is not trained here")
    if not folder.is_dir():
        pytest.skip(f"{folder} not here (EMOEDGE_DATA): the gate decodes held-out images")
    copy = tmp_path / "scene"
    shutil.copytree(SCENE, copy, ignore=shutil.ignore_patterns("decoder.fp16.onnx", "decoder.int8.onnx"))
    card = load_card(copy / "card.toml")
    for graph in card.graphs:
        graph.artifacts = []
    from edge.card import save_card

    save_card(card, copy / "card.toml")
    return copy, folder


def test_fp16_decoder_passes_and_a_damaged_one_is_refused_without_replacing_it(
        scene_copy: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    copy, folder = scene_copy
    gate, record, path = qd.quantize_decoder(copy, "fp16", folder, threads=1)  # the whole held-out split, as shipped
    assert gate.passed and path == copy / "decoder.fp16.onnx" and path.is_file()
    assert gate.token_agreement >= qd.MIN_TOKEN_AGREEMENT and gate.n > 300
    graph = load_card(copy / "card.toml").graphs[0]
    assert [a.precision for a in graph.artifacts] == ["fp16"] and graph.artifacts[0].sha256 == sha256_file(path)
    passed_sha = sha256_file(path)

    real = qd.make_candidate

    def damaged(src: Path, dst: Path, precision: str) -> None:
        """The FP16 file made from weights with noise in them: a conversion gone wrong."""
        import onnx
        from onnx import numpy_helper

        model = onnx.load(str(src))
        rng = np.random.default_rng(0)
        for init in model.graph.initializer:
            w = numpy_helper.to_array(init)
            if w.dtype == np.float32 and w.size > 1000:
                init.CopyFrom(numpy_helper.from_array((w + rng.normal(0, 0.5 * w.std(), w.shape)).astype(np.float32), init.name))
        noisy = dst.with_name("noisy.onnx")
        onnx.save(model, str(noisy))
        real(noisy, dst, precision)
        noisy.unlink()

    monkeypatch.setattr(qd, "make_candidate", damaged)
    gate, record, path = qd.quantize_decoder(copy, "fp16", folder, limit=40, threads=1)
    assert not gate.passed and path is None and gate.token_agreement < qd.MIN_TOKEN_AGREEMENT
    # the file that passed before stays, with its record
    assert sha256_file(copy / "decoder.fp16.onnx") == passed_sha
    assert load_card(copy / "card.toml").graphs[0].artifacts[0].passed
    assert not list(copy.glob(".decoder*"))  # no candidate left behind


def test_a_gated_decoder_runs_and_an_unrecorded_one_is_refused(scene_copy: tuple[Path, Path],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from edge.card import load_model
    from edge.errors import ModelError
    from edge.scene.model import SceneModel

    copy, folder = scene_copy
    model = load_model(copy)
    with pytest.raises(ModelError, match="decoder is missing"):
        SceneModel(model, decoder_precision="fp16").__enter__()
    shutil.copy(copy / "decoder.onnx", copy / "decoder.fp16.onnx")  # a file no gate passed
    with pytest.raises(ModelError, match="no passed gate record"):
        SceneModel(model, decoder_precision="fp16").__enter__()
    monkeypatch.setattr(qd, "MIN_TOKEN_AGREEMENT", 0.5)  # this test is about the runtime, not the gate's bar
    assert qd.quantize_decoder(copy, "fp16", folder, limit=16, threads=1)[0].passed
    frame = np.random.default_rng(0).integers(0, 255, (240, 320, 3), dtype=np.uint8)
    with SceneModel(load_model(copy), decoder_precision="fp16") as scene:
        assert scene.explain(scene.estimate(frame)).tokens
    (copy / "decoder.fp16.onnx").write_bytes((copy / "decoder.fp16.onnx").read_bytes() + b"\0")
    with pytest.raises(ModelError, match="sha256 differs"):
        SceneModel(load_model(copy), decoder_precision="fp16").__enter__()
