"""The shipped face model: loads against its card, runs, and `emoedge eval` reproduces its card on real faces."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge.backends.ort import OnnxRuntimeRunner
from edge.card import load_model

ROOT = Path(__file__).resolve().parent.parent
FOLDER = ROOT / "models" / "face"
FER_LABELS = ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]


def _eval(*args: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "edge", "eval", str(FOLDER), "--json", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_shipped_model_matches_its_card_and_runs() -> None:
    model = load_model(FOLDER)
    card = model.card
    assert card.name == "face" and card.modality == "face" and card.labels == FER_LABELS
    assert 0 < card.parameters <= 60_000
    assert card.input("face").shape == ["batch", 1, 48, 48]
    assert card.output("logits").shape == ["batch", 7]
    width = card.output("embedding").shape[1]
    assert isinstance(width, int) and width > 0
    assert "FER2013" in card.training.data and "research" in card.training.terms.lower()
    assert card.training.seconds and card.training.command and card.training.command.startswith("emoedge train face")
    x = np.random.default_rng(0).uniform(-1, 1, (3, 1, 48, 48)).astype(np.float32)
    with OnnxRuntimeRunner(model.path) as runner:
        out = runner.infer({"face": x})
        single = runner.infer({"face": x[:1]})
    assert out["logits"].shape == (3, 7) and out["embedding"].shape == (3, width)
    assert np.isfinite(out["logits"]).all()
    np.testing.assert_allclose(single["logits"], out["logits"][:1], atol=1e-4)  # dynamic batch


def test_mirror_averaged_model_gives_the_same_answer_for_a_mirrored_face() -> None:
    model = load_model(FOLDER)
    if "mirror image" not in model.card.notes:
        pytest.skip("this model does not average the face and its mirror image")
    x = np.random.default_rng(1).uniform(-1, 1, (4, 1, 48, 48)).astype(np.float32)
    with OnnxRuntimeRunner(model.path) as runner:
        a = runner.infer({"face": x})["logits"]
        b = runner.infer({"face": np.ascontiguousarray(x[..., ::-1])})["logits"]
    np.testing.assert_allclose(a, b, atol=1e-4)


def test_card_parameter_count_is_the_students() -> None:
    torch = pytest.importorskip("torch")  # noqa: F841
    from edge.zoo.common import count_parameters
    from edge.zoo.face import FaceStudent

    model = FaceStudent(widths=(16, 32, 64, 126), shortcut_bn=True, pool_early=False)  # the mirror-averaged v1
    assert count_parameters(model) == load_model(FOLDER).card.parameters
    assert model.embedding_size == load_model(FOLDER).card.output("embedding").shape[1]


@pytest.mark.data
def test_eval_on_a_slice_is_well_above_chance(data_dir: Path) -> None:
    result = _eval("--data", str(data_dir / "fer2013" / "validation"), "--limit", "210")
    assert result["n"] == 210 and result["skipped"] == 0
    assert set(result) >= {"accuracy", "macro_f1", "balanced_accuracy", "per_class", "confusion"}
    assert result["accuracy"] > 0.45, result["accuracy"]  # chance is 1/7, the majority class 0.25


@pytest.mark.data
@pytest.mark.slow
def test_eval_reproduces_the_card(data_dir: Path) -> None:
    card = load_model(FOLDER).card
    recorded = next((m for m in card.metrics if m.split == "validation" and m.precision == "fp32"), None)
    assert recorded is not None, "the card has no fp32 validation metrics (run emoedge eval face ... --write-card)"
    result = _eval("--data", str(data_dir / "fer2013" / "validation"))
    assert result["n"] == recorded.values["n"] == 3589
    assert result["accuracy"] == pytest.approx(recorded.values["accuracy"], abs=1e-9)
    assert result["macro_f1"] == pytest.approx(recorded.values["macro_f1"], abs=1e-9)


def test_face_fast_is_one_pass_of_vector_width_convolutions() -> None:
    """models/face_fast runs the face through the student once (models/face concatenates it with its mirror image:
    twice the work), and every convolution has a multiple of 16 output channels, so ONNX Runtime's NCHWc kernels
    take all of them; its parameter count is the default recipe's student."""
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    fast = FOLDER.parent / "face_fast"
    proto = onnx.load(str(fast / "model.onnx"))
    assert not [n for n in proto.graph.node if n.op_type in ("Concat", "Slice")]
    weights = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    assert convs and all(weights[n.input[1]].shape[0] % 16 == 0 for n in convs)
    card = load_model(fast).card
    assert card.name == "face_fast" and card.parameters <= 60_000
