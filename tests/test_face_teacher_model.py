"""The face student's own teacher (models/face/teacher): it loads, `emoedge eval` reproduces its card, and the
student recipe reads its logits in the teacher's own label order."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge.card import load_model

ROOT = Path(__file__).resolve().parent.parent
FOLDER = ROOT / "models" / "face" / "teacher"


def test_shipped_teacher_loads_against_its_card() -> None:
    model = load_model(FOLDER)
    card = model.card
    assert card.name == "face-teacher" and card.status == "trained"
    assert card.parameters > 1_000_000  # a teacher, not a device model
    assert card.training.command.startswith("emoedge train face-teacher")
    assert "FER2013" in card.training.data and "research" in card.training.terms.lower()


@pytest.mark.data
@pytest.mark.slow
def test_eval_reproduces_the_teachers_card(data_dir: Path) -> None:
    recorded = next(m for m in load_model(FOLDER).card.metrics if m.split == "validation")
    done = subprocess.run(
        [sys.executable, "-m", "edge", "eval", str(FOLDER), "--json", "--data", str(data_dir / "fer2013" / "validation")],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["n"] == recorded.values["n"] == 3589
    assert result["accuracy"] == pytest.approx(recorded.values["accuracy"], abs=1e-9)
    assert result["accuracy"] > 0.65  # what makes it worth distilling from: the mini-Xception ensemble scores 0.61


def test_teacher_logits_follow_the_teachers_card_and_its_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("torch")
    import onnxruntime as ort

    from edge.zoo import face

    monkeypatch.setenv("EMOEDGE_CACHE", str(tmp_path / "cache"))
    images = np.random.default_rng(0).integers(0, 256, (6, 48, 48), dtype=np.uint8)
    path = FOLDER / "model.onnx"
    assert face.teacher_labels(path) == face.LABELS
    assert face.teacher_labels(Path("x/fer2013_mini_XCEPTION.102-0.66.onnx")) == face.TEACHER_LABELS
    got = face.teacher_logits([path], images, show=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = face.teacher_input(images, 48)
    assert np.allclose(got[0], session.run(["logits"], {"face": x})[0], atol=1e-5)
    assert np.allclose(got[1], session.run(["logits"], {"face": x[:, :, :, ::-1].copy()})[0], atol=1e-5)
    # the cache is keyed by the teacher's bytes: a changed teacher file is run again
    changed = tmp_path / "teacher" / "model.onnx"
    changed.parent.mkdir()
    changed.write_bytes(path.read_bytes())
    (changed.parent / "card.toml").write_text((FOLDER / "card.toml").read_text())
    first = face.teacher_logits([changed], images, show=False)
    assert len(list((tmp_path / "cache" / "face").glob("teacher-logits-*.npy"))) == 2
    changed.write_bytes((ROOT / "models" / "face" / "model.onnx").read_bytes())  # same path, another model
    second = face.teacher_logits([changed], images, show=False)
    assert len(list((tmp_path / "cache" / "face").glob("teacher-logits-*.npy"))) == 3
    assert np.array_equal(first, got) and not np.allclose(second, first)
