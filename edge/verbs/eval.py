"""``emoedge eval NAME --data DIR``: a model's metrics on labelled data, through a real runner."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from datetime import datetime, timezone
from typing import Any

from edge.verbs import add_verb


def register(sub: Any) -> None:
    parser = add_verb(
        sub, "eval", "measure a model on labelled data: accuracy, macro-F1, balanced accuracy, recall per class",
        "  emoedge eval face --data ../shared/data/fer2013/validation\n"
        "  emoedge eval speech --data ../shared/data/ravdess_speech_16k --precision int8 --json\n"
        "  emoedge eval eeg --data ../shared/data/eeg_deap_bandpower --write-card",
    )
    parser.add_argument("name", help="model name or folder")
    parser.add_argument("--data", required=True, help="data folder in the layout of the matching shared data set")
    parser.add_argument("--split", default="validation", help="which split of DIR (default: validation)")
    parser.add_argument("--backend", default="onnxruntime", choices=["auto", "onnxruntime", "tensorrt"])
    parser.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "int8"])
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--limit", type=int, help="evaluate at most N samples (a seeded, stratified slice)")
    parser.add_argument("--mode", help="evaluation mode where the model has several (e.g. speaker-norm)")
    parser.add_argument("--models", help="models folder")
    parser.add_argument("--adapt", type=int, metavar="K", help="per-person adaptation protocol: each person's first K "
                        "samples per class enroll, the rest are scored, against the population model on the same samples")
    parser.add_argument("--json", action="store_true", help="one JSON object")
    parser.add_argument("--write-card", action="store_true", help="record the metrics in the model's card")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edge.backends import open_runner
    from edge.card import MetricRecord, load_model, save_card
    from edge.evaluation import evaluator_for
    from edge.pipeline import label_heads

    model = load_model(args.name, precision=args.precision, models=args.models)
    if args.precision != "fp32":  # a file no passed gate vouches for is refused, as `run` refuses it
        from edge.trust import gate_record

        gate_record(model.card, args.precision, model.sha256)
    label_heads(model.card)  # a card whose labels do not match the model's outputs is refused, as run refuses it
    module = evaluator_for(model.card)
    data = module.load_split(model.card, args.data, args.split, limit=args.limit, mode=args.mode)
    with open_runner(model, backend=args.backend, threads=args.threads) as runner:
        if args.adapt is not None:
            from edge.evaluation import adaptation as module  # the adaptation protocol and its report

            result = module.evaluate_adapted(runner, model, data, args.adapt)
        else:
            result = module.evaluate(runner, model.card, data)
    result.setdefault("skipped", data.skipped)
    result["model"] = model.name
    result["backend"] = runner.backend
    result["precision"] = args.precision
    result["data"] = data.description
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        module.print_report(result) if hasattr(module, "print_report") else print(json.dumps(result, indent=2))
    if args.write_card:
        argv = ["emoedge", "eval", *[a for a in sys.argv[2:] if a != "--write-card"]] if sys.argv[1:2] == ["eval"] else []
        command = shlex.join(argv) if argv else f"emoedge eval {args.name} --data {args.data}"
        record = MetricRecord(
            command=command, data=data.description, split=args.split, backend=runner.backend,
            precision=args.precision,
            mode=(args.mode or data.extra.get("mode", "default")) + (f"+adapt{args.adapt}" if args.adapt is not None else ""),
            measured_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            values=_without_none({k: v for k, v in result.items() if k not in ("model", "backend", "precision", "data")}),
        )
        card = model.card
        card.metrics = [m for m in card.metrics if (m.split, m.backend, m.precision, m.mode) != (
            record.split, record.backend, record.precision, record.mode)] + [record]
        save_card(card, model.card_path)
        print(f"metrics written to {model.card_path}", file=sys.stderr)
    return 0


def _without_none(value: Any) -> Any:
    """TOML has no null: leave out None values (a class with no scored samples has recall None)."""
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_none(v) for v in value]
    return value
