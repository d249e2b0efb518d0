"""The accuracy gate: may an FP16/INT8 artifact (or a TensorRT engine) stand in for the FP32 model?

Two measures, both against the FP32 model on the same samples:

- the task metric of the card (``card.quantization.metric``: accuracy, macro_f1, balanced_accuracy),
  measured by the model's evaluator on labelled validation data; for a model with several label
  heads (EEG valence and arousal) each head is measured, the score is their mean, and every head
  must pass on its own;
- top-1 agreement: the share of samples whose predicted class is the same, for every class-score
  output (where labels are not at hand, as on the calibration samples of an engine build, this is the
  gate: the accuracy of the candidate cannot fall by more than the share of changed predictions).

Losses are in points (hundredths): ``loss = (fp32 - candidate) * 100``; a candidate passes when every
loss is at most the card's ``max_loss_points``. A gain is a negative loss.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge.backends.base import Runner, TensorMeta
from edge.card import ModelCard
from edge.errors import EmoEdgeError

METRICS = ("accuracy", "macro_f1", "balanced_accuracy")
_EPS = 1e-9


class GateFailed(EmoEdgeError):
    """A candidate lost more than its card allows; nothing was written or activated."""

    exit_code = 4


def loss_points(reference: float, candidate: float) -> float:
    """How many points (hundredths) ``candidate`` lost against ``reference``, both in [0, 1]."""
    return (float(reference) - float(candidate)) * 100.0


@dataclass
class GateResult:
    metric: str
    fp32: float
    value: float
    loss_points: float
    allowance: float
    top1_agreement: float
    passed: bool
    n: int
    per_head: dict[str, dict[str, float]] = field(default_factory=dict)  # head -> fp32, value, loss_points
    per_output_agreement: dict[str, float] = field(default_factory=dict)
    data: str = ""
    note: str = ""

    def describe(self, label: str) -> str:
        """One line: what was measured and whether it passed, with the margin."""
        heads = "".join(
            f"; {h}: {v['fp32'] * 100:.2f} -> {v['value'] * 100:.2f}" for h, v in self.per_head.items()
        ) if len(self.per_head) > 1 else ""
        verdict = (
            f"passed ({self.loss_points:+.2f} points lost, allowance {self.allowance:g})"
            if self.passed
            else f"FAILED: lost {self.worst_loss:.2f} points, {self.worst_loss - self.allowance:.2f} more than the "
            f"card allows ({self.allowance:g})"
        )
        return (
            f"{label}: {self.metric} {self.fp32 * 100:.2f} (fp32) -> {self.value * 100:.2f}{heads}; "
            f"top-1 agreement {self.top1_agreement * 100:.2f}% on {self.n} samples; {verdict}"
            + (f" [{self.note}]" if self.note else "")
        )

    @property
    def worst_loss(self) -> float:
        losses = [v["loss_points"] for v in self.per_head.values()] or [self.loss_points]
        return max(losses)


def judge(
    metric: str,
    fp32: Mapping[str, float],
    candidate: Mapping[str, float],
    agreement: float,
    allowance: float,
    n: int,
    per_output_agreement: Mapping[str, float] | None = None,
    data: str = "",
    note: str = "",
) -> GateResult:
    """The gate's arithmetic: per-head scores in [0, 1] in, a verdict out."""
    if set(fp32) != set(candidate) or not fp32:
        raise ValueError(f"heads differ: {sorted(fp32)} vs {sorted(candidate)}")
    per_head = {
        h: {"fp32": float(fp32[h]), "value": float(candidate[h]), "loss_points": loss_points(fp32[h], candidate[h])}
        for h in sorted(fp32)
    }
    ref = float(np.mean([v["fp32"] for v in per_head.values()]))
    value = float(np.mean([v["value"] for v in per_head.values()]))
    passed = all(v["loss_points"] <= allowance + _EPS for v in per_head.values())
    return GateResult(
        metric=metric, fp32=ref, value=value, loss_points=loss_points(ref, value), allowance=allowance,
        top1_agreement=float(agreement), passed=passed, n=n, per_head=per_head,
        per_output_agreement=dict(per_output_agreement or {}), data=data, note=note,
    )


def judge_agreement(agreement: float, allowance: float, n: int, per_output: Mapping[str, float] | None = None,
                    data: str = "", note: str = "") -> GateResult:
    """Gate on top-1 agreement alone (no labels): the loss is the share of changed predictions, in points."""
    return judge("top1_agreement", {"all": 1.0}, {"all": agreement}, agreement, allowance, n, per_output, data, note)


def task_scores(result: Mapping[str, Any], metric: str) -> dict[str, float]:
    """The metric per head from an evaluator's result: ``{"all": x}``, or one entry per label head (EEG)."""
    if metric not in METRICS:
        raise EmoEdgeError(f"unknown gate metric '{metric}' (expected one of {', '.join(METRICS)})")
    if metric in result and isinstance(result[metric], (int, float)):
        return {"all": float(result[metric])}
    heads: dict[str, float] = {}
    for k, v in result.items():
        if not isinstance(v, Mapping):
            continue
        if isinstance(v.get(metric), (int, float)):
            heads[k] = float(v[metric])
        else:  # one level deeper: HiSTN reports valence.levels and valence.binary beside anxious
            heads.update({f"{k}.{sub}": float(w[metric]) for sub, w in v.items()
                          if isinstance(w, Mapping) and isinstance(w.get(metric), (int, float))})
    if not heads:
        raise EmoEdgeError(f"the evaluator's result has no '{metric}' (keys: {sorted(result)})")
    return heads


def class_score_outputs(card: ModelCard, outputs: Mapping[str, np.ndarray]) -> list[str]:
    """Outputs whose argmax is a prediction: those the card calls logits/probabilities/scores, else any with >1 column."""
    named = [
        t.name for t in card.outputs
        if t.meaning and any(w in t.meaning.lower() for w in ("logit", "prob", "score")) and t.name in outputs
    ]
    if named:
        return named
    return [k for k, v in outputs.items() if v.ndim >= 2 and v.shape[-1] > 1]


def top1_agreement(
    card: ModelCard, reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray]
) -> tuple[float, dict[str, float]]:
    """Mean share of equal argmax over the class-score outputs, and the share per output."""
    names = class_score_outputs(card, reference)
    if not names:
        raise EmoEdgeError(f"model '{card.name}' has no class-score output to compare top-1 predictions on")
    per = {}
    for name in names:
        a, b = np.asarray(reference[name]), np.asarray(candidate[name])
        if a.shape != b.shape:
            raise EmoEdgeError(f"output '{name}': shapes differ between FP32 {a.shape} and the candidate {b.shape}")
        per[name] = float(np.mean(a.argmax(axis=-1) == b.argmax(axis=-1))) if a.shape[0] else 0.0
    return float(np.mean(list(per.values()))), per


def run_batches(runner: Runner, batches: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Every output of ``runner`` over ``batches``, concatenated along the batch axis."""
    collected: dict[str, list[np.ndarray]] = {}
    for feed in batches:
        for k, v in runner.infer(feed).items():
            collected.setdefault(k, []).append(np.asarray(v))
    return {k: np.concatenate(v, axis=0) for k, v in collected.items()}


class RecordingRunner(Runner):
    """Wraps an active runner and keeps every output it gives, so that one evaluator pass yields both
    the task metric and the raw outputs for top-1 agreement."""

    def __init__(self, inner: Runner) -> None:
        super().__init__()
        self.inner = inner
        self.backend = inner.backend
        self.recorded: dict[str, list[np.ndarray]] = {}
        self._active = inner.is_active

    @property
    def inputs(self) -> Sequence[TensorMeta]:
        return self.inner.inputs

    @property
    def outputs(self) -> Sequence[TensorMeta]:
        return self.inner.outputs

    def _activate(self) -> None:
        self.inner.activate()

    def _deactivate(self) -> None:
        pass  # the owner of the inner runner closes it

    def _infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = self.inner.infer(feed)
        for k, v in out.items():
            self.recorded.setdefault(k, []).append(np.asarray(v).copy())
        self.last_latency_ms = self.inner.last_latency_ms
        return out

    def outputs_seen(self) -> dict[str, np.ndarray]:
        return {k: np.concatenate(v, axis=0) for k, v in self.recorded.items()}


def gate_on_labelled_data(
    card: ModelCard, evaluator: Any, data: Any, reference: Runner, candidate: Runner, allowance: float
) -> GateResult:
    """Run the evaluator on both (active) runners and judge: task metric per head plus top-1 agreement."""
    metric = card.quantization.metric
    rec_ref, rec_cand = RecordingRunner(reference), RecordingRunner(candidate)
    ref_result = evaluator.evaluate(rec_ref, card, data)
    cand_result = evaluator.evaluate(rec_cand, card, data)
    agreement, per_output = top1_agreement(card, rec_ref.outputs_seen(), rec_cand.outputs_seen())
    return judge(
        metric, task_scores(ref_result, metric), task_scores(cand_result, metric), agreement, allowance,
        n=len(data), per_output_agreement=per_output, data=getattr(data, "description", ""),
    )


def gate_on_samples(
    card: ModelCard, batches: Sequence[Mapping[str, np.ndarray]], reference: Runner, candidate: Runner,
    allowance: float, data: str, note: str = "",
) -> GateResult:
    """Judge by top-1 agreement on unlabelled samples (calibration samples)."""
    ref, cand = run_batches(reference, batches), run_batches(candidate, batches)
    agreement, per_output = top1_agreement(card, ref, cand)
    n = int(next(iter(ref.values())).shape[0]) if ref else 0
    result = judge_agreement(agreement, allowance, n, per_output, data, note)
    diffs = [float(np.max(np.abs(ref[k].astype(np.float64) - cand[k].astype(np.float64)))) for k in ref if k in cand and ref[k].size]
    if diffs:
        result.per_head["all"]["max_abs_diff"] = max(diffs)
    return result
