"""``emoedge explain IMAGE...``: what a photograph feels like and why, from the scene model."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from edge.kinds import BACKENDS
from edge.verbs import add_verb


def register(sub: Any) -> None:
    parser = add_verb(
        sub, "explain", "the scene model on image files: emotion, valence/arousal and a one-sentence explanation",
        "  emoedge explain photo.jpg\n"
        "  emoedge explain a.jpg b.png --json --beam 1\n"
        "  emoedge explain photo.jpg --backend tensorrt   # on a Jetson, after emoedge build scene --graph ...\n"
        "\n"
        "Probabilities carry the card's temperature, as `emoedge run` publishes them; an image unlike anything\n"
        "the model was trained on (its OOD score above the card's threshold) or a flat frame reads 'unknown'\n"
        "and is not explained. A file that is not a usable image (not an image, truncated, too small, too\n"
        "large) is reported and skipped; the exit status is 1 when any file was refused.",
    )
    parser.add_argument("images", nargs="+", help="image files (JPEG, PNG, ...)")
    parser.add_argument("--model", default="scene", help="model name or folder (default: scene)")
    parser.add_argument("--models", help="models folder")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "int8"])
    parser.add_argument("--backend", default="onnxruntime", choices=BACKENDS,
                        help="both graphs; tensorrt runs the engines of emoedge build scene --graph encoder|decoder, "
                             "auto those that fit, else ONNX Runtime (default: onnxruntime)")
    parser.add_argument("--decoder-precision", default="fp32", choices=["fp32", "fp16", "int8"],
                        help="the decoder file to run (FP16/INT8 only as gated: emoedge quantize scene --graph decoder)")
    parser.add_argument("--beam", type=int, help="beam width (default: the card's; 1 = greedy)")
    parser.add_argument("--max-tokens", type=int, help="length cap (default: the card's, 24)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="one JSON object per image, one per line")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edge.card import load_model
    from edge.errors import InputError
    from edge.features.scene import is_grayscale, load_image
    from edge.fusion import UNKNOWN
    from edge.scene.data import EMOTIONS
    from edge.scene.model import SceneModel

    model = load_model(args.model, precision=args.precision, models=args.models)
    failed = 0
    with SceneModel(model, backend=args.backend, threads=args.threads, beam=args.beam, max_tokens=args.max_tokens,
                    decoder_precision=args.decoder_precision) as scene:
        for path in args.images:
            try:
                image = load_image(path)
            except InputError as exc:
                failed += 1
                print(json.dumps({"file": path, "error": str(exc)}) if args.json else f"{path}: error: {exc}")
                continue
            t0 = time.perf_counter()
            reading, est = scene.look(image)
            t1 = time.perf_counter()
            # as `emoedge run` publishes: calibrated probabilities, and nothing to explain in what the model
            # does not know (out of distribution, or a flat frame)
            exp = None if reading.label == UNKNOWN else scene.explain(est)
            t2 = time.perf_counter()
            record = {"file": path, "label": reading.label,
                      "probs": {e: round(float(reading.probs[e]), 4) for e in EMOTIONS},
                      "confidence": round(reading.confidence, 4),
                      "ood": None if reading.ood is None else round(reading.ood, 4),
                      "valence": round(float(est.va[0]), 4), "arousal": round(float(est.va[1]), 4),
                      "explanation": None if exp is None else exp.as_dict(), "grayscale": is_grayscale(image),
                      "ms": {"encoder": round((t1 - t0) * 1e3, 2), "decoder": round((t2 - t1) * 1e3, 2)}}
            if args.json:
                print(json.dumps(record))
                continue
            gray = " [grayscale input]" if record["grayscale"] else ""
            if exp is None:
                why = f"out of distribution (ood {reading.ood:.2f} > 1)" if reading.ood is not None and reading.ood > 1 \
                    else "no scene (a flat frame)"
                print(f"{path}: unknown: {why}{gray}; not explained")
                continue
            mark = " (truncated)" if exp.truncated else ""
            print(f"{path}: {reading.label} {max(reading.probs.values()):.2f}, valence {est.va[0]:+.2f}, "
                  f"arousal {est.va[1]:+.2f}{gray}: {exp.text}{mark}")
    return 1 if failed else 0
