"""Shared training utilities: the distillation loss, seeding, ONNX export with its ORT-vs-torch check, cards."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from edge.card import load_card  # noqa: E402
from edge.zoo.common import (  # noqa: E402
    count_parameters,
    distillation_loss,
    export_onnx,
    progress,
    recipe_overrides,
    save_cache,
    seed_everything,
    write_card,
)


def test_without_teacher_the_loss_is_cross_entropy() -> None:
    logits, labels = torch.randn(8, 5), torch.randint(0, 5, (8,))
    expected = F.cross_entropy(logits, labels)
    assert torch.allclose(distillation_loss(logits, labels), expected)
    assert torch.allclose(distillation_loss(logits, labels, torch.randn(8, 5), alpha=0.0), expected)


def test_soft_term_is_kl_times_t_squared() -> None:
    torch.manual_seed(0)
    s, t, y = torch.randn(16, 7), torch.randn(16, 7), torch.randint(0, 7, (16,))
    temperature = 3.0
    p_t = F.softmax(t / temperature, dim=1)
    kl = (p_t * (p_t.log() - F.log_softmax(s / temperature, dim=1))).sum(1).mean()
    got = distillation_loss(s, y, t, temperature=temperature, alpha=1.0)
    assert torch.allclose(got, kl * temperature**2, atol=1e-5)
    mixed = distillation_loss(s, y, t, temperature=temperature, alpha=0.25)
    assert torch.allclose(mixed, 0.25 * kl * temperature**2 + 0.75 * F.cross_entropy(s, y), atol=1e-5)
    # the student matching the teacher has no soft loss
    assert distillation_loss(t, y, t, temperature=temperature, alpha=1.0).abs() < 1e-6


def test_seeding_makes_runs_repeat() -> None:
    g1 = seed_everything(3)
    a = torch.randn(4), torch.rand(3, generator=g1), np.random.rand(2)
    g2 = seed_everything(3)
    b = torch.randn(4), torch.rand(3, generator=g2), np.random.rand(2)
    assert all(np.allclose(np.asarray(x), np.asarray(y)) for x, y in zip(a, b, strict=True))


def test_progress_can_be_switched_off() -> None:
    items = [1, 2, 3]
    assert progress(items, enabled=False) is items
    assert list(progress(items, enabled=True, disable=True)) == items


class _TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.body(x).mean(dim=(2, 3))
        return self.head(emb), emb


def test_export_onnx_checks_and_matches_torch_with_a_dynamic_batch(tmp_path: Path) -> None:
    import onnxruntime as ort

    torch.manual_seed(0)
    model = _TwoHeads()
    assert count_parameters(model) == 4 * 9 + 4 + 8 + 4 * 3 + 3
    diffs = export_onnx(model, torch.randn(2, 1, 8, 8), tmp_path / "m.onnx", "x", ["logits", "embedding"])
    assert set(diffs) == {"logits", "embedding"} and max(diffs.values()) < 1e-4
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(5, 1, 8, 8)
    logits, emb = session.run(["logits", "embedding"], {"x": x.numpy()})
    assert logits.shape == (5, 3) and emb.shape == (5, 4)
    np.testing.assert_allclose(logits, model(x)[0].detach().numpy(), atol=1e-4)


def test_write_card_validates(tmp_path: Path) -> None:
    card = {
        "name": "tiny", "version": "0.1.0", "modality": "face", "labels": ["a", "b", "c"],
        "inputs": [{"name": "x", "shape": ["batch", 1, 8, 8]}],
        "outputs": [{"name": "logits", "shape": ["batch", 3]}],
        "features": {"recipe": "identity"}, "parameters": 71,
        "training": {"data": "none", "terms": "none"},
    }
    path = write_card(card, tmp_path)
    assert load_card(path).parameters == 71
    with pytest.raises(Exception, match="modality"):
        write_card(card | {"modality": "smell"}, tmp_path)


def test_recipe_overrides_take_the_defaults_types() -> None:
    recipe = {"alpha": 0.5, "epochs": 60, "mirror_average": True, "widths": (16, 32)}
    got = recipe_overrides(["alpha=0.9", "epochs=3", "mirror-average=false", "widths=24,48,96"], recipe)
    assert got == {"alpha": 0.9, "epochs": 3, "mirror_average": False, "widths": (24, 48, 96)}
    assert recipe_overrides([], recipe) == {}


@pytest.mark.parametrize("item, message", [
    ("gamma=1", "KEY one of alpha, epochs, mirror_average, widths"),
    ("alpha", "expected KEY=VALUE"),
    ("epochs=ten", "epochs takes a int, not 'ten'"),
    ("mirror_average=maybe", "mirror_average takes a bool"),
    ("widths=16,x", "widths takes a tuple"),
])
def test_recipe_overrides_name_what_is_wrong(item: str, message: str) -> None:
    from edge.errors import ConfigError

    recipe = {"alpha": 0.5, "epochs": 60, "mirror_average": True, "widths": (16, 32)}
    with pytest.raises(ConfigError, match=message):
        recipe_overrides([item], recipe)


def test_cache_files_are_written_whole_by_concurrent_writers_and_not_at_all_on_failure(tmp_path: Path) -> None:
    import threading

    one = tmp_path / "one.npy"
    save_cache(one, np.arange(5.0))
    assert np.array_equal(np.load(one), np.arange(5.0))
    many = tmp_path / "many.npz"
    arrays = [{"x": np.full((200, 200), k, np.float32), "y": np.array([k])} for k in range(8)]
    errors: list[BaseException] = []

    def write(k: int) -> None:
        try:
            for _ in range(5):
                save_cache(many, arrays[k])
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []  # a shared NAME.tmp.npz made a second writer's rename fail
    with np.load(many) as z:  # one writer's file, whole: x and y agree
        k = int(z["y"][0])
        assert np.array_equal(z["x"], arrays[k]["x"])

    class Unsavable:
        def __array__(self, *args: object, **kwargs: object) -> np.ndarray:
            raise RuntimeError("no array here")

    with pytest.raises(RuntimeError, match="no array here"):
        save_cache(tmp_path / "bad.npz", {"x": np.zeros(3), "bad": Unsavable()})  # type: ignore[dict-item]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["many.npz", "one.npy"]  # no torn file, no temporary left
