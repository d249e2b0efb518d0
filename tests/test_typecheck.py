"""The whole package (edge, firmware_bridge) type-checks with pyright; TensorRT cannot be installed here, so its
code is checked against tensorrt-stubs."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_the_package_type_checks_and_tensorrt_code_against_its_stubs() -> None:
    if importlib.util.find_spec("tensorrt_stubs") is None and importlib.util.find_spec("tensorrt") is None:
        pytest.skip("tensorrt-stubs not installed: pip install --no-deps tensorrt-stubs (.ci/run does)")
    pyright = shutil.which("pyright", path=str(Path(sys.executable).parent)) or shutil.which("pyright")
    if pyright is None:
        pytest.skip("pyright not installed: pip install -e '.[dev]'")
    result = subprocess.run(
        [pyright, "--pythonpath", sys.executable, "--outputjson"], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    import json

    report = json.loads(result.stdout)
    errors = [d for d in report["generalDiagnostics"] if d["severity"] == "error"]
    assert not errors, "\n".join(f"{d['file']}:{d['range']['start']['line'] + 1}: {d['message']}" for d in errors)
    assert report["summary"]["filesAnalyzed"] >= 1
