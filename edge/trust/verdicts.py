"""Device-check verdicts: what one artifact did against FP32 on one device, and where the verdict is kept.

See ``edge.trust`` for the why. A verdict is keyed by the artifact's sha256 (the ONNX file, or the
TensorRT engine file), the runtime and its version, and the CPU's instruction sets or the GPU.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from edge.backends.base import Runner
from edge.card import ArtifactRecord, ModelCard, sha256_file
from edge.errors import EmoEdgeError, ModelError
from edge.paths import atomic_write, cache_dir, calibration_dir

log = logging.getLogger(__name__)

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
    with atomic_write(path, "w") as f:
        f.write(json.dumps(asdict(verdict), indent=2, sort_keys=True) + "\n")


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


def agreement_threshold(expected: float, n: int, gate_n: int | None = None) -> float:
    """The lowest agreement on ``n`` samples consistent with ``expected``: three standard errors, at least 2 points.

    ``gate_n``: the samples ``expected`` was measured on, itself a sample. 100% on 266 windows does not mean
    that no window ever disagrees (one in ~270 is as likely), and with 32 live windows a single disagreement
    (96.9%) then failed a sound FP16 against a 98% bar on an AVX2 machine. With it, the disagreement rate is
    at least one in ``gate_n + 2`` and both samples' errors count."""
    if gate_n:
        p = min(expected, 1.0 - 1.0 / (gate_n + 2))
        spread = 3.0 * math.sqrt(p * (1.0 - p) * (1.0 / max(n, 1) + 1.0 / gate_n))
    else:
        spread = 3.0 * math.sqrt(max(expected * (1.0 - expected), 1e-4) / max(n, 1))
    return max(0.0, expected - max(MIN_MARGIN, spread))


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
    from edge.export.gate import class_score_outputs, run_batches, top1_agreement

    n = len(next(iter(inputs.values())))
    batches = [{k: v[i : i + batch] for k, v in inputs.items()} for i in range(0, n, batch)]
    ref, cand = run_batches(reference, batches), run_batches(candidate, batches)
    agreement, _ = top1_agreement(card, ref, cand)
    loss = None
    if labels:
        names = class_score_outputs(card, ref)
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


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")




def record_engine_verdict(
    model: str, precision: str, engine: Path, trt_version: str, gpu: str, agreement: float, expected: float,
    n: int, data: str, cache: str | os.PathLike[str] | None = None,
) -> Verdict:
    """Keep an engine's post-build comparison as its device-check verdict (``emoedge build``), so that the
    runtime trusts the engine it built without checking it again; the key is the runtime's own."""
    identity = {"runtime": f"tensorrt {trt_version}", "hardware": gpu}
    label = f"{precision}@tensorrt"
    sha = sha256_file(engine)
    threshold = agreement_threshold(expected, n)
    verdict = Verdict(model, label, sha, identity, agreement >= threshold, agreement, expected, threshold, n, data,
                      reason="" if agreement >= threshold else f"agreement {agreement * 100:.1f}% is below "
                      f"{threshold * 100:.1f}% after the build", checked_at=now())
    save_verdict(verdict_path(verdict_dir(cache), model, label, sha, identity), verdict)
    return verdict

