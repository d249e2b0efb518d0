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
from edge.zoo.common import command_line, save_cache, seed_everything
from edge.zoo.scene_text import DECODER_RECIPE, choose_guidance, encoder_outputs, train_decoder

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
    "arousal_oasis_grid": "0,0.1,0.2,0.35,0.5,0.75,1",  # stage=arousal: OASIS's weight (Emotion6's is 1) in the branch's fit
    "arousal_l2_grid": "300,1000,3000,10000,30000",  # stage=arousal: ridge strengths on standardised features
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
    save_cache(path, {k: out[k] for k in ("logits", "va", "embedding")})
    return out


def _ridge_cv(x: np.ndarray, y: np.ndarray, w: np.ndarray, train: np.ndarray, test: np.ndarray,
              alphas: list[float]) -> tuple[np.ndarray, list[tuple[np.ndarray, float]]]:
    """Weighted ridge on standardised features (intercept not penalised), fitted on ``train`` for every alpha
    at the cost of one eigendecomposition (the Gram matrix: fewer images than features). Returns the
    predictions on ``test`` (alphas x len(test)) and, per alpha, the weights and bias on the raw features."""
    train = train[w[train] > 0]
    mu, sd = x[train].mean(0), x[train].std(0) + 1e-6
    z = (x[train] - mu) / sd
    wt = w[train] / w[train].sum()
    zm, ym = wt @ z, float(wt @ y[train])
    root = np.sqrt(w[train])[:, None]
    zc, yc = (z - zm) * root, (y[train] - ym) * root[:, 0]
    s, u = np.linalg.eigh(zc @ zc.T)
    uy = u.T @ yc
    preds, coefs = [], []
    for alpha in alphas:
        beta = zc.T @ (u @ (uy / (np.maximum(s, 0.0) + alpha)))
        coef = beta / sd
        bias = float(ym - zm @ beta - mu @ coef)  # y = (x - mu) / sd . beta - zm . beta + ym
        coefs.append((coef, bias))
        preds.append(x[test] @ coef + bias)
    return np.array(preds), coefs


def arousal_branch(root: Path, out: Path, recipe: dict[str, Any], seed: int, log: dict[str, Any], show: bool = False) -> None:
    """Arousal as a ridge fit over the frozen network's features at several depths
    (``edge.zoo.scene_encoder.LevelFeatures``), written into encoder.onnx in place of the fine-tuned head's.

    Why: the fine-tuned head, fitted on both sets at once, reads Emotion6's arousal worst (held-out r 0.263,
    below the frozen linear probe), and the two sets' arousal norms disagree: a fit on one predicts the other
    poorly. Frozen features (no leak from the fine-tune into the CV) at several depths, with much stronger
    regularisation than the emotion heads need, read it better. OASIS's weight in the fit (Emotion6's is 1)
    and the L2 strength are chosen by 5-fold CV on the training images: the pair whose two per-set CV r,
    each as a share of the best that set reaches over the grid, sum highest (both sets count the same)."""
    from edge.zoo.scene_encoder import LEVELS, Targets, backbone, level_features
    from edge.zoo.scene_export import add_arousal_branch

    items, names, is_val = load_items(root)
    x = level_features(items, show=show).astype(np.float64)
    y = Targets.of(items, names).va[:, 1].astype(np.float64)
    is_e6 = np.array(names) == "emotion6"
    train_idx = np.flatnonzero(~is_val)
    fold_of = np.random.default_rng(seed + 1).permutation(len(train_idx)) % 5
    weights = [float(v) for v in str(recipe["arousal_oasis_grid"]).split(",") if v.strip()]
    alphas = [float(v) for v in str(recipe["arousal_l2_grid"]).split(",") if v.strip()]
    table: dict[str, dict[str, float]] = {}
    for w_oasis in weights:
        w = np.where(is_e6, 1.0, w_oasis)
        pred = np.zeros((len(alphas), len(y)))
        for k in range(5):
            test = train_idx[fold_of == k]
            pred[:, test] = _ridge_cv(x, y, w, train_idx[fold_of != k], test, alphas)[0]
        for a, alpha in enumerate(alphas):
            r = {s: float(np.corrcoef(pred[a, train_idx[m[train_idx]]], y[train_idx[m[train_idx]]])[0, 1])
                 for s, m in (("emotion6", is_e6), ("oasis", ~is_e6))}
            table[f"{w_oasis:g}/{alpha:g}"] = {k: round(v, 4) for k, v in r.items()}
    best_of = {s: max(v[s] for v in table.values()) for s in ("emotion6", "oasis")}
    chosen = max(table, key=lambda k: table[k]["emotion6"] / best_of["emotion6"] + table[k]["oasis"] / best_of["oasis"])
    w_oasis, alpha = (float(v) for v in chosen.split("/"))
    _, coefs = _ridge_cv(x, y, np.where(is_e6, 1.0, w_oasis), train_idx, train_idx[:1], [alpha])
    coef, bias = coefs[0]
    log["arousal_branch"] = {
        "cv_r_by_oasis_weight_and_l2": table, "chosen": {"oasis_weight": w_oasis, "l2": alpha, **table[chosen]},
        "rule": "largest sum of the two sets' CV r, each divided by the best that set reaches on the grid",
        "inputs": f"frozen ImageNet Lite0 channel means: blocks {list(LEVELS)}, block 15 and the head convolution "
                  f"({x.shape[1]} numbers), mean of the image and its mirror",
        "folds": 5, "training_images": int(len(train_idx))}
    print("arousal branch:", json.dumps(log["arousal_branch"]["chosen"]), flush=True)
    train_items = [items[i] for i in train_idx]
    before = encoder_outputs(out / "encoder.onnx", train_items)["va"][:, 1]
    log["arousal_branch"].update(add_arousal_branch(out / "encoder.onnx", backbone(), coef, bias))
    after = encoder_outputs(out / "encoder.onnx", train_items)["va"][:, 1]
    # The decoder was trained on the head's arousal, whose spread the ridge's (strongly shrunk) output lacks: its
    # condition gets the new arousal mapped onto the old one's mean and spread on the training images (no labels
    # involved). A decoder trained later on this encoder (stage=decoder) rebuilds its params without the map.
    scale = float(before.std() / max(float(after.std()), 1e-6))
    shift = float(before.mean() - scale * after.mean())
    for spec in log.get("graphs", []):
        if spec.get("name") == "decoder":
            spec["params"]["arousal_condition"] = [round(scale, 4), round(shift, 4)]
            log["arousal_branch"]["decoder_condition"] = {
                "arousal_condition": spec["params"]["arousal_condition"],
                "rule": "scale, shift so that the training images' new arousal has the mean and spread of the head's "
                        f"(head {before.mean():.4f} +- {before.std():.4f}, new {after.mean():.4f} +- {after.std():.4f})"}


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
    if recipe["stage"] == "arousal":  # arousal from the frozen network's levels in the shipped encoder (see arousal_branch)
        log = json.loads((out / "training.json").read_text(encoding="utf-8"))
        arousal_branch(root, out, recipe, args.seed, log, show)
        log["command"] = f"{log['command']} && {command_line()}" if log.get("command") else command_line()
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
