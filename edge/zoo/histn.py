"""``emoedge train histn``: HiSTN (Kuang, Song, Michoski 2024) for raw 14-channel Emotiv EEG (DREAMER).

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

No raw DREAMER data ships with this project: the recipe runs on a user's ``DREAMER.mat`` and the
shipped card is ``status = "untrained"``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edge.errors import ConfigError
from edge.evaluation.ordinal import gaussian_ordinal_targets, ordinal_metrics
from edge.zoo import dreamer
from edge.zoo.common import count_parameters, export_onnx
from edge.zoo.signal_common import (
    prepare_out,
    progress,
    setup,
    training_command,
)

LEVELS = ("1", "2", "3", "4", "5")
REGION_BOUNDS = (0, 4, 7, 10, 14)
TARGETS = dreamer.SCORES
DEFAULT_HOLDOUT = (19, 20, 21, 22, 23)  # subject-independent validation: the last five subjects

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
    def __init__(self, n_classes: int = 5, dropout: float = 0.2, filters: int = 8, ksize: int = 64) -> None:
        super().__init__()
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
        embedding = torch.cat([nodes, r_out, g], dim=1).mean(dim=2)  # [B, 19]
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


# ---------------------------------------------------------------------------------------------
# training


def fit(
    x: np.ndarray, y: np.ndarray, args: argparse.Namespace, epochs: int, seed: int
) -> tuple[HiSTN, int]:
    model = HiSTN()
    opt = torch.optim.Adam(model.parameters(), lr=args.lr or 1e-3)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[int(epochs * 0.6)], gamma=0.5)
    counts = np.bincount(y, minlength=len(LEVELS)).astype(np.float64)
    class_weight = torch.tensor(np.where(counts > 0, counts.sum() / (len(LEVELS) * np.maximum(counts, 1)), 0.0), dtype=torch.float32)
    targets = torch.from_numpy(gaussian_ordinal_targets(y, len(LEVELS), 0.5).astype(np.float32))
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    gen = torch.Generator().manual_seed(seed)
    batch = args.batch_size or 256
    steps = 0
    for _ in progress(range(epochs), args, desc="histn epochs"):
        model.train()
        order = torch.randperm(len(xt), generator=gen)
        for start in range(0, len(xt), batch):
            idx = order[start : start + batch]
            logits, _ = model(xt[idx])
            per_sample = -(targets[idx] * torch.log_softmax(logits, 1)).sum(1)
            loss = (per_sample * class_weight[yt[idx]]).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            model.apply_max_norm()
            steps += 1
            if args.max_steps and steps >= args.max_steps:
                return model.eval(), steps
        sched.step()
    return model.eval(), steps


def train(data: str | None, out: Path | None, args: argparse.Namespace) -> Path:
    seed = setup(args, default_threads=2)
    if not data:
        raise ConfigError("histn: give --data PATH/TO/DREAMER.mat (raw DREAMER EEG, zenodo.org/record/546113)")
    path = Path(data)
    if path.is_dir():
        path = path / "DREAMER.mat"
    target = getattr(args, "target", None) or "valence"
    if target not in TARGETS:
        raise ConfigError(f"histn: unknown --target '{target}' (expected one of {', '.join(TARGETS)})")
    out = prepare_out(out or Path("models/histn"))
    subjects, meta = dreamer.load_dreamer(path)
    if meta["sample_rate"] != dreamer.SAMPLE_RATE or len(meta["electrodes"]) != len(dreamer.EMOTIV_ELECTRODES):
        raise ConfigError(f"{path}: expected 14 electrodes at 128 Hz, found {len(meta['electrodes'])} at {meta['sample_rate']} Hz")
    holdout = [s.index for s in subjects if s.index in DEFAULT_HOLDOUT] or [subjects[-1].index]
    train_subjects = [s for s in subjects if s.index not in holdout]
    val_subjects = [s for s in subjects if s.index in holdout]
    x, y, _ = dreamer.windows_and_labels(train_subjects, target)
    start = time.perf_counter()
    model, steps = fit(x, y, args, args.epochs or 50, seed)
    seconds = time.perf_counter() - start
    trainable, stats = parameter_counts(model)
    print(f"parameters: {trainable} trainable + {stats} BatchNorm statistics; {steps} steps in {seconds:.1f} s")
    if val_subjects:
        xv, yv, _ = dreamer.windows_and_labels(val_subjects, target)
        with torch.no_grad():
            scores = torch.cat([model(torch.from_numpy(xv[i : i + 512]))[0] for i in range(0, len(xv), 512)]).numpy()
        m = ordinal_metrics(scores, yv)
        print(f"held-out subjects {holdout} ({target}, torch): weighted F1 {m['weighted_f1']:.3f}, "
              f"top-2 {m['top2_accuracy']:.3f}, Tri-P {m['tri_p']:.3f}, Seq2HR {m['seq2hr']:.3f}")
    example = torch.from_numpy(x[:4])
    worst = max(export_onnx(model, example, out / "model.onnx", "eeg", ["logits", "embedding"]).values())
    print(f"exported {out / 'model.onnx'}: ONNX Runtime matches torch (max abs diff {worst:.2e})")
    card = make_card(trainable, status="trained")
    card.training.data = f"DREAMER ({path.name}), {target}, subjects {[s.index for s in train_subjects]}; held out {holdout}"
    card.training.command = training_command(f"emoedge train histn --data {path} --out {out} --seed {seed} --target {target}")
    card.training.seconds = round(seconds, 1)
    card.training.seed = seed
    card.training.holdout = {"subjects": holdout, "target": target}
    from edge.card import save_card

    save_card(card, out / "card.toml")
    return out


def make_card(parameters: int, status: str = "untrained"):  # type: ignore[no-untyped-def]
    """The card of models/histn (``status = "untrained"`` until someone trains it on raw DREAMER)."""
    from edge.card import FeatureRecipe, ModelCard, TensorSpec, TrainingInfo

    return ModelCard(
        name="histn",
        version="0.1.0",
        modality="eeg",
        status=status,  # type: ignore[arg-type]
        description=(
            "HiSTN (Kuang, Song, Michoski 2024): a hierarchical spatio-temporal graph network for 5-level "
            "valence (or arousal) ratings from 1 s of raw 14-channel Emotiv EEG, about 1,200 parameters."
        ),
        labels=list(LEVELS),
        inputs=[TensorSpec(
            name="eeg", shape=["batch", 14, 128], layout="NCT (electrode x time)",
            normalisation=(
                "per channel: z-scored with the mean and std of 10 s of the subject's resting baseline, "
                "then divided by the channel's largest |value| over the trial (edge.zoo.dreamer.preprocess_trial)"
            ),
            sample_rate=128.0, window_s=1.0,
        )],
        outputs=[
            TensorSpec(name="logits", shape=["batch", 5], meaning="logits over the rating levels 1-5"),
            TensorSpec(name="embedding", shape=["batch", 19], meaning="time means of the 14 node, 4 region and 1 global signals: what the last layer reads"),
        ],
        features=FeatureRecipe(
            recipe="edge.zoo.dreamer.preprocess_trial+one_second_windows",
            params={"electrodes": list(dreamer.EMOTIV_ELECTRODES), "sample_rate": 128, "window_s": 1.0,
                    "label_smoothing": "gaussian ordinal, sigma 0.5"},
        ),
        parameters=parameters,
        training=TrainingInfo(
            data="none yet: needs raw DREAMER EEG (DREAMER.mat, zenodo.org/record/546113), not in this project",
            terms="DREAMER: available for academic research on request, under its EULA",
            command="emoedge train histn --data PATH/TO/DREAMER.mat --out models/histn --target valence",
        ),
        notes=(
            "No weights and no metrics ship: the project has no raw DREAMER EEG. Metrics for this model are "
            "weighted F1, top-2 accuracy, Tri-P and Seq2HR (edge.evaluation.ordinal), on held-out subjects."
        ),
    )


def write_untrained_card(folder: Path) -> Path:
    """Write models/histn/card.toml with the parameter count of the architecture as built here."""
    from edge.card import save_card

    folder.mkdir(parents=True, exist_ok=True)
    trainable, _ = parameter_counts(HiSTN())
    save_card(make_card(trainable), folder / "card.toml")
    return folder / "card.toml"


if __name__ == "__main__":  # python -m edge.zoo.histn models/histn
    import sys

    print(write_untrained_card(Path(sys.argv[1] if len(sys.argv) > 1 else "models/histn")))
