"""The face training loop: class weights, augmented mini-batches, distillation, selection on validation.

Split from ``edge.zoo.face`` (the ``emoedge train face`` recipe): ``fit`` trains any of the face networks
(``edge.zoo.face_nets``) on the arrays of ``edge.zoo.face_data`` and keeps the epoch with the best
validation accuracy, as the shipped graph computes it (one pass, or mirror-averaged for a v1 recipe).
"""

from __future__ import annotations

import copy
import math
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from edge.evaluation.metrics import classification_metrics
from edge.zoo.common import distillation_loss, progress
from edge.zoo.face_data import LABELS, augment, to_tensor
from edge.zoo.face_nets import FaceStudent, MirrorAverage


def predict(model: nn.Module, x: torch.Tensor, mirror_average: bool = False, batch: int = 512) -> np.ndarray:
    """Predicted classes, as the shipped graph makes them (mirror-averaged when asked)."""
    model.eval()
    view = MirrorAverage(model) if mirror_average and isinstance(model, FaceStudent) else model
    out = []
    with torch.no_grad():
        for start in range(0, len(x), batch):
            out.append(view(x[start : start + batch])[0].argmax(dim=1).cpu().numpy())
    return np.concatenate(out)


def class_weights(y: np.ndarray, power: float) -> torch.Tensor:
    """(1 / count)^power, scaled to mean 1 over samples: power 0 is plain CE, 1 fully balanced."""
    counts = np.bincount(y, minlength=len(LABELS)).astype(np.float64)
    w = (1.0 / np.maximum(counts, 1.0)) ** power
    w /= (w[y]).mean()
    return torch.tensor(w, dtype=torch.float32)


class WeightAverage:
    """An exponential moving average of a model's weights and BatchNorm statistics (recipe ``ema``: the decay).

    Why: the last epochs of a small student wander around a minimum; the average of the recent weights sits
    nearer its centre and usually validates a little better than any single step. Integer buffers (BatchNorm's
    batch counters) are copied. ``model`` is a copy of the trained model that holds the average for evaluation.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model)
        self.model.requires_grad_(False)
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold ``model``'s current weights in; the decay ramps up over the first steps ((1 + n) / (10 + n))."""
        self.updates += 1
        decay = min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))
        current = model.state_dict()
        for name, value in self.model.state_dict().items():
            if value.dtype.is_floating_point:
                value.mul_(decay).add_(current[name].detach(), alpha=1.0 - decay)
            else:
                value.copy_(current[name])


def fit(
    model: nn.Module, x_train_u8: np.ndarray, y_train: np.ndarray, x_val_u8: np.ndarray, y_val: np.ndarray,
    soft: np.ndarray | None, recipe: dict[str, Any], generator: torch.Generator, device: str = "cpu",
    show: bool = False, max_steps: int | None = None, on_better: Any = None, views: np.ndarray | None = None,
) -> tuple[dict[str, Any], list[dict[str, float]], int]:
    """Train ``model`` on the arrays by ``recipe``; returns the best epoch (by validation accuracy), history, steps.

    ``soft`` holds teacher logits (2, N, 7) for the plain and mirrored images, or None. With ``views`` (V, N, S, S)
    uint8 augmented images (``face_data.augmented_views``), ``soft`` is (V, N, 7), the teachers' logits on those
    very images, and each sample of a batch is one of its views drawn at random (consistent distillation: no
    further augmentation, so the student and the teachers see the same pixels). With a recipe ``ema``
    decay above 0, each epoch is validated (and kept) as the moving average of the weights (``WeightAverage``).
    ``on_better(best)``
    is called after each epoch that beats the previous best (the CLI writes a checkpoint there). On a GPU
    the forward pass runs in bfloat16 autocast; the random numbers come from the CPU ``generator`` anyway.
    """
    epochs, batch_size, lr = recipe["epochs"], recipe["batch_size"], recipe["lr"]
    x_train, x_val = to_tensor(x_train_u8).to(device), to_tensor(x_val_u8).to(device)
    soft_t = torch.from_numpy(soft).to(device) if soft is not None else None
    views_t = torch.from_numpy(views).to(device) if views is not None else None
    if views_t is not None and (soft_t is None or soft_t.shape[:2] != views_t.shape[:2]):
        raise ValueError(f"views {tuple(views_t.shape)} need teacher logits of the same views and images")
    # channels_last: about 20% faster on CPU (depthwise convs); torch accepts memory_format, its stubs do not say so
    model = model.to(device).to(memory_format=torch.channels_last)  # pyright: ignore[reportCallIssue]
    steps_per_epoch = math.ceil(len(y_train) / batch_size)
    total_steps = epochs * steps_per_epoch if not max_steps else min(max_steps, epochs * steps_per_epoch)
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=recipe["weight_decay"])
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=max(total_steps, 2),
                                                   pct_start=0.15)
    weights = class_weights(y_train, recipe["weight_power"]).to(device)
    y_train_t = torch.from_numpy(y_train).to(device)
    autocast = device.startswith("cuda")
    best: dict[str, Any] = {"accuracy": -1.0, "epoch": 0}
    history: list[dict[str, float]] = []
    average = WeightAverage(model, float(recipe["ema"])) if float(recipe.get("ema") or 0.0) > 0.0 else None
    step = 0
    for epoch in range(epochs):
        epoch_started = time.perf_counter()
        model.train()
        order = torch.randperm(len(y_train), generator=generator)
        flips = torch.rand(len(y_train), generator=generator) < 0.5
        running = torch.zeros((), device=device)
        seen = 0
        bar = progress(range(steps_per_epoch), show, desc=f"epoch {epoch + 1}/{epochs}")
        for b in bar:
            idx = order[b * batch_size : (b + 1) * batch_size]
            flip = flips[idx]
            idx_d = idx.to(device)
            if views_t is not None and soft_t is not None:
                pick = torch.randint(len(views_t), (len(idx),), generator=generator).to(device)
                xb = views_t[pick, idx_d].float().mul_(2.0 / 255.0).sub_(1.0).unsqueeze(1)
                xb = xb.contiguous(memory_format=torch.channels_last)
                t = soft_t[pick, idx_d]
            else:
                xb = augment(x_train[idx_d], generator, flip, float(recipe.get("augment", 1.0))).contiguous(memory_format=torch.channels_last)
                t = soft_t[flip.long().to(device), idx_d] if soft_t is not None else None
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=autocast):
                logits, _ = model(xb)
            loss = distillation_loss(logits.float(), y_train_t[idx_d], t, recipe["temperature"],
                                     recipe["alpha"] if t is not None else 0.0, weights, recipe["smoothing"])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            if average is not None:
                average.update(model)
            step += 1
            running += loss.detach() * len(idx)
            seen += len(idx)
            if show and hasattr(bar, "set_postfix") and b % 20 == 0:
                bar.set_postfix(loss=f"{float(running) / seen:.3f}")  # type: ignore[attr-defined]
            if step >= total_steps:
                break
        scored = average.model if average is not None else model
        metrics = classification_metrics(y_val, predict(scored, x_val, recipe["mirror_average"]), LABELS)
        loss_mean = float(running) / max(seen, 1)
        history.append({"epoch": epoch + 1, "loss": loss_mean, "accuracy": metrics["accuracy"],
                        "macro_f1": metrics["macro_f1"]})
        print(f"epoch {epoch + 1}: loss {loss_mean:.4f}  validation accuracy {metrics['accuracy']:.4f}"
              f"  macro-F1 {metrics['macro_f1']:.4f}  ({time.perf_counter() - epoch_started:.1f} s)", flush=True)
        if metrics["accuracy"] > best["accuracy"]:
            state = {k: v.detach().cpu().clone() for k, v in scored.state_dict().items()}
            best = {"accuracy": metrics["accuracy"], "epoch": epoch + 1, "state": state}
            if on_better is not None and step < total_steps and epoch + 1 < epochs:
                on_better(best, epoch + 1)
        if step >= total_steps:
            break
    return best, history, step
