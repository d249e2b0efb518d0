"""A runtime fault stays where it happened (issue 12, "A runtime fault ends the run"; issue 17, "A fault stays").

The fault injector is data: a real ONNX model whose Gather index comes from the input's maximum, so
a window with a value >= 1 makes ONNX Runtime itself raise inside ``session.run`` (index out of
range). One source gets such windows for a while; the other source keeps publishing to a real
Mosquitto, the faulty windows are skipped and counted in ``stats``, the source is reported as
failing and then recovers, and the run ends on time with exit status 0.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from edge.backends.ort import OnnxRuntimeRunner
from edge.config import DeviceConfig
from edge.errors import InferenceError
from edge.verbs.run import serve
from tests.mqtt_broker import Collector, Mosquitto
from tests.pipeline_helpers import RAVDESS, ListSource, make_model

N_IN = 1600  # 0.1 s of 16 kHz audio, identity features


def make_faulty_model(folder: Path) -> None:
    """models/<name>/ whose model raises in ONNX Runtime for any input value >= 1 (see the module doc)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    make_model(folder.parent, folder.name, N_IN, RAVDESS, "speech", window_s=0.1)
    rng = np.random.default_rng(1)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "W", "B"], ["dense"]),
         helper.make_node("ReduceMax", ["x"], ["peak"], axes=[1], keepdims=0),
         helper.make_node("Floor", ["peak"], ["floor"]),
         helper.make_node("Cast", ["floor"], ["index"], to=TensorProto.INT64),
         helper.make_node("Gather", ["table", "index"], ["offset"], axis=0),  # table has one row: index 1 is out of range
         helper.make_node("Add", ["dense", "offset"], ["logits"])],
        "faulty",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", N_IN])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", len(RAVDESS)])],
        [numpy_helper.from_array(rng.standard_normal((N_IN, len(RAVDESS))).astype(np.float32) * 0.01, "W"),
         numpy_helper.from_array(np.zeros(len(RAVDESS), np.float32), "B"),
         numpy_helper.from_array(np.zeros((1, len(RAVDESS)), np.float32), "table")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(folder / "model.onnx"))


def poisoned_blocks(n: int, poisoned: range) -> list[np.ndarray]:
    """Fault injector: blocks in ``poisoned`` carry a value of 5.0, which makes the model's Gather raise in ORT."""
    rng = np.random.default_rng(2)
    blocks = [rng.uniform(0, 0.9, N_IN).astype(np.float32) for _ in range(n)]
    for i in poisoned:
        blocks[i][100] = 5.0
    return blocks


def test_an_onnx_runtime_fault_is_an_inference_error(tmp_path: Path) -> None:
    make_faulty_model(tmp_path / "faulty")
    with OnnxRuntimeRunner(tmp_path / "faulty" / "model.onnx", threads=1) as runner:
        ok = runner.infer({"x": poisoned_blocks(1, range(0))[0][None]})
        assert ok["logits"].shape == (1, len(RAVDESS))
        with pytest.raises(InferenceError, match="ONNX Runtime failed on this batch"):
            runner.infer({"x": poisoned_blocks(1, range(1))[0][None]})


def test_a_runtime_fault_in_one_source_does_not_stop_the_others(mosquitto: Mosquitto, tmp_path: Path) -> None:
    models = tmp_path / "models"
    make_faulty_model(models / "faulty")
    cfg = DeviceConfig.model_validate({
        "device_id": "faultdev",
        "mqtt": {"url": mosquitto.url, "outbox": {"path": str(tmp_path / "o.sqlite")}, "stats_interval_s": 0.25},
        "models": {"faulty": {"path": str(models / "faulty"), "max_batch": 1}}, "backend": {"threads": 1},
        "sources": [{"name": name, "kind": "replay", "path": "x", "model": "faulty", "hop_s": 0.1} for name in ("good", "sick")],
    })
    sources = {"good": ListSource("good", "audio", poisoned_blocks(60, range(0)), 16000.0, interval=0.05),
               "sick": ListSource("sick", "audio", poisoned_blocks(60, range(0, 30)), 16000.0, interval=0.05)}
    sub = Collector(mosquitto.port, "emoedge/faultdev/#")
    start = time.monotonic()
    assert serve(cfg, duration=3.6, plain=True, extra_sources=sources) == 0
    assert 3.6 <= time.monotonic() - start < 10  # ran its whole duration: the faults did not stop it
    time.sleep(0.3)
    sub.close()
    good = sub.on("/good/estimate")
    assert len(good) >= 50, len(good)  # (nearly) every window of the good source, while the other one failed
    with sub.lock:
        times = [t for topic, _, _, t in sub.messages if topic.endswith("/good/estimate")]
    assert max(b - a for a, b in zip(times, times[1:], strict=False)) < 1.0
    sick = sub.on("/sick/estimate")
    assert len(sick) >= 20, len(sick)  # it recovered: every next window was tried again
    stats = [s["sources"]["sick"] for s in sub.on("/stats")]
    assert any(s["failing"] and "ONNX Runtime failed" in s["last_error"] for s in stats)
    assert stats[-1]["errors"] == 30 and stats[-1]["failing"] is False
    assert all(s["sources"]["good"]["errors"] == 0 for s in sub.on("/stats"))
