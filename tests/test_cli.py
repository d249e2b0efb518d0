from __future__ import annotations

import json
import subprocess
import sys

import pytest

from edge.backends.probe import tensorrt_version
from edge.cli import VERBS, build_parser


def emoedge(*args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edge", *args], capture_output=True, text=True, timeout=120, check=check)


def _all_verb_paths() -> list[list[str]]:
    """Every verb, and every action under a verb that has them (config check|schema|example)."""
    import argparse

    paths = []
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for verb, verb_parser in sub.choices.items():
        paths.append([verb])
        for action in verb_parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                paths.extend([verb, name] for name in action.choices)
    return paths


def test_every_verb_is_registered() -> None:
    assert {p[0] for p in _all_verb_paths()} == set(VERBS)


@pytest.mark.parametrize("path", _all_verb_paths(), ids=lambda p: " ".join(p))
def test_help_for_every_verb(path: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    from edge.cli import main

    with pytest.raises(SystemExit) as info:
        main([*path, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: emoedge " + " ".join(path))


def test_doctor_json_reports_cpu_and_no_tensorrt() -> None:
    result = emoedge("doctor", "--json", "--mqtt", "mqtt://127.0.0.1:1")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert "CPUExecutionProvider" in report["onnxruntime"]["providers"]
    assert report["tensorrt"]["available"] is (tensorrt_version() is not None)  # False here, True on a Jetson
    assert report["broker"]["reachable"] is False and "unreachable" in report["broker"]["detail"]
    assert report["ok"] is True and report["missing_required"] == []
    names = {c["name"] for c in report["checks"]}
    assert {"onnxruntime", "opencv", "haar cascades", "tensorrt", "gpu", "serial ports", "mqtt broker"} <= names


def test_config_check_reports_errors_and_exit_code(tmp_path) -> None:
    good = tmp_path / "good.toml"
    good.write_text(emoedge("config", "example", check=True).stdout)
    assert emoedge("config", "check", str(good)).returncode == 0
    bad = tmp_path / "bad.toml"
    bad.write_text('device_id = "x"\n[mqtt]\nport = 1883\n')
    result = emoedge("config", "check", str(bad))
    assert result.returncode == 2
    assert "mqtt.port (line 3): unknown key" in result.stderr


def test_config_schema_is_json() -> None:
    schema = json.loads(emoedge("config", "schema", check=True).stdout)
    assert schema["title"] == "EmoEdge device config"
