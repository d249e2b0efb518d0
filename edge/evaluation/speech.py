"""Evaluation of the speech emotion model on a folder of wav files with a labels.csv.

labels.csv needs columns ``file`` (path relative to DIR: wav, or FLAC and other formats through
soundfile) and ``emotion`` (a label name); ``actor`` (or ``speaker``) and ``corpus`` are optional. Any
sample rate and channel count: clips go through the runtime's feature code (16 kHz mono, log-mel, 3-s
windows; logits averaged over a clip's windows).

Speaker ids belong to their corpus: a speaker is ``corpus:id``, where the corpus is the ``corpus``
column, else ``ravdess`` for RAVDESS file names, else the folder's name. Split "validation" is every
clip whose speaker the model was not trained on (the card's ``training.holdout``: ``train_speakers``
as ``corpus:id``, or ``train_actors`` of the corpus named by ``corpus``, ``ravdess`` when absent), so a
foreign corpus whose speakers are numbered 03-16 is all validation; a folder without speaker ids is all
validation. "train" is the training speakers, "all" every clip. Emotions the model lacks are skipped
and counted; the classes the folder has are kept for ``--restrict-to-data-labels``.

Modes: ``default`` z-scores with the population statistics in the card; ``speaker-norm`` with each
speaker's own statistics over all of that speaker's clips in DIR (their unlabeled history).
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Any

import numpy as np

from edge.card import ModelCard
from edge.errors import ConfigError, InputError
from edge.evaluation import Head, LabelledSet, infer_outputs, outlier_files
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


RAVDESS_NAME = re.compile(r"^\d{2}-\d{2}-\d{2}-\d{2}-\d{2}-\d{2}-\d{2}$")


def corpus_of(folder: Path, row: dict[str, str]) -> str:
    """The corpus a clip belongs to: its ``corpus`` column, ``ravdess`` for a RAVDESS file name, else the folder's name."""
    if row.get("corpus", "").strip():
        return row["corpus"].strip().lower()
    if RAVDESS_NAME.match(Path(row["file"]).stem):
        return "ravdess"
    return Path(folder).resolve().name.lower()


def speaker_key(folder: Path, row: dict[str, str]) -> str | None:
    """``corpus:speaker`` of a row, or None without a speaker id: speaker ids are only unique within a corpus."""
    spk = _speaker(row)
    return None if spk is None else f"{corpus_of(folder, row)}:{spk}"


def training_speakers(card: ModelCard) -> set[str]:
    """The card's training speakers as ``corpus:id`` (``train_speakers``, or ``train_actors`` of ``corpus``)."""
    holdout = card.training.holdout
    corpus = str(holdout.get("corpus", "ravdess")).lower()
    keys = {str(k).lower() for k in holdout.get("train_speakers", [])}
    keys |= {f"{corpus}:{int(a) if str(a).isdigit() else a}" for a in holdout.get("train_actors", [])}
    return keys


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
    folders = [f.strip() for f in str(data_dir).split(",") if f.strip()]
    if len(folders) > 1:  # a model of several corpora: its held-out speakers of each, as one set
        return concat_sets([load_split(card, Path(f), split, limit, seed, mode) for f in folders],
                           [Path(f).name for f in folders])
    mode = mode or "default"
    if mode not in MODES:
        raise ConfigError(f"speech eval: unknown --mode '{mode}' (expected one of {', '.join(MODES)})")
    data_dir = Path(data_dir)
    rows = read_labels(data_dir)
    labels = list(card.labels)
    present = sorted({labels.index(e) for r in rows if (e := r["emotion"].strip().lower()) in labels})
    trained_on = training_speakers(card)
    if split == "validation":
        rows = [r for r in rows if speaker_key(data_dir, r) is None or speaker_key(data_dir, r) not in trained_on]
    elif split == "train":
        rows = [r for r in rows if speaker_key(data_dir, r) in trained_on]
    elif split != "all":
        raise ConfigError(f"speech eval: unknown split '{split}' (expected validation, train or all)")
    known = [r for r in rows if r["emotion"].strip().lower() in labels]
    skipped = len(rows) - len(known)
    if not known:
        raise ConfigError(f"speech eval: no clips of split '{split}' in {data_dir} with a label the model has ({labels})")
    y = np.array([labels.index(r["emotion"].strip().lower()) for r in known], dtype=np.int64)
    # speaker statistics use every clip of that speaker in the split, labelled or not (no labels needed)
    speakers = [speaker_key(data_dir, r) for r in rows]
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
    loud = bool(params.get("loudness_norm", False))
    stats: dict[str | None, tuple[np.ndarray, np.ndarray]] = {}
    if mode == "speaker-norm":
        for spk in {speakers[i] for i in wanted}:
            members = [i for i, s in enumerate(speakers) if s == spk] if spk is not None else wanted
            stats[spk] = F.bin_statistics([F.normalise_loudness(mel(i)) if loud else mel(i) for i in members])
    xs, owner = [], []
    for k, i in enumerate(wanted):
        mean, std = stats.get(speakers[i], pop) if mode == "speaker-norm" else pop
        w = F.model_input(F.windows(mel(i)), mean, std, loud)
        xs.append(w)
        owner += [k] * len(w)
    held = sorted({s for i in wanted if (s := speakers[i]) is not None}, key=lambda s: (len(s), s))
    corpora = sorted({corpus_of(data_dir, rows[i]) for i in wanted})
    held_short = [h.split(":", 1)[1] for h in held] if len(corpora) == 1 else held
    description = (f"{data_dir.name}: split {split}, {'/'.join(corpora)} speakers {held_short or 'unknown'}, "
                   f"{len(wanted)} clips, mode {mode}")
    if limit is not None:
        description += f", stratified slice of {limit} (seed {seed})"
    return LabelledSet(
        inputs={card.inputs[0].name: np.concatenate(xs)[:, None].astype(np.float32)},
        labels=y[chosen],
        skipped=skipped,
        description=description,
        extra={
            "mode": mode, "owner": np.array(owner), "clips": len(wanted), "present": present,
            # per clip: the speaker (corpus:id) and file: groups for cross-fitting, persons for `eval --adapt`
            "groups": [speakers[i] for i in wanted], "persons": [speakers[i] for i in wanted],
            "files": [rows[i]["file"] for i in wanted],
        },
    )


def concat_sets(sets: list[LabelledSet], names: list[str]) -> LabelledSet:
    """Several folders' splits as one (``--data A,B``): clips, labels and speakers side by side, each corpus's
    classes in ``present``, so that calibration and its cross-fitting see every held-out speaker at once."""
    offsets = np.cumsum([0] + [int(s.extra["clips"]) for s in sets[:-1]])
    inputs = {k: np.concatenate([s.inputs[k] for s in sets]) for k in sets[0].inputs}
    return LabelledSet(
        inputs=inputs,
        labels=np.concatenate([np.asarray(s.labels) for s in sets]),
        skipped=sum(s.skipped for s in sets),
        description="+".join(names) + ": " + "; ".join(s.description for s in sets),
        extra={
            "mode": sets[0].extra["mode"],
            "owner": np.concatenate([s.extra["owner"] + off for s, off in zip(sets, offsets, strict=True)]),
            "clips": sum(int(s.extra["clips"]) for s in sets),
            "present": sorted(set().union(*(s.extra["present"] for s in sets))),
            **{k: [v for s in sets for v in s.extra[k]] for k in ("groups", "persons")},
            "files": [f"{name}/{f}" for s, name in zip(sets, names, strict=True) for f in s.extra["files"]],
        },
    )


def clip_mean(values: np.ndarray, owner: np.ndarray, clips: int) -> np.ndarray:
    """Per-clip mean of per-window values (logits, embeddings)."""
    total = np.zeros((clips, *values.shape[1:]), dtype=np.float64)
    np.add.at(total, owner, values)
    return total / np.maximum(np.bincount(owner, minlength=clips), 1).reshape(-1, *([1] * (values.ndim - 1)))


def heads(card: ModelCard, data: LabelledSet, raw: dict[str, np.ndarray]) -> list[Head]:
    """The logits output per clip (mean over the clip's windows) with the clip labels."""
    labels = data.labels
    assert isinstance(labels, np.ndarray)
    logits = clip_mean(raw["logits"], data.extra["owner"], data.extra["clips"])
    return [Head("logits", logits, labels, list(card.labels), None, data.extra.get("present"))]


def evaluate(runner: Any, card: ModelCard, data: LabelledSet, batch: int = 64, raw: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    raw = raw if raw is not None else infer_outputs(runner, card, data, batch)
    head = heads(card, data, raw)[0]
    result = classification_metrics(head.labels, head.logits.argmax(1), card.labels)
    result["skipped"] = data.skipped
    result["mode"] = data.extra.get("mode")
    result["windows"] = int(len(data.inputs[card.inputs[0].name]))
    return result


AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3"}


def load_outliers(card: ModelCard, folder: str | Path, mode: str | None = None) -> dict[str, LabelledSet]:
    """Unlabelled clips of ``folder/<kind>/`` (any audio soundfile reads), as model windows z-scored with the
    card's population statistics (a device's view before it knows the speaker), per kind."""
    kinds = outlier_files(folder, AUDIO_SUFFIXES, "audio files: noise/, tones/, ...", recursive=True)
    params = card.features.params
    mean, std = np.asarray(params["population_mean"], np.float32), np.asarray(params["population_std"], np.float32)
    loud = bool(params.get("loudness_norm", False))
    out: dict[str, LabelledSet] = {}
    for kind, files in kinds.items():
        xs = [F.model_input(F.windows(F.clip_inputs(f)), mean, std, loud) for f in files]
        owner = np.concatenate([[k] * len(x) for k, x in enumerate(xs)])
        out[kind] = LabelledSet(inputs={card.inputs[0].name: np.concatenate(xs)[:, None].astype(np.float32)},
                                labels=np.zeros(len(files), np.int64), description=f"{Path(folder) / kind} ({len(files)} clips)",
                                extra={"owner": owner, "clips": len(files)})
    return out


def print_report(result: dict[str, Any]) -> None:
    print(f"{result.get('model', 'speech')} on {result.get('data', '?')} ({result.get('backend', '?')}, "
          f"{result.get('precision', '?')}); skipped {result.get('skipped', 0)}")
    print(format_classification("emotion", result))
    if "restricted" in result:
        print(format_classification("emotion, among the data's labels", result["restricted"]))
