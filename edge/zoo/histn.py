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
from typing import Literal

import torch

from edge.card import ModelCard
from edge.errors import ConfigError
from edge.paths import data_dir as find_data
from edge.zoo import dasps
from edge.zoo.common import export_onnx, prepare_out, recipe_from_args, setup, training_command
from edge.zoo.histn_net import LEVELS, fit, parameter_counts
from edge.zoo.histn_protocols import cross_validate, recitation_to_recall

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


def make_card(parameters: int, status: Literal["trained", "untrained"] = "untrained") -> ModelCard:
    """The card of models/histn (training fills in data, command, holdout and notes)."""
    from edge.card import FeatureRecipe, QuantizationPolicy, TensorSpec, TrainingInfo

    return ModelCard(
        name="histn",
        version="1.0.0",
        modality="eeg",
        status=status,
        description=(
            "HiSTN (Kuang, Song, Michoski 2024): hierarchical spatio-temporal graph networks, one per target, "
            "reading 1 s of raw 14-channel Emotiv EEG and giving five valence and five arousal levels "
            "(SAM 1-2, 3-4, 5, 6-7, 8-9), about 1,200 parameters per target; trained on DASPS."
        ),
        labels=[f"valence:{n}" for n in LEVELS] + [f"arousal:{n}" for n in LEVELS],
        inputs=[TensorSpec(
            name="eeg", shape=["batch", 14, 128], layout="NCT (electrode x time)",
            normalisation=(
                "causal 4-45 Hz Butterworth band-pass (edge.features.eeg_raw.BandPass), then per channel z-scored by the "
                "mean and std of the first features.params.norm_s seconds of the wearer's own band-passed EEG and "
                "clipped to +-features.params.clip (edge.features.eeg_raw.WearerNormaliser; edge.zoo.dasps.prepare_subject)"
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
