"""``emoedge build scene --graph encoder|decoder``: engines of a model with two graphs, the decoder's profile
over its key/value cache, its gate on whole explanations, and the runtime's check of that profile.

TensorRT cannot be installed here: as in test_engine_cache, the builder is ``FakeTensorRTBuilder`` (its
"engine" is the ONNX file's bytes) and the "engine runner" is ONNX Runtime on that file; a broken build is
stood in for by ``ShiftedLogitsEngine``. The cache, manifests, staleness, the gates against the FP32 ONNX
graphs and SceneModel's engine lookup are the real code, on the shipped scene model and held-out images.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
import pytest
from test_engine_cache import FakeTensorRTBuilder, ort_engine

from edge.backends.engine_cache import find_engine
from edge.backends.ort import OnnxRuntimeRunner
from edge.card import load_card, load_model, sha256_file
from edge.errors import BackendUnavailable, InputError, ModelError
from edge.export import build as build_module
from edge.export.build import BuildOutcome, build_engine
from edge.export.quantize_decoder import MIN_TOKEN_AGREEMENT, DecoderGate
from edge.paths import PROJECT_ROOT, data_dir

SCENE = PROJECT_ROOT / "models" / "scene"
TRT, GPU = "10.3.0", "Orin (nvgpu)"
LIMIT = 8  # held-out images per gate: enough to see a broken engine, quick on a shared CPU


class ShiftedLogitsEngine(OnnxRuntimeRunner):
    """Stands in for a decoder engine built wrong: ONNX Runtime on the file, every logit moved one token over."""

    backend = "tensorrt (stand-in)"

    def _infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = super()._infer(feed)
        out["logits"] = np.roll(out["logits"], 1, axis=-1)
        return out


@pytest.fixture
def scene(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    data = data_dir() / "emotion6_256"
    if not (SCENE / "decoder.onnx").is_file():
        pytest.skip("models/scene is not trained here")
    if not data.is_dir():
        pytest.skip(f"{data} not here (EMOEDGE_DATA): the decoder's gate decodes held-out images")
    copy = tmp_path / "scene"  # a copy: one test changes the decoder file
    shutil.copytree(SCENE, copy, ignore=shutil.ignore_patterns("decoder.int8.onnx", "*.int8.onnx"))
    cache = tmp_path / "cache"
    monkeypatch.setenv("EMOEDGE_CACHE", str(cache))
    return {"folder": copy, "data": data, "cache": cache, "engines": cache / "engines"}


def build(scene: dict[str, Path], graph: str | None, precision: str = "fp32", builder: FakeTensorRTBuilder | None = None,
          open_engine=ort_engine, limit: int | None = LIMIT, **kw) -> BuildOutcome:
    return build_engine(scene["folder"], precision, graph=graph, data=scene["data"], limit=limit,
                        builder=builder or FakeTensorRTBuilder(), open_engine=open_engine, trt_version=TRT, gpu=GPU, **kw)


def test_decoder_engine_has_a_cache_profile_its_own_key_and_a_gate_on_whole_explanations(scene: dict[str, Path]) -> None:
    builder = FakeTensorRTBuilder()
    outcome = build(scene, "decoder", builder=builder)
    assert outcome.status == "built" and outcome.engine.is_file()
    key = outcome.manifest.key
    decoder_sha = sha256_file(scene["folder"] / "decoder.onnx")
    assert key.graph == "decoder" and key.model_sha256 == decoder_sha and key.model == "scene"
    assert (key.min_batch, key.opt_batch, key.max_batch, key.max_tokens) == (1, 6, 6, 24)  # beam 3, guided: 6
    assert outcome.engine.name.startswith(f"scene-decoder-{decoder_sha[:16]}-") and "-t24" in outcome.engine.name
    request = builder.requests[0]
    assert request.onnx_path.name == "decoder.onnx"
    shapes = {name: (lo, opt, hi) for name, lo, opt, hi in request.shapes}
    assert shapes["past_key_2"] == ((1, 4, 0, 48), (6, 4, 12, 48), (6, 4, 25, 48))
    assert isinstance(outcome.gate, DecoderGate) and outcome.gate.passed
    assert outcome.gate.token_agreement == 1.0 and outcome.gate.n == LIMIT
    manifest = outcome.manifest
    assert manifest.onnx_file == "decoder.onnx" and manifest.status == "ok"
    assert manifest.gate["token_agreement"] == 1.0 and manifest.gate["n"] == LIMIT
    assert outcome.engine.with_suffix(".json").is_file()
    again = build(scene, "decoder", builder=builder)
    assert again.status == "cached" and len(builder.requests) == 1
    # the FP16 decoder gets its own engine, compared with the FP32 ONNX decoder, not with itself: on all 334
    # held-out images the stand-in engine (ONNX Runtime on decoder.fp16.onnx) agrees with FP32 as often as the card's
    # record of that file says (within 2 points: another CPU's kernels may flip a near tie or two), less than always
    fp16 = build(scene, "decoder", precision="fp16", limit=None)
    record = next(a for g in load_card(scene["folder"] / "card.toml").graphs if g.name == "decoder"
                  for a in g.artifacts if a.precision == "fp16")
    assert fp16.gate is not None and fp16.gate.n == record.n and fp16.gate.token_agreement == pytest.approx(record.top1_agreement, abs=0.02)
    assert fp16.engine.name != outcome.engine.name and fp16.manifest.onnx_file == "decoder.fp16.onnx"
    assert fp16.manifest.key.model_sha256 == sha256_file(scene["folder"] / "decoder.fp16.onnx")
    assert isinstance(fp16.gate, DecoderGate) and MIN_TOKEN_AGREEMENT <= fp16.gate.token_agreement < 1.0
    assert fp16.manifest.gate["token_agreement"] == fp16.gate.token_agreement
    assert fp16.status == ("built" if fp16.gate.passed else "rejected")


def test_encoder_and_decoder_engines_never_collide_and_a_changed_decoder_file_is_stale(scene: dict[str, Path]) -> None:
    encoder = build(scene, "encoder", max_batch=4)
    decoder = build(scene, "decoder")
    assert encoder.status == decoder.status == "built" and encoder.engine != decoder.engine
    assert encoder.manifest.key.graph == "encoder" and encoder.manifest.onnx_file == "encoder.onnx"
    assert encoder.gate is not None and encoder.gate.metric == "top1_agreement_with_fp32"
    assert encoder.gate.top1_agreement == 1.0 and encoder.gate.n == LIMIT and "emotion6_256" in encoder.gate.data
    model = load_model(scene["folder"])
    assert find_engine(scene["engines"], "scene", model.sha256, TRT, GPU, "fp32", graph="encoder") == encoder.engine
    # retrained decoder: same card, another file
    proto = onnx.load(str(scene["folder"] / "decoder.onnx"))
    proto.doc_string = "retrained"
    onnx.save(proto, str(scene["folder"] / "decoder.onnx"))
    rebuilt = build(scene, "decoder")
    assert rebuilt.status == "built" and any(r.startswith("decoder file changed (sha256") for r in rebuilt.reasons)
    assert not decoder.engine.exists() and encoder.engine.exists()  # only the decoder's slot was replaced


def test_decoder_engine_that_changes_the_explanations_is_set_aside(scene: dict[str, Path]) -> None:
    outcome = build(scene, "decoder", open_engine=ShiftedLogitsEngine)
    assert outcome.status == "rejected" and outcome.engine.parent.name == "rejected"
    assert isinstance(outcome.gate, DecoderGate) and not outcome.gate.passed
    assert outcome.gate.token_agreement < MIN_TOKEN_AGREEMENT and outcome.manifest.status == "rejected"
    assert not list(scene["engines"].glob("*.engine"))


def test_a_model_with_several_graphs_needs_graph_and_a_decoder_needs_data(scene: dict[str, Path]) -> None:
    """Said before TensorRT is even looked for (no builder given: it does not exist here)."""
    with pytest.raises(ModelError, match=r"has 2 graphs \(encoder, decoder\): say which to build, e\.g\. emoedge build "
                                         r"scene --graph encoder"):
        build_engine(scene["folder"], "fp32")
    with pytest.raises(ModelError, match=r"no graph 'vision' \(its graphs: encoder, decoder\)"):
        build_engine(scene["folder"], "fp32", graph="vision")
    with pytest.raises(InputError, match="give --data"):
        build_engine(scene["folder"], "fp32", graph="decoder")
    with pytest.raises(ModelError, match="give --beam, not --max-batch"):
        build_engine(scene["folder"], "fp32", graph="decoder", max_batch=4, data=scene["data"])
    with pytest.raises(ModelError, match="takes --max-batch"):
        build_engine(scene["folder"], "fp32", graph="encoder", max_tokens=30)
    result = subprocess.run([sys.executable, "-m", "edge", "build", str(scene["folder"]), "--precision", "fp16"],
                            capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=120)
    assert result.returncode == ModelError.exit_code and "--graph encoder" in result.stderr


def test_runtime_checks_the_decoder_engine_profile_before_decoding(scene: dict[str, Path],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """SceneModel with backend tensorrt runs the cached decoder engine; a beam or cap beyond its profile is an
    InputError before the first step. TensorRT and the GPU are stood in for (ONNX Runtime on the engine file)."""
    from edge.scene.model import SceneModel

    model = load_model(scene["folder"])
    monkeypatch.setattr(build_module, "tensorrt_runtime", lambda: (ort_engine, TRT, GPU))
    with OnnxRuntimeRunner(model.path) as encoder:
        with pytest.raises(BackendUnavailable, match="no fp32 decoder engine for scene .* --graph decoder"):
            SceneModel(model, backend="tensorrt", encoder=encoder).__enter__()
        built = build(scene, "decoder", max_tokens=16)
        assert built.status == "built"
        image = np.full((256, 256, 3), 128, np.uint8)
        with SceneModel(model, backend="tensorrt", encoder=encoder, max_tokens=16) as trt, \
                SceneModel(model, encoder=encoder, max_tokens=16) as ort:
            assert trt.decoder_runner.model_path == built.engine  # the cached engine, not decoder.onnx
            est = ort.estimate(image)
            assert trt.explain(est).tokens == ort.explain(est).tokens
        with pytest.raises(InputError, match="holds a cache of 17 tokens, decoding asks for 24"):
            SceneModel(model, backend="tensorrt", encoder=encoder).__enter__()  # the card's cap, 24
        with pytest.raises(InputError, match="allows batch 6, beam 4 with guidance .* needs 8"):
            SceneModel(model, backend="tensorrt", encoder=encoder, beam=4, max_tokens=16).__enter__()
        with SceneModel(model, backend="auto", encoder=encoder) as auto:  # auto: ONNX Runtime where no engine fits
            assert auto.decoder_runner.model_path == scene["folder"] / "decoder.onnx"
