"""Words <-> token ids for the scene decoder, and the text sources it learns from.

A word-level vocabulary built from the training text (lower case; words and punctuation split),
shipped as ``vocab.txt`` beside the card: one token a line, the line number is the id. Ids 0-3 are
``<pad> <bos> <eos> <unk>``. Training sentences themselves never ship: only a set of 64-bit hashes
of their token sequences (``train_hashes.npy``), so that decoding can refuse to end on a verbatim
training sentence and eval can count copies without the text.
"""

from __future__ import annotations

import csv
import hashlib
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from edge.errors import InputError

PAD, BOS, EOS, UNK = 0, 1, 2, 3
SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?|[0-9]+|[.,!?;:]")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")
# ArtEmis's 9 emotions onto the scene model's 7 (EMOTIONS order: anger disgust fear joy sadness surprise neutral)
ARTEMIS_TO_SCENE = {"anger": 0, "disgust": 1, "fear": 2, "amusement": 3, "contentment": 3, "excitement": 3,
                    "sadness": 4, "awe": 5, "something else": 6}


def words(text: str) -> list[str]:
    """Lower-case word and punctuation tokens (apostrophes kept inside words)."""
    return _WORD.findall(text.lower().replace("\u2019", "'"))


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE.split(text) if s.strip()]


class Vocab:
    """Token strings and their ids."""

    def __init__(self, tokens: Sequence[str]) -> None:
        if list(tokens[:4]) != SPECIALS:
            raise InputError(f"vocabulary must start with {SPECIALS}, got {list(tokens[:4])}")
        self.tokens = list(tokens)
        self.ids = {t: i for i, t in enumerate(self.tokens)}

    def __len__(self) -> int:
        return len(self.tokens)

    @staticmethod
    def build(texts: Iterable[str], min_count: int = 2, max_size: int = 4000) -> Vocab:
        counts = Counter(w for t in texts for w in words(t))
        kept = [w for w, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if c >= min_count]
        return Vocab(SPECIALS + kept[: max_size - len(SPECIALS)])

    @staticmethod
    def load(path: str | Path) -> Vocab:
        try:
            return Vocab(Path(path).read_text(encoding="utf-8").splitlines())
        except FileNotFoundError:
            raise InputError(f"{path}: vocabulary file not found") from None

    def save(self, path: str | Path) -> None:
        Path(path).write_text("\n".join(self.tokens) + "\n", encoding="utf-8")

    def encode(self, text: str, max_len: int | None = None) -> list[int]:
        ids = [self.ids.get(w, UNK) for w in words(text)]
        return ids[:max_len] if max_len else ids

    def decode(self, ids: Iterable[int]) -> str:
        out: list[str] = []
        for i in ids:
            if i in (PAD, BOS):
                continue
            if i == EOS:
                break
            tok = self.tokens[i] if 0 <= i < len(self.tokens) else "<unk>"
            if tok in ".,!?;:" and out:
                out[-1] += tok
            else:
                out.append(tok)
        text = " ".join(out)
        return text[:1].upper() + text[1:]


def sequence_hash(ids: Sequence[int]) -> int:
    """64-bit hash of a token sequence (without specials): what ``train_hashes.npy`` holds."""
    body = ",".join(str(int(i)) for i in ids if i not in (PAD, BOS, EOS))
    return int.from_bytes(hashlib.blake2b(body.encode(), digest_size=8).digest(), "big") >> 1


def load_hashes(path: str | Path) -> set[int]:
    p = Path(path)
    return {int(x) for x in np.load(p)} if p.exists() else set()


def artemis_sentences(path: str | Path) -> list[tuple[str, int, str]]:
    """(sentence, scene emotion index, painting) from ArtEmis's 1k_batch.csv (each utterance split into sentences)."""
    out = []
    with open(path, encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            label = ARTEMIS_TO_SCENE.get(row["emotion"].strip().lower())
            if label is None:
                continue
            out += [(s, label, row["painting"]) for s in sentences(row["utterance"])]
    return out


def read_lexicon(path: str | Path) -> dict[str, tuple[float, float, float]]:
    """NRC-VAD: word -> (valence, arousal, dominance) in [0, 1] (read from the data folder, never shipped)."""
    lex: dict[str, tuple[float, float, float]] = {}
    try:
        with open(path, encoding="utf-8") as f:
            next(f)
            for line in f:
                parts = line.rstrip("\n").split("\t")
                if len(parts) == 4:
                    lex[parts[0].lower()] = (float(parts[1]), float(parts[2]), float(parts[3]))
    except FileNotFoundError:
        raise InputError(f"{path}: NRC-VAD lexicon not found") from None
    return lex


def text_vad(text: str, lexicon: dict[str, tuple[float, float, float]]) -> np.ndarray | None:
    """Mean lexicon VAD of the text's words mapped onto [-1, 1] (None when no word is in the lexicon)."""
    hits = [lexicon[w] for w in words(text) if w in lexicon]
    if not hits:
        return None
    return np.mean(np.array(hits), axis=0) * 2 - 1
