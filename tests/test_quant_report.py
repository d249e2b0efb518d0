"""The INT8/FP16/FP32 report script runs end to end on a small real model (speed itself is not asserted)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import quant_toys

from edge.card import load_card
from edge.export.calibrate import make_calibration_set
from edge.export.quantize import quantize_model

ROOT = Path(__file__).resolve().parent.parent


def _script():
    spec = importlib.util.spec_from_file_location("quant_report", ROOT / "tools" / "quant_report.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_report_has_every_precision_with_ratios_and_accuracy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    from edge import evaluation

    monkeypatch.setitem(evaluation.EVALUATORS, "toyconv", "quant_toys")
    folder = quant_toys.make_model_folder(tmp_path / "models")
    data = quant_toys.make_data(tmp_path / "data", folder / "model.onnx", n_train=120, n_val=60)
    monkeypatch.setenv("EMOEDGE_CALIBRATION", str(tmp_path / "calibration"))
    make_calibration_set(load_card(folder / "card.toml"), data, tmp_path / "calibration" / "toyconv", count=40)
    for precision in ("fp16", "int8"):
        assert quantize_model(folder, precision, data_dir=data).gate.passed
    out = tmp_path / "rows.json"
    assert _script().main([str(folder), "--data", f"toyconv={data}", "--iterations", "16", "--rounds", "2",
                           "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [r["precision"] for r in rows] == ["fp32", "fp16", "int8"]
    assert rows[0]["speedup_vs_fp32"] == 1.0
    for r in rows:
        assert r["p99_ms"] >= r["p50_ms"] > 0 and r["throughput_b32"] > 0 and r["size_kb"] > 0
        assert r["metric"] == "accuracy" and r["source"] == "measured, n=60" and 0 < r["value"] <= 1
    table = capsys.readouterr().out
    assert table.startswith("| model | precision |") and table.count("| toyconv |") == 3
    # without data, accuracy comes from the gate's records in the card
    assert _script().main([str(folder), "--iterations", "8", "--rounds", "1", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert {r["source"] for r in rows} == {"card"}
