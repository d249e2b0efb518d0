from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edge.backends import choose_backend, open_runner
from edge.backends.engine_cache import EngineKey, EngineManifest, find_engine
from edge.backends.ort import OnnxRuntimeRunner
from edge.card import load_model
from edge.errors import BackendUnavailable, InputError, ModelError


def test_ort_runner_computes_the_model(linear_model_folder: Path) -> None:
    from conftest import make_linear_onnx

    w = make_linear_onnx(linear_model_folder / "model.onnx")  # same seed: same weights
    x = np.random.default_rng(1).standard_normal((5, 4)).astype(np.float32)
    with OnnxRuntimeRunner(linear_model_folder / "model.onnx", threads=1) as runner:
        assert [m.name for m in runner.inputs] == ["x"]
        assert runner.inputs[0].shape == ("batch", 4)
        out = runner.infer({"x": x})
        assert runner.last_latency_ms is not None and runner.last_latency_ms > 0
        assert runner.active_providers == ["CPUExecutionProvider"]
    assert out["logits"].shape == (5, 3)
    bias = out["logits"] - x @ w
    np.testing.assert_allclose(bias, np.broadcast_to(bias[0], bias.shape), atol=1e-5)


@pytest.mark.parametrize(
    ("feed", "message"),
    [
        ({"y": np.zeros((1, 4), np.float32)}, r"missing input\(s\) \['x'\]; unknown input\(s\) \['y'\]"),
        ({"x": np.zeros((1, 5), np.float32)}, r"input 'x': expected shape \(\?, 4\), got \(1, 5\)"),
        ({"x": np.zeros((4,), np.float32)}, r"input 'x': expected shape \(\?, 4\), got \(4,\)"),
        ({"x": np.zeros((1, 4), np.float64)}, r"input 'x': expected dtype float32, got float64"),
    ],
)
def test_bad_feed_names_tensor_and_shapes(linear_model_folder: Path, feed: dict, message: str) -> None:
    with OnnxRuntimeRunner(linear_model_folder / "model.onnx") as runner:
        with pytest.raises(InputError, match=message):
            runner.infer(feed)


def test_runner_must_be_entered(linear_model_folder: Path) -> None:
    runner = OnnxRuntimeRunner(linear_model_folder / "model.onnx")
    with pytest.raises(RuntimeError, match="context manager"):
        runner.infer({"x": np.zeros((1, 4), np.float32)})


def test_missing_provider_is_clear(linear_model_folder: Path) -> None:
    with pytest.raises(BackendUnavailable, match="'cuda'.*not available here"):
        OnnxRuntimeRunner(linear_model_folder / "model.onnx", providers=("cuda",))


def test_corrupt_model_in_runner(tmp_path: Path) -> None:
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not onnx")
    with pytest.raises(ModelError, match="ONNX Runtime cannot load"):
        OnnxRuntimeRunner(bad).activate()


def test_auto_falls_back_to_onnxruntime_with_reason(linear_model_folder: Path) -> None:
    model = load_model(linear_model_folder)
    choice = choose_backend(model, "auto")
    assert choice.backend == "onnxruntime"  # no engine was built for this model, with or without TensorRT
    assert "TensorRT not used" in choice.reason or "engine" in choice.reason
    runner = open_runner(model)
    assert isinstance(runner, OnnxRuntimeRunner) and runner.reason == choice.reason


def test_explicit_tensorrt_without_it_says_how_to_get_it(linear_model_folder: Path) -> None:
    model = load_model(linear_model_folder)
    with pytest.raises(BackendUnavailable, match="backend tensorrt for toy: TensorRT does not import|only type stubs"):
        choose_backend(model, "tensorrt")


def test_tensorrt_runner_without_tensorrt_is_clear(tmp_path: Path) -> None:
    from edge.backends.tensorrt import TensorRTRunner

    with pytest.raises(BackendUnavailable, match="JetPack"):
        TensorRTRunner(tmp_path / "x.engine").activate()


def test_engine_cache_finds_only_matching_ok_engines(tmp_path: Path) -> None:
    key = EngineKey("face", "ab" * 32, "10.3.0", "Orin (nvgpu)", "int8", 1, 8, 8)
    assert key.engine_name.startswith("face-abababababababab-trt10.3.0-orin-nvgpu-int8-b1-8-8")
    (tmp_path / key.engine_name).write_bytes(b"engine")
    manifest = EngineManifest(key=key, onnx_file="model.int8.onnx", created_at="now")
    (tmp_path / key.manifest_name).write_text(manifest.to_json())
    assert find_engine(tmp_path, "face", "ab" * 32, "10.3.0", "Orin (nvgpu)", "int8") == tmp_path / key.engine_name
    assert find_engine(tmp_path, "face", "cd" * 32, "10.3.0", "Orin (nvgpu)", "int8") is None
    assert find_engine(tmp_path, "face", "ab" * 32, "11.0.0", "Orin (nvgpu)", "int8") is None
    manifest.status = "rejected"
    (tmp_path / key.manifest_name).write_text(manifest.to_json())
    assert find_engine(tmp_path, "face", "ab" * 32, "10.3.0", "Orin (nvgpu)", "int8") is None
    assert json.loads(manifest.to_json())["key"]["gpu"] == "Orin (nvgpu)"
