"""``emoedge quantize``: make an FP16 or INT8 artifact, gate it against FP32, write it only if it passed.

The candidate is written to a temporary file beside the model and renamed over ``model.fp16.onnx`` /
``model.int8.onnx`` only after it passed, so a refused candidate, a crash or a bad input never
replaces a good artifact. The gate's result goes into the card's ``artifacts`` either way (a refused
candidate as ``passed = false``, unless a previous good artifact is still in place, whose record stays).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from edge.card import (
    ArtifactRecord,
    Model,
    artifact_name,
    check_against_card,
    load_card,
    load_model,
    save_card,
    sha256_file,
)
from edge.errors import InputError
from edge.export.calibrate import CalibrationSet, load_calibration_set
from edge.export.gate import GateFailed, GateResult, gate_on_labelled_data, gate_on_samples
from edge.export.int8 import RECIPE as INT8_RECIPE
from edge.kinds import DERIVED_PRECISIONS
from edge.paths import calibration_dir

log = logging.getLogger(__name__)
FALLBACK_NOTE = (
    "no validation data given: top-1 agreement with FP32 on the calibration samples stands in for the task metric "
    "(for accuracy it bounds the loss; the samples are from the training split)"
)


@dataclass
class QuantizeOutcome:
    precision: str
    model: Model
    gate: GateResult
    record: ArtifactRecord
    path: Path | None  # the artifact written, None when refused
    kept_previous: bool = False  # refused, and an earlier good artifact stays in place
    details: str = ""

    def raise_for_gate(self) -> None:
        if not self.gate.passed:
            kept = (
                f"; the previous {self.precision} artifact is left in place"
                if self.kept_previous else f"; no {artifact_name(self.model.card.graph, self.precision)} was written"
            )
            raise GateFailed(self.gate.describe(f"{self.precision} artifact of {self.model.name}") + kept)


def _worst(gate: GateResult) -> str:
    head, values = max(gate.per_head.items(), key=lambda kv: kv[1]["loss_points"])
    where = f"{head} " if head != "all" else ""
    return f"{where}{gate.metric} lost {values['loss_points']:.2f} points (allowance {gate.allowance:g})"


def _calibration(model: Model, calibration: str | os.PathLike[str] | None, required: bool) -> CalibrationSet | None:
    folder = calibration_dir(calibration) / model.card.name
    if not required and not (folder / "manifest.json").exists():
        return None
    return load_calibration_set(folder, model.card)


def quantize_model(
    name_or_path: str | os.PathLike[str],
    precision: str,
    method: str = "minmax",
    op_types: str = "weighted",
    data_dir: str | os.PathLike[str] | None = None,
    split: str = "validation",
    limit: int | None = None,
    models: str | os.PathLike[str] | None = None,
    calibration: str | os.PathLike[str] | None = None,
    command: str | None = None,
    threads: int = 0,
    batch_size: int = 32,
) -> QuantizeOutcome:
    from edge.backends.ort import OnnxRuntimeRunner

    if precision not in DERIVED_PRECISIONS:
        raise InputError(f"--precision must be fp16 or int8 (got '{precision}')")
    model = load_model(name_or_path, "fp32", models=models)
    card = model.card
    allowance = card.quantization.max_loss_points
    calib = _calibration(model, calibration, required=precision == "int8" or data_dir is None)
    final = model.folder / artifact_name(card.graph, precision)
    candidate = model.folder / f".{final.stem}.tmp-{os.getpid()}.onnx"
    summary = None
    try:
        if precision == "fp16":
            from edge.export.fp16 import convert_fp16

            convert_fp16(model.path, candidate)
        else:
            from edge.export.int8 import quantize_int8

            assert calib is not None
            summary = quantize_int8(model.path, candidate, calib.batches(batch_size), method=method, op_types=op_types)
        check_against_card(card, candidate, model.card_path)

        with OnnxRuntimeRunner(model.path, threads=threads) as reference, OnnxRuntimeRunner(candidate, threads=threads) as cand:
            if data_dir is not None:
                from edge.evaluation import evaluator_for

                evaluator = evaluator_for(card)
                data = evaluator.load_split(card, Path(data_dir), split, limit=limit, seed=0, mode=None)
                if not data.inputs or len(data) == 0:
                    raise InputError(f"{data_dir}: the {split} split gave no samples to measure '{card.name}' on")
                gate = gate_on_labelled_data(card, evaluator, data, reference, cand, allowance)
            else:
                assert calib is not None
                gate = gate_on_samples(
                    card, calib.batches(batch_size), reference, cand, allowance,
                    data=f"calibration/{card.name} ({len(calib)} samples, {calib.manifest.get('split', '?')} split)",
                    note=FALLBACK_NOTE,
                )
        record = ArtifactRecord(
            precision=precision,  # type: ignore[arg-type]
            file=final.name,
            sha256=sha256_file(candidate),
            source_sha256=model.sha256,
            metric=gate.metric,
            fp32=round(gate.fp32, 6),
            value=round(gate.value, 6),
            loss_points=round(gate.loss_points, 4),
            top1_agreement=round(gate.top1_agreement, 6),
            passed=gate.passed,
            command=command or f"emoedge quantize {card.name} --precision {precision}",
            measured_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            calibration=(f"calibration/{card.name} (samples sha256 {str(calib.manifest.get('samples_sha256'))[:16]})"
                         if calib is not None and precision == "int8" else None),
            method=method if precision == "int8" else None,
            op_types=op_types if precision == "int8" else None,
            recipe=INT8_RECIPE if precision == "int8" else None,
            data=gate.data,
            n=gate.n,
            allowance=allowance,
            per_head={h: {k: round(float(v), 6) for k, v in d.items()} for h, d in gate.per_head.items()} if len(gate.per_head) > 1 else {},
            note=gate.note or (None if gate.passed else f"refused: {_worst(gate)}"),
        )
        kept_previous = land_candidate(candidate, final, record, model.card_path, card.artifacts)
    finally:
        candidate.unlink(missing_ok=True)
    details = ""
    if summary is not None:
        ops = ", ".join(f"{k} x{v}" for k, v in sorted(summary.quantized_ops.items()))
        left = ", ".join(f"{k} x{v}" for k, v in sorted(summary.float_ops.items())) or "none"
        details = f"INT8 ({method}, {op_types} operators): quantized {ops}; left in float: {left}"
    return QuantizeOutcome(precision, model, gate, record, final if gate.passed else None, kept_previous, details)


def land_candidate(candidate: Path, final: Path, record: ArtifactRecord, card_path: Path,
                   artifacts: list[ArtifactRecord], graph: str | None = None) -> bool:
    """Put a gated file in place and its record in the card (``graph``'s artifacts for a many-graph card).

    A refusal is recorded too, except where a file of that precision passed before and is still the one on
    disk: a refusal never replaces a file that passed. Returns whether that previous file was kept.
    """
    kept_previous = False
    if record.passed:
        os.replace(candidate, final)
    else:
        previous = next((a for a in artifacts if a.precision == record.precision and a.passed), None)
        kept_previous = previous is not None and final.is_file() and sha256_file(final) == previous.sha256
    if record.passed or not kept_previous:
        fresh = load_card(card_path)  # re-read: touch only the artifacts part
        if graph is None:
            fresh.artifacts = [a for a in fresh.artifacts if a.precision != record.precision] + [record]
        for spec in fresh.graphs if graph is not None else []:
            if spec.name == graph:
                spec.artifacts = [a for a in spec.artifacts if a.precision != record.precision] + [record]
        save_card(fresh, card_path)
    return kept_previous
