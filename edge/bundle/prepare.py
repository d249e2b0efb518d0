"""First start on a device: build the TensorRT engines the config asks for, where TensorRT is present.

Run by the systemd unit before the service (``ExecStartPre``) and safe to run on every start: a model
whose engine is already in the cache is skipped. Without TensorRT (or a GPU) it says that the models
run on ONNX Runtime and exits 0, so the service starts either way; a failed engine build leaves that
model on ONNX Runtime and is reported, not fatal.

    python -m edge.bundle.prepare --config /etc/emoedge/config.toml
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path


def prepare(config_path: str, dry_run: bool = False) -> list[str]:
    """Build missing engines; returns one line per model saying what runs it."""
    from edge.backends import choose_backend, probe
    from edge.card import load_model
    from edge.config import load_config
    from edge.errors import EmoEdgeError

    config = load_config(config_path)
    trt_version, why = probe.import_status("tensorrt")
    gpus = probe.cuda_gpus() if trt_version else []
    lines: list[str] = []
    if trt_version is None or not gpus:
        reason = f"TensorRT not found ({why})" if trt_version is None else "TensorRT found but no CUDA GPU"
        lines.append(f"{reason}: every model runs on ONNX Runtime (CPU); no engines to build")
        return lines
    # This environment's emoedge (the service's venv), not another one earlier on PATH.
    own = Path(sys.prefix) / "bin" / "emoedge"
    emoedge = str(own) if own.is_file() else (shutil.which("emoedge") or "emoedge")
    for name, settings in config.models.items():
        if not settings.enabled:
            continue
        try:
            model = load_model(str(settings.path) if settings.path else name, precision=settings.precision)
        except EmoEdgeError as exc:
            lines.append(f"{name}: not loadable ({str(exc).splitlines()[0]})")
            continue
        if choose_backend(model, "auto").backend == "tensorrt":
            lines.append(f"{name} ({settings.precision}): engine in the cache, TensorRT {trt_version}")
            continue
        cmd = [emoedge, "build", name, "--precision", settings.precision, "--max-batch", str(settings.max_batch)]
        if model.card.graphs:  # the graph the source's runner runs (scene: the encoder; the decoder runs on ONNX Runtime)
            cmd += ["--graph", model.card.graph]
        if dry_run:
            lines.append(f"{name}: would run {' '.join(cmd)}")
            continue
        print(f"building the {settings.precision} engine for {name} on {gpus[0].name} (minutes on a Jetson)...", flush=True)
        done = subprocess.run(cmd, text=True)
        if done.returncode == 0:
            lines.append(f"{name} ({settings.precision}): engine built with TensorRT {trt_version}")
        else:
            lines.append(f"{name}: engine build failed (exit {done.returncode}); it runs on ONNX Runtime")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edge.bundle.prepare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="the device config")
    parser.add_argument("--dry-run", action="store_true", help="say what would be built")
    args = parser.parse_args(argv)
    from edge.errors import EmoEdgeError

    try:
        for line in prepare(args.config, args.dry_run):
            print(line, flush=True)
    except EmoEdgeError as exc:
        print(f"emoedge prepare: error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
