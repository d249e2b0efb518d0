"""Scene model evaluation on a folder laid out like emotion6_256 or oasis_256.

Split "validation" is the held-out images of the training run (``edge.scene.data.is_held_out`` with
the seed and fraction the card records), "train" the rest, "all" every image. Metrics: dominant-
emotion accuracy and KL(data || model) where the folder has emotion distributions, valence and
arousal Pearson r and MAE on the folder's own rating scale, and (when the card has a decoder)
the explanation metrics of ``edge.scene.textmetrics``. On an Emotion6-style folder the dominant emotion
is also the label that calibration (``ece``, ``--fit-temperature``) is measured against; an OASIS-style
folder has no emotion labels, so it gets the OOD figures (``--ood``) but no calibration.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edge.card import ModelCard
from edge.evaluation import Head, LabelledSet, outlier_files
from edge.features.scene import DEFAULT_SIZE, load_image, scene_input
from edge.scene.data import from_unit, read, split


def load_split(card: ModelCard, data_dir: Path, split_name: str, limit: int | None = None, seed: int = 0,
               mode: str | None = None) -> LabelledSet:
    kind, items = read(data_dir)
    hold = card.training.holdout
    chosen = split(kind, items, split_name, seed=int(hold.get("seed", 0)), fraction=float(hold.get("fraction", 0.2)))
    if limit is not None and limit < len(chosen):
        rng = np.random.default_rng(seed)
        chosen = [chosen[i] for i in sorted(rng.choice(len(chosen), size=limit, replace=False))]
    size = int(card.features.params.get("size", DEFAULT_SIZE))
    images = np.stack([scene_input(load_image(it.path), size) for it in chosen]) if chosen else np.zeros((0, 3, size, size), np.float32)
    labels: dict[str, np.ndarray] = {
        "valence": np.array([it.valence for it in chosen], np.float32),
        "arousal": np.array([it.arousal for it in chosen], np.float32),
    }
    if kind == "emotion6" and chosen:
        labels["emotion"] = np.stack([it.emotion for it in chosen if it.emotion is not None]).astype(np.float32)
        classes = labels["emotion"].argmax(1)
    else:  # no emotion ratings: valence terciles of the set's scale stand in as strata (calibration sets)
        classes = np.digitize(labels["valence"], np.quantile(labels["valence"], [1 / 3, 2 / 3])) if chosen else np.zeros(0)
    # ``labels`` is one class per image (dominant emotion) so that calibration sets stratify; the ratings
    # the metrics need are in extra["targets"]
    return LabelledSet(inputs={"image": images}, labels=classes.astype(np.int64),
                       description=f"{data_dir} ({len(chosen)} images, split {split_name})",
                       extra={"targets": labels, "dataset": kind, "folder": str(data_dir), "captions": [it.caption for it in chosen],
                              "keys": [it.key for it in chosen], "split": split_name, "size": size})


def encode(runner: Any, images: np.ndarray, batch: int = 16) -> dict[str, np.ndarray]:
    """The encoder's outputs over a stack of inputs, in batches."""
    outs: dict[str, list[np.ndarray]] = {}
    for s in range(0, len(images), batch):
        for k, v in runner.infer({"image": images[s:s + batch]}).items():
            outs.setdefault(k, []).append(np.asarray(v, dtype=np.float32))
    return {k: np.concatenate(v) for k, v in outs.items()}


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def emotion_metrics(logits: np.ndarray, va: np.ndarray, labels: dict[str, np.ndarray], dataset: str) -> dict[str, Any]:
    """accuracy, kl (Emotion6-style folders), valence/arousal {pearson_r, mae} on the data set's scale, n."""
    out: dict[str, Any] = {"n": int(len(va))}
    if "emotion" in labels and len(va):
        p, q = softmax(logits), labels["emotion"]
        out["accuracy"] = float(np.mean(p.argmax(1) == q.argmax(1)))
        kl = np.sum(np.where(q > 0, q * (np.log(np.maximum(q, 1e-12)) - np.log(np.maximum(p, 1e-12))), 0.0), axis=1)
        out["kl"] = float(kl.mean())
    for j, name in enumerate(("valence", "arousal")):
        pred = np.asarray(from_unit(va[:, j], dataset))
        true = labels[name]
        r = float(np.corrcoef(pred, true)[0, 1]) if len(true) > 2 else float("nan")
        out[name] = {"pearson_r": r, "mae": float(np.mean(np.abs(pred - true)))}
    return out


INFER_BATCH = 16  # images per encoder call in ``emoedge eval`` (a 224-px batch of 256 would take gigabytes)


def heads(card: ModelCard, data: LabelledSet, raw: dict[str, np.ndarray]) -> list[Head]:
    """The emotion logits against the dominant emotion of the folder's distributions (Emotion6-style folders;
    none for a folder without emotion ratings)."""
    if "emotion" not in data.extra["targets"]:
        return []
    return [Head("logits", raw["logits"], np.asarray(data.labels, np.int64), list(card.labels))]


def load_outliers(card: ModelCard, folder: str | Path, mode: str | None = None) -> dict[str, LabelledSet]:
    """Unlabelled images of ``folder/<kind>/`` as encoder inputs, per kind (``python -m edge.evaluation.outliers scene``)."""
    from edge.evaluation.face import IMAGE_SUFFIXES

    size = int(card.features.params.get("size", DEFAULT_SIZE))
    kinds = outlier_files(folder, IMAGE_SUFFIXES, "images: noise/, patterns/, ...")
    return {kind: LabelledSet(inputs={"image": np.stack([scene_input(load_image(f), size) for f in files])},
                              labels=np.zeros(len(files), np.int64), description=f"{Path(folder) / kind} ({len(files)} images)")
            for kind, files in kinds.items()}


def evaluate(runner: Any, card: ModelCard, data: LabelledSet, raw: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    raw = raw if raw is not None else encode(runner, data.inputs["image"])
    result = emotion_metrics(raw["logits"], raw["va"], data.extra["targets"], data.extra["dataset"])
    result["dataset"] = data.extra["dataset"]
    folder = Path(getattr(runner, "model_path", "")).parent
    if any(g.name == "decoder" for g in card.graphs) and (folder / "card.toml").is_file():
        result["explanation"] = explain_split(runner, folder, card, raw, data)
    return result


def explain_split(runner: Any, folder: Path, card: ModelCard, raw: dict[str, np.ndarray], data: LabelledSet) -> dict[str, Any]:
    """The explanation metrics; for a folder with captions, the training split's captions and encodings
    feed the nearest-neighbour baseline (references: each caption's first sentence, as trained)."""
    from edge.card import load_model
    from edge.scene.model import SceneModel
    from edge.scene.text import sentences
    from edge.scene.textmetrics import explanation_metrics

    caps = data.extra.get("captions") or []
    if caps and all(caps) and data.extra.get("split") == "validation":
        kind, items = read(data.extra["folder"])
        hold = card.training.holdout
        train = split(kind, items, "train", seed=int(hold.get("seed", 0)), fraction=float(hold.get("fraction", 0.2)))
        train = [it for it in train if it.caption]
        images = np.stack([scene_input(load_image(it.path), data.extra["size"]) for it in train])
        data.extra["train_raw"] = encode(runner, images)
        data.extra["train_captions"] = [(sentences(it.caption or "") or [""])[0] for it in train]
        data.extra["captions"] = [(sentences(c) or [""])[0] for c in caps]
    threads = int(getattr(runner, "threads", 1) or 1)
    with SceneModel(load_model(folder), threads=threads) as scene:
        return explanation_metrics(folder, card, raw, data, scene=scene)


def print_report(result: dict[str, Any]) -> None:
    print(f"scene model on {result.get('data', '')} ({result['n']} images, {result['dataset']})")
    if "accuracy" in result:
        print(f"  dominant-emotion accuracy {result['accuracy']:.3f}   KL {result['kl']:.3f}")
    for name in ("valence", "arousal"):
        m = result[name]
        print(f"  {name:8s} Pearson r {m['pearson_r']:.3f}   MAE {m['mae']:.3f} (the set's scale)")
    for k, v in (result.get("explanation") or {}).items():
        print(f"  explanation {k}: {v:.3f}" if isinstance(v, float) else f"  explanation {k}: {v}")
