"""Trust earned on the device: an artifact other than FP32 is checked against FP32 here before it is used.

An INT8 file that passed its gate on the machine that made it can answer differently on another CPU
(ONNX Runtime's INT8 kernels differ by instruction set; see ``edge/export/int8.py``), and a TensorRT
engine belongs to one GPU. So the first time a model is loaded at a precision other than FP32 on a
device, that artifact is compared with FP32 on this device:

- on the model's calibration samples when they are present (``calibration/<name>/samples.npz``);
- otherwise on the first live windows, in shadow mode: FP32 and the candidate both run, estimates are
  published from FP32, and the candidate takes over only once it has matched FP32 on
  ``LIVE_WINDOWS`` windows.

The measure is top-1 agreement with FP32, held against the agreement the artifact's gate recorded on
the machine that made it (``card.artifacts``): it passes when it is no more than ``margin`` below,
where the margin is three binomial standard errors of the sample (at least two points). The verdict
(agreement, loss on labelled samples, batch-1 latency of both precisions, samples used) is cached in
``EMOEDGE_CACHE/verdicts/``, keyed by the artifact's sha256, the runtime and its version, and the CPU's
instruction sets or the GPU; a changed key checks again. An artifact whose sha256 is in no passed
record of its card never ran through the gate and is refused outright.

``precision = "auto"`` is the fastest precision that passed here, by batch-1 latency on this device
(a lower precision must be at least ``AUTO_MIN_GAIN`` faster to be preferred). A precision that fails
falls back to the next: int8 -> fp16 -> fp32.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from edge.backends.base import Runner, TensorMeta
from edge.card import PRECISION_FILES, ArtifactRecord, Model, ModelCard, load_model
from edge.errors import EmoEdgeError, ModelError
from edge.estimate import ModelInfo
from edge.paths import cache_dir, calibration_dir

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8")
FALLBACK = {"int8": ("int8", "fp16", "fp32"), "fp16": ("fp16", "fp32"), "fp32": ("fp32",)}
LIVE_WINDOWS = 32  # windows of shadow mode before a verdict on live data
MIN_MARGIN = 0.02  # agreement may fall this far below the gate's record, or three standard errors if more
AUTO_MIN_GAIN = 0.05  # auto prefers a lower precision only when it is at least 5% faster at batch 1
VERDICT_VERSION = 1


@dataclass
class Verdict:
    """The result of checking one artifact on one device."""

    model: str
    precision: str
    artifact_sha256: str
    device: dict[str, str]
    passed: bool
    agreement: float | None
    expected_agreement: float | None
    threshold: float | None
    n: int
    data: str
    latency_ms: dict[str, float] = field(default_factory=dict)  # precision -> batch-1 p50 here
    loss_points: float | None = None  # on labelled samples: FP32 accuracy minus the candidate's, in points
    reason: str = ""
    checked_at: str = ""
    version: int = VERDICT_VERSION

    def describe(self) -> str:
        where = f"{self.device.get('runtime', '?')} on {self.device.get('hardware', '?')}"
        if self.agreement is None:
            return f"{self.model} {self.precision}: {'passed' if self.passed else 'FAILED'} ({self.reason}) [{where}]"
        loss = f", accuracy loss {self.loss_points:+.2f} points" if self.loss_points is not None else ""
        return (
            f"{self.model} {self.precision}: {'passed' if self.passed else 'FAILED'}: top-1 agreement with FP32 "
            f"{self.agreement * 100:.1f}% on {self.n} {self.data} (needs >= {(self.threshold or 0) * 100:.1f}%, "
            f"gate recorded {(self.expected_agreement or 0) * 100:.1f}%){loss} [{where}]"
        )

    def summary(self) -> dict[str, Any]:
        """The figures for ``stats``, ``status`` and ``doctor``."""
        return {
            "passed": self.passed, "agreement": _round(self.agreement), "expected": _round(self.expected_agreement),
            "threshold": _round(self.threshold), "n": self.n, "data": self.data,
            "loss_points": _round(self.loss_points, 2), "latency_ms": self.latency_ms, "reason": self.reason,
        }


def _round(x: float | None, digits: int = 4) -> float | None:
    return None if x is None else round(float(x), digits)


class ArtifactRefused(ModelError):
    """A derived artifact that its card does not vouch for (no passed gate record with its sha256)."""


# --- identity of the device --------------------------------------------------------------------------
def device_identity(backend: str, hardware: str | None = None) -> dict[str, str]:
    """What decides the answers an artifact gives here: runtime and version, CPU instruction sets or GPU."""
    from edge.backends import probe

    if backend == "tensorrt":
        version = probe.tensorrt_version() or "unknown"
        return {"runtime": f"tensorrt {version}", "hardware": hardware or probe.gpu_key() or "unknown GPU"}
    import onnxruntime

    cpu = probe.cpu_info()
    return {"runtime": f"onnxruntime {onnxruntime.__version__}", "hardware": hardware or cpu.describe()}


def identity_key(identity: Mapping[str, str]) -> str:
    return hashlib.sha256(json.dumps(dict(identity), sort_keys=True).encode()).hexdigest()[:16]


# --- the cache of verdicts ---------------------------------------------------------------------------
def verdict_dir(cache: str | os.PathLike[str] | None = None) -> Path:
    return cache_dir(cache) / "verdicts"


def verdict_path(folder: Path, model: str, precision: str, sha256: str, identity: Mapping[str, str]) -> Path:
    return folder / f"{model}-{precision}-{sha256[:16]}-{identity_key(identity)}.json"


def load_verdict(path: Path, sha256: str, identity: Mapping[str, str]) -> Verdict | None:
    """A cached verdict for exactly this artifact and device, or None (absent, unreadable, or another key)."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        verdict = Verdict(**{k: v for k, v in data.items() if k in Verdict.__dataclass_fields__})
    except (OSError, ValueError, TypeError) as exc:
        log.warning("%s: unreadable device-check verdict (%s); checking again", path, exc)
        return None
    if verdict.artifact_sha256 != sha256 or verdict.device != dict(identity) or verdict.version != VERDICT_VERSION:
        log.warning("%s: verdict for another artifact or device (%s); checking again", path, verdict.device)
        return None
    return verdict


def save_verdict(path: Path, verdict: Verdict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    tmp.write_text(json.dumps(asdict(verdict), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(path)


# --- the check ---------------------------------------------------------------------------------------
def gate_record(card: ModelCard, precision: str, sha256: str) -> ArtifactRecord:
    """The card's passed gate record of this exact artifact; ArtifactRefused when there is none."""
    for record in card.artifacts:
        if record.precision == precision and record.sha256 == sha256 and record.passed:
            return record
    known = [a.sha256[:12] for a in card.artifacts if a.precision == precision]
    raise ArtifactRefused(
        f"{card.name} {precision}: this file (sha256 {sha256[:12]}) never passed the accuracy gate: its card "
        f"records {', '.join(known) or 'no ' + precision + ' artifact'}; remake it with "
        f"emoedge quantize {card.name} --precision {precision}"
    )


def agreement_threshold(expected: float, n: int) -> float:
    """The lowest agreement on ``n`` samples consistent with ``expected``: three standard errors, at least 2 points."""
    spread = 3.0 * math.sqrt(max(expected * (1.0 - expected), 1e-4) / max(n, 1))
    return max(0.0, expected - max(MIN_MARGIN, spread))


def class_outputs(card: ModelCard, outputs: Sequence[str]) -> list[str]:
    from edge.export.gate import class_score_outputs

    return class_score_outputs(card, {k: np.zeros((1, 2)) for k in outputs})


def batch1_latency_ms(runner: Runner, feed: Mapping[str, np.ndarray], repeats: int = 25) -> float:
    """Median batch-1 latency of an active runner on one real input row."""
    row = {k: v[:1] for k, v in feed.items()}
    runner.infer(row)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        runner.infer(row)
        times.append((time.perf_counter() - t0) * 1000.0)
    return round(float(np.median(times)), 4)


def interleaved_latency_ms(runners: Mapping[str, Runner], feed: Mapping[str, np.ndarray], rounds: int = 5,
                           repeats: int = 6) -> dict[str, float]:
    """Median batch-1 latency of several active runners, measured in interleaved rounds so that load from
    other processes falls on all of them alike (a ranking, not a benchmark: ``emoedge bench`` is that)."""
    row = {k: v[:1] for k, v in feed.items()}
    times: dict[str, list[float]] = {name: [] for name in runners}
    for runner in runners.values():
        runner.infer(row)
    for _ in range(rounds):
        for name, runner in runners.items():
            for _ in range(repeats):
                t0 = time.perf_counter()
                runner.infer(row)
                times[name].append((time.perf_counter() - t0) * 1000.0)
    return {name: round(float(np.median(t)), 4) for name, t in times.items()}


def compare_on_samples(
    card: ModelCard, reference: Runner, candidate: Runner, inputs: Mapping[str, np.ndarray],
    labels: Mapping[str, np.ndarray] | None = None, batch: int = 32,
) -> tuple[float, float | None, int]:
    """Top-1 agreement of two active runners over ``inputs``, and the accuracy loss in points where labels exist."""
    from edge.export.gate import run_batches, top1_agreement

    n = len(next(iter(inputs.values())))
    batches = [{k: v[i : i + batch] for k, v in inputs.items()} for i in range(0, n, batch)]
    ref, cand = run_batches(reference, batches), run_batches(candidate, batches)
    agreement, _ = top1_agreement(card, ref, cand)
    loss = None
    if labels:
        names = class_outputs(card, list(ref))
        losses = []
        for name in names:
            head = next((h for h in labels if h in name or name in h), None) or (next(iter(labels)) if len(labels) == 1 else None)
            if head is None:
                continue
            y = np.asarray(labels[head])
            losses.append((np.mean(ref[name].argmax(-1) == y) - np.mean(cand[name].argmax(-1) == y)) * 100.0)
        loss = float(max(losses)) if losses else None
    return agreement, loss, n


def calibration_samples(card: ModelCard, calibration: str | os.PathLike[str] | None = None) -> Any | None:
    """The model's calibration set when it is on this device (None when absent; a broken one is logged)."""
    from edge.export.calibrate import load_calibration_set

    folder = calibration_dir(calibration) / card.name
    if not (folder / "samples.npz").is_file():
        return None
    try:
        return load_calibration_set(folder, card)
    except EmoEdgeError as exc:
        log.warning("%s: calibration samples not usable for the device check: %s", folder, exc)
        return None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# --- runners that check before they trust -------------------------------------------------------------
RunnerFactory = Callable[[Model], Runner]


@dataclass
class _Candidate:
    model: Model
    record: ArtifactRecord
    runner: Runner | None = None
    agree: int = 0
    seen: int = 0


class CheckedRunner(Runner):
    """A runner for one model that serves FP32 until a faster artifact has been checked on this device.

    ``requested`` is a precision or ``auto``. Candidates are checked on calibration samples at activation
    when they are present (cached verdicts are reused), otherwise in shadow mode on live windows. The
    outputs always come from a model that is FP32 or has passed here. ``status()`` says what was checked,
    the numbers, and why the active precision is the one in use.
    """

    def __init__(
        self, name_or_path: str | os.PathLike[str], requested: str, open_runner: RunnerFactory,
        models: str | os.PathLike[str] | None = None, calibration: str | os.PathLike[str] | None = None,
        cache: str | os.PathLike[str] | None = None, live_windows: int = LIVE_WINDOWS,
    ) -> None:
        super().__init__()
        if requested not in (*PRECISIONS, "auto"):
            raise ModelError(f"unknown precision '{requested}' (expected auto, {', '.join(PRECISIONS)})")
        self.requested = requested
        self._open = open_runner
        self._calibration = calibration
        self._verdicts = verdict_dir(cache)
        self.live_windows = live_windows
        self.fp32 = load_model(name_or_path, "fp32", models=models)
        self.model = self.fp32
        self.verdicts: dict[str, Verdict] = {}
        self.problems: dict[str, str] = {}  # precision -> why it was not even checked
        self.reason = ""
        self.on_change: Callable[[CheckedRunner], None] | None = None  # after a switch or a live verdict
        self._lock = threading.Lock()
        self._active_runner: Runner | None = None
        self._shadow: list[_Candidate] = []
        self._latency: dict[str, float] = {}
        order = PRECISIONS[::-1] if requested == "auto" else FALLBACK[requested]
        self._candidates: list[_Candidate] = []
        for precision in order:
            if precision == "fp32":
                continue
            try:
                model = load_model(name_or_path, precision, models=models)
                record = gate_record(model.card, precision, model.sha256)
            except EmoEdgeError as exc:
                absent = not (self.fp32.folder / PRECISION_FILES[precision]).exists()
                if precision == requested or not absent:  # a file that is there but unusable is worth a word
                    self.problems[precision] = str(exc)
                    log.warning("%s: %s not used: %s", self.fp32.name, precision, exc)
                continue
            self._candidates.append(_Candidate(model, record))

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
        """Requested and active precision, every verdict, pending checks and problems: for stats, status, doctor."""
        with self._lock:
            return {
                "requested": self.requested, "active": self.precision, "reason": self.reason,
                "checks": {p: v.summary() for p, v in self.verdicts.items()},
                "pending": [c.model.precision for c in self._shadow],
                "problems": dict(self.problems),
            }

    # --- lifecycle -------------------------------------------------------------------------------
    def _activate(self) -> None:
        fp32_runner = self._open(self.fp32)
        fp32_runner.activate()
        self.backend = fp32_runner.backend
        self._active_runner = fp32_runner
        if not self._candidates:
            self.reason = self._fp32_reason()
            return
        identity = device_identity(fp32_runner.backend)
        calib = calibration_samples(self.fp32.card, self._calibration)
        feed = calib.inputs if calib is not None else _zeros_feed(fp32_runner.inputs)
        self._latency["fp32"] = batch1_latency_ms(fp32_runner, feed)
        passed: list[tuple[str, Model, Runner]] = []
        for cand in self._candidates:
            path = verdict_path(self._verdicts, self.fp32.name, cand.model.precision, cand.model.sha256, identity)
            cached = load_verdict(path, cand.model.sha256, identity)
            if cached is not None:
                self.verdicts[cand.model.precision] = cached
                if cached.passed:
                    passed.append((cand.model.precision, cand.model, self._open_candidate(cand)))
                continue
            if calib is None:
                self._shadow.append(cand)
                continue
            runner = self._open_candidate(cand)
            agreement, loss, n = compare_on_samples(self.fp32.card, fp32_runner, runner, calib.inputs, calib.labels)
            verdict = self._verdict(cand, identity, agreement, loss, n, f"calibration samples (calibration/{self.fp32.name})")
            verdict.latency_ms = {"fp32": self._latency["fp32"], cand.model.precision: batch1_latency_ms(runner, feed)}
            save_verdict(path, verdict)
            self.verdicts[cand.model.precision] = verdict
            (log.info if verdict.passed else log.warning)("device check: %s", verdict.describe())
            if verdict.passed:
                passed.append((cand.model.precision, cand.model, runner))
            else:
                runner.deactivate()
        if passed and self.requested == "auto":  # rank the trusted ones side by side, now
            self._latency.update(interleaved_latency_ms({"fp32": fp32_runner, **{p: r for p, _, r in passed}}, feed))
        self._choose(passed)
        if self._shadow:
            for cand in self._shadow:
                cand.runner = self._open_candidate(cand)
                self._latency.setdefault(cand.model.precision, batch1_latency_ms(cand.runner, feed))
            self.reason += (f"; checking {', '.join(c.model.precision for c in self._shadow)} against FP32 on the first "
                            f"{self.live_windows} live windows (no calibration samples here); FP32 meanwhile")

    def _open_candidate(self, cand: _Candidate) -> Runner:
        runner = self._open(cand.model)
        runner.activate()
        return runner

    def _verdict(self, cand: _Candidate, identity: dict[str, str], agreement: float, loss: float | None,
                 n: int, data: str) -> Verdict:
        expected = float(cand.record.top1_agreement)
        threshold = agreement_threshold(expected, n)
        passed = agreement >= threshold
        reason = "" if passed else (
            f"agreement {agreement * 100:.1f}% is below {threshold * 100:.1f}% (the gate recorded "
            f"{expected * 100:.1f}% where the artifact was made)"
        )
        return Verdict(self.fp32.name, cand.model.precision, cand.model.sha256, identity, passed, agreement,
                       expected, threshold, n, data, {}, loss, reason, _now())

    def _choose(self, passed: list[tuple[str, Model, Runner]]) -> None:
        """Among FP32 and the passed candidates: the fastest for auto, else the first in fallback order."""
        options = [(p, m, r, self._latency.get(p) or self.verdicts[p].latency_ms.get(p, math.inf)) for p, m, r in passed]
        chosen = None
        if self.requested == "auto":
            best = self._latency.get("fp32", math.inf)
            for option in sorted(options, key=lambda o: o[3]):
                if option[3] <= best * (1.0 - AUTO_MIN_GAIN):
                    chosen, best = option, option[3]
                    break
        elif options:
            chosen = options[0]
        for option in options:
            if option is not chosen:
                option[2].deactivate()
        if chosen is None:
            self.reason = self._fp32_reason()
            return
        self._switch(chosen[1], chosen[2])
        timing = ", ".join(f"{p} {t:.3f} ms" for p, t in sorted(self._timings().items()))
        self.reason = (f"{chosen[0]} passed the device check" + (f"; fastest at batch 1 here ({timing})" if self.requested == "auto" else ""))

    def _timings(self) -> dict[str, float]:
        out = {p: t for v in self.verdicts.values() for p, t in v.latency_ms.items()}
        out.update(self._latency)
        return out

    def _fp32_reason(self) -> str:
        failed = [f"{p} failed ({v.reason})" for p, v in self.verdicts.items() if not v.passed]
        problems = [f"{p}: {why}" for p, why in self.problems.items()]
        if self.requested == "fp32":
            return "fp32 asked for"
        if self.requested == "auto" and not failed and not problems:
            if not self._candidates:
                return "fp32: no other precision ships for this model"
            timing = ", ".join(f"{p} {t:.3f} ms" for p, t in sorted(self._timings().items()))
            return f"fp32: no checked precision is faster here ({timing})"
        return "fp32 (fallback): " + "; ".join(failed + problems)

    def _switch(self, model: Model, runner: Runner) -> None:
        old = self._active_runner
        with self._lock:
            self.model, self._active_runner = model, runner
            self.backend = runner.backend
        if old is not None and old is not runner:
            old.deactivate()
        self._changed()
        log.info("%s: now running %s (%s)", self.fp32.name, model.precision, runner.backend)

    def _changed(self) -> None:
        if self.on_change is not None:
            try:
                self.on_change(self)
            except Exception:  # a reporting hook must never break inference
                log.exception("%s: device-check change hook failed", self.fp32.name)

    def summary(self) -> dict[str, Any]:
        """The short form for the ``status`` payload: asked, in use, why, and what failed here."""
        status = self.status()
        failed = {p: c for p, c in status["checks"].items() if not c["passed"]}
        failed.update({p: {"reason": why} for p, why in status["problems"].items()})
        return {"model": self.fp32.name, "requested": self.requested, "active": status["active"],
                "reason": status["reason"], **({"failed": failed} if failed else {})}

    def _deactivate(self) -> None:
        for cand in self._shadow:
            if cand.runner is not None:
                cand.runner.deactivate()
        self._shadow = []
        if self._active_runner is not None:
            self._active_runner.deactivate()
            self._active_runner = None

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
            names = class_outputs(self.fp32.card, list(reference))
            rows = len(next(iter(reference.values())))
            same = np.ones(rows, dtype=bool)
            for name in names:
                same &= np.asarray(reference[name]).argmax(-1) == np.asarray(got[name]).argmax(-1)
            cand.agree += int(same.sum())
            cand.seen += rows
        if got is not None and cand.seen < self.live_windows:
            return
        identity = device_identity(self.backend)
        if got is None:
            verdict = Verdict(self.fp32.name, cand.model.precision, cand.model.sha256, identity, False, None,
                              float(cand.record.top1_agreement), None, cand.seen, "live windows (shadow mode)",
                              reason=f"the artifact failed to run: {failure}", checked_at=_now())
        else:
            verdict = self._verdict(cand, identity, cand.agree / cand.seen, None, cand.seen, "live windows (shadow mode)")
        verdict.latency_ms = {p: t for p, t in self._latency.items() if p in ("fp32", cand.model.precision)}
        save_verdict(verdict_path(self._verdicts, self.fp32.name, cand.model.precision, cand.model.sha256, identity), verdict)
        (log.info if verdict.passed else log.warning)("device check: %s", verdict.describe())
        with self._lock:
            self.verdicts[cand.model.precision] = verdict
            self._shadow.pop(0)
        if verdict.passed and self.model.precision == "fp32" and (
            self.requested != "auto" or self._latency.get(cand.model.precision, math.inf)
            <= self._latency.get("fp32", math.inf) * (1.0 - AUTO_MIN_GAIN)
        ):
            remaining, self._shadow = self._shadow, []
            for other in remaining:
                if other.runner is not None:
                    other.runner.deactivate()
            assert cand.runner is not None
            self._switch(cand.model, cand.runner)
            self.reason = f"{cand.model.precision} passed the device check on live windows"
        else:
            if cand.runner is not None:
                cand.runner.deactivate()
            if not self._shadow and self.model.precision == "fp32":
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
