"""Text side of ``emoedge train scene``: corpus, vocabulary, (sentence, image) pairs, the decoder and the
text-emotion scorer, written beside encoder.onnx (torch; the ``train`` extra)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edge.features.scene import load_image, scene_input
from edge.paths import cache_dir
from edge.scene.data import SceneItem, read_emotion6, read_oasis, split
from edge.scene.decode import MAX_TOKENS, condition
from edge.scene.scorer import PROTOTYPES, TextEmotionScorer, bag_of_words
from edge.scene.text import BOS, EOS, Vocab, artemis_sentences, read_lexicon, sentences, sequence_hash
from edge.zoo.common import save_cache

DECODER_RECIPE: dict[str, Any] = {
    "dec_epochs": 12, "dec_batch": 48, "dec_lr": 2e-3, "vad_weight": 0.5, "contrastive_weight": 0.1,
    "dec_d": 192, "dec_layers": 3, "dec_heads": 4, "dec_ff": 576, "artemis_pairings": 2, "emo_drop": 0.25,
    "guidance_grid": "0,1,2,3",
    "dec_oof": False,  # true: the decoder's image conditions, and the decoding choice, from out-of-fold encoder outputs
    "sharpen_grid": "1",  # powers of the conditioning probabilities tried with each guidance (edge.scene.decode)
}


def train_conds(root: Path, out: Path, recipe: dict[str, Any], seed: int, log: dict[str, Any], e6_all: list[SceneItem],
                oa_all: list[SceneItem]) -> np.ndarray | None:
    """The conditions of the training images (Emotion6's then OASIS's train parts) with out-of-fold emotion
    probabilities, valence and arousal, or None when the recipe does not ask for them."""
    from edge.scene.data import is_held_out
    from edge.zoo.scene import out_of_fold

    if not recipe.get("dec_oof"):
        return None
    enc_recipe = dict(recipe, **{k: v for k, v in (log.get("recipe") or {}).items() if k in ("epochs", "folds", "lr", "va_weight")})
    oof = out_of_fold(root, enc_recipe, seed)
    idx = [i for i, it in enumerate(e6_all) if not is_held_out("emotion6", it.key)]
    idx += [len(e6_all) + i for i, it in enumerate(oa_all) if not is_held_out("oasis", it.key)]
    # the embedding stays the shipped encoder's: each fold's top has its own hidden basis, which the decoder never sees
    train_items = [it for it in e6_all if not is_held_out("emotion6", it.key)] + [it for it in oa_all if not is_held_out("oasis", it.key)]
    embedding = encoder_outputs(out / "encoder.onnx", train_items)["embedding"]
    return condition(probs_of(oof["logits"][idx]), oof["va"][idx], embedding)


def encoder_outputs(encoder_path: Path, items: list[SceneItem], show: bool = False) -> dict[str, np.ndarray]:
    """Encoder outputs (ONNX Runtime, one thread) for every item, cached by the graph's hash."""
    import hashlib

    import onnxruntime as ort

    key = hashlib.sha256(encoder_path.read_bytes() + "|".join(str(i.path.resolve()) for i in items).encode()).hexdigest()[:16]
    path = cache_dir() / "scene" / f"encoded_{key}.npz"
    if path.exists():
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(encoder_path), so, providers=["CPUExecutionProvider"])
    outs: dict[str, list[np.ndarray]] = {}
    for s in range(0, len(items), 16):
        batch = np.stack([scene_input(load_image(it.path)) for it in items[s:s + 16]])
        for name, value in zip(["logits", "va", "embedding"], sess.run(["logits", "va", "embedding"], {"image": batch}),
                               strict=True):
            outs.setdefault(name, []).append(np.asarray(value))
    result = {k: np.concatenate(v) for k, v in outs.items()}
    save_cache(path, {k: result[k] for k in ("logits", "va", "embedding")})
    return result


def probs_of(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def first_sentence(caption: str) -> str:
    parts = sentences(caption)
    return parts[0] if parts else caption


def train_scorer(vocab: Vocab, texts: list[str], labels: np.ndarray, lexicon: dict[str, tuple[float, float, float]],
                 seed: int) -> TextEmotionScorer:
    """Multinomial logistic regression (L2) on bag of words, with lexicon one-word examples."""
    ids = [vocab.encode(t) for t in texts]
    lex_ids, lex_labels = [], []
    for w, i in vocab.ids.items():
        if w in lexicon and i >= 4:
            va = np.array(lexicon[w][:2]) * 2 - 1
            if np.abs(va).max() > 0.5:  # extreme words only
                lex_ids.append([i])
                lex_labels.append(int(np.argmin(((PROTOTYPES - va) ** 2).sum(1))))
    x = torch.from_numpy(bag_of_words(ids + lex_ids, len(vocab)))
    y = torch.from_numpy(np.concatenate([labels, np.array(lex_labels, dtype=np.int64)]).astype(np.int64))
    counts = torch.bincount(y, minlength=7).float().clamp_min(1)
    weight = (counts.sum() / counts) ** 0.5
    torch.manual_seed(seed)
    lin = torch.nn.Linear(len(vocab), 7)
    opt = torch.optim.LBFGS(lin.parameters(), max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(lin(x), y, weight=weight) + 1e-4 * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)  # type: ignore[arg-type]
    return TextEmotionScorer(lin.weight.detach().numpy().T.copy(), lin.bias.detach().numpy().copy(), vocab)


def train_decoder(root: Path, out: Path, recipe: dict[str, Any], seed: int, log: dict[str, Any], show: bool) -> None:
    """Vocabulary, pairs, decoder (+ export), training-sentence hashes and the scorer into ``out``."""
    from edge.zoo.scene_decoder import Decoder, export_decoder, fit, vad_table
    from edge.zoo.scene_export import flops

    t0 = time.time()
    rng = np.random.default_rng(seed)
    e6_all, oa_all = read_emotion6(root / "emotion6_256"), read_oasis(root / "oasis_256")
    e6, oa = split("emotion6", e6_all, "train"), split("oasis", oa_all, "train")
    conds = train_conds(root, out, recipe, seed, log, e6_all, oa_all)
    if conds is None:
        enc = encoder_outputs(out / "encoder.onnx", e6 + oa, show)
        conds = condition(probs_of(enc["logits"]), enc["va"], enc["embedding"])
    e6_conds, oa_conds = conds[:len(e6)], conds[len(e6):]
    art = [(s, lab) for s, lab, _ in artemis_sentences(root / "artemis_text_1k" / "1k_batch.csv")]
    art = [(s, lab) for s, lab in art if 4 <= len(s.split()) <= MAX_TOKENS - 2]
    captions = [first_sentence(it.caption or "") for it in oa]
    vocab = Vocab.build([s for s, _ in art] + captions, min_count=2, max_size=4000)
    vocab.save(out / "vocab.txt")
    lexicon = read_lexicon(root / "lexicons" / "NRC-VAD-Lexicon.txt")

    def seq(text: str) -> list[int]:
        return [BOS, *vocab.encode(text, MAX_TOKENS - 1), EOS]

    seqs, pair_conds, weights = [], [], []
    for c, cap in zip(oa_conds, captions, strict=True):
        if cap:
            seqs.append(seq(cap))
            pair_conds.append(c)
            weights.append(1.0)
    predicted = e6_conds[:, :7].argmax(1)
    truth = np.stack([it.emotion for it in e6 if it.emotion is not None]).argmax(1)
    for s, lab in art:
        pool = np.flatnonzero(predicted == lab)
        pool = pool if len(pool) else np.flatnonzero(truth == lab)
        pool = pool if len(pool) else np.arange(len(e6))
        for j in rng.choice(pool, size=recipe["artemis_pairings"]):
            seqs.append(seq(s))
            pair_conds.append(e6_conds[j])
            weights.append(1.0 / recipe["artemis_pairings"])
    hashes = sorted({sequence_hash([t for t in s if vocab.tokens[t] not in (".", "!", "?")]) for s in seqs})
    np.save(out / "train_hashes.npy", np.array(hashes, dtype=np.int64))
    log["decoder_data"] = {"oasis_captions": len(captions), "artemis_sentences": len(art), "pairs": len(seqs),
                           "vocab": len(vocab), "train_sentences_hashed": len(hashes)}
    torch.manual_seed(seed)
    model = Decoder(len(vocab), d=recipe["dec_d"], layers=recipe["dec_layers"], heads=recipe["dec_heads"],
                    ff=recipe["dec_ff"])
    vad = vad_table(vocab.tokens, lexicon)
    history = fit(model, seqs, np.stack(pair_conds).astype(np.float32), np.array(weights), vad, recipe, seed)
    export = export_decoder(model, out / "decoder.onnx")
    model.eval()
    dh = recipe["dec_d"] // recipe["dec_heads"]
    one = flops(model, torch.tensor([[BOS]]), torch.zeros(1, conds.shape[1]),
                *[torch.zeros(1, recipe["dec_heads"], 12, dh) for _ in range(2 * recipe["dec_layers"])])
    runtime_params = sum(p.numel() for n, p in model.named_parameters() if not n.startswith(("text_proj", "cond_proj")))
    scorer_texts = [s for s, _ in art] + captions
    scorer_labels = np.array([lab for _, lab in art] + [6] * len(captions))
    train_scorer(vocab, scorer_texts, scorer_labels, lexicon, seed).save(out / "scorer.npz")
    log["decoder"] = {"history": history[-1:], "export": export, "parameters": runtime_params, "flops_per_token": one,
                      "seconds": round(time.time() - t0, 1)}
    log["graphs"] = [{
        "name": "decoder",
        "inputs": [{"name": "tokens", "shape": ["batch", "seq"], "dtype": "int64"},
                   {"name": "cond", "shape": ["batch", conds.shape[1]],
                    "meaning": "softmax(logits) (7), va (2), embedding / |embedding| (256) of the encoder"}]
        + [{"name": f"past_{k}_{i}", "shape": ["batch", recipe["dec_heads"], "past", dh]}
           for i in range(recipe["dec_layers"]) for k in ("key", "value")],
        "outputs": [{"name": "logits", "shape": ["batch", "seq", len(vocab)], "meaning": "next-token logits over vocab.txt"}]
        + [{"name": f"present_{k}_{i}", "shape": ["batch", recipe["dec_heads"], "total", dh]}
           for i in range(recipe["dec_layers"]) for k in ("key", "value")],
        "parameters": runtime_params, "flops": one,
        "params": {"vocab": "vocab.txt", "train_hashes": "train_hashes.npy", "scorer": "scorer.npz",
                   "layers": recipe["dec_layers"], "heads": recipe["dec_heads"], "head_dim": dh,
                   "max_tokens": MAX_TOKENS, "beam": 3, "d_model": recipe["dec_d"]},
    }]


def choose_guidance(root: Path, out: Path, recipe: dict[str, Any], seed: int, log: dict[str, Any], count: int = 120) -> float:
    """The decoding guidance weight (and the probabilities' sharpening power), chosen on training images (a seeded
    slice of Emotion6's and OASIS's train parts, never the held-out ones) by the text scorer's agreement with the
    predicted emotion. With ``dec_oof`` the images' conditions are their out-of-fold encoder outputs (what a
    held-out image looks like to the decoder); otherwise the shipped encoder's."""
    from edge.card import load_model
    from edge.scene.model import SceneModel
    from edge.scene.textmetrics import distinct_n

    rng = np.random.default_rng(seed)
    e6_all, oa_all = read_emotion6(root / "emotion6_256"), read_oasis(root / "oasis_256")
    e6, oa = split("emotion6", e6_all, "train"), split("oasis", oa_all, "train")
    pick_e6 = rng.choice(len(e6), size=min(count, len(e6)), replace=False)
    pick_oa = rng.choice(len(oa), size=min(count // 3, len(oa)), replace=False)
    items = [e6[i] for i in pick_e6] + [oa[i] for i in pick_oa]
    oof = train_conds(root, out, recipe, seed, log, e6_all, oa_all)
    scorer = TextEmotionScorer.load(out / "scorer.npz", Vocab.load(out / "vocab.txt"))
    table: dict[str, dict[str, float]] = {}
    grid = [(float(g), float(p)) for g in str(recipe["guidance_grid"]).split(",") if g.strip()
            for p in str(recipe.get("sharpen_grid", "1")).split(",") if p.strip()]
    model = load_model(out)
    conds: Any = None
    if oof is not None:
        conds = np.concatenate([oof[pick_e6], oof[len(e6) + pick_oa]])
    for g, p in grid:
        with SceneModel(model, threads=1, guidance=g, sharpen=p) as scene:
            if conds is None:
                ests = [scene.estimate(load_image(it.path)) for it in items]
                conds = np.stack([e.cond for e in ests])
            assert scene.decoder is not None
            texts = [scene.decoder.explain(c).text for c in conds]
        agree = float(np.mean(scorer.probabilities(texts).argmax(1) == conds[:, :7].argmax(1)))
        name = str(g) if p == 1.0 else f"{g}, sharpen {p}"
        table[name] = {"emotion_consistency": round(agree, 4), "distinct_2": round(distinct_n(texts), 4)}
        print(f"guidance {name}: {table[name]}", flush=True)
    best = max(grid, key=lambda gp: table[str(gp[0]) if gp[1] == 1.0 else f"{gp[0]}, sharpen {gp[1]}"]["emotion_consistency"])
    log["guidance"] = {"chosen": best[0], "sharpen": best[1], "on": f"{len(items)} training images (seed {seed})"
                       + (", out-of-fold encoder outputs" if oof is not None else ""), "grid": table}
    for spec in log.get("graphs", []):
        spec["params"]["guidance"] = best[0]
        if best[1] != 1.0:
            spec["params"]["sharpen"] = best[1]
    return best[0]
