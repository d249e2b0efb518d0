"""Calibration sets: a few hundred model-ready inputs from the training split, stored small and checkable.

A set is a folder ``calibration/<name>/`` with

- ``samples.npz``: one array per model input (and the labels), written with fixed zip timestamps so
  that the same command makes the same bytes (it is not committed for research-only data: the
  manifest is, and ``emoedge calibrate`` remakes the samples and says whether they match it); each input is stored in the smallest encoding that
  keeps it: ``uint8-affine`` when the values lie on at most 256 evenly spaced levels (images scaled
  from 8-bit pixels, exact), else ``float16`` (relative error at most 2**-11, far below INT8's
  resolution of 1/127 of the range), else ``float32``;
- ``manifest.json``: where the samples came from (data, split, feature recipe), how they were drawn
  (count, seed, samples per class), how each input is encoded, and the sha256 of ``samples.npz``.

The samples come from the model's evaluator (``edge.evaluation``), so they pass through the same
feature code as the runtime. Loading checks the file against its manifest and the inputs against
the model card, so a stale or foreign set is refused with a message instead of calibrating garbage.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from edge.card import ModelCard, sha256_file
from edge.errors import CardError, InputError

MANIFEST = "manifest.json"
SAMPLES = "samples.npz"
FORMAT_VERSION = 1
_LABEL_PREFIX = "label."
_FIXED_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


@dataclass
class CalibrationSet:
    """Decoded calibration samples (float32 where the model takes float32) with their manifest."""

    folder: Path
    inputs: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    manifest: dict[str, Any]
    previous_sha256: str | None = None  # after making a set: the sha256 its folder's manifest had before

    def __len__(self) -> int:
        return int(next(iter(self.inputs.values())).shape[0])

    def batches(self, batch_size: int) -> list[dict[str, np.ndarray]]:
        return split_batches(self.inputs, batch_size)


def split_batches(inputs: dict[str, np.ndarray], batch_size: int) -> list[dict[str, np.ndarray]]:
    """Model inputs (each [N, ...]) cut into feeds of at most ``batch_size`` samples, in order."""
    n = int(next(iter(inputs.values())).shape[0])
    return [{k: v[i : i + batch_size] for k, v in inputs.items()} for i in range(0, n, batch_size)]


# --- drawing -------------------------------------------------------------------------------------


def stratum_keys(labels: np.ndarray | dict[str, np.ndarray]) -> np.ndarray:
    """One integer class key per sample; for several label heads (EEG valence and arousal) their combination."""
    if isinstance(labels, dict):
        heads = [np.asarray(labels[k], dtype=np.int64) for k in sorted(labels)]
        key = np.zeros_like(heads[0])
        for head in heads:
            key = key * (int(head.max(initial=0)) + 1) + head
        return key
    return np.asarray(labels, dtype=np.int64)


def stratified_indices(keys: np.ndarray, count: int, seed: int) -> np.ndarray:
    """``count`` indices drawn without replacement, each class in proportion to its share (largest remainder).

    Every class present gets at least one sample when ``count`` allows; the result is sorted, and the
    same (keys, count, seed) always gives the same indices.
    """
    n = len(keys)
    if count >= n:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    classes, sizes = np.unique(keys, return_counts=True)
    exact = sizes / n * count
    quota = np.floor(exact).astype(int)
    if count >= len(classes):
        quota = np.maximum(quota, 1)
    while quota.sum() > count:  # the minimum of one pushed us over: take back where it hurts the shares least
        over = np.where(quota > 1, quota - exact, -np.inf)
        quota[int(np.argmax(over))] -= 1
    remainder = exact - quota
    for i in np.argsort(-remainder, kind="stable"):
        if quota.sum() >= count:
            break
        if quota[i] < sizes[i]:
            quota[i] += 1
    chosen = []
    for cls, q in zip(classes, quota, strict=True):
        members = np.flatnonzero(keys == cls)
        chosen.append(rng.choice(members, size=min(q, len(members)), replace=False))
    return np.sort(np.concatenate(chosen)) if chosen else np.arange(0)


# --- compact storage -----------------------------------------------------------------------------


def encode(array: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """The smallest storage of ``array`` that keeps it (see the module docstring) and how to decode it."""
    if array.dtype != np.float32 or array.size == 0:
        return array, {"stored": str(array.dtype)}
    finite = bool(np.isfinite(array).all())
    if finite:
        levels = np.unique(array)
        if 1 < len(levels) <= 256:
            low, high = float(levels[0]), float(levels[-1])
            # the smallest gap is one level up to float32 rounding; the span over the number of levels is exact
            step = (high - low) / max(1, round((high - low) / float(np.min(np.diff(levels.astype(np.float64))))))
            q = np.rint((array.astype(np.float64) - low) / step)
            decoded = (low + q * step).astype(np.float32)
            error = float(np.max(np.abs(decoded - array)))
            if q.max() <= 255 and error <= 1e-5 * max(1.0, float(np.max(np.abs(array)))):
                return q.astype(np.uint8), {"stored": "uint8-affine", "offset": low, "scale": step, "max_abs_error": error}
        if float(np.max(np.abs(array))) < 6.0e4:
            half = array.astype(np.float16)
            error = float(np.max(np.abs(half.astype(np.float32) - array)))
            return half, {"stored": "float16", "max_abs_error": error}
    return array, {"stored": "float32"}


def decode(stored: np.ndarray, spec: dict[str, Any]) -> np.ndarray:
    kind = spec.get("stored")
    if kind == "uint8-affine":
        return (float(spec["offset"]) + stored.astype(np.float64) * float(spec["scale"])).astype(np.float32)
    if kind == "float16":
        return stored.astype(np.float32)
    return stored


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Like ``np.savez_compressed`` but byte-reproducible: fixed member order and timestamps."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(arrays):
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(arrays[name]), allow_pickle=False)
            info = zipfile.ZipInfo(name + ".npy", date_time=_FIXED_ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buffer.getvalue(), compresslevel=9)


# --- making and loading a set --------------------------------------------------------------------


def _per_class(labels: np.ndarray | dict[str, np.ndarray], card: ModelCard) -> dict[str, Any]:
    def counts(values: np.ndarray, names: list[str]) -> dict[str, int]:
        out: dict[str, int] = {}
        for v in np.asarray(values, dtype=np.int64):
            key = names[v] if 0 <= v < len(names) else str(int(v))
            out[key] = out.get(key, 0) + 1
        return dict(sorted(out.items()))

    if isinstance(labels, dict):  # heads name their classes in the card as "head:class" (EEG: "valence:positive")
        return {
            head: counts(values, [lab.split(":", 1)[1] for lab in card.labels if lab.startswith(head + ":")])
            for head, values in sorted(labels.items())
        }
    return counts(labels, card.labels)


def make_calibration_set(
    card: ModelCard,
    data_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    count: int = 200,
    seed: int = 0,
    split: str = "train",
    command: str | None = None,
    model_sha256: str | None = None,
) -> CalibrationSet:
    """Draw ``count`` samples of ``split`` (stratified by class, seeded) and write the set to ``out_dir``.

    The folder is replaced only when the new set is complete, so a failure leaves the previous set.
    """
    from edge.evaluation import load_split

    if count < 1:
        raise InputError(f"--count must be at least 1 (got {count})")
    # The evaluator's own limit is a seeded, stratified slice; ask for four times the count and stratify
    # here again, so that the set is stratified whatever the evaluator does with the limit.
    data = load_split(card, Path(data_dir), split, limit=4 * count, seed=seed)
    n = len(data) if data.inputs else 0
    if n == 0:
        raise InputError(
            f"{data_dir}: the {split} split gave no samples for model '{card.name}' "
            f"({data.skipped} skipped); nothing written, the previous calibration set (if any) is left in place"
        )
    keys = stratum_keys(data.labels)
    index = stratified_indices(keys, count, seed)
    inputs = {k: np.asarray(v)[index] for k, v in data.inputs.items()}
    labels = {k: np.asarray(v)[index] for k, v in data.labels.items()} if isinstance(data.labels, dict) else np.asarray(data.labels)[index]
    _check_inputs(card, inputs, f"samples from {data.description or data_dir}")

    arrays: dict[str, np.ndarray] = {}
    encodings: dict[str, Any] = {}
    for name, array in inputs.items():
        stored, spec = encode(np.ascontiguousarray(array))
        arrays[name] = stored
        encodings[name] = {"shape": list(array.shape), "dtype": str(array.dtype), **spec}
    if isinstance(labels, dict):
        arrays.update({_LABEL_PREFIX + k: v.astype(np.int16) for k, v in labels.items()})
    else:
        arrays[_LABEL_PREFIX + "class"] = labels.astype(np.int16)

    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    previous_sha = None
    try:
        previous_sha = json.loads((out / MANIFEST).read_text(encoding="utf-8")).get("samples_sha256")
    except (OSError, ValueError):
        pass
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        write_npz(staging / SAMPLES, arrays)
        manifest = {
            "format": FORMAT_VERSION,
            "model": card.name,
            "card_version": card.version,
            "model_sha256": model_sha256,
            "data": data.description,
            "split": split,
            "count": len(index),
            "available": n,
            "skipped": data.skipped,
            "seed": seed,
            "stratified_by": "class" if not isinstance(labels, dict) else "+".join(sorted(labels)),
            "per_class": _per_class(labels, card),
            "features": card.features.model_dump(mode="json"),
            "inputs": encodings,
            "samples_file": SAMPLES,
            "samples_sha256": sha256_file(staging / SAMPLES),
            "samples_bytes": (staging / SAMPLES).stat().st_size,
            "command": command,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        if previous_sha is not None and previous_sha == manifest["samples_sha256"]:
            # the same set again: keep the manifest as it was (no churn in a committed file)
            previous = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
            manifest["created_at"] = previous.get("created_at", manifest["created_at"])
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
            staging.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            staging.rename(out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    calib = load_calibration_set(out, card)
    calib.previous_sha256 = previous_sha
    return calib


def _check_inputs(card: ModelCard, inputs: dict[str, np.ndarray], where: str) -> None:
    """Raise CardError when the sample arrays do not fit the card's inputs (names, fixed dims, dtype, empty)."""
    declared = {t.name: t for t in card.inputs}
    problems = []
    if sorted(inputs) != sorted(declared):
        problems.append(f"inputs {sorted(inputs)} but the card of '{card.name}' declares {sorted(declared)}")
    for name, array in inputs.items():
        spec = declared.get(name)
        if spec is None:
            continue
        if array.shape[0] == 0:
            problems.append(f"input '{name}' has no samples (the set is empty)")
        fits = array.ndim == len(spec.shape) and all(
            not isinstance(d, int) or d == s for d, s in zip(spec.shape, array.shape, strict=True)
        )
        if not fits:
            problems.append(f"input '{name}' has shape {list(array.shape)}, the card says {spec.shape}")
        if str(array.dtype) != spec.dtype:
            problems.append(f"input '{name}' is {array.dtype}, the card says {spec.dtype}")
    counts = {a.shape[0] for a in inputs.values()}
    if len(counts) > 1:
        problems.append(f"inputs have different sample counts {sorted(counts)}")
    if problems:
        raise CardError(f"{where} do not fit model '{card.name}': " + "; ".join(problems))


def load_calibration_set(folder: str | os.PathLike[str], card: ModelCard) -> CalibrationSet:
    """Read a set, check the samples against the manifest's sha256 and the inputs against the card."""
    folder = Path(folder)
    manifest_path, samples_path = folder / MANIFEST, folder / SAMPLES
    if not manifest_path.is_file():
        raise CardError(
            f"no calibration set for model '{card.name}' in {folder} (needs {MANIFEST} and {SAMPLES}); "
            f"make one with: emoedge calibrate {card.name} --data DIR"
        )
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise CardError(f"{manifest_path}: not valid JSON: {exc}") from None
    if not samples_path.is_file():
        raise CardError(
            f"{folder} has the manifest of a calibration set but not its samples ({SAMPLES} is not committed: the "
            f"data's terms forbid redistributing it); remake them where the data is at hand with: "
            f"{manifest.get('command') or f'emoedge calibrate {card.name} --data DIR'}"
        )
    digest = sha256_file(samples_path)
    if manifest.get("samples_sha256") != digest:
        raise CardError(
            f"{samples_path}: sha256 {digest[:12]} does not match its manifest ({str(manifest.get('samples_sha256'))[:12]}): "
            f"the file changed or is corrupt; remake it with emoedge calibrate {card.name} --data DIR"
        )
    if manifest.get("model") not in (None, card.name):
        raise CardError(f"{folder}: this calibration set was made for model '{manifest.get('model')}', not '{card.name}'")
    try:
        with np.load(samples_path, allow_pickle=False) as npz:
            stored = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise CardError(f"{samples_path}: cannot read the samples: {exc}") from None
    encodings: dict[str, Any] = manifest.get("inputs", {})
    inputs = {k: decode(v, encodings.get(k, {})) for k, v in stored.items() if not k.startswith(_LABEL_PREFIX)}
    labels = {k[len(_LABEL_PREFIX) :]: v.astype(np.int64) for k, v in stored.items() if k.startswith(_LABEL_PREFIX)}
    if not inputs:
        raise CardError(f"{samples_path}: the calibration set holds no input arrays")
    _check_inputs(card, inputs, f"calibration set {folder}")
    return CalibrationSet(folder=folder, inputs=inputs, labels=labels, manifest=manifest)
