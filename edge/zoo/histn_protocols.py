"""HiSTN's evaluation protocols during training: leave-subjects-out cross-validation and the subject-dependent
recitation -> recall protocol, each for HiSTN and for the classical baseline (log band power + logistic regression)
on the same folds."""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn

from edge.zoo import dasps
from edge.zoo.histn_net import LEVELS, TARGETS, fit, predict

BASELINE_BANDS = (("theta", 4.0, 8.0), ("alpha", 8.0, 13.0), ("beta", 13.0, 30.0), ("gamma", 30.0, 45.0))


# --- the classical baseline: log band power + logistic regression -------------------------------


def baseline_features(subjects: list[dasps.Subject], norm_s: float) -> tuple[np.ndarray, dasps.Windows]:
    """Log band power (4 bands x 14 channels) of each band-passed 1-s window, z-scored per subject by the
    features of the windows in that subject's first ``norm_s`` seconds (no labels; the same rule as HiSTN's)."""
    from edge.features.eeg import band_power

    feats, parts = [], []
    for subj in subjects:
        w = dasps.windows(dasps.prepare_subject(subj, norm_s=1e9, clip=1e9))  # band-passed, not z-scored
        f = band_power(w.x.astype(np.float64) + 0.0, dasps.SAMPLE_RATE, BASELINE_BANDS)
        first = f[: max(1, int(norm_s))]  # windows are 1 s, in file order
        feats.append((f - first.mean(0)) / np.maximum(first.std(0), 1e-6))
        parts.append(w)
    w = dasps.Windows(*(np.concatenate([getattr(p, k) for p in parts]) for k in ("x", "valence", "arousal", "subject", "situation", "phase", "segment")))
    return np.concatenate(feats).astype(np.float64), w


def softmax_regression(x: np.ndarray, y: np.ndarray, x_test: np.ndarray, n_classes: int, c: float, power: float) -> np.ndarray:
    """L2 multinomial logistic regression (torch LBFGS), class-weighted like HiSTN; returns test probabilities."""
    xt, yt = torch.from_numpy(x).double(), torch.from_numpy(y)
    w = torch.zeros(x.shape[1], n_classes, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    cw = np.where(counts > 0, (counts.sum() / np.maximum(counts, 1)) ** power, 0.0)
    cw = torch.tensor(cw / cw[counts > 0].mean(), dtype=torch.float64)
    opt = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(xt @ w + b, yt, weight=cw) + 0.5 / (c * len(x)) * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return torch.softmax(torch.from_numpy(x_test).double() @ w + b, 1).numpy()


def baseline_scores(f: np.ndarray, w: dasps.Windows, train: np.ndarray, test: np.ndarray, recipe: dict) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Level probabilities of the baseline for both targets, and its binary views from logistic
    regressions fitted on the binary labels themselves (a stronger baseline than derived views)."""
    c, power = float(recipe["baseline_c"]), float(recipe["class_weight_power"])
    probs = []
    for target in TARGETS:
        y = dasps.rating_level(getattr(w, target))
        probs.append(softmax_regression(f[train], y[train], f[test], len(LEVELS), c, power))
    binary = {}
    for key, y in (("valence_high", w.valence >= 5), ("arousal_high", w.arousal >= 5), ("anxious", dasps.anxious(w.valence, w.arousal))):
        y = y.astype(np.int64)
        if len(np.unique(y[train])) < 2:  # one class only: predict it
            binary[key] = np.full(int(test.sum()), float(y[train][0]))
            continue
        binary[key] = softmax_regression(f[train], y[train], f[test], 2, c, 1.0)[:, 1]
    return probs[0], probs[1], binary


# --- protocols ---------------------------------------------------------------------------------


def _summary(name: str, result: dict) -> str:
    v, a = result["valence"], result["arousal"]
    return (f"{name:26s} V wF1 {v['levels']['weighted_f1']:.3f} acc {v['levels']['accuracy']:.3f} bal2 {v['binary']['balanced_accuracy']:.3f} | "
            f"A wF1 {a['levels']['weighted_f1']:.3f} acc {a['levels']['accuracy']:.3f} bal2 {a['binary']['balanced_accuracy']:.3f} | "
            f"anxious bal {result['anxious']['balanced_accuracy']:.3f}")


KEY_METRICS = (
    ("valence", "levels", "weighted_f1"), ("valence", "levels", "accuracy"), ("valence", "levels", "balanced_accuracy"),
    ("valence", "levels", "top2_accuracy"), ("valence", "levels", "tri_p"), ("valence", "levels", "seq2hr"),
    ("valence", "binary", "balanced_accuracy"),
    ("arousal", "levels", "weighted_f1"), ("arousal", "levels", "accuracy"), ("arousal", "levels", "balanced_accuracy"),
    ("arousal", "levels", "top2_accuracy"), ("arousal", "levels", "tri_p"), ("arousal", "levels", "seq2hr"),
    ("arousal", "binary", "balanced_accuracy"),
)


def spread(results: list[dict]) -> dict[str, list[float]]:
    """mean and std over ``results`` (folds or subjects) of the key metrics and anxious balanced accuracy."""
    out = {}
    for t, kind, m in KEY_METRICS:
        vals = [r[t][kind][m] for r in results]
        out[f"{t}.{kind}.{m}"] = [round(float(np.mean(vals)), 4), round(float(np.std(vals)), 4)]
    vals = [r["anxious"]["balanced_accuracy"] for r in results]
    out["anxious.balanced_accuracy"] = [round(float(np.mean(vals)), 4), round(float(np.std(vals)), 4)]
    return out


def cross_validate(subjects: list[dasps.Subject], recipe: dict, seed: int, args: argparse.Namespace) -> dict:
    """Leave-subjects-out CV over ``subjects`` for HiSTN and the baseline on the same folds."""
    from edge.evaluation.histn import level_metrics, pooled_and_per_subject

    norm_s, clip = float(recipe["norm_s"]), float(recipe["clip"])
    w = dasps.prepared_windows(subjects, norm_s, clip)
    f, wb = baseline_features(subjects, norm_s)
    assert np.array_equal(wb.segment, w.segment)
    numbers = np.array([s.index for s in subjects])
    folds = [fold.tolist() for fold in np.array_split(numbers, int(recipe["folds"]))]
    n = len(w)
    oof = {"histn": (np.zeros((n, 5)), np.zeros((n, 5)), None),
           "baseline": (np.zeros((n, 5)), np.zeros((n, 5)), {k: np.zeros(n) for k in ("valence_high", "arousal_high", "anxious")})}
    per_fold: dict[str, list[dict]] = {"histn": [], "baseline": [], "baseline_derived": []}
    for k, held in enumerate(folds):
        test = np.isin(w.subject, held)
        t0 = time.perf_counter()
        model, _ = fit(w.x[~test], w.levels("valence")[~test], w.levels("arousal")[~test], recipe, seed + k)
        vp, ap = predict(model, w.x[test])
        oof["histn"][0][test], oof["histn"][1][test] = vp, ap
        bv, ba, bb = baseline_scores(f, wb, ~test, test, recipe)
        oof["baseline"][0][test], oof["baseline"][1][test] = bv, ba
        for key, val in bb.items():
            oof["baseline"][2][key][test] = val  # type: ignore[index]
        r_h = level_metrics(vp, ap, w.valence[test], w.arousal[test])
        r_b = level_metrics(bv, ba, w.valence[test], w.arousal[test], bb)
        r_bd = level_metrics(bv, ba, w.valence[test], w.arousal[test])
        per_fold["histn"].append(r_h)
        per_fold["baseline"].append(r_b)
        per_fold["baseline_derived"].append(r_bd)
        print(f"fold {k} subjects {held} ({time.perf_counter() - t0:.0f} s)")
        print("  " + _summary("HiSTN", r_h))
        print("  " + _summary("baseline (binary LR)", r_b))
        print("  " + _summary("baseline (levels LR)", r_bd))
    out: dict = {"folds": folds, "protocol": "leave-subjects-out", "methods": {}}
    for name, (vp, ap, bb) in (("histn", oof["histn"]), ("baseline", oof["baseline"]), ("baseline_derived", (oof["baseline"][0], oof["baseline"][1], None))):
        pooled = pooled_and_per_subject(vp, ap, w.valence, w.arousal, w.subject, bb)
        out["methods"][name] = {
            "pooled": {k: pooled[k] for k in ("valence", "arousal", "anxious", "n")},
            "per_subject": pooled["per_subject"],
            "fold_mean_std": spread(per_fold[name]),
            "subject_mean_std": spread(list(pooled["per_subject"].values())),
        }
        print(_summary(f"CV pooled {name}", pooled))
    return out


def recitation_to_recall(subjects: list[dasps.Subject], recipe: dict, seed: int) -> dict:
    """Subject-dependent: per subject, train on its 6 recitation segments, test on its 6 recall segments
    (the two phases of a situation share its rating, but no window is in both sides)."""
    from edge.evaluation.histn import level_metrics, pooled_and_per_subject

    norm_s, clip = float(recipe["norm_s"]), float(recipe["clip"])
    names = ("histn", "baseline", "baseline_derived")
    collected: dict[str, dict[str, list[np.ndarray]]] = {m: {"v": [], "a": [], "vh": [], "ah": [], "ax": []} for m in names}
    truth: dict[str, list[np.ndarray]] = {"v": [], "a": [], "s": []}
    for subj in subjects:
        w = dasps.prepared_windows([subj], norm_s, clip)
        f, wb = baseline_features([subj], norm_s)
        train, test = w.phase == 0, w.phase == 1
        model, _ = fit(w.x[train], w.levels("valence")[train], w.levels("arousal")[train], recipe, seed,
                       epochs=int(recipe["sd_epochs"]))
        vp, ap = predict(model, w.x[test])
        bv, ba, bb = baseline_scores(f, wb, train, test, recipe)
        from edge.evaluation.histn import derived_views

        for name, (p_v, p_a, views) in (("histn", (vp, ap, derived_views(vp, ap))), ("baseline", (bv, ba, bb)),
                                         ("baseline_derived", (bv, ba, derived_views(bv, ba)))):
            c = collected[name]
            c["v"].append(p_v)
            c["a"].append(p_a)
            c["vh"].append(views["valence_high"])
            c["ah"].append(views["arousal_high"])
            c["ax"].append(views["anxious"])
        truth["v"].append(w.valence[test])
        truth["a"].append(w.arousal[test])
        truth["s"].append(w.subject[test])
        r = level_metrics(vp, ap, w.valence[test], w.arousal[test])
        print("  " + _summary(f"S{subj.index:02d} recitation->recall", r))
    tv, ta, ts = (np.concatenate(truth[k]) for k in ("v", "a", "s"))
    out: dict = {"protocol": "subject-dependent: train on each subject's recitation segments, test on its recall segments", "methods": {}}
    for name in names:
        c = {k: np.concatenate(v) for k, v in collected[name].items()}
        views = {"valence_high": c["vh"], "arousal_high": c["ah"], "anxious": c["ax"]}
        pooled = pooled_and_per_subject(c["v"], c["a"], tv, ta, ts, views)
        out["methods"][name] = {
            "pooled": {k: pooled[k] for k in ("valence", "arousal", "anxious", "n")},
            "per_subject": pooled["per_subject"],
            "subject_mean_std": spread(list(pooled["per_subject"].values())),
        }
        print(_summary(f"rec->recall pooled {name}", pooled))
    return out
