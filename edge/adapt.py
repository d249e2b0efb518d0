"""Per-person adaptation on the ``embedding`` output, in numpy (no torch, nothing leaves the device).

Every model ends in an affine head ``embedding -> logits``. A person's estimates are adapted in two ways:

- **unlabeled:** the person's own embedding mean and std (their history, no labels). The prototypes
  live in those person-standardised coordinates, so each feature counts on the scale that person
  shows; alone it leaves the population predictions unchanged. (Input-level normalisation by the
  person's own history is the evaluators' ``speaker-norm`` / ``subject-norm`` modes; it composes.)
- **labelled:** the population head blended with the person's class prototypes (mean standardised
  embedding of each class's examples): the population logits plus a weight times the cosine similarity
  to each prototype, folded into one affine head. Each class's share grows with its count (n / (n + 1)),
  and the weight is chosen per person by leave-one-out on the enrollment among ``BLEND_WEIGHTS``: the
  strength follows the number and the consistency of the person's examples.

A leave-one-out guard keeps the population head unless the adapted head, rebuilt without each
enrollment example in turn, gets more of those held-out examples right than the population head does
(``Adaptation.reason`` says which and why).

The population head is read from the model itself (``population_heads``): the graph is cut at ``embedding``
(made an input) and ONNX Runtime runs the remaining nodes on the zero and unit vectors, which gives the
exact weights and bias of whatever Gemm / MatMul / Slice ops follow (speech, face). Each head is checked
against the whole model on random inputs; where the cut graph does not reproduce it (the EEG head reads
its ``band_power`` input directly, which the embedding repeats), the head is the least-squares affine fit
of the whole model's logits on its embedding over random inputs (exact when the head is affine, which
the same check confirms, else the model is refused).
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge.errors import InputError, ModelError

EMBEDDING = "embedding"
# weights of the prototype similarity added to the population logits, chosen per person by leave-one-out
BLEND_WEIGHTS = (5.0, 10.0, 20.0, 40.0)


@dataclass
class Head:
    """An affine map ``embedding -> logits`` of one classification output."""

    output: str
    labels: list[str]
    weight: np.ndarray  # (classes, dim)
    bias: np.ndarray  # (classes,)
    source: str = "graph"  # how it was read: "graph" (exact) or "least squares" (on whole-model outputs)

    def logits(self, embedding: np.ndarray) -> np.ndarray:
        return np.asarray(embedding, np.float64) @ self.weight.T + self.bias


def head_labels(card: Any, output: str, classes: int) -> list[str]:
    """The labels of a logits output: the card's labels for ``logits``, else ``[a, b]`` in its meaning."""
    if output == "logits" and len(card.labels) == classes:
        return list(card.labels)
    meaning = card.output(output).meaning or ""
    found = re.search(r"\[([^\]]+)\]", meaning)
    if found:
        names = [s.strip() for s in found.group(1).split(",")]
        if len(names) == classes:
            return names
    return [str(i) for i in range(classes)]


def logits_outputs(card: Any) -> list[str]:
    """The classification outputs of a model: those whose name is ``logits`` or ends in ``_logits``."""
    return [o.name for o in card.outputs if o.name == "logits" or o.name.endswith("_logits")]


_HEAD_CACHE: dict[str, dict[str, Head]] = {}


def population_heads(model: Any) -> dict[str, Head]:
    """The population heads of a loaded model (``edge.card.Model``), read from its ONNX graph (cached by sha256)."""
    if model.sha256 in _HEAD_CACHE:
        return _HEAD_CACHE[model.sha256]
    outputs = logits_outputs(model.card)
    if EMBEDDING not in {o.name for o in model.card.outputs} or not outputs:
        raise ModelError(f"model '{model.name}': adaptation needs an '{EMBEDDING}' output and a logits output")
    heads = _read_heads(Path(model.path), outputs, model.card)
    _HEAD_CACHE[model.sha256] = heads
    return heads


def _read_heads(path: Path, outputs: Sequence[str], card: Any) -> dict[str, Head]:
    """Heads from the graph cut at the embedding, checked against the whole model on random inputs; where the
    graph's head also reads a model input directly (the EEG head reads ``band_power`` itself, which the embedding
    repeats), by least squares on (embedding, logits) pairs of the whole model instead."""
    import onnxruntime as ort

    dim = next(int(o.shape[-1]) for o in card.outputs if o.name == EMBEDDING)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    full = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run_full(n: int, seed: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        rng = np.random.default_rng(seed)
        feed = {
            i.name: rng.standard_normal([d if isinstance(d, int) and d > 0 else n for d in i.shape]).astype(np.float32)
            for i in full.get_inputs()
        }
        got = dict(zip([EMBEDDING, *outputs], full.run([EMBEDDING, *outputs], feed), strict=True))
        return np.asarray(got[EMBEDDING], np.float64), {k: np.asarray(got[k], np.float64) for k in outputs}

    check_e, check_l = run_full(8, 1)
    heads: dict[str, Head] = {}
    fitted = _graph_heads(path, outputs, dim, options)
    source = "graph"
    if any(_affine_error(*fitted[name], check_e, check_l[name]) > 1e-3 for name in outputs):
        e, logits = run_full(dim + 64, 2)  # every output from one batch of the whole model
        design = np.hstack([e, np.ones((len(e), 1))])
        for name in outputs:
            sol = np.linalg.lstsq(design, logits[name], rcond=None)[0]
            fitted[name] = (sol[:-1].T, sol[-1])
        source = "least squares"
    for name in outputs:
        weight, bias = fitted[name]
        err = _affine_error(weight, bias, check_e, check_l[name])
        if err > 1e-3:
            raise ModelError(f"{path}: output '{name}' is not an affine function of '{EMBEDDING}' (error {err:.3g})")
        heads[name] = Head(name, head_labels(card, name, weight.shape[0]), weight, bias, source)
    return heads


def _affine_error(weight: np.ndarray, bias: np.ndarray, e: np.ndarray, logits: np.ndarray) -> float:
    return float(np.abs(e @ weight.T + bias - logits).max() / (1.0 + np.abs(logits).max()))


def _graph_heads(path: Path, outputs: Sequence[str], dim: int, options: Any) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Run the nodes after the embedding (the embedding made an input) on zero and unit vectors."""
    import onnx
    import onnxruntime as ort

    proto = onnx.load(str(path))
    graph = proto.graph
    needed, kept = set(outputs), []
    for node in reversed(graph.node):  # walk back from the logits, stopping at the embedding
        if EMBEDDING in node.output or not needed.intersection(node.output):
            continue
        kept.append(node)
        needed.update(i for i in node.input if i)
    kept.reverse()
    nan = (np.full((1, dim), np.nan), np.full(1, np.nan))
    if EMBEDDING not in needed:
        return {o: nan for o in outputs}
    inits = [i for i in graph.initializer if i.name in needed]
    inputs = [i for i in graph.input if i.name in needed]
    emb_value = onnx.helper.make_tensor_value_info(EMBEDDING, onnx.TensorProto.FLOAT, ["n", dim])
    head_graph = onnx.helper.make_graph(
        kept, "head", [emb_value, *inputs], [o for o in graph.output if o.name in outputs], initializer=inits
    )
    head_model = onnx.helper.make_model(head_graph, opset_imports=proto.opset_import)
    head_model.ir_version = proto.ir_version
    session = ort.InferenceSession(head_model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    basis = np.vstack([np.zeros((1, dim)), np.eye(dim)]).astype(np.float32)
    feed: dict[str, np.ndarray] = {EMBEDDING: basis}
    for value in inputs:  # other model inputs the head reads (zeros: their shape gives the batch size)
        dims = [d.dim_value if d.HasField("dim_value") else len(basis) for d in value.type.tensor_type.shape.dim]
        feed[value.name] = np.zeros(dims, np.float32)
    result = {}
    for name, out in zip(outputs, session.run(list(outputs), feed), strict=True):
        out = np.asarray(out, np.float64)
        result[name] = ((out[1:] - out[0]).T, out[0])
    return result


@dataclass
class PersonNorm:
    """A person's embedding statistics from their own history (no labels)."""

    mean: np.ndarray
    std: np.ndarray
    n: int

    @classmethod
    def of(cls, embeddings: np.ndarray) -> PersonNorm:
        e = np.asarray(embeddings, np.float64)
        if e.ndim != 2 or len(e) < 2:
            raise InputError(f"person normalisation needs at least 2 embeddings (got {len(e)})")
        std = e.std(0)
        # a feature that does not move for this person (a dead unit) keeps unit scale
        std = np.where(std > 1e-6 * max(float(std.max()), 1e-12), std, 1.0)
        return cls(e.mean(0), std, int(len(e)))

    def apply(self, embeddings: np.ndarray) -> np.ndarray:
        return (np.asarray(embeddings, np.float64) - self.mean) / self.std


@dataclass
class Adaptation:
    """The head used for one person and output, with why it was (or was not) adapted."""

    head: Head  # in raw embedding coordinates (the normalisation folded in)
    adapted: bool
    reason: str
    counts: dict[str, int]
    strength: float
    loo_adapted: float | None = None
    loo_population: float | None = None
    fit_seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def _prototype_head(
    w0: np.ndarray, b0: np.ndarray, z: np.ndarray, y: np.ndarray, weight: float
) -> tuple[np.ndarray, np.ndarray]:
    """The population head (in person-standardised coordinates) plus ``weight`` times the cosine similarity
    to the person's class prototypes, as an affine head.

    A person-standardised embedding has length about sqrt(D), so ``z . p / sqrt(D)`` with ``p`` the unit
    prototype scaled to sqrt(D) is its cosine similarity to that prototype: the blend stays affine, so
    the adapted head is a plain weight matrix and bias like the population one. Each class's share is
    shrunk by its count, n / (n + 1): a prototype from one example counts half, from four 4/5. A class
    without examples gets the mean of the others (no class is pushed up or down for lacking examples).
    """
    classes, dim = w0.shape
    protos = np.zeros((classes, dim))
    share = np.zeros(classes)
    present = np.zeros(classes, dtype=bool)
    for c in range(classes):
        mine = y == c
        if mine.any():
            mean = z[mine].mean(0)
            protos[c] = mean / max(float(np.linalg.norm(mean)), 1e-9) * np.sqrt(dim)
            share[c] = mine.sum() / (mine.sum() + 1.0)
            present[c] = True
    protos[~present] = protos[present].mean(0)
    share[~present] = share[present].mean()
    return w0 + (weight / dim) * share[:, None] * protos, b0.copy()


def _loo_accuracy(w0: np.ndarray, b0: np.ndarray, z: np.ndarray, y: np.ndarray, weight: float) -> float:
    hits = 0
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        if len(np.unique(y[keep])) == 0:
            continue
        w, b = _prototype_head(w0, b0, z[keep], y[keep], weight)
        hits += int((z[i] @ w.T + b).argmax() == y[i])
    return hits / len(y)


def adapt_head(
    population: Head, norm: PersonNorm, embeddings: np.ndarray, labels: np.ndarray,
    weights: Sequence[float] = BLEND_WEIGHTS,
) -> Adaptation:
    """Adapt ``population`` to a person from their labelled ``embeddings`` (N, D) and class indices ``labels``.

    The blend weight is chosen among ``weights`` by leave-one-out accuracy on the enrollment (ties: the
    smaller weight); the population head (weight 0) is kept unless that accuracy is above the population
    head's on the same examples, so an adapted head is never worse on the enrollment under leave-one-out.
    Raises InputError for fewer than two classes (one class gives nothing to tell apart).
    """
    started = time.perf_counter()
    e = np.asarray(embeddings, np.float64)
    y = np.asarray(labels, np.int64)
    classes = len(population.labels)
    if e.ndim != 2 or e.shape[1] != population.weight.shape[1] or len(e) != len(y):
        raise InputError(
            f"adapt {population.output}: expected embeddings (N, {population.weight.shape[1]}) and N labels, "
            f"got {e.shape} and {y.shape}"
        )
    if len(y) and (y.min() < 0 or y.max() >= classes):
        raise InputError(f"adapt {population.output}: label index outside 0..{classes - 1}")
    present = np.unique(y)
    counts = {population.labels[c]: int((y == c).sum()) for c in range(classes)}
    if len(present) < 2:
        shown = ", ".join(f"{k} {v}" for k, v in counts.items() if v) or "none"
        raise InputError(
            f"adapt {population.output}: the enrollment has {len(present)} class ({shown}); "
            "it needs examples of at least 2 classes"
        )
    # the population head in person-standardised coordinates (the same predictions): the prior
    w0 = population.weight * norm.std
    b0 = population.bias + population.weight @ norm.mean
    z = norm.apply(e)
    loo_p = float(((z @ w0.T + b0).argmax(1) == y).mean())
    loo = {float(w): _loo_accuracy(w0, b0, z, y, float(w)) for w in sorted(weights)}
    best = max(loo, key=lambda w: (loo[w], -w))  # ties: the weight closest to the population head
    if loo[best] > loo_p:
        adapted = True
        reason = (
            f"blend weight {best:g} chosen on {len(y)} examples of {len(present)} classes: leave-one-out "
            f"accuracy {loo[best]:.3f} adapted > {loo_p:.3f} population"
        )
    else:
        adapted = False
        reason = (
            f"kept the population head: leave-one-out accuracy on the {len(y)} enrollment examples "
            f"{loo[best]:.3f} adapted (best blend weight {best:g}) <= {loo_p:.3f} population"
        )
    if adapted:  # fold the normalisation back in: raw-embedding weights
        w, b = _prototype_head(w0, b0, z, y, best)
        w_raw = w / norm.std
        head = Head(population.output, population.labels, w_raw, b - w_raw @ norm.mean, "adapted")
    else:
        head = population
    return Adaptation(
        head=head, adapted=adapted, reason=reason, counts=counts, strength=best if adapted else 0.0,
        loo_adapted=loo[best], loo_population=loo_p, fit_seconds=time.perf_counter() - started,
    )
