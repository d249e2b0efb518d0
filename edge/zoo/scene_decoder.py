"""The scene decoder: a small pre-LN transformer that writes one sentence about an image's emotion
(torch; the ``train`` extra).

Conditioning: ``cond`` = [emotion probabilities (7), valence, arousal, L2-normalised embedding (256)]
from the encoder, projected and added to every token embedding (no prefix tokens, so the key/value
cache holds text only and one graph serves the first step and every later one).

Training pairs: OASIS training images with their (first) caption sentence, and ArtEmis explanation
sentences (text only) paired with Emotion6 training images whose predicted emotion matches the
sentence's emotion (ArtEmis's 9 mapped onto the 7). Losses, after SEVLM: token cross-entropy; a VAD
alignment term (the lexicon valence/arousal expected under the decoder's word distribution against the
conditioning valence/arousal); a contrastive term (InfoNCE between the pooled text states and the
conditioning vector, in a 128-d space).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

COND = 7 + 2 + 256
EMOTION_DIMS = 9  # probabilities and valence/arousal: the part of cond that emotion dropout removes
MAX_POS = 40


class Block(nn.Module):
    def __init__(self, d: int, heads: int, ff: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.dh = heads, d // heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.out = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.ff = nn.Sequential(nn.Linear(d, ff), nn.GELU(), nn.Linear(ff, d))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, past_k: torch.Tensor, past_v: torch.Tensor, mask: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
        q, k, v = (z.reshape(b, t, self.heads, self.dh).transpose(1, 2) for z in (q, k, v))
        k = torch.cat([past_k, k], dim=2)
        v = torch.cat([past_v, v], dim=2)
        att = (q @ k.transpose(2, 3)) / math.sqrt(self.dh)
        att = att.masked_fill(~mask, -1e4).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).reshape(b, t, d)
        x = x + self.drop(self.out(y))
        x = x + self.drop(self.ff(self.ln2(x)))
        return x, k, v


class Decoder(nn.Module):
    """tokens (B, T), cond (B, COND), past k/v per layer (B, H, P, Dh) -> logits (B, T, V), hidden, presents."""

    def __init__(self, vocab: int, d: int = 192, layers: int = 3, heads: int = 4, ff: int = 576, dropout: float = 0.1) -> None:
        super().__init__()
        self.d, self.layers, self.heads = d, layers, heads
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(MAX_POS, d)
        self.cond = nn.Sequential(nn.Linear(COND, d), nn.GELU(), nn.Linear(d, d))
        self.blocks = nn.ModuleList([Block(d, heads, ff, dropout) for _ in range(layers)])
        self.lnf = nn.LayerNorm(d)
        self.drop = nn.Dropout(dropout)
        self.text_proj = nn.Linear(d, 128)
        self.cond_proj = nn.Linear(COND, 128)
        for m in self.modules():  # GPT-style small init: tied output logits start near uniform
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
                if isinstance(m, nn.Linear) and m.bias is not None:
                    nn.init.zeros_(m.bias)

    def empty_past(self, batch: int) -> list[torch.Tensor]:
        z = torch.zeros(batch, self.heads, 0, self.d // self.heads)
        return [z] * (2 * self.layers)

    def run(self, tokens: torch.Tensor, cond: torch.Tensor, past: list[torch.Tensor]
            ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        t = tokens.shape[1]
        p = past[0].shape[2]
        pos = torch.arange(t, device=tokens.device) + p
        x = self.tok(tokens) + self.pos(pos)[None] + self.cond(cond)[:, None, :]
        x = self.drop(x)
        mask = torch.arange(p + t)[None, :] <= (torch.arange(t)[:, None] + p)
        presents: list[torch.Tensor] = []
        for i, block in enumerate(self.blocks):
            x, k, v = block(x, past[2 * i], past[2 * i + 1], mask[None, None])
            presents += [k, v]
        h = self.lnf(x)
        # tied output layer as a 2-D Gemm (transB): the export keeps one copy of the embedding matrix
        logits = F.linear(h.reshape(-1, self.d), self.tok.weight).reshape(h.shape[0], t, -1)
        return logits, h, presents

    def forward(self, tokens: torch.Tensor, cond: torch.Tensor, *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits, _, presents = self.run(tokens, cond, list(past))
        return (logits, *presents)


def io_names(layers: int) -> tuple[list[str], list[str]]:
    pasts = [f"past_{kind}_{i}" for i in range(layers) for kind in ("key", "value")]
    presents = [f"present_{kind}_{i}" for i in range(layers) for kind in ("key", "value")]
    return ["tokens", "cond", *pasts], ["logits", *presents]


def vad_table(vocab_tokens: list[str], lexicon: dict[str, tuple[float, float, float]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(V, 2) lexicon valence/arousal in [-1, 1] per token and a (V,) mask of tokens the lexicon has."""
    table = np.zeros((len(vocab_tokens), 2), np.float32)
    mask = np.zeros(len(vocab_tokens), np.float32)
    for i, w in enumerate(vocab_tokens):
        if w in lexicon:
            table[i] = np.array(lexicon[w][:2]) * 2 - 1
            mask[i] = 1.0
    return torch.from_numpy(table), torch.from_numpy(mask)


def losses(model: Decoder, tokens: torch.Tensor, cond: torch.Tensor, vad: tuple[torch.Tensor, torch.Tensor],
           weights: dict[str, float]) -> dict[str, torch.Tensor]:
    """Cross-entropy, VAD alignment and contrastive losses of a batch of BOS..EOS sequences (0-padded)."""
    inp, tgt = tokens[:, :-1], tokens[:, 1:]
    logits, h, _ = model.run(inp, cond, model.empty_past(tokens.shape[0]))
    valid = (tgt != 0).float()
    ce = (F.cross_entropy(logits.transpose(1, 2), tgt, reduction="none") * valid).sum() / valid.sum()
    out = {"ce": ce}
    table, has = vad
    if weights.get("vad", 0) > 0:
        p = logits.softmax(-1) * has
        expected = (p @ table) / p.sum(-1, keepdim=True).clamp_min(1e-6)  # (B, T, 2)
        sent = (expected * valid[..., None]).sum(1) / valid.sum(1, keepdim=True).clamp_min(1.0)
        out["vad"] = F.mse_loss(sent, cond[:, 7:9])
    if weights.get("contrastive", 0) > 0 and tokens.shape[0] > 1:
        text = F.normalize(model.text_proj((h * valid[..., None]).sum(1) / valid.sum(1, keepdim=True).clamp_min(1.0)), dim=-1)
        img = F.normalize(model.cond_proj(cond), dim=-1)
        sim = text @ img.t() / 0.1
        labels = torch.arange(tokens.shape[0])
        out["contrastive"] = (F.cross_entropy(sim, labels) + F.cross_entropy(sim.t(), labels)) / 2
    out["total"] = ce + sum(weights.get(k, 0) * v for k, v in out.items() if k not in ("ce",))
    return out


def pad_batch(seqs: list[list[int]]) -> torch.Tensor:
    n = max(len(s) for s in seqs)
    return torch.tensor([s + [0] * (n - len(s)) for s in seqs], dtype=torch.long)


def fit(model: Decoder, seqs: list[list[int]], conds: np.ndarray, weights_by_pair: np.ndarray,
        vad: tuple[torch.Tensor, torch.Tensor], recipe: dict[str, Any], seed: int, log: Any = print) -> list[dict[str, float]]:
    """Train on (sequence, cond) pairs sampled in proportion to ``weights_by_pair``; per-epoch mean losses."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe["dec_lr"], weight_decay=0.01)
    bs, epochs = recipe["dec_batch"], recipe["dec_epochs"]
    per_epoch = len(seqs) // bs
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe["dec_lr"], total_steps=epochs * per_epoch, pct_start=0.1)
    probs = weights_by_pair / weights_by_pair.sum()
    lw = {"vad": recipe["vad_weight"], "contrastive": recipe["contrastive_weight"]}
    history = []
    for epoch in range(epochs):
        model.train()
        sums: dict[str, float] = {}
        for _ in range(per_epoch):
            idx = rng.choice(len(seqs), size=bs, p=probs)
            cond = conds[idx].copy()
            # emotion dropout: some rows lose their emotion and valence/arousal, so that decoding can contrast
            # the sentence with and without them (guidance, edge.scene.decode)
            cond[rng.random(bs) < recipe["emo_drop"], :EMOTION_DIMS] = 0.0
            parts = losses(model, pad_batch([seqs[i] for i in idx]), torch.from_numpy(cond), vad, lw)
            opt.zero_grad()
            parts["total"].backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + float(v) / per_epoch
        history.append({k: round(v, 4) for k, v in sums.items()})
        log(f"decoder epoch {epoch + 1}/{epochs}: {history[-1]}")
    return history


def share_tied_embedding(path: Any, embedding: str = "tok.weight") -> bool:
    """Rewrite the output MatMul against a transposed copy of the token embedding (what the exporter's constant
    folding makes of the tied layer) as Gemm(transB=1) on the embedding itself: one copy in the file."""
    import onnx
    from onnx import helper, numpy_helper

    proto = onnx.load(str(path))
    inits = {t.name: t for t in proto.graph.initializer}
    if embedding not in inits:
        return False
    table = numpy_helper.to_array(inits[embedding])
    for i, node in enumerate(proto.graph.node):
        if node.op_type != "MatMul" or node.input[1] not in inits:
            continue
        weight = numpy_helper.to_array(inits[node.input[1]])
        if weight.shape == table.T.shape and np.array_equal(weight, table.T):
            gemm = helper.make_node("Gemm", [node.input[0], embedding], list(node.output), name=node.name or "tied_logits",
                                    transB=1)
            proto.graph.node.remove(node)
            proto.graph.node.insert(i, gemm)
            proto.graph.initializer.remove(inits[node.input[1]])
            onnx.save(proto, str(path))
            return True
    return False


def export_decoder(model: Decoder, path: Any) -> dict[str, Any]:
    """decoder.onnx with past/present key/value tensors (dynamic batch, past and sequence lengths), checked
    against torch at a first step (empty past) and a later step."""
    import onnx
    import onnxruntime as ort

    model = model.eval()
    ins, outs = io_names(model.layers)
    dyn = {"tokens": {0: "batch", 1: "seq"}, "cond": {0: "batch"}, "logits": {0: "batch", 1: "seq"}}
    for name in ins[2:]:
        dyn[name] = {0: "batch", 2: "past"}
    for name in outs[1:]:
        dyn[name] = {0: "batch", 2: "total"}
    dh = model.d // model.heads
    example = (torch.randint(4, model.tok.num_embeddings, (2, 3)), torch.rand(2, COND), *[torch.randn(2, model.heads, 5, dh) for _ in ins[2:]])
    with torch.no_grad():
        torch.onnx.export(model, example, str(path), input_names=ins, output_names=outs, dynamic_axes=dyn,
                          opset_version=17, do_constant_folding=True, dynamo=False)
    share_tied_embedding(path)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for past_len, t in ((0, 4), (7, 1)):
        feed = (torch.randint(4, model.tok.num_embeddings, (3, t)), torch.rand(3, COND), *[torch.randn(3, model.heads, past_len, dh) for _ in ins[2:]])
        with torch.no_grad():
            want = model(*feed)
        got = sess.run(outs, {n: x.numpy() for n, x in zip(ins, feed, strict=True)})
        for w, g in zip(want, got, strict=True):
            worst = max(worst, float(np.max(np.abs(w.numpy() - g))))
    if worst > 1e-3:
        from edge.errors import ModelError

        raise ModelError(f"{path}: ONNX Runtime differs from torch by {worst:.3g}")
    return {"max_abs_diff": worst}
