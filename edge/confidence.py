"""Where a model's outputs become a confidence: calibrated probabilities and out-of-distribution scores.

One definition for the runtime (``edge.pipeline.readout.OutputReader``) and for ``emoedge eval``, so that the
confidence a device publishes is the one that eval measured, and fusion, which weighs each modality by
its confidence, is not led by a model that is sure and wrong.

* Temperature scaling (Guo et al., ICML 2017): ``softmax(logits / T)``, one ``T`` per logits output,
  fitted on held-out data by minimising the negative log-likelihood. The winning label never changes;
  only how sure the model says it is.
* Expected calibration error: 15 equal-width bins of the top-class probability, the gap between mean
  confidence and accuracy in each, weighted by the bin's share of samples.
* Out-of-distribution score (after Lee et al., NeurIPS 2018): the Mahalanobis distance of the model's
  ``embedding`` output to the nearest class centre of the training data, with one covariance shared by
  the classes, measured along that covariance's lowest-variance axes (so that the statistics fit in the
  card: a mean, a ``k x D`` whitening projection and ``K x k`` class centres). The score is divided by
  the threshold stored with it, so 1.0 is the line: above it the input is unlike anything the model was
  trained on and its estimate says ``unknown``.
* Background direction (after outlier exposure, Hendrycks et al., ICLR 2019; used by the face models): a
  logistic regression on the (transformed) embedding that tells the training data from examples of what
  the model will meet but must not name (random crops of photographs, for a face model), fitted with the
  log-distance as a fixed offset, so that it adds only what the distance misses. The distance is then
  ``mahalanobis * exp(w . x + b)``: the odds of "not a training-like input", still positive, still divided
  by the threshold. A class-centred distance alone cannot tell a blurred face-like texture from a face
  when the network never saw one; the direction can, and costs one dot product at run time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

ECE_BINS = 15


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis (numerically stable)."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def probabilities(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Calibrated probabilities of one logits output: ``softmax(logits / temperature)``.

    The one place where logits become probabilities, at run time and in eval.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    return softmax(np.asarray(logits, dtype=np.float64) / float(temperature))


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the true labels under ``probabilities(logits, temperature)``."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-log_p[np.arange(len(labels)), np.asarray(labels, dtype=np.int64)].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray, lo: float = 0.05, hi: float = 20.0) -> float:
    """The temperature that minimises the NLL of ``labels`` (golden-section search on log T; NLL is
    convex in 1/T, so a one-dimensional search finds the optimum)."""
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) == 0:
        raise ValueError("fit_temperature: no samples")
    a, b = np.log(lo), np.log(hi)
    g = (np.sqrt(5.0) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = nll(logits, labels, np.exp(c)), nll(logits, labels, np.exp(d))
    for _ in range(80):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = nll(logits, labels, np.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = nll(logits, labels, np.exp(d))
    return float(np.exp((a + b) / 2))


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE of the top-class probability over ``bins`` equal-width bins of (0, 1]."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) == 0:
        return 0.0
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        m = which == b
        if m.any():
            ece += m.mean() * abs(conf[m].mean() - correct[m].mean())
    return float(ece)


def ece_null(probs: np.ndarray, draws: int = 200, seed: int = 0, clusters: np.ndarray | None = None) -> np.ndarray:
    """ECEs that a perfectly calibrated model with these probabilities shows on this many samples: one per
    label set drawn from the probabilities (``draws`` of them), the yardstick of a measured ECE.

    ``clusters`` (an id per sample) marks samples that share one label, as the 1-s windows of one rated EEG
    segment do: each cluster then draws one label, from its samples' mean probabilities, for all of them. Such
    a set holds as much evidence as its clusters, not its samples, and its ECE spreads accordingly."""
    probs = np.asarray(probs, dtype=np.float64)
    if len(probs) == 0:
        return np.zeros(1)
    rng = np.random.default_rng(seed)
    if clusters is None:
        member, drawn = np.arange(len(probs)), probs
    else:
        _, member = np.unique(np.asarray(clusters), return_inverse=True)
        drawn = np.stack([probs[member == c].mean(axis=0) for c in range(member.max() + 1)])
    cum = np.cumsum(drawn, axis=1)
    out = []
    for _ in range(draws):
        labels = np.minimum((rng.random((len(drawn), 1)) > cum).sum(axis=1), probs.shape[1] - 1)
        out.append(expected_calibration_error(probs, labels[member]))
    return np.asarray(out)


def ece_floor(probs: np.ndarray, draws: int = 200, seed: int = 0, clusters: np.ndarray | None = None) -> float:
    """The mean of ``ece_null``: ECE's bias on a small set, below which a measured ECE says nothing more."""
    return float(ece_null(probs, draws, seed, clusters).mean())


def ece_p_value(null: np.ndarray, measured: float) -> float:
    """The share of a perfectly calibrated model's ECEs (``ece_null``) at least as large as ``measured``, counting
    the measurement itself: near 0 when the ECE shows real miscalibration, large when it is the sample's noise.
    Samples are as independent as ``ece_null`` took them (give it the clusters of samples that share a label)."""
    return float((np.sum(null >= measured) + 1) / (len(null) + 1))


def calibration_metrics(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """``ece`` (15 bins), ``mean_confidence`` (mean top-class probability) and ``nll`` of probabilities."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    p_true = np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1.0)
    return {
        "ece": expected_calibration_error(probs, labels),
        "mean_confidence": float(probs.max(axis=1).mean()) if len(labels) else 0.0,
        "nll": float(-np.log(p_true).mean()) if len(labels) else 0.0,
    }


def folds_of(labels: np.ndarray, groups: Sequence[Any] | np.ndarray | None, k: int = 5, seed: int = 0) -> np.ndarray:
    """A fold index per sample for cross-fitting: one fold per group (speaker, subject) when there are
    groups, else ``k`` stratified random folds (seeded)."""
    labels = np.asarray(labels)
    if groups is not None and len(set(np.asarray(groups).tolist())) >= 2:
        names = sorted(set(np.asarray(groups).tolist()), key=str)
        index = {g: i for i, g in enumerate(names)}
        return np.array([index[g] for g in np.asarray(groups).tolist()], dtype=np.int64)
    rng = np.random.default_rng(seed)
    fold = np.zeros(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        fold[members] = np.arange(len(members)) % k
    return fold


def cross_fitted_probabilities(logits: np.ndarray, labels: np.ndarray, folds: np.ndarray) -> tuple[np.ndarray, list[float]]:
    """Probabilities of every sample under a temperature fitted on the other folds only, and those
    temperatures: an honest estimate of calibration after fitting, without a second held-out set."""
    logits = np.asarray(logits, dtype=np.float64)
    out = np.zeros_like(logits)
    temps = []
    for f in np.unique(folds):
        test = folds == f
        t = fit_temperature(logits[~test], labels[~test])
        temps.append(t)
        out[test] = probabilities(logits[test], t)
    return out, temps


def restricted(logits: np.ndarray, keep: Sequence[int]) -> np.ndarray:
    """Logits with every class outside ``keep`` pushed to -inf-like values: scoring a foreign corpus among the
    classes it has (the usual cross-corpus protocol). Softmax over the result renormalises over ``keep``."""
    out = np.full_like(np.asarray(logits, dtype=np.float64), -1e9)
    idx = np.asarray(list(keep), dtype=np.int64)
    out[:, idx] = np.asarray(logits, dtype=np.float64)[:, idx]
    return out


# --- out-of-distribution ------------------------------------------------------------------------
TRANSFORMS = ("none", "l2")
# (transform, minor axes, major axes) that ``emoedge eval --fit-ood`` chooses among, by the outliers given
# (64 axes: a face detector's false positives, real non-face crops, stand out only along more of them)
OOD_CANDIDATES = [(t, minor, major) for t in TRANSFORMS for minor, major in ((32, 0), (0, 32), (32, 32), (64, 0), (0, 64))]


def transform_embedding(embeddings: np.ndarray, transform: str) -> np.ndarray:
    """``none``, or ``l2``: each embedding scaled to unit length (its direction only)."""
    x = np.asarray(embeddings, dtype=np.float64).reshape(len(embeddings), -1)
    if transform == "l2":
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    if transform != "none":
        raise ValueError(f"unknown embedding transform '{transform}' (expected one of {', '.join(TRANSFORMS)})")
    return x


def fit_mahalanobis(
    embeddings: np.ndarray, labels: np.ndarray, minor: int = 32, major: int = 0, shrinkage: float = 0.02,
    transform: str = "none",
) -> dict[str, Any]:
    """Training statistics for ``mahalanobis``: the mean, a whitening projection (``k x D``) and class centres.

    The covariance shared by the classes (within-class scatter, shrunk by ``shrinkage`` towards a scaled
    identity) is whitened along its ``minor`` lowest-variance axes (and its ``major`` highest). The low-variance
    axes often carry the signal: what the training data never varies in is where a foreign input shows (the
    speech model's synthetic-speech outliers stand out along them and hardly along the highest-variance
    axes); keeping only some axes keeps the card small.
    """
    x = transform_embedding(embeddings, transform)
    y = np.asarray(labels, dtype=np.int64)
    mean = x.mean(axis=0)
    classes = np.unique(y)
    centres = np.stack([x[y == c].mean(axis=0) for c in classes])
    within = x - centres[np.searchsorted(classes, y)]
    dim = x.shape[1]
    cov = within.T @ within / max(1, len(x) - len(classes))
    cov = (1 - shrinkage) * cov + shrinkage * np.trace(cov) / dim * np.eye(dim)
    evals, evecs = np.linalg.eigh(cov)  # ascending
    axes = np.unique(np.concatenate([np.arange(min(minor, dim)), np.arange(dim - min(major, dim), dim)]))
    projection = (evecs[:, axes] / np.sqrt(evals[axes])).T  # k x D
    return {
        "mean": mean,
        "projection": projection,
        "centres": (centres - mean) @ projection.T,
        "classes": [int(c) for c in classes],
        "components": int(len(axes)),
        "transform": transform, "minor": int(min(minor, dim)), "major": int(min(major, dim)),
    }


def mahalanobis(embeddings: np.ndarray, stats: Mapping[str, Any]) -> np.ndarray:
    """Squared Mahalanobis distance of each embedding to its nearest class centre (``fit_mahalanobis``),
    divided by the subspace's dimension (about 1 for a typical training sample)."""
    return _distance(transform_embedding(embeddings, str(stats.get("transform", "none"))), stats)


def _distance(x: np.ndarray, stats: Mapping[str, Any]) -> np.ndarray:
    """``mahalanobis`` of embeddings already transformed."""
    w = (x - np.asarray(stats["mean"], np.float64)) @ np.asarray(stats["projection"], np.float64).T
    c = np.asarray(stats["centres"], np.float64)
    d2 = ((w[:, None, :] - c[None, :, :]) ** 2).sum(axis=2).min(axis=1)
    return d2 / c.shape[1]


BACKGROUND_PENALTY = 1e-3  # L2 penalty of the background direction (weights' squared norm / 2, per sample weight)


def fit_background(
    inliers: np.ndarray, background: np.ndarray, stats: Mapping[str, Any], penalty: float = BACKGROUND_PENALTY
) -> dict[str, Any]:
    """A background direction for ``ood_distance``: logistic regression of "background" on the transformed
    embedding, ``inliers`` (training-like, label 0) against ``background`` (label 1), the two classes weighted
    equally, with ``log(mahalanobis)`` under ``stats`` as a fixed offset. Returns ``{"weights", "bias"}``."""
    from scipy.optimize import minimize

    if len(inliers) == 0 or len(background) == 0:
        raise ValueError("fit_background: needs inliers and background examples")
    x = np.concatenate([transform_embedding(inliers, str(stats.get("transform", "none"))),
                        transform_embedding(background, str(stats.get("transform", "none")))])
    y = np.r_[np.zeros(len(inliers)), np.ones(len(background))]
    offset = np.log(np.maximum(mahalanobis(np.concatenate([inliers, background]), stats), 1e-12))
    weight = np.where(y == 1, 0.5 / len(background), 0.5 / len(inliers))
    dim = x.shape[1]

    def loss(p: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = p[:dim], p[dim]
        z = x @ w + b + offset
        g = weight * (0.5 * (1.0 + np.tanh(0.5 * z)) - y)  # d loss / d z (the sigmoid, overflow-free)
        value = float((weight * (np.logaddexp(0.0, z) - y * z)).sum() + 0.5 * penalty * (w @ w))
        return value, np.r_[x.T @ g + penalty * w, g.sum()]

    p = minimize(loss, np.zeros(dim + 1), jac=True, method="L-BFGS-B").x
    return {"weights": p[:dim], "bias": float(p[dim])}


def ood_distance(embeddings: np.ndarray, stats: Mapping[str, Any]) -> np.ndarray:
    """``mahalanobis``, times ``exp(w . x + b)`` where the statistics carry a background direction
    (``fit_background``: ``stats["background"]`` = (weights, bias))."""
    x = transform_embedding(embeddings, str(stats.get("transform", "none")))
    distance = _distance(x, stats)
    background = stats.get("background")
    if background is None:
        return distance
    weights, bias = background
    return distance * np.exp(np.clip(x @ np.asarray(weights, np.float64) + float(bias), -50.0, 50.0))


def ood_score(embeddings: np.ndarray, stats: Mapping[str, Any], threshold: float) -> np.ndarray:
    """``ood_distance`` divided by the card's threshold: above 1.0 the input is out of distribution."""
    return ood_distance(embeddings, stats) / float(threshold)


def auroc(inliers: np.ndarray, outliers: np.ndarray) -> float:
    """Area under the ROC curve of a score that should be higher for outliers (ties count half)."""
    a = np.asarray(inliers, dtype=np.float64)
    b = np.asarray(outliers, dtype=np.float64)
    if len(a) == 0 or len(b) == 0:
        return float("nan")
    scores = np.concatenate([a, b])
    order = scores.argsort(kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    # average ranks of ties
    i = 0
    while i < len(scores):
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    rank_sum = ranks[len(a):].sum()
    return float((rank_sum - len(b) * (len(b) + 1) / 2) / (len(a) * len(b)))


def choose_threshold(inliers: np.ndarray, max_false_rejection: float = 0.05) -> float:
    """The distance above which an input is called out of distribution: the lowest one that rejects at most
    ``max_false_rejection`` of the held-out inliers. For any outlier set that is also the threshold that
    flags the most outliers under that constraint (a higher one can only flag fewer)."""
    a = np.sort(np.asarray(inliers, dtype=np.float64))
    if len(a) == 0:
        raise ValueError("choose_threshold: no inliers")
    return float(a[min(len(a) - 1, int(np.ceil((1 - max_false_rejection) * len(a))) - 1)])
