"""Explanation metrics of ``emoedge eval scene``.

* ``emotion_consistency``: share of explanations whose emotion, by the shipped text scorer, is the
  encoder's dominant emotion;
* ``vad_agreement``: mean of the Pearson r between the explanation's lexicon valence (NRC-VAD, read
  from the data folder) and the predicted valence, and the same for arousal (components beside it);
* ``distinct_2``: distinct bigrams / all bigrams over the explanations;
* ``copied_share``: share of explanations that are a training sentence verbatim (by token sequence);
* ``bleu4`` / ``cider`` (folders with captions): against each held-out image's human caption, beside a
  nearest-neighbour baseline that returns the caption of the most similar training image (cosine of
  the encoder embeddings).
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from edge.card import ModelCard
from edge.scene.scorer import TextEmotionScorer
from edge.scene.text import Vocab, read_lexicon, text_vad, words


def ngrams(tokens: list[str], n: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def distinct_n(texts: list[str], n: int = 2) -> float:
    grams = [g for t in texts for g in ngrams(words(t), n).elements()]
    return len(set(grams)) / len(grams) if grams else 0.0


def bleu4(hypotheses: list[str], references: list[str]) -> float:
    """Corpus BLEU-4 (one reference each, uniform weights, brevity penalty, +1 smoothing of empty orders)."""
    matches, totals = [0] * 4, [0] * 4
    hyp_len = ref_len = 0
    for h, r in zip(hypotheses, references, strict=True):
        ht, rt = words(h), words(r)
        hyp_len, ref_len = hyp_len + len(ht), ref_len + len(rt)
        for n in range(1, 5):
            hg, rg = ngrams(ht, n), ngrams(rt, n)
            matches[n - 1] += sum(min(c, rg[g]) for g, c in hg.items())
            totals[n - 1] += max(len(ht) - n + 1, 0)
    if hyp_len == 0:
        return 0.0
    logp = sum(math.log((m + (1 if m == 0 else 0)) / max(t, 1)) for m, t in zip(matches, totals, strict=True)) / 4
    bp = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    return float(bp * math.exp(logp))


def cider(hypotheses: list[str], references: list[str], sigma: float = 6.0) -> float:
    """CIDEr-D (n = 1..4, tf-idf over the references, Gaussian length penalty, clipped counts), x10 as usual."""
    refs = [words(r) for r in references]
    df: list[Counter[tuple[str, ...]]] = [Counter() for _ in range(4)]
    for rt in refs:
        for n in range(1, 5):
            df[n - 1].update(set(ngrams(rt, n)))
    log_n = math.log(max(len(refs), 1))

    def vec(tokens: list[str], n: int) -> dict[tuple[str, ...], float]:
        c = ngrams(tokens, n)
        return {g: tf * (log_n - math.log(max(df[n - 1][g], 1.0))) for g, tf in c.items()}

    scores = []
    for h, rt in zip(hypotheses, refs, strict=True):
        ht = words(h)
        total = 0.0
        for n in range(1, 5):
            vh, vr = vec(ht, n), vec(rt, n)
            dot = sum(min(vh[g], vr[g]) * vr[g] for g in vh if g in vr)
            nh = math.sqrt(sum(v * v for v in vh.values()))
            nr = math.sqrt(sum(v * v for v in vr.values()))
            if nh and nr:
                total += dot / (nh * nr) * math.exp(-((len(ht) - len(rt)) ** 2) / (2 * sigma**2))
        scores.append(total / 4 * 10)
    return float(np.mean(scores)) if scores else 0.0


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 3 or np.std(a) == 0 or np.std(b) == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def emotion_consistency(scorer: TextEmotionScorer, texts: list[str], probs: np.ndarray) -> float:
    """Share of explanations whose text-emotion score agrees with the image's predicted (dominant) emotion."""
    return float(np.mean(scorer.probabilities(texts).argmax(1) == probs.argmax(1)))


def text_scores(texts: list[str], probs: np.ndarray, va: np.ndarray, scorer: TextEmotionScorer, copied: list[bool],
                lexicon_path: Path | None) -> dict[str, Any]:
    out: dict[str, Any] = {"n": len(texts)}
    if not texts:
        return out
    out["emotion_consistency"] = emotion_consistency(scorer, texts, probs)
    if lexicon_path is not None and lexicon_path.is_file():
        lex = read_lexicon(lexicon_path)
        vads = [text_vad(t, lex) for t in texts]
        keep = [i for i, v in enumerate(vads) if v is not None]
        tv = np.array([vads[i] for i in keep])
        if len(keep) > 2:
            rv, ra = pearson(tv[:, 0], va[keep, 0]), pearson(tv[:, 1], va[keep, 1])
            out["vad_agreement"] = float(np.nanmean([rv, ra]))
            out["vad_r_valence"], out["vad_r_arousal"] = rv, ra
    out["distinct_2"] = distinct_n(texts, 2)
    out["copied_share"] = float(np.mean(copied))
    out["mean_tokens"] = float(np.mean([len(words(t)) for t in texts]))
    return out


def explanation_metrics(folder: Path | None, card: ModelCard, raw: dict[str, np.ndarray], data: Any,
                        scene: Any = None) -> dict[str, Any]:
    """Decode every image of ``data`` (its encoder outputs in ``raw``) and score the explanations."""
    from edge.paths import data_dir
    from edge.scene.decode import condition
    from edge.scene.model import SceneEstimate

    assert scene is not None and scene.decoder is not None and scene.vocab is not None
    probs = np.exp(raw["logits"] - raw["logits"].max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    conds = condition(probs, raw["va"], raw["embedding"])
    exps = [scene.decoder.explain(c) for c in conds]
    texts = [e.text for e in exps]
    spec = scene.spec
    scorer = TextEmotionScorer.load(scene.model.folder / spec.params.get("scorer", "scorer.npz"), scene.vocab)
    lexicon = data_dir() / "lexicons" / "NRC-VAD-Lexicon.txt"
    out = text_scores(texts, probs, raw["va"], scorer, [e.copied for e in exps], lexicon)
    out["truncated_share"] = float(np.mean([e.truncated for e in exps])) if exps else 0.0
    captions = data.extra.get("captions") or []
    if captions and all(captions) and data.extra.get("train_raw") is not None:
        train_raw, train_captions = data.extra["train_raw"], data.extra["train_captions"]
        out["bleu4"], out["cider"] = bleu4(texts, captions), cider(texts, captions)
        a = raw["embedding"] / np.maximum(np.linalg.norm(raw["embedding"], axis=1, keepdims=True), 1e-6)
        b = train_raw["embedding"] / np.maximum(np.linalg.norm(train_raw["embedding"], axis=1, keepdims=True), 1e-6)
        nn_caps = [train_captions[j] for j in (a @ b.T).argmax(1)]
        out["baseline_nn"] = {"bleu4": bleu4(nn_caps, captions), "cider": cider(nn_caps, captions)}
    out["examples"] = [{"emotion": SceneEstimate(probs[i], raw["va"][i], raw["embedding"][i]).label, "text": texts[i]}
                       for i in range(min(5, len(texts)))]
    return out


def vocab_of(folder: Path, card: ModelCard) -> Vocab:
    spec = next(g for g in card.graphs if g.name == "decoder")
    return Vocab.load(folder / spec.params.get("vocab", "vocab.txt"))
