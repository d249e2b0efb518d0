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

    items, names = [], []
    for name, reader in (("emotion6", read_emotion6), ("oasis", read_oasis)):
        got = reader(root / f"{name}_256")
        items += got
        names += [name] * len(got)
    held = {id(it) for name in ("emotion6", "oasis")
            for it in split(name, [i for i, n in zip(items, names, strict=True) if n == name], "validation")}
    is_val = np.array([id(it) in held for it in items])
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
    if recipe["stage"] not in ("all", "decoder", "card", "guidance"):
        raise ConfigError(f"--set stage={recipe['stage']}: expected all, decoder, guidance or card")
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
