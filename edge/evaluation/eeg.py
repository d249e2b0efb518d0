"""Evaluation of the EEG band-power model on DEAP-style text files (valence and arousal).

DIR holds EEG_feature.txt (N x 160 log band power), subject_video.txt (subject, video) and
valence_arousal_label.txt (valence 1=positive 2=negative, arousal 1=high 2=low). Split
"validation" is every subject the model was not trained on (the card's
``training.holdout.train_subjects``), "train" the others, "all" every row.

Modes (how the 160 features are z-scored before the model, as on a device):
  subject-norm     by the subject's own history: mean and std of all that subject's rows in DIR
                   (unlabeled; a device accumulates it with ``edge.features.eeg.SubjectNormaliser``);
  population-norm  by the training population's statistics stored in the card.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edge.card import ModelCard
from edge.errors import ConfigError, ModelError
from edge.evaluation import Head, LabelledSet, infer_outputs, outlier_files
from edge.evaluation.metrics import classification_metrics
from edge.features.eeg import load_deap_features, standardise

MODES = ("subject-norm", "population-norm")
VALENCE_LABELS = ["negative", "positive"]
AROUSAL_LABELS = ["low", "high"]
_VALENCE_CODES = {1: 1, 2: 0}  # file code -> index into VALENCE_LABELS
_AROUSAL_CODES = {1: 1, 2: 0}  # file code -> index into AROUSAL_LABELS


def _normalise(features: np.ndarray, subjects: np.ndarray, mode: str, card: ModelCard) -> np.ndarray:
    if mode == "subject-norm":
        out = np.empty_like(features)
        for s in np.unique(subjects):
            m = subjects == s
            out[m] = standardise(features[m], features[m].mean(0), features[m].std(0))
        return out
    params = card.features.params
    if "population_mean" not in params or "population_std" not in params:
        raise ModelError(f"model '{card.name}': its card has no population statistics for mode population-norm")
    return standardise(features, np.asarray(params["population_mean"]), np.asarray(params["population_std"]))


def stratified_slice(labels: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """Indices of at most ``limit`` rows, the same share of each label as the whole, seeded, in order."""
    rng = np.random.default_rng(seed)
    if limit >= len(labels):
        return np.arange(len(labels))
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts / counts.sum() * limit
    quotas = np.floor(exact).astype(int)
    # hand out what flooring left over to the classes with the largest remainders
    for i in np.argsort(-(exact - quotas), kind="stable")[: limit - int(quotas.sum())]:
        quotas[i] += 1
    picked = [
        rng.choice(np.flatnonzero(labels == c), size=min(q, int(n)), replace=False)
        for c, q, n in zip(classes, quotas, counts, strict=True)
    ]
    return np.sort(np.concatenate(picked))[:limit]


def load_split(
    card: ModelCard, data_dir: Path, split: str, limit: int | None = None, seed: int = 0, mode: str | None = None
) -> LabelledSet:
    mode = mode or str(card.features.params.get("trained_mode", "subject-norm"))
    if mode not in MODES:
        raise ConfigError(f"eeg eval: unknown --mode '{mode}' (expected one of {', '.join(MODES)})")
    features, subject_video, codes = load_deap_features(data_dir)
    subjects = subject_video[:, 0]
    train_subjects = set(card.training.holdout.get("train_subjects", []))
    if split == "validation":
        rows = ~np.isin(subjects, list(train_subjects))
    elif split == "train":
        rows = np.isin(subjects, list(train_subjects))
    elif split == "all":
        rows = np.ones(len(subjects), dtype=bool)
    else:
        raise ConfigError(f"eeg eval: unknown split '{split}' (expected validation, train or all)")
    if not rows.any():
        raise ConfigError(f"eeg eval: {data_dir} has no rows in split '{split}' (subjects {sorted(set(subjects))})")
    # Normalise with each subject's whole history in DIR first (unlabeled), then drop unknown labels.
    x = _normalise(features[rows], subjects[rows], mode, card)
    codes, subjects, videos = codes[rows], subjects[rows], subject_video[rows][:, 1]
    known = np.isin(codes[:, 0], list(_VALENCE_CODES)) & np.isin(codes[:, 1], list(_AROUSAL_CODES))
    skipped = int((~known).sum())
    x, codes, subjects, videos = x[known], codes[known], subjects[known], videos[known]
    valence = np.array([_VALENCE_CODES[int(c)] for c in codes[:, 0]], dtype=np.int64)
    arousal = np.array([_AROUSAL_CODES[int(c)] for c in codes[:, 1]], dtype=np.int64)
    if limit is not None:
        keep = stratified_slice(valence * 2 + arousal, limit, seed)
        x, valence, arousal, subjects, videos = x[keep], valence[keep], arousal[keep], subjects[keep], videos[keep]
    held = sorted(int(s) for s in np.unique(subjects))
    description = f"{Path(data_dir).name}: split {split}, subjects {held}, {len(x)} trials, mode {mode}"
    if limit is not None:
        description += f", stratified slice of {limit} (seed {seed})"
    return LabelledSet(
        inputs={card.inputs[0].name: x.astype(np.float32)},
        labels={"valence": valence, "arousal": arousal},
        skipped=skipped,
        description=description,
        extra={"mode": mode, "subjects": subjects, "groups": subjects.tolist(),
               "videos": videos},  # videos: the enrollment order of --adapt
    )


def heads(card: ModelCard, data: LabelledSet, raw: dict[str, np.ndarray]) -> list[Head]:
    """The valence and arousal logits outputs with their labels."""
    labels = data.labels
    assert isinstance(labels, dict)
    return [
        Head("valence_logits", raw["valence_logits"], labels["valence"], VALENCE_LABELS, "valence"),
        Head("arousal_logits", raw["arousal_logits"], labels["arousal"], AROUSAL_LABELS, "arousal"),
    ]


def evaluate(runner: Any, card: ModelCard, data: LabelledSet, batch: int = 256, raw: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    raw = raw if raw is not None else infer_outputs(runner, card, data, batch)
    va = raw["va"]
    labels = data.labels
    assert isinstance(labels, dict)
    result: dict[str, Any] = {
        "valence": classification_metrics(labels["valence"], raw["valence_logits"].argmax(1), VALENCE_LABELS),
        "arousal": classification_metrics(labels["arousal"], raw["arousal_logits"].argmax(1), AROUSAL_LABELS),
        "skipped": data.skipped,
        "mode": data.extra.get("mode"),
    }
    # the continuous score, checked against the binary labels: mean score per class
    for i, key in enumerate(("valence", "arousal")):
        y = labels[key]
        result[key]["mean_score_by_class"] = {
            lab: (float(va[y == c, i].mean()) if (y == c).any() else None)
            for c, lab in enumerate(VALENCE_LABELS if key == "valence" else AROUSAL_LABELS)
        }
    return result


def load_outliers(card: ModelCard, folder: str | Path, mode: str | None = None) -> dict[str, LabelledSet]:
    """Rows of model inputs (z-scored band powers) from ``folder/<kind>/*.npy``, per kind."""
    width = int(card.inputs[0].shape[-1])
    kinds = outlier_files(folder, (".npy",), f".npy rows of {width} features")
    out: dict[str, LabelledSet] = {}
    for kind, files in kinds.items():
        rows = np.concatenate([np.load(f).reshape(-1, width) for f in files]).astype(np.float32)
        out[kind] = LabelledSet(inputs={card.inputs[0].name: rows}, labels=np.zeros(len(rows), np.int64),
                                description=f"{Path(folder) / kind} ({len(rows)} rows)")
    return out


def format_classification(title: str, m: dict[str, Any]) -> str:
    """A plain-text block: headline metrics, recall per class and the confusion matrix."""
    labels = m["labels"]
    calib = "".join(f"  {k.replace('_', ' ')} {m[k]:.3f}" for k in ("ece", "mean_confidence") if k in m)
    lines = [
        f"{title}: balanced accuracy {m['balanced_accuracy']:.3f}  accuracy {m['accuracy']:.3f}  "
        f"macro-F1 {m['macro_f1']:.3f}{calib}  (n = {m['n']})",
        "  recall per class: " + ", ".join(
            f"{k} {v['recall']:.3f}" if v["recall"] is not None else f"{k} -" for k, v in m["per_class"].items()
        ),
        "  confusion (rows true, columns predicted):",
    ]
    width = max(6, *(len(lab) for lab in labels)) + 1
    lines.append("    " + " " * width + "".join(f"{lab:>{width}}" for lab in labels))
    for lab, row in zip(labels, m["confusion"], strict=False):
        lines.append("    " + f"{lab:>{width}}" + "".join(f"{v:>{width}}" for v in row))
    return "\n".join(lines)


def print_report(result: dict[str, Any]) -> None:
    print(f"{result.get('model', 'eeg')} on {result.get('data', '?')} ({result.get('backend', '?')}, "
          f"{result.get('precision', '?')}); skipped {result.get('skipped', 0)}")
    for key in ("valence", "arousal"):
        print(format_classification(key, result[key]))
