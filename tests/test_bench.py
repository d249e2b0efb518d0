"""emoedge bench on a small real conv net with real FP32, FP16 and INT8 (QDQ) ONNX files."""

from __future__ import annotations

import copy
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge.backends.probe import tensorrt_version
from edge.bench import report
from edge.bench.harness import BenchOptions, run_bench, targets_from_models

ROOT = Path(__file__).resolve().parent.parent

CONV_CARD = """\
name = "{name}"
version = "0.0.1"
modality = "eeg"
status = "{status}"
labels = ["a", "b", "c"]
parameters = {parameters}

[[inputs]]
name = "x"
shape = ["batch", 1, 16, 16]
dtype = "float32"
layout = "NCHW"

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


def make_conv_onnx(folder: Path, seed: int = 0, precisions: tuple[str, ...] = ("fp32", "fp16", "int8")) -> int:
    """Conv(8, 3x3) -> Relu -> GlobalAveragePool -> Flatten -> Gemm(3), as FP32, FP16 (casts at the edges,
    FP16 weights) and INT8 QDQ (quantized input and weights). Returns the parameter count."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    conv_w = rng.standard_normal((8, 1, 3, 3)).astype(np.float32) * 0.5
    conv_b = rng.standard_normal(8).astype(np.float32) * 0.1
    fc_w = rng.standard_normal((8, 3)).astype(np.float32)
    fc_b = rng.standard_normal(3).astype(np.float32) * 0.1
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, 16, 16])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])
    body = [
        helper.make_node("Conv", ["xin", "conv_w", "conv_b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["out"]),
    ]

    def save(nodes: list, inits: list, name: str) -> None:
        graph = helper.make_graph(nodes, "conv", [x], [y], inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        onnx.checker.check_model(model)
        onnx.save(model, str(folder / name))

    weights = {"conv_w": conv_w, "conv_b": conv_b, "fc_w": fc_w, "fc_b": fc_b}
    if "fp32" in precisions:
        save([helper.make_node("Identity", ["x"], ["xin"]), *body, helper.make_node("Identity", ["out"], ["logits"])],
             [numpy_helper.from_array(v, k) for k, v in weights.items()], "model.onnx")
    if "fp16" in precisions:
        save([helper.make_node("Cast", ["x"], ["xin"], to=TensorProto.FLOAT16), *body,
              helper.make_node("Cast", ["out"], ["logits"], to=TensorProto.FLOAT)],
             [numpy_helper.from_array(v.astype(np.float16), k) for k, v in weights.items()], "model.fp16.onnx")
    if "int8" in precisions:
        w_scale = np.float32(np.abs(conv_w).max() / 64)  # 7-bit weights, as edge/export/int8.py makes them
        inits = [
            numpy_helper.from_array(np.round(conv_w / w_scale).astype(np.int8), "conv_w_q"),
            numpy_helper.from_array(np.array(w_scale, np.float32), "w_scale"),
            numpy_helper.from_array(np.array(0, np.int8), "zero"),
            numpy_helper.from_array(np.array(1 / 127, np.float32), "x_scale"),
            numpy_helper.from_array(conv_b, "conv_b"), numpy_helper.from_array(fc_w, "fc_w"),
            numpy_helper.from_array(fc_b, "fc_b"),
        ]
        save([helper.make_node("QuantizeLinear", ["x", "x_scale", "zero"], ["xq"]),
              helper.make_node("DequantizeLinear", ["xq", "x_scale", "zero"], ["xin"]),
              helper.make_node("DequantizeLinear", ["conv_w_q", "w_scale", "zero"], ["conv_w"]),
              *body, helper.make_node("Identity", ["out"], ["logits"])], inits, "model.int8.onnx")
    return int(sum(v.size for v in weights.values()))


def conv_folder(models: Path, name: str = "conv", status: str = "trained", **kw) -> Path:
    folder = models / name
    folder.mkdir(parents=True)
    params = make_conv_onnx(folder, **kw)
    (folder / "card.toml").write_text(CONV_CARD.format(name=name, status=status, parameters=params))
    return folder


def emoedge(*args: str, cwd: Path = ROOT, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """The CLI in a subprocess; ``timeout`` only guards against a hang (a slow machine is not a failure)."""
    return subprocess.run([sys.executable, "-m", "edge", *args], capture_output=True, text=True, timeout=timeout, cwd=cwd)


QUICK = ["--iterations", "20", "--warmup", "2", "--batch", "1,4", "--no-data", "--threads", "1", "--seconds", "0.05"]


@pytest.fixture
def models(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    conv_folder(root)
    return root


def test_bench_cli_writes_table_json_csv_and_plots(models: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = emoedge("bench", "--models", str(models), "--out", str(out), *QUICK)
    assert result.returncode == 0, result.stderr
    data = json.loads((out / "bench.json").read_text())
    rows = {r["precision"]: r for r in data["rows"]}
    assert set(rows) == {"fp32", "fp16", "int8"} and all(r["status"] == "ok" for r in rows.values())
    for r in rows.values():
        lat = r["latency_ms"]
        assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"] and lat["n"] == 20
        assert len(r["latencies_ms"]) == 20
        assert set(r["throughput"]) == {"1", "4"} and r["best_throughput"] == max(r["throughput"].values())
        assert r["load_ms"] > 0 and r["peak_rss_mib"] >= 0 and r["parameters"] == 8 * 9 + 8 + 24 + 3
        assert r["file_mib"] * (1 << 20) == Path(r["file"]).stat().st_size
        assert "accuracy" not in r
    # The FP32 row agrees with itself; FP16 of this net keeps its top-1 on nearly every random input.
    assert rows["fp32"]["agreement_top1"] == 1.0
    assert rows["fp16"]["agreement_top1"] >= 0.95
    # INT8 (7-bit weights: the same answers on every CPU) keeps most top-1 predictions of this net
    assert rows["int8"]["agreement_top1"] >= 0.9 and rows["int8"]["agreement_on"] == "256 random inputs"
    assert data["environment"]["cpu_cores"] >= 1 and data["environment"]["libraries"]["onnxruntime"]
    assert data["options"]["iterations"] == 20
    # The terminal table is the Markdown file.
    assert "| model | backend | precision | status |" in result.stdout
    assert (out / "bench.md").read_text().strip() == result.stdout.strip()
    with (out / "bench.csv").open() as fh:
        lines = list(csv.DictReader(fh))
    assert [ln["precision"] for ln in lines] == ["fp32", "fp16", "int8"]
    assert float(lines[0]["latency_p50_ms"]) == pytest.approx(rows["fp32"]["latency_ms"]["p50"])
    for png in ("latency.png", "throughput.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unavailable_combinations_are_rows_with_reasons(tmp_path: Path) -> None:
    models = tmp_path / "models"
    conv_folder(models, "only-fp32", precisions=("fp32",))
    conv_folder(models, "untrained", status="untrained", precisions=())
    out = tmp_path / "out"
    result = emoedge("bench", "--models", str(models), "--out", str(out), "--backends", "onnxruntime,tensorrt",
                     "--precisions", "fp32,int8", "--no-plots", *QUICK)
    assert result.returncode == 0, result.stderr
    rows = {(r["model"], r["backend"], r["precision"]): r for r in json.loads((out / "bench.json").read_text())["rows"]}
    assert len(rows) == 8
    assert rows[("only-fp32", "onnxruntime", "fp32")]["status"] == "ok"
    assert rows[("only-fp32", "onnxruntime", "int8")]["status"] == "unavailable"
    assert "no int8 artifact" in rows[("only-fp32", "onnxruntime", "int8")]["reason"]
    trt = rows[("only-fp32", "tensorrt", "fp32")]
    if tensorrt_version() is None:  # no TensorRT on this machine: said, not a crash
        assert trt["status"] == "unavailable" and "TensorRT" in trt["reason"]
    else:  # a Jetson: TensorRT runs the row, or says why not (no engine built for it yet)
        assert trt["status"] == "ok" or "engine" in trt["reason"].lower(), trt
    assert "status = untrained" in rows[("untrained", "onnxruntime", "fp32")]["reason"]
    assert "no int8 artifact for model 'only-fp32'" in result.stdout  # reasons listed under the table


def test_accuracy_on_validation_data_and_agreement(models: Path) -> None:
    """Labels are the FP32 model's own top-1 (from a plain ORT session): FP32 scores 100%, INT8 its agreement."""
    import onnxruntime as ort

    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, (64, 1, 16, 16)).astype(np.float32)
    session = ort.InferenceSession(str(models / "conv" / "model.onnx"), providers=["CPUExecutionProvider"])
    labels = session.run(None, {"x": x})[0].argmax(axis=1)
    from edge.evaluation import LabelledSet
    from edge.evaluation.metrics import classification_metrics

    def evaluate(runner, data):  # type: ignore[no-untyped-def]
        pred = runner.infer(data.inputs)["logits"].argmax(axis=1)
        return classification_metrics(data.labels, pred, ["a", "b", "c"])

    target = targets_from_models([], str(models))[0]
    target.load_validation = lambda options: LabelledSet(inputs={"x": x}, labels=labels, description="made in the test")
    target.evaluate = evaluate
    options = BenchOptions(batches=[1, 2], warmup=1, iterations=5, threads=1, throughput_seconds=0.05)
    result = run_bench([target], options, progress=lambda _: None)
    rows = {r["precision"]: r for r in result["rows"]}
    assert rows["fp32"]["accuracy"] == 1.0 and rows["fp32"]["accuracy_n"] == 64
    assert rows["int8"]["accuracy"] == pytest.approx(rows["int8"]["agreement_top1"])
    assert rows["fp32"]["inputs"] == "validation samples" and rows["fp32"]["agreement_on"] == "64 validation samples"
    table = report.markdown(result)
    assert "accuracy on 64 samples of made in the test" in table and "100.0%" in table


def test_compare_reports_ratios_and_regressions(models: Path) -> None:
    target = targets_from_models(["conv"], str(models))[0]
    result = run_bench([target], BenchOptions(precisions=["fp32"], batches=[1], warmup=1, iterations=5, threads=1, throughput_seconds=0.05),
                       progress=lambda _: None)
    baseline = copy.deepcopy(result)
    row = baseline["rows"][0]
    for k in ("p50", "p90", "p99"):
        row["latency_ms"][k] /= 2  # the baseline was twice as fast
    text, worse = report.compare(result, baseline)
    assert "| conv | onnxruntime | fp32 | 2.00x ! | 2.00x ! | 2.00x ! | 1.00x |" in text
    assert len(worse) == 3 and all("latency" in w for w in worse)
    text, worse = report.compare(result, result)
    assert worse == [] and "1.00x" in text and "!" not in text.split("\n")[2]


def test_compare_cli_fails_on_regression_and_rejects_non_bench_json(models: Path, tmp_path: Path) -> None:
    out = tmp_path / "a"
    assert emoedge("bench", "conv", "--models", str(models), "--out", str(out), "--precisions", "fp32", "--no-plots",
                   *QUICK).returncode == 0
    baseline = json.loads((out / "bench.json").read_text())
    for r in baseline["rows"]:
        r["best_throughput"] *= 100  # a baseline 100x faster than anything here
    (tmp_path / "fast.json").write_text(json.dumps(baseline))
    result = emoedge("bench", "conv", "--models", str(models), "--out", str(tmp_path / "b"), "--precisions", "fp32",
                     "--no-plots", "--compare", str(tmp_path / "fast.json"), "--fail-on-regression", *QUICK)
    assert result.returncode == 1, result.stderr
    assert "best_throughput" in result.stderr and "Compared with" in result.stdout
    (tmp_path / "other.json").write_text('{"rows": []}')
    result = emoedge("bench", "conv", "--models", str(models), "--out", str(tmp_path / "c"), "--no-plots",
                     "--compare", str(tmp_path / "other.json"), *QUICK)
    assert result.returncode == 2 and "not an emoedge bench result" in result.stderr


def test_bad_arguments_are_one_clear_line(models: Path, tmp_path: Path) -> None:
    result = emoedge("bench", "nope", "--models", str(models), "--out", str(tmp_path))
    assert result.returncode == 2 and "no model folder 'nope'" in result.stderr and "conv" in result.stderr
    result = emoedge("bench", "--batch", "0,8", "--models", str(models))
    assert result.returncode == 2 and "batch sizes must be 1 or more" in result.stderr
    result = emoedge("bench", "--backends", "cuda", "--models", str(models))
    assert result.returncode == 2 and "unknown cuda" in result.stderr


def test_e2e_mode_dispatches_or_says_it_is_absent() -> None:
    import importlib.util

    for argv in (["bench", "e2e", "--help"], ["bench", "e2e", "--", "--help"]):
        result = emoedge(*argv)
        if importlib.util.find_spec("edge.bench.e2e") is None:
            assert result.returncode == 2 and "end-to-end benchmark" in result.stderr and "not in this install" in result.stderr
        else:  # its own options reach it, with or without "--"
            assert result.returncode == 0 and "--duration" in result.stdout, result.stderr


def test_fixed_batch_and_dynamic_dims(tmp_path: Path) -> None:
    """A model with a fixed batch of 1 skips larger batches; a dynamic non-batch dim without data is an error row."""
    import onnx
    from onnx import TensorProto, helper

    from tests.conftest import make_linear_onnx

    folder = tmp_path / "models" / "fixed"
    folder.mkdir(parents=True)
    make_linear_onnx(folder / "model.onnx")
    proto = onnx.load(str(folder / "model.onnx"))
    for value in (*proto.graph.input, *proto.graph.output):
        value.type.tensor_type.shape.dim[0].dim_value = 1
    onnx.save(proto, str(folder / "model.onnx"))
    card = (ROOT / "tests" / "conftest.py").read_text().split('CARD_TEMPLATE = """\\\n')[1].split('"""')[0]
    (folder / "card.toml").write_text(card.format(name="fixed").replace('["batch", 4]', "[1, 4]").replace('["batch", 3]', "[1, 3]"))

    dyn = tmp_path / "models" / "dyn"
    dyn.mkdir()
    graph = helper.make_graph([helper.make_node("ReduceMean", ["x"], ["logits"], axes=[2], keepdims=0)], "dyn",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, "time"])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(dyn / "model.onnx"))
    (dyn / "card.toml").write_text(card.format(name="dyn").replace('["batch", 4]', '["batch", 3, "time"]').replace("parameters = 15", "parameters = 0"))

    targets = targets_from_models([], str(tmp_path / "models"))
    result = run_bench(targets, BenchOptions(precisions=["fp32"], batches=[1, 8], warmup=1, iterations=3, threads=1, throughput_seconds=0.05),
                       progress=lambda _: None)
    rows = {r["model"]: r for r in result["rows"]}
    assert rows["fixed"]["status"] == "ok", rows["fixed"]["reason"]
    assert set(rows["fixed"]["throughput"]) == {"1"}
    assert "fixed batch of 1" in rows["fixed"]["reason"]
    assert rows["dyn"]["status"] == "error" and "dynamic dimension 'time'" in rows["dyn"]["reason"]
    assert "--data" in rows["dyn"]["reason"]


def test_peak_memory_is_measured_in_a_fresh_process(models: Path) -> None:
    """The probe sees ONNX Runtime's native buffers: batch 4096 of this conv net needs its 32 MiB activation."""
    from edge.bench.memory import METHOD, measure_in_child

    path = models / "conv" / "model.onnx"
    small = measure_in_child(path, "onnxruntime", [1], threads=1)
    large = measure_in_child(path, "onnxruntime", [1, 4096], threads=1)
    assert small["method"] == METHOD and small["peak_mib"] >= 0
    assert large["peak_mib"] - small["peak_mib"] >= 25  # 4096 x 8 x 16 x 16 float32 = 32 MiB
    missing = measure_in_child(models / "conv" / "nope.onnx", "onnxruntime", [1])
    assert missing["peak_mib"] is None and "nope.onnx" in missing["error"]


def test_peer_reads_fer2013_validation_in_its_own_format(data_dir: Path) -> None:
    """The peer's inputs: 64x64x1 in [-1, 1], labels in face_classification's FER2013 order."""
    from edge.bench.peer import PEER_LABELS, load_fer_validation, peer_target

    assert sorted(PEER_LABELS) == sorted(p.name for p in (data_dir / "fer2013" / "validation").iterdir())
    data = load_fer_validation(data_dir / "fer2013" / "validation", limit=40, seed=0)
    images = data.extra["images"]
    assert images.shape == (40, 64, 64) and images.min() >= -1 and images.max() <= 1 and images.std() > 0.1
    assert data.labels.min() >= 0 and data.labels.max() < 7
    again = load_fer_validation(data_dir / "fer2013" / "validation", limit=40, seed=0)
    assert np.array_equal(again.extra["images"], images)  # the slice is seeded
    target, why = peer_target(data_dir)
    if target is None:
        assert why.startswith("face peer skipped: ")
    else:
        assert target.peer and target.card.parameters > 10_000


@pytest.mark.data
@pytest.mark.slow
def test_bench_every_shipped_model_with_its_validation_data(data_dir: Path, tmp_path: Path) -> None:
    """The shipped models: each trained one gets an FP32 row with accuracy on its own data set; untrained ones
    and absent artifacts are rows with reasons; the face peer sits beside the face model."""
    from edge.card import list_models, load_card

    shipped = [load_card(f / "card.toml") for f in list_models(ROOT / "models")] if (ROOT / "models").is_dir() else []
    if not shipped:
        pytest.skip("no shipped models in models/")
    out = tmp_path / "out"
    result = emoedge("bench", "--data", str(data_dir), "--limit", "60", "--iterations", "10", "--warmup", "1",
                     "--batch", "1,8", "--seconds", "0.05", "--threads", "1", "--no-plots", "--out", str(out),
                     timeout=900)  # every shipped model, the scene model's explanations included
    assert result.returncode == 0, result.stderr
    rows = json.loads((out / "bench.json").read_text())["rows"]
    for card in shipped:
        fp32 = next(r for r in rows if r["model"] == card.name and r["precision"] == "fp32")
        if card.status == "untrained":
            assert fp32["status"] == "unavailable" and "no trained weights" in fp32["reason"]
            continue
        assert fp32["status"] == "ok", fp32["reason"]
        assert fp32["accuracy"] is not None and 0 < fp32["accuracy"] <= 1 and fp32["agreement_top1"] == 1.0
        for precision in ("fp16", "int8"):
            row = next(r for r in rows if r["model"] == card.name and r["precision"] == precision)
            has_file = (ROOT / "models" / card.name / f"model.{precision}.onnx").is_file()
            assert (row["status"] == "ok") == has_file, row["reason"]
    if any(c.modality == "face" and c.status == "trained" for c in shipped):
        peer = [r for r in rows if r.get("peer")]
        assert peer and peer[0]["status"] == "ok" and peer[0]["accuracy"] > 0.3
