"""The e2e bench's result: per-stage percentiles from what the subscriber received, the table, and the
comparison with an earlier ``e2e.json`` (``--compare``) that names the stage that got slower."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from edge.bench.report import read_baseline
from edge.errors import EmoEdgeError

E2E_SCHEMA = "emoedge-e2e/1"
COMPARE_FLOOR_MS = 1.0
# (stage in the report, key in an estimate's latency_ms), in the order a window goes through them
PIPELINE_STAGES = (("capture", "capture"), ("queue", "queue"), ("detect", "detect_track"), ("features", "features"),
                   ("inference", "infer"), ("fusion", "fusion"))


def percentiles(values_ms: np.ndarray) -> dict[str, float | None]:
    if not values_ms.size:
        return {"p50_ms": None, "p99_ms": None}
    return {"p50_ms": round(float(np.percentile(values_ms, 50)), 2), "p99_ms": round(float(np.percentile(values_ms, 99)), 2)}


def stage_percentiles(received: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Per-stage p50/p99 (ms) over the received estimates, from the stage times each estimate carries.

    The pipeline's stages come from the estimate's ``latency_ms`` (see ``edge.pipeline``); ``publish`` is
    what is left between the hand-off to the publisher and the subscriber's receive time, split into
    ``outbox`` (stored, then picked up by the sender thread: up to ``pub_ts``) and ``network`` (paho,
    the broker and the subscriber's client).
    """
    per_stage: dict[str, list[float]] = {}
    for row in received:
        lat = row.get("latency_ms") or {}
        for stage, key in PIPELINE_STAGES:
            if key in lat:
                per_stage.setdefault(stage, []).append(float(lat[key]))
        handed = lat.get("capture_to_publish")
        if handed is None:
            continue
        total = (float(row["received"]) - float(row["ts"])) * 1e3
        per_stage.setdefault("publish", []).append(total - float(handed))
        if row.get("pub_ts") is not None:
            outbox = (float(row["pub_ts"]) - float(row["ts"])) * 1e3 - float(handed)
            per_stage.setdefault("outbox", []).append(outbox)
            per_stage.setdefault("network", []).append((float(row["received"]) - float(row["pub_ts"])) * 1e3)
    order = [stage for stage, _ in PIPELINE_STAGES] + ["publish", "outbox", "network"]
    return {stage: percentiles(np.asarray(per_stage[stage])) for stage in order if stage in per_stage}


TABLE_STAGES = ("capture", "queue", "detect", "features", "inference", "fusion", "publish")


def _cpus(result: dict[str, Any]) -> str:
    """The CPUs the run could use ('1 of 2 CPUs' under taskset, where the machine's count would mislead)."""
    usable, total = result.get("cpus"), result.get("cpus_total")
    return f"{usable} of {total} CPUs" if total is not None and usable != total else f"{usable} CPUs"


def format_result(result: dict[str, Any]) -> str:
    lines = [f"end-to-end latency (window end -> subscriber), {result['duration_s']} s, broker {result['broker']}, "
             f"video: {result['video']}, load {result['load_avg_1m']} on {_cpus(result)}"]
    lines.append(f"{'source':<8} {'estimates':>9} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}  notes")
    for name, e in result["sources"].items():
        note = (f"{e['frames_processed_fps']} of {e['frames_in_fps']} frames/s processed, {e['faces_per_s']} faces/s"
                if name == "camera" else f"{e['samples_per_s']} samples/s")
        note += "".join(f", {e[k]}" for k in ("model", "precision") if e.get(k))
        lines.append(f"{name:<8} {e['estimates']:>9} {e['p50_ms']!s:>8} {e['p99_ms']!s:>8} {e['max_ms']!s:>8}  {note}")
    lines.append("")
    lines.append("per stage, p50 / p99 ms (publish = outbox + network):")
    lines.append(f"{'source':<8} " + " ".join(f"{s:>15}" for s in TABLE_STAGES))
    for name, e in result["sources"].items():
        cells = []
        for stage in TABLE_STAGES:
            fig = e.get("stages", {}).get(stage)
            cells.append(f"{fig['p50_ms']!s} / {fig['p99_ms']!s}" if fig else "-")
        lines.append(f"{name:<8} " + " ".join(f"{c:>15}" for c in cells))
    return "\n".join(lines)


def load_e2e(path: str | os.PathLike[str]) -> dict[str, Any]:
    """An earlier ``e2e.json``, checked to be one."""
    p = Path(path)
    result = read_baseline(p)
    if not isinstance(result, dict) or result.get("schema") != E2E_SCHEMA or not isinstance(result.get("sources"), dict):
        raise EmoEdgeError(f"{p}: not an emoedge e2e result (expected a JSON object with schema {E2E_SCHEMA!r} and sources)")
    return result


def compare_e2e(result: dict[str, Any], baseline: dict[str, Any], tolerance: float = 0.10,
                floor_ms: float = COMPARE_FLOOR_MS) -> tuple[str, list[str]]:
    """Each source's total and stage p50/p99 as a ratio now/baseline (Markdown), and the regressions.

    A figure regressed when it grew by more than ``tolerance`` and by more than ``floor_ms`` (stages
    of a few microseconds double from scheduling noise alone).
    """
    header = ["source", "figure", "baseline p50", "now p50", "p50", "baseline p99", "now p99", "p99"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    worse: list[str] = []
    for name, entry in result["sources"].items():
        old = baseline["sources"].get(name)
        if old is None:
            lines.append(f"| {name} | (new) |" + " |" * (len(header) - 2))
            continue
        figures = [("total", entry, old)] + [
            (stage, entry.get("stages", {}).get(stage), old.get("stages", {}).get(stage))
            for stage in entry.get("stages", {})
        ]
        for figure, now, then in figures:
            if not now or not then:
                continue
            cells = [name, figure]
            for q in ("p50_ms", "p99_ms"):
                a, b = now.get(q), then.get(q)
                if a is None or b is None:
                    cells += ["", "", ""]
                    continue
                ratio = a / b if b > 0 else float("inf") if a > 0 else 1.0
                regress = a - b > floor_ms and ratio > 1 + tolerance
                cells += [f"{b:.2f}", f"{a:.2f}", f"{ratio:.2f}x" + (" !" if regress else "")]
                if regress:
                    worse.append(f"{name} {figure} {q[:3]}: {b:.2f} -> {a:.2f} ms ({ratio:.2f}x)")
            lines.append("| " + " | ".join(cells) + " |")
    gone = sorted(set(baseline["sources"]) - set(result["sources"]))
    if gone:
        lines += ["", "In the baseline but not measured now: " + ", ".join(gone)]
    if result.get("environment") != baseline.get("environment"):
        lines += ["", "Note: measured on a different machine or software stack than the baseline (see environment)."]
    return "\n".join(lines), worse
