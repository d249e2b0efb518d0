"""What ``emoedge bench`` measures and how: the options, the targets (model folders or peers), and the one way to
open (``open_target``, through ``edge.backends.open_runner``), feed and run a target, which the harness rows and the
memory probe (``edge.bench.memory``, in a child process) share."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge.backends import open_runner
from edge.backends.base import Runner
from edge.card import Model, load_model
from edge.errors import ModelError

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


def make_feed(runner: Runner, batch: int, pool: dict[str, np.ndarray] | None, rng: np.random.Generator,
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


def fixed_batch(runner: Runner) -> int | None:
    """The batch size every input fixes, or None when the batch is dynamic."""
    dims = {m.shape[0] for m in runner.inputs if m.shape and isinstance(m.shape[0], int) and m.shape[0] > 0}
    return dims.pop() if len(dims) == 1 else None


def open_target(target: Target, backend: str, precision: str, threads: int) -> tuple[Model, Runner]:
    """The target's artifact at ``precision`` and a runner for it (not entered), through ``open_runner`` like every
    other caller; ``onnxruntime-cuda`` is ONNX Runtime with its CUDA provider."""
    model = target.model(precision)
    if backend == "tensorrt":
        return model, open_runner(model, backend="tensorrt")
    providers = ("cuda",) if backend == "onnxruntime-cuda" else ("cpu",)
    return model, open_runner(model, backend="onnxruntime", providers=providers, threads=threads)


def top1_of(card: Any, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Top-1 index per sample of each class-score output, chosen as the quantization gate and the device check
    choose them (``edge.export.gate.class_score_outputs``)."""
    from edge.export.gate import class_score_outputs

    return {k: outputs[k].argmax(axis=-1).reshape(outputs[k].shape[0], -1) for k in class_score_outputs(card, outputs)}


def run_batched(runner: Runner, inputs: dict[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
    """Outputs for every sample of ``inputs``, run ``batch`` at a time (a fixed-batch model's last chunk padded)."""
    n = len(next(iter(inputs.values())))
    parts: dict[str, list[np.ndarray]] = {}
    fixed = fixed_batch(runner)
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
