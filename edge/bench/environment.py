"""What a benchmark ran on: CPU, library versions, GPU and TensorRT, Jetson model, L4T, power mode, clocks.

Numbers from two runs compare only when these match, so every result file carries them.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from importlib import metadata
from typing import Any

LIBRARIES = ("emoedge", "numpy", "onnx", "onnxruntime", "onnxruntime-gpu", "tensorrt", "pycuda", "opencv-python-headless")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                # x86: "model name"; ARM (Jetson): "model name" on newer kernels, else "Hardware"/"CPU part".
                if key.strip() in ("model name", "Hardware") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def library_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    if out.get("tensorrt") is None:  # JetPack's python3-libnvinfer has no pip metadata
        from edge.backends import probe

        out["tensorrt"] = probe.tensorrt_version()
    return out


def _command(argv: list[str], timeout: float = 10) -> str | None:
    """Output of a device tool, or None when it is absent; a failure (e.g. needs root) is reported in words."""
    if shutil.which(argv[0]) is None:
        return None
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"failed: {exc}"
    if done.returncode != 0:
        why = (done.stderr or done.stdout).strip().splitlines()
        return f"exit {done.returncode}: {why[-1] if why else 'no output'}"
    return done.stdout.strip()


def collect(providers: bool = True) -> dict[str, Any]:
    """The environment record of a bench run (JSON-ready)."""
    from edge.backends import probe

    env: dict[str, Any] = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "cpu_model": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "cpu_cores_usable": usable_cores(),
        "libraries": library_versions(),
    }
    if providers:
        try:
            import onnxruntime

            env["onnxruntime_providers"] = list(onnxruntime.get_available_providers())
        except ImportError:
            env["onnxruntime_providers"] = []
    env["tensorrt"] = probe.tensorrt_version()
    env["gpus"] = [probe.asdict(g) for g in probe.cuda_gpus()]
    jetson = probe.jetson_info()
    env["jetson"] = jetson
    if jetson is not None:
        # jetson_clocks --show needs root on most releases; its refusal is recorded, not hidden.
        env["jetson_clocks"] = _command(["jetson_clocks", "--show"])
        env["nvpmodel"] = _command(["nvpmodel", "-q", "--verbose"]) or jetson.get("power_mode")
    return env


def describe(env: dict[str, Any]) -> str:
    """One line for the head of a report."""
    libs = env.get("libraries", {})
    parts = [
        f"{env.get('cpu_model')} ({env.get('cpu_cores_usable')}/{env.get('cpu_cores')} cores)",
        f"Python {env.get('python')}",
        f"onnxruntime {libs.get('onnxruntime') or libs.get('onnxruntime-gpu')}",
        f"TensorRT {env.get('tensorrt') or 'absent'}",
        "GPU " + (", ".join(g["name"] for g in env.get("gpus", [])) or "none"),
    ]
    jetson = env.get("jetson")
    if jetson:
        mode = (jetson.get("power_mode") or "").splitlines()
        parts.append(f"{jetson.get('model')}, {jetson.get('l4t_release')}, power mode {mode[0] if mode else '?'}")
    return "; ".join(parts)
