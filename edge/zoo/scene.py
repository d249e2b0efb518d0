"""``emoedge train scene --data ../shared/data``: the scene model (encoder, then decoder) into models/scene.

Data: Emotion6 (``emotion6_256``: emotion distribution, valence/arousal 1-9) and OASIS (``oasis_256``:
valence/arousal 1-7, one caption each) split by image (``edge.scene.data.is_held_out``: 20% held out,
seed 0); ArtEmis explanations and the NRC-VAD lexicon for the decoder. Choices (fine-tuning epochs,
the probe's L2) by 3-fold cross-validation on the training part; the held-out images are only measured.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from edge.errors import ConfigError
from edge.paths import models_dir
from edge.scene.data import HOLDOUT_FRACTION, HOLDOUT_SEED, read_emotion6, read_oasis, split
from edge.zoo.common import command_line, seed_everything
from edge.zoo.scene_text import DECODER_RECIPE, choose_guidance, train_decoder

RECIPE: dict[str, Any] = {
    "epochs": 14,
    "batch_size": 32,
    "lr": 2e-3,
    "backbone_lr_scale": 0.2,
    "weight_decay": 0.02,
    "dropout": 0.3,
    "va_weight": 2.0,
    "va_per_set": False,  # true: weight each set's valence/arousal errors by 1 / that set's rating variance (tried:
    # Emotion6 arousal r 0.267 against 0.263, dominant-emotion accuracy 0.497 against 0.506; not shipped)
    "folds": 3,
    "cv": True,
    "cv_note": "",
    "arousal_oasis_grid": "0,0.1,0.15,0.2,0.25,0.35,0.5,1",  # stage=arousal: OASIS's weight (Emotion6's is 1) in the stack's fit
    "arousal_oasis_loss": 0.1,  # stage=arousal: the most OASIS arousal r (CV) the stack may give up for Emotion6's
    "arousal_l2": 1.0,
    "stage": "all",  # all | decoder (keep encoder.onnx, retrain the text side) | card (rewrite card.toml from training.json)
    **DECODER_RECIPE,
}


def data_root(data_dir: str | None) -> Path:
    """The shared data folder holding emotion6_256 and oasis_256."""
    from edge.paths import data_dir as default_data

    root = Path(data_dir) if data_dir else default_data()
    if root.name in ("emotion6_256", "oasis_256"):
        root = root.parent
    for sub in ("emotion6_256", "oasis_256"):
        if not (root / sub).is_dir():
            raise ConfigError(f"train scene: {root / sub} not found (--data names the folder holding emotion6_256 and oasis_256)")
    return root


def load_items(root: Path) -> tuple[list[Any], list[str], np.ndarray]:
    """Emotion6 then OASIS items (the order every cache is keyed by), their set names and the held-out mask."""
    items, names = [], []
    for name, reader in (("emotion6", read_emotion6), ("oasis", read_oasis)):
        got = reader(root / f"{name}_256")
        items += got
        names += [name] * len(got)
    held = {id(it) for name in ("emotion6", "oasis")
            for it in split(name, [i for i, n in zip(items, names, strict=True) if n == name], "validation")}
    return items, names, np.array([id(it) in held for it in items])


def out_of_fold(root: Path, recipe: dict[str, Any], seed: int, show: bool = False) -> dict[str, np.ndarray]:
    """Encoder outputs (logits, va, embedding; mirror mean) of every training image from a top fitted without
    that image's fold (the CV's folds and seeds, ``recipe['epochs']`` epochs); zeros for held-out images.

    Why: held-out images reach the decoder with flatter emotion probabilities than the training images the
    final encoder has fitted, so the decoder learns from, and its decoding is chosen on, these stand-ins.
    Cached under EMOEDGE_CACHE by the items, seed, folds and epochs."""
    import hashlib

    from edge.paths import cache_dir
    from edge.zoo.scene_encoder import Targets, backbone, cached_features, fit_top, predict_top

    items, names, is_val = load_items(root)
    key = hashlib.sha256(("|".join(str(i.path.resolve()) for i in items)
                          + f"|{seed}|{recipe['folds']}|{recipe['epochs']}|{recipe['lr']}|{recipe['va_weight']}").encode()).hexdigest()[:16]
    path = cache_dir() / "scene" / f"oof_{key}.npz"
    if path.exists():
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    net = backbone()
    cache = cached_features(items, net, seed=seed, show=show)
    targets = Targets.of(items, names)
    train_idx = np.flatnonzero(~is_val)
    fold_of = np.random.default_rng(seed).permutation(len(train_idx)) % recipe["folds"]
    out = {"logits": np.zeros((len(items), 7), np.float32), "va": np.zeros((len(items), 2), np.float32),
           "embedding": np.zeros((len(items), 256), np.float32)}
    for k in range(recipe["folds"]):
        fold = train_idx[fold_of == k]
        top, _ = fit_top(net, cache, targets, np.setdiff1d(train_idx, fold), None, recipe, seed + k)
        for name, value in zip(("logits", "va", "embedding"), predict_top(top, cache, fold), strict=True):
            out[name][fold] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, logits=out["logits"], va=out["va"], embedding=out["embedding"])
    return out


def arousal_stack(root: Path, out: Path, recipe: dict[str, Any], seed: int, log: dict[str, Any]) -> None:
    """Arousal as a linear function of the encoder's emotion probabilities, valence and arousal, fitted on out-of-fold
    outputs of the training images and written into encoder.onnx.

    Why: Emotion6's arousal follows its emotion categories more than OASIS's does, and a head fitted on both sets
    serves Emotion6 worst. OASIS's weight in the fit is chosen by 5-fold CV on the out-of-fold outputs (training
    images only): the largest Emotion6 arousal r that costs OASIS at most ``arousal_oasis_loss`` of its r."""
    from edge.zoo.scene_encoder import Targets
    from edge.zoo.scene_export import add_arousal_stack

    items, names, is_val = load_items(root)
    enc_recipe = dict(recipe, **{k: v for k, v in (log.get("recipe") or {}).items() if k in ("epochs", "folds", "lr", "va_weight")})
    oof = out_of_fold(root, enc_recipe, seed)
    e = np.exp(oof["logits"] - oof["logits"].max(1, keepdims=True))
    x = np.c_[e / e.sum(1, keepdims=True), oof["va"]]
    y = Targets.of(items, names).va[:, 1]
    is_e6 = np.array(names) == "emotion6"
    train_idx = np.flatnonzero(~is_val)
    fold_of = np.random.default_rng(seed + 1).permutation(len(train_idx)) % 5

    def fit(idx: np.ndarray, w_oasis: float) -> np.ndarray:
        a = np.c_[x[idx], np.ones(len(idx))] * np.sqrt(np.where(is_e6[idx], 1.0, w_oasis))[:, None]
        b = y[idx] * np.sqrt(np.where(is_e6[idx], 1.0, w_oasis))
        return np.linalg.solve(a.T @ a + recipe["arousal_l2"] * np.diag(np.r_[np.ones(9), 0.0]), a.T @ b)

    def r(pred: np.ndarray, mask: np.ndarray) -> float:
        idx = train_idx[mask[train_idx]]
        return float(np.corrcoef(pred[idx], y[idx])[0, 1])

    table = {"none": {"emotion6": round(r(oof["va"][:, 1], is_e6), 4), "oasis": round(r(oof["va"][:, 1], ~is_e6), 4)}}
    for w in [float(v) for v in str(recipe["arousal_oasis_grid"]).split(",") if v.strip()]:
        pred = np.zeros(len(y))
        for k in range(5):
            test = train_idx[fold_of == k]
            pred[test] = np.c_[x[test], np.ones(len(test))] @ fit(train_idx[fold_of != k], w)
        table[str(w)] = {"emotion6": round(r(pred, is_e6), 4), "oasis": round(r(pred, ~is_e6), 4)}
    floor = table["none"]["oasis"] - recipe["arousal_oasis_loss"]
    allowed = [k for k in table if k != "none" and table[k]["oasis"] >= floor]
    best = max(allowed, key=lambda k: table[k]["emotion6"], default=None)
    log["arousal_stack"] = {"cv_r_by_oasis_weight": table, "chosen": best, "rule": f"largest Emotion6 r with OASIS r >= {floor:.4f}",
                            "l2": recipe["arousal_l2"], "inputs": "softmax(logits) (7), valence, arousal (out-of-fold, training images)"}
    if best is None or table[best]["emotion6"] <= table["none"]["emotion6"]:
        log["arousal_stack"]["written"] = False
        return
    coef = fit(train_idx, float(best))
    add_arousal_stack(out / "encoder.onnx", coef[:9], float(coef[9]))
    log["arousal_stack"].update(written=True, weight=[round(float(c), 5) for c in coef[:9]], bias=round(float(coef[9]), 5))
    print("arousal stack:", json.dumps(log["arousal_stack"]), flush=True)


def train_encoder(root: Path, recipe: dict[str, Any], seed: int, show: bool, log: dict[str, Any]) -> Any:
    """Fine-tune the encoder's top on cached frozen features; returns (encoder module, report)."""
    from edge.zoo.scene_encoder import (
        Cache,
        Encoder,
        Prefix,
        Targets,
        backbone,
        cached_features,
        fit_top,
        linear_probe,
        predict_top,
        scores,
        selection_score,
    )

    items, names, is_val = load_items(root)
    train_idx, val_idx = np.flatnonzero(~is_val), np.flatnonzero(is_val)
    net = backbone()
    t0 = time.time()
    cache: Cache = cached_features(items, net, seed=seed, show=show)
    log["cache_seconds"] = round(time.time() - t0, 1)
    targets = Targets.of(items, names)
    rng = np.random.default_rng(seed)
    fold_of = rng.permutation(len(train_idx)) % recipe["folds"]
    folds = [train_idx[fold_of == k] for k in range(recipe["folds"])]
    log["split"] = {"train": len(train_idx), "held_out": len(val_idx),
                    "held_out_emotion6": int(sum(is_val[i] for i, n in enumerate(names) if n == "emotion6")),
                    "held_out_oasis": int(sum(is_val[i] for i, n in enumerate(names) if n == "oasis"))}
    per_set = {n: np.array([i for i in val_idx if names[i] == n]) for n in ("emotion6", "oasis")}
    log["linear_probe"] = linear_probe(cache, targets, train_idx, val_idx, folds, seed, per_set, recipe["va_per_set"])
    print("linear probe:", json.dumps(log["linear_probe"]), flush=True)
    epochs = recipe["epochs"]
    if recipe["cv"]:
        curves = []
        for k, fold in enumerate(folds):
            _, hist = fit_top(net, cache, targets, np.setdiff1d(train_idx, fold), fold, recipe, seed + k)
            curves.append([selection_score(h) for h in hist])
            print(f"cv fold {k}: {[round(c, 3) for c in curves[-1]]}", flush=True)
        mean = np.mean(curves, axis=0)
        epochs = int(np.argmax(mean)) + 1
        log["cv"] = {"mean_score_by_epoch": [round(float(m), 4) for m in mean], "chosen_epochs": epochs}
    else:
        log["cv"] = {"chosen_epochs": epochs, "note": recipe.get("cv_note", "fixed by --set epochs, no CV in this run")}
    final = dict(recipe, epochs=epochs)
    top, _ = fit_top(net, cache, targets, train_idx, None, final, seed)
    lg, va, _ = predict_top(top, cache, val_idx)
    sub = Targets(targets.emotion[val_idx], targets.has_emotion[val_idx], targets.va[val_idx])
    log["held_out_torch"] = scores(lg, va, sub)
    print("held out (torch):", json.dumps(log["held_out_torch"]), flush=True)
    log["recipe"] = final
    return Encoder(Prefix(net), top).eval()


def train(data_dir: str | None, out_dir: Path | None, args: argparse.Namespace) -> Path:
    from edge.zoo.common import recipe_from_args
    from edge.zoo.scene_export import export_encoder, write_scene_card

    recipe = recipe_from_args(RECIPE, args)
    seed_everything(args.seed, threads=args.threads or None)
    root = data_root(data_dir)
    out = out_dir or models_dir() / "scene"
    out.mkdir(parents=True, exist_ok=True)
    show = not getattr(args, "no_progress", False)
    log: dict[str, Any] = {"command": command_line(), "seed": args.seed, "holdout": {"seed": HOLDOUT_SEED, "fraction": HOLDOUT_FRACTION}}
    t0 = time.time()
    if recipe["stage"] not in ("all", "decoder", "card", "guidance", "arousal"):
        raise ConfigError(f"--set stage={recipe['stage']}: expected all, decoder, guidance, arousal or card")
    if recipe["stage"] == "arousal":  # a linear arousal stack on the shipped encoder's outputs (see arousal_stack)
        log = json.loads((out / "training.json").read_text(encoding="utf-8"))
        arousal_stack(root, out, recipe, args.seed, log)
        (out / "training.json").write_text(json.dumps(log, indent=1) + "\n", encoding="utf-8")
        write_scene_card(out, log, log.get("command") or command_line(), root)
        return out
    if recipe["stage"] == "guidance":  # choose the decoding guidance again for the shipped graphs
        log = json.loads((out / "training.json").read_text(encoding="utf-8"))
        choose_guidance(root, out, recipe, args.seed, log)
        (out / "training.json").write_text(json.dumps(log, indent=1) + "\n", encoding="utf-8")
        write_scene_card(out, log, log.get("command") or command_line(), root)
        return out
    if recipe["stage"] == "card":  # the card again from training.json (after a change to what the card says)
        log = json.loads((out / "training.json").read_text(encoding="utf-8"))
        write_scene_card(out, log, log.get("command") or command_line(), root)
        return out
    if recipe["stage"] == "decoder":
        log = json.loads((out / "training.json").read_text(encoding="utf-8"))
    else:
        encoder = train_encoder(root, recipe, args.seed, show, log)
        log["export"] = export_encoder(encoder, out / "encoder.onnx")
        log["seconds"] = round(time.time() - t0, 1)
        (out / "training.json").write_text(json.dumps(log, indent=1) + "\n", encoding="utf-8")
    train_decoder(root, out, recipe, args.seed, log, show)
    log["decoder_recipe"] = {k: recipe[k] for k in DECODER_RECIPE}
    (out / "training.json").write_text(json.dumps(log, indent=1) + "\n", encoding="utf-8")
    write_scene_card(out, log, log.get("command") or command_line(), root)
    if recipe["guidance_grid"]:
        choose_guidance(root, out, recipe, args.seed, log)
        (out / "training.json").write_text(json.dumps(log, indent=1) + "\n", encoding="utf-8")
        write_scene_card(out, log, log.get("command") or command_line(), root)
    return out
