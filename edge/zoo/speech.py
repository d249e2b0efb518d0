"""``emoedge train speech``: a small CNN over log-mel windows for the 8 RAVDESS emotions.

Split by actor, never by clip: ``VALIDATION_ACTORS`` (two male, two female of actors 1-20) never
reach training. Augmentation for speaker independence: random placement of the clip in its 3-s
window, random gain, shifts along the mel axis (a crude vocal-tract-length change), SpecAugment
masks and (off by default) mixup. Each training window is z-scored with the population statistics or,
for a share ``speaker_norm_p`` of them (off by default: it did not help), with its own speaker's; the
model is evaluated in both modes: ``default`` (population statistics from the card) and ``speaker-norm``
(the speaker's unlabeled history). The shipped recipe was chosen among eight run on a GPU (``--device
cuda``, about 2 minutes); on two CPU cores its 200 epochs take hours.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edge.card import sha256_file
from edge.errors import ConfigError
from edge.evaluation.speech import read_labels, speaker_key, speaker_of
from edge.features import speech as F
from edge.paths import data_dir as find_data
from edge.zoo.common import (
    count_parameters,
    export_onnx,
    feature_cache,
    prepare_out,
    progress,
    recipe_from_args,
    save_cache,
    setup,
    training_command,
)
from edge.zoo.speech_augment import Augmenter

EMOTIONS = ("neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised")
VALIDATION_ACTORS = (5, 10, 15, 20)  # 5 and 15 male, 10 and 20 female

# the recipe (defaults of `emoedge train speech`; --epochs, --lr, --batch-size and --set KEY=VALUE override)
RECIPE: dict[str, Any] = {
    "widths": (24, 48, 96, 192),
    "epochs": 200,
    "lr": 3e-3,
    "weight_decay": 1e-2,
    "batch_size": 32,
    "dropout": 0.1,
    "mixup_alpha": 0.2,  # Beta(alpha, alpha) mixing weight ...
    "mixup_p": 0.0,  # ... applied to this share of batches (off: with 16 training actors the model underfits)
    "speaker_norm_p": 0.0,  # share of training windows z-scored with their speaker's statistics
    "label_smoothing": 0.05,
    "spec_masks": 2,  # SpecAugment: this many frequency masks (up to 8 bins) and time masks (up to 30 frames)
    # more corpora (comma-separated folders with labels.csv) trained on beside --data, each with a mask of the
    # classes it has, so that a corpus without "calm" never teaches "this is not calm"
    "extra_data": "",
    "holdout_every": 5,  # of an extra corpus's speakers (sorted), every this many is held out for validation ...
    "holdout_fold": -1,  # ... starting at this one (0 .. holdout_every-1, the folds of a leave-speakers-out check; -1: the last)
    "device_aug_p": 0.0,  # chance of each device augmentation (EQ, band-limit, reverb, noise, codec) per window
    "loudness_norm": False,  # normalise each window's loudness (edge.features.speech.normalise_loudness)
    # a trained speech model folder (card.toml + model.onnx, same widths) to start from: its weights, its input
    # statistics and loudness setting (so that its inputs do not move); its folded BatchNorm stays frozen
    "init": "",
    # a trained speech model folder whose softened predictions on the --data corpus's clips are distilled into
    # the model while it learns the extra corpora (so that learning them does not unlearn the first corpus);
    # it must share the trained model's widths and input statistics (start from it with init)
    "distil_from": "",
    "distil_weight": 1.0,  # weight of the distillation term beside the cross-entropy
    "distil_temperature": 2.0,
}


class SpeechCNN(nn.Module):
    """Four conv blocks (3x3 conv, BN, ReLU, 2x2 max-pool) over [B, 1, mels, frames]; mean over
    frequency, mean+max over time, then a linear layer. About 220k parameters with the default widths."""

    def __init__(self, n_classes: int = len(EMOTIONS), widths: tuple[int, ...] | None = None, dropout: float | None = None):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 1
        widths = tuple(widths or RECIPE["widths"])
        dropout = float(RECIPE["dropout"] if dropout is None else dropout)
        for i, c in enumerate(widths):
            # the first conv strides by 2: full-resolution feature maps cost most of the time on a CPU
            stride = 2 if i == 0 else 1
            layers += [nn.Conv2d(c_in, c, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            if 0 < i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            c_in = c
        self.features = nn.Sequential(*layers)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(2 * c_in, n_classes)

    def forward(self, logmel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(logmel).mean(dim=2)  # [B, C, T]
        embedding = torch.cat([h.mean(dim=2), h.amax(dim=2)], dim=1)
        return self.head(self.drop(embedding)), embedding


# ---------------------------------------------------------------------------------------------
# data


def load_corpus(
    folder: Path, args: argparse.Namespace, offset: int = 0
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, list[str]]:
    """Log-mels, label indices, actor ids (numbers, plus ``offset`` for a second corpus) and speaker keys
    (``corpus:id``, as ``emoedge eval`` names them) of every labelled clip, cached by folder and feature params."""
    rows = [r for r in read_labels(folder) if r["emotion"].strip().lower() in EMOTIONS]
    if any(speaker_of(r) is None for r in rows):
        raise ConfigError(f"{folder}: training splits by speaker: every clip needs an actor (or speaker) id")
    key = hashlib.sha256(json.dumps([str(folder.resolve()), F.PARAMS, [r["file"] for r in rows]]).encode()).hexdigest()[:16]
    cache = feature_cache("speech") / f"{key}.npz"
    if cache.exists():
        data = np.load(cache)
        lengths = data["lengths"]
        flat = data["logmel"]
        mels = np.split(flat, np.cumsum(lengths)[:-1], axis=1)
    else:
        mels = [F.log_mel(F.read_wav(folder / r["file"])) for r in progress(rows, args, desc="log-mel")]
        save_cache(cache, {"logmel": np.concatenate(mels, axis=1), "lengths": np.array([m.shape[1] for m in mels])})
    labels = np.array([EMOTIONS.index(r["emotion"].strip().lower()) for r in rows], dtype=np.int64)
    speakers = sorted({str(speaker_of(r)) for r in rows}, key=lambda s: (len(s), s))
    # numeric ids (RAVDESS actors) stay themselves; other speaker names are numbered in sorted order
    ids = {s: offset + (int(s) if s.isdigit() else i + 1000) for i, s in enumerate(speakers)}
    actors = np.array([ids[str(speaker_of(r))] for r in rows], dtype=np.int64)
    keys = [str(speaker_key(folder, r)) for r in rows]
    return mels, labels, actors, keys


def eval_windows(
    mels: list[np.ndarray], mean: np.ndarray, std: np.ndarray, loudness_norm: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Model inputs of every clip's windows and, for each window, its clip index."""
    xs, owner = [], []
    for i, m in enumerate(mels):
        w = F.windows(m)
        xs.append(F.model_input(w, mean, std, loudness_norm))
        owner += [i] * len(w)
    return np.concatenate(xs)[:, None], np.array(owner)


def clip_logits(
    model: SpeechCNN, mels: list[np.ndarray], mean: np.ndarray, std: np.ndarray, loudness_norm: bool = False
) -> np.ndarray:
    """Per clip, the sum of its windows' logits (the runtime's windows, cut by ``eval_windows``)."""
    x, owner = eval_windows(mels, mean, std, loudness_norm)
    with torch.no_grad():
        logits = torch.cat([model(torch.from_numpy(x[s : s + 128]))[0] for s in range(0, len(x), 128)]).numpy()
    summed = np.zeros((len(mels), logits.shape[1]))
    np.add.at(summed, owner, logits)
    return summed


def clip_accuracy(
    model: SpeechCNN, mels: list[np.ndarray], labels: np.ndarray, mean: np.ndarray, std: np.ndarray, loudness_norm: bool = False
) -> float:
    return float((clip_logits(model, mels, mean, std, loudness_norm).argmax(1) == labels).mean())


def balanced_clip_accuracy(
    model: SpeechCNN, mels: list[np.ndarray], labels: np.ndarray, mean: np.ndarray, std: np.ndarray, loudness_norm: bool,
    classes: list[int] | None = None,
) -> float:
    """Balanced accuracy (unweighted average recall) of clips, argmax among ``classes`` (default all)."""
    from edge.evaluation.metrics import classification_metrics

    summed = clip_logits(model, mels, mean, std, loudness_norm)
    if classes is not None:
        blocked = np.setdiff1d(np.arange(summed.shape[1]), classes)
        summed[:, blocked] = -np.inf
    return float(classification_metrics(labels, summed.argmax(1), list(EMOTIONS))["balanced_accuracy"])


# ---------------------------------------------------------------------------------------------
# training


def load_onnx_weights(model: SpeechCNN, path: Path) -> None:
    """Start ``model`` from an exported SpeechCNN (``path``): the export folds each BatchNorm into its
    convolution, so the convolutions take the folded weights and biases and each BatchNorm becomes the
    identity plus that bias (running mean 0, variance 1 - eps), which ``fit`` keeps frozen."""
    import onnx
    from onnx import numpy_helper

    try:
        graph = onnx.load(str(path)).graph
    except Exception as exc:  # noqa: BLE001 - missing, truncated or not ONNX: one message
        raise ConfigError(f"init {path}: cannot read the model to start from ({exc})") from None
    weights = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    torch_convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    norms = [m for m in model.features if isinstance(m, nn.BatchNorm2d)]
    if len(convs) != len(torch_convs) or any(len(n.input) < 3 for n in convs):
        raise ConfigError(f"init {path}: {len(convs)} convolutions with folded biases expected {len(torch_convs)}: not a SpeechCNN of these widths")
    with torch.no_grad():
        for node, conv, norm in zip(convs, torch_convs, norms, strict=True):
            w, b = np.array(weights[node.input[1]]), np.array(weights[node.input[2]])
            if tuple(w.shape) != tuple(conv.weight.shape):
                raise ConfigError(f"init {path}: convolution {node.name} is {list(w.shape)}, this recipe's is {list(conv.weight.shape)}")
            conv.weight.copy_(torch.from_numpy(w))
            norm.weight.fill_(1.0)
            norm.bias.copy_(torch.from_numpy(b))
            assert norm.running_mean is not None and norm.running_var is not None  # track_running_stats is on
            norm.running_mean.zero_()
            norm.running_var.fill_(1.0 - norm.eps)
        model.head.weight.copy_(torch.from_numpy(np.array(weights["head.weight"])))
        model.head.bias.copy_(torch.from_numpy(np.array(weights["head.bias"])))


def init_statistics(folder: Path) -> tuple[np.ndarray, np.ndarray, bool]:
    """The input statistics and loudness setting of the model ``folder`` that training starts from."""
    from edge.card import load_card

    params = load_card(folder / "card.toml").features.params
    if "population_mean" not in params or "population_std" not in params:
        raise ConfigError(f"init {folder}: its card has no features.params.population_mean/std to keep")
    return (np.asarray(params["population_mean"], np.float32), np.asarray(params["population_std"], np.float32),
            bool(params.get("loudness_norm", False)))


def load_teacher(folder: Path, recipe: dict[str, Any], mean: np.ndarray, std: np.ndarray, loudness_norm: bool) -> SpeechCNN:
    """The model ``folder`` (an exported SpeechCNN) as a frozen torch teacher; it must read the same inputs."""
    t_mean, t_std, t_loud = init_statistics(folder)
    if not (np.allclose(t_mean, mean) and np.allclose(t_std, std)) or t_loud != loudness_norm:
        raise ConfigError(f"distil_from {folder}: its input statistics or loudness setting differ from the trained "
                          "model's; start from it (init) so that both read the same inputs")
    teacher = SpeechCNN(widths=recipe["widths"], dropout=0.0)
    load_onnx_weights(teacher, folder / "model.onnx")
    return teacher.eval()


def fit(
    mels: list[np.ndarray], labels: np.ndarray, actors: np.ndarray, mean: np.ndarray, std: np.ndarray,
    args: argparse.Namespace, recipe: dict[str, Any], seed: int, device: str = "cpu", masks: np.ndarray | None = None,
    distil: np.ndarray | None = None,
) -> tuple[SpeechCNN, int]:
    """Train a SpeechCNN by ``recipe`` on ``device``; the model comes back on the CPU in eval mode.

    ``masks`` (clips x classes, True where the clip's corpus has the class) restrict each clip's softmax and
    label smoothing to its corpus's classes. ``distil`` (clips, True where the teacher ``distil_from`` knows
    the clip's corpus) adds the teacher's softened predictions on those clips as a second target."""
    model = SpeechCNN(widths=recipe["widths"], dropout=recipe["dropout"])
    if recipe["init"]:
        load_onnx_weights(model, Path(recipe["init"]) / "model.onnx")
    model = model.to(device)
    teacher = None
    if recipe["distil_from"]:
        teacher = load_teacher(Path(recipe["distil_from"]), recipe, mean, std, bool(recipe["loudness_norm"])).to(device)
    distil_all = torch.from_numpy(distil if distil is not None else np.ones(len(mels), dtype=bool))
    temperature, distil_weight = float(recipe["distil_temperature"]), float(recipe["distil_weight"])
    batch, epochs = recipe["batch_size"], recipe["epochs"]
    steps_per_epoch = (len(mels) + batch - 1) // batch
    opt = torch.optim.AdamW(model.parameters(), lr=recipe["lr"], weight_decay=recipe["weight_decay"])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe["lr"], total_steps=epochs * steps_per_epoch, pct_start=0.15)
    aug = Augmenter(mels, actors, mean, std, seed, recipe)
    rng = np.random.default_rng(seed + 1)
    y_all = torch.from_numpy(labels)
    mask_all = torch.from_numpy(masks if masks is not None else np.ones((len(mels), len(EMOTIONS)), dtype=bool))
    smoothing = recipe["label_smoothing"]
    steps = 0
    bar = progress(range(epochs), args, desc="speech epochs")
    for _ in bar:
        model.train()
        if recipe["init"]:  # the started-from model's BatchNorm is folded into its convolutions: keep it as it is
            for layer in model.modules():
                if isinstance(layer, nn.BatchNorm2d):
                    layer.eval()
        order = rng.permutation(len(mels))
        total = 0.0
        for start in range(0, len(order), batch):
            idx = order[start : start + batch]
            x = aug.batch(idx)
            y = nn.functional.one_hot(y_all[idx], len(EMOTIONS)).float()
            if rng.random() < recipe["mixup_p"]:
                lam = float(rng.beta(recipe["mixup_alpha"], recipe["mixup_alpha"]))
                perm = torch.from_numpy(rng.permutation(len(idx)))
                x = lam * x + (1 - lam) * x[perm]
                y = lam * y + (1 - lam) * y[perm]
            mask = mask_all[idx].float()
            y = y * (1 - smoothing) + smoothing * mask / mask.sum(1, keepdim=True)
            x = x.to(device)
            logits, _ = model(x)
            logits = logits.masked_fill(mask.to(device) == 0, -1e4)  # a class the corpus lacks: no gradient to it
            loss = -(y.to(device) * torch.log_softmax(logits, 1)).sum(1).mean()
            if teacher is not None:
                taught = distil_all[idx].to(device)
                if bool(taught.any()):
                    with torch.no_grad():
                        target = torch.softmax(teacher(x)[0][taught] / temperature, 1)
                    student = torch.log_softmax(logits[taught] / temperature, 1)
                    kd = nn.functional.kl_div(student, target, reduction="sum") / len(idx)
                    loss = loss + distil_weight * temperature**2 * kd
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            steps += 1
            total += float(loss.detach())
            if args.max_steps and steps >= args.max_steps:
                return model.cpu().eval(), steps
        postfix = getattr(bar, "set_postfix", None)  # a tqdm bar, unless --no-progress
        if postfix is not None:
            postfix(loss=f"{total / steps_per_epoch:.3f}")
    return model.cpu().eval(), steps


def train(data: str | None, out: Path | None, args: argparse.Namespace) -> Path:
    seed = setup(args, default_threads=2)
    folder = Path(data) if data else find_data() / "ravdess_speech_16k"
    out = prepare_out(out or Path("models/speech"))
    recipe = recipe_from_args(RECIPE, args)
    loud = bool(recipe["loudness_norm"])
    mels, labels, actors, keys = load_corpus(folder, args)
    corpus = np.zeros(len(mels), dtype=np.int64)
    folders = [folder] + [Path(f) for f in str(recipe["extra_data"]).split(",") if f.strip()]
    train_mask = ~np.isin(actors, VALIDATION_ACTORS)
    for c, extra in enumerate(folders[1:], start=1):
        m2, l2, a2, k2 = load_corpus(extra, args, offset=100_000 * c)
        speakers = sorted(set(k2), key=lambda k: (len(k), k))
        every, fold = int(recipe["holdout_every"]), int(recipe["holdout_fold"])
        fold = every - 1 if fold == -1 else fold
        if every and not 0 <= fold < every:
            raise ConfigError(f"speech: holdout_fold {fold} is not one of 0..{every - 1} (holdout_every {every})")
        held = set(speakers[fold::every]) if every else set()
        mels += m2
        labels = np.concatenate([labels, l2])
        actors = np.concatenate([actors, a2])
        keys += k2
        corpus = np.concatenate([corpus, np.full(len(m2), c)])
        train_mask = np.concatenate([train_mask, np.array([k not in held for k in k2])])
    # each corpus's classes: a clip is scored among these only
    present = np.zeros((len(folders), len(EMOTIONS)), dtype=bool)
    present[corpus, labels] = True
    masks = present[corpus]
    idx = np.flatnonzero(train_mask)
    if getattr(args, "cv", 0):
        raise ConfigError("speech: --cv is not implemented for this recipe")
    tr_mels = [mels[i] for i in idx]
    if recipe["init"]:
        mean, std, loud = init_statistics(Path(recipe["init"]))
        recipe["loudness_norm"] = loud
    else:
        mean, std = F.bin_statistics([F.normalise_loudness(m) for m in tr_mels] if loud else tr_mels)
    start = time.perf_counter()
    model, steps = fit(tr_mels, labels[idx], actors[idx], mean, std, args, recipe, seed,
                       getattr(args, "device", None) or "cpu", masks=masks[idx], distil=corpus[idx] == 0)
    seconds = time.perf_counter() - start
    n_params = count_parameters(model)
    print(f"parameters: {n_params}; {steps} optimiser steps in {seconds:.0f} s")
    if not args.max_steps:
        for c, f in enumerate(folders):
            val = np.flatnonzero(~train_mask & (corpus == c))
            if not len(val):
                continue
            args_ = ([mels[i] for i in val], labels[val], mean, std, loud)
            held_names = sorted({keys[i] for i in val}, key=lambda k: (len(k), k))
            print(f"{f.name}: held-out speakers {held_names} (torch): balanced accuracy "
                  f"{balanced_clip_accuracy(model, *args_):.3f}, among its own classes "
                  f"{balanced_clip_accuracy(model, *args_, classes=[int(k) for k in np.flatnonzero(present[c])]):.3f}", flush=True)
    example = torch.from_numpy(eval_windows(mels[:3], mean, std, loud)[0])
    worst = max(export_onnx(model, example, out / "model.onnx", "logmel", ["logits", "embedding"]).values())
    print(f"exported {out / 'model.onnx'}: ONNX Runtime matches torch (max abs diff {worst:.2e})")
    recipe_note = (f"Trained on {getattr(args, 'device', None) or 'cpu'}. Recipe: "
                   + ", ".join(f"{k} {','.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in recipe.items()) + ". ")
    for key in ("init", "distil_from"):  # the folder may be replaced by this model: name the file's content
        if recipe[key]:
            digest = sha256_file(Path(recipe[key]) / "model.onnx")
            recipe_note += f"{key}: {Path(recipe[key]) / 'model.onnx'} of sha256 {digest[:16]} (before this training). "
    train_keys = sorted({keys[i] for i in idx}, key=lambda k: (k.split(":")[0], len(k), k))
    write_card(out, n_params, seed, seconds, steps, mean, std, folder, sorted(set(actors[idx][corpus[idx] == 0].tolist())),
               int(model.head.in_features), worst, recipe_note, folders=folders, train_speakers=train_keys,
               loudness_norm=loud)
    return out


def write_card(
    out: Path, n_params: int, seed: int, seconds: float, steps: int, mean: np.ndarray, std: np.ndarray,
    folder: Path, train_actors: list[int], emb: int, worst: float, recipe_note: str = "",
    folders: list[Path] | None = None, train_speakers: list[str] | None = None, loudness_norm: bool = False,
) -> None:
    from edge.card import FeatureRecipe, ModelCard, TensorSpec, TrainingInfo, save_card

    card = ModelCard(
        name="speech",
        version="1.0.0",
        modality="speech",
        description="The 8 RAVDESS emotions from 3 s of 16 kHz speech"
        + (f", trained on {len(folders)} corpora ({', '.join(f.name for f in folders)}) with a per-corpus class mask"
           if folders and len(folders) > 1 else "")
        + ": a small CNN over a 64-band log-mel spectrogram.",
        labels=list(EMOTIONS),
        inputs=[
            TensorSpec(
                name="logmel", shape=["batch", 1, F.N_MELS, F.WINDOW_FRAMES], layout="N1MT (mel x time)",
                normalisation=(
                    "edge.features.speech.log_mel (ln(mel power + 1e-6)) z-scored per mel bin: by the population "
                    "statistics features.params.population_mean/std (mode default) or by the speaker's own "
                    "unlabeled history (mode speaker-norm); clips shorter than 3 s padded at the end with "
                    "silence before z-scoring, longer clips cut into windows every 1 s and the logits averaged"
                ),
                sample_rate=float(F.SAMPLE_RATE), window_s=F.WINDOW_S,
            )
        ],
        outputs=[
            TensorSpec(name="logits", shape=["batch", len(EMOTIONS)], meaning="logits over labels (softmax for probabilities)"),
            TensorSpec(name="embedding", shape=["batch", emb], meaning="features the last layer reads (mean and max over time of the last conv block)"),
        ],
        features=FeatureRecipe(
            recipe="edge.features.speech.log_mel+windows",
            params={
                **F.PARAMS,
                **({"loudness_norm": True} if loudness_norm else {}),
                "population_mean": [round(float(v), 5) for v in mean],
                "population_std": [round(float(v), 5) for v in std],
            },
        ),
        parameters=n_params,
        training=TrainingInfo(
            data=f"RAVDESS speech ({folder.name}), actors {train_actors} ({len(train_actors)} actors); "
            f"actors {list(VALIDATION_ACTORS)} held out"
            + "".join(f"; {f.name}: speakers {sorted({k for k in (train_speakers or []) if k.startswith(f.name.lower() + ':')})} "
                      "(its other speakers held out)" for f in (folders or [])[1:]),
            terms="RAVDESS: CC BY-NC-SA 4.0 (attribution, non-commercial, share-alike); the weights inherit these terms"
            + ("; ASED: no licence stated, research use, cite Retta et al. 2022" if any("ased" in f.name for f in folders or []) else ""),
            command=training_command(f"emoedge train speech --data {folder} --out {out} --seed {seed}"),
            seconds=round(seconds, 1),
            seed=seed,
            holdout={"actors": list(VALIDATION_ACTORS), "train_actors": train_actors, "corpus": "ravdess",
                     **({"train_speakers": train_speakers} if folders and len(folders) > 1 else {})},
        ),
        notes=(
            recipe_note + f"Export: FP32 ONNX, opset 17, dynamic batch; ONNX Runtime matches torch within 1e-4 + 1e-3*|x| "
            f"(max abs difference at export {worst:.1e}). {steps} optimiser steps. Validation = RAVDESS actors not in training.holdout.train_actors (any "
            "folder without actor ids: every clip). Metrics are written by `emoedge eval speech ... --write-card`; "
            "mode default uses the population statistics, mode speaker-norm each speaker's own statistics over "
            "all of that speaker's clips in the folder (no labels)."
        ),
    )
    save_card(card, out / "card.toml")
