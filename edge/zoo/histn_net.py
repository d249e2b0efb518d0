"""HiSTN, the network: temporal front end, region hierarchy with Chebyshev message passing, attention fusion and
readout (see ``edge.zoo.histn`` for the model and its training), and ``fit``/``predict`` (torch; the ``train`` extra)."""

from __future__ import annotations

import argparse

import numpy as np
import torch
from torch import nn

from edge.errors import ConfigError
from edge.evaluation.ordinal import gaussian_ordinal_targets
from edge.zoo import dasps
from edge.zoo.common import count_parameters, progress

LEVELS = dasps.LEVEL_NAMES
REGION_BOUNDS = (0, 4, 7, 10, 14)
TARGETS = dasps.TARGETS
READOUTS = ("mean", "logpower")

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
