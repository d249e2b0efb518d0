"""tegrastats parsing on lines of several Jetson modules, and the sampler against a stand-in binary."""

from __future__ import annotations

import os
import stat
import sys
import time
from pathlib import Path

import pytest

from edge.bench.tegrastats import TegrastatsSampler, parse_line, summarise, window_energy
from edge.errors import BackendUnavailable

FIXTURES = Path(__file__).parent / "fixtures" / "tegrastats"


def lines(name: str) -> list[str]:
    return [ln for ln in (FIXTURES / name).read_text().splitlines() if ln.strip() and not ln.startswith("#")]


def test_nano_l4t32() -> None:
    idle, busy = (parse_line(ln) for ln in lines("nano_l4t32.txt"))
    assert (idle.ram_used_mb, idle.ram_total_mb, idle.swap_used_mb) == (2239, 3956, 0)
    assert idle.cpu_load == [12, 3, 5, 4] and idle.cpu_mhz == [1479] * 4
    assert (idle.emc_load, idle.emc_mhz, idle.gpu_load, idle.gpu_mhz) == (3, 1600, 0, 76)
    assert idle.temperatures["cpu"] == 26.5 and idle.temperatures["gpu"] == 25.5
    assert idle.rails == {"POM_5V_IN": (2615, 2615), "POM_5V_GPU": (40, 40), "POM_5V_CPU": (521, 521)}
    assert idle.input_power_mw == 2615 and idle.power_source == "POM_5V_IN"
    assert busy.gpu_load == 99 and busy.gpu_mhz == 921 and busy.input_power_mw == 5412


def test_xavier_nx_l4t32_cores_off_and_emc_without_clock() -> None:
    s = parse_line(lines("xavier_nx_l4t32.txt")[1])
    assert s.cpu_load == [45, 38, 40, 51, None, None] and s.cpu_load_mean == pytest.approx(43.5)
    assert (s.emc_load, s.emc_mhz, s.gpu_load, s.gpu_mhz) == (12, None, 87, None)
    assert s.rails["VDD_IN"] == (7340, 5778) and s.input_power_mw == 7340
    assert s.temperatures["thermal"] == 35.0


def test_xavier_nx_l4t35_mw_units_and_bracketed_gpu_clock() -> None:
    s = parse_line(lines("xavier_nx_l4t35.txt")[1])
    assert s.ram_used_mb == 2090 and s.gpu_load == 76 and s.gpu_mhz == 1109
    assert s.rails == {"VDD_IN": (6722, 5318), "VDD_CPU_GPU_CV": (2386, 1409), "VDD_SOC": (1761, 1452)}
    assert "VIC_FREQ" not in s.rails and "APE" not in s.rails


def test_agx_orin_sums_rails_and_drops_powered_off_sensors() -> None:
    idle, busy = (parse_line(ln) for ln in lines("agx_orin_l4t35.txt"))
    assert len(idle.cpu_load) == 12
    assert "cv0" not in idle.temperatures and "gpu" not in idle.temperatures  # -256C = off
    assert busy.temperatures["gpu"] == pytest.approx(45.843)
    assert idle.input_power_mw == 2400 + 400 + 2321 + 301
    assert idle.power_source.startswith("sum of ")
    assert busy.gpu_mhz == 1300 and busy.emc_mhz == 3199


def test_orin_nano_l4t36_lower_case_temperatures() -> None:
    s = parse_line(lines("orin_nano_l4t36.txt")[0])
    assert s.temperatures["cpu"] == pytest.approx(48.562) and s.temperatures["tj"] == pytest.approx(48.562)
    assert s.input_power_mw == 4826 and s.gpu_mhz == 305 and s.emc_mhz == 2133
    assert len(s.cpu_load) == 6


def test_every_fixture_line_has_memory_cpu_and_power() -> None:
    files = sorted(FIXTURES.glob("*.txt"))
    assert len(files) >= 5
    for f in files:
        for ln in lines(f.name):
            s = parse_line(ln)
            assert s.ram_used_mb and s.cpu_load and s.input_power_mw and s.temperatures, (f.name, ln)


def test_window_energy_integrates_between_samples() -> None:
    a, b = (parse_line(ln) for ln in lines("orin_nano_l4t36.txt"))
    a.time, b.time = 10.0, 11.0  # 4826 mW then 7912 mW one second later
    got = window_energy([a, b], 10.0, 11.0)
    assert got is not None
    assert got["energy_mj"] == pytest.approx((4826 + 7912) / 2)
    # A window between samples uses the interpolated curve; outside, the nearest reading.
    assert window_energy([a, b], 10.5, 10.5 + 1e-3)["mean_power_mw"] == pytest.approx((4826 + 7912) / 2, rel=1e-3)
    assert window_energy([a, b], 20.0, 22.0)["mean_power_mw"] == pytest.approx(7912)
    summary = summarise([a, b], 10.0, 11.0)
    assert summary["max_temperature_c"] == pytest.approx(50.312) and summary["gpu_load_pct"] == pytest.approx(47.5)


def _fake_tegrastats(bin_dir: Path, line: str) -> None:
    """A stand-in for the Jetson's tegrastats binary (absent here): prints a recorded line every interval."""
    script = bin_dir / "tegrastats"
    script.write_text(
        f"#!{sys.executable}\n"
        "# Stand-in for NVIDIA's tegrastats (a Jetson binary), for tests on machines without one.\n"
        "import sys, time\n"
        "ms = int(sys.argv[sys.argv.index('--interval') + 1]) if '--interval' in sys.argv else 1000\n"
        f"line = {line!r}\n"
        "while True:\n"
        "    print(line, flush=True)\n"
        "    time.sleep(ms / 1000)\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)


def test_sampler_reads_a_running_tegrastats(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_tegrastats(tmp_path, lines("xavier_nx_l4t35.txt")[0])  # VDD_IN 3914 mW
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    with TegrastatsSampler(interval_ms=20) as sampler:
        assert sampler.wait_for_samples(2)
        start = sampler.mark()
        time.sleep(0.2)
        end = sampler.mark()
        summary = sampler.summarise(start, end)
    assert summary["tegrastats_samples"] >= 3
    assert summary["mean_power_mw"] == pytest.approx(3914)
    assert summary["energy_mj"] == pytest.approx(3914 * (end - start), rel=1e-6)
    assert sampler._proc is not None and sampler._proc.poll() is not None  # stopped on exit


def test_sampler_without_tegrastats_says_so(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(BackendUnavailable, match="needs a Jetson"):
        TegrastatsSampler().__enter__()


def test_bench_device_report_adds_energy_per_inference(tmp_path: Path) -> None:
    """`emoedge bench --device-report` with the stand-in tegrastats: constant 3914 mW gives energy = power x time."""
    import json
    import subprocess

    from tests.conftest import CARD_TEMPLATE, make_linear_onnx

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _fake_tegrastats(bin_dir, lines("xavier_nx_l4t35.txt")[0])
    folder = tmp_path / "models" / "toy"
    folder.mkdir(parents=True)
    make_linear_onnx(folder / "model.onnx")
    (folder / "card.toml").write_text(CARD_TEMPLATE.format(name="toy"))
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "edge", "bench", "--models", str(tmp_path / "models"), "--out", str(out), "--no-data",
         "--precisions", "fp32", "--batch", "1", "--iterations", "300", "--warmup", "2", "--no-plots",
         "--device-report", "--tegrastats-interval", "20", "--seconds", "0.05"],
        capture_output=True, text=True, timeout=120, env=env, cwd=Path(__file__).resolve().parent.parent,
    )
    assert result.returncode == 0, result.stderr
    data = json.loads((out / "bench.json").read_text())
    row = data["rows"][0]
    assert row["device"]["mean_power_mw"] == pytest.approx(3914)
    assert row["device"]["power_source"] == "VDD_IN" and row["device"]["max_temperature_c"] == pytest.approx(35.5)
    # energy per inference = power x (time of the timed calls) / calls, and that time is at least their summed latency
    latency_s = sum(row["latencies_ms"]) / 1e3
    assert row["energy_mj_per_inference"] >= 3914 * latency_s / 300 * 0.999
    assert data["tegrastats"]["lines"] >= 2 and data["tegrastats"]["unparsed_lines"] == 0
    assert row["energy_mj_per_sample"]["1"] > 0 and row["device"]["ram_used_mb_max"] == 2012
    assert "mJ/inf" in result.stdout


def test_bench_device_report_off_a_jetson_says_so(tmp_path: Path) -> None:
    import subprocess

    env = {**os.environ, "PATH": os.path.dirname(sys.executable)}
    result = subprocess.run([sys.executable, "-m", "edge", "bench", "--device-report", "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=60, env=env, cwd=Path(__file__).resolve().parent.parent)
    assert result.returncode != 0 and "needs tegrastats, which L4T ships on a Jetson" in result.stderr


def test_environment_record_and_its_one_line_description() -> None:
    from edge.bench import environment

    env = environment.collect()
    assert env["cpu_cores"] >= 1 and env["cpu_model"] and env["libraries"]["numpy"]
    if env["jetson"] is None:  # not a Jetson: no clocks to report
        assert "jetson_clocks" not in env
    line = environment.describe({**env, "jetson": {"model": "NVIDIA Jetson Orin Nano Developer Kit",
                                                    "l4t_release": "# R36 (release), REVISION: 4.3",
                                                    "power_mode": "NV Power Mode: 15W\n0"}})
    assert "NVIDIA Jetson Orin Nano Developer Kit, # R36 (release), REVISION: 4.3, power mode NV Power Mode: 15W" in line
    assert ("TensorRT absent" in line) == (not env.get("tensorrt"))  # absent here, its version on a Jetson


def test_summarise_a_recorded_log(tmp_path: Path) -> None:
    import json
    import subprocess

    log = tmp_path / "tegrastats.log"
    log.write_text("\n".join(lines("orin_nano_l4t36.txt")) + "\n")
    done = subprocess.run([sys.executable, "-m", "edge.bench.tegrastats", str(log), "--interval", "1000"],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    # two readings one second apart: the trapezoid between them
    assert summary["energy_mj"] == pytest.approx((4826 + 7912) / 2) and summary["seconds"] == 1.0
    assert summary["rails_mean_mw"]["VDD_SOC"] == pytest.approx((1440 + 1911) / 2)
    (tmp_path / "empty.log").write_text("not tegrastats\n")
    done = subprocess.run([sys.executable, "-m", "edge.bench.tegrastats", str(tmp_path / "empty.log")],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 2 and "no tegrastats lines found" in done.stderr
