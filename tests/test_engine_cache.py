"""Engine building around TensorRT: naming, manifests, reuse, staleness, corruption, the gate, locking.

TensorRT cannot be installed on this machine, so its builder is replaced by ``FakeTensorRTBuilder``
(a stand-in named as such): its "engine" is the ONNX artifact's own bytes, and the "engine runner"
is ONNX Runtime on that file. Everything else (the cache, the manifest, the lock, the staleness
decisions, the gate against ONNX Runtime FP32) is the real code. The TensorRT calls themselves are
type-checked against tensorrt-stubs in tests/test_typecheck.py.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
import quant_toys
from onnx import numpy_helper

from edge.backends.engine_cache import EngineKey, EngineManifest, find_engine, staleness_reasons
from edge.backends.ort import OnnxRuntimeRunner
from edge.backends.probe import tensorrt_version
from edge.card import load_card, load_model
from edge.errors import BackendUnavailable
from edge.export.build import build_engine
from edge.export.calibrate import make_calibration_set
from edge.export.engine import BuildRequest
from edge.export.quantize import quantize_model

ROOT = Path(__file__).resolve().parent.parent


class FakeTensorRTBuilder:
    """Stands in for TensorRT's builder (not installable here): the engine is the ONNX file's bytes,
    or, with ``perturb``, the bytes of a model whose output layer was scrambled (a broken build)."""

    def __init__(self, perturb: bool = False) -> None:
        self.requests: list[BuildRequest] = []
        self.perturb = perturb

    def __call__(self, request: BuildRequest) -> tuple[bytes, dict]:
        self.requests.append(request)
        if request.timing_cache is not None:
            request.timing_cache.write_bytes(request.timing_cache.read_bytes() + b"t" if request.timing_cache.exists() else b"t")
        if not self.perturb:
            return request.onnx_path.read_bytes(), {"network": "fake", "precision": request.precision}
        proto = onnx.load(str(request.onnx_path))
        for init in proto.graph.initializer:
            if init.name.startswith("bf") or init.name.startswith("wf"):
                array = numpy_helper.to_array(init)
                if array.dtype.kind == "f":
                    shuffled = np.random.default_rng(0).permutation(array.reshape(-1)).reshape(array.shape)
                    init.CopyFrom(numpy_helper.from_array(shuffled[::-1].copy(), init.name))
        return proto.SerializeToString(), {"network": "fake-broken"}


def ort_engine(path: Path) -> OnnxRuntimeRunner:
    return OnnxRuntimeRunner(path)


@pytest.fixture
def toy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    from edge import evaluation

    monkeypatch.setitem(evaluation.EVALUATORS, "toyconv", "quant_toys")
    models = tmp_path / "models"
    folder = quant_toys.make_model_folder(models)
    data = quant_toys.make_data(tmp_path / "data", folder / "model.onnx", n_train=200, n_val=100)
    calibration = tmp_path / "calibration"
    make_calibration_set(load_card(folder / "card.toml"), data, calibration / "toyconv", count=64)
    monkeypatch.setenv("EMOEDGE_CALIBRATION", str(calibration))
    cache = tmp_path / "cache"
    monkeypatch.setenv("EMOEDGE_CACHE", str(cache))
    return {"models": models, "folder": folder, "data": data, "calibration": calibration, "cache": cache,
            "engines": cache / "engines"}


def build(toy: dict[str, Path], builder: FakeTensorRTBuilder, precision: str = "fp32", trt: str = "10.3.0",
          gpu: str = "Orin (nvgpu)", **kw):
    return build_engine(toy["folder"], precision, builder=builder, open_engine=ort_engine, trt_version=trt, gpu=gpu, **kw)


def test_engine_names_say_what_they_were_built_for() -> None:
    key = EngineKey("face", "ab" * 32, "10.3.0", "Orin (nvgpu)", "int8", 1, 4, 8, dla_core=0)
    assert key.engine_name == f"face-{'ab' * 8}-trt10.3.0-orin-nvgpu-int8-b1-4-8-dla0.engine"
    assert key.manifest_name.endswith("-int8-b1-4-8-dla0.json") and key.lock_name.endswith(".lock")


def test_staleness_reasons_name_each_change() -> None:
    old = EngineKey("face", "a" * 64, "10.3.0", "Orin", "fp16", 1, 8, 8)
    assert staleness_reasons(old, old) == []
    new = EngineKey("face", "b" * 64, "10.4.0", "Thor", "fp16", 1, 8, 8)
    assert staleness_reasons(old, new) == [
        "model file changed (sha256 aaaaaaaaaaaa -> bbbbbbbbbbbb)",
        "TensorRT version changed (10.3.0 -> 10.4.0)",
        "GPU changed (Orin -> Thor)",
    ]


def test_build_writes_engine_and_manifest_then_reuses_it(toy: dict[str, Path]) -> None:
    builder = FakeTensorRTBuilder()
    first = build(toy, builder, max_batch=4)
    assert first.status == "built" and first.engine.is_file()
    manifest = json.loads(first.engine.with_suffix(".json").read_text())
    model = load_model(toy["folder"])
    assert manifest["key"]["model_sha256"] == model.sha256 and manifest["status"] == "ok"
    assert manifest["key"]["max_batch"] == 4 and manifest["onnx_file"] == "model.onnx"
    assert manifest["gate"]["passed"] is True and manifest["gate"]["top1_agreement"] == 1.0
    assert manifest["gate"]["n"] == 64 and manifest["engine_sha256"]
    request = builder.requests[0]
    assert (request.min_batch, request.opt_batch, request.max_batch) == (1, 4, 4)
    assert request.timing_cache == toy["engines"] / "timing-trt10.3.0-orin-nvgpu.cache"
    again = build(toy, builder, max_batch=4)
    assert again.status == "cached" and len(builder.requests) == 1
    assert find_engine(toy["engines"], "toyconv", model.sha256, "10.3.0", "Orin (nvgpu)", "fp32") == first.engine
    # the timing cache is kept and handed to the next build (here: a forced one)
    assert build(toy, builder, max_batch=4, force=True).status == "built"
    assert builder.requests[-1].timing_cache.read_bytes() == b"tt"


def test_each_precision_builds_from_its_own_artifact_and_is_found_by_it(toy: dict[str, Path]) -> None:
    quantize_model(toy["folder"], "int8", data_dir=toy["data"])
    builder = FakeTensorRTBuilder()
    outcome = build(toy, builder, precision="int8")
    assert builder.requests[0].onnx_path.name == "model.int8.onnx" and builder.requests[0].precision == "int8"
    int8 = load_model(toy["folder"], "int8")
    assert outcome.manifest.key.model_sha256 == int8.sha256
    # what the runtime looks up for that precision (edge.backends.choose_backend does this call)
    assert find_engine(toy["engines"], "toyconv", int8.sha256, "10.3.0", "Orin (nvgpu)", "int8") == outcome.engine
    assert find_engine(toy["engines"], "toyconv", int8.sha256, "10.3.0", "Orin (nvgpu)", "fp16") is None
    # INT8 is measured against FP32, relative to what the INT8 artifact itself does on ONNX Runtime
    assert outcome.gate is not None and outcome.gate.metric == "top1_agreement_with_fp32"
    assert outcome.gate.loss_points == pytest.approx(0.0)


@pytest.mark.parametrize(
    ("change", "reason"),
    [({"trt": "10.4.0"}, "TensorRT version changed (10.3.0 -> 10.4.0)"),
     ({"gpu": "Thor"}, "GPU changed (Orin (nvgpu) -> Thor)")],
)
def test_stale_engine_is_rebuilt_with_a_log_line_saying_why(
    toy: dict[str, Path], caplog: pytest.LogCaptureFixture, change: dict, reason: str
) -> None:
    builder = FakeTensorRTBuilder()
    old = build(toy, builder)
    with caplog.at_level(logging.WARNING):
        new = build(toy, builder, **change)
    assert new.status == "built" and reason in new.reasons
    assert any(reason in r.message and "stale" in r.message for r in caplog.records)
    assert not old.engine.exists() and not old.engine.with_suffix(".json").exists()
    assert len(list(toy["engines"].glob("*.engine"))) == 1


def test_changed_model_file_makes_the_engine_stale(toy: dict[str, Path], caplog: pytest.LogCaptureFixture) -> None:
    builder = FakeTensorRTBuilder()
    build(toy, builder)
    quant_toys.make_conv_onnx(toy["folder"] / "model.onnx", seed=1)  # retrained: new weights, same card
    with caplog.at_level(logging.WARNING):
        new = build(toy, builder)
    assert new.status == "built" and any(r.startswith("model file changed (sha256") for r in new.reasons)
    assert "model file changed" in caplog.text


def test_corrupt_engine_is_not_used_and_is_rebuilt(toy: dict[str, Path], caplog: pytest.LogCaptureFixture) -> None:
    builder = FakeTensorRTBuilder()
    first = build(toy, builder)
    first.engine.write_bytes(first.engine.read_bytes()[:100])  # truncated copy
    sha = load_model(toy["folder"]).sha256
    with caplog.at_level(logging.WARNING):
        assert find_engine(toy["engines"], "toyconv", sha, "10.3.0", "Orin (nvgpu)", "fp32") is None
    assert "corrupt (sha256 does not match its manifest)" in caplog.text
    again = build(toy, builder)
    assert again.status == "built" and "corrupt" in again.reasons[0] and len(builder.requests) == 2


def test_engine_that_disagrees_with_fp32_is_set_aside(toy: dict[str, Path]) -> None:
    good = build(toy, FakeTensorRTBuilder(), max_batch=2)
    outcome = build(toy, FakeTensorRTBuilder(perturb=True), max_batch=2, force=True)
    assert outcome.status == "rejected" and outcome.gate is not None and not outcome.gate.passed
    assert outcome.engine.parent.name == "rejected" and outcome.engine.is_file()
    manifest = EngineManifest.from_json(outcome.engine.with_suffix(".json").read_text())
    assert manifest.status == "rejected" and manifest.gate["passed"] is False
    assert not good.engine.exists()  # the forced rebuild replaced it, and the replacement failed
    sha = load_model(toy["folder"]).sha256
    assert find_engine(toy["engines"], "toyconv", sha, "10.3.0", "Orin (nvgpu)", "fp32") is None


def test_build_without_tensorrt_says_what_is_missing(toy: dict[str, Path]) -> None:
    if tensorrt_version() is not None:
        pytest.skip("TensorRT is installed here: the message for its absence cannot be seen")
    result = subprocess.run(
        [sys.executable, "-m", "edge", "build", str(toy["folder"]), "--precision", "int8"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )
    assert result.returncode == BackendUnavailable.exit_code
    assert "TensorRT is not available" in result.stderr
    assert "JetPack" in result.stderr and "emoedge[trt]" in result.stderr


def test_manifest_from_a_newer_emoedge_still_reads() -> None:
    key = EngineKey("m", "a" * 64, "10.3", "g", "fp32")
    data = json.loads(EngineManifest(key=key, onnx_file="model.onnx", created_at="now").to_json())
    data["added_later"] = 1
    assert EngineManifest.from_json(json.dumps(data)).key == key


SCRIPT = textwrap.dedent("""
    import logging, sys, time
    from pathlib import Path
    sys.path[:0] = [{root!r}, {tests!r}]
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    from edge.backends.ort import OnnxRuntimeRunner
    from edge.export.build import build_engine

    def slow_builder(request):
        with open({counter!r}, "a") as f:
            f.write("build\\n")
        time.sleep(2.0)
        return request.onnx_path.read_bytes(), {{}}

    outcome = build_engine({folder!r}, "fp32", builder=slow_builder, open_engine=OnnxRuntimeRunner,
                           trt_version="10.3.0", gpu="Orin")
    print(outcome.status)
""")


def test_two_processes_never_build_the_same_engine_at_once(toy: dict[str, Path], tmp_path: Path) -> None:
    counter = tmp_path / "builds.txt"
    script = tmp_path / "build_once.py"
    script.write_text(SCRIPT.format(root=str(ROOT), tests=str(ROOT / "tests"), counter=str(counter),
                                    folder=str(toy["folder"])))
    env = dict(os.environ)
    procs = [subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for _ in range(2)]
    results = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), results
    assert counter.read_text().count("build") == 1
    assert sorted(out.strip() for out, _ in results) == ["built", "cached"]
    assert any("another process is building" in err for _, err in results)


def test_runtime_picks_the_engine_of_the_asked_precision(toy: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """choose_backend on a machine that has TensorRT and a GPU (both stood in for: neither exists here)."""
    from edge.backends import choose_backend, probe

    quantize_model(toy["folder"], "int8", data_dir=toy["data"])
    built = build(toy, FakeTensorRTBuilder(), precision="int8", gpu="Orin")
    real_import_status = probe.import_status
    monkeypatch.setattr(probe, "import_status", lambda m: ("10.3.0", None) if m == "tensorrt" else real_import_status(m))
    monkeypatch.setattr(probe, "cuda_gpus", lambda: [probe.GpuInfo("Orin", "8.7", 7000)])
    choice = choose_backend(load_model(toy["folder"], "int8"), "auto")
    assert choice.backend == "tensorrt" and choice.engine == built.engine
    fp32 = choose_backend(load_model(toy["folder"], "fp32"), "auto")
    assert fp32.backend == "onnxruntime" and "no fp32 engine for toyconv" in fp32.reason
    monkeypatch.setattr(probe, "cuda_gpus", lambda: [probe.GpuInfo("Thor", "11.0", 100000)])
    other = choose_backend(load_model(toy["folder"], "int8"), "auto")
    assert other.backend == "onnxruntime" and "cached ones do not fit: GPU changed (Orin -> Thor)" in other.reason
    with pytest.raises(BackendUnavailable, match="GPU changed"):
        choose_backend(load_model(toy["folder"], "int8"), "tensorrt")


def test_dla_needs_fp16_or_int8(toy: dict[str, Path]) -> None:
    from edge.errors import ModelError

    with pytest.raises(ModelError, match="DLA core runs FP16 or INT8 only"):
        build(toy, FakeTensorRTBuilder(), precision="fp32", dla_core=0)
    outcome = build(toy, FakeTensorRTBuilder(), precision="fp32", max_batch=2)
    assert "-dla" not in outcome.engine.name


def test_lock_held_elsewhere_times_out_with_a_clear_message(toy: dict[str, Path]) -> None:
    from filelock import FileLock

    from edge.backends.engine_cache import engine_lock
    from edge.errors import ModelError

    model = load_model(toy["folder"])
    key = EngineKey("toyconv", model.sha256, "10.3.0", "Orin (nvgpu)", "fp32", 1, 8, 8)
    holder = engine_lock(toy["engines"], key)
    assert isinstance(holder, FileLock)
    script = (f"from filelock import FileLock; import time; l = FileLock({str(toy['engines'] / key.lock_name)!r}); "
              "l.acquire(); print('held', flush=True); time.sleep(30)")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        with pytest.raises(ModelError, match=r"gave up after 1 s waiting for the build of .* by another process \(lock file"):
            build(toy, FakeTensorRTBuilder(), lock_timeout=1.0)
    finally:
        proc.kill()
        proc.wait()


def test_engine_the_runner_cannot_load_leaves_nothing_behind(toy: dict[str, Path]) -> None:
    """A build whose output does not deserialize (here: garbage bytes) fails with the runner's message."""
    from edge.errors import ModelError

    def garbage(request: BuildRequest) -> tuple[bytes, dict]:
        return b"\x00not an engine", {}

    with pytest.raises(ModelError, match="ONNX Runtime cannot load"):
        build_engine(toy["folder"], "fp32", builder=garbage, open_engine=ort_engine, trt_version="10.3.0", gpu="Orin")
    assert not list(toy["engines"].glob("*.engine")) and not list(toy["engines"].glob("*.json"))
