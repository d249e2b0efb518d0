"""The benchmark behind ``emoedge bench``: one row per model x backend x precision.

Each row loads the artifact through a real runner and measures, in this order: load time; batch-1
latency percentiles after warm-up; throughput at each batch size; peak resident memory over all of
that; top-1 agreement with the FP32 model on the same inputs; accuracy on the model's validation data
when the data is there. A combination that cannot run here (no INT8 file, no TensorRT) is a row with
its status and reason, never a crash of the whole run.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from edge.backends.base import Runner
from edge.bench import BENCH_BACKENDS
from edge.bench.targets import (
    BenchOptions,
    Target,
    dataset_folder,
    fixed_batch,
    make_feed,
    open_target,
    run_batched,
    targets_from_models,
    top1_of,
)
from edge.card import PRECISION_FILES
from edge.errors import BackendUnavailable, EmoEdgeError, ModelError

log = logging.getLogger(__name__)
SCHEMA = "emoedge-bench/1"


# --- measurement ------------------------------------------------------------------------------

def _percentiles(values_ms: Sequence[float]) -> dict[str, float]:
    a = np.asarray(values_ms, dtype=np.float64)
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "mean": float(a.mean()),
            "min": float(a.min()), "max": float(a.max()), "n": int(a.size)}


def _headline(result: dict[str, Any], metric: str) -> tuple[float | None, str]:
    """The metric's value, or the mean over sub-tasks (EEG: valence and arousal) when it is nested."""
    value = result.get(metric)
    if isinstance(value, (int, float)):
        return float(value), metric
    # EEG heads: {"valence": {metric: ...}}; HiSTN: {"valence": {"levels": {metric: ...}, "binary": ...}}
    heads = {k: v.get("levels", v) if isinstance(v, dict) else v for k, v in result.items()}
    nested = {k: v[metric] for k, v in heads.items() if isinstance(v, dict) and isinstance(v.get(metric), (int, float))}
    if nested:
        return float(np.mean(list(nested.values()))), f"mean {metric} of {', '.join(nested)}"
    return None, metric


class BenchRun:
    """Runs the rows of one ``emoedge bench`` invocation and keeps what they share (data, FP32 references)."""

    def __init__(self, options: BenchOptions, sampler: Any = None, progress: Callable[[str], None] | None = None) -> None:
        self.options = options
        self.sampler = sampler  # a started TegrastatsSampler, or None
        self.progress = progress or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self._validation: dict[str, Any] = {}
        self._reference: dict[str, tuple[dict[str, np.ndarray], dict[str, np.ndarray], str]] = {}
        self.notes: list[str] = []

    # --- shared per target ---------------------------------------------------------------------
    def validation(self, target: Target) -> Any:
        """The target's validation set (or None with a note), loaded once per run."""
        if target.name in self._validation:
            return self._validation[target.name]
        data = None
        try:
            if target.load_validation is not None:
                data = target.load_validation(self.options)
            elif self.options.data_dir is not None:
                from edge.evaluation import evaluator_for

                module = evaluator_for(target.card)
                data = module.load_split(target.card, dataset_folder(target.card, self.options.data_dir), "validation",
                                         limit=self.options.limit, seed=self.options.seed)
        except (EmoEdgeError, ImportError, FileNotFoundError, OSError) as exc:
            self.notes.append(f"{target.name}: no validation data ({type(exc).__name__}: {str(exc).splitlines()[0]}); "
                              "accuracy left empty, agreement measured on random inputs")
        self._validation[target.name] = data
        return data

    def _evaluate(self, target: Target, runner: Runner, data: Any) -> dict[str, Any]:
        if target.evaluate is not None:
            return target.evaluate(runner, data)
        from edge.evaluation import evaluator_for

        return evaluator_for(target.card).evaluate(runner, target.card, data)

    def reference(self, target: Target) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], str] | None:
        """Agreement inputs and the FP32 ONNX Runtime CPU model's top-1 on them."""
        if target.name in self._reference:
            return self._reference[target.name]
        data = self.validation(target)
        n = self.options.agreement_samples
        try:
            _, runner = open_target(target, "onnxruntime", "fp32", self.options.threads)
        except EmoEdgeError as exc:
            self.notes.append(f"{target.name}: no FP32 reference for agreement ({exc})")
            return None
        with runner:
            if data is not None:
                inputs = {k: v[:n] for k, v in data.inputs.items()}
                source = f"{len(next(iter(inputs.values())))} validation samples"
            else:
                rng = np.random.default_rng(self.options.seed)
                inputs = make_feed(runner, n, None, rng, any_batch=True)
                source = f"{n} random inputs"
            top1 = top1_of(target.card, run_batched(runner, inputs, 32))
        self._reference[target.name] = (inputs, top1, source)
        return self._reference[target.name]

    # --- one row ---------------------------------------------------------------------------------
    def row(self, target: Target, backend: str, precision: str) -> dict[str, Any]:
        o = self.options
        row: dict[str, Any] = {
            "model": target.name, "backend": backend, "precision": precision, "peer": target.peer,
            "status": "ok", "reason": "", "parameters": target.card.parameters,
        }
        self.progress(f"bench: {target.name} {backend} {precision}")
        try:
            model, runner = open_target(target, backend, precision, o.threads)
        except (ModelError, BackendUnavailable) as exc:
            row.update(status="unavailable", reason=str(exc).splitlines()[0])
            return row
        except EmoEdgeError as exc:
            row.update(status="error", reason=str(exc).splitlines()[0])
            return row
        row["file"] = str(model.path)
        row["file_mib"] = model.path.stat().st_size / (1 << 20)
        row["sha256"] = model.sha256
        try:
            self._measure(target, runner, row)
        except EmoEdgeError as exc:
            row.update(status="error", reason=str(exc).splitlines()[0])
        except Exception as exc:  # a backend or evaluator failure costs this row, not the whole run
            log.exception("bench row %s %s %s failed", target.name, backend, precision)
            row.update(status="error", reason=f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        finally:
            runner.deactivate()
        return row

    def _measure(self, target: Target, runner: Runner, row: dict[str, Any]) -> None:
        o = self.options
        rng = np.random.default_rng(o.seed)
        data = self.validation(target)
        pool = None if data is None else {k: v[: max(o.batches)] for k, v in data.inputs.items()}
        row["inputs"] = "validation samples" if pool is not None else "random"
        t0 = time.perf_counter()
        runner.activate()
        row["load_ms"] = (time.perf_counter() - t0) * 1e3
        providers = getattr(runner, "active_providers", None)  # ONNX Runtime's, where the runner has them
        if providers is not None:
            row["providers"] = providers
        fixed = fixed_batch(runner)

        feed = make_feed(runner, fixed or 1, pool, rng)
        for _ in range(o.warmup):
            runner.infer(feed)
        latencies = []
        start = self.sampler.mark() if self.sampler else 0.0
        for _ in range(o.iterations):
            runner.infer(feed)
            latencies.append(runner.last_latency_ms or 0.0)
        end = self.sampler.mark() if self.sampler else 0.0
        row["latency_batch"] = fixed or 1
        row["latency_ms"] = _percentiles(latencies)
        if o.keep_latencies:
            row["latencies_ms"] = [round(v, 5) for v in latencies]
        if self.sampler is not None:
            power = self.sampler.summarise(start, end)
            row["device"] = power
            if power.get("energy_mj") is not None:
                row["energy_mj_per_inference"] = power["energy_mj"] / (o.iterations * (fixed or 1))

        throughput: dict[str, float] = {}
        skipped: list[str] = []
        for batch in o.batches:
            if fixed and batch != fixed:
                skipped.append(f"batch {batch} (the model has a fixed batch of {fixed})")
                continue
            feed = make_feed(runner, batch, pool, rng)
            for _ in range(max(2, o.warmup // 4)):
                runner.infer(feed)
            calls, t = 0, time.perf_counter()
            start = self.sampler.mark() if self.sampler else 0.0
            while calls < 5 or time.perf_counter() - t < o.throughput_seconds:
                runner.infer(feed)
                calls += 1
            throughput[str(batch)] = batch * calls / (time.perf_counter() - t)
            if self.sampler is not None:
                energy = self.sampler.summarise(start, self.sampler.mark()).get("energy_mj")
                if energy is not None:
                    row.setdefault("energy_mj_per_sample", {})[str(batch)] = energy / (batch * calls)
        row["throughput"] = throughput
        if skipped:
            row["reason"] = "skipped " + "; ".join(skipped)
        if throughput:
            best = max(throughput, key=lambda b: throughput[b])
            row["best_batch"], row["best_throughput"] = int(best), throughput[best]
        if o.measure_memory:
            from edge.bench.memory import measure_in_child

            memory = measure_in_child(Path(row["file"]), row["backend"], o.batches, o.threads, target.folder,
                                      row["precision"], pool)
            row["peak_rss_mib"] = memory.get("peak_mib")
            row["peak_memory_method"] = memory.get("method") or memory.get("error")

        ref = self.reference(target)
        if ref is not None:
            inputs, ref_top1, source = ref
            top1 = top1_of(target.card, run_batched(runner, inputs, 32))
            shared = [k for k in ref_top1 if k in top1]
            if shared:
                row["agreement_top1"] = float(min(np.mean(top1[k] == ref_top1[k]) for k in shared))
                row["agreement_on"] = source
        if data is not None:
            result = self._evaluate(target, runner, data)
            metric = target.card.quantization.metric
            value, label = _headline(result, metric)
            row["accuracy"], row["accuracy_metric"] = value, label
            row["accuracy_n"] = len(data)
            row["accuracy_data"] = getattr(data, "description", "")


def run_bench(targets: Sequence[Target], options: BenchOptions, sampler: Any = None,
              progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """All rows for every target x backend x precision, with the environment; JSON-ready."""
    from edge.bench import environment

    bench = BenchRun(options, sampler, progress)
    rows = []
    for target in targets:
        if target.note:
            bench.notes.append(target.note)
        for backend in options.backends:
            for precision in options.precisions:
                if target.peer and precision != "fp32":
                    continue
                rows.append(bench.row(target, backend, precision))
    checks = device_checks([t for t in targets if not t.peer], options.threads)
    for row in rows:
        status = checks.get(row["model"])
        if status is not None and row["backend"] == "onnxruntime":
            row["device_check"] = device_check_cell(status, row["precision"])
    opts = asdict(options)
    opts["data_dir"] = str(options.data_dir) if options.data_dir else None
    return {
        "device_checks": checks,
        "schema": SCHEMA,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["emoedge", *sys.argv[1:]]) if sys.argv[1:2] == ["bench"] else None,
        "environment": environment.collect(),
        "options": opts,
        "rows": rows,
        "notes": bench.notes,
    }


def device_checks(targets: Sequence[Target], threads: int) -> dict[str, dict[str, Any]]:
    """Each model's device check on ONNX Runtime here (``edge.trust``): every precision's verdict and what
    ``precision = "auto"`` runs, and why. A model that cannot be checked gets its error as the reason."""
    from edge.backends import open_runner
    from edge.errors import EmoEdgeError
    from edge.trust import check_model

    out: dict[str, dict[str, Any]] = {}
    for target in targets:
        if target.folder is None:
            continue
        try:
            out[target.name] = check_model(target.folder, "auto", lambda m: open_runner(
                m, backend="onnxruntime", precision=m.precision, threads=threads))
        except EmoEdgeError as exc:
            out[target.name] = {"requested": "auto", "active": None, "reason": str(exc).splitlines()[0],
                                "checks": {}, "pending": [], "problems": {}}
    return out


def device_check_cell(status: dict[str, Any], precision: str) -> str:
    """One table cell: this precision's verdict here, and whether auto picks it."""
    check = status["checks"].get(precision)
    if precision == "fp32":
        cell = "reference"
    elif check is not None:
        cell = ("passed" if check["passed"] else "FAILED") + (
            f" {check['agreement'] * 100:.1f}%" if check.get("agreement") is not None else "")
    elif precision in status.get("problems", {}):
        cell = "refused"
    elif precision in status.get("pending", []):
        cell = "pending (live)"
    else:
        cell = "-"
    return cell + (" (auto)" if status.get("active") == precision else "")


__all__ = ["BENCH_BACKENDS", "PRECISION_FILES", "BenchOptions", "BenchRun", "Target", "run_bench",
           "targets_from_models"]
