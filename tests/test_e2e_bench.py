"""The end-to-end latency bench runs (pytest-benchmark records its numbers; no timing is asserted here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.bench.e2e import format_result, measure_e2e
from edge.paths import models_dir
from tests.pipeline_helpers import RAVDESS, make_model


def models_for_bench(tmp_path: Path) -> tuple[str, bool]:
    """The shipped models when they are all there; else small linear ONNX models with identity features (no faces)."""
    shipped = models_dir()
    if all((shipped / m / "card.toml").exists() for m in ("eeg", "speech", "face")):
        return str(shipped), True
    root = tmp_path / "models"
    make_model(root, "eeg", 32 * 256, ["low_valence", "high_valence"], "eeg")
    make_model(root, "speech", 8000, RAVDESS, "speech", window_s=0.5)
    return str(root), False


def test_e2e_latency_bench(benchmark: pytest.FixtureRequest, tmp_path: Path) -> None:
    models, faces = models_for_bench(tmp_path)
    result = benchmark.pedantic(measure_e2e, kwargs={"duration": 3.0, "models": models, "faces": faces, "warmup": 1.0},
                                rounds=1, iterations=1)
    print(format_result(result))
    benchmark.extra_info.update(result)
    for name in ("eeg", "mic"):
        entry = result["sources"][name]
        assert entry["estimates"] > 0 and entry["lost"] == 0, entry
    if faces:
        assert result["sources"]["camera"]["frames_in_fps"] > 20
