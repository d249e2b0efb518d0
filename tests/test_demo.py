"""``emoedge run --demo``: embedded broker, simulated EEG board on a pty, the project's own speech clip."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge.demo import DEMO_SPEECH
from edge.paths import models_dir
from edge.publish.schemas import kind_of_topic, validate
from tests.mqtt_broker import Collector

ROOT = Path(__file__).resolve().parent.parent


def test_demo_media_is_small_and_documented() -> None:
    assert DEMO_SPEECH.exists() and DEMO_SPEECH.stat().st_size < 300_000
    assert "espeak" in (DEMO_SPEECH.parent / "README.md").read_text().lower()


@pytest.mark.parametrize("with_video", [False, True], ids=["sensors", "sensors+video"])
def test_demo_publishes_from_every_source(with_video: bool, tmp_path: Path) -> None:
    expected = {src for src, model in (("mic", "speech"), ("eeg", "eeg"), ("scene", "scene"))
                if (models_dir() / model / "card.toml").exists()}
    if not expected:
        pytest.skip("the demo runs the shipped models; models/speech and models/eeg are both missing")
    extra: list[str] = []
    if with_video:
        from edge.bench.e2e import video_file
        from edge.paths import data_dir

        if not (models_dir() / "face" / "card.toml").exists():
            pytest.skip("models/face is not in this checkout")
        if not (data_dir() / "fer2013").is_dir():
            pytest.skip("the test video carries FER2013 faces: set EMOEDGE_DATA to the shared data folder")
        path, _ = video_file(None, tmp_path, count=60)
        extra, expected = ["--video", str(path)], expected | {"camera"}
    proc = subprocess.Popen([sys.executable, "-m", "edge", "run", "--demo", "--duration", "60", "--plain", *extra],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("demo: broker mqtt://127.0.0.1:"), first + (proc.stderr.read() if proc.stderr else "")
        url = first.split()[2]
        sub = Collector(int(url.rsplit(":", 1)[1]), "emoedge/demo/#")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and ({b["source"] for b in sub.on("/estimate")} != expected
                                                or ("scene" in expected and not sub.on("/scene/explanation"))):
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)  # a clean stop on Ctrl-C
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    time.sleep(0.2)
    sub.close()
    assert proc.returncode == 0, err
    sources = {body["source"] for topic, body, _, _ in sub.messages if topic.endswith("/estimate")}
    assert sources == expected, (sources, out, err)
    assert sub.on("/state")
    assert [b["status"] for b in sub.on("/status")][-1] == "stopped"
    for topic, body, _, _ in sub.messages:
        validate(kind_of_topic(topic) or "?", body)
    if "scene" in expected:  # the drawn scenes: an estimate, then its explanation with the same seq
        estimates = {b["seq"]: b for b in sub.on("/scene/estimate")}
        explanations = sub.on("/scene/explanation")
        assert explanations, "no scene explanation was published"
        for body in explanations:
            assert body["seq"] in estimates and body["label"] == estimates[body["seq"]]["label"]
            assert body["text"] and body["tokens"] <= 24
    if "eeg" in expected:  # the demo's EEG takes the raw path (a 14-channel headset into histn) once histn is trained
        from edge.demo import raw_eeg_model

        eeg_models = {b["model"]["name"] for b in sub.on("/eeg/estimate")}
        assert eeg_models == ({"histn"} if raw_eeg_model(models_dir()) else {"eeg"})
    assert "stopped on SIGINT:" in out
