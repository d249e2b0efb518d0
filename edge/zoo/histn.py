"""``emoedge train histn``: HiSTN (Kuang, Song, Michoski 2024) for raw 14-channel Emotiv EEG, trained on DASPS.

A port of the authors' Keras ``HST_model`` (dykuang/EEG-based-affective-computing) to torch:

1. temporal front-end shared by all electrodes (EEGNet-like): 8 temporal filters of 64 samples,
   a per-electrode mix of the 8 outputs (max-norm 1), BN, ELU, a per-electrode temporal conv of 5,
   BN, ELU, average pool 2, dropout -> [14 nodes, 62 samples];
2. hierarchy: 4 regions (AF3 F7 F3 FC5 | T7 P7 O1 | O2 P8 T8 | FC6 F4 F8 AF4); per region a
   Chebyshev message passing of order 2 (3 scalar weights) and a separable temporal conv, BN, ELU,
   residual; region fusion by softmax attention over each region's nodes; Chebyshev message passing
   on the 4-cycle of regions; region collapse by attention into one global signal;
3. readout: [14 node + 4 region + 1 global] channels, global average over time (the ``embedding``),
   dropout, linear -> 5 levels.
Trained with Gaussian ordinal label smoothing (sigma 0.5); metrics in ``edge.evaluation.ordinal``.

The shipped model (``HiSTNPair``) is two such networks in one graph, one per target (valence,
arousal), each predicting five rating levels (``edge.zoo.dasps``: 1-2, 3-4, 5, 6-7, 8-9) from 1 s of
band-passed EEG z-scored by the first minute of the wearer's own recording. ``emoedge train histn``
(``train``) first runs leave-subjects-out cross-validation over every subject of the folder for HiSTN
and the classical baseline (log band power + logistic regression, ``baseline_scores``) on the same
folds, then the subject-dependent recitation -> recall protocol for both, then trains on the training
subjects (all but ``VALIDATION_SUBJECTS``) and exports.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edge.errors import ConfigError
from edge.evaluation.ordinal import gaussian_ordinal_targets
from edge.paths import data_dir as find_data
from edge.zoo import dasps
from edge.zoo.common import count_parameters, export_onnx, recipe_from_args
from edge.zoo.signal_common import (
    prepare_out,
    progress,
    setup,
    training_command,
)

LEVELS = dasps.LEVEL_NAMES
REGION_BOUNDS = (0, 4, 7, 10, 14)
TARGETS = dasps.TARGETS
#: DASPS subjects the shipped model never sees (``emoedge eval histn`` measures on them); cross-validation uses all
VALIDATION_SUBJECTS = (4, 9, 13, 18)
#: the recipe (``--set KEY=VALUE`` overrides an entry); chosen by leave-subjects-out cross-validation
RECIPE: dict[str, object] = {
    "epochs": 30,
    "batch_size": 64,
    "lr": 2e-3,
    "weight_decay": 1e-3,
    "dropout": 0.2,
    "sigma": 0.5,  # Gaussian ordinal label smoothing
    "class_weight_power": 0.5,  # 0: none, 1: inverse frequency
    "norm_s": 60.0,  # seconds of a subject's own EEG the z-scores come from
    "clip": 6.0,  # |z| clip
    "folds": 6,  # leave-subjects-out folds over every subject of the folder
    "baseline_c": 0.1,  # inverse L2 strength of the logistic regression
    "sd_epochs": 60,  # subject-dependent protocol: epochs per subject
    "readout": "mean",  # over time, per signal: "mean" (the paper's global average pooling) or "logpower"
}
READOUTS = ("mean", "logpower")
BASELINE_BANDS = (("theta", 4.0, 8.0), ("alpha", 8.0, 13.0), ("beta", 13.0, 30.0), ("gamma", 30.0, 45.0))

# intra-region adjacency (no self loops), as in the authors' code
_A1 = [(0, 2), (1, 2), (1, 3), (2, 3)]
_A2 = [(0, 1), (1, 2)]
REGION_EDGES = (_A1, _A2, _A2, [(3 - i, 3 - j) for i, j in _A1])
REGION_GRAPH = [(0, 1), (1, 2), (2, 3), (3, 0)]


def adjacency(n: int, edges: list[tuple[int, int]]) -> np.ndarray:
    a = np.zeros((n, n), dtype=np.float32)
    for i, j in edges:
        a[i, j] = a[j, i] = 1.0
    return a


def scaled_laplacian(a: np.ndarray) -> np.ndarray:
    d = a.sum(1)
    inv = np.where(d > 0, 1 / np.sqrt(np.maximum(d, 1e-12)), 0.0)
    lap = np.eye(len(a)) - inv[:, None] * a * inv[None, :]
    lam = float(np.linalg.eigvalsh(lap).max())
    return (2 * lap / lam - np.eye(len(a))).astype(np.float32)


class MessagePassing(nn.Module):
    """X @ sum_k w_k T_k(L~): a Chebyshev graph filter with one scalar per order (X is [B, nodes, time])."""

    def __init__(self, a: np.ndarray, hops: int = 2) -> None:
        super().__init__()
        lap = torch.from_numpy(scaled_laplacian(a))
        polys = [torch.eye(len(a)), lap]
        for _ in range(2, hops + 1):
            polys.append(2 * lap @ polys[-1] - polys[-2])
        self.register_buffer("polys", torch.stack(polys[: hops + 1]))  # [K, n, n]
        self.weight = nn.Parameter(torch.full((hops + 1,), 1.0 / (hops + 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        polys: torch.Tensor = self.polys  # type: ignore[assignment]
        kernel = (self.weight[:, None, None] * polys).sum(0)  # [n, n], symmetric
        return torch.einsum("ij,bjt->bit", kernel, x)


class Fusion(nn.Module):
    """Softmax attention over n signals from their time means (Dense n -> n), giving one signal."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.dense = nn.Linear(n, n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, n, T] -> [B, 1, T]
        w = torch.softmax(self.dense(x.mean(dim=2)), dim=1)
        return (w.unsqueeze(2) * x).sum(dim=1, keepdim=True)


class HiSTN(nn.Module):
    """One target: [B, 14, 128] -> logits over 5 levels and the 19-value embedding."""

    def __init__(self, n_classes: int = 5, dropout: float = 0.2, filters: int = 8, ksize: int = 64, readout: str = "mean") -> None:
        super().__init__()
        if readout not in READOUTS:
            raise ConfigError(f"histn: unknown readout '{readout}' (expected one of {', '.join(READOUTS)})")
        self.readout = readout
        n = REGION_BOUNDS[-1]
        self.temporal = nn.Conv2d(1, filters, (1, ksize), padding="same", bias=False)
        self.mix = nn.Conv2d(n, n, (filters, 1), groups=n, bias=False)  # per-electrode mix of the filters
        self.bn1 = nn.BatchNorm1d(n)
        self.depth = nn.Conv1d(n, n, 5, groups=n, bias=False)
        self.bn2 = nn.BatchNorm1d(n)
        self.pool = nn.AvgPool1d(2)
        self.drop = nn.Dropout(dropout)
        self.act = nn.ELU()
        sizes = [REGION_BOUNDS[i + 1] - REGION_BOUNDS[i] for i in range(4)]
        self.node_mp = nn.ModuleList(MessagePassing(adjacency(s, e)) for s, e in zip(sizes, REGION_EDGES, strict=False))
        self.node_dw = nn.ModuleList(nn.Conv1d(s, s, 5, padding=2, groups=s, bias=False) for s in sizes)
        self.node_pw = nn.ModuleList(nn.Conv1d(s, s, 1, bias=False) for s in sizes)
        self.bn3 = nn.BatchNorm1d(n)
        self.fuse_in = nn.ModuleList(Fusion(s) for s in sizes)
        self.fuse_out = nn.ModuleList(Fusion(s) for s in sizes)
        self.region_mp = MessagePassing(adjacency(4, REGION_GRAPH))
        self.collapse_in = Fusion(4)
        self.collapse_out = Fusion(4)
        self.head = nn.Linear(n + 4 + 1, n_classes)

    def regions(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [x[:, REGION_BOUNDS[i] : REGION_BOUNDS[i + 1]] for i in range(4)]

    def forward(self, eeg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # eeg [B, 14, 128]
        h = self.temporal(eeg.unsqueeze(1))  # [B, 8, 14, T]
        h = self.mix(h.transpose(1, 2)).squeeze(2)  # [B, 14, T]
        h = self.act(self.bn1(h))
        h = self.act(self.bn2(self.depth(h)))  # [B, 14, T - 4]
        x = self.drop(self.pool(h))  # [B, 14, 62]
        parts = self.regions(x)
        agg = [pw(dw(mp(p))) for p, mp, dw, pw in zip(parts, self.node_mp, self.node_dw, self.node_pw, strict=False)]
        nodes = x + self.act(self.bn3(torch.cat(agg, dim=1)))
        r_in = torch.cat([f(p) for f, p in zip(self.fuse_in, parts, strict=False)], dim=1)  # [B, 4, T]
        r_mp = self.region_mp(r_in)
        r_out = r_mp + torch.cat([f(p) for f, p in zip(self.fuse_out, self.regions(nodes), strict=False)], dim=1)
        g = self.collapse_in(r_in) + self.collapse_out(r_out)  # [B, 1, T]
        signals = torch.cat([nodes, r_out, g], dim=1)  # [B, 19, T]
        if self.readout == "logpower":  # log mean square over time: a learned band power per signal
            embedding = torch.log(signals.pow(2).mean(dim=2) + 1e-4)
        else:  # the paper's global average pooling
            embedding = signals.mean(dim=2)
        return self.head(self.drop(embedding)), embedding

    def apply_max_norm(self) -> None:
        """Keras max_norm(1) on the per-electrode mix: rescale each electrode's kernel to norm <= 1."""
        with torch.no_grad():
            w = self.mix.weight  # [14, 1, 8, 1]
            norm = w.flatten(1).norm(dim=1).clamp(min=1.0)
            w.div_(norm.view(-1, 1, 1, 1))


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(trainable parameters, BatchNorm running statistics)."""
    stats = sum(b.numel() for name, b in model.named_buffers() if name.endswith(("running_mean", "running_var")))
    return count_parameters(model), int(stats)


class HiSTNPair(nn.Module):
    """The shipped graph: one HiSTN per target, side by side (parameters per target = one HiSTN)."""

    def __init__(self, dropout: float = 0.2, readout: str = "mean") -> None:
        super().__init__()
        self.valence = HiSTN(dropout=dropout, readout=readout)
        self.arousal = HiSTN(dropout=dropout, readout=readout)

    def forward(self, eeg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        v, ev = self.valence(eeg)
        a, ea = self.arousal(eeg)
        return v, a, torch.cat([ev, ea], dim=1)

    def apply_max_norm(self) -> None:
        self.valence.apply_max_norm()
        self.arousal.apply_max_norm()


# ---------------------------------------------------------------------------------------------
# training


def class_weights(y: np.ndarray, power: float) -> torch.Tensor:
    """(inverse frequency)^power per level, normalised to mean 1 over the levels present; 0 for absent ones."""
    counts = np.bincount(y, minlength=len(LEVELS)).astype(np.float64)
    w = np.where(counts > 0, (counts.sum() / np.maximum(counts, 1)) ** power, 0.0)
    return torch.tensor(w / w[counts > 0].mean(), dtype=torch.float32)


def fit(
    x: np.ndarray, yv: np.ndarray, ya: np.ndarray, recipe: dict, seed: int, epochs: int | None = None,
    args: argparse.Namespace | None = None, show: bool = False,
) -> tuple[HiSTNPair, int]:
    """Train both networks on windows ``x`` and level indices ``yv``, ``ya`` (Gaussian ordinal targets)."""
    torch.manual_seed(seed)
    model = HiSTNPair(dropout=float(recipe["dropout"]), readout=str(recipe["readout"]))
    epochs = int(epochs or recipe["epochs"])
    opt = torch.optim.AdamW(model.parameters(), lr=float(recipe["lr"]), weight_decay=float(recipe["weight_decay"]))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs, 1))
    heads = []
    for y in (yv, ya):
        heads.append((
            torch.from_numpy(gaussian_ordinal_targets(y, len(LEVELS), float(recipe["sigma"])).astype(np.float32)),
            class_weights(y, float(recipe["class_weight_power"])),
            torch.from_numpy(y),
        ))
    xt = torch.from_numpy(x)
    gen = torch.Generator().manual_seed(seed)
    batch = int(recipe["batch_size"])
    max_steps = getattr(args, "max_steps", None) if args is not None else None
    steps = 0
    epochs_iter = progress(range(epochs), args, desc="histn epochs") if (show and args is not None) else range(epochs)
    for _ in epochs_iter:
        model.train()
        order = torch.randperm(len(xt), generator=gen)
        for start in range(0, len(xt), batch):
            idx = order[start : start + batch]
            outs = model(xt[idx])
            loss = torch.zeros(())
            for logits, (targets, weight, y) in zip(outs[:2], heads, strict=True):
                per_sample = -(targets[idx] * torch.log_softmax(logits, 1)).sum(1)
                loss = loss + (per_sample * weight[y[idx]]).sum() / weight[y[idx]].sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            model.apply_max_norm()
            steps += 1
            if max_steps and steps >= max_steps:
                return model.eval(), steps
        sched.step()
    return model.eval(), steps


def predict(model: HiSTNPair, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Level probabilities [N, 5] for valence and arousal."""
    vs, as_ = [], []
    with torch.no_grad():
        for i in range(0, len(x), 512):
            v, a, _ = model(torch.from_numpy(x[i : i + 512]))
            vs.append(torch.softmax(v, 1).numpy())
            as_.append(torch.softmax(a, 1).numpy())
    return np.concatenate(vs).astype(np.float64), np.concatenate(as_).astype(np.float64)


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


def train(data: str | None, out: Path | None, args: argparse.Namespace) -> Path:
    import json

    seed = setup(args, default_threads=2)
    recipe = recipe_from_args(RECIPE, args)
    if getattr(args, "target", None):
        raise ConfigError("histn: --target is gone: one model predicts both valence and arousal")
    folder = Path(data) if data else find_data() / "dasps"
    out = prepare_out(out or Path("models/histn"))
    subjects = dasps.load_dasps(folder)
    t_all = time.perf_counter()
    report: dict = {"recipe": recipe}
    cv_only = bool(getattr(args, "cv", 0))
    if cv_only:
        recipe["folds"] = int(args.cv)
    run_cv = cv_only or (not args.max_steps and len(subjects) >= int(recipe["folds"]))
    if run_cv and len(subjects) >= 2:
        t0 = time.perf_counter()
        report["cross_validation"] = cross_validate(subjects, recipe, seed, args)
        report["cross_validation"]["seconds"] = round(time.perf_counter() - t0, 1)
        if cv_only:  # recipe choices: the cross-validation alone, nothing trained or exported
            report["seconds_total"] = round(time.perf_counter() - t_all, 1)
            (out / "cv_report.json").write_text(json.dumps(report, indent=1) + "\n")
            print(f"cross-validation report: {out / 'cv_report.json'} ({report['seconds_total']:.0f} s)")
            return out
        t0 = time.perf_counter()
        report["recitation_to_recall"] = recitation_to_recall(subjects, recipe, seed)
        report["recitation_to_recall"]["seconds"] = round(time.perf_counter() - t0, 1)
    held = [s.index for s in subjects if s.index in VALIDATION_SUBJECTS]
    if len(held) == len(subjects):
        held = []
    train_subjects = [s for s in subjects if s.index not in held]
    w = dasps.prepared_windows(train_subjects, float(recipe["norm_s"]), float(recipe["clip"]))
    start = time.perf_counter()
    model, steps = fit(w.x, w.levels("valence"), w.levels("arousal"), recipe, seed, args=args, show=True)
    seconds = time.perf_counter() - start
    trainable, stats = parameter_counts(model.valence)
    print(f"parameters per target: {trainable} trainable + {stats} BatchNorm statistics; {steps} steps in {seconds:.1f} s")
    example = torch.from_numpy(w.x[:4])
    worst = max(export_onnx(model, example, out / "model.onnx", "eeg", ["valence_logits", "arousal_logits", "embedding"]).values())
    print(f"exported {out / 'model.onnx'}: ONNX Runtime matches torch (max abs diff {worst:.2e})")
    total = time.perf_counter() - t_all
    report["final"] = {"train_subjects": [s.index for s in train_subjects], "held_out": held, "steps": steps, "seconds": round(seconds, 1)}
    report["seconds_total"] = round(total, 1)
    (out / "training_report.json").write_text(json.dumps(report, indent=1) + "\n")
    card = make_card(trainable, status="trained")
    card.parameters = trainable
    card.training.data = (f"DASPS ({folder.name}): subjects {[s.index for s in train_subjects]} "
                          f"({len(w)} 1-s windows); held out {held}")
    card.training.command = training_command(f"emoedge train histn --data {folder} --out {out} --seed {seed}")
    card.training.seconds = round(total, 1)
    card.training.seed = seed
    card.training.holdout = {"subjects": held, "train_subjects": [s.index for s in train_subjects]}
    card.features.params.update({"norm_s": float(recipe["norm_s"]), "clip": float(recipe["clip"]),
                                 "recipe": {k: v for k, v in recipe.items()}})
    card.notes = card_notes(report, worst)
    from edge.card import save_card

    save_card(card, out / "card.toml")
    return out


def _fmt(ms: list[float]) -> str:
    return f"{ms[0]:.3f} +- {ms[1]:.3f}"


def card_notes(report: dict, worst: float) -> str:
    """What the card says about protocols, with the numbers of this training run's report."""
    lines = [
        "Levels: SAM 1-9 -> 5 ordered levels 1-2 | 3-4 | 5 | 6-7 | 8-9 (edge.zoo.dasps), so high (rating >= 5) = level >= 3, "
        "valence < 5 = level <= 2, arousal > 5 = level >= 4; binary views and the anxious state "
        "(valence < 5 and arousal > 5) are derived from the level probabilities (P(high) = sum of levels >= 3; "
        "P(anxious) = P(valence level <= 2) * P(arousal level >= 4)), never separate models.",
        "Parameters: one HiSTN per target (valence, arousal) side by side in one graph; `parameters` is per target.",
        f"Export: FP32 ONNX, opset 17, dynamic batch; ONNX Runtime matches torch (max abs difference {worst:.1e}).",
        "Metrics under [[metrics]] come from `emoedge eval histn` on the held-out subjects (training.holdout.subjects). "
        "training_report.json beside the model holds the cross-validation and recitation->recall results of the training run.",
        "Why the HiSTN paper's numbers are far higher (DREAMER: subject-dependent weighted F1 96.8 % valence / 95.6 % arousal, "
        "subject-independent 78.3 % / 81.6 %): its subject-dependent protocol crops random 1-s windows from the same trials "
        "for training and test, so test windows overlap or neighbour training windows of the same trial, and each trial "
        "has one label: the network can recognise the trial (its electrode offsets, artefacts, the subject's state "
        "that minute) rather than the emotion. Here no window of a segment is on both sides: subject-independent = "
        "leave-subjects-out; subject-dependent = train on recitation segments, test on the recall segments of the "
        "same situations. DASPS also has 6 rated situations per subject (DREAMER 18), 15-s segments, and 4-45 Hz "
        "band-passed data.",
    ]
    cv = report.get("cross_validation")
    if cv:
        for name, label in (("histn", "HiSTN"), ("baseline", "baseline (log band power 4-8/8-13/13-30/30-45 Hz x 14 + logistic regression)")):
            fm = cv["methods"][name]["fold_mean_std"]
            pooled = cv["methods"][name]["pooled"]
            lines.append(
                f"Subject-independent, leave-subjects-out CV ({len(cv['folds'])} folds of 3 subjects, all 18), {label}: "
                f"valence wF1 {_fmt(fm['valence.levels.weighted_f1'])}, high/low balanced {_fmt(fm['valence.binary.balanced_accuracy'])}; "
                f"arousal wF1 {_fmt(fm['arousal.levels.weighted_f1'])}, high/low balanced {_fmt(fm['arousal.binary.balanced_accuracy'])}; "
                f"anxious balanced {_fmt(fm['anxious.balanced_accuracy'])} (mean +- std over folds; pooled high/low balanced "
                f"{pooled['valence']['binary']['balanced_accuracy']:.3f} / {pooled['arousal']['binary']['balanced_accuracy']:.3f})."
            )
    sd = report.get("recitation_to_recall")
    if sd:
        for name, label in (("histn", "HiSTN"), ("baseline", "baseline")):
            p = sd["methods"][name]["pooled"]
            lines.append(
                f"Subject-dependent recitation -> recall (one model per subject), {label}, pooled: valence wF1 "
                f"{p['valence']['levels']['weighted_f1']:.3f}, high/low balanced {p['valence']['binary']['balanced_accuracy']:.3f}; "
                f"arousal wF1 {p['arousal']['levels']['weighted_f1']:.3f}, high/low balanced {p['arousal']['binary']['balanced_accuracy']:.3f}; "
                f"anxious balanced {p['anxious']['balanced_accuracy']:.3f}."
            )
    return " ".join(lines)


def level_prototypes() -> dict[str, list[float | str]]:
    """Circumplex coordinates of the level labels for fusion: the level's mid rating mapped 1-9 -> [-1, 1]
    on its own axis ("none" on the other: a valence level says nothing about arousal; TOML has no null)."""
    lower = [1, *[u + 1 for u in dasps.LEVEL_UPPER[:-1]]]
    out: dict[str, list[float | str]] = {}
    for name, lo, hi in zip(LEVELS, lower, dasps.LEVEL_UPPER, strict=True):
        centre = round(((lo + hi) / 2 - 5) / 4, 4)
        out[f"valence:{name}"] = [centre, "none"]
        out[f"arousal:{name}"] = ["none", centre]
    return out


def make_card(parameters: int, status: str = "untrained"):  # type: ignore[no-untyped-def]
    """The card of models/histn (training fills in data, command, holdout and notes)."""
    from edge.card import FeatureRecipe, ModelCard, QuantizationPolicy, TensorSpec, TrainingInfo

    return ModelCard(
        name="histn",
        version="1.0.0",
        modality="eeg",
        status=status,  # type: ignore[arg-type]
        description=(
            "HiSTN (Kuang, Song, Michoski 2024): hierarchical spatio-temporal graph networks, one per target, "
            "reading 1 s of raw 14-channel Emotiv EEG and giving five valence and five arousal levels "
            "(SAM 1-2, 3-4, 5, 6-7, 8-9), about 1,200 parameters per target; trained on DASPS."
        ),
        labels=[f"valence:{n}" for n in LEVELS] + [f"arousal:{n}" for n in LEVELS],
        inputs=[TensorSpec(
            name="eeg", shape=["batch", 14, 128], layout="NCT (electrode x time)",
            normalisation=(
                "causal 4-45 Hz Butterworth band-pass (edge.features.eeg.BandPass), then per channel z-scored by the "
                "mean and std of the first features.params.norm_s seconds of the wearer's own band-passed EEG and "
                "clipped to +-features.params.clip (edge.features.eeg.WearerNormaliser; edge.zoo.dasps.prepare_subject)"
            ),
            sample_rate=128.0, window_s=1.0,
        )],
        outputs=[
            TensorSpec(name="valence_logits", shape=["batch", 5], meaning="logits over the valence levels 1-2, 3-4, 5, 6-7, 8-9"),
            TensorSpec(name="arousal_logits", shape=["batch", 5], meaning="logits over the arousal levels 1-2, 3-4, 5, 6-7, 8-9"),
            TensorSpec(name="embedding", shape=["batch", 38], meaning="per target (valence then arousal) the time means of the 14 node, 4 region and 1 global signals: what each head reads"),
        ],
        features=FeatureRecipe(
            recipe="edge.features.eeg.raw_eeg",
            params={"electrodes": list(dasps.ELECTRODES), "sample_rate": 128, "window_s": 1.0, "band_hz": [4.0, 45.0],
                    "norm_s": 60.0, "clip": 6.0, "levels": list(LEVELS), "level_upper_rating": list(dasps.LEVEL_UPPER),
                    "label_smoothing": "gaussian ordinal, sigma 0.5", "prototypes": level_prototypes()},
        ),
        parameters=parameters,
        training=TrainingInfo(
            data="DASPS (../shared/data/dasps)",
            terms="DASPS: open-access research data (IEEE DataPort); cite Baghdadi et al. 2019 (arXiv 1901.02942)",
            command="emoedge train histn --data ../shared/data/dasps --out models/histn",
        ),
        quantization=QuantizationPolicy(max_loss_points=1.0, metric="accuracy"),
    )
