"""``emoedge quantize NAME --precision fp16|int8``: make the artifact and gate it against FP32."""

from __future__ import annotations

import argparse
import json
from typing import Any

from edge.kinds import DERIVED_PRECISIONS
from edge.verbs import add_verb


def register(sub: Any) -> None:
    parser = add_verb(
        sub, "quantize",
        "make model.fp16.onnx or model.int8.onnx (QDQ), written only when it keeps the card's accuracy allowance",
        "  emoedge quantize face --precision int8 --data ../shared/data/fer2013\n"
        "  emoedge quantize speech --precision int8 --method entropy --data ../shared/data/ravdess_speech_16k\n"
        "  emoedge quantize eeg --precision fp16     (no --data: top-1 agreement on the calibration samples)",
        description=(
            "Make an FP16 (FP32 inputs and outputs) or INT8 (QDQ, symmetric, per-channel; from calibration/NAME) "
            "artifact, measure it against FP32 on the validation split with the card's metric and top-1 agreement, "
            "and write it only when the loss is within the card's quantization.max_loss_points. Exit 4 when refused."
        ),
    )
    parser.add_argument("name", help="model name or folder")
    parser.add_argument("--precision", required=True, choices=DERIVED_PRECISIONS)
    parser.add_argument("--method", default="minmax", choices=["minmax", "entropy", "percentile"],
                        help="INT8 calibration method (default: minmax)")
    parser.add_argument("--op-types", default="weighted", choices=["weighted", "all"],
                        help="INT8: quantize the weighted operators and what runs between them (default), or all "
                        "that ONNX Runtime can (Add, Softmax, ...)")
    parser.add_argument("--data", help="labelled data folder for the gate (its validation split)")
    parser.add_argument("--split", default="validation", help="split of --data the gate measures on")
    parser.add_argument("--limit", type=int, help="measure on at most N samples (seeded, stratified)")
    parser.add_argument("--models", help="models folder")
    parser.add_argument("--calibration", help="calibration folder (default: calibration/, or EMOEDGE_CALIBRATION)")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="the gate's result as one JSON object")
    parser.add_argument("--graph", default=None, metavar="NAME",
                        help="a model's second graph (scene: decoder), gated on whole explanations of --data's held-out "
                             "images (token agreement, emotion consistency; edge.export.quantize_decoder)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from edge.export.quantize import quantize_model
    from edge.verbs.calibrate import recorded_command

    command = recorded_command("quantize", f"emoedge quantize {args.name} --precision {args.precision}")
    if args.graph is not None:
        return _run_graph(args, command)
    outcome = quantize_model(
        args.name, args.precision, method=args.method, op_types=args.op_types, data_dir=args.data, split=args.split, limit=args.limit,
        models=args.models, calibration=args.calibration, command=command, threads=args.threads,
    )
    if args.json:
        print(json.dumps(outcome.record.model_dump(mode="json", exclude_none=True), indent=2))
    else:
        if outcome.details:
            print(outcome.details)
        if outcome.gate.passed:
            print(outcome.gate.describe(f"{args.precision} artifact of {outcome.model.name}"))
            print(f"wrote {outcome.path} and its record in {outcome.model.card_path}")
    if not outcome.gate.passed:
        if not outcome.kept_previous:
            print(f"refusal recorded in {outcome.model.card_path}", file=sys.stderr)
        outcome.raise_for_gate()
    return 0


def _run_graph(args: argparse.Namespace, command: str) -> int:
    """``--graph decoder``: the scene decoder's FP16/INT8 through its text gate."""
    from edge.errors import InputError
    from edge.export.gate import GateFailed
    from edge.export.quantize_decoder import quantize_decoder

    if args.graph != "decoder":
        raise InputError(f"--graph {args.graph}: only a scene model's 'decoder' has a gate of its own")
    gate, record, path = quantize_decoder(args.name, args.precision, args.data, limit=args.limit, models=args.models,
                                          threads=args.threads or 1, command=command)
    if args.json:
        print(json.dumps(record.model_dump(mode="json", exclude_none=True), indent=2))
    else:
        print(gate.describe(f"{args.precision} decoder of {args.name}"))
        for fp32, other in gate.examples:
            print(f"  fp32: {fp32}\n  {args.precision}: {other}")
        print(f"wrote {path}" if path is not None else "refused: no file written; the refusal is in the card")
    if not gate.passed:
        raise GateFailed(f"the {args.precision} decoder of {args.name} did not pass its gate")
    return 0
