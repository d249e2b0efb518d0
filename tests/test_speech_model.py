"""The shipped speech model: loads, matches its card, runs, evaluates above chance on unseen actors;
any sample rate and unknown labels are handled; a tiny training run works end to end."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge.card import load_model

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"


def ravdess(data_dir: Path) -> Path:
    folder = data_dir / "ravdess_speech_16k"
    if not (folder / "labels.csv").is_file():
        pytest.skip(f"{folder} not found")
    return folder


def test_shipped_model_loads_matches_its_card_and_runs() -> None:
    from edge.backends import open_runner

    model = load_model("speech", models=MODELS)
    card = model.card
    assert card.status == "trained" and 0 < card.parameters <= 300_000
    assert len(card.labels) == 8 and card.training.holdout["actors"]
    assert {"default", "speaker-norm"} <= {m.mode for m in card.metrics}
    shape = card.input("logmel").shape
    x = np.random.default_rng(0).standard_normal((3, *shape[1:])).astype(np.float32)
    with open_runner(model, backend="onnxruntime") as runner:
        out = runner.infer({"logmel": x})
    assert out["logits"].shape == (3, 8) and out["embedding"].shape == (3, card.output("embedding").shape[1])


def test_card_parameter_count_is_the_architecture_count() -> None:
    pytest.importorskip("torch")
    from edge.zoo.common import count_parameters
    from edge.zoo.speech import SpeechCNN

    assert load_model("speech", models=MODELS).card.parameters == count_parameters(SpeechCNN())


def run_eval(*args: str) -> dict:  # type: ignore[type-arg]
    proc = subprocess.run(
        [sys.executable, "-m", "edge", "eval", "speech", "--models", str(MODELS), "--json", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.data
@pytest.mark.parametrize("mode", ["default", "speaker-norm"])
def test_eval_on_unseen_actors_is_above_chance(data_dir: Path, mode: str) -> None:
    result = run_eval("--data", str(ravdess(data_dir)), "--limit", "48", "--mode", mode)
    assert result["n"] == 48 and result["skipped"] == 0 and result["mode"] == mode
    assert result["accuracy"] > 0.3  # chance is 1/8
    held = load_model("speech", models=MODELS).card.training.holdout["actors"]
    assert all(f"'{a}'" in result["data"] for a in held)


@pytest.mark.data
def test_any_sample_rate_and_unknown_labels(tmp_path: Path, data_dir: Path) -> None:
    """A non-RAVDESS folder: 44.1 kHz stereo files, a label the model lacks (skipped and counted)."""
    import soundfile as sf
    from scipy.signal import resample_poly

    folder = ravdess(data_dir)
    with (folder / "labels.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r["actor"] in ("05", "10")][::12]
    out = tmp_path / "clips"
    out.mkdir()
    lines = ["file,emotion"]
    for i, r in enumerate(rows):
        y, _ = sf.read(folder / r["file"], dtype="float32")
        y44 = resample_poly(y, 441, 160).astype(np.float32)
        sf.write(out / f"c{i}.wav", np.stack([y44, y44], axis=1), 44_100)
        lines.append(f"c{i}.wav,{r['emotion']}")
    lines.append("c0.wav,contempt")
    (out / "labels.csv").write_text("\n".join(lines) + "\n")
    result = run_eval("--data", str(out))
    assert result["skipped"] == 1 and result["n"] == len(rows)
    assert result["accuracy"] > 0.2


def test_tiny_training_run(tmp_path: Path, data_dir: Path) -> None:
    pytest.importorskip("torch")
    folder = ravdess(data_dir)
    with (folder / "labels.csv").open() as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        rows = [r for r in reader if r["actor"] in ("01", "02", "05")][::6]
    small = tmp_path / "small"
    small.mkdir()
    with (small / "labels.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for r in rows:
            writer.writerow({**r, "file": str(folder / r["file"])})  # absolute paths: no audio is copied
    out = tmp_path / "speech"
    proc = subprocess.run(
        [sys.executable, "-m", "edge", "train", "speech", "--data", str(small), "--out", str(out), "--max-steps", "3",
         "--no-progress", "--set", "widths=8,8,16,16", "--set", "mixup_p=1"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    model = load_model(out)
    assert model.card.training.holdout["train_actors"] == [1, 2]
    assert "widths 8,8,16,16" in model.card.notes and "mixup_p 1.0" in model.card.notes  # --set reached the recipe
    assert model.card.output("embedding").shape == ["batch", 32]  # mean and max of the last 16 channels


@pytest.mark.data
def test_ravdess_layout_without_labels_csv(tmp_path: Path, data_dir: Path) -> None:
    """Labels from RAVDESS file names in Actor_XX folders (links to the real files; no audio copied)."""
    folder = ravdess(data_dir)
    clips = sorted((folder / "Actor_10").glob("*.wav"))[::6]
    (tmp_path / "Actor_10").mkdir()
    for clip in clips:
        (tmp_path / "Actor_10" / clip.name).symlink_to(clip)
    result = run_eval("--data", str(tmp_path))
    assert result["n"] == len(clips) and "speakers ['10']" in result["data"]
    assert result["accuracy"] > 0.125


def test_training_can_start_from_the_shipped_model() -> None:
    """``--set init=models/speech``: the exported weights (BatchNorm folded) load back into the network exactly."""
    torch = pytest.importorskip("torch")
    import onnxruntime as ort

    from edge.zoo.speech import SpeechCNN, init_statistics, load_onnx_weights

    folder = Path(__file__).resolve().parents[1] / "models" / "speech"
    net = SpeechCNN()
    load_onnx_weights(net, folder / "model.onnx")
    x = np.random.default_rng(0).standard_normal((2, 1, 64, 301)).astype(np.float32)
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    logits, embedding = session.run(["logits", "embedding"], {session.get_inputs()[0].name: x})
    with torch.no_grad():
        got_logits, got_embedding = net.eval()(torch.from_numpy(x))
    np.testing.assert_allclose(got_logits.numpy(), logits, atol=1e-4)
    np.testing.assert_allclose(got_embedding.numpy(), embedding, atol=1e-4)
    mean, std, _ = init_statistics(folder)
    assert mean.shape == std.shape == (64,)
    with pytest.raises(Exception, match="cannot read the model to start from"):
        load_onnx_weights(SpeechCNN(), folder / "card.toml")


def test_blending_a_fine_tuned_model_with_its_start(tmp_path: Path) -> None:
    """``tools/blend_weights.py``: every weight is the alpha-mix of the two files, the result runs, and a model
    with other input statistics is refused (its weights would read other inputs)."""
    import importlib.util
    import shutil

    import onnx
    from onnx import numpy_helper

    from edge.backends.ort import OnnxRuntimeRunner
    from edge.card import load_card, save_card
    from edge.errors import ConfigError

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("blend_weights", root / "tools" / "blend_weights.py")
    assert spec is not None and spec.loader is not None
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    start, tuned = root / "models" / "speech", tmp_path / "tuned"
    shutil.copytree(start, tuned, ignore=shutil.ignore_patterns("*.fp16.onnx", "*.int8.onnx"))
    proto = onnx.load(str(tuned / "model.onnx"))
    rng = np.random.default_rng(0)
    for t in proto.graph.initializer:
        w = numpy_helper.to_array(t)
        if np.issubdtype(w.dtype, np.floating):
            t.CopyFrom(numpy_helper.from_array((w + 0.1 * rng.standard_normal(w.shape)).astype(w.dtype), t.name))
    onnx.save(proto, str(tuned / "model.onnx"))
    out = tool.blend(start, tuned, 0.25, tmp_path / "blend")
    weights = [{t.name: numpy_helper.to_array(t) for t in onnx.load(str(f / "model.onnx")).graph.initializer}
               for f in (start, tuned, out)]
    name = "head.weight"
    np.testing.assert_allclose(weights[2][name], 0.75 * weights[0][name] + 0.25 * weights[1][name], rtol=1e-6, atol=1e-7)
    assert "blended" in (load_card(out / "card.toml").notes or "") and not load_card(out / "card.toml").metrics
    with OnnxRuntimeRunner(out / "model.onnx", threads=1) as runner:
        logits = runner.infer({"logmel": rng.standard_normal((2, 1, 64, 301)).astype(np.float32)})["logits"]
    assert logits.shape == (2, 8) and np.isfinite(logits).all()
    card = load_card(tuned / "card.toml")
    card.features.params["loudness_norm"] = not card.features.params.get("loudness_norm", False)
    save_card(card, tuned / "card.toml")
    with pytest.raises(ConfigError, match="different input statistics"):
        tool.blend(start, tuned, 0.5, tmp_path / "refused")


def test_distillation_pulls_the_student_towards_its_teacher() -> None:
    """``--set distil_from=models/speech``: on the clips marked for distillation the student learns the teacher's
    softened predictions (after the same steps from the same start, its predictions are closer to the teacher's
    with the term than without it); a teacher that reads other inputs is refused."""
    torch = pytest.importorskip("torch")
    import argparse

    from edge.errors import ConfigError
    from edge.zoo.speech import RECIPE, eval_windows, fit, init_statistics, load_teacher

    folder = MODELS / "speech"
    mean, std, loud = init_statistics(folder)
    rng = np.random.default_rng(0)
    # log-mel-like clips: the population mean plus noise, 2-4 s long
    mels = [(mean[:, None] + std[:, None] * rng.standard_normal((64, int(rng.integers(200, 400))))).astype(np.float32)
            for _ in range(48)]
    labels = rng.integers(0, 8, size=len(mels))
    actors = np.repeat(np.arange(1, 5), len(mels) // 4)
    args = argparse.Namespace(max_steps=24, no_progress=True)
    x = torch.from_numpy(eval_windows(mels[:16], mean, std, loud)[0])
    teacher = load_teacher(folder, dict(RECIPE), mean, std, loud)
    with torch.no_grad():
        target = torch.softmax(teacher(x)[0], 1)

    def kl_to_teacher(weight: float) -> float:
        recipe = dict(RECIPE, distil_from=str(folder), distil_weight=weight, lr=3e-3, batch_size=16)
        torch.manual_seed(0)
        student, steps = fit(mels, labels, actors, mean, std, args, recipe, seed=0, distil=np.ones(len(mels), bool))
        assert steps == 24
        with torch.no_grad():
            logp = torch.log_softmax(student(x)[0], 1)
        return float((target * (target.clamp_min(1e-8).log() - logp)).sum(1).mean())

    with_term, without = kl_to_teacher(5.0), kl_to_teacher(0.0)
    assert with_term < 0.6 * without, (with_term, without)
    with pytest.raises(ConfigError, match="input statistics"):
        load_teacher(folder, dict(RECIPE), mean + 1.0, std, loud)
