"""Evaluation of HiSTN (raw 14-channel EEG -> five valence and five arousal levels) on DASPS-style folders.

DIR holds ``S<number>.mat`` files in the DASPS layout (``edge.zoo.dasps``). Split "validation" is every
subject the model was not trained on (the card's ``training.holdout.train_subjects``), "train" the
others, "all" every subject. Each subject's EEG goes through the model's front end
(``edge.zoo.dasps.prepare_subject``: the causal 4-45 Hz band-pass and the normalisation by the first
minute of that subject's own recording, no labels), then into non-overlapping 1-s windows.

Metrics (``level_metrics``), for valence and arousal: the five-level ones of the HiSTN paper
(accuracy, weighted F1, top-2 accuracy, Tri-P, Seq2HR; ``edge.evaluation.ordinal``) plus balanced
accuracy; the binary view high = rating >= 5, predicted as P(level >= 3) >= 0.5 from the level
probabilities; and the data set's anxious state (valence < 5 and arousal > 5), predicted as
P(valence level <= 2) * P(arousal level >= 4) >= 0.5. Pooled over all windows and per subject.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edge.card import ModelCard
from edge.errors import ConfigError
from edge.evaluation import Head, LabelledSet, infer_outputs, outlier_files
from edge.evaluation.ordinal import derived_views as ordinal_views
from edge.evaluation.ordinal import ordinal_metrics

TARGETS = ("valence", "arousal")


def derived_views(valence_p: np.ndarray, arousal_p: np.ndarray) -> dict[str, np.ndarray]:
    """Level probabilities [N, 5] of both targets -> P(valence high), P(arousal high), P(anxious) (DASPS levels)."""
    from edge.zoo.dasps import LEVEL_UPPER

    return ordinal_views(valence_p, arousal_p, LEVEL_UPPER)


def balanced_accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    """Mean recall over the classes present in ``y``."""
    y, pred = np.asarray(y), np.asarray(pred)
    recalls = [float((pred[y == c] == c).mean()) for c in np.unique(y)]
    return float(np.mean(recalls)) if recalls else 0.0


def binary_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    pred = (np.asarray(p) >= 0.5).astype(np.int64)
    y = np.asarray(y).astype(np.int64)
    return {"accuracy": float((pred == y).mean()) if len(y) else 0.0, "balanced_accuracy": balanced_accuracy(y, pred)}


def level_metrics(
    valence_p: np.ndarray, arousal_p: np.ndarray, valence_rating: np.ndarray, arousal_rating: np.ndarray,
    binary: dict[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """The metrics of one set of windows (see the module docstring): {valence, arousal, anxious, n}.

    ``binary`` may give P(high) and P(anxious) from elsewhere (a baseline trained on the binary labels);
    by default they are derived from the level probabilities.
    """
    from edge.zoo.dasps import anxious, rating_level

    views = binary or derived_views(valence_p, arousal_p)
    out: dict[str, Any] = {}
    for target, p, rating in (("valence", valence_p, valence_rating), ("arousal", arousal_p, arousal_rating)):
        y = rating_level(rating)
        m = ordinal_metrics(p, y)
        out[target] = {
            "levels": {
                "accuracy": m["accuracy"], "weighted_f1": m["weighted_f1"],
                "balanced_accuracy": balanced_accuracy(y, np.asarray(p).argmax(1)),
                "top2_accuracy": m["top2_accuracy"], "tri_p": m["tri_p"], "seq2hr": m["seq2hr"],
            },
            "binary": binary_metrics(np.asarray(rating) >= 5, views[f"{target}_high"]),
        }
    out["anxious"] = {"balanced_accuracy": binary_metrics(anxious(valence_rating, arousal_rating), views["anxious"])["balanced_accuracy"]}
    out["n"] = int(len(valence_rating))
    return out


def pooled_and_per_subject(
    valence_p: np.ndarray, arousal_p: np.ndarray, valence_rating: np.ndarray, arousal_rating: np.ndarray,
    subjects: np.ndarray, binary: dict[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """``level_metrics`` over everything plus ``per_subject`` (keys S01, S02, ...)."""
    result = level_metrics(valence_p, arousal_p, valence_rating, arousal_rating, binary)
    per: dict[str, Any] = {}
    for s in np.unique(subjects):
        m = subjects == s
        part = {k: v[m] for k, v in binary.items()} if binary else None
        per[f"S{int(s):02d}"] = level_metrics(valence_p[m], arousal_p[m], valence_rating[m], arousal_rating[m], part)
    result["per_subject"] = per
    return {k: result[k] for k in ("valence", "arousal", "anxious", "per_subject", "n")}


def load_split(
    card: ModelCard, data_dir: Path, split: str, limit: int | None = None, seed: int = 0, mode: str | None = None
) -> LabelledSet:
    from edge.zoo import dasps

    if mode not in (None, "default", "first-minute"):
        raise ConfigError(f"histn eval: unknown --mode '{mode}' (the model has one: first-minute)")
    params = card.features.params
    trained = set(card.training.holdout.get("train_subjects", []))
    files = dasps.subject_files(data_dir)
    numbers = [int(p.stem[1:]) for p in files]
    if split == "validation":
        chosen = [n for n in numbers if n not in trained]
    elif split == "train":
        chosen = [n for n in numbers if n in trained]
    elif split == "all":
        chosen = numbers
    else:
        raise ConfigError(f"histn eval: unknown split '{split}' (expected validation, train or all)")
    if not chosen:
        raise ConfigError(f"histn eval: {data_dir} has no subjects in split '{split}' (has {numbers}; trained on {sorted(trained)})")
    subjects = dasps.load_dasps(data_dir, chosen)
    w = dasps.prepared_windows(subjects, float(params.get("norm_s", 60.0)), float(params.get("clip", 6.0)))
    if limit is not None and limit < len(w):
        from edge.export.calibrate import stratified_indices

        keep = stratified_indices(dasps.rating_level(w.valence) * 5 + dasps.rating_level(w.arousal), limit, seed)
        w = w.select(keep)
    description = (f"{Path(data_dir).name}: split {split}, subjects {chosen}, {len(w)} 1-s windows, "
                   f"normalised by each subject's first {params.get('norm_s', 60.0):g} s")
    if limit is not None:
        description += f", stratified slice of {limit} (seed {seed})"
    return LabelledSet(
        inputs={card.inputs[0].name: w.x},
        labels={"valence": dasps.rating_level(w.valence), "arousal": dasps.rating_level(w.arousal)},
        description=description,
        extra={"mode": "first-minute", "valence_rating": w.valence, "arousal_rating": w.arousal, "subjects": w.subject,
               "groups": np.asarray(w.subject).tolist(),  # per subject: the folds of cross-fitted calibration
               # one rating per situation (its recitation and recall segments): the windows that share a label
               "label_clusters": np.asarray(w.subject) * 100 + np.asarray(w.situation)},
    )


def heads(card: ModelCard, data: LabelledSet, raw: dict[str, np.ndarray]) -> list[Head]:
    """The valence and arousal level logits with their level labels: what ``emoedge eval`` calibrates
    (``--fit-temperature``, cross-fitted by subject) and scores for confidence (``ece``)."""
    from edge.zoo.dasps import LEVEL_NAMES

    labels = data.labels
    assert isinstance(labels, dict)
    return [Head(f"{key}_logits", raw[f"{key}_logits"], labels[key], list(LEVEL_NAMES), key) for key in TARGETS]


def evaluate(runner: Any, card: ModelCard, data: LabelledSet, batch: int = 256,
             raw: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Level, binary and anxious metrics from the level probabilities the runtime publishes (the card's
    temperatures applied, ``edge.confidence.probabilities``)."""
    from edge.confidence import probabilities

    raw = raw if raw is not None else infer_outputs(runner, card, data, batch)
    vp = probabilities(raw["valence_logits"], card.temperature("valence_logits"))
    ap = probabilities(raw["arousal_logits"], card.temperature("arousal_logits"))
    e = data.extra
    result = pooled_and_per_subject(vp, ap, e["valence_rating"], e["arousal_rating"], e["subjects"])
    result["skipped"] = data.skipped
    return result


def load_outliers(card: ModelCard, folder: str | Path, mode: str | None = None) -> dict[str, LabelledSet]:
    """Model-ready windows (``[N, electrodes, samples]``, after the front end) from ``folder/<kind>/*.npy``,
    per kind (``python -m edge.evaluation.outliers eeg-raw``)."""
    from edge.errors import InputError

    shape = tuple(int(d) for d in card.inputs[0].shape[1:])
    kinds = outlier_files(folder, (".npy",), f".npy windows of shape [N, {shape[0]}, {shape[1]}]")
    out: dict[str, LabelledSet] = {}
    for kind, files in kinds.items():
        arrays = [np.load(f) for f in files]
        for f, a in zip(files, arrays, strict=True):
            if tuple(a.shape[1:]) != shape:
                raise InputError(f"{f}: outlier windows of shape {tuple(a.shape)}; the model reads [N, {shape[0]}, {shape[1]}]")
        rows = np.concatenate(arrays).astype(np.float32)
        out[kind] = LabelledSet(inputs={card.inputs[0].name: rows}, labels=np.zeros(len(rows), np.int64),
                                description=f"{Path(folder) / kind} ({len(rows)} windows)")
    return out


def format_block(title: str, m: dict[str, Any]) -> str:
    lv = m["levels"]
    return (f"{title:8s} levels: acc {lv['accuracy']:.3f}  wF1 {lv['weighted_f1']:.3f}  bal {lv['balanced_accuracy']:.3f}  "
            f"top2 {lv['top2_accuracy']:.3f}  Tri-P {lv['tri_p']:.3f}  Seq2HR {lv['seq2hr']:.3f} | "
            f"high/low: acc {m['binary']['accuracy']:.3f}  bal {m['binary']['balanced_accuracy']:.3f}")


def print_report(result: dict[str, Any]) -> None:
    print(f"{result.get('model', 'histn')} on {result.get('data', '?')} ({result.get('backend', '?')}, "
          f"{result.get('precision', '?')}); {result['n']} windows")
    for key in TARGETS:
        print(format_block(key, result[key]))
    print(f"anxious  balanced accuracy {result['anxious']['balanced_accuracy']:.3f}")
    for s, m in result["per_subject"].items():
        print(f"  {s}: V wF1 {m['valence']['levels']['weighted_f1']:.3f} bal2 {m['valence']['binary']['balanced_accuracy']:.3f} | "
              f"A wF1 {m['arousal']['levels']['weighted_f1']:.3f} bal2 {m['arousal']['binary']['balanced_accuracy']:.3f} | "
              f"anxious bal {m['anxious']['balanced_accuracy']:.3f} (n {m['n']})")
