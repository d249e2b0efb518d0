"""``CheckedRunner``: a model's runner that serves ONNX Runtime FP32 until a faster artifact passed here.

The reference is always the FP32 ONNX file on ONNX Runtime's CPU provider. The candidates are the
FP16/INT8 files the card vouches for and, where the configured backend is TensorRT, the engines (an
FP32 engine too): each is checked against the reference (``edge.trust.verdicts``), on calibration
samples at activation, or on live windows in shadow mode. Checks are named by their label: the
precision on ONNX Runtime (``int8``), the precision and backend otherwise (``int8@tensorrt``).
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge.backends.base import Runner, TensorMeta
from edge.card import Model, artifact_name, load_model, sha256_file
from edge.errors import EmoEdgeError, ModelError
from edge.estimate import ModelInfo
from edge.export.gate import top1_agreement
from edge.kinds import PRECISIONS
from edge.trust.verdicts import (
    AUTO_MIN_GAIN,
    FALLBACK,
    LIVE_WINDOWS,
    Verdict,
    agreement_threshold,
    calibration_samples,
    compare_on_samples,
    device_identity,
    gate_record,
    interleaved_latency_ms,
    load_verdict,
    now,
    save_verdict,
    verdict_dir,
    verdict_path,
)

log = logging.getLogger(__name__)

RunnerFactory = Callable[[Model], Runner]


def _ort_reference(model: Model) -> Runner:
    from edge.backends.ort import OnnxRuntimeRunner

    return OnnxRuntimeRunner(model.path, threads=1)


def label_of(precision: str, backend: str) -> str:
    return precision if backend == "onnxruntime" else f"{precision}@{backend}"


@dataclass
class _Candidate:
    model: Model
    expected: float  # top-1 agreement with FP32 recorded where it was made (1.0 for an FP32 engine)
    runner: Runner | None = None
    gate_n: int | None = None  # the samples the gate measured ``expected`` on (None: exact, an FP32 engine)
    label: str = ""
    sha256: str = ""  # of the artifact checked: the ONNX file, or the engine file
    identity: dict[str, str] = field(default_factory=dict)
    agree: float = 0.0  # windows that agreed with FP32 (a share of each window's class outputs)
    seen: int = 0


class CheckedRunner(Runner):
    """A runner for one model whose outputs always come from FP32 or from an artifact that passed here.

    ``requested`` is a precision or ``auto``. ``status()`` says what was checked, the numbers, and why the
    active precision is the one in use; ``on_change`` is called after a switch or a live verdict.
    """

    def __init__(
        self, name_or_path: str | os.PathLike[str], requested: str, open_runner: RunnerFactory,
        models: str | os.PathLike[str] | None = None, calibration: str | os.PathLike[str] | None = None,
        cache: str | os.PathLike[str] | None = None, live_windows: int = LIVE_WINDOWS,
        reference: RunnerFactory = _ort_reference,
    ) -> None:
        super().__init__()
        if requested not in (*PRECISIONS, "auto"):
            raise ModelError(f"unknown precision '{requested}' (expected auto, {', '.join(PRECISIONS)})")
        self.requested = requested
        self._open, self._open_reference = open_runner, reference
        self._calibration = calibration
        self._verdicts = verdict_dir(cache)
        self.live_windows = live_windows
        self.fp32 = load_model(name_or_path, "fp32", models=models)
        self.model = self.fp32
        self.active_label = "fp32"
        self.verdicts: dict[str, Verdict] = {}
        self.problems: dict[str, str] = {}  # label -> why it was not even checked
        self.reason = ""
        self.on_change: Callable[[CheckedRunner], None] | None = None
        self._lock = threading.Lock()
        self._reference: Runner | None = None
        self._active_runner: Runner | None = None
        self._shadow: list[_Candidate] = []
        self._latency: dict[str, float] = {}
        self._candidates: list[_Candidate] = []
        order = PRECISIONS[::-1] if requested == "auto" else FALLBACK[requested]
        for precision in order:
            if precision == "fp32":
                continue
            try:
                model = load_model(name_or_path, precision, models=models)
                record = gate_record(model.card, precision, model.sha256)
            except EmoEdgeError as exc:
                absent = not (self.fp32.folder / artifact_name(self.fp32.card.graph, precision)).exists()
                if precision == requested or not absent:  # a file that is there but unusable is worth a word
                    self.problems[precision] = str(exc)
                    log.warning("%s: %s not used: %s", self.fp32.name, precision, exc)
                continue
            self._candidates.append(_Candidate(model, float(record.top1_agreement), gate_n=record.n))

    # --- what is in use --------------------------------------------------------------------------
    @property
    def precision(self) -> str:
        return self.model.precision

    @property
    def inputs(self) -> Sequence[TensorMeta]:
        assert self._active_runner is not None
        return self._active_runner.inputs

    @property
    def outputs(self) -> Sequence[TensorMeta]:
        assert self._active_runner is not None
        return self._active_runner.outputs

    def model_info(self) -> ModelInfo:
        return ModelInfo(self.model.card.name, self.model.card.version, self.model.sha256, self.backend, self.precision)

    def status(self) -> dict[str, Any]:
        """Requested and active precision, every verdict, pending checks and problems: for stats, doctor, bench."""
        with self._lock:
            return {
                "requested": self.requested, "active": self.precision, "backend": self.backend, "reason": self.reason,
                "checks": {p: v.summary() for p, v in self.verdicts.items()},
                "pending": [c.label for c in self._shadow], "problems": dict(self.problems),
                "latency_ms": self._timings(),  # batch-1 p50 here: what auto ranked by
            }

    def summary(self) -> dict[str, Any]:
        """The short form for the ``status`` payload: asked, in use, why, and what failed here."""
        status = self.status()
        failed = {p: c for p, c in status["checks"].items() if not c["passed"]}
        failed.update({p: {"reason": why} for p, why in status["problems"].items()})
        return {"model": self.fp32.name, "requested": self.requested, "active": status["active"],
                "backend": status["backend"], "reason": status["reason"], **({"failed": failed} if failed else {})}

    # --- lifecycle -------------------------------------------------------------------------------
    def _activate(self) -> None:
        reference = self._open_reference(self.fp32)
        reference.activate()
        self._reference = self._active_runner = reference
        self.backend = reference.backend
        candidates = list(self._candidates)
        try:
            main = self._open(self.fp32)
            if main.backend != reference.backend:  # an FP32 engine is a candidate like any other
                main.activate()
                candidates.insert(0, _Candidate(self.fp32, 1.0, main))
        except EmoEdgeError as exc:
            self.problems["fp32"] = str(exc)
        if not candidates:
            self.reason = self._fp32_reason()
            return
        calib = calibration_samples(self.fp32.card, self._calibration)
        feed = calib.inputs if calib is not None else _zeros_feed(reference.inputs)
        self._latency.update(interleaved_latency_ms({"fp32": reference}, feed))
        passed: list[_Candidate] = []
        for cand in candidates:
            if not self._prepare(cand):
                continue
            path = verdict_path(self._verdicts, self.fp32.name, cand.label, cand.sha256, cand.identity)
            verdict = load_verdict(path, cand.sha256, cand.identity)
            if verdict is None and calib is None:
                self._shadow.append(cand)
                continue
            if verdict is None:
                assert cand.runner is not None and calib is not None
                agreement, loss, n = compare_on_samples(self.fp32.card, reference, cand.runner, calib.inputs, calib.labels)
                verdict = self._verdict(cand, agreement, loss, n, f"calibration samples (calibration/{self.fp32.name})")
                verdict.latency_ms = {"fp32": self._latency["fp32"],
                                      **interleaved_latency_ms({cand.label: cand.runner}, feed)}
                save_verdict(path, verdict)
                (log.info if verdict.passed else log.warning)("device check: %s", verdict.describe())
            self.verdicts[cand.label] = verdict
            if verdict.passed:
                passed.append(cand)
            elif cand.runner is not None:
                cand.runner.deactivate()
        if passed and self.requested == "auto":  # rank the trusted ones side by side, now
            runners = {"fp32": reference, **{c.label: c.runner for c in passed if c.runner is not None}}
            self._latency.update(interleaved_latency_ms(runners, feed))
        self._choose(passed)
        for cand in self._shadow:
            assert cand.runner is not None
            if cand.label not in self._latency:
                self._latency.update(interleaved_latency_ms({cand.label: cand.runner}, feed))
        if self._shadow:
            self.reason += (f"; checking {', '.join(c.label for c in self._shadow)} against FP32 on the first "
                            f"{self.live_windows} live windows (no calibration samples here); FP32 meanwhile")

    def _prepare(self, cand: _Candidate) -> bool:
        """Open the candidate's runner and name what is checked: label, artifact sha256, device identity."""
        try:
            if cand.runner is None:
                cand.runner = self._open(cand.model)
                cand.runner.activate()
        except EmoEdgeError as exc:
            self.problems[cand.model.precision] = str(exc)
            log.warning("%s: %s not used: %s", self.fp32.name, cand.model.precision, exc)
            return False
        cand.label = label_of(cand.model.precision, cand.runner.backend)
        engine = getattr(cand.runner, "engine_path", None)
        cand.sha256 = sha256_file(engine) if engine is not None else cand.model.sha256
        cand.identity = device_identity(cand.runner.backend)
        return True

    def _verdict(self, cand: _Candidate, agreement: float, loss: float | None, n: int, data: str) -> Verdict:
        threshold = agreement_threshold(cand.expected, n, cand.gate_n)
        passed = agreement >= threshold
        reason = "" if passed else (
            f"agreement {agreement * 100:.1f}% is below {threshold * 100:.1f}% (the gate recorded "
            f"{cand.expected * 100:.1f}% where the artifact was made)"
        )
        return Verdict(self.fp32.name, cand.label, cand.sha256, cand.identity, passed, agreement, cand.expected,
                       threshold, n, data, {}, loss, reason, now())

    def _faster(self, label: str, than: float) -> bool:
        return self._latency.get(label, math.inf) <= than * (1.0 - AUTO_MIN_GAIN)

    def _choose(self, passed: list[_Candidate]) -> None:
        """Among FP32 and the passed candidates: the fastest for auto, else the first in fallback order."""
        chosen = None
        if self.requested == "auto":
            ranked = sorted(passed, key=lambda c: self._latency.get(c.label, math.inf))
            if ranked and self._faster(ranked[0].label, self._latency.get("fp32", math.inf)):
                chosen = ranked[0]
        elif passed:
            chosen = passed[0]
        for cand in passed:
            if cand is not chosen and cand.runner is not None:
                cand.runner.deactivate()
        if chosen is None:
            self.reason = self._fp32_reason()
            return
        assert chosen.runner is not None
        self._switch(chosen)
        timing = ", ".join(f"{p} {t:.3f} ms" for p, t in sorted(self._timings().items()))
        self.reason = f"{chosen.label} passed the device check" + (
            f"; fastest at batch 1 here ({timing})" if self.requested == "auto" else "")

    def _timings(self) -> dict[str, float]:
        out = {p: t for v in self.verdicts.values() for p, t in v.latency_ms.items()}
        out.update(self._latency)
        return out

    def _fp32_reason(self) -> str:
        failed = [f"{p} failed ({v.reason})" for p, v in self.verdicts.items() if not v.passed]
        problems = [f"{p}: {why}" for p, why in self.problems.items()]
        if self.requested == "fp32" and not failed and not problems:
            return "fp32 asked for"
        if self.requested == "auto" and not failed and not problems:
            if not self._candidates:
                return "fp32: no other precision ships for this model"
            timing = ", ".join(f"{p} {t:.3f} ms" for p, t in sorted(self._timings().items()))
            return f"fp32: no checked precision is faster here ({timing})"
        return "fp32 (fallback): " + "; ".join(failed + problems)

    def _switch(self, cand: _Candidate) -> None:
        assert cand.runner is not None
        with self._lock:
            self.model, self._active_runner, self.active_label = cand.model, cand.runner, cand.label
            self.backend = cand.runner.backend
        if not self._shadow and self._reference is not None:
            self._reference.deactivate()  # nothing left to compare against: free the FP32 session
        self._changed()
        log.info("%s: now running %s", self.fp32.name, cand.label)

    def _changed(self) -> None:
        if self.on_change is not None:
            try:
                self.on_change(self)
            except Exception:  # a reporting hook must never break inference
                log.exception("%s: device-check change hook failed", self.fp32.name)

    def _deactivate(self) -> None:
        for cand in self._shadow:
            if cand.runner is not None:
                cand.runner.deactivate()
        self._shadow = []
        for runner in (self._active_runner, self._reference):
            if runner is not None:
                runner.deactivate()
        self._active_runner = self._reference = None

    # --- inference -------------------------------------------------------------------------------
    def _infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        assert self._active_runner is not None
        out = self._active_runner.infer(feed)
        self.last_latency_ms = self._active_runner.last_latency_ms
        if self._shadow:
            self._shadow_step(feed, out)
        return out

    def _shadow_step(self, feed: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]) -> None:
        """Run the candidate under check beside FP32 on a live window; decide once it has seen enough."""
        cand = self._shadow[0]
        assert cand.runner is not None
        try:
            got = cand.runner.infer(feed)
        except EmoEdgeError as exc:
            got, failure = None, str(exc)
        else:
            failure = ""
            rows = len(next(iter(reference.values())))
            agreement, _ = top1_agreement(self.fp32.card, reference, got)  # the measure of the calibration check
            cand.agree += agreement * rows
            cand.seen += rows
        if got is not None and cand.seen < self.live_windows:
            return
        data = "live windows (shadow mode)"
        if got is None:
            verdict = Verdict(self.fp32.name, cand.label, cand.sha256, cand.identity, False, None, cand.expected, None,
                              cand.seen, data, reason=f"the artifact failed to run: {failure}", checked_at=now())
        else:
            verdict = self._verdict(cand, cand.agree / cand.seen, None, cand.seen, data)
        verdict.latency_ms = {p: t for p, t in self._latency.items() if p in ("fp32", cand.label)}
        save_verdict(verdict_path(self._verdicts, self.fp32.name, cand.label, cand.sha256, cand.identity), verdict)
        (log.info if verdict.passed else log.warning)("device check: %s", verdict.describe())
        with self._lock:
            self.verdicts[cand.label] = verdict
            self._shadow.pop(0)
        take = verdict.passed and self.active_label == "fp32" and (
            self.requested != "auto" or self._faster(cand.label, self._latency.get("fp32", math.inf)))
        if take:
            for other in self._shadow:
                if other.runner is not None:
                    other.runner.deactivate()
            with self._lock:
                self._shadow = []
            self._switch(cand)
            self.reason = f"{cand.label} passed the device check on live windows"
        else:
            if cand.runner is not None:
                cand.runner.deactivate()
            if not self._shadow and self.active_label == "fp32":
                self.reason = self._fp32_reason()
            self._changed()


def _zeros_feed(inputs: Sequence[TensorMeta]) -> dict[str, np.ndarray]:
    return {m.name: np.zeros((1, *[d if isinstance(d, int) else 1 for d in m.shape[1:]]), dtype=m.dtype) for m in inputs}


def check_model(
    name_or_path: str | os.PathLike[str], requested: str, open_runner: RunnerFactory,
    models: str | os.PathLike[str] | None = None, calibration: str | os.PathLike[str] | None = None,
    cache: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Run the device check of one model now (``doctor``, ``bench``): its status once activated."""
    runner = CheckedRunner(name_or_path, requested, open_runner, models=models, calibration=calibration, cache=cache)
    with runner:
        return runner.status()
