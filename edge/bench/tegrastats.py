"""Read NVIDIA's ``tegrastats`` on a Jetson: parse its lines, sample it during a run, integrate power.

tegrastats prints one line per interval; its fields differ between modules and L4T releases
(``POM_5V_IN 2615/2615`` on a Nano, ``VDD_IN 4826mW/4826mW`` on an Orin Nano, no input rail at all
on an AGX Orin; ``CPU@45.5C`` or ``cpu@45.5C``). The parser reads each field on its own, so a field
it does not know is skipped rather than breaking the line. Energy per inference is the board's
input power integrated over a measured window, divided by the inferences run in that window.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge.errors import BackendUnavailable

# Rails that measure the whole module's input; the first present is the board's power.
INPUT_RAILS = ("VDD_IN", "POM_5V_IN", "VIN", "VDD_SYS_IN")
# Temperature sensors that report -256 C are powered off.
_OFF_TEMPERATURE = -256.0
# The PMIC "temperature" is a fixed threshold (50 or 100 C), not a reading: left out of the maximum.
_NOT_MEASURED = {"pmic"}

_RAM = re.compile(r"\bRAM (\d+)/(\d+)MB")
_SWAP = re.compile(r"\bSWAP (\d+)/(\d+)MB")
_CPU = re.compile(r"\bCPU \[([^\]]*)\]")
_EMC = re.compile(r"\bEMC_FREQ (\d+)%(?:@(\d+))?")
_GR3D = re.compile(r"\bGR3D_FREQ (\d+)%(?:@\[?([\d,]+)\]?)?")
_TEMP = re.compile(r"\b([A-Za-z][A-Za-z0-9_]*)@(-?\d+(?:\.\d+)?)C\b")
_RAIL = re.compile(r"\b([A-Z][A-Z0-9_]*) (\d+)(?:mW)?/(\d+)(?:mW)?(?=\s|$)")
_NOT_RAILS = {"RAM", "SWAP", "IRAM"}


@dataclass
class TegraSample:
    """One tegrastats line. Power in mW (instant and tegrastats' running average), clocks in MHz."""

    time: float  # host time.monotonic() when the line was read (0 when parsed offline)
    ram_used_mb: int | None = None
    ram_total_mb: int | None = None
    swap_used_mb: int | None = None
    cpu_load: list[float | None] = field(default_factory=list)  # per core, None = core off
    cpu_mhz: list[int | None] = field(default_factory=list)
    emc_load: float | None = None
    emc_mhz: int | None = None
    gpu_load: float | None = None
    gpu_mhz: int | None = None
    temperatures: dict[str, float] = field(default_factory=dict)  # lower-case sensor name -> C
    rails: dict[str, tuple[int, int]] = field(default_factory=dict)  # rail -> (now mW, average mW)

    @property
    def input_power_mw(self) -> float | None:
        """The module's input power: its input rail, else the sum of all rails (AGX Orin has no VDD_IN)."""
        for name in INPUT_RAILS:
            if name in self.rails:
                return float(self.rails[name][0])
        if self.rails:
            return float(sum(now for now, _ in self.rails.values()))
        return None

    @property
    def power_source(self) -> str | None:
        for name in INPUT_RAILS:
            if name in self.rails:
                return name
        return "sum of " + "+".join(self.rails) if self.rails else None

    @property
    def cpu_load_mean(self) -> float | None:
        on = [c for c in self.cpu_load if c is not None]
        return float(np.mean(on)) if on else None


def parse_line(line: str, at: float = 0.0) -> TegraSample:
    """Parse one tegrastats line; fields that are absent stay None."""
    s = TegraSample(time=at)
    if m := _RAM.search(line):
        s.ram_used_mb, s.ram_total_mb = int(m.group(1)), int(m.group(2))
    if m := _SWAP.search(line):
        s.swap_used_mb = int(m.group(1))
    if m := _CPU.search(line):
        for core in m.group(1).split(","):
            core = core.strip()
            if core == "off" or not core:
                s.cpu_load.append(None)
                s.cpu_mhz.append(None)
                continue
            load, _, mhz = core.partition("@")
            s.cpu_load.append(float(load.rstrip("%")))
            s.cpu_mhz.append(int(mhz) if mhz.isdigit() else None)
    if m := _EMC.search(line):
        s.emc_load = float(m.group(1))
        s.emc_mhz = int(m.group(2)) if m.group(2) else None
    if m := _GR3D.search(line):
        s.gpu_load = float(m.group(1))
        if m.group(2):
            clocks = [int(c) for c in m.group(2).split(",") if c]
            s.gpu_mhz = max(clocks) if clocks else None
    for name, value in _TEMP.findall(line):
        temp = float(value)
        if temp > _OFF_TEMPERATURE:
            s.temperatures[name.lower()] = temp
    for name, now, avg in _RAIL.findall(line):
        if name not in _NOT_RAILS:
            s.rails[name] = (int(now), int(avg))
    return s


def window_energy(samples: Sequence[TegraSample], start: float, end: float) -> dict[str, Any] | None:
    """Mean input power (mW) and energy (mJ) over [start, end], from samples stamped with host time.

    The power curve is linear between samples and held flat before the first and after the last, so a
    window shorter than the sampling interval still gets the nearest reading.
    """
    points = [(s.time, p) for s in samples if (p := s.input_power_mw) is not None]
    if not points or end <= start:
        return None
    times = np.array([t for t, _ in points])
    power = np.array([p for _, p in points])
    inside = (times > start) & (times < end)
    grid = np.concatenate(([start], times[inside], [end]))
    curve = np.interp(grid, times, power)
    energy_mj = float(np.sum((curve[1:] + curve[:-1]) / 2 * np.diff(grid)))  # mW * s = mJ
    duration = end - start
    return {
        "mean_power_mw": energy_mj / duration,
        "energy_mj": energy_mj,
        "samples_in_window": int(inside.sum()),
        "power_source": samples[-1].power_source if samples else None,
    }


def summarise(samples: Sequence[TegraSample], start: float, end: float) -> dict[str, Any]:
    """Power, energy, loads and peak temperatures over a window, for a bench row."""
    inside = [s for s in samples if start <= s.time <= end] or _nearest(samples, (start + end) / 2)
    out: dict[str, Any] = {"tegrastats_samples": len(inside)}
    energy = window_energy(samples, start, end)
    if energy:
        out.update(energy)

    def mean(values: list[float | None]) -> float | None:
        vals = [v for v in values if v is not None]
        return float(np.mean(vals)) if vals else None

    ram = [s.ram_used_mb for s in inside if s.ram_used_mb is not None]
    # On a Jetson the GPU shares the RAM: TensorRT's buffers show here, not in the process's RSS.
    out["ram_used_mb_max"] = max(ram) if ram else None
    out["gpu_load_pct"] = mean([s.gpu_load for s in inside])
    out["cpu_load_pct"] = mean([s.cpu_load_mean for s in inside])
    out["emc_load_pct"] = mean([s.emc_load for s in inside])
    temps: dict[str, float] = {}
    for s in inside:
        for name, value in s.temperatures.items():
            temps[name] = max(value, temps.get(name, value))
    measured = [v for k, v in temps.items() if k not in _NOT_MEASURED]
    out["max_temperature_c"] = max(measured) if measured else None
    out["temperatures_c"] = temps
    return out


def _nearest(samples: Sequence[TegraSample], at: float) -> list[TegraSample]:
    return [min(samples, key=lambda s: abs(s.time - at))] if samples else []


class TegrastatsSampler:
    """Runs ``tegrastats --interval MS`` in a subprocess and keeps every parsed line with its host time.

    Use as a context manager around a run; ``mark()`` returns the host clock for window boundaries.
    Raises BackendUnavailable on entry when tegrastats is not on PATH (i.e. not a Jetson).
    """

    def __init__(self, interval_ms: int = 100, executable: str = "tegrastats") -> None:
        self.interval_ms = interval_ms
        self.executable = executable
        self.samples: list[TegraSample] = []
        self.bad_lines = 0
        self._proc: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @staticmethod
    def available(executable: str = "tegrastats") -> bool:
        return shutil.which(executable) is not None

    def __enter__(self) -> TegrastatsSampler:
        path = shutil.which(self.executable)
        if path is None:
            raise BackendUnavailable(
                f"'{self.executable}' is not on PATH: on-device power measurement needs a Jetson (L4T ships tegrastats)"
            )
        self._proc = subprocess.Popen(
            [path, "--interval", str(self.interval_ms)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1,
        )
        self._thread = threading.Thread(target=self._read, name="tegrastats", daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            sample = parse_line(line, time.monotonic())
            with self._lock:
                if sample.ram_used_mb is None and not sample.rails:
                    self.bad_lines += 1
                else:
                    self.samples.append(sample)

    def wait_for_samples(self, count: int = 1, timeout: float = 5.0) -> bool:
        """Block until ``count`` lines arrived (so that a window has readings at both ends)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.samples) >= count:
                    return True
            time.sleep(self.interval_ms / 4000)
        return False

    @staticmethod
    def mark() -> float:
        return time.monotonic()

    def snapshot(self) -> list[TegraSample]:
        with self._lock:
            return list(self.samples)

    def summarise(self, start: float, end: float) -> dict[str, Any]:
        # One more interval lets the reading after the window arrive.
        self.wait_for_samples(len(self.samples) + 1, timeout=3 * self.interval_ms / 1000)
        return summarise(self.snapshot(), start, end)

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._thread is not None:
            self._thread.join(timeout=5)


def summarise_log(lines: Sequence[str], interval_ms: int) -> dict[str, Any]:
    """Summary of a recorded log (``tegrastats --interval MS --logfile FILE``): lines are ``interval_ms`` apart."""
    samples = []
    for line in lines:
        if line.strip() and not line.startswith("#"):
            sample = parse_line(line, at=len(samples) * interval_ms / 1000)
            if sample.ram_used_mb is not None or sample.rails:
                samples.append(sample)
    if not samples:
        raise ValueError("no tegrastats lines found")
    out = summarise(samples, 0.0, max(samples[-1].time, interval_ms / 1000))
    out["seconds"] = samples[-1].time
    out["rails_mean_mw"] = {
        name: float(np.mean([s.rails[name][0] for s in samples if name in s.rails])) for name in samples[-1].rails
    }
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m edge.bench.tegrastats LOG [--interval MS]``: mean power, energy, loads and temperatures of a log."""
    import argparse
    import json
    import sys

    parser = argparse.ArgumentParser(prog="python -m edge.bench.tegrastats", description=main.__doc__)
    parser.add_argument("log", help="a tegrastats log file ('-' for standard input)")
    parser.add_argument("--interval", type=int, default=1000, help="the interval the log was written with (ms; default 1000)")
    args = parser.parse_args(argv)
    try:
        text = sys.stdin.read() if args.log == "-" else open(args.log, encoding="utf-8", errors="replace").read()
        print(json.dumps(summarise_log(text.splitlines(), args.interval), indent=2))
    except (OSError, ValueError) as exc:
        print(f"tegrastats summary: error: {args.log}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
