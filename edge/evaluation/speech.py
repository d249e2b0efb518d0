"""Evaluation of the speech emotion model on a folder of wav files with a labels.csv.

labels.csv needs columns ``file`` (path relative to DIR) and ``emotion`` (a label name); ``actor``
(or ``speaker``) is optional. Any sample rate and channel count: clips go through the runtime's
feature code (16 kHz mono, log-mel, 3-s windows; logits averaged over a clip's windows).

Split "validation" is every clip whose actor the model was not trained on (the card's
``training.holdout.train_actors``); a folder without speaker ids is all validation. "train" is the
training actors, "all" every clip. Emotions the model lacks are skipped and counted.

Modes: ``default`` z-scores with the population statistics in the card; ``speaker-norm`` with each
speaker's own statistics over all of that speaker's clips in DIR (their unlabeled history).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from edge.card import ModelCard
from edge.errors import ConfigError, InputError
from edge.evaluation import LabelledSet
from edge.evaluation.eeg import format_classification, stratified_slice
from edge.evaluation.metrics import classification_metrics
from edge.features import speech as F

MODES = ("default", "speaker-norm")


def _speaker(row: dict[str, str]) -> str | None:
    for key in ("actor", "speaker"):
        if row.get(key):
            return str(int(row[key])) if row[key].strip().isdigit() else row[key].strip()
    return None


RAVDESS_EMOTIONS = {
    "01": "neutral", "02": "calm", "03": "happy", "04": "sad", "05": "angry", "06": "fearful", "07": "disgust",
    "08": "surprised",
}


def ravdess_rows(folder: Path) -> list[dict[str, str]]:
    """Rows for a RAVDESS folder without labels.csv, from the file names (MM-VV-EE-II-SS-RR-AA.wav)."""
    rows = []
    for path in sorted(folder.rglob("*.wav")):
        parts = path.stem.split("-")
        if len(parts) == 7 and all(p.isdigit() for p in parts) and parts[2] in RAVDESS_EMOTIONS:
            rows.append({"file": str(path.relative_to(folder)), "emotion": RAVDESS_EMOTIONS[parts[2]], "actor": parts[6]})
    return rows


def read_labels(folder: Path) -> list[dict[str, str]]:
    """The clips of a speech folder: labels.csv (columns file and emotion, optionally actor or speaker),
    or, without one, RAVDESS file names (Actor_XX subfolders or flat)."""
    path = folder / "labels.csv"
    if not path.is_file():
        rows = ravdess_rows(folder) if folder.is_dir() else []
        if rows:
            return rows
        raise ConfigError(
            f"{folder}: no labels.csv and no RAVDESS-named wav files (a folder of wav files needs a labels.csv "
            "with columns file and emotion)"
        )
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        missing = [c for c in ("file", "emotion") if c not in fields]
        if missing:
            raise ConfigError(f"{path}: missing column(s) {', '.join(missing)} (has {', '.join(fields)})")
        return list(reader)


def speaker_of(row: dict[str, str]) -> str | None:
    """The speaker id of a row (``actor`` or ``speaker`` column; numbers without leading zeros), if any."""
    return _speaker(row)


def load_split(
    card: ModelCard, data_dir: Path, split: str, limit: int | None = None, seed: int = 0, mode: str | None = None
) -> LabelledSet:
    mode = mode or "default"
    if mode not in MODES:
        raise ConfigError(f"speech eval: unknown --mode '{mode}' (expected one of {', '.join(MODES)})")
    data_dir = Path(data_dir)
    rows = read_labels(data_dir)
    train_actors = {str(a) for a in card.training.holdout.get("train_actors", [])}
    if split == "validation":
        rows = [r for r in rows if _speaker(r) is None or _speaker(r) not in train_actors]
    elif split == "train":
        rows = [r for r in rows if _speaker(r) in train_actors]
    elif split != "all":
        raise ConfigError(f"speech eval: unknown split '{split}' (expected validation, train or all)")
    labels = list(card.labels)
    known = [r for r in rows if r["emotion"].strip().lower() in labels]
    skipped = len(rows) - len(known)
    if not known:
        raise ConfigError(f"speech eval: no clips of split '{split}' in {data_dir} with a label the model has ({labels})")
    y = np.array([labels.index(r["emotion"].strip().lower()) for r in known], dtype=np.int64)
    # speaker statistics use every clip of that speaker in the split, labelled or not (no labels needed)
    speakers = [_speaker(r) for r in rows]
    chosen = np.arange(len(known))
    if limit is not None:
        chosen = stratified_slice(y, limit, seed)
    known_index = {id(r): i for i, r in enumerate(rows)}
    mels: dict[int, np.ndarray] = {}

    def mel(i: int) -> np.ndarray:
        if i not in mels:
            path = data_dir / rows[i]["file"]
            if not path.is_file():
                raise InputError(f"{data_dir / 'labels.csv'}: file {rows[i]['file']} not found")
            mels[i] = F.clip_inputs(path)
        return mels[i]

    wanted = [known_index[id(known[j])] for j in chosen]
    params = card.features.params
    pop = (np.asarray(params["population_mean"], np.float32), np.asarray(params["population_std"], np.float32))
    stats: dict[str | None, tuple[np.ndarray, np.ndarray]] = {}
    if mode == "speaker-norm":
        for spk in {speakers[i] for i in wanted}:
            members = [i for i, s in enumerate(speakers) if s == spk] if spk is not None else wanted
            stats[spk] = F.bin_statistics([mel(i) for i in members])
    xs, owner = [], []
    for k, i in enumerate(wanted):
        mean, std = stats.get(speakers[i], pop) if mode == "speaker-norm" else pop
        w = F.standardise(F.windows(mel(i)), mean, std)
        xs.append(w)
        owner += [k] * len(w)
    held = sorted({speakers[i] for i in wanted if speakers[i] is not None}, key=lambda s: (len(s), s))
    description = f"{data_dir.name}: split {split}, speakers {held or 'unknown'}, {len(wanted)} clips, mode {mode}"
    if limit is not None:
        description += f", stratified slice of {limit} (seed {seed})"
    return LabelledSet(
        inputs={card.inputs[0].name: np.concatenate(xs)[:, None].astype(np.float32)},
        labels=y[chosen],
        skipped=skipped,
        description=description,
        extra={
            "mode": mode, "owner": np.array(owner), "clips": len(wanted),
            # per clip: the person (None without speaker ids) and file, for `eval --adapt`
            "persons": [speakers[i] for i in wanted], "files": [rows[i]["file"] for i in wanted],
        },
    )


def evaluate(runner: Any, card: ModelCard, data: LabelledSet, batch: int = 64) -> dict[str, Any]:
    name = card.inputs[0].name
    x = data.inputs[name]
    logits = np.concatenate([runner.infer({name: x[s : s + batch]})["logits"] for s in range(0, len(x), batch)])
    owner = data.extra["owner"]
    clip_logits = np.zeros((data.extra["clips"], logits.shape[1]))
    np.add.at(clip_logits, owner, logits)
    labels = data.labels
    assert isinstance(labels, np.ndarray)
    result = classification_metrics(labels, clip_logits.argmax(1), card.labels)
    result["skipped"] = data.skipped
    result["mode"] = data.extra.get("mode")
    result["windows"] = int(len(x))
    return result


def print_report(result: dict[str, Any]) -> None:
    print(f"{result.get('model', 'speech')} on {result.get('data', '?')} ({result.get('backend', '?')}, "
          f"{result.get('precision', '?')}); skipped {result.get('skipped', 0)}")
    print(format_classification("emotion", result))
