#!/usr/bin/env python3
"""Check FP16/INT8 artifacts against FP32 on CPUs you do not have: one command, every instruction set.

    python tools/cpu_check.py face --data face=$EMOEDGE_DATA/fer2013/validation --limit 300
    python tools/cpu_check.py face speech eeg --data ... --targets native,x86-avx2,aarch64 --write-card
    python tools/cpu_check.py --setup-aarch64          # once: the arm64 Python and ONNX Runtime for qemu

Why: ONNX Runtime's INT8 kernels differ by instruction set (see ``edge/export/int8.py``), so an artifact
gated on one machine can answer differently on another. The model-ready inputs are made once, natively,
by the model's own evaluator (the same feature code as the runtime); then only ONNX Runtime inference
runs on each target, in a small worker that needs nothing but numpy and onnxruntime:

- ``native``: this machine as it is;
- ``x86-avx2``: ``qemu-x86_64 -cpu Haswell`` (AVX2 and FMA, no AVX-512, no VNNI), the venv's own Python;
- ``aarch64``: ``qemu-aarch64`` with Debian's arm64 Python and ONNX Runtime's aarch64 wheel (a Jetson's CPU
  path; made by ``--setup-aarch64``; ONNX Runtime 1.22, as 1.32's wheel does not start under qemu 7.2).

The outputs come back and are scored by the model's evaluator exactly as the quantization gate scores
them (task metric per head and top-1 agreement, against FP32 run on the same target). QEMU's TCG has no
AVX-512, so an AVX-512 machine can only be checked natively. ``--write-card`` records each target in the
artifact's ``verified_on`` list. Emulation is slow (about 0.3 s per face image): use ``--limit``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TARGETS = ("native", "x86-avx2", "aarch64")
SAME_OUTPUTS = 1e-3  # largest output difference from the first target that counts as the same answers
AARCH64_ORT = "1.22.0"
AARCH64_DEBS = (
    "python3.11-minimal libpython3.11-minimal libpython3.11-stdlib libc6 libexpat1 zlib1g libffi8 libssl3 "
    "libbz2-1.0 liblzma5 libgcc-s1 libstdc++6 libsqlite3-0 libncursesw6 libtinfo6 libreadline8 libuuid1 libcrypt1"
).split()


# --- the worker: numpy and onnxruntime only (it runs under emulation) -------------------------------------
def worker(inputs: str, out: str, models: list[str], batch: int = 64) -> None:
    """Run every model on every row of ``inputs``; save outputs as ``<i>/<name>`` and print batch-1 p50s."""
    import numpy as np
    import onnxruntime as ort

    data = np.load(inputs)
    feed_all = {k: data[k] for k in data.files}
    n = len(next(iter(feed_all.values())))
    saved: dict[str, Any] = {}
    latency = {}
    for i, path in enumerate(models):
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        chunks: dict[str, list[Any]] = {k: [] for k in names}
        for start in range(0, n, batch):
            for name, value in zip(names, session.run(None, {k: v[start : start + batch] for k, v in feed_all.items()}), strict=True):
                chunks[name].append(value)
        for name in names:
            saved[f"{i}/{name}"] = np.concatenate(chunks[name])
        one = {k: v[:1] for k, v in feed_all.items()}
        times = []
        for _ in range(20):
            t0 = time.perf_counter()
            session.run(None, one)
            times.append((time.perf_counter() - t0) * 1000)
        latency[path] = float(np.median(times))
    np.savez(out, **saved)
    import onnxruntime

    print(json.dumps({"latency_ms": latency, "onnxruntime": onnxruntime.__version__}))


# --- targets ----------------------------------------------------------------------------------------------
def aarch64_root(arg: str | None) -> Path:
    return Path(arg or os.environ.get("EMOEDGE_AARCH64_ROOT") or Path.home() / ".cache" / "emoedge" / "aarch64")


def setup_aarch64(root: Path) -> None:
    """Debian's arm64 Python 3.11 and the aarch64 wheels of numpy and ONNX Runtime, unpacked for qemu-aarch64."""
    root.mkdir(parents=True, exist_ok=True)
    debs = root / "debs"
    debs.mkdir(exist_ok=True)
    subprocess.run(["dpkg", "--add-architecture", "arm64"], check=True)
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    subprocess.run(["apt-get", "download", *[f"{d}:arm64" for d in AARCH64_DEBS]], cwd=debs, check=True)
    for deb in debs.glob("*.deb"):
        subprocess.run(["dpkg", "-x", str(deb), str(root / "root")], check=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.11", "--implementation", "cp", "--platform", "manylinux_2_27_aarch64",
                    "--platform", "manylinux_2_28_aarch64", "--platform", "manylinux2014_aarch64",
                    "-d", str(root / "whl"), "numpy", f"onnxruntime=={AARCH64_ORT}"], check=True)
    import zipfile

    for wheel in (root / "whl").glob("*.whl"):
        zipfile.ZipFile(wheel).extractall(root / "site")
    print(f"aarch64 Python and ONNX Runtime {AARCH64_ORT} ready in {root}")


def target_command(target: str, a64: Path) -> tuple[list[str], dict[str, str]]:
    """The command prefix that runs a Python of ``target``, and extra environment; raises SystemExit if absent."""
    if target == "native":
        return [sys.executable], {}
    if target == "x86-avx2":
        qemu = shutil.which("qemu-x86_64")
        if qemu is None:
            raise SystemExit("x86-avx2 needs qemu-user: apt-get install qemu-user")
        return [qemu, "-cpu", "Haswell", sys.executable], {}
    if target == "aarch64":
        qemu = shutil.which("qemu-aarch64")
        python = a64 / "root" / "usr" / "bin" / "python3.11"
        if qemu is None or not python.exists():
            raise SystemExit(f"aarch64 needs qemu-user and an arm64 Python in {a64}: run {sys.argv[0]} --setup-aarch64")
        return [qemu, "-L", str(a64 / "root"), str(python)], {"PYTHONPATH": str(a64 / "site")}
    raise SystemExit(f"unknown target '{target}' (expected one of {', '.join(TARGETS)})")


def run_target(target: str, a64: Path, inputs: Path, models: list[Path], out: Path) -> dict[str, Any]:
    prefix, env = target_command(target, a64)
    command = [*prefix, str(Path(__file__).resolve()), "--worker", str(inputs), str(out), *map(str, models)]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **env})
    if done.returncode != 0:
        raise SystemExit(f"{target}: the worker failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- scoring ----------------------------------------------------------------------------------------------
def replay_runner(outputs: dict[str, Any], like: Any) -> Any:
    """A runner that gives back outputs recorded on another CPU, in order (the evaluators feed rows in order)."""
    from edge.backends.base import Runner

    class ReplayRunner(Runner):
        backend = "onnxruntime (replayed)"

        def __init__(self) -> None:
            super().__init__()
            self.cursor = 0

        @property
        def inputs(self) -> Any:
            return like.inputs

        @property
        def outputs(self) -> Any:
            return like.outputs

        def _activate(self) -> None:
            self.cursor = 0

        def _deactivate(self) -> None:
            pass

        def _infer(self, feed: Any) -> dict[str, Any]:
            n = len(next(iter(feed.values())))
            out = {k: v[self.cursor : self.cursor + n] for k, v in outputs.items()}
            self.cursor += n
            return out

    return ReplayRunner()


def check_model(name: str, data_dir: Path, limit: int, targets: list[str], a64: Path, precisions: list[str],
                models: str | None) -> list[dict[str, Any]]:
    import numpy as np

    from edge.backends.ort import OnnxRuntimeRunner
    from edge.card import load_model
    from edge.evaluation import evaluator_for
    from edge.export.gate import gate_on_labelled_data

    fp32 = load_model(name, "fp32", models=models)
    candidates = []
    for precision in precisions:
        try:
            candidates.append(load_model(name, precision, models=models))
        except Exception as exc:
            print(f"{name}: {precision} skipped: {exc}", file=sys.stderr)
    evaluator = evaluator_for(fp32.card)
    data = evaluator.load_split(fp32.card, data_dir, "validation", limit=limit, seed=0, mode=None)
    rows = []
    with tempfile.TemporaryDirectory(prefix="emoedge-cpu-check-") as tmp, OnnxRuntimeRunner(fp32.path) as like:
        inputs = Path(tmp) / "inputs.npz"
        np.savez(inputs, **data.inputs)
        files = [fp32.path] + [c.path for c in candidates]
        first: list[dict[str, Any]] = []
        for target in targets:
            out = Path(tmp) / f"{target}.npz"
            started = time.time()
            meta = run_target(target, a64, inputs, files, out)
            recorded = np.load(out)
            per_file = [{k.split("/", 1)[1]: recorded[k] for k in recorded.files if k.startswith(f"{i}/")}
                        for i in range(len(files))]
            print(f"{name} on {target}: {len(data)} samples in {time.time() - started:.0f} s", file=sys.stderr)
            first = first or per_file  # the first target (native by default) is what the others are compared with
            for cand, outputs, base in zip([fp32, *candidates], per_file, first, strict=True):
                ref_runner, cand_runner = replay_runner(per_file[0], like), replay_runner(outputs, like)
                with ref_runner, cand_runner:
                    gate = gate_on_labelled_data(fp32.card, evaluator, data, ref_runner, cand_runner,
                                                 fp32.card.quantization.max_loss_points)
                rows.append({
                    "model": name, "target": target, "precision": cand.precision, "sha256": cand.sha256,
                    "onnxruntime": meta["onnxruntime"], "metric": gate.metric, "value": round(gate.value, 4),
                    "fp32": round(gate.fp32, 4), "loss_points": round(gate.worst_loss, 2),
                    "top1_agreement": round(gate.top1_agreement, 4), "n": gate.n, "passed": gate.passed,
                    "p50_ms": round(meta["latency_ms"][str(cand.path)], 3),
                    "max_diff_vs_first": max(float(np.max(np.abs(outputs[k] - base[k]))) for k in outputs),
                })
    return rows


def write_card(name: str, rows: list[dict[str, Any]], limit: int, data_dir: Path, models: str | None) -> None:
    """Add each target's result to the ``verified_on`` list of the artifact record it measured."""
    from datetime import datetime, timezone

    from edge.card import CpuVerification, load_model, save_card

    model = load_model(name, "fp32", models=models)
    card = model.card
    for record in card.artifacts:
        mine = [r for r in rows if r["precision"] == record.precision and r["sha256"] == record.sha256]
        for r in mine:
            diff = r.get("max_diff_vs_first")
            # a slice of a few dozen samples can lose more than the allowance by chance (2 of 89 clips = 2.2 points);
            # the same outputs as the first target, where the full validation set passed the gate, is the evidence then
            same = diff is not None and diff <= SAME_OUTPUTS
            entry = CpuVerification(
                target=TARGET_NAMES[r["target"]], onnxruntime=r["onnxruntime"], metric=r["metric"],
                loss_points=r["loss_points"], top1_agreement=r["top1_agreement"], n=r["n"],
                passed=bool(r["passed"] or (same and record.passed)), max_diff_vs_native=diff,
                command=f"python tools/cpu_check.py {name} --data {name}={data_dir} --limit {limit} --targets {r['target']} --write-card",
                measured_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            )
            record.verified_on = [v for v in record.verified_on if v.target != entry.target] + [entry]
    save_card(card, model.card_path)


# The extensions that select different ONNX Runtime kernels (MLAS: AVX2/AVX-512 GEMMs, VNNI and AMX int8,
# AVX-512 FP16, Arm dot products and i8mm), so a machine with any of them is a target of its own.
NAMED_ISA = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_fp16", "amx_int8", "asimddp", "i8mm")


def _native_name() -> str:
    from edge.backends.probe import cpu_info

    info = cpu_info()
    return f"{info.arch} {' '.join(f for f in info.isa if f in NAMED_ISA)} (native)"


TARGET_NAMES: dict[str, str] = {
    "x86-avx2": "x86_64 avx2, no avx512, no vnni (qemu-x86_64 -cpu Haswell)",
    "aarch64": "aarch64 (qemu-aarch64)",
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        worker(argv[1], argv[2], argv[3:])
        return 0
    sys.path.insert(0, str(ROOT))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="model names (default: face speech eeg)")
    parser.add_argument("--data", action="append", default=[], metavar="NAME=DIR", help="validation data per model")
    parser.add_argument("--limit", type=int, default=300, help="samples per model (default 300)")
    parser.add_argument("--targets", default=",".join(TARGETS), help=f"comma-separated, of {', '.join(TARGETS)}")
    parser.add_argument("--precisions", default="fp16,int8")
    parser.add_argument("--aarch64-root", default=None, help="default $EMOEDGE_AARCH64_ROOT or ~/.cache/emoedge/aarch64")
    parser.add_argument("--setup-aarch64", action="store_true", help="make the arm64 Python for the aarch64 target")
    parser.add_argument("--write-card", action="store_true", help="record each target in the artifacts' verified_on")
    parser.add_argument("--json", default=None, help="write the rows here")
    parser.add_argument("--models", default=None, help="models folder")
    args = parser.parse_args(argv)
    a64 = aarch64_root(args.aarch64_root)
    if args.setup_aarch64:
        setup_aarch64(a64)
        if not args.names:
            return 0
    TARGET_NAMES["native"] = _native_name()
    data = dict(d.split("=", 1) for d in args.data)
    from edge.bench.targets import dataset_folder
    from edge.card import load_card, resolve_model_folder
    from edge.paths import data_dir

    rows = []
    for name in args.names or ["face", "speech", "eeg"]:
        # the data set follows the card (face_fast reads fer2013 like face), as `emoedge bench` chooses it
        folder = Path(data[name]) if name in data else \
            dataset_folder(load_card(resolve_model_folder(name, args.models) / "card.toml"), data_dir())
        folder = Path(os.path.relpath(folder)) if folder.is_absolute() else folder  # the card's command reruns anywhere
        found = check_model(name, folder, args.limit, args.targets.split(","), a64, args.precisions.split(","), args.models)
        rows.extend(found)
        if args.write_card:
            write_card(name, found, args.limit, folder, args.models)
    print(f"{'model':8} {'target':10} {'prec':5} {'metric':18} {'value':>6} {'loss':>6} {'agree':>6} {'n':>5} {'p50 ms':>7} "
          f"{'diff':>8}  verdict")
    for r in rows:
        print(f"{r['model']:8} {r['target']:10} {r['precision']:5} {r['metric']:18} {r['value']:6.3f} {r['loss_points']:6.2f} "
              f"{r['top1_agreement']:6.3f} {r['n']:5d} {r['p50_ms']:7.3f} {r['max_diff_vs_first']:8.2g}  "
              f"{'pass' if r['passed'] else 'FAIL'}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0 if all(r["passed"] or (r.get("max_diff_vs_first") or 1.0) <= SAME_OUTPUTS for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
