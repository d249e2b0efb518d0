"""The end-to-end latency bench runs (pytest-benchmark records its numbers; no timing is asserted here)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from edge.bench.e2e import measure_e2e
from edge.bench.e2e_report import E2E_SCHEMA, compare_e2e, format_result, load_e2e
from edge.bench.environment import usable_cores
from edge.errors import EmoEdgeError
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
    # the one-pass face model where it ships (the CPU-speed issue's model; --face-model on the command line)
    face_model = "face_fast" if (Path(models) / "face_fast" / "card.toml").exists() else "face"
    result = benchmark.pedantic(measure_e2e, kwargs={"duration": 3.0, "models": models, "faces": faces, "warmup": 1.0,
                                                     "face_model": face_model}, rounds=1, iterations=1)
    print(format_result(result))
    benchmark.extra_info.update(result)
    for name in ("eeg", "mic"):
        entry = result["sources"][name]
        assert entry["estimates"] > 0 and entry["lost"] == 0, entry
        assert entry["model"] == {"eeg": "eeg", "mic": "speech"}[name]
        stages = entry["stages"]
        assert {"queue", "features", "inference", "publish", "outbox", "network"} <= set(stages), stages
        # publish is the rest of the path after the hand-off: outbox and network together
        assert stages["publish"]["p50_ms"] >= 0 and stages["network"]["p50_ms"] >= 0
    assert "per stage" in format_result(result)
    assert result["cpus"] == usable_cores() and result["cpus_total"] == os.cpu_count()
    if faces:
        assert result["sources"]["camera"]["frames_in_fps"] > 20
        assert result["sources"]["camera"]["model"] == face_model and result["sources"]["camera"]["estimates"] > 0


def test_the_header_names_the_cpus_the_run_could_use() -> None:
    """Under taskset the machine's CPU count would mislead: a run pinned to one core says '1 of 2 CPUs'."""
    base = {"duration_s": 20.0, "broker": "mosquitto", "video": "v", "load_avg_1m": 0.5, "sources": {}}
    assert "load 0.5 on 1 of 2 CPUs" in format_result({**base, "cpus": 1, "cpus_total": 2})
    assert "load 0.5 on 2 CPUs" in format_result({**base, "cpus": 2, "cpus_total": 2})
    assert "load 0.5 on 4 CPUs" in format_result({**base, "cpus": 4})  # an e2e.json from before cpus_total


def _result(total: float, inference: float) -> dict:
    return {"schema": E2E_SCHEMA, "environment": {"cpu": "x"}, "sources": {"eeg": {
        "p50_ms": total, "p99_ms": total * 2, "stages": {"inference": {"p50_ms": inference, "p99_ms": inference * 2}}}}}


def test_compare_names_the_stage_that_regressed() -> None:
    text, worse = compare_e2e(_result(10.0, 4.0), _result(6.0, 0.5))
    assert "| eeg | inference | 0.50 | 4.00 | 8.00x ! |" in text
    assert any(w.startswith("eeg inference p50") for w in worse) and any(w.startswith("eeg total p99") for w in worse)
    # a stage of microseconds that doubles is noise, not a regression (under the 1 ms floor)
    _, worse = compare_e2e(_result(6.0, 0.02), _result(6.0, 0.01))
    assert worse == []


def test_a_baseline_that_is_not_an_e2e_result_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bench.json"
    bad.write_text(json.dumps({"schema": "emoedge-bench/1", "rows": []}))
    with pytest.raises(EmoEdgeError, match="not an emoedge e2e result"):
        load_e2e(bad)
    good = tmp_path / "e2e.json"
    good.write_text(json.dumps(_result(1.0, 0.5)))
    assert load_e2e(good)["sources"]["eeg"]["p50_ms"] == 1.0
