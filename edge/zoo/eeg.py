"""``emoedge train eeg``: a hierarchical graph network on DEAP band power (valence and arousal).

In the style of HiSTN (Kuang et al. 2024): electrodes -> scalp regions -> one global node, with
Chebyshev polynomial graph filters at the electrode and region levels and softmax attention pooling
between levels; the readout sees all three levels and, through a linear path, the inputs themselves. It reads the 160 DEAP band-power features
(5 bands x 32 electrodes, band-major, see ``edge.features.eeg``), z-scored per feature.

Split by subject: the subjects in ``VALIDATION_SUBJECTS`` never reach training. ``--cv K`` runs
leave-subjects-out cross-validation over the training subjects only, for the model and for the
classical baseline (logistic regression), so recipes can be compared without touching validation.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edge.errors import ConfigError
from edge.evaluation.metrics import classification_metrics
from edge.features.eeg import DEAP_BANDS, DEAP_ELECTRODES, load_deap_features, standardise
from edge.paths import data_dir as find_data
from edge.zoo.common import (
    count_parameters,
    export_onnx,
    prepare_out,
    progress,
    setup,
    training_command,
)

VALIDATION_SUBJECTS = (3, 7, 11, 15, 19, 23)
VALENCE_LABELS = ("negative", "positive")
AROUSAL_LABELS = ("low", "high")
MODES = ("subject-norm", "population-norm")
HIDDEN = 8

# Approximate scalp positions (x: left -> right, y: back -> front) of the 10-20 sites in DEAP_ELECTRODES.
POSITIONS: dict[str, tuple[float, float]] = {
    "Fp1": (-0.3, 0.95), "Fp2": (0.3, 0.95), "AF3": (-0.35, 0.8), "AF4": (0.35, 0.8),
    "F7": (-0.8, 0.6), "F3": (-0.4, 0.6), "Fz": (0.0, 0.6), "F4": (0.4, 0.6), "F8": (0.8, 0.6),
    "FC5": (-0.7, 0.3), "FC1": (-0.25, 0.3), "FC2": (0.25, 0.3), "FC6": (0.7, 0.3),
    "T7": (-0.95, 0.0), "C3": (-0.5, 0.0), "Cz": (0.0, 0.0), "C4": (0.5, 0.0), "T8": (0.95, 0.0),
    "CP5": (-0.7, -0.3), "CP1": (-0.25, -0.3), "CP2": (0.25, -0.3), "CP6": (0.7, -0.3),
    "P7": (-0.8, -0.6), "P3": (-0.4, -0.6), "Pz": (0.0, -0.6), "P4": (0.4, -0.6), "P8": (0.8, -0.6),
    "PO3": (-0.35, -0.8), "PO4": (0.35, -0.8), "O1": (-0.3, -0.95), "Oz": (0.0, -0.95), "O2": (0.3, -0.95),
}
# Eight scalp regions of four electrodes each.
REGIONS: dict[str, tuple[str, ...]] = {
    "prefrontal": ("Fp1", "Fp2", "AF3", "AF4"),
    "left_frontal": ("F7", "F3", "FC5", "FC1"),
    "right_frontal": ("F8", "F4", "FC6", "FC2"),
    "left_central": ("T7", "C3", "CP5", "CP1"),
    "right_central": ("T8", "C4", "CP6", "CP2"),
    "left_posterior": ("P7", "P3", "PO3", "O1"),
    "right_posterior": ("P8", "P4", "PO4", "O2"),
    "midline": ("Fz", "Cz", "Pz", "Oz"),
}


def scaled_laplacian(adjacency: np.ndarray) -> np.ndarray:
    """L~ = 2 L / lambda_max - I with the normalised Laplacian L = I - D^-1/2 A D^-1/2 (as in ChebNet)."""
    a = np.asarray(adjacency, dtype=np.float64)
    d = a.sum(1)
    inv = np.where(d > 0, 1.0 / np.sqrt(np.maximum(d, 1e-12)), 0.0)
    lap = np.eye(len(a)) - inv[:, None] * a * inv[None, :]
    lam = float(np.linalg.eigvalsh(lap).max())
    return (2.0 * lap / max(lam, 1e-6) - np.eye(len(a))).astype(np.float32)


def electrode_adjacency(radius: float = 0.5) -> np.ndarray:
    """Electrodes closer than ``radius`` on the scalp map are neighbours (no self loops)."""
    xy = np.array([POSITIONS[e] for e in DEAP_ELECTRODES])
    dist = np.linalg.norm(xy[:, None] - xy[None], axis=-1)
    return ((dist < radius) & (dist > 0)).astype(np.float32)


def region_adjacency() -> np.ndarray:
    """Regions are neighbours when any of their electrodes are (0.5 radius on the scalp map)."""
    a = electrode_adjacency()
    names = list(REGIONS)
    index = {e: i for i, e in enumerate(DEAP_ELECTRODES)}
    out = np.zeros((len(names), len(names)), dtype=np.float32)
    for i, ri in enumerate(names):
        for j, rj in enumerate(names):
            if i != j and any(a[index[x], index[y]] for x in REGIONS[ri] for y in REGIONS[rj]):
                out[i, j] = 1.0
    return out


class ChebConv(nn.Module):
    """Chebyshev graph filter: sum_k T_k(L~) X W_k + b, with a fixed scaled Laplacian."""

    def __init__(self, laplacian: np.ndarray, n_in: int, n_out: int, order: int) -> None:
        super().__init__()
        self.register_buffer("lap", torch.from_numpy(laplacian))
        self.order = order
        self.weight = nn.Parameter(torch.empty(order, n_in, n_out))
        self.bias = nn.Parameter(torch.zeros(n_out))
        nn.init.xavier_uniform_(self.weight.view(order * n_in, n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [B, nodes, n_in]
        lap: torch.Tensor = self.lap  # type: ignore[assignment]
        t_prev, t_cur = x, torch.einsum("ij,bjf->bif", lap, x)
        out = t_prev @ self.weight[0]
        if self.order > 1:
            out = out + t_cur @ self.weight[1]
        for k in range(2, self.order):
            t_prev, t_cur = t_cur, 2 * torch.einsum("ij,bjf->bif", lap, t_cur) - t_prev
            out = out + t_cur @ self.weight[k]
        return out + self.bias


class AttentionPool(nn.Module):
    """Softmax attention over the members of each group (a score per member from its features)."""

    def __init__(self, groups: list[list[int]], n_features: int) -> None:
        super().__init__()
        self.score = nn.Linear(n_features, 1)
        size = max(len(g) for g in groups)
        index = torch.tensor([g + [g[0]] * (size - len(g)) for g in groups])
        mask = torch.tensor([[0.0] * len(g) + [-1e9] * (size - len(g)) for g in groups])
        self.register_buffer("index", index)
        self.register_buffer("mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, members, F] -> [B, groups, F]
        index: torch.Tensor = self.index  # type: ignore[assignment]
        members = x[:, index]  # [B, G, S, F]
        weights = torch.softmax(self.score(members).squeeze(-1) + self.mask, dim=-1)
        return (weights.unsqueeze(-1) * members).sum(2)


class BandPowerHiSTN(nn.Module):
    """Electrode -> region -> global graph network on [B, 160] z-scored band power."""

    def __init__(self, hidden: int = 8, order: int = 3, dropout: float = 0.25) -> None:
        super().__init__()
        n_bands, n_el = len(DEAP_BANDS), len(DEAP_ELECTRODES)
        self.n_bands, self.n_el = n_bands, n_el
        index = {e: i for i, e in enumerate(DEAP_ELECTRODES)}
        groups = [[index[e] for e in members] for members in REGIONS.values()]
        self.node1 = ChebConv(scaled_laplacian(electrode_adjacency()), n_bands, hidden, order)
        intra = np.zeros((n_el, n_el), dtype=np.float32)
        for g in groups:
            for i in g:
                for j in g:
                    intra[i, j] = float(i != j)
        self.node2 = ChebConv(scaled_laplacian(intra), hidden, hidden, 2)
        self.to_region = AttentionPool(groups, hidden)
        self.region = ChebConv(scaled_laplacian(region_adjacency()), hidden, hidden, 2)
        self.to_global = AttentionPool([list(range(len(groups)))], hidden)
        self.act = nn.ELU()
        self.drop = nn.Dropout(dropout)
        # the readout reads the graph levels and the band powers themselves (a linear path per
        # electrode and band: in cross-validation over the training subjects the graph levels alone
        # lost the arousal information that a linear model finds)
        self.head = nn.Linear(3 * hidden + n_bands * n_el, 4)
        # per-feature gain and offset: the graph filters are shared by all electrodes, this lets the
        # network weight each electrode and band on its own (as a linear model does)
        self.gain = nn.Parameter(torch.ones(n_bands * n_el))
        self.offset = nn.Parameter(torch.zeros(n_bands * n_el))

    def forward(self, band_power: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        x = (band_power * self.gain + self.offset).view(-1, self.n_bands, self.n_el).transpose(1, 2)  # [B, electrodes, bands]
        h = self.act(self.node1(x))
        h = h + self.act(self.node2(h))  # residual, as HiSTN's node level
        r = self.to_region(h)
        r = r + self.act(self.region(r))
        g = self.to_global(r).squeeze(1)
        embedding = torch.cat([h.mean(1), r.mean(1), g], dim=1)
        embedding = torch.cat([embedding, band_power], dim=1)
        logits = self.head(torch.cat([self.drop(embedding[:, : -band_power.shape[1]]), band_power], dim=1))
        valence, arousal = logits[:, :2], logits[:, 2:]
        # continuous score in [-1, 1]: p(positive) - p(negative) = tanh((z1 - z0) / 2)
        va = torch.tanh(torch.stack([valence[:, 1] - valence[:, 0], arousal[:, 1] - arousal[:, 0]], dim=1) / 2)
        return valence, arousal, va, embedding


# ---------------------------------------------------------------------------------------------
# data


def decode_labels(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DEAP file codes (valence 1=positive 2=negative, arousal 1=high 2=low) -> indices into our labels."""
    valence = np.where(codes[:, 0] == 1, 1, 0)  # 1 = positive
    arousal = np.where(codes[:, 1] == 1, 1, 0)  # 1 = high
    return valence.astype(np.int64), arousal.astype(np.int64)


def per_subject_standardise(features: np.ndarray, subjects: np.ndarray) -> np.ndarray:
    """z-score each feature with the mean and std of that subject's own trials (no labels used)."""
    out = np.empty_like(features, dtype=np.float32)
    for s in np.unique(subjects):
        m = subjects == s
        out[m] = standardise(features[m], features[m].mean(0), features[m].std(0))
    return out


def normalise(features: np.ndarray, subjects: np.ndarray, mode: str, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    if mode == "subject-norm":
        return per_subject_standardise(features, subjects)
    if mode == "population-norm":
        return standardise(features, mean, std)
    raise ValueError(f"unknown EEG normalisation mode '{mode}' (expected one of {', '.join(MODES)})")


# ---------------------------------------------------------------------------------------------
# training


def fit(
    x: np.ndarray, yv: np.ndarray, ya: np.ndarray, args: argparse.Namespace, epochs: int, show: bool = True
) -> tuple[BandPowerHiSTN, int]:
    model = BandPowerHiSTN(hidden=HIDDEN)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr or 3e-3, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    xt, yvt, yat = torch.from_numpy(x), torch.from_numpy(yv), torch.from_numpy(ya)
    gen = torch.Generator().manual_seed(int(args.seed or 0))
    batch = args.batch_size or 64
    # balanced accuracy is the target: weight classes by inverse frequency
    wv = torch.tensor(len(yv) / (2.0 * np.bincount(yv, minlength=2)), dtype=torch.float32)
    wa = torch.tensor(len(ya) / (2.0 * np.bincount(ya, minlength=2)), dtype=torch.float32)
    loss_v = nn.CrossEntropyLoss(weight=wv, label_smoothing=0.1)
    loss_a = nn.CrossEntropyLoss(weight=wa, label_smoothing=0.1)
    steps = 0
    bar = progress(range(epochs), args, desc="eeg epochs") if show else range(epochs)
    for _ in bar:
        model.train()
        order = torch.randperm(len(xt), generator=gen)
        for start in range(0, len(xt), batch):
            idx = order[start : start + batch]
            # feature noise: the trials are few, so jitter the z-scored inputs a little
            xb = xt[idx] + 0.1 * torch.randn(xt[idx].shape, generator=gen)
            v, a, _, _ = model(xb)
            loss = loss_v(v, yvt[idx]) + loss_a(a, yat[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            steps += 1
            if args.max_steps and steps >= args.max_steps:
                return model.eval(), steps
        sched.step()
    return model.eval(), steps


def balanced_accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    """Mean recall over the classes present in ``y`` (the metric ``emoedge eval`` reports)."""
    return classification_metrics(y, pred, ["0", "1"])["balanced_accuracy"]


def logistic_baseline(x: np.ndarray, y: np.ndarray, x_test: np.ndarray, c: float = 0.1) -> np.ndarray:
    """L2 logistic regression (the classical baseline), fitted with torch LBFGS; returns test predictions."""
    xt, yt = torch.from_numpy(x).double(), torch.from_numpy(y).double()
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(xt @ w + b, yt) + 0.5 / (c * len(x)) * (w @ w)
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return ((torch.from_numpy(x_test).double() @ w + b) > 0).long().numpy()


def cross_validate(x: np.ndarray, subjects: np.ndarray, yv: np.ndarray, ya: np.ndarray, args: argparse.Namespace, epochs: int) -> None:
    folds = np.array_split(np.unique(subjects), args.cv)
    rows = []
    for k, held in enumerate(folds):
        test = np.isin(subjects, held)
        model, _ = fit(x[~test], yv[~test], ya[~test], args, epochs, show=False)
        with torch.no_grad():
            v, a, _, _ = model(torch.from_numpy(x[test]))
        row = [
            balanced_accuracy(yv[test], v.argmax(1).numpy()),
            balanced_accuracy(ya[test], a.argmax(1).numpy()),
            balanced_accuracy(yv[test], logistic_baseline(x[~test], yv[~test], x[test])),
            balanced_accuracy(ya[test], logistic_baseline(x[~test], ya[~test], x[test])),
        ]
        rows.append(row)
        print(f"fold {k} subjects {held.tolist()}: model V {row[0]:.3f} A {row[1]:.3f} | logreg V {row[2]:.3f} A {row[3]:.3f}")
    m = np.mean(rows, axis=0)
    print(f"CV mean balanced accuracy ({getattr(args, 'mode', None) or 'subject-norm'}): model V {m[0]:.3f} A {m[1]:.3f} | logreg V {m[2]:.3f} A {m[3]:.3f}")


def train(data: str | None, out: Path | None, args: argparse.Namespace) -> Path:
    seed = setup(args, default_threads=1)
    folder = Path(data) if data else find_data() / "eeg_deap_bandpower"
    out = prepare_out(out or Path("models/eeg"))
    features, subject_video, codes = load_deap_features(folder)
    subjects = subject_video[:, 0]
    yv, ya = decode_labels(codes)
    mode = getattr(args, "mode", None) or "subject-norm"
    if mode not in MODES:
        raise ConfigError(f"eeg: unknown --mode {mode!r} (expected one of {', '.join(MODES)})")
    epochs = args.epochs or 60
    train_mask = ~np.isin(subjects, VALIDATION_SUBJECTS)
    mean = features[train_mask].mean(0)
    std = features[train_mask].std(0)
    x = normalise(features, subjects, mode, mean, std)
    if getattr(args, "cv", 0):
        cross_validate(x[train_mask], subjects[train_mask], yv[train_mask], ya[train_mask], args, epochs)
        return out
    start = time.perf_counter()
    model, steps = fit(x[train_mask], yv[train_mask], ya[train_mask], args, epochs)
    seconds = time.perf_counter() - start
    n_params = count_parameters(model)
    print(f"parameters: {n_params} (trainable); {steps} optimiser steps in {seconds:.1f} s")
    example = torch.from_numpy(x[:5])
    worst = max(export_onnx(
        model, example, out / "model.onnx", "band_power", ["valence_logits", "arousal_logits", "va", "embedding"]
    ).values())
    print(f"exported {out / 'model.onnx'}: ONNX Runtime matches torch (max abs diff {worst:.2e})")
    write_card(out, n_params, seed, seconds, mode, mean, std, folder, int(model.head.in_features), steps, worst)
    return out


def write_card(
    out: Path, n_params: int, seed: int, seconds: float, mode: str, mean: np.ndarray, std: np.ndarray,
    folder: Path, emb: int, steps: int, worst: float,
) -> None:
    from edge.card import FeatureRecipe, ModelCard, TensorSpec, TrainingInfo, save_card

    train_subjects = [s for s in range(1, 25) if s not in VALIDATION_SUBJECTS]
    card = ModelCard(
        name="eeg",
        version="1.0.0",
        modality="eeg",
        description=(
            "Valence and arousal (binary each, plus a continuous score) from per-electrode EEG band power "
            "in the DEAP layout: a HiSTN-style hierarchical graph network (electrodes -> 8 scalp regions -> "
            "global node, Chebyshev graph filters, attention pooling)."
        ),
        labels=[f"valence:{v}" for v in VALENCE_LABELS] + [f"arousal:{a}" for a in AROUSAL_LABELS],
        inputs=[
            TensorSpec(
                name="band_power", shape=["batch", 160], layout="N(band*32+electrode)",
                normalisation=(
                    "natural-log band power (edge.features.eeg.band_power), z-scored per feature: by the "
                    "subject's own unlabeled history in mode subject-norm (trained this way), or by the "
                    "population statistics features.params.population_mean/std in mode population-norm"
                ),
                sample_rate=128.0,
                window_s=60.0,  # the DEAP features describe 60-s trials; shorter windows give noisier powers
            )
        ],
        outputs=[
            TensorSpec(name="valence_logits", shape=["batch", 2], meaning="logits over valence [negative, positive]"),
            TensorSpec(name="arousal_logits", shape=["batch", 2], meaning="logits over arousal [low, high]"),
            TensorSpec(
                name="va", shape=["batch", 2],
                meaning="continuous [valence, arousal] in [-1, 1]: p(positive) - p(negative), p(high) - p(low)",
            ),
            TensorSpec(name="embedding", shape=["batch", emb], meaning="features the last layer reads: means of the node, region and global features (3 x 8), then the 160 inputs"),
        ],
        features=FeatureRecipe(
            recipe="edge.features.eeg.band_power",
            params={
                "bands": [[n, lo, hi] for n, lo, hi in DEAP_BANDS],
                "electrodes": list(DEAP_ELECTRODES),
                "layout": "band-major: 5 bands x 32 electrodes",
                "welch_segment_s": 1.0,
                "log": "natural",
                "trained_mode": mode,
                "population_mean": [round(float(v), 5) for v in mean],
                "population_std": [round(float(v), 5) for v in std],
            },
        ),
        parameters=n_params,
        training=TrainingInfo(
            data=f"DEAP band-power features ({folder.name}), subjects {train_subjects[0]}-{train_subjects[-1]} "
            f"except {list(VALIDATION_SUBJECTS)} ({len(train_subjects)} subjects)",
            terms="DEAP: academic end-user licence agreement, research and non-commercial use only",
            command=training_command(f"emoedge train eeg --data {folder} --out {out} --seed {seed}"),
            seconds=round(seconds, 1),
            seed=seed,
            holdout={"subjects": list(VALIDATION_SUBJECTS), "train_subjects": train_subjects},
        ),
        notes=(
            f"Export: FP32 ONNX, opset 17, dynamic batch; ONNX Runtime matches torch within 1e-4 + 1e-3*|x| "
            f"(max abs difference at export {worst:.1e}). "
            f"Label coding of the DEAP files: valence 1=positive 2=negative, arousal 1=high 2=low; the model's "
            f"index 1 is positive / high. {steps} optimiser steps. Validation = every subject not in "
            "training.holdout.train_subjects. Metrics are written by `emoedge eval eeg ... --write-card`; "
            "their `mode` says how inputs were normalised."
        ),
    )
    save_card(card, out / "card.toml")
