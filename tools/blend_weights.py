"""Blend a fine-tuned model with the model it started from: weights (1 - alpha) * start + alpha * fine-tuned.

Fine-tuning a one-corpus model on more corpora (``emoedge train speech --set init=models/speech --set
extra_data=...``) trades some of what it knew for what it learns. Interpolating the weights of the two
(WiSE-FT, Wortsman et al. 2022) keeps much of both, because a fine-tuned model stays in its start's basin.
Both files must be the same graph (the fine-tuned one's card names the other as its ``init``), with the same
input statistics; the output is the fine-tuned model's folder (card and all) with blended weights and a note.

    python tools/blend_weights.py models/speech /tmp/sp/A --alpha 0.5 --out /tmp/sp/blend
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edge.card import load_card, save_card  # noqa: E402
from edge.errors import ConfigError  # noqa: E402


def blend(start: Path, tuned: Path, alpha: float, out: Path) -> Path:
    """Write ``out`` (a model folder): ``tuned``'s folder with every float initializer blended with ``start``'s."""
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"--alpha must lie in [0, 1] (got {alpha})")
    a, b = onnx.load(str(start / "model.onnx")), onnx.load(str(tuned / "model.onnx"))
    first = {t.name: numpy_helper.to_array(t) for t in a.graph.initializer}
    if [n.op_type for n in a.graph.node] != [n.op_type for n in b.graph.node]:
        raise ConfigError(f"{start} and {tuned}: not the same graph (their operators differ)")
    start_params = load_card(start / "card.toml").features.params
    tuned_params = load_card(tuned / "card.toml").features.params
    for key in ("population_mean", "population_std", "loudness_norm"):
        if start_params.get(key) != tuned_params.get(key):
            raise ConfigError(f"{start} and {tuned}: different input statistics ({key}); blending needs the same inputs")
    for tensor in b.graph.initializer:
        second = numpy_helper.to_array(tensor)
        if tensor.name not in first or first[tensor.name].shape != second.shape:
            raise ConfigError(f"{start} has no weight {tensor.name} of shape {list(second.shape)}")
        if np.issubdtype(second.dtype, np.floating):
            mixed = ((1.0 - alpha) * first[tensor.name] + alpha * second).astype(second.dtype)
            tensor.CopyFrom(numpy_helper.from_array(mixed, tensor.name))
    if out.resolve() != tuned.resolve():
        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(tuned, out)
    onnx.save(b, str(out / "model.onnx"))
    card = load_card(out / "card.toml")
    card.notes = (card.notes or "") + (f" Weights blended with the model it started from: {1 - alpha:g} x {start} + "
                                       f"{alpha:g} x the fine-tuned one (python tools/blend_weights.py {start} FINE_TUNED "
                                       f"--alpha {alpha:g}).")
    card.artifacts, card.metrics = [], []
    save_card(card, out / "card.toml")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("start", type=Path, help="the model folder fine-tuning started from")
    parser.add_argument("tuned", type=Path, help="the fine-tuned model folder (same graph and input statistics)")
    parser.add_argument("--alpha", type=float, default=0.5, help="weight of the fine-tuned model (default 0.5)")
    parser.add_argument("--out", type=Path, required=True, help="model folder to write")
    args = parser.parse_args(argv)
    try:
        print(blend(args.start, args.tuned, args.alpha, args.out))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
