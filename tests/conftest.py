"""Shared fixtures: small real ONNX models built with onnx.helper, and model folders with cards."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def make_linear_onnx(path: Path, n_in: int = 4, n_out: int = 3, seed: int = 0, input_name: str = "x") -> np.ndarray:
    """A real ONNX model: logits = x @ W + b, with a dynamic batch dimension. Returns W."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = rng.standard_normal((n_in, n_out)).astype(np.float32)
    b = rng.standard_normal(n_out).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", [input_name, "W", "B"], ["logits"])],
        "linear",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", n_in])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", n_out])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return w


CARD_TEMPLATE = """\
name = "{name}"
version = "0.0.1"
modality = "eeg"
labels = ["a", "b", "c"]
parameters = 15

[[inputs]]
name = "x"
shape = ["batch", 4]
dtype = "float32"
layout = "NC"

[[outputs]]
name = "logits"
shape = ["batch", 3]
dtype = "float32"
meaning = "logits over labels"

[features]
recipe = "identity"

[training]
data = "random weights made in the test"
terms = "none"
"""


@pytest.fixture
def linear_model_folder(tmp_path: Path) -> Path:
    """models/<toy>/ with model.onnx and a card that matches it."""
    folder = tmp_path / "models" / "toy"
    folder.mkdir(parents=True)
    make_linear_onnx(folder / "model.onnx")
    (folder / "card.toml").write_text(CARD_TEMPLATE.format(name="toy"))
    return folder


@pytest.fixture
def data_dir() -> Path:
    """The research data folder, or skip with a message saying how to provide it."""
    from edge.paths import data_dir as find

    path = find()
    if not path.is_dir():
        pytest.skip(f"research data not found at {path}: set EMOEDGE_DATA to the shared data folder")
    return path


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never write into the user's cache (or a read-only checkout) from a test."""
    if "EMOEDGE_CACHE" not in os.environ:
        monkeypatch.setenv("EMOEDGE_CACHE", str(tmp_path_factory.mktemp("cache")))


# A real Mosquitto broker for the MQTT tests (session-scoped; see tests/mqtt_broker.py).
from tests.mqtt_broker import mosquitto  # noqa: E402,F401
