"""Bench results as a Markdown table (to paste into a report), JSON (everything) and CSV (one line a row).

``compare`` puts a run beside a baseline run as ratios, for spotting regressions.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge.errors import InputError

COLUMNS: list[tuple[str, str, Callable[[dict[str, Any]], Any]]] = [
    ("model", "model", lambda r: r["model"] + (" (peer)" if r.get("peer") else "")),
    ("backend", "backend", lambda r: r["backend"]),
    ("precision", "precision", lambda r: r["precision"]),
    ("status", "status", lambda r: r["status"]),
    ("device check", "device_check", lambda r: r.get("device_check")),
    ("size KiB", "file_kib", lambda r: None if r.get("file_mib") is None else r["file_mib"] * 1024),
    ("params", "parameters", lambda r: r.get("parameters")),
    ("accuracy", "accuracy", lambda r: r.get("accuracy")),
    ("top-1 = FP32", "agreement_top1", lambda r: r.get("agreement_top1")),
    ("p50 ms", "latency_p50_ms", lambda r: (r.get("latency_ms") or {}).get("p50")),
    ("p90 ms", "latency_p90_ms", lambda r: (r.get("latency_ms") or {}).get("p90")),
    ("p99 ms", "latency_p99_ms", lambda r: (r.get("latency_ms") or {}).get("p99")),
    ("best /s (batch)", "best_throughput", lambda r: r.get("best_throughput")),
    ("load ms", "load_ms", lambda r: r.get("load_ms")),
    ("peak MiB", "peak_rss_mib", lambda r: r.get("peak_rss_mib")),
    ("mJ/inf", "energy_mj_per_inference", lambda r: r.get("energy_mj_per_inference")),
]
# Figures compared against a baseline, and whether bigger is better.
FIGURES: dict[str, bool] = {
    "latency_p50_ms": False, "latency_p90_ms": False, "latency_p99_ms": False, "best_throughput": True,
    "load_ms": False, "peak_rss_mib": False, "file_kib": False, "accuracy": True, "agreement_top1": True,
    "energy_mj_per_inference": False,
}


def _fmt(value: Any, key: str) -> str:
    if value is None:
        return ""
    if key in ("accuracy", "agreement_top1"):
        return f"{100 * value:.1f}%"
    if key == "parameters":
        return f"{value:,}"
    if isinstance(value, float):
        if value >= 100:
            return f"{value:.0f}"
        if value >= 10:
            return f"{value:.1f}"
        if value >= 0.1:
            return f"{value:.2f}"
        return f"{value:.3f}"
    return str(value)


def _cell(row: dict[str, Any], key: str, get: Callable[[dict[str, Any]], Any]) -> str:
    value = get(row)
    text = _fmt(value, key)
    if key == "best_throughput" and value is not None:
        text += f" ({row.get('best_batch')})"
    if key == "status" and row.get("reason"):
        text += "*"  # the reason is listed under the table
    return text.replace("|", "/")


def flat(row: dict[str, Any]) -> dict[str, Any]:
    """A row's figures under the flat keys of COLUMNS and FIGURES (for CSV and comparisons)."""
    out = {key: get(row) for _, key, get in COLUMNS}
    out["model"] = row["model"]
    for batch, value in (row.get("throughput") or {}).items():
        out[f"throughput_b{batch}"] = value
    out["best_batch"] = row.get("best_batch")
    out["reason"] = row.get("reason", "")
    out["peer"] = bool(row.get("peer"))
    out["accuracy_metric"] = row.get("accuracy_metric")
    out["accuracy_n"] = row.get("accuracy_n")
    out["agreement_on"] = row.get("agreement_on")
    out["inputs"] = row.get("inputs")
    device = row.get("device") or {}
    out["mean_power_mw"] = device.get("mean_power_mw")
    out["max_temperature_c"] = device.get("max_temperature_c")
    out["gpu_load_pct"] = device.get("gpu_load_pct")
    out["ram_used_mb_max"] = device.get("ram_used_mb_max")
    for batch, value in (row.get("energy_mj_per_sample") or {}).items():
        out[f"energy_mj_per_sample_b{batch}"] = value
    return out


def markdown(result: dict[str, Any]) -> str:
    """The table, with the environment and notes under it."""
    from edge.bench.environment import describe

    rows = result["rows"]
    # Leave out columns that are empty in every row (e.g. energy off a Jetson), but keep the identity columns.
    keep = [(title, key, get) for title, key, get in COLUMNS
            if key in ("model", "backend", "precision", "status") or any(get(r) is not None for r in rows)]
    lines = ["| " + " | ".join(t for t, _, _ in keep) + " |", "|" + "|".join("---" for _ in keep) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row, key, get) for _, key, get in keep) + " |")
    opts = result.get("options", {})
    lines.append("")
    # One line per model, backend and reason (an untrained model's reason holds for every precision).
    reasons: dict[tuple[str, str, str, str], list[str]] = {}
    for row in rows:
        if row.get("reason"):
            reasons.setdefault((row["model"], row["backend"], row["status"], row["reason"]), []).append(row["precision"])
    for (model, backend, status, reason), precisions in reasons.items():
        lines.append(f"\\* {model} {backend} {', '.join(precisions)}: {status}: {reason}")
    lines += [
        "",
        f"Environment: {describe(result.get('environment', {}))}.",
        f"Latency: batch 1, {opts.get('iterations')} calls after {opts.get('warmup')} warm-up calls, "
        f"{opts.get('threads') or 'default'} threads; throughput at batch sizes {opts.get('batches')}, "
        f"{opts.get('throughput_seconds')} s each.",
    ]
    accuracy_rows = [r for r in rows if r.get("accuracy") is not None]
    if accuracy_rows:
        sources = sorted({f"{r['model']}: {r.get('accuracy_metric')} on {r.get('accuracy_n')} samples of "
                          f"{r.get('accuracy_data') or 'validation data'}" for r in accuracy_rows})
        lines.append("Accuracy: " + "; ".join(sources) + ".")
    agreement = sorted({f"{r['model']}: {r['agreement_on']}" for r in rows if r.get("agreement_on")})
    if agreement:
        lines.append("Top-1 agreement with the FP32 model (ONNX Runtime CPU) on " + "; ".join(agreement) + ".")
    methods = sorted({r["peak_memory_method"] for r in rows if r.get("peak_memory_method")})
    if methods:
        lines.append("Peak MiB: " + "; ".join(methods) + ".")
    for name, status in (result.get("device_checks") or {}).items():
        lines.append(f"Device check, {name}: auto runs {status.get('active')} here: {status.get('reason')}.")
    for note in result.get("notes", []):
        lines.append(f"Note: {note}")
    return "\n".join(lines)


def write_json(result: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    p.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    return p


def write_csv(result: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    flats = [flat(r) for r in result["rows"]]
    fields: list[str] = []
    for f in flats:
        fields += [k for k in f if k not in fields]
    with p.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(flats)
    return p


def read_baseline(path: str | os.PathLike[str]) -> Any:
    """An earlier run's JSON file (``--compare``), with a clear error when it is missing or not JSON."""
    p = Path(path)
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{p}: baseline file not found") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{p}: not JSON ({exc})") from None


def load_result(path: str | os.PathLike[str]) -> dict[str, Any]:
    p = Path(path)
    result = read_baseline(p)
    if not isinstance(result, dict) or not str(result.get("schema", "")).startswith("emoedge-bench/") or "rows" not in result:
        raise InputError(f"{p}: not an emoedge bench result (expected a JSON object with schema 'emoedge-bench/1' and rows)")
    return result


def compare(result: dict[str, Any], baseline: dict[str, Any], tolerance: float = 0.10) -> tuple[str, list[str]]:
    """Each figure as a ratio current/baseline (Markdown), and the figures that got worse by more than tolerance."""
    key = lambda r: (r["model"], r["backend"], r["precision"])  # noqa: E731
    base = {key(r): flat(r) for r in baseline["rows"] if r.get("status") == "ok"}
    header = ["model", "backend", "precision", *FIGURES]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    worse: list[str] = []
    for row in result["rows"]:
        if row.get("status") != "ok":
            continue
        old = base.get(key(row))
        cells = [row["model"], row["backend"], row["precision"]]
        now = flat(row)
        for figure, bigger_is_better in FIGURES.items():
            a, b = now.get(figure), (old or {}).get(figure)
            if a is None or b is None or b == 0:
                cells.append("" if old else "new")
                continue
            ratio = a / b
            regress = ratio < 1 - tolerance if bigger_is_better else ratio > 1 + tolerance
            cells.append(f"{ratio:.2f}x" + (" !" if regress else ""))
            if regress:
                worse.append(f"{'/'.join(cells[:3])} {figure}: {b:.4g} -> {a:.4g} ({ratio:.2f}x)")
        lines.append("| " + " | ".join(cells) + " |")
    gone = sorted(set(base) - {key(r) for r in result["rows"] if r.get("status") == "ok"})
    if gone:
        lines.append("")
        lines.append("In the baseline but not measured now: " + ", ".join("/".join(k) for k in gone))
    env_now, env_base = result.get("environment", {}), baseline.get("environment", {})
    differs = [k for k in ("cpu_model", "cpu_cores_usable", "tensorrt", "gpus", "jetson")
               if env_now.get(k) != env_base.get(k)]
    if differs:
        lines.append("")
        lines.append("Warning: the baseline ran on a different machine or setup (" + ", ".join(differs) +
                     "): ratios compare machines, not code.")
    lines.append("")
    lines.append(f"Ratios are current / baseline ({baseline.get('created', '?')}); '!' marks a change for the worse "
                 f"by more than {tolerance:.0%}.")
    return "\n".join(lines), worse
