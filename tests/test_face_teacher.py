"""tools/convert_mini_xception.py: the Keras mini-Xception teacher, rebuilt in ONNX without TensorFlow."""

from __future__ import annotations

import importlib.util
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
pytest.importorskip("h5py")


def _tool():
    spec = importlib.util.spec_from_file_location("convert_mini_xception", ROOT / "tools" / "convert_mini_xception.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from edge.paths import data_dir

    h5 = data_dir() / "teachers" / "fer_mini_xception" / "fer2013_mini_XCEPTION.102-0.66.hdf5"
    if not h5.exists():
        pytest.skip(f"{h5} not found: set EMOEDGE_DATA to the shared data folder")
    out = tmp_path_factory.mktemp("teacher") / "nested" / "mini_xception.onnx"
    assert _tool().convert(h5, out) == out
    return h5, out


@pytest.mark.data
def test_conversion_keeps_the_keras_architecture(converted: tuple[Path, Path]) -> None:
    import onnx

    tool = _tool()
    h5, path = converted
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert tool.onnx_parameter_count(path) == tool.hdf5_weight_count(h5) == 58423
    ops = Counter(node.op_type for node in model.graph.node)
    # 7 Conv2D + 8 SeparableConv2D (depthwise + pointwise each), 14 BN, 4 residual blocks with max-pool
    assert ops["Conv"] == 7 + 2 * 8 and ops["BatchNormalization"] == 14
    assert ops["MaxPool"] == 4 and ops["Add"] == 4 and ops["Relu"] == 6
    depthwise = [n for n in model.graph.node if n.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in n.attribute)]
    assert len(depthwise) == 8
    assert [o.name for o in model.graph.output] == ["logits", "probabilities"]


@pytest.mark.data
def test_teacher_predicts_real_faces(converted: tuple[Path, Path], data_dir: Path) -> None:
    import onnxruntime as ort

    from edge.evaluation.face import list_images, read_images, stratified_slice

    tool = _tool()
    _, path = converted
    folder = data_dir / "fer2013" / "validation"
    paths, targets, _ = list_images(folder, tool.FER2013_KERAS_LABELS)
    keep = stratified_slice(np.asarray(targets), 140, seed=0)
    images = read_images([paths[i] for i in keep])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = tool.preprocess(images)
    assert x.shape == (140, 1, 64, 64) and x.min() >= -1.0 and x.max() <= 1.0
    logits, probabilities = session.run(["logits", "probabilities"], {"image": x})
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    accuracy = float((logits.argmax(axis=1) == np.asarray(targets)[keep]).mean())
    assert accuracy > 0.45, f"converted teacher: accuracy {accuracy:.3f} on 140 validation faces (chance 0.14)"


def test_convert_rejects_a_file_that_is_not_hdf5(tmp_path: Path) -> None:
    bad = tmp_path / "model.hdf5"
    bad.write_bytes(b"not hdf5")
    tool = _tool()
    with pytest.raises(tool.ConversionError, match="model.hdf5"):
        tool.convert(bad, tmp_path / "out.onnx")
