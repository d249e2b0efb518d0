"""Evaluation of a model on a labelled data set, through a real runner (any backend, any precision).

One module per modality implements two functions, registered in ``EVALUATORS``:

    load_split(card, data_dir, split, limit=None, seed=0, mode=None) -> LabelledSet
        model-ready inputs (the same feature code the runtime uses) and integer labels, for
        split "train" (calibration sets) or "validation" (metrics, the quantization gate);
    evaluate(runner, card, data) -> dict
        runs the model in batches and returns ``classification_metrics`` (for EEG: one such dict
        under "valence" and one under "arousal"), plus "skipped";
    print_report(result) (optional)
        the human-readable table of ``emoedge eval``;
    heads(card, data, raw) (optional)
        the model's classification outputs on ``data`` as ``Head`` records (raw logits per sample and
        the true labels), from ``raw = infer_outputs(...)``: what ``emoedge eval`` needs for calibrated
        confidence (``ece``, ``mean_confidence``, ``--fit-temperature``), scoring among the data's own
        labels (``--restrict-to-data-labels``) and out-of-distribution scores (``--ood``).

Samples whose label the model does not have are skipped and counted, never guessed.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge.card import ModelCard

# modality (or model name, checked first: test toys register theirs) -> module with load_split and evaluate, for
# cards whose feature recipe names no evaluator; every shipped model's is named by its recipe (edge.features.recipes)
EVALUATORS: dict[str, str] = {
    "face": "edge.evaluation.face",
    "speech": "edge.evaluation.speech",
    "eeg": "edge.evaluation.eeg",
}


@dataclass
class LabelledSet:
    """Model-ready inputs and labels of one split."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | dict[str, np.ndarray]  # class indices; EEG: {"valence": ..., "arousal": ...}
    skipped: int = 0
    description: str = ""  # data set, folder and split, for the card
    extra: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(next(iter(self.inputs.values())).shape[0])


@dataclass
class Head:
    """One classification output on a labelled set: logits per sample (a clip's mean over its windows
    for speech) and the true labels, with the classes the data set has at all (``present``)."""

    output: str  # the model output's name (the key of its temperature in the card)
    logits: np.ndarray
    labels: np.ndarray
    names: list[str]
    key: str | None = None  # where its metrics sit in the result (None: top level; EEG: "valence")
    present: list[int] | None = None  # indices of the classes the data set has (None: all)


def infer_outputs(runner: Any, card: ModelCard, data: LabelledSet, batch: int = 256) -> dict[str, np.ndarray]:
    """Every output of the model on ``data.inputs``, run in batches and concatenated."""
    name = card.inputs[0].name
    x = data.inputs[name]
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(x), batch):
        for key, value in runner.infer({name: x[start : start + batch]}).items():
            parts.setdefault(key, []).append(np.asarray(value))
    return {k: np.concatenate(v) for k, v in parts.items()}


def outlier_files(folder: str | Path, suffixes: set[str] | tuple[str, ...], expected: str,
                  recursive: bool = False) -> dict[str, list[Path]]:
    """The files of each kind of outlier (``folder/<kind>/``) whose suffix is one of ``suffixes``, sorted, kinds
    without any left out: what every evaluator's ``load_outliers`` reads. An InputError saying what was
    ``expected`` when no kind has a file."""
    from edge.errors import InputError

    root = Path(folder)
    out: dict[str, list[Path]] = {}
    for kind in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
        files = sorted(f for f in (kind.rglob("*") if recursive else kind.iterdir()) if f.suffix.lower() in suffixes)
        if files:
            out[kind.name] = files
    if not out:
        raise InputError(f"{root}: no outliers (expected one folder per kind with {expected})")
    return out


def batch_of(module: Any) -> int:
    """Samples per model call in eval: the evaluator's ``INFER_BATCH`` (large inputs), else 256."""
    return int(getattr(module, "INFER_BATCH", 256))


def evaluator_for(card: ModelCard) -> Any:
    """The evaluation module that loads data into this card's model inputs: the one its feature recipe names."""
    from edge.errors import ModelError
    from edge.features.recipes import recipe_of

    recipe = recipe_of(card)
    module = (EVALUATORS.get(card.name) or (recipe.evaluator if recipe is not None else None)
              or EVALUATORS.get(card.modality))
    if module is None:
        raise ModelError(f"no evaluator for model '{card.name}' (modality {card.modality})")
    return importlib.import_module(module)


def load_split(
    card: ModelCard, data_dir: Path, split: str, limit: int | None = None, seed: int = 0, mode: str | None = None
) -> LabelledSet:
    return evaluator_for(card).load_split(card, Path(data_dir), split, limit=limit, seed=seed, mode=mode)


OOD_TRAIN_LIMIT = 12000  # training samples (a seeded, stratified slice) the out-of-distribution statistics are fitted on
MAX_FALSE_REJECTION = 0.05  # share of held-out in-distribution windows the OOD threshold may call "unknown"


def _per_item(values: np.ndarray, data: LabelledSet) -> np.ndarray:
    """Per-sample values expanded to the model's items (a clip's windows, for speech)."""
    owner = data.extra.get("owner")
    return values if owner is None else values[np.asarray(owner)]


def _samples(heads: list[Head], data: LabelledSet) -> int:
    """Labelled samples (a speech clip, not its windows), or the model's items where no head has labels."""
    return len(heads[0].labels) if heads else len(data)


def _class_ids(heads: list[Head], data: LabelledSet) -> np.ndarray:
    """One class id per sample that joins every head's label (EEG: the valence x arousal quadrant; one class
    for data without labelled heads)."""
    ids = np.zeros(_samples(heads, data), dtype=np.int64)
    for head in heads:
        ids = ids * len(head.names) + np.asarray(head.labels, dtype=np.int64)
    return ids


def _restricted_metrics(head: Head, temperature: float) -> dict[str, Any]:
    from edge.confidence import calibration_metrics, probabilities, restricted
    from edge.evaluation.metrics import classification_metrics

    present = head.present if head.present is not None else list(range(len(head.names)))
    index = {c: i for i, c in enumerate(present)}
    logits = restricted(head.logits, present)[:, present]
    y = np.array([index[int(c)] for c in head.labels], dtype=np.int64)
    out = classification_metrics(y, logits.argmax(1), [head.names[i] for i in present])
    out.update(calibration_metrics(probabilities(logits, temperature), y))
    return out


def _gated(result: dict[str, Any], heads: list[Head], card: ModelCard, data: LabelledSet, raw: dict[str, np.ndarray]) -> None:
    """What the card's OOD gate does on this data: the share of samples it calls unknown (a clip: its windows'
    mean score over 1), and balanced accuracy and ECE of the samples it lets through."""
    from edge import confidence as C
    from edge.evaluation.metrics import classification_metrics

    assert card.ood is not None
    item = C.ood_score(raw[card.ood.output], card.ood.stats(), card.ood.threshold)
    owner = data.extra.get("owner")
    if owner is not None:
        owner = np.asarray(owner)
        samples = _samples(heads, data)
        score = np.bincount(owner, weights=item, minlength=samples) / np.maximum(np.bincount(owner, minlength=samples), 1)
    else:
        score = item
    keep = score <= 1.0
    result["ood_rejected"] = float(1 - keep.mean())
    for head in heads:
        target = result if head.key is None else result[head.key]
        if keep.any():
            accepted = classification_metrics(head.labels[keep], head.logits[keep].argmax(1), head.names)
            probs = C.probabilities(head.logits[keep], card.temperature(head.output))
            target["accepted"] = {"n": int(keep.sum()), "balanced_accuracy": accepted["balanced_accuracy"],
                                  "accuracy": accepted["accuracy"], **C.calibration_metrics(probs, head.labels[keep])}


def confidence_report(
    runner: Any, card: ModelCard, module: Any, data: LabelledSet, raw: dict[str, np.ndarray], result: dict[str, Any],
    restrict: bool = False, fit_temperature: bool = False, outliers: str | None = None, fit_ood: bool = False,
    train_data: str | None = None, mode: str | None = None, more_inliers: str | None = None, split: str = "validation",
    background: str | None = None,
) -> dict[str, Any]:
    """Add calibration (and, as asked, restricted, fitted and out-of-distribution) figures to ``result``.

    Returns what ``--write-card`` stores: ``confidence`` (fitted temperatures) and ``ood`` (statistics and
    threshold), each only when fitted here. With ``fit_ood`` and ``background`` (a folder of what the model must
    not name, one folder per kind, read like the outliers), every candidate's statistics get a background
    direction (``edge.confidence.fit_background``) fitted on the train split's embeddings, and on degraded
    copies of them where the evaluator makes some (``degraded``: blurred faces), against the background's.
    """
    from edge import confidence as C
    from edge.card import OodRecord
    from edge.errors import ConfigError

    heads = module.heads(card, data, raw)
    out: dict[str, Any] = {}
    fitted: dict[str, float] = {}
    values: dict[str, Any] = {}
    for head in heads:
        target = result if head.key is None else result[head.key]
        t = card.temperature(head.output)
        probs = C.probabilities(head.logits, t)
        target.update(C.calibration_metrics(probs, head.labels))
        clusters = data.extra.get("label_clusters")  # a head's samples that share one label (a rated situation's windows)
        null = C.ece_null(probs, clusters=None if clusters is None else np.asarray(clusters))
        target["ece_floor"] = float(null.mean())
        if clusters is not None:
            target["ece_clusters"] = int(len(np.unique(np.asarray(clusters))))
        target["ece_p"] = C.ece_p_value(null, target["ece"])  # is the ECE above what this n shows by chance?
        target["temperature"] = t
        uncalibrated = C.calibration_metrics(C.probabilities(head.logits, 1.0), head.labels)
        target["uncalibrated"] = uncalibrated
        if restrict:
            target["restricted"] = _restricted_metrics(head, t)
        if fit_temperature:
            folds = C.folds_of(head.labels, data.extra.get("groups"))
            cross, fold_temps = C.cross_fitted_probabilities(head.logits, head.labels, folds)
            fitted[head.output] = C.fit_temperature(head.logits, head.labels)
            crossed = C.calibration_metrics(cross, head.labels)
            target["fit"] = {"temperature": fitted[head.output], "folds": len(fold_temps),
                             "fold_temperatures": fold_temps, "cross_fitted": crossed}
            values[head.output] = {"n": int(len(head.labels)), "before": uncalibrated, "after_cross_fitted": crossed,
                                   "fold_temperatures": fold_temps}
    if fit_temperature:
        grouped = data.extra.get("groups") is not None
        out["confidence"] = {
            "temperatures": fitted, "data": data.description, "values": values,
            "fit": ("temperature fitted on every sample of the split; the 'after' figures are cross-fitted: each "
                    + ("speaker's or subject's samples" if grouped else "of 5 stratified folds")
                    + " scored with a temperature fitted on the others"),
        }
    if card.ood is not None and not fit_ood and card.ood.output in raw:
        _gated(result, heads, card, data, raw)
    if outliers is None:
        return out
    # --- out of distribution: per model item (a speech window, a face, an EEG window), as the runtime scores
    if not hasattr(module, "load_outliers"):
        raise ConfigError(f"model '{card.name}': its evaluator cannot read outliers (no load_outliers())")
    sets = module.load_outliers(card, outliers, mode=mode)
    outlier_embeddings = {kind: infer_outputs(runner, card, s, batch_of(module))["embedding"] for kind, s in sets.items()}
    selection: list[dict[str, Any]] = []
    described: list[str] = []
    background_data = ""  # what the background direction was learnt from, for the card
    inlier_embeddings = raw["embedding"]  # the held-out samples the threshold keeps 95% of
    threshold_data = data.description
    if fit_ood and more_inliers:
        parts = [inlier_embeddings]
        for folder in more_inliers.split(","):
            extra_set = module.load_split(card, folder.strip(), split, mode=mode)
            parts.append(infer_outputs(runner, card, extra_set, batch_of(module))["embedding"])
            threshold_data += f" + {extra_set.description}"
        inlier_embeddings = np.concatenate(parts)
    if fit_ood:
        embeddings, class_parts, train_sets = [], [], []
        for folder in str(train_data).split(","):  # the train splits of one or more corpora
            train = module.load_split(card, folder.strip(), "train", limit=OOD_TRAIN_LIMIT, seed=0, mode=mode)
            train_sets.append(train)
            if train.description == data.description:
                raise ConfigError(f"--fit-ood: the train split of {folder} is the evaluated split itself; give the "
                                  "data set's root (with train/ and validation/)")
            raw_train = infer_outputs(runner, card, train, batch_of(module))
            embeddings.append(raw_train["embedding"])
            class_parts.append(_per_item(_class_ids(module.heads(card, train, raw_train), train), train))
            described.append(train.description)
        raw_train = {"embedding": np.concatenate(embeddings)}
        classes = np.concatenate(class_parts)
        background_embeddings, probe_inliers = None, []
        if background:
            background_sets = module.load_outliers(card, background, mode=mode)
            background_embeddings = np.concatenate(
                [infer_outputs(runner, card, b, batch_of(module))["embedding"] for b in background_sets.values()])
            probe_inliers = [raw_train["embedding"]]
            if hasattr(module, "degraded"):
                for train in train_sets:
                    probe_inliers.append(infer_outputs(runner, card, module.degraded(card, train), batch_of(module))["embedding"])
            background_data = (f"; background direction: {len(background_embeddings)} of {Path(background).name} "
                               f"({', '.join(background_sets)}) against {sum(len(e) for e in probe_inliers)} training "
                               "samples" + (" (half of them degraded copies)" if len(probe_inliers) > 1 else ""))
        best: tuple[tuple[float, float], dict[str, Any]] | None = None
        for transform, minor, major in C.OOD_CANDIDATES:  # chosen by the worst kind's AUROC, then the mean
            candidate = C.fit_mahalanobis(raw_train["embedding"], classes, minor=minor, major=major, transform=transform)
            if background_embeddings is not None:
                direction = C.fit_background(np.concatenate(probe_inliers), background_embeddings, candidate)
                candidate["background"] = (direction["weights"], direction["bias"])
            inlier = C.ood_distance(inlier_embeddings, candidate)
            aucs = [C.auroc(inlier, C.ood_distance(e, candidate)) for e in outlier_embeddings.values()]
            key = (min(aucs), float(np.mean(aucs)))
            selection.append({"transform": transform, "minor": minor, "major": major, "worst_auroc": key[0],
                              "mean_auroc": key[1]})
            if best is None or key > best[0]:
                best = (key, candidate)
        assert best is not None
        stats = best[1]
        # the card keeps 6 significant digits: the threshold is set on the statistics as stored
        def stored(value: Any) -> np.ndarray:
            value = np.asarray(value)
            return np.array([float(f"{v:.6g}") for v in value.ravel()]).reshape(value.shape)

        for key in ("mean", "projection", "centres"):
            stats[key] = stored(stats[key])
        if stats.get("background") is not None:
            stats["background"] = (stored(stats["background"][0]), float(f"{stats['background'][1]:.6g}"))
        threshold = C.choose_threshold(C.ood_distance(inlier_embeddings, stats), MAX_FALSE_REJECTION)
        inlier = C.ood_distance(raw["embedding"], stats)
    else:
        if card.ood is None:
            raise ConfigError(f"model '{card.name}': its card has no [ood] statistics; fit them with --fit-ood")
        stats, threshold = card.ood.stats(), card.ood.threshold
        inlier = C.ood_distance(raw["embedding"], stats)
    scores = {kind: C.ood_distance(e, stats) for kind, e in outlier_embeddings.items()}
    pooled = np.concatenate(list(scores.values()))
    result["ood_auroc"] = C.auroc(inlier, pooled)
    result["ood_auroc_by_kind"] = {kind: C.auroc(inlier, s) for kind, s in scores.items()}
    result["ood_flagged"] = {"inliers": float((inlier > threshold).mean()),
                             **{kind: float((s > threshold).mean()) for kind, s in scores.items()}}
    result["ood_threshold"] = threshold
    result["ood_n"] = {"inliers": int(len(inlier)), **{kind: int(len(s)) for kind, s in scores.items()}}
    if fit_ood:
        out["ood"] = {
            "threshold": threshold, "components": int(stats["components"]), "transform": stats["transform"],
            "minor": stats["minor"], "major": stats["major"],
            "mean": OodRecord.encode(stats["mean"]),
            "projection": [OodRecord.encode(r) for r in stats["projection"]],
            "centres": [OodRecord.encode(r) for r in stats["centres"]], "classes": stats["classes"],
            **({"background": OodRecord.encode(stats["background"][0]), "background_bias": stats["background"][1]}
               if stats.get("background") is not None else {}),
            "data": f"statistics: {' + '.join(described)}; threshold: {1 - MAX_FALSE_REJECTION:.0%} of {threshold_data} "
                    f"below it; outliers: {Path(outliers).name} ({', '.join(sets)})" + background_data,
            "values": {**{k: result[k] for k in ("ood_auroc", "ood_auroc_by_kind", "ood_flagged", "ood_n")},
                       "selection": selection},
        }
    return out
