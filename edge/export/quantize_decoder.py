"""``emoedge quantize scene --graph decoder --precision fp16|int8``: the scene decoder's FP16 and INT8, gated on text.

A decoder's outputs are next-token logits: one step's top-1 agreement says little about the sentence, where one
different token changes every later step. So the gate decodes whole explanations, as the runtime does (the card's
beam, guidance, length cap and copy blocking), from the FP32 encoder's outputs on the data set's held-out images,
with the FP32 decoder and with the candidate, and compares

- **token agreement**: per image, the share of positions where both sentences have the same token (over the
  longer one), averaged; at least ``MIN_TOKEN_AGREEMENT``;
- **emotion consistency** (the text-emotion scorer agrees with the predicted emotion, as ``emoedge eval scene``
  reports it): it may fall at most the card's ``max_loss_points``.

FP16 keeps FP32 inputs and outputs (``edge.export.fp16``). INT8 is ONNX Runtime's dynamic quantization of the
MatMul weights (per channel, 7-bit like every INT8 file here: ``edge.export.int8`` says why), activations
quantized per call: a cache whose length changes every step has no fixed activation range to calibrate. The
record goes into the decoder's ``[[graphs.artifacts]]`` of the card, passed or refused.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from edge.backends.base import Runner
from edge.card import ArtifactRecord, Model, artifact_name, load_model, sha256_file
from edge.errors import InputError, ModelError
from edge.export.quantize import land_candidate

MIN_TOKEN_AGREEMENT = 0.90  # mean per-image token agreement with the FP32 decoder
INT8_DECODER_RECIPE = "dynamic: MatMul weights int8 symmetric per-channel 7-bit (reduce_range), activations uint8 per call"


@dataclass
class DecoderGate:
    passed: bool
    token_agreement: float
    exact_share: float  # images whose whole explanation is the same
    consistency_fp32: float
    consistency: float
    loss_points: float
    allowance: float
    n: int
    ms_fp32: float  # median seconds per explanation, in ms, on this machine
    ms: float
    examples: list[tuple[str, str]]

    def describe(self, what: str) -> str:
        verdict = "passed" if self.passed else "REFUSED"
        return (f"{what}: {verdict}: token agreement {self.token_agreement * 100:.1f}% (needs >= "
                f"{MIN_TOKEN_AGREEMENT * 100:.0f}%), same sentence {self.exact_share * 100:.1f}%, emotion consistency "
                f"{self.consistency:.3f} vs FP32 {self.consistency_fp32:.3f} ({self.loss_points:+.2f} points, allowance "
                f"{self.allowance:g}) on {self.n} images; {self.ms:.1f} ms an explanation vs FP32 {self.ms_fp32:.1f} ms")


def token_agreement(a: list[int], b: list[int]) -> float:
    """Share of positions (over the longer sentence) where both have the same token; 1.0 for two empty ones."""
    longest = max(len(a), len(b))
    return 1.0 if longest == 0 else sum(x == y for x, y in zip(a, b, strict=False)) / longest


def make_candidate(src: Path, dst: Path, precision: str) -> None:
    if precision == "fp16":
        from edge.export.fp16 import convert_fp16

        convert_fp16(src, dst)
    elif precision == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True, reduce_range=True,
                         op_types_to_quantize=["MatMul"])
    else:
        raise InputError(f"--precision must be fp16 or int8 (got '{precision}')")


def gate_decoder(model: Model, candidate: Path | Runner, data_dir: Path, limit: int | None, threads: int,
                 beam: int | None = None, max_tokens: int | None = None) -> DecoderGate:
    """Decode the held-out images of ``data_dir`` with the FP32 decoder and with ``candidate`` (a decoder file, or an
    active runner of one: a TensorRT engine), with the card's decoding settings or ``beam``/``max_tokens``;
    compare the text."""
    import time

    from edge.evaluation.scene import encode, load_split, softmax
    from edge.scene.decode import condition
    from edge.scene.model import SceneModel
    from edge.scene.scorer import TextEmotionScorer
    from edge.scene.textmetrics import emotion_consistency

    data = load_split(model.card, data_dir, "validation", limit=limit, seed=0)
    if len(data) == 0:
        raise InputError(f"{data_dir}: no held-out images to gate the decoder on")
    texts: dict[str, list[str]] = {}
    tokens: dict[str, list[list[int]]] = {}
    ms: dict[str, float] = {}
    probs, conds, scorer = np.zeros((0, 7)), np.zeros((0, 0), np.float32), None
    for which, decoder in (("fp32", None), ("candidate", candidate)):
        path, runner = (decoder, None) if not isinstance(decoder, Runner) else (None, decoder)
        with SceneModel(model, threads=threads, beam=beam, max_tokens=max_tokens, decoder_path=path,
                        decoder_runner=runner) as scene:
            if which == "fp32":
                raw = encode(scene.encoder, data.inputs["image"])
                probs = softmax(raw["logits"])
                conds = condition(probs, raw["va"], raw["embedding"])
            assert scene.decoder is not None and scene.vocab is not None and scene.spec is not None
            times, exps = [], []
            for cond in conds:
                start = time.perf_counter()
                exps.append(scene.decoder.explain(cond))
                times.append(time.perf_counter() - start)
            texts[which], tokens[which] = [e.text for e in exps], [e.tokens for e in exps]
            ms[which] = float(np.median(times) * 1e3)
            scorer = TextEmotionScorer.load(model.folder / scene.spec.params.get("scorer", "scorer.npz"), scene.vocab)
    assert scorer is not None
    consistency = {k: emotion_consistency(scorer, v, probs) for k, v in texts.items()}
    agreement = float(np.mean([token_agreement(a, b) for a, b in zip(tokens["fp32"], tokens["candidate"], strict=True)]))
    allowance = float(model.card.quantization.max_loss_points)
    loss = (consistency["fp32"] - consistency["candidate"]) * 100.0
    return DecoderGate(
        passed=agreement >= MIN_TOKEN_AGREEMENT and loss <= allowance, token_agreement=agreement,
        exact_share=float(np.mean([a == b for a, b in zip(tokens["fp32"], tokens["candidate"], strict=True)])),
        consistency_fp32=consistency["fp32"], consistency=consistency["candidate"], loss_points=loss, allowance=allowance,
        n=len(data), ms_fp32=ms["fp32"], ms=ms["candidate"],
        examples=[(a, b) for a, b in zip(texts["fp32"], texts["candidate"], strict=True) if a != b][:3],
    )


def quantize_decoder(name_or_path: str | os.PathLike[str], precision: str, data_dir: str | os.PathLike[str] | None,
                     limit: int | None = None, models: str | os.PathLike[str] | None = None, threads: int = 1,
                     command: str | None = None) -> tuple[DecoderGate, ArtifactRecord, Path | None]:
    """Make the decoder's ``precision`` file, gate it (module docstring), record it in the card; the file is kept
    only when it passed. Returns the gate, the record and the file (None when refused)."""
    model = load_model(name_or_path, "fp32", models=models)
    spec = next((g for g in model.card.graphs if g.name == "decoder"), None)
    if spec is None:
        raise ModelError(f"model '{model.name}' has no decoder graph to quantize ({model.card_path})")
    if data_dir is None:
        raise InputError("the decoder's gate decodes held-out images: give --data (a folder like emotion6_256)")
    source = model.folder / artifact_name(spec.name, "fp32")
    final = model.folder / artifact_name(spec.name, precision)
    candidate = model.folder / f".{final.stem}.tmp-{os.getpid()}.onnx"
    try:
        make_candidate(source, candidate, precision)
        gate = gate_decoder(model, candidate, Path(data_dir), limit, threads)
        record = ArtifactRecord(
            precision=precision,  # type: ignore[arg-type]
            file=final.name, sha256=sha256_file(candidate), source_sha256=sha256_file(source),
            metric="emotion_consistency", fp32=round(gate.consistency_fp32, 6), value=round(gate.consistency, 6),
            loss_points=round(gate.loss_points, 4), top1_agreement=round(gate.token_agreement, 6), passed=gate.passed,
            command=command or f"emoedge quantize {model.card.name} --graph decoder --precision {precision}",
            measured_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            data=f"{Path(data_dir).name}: held-out images, whole explanations (top1_agreement is the token agreement)",
            n=gate.n,
            allowance=gate.allowance, recipe=INT8_DECODER_RECIPE if precision == "int8" else None,
            note=(f"same sentence on {gate.exact_share * 100:.1f}% of images; {gate.ms:.1f} ms an explanation "
                  f"(FP32 {gate.ms_fp32:.1f} ms) on the machine that measured")
            + ("" if gate.passed else f"; refused (needs token agreement >= {MIN_TOKEN_AGREEMENT:g} and a loss within "
               "the allowance)"),
        )
        land_candidate(candidate, final, record, model.card_path, spec.artifacts, graph=spec.name)
    finally:
        candidate.unlink(missing_ok=True)
    return gate, record, final if gate.passed else None
