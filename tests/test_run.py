"""``emoedge run``: a clean stop on SIGTERM that flushes, refused credentials exit non-zero, bad options are clear."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edge.config import DeviceConfig
from edge.publish.schemas import kind_of_topic, validate
from edge.verbs.run import serve, with_broker
from tests.mqtt_broker import Collector, Mosquitto
from tests.pipeline_helpers import RAVDESS, ListSource, make_model

ROOT = Path(__file__).resolve().parent.parent


def emoedge(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edge", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def test_sigterm_stops_cleanly_and_flushes(mosquitto: Mosquitto, tmp_path: Path) -> None:
    models = tmp_path / "models"
    make_model(models, "speech", 4000, RAVDESS, "speech", window_s=0.25)
    cfg = DeviceConfig.model_validate({
        "device_id": "sigdev",
        "mqtt": {"url": mosquitto.url, "outbox": {"path": str(tmp_path / "o.sqlite")}, "state_interval_s": 0.5,
                 "stats_interval_s": 0.5},
        "models": {"speech": {"path": str(models / "speech")}}, "backend": {"threads": 1},
        "sources": [{"name": "mic", "kind": "replay", "path": "x", "model": "speech", "hop_s": 0.1}],
    })
    rng = np.random.default_rng(0)
    blocks = [rng.uniform(-1, 1, 1600).astype(np.float32) for _ in range(60)]
    source = ListSource("mic", "audio", blocks, 16000.0, interval=0.01)
    sub = Collector(mosquitto.port, "emoedge/sigdev/#")
    threading.Timer(1.2, lambda: os.kill(os.getpid(), signal.SIGTERM)).start()
    start = time.monotonic()
    assert serve(cfg, duration=20, plain=True, extra_sources={"mic": source}) == 0
    assert time.monotonic() - start < 8
    time.sleep(0.3)
    sub.close()
    estimates = sub.on("/mic/estimate")
    assert len(estimates) == (len(blocks) * 1600 - 4000) // 1600 + 1  # every window read before the stop
    assert [e["seq"] for e in estimates] == list(range(len(estimates)))
    # online (again whenever a model's device check changes what it runs: see status.models), then stopped
    statuses = [b["status"] for b in sub.on("/status")]
    assert statuses[0] == "online" and statuses[-1] == "stopped" and set(statuses[1:-1]) <= {"online"}, statuses
    assert "mic" in sub.on("/status")[-2]["models"]
    assert sub.on("/state") and sub.on("/stats")
    assert sub.on("/stats")[-1]["sources"]["mic"]["latency_ms"]["infer"]["p99"] >= 0
    for topic, body, _, _ in sub.messages:
        validate(kind_of_topic(topic) or "?", body)


def test_wrong_credentials_exit_non_zero_with_a_clear_message(tmp_path: Path) -> None:
    folder = tmp_path / "broker"
    folder.mkdir()
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(folder / "passwd"), "robot", "right"], check=True, capture_output=True)
    broker = Mosquitto(folder, listener_conf=f"allow_anonymous false\npassword_file {folder / 'passwd'}\n").start()
    models = tmp_path / "models"
    make_model(models, "speech", 4000, RAVDESS, "speech", window_s=0.25)
    config = tmp_path / "device.toml"
    config.write_text(
        f'device_id = "creddev"\n[mqtt]\nurl = "{broker.url}"\nusername = "robot"\npassword_env = "T_PW"\n'
        f'[mqtt.outbox]\npath = "{tmp_path / "o.sqlite"}"\n'
        f'[models.speech]\npath = "{models / "speech"}"\n'
        f'[[sources]]\nname = "mic"\nkind = "replay"\nmodel = "speech"\npath = "x.wav"\n'
    )
    start = time.monotonic()
    result = emoedge("run", "--config", str(config), "--duration", "30", env={"T_PW": "wrong-one"})
    broker.stop()
    assert result.returncode == 4, result.stderr
    assert "bad user name or password" in result.stderr or "not authorized" in result.stderr
    assert "wrong-one" not in result.stderr + result.stdout
    assert time.monotonic() - start < 20  # no silent retry loop


def test_bad_options_are_clear(tmp_path: Path) -> None:
    result = emoedge("run")
    assert result.returncode == 2 and "give --config FILE" in result.stderr
    result = emoedge("run", "--config", str(tmp_path / "none.toml"))
    assert result.returncode == 2 and "config file not found" in result.stderr
    cfg = DeviceConfig.model_validate({"device_id": "x"})
    with pytest.raises(Exception, match="expected mqtt://host"):
        with_broker(cfg, "http://nope")
    assert with_broker(cfg, "mqtt://10.0.0.2:1884").mqtt.port == 1884


def test_run_from_a_config_file_with_a_replayed_recording(mosquitto: Mosquitto, tmp_path: Path) -> None:
    """The config's sources are built by firmware_bridge (here: the demo WAV replayed in real time)."""
    from edge.demo import DEMO_SPEECH

    models = tmp_path / "models"
    make_model(models, "speech", 16000, RAVDESS, "speech", window_s=1.0)
    config = tmp_path / "device.toml"
    config.write_text(
        f'device_id = "filedev"\n[mqtt]\nurl = "mqtt://127.0.0.1:1"\n[mqtt.outbox]\npath = "{tmp_path / "o.sqlite"}"\n'
        f'[models.speech]\npath = "{models / "speech"}"\n'
        f'[[sources]]\nname = "mic"\nkind = "replay"\nmodel = "speech"\npath = "{DEMO_SPEECH}"\nhop_s = 0.5\n'
    )
    sub = Collector(mosquitto.port, "emoedge/filedev/#")
    result = emoedge("run", "--config", str(config), "--mqtt", mosquitto.url, "--duration", "3")
    time.sleep(0.3)
    sub.close()
    assert result.returncode == 0, result.stderr
    seqs = [b["seq"] for b in sub.on("/mic/estimate")]
    assert len(seqs) >= 3 and seqs == list(range(len(seqs)))
    assert "stopped: mic" in result.stdout
