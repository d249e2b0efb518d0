"""The device check: an FP16/INT8 artifact is compared with FP32 on this device before it is trusted."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import quant_toys

from edge.backends.ort import OnnxRuntimeRunner
from edge.card import ArtifactRecord, Model, load_card, save_card, sha256_file
from edge.config import DeviceConfig
from edge.export.calibrate import load_calibration_set, make_calibration_set
from edge.export.int8 import quantize_int8
from edge.export.quantize import quantize_model
from edge.pipeline import Pipeline
from edge.publish import Publisher
from edge.publish.schemas import validate
from edge.trust import (
    CheckedRunner,
    agreement_threshold,
    device_identity,
    load_verdict,
    verdict_dir,
)
from tests.mqtt_broker import Collector, Mosquitto


def open_ort(model: Model) -> OnnxRuntimeRunner:
    return OnnxRuntimeRunner(model.path, threads=1)


@pytest.fixture
def toy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """A toy model with a gated INT8 artifact, its calibration set, and a private verdict cache."""
    from edge import evaluation

    monkeypatch.setitem(evaluation.EVALUATORS, "toyconv", "quant_toys")
    folder = quant_toys.make_model_folder(tmp_path / "models")
    data = quant_toys.make_data(tmp_path / "data", folder / "model.onnx")
    calibration = tmp_path / "calibration"
    make_calibration_set(load_card(folder / "card.toml"), data, calibration / "toyconv", count=96, seed=0)
    monkeypatch.setenv("EMOEDGE_CALIBRATION", str(calibration))
    monkeypatch.setenv("EMOEDGE_CACHE", str(tmp_path / "cache"))
    assert quantize_model(folder, "int8", data_dir=data).gate.passed
    return {"folder": folder, "data": data, "calibration": calibration, "cache": tmp_path / "cache", "tmp": tmp_path}


def break_int8(toy: dict[str, Path]) -> None:
    """Put a broken INT8 file on the 'device' whose card record says it passed where it was made.

    Calibrated on data with huge outliers, its activation ranges lose all resolution (what a CPU whose
    INT8 kernels saturate does to a good file); the record's sha256 is updated to vouch for it."""
    folder = toy["folder"]
    polluted = quant_toys.make_data(toy["tmp"] / "polluted", folder / "model.onnx", outliers=200)
    bad_calib = toy["tmp"] / "bad-calibration"
    card = load_card(folder / "card.toml")
    make_calibration_set(card, polluted, bad_calib / "toyconv", count=96)
    batches = load_calibration_set(bad_calib / "toyconv", card).batches(32)
    quantize_int8(folder / "model.onnx", folder / "model.int8.onnx", batches)
    [record] = card.artifacts
    record.sha256 = sha256_file(folder / "model.int8.onnx")
    save_card(card, folder / "card.toml")


def test_a_good_int8_is_checked_once_on_calibration_samples_then_cached(toy: dict[str, Path]) -> None:
    with CheckedRunner(toy["folder"], "int8", open_ort) as runner:
        status = runner.status()
        assert runner.precision == "int8", status
        check = status["checks"]["int8"]
        assert check["passed"] and check["n"] == 96 and check["agreement"] >= check["threshold"]
        assert set(check["latency_ms"]) == {"fp32", "int8"} and check["data"].startswith("calibration samples")
    [cached] = list(verdict_dir().glob("toyconv-int8-*.json"))
    written = cached.read_text()
    with CheckedRunner(toy["folder"], "int8", open_ort) as again:
        assert again.precision == "int8"
    assert cached.read_text() == written  # reused, not measured again


def test_a_broken_int8_falls_back_to_fp32_and_says_why(toy: dict[str, Path]) -> None:
    break_int8(toy)
    with CheckedRunner(toy["folder"], "int8", open_ort) as runner:
        status = runner.status()
        x = np.zeros((2, 1, quant_toys.SIDE, quant_toys.SIDE), np.float32)
        fp32 = OnnxRuntimeRunner(toy["folder"] / "model.onnx", threads=1)
        with fp32:
            assert np.array_equal(runner.infer({"image": x})["logits"], fp32.infer({"image": x})["logits"])
    assert runner.precision == "fp32"
    check = status["checks"]["int8"]
    assert not check["passed"] and check["agreement"] < check["threshold"]
    assert status["reason"].startswith("fp32 (fallback): int8 failed (agreement")


def test_an_artifact_its_card_does_not_vouch_for_is_refused(toy: dict[str, Path]) -> None:
    card = load_card(toy["folder"] / "card.toml")
    card.artifacts[0].sha256 = "0" * 64  # the file on disk is not the one that passed the gate
    save_card(card, toy["folder"] / "card.toml")
    with CheckedRunner(toy["folder"], "int8", open_ort) as runner:
        assert runner.precision == "fp32"
        problem = runner.status()["problems"]["int8"]
    assert "never passed the accuracy gate" in problem and "emoedge quantize toyconv --precision int8" in problem


def test_a_corrupt_artifact_is_not_used(toy: dict[str, Path]) -> None:
    (toy["folder"] / "model.int8.onnx").write_bytes(b"\x08\x07garbage")
    with CheckedRunner(toy["folder"], "auto", open_ort) as runner:
        assert runner.precision == "fp32"
        assert "not a readable ONNX model" in runner.status()["problems"]["int8"]


def test_without_calibration_samples_the_first_live_windows_decide(toy: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMOEDGE_CALIBRATION", str(toy["tmp"] / "nothing-here"))
    x = np.load(toy["data"] / "validation.npz")["x"][:40]
    with CheckedRunner(toy["folder"], "int8", open_ort, live_windows=16) as runner:
        assert runner.precision == "fp32" and runner.status()["pending"] == ["int8"]
        for i in range(15):
            runner.infer({"image": x[i : i + 1]})
        assert runner.precision == "fp32"  # published from FP32 meanwhile
        runner.infer({"image": x[15:16]})
        assert runner.precision == "int8" and runner.status()["checks"]["int8"]["data"] == "live windows (shadow mode)"


def test_a_broken_int8_without_calibration_samples_never_serves(toy: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    break_int8(toy)
    monkeypatch.setenv("EMOEDGE_CALIBRATION", str(toy["tmp"] / "nothing-here"))
    live = np.load(toy["data"] / "validation.npz")["x"][:32]
    with CheckedRunner(toy["folder"], "int8", open_ort, live_windows=32) as runner:
        for i in range(32):
            runner.infer({"image": live[i : i + 1]})
        assert runner.precision == "fp32"
        assert not runner.status()["checks"]["int8"]["passed"]


def test_a_verdict_from_another_device_or_a_corrupt_one_is_not_trusted(toy: dict[str, Path]) -> None:
    with CheckedRunner(toy["folder"], "int8", open_ort):
        pass
    [path] = list(verdict_dir().glob("toyconv-int8-*.json"))
    here = device_identity("onnxruntime")
    sha = json.loads(path.read_text())["artifact_sha256"]
    assert load_verdict(path, sha, here) is not None
    other = dict(here, hardware="x86_64 Some CPU [avx2 fma]")
    assert load_verdict(path, sha, other) is None  # copied from a machine with other instruction sets
    path.write_text("{ not json")
    assert load_verdict(path, sha, here) is None


def test_auto_picks_the_fastest_precision_that_passed(toy: dict[str, Path]) -> None:
    from edge.export.quantize import quantize_model as q

    assert q(toy["folder"], "fp16", data_dir=toy["data"]).gate.passed
    with CheckedRunner(toy["folder"], "auto", open_ort) as runner:
        status = runner.status()
    passed = {p for p, c in status["checks"].items() if c["passed"]} | {"fp32"}
    timings = {p: t for p, t in status["latency_ms"].items() if p in passed}  # the figures auto ranked by
    assert set(status["checks"]) == {"fp16", "int8"} and "fp32" in timings
    fastest = min(timings, key=lambda p: timings[p])
    if status["active"] != "fp32":
        assert timings[status["active"]] <= timings["fp32"] * 0.95 and status["active"] == fastest
        assert "fastest at batch 1 here" in status["reason"]
    else:
        assert "no checked precision is faster here" in status["reason"]


def test_agreement_threshold_allows_sampling_noise_but_not_a_collapse() -> None:
    assert agreement_threshold(0.97, 200) == pytest.approx(0.97 - 3 * (0.97 * 0.03 / 200) ** 0.5)
    assert agreement_threshold(1.0, 200) == pytest.approx(0.98)  # at least two points
    assert agreement_threshold(0.97, 3589) > 0.94 > 0.52  # the AVX2 face failure is far below


def test_a_gate_sample_of_100_percent_allows_one_miss_in_32_but_not_three() -> None:
    """Speech FP16 on an AVX2 machine: the gate saw 100% on 266 windows; 31 of 32 live windows agreed (a near
    tie), which the old bar of 98% failed. The gate's own sample size now counts; a real collapse still fails."""
    bar = agreement_threshold(1.0, 32, gate_n=266)
    assert 30 / 32 < bar < 31 / 32
    assert agreement_threshold(1.0, 32) == pytest.approx(0.98)  # no gate sample given (an FP32 engine): as before
    assert agreement_threshold(0.97, 3589, gate_n=3589) == pytest.approx(0.95)  # the AVX2 INT8 collapse (0.52) fails
    assert agreement_threshold(1.0, 5000, gate_n=5000) == pytest.approx(0.98)  # large samples: the 2-point floor


def test_the_bridge_falls_back_to_fp32_and_says_why_in_stats_status_and_doctor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mosquitto: Mosquitto
) -> None:
    """What `emoedge run` does with a broken INT8 artifact on a device without calibration samples: estimates
    come from FP32 while the first live windows are compared; then stats, the retained status and doctor say
    that int8 failed here, with the numbers, and FP32 stays."""
    from tests.pipeline_helpers import ListSource, make_model

    monkeypatch.setenv("EMOEDGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("EMOEDGE_CALIBRATION", str(tmp_path / "no-calibration"))
    labels = ["low_valence", "high_valence", "neutral"]
    folder = make_model(tmp_path / "models", "eeg", 4 * 128, labels, "eeg", window_s=1.0, seed=1)
    rng = np.random.default_rng(0)
    outliers = [{"x": rng.normal(0, 1, (32, 512)).astype(np.float32) * 5000.0}]  # ranges far too wide
    quantize_int8(folder / "model.onnx", folder / "model.int8.onnx", outliers)
    card = load_card(folder / "card.toml")
    card.artifacts = [ArtifactRecord(
        precision="int8", file="model.int8.onnx", sha256=sha256_file(folder / "model.int8.onnx"), metric="accuracy",
        fp32=0.9, value=0.9, loss_points=0.0, top1_agreement=0.99, passed=True,
        command="made elsewhere (test)", measured_at="2026-01-01T00:00:00+00:00")]
    save_card(card, folder / "card.toml")
    cfg = DeviceConfig.model_validate({
        "device_id": "trustdev", "models": {"eeg": {"path": str(folder), "precision": "int8"}},
        "backend": {"threads": 1}, "mqtt": {"url": mosquitto.url, "outbox": {"path": str(tmp_path / "outbox.sqlite")}},
        "sources": [{"name": "eeg", "kind": "replay", "path": "x", "model": "eeg", "hop_s": 0.25}],
    })
    blocks = [rng.standard_normal((4, 16)).astype(np.float32) for _ in range(80)]  # 10 s at 128 Hz: 37 windows
    sub = Collector(mosquitto.port, "emoedge/trustdev/status")
    publisher = Publisher(cfg.mqtt, cfg.device_id, sources=["eeg"]).start()
    got = []
    pipe = Pipeline(cfg, publisher, sources={"eeg": ListSource("eeg", "eeg", blocks, 128.0)}, on_estimate=got.append)
    pipe.start()
    deadline = time.monotonic() + 60
    while len(got) < 37 and time.monotonic() < deadline:
        time.sleep(0.02)
    stats = pipe.stats()
    # the status that reports the failed check follows the check's last window: under load it can trail the
    # estimates, so wait for it (up to 10 s) rather than for a count of earlier statuses
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not any(
            "failed" in (body.get("models", {}).get("eeg") or {}) for body in sub.on("/status")):
        time.sleep(0.02)
    statuses = sub.on("/status")
    pipe.stop()
    publisher.stop()
    sub.close()
    assert len(got) == 37 and all(e.model.precision == "fp32" for e in got)
    entry = stats["sources"]["eeg"]
    check = entry["device_check"]
    assert entry["precision"] == "fp32" and check["requested"] == "int8" and check["active"] == "fp32"
    assert not check["checks"]["int8"]["passed"] and check["checks"]["int8"]["data"] == "live windows (shadow mode)"
    assert check["reason"].startswith("fp32 (fallback): int8 failed (agreement")
    # the retained status says so too, and follows its schema
    for body in statuses:
        validate("status", body)
    last = statuses[-1]["models"]["eeg"]
    assert last["active"] == "fp32" and last["failed"]["int8"]["agreement"] < last["failed"]["int8"]["threshold"]
    # and doctor, from the cached verdict of this device
    import json as jsonlib
    import subprocess
    import sys

    doctor = subprocess.run([sys.executable, "-m", "edge", "doctor", "--json", "--models", str(tmp_path / "models"),
                             "--mqtt", "mqtt://127.0.0.1:1"], capture_output=True, text=True, timeout=120)
    [report] = [m for m in jsonlib.loads(doctor.stdout)["models"] if m["name"] == "eeg"]
    assert report["precision"] == "fp32" and "int8 failed (agreement" in report["detail"], report
    assert "int8 not trusted here" in report["hint"]


def test_an_engine_checked_by_its_build_is_trusted_by_the_runtime(toy: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """TensorRT cannot run here: the engine is built by test_engine_cache's FakeTensorRTBuilder and run by a
    stand-in runner (ONNX Runtime on the engine file, reporting itself as tensorrt), and the probe answers as
    a Jetson's would. The build's comparison with FP32 is the engine's device check; the runtime reuses it."""
    from test_engine_cache import FakeTensorRTBuilder, ort_engine

    from edge.backends import probe
    from edge.backends.engine_cache import engine_cache_dir, find_engine
    from edge.export.build import build_engine

    class EngineStandIn(OnnxRuntimeRunner):
        backend = "tensorrt"

        def __init__(self, engine: Path) -> None:
            super().__init__(engine, threads=1)
            self.engine_path = engine

    monkeypatch.setattr(probe, "tensorrt_version", lambda: "10.3.0")
    monkeypatch.setattr(probe, "gpu_key", lambda: "Orin (nvgpu)")
    outcome = build_engine(toy["folder"], "int8", builder=FakeTensorRTBuilder(), open_engine=ort_engine,
                           trt_version="10.3.0", gpu="Orin (nvgpu)")
    assert outcome.gate is not None and outcome.gate.passed
    [recorded] = list(verdict_dir().glob("toyconv-int8@tensorrt-*.json"))

    def open_engine(model: Model) -> OnnxRuntimeRunner:
        engine = find_engine(engine_cache_dir(), model.name, model.sha256, "10.3.0", "Orin (nvgpu)", model.precision)
        return EngineStandIn(engine) if engine is not None else OnnxRuntimeRunner(model.path, threads=1)

    with CheckedRunner(toy["folder"], "int8", open_engine) as runner:
        status = runner.status()
    assert status["active"] == "int8" and status["backend"] == "tensorrt", status
    check = status["checks"]["int8@tensorrt"]
    assert check["passed"] and check["data"] == outcome.gate.data  # the build's own comparison, not a second one
    assert json.loads(recorded.read_text())["device"] == {"runtime": "tensorrt 10.3.0", "hardware": "Orin (nvgpu)"}


def test_eval_refuses_an_artifact_its_card_does_not_vouch_for(toy: dict[str, Path]) -> None:
    import subprocess
    import sys

    (toy["folder"] / "model.int8.onnx").write_bytes((toy["folder"] / "model.onnx").read_bytes())  # swapped file
    result = subprocess.run([sys.executable, "-m", "edge", "eval", str(toy["folder"]), "--data", str(toy["data"]),
                             "--precision", "int8"], capture_output=True, text=True, timeout=120,
                            cwd=Path(__file__).resolve().parent)
    assert result.returncode == 2, result.stderr
    assert "never passed the accuracy gate" in result.stderr and "Traceback" not in result.stderr
