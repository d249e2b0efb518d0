"""``emoedge bench scene``: what the scene model costs beyond its encoder row: the estimate (encoder) and
a whole explanation (encoder + key/value-cached decoding, at most 24 tokens), p50/p90/p99 per image.

Rows of the harness time the encoder graph like any model; this adds, for models whose card has a
decoder, the end-to-end figures the issue's budget is about (estimate < 40 ms, explanation < 200 ms
p50 on one CPU thread).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from edge.card import load_model
from edge.scene.demo import demo_scenes


def explanation_latency(model_name: str, precision: str = "fp32", threads: int = 1, iterations: int = 30,
                        warmup: int = 3, beam: int | None = None, models: str | None = None,
                        frames: list[np.ndarray] | None = None) -> dict[str, Any]:
    """Per-image estimate and explanation latency on ONNX Runtime (ms percentiles), tokens and truncation."""
    from edge.scene.model import SceneModel

    model = load_model(model_name, precision=precision, models=models)
    frames = frames or demo_scenes(8)
    est_ms, total_ms, tokens, truncated = [], [], [], 0
    with SceneModel(model, threads=threads, beam=beam) as scene:
        if scene.decoder is None:
            return {}
        for i in range(warmup):
            scene.explain(scene.estimate(frames[i % len(frames)]))
        for i in range(iterations):
            t0 = time.perf_counter()
            est = scene.estimate(frames[i % len(frames)])
            t1 = time.perf_counter()
            exp = scene.explain(est)
            t2 = time.perf_counter()
            est_ms.append((t1 - t0) * 1e3)
            total_ms.append((t2 - t0) * 1e3)
            tokens.append(len(exp.tokens))
            truncated += exp.truncated

    def pct(values: list[float]) -> dict[str, float]:
        return {f"p{q}": float(np.percentile(values, q)) for q in (50, 90, 99)}

    return {"estimate_ms": pct(est_ms), "explanation_ms": pct(total_ms), "beam": scene.beam, "threads": threads,
            "mean_tokens": float(np.mean(tokens)), "truncated": truncated, "iterations": iterations,
            "max_tokens": scene.max_tokens}


def add_to_rows(result: dict[str, Any], threads: int, iterations: int, models: str | None = None) -> None:
    """Adds ``scene`` figures to every ok ONNX Runtime row of a model with a decoder (in place)."""
    for row in result.get("rows", []):
        if row.get("status") != "ok" or row.get("backend") != "onnxruntime" or row.get("peer"):
            continue
        card = load_model(row["model"], row["precision"], models=models).card
        if not any(g.name == "decoder" for g in card.graphs):
            continue
        row["scene"] = explanation_latency(row["model"], row["precision"], threads=max(threads, 1) if threads else 1,
                                           iterations=iterations, models=models)


def markdown(result: dict[str, Any]) -> str:
    """The scene figures as a table (empty when no row has them)."""
    lines = []
    for row in result.get("rows", []):
        s = row.get("scene")
        if s:
            lines.append(f"| {row['model']} | {row['precision']} | {s['threads']} | {s['estimate_ms']['p50']:.1f} | "
                         f"{s['explanation_ms']['p50']:.1f} | {s['explanation_ms']['p90']:.1f} | {s['beam']} | "
                         f"{s['mean_tokens']:.1f} | {s['truncated']}/{s['iterations']} |")
    if not lines:
        return ""
    head = ("| model | precision | threads | estimate p50 ms | explanation p50 ms | explanation p90 ms | beam | "
            "tokens | truncated |\n|---|---|---|---|---|---|---|---|---|")
    return "\n\nScene explanations (encoder + decoder, one image at a time):\n\n" + head + "\n" + "\n".join(lines)
