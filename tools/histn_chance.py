"""How far from chance are the subject-independent DASPS results? A permutation test of the classical baseline.

The binary views (valence high, arousal high, anxious) of HiSTN and of the baseline (log band power +
logistic regression) sit near 0.5 balanced accuracy on subjects never seen. This script answers whether
that is signal: it reruns the baseline's leave-subjects-out cross-validation (the folds of HiSTN's
training report) with the self-ratings shuffled among the segments (each segment keeps its windows
together, so the number of independent labels stays what it is), many times, and prints where the
real baseline and the HiSTN figures of the training report fall in that null distribution.

    python tools/histn_chance.py --data ../shared/data/dasps --permutations 40 [--json OUT]

Needs the train extra (torch, for the baseline's logistic regression). Nothing is tuned here.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VIEWS = (("valence_high", "valence"), ("arousal_high", "arousal"), ("anxious", "anxious"))


def pooled_binary(w, scores: dict[str, np.ndarray], valence: np.ndarray, arousal: np.ndarray) -> dict[str, float]:
    from edge.evaluation.histn import balanced_accuracy
    from edge.zoo import dasps

    truth = {"valence_high": valence >= 5, "arousal_high": arousal >= 5, "anxious": dasps.anxious(valence, arousal)}
    return {name: balanced_accuracy(truth[key].astype(int), (scores[key] >= 0.5).astype(int)) for key, name in VIEWS}


def cross_validated_baseline(f: np.ndarray, w, folds: list[list[int]], recipe: dict) -> dict[str, np.ndarray]:
    from edge.zoo.histn_protocols import baseline_scores

    out = {key: np.zeros(len(w)) for key, _ in VIEWS}
    for held in folds:
        test = np.isin(w.subject, held)
        _, _, binary = baseline_scores(f, w, ~test, test, recipe)
        for key, value in binary.items():
            out[key][test] = value
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "dasps"))
    parser.add_argument("--report", default=str(ROOT / "models" / "histn" / "training_report.json"))
    parser.add_argument("--permutations", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the result here")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    from edge.zoo import dasps
    from edge.zoo.histn_protocols import baseline_features

    report = json.loads(Path(args.report).read_text())
    recipe, folds = report["recipe"], report["cross_validation"]["folds"]
    subjects = dasps.load_dasps(args.data)
    f, w = baseline_features(subjects, float(recipe["norm_s"]))
    t0 = time.perf_counter()
    real = pooled_binary(w, cross_validated_baseline(f, w, folds, recipe), w.valence, w.arousal)
    segments = np.unique(w.segment)
    rating = {s: (w.valence[w.segment == s][0], w.arousal[w.segment == s][0]) for s in segments}
    rng = np.random.default_rng(args.seed)
    null: dict[str, list[float]] = {name: [] for _, name in VIEWS}
    for i in range(args.permutations):
        shuffled = dict(zip(segments, rng.permutation([rating[s] for s in segments]), strict=True))
        valence = np.array([shuffled[s][0] for s in w.segment])
        arousal = np.array([shuffled[s][1] for s in w.segment])
        permuted = dasps.Windows(w.x, valence, arousal, w.subject, w.situation, w.phase, w.segment)
        scores = cross_validated_baseline(f, permuted, folds, recipe)
        for name, value in pooled_binary(permuted, scores, valence, arousal).items():
            null[name].append(value)
        print(f"permutation {i + 1}/{args.permutations} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    histn = report["cross_validation"]["methods"]["histn"]["pooled"]
    histn_binary = {"valence": histn["valence"]["binary"]["balanced_accuracy"],
                    "arousal": histn["arousal"]["binary"]["balanced_accuracy"],
                    "anxious": histn["anxious"]["balanced_accuracy"]}
    result = {"permutations": args.permutations, "segments": int(len(segments)), "views": {}}
    print(f"pooled binary balanced accuracy on unseen subjects, against {args.permutations} label permutations "
          f"({len(segments)} segments):")
    for _, name in VIEWS:
        values = np.asarray(null[name])
        lo, hi = np.percentile(values, [2.5, 97.5])
        p_real = float((1 + (values >= real[name]).sum()) / (1 + len(values)))
        p_histn = float((1 + (values >= histn_binary[name]).sum()) / (1 + len(values)))
        result["views"][name] = {"baseline": round(real[name], 4), "histn": round(histn_binary[name], 4),
                                 "null_mean": round(float(values.mean()), 4), "null_95": [round(float(lo), 4), round(float(hi), 4)],
                                 "p_baseline": round(p_real, 3), "p_histn": round(p_histn, 3)}
        print(f"  {name:8s} baseline {real[name]:.3f} (p {p_real:.2f})  HiSTN {histn_binary[name]:.3f} (p {p_histn:.2f})  "
              f"null {values.mean():.3f}, 95% {lo:.3f}-{hi:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
