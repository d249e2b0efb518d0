"""Peak memory of one model on one backend, measured in a fresh process.

In the bench process, memory freed by an earlier row stays with the allocator and is handed to the
next row without growing the resident set, so an in-process delta flatters every row after the first.
A child process that imports the runtime, notes its resident set, then loads the model and runs it at
every batch size, reports a number that belongs to that model alone. Linux's ``VmHWM`` (peak resident
set) sees ONNX Runtime's and TensorRT's native allocations, which tracemalloc does not.

    python -m edge.bench.memory --path model.onnx --backend onnxruntime --batches 1,8,32
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np

METHOD = "separate process: peak RSS (VmHWM) after loading and running every batch size, minus RSS after imports"


def _status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def measure_in_child(
    path: Path, backend: str, batches: Sequence[int], threads: int = 0, folder: Path | None = None,
    precision: str = "fp32", pool: dict[str, np.ndarray] | None = None, timeout: float = 600,
) -> dict[str, Any]:
    """Run this module in a child; returns {"peak_mib", "method"} or {"peak_mib": None, "error"}."""
    with tempfile.TemporaryDirectory(prefix="emoedge-mem-") as tmp:
        cmd = [sys.executable, "-m", "edge.bench.memory", "--path", str(path), "--backend", backend,
               "--batches", ",".join(map(str, batches)), "--threads", str(threads), "--precision", precision]
        if folder is not None:
            cmd += ["--folder", str(folder)]
        if pool is not None:
            np.savez(Path(tmp) / "pool.npz", **cast(dict[str, Any], pool))
            cmd += ["--pool", str(Path(tmp) / "pool.npz")]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"peak_mib": None, "error": f"memory probe ran over {timeout:.0f} s"}
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()
        return {"peak_mib": None, "error": f"memory probe failed (exit {done.returncode}): {tail[-1] if tail else ''}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edge.bench.memory", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--path", required=True, help="the ONNX file")
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--batches", default="1")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--folder", help="model folder (for TensorRT, which finds its engine through the card)")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--pool", help="an .npz of real inputs to feed (else random inputs)")
    args = parser.parse_args(argv)

    # Import everything a row imports before the baseline, so that only the model's memory is counted.
    import onnxruntime  # noqa: F401

    from edge.bench.targets import Target, fixed_batch, make_feed, open_target
    from edge.card import ModelCard

    if args.backend == "tensorrt":
        import tensorrt  # noqa: F401  # pyright: ignore[reportMissingImports]
    pool = dict(np.load(args.pool)) if args.pool else None
    if args.folder:
        from edge.card import load_card

        target = Target(name="probe", card=load_card(Path(args.folder) / "card.toml"), folder=Path(args.folder))
    else:
        target = Target(name="probe", card=ModelCard.model_construct(name=Path(args.path).stem), folder=None, artifacts={args.precision: Path(args.path)})
    _, runner = open_target(target, args.backend, args.precision, args.threads)
    rng = np.random.default_rng(0)
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
    except OSError:
        pass
    start = _status_kib("VmRSS")
    with runner:
        fixed = fixed_batch(runner)
        for batch in [int(b) for b in args.batches.split(",")]:
            if fixed and batch != fixed:
                continue
            feed = make_feed(runner, batch, pool, rng)
            for _ in range(3):
                runner.infer(feed)
        peak = _status_kib("VmHWM")
    if start is None or peak is None:
        print(json.dumps({"peak_mib": None, "error": "no /proc/self/status here (not Linux)"}))
        return 0
    print(json.dumps({"peak_mib": max(0, peak - start) / 1024, "method": METHOD}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
