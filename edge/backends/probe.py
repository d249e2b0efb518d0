"""What accelerators this machine has, found without importing anything heavy at start-up.

Every probe returns None or an empty list when the thing is absent; none raises.
"""

from __future__ import annotations

import importlib
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: str | None
    memory_mib: int | None


def import_status(module: str) -> tuple[str | None, str | None]:
    """(version, None) when ``module`` imports, else (None, why)."""
    try:
        mod = importlib.import_module(module)
    except Exception as exc:  # ImportError, or OSError from a missing shared library
        return None, f"{type(exc).__name__}: {exc}"
    if getattr(mod, "__file__", None) is None:
        # A namespace package: only type stubs (e.g. tensorrt-stubs) are installed, not the library.
        return None, f"only type stubs of {module} are installed, not the library"
    return str(getattr(mod, "__version__", "unknown")), None


def tensorrt_version() -> str | None:
    version, _ = import_status("tensorrt")
    return version


def cuda_gpus() -> list[GpuInfo]:
    """GPUs through pycuda if it imports (Jetson and x86), else nvidia-smi (x86 drivers)."""
    try:
        import pycuda.driver as cuda  # pyright: ignore[reportMissingImports]

        cuda.init()
        gpus = []
        for i in range(cuda.Device.count()):
            dev = cuda.Device(i)
            major, minor = dev.compute_capability()
            gpus.append(GpuInfo(dev.name(), f"{major}.{minor}", dev.total_memory() // (1 << 20)))
        return gpus
    except Exception:
        pass
    smi = shutil.which("nvidia-smi")
    if not smi:
        return []
    try:
        out = subprocess.run(
            [smi, "--query-gpu=name,compute_cap,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 3:
            mem = int(parts[2]) if parts[2].isdigit() else None
            gpus.append(GpuInfo(parts[0], parts[1] or None, mem))
    return gpus


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text(errors="replace").strip("\0\n ")
    except OSError:
        return None


def jetson_info() -> dict[str, str | None] | None:
    """Model, L4T release and power mode on a Jetson; None elsewhere."""
    release = _read("/etc/nv_tegra_release")
    model = _read("/proc/device-tree/model")
    if release is None and (model is None or "jetson" not in model.lower()):
        return None
    power = None
    if shutil.which("nvpmodel"):
        try:
            power = subprocess.run(["nvpmodel", "-q"], capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            power = None
    return {"model": model, "l4t_release": release.splitlines()[0] if release else None, "power_mode": power}


# Instruction-set flags that change which CPU kernels ONNX Runtime runs (and so, for INT8, which answers it gives).
ISA_FLAGS = (
    "sse4_1", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni",
    "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8",  # x86
    "asimd", "asimdhp", "asimddp", "i8mm", "bf16", "sve", "sve2",  # 64-bit Arm
)


@dataclass(frozen=True)
class CpuInfo:
    """The CPU as far as numeric kernels care: architecture, model name and the relevant instruction sets."""

    arch: str
    model: str
    isa: tuple[str, ...]

    def describe(self) -> str:
        return f"{self.arch} {self.model} [{' '.join(self.isa) or 'no extensions read'}]"


def cpu_info() -> CpuInfo:
    """Read /proc/cpuinfo (Linux, Jetson); elsewhere the architecture only. Under qemu-user this is the host's."""
    import platform

    arch = platform.machine() or "unknown"
    text = _read("/proc/cpuinfo") or ""
    flags: set[str] = set()
    model = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("flags", "features") and not flags:
            flags = set(value.split())
        elif key in ("model name", "cpu model", "hardware") and not model:
            model = value.strip()
    return CpuInfo(arch, model or "unknown model", tuple(f for f in ISA_FLAGS if f in flags))


def gpu_key() -> str | None:
    """The first GPU's name, as used in engine cache names."""
    gpus = cuda_gpus()
    return gpus[0].name if gpus else None


__all__ = ["CpuInfo", "GpuInfo", "asdict", "cpu_info", "cuda_gpus", "gpu_key", "import_status", "jetson_info", "tensorrt_version"]
