"""DREAMER (Katsigiannis & Ramzan 2018) loader: ``DREAMER.mat`` -> per-subject EEG trials and ratings.

The file (Zenodo 546113) holds one MATLAB struct ``DREAMER`` with ``Data`` (1 x 23 cell of subject
structs), ``EEG_SamplingRate`` (128), ``EEG_Electrodes`` (14 names) and more. Each subject has
``EEG.baseline`` and ``EEG.stimuli`` (18 x 1 cells of [time, 14] arrays; baselines are 61 s) and
``ScoreValence``/``ScoreArousal``/``ScoreDominance`` (18 x 1, integers 1-5).

``preprocess_trial`` follows HiSTN's ``split.m``: the last 60 s of the stimulus, z-scored per channel
with the mean and std of 10 s from the middle of that trial's baseline, then divided by the
channel's largest absolute value over the 60 s.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge.errors import EmoEdgeError
from edge.features.eeg_raw import EMOTIV_ELECTRODES

SAMPLE_RATE = 128
SCORES = ("valence", "arousal", "dominance")


@dataclass
class Subject:
    index: int  # 1-based, as in the file's order
    baseline: list[np.ndarray]  # per trial [time, 14]
    stimuli: list[np.ndarray]  # per trial [time, 14]
    scores: dict[str, np.ndarray]  # "valence"/"arousal"/"dominance" -> [trials] ints 1-5


def _field(struct: Any, name: str, where: str) -> Any:
    try:
        return struct[name]
    except (ValueError, KeyError, IndexError):
        raise EmoEdgeError(f"{where}: no field '{name}' (not the DREAMER.mat structure)") from None


def load_dreamer(path: str | os.PathLike[str]) -> tuple[list[Subject], dict[str, Any]]:
    """Read DREAMER.mat: the subjects and the file's metadata (sampling rate, electrodes)."""
    from scipy.io import loadmat

    p = Path(path)
    if not p.is_file():
        raise EmoEdgeError(f"{p}: not found (download DREAMER.mat from zenodo.org/record/546113)")
    try:
        mat = loadmat(str(p))
    except (ValueError, OSError, NotImplementedError) as exc:
        raise EmoEdgeError(f"{p}: not a readable MATLAB file ({exc})") from None
    if "DREAMER" not in mat:
        raise EmoEdgeError(f"{p}: no variable 'DREAMER' (has {', '.join(k for k in mat if not k.startswith('__'))})")
    root = mat["DREAMER"][0, 0]
    rate = int(np.asarray(_field(root, "EEG_SamplingRate", str(p))).ravel()[0])
    electrodes = [str(np.asarray(e).ravel()[0]) for e in np.asarray(_field(root, "EEG_Electrodes", str(p))).ravel()]
    data = _field(root, "Data", str(p))
    subjects = []
    for s in range(data.shape[1]):
        where = f"{p}: Data{{{s + 1}}}"
        subj = data[0, s]
        eeg = _field(subj, "EEG", where)[0, 0]
        baseline = [np.asarray(a, dtype=np.float64) for a in _field(eeg, "baseline", where)[0, 0][:, 0]]
        stimuli = [np.asarray(a, dtype=np.float64) for a in _field(eeg, "stimuli", where)[0, 0][:, 0]]
        scores = {
            name: np.asarray(_field(subj, "Score" + name.capitalize(), where)[0, 0], dtype=np.int64).ravel()
            for name in SCORES
        }
        for trial, x in enumerate(stimuli):
            if x.ndim != 2 or x.shape[1] != len(electrodes):
                raise EmoEdgeError(f"{where}: stimulus {trial + 1} has shape {x.shape}, expected [time, {len(electrodes)}]")
        subjects.append(Subject(index=s + 1, baseline=baseline, stimuli=stimuli, scores=scores))
    return subjects, {"sample_rate": rate, "electrodes": electrodes}


def preprocess_trial(stimulus: np.ndarray, baseline: np.ndarray, rate: int = SAMPLE_RATE, seconds: int = 60) -> np.ndarray:
    """[time, 14] -> [14, seconds * rate]: last ``seconds`` s, baseline z-score, max-abs per channel."""
    n = seconds * rate
    if len(stimulus) < n:
        raise EmoEdgeError(f"DREAMER trial: {len(stimulus)} samples is shorter than {seconds} s at {rate} Hz")
    mid = len(baseline) // 2
    ref = baseline[max(mid - 5 * rate, 0) : mid + 5 * rate]
    x = (stimulus[-n:] - ref.mean(0)) / np.maximum(ref.std(0, ddof=1), 1e-8)
    x = x / np.maximum(np.abs(x).max(0), 1e-8)
    return x.T.astype(np.float32)


def one_second_windows(trial: np.ndarray, rate: int = SAMPLE_RATE) -> np.ndarray:
    """Non-overlapping 1-s windows [n, 14, rate] of a [14, time] trial (HiSTN's subject-independent partition)."""
    n = trial.shape[1] // rate
    return trial[:, : n * rate].reshape(trial.shape[0], n, rate).transpose(1, 0, 2).copy()


def windows_and_labels(subjects: list[Subject], target: str, rate: int = SAMPLE_RATE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All 1-s windows [N, 14, rate], their level (rating 1-5 -> 0-4) and their subject."""
    xs, ys, owner = [], [], []
    for subj in subjects:
        for trial, (stim, base) in enumerate(zip(subj.stimuli, subj.baseline, strict=False)):
            w = one_second_windows(preprocess_trial(stim, base, rate), rate)
            xs.append(w)
            ys.append(np.full(len(w), int(subj.scores[target][trial]) - 1))
            owner.append(np.full(len(w), subj.index))
    return np.concatenate(xs), np.concatenate(ys).astype(np.int64), np.concatenate(owner)


def write_dreamer_like(path: str | os.PathLike[str], subjects: list[Subject], rate: int = SAMPLE_RATE) -> None:
    """Write subjects in the DREAMER.mat structure (for tests and for converting other recordings)."""
    from scipy.io import savemat

    data = np.empty((1, len(subjects)), dtype=object)
    for s, subj in enumerate(subjects):
        base = np.empty((len(subj.baseline), 1), dtype=object)
        stim = np.empty((len(subj.stimuli), 1), dtype=object)
        for t, (b, x) in enumerate(zip(subj.baseline, subj.stimuli, strict=False)):
            base[t, 0], stim[t, 0] = b, x
        data[0, s] = {
            "Age": "25", "Gender": "female",
            "EEG": {"baseline": base, "stimuli": stim},
            **{"Score" + k.capitalize(): v.reshape(-1, 1).astype(np.float64) for k, v in subj.scores.items()},
        }
    electrodes = np.empty((len(EMOTIV_ELECTRODES), 1), dtype=object)
    for i, e in enumerate(EMOTIV_ELECTRODES):
        electrodes[i, 0] = e
    savemat(str(path), {"DREAMER": {
        "Data": data, "EEG_SamplingRate": float(rate), "ECG_SamplingRate": 256.0, "EEG_Electrodes": electrodes,
        "noOfSubjects": float(len(subjects)), "noOfVideoSequences": float(len(subjects[0].stimuli) if subjects else 0),
        "Disclaimer": "generated", "Provider": "generated",
    }})
