"""DASPS (Baghdadi et al. 2019) loader: ``Sxx.mat`` files -> subjects, segments, 1-s windows, ratings.

Each subject file is MATLAB v7.3 (HDF5; read with h5py) holding, as h5py shows them:

* ``data``       [12 segments, 1920 samples, 14 channels] float32: 15 s at 128 Hz of Emotiv EPOC EEG in the
  order AF3 F7 F3 FC5 T7 P7 O1 O2 P8 T8 FC6 F4 F8 AF4, band-passed 4-45 Hz, artefacts removed;
* ``labels``     [2, 12]: self-rated valence (row 0) and arousal (row 1), SAM 1-9, per segment;
* ``situation``  a MATLAB char array (one word, e.g. "accident": the subject's own theme);
* ``hamilton``   [2, 1]: the Hamilton anxiety scores.

Segments come in pairs, one pair per anxiety-eliciting situation: segment 2k is the therapist's 15-s
recitation of situation k + 1, segment 2k + 1 the subject's 15-s recall of it; both carry the rating
given after the situation (the file repeats it, and the loader checks that it does).

Rating levels (the five ordered levels HiSTN predicts), from the 1-9 SAM rating:

    level 1: 1-2   level 2: 3-4   level 3: 5   level 4: 6-7   level 5: 8-9

Cut this way, both binary views of the data set are exact functions of the level: *high* (rating >= 5)
is level >= 3, *low valence* (rating < 5) is level <= 2 and *high arousal* (rating > 5) is level >= 4,
so the data set's anxious state (valence < 5 and arousal > 5) is valence level <= 2 and arousal
level >= 4. (Splitting 1-9 into equal widths, e.g. ceil(r / 2), would put 5 and 6 in one level and
make "arousal > 5" unrecoverable from levels.)
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge.errors import EmoEdgeError

ELECTRODES = ("AF3", "F7", "F3", "FC5", "T7", "P7", "O1", "O2", "P8", "T8", "FC6", "F4", "F8", "AF4")
SAMPLE_RATE = 128
SEGMENT_SAMPLES = 15 * SAMPLE_RATE
SEGMENTS = 12
PHASES = ("recitation", "recall")
TARGETS = ("valence", "arousal")
DATASETS = ("data", "labels", "situation", "hamilton")

#: upper rating (inclusive) of each of the five levels, 1-9 SAM ratings
LEVEL_UPPER = (2, 4, 5, 7, 9)
LEVEL_NAMES = ("1-2", "3-4", "5", "6-7", "8-9")


def rating_level(rating: np.ndarray | Sequence[float] | float) -> np.ndarray:
    """SAM ratings 1-9 -> level indices 0-4 (see the module docstring); a rating outside 1-9 is an error."""
    r = np.asarray(rating, dtype=np.float64)
    if not np.all(np.isfinite(r)) or np.any((r < 1) | (r > 9)) or np.any(r != np.round(r)):
        raise EmoEdgeError(f"DASPS ratings must be whole numbers 1-9, got {np.unique(r).tolist()}")
    return np.searchsorted(np.asarray(LEVEL_UPPER, dtype=np.float64), r, side="left").astype(np.int64)


def anxious(valence_rating: np.ndarray, arousal_rating: np.ndarray) -> np.ndarray:
    """The data set's anxious state: valence < 5 and arousal > 5 (booleans)."""
    return (np.asarray(valence_rating) < 5) & (np.asarray(arousal_rating) > 5)


@dataclass
class Segment:
    subject: int  # 1-based (S01 -> 1)
    index: int  # 0-11, file order
    situation: int  # 1-6
    phase: str  # "recitation" | "recall"
    eeg: np.ndarray  # [time, 14] float32
    valence: int  # SAM 1-9
    arousal: int  # SAM 1-9


@dataclass
class Subject:
    index: int
    name: str  # "S01"
    segments: list[Segment]
    theme: str  # the file's ``situation`` word
    hamilton: tuple[float, ...]

    def eeg(self) -> np.ndarray:
        """The subject's whole recording in file order, [time, 14] (for per-subject normalisation)."""
        return np.concatenate([s.eeg for s in self.segments])


def _dataset(f: Any, name: str, path: Path) -> np.ndarray:
    if name not in f:
        raise EmoEdgeError(
            f"{path}: no dataset '{name}' (not the DASPS layout: expected {', '.join(DATASETS)}; has {', '.join(sorted(f.keys())) or 'nothing'})"
        )
    return np.asarray(f[name])


def load_subject(path: str | os.PathLike[str], index: int | None = None) -> Subject:
    """Read one ``Sxx.mat`` (MATLAB v7.3) file."""
    import h5py

    p = Path(path)
    if not p.is_file():
        raise EmoEdgeError(f"{p}: not found")
    if index is None:
        m = re.search(r"(\d+)", p.stem)
        index = int(m.group(1)) if m else 0
    try:
        f = h5py.File(p, "r")
    except OSError:
        raise EmoEdgeError(f"{p}: not an HDF5 file (DASPS subjects are MATLAB v7.3 .mat files)") from None
    with f:
        data = _dataset(f, "data", p)
        labels = _dataset(f, "labels", p)
        situation = _dataset(f, "situation", p)
        hamilton = _dataset(f, "hamilton", p)
    if data.ndim != 3 or data.shape[0] != SEGMENTS or data.shape[2] != len(ELECTRODES):
        raise EmoEdgeError(f"{p}: dataset 'data' has shape {data.shape}, expected [{SEGMENTS}, time, {len(ELECTRODES)}]")
    if labels.shape != (2, SEGMENTS):
        raise EmoEdgeError(f"{p}: dataset 'labels' has shape {labels.shape}, expected [2, {SEGMENTS}] (valence, arousal)")
    if not np.all(np.isfinite(data)):
        raise EmoEdgeError(f"{p}: dataset 'data' holds NaN or infinity")
    if not np.array_equal(labels[:, 0::2], labels[:, 1::2]):
        raise EmoEdgeError(f"{p}: the recitation and recall segments of a situation carry different ratings")
    rating_level(labels)  # range check
    theme = "".join(chr(int(c)) for c in situation.ravel() if int(c)) if situation.dtype.kind in "ui" else str(situation)
    segments = [
        Segment(subject=index, index=k, situation=k // 2 + 1, phase=PHASES[k % 2],
                eeg=np.ascontiguousarray(data[k], dtype=np.float32),
                valence=int(labels[0, k]), arousal=int(labels[1, k]))
        for k in range(SEGMENTS)
    ]
    return Subject(index=index, name=p.stem, segments=segments, theme=theme,
                   hamilton=tuple(float(v) for v in hamilton.ravel()))


def subject_files(folder: str | os.PathLike[str]) -> list[Path]:
    """The ``S<number>.mat`` files of a DASPS folder, by subject number."""
    d = Path(folder)
    if not d.is_dir():
        raise EmoEdgeError(f"{d}: not a folder (expected the DASPS layout: S01.mat ... S18.mat)")
    files = sorted((p for p in d.glob("S*.mat") if re.fullmatch(r"S\d+", p.stem)), key=lambda p: int(p.stem[1:]))
    if not files:
        raise EmoEdgeError(f"{d}: no S<number>.mat files (expected the DASPS layout: S01.mat ... S18.mat)")
    return files


def load_dasps(folder: str | os.PathLike[str], subjects: Iterable[int] | None = None) -> list[Subject]:
    """Every subject of a DASPS folder (or only those numbered in ``subjects``)."""
    wanted = None if subjects is None else set(subjects)
    return [load_subject(p) for p in subject_files(folder) if wanted is None or int(p.stem[1:]) in wanted]


@dataclass
class Windows:
    """1-s windows of many segments with what each came from."""

    x: np.ndarray  # [N, 14, 128] float32
    valence: np.ndarray  # [N] SAM rating
    arousal: np.ndarray  # [N] SAM rating
    subject: np.ndarray  # [N]
    situation: np.ndarray  # [N] 1-6
    phase: np.ndarray  # [N] 0 recitation, 1 recall
    segment: np.ndarray  # [N] subject * 100 + segment index: the unit a window must not be split across

    def __len__(self) -> int:
        return len(self.x)

    def levels(self, target: str) -> np.ndarray:
        return rating_level(getattr(self, target))

    def select(self, mask: np.ndarray) -> Windows:
        return Windows(*(getattr(self, k)[mask] for k in ("x", "valence", "arousal", "subject", "situation", "phase", "segment")))


def windows(segments_eeg: Sequence[tuple[Segment, np.ndarray]], rate: int = SAMPLE_RATE) -> Windows:
    """Non-overlapping 1-s windows of (segment, its prepared [14, time] EEG) pairs."""
    from edge.features.eeg import eeg_windows

    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("x", "valence", "arousal", "subject", "situation", "phase", "segment")}
    for seg, eeg in segments_eeg:
        w = eeg_windows(eeg, rate, 1.0)
        n = len(w)
        parts["x"].append(w)
        parts["valence"].append(np.full(n, seg.valence))
        parts["arousal"].append(np.full(n, seg.arousal))
        parts["subject"].append(np.full(n, seg.subject))
        parts["situation"].append(np.full(n, seg.situation))
        parts["phase"].append(np.full(n, PHASES.index(seg.phase)))
        parts["segment"].append(np.full(n, seg.subject * 100 + seg.index))
    if not parts["x"]:
        return Windows(np.zeros((0, len(ELECTRODES), rate), np.float32), *(np.zeros(0, np.int64) for _ in range(6)))
    out = {k: np.concatenate(v) for k, v in parts.items()}
    return Windows(out["x"].astype(np.float32), *(out[k].astype(np.int64) for k in list(out)[1:]))


def write_dasps_like(
    path: str | os.PathLike[str], data: np.ndarray, labels: np.ndarray, theme: str = "accident",
    hamilton: Sequence[float] = (20.0, 25.0), drop: Sequence[str] = (),
) -> None:
    """Write one subject in the DASPS HDF5 layout (``data`` [12, time, 14], ``labels`` [2, 12]) for tests;
    ``drop`` leaves datasets out (to check the loader's errors)."""
    import h5py

    with h5py.File(path, "w") as f:
        items = {
            "data": np.asarray(data, dtype=np.float32),
            "labels": np.asarray(labels, dtype=np.float64),
            "situation": np.frombuffer(theme.encode("ascii"), dtype=np.uint8).astype(np.uint16).reshape(-1, 1),
            "hamilton": np.asarray(hamilton, dtype=np.float64).reshape(-1, 1),
        }
        for name, value in items.items():
            if name not in drop:
                f.create_dataset(name, data=value)
                f[name].attrs["MATLAB_class"] = np.bytes_({"data": "single", "situation": "char"}.get(name, "double"))


def prepare_subject(subject: Subject, norm_s: float = 60.0, clip: float = 6.0) -> list[tuple[Segment, np.ndarray]]:
    """Each segment through the raw-EEG front end a device runs: the causal 4-45 Hz band-pass
    (``edge.features.eeg_raw.BandPass``, state reset per segment: the segments are not contiguous), then
    z-scores from the first ``norm_s`` seconds of the subject's band-passed recording in file order
    (``WearerNormaliser``; unlabeled, as a device has the first minute of wear). Returns [14, time] per segment."""
    from edge.features.eeg_raw import BandPass, WearerNormaliser

    band = BandPass(len(ELECTRODES), SAMPLE_RATE)
    filtered = []
    for seg in subject.segments:
        band.reset()
        filtered.append(band(seg.eeg.T))
    norm = WearerNormaliser(len(ELECTRODES), SAMPLE_RATE, seconds=norm_s, clip=clip)
    for f in filtered:
        norm.update(f)
    return [(seg, norm.transform(f)) for seg, f in zip(subject.segments, filtered, strict=True)]


def prepared_windows(subjects: Sequence[Subject], norm_s: float = 60.0, clip: float = 6.0) -> Windows:
    """1-s windows of every segment of ``subjects`` after ``prepare_subject``."""
    return windows([pair for s in subjects for pair in prepare_subject(s, norm_s, clip)])
