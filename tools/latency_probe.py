#!/usr/bin/env python3
"""Batch-1 ONNX Runtime CPU time of models side by side: one thread, interleaved rounds, p50 and best.

    python tools/latency_probe.py models/face/model.onnx /path/to/peer.onnx
    qemu-x86_64 -cpu Haswell .venv/bin/python tools/latency_probe.py A.onnx B.onnx --rounds 3 --per 8 --warm 2

Why: on a shared machine wall-clock latency moves with the other processes, so this reads the calling
thread's CPU time (ONNX Runtime with one intra-op thread computes on the caller's thread). Under qemu's
emulation of a CPU you do not have (AVX2 without AVX-512: ``-cpu Haswell``) the figures are a proxy of the
instructions each model executes on that CPU, not its speed: compare ratios between models, never the
milliseconds. Needs only numpy and onnxruntime, so it runs under emulation as it is.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import onnxruntime as ort


def session(path: str) -> ort.InferenceSession:
    """A one-thread, sequential CPU session (the bench's setting for batch-1 latency)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="ONNX files with one float input (dynamic dims set to 1)")
    parser.add_argument("--rounds", type=int, default=10, help="rounds; each runs every model --per times")
    parser.add_argument("--per", type=int, default=100, help="calls per model per round")
    parser.add_argument("--warm", type=int, default=20, help="warm-up calls per model")
    args = parser.parse_args()
    sessions, feeds = [], []
    for path in args.models:
        s = session(path)
        spec = s.get_inputs()[0]
        shape = [d if isinstance(d, int) else 1 for d in spec.shape]
        feed = {spec.name: np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)}
        for _ in range(args.warm):
            s.run(None, feed)
        sessions.append(s)
        feeds.append(feed)
    times: list[list[float]] = [[] for _ in args.models]
    for _ in range(args.rounds):
        for k, (s, feed) in enumerate(zip(sessions, feeds, strict=True)):
            for _ in range(args.per):
                t = time.thread_time()
                s.run(None, feed)
                times[k].append((time.thread_time() - t) * 1000)
    for path, t in zip(args.models, times, strict=True):
        a = np.asarray(t)
        print(json.dumps({"model": path, "p50_ms": round(float(np.median(a)), 4), "best_ms": round(float(a.min()), 4),
                          "best_per_s": round(1000 / max(float(a.min()), 1e-9))}))


if __name__ == "__main__":
    main()
