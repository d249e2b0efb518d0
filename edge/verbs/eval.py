"""``emoedge eval NAME --data DIR``: a model's metrics on labelled data, through a real runner."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from datetime import datetime, timezone
from typing import Any

from edge.kinds import BACKENDS, PRECISIONS
from edge.verbs import add_verb


def register(sub: Any) -> None:
    parser = add_verb(
        sub, "eval", "measure a model on labelled data: accuracy, macro-F1, balanced accuracy, recall per class",
        "  emoedge eval face --data ../shared/data/fer2013/validation\n"
        "  emoedge eval speech --data ../shared/data/ravdess_speech_16k --precision int8 --json\n"
        "  emoedge eval eeg --data ../shared/data/eeg_deap_bandpower --write-card\n"
        "  emoedge eval speech --data ../shared/data/ased_speech_16k --restrict-to-data-labels\n"
        "  emoedge eval speech --data ../shared/data/ravdess_speech_16k --fit-temperature --write-card\n"
        "  emoedge eval speech --data ../shared/data/ravdess_speech_16k --fit-ood --ood OUTLIERS --write-card\n"
        "  emoedge eval speech_multi --data ../shared/data/ravdess_speech_16k,../shared/data/ased_speech_16k --fit-temperature\n"
        "\n"
        "Every run reports the headline balanced accuracy (unweighted average recall) and, for models with\n"
        "logits, ece (15 bins) and mean_confidence with the card's temperatures (what a device publishes),\n"
        "beside the uncalibrated figures. OUTLIERS holds made-up inputs, one folder per kind (make them with\n"
        "python -m edge.evaluation.outliers MODALITY OUTLIERS).",
    )
    parser.add_argument("name", help="model name or folder")
    parser.add_argument("--data", required=True,
                        help="data folder in the layout of the matching shared data set; speech: DIR,DIR scores the "
                             "held-out speakers of several corpora as one set (a model trained on them)")
    parser.add_argument("--split", default="validation", help="which split of DIR (default: validation)")
    parser.add_argument("--backend", default="onnxruntime", choices=BACKENDS)
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--limit", type=int, help="evaluate at most N samples (a seeded, stratified slice)")
    parser.add_argument("--mode", help="evaluation mode where the model has several (e.g. speaker-norm)")
    parser.add_argument("--models", help="models folder")
    parser.add_argument("--adapt", type=int, metavar="K", help="per-person adaptation protocol: each person's first K "
                        "samples per class enroll, the rest are scored, against the population model on the same samples")
    parser.add_argument("--json", action="store_true", help="one JSON object")
    parser.add_argument("--write-card", action="store_true", help="record the metrics in the model's card")
    parser.add_argument("--restrict-to-data-labels", action="store_true",
                        help="also score among the classes the data set has (the cross-corpus protocol), beside the "
                        "unrestricted figures")
    parser.add_argument("--fit-temperature", action="store_true",
                        help="fit a temperature per logits output on this split (the 'after' figures cross-fitted: "
                        "by speaker or subject, else 5 stratified folds); --write-card stores it as [confidence]")
    parser.add_argument("--ood", metavar="OUTLIER_DIR",
                        help="made-up outliers, one folder per kind: report ood_auroc against this split")
    parser.add_argument("--fit-ood", action="store_true",
                        help="fit the out-of-distribution statistics on the train split of DIR and the threshold on "
                        "this split (needs --ood); --write-card stores them as [ood]")
    parser.add_argument("--ood-train", metavar="DIR[,DIR]",
                        help="with --fit-ood: the folders whose train splits give the statistics (default: --data), "
                        "for a model trained on several corpora")
    parser.add_argument("--ood-inliers", metavar="DIR[,DIR]",
                        help="with --fit-ood: more folders whose held-out split joins this one as the inliers the "
                        "threshold (and the choice of statistics) is set on, for a model trained on several corpora "
                        "whose evaluator reads one folder at a time (scene: Emotion6 and OASIS)")
    parser.add_argument("--ood-background", metavar="DIR",
                        help="with --fit-ood: examples of what the model must not name, one folder per kind (face: "
                        "python -m edge.evaluation.outliers face-background DIR --data PHOTOS); a background direction "
                        "learnt from them joins the distance")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edge.backends import open_runner
    from edge.card import ConfidenceRecord, MetricRecord, OodRecord, load_model, save_card
    from edge.errors import ConfigError
    from edge.evaluation import batch_of, confidence_report, evaluator_for, infer_outputs
    from edge.pipeline.readout import label_heads

    model = load_model(args.name, precision=args.precision, models=args.models)
    if args.precision != "fp32":  # a file no passed gate vouches for is refused, as `run` refuses it
        from edge.trust import gate_record

        gate_record(model.card, args.precision, model.sha256)
    label_heads(model.card)  # a card whose labels do not match the model's outputs is refused, as run refuses it
    module = evaluator_for(model.card)
    wants = args.restrict_to_data_labels or args.fit_temperature or args.ood or args.fit_ood
    if wants and not hasattr(module, "heads"):
        raise ConfigError(f"model '{model.name}': its evaluator has no logits to calibrate or score (no heads())")
    if args.fit_ood and not args.ood:
        raise ConfigError("--fit-ood needs --ood OUTLIER_DIR (made-up outliers to report the detection rate on)")
    if args.ood_inliers and not args.fit_ood:
        raise ConfigError("--ood-inliers only applies with --fit-ood (it sets the threshold's inliers)")
    if args.ood_background and not args.fit_ood:
        raise ConfigError("--ood-background only applies with --fit-ood (the card keeps the direction it fits)")
    data = module.load_split(model.card, args.data, args.split, limit=args.limit, mode=args.mode)
    with open_runner(model, backend=args.backend, threads=args.threads) as runner:
        if args.adapt is not None:
            from edge.evaluation import adaptation as adapt_module  # the adaptation protocol and its report

            result = adapt_module.evaluate_adapted(runner, model, data, args.adapt)
            extra = {}
        elif hasattr(module, "heads"):
            raw = infer_outputs(runner, model.card, data, batch_of(module))
            result = module.evaluate(runner, model.card, data, raw=raw)
            extra = confidence_report(
                runner, model.card, module, data, raw, result, restrict=args.restrict_to_data_labels,
                fit_temperature=args.fit_temperature, outliers=args.ood, fit_ood=args.fit_ood,
                train_data=(args.ood_train or args.data) if args.fit_ood else None, mode=args.mode,
                more_inliers=args.ood_inliers, split=args.split, background=args.ood_background,
            )
        else:
            result = module.evaluate(runner, model.card, data)
            extra = {}
    result.setdefault("skipped", data.skipped)
    result["model"] = model.name
    result["backend"] = runner.backend
    result["precision"] = args.precision
    result["data"] = data.description
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        module.print_report(result) if hasattr(module, "print_report") else print(json.dumps(result, indent=2))
        _print_confidence(result)
    if args.write_card:
        argv = ["emoedge", "eval", *[a for a in sys.argv[2:] if a != "--write-card"]] if sys.argv[1:2] == ["eval"] else []
        command = shlex.join(argv) if argv else f"emoedge eval {args.name} --data {args.data}"
        record = MetricRecord(
            command=command, data=data.description, split=args.split, backend=runner.backend,
            precision=args.precision,
            mode=(args.mode or data.extra.get("mode", "default")) + (f"+adapt{args.adapt}" if args.adapt is not None else ""),
            measured_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            values={k: v for k, v in result.items() if k not in ("model", "backend", "precision", "data")},
        )
        card = model.card
        card.metrics = [m for m in card.metrics if (m.split, m.backend, m.precision, m.mode, _dataset(m.data)) != (
            record.split, record.backend, record.precision, record.mode, _dataset(record.data))] + [record]
        if "confidence" in extra:
            card.confidence = ConfidenceRecord(command=command, measured_at=record.measured_at, **extra["confidence"])
        if "ood" in extra:
            card.ood = OodRecord(command=command, measured_at=record.measured_at, **extra["ood"])
        save_card(card, model.card_path)
        print(f"metrics written to {model.card_path}", file=sys.stderr)
    return 0


def _dataset(description: str) -> str:
    """The data set a metric record measured (its description up to the split details): a record of
    another corpus (ASED beside RAVDESS) is kept, not replaced."""
    return description.split(":", 1)[0].split(" (", 1)[0].rstrip("/")


def _print_confidence(result: dict[str, Any]) -> None:
    """The calibration, restricted and out-of-distribution figures that the modality's table leaves out."""
    blocks = [(None, result)] + [(k, v) for k, v in result.items() if isinstance(v, dict)]
    for key, m in blocks:
        if "temperature" not in m or "ece" not in m:  # a calibrated head's block (not, say, decoding settings)
            continue
        name = f"{key}: " if key else ""
        un = m.get("uncalibrated", {})
        n = f"{m['ece_clusters']} label clusters" if "ece_clusters" in m else "this n"
        chance = f" (a perfectly calibrated model: {m['ece_floor']:.3f} on {n}; p {m['ece_p']:.2f})" \
            if "ece_p" in m else ""
        print(f"{name}ece {m['ece']:.3f}{chance}, mean confidence {m['mean_confidence']:.3f} at temperature "
              f"{m['temperature']:.3g} (uncalibrated: ece {un.get('ece', float('nan')):.3f}, "
              f"mean confidence {un.get('mean_confidence', float('nan')):.3f})")
        if "fit" in m:
            f = m["fit"]
            print(f"{name}fitted temperature {f['temperature']:.3g}; cross-fitted ({f['folds']} folds): ece "
                  f"{f['cross_fitted']['ece']:.3f}, mean confidence {f['cross_fitted']['mean_confidence']:.3f}")
        if "accepted" in m:
            a = m["accepted"]
            print(f"{name}the {a['n']} samples the OOD gate lets through ({1 - result['ood_rejected']:.0%}): balanced "
                  f"accuracy {a['balanced_accuracy']:.3f}, ece {a['ece']:.3f}, mean confidence {a['mean_confidence']:.3f}")
        if "restricted" in m:
            r = m["restricted"]
            print(f"{name}restricted to the data's labels {r['labels']}: balanced accuracy "
                  f"{r['balanced_accuracy']:.3f}, accuracy {r['accuracy']:.3f}, macro-F1 {r['macro_f1']:.3f}, "
                  f"ece {r['ece']:.3f}")
    if "ood_auroc" in result:
        kinds = ", ".join(f"{k} {v:.3f}" for k, v in result["ood_auroc_by_kind"].items())
        flagged = ", ".join(f"{k} {v:.2f}" for k, v in result["ood_flagged"].items())
        print(f"ood_auroc {result['ood_auroc']:.3f} ({kinds}); share flagged at the threshold: {flagged}")
