"""The committed artifacts agree with their cards: every FP16/INT8 file has a passing gate record with its
sha256, every passing record has its file, INT8 files keep TensorRT's rules, calibration manifests remake their samples."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edge.card import artifact_name, list_models, load_card, sha256_file
from edge.export.calibrate import make_calibration_set
from edge.export.int8 import inspect_qdq

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = list_models(ROOT / "models")


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda p: p.name)
def test_artifacts_match_their_gate_records(folder: Path) -> None:
    card = load_card(folder / "card.toml")
    passed = {a.precision: a for a in card.artifacts if a.passed}
    assert len({a.precision for a in card.artifacts}) == len(card.artifacts), "one record per precision"
    for precision in ("fp16", "int8"):
        path = folder / artifact_name(card.graph, precision)
        if path.exists():
            assert precision in passed, f"{path} has no passing gate record in the card"
            assert sha256_file(path) == passed[precision].sha256, f"{path} is not the file its gate record measured"
            assert passed[precision].loss_points <= card.quantization.max_loss_points + 1e-9
            assert passed[precision].source_sha256 == sha256_file(folder / artifact_name(card.graph, "fp32")), (
                f"{path} was made from another model.onnx: remake it with {passed[precision].command}"
            )
        else:
            assert precision not in passed, f"the card records a passing {precision} artifact but {path.name} is missing"


@pytest.mark.parametrize("folder", [f for f in FOLDERS if (f / "model.int8.onnx").exists()], ids=lambda p: p.name)
def test_committed_int8_keeps_tensorrt_rules(folder: Path) -> None:
    proto = onnx.load(str(folder / "model.int8.onnx"))
    summary = inspect_qdq(proto)
    assert summary.quantized_ops and not summary.nonzero_zero_points and not summary.per_tensor_weights
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) <= 20
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2:
            assert np.all(inits[node.input[2]] == 0)


CALIBRATED = [f for f in FOLDERS if (ROOT / "calibration" / f.name / "manifest.json").is_file()]


@pytest.mark.parametrize("folder", CALIBRATED, ids=lambda p: p.name)
def test_calibration_manifest_describes_a_small_training_set(folder: Path) -> None:
    manifest = json.loads((ROOT / "calibration" / folder.name / "manifest.json").read_text())
    card = load_card(folder / "card.toml")
    assert manifest["model"] == card.name and manifest["split"] == "train" and manifest["count"] > 0
    assert sorted(manifest["inputs"]) == sorted(t.name for t in card.inputs)
    assert manifest["samples_bytes"] < 5 * (1 << 20)
    assert manifest["command"].startswith(f"emoedge calibrate {card.name} --data $EMOEDGE_DATA/")


@pytest.mark.data
@pytest.mark.slow
@pytest.mark.parametrize("folder", CALIBRATED, ids=lambda p: p.name)
def test_calibration_set_is_remade_byte_for_byte_from_the_data(folder: Path, data_dir: Path, tmp_path: Path) -> None:
    """The samples are not committed (data terms); the manifest's recipe must remake exactly them."""
    manifest = json.loads((ROOT / "calibration" / folder.name / "manifest.json").read_text())
    card = load_card(folder / "card.toml")
    words = shlex.split(manifest["command"].replace("$EMOEDGE_DATA", str(data_dir)))
    options = dict(zip(words[3::2], words[4::2], strict=True))
    calib = make_calibration_set(card, options["--data"], tmp_path / card.name, count=int(options.get("--count", 200)),
                                 seed=int(options.get("--seed", 0)), split=options.get("--split", "train"))
    assert calib.manifest["samples_sha256"] == manifest["samples_sha256"]
    assert calib.manifest["per_class"] == manifest["per_class"]
