#!/usr/bin/env python3
"""INT8 and FP16 against FP32 on ONNX Runtime CPU, in one run: size, batch-1 latency, batch-32 throughput, accuracy.

    python tools/quant_report.py                         # every model in models/ with its artifacts
    python tools/quant_report.py face speech --data face=$EMOEDGE_DATA/fer2013 --threads 1 --json out.json

Inputs are the model's calibration samples (``calibration/NAME``), so every precision sees the same
real inputs. The precisions are measured in interleaved rounds (FP32, FP16, INT8, FP32, ...), so that
load from other processes falls on all of them alike; ratios are against FP32 of the same run.
Accuracy is measured on the validation split when ``--data NAME=DIR`` is given, else taken from the
gate's record in the card (marked "card").
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PRECISIONS = ("fp32", "fp16", "int8")


def _inputs(model: Any, count: int) -> dict[str, np.ndarray]:
    """``count`` real input rows (the calibration samples, repeated if needed); zeros when there is no set."""
    from edge.export.calibrate import load_calibration_set
    from edge.paths import calibration_dir

    try:
        calib = load_calibration_set(calibration_dir() / model.card.name, model.card)
        return {k: np.resize(v, (count, *v.shape[1:])).astype(v.dtype) for k, v in calib.inputs.items()}
    except Exception:
        return {
            t.name: np.zeros((count, *[d if isinstance(d, int) else 1 for d in t.shape[1:]]), np.dtype(t.dtype))
            for t in model.card.inputs
        }


def measure(names: list[str], data: dict[str, str], iterations: int, rounds: int, threads: int,
            models: str | None = None) -> list[dict[str, Any]]:
    from edge.backends.ort import OnnxRuntimeRunner
    from edge.card import list_models, load_model

    rows: list[dict[str, Any]] = []
    folders = [Path(n) for n in names] if names else list_models(models)
    for folder in folders:
        loaded = {}
        for precision in PRECISIONS:
            try:
                loaded[precision] = load_model(folder if folder.is_dir() else str(folder), precision, models=models)
            except Exception as exc:
                print(f"{folder.name}: no {precision}: {exc}", file=sys.stderr)
        if "fp32" not in loaded:
            continue
        fp32 = loaded["fp32"]
        batch32 = _inputs(fp32, 32)
        batch1 = [{k: v[i : i + 1] for k, v in batch32.items()} for i in range(32)]
        runners = {p: OnnxRuntimeRunner(m.path, threads=threads) for p, m in loaded.items()}
        lat: dict[str, list[float]] = {p: [] for p in runners}
        thr: dict[str, list[float]] = {p: [] for p in runners}
        for r in runners.values():
            r.activate()
        try:
            for r in runners.values():  # warm-up
                for feed in batch1[:5]:
                    r.infer(feed)
                r.infer(batch32)
            per_round = max(1, iterations // rounds)
            for _ in range(rounds):
                for p, r in runners.items():
                    for i in range(per_round):
                        start = time.perf_counter()
                        r.infer(batch1[i % 32])
                        lat[p].append((time.perf_counter() - start) * 1e3)
                    start = time.perf_counter()
                    for _ in range(max(1, per_round // 8)):
                        r.infer(batch32)
                    thr[p].append(32 * max(1, per_round // 8) / (time.perf_counter() - start))
            accuracy = _accuracy(loaded, runners, data.get(fp32.card.name))
        finally:
            for r in runners.values():
                r.deactivate()
        base_thr = float(np.median(thr["fp32"]))
        base_p50 = float(np.percentile(lat["fp32"], 50))
        for p, m in loaded.items():
            p50 = float(np.percentile(lat[p], 50))
            rows.append({
                "model": m.card.name, "precision": p, "size_kb": round(m.path.stat().st_size / 1024, 1),
                "p50_ms": round(p50, 4), "p99_ms": round(float(np.percentile(lat[p], 99)), 4),
                "throughput_b32": round(float(np.median(thr[p])), 1),
                "speedup_vs_fp32": round(float(np.median(thr[p])) / base_thr, 3),
                "p50_vs_fp32": round(p50 / base_p50, 3),
                **accuracy.get(p, {}), "threads": threads,
            })
    return rows


def _accuracy(loaded: dict[str, Any], runners: dict[str, Any], data_dir: str | None) -> dict[str, dict[str, Any]]:
    from edge.evaluation import evaluator_for
    from edge.export.gate import task_scores

    fp32 = loaded["fp32"]
    metric = fp32.card.quantization.metric
    out: dict[str, dict[str, Any]] = {}
    if data_dir:
        evaluator = evaluator_for(fp32.card)
        split = evaluator.load_split(fp32.card, Path(data_dir), "validation")
        for p, r in runners.items():
            scores = task_scores(evaluator.evaluate(r, loaded[p].card, split), metric)
            out[p] = {"metric": metric, "value": round(float(np.mean(list(scores.values()))), 4), "source": f"measured, n={len(split)}"}
        return out
    records = {a.precision: a for a in fp32.card.artifacts if a.passed}
    for p in loaded:
        if p == "fp32" and records:
            record = next(iter(records.values()))  # every gate record carries the FP32 score it compared with
            out[p] = {"metric": record.metric, "value": round(record.fp32, 4), "source": "card"}
        elif p in records and records[p].sha256 == loaded[p].sha256:
            out[p] = {"metric": records[p].metric, "value": round(records[p].value, 4), "source": "card"}
    return out


def markdown(rows: list[dict[str, Any]]) -> str:
    head = ("| model | precision | size (KiB) | b1 p50 (ms) | b1 p99 (ms) | b32 throughput (/s) | vs FP32 | metric | value |\n"
            "|---|---|---:|---:|---:|---:|---:|---|---:|")
    lines = [head]
    for r in rows:
        value = f"{r['value'] * 100:.2f}" if "value" in r else "-"
        lines.append(
            f"| {r['model']} | {r['precision']} | {r['size_kb']:.1f} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | "
            f"{r['throughput_b32']:.0f} | {r['speedup_vs_fp32']:.2f}x | {r.get('metric', '-')} ({r.get('source', '-')}) | {value} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="model folders (default: every model in models/)")
    parser.add_argument("--data", action="append", default=[], metavar="NAME=DIR",
                        help="measure accuracy of NAME on the validation split of DIR")
    parser.add_argument("--iterations", type=int, default=400, help="batch-1 runs per precision (default 400)")
    parser.add_argument("--rounds", type=int, default=8, help="interleaved rounds (default 8)")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (default 1)")
    parser.add_argument("--models", help="models folder")
    parser.add_argument("--json", help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    data = dict(item.split("=", 1) for item in args.data)
    names = [str(Path(n)) if Path(n).is_dir() else n for n in args.names]
    if args.names:
        from edge.card import resolve_model_folder

        names = [str(resolve_model_folder(n, args.models)) for n in args.names]
    rows = measure(names, data, args.iterations, args.rounds, args.threads, args.models)
    print(markdown(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
