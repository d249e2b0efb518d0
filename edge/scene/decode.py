"""Decoding the scene decoder in numpy over any runner (``infer(feed) -> outputs``): greedy or a small beam.

The runner holds ``decoder.onnx`` (inputs ``tokens``, ``cond`` and ``past_{key,value}_{i}``; outputs
``logits`` and ``present_{key,value}_{i}``). Every step feeds only the new token and the cache. Rules:
a length cap (24 tokens; an explanation that reaches it is returned with ``truncated = True`` and the
text ends in an ellipsis), stop tokens (EOS; a sentence end followed by nothing), no repeated
trigram and no token twice in a row, and no ending on a sentence that is verbatim in the training text
(``train_hashes``: the sentence must go on or end differently).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge.scene.text import BOS, EOS, PAD, UNK, Vocab, sequence_hash

MAX_TOKENS = 24
EMOTION_DIMS = 9  # cond's emotion probabilities and valence/arousal (what guidance contrasts)
AROUSAL_DIM = 8  # cond = probabilities (7), valence, arousal, embedding
ENDS = (".", "!", "?")


@dataclass
class Explanation:
    text: str
    tokens: list[int]
    truncated: bool
    score: float  # mean log-probability per token
    steps: int = 0
    copied: bool = False  # the text is a training sentence (only possible with copy blocking off)
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"text": self.text, "tokens": len(self.tokens), "truncated": self.truncated,
                "score": round(self.score, 4)}


def condition(probs: np.ndarray, va: np.ndarray, embedding: np.ndarray) -> np.ndarray:
    """The decoder's ``cond`` input (N, 265) from the encoder's outputs (probabilities, not logits)."""
    emb = embedding / np.maximum(np.linalg.norm(embedding, axis=-1, keepdims=True), 1e-6)
    return np.concatenate([probs, va, emb], axis=-1).astype(np.float32)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


class SceneDecoder:
    """Greedy or beam decoding with a key/value cache; ``layers`` and ``heads`` come from the card."""

    def __init__(self, runner: Any, vocab: Vocab, layers: int, heads: int, head_dim: int,
                 train_hashes: set[int] | None = None, max_tokens: int = MAX_TOKENS, beam: int = 1,
                 min_tokens: int = 4, guidance: float = 0.0, sharpen: float = 1.0,
                 arousal_condition: tuple[float, float] = (1.0, 0.0)) -> None:
        if max_tokens < 1:
            raise ValueError("max_tokens must be at least 1")
        self.runner, self.vocab = runner, vocab
        self.layers, self.heads, self.head_dim = layers, heads, head_dim
        self.hashes = train_hashes or set()
        self.max_tokens, self.beam, self.min_tokens = max_tokens, max(1, beam), min_tokens
        self.end_ids = {vocab.ids[p] for p in ENDS if p in vocab.ids}
        self.guidance = guidance
        self.sharpen = sharpen  # cond's emotion probabilities raised to this power (renormalised) before decoding
        # cond's arousal mapped by (scale, shift) onto the spread of the arousal the decoder was trained on (when
        # the encoder's arousal output was replaced after the decoder's training: see edge.zoo.scene.arousal_branch)
        self.arousal_condition = (float(arousal_condition[0]), float(arousal_condition[1]))
        # words that may not come twice in one sentence: all but short function words and punctuation
        self.once = np.array([len(t) > 3 and t.isalpha() for t in vocab.tokens])

    def _step(self, tokens: np.ndarray, cond: np.ndarray, past: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        feed = {"tokens": tokens.astype(np.int64), "cond": cond}
        for i in range(self.layers):
            feed[f"past_key_{i}"], feed[f"past_value_{i}"] = past[2 * i], past[2 * i + 1]
        out = self.runner.infer(feed)
        presents = [np.asarray(out[f"present_{k}_{i}"]) for i in range(self.layers) for k in ("key", "value")]
        return np.asarray(out["logits"], dtype=np.float32)[:, -1], presents

    def _block(self, seq: list[int], logp: np.ndarray) -> None:
        """Mask the continuations the rules forbid for one hypothesis (in place)."""
        logp[PAD] = logp[BOS] = logp[UNK] = -np.inf
        body = seq[1:]
        if body:
            logp[body[-1]] = -np.inf  # no token twice in a row
            used = np.array(body)
            logp[used[self.once[used]]] = -np.inf  # no content word twice
        if len(body) >= 2:  # no repeated trigram
            a, b = body[-2], body[-1]
            for i in range(len(body) - 2):
                if body[i] == a and body[i + 1] == b:
                    logp[body[i + 2]] = -np.inf
        if len(body) < self.min_tokens:
            logp[EOS] = -np.inf
            for e in self.end_ids:
                logp[e] = -np.inf
        if self.hashes:
            words = [t for t in body if t not in self.end_ids]
            if sequence_hash(words) in self.hashes:  # ending here would repeat a training sentence
                logp[EOS] = -np.inf
                for e in self.end_ids:
                    logp[e] = -np.inf
        if body and body[-1] in self.end_ids:  # a sentence ends: only EOS may follow
            keep = logp[EOS]
            logp[:] = -np.inf
            logp[EOS] = keep if np.isfinite(keep) else 0.0

    def explain(self, cond: np.ndarray) -> Explanation:
        """One explanation for one image's ``cond`` (shape (265,) or (1, 265))."""
        cond = np.array(cond, np.float32).reshape(1, -1)  # a copy: the caller's array is not changed below
        if self.sharpen != 1.0:  # held-out images' probabilities are flatter than the training images' the decoder saw
            p = np.maximum(cond[:, :7], 1e-12) ** self.sharpen
            cond[:, :7] = p / p.sum(1, keepdims=True)
        if self.arousal_condition != (1.0, 0.0):
            scale, shift = self.arousal_condition
            cond[:, AROUSAL_DIM] = np.clip(scale * cond[:, AROUSAL_DIM] + shift, -1.0, 1.0)
        k = self.beam
        past = [np.zeros((1, self.heads, 0, self.head_dim), np.float32) for _ in range(2 * self.layers)]
        beams: list[tuple[list[int], float]] = [([BOS], 0.0)]
        finished: list[tuple[list[int], float]] = []
        steps = 0
        guided = self.guidance > 0
        plain = cond.copy()
        plain[:, :EMOTION_DIMS] = 0.0
        if guided:  # a second copy of every hypothesis without the emotion part of cond (classifier-free guidance)
            past = [np.concatenate([p, p]) for p in past]
        for _ in range(self.max_tokens + 1):
            n = len(beams)
            last = np.array([[b[0][-1]] for b in beams])
            if guided:
                feed_cond = np.concatenate([np.repeat(cond, n, axis=0), np.repeat(plain, n, axis=0)])
                logits, past = self._step(np.concatenate([last, last]), feed_cond, past)
                logits = logits[:n] + self.guidance * (logits[:n] - logits[n:])
            else:
                logits, past = self._step(last, np.repeat(cond, n, axis=0), past)
            steps += 1
            logp = _log_softmax(logits)
            cands: list[tuple[float, int, int]] = []
            for bi, (seq, score) in enumerate(beams):
                row = logp[bi].copy()
                self._block(seq, row)
                if len(seq) - 1 >= self.max_tokens:  # at the cap: nothing more may be added
                    continue
                top = np.argpartition(-row, min(k, len(row) - 1))[:k]
                cands += [(score + float(row[t]), bi, int(t)) for t in top if np.isfinite(row[t])]
            if not cands:
                break
            cands.sort(key=lambda c: -c[0])
            new_beams, order = [], []
            for score, bi, tok in cands:
                seq = beams[bi][0] + [tok]
                if tok == EOS:
                    finished.append((seq, score))
                else:
                    new_beams.append((seq, score))
                    order.append(bi)
                if len(new_beams) == k:
                    break
            if len(finished) >= k or not new_beams:
                break
            idx = np.array(order)
            if guided:
                idx = np.concatenate([idx, idx + len(beams)])
            beams = new_beams
            past = [p[idx] for p in past]
        if finished:
            seq, score = max(finished, key=lambda f: f[1] / max(len(f[0]) - 1, 1))
            truncated = False
        else:
            seq, score = max(beams, key=lambda f: f[1] / max(len(f[0]) - 1, 1))
            truncated = True
        body = [t for t in seq[1:] if t != EOS]
        text = self.vocab.decode(body)
        if truncated:
            text = text.rstrip(".,;:!? ") + " \u2026"
        copied = sequence_hash([t for t in body if t not in self.end_ids]) in self.hashes
        return Explanation(text, body, truncated, score / max(len(body), 1), steps, copied)

