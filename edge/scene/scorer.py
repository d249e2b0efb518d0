"""The text-emotion scorer behind ``emotion_consistency``: a multinomial logistic model over the
decoder's vocabulary (bag of words, L2-normalised counts), shipped as ``scorer.npz`` (numpy only).

Trained by ``emoedge train scene`` on ArtEmis explanation sentences (their emotion mapped onto the
scene model's 7), OASIS captions as 'neutral' (descriptions without a stated feeling), and one-word
examples from the NRC-VAD lexicon's most extreme words labelled by the nearest emotion prototype in
valence-arousal (so that words ArtEmis rarely uses still lean the right way).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge.errors import ModelError
from edge.scene.text import Vocab

# valence, arousal prototypes in [-1, 1] of the 7 emotions (circumplex), EMOTIONS order
PROTOTYPES = np.array([[-0.6, 0.7], [-0.7, 0.3], [-0.6, 0.8], [0.8, 0.4], [-0.7, -0.5], [0.3, 0.8], [0.0, -0.4]],
                      dtype=np.float32)


def bag_of_words(ids_per_text: list[list[int]], vocab_size: int) -> np.ndarray:
    x = np.zeros((len(ids_per_text), vocab_size), np.float32)
    for row, ids in enumerate(ids_per_text):
        for i in ids:
            if i >= 4:
                x[row, i] += 1.0
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-6)


class TextEmotionScorer:
    def __init__(self, weights: np.ndarray, bias: np.ndarray, vocab: Vocab) -> None:
        if weights.shape != (len(vocab), bias.shape[0]):
            raise ModelError(f"text scorer: weights {weights.shape} do not fit a {len(vocab)}-token vocabulary")
        self.w, self.b, self.vocab = weights.astype(np.float32), bias.astype(np.float32), vocab

    @staticmethod
    def load(path: str | Path, vocab: Vocab) -> TextEmotionScorer:
        try:
            with np.load(path) as z:
                return TextEmotionScorer(z["weights"], z["bias"], vocab)
        except FileNotFoundError:
            raise ModelError(f"{path}: text-emotion scorer not found") from None

    def save(self, path: str | Path) -> None:
        np.savez_compressed(path, weights=self.w.astype(np.float16), bias=self.b)

    def probabilities(self, texts: list[str]) -> np.ndarray:
        logits = bag_of_words([self.vocab.encode(t) for t in texts], len(self.vocab)) @ self.w + self.b
        e = np.exp(logits - logits.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)
