"""``emoedge bench``: latency, throughput, memory, accuracy (and power on a Jetson) per model x backend x precision.

``emoedge bench e2e [OPTIONS]`` hands over to the sensor bridge's end-to-end benchmark
(``edge.bench.e2e.main(argv)``) where that is installed.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import Any

from edge.errors import BackendUnavailable, EmoEdgeError, InputError
from edge.kinds import PRECISIONS
from edge.verbs import add_verb


def _csv(kind: type, choices: tuple[str, ...] | None = None):  # type: ignore[no-untyped-def]
    def parse(text: str) -> list[Any]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        if not items:
            raise argparse.ArgumentTypeError("expected a comma-separated list")
        try:
            values = [kind(t) for t in items]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind.__name__} values, got {text!r}") from None
        if choices:
            bad = [v for v in values if v not in choices]
            if bad:
                raise argparse.ArgumentTypeError(f"unknown {', '.join(map(str, bad))} (choose from {', '.join(choices)})")
        if kind is int and any(v < 1 for v in values):
            raise argparse.ArgumentTypeError("batch sizes must be 1 or more")
        return values

    return parse


def register(sub: Any) -> None:
    from edge.bench import BENCH_BACKENDS

    parser = add_verb(
        sub, "bench",
        "benchmark models: latency p50/p90/p99, throughput, load time, memory, accuracy, energy on a Jetson",
        "  emoedge bench                                  # every model, ONNX Runtime CPU, FP32/FP16/INT8\n"
        "  emoedge bench face --batch 1,8,32 --threads 2 --out results/\n"
        "  emoedge bench --backends onnxruntime,tensorrt --device-report   # on a Jetson\n"
        "  emoedge bench --compare results/bench.json --fail-on-regression\n"
        "  emoedge bench e2e --duration 30               # the sensor bridge's end-to-end benchmark",
    )
    parser.add_argument("models", nargs="*", metavar="MODEL",
                        help="model names or folders (default: every model with a card); 'e2e' for the end-to-end mode")
    parser.add_argument("--backends", type=_csv(str, BENCH_BACKENDS), default=["onnxruntime"],
                        help=f"comma-separated, from {', '.join(BENCH_BACKENDS)} (default: onnxruntime)")
    parser.add_argument("--precisions", type=_csv(str, PRECISIONS), default=list(PRECISIONS),
                        help="comma-separated (default: fp32,fp16,int8)")
    parser.add_argument("--batch", type=_csv(int), default=[1, 8, 32], help="batch sizes for throughput (default: 1,8,32)")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0 = one per core)")
    parser.add_argument("--warmup", type=int, default=20, help="warm-up calls before timing (default: 20)")
    parser.add_argument("--iterations", type=int, default=200, help="timed batch-1 calls (default: 200)")
    parser.add_argument("--seconds", type=float, default=1.0, help="time spent at each batch size for throughput (default: 1)")
    parser.add_argument("--out", default="bench_results", help="folder for bench.json, bench.csv, bench.md, plots")
    parser.add_argument("--data", help="research data folder for accuracy (default: EMOEDGE_DATA or ../shared/data)")
    parser.add_argument("--no-data", action="store_true", help="skip accuracy; agreement with FP32 on random inputs")
    parser.add_argument("--limit", type=int, default=1000, help="validation samples per model (0 = the whole split)")
    parser.add_argument("--no-peer", action="store_true", help="leave out the mini-Xception face peer")
    parser.add_argument("--no-plots", action="store_true", help="write no PNG plots")
    parser.add_argument("--compare", metavar="BASELINE.json", help="print each figure as a ratio to an earlier run")
    parser.add_argument("--tolerance", type=float, default=0.10, help="change counted as a regression (default: 0.10)")
    parser.add_argument("--fail-on-regression", action="store_true", help="exit 1 when a figure got worse than --tolerance")
    parser.add_argument("--device-report", action="store_true",
                        help="on a Jetson: sample tegrastats (power, loads, temperatures) and add energy per inference")
    parser.add_argument("--tegrastats-interval", type=int, default=100, metavar="MS", help="tegrastats interval (default: 100)")
    parser.add_argument("--models", dest="models_dir", help="models folder (default: EMOEDGE_MODELS or models/)")
    parser.set_defaults(func=run)
    _pass_e2e_through(parser)


def _pass_e2e_through(parser: argparse.ArgumentParser) -> None:
    """``emoedge bench e2e ARGS...`` hands ARGS unparsed to the end-to-end benchmark, which has options of its own.

    argparse calls the verb parser's ``parse_known_args`` with the words after ``bench`` (Python 3.10 to 3.13);
    where it does not, ``emoedge bench e2e -- ARGS`` still reaches the same place through ``run``.
    """
    parse = parser.parse_known_args

    def parse_known_args(args: Any = None, namespace: Any = None) -> Any:
        words = list(sys.argv[1:] if args is None else args)
        if words[:1] == ["e2e"]:
            namespace = namespace if namespace is not None else argparse.Namespace()
            namespace.func, namespace.e2e_argv = _run_e2e_args, words[1:]
            return namespace, []
        return parse(args, namespace)

    parser.parse_known_args = parse_known_args  # type: ignore[method-assign]


def _run_e2e_args(args: argparse.Namespace) -> int:
    return run_e2e(args.e2e_argv)


def run_e2e(argv: list[str]) -> int:
    """Dispatch to the sensor bridge's end-to-end benchmark, which lives in edge/bench/e2e.py."""
    try:
        module = importlib.import_module("edge.bench.e2e")
    except ModuleNotFoundError as exc:
        if exc.name != "edge.bench.e2e":
            raise
        raise EmoEdgeError(
            "the end-to-end benchmark (edge/bench/e2e.py, part of the sensor bridge) is not in this install; "
            "'emoedge bench MODEL ...' measures the models alone"
        ) from None
    return int(module.main(argv[1:] if argv[:1] == ["--"] else argv) or 0)


def run(args: argparse.Namespace) -> int:
    if args.models[:1] == ["e2e"]:
        return run_e2e(args.models[1:])

    from edge.bench import harness, report
    from edge.paths import data_dir

    if args.iterations < 1 or args.warmup < 0:
        raise InputError("--iterations must be 1 or more and --warmup 0 or more")
    if args.device_report:
        from edge.bench.tegrastats import TegrastatsSampler

        if not TegrastatsSampler.available():
            raise BackendUnavailable(
                "--device-report needs tegrastats, which L4T ships on a Jetson; it is not on PATH here "
                "(run without --device-report, or on the Jetson)"
            )
    data = None
    if not args.no_data:
        data = data_dir(args.data)
        if not data.is_dir():
            if args.data:
                raise InputError(f"--data {args.data}: no such folder")
            data = None
    options = harness.BenchOptions(
        backends=args.backends, precisions=args.precisions, batches=args.batch, threads=args.threads,
        warmup=args.warmup, iterations=args.iterations, data_dir=data, limit=args.limit or None,
        throughput_seconds=args.seconds,
    )
    targets = harness.targets_from_models(args.models, args.models_dir)
    notes = []
    if data is None:
        notes.append("no data folder: accuracy not measured; top-1 agreement with FP32 on random inputs")
    faces = [t for t in targets if t.card.modality == "face"]
    if not args.no_peer and (faces or not args.models):
        from edge.bench.peer import peer_target

        peer, why = peer_target(data, faces[0].card if faces else None)
        if peer is not None:
            targets.append(peer)
        else:
            notes.append(why)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.device_report:
        from edge.bench.tegrastats import TegrastatsSampler

        with TegrastatsSampler(interval_ms=args.tegrastats_interval) as sampler:
            sampler.wait_for_samples(2, timeout=10 * args.tegrastats_interval / 1000 + 2)
            result = harness.run_bench(targets, options, sampler=sampler)
        result["tegrastats"] = {"interval_ms": args.tegrastats_interval, "lines": len(sampler.samples),
                                "unparsed_lines": sampler.bad_lines}
    else:
        result = harness.run_bench(targets, options)
    result["notes"] = notes + result["notes"]
    from edge.bench import scene as scene_bench  # explanation latency of models with a decoder

    scene_bench.add_to_rows(result, args.threads, min(args.iterations, 50), args.models_dir)

    table = report.markdown(result) + scene_bench.markdown(result)
    (out / "bench.md").write_text(table + "\n", encoding="utf-8")
    report.write_json(result, out / "bench.json")
    report.write_csv(result, out / "bench.csv")
    written = ["bench.md", "bench.json", "bench.csv"]
    if not args.no_plots:
        from edge.bench.plots import matplotlib_available, write_plots

        if matplotlib_available():
            written += [p.name for p in write_plots(result, out)]
        else:
            print("plots skipped: matplotlib is not installed (pip install 'emoedge[plots]')", file=sys.stderr)
    print(table)
    print(f"\nwrote {', '.join(written)} to {out}", file=sys.stderr)

    status = 0
    if args.compare:
        text, worse = report.compare(result, report.load_result(args.compare), args.tolerance)
        print("\nCompared with " + args.compare + ":\n\n" + text)
        (out / "compare.md").write_text(text + "\n", encoding="utf-8")
        if worse:
            print("\nworse than the baseline:\n  " + "\n  ".join(worse), file=sys.stderr)
            if args.fail_on_regression:
                status = 1
    return status
