"""A tiny end-to-end face training run (3 steps, distilled from the converted teacher) makes a loadable model."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("h5py")

ROOT = Path(__file__).resolve().parent.parent


def _small_copy(source: Path, target: Path, per_class: int) -> None:
    """A few images per class of each split, copied into a temporary folder (never into the repo)."""
    for split in ("train", "validation"):
        for folder in sorted((source / split).iterdir()):
            (target / split / folder.name).mkdir(parents=True)
            for image in sorted(folder.iterdir())[:per_class]:
                shutil.copy(image, target / split / folder.name / image.name)


@pytest.mark.data
@pytest.mark.slow
def test_tiny_distilled_training_run(data_dir: Path, tmp_path: Path) -> None:
    from edge.backends.ort import OnnxRuntimeRunner
    from edge.card import load_model

    _small_copy(data_dir / "fer2013", tmp_path / "fer", per_class=6)
    teacher = data_dir / "teachers" / "fer_mini_xception" / "fer2013_mini_XCEPTION.102-0.66.hdf5"
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "edge", "train", "face", "--data", str(tmp_path / "fer"), "--out", str(out),
         "--teacher", str(teacher), "--max-steps", "3", "--batch-size", "8", "--threads", "1", "--seed", "7"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "teacher: fer2013_mini_XCEPTION.102-0.66.hdf5" in done.stdout
    assert "epoch 1" in done.stdout
    assert "it/s" in done.stderr or "s/it" in done.stderr  # the progress bar
    model = load_model(out)
    assert model.card.parameters <= 60_000 and model.card.training.teacher
    assert model.card.name == "out"  # a student's card is named after its folder
    assert "--max-steps 3" in (model.card.training.command or "")
    with OnnxRuntimeRunner(model.path) as runner:
        result = runner.infer({"face": np.zeros((2, 1, 48, 48), np.float32)})
    assert result["logits"].shape == (2, 7)


def test_class_weights_lift_the_rare_class() -> None:
    from edge.zoo.face import class_weights

    y = np.repeat(np.arange(7), [400, 40, 400, 700, 500, 480, 310])
    w = class_weights(y, power=0.5).numpy()
    assert w[1] > 3 * w[3]  # disgust weighs more than happy
    assert w[y].mean() == pytest.approx(1.0, abs=1e-5)
    assert np.allclose(class_weights(y, power=0.0).numpy(), 1.0)


def test_augment_is_seeded_and_keeps_the_range() -> None:
    import torch

    from edge.zoo.face import augment

    x = torch.rand(4, 1, 48, 48) * 2 - 1
    flip = torch.tensor([True, False, True, False])
    a = augment(x, torch.Generator().manual_seed(1), flip)
    b = augment(x, torch.Generator().manual_seed(1), flip)
    assert torch.equal(a, b) and a.shape == x.shape
    assert a.min() >= -1 and a.max() <= 1 and not torch.equal(a, x)


def test_mirror_average_is_flip_invariant_and_keeps_the_head_linear() -> None:
    import torch

    from edge.zoo.face import FaceStudent, MirrorAverage

    torch.manual_seed(0)
    student = FaceStudent().eval()
    shipped = MirrorAverage(student).eval()
    x = torch.randn(3, 1, 48, 48)
    with torch.no_grad():
        logits, embedding = shipped(x)
        mirrored, _ = shipped(torch.flip(x, dims=[3]))
        _, plain = student(x)
        _, flipped = student(torch.flip(x, dims=[3]))
    assert torch.allclose(logits, mirrored, atol=1e-5)
    assert torch.allclose(embedding, (plain + flipped) / 2, atol=1e-5)
    assert torch.allclose(logits, student.head(embedding), atol=1e-5)


@pytest.mark.data
@pytest.mark.slow
def test_tiny_teacher_then_student_distilled_from_it(data_dir: Path, tmp_path: Path) -> None:
    """`train face-teacher` makes a model folder that `train face --teacher FOLDER` distils from; --set reaches the recipe."""
    from edge.card import load_model

    _small_copy(data_dir / "fer2013", tmp_path / "fer", per_class=4)
    common = ["--data", str(tmp_path / "fer"), "--max-steps", "2", "--batch-size", "8", "--threads", "1", "--no-progress"]
    teacher = tmp_path / "teacher"
    done = subprocess.run([sys.executable, "-m", "edge", "train", "face-teacher", "--out", str(teacher), *common],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert load_model(teacher).card.name == "face-teacher" and load_model(teacher).card.parameters > 1_000_000
    student = tmp_path / "student"
    done = subprocess.run([sys.executable, "-m", "edge", "train", "face", "--out", str(student), "--teacher", str(teacher),
                           "--set", "alpha=0.9", "--set", "mirror_average=true", *common],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    card = load_model(student).card
    assert card.training.teacher == teacher.resolve().as_posix()
    assert "alpha 0.9" in card.notes and "mirror image" in card.notes and "Trained on cpu" in card.notes
    consistent = tmp_path / "consistent"
    done = subprocess.run([sys.executable, "-m", "edge", "train", "face", "--out", str(consistent), "--teacher", str(teacher),
                           "--set", "teacher_views=2", "--set", "init=none", *common],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "over 2 view(s) of each image" in done.stdout
    assert "2 augmented views of each training image" in load_model(consistent).card.notes
    bad = subprocess.run([sys.executable, "-m", "edge", "train", "face", "--out", str(student), "--set", "alpha=high",
                          *common], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert bad.returncode != 0 and "alpha takes a float, not 'high'" in bad.stderr


def test_weight_average_follows_the_weights_and_copies_counters() -> None:
    import torch
    from torch import nn

    from edge.zoo.face_fit import WeightAverage

    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    average = WeightAverage(model, decay=0.5)
    start = model[0].weight.detach().clone()
    for _ in range(50):  # past the ramp, the average keeps half of itself per step
        with torch.no_grad():
            model[0].weight.add_(1.0)
        model.train()(torch.randn(4, 1, 8, 8))
        average.update(model)
    gap = (model[0].weight - average.model[0].weight).detach()
    assert torch.allclose(gap, torch.ones_like(gap), atol=1e-4)  # a constant drift of 1 per step, decay 0.5: lags by 1
    assert not torch.equal(average.model[0].weight, start)
    assert int(average.model[1].num_batches_tracked) == int(model[1].num_batches_tracked) == 50
    assert not average.model[0].weight.requires_grad


def test_augment_strength_zero_leaves_only_the_flip() -> None:
    import torch

    from edge.zoo.face import augment

    x = torch.rand(4, 1, 48, 48) * 2 - 1
    flip = torch.tensor([False, True, False, True])
    out = augment(x, torch.Generator().manual_seed(3), flip, strength=0.0)
    expected = torch.where(flip.view(4, 1, 1, 1), x.flip(-1), x)
    assert torch.allclose(out, expected, atol=1e-5)
    gentle = augment(x, torch.Generator().manual_seed(3), flip, strength=0.3)
    full = augment(x, torch.Generator().manual_seed(3), flip)
    assert (gentle - expected).abs().mean() < (full - expected).abs().mean()


def test_augmented_views_are_repeatable_and_differ_from_each_other() -> None:
    """Consistent distillation caches the teachers' logits on the views, so a seed must give the same pixels."""
    import torch

    from edge.zoo.face_data import augmented_views
    from edge.zoo.face_fit import fit

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (20, 48, 48), dtype=np.uint8)
    views = augmented_views(images, 3, seed=5)
    assert views.shape == (3, 20, 48, 48) and views.dtype == np.uint8
    assert np.array_equal(views, augmented_views(images, 3, seed=5))
    assert not np.array_equal(views[0], views[1]) and not np.array_equal(views[0], images)
    with pytest.raises(ValueError, match="teacher logits of the same views"):
        fit(torch.nn.Identity(), images, np.zeros(20, np.int64), images, np.zeros(20, np.int64),
            np.zeros((2, 20, 7), np.float32), {"epochs": 1, "batch_size": 8, "lr": 1e-3}, torch.Generator(),
            views=views)
