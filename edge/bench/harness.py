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
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from edge.backends.base import Runner
from edge.bench import BENCH_BACKENDS
from edge.card import PRECISION_FILES, Model, load_model
from edge.errors import BackendUnavailable, EmoEdgeError, ModelError

log = logging.getLogger(__name__)
SCHEMA = "emoedge-bench/1"


# The shared data folder's data set for each modality: `--data` may name the data root or the set itself.
DATASETS = {"face": "fer2013", "speech": "ravdess_speech_16k", "eeg": "eeg_deap_bandpower", "vision": "emotion6_256"}
# Models whose data set is not their modality's (raw EEG is DASPS, not DEAP band power): by name, checked first.
MODEL_DATASETS = {"histn": "dasps"}


def dataset_folder(card: Any, data_dir: Path) -> Path:
    """``data_dir/<the model's or modality's data set>`` when that exists, else ``data_dir`` itself."""
    name = MODEL_DATASETS.get(card.name) or DATASETS.get(card.modality)
    sub = Path(data_dir) / (name or "")
    return sub if name and sub.is_dir() else Path(data_dir)


@dataclass
class BenchOptions:
    backends: list[str] = field(default_factory=lambda: ["onnxruntime"])
    precisions: list[str] = field(default_factory=lambda: ["fp32", "fp16", "int8"])
    batches: list[int] = field(default_factory=lambda: [1, 8, 32])
    threads: int = 0
    warmup: int = 20
    iterations: int = 200
    data_dir: Path | None = None
    limit: int | None = 1000  # validation samples for accuracy; None = the whole split
    agreement_samples: int = 256
    throughput_seconds: float = 1.0  # timed calls per batch size last at least this long (and 5 calls)
    measure_memory: bool = True  # peak RSS of the model in a fresh process (edge.bench.memory)
    seed: int = 0
    keep_latencies: bool = True  # per-call latencies in the JSON, for plots


@dataclass
class Target:
    """Something to benchmark: a model folder with a card, or a peer model made for comparison."""

    name: str
    card: Any  # ModelCard
    folder: Path | None
    peer: bool = False
    note: str = ""
    # For peers: the artifacts per precision and their own evaluation (they have no evaluator module).
    artifacts: dict[str, Path] = field(default_factory=dict)
    load_validation: Callable[[BenchOptions], Any] | None = None
    evaluate: Callable[[Runner, Any], dict[str, Any]] | None = None

    def model(self, precision: str) -> Model:
        """The loaded Model for a precision; ModelError when the artifact is absent."""
        if self.folder is not None and not self.artifacts:
            return load_model(self.folder, precision=precision)
        path = self.artifacts.get(precision)
        if path is None:
            raise ModelError(f"no {precision} artifact for {self.name} (peers are compared at FP32 only)")
        if not path.is_file():
            raise ModelError(f"{path}: model file not found")
        from edge.card import sha256_file

        return Model(folder=path.parent, card=self.card, precision=precision, path=path, sha256=sha256_file(path))


# --- inputs -----------------------------------------------------------------------------------

def _feed(runner: Runner, batch: int, pool: dict[str, np.ndarray] | None, rng: np.random.Generator,
          any_batch: bool = False) -> dict[str, np.ndarray]:
    """A batch for each runner input: real samples from ``pool`` (tiled as needed), else random data.

    ``any_batch`` makes ``batch`` samples even for a fixed-batch model (to be fed in chunks)."""
    feed: dict[str, np.ndarray] = {}
    for meta in runner.inputs:
        if pool is not None and meta.name in pool:
            source = pool[meta.name]
            idx = np.arange(batch) % len(source)
            feed[meta.name] = np.ascontiguousarray(source[idx]).astype(meta.dtype, copy=False)
            continue
        shape = []
        for i, dim in enumerate(meta.shape):
            if i == 0 and (any_batch or not isinstance(dim, int) or dim <= 0):
                shape.append(batch)
            elif isinstance(dim, int) and dim > 0:
                shape.append(dim)
            else:
                raise ModelError(
                    f"input '{meta.name}' has a dynamic dimension {dim!r} at axis {i}; random inputs cannot size it: "
                    "give --data so that real samples are used"
                )
        if not any_batch and isinstance(meta.shape[0], int) and meta.shape[0] > 0 and meta.shape[0] != batch:
            raise ModelError(f"input '{meta.name}' has a fixed batch of {meta.shape[0]}, not {batch}")
        if np.issubdtype(meta.dtype, np.floating):
            feed[meta.name] = rng.uniform(-1, 1, size=shape).astype(meta.dtype)
        elif meta.dtype == np.bool_:
            feed[meta.name] = rng.integers(0, 2, size=shape).astype(np.bool_)
        else:
            feed[meta.name] = rng.integers(0, 8, size=shape).astype(meta.dtype)
    return feed


def _fixed_batch(runner: Runner) -> int | None:
    dims = {m.shape[0] for m in runner.inputs if m.shape and isinstance(m.shape[0], int) and m.shape[0] > 0}
    return dims.pop() if len(dims) == 1 else None


# --- measurement ------------------------------------------------------------------------------

def _open(target: Target, backend: str, precision: str, threads: int) -> tuple[Model, Runner]:
    model = target.model(precision)
    if backend == "tensorrt":
        from edge.backends import open_runner

        return model, open_runner(model, backend="tensorrt")
    from edge.backends.ort import OnnxRuntimeRunner

    providers = ("cuda",) if backend == "onnxruntime-cuda" else ("cpu",)
    return model, OnnxRuntimeRunner(model.path, providers=providers, threads=threads)


def _percentiles(values_ms: Sequence[float]) -> dict[str, float]:
    a = np.asarray(values_ms, dtype=np.float64)
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "mean": float(a.mean()),
            "min": float(a.min()), "max": float(a.max()), "n": int(a.size)}


def class_outputs(card: Any) -> set[str] | None:
    """Outputs the card says are class scores (meaning mentions logits/probabilities); None = not said."""
    said = {o.name for o in card.outputs if o.meaning}
    named = {o.name for o in card.outputs if o.meaning and any(w in o.meaning.lower() for w in ("logit", "probabilit"))}
    return named if said else None


def _classification_outputs(outputs: dict[str, np.ndarray], names: set[str] | None = None) -> dict[str, np.ndarray]:
    """Top-1 index per sample of the class-score outputs (``names``, else every output whose last axis > 1)."""
    return {k: v.argmax(axis=-1).reshape(v.shape[0], -1) for k, v in outputs.items()
            if (k in names if names is not None else v.ndim >= 2 and v.shape[-1] > 1)}


def _run_batched(runner: Runner, inputs: dict[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
    n = len(next(iter(inputs.values())))
    parts: dict[str, list[np.ndarray]] = {}
    fixed = _fixed_batch(runner)
    step = fixed or batch
    for i in range(0, n, step):
        chunk = {k: v[i:i + step] for k, v in inputs.items()}
        m = len(next(iter(chunk.values())))
        if fixed and m < fixed:  # pad the last chunk of a fixed-batch model
            chunk = {k: np.concatenate([v, np.repeat(v[-1:], fixed - m, axis=0)]) for k, v in chunk.items()}
        metas = {meta.name: meta for meta in runner.inputs}
        out = runner.infer({k: v.astype(metas[k].dtype, copy=False) for k, v in chunk.items()})
        for k, v in out.items():
            parts.setdefault(k, []).append(v[:m])
    return {k: np.concatenate(v) for k, v in parts.items()}


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
            _, runner = _open(target, "onnxruntime", "fp32", self.options.threads)
        except EmoEdgeError as exc:
            self.notes.append(f"{target.name}: no FP32 reference for agreement ({exc})")
            return None
        with runner:
            if data is not None:
                inputs = {k: v[:n] for k, v in data.inputs.items()}
                source = f"{len(next(iter(inputs.values())))} validation samples"
            else:
                rng = np.random.default_rng(self.options.seed)
                inputs = _feed(runner, n, None, rng, any_batch=True)
                source = f"{n} random inputs"
            top1 = _classification_outputs(_run_batched(runner, inputs, 32), class_outputs(target.card))
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
            model, runner = _open(target, backend, precision, o.threads)
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
        fixed = _fixed_batch(runner)

        feed = _feed(runner, fixed or 1, pool, rng)
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
            feed = _feed(runner, batch, pool, rng)
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
            top1 = _classification_outputs(_run_batched(runner, inputs, 32), class_outputs(target.card))
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


def targets_from_models(names: Sequence[str], models: str | None = None) -> list[Target]:
    """Targets for model names or folders; no names = every model folder with a card."""
    from edge.card import list_models, load_card, resolve_model_folder

    folders = [resolve_model_folder(n, models) for n in names] if names else list_models(models)
    if not folders:
        from edge.paths import models_dir

        raise ModelError(f"no models to benchmark: {models_dir(models)} has no model folders with a card.toml")
    targets = []
    for folder in folders:
        card = load_card(folder / "card.toml")
        targets.append(Target(name=card.name, card=card, folder=folder))
    return targets


__all__ = ["BENCH_BACKENDS", "PRECISION_FILES", "BenchOptions", "BenchRun", "Target", "run_bench",
           "targets_from_models"]
