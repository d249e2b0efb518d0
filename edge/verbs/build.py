"""``emoedge build NAME [--graph G] --precision P``: a TensorRT engine in the device-keyed cache, checked against FP32."""

from __future__ import annotations

import argparse
from typing import Any

from edge.kinds import PRECISIONS
from edge.verbs import add_verb


def register(sub: Any) -> None:
    parser = add_verb(
        sub, "build", "build (or reuse) the TensorRT engine of a model artifact for this GPU, and gate it",
        "  emoedge build face --precision int8 --max-batch 8\n"
        "  emoedge build eeg --precision fp16 --dla 0 --workspace 512\n"
        "  emoedge build scene --graph encoder --precision fp16 --data $EMOEDGE_DATA/emotion6_256\n"
        "  emoedge build scene --graph decoder --precision fp16 --data $EMOEDGE_DATA/emotion6_256\n"
        "  EMOEDGE_CACHE=/data/emoedge emoedge build speech --precision fp32 --force",
        description=(
            "Build a TensorRT engine from model.onnx, model.fp16.onnx or model.int8.onnx (QDQ) into the engine cache "
            "(EMOEDGE_CACHE, default: the user's cache folder), named by the graph file's sha256, TensorRT version, "
            "GPU, precision and profile, with a JSON manifest beside it. A model with several graphs (scene: encoder "
            "and decoder) builds one per call, named by --graph. A cached engine is reused; a stale one (graph file, "
            "TensorRT or GPU changed) is rebuilt. After a build the engine is compared with ONNX Runtime FP32 (top-1 "
            "agreement on the calibration samples, or on the held-out split of --data; a decoder: whole explanations "
            "of the held-out images of --data, by token agreement), and set aside when it disagrees beyond the "
            "card's allowance (exit 4). Needs TensorRT and a CUDA GPU (JetPack 6, or pip install 'emoedge[trt]')."
        ),
    )
    parser.add_argument("name", help="model name or folder")
    parser.add_argument("--graph", help="which graph of a model with several (scene: encoder or decoder)")
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS)
    parser.add_argument("--max-batch", type=int, help="largest batch of the optimization profile (default 8)")
    parser.add_argument("--opt-batch", type=int, help="batch TensorRT tunes for (default: --max-batch)")
    parser.add_argument("--beam", type=int, help="decoder: the largest beam the profile holds (default: the card's)")
    parser.add_argument("--max-tokens", type=int, help="decoder: the length cap the key/value cache profile holds "
                        "(default: the card's)")
    parser.add_argument("--data", help="labelled data folder whose held-out split the gate runs on (a decoder needs "
                        "it; default for other graphs: the calibration samples)")
    parser.add_argument("--limit", type=int, help="at most this many held-out samples for the gate (default: all)")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads of the gate's FP32 reference")
    parser.add_argument("--dla", type=int, metavar="CORE", help="build for this DLA core (Jetson; TensorRT 10 only)")
    parser.add_argument("--workspace", type=int, metavar="MB", help="builder workspace limit in MiB")
    parser.add_argument("--force", action="store_true", help="rebuild even when a cached engine fits")
    parser.add_argument("--models", help="models folder")
    parser.add_argument("--calibration", help="calibration folder (default: calibration/, or EMOEDGE_CALIBRATION)")
    parser.add_argument("--cache", help="cache folder (default: EMOEDGE_CACHE or the user's cache folder)")
    parser.add_argument("--json", action="store_true", help="the engine's manifest as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edge.export.build import build_engine
    from edge.export.gate import GateFailed

    outcome = build_engine(
        args.name, args.precision, max_batch=args.max_batch, opt_batch=args.opt_batch, workspace_mb=args.workspace,
        dla_core=args.dla, models=args.models, calibration=args.calibration, cache=args.cache, force=args.force,
        graph=args.graph, beam=args.beam, max_tokens=args.max_tokens, data=args.data, limit=args.limit,
        threads=args.threads,
    )
    key = outcome.manifest.key
    what = f"{args.precision} engine of {key.model}" + (f" ({key.graph})" if key.graph != "model" else "")
    if args.json:
        print(outcome.manifest.to_json())
    elif outcome.status == "cached":
        print(f"cached engine fits: {outcome.engine}")
    if outcome.gate is not None and not args.json:
        print(outcome.gate.describe(what))
    if outcome.status == "rejected":
        raise GateFailed(
            f"the engine disagrees with FP32 beyond the card's allowance; set aside in {outcome.engine} "
            "(status rejected, never used); the ONNX Runtime artifact stays in use"
        )
    if outcome.status == "built" and not args.json:
        print(f"built {outcome.engine} in {outcome.manifest.build_seconds:.1f} s"
              + (f" (rebuilt: {'; '.join(outcome.reasons)})" if outcome.reasons else ""))
    return 0

