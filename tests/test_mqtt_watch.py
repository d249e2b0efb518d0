"""``emoedge watch`` and tools/subscriber_example.py read the retained state of a real device."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from edge.config import MqttConfig, OutboxConfig
from edge.estimate import Contribution, EmotionState
from edge.publish import Publisher
from tests.mqtt_broker import Mosquitto

ROOT = Path(__file__).resolve().parent.parent


def publish_state(url: str, tmp: Path, device: str) -> Publisher:
    pub = Publisher(MqttConfig(url=url, outbox=OutboxConfig(path=tmp / "o.sqlite")), device, ["cam"]).start()
    state = EmotionState("happiness", 0.62, 0.41, 0.77, time.time(), {"cam": Contribution(1.0, 0.77, 0.62, 0.41, 0.1, "happy")})
    pub.publish_state(state)
    assert pub.flush(5)
    return pub


def test_watch_prints_the_retained_state(mosquitto: Mosquitto, tmp_path: Path) -> None:
    pub = publish_state(mosquitto.url, tmp_path, "watchdev")
    result = subprocess.run(
        [sys.executable, "-m", "edge", "watch", "--mqtt", mosquitto.url, "--device", "watchdev", "--count", "1",
         "--timeout", "10"], cwd=ROOT, capture_output=True, text=True, timeout=30,
    )
    pub.stop()
    assert result.returncode == 0, result.stderr
    assert "watchdev: happiness" in result.stdout and "valence +0.62" in result.stdout and "cam 1.00" in result.stdout


def test_watch_unreachable_broker_is_a_clear_error() -> None:
    from tests.mqtt_broker import free_port

    result = subprocess.run([sys.executable, "-m", "edge", "watch", "--mqtt", f"mqtt://127.0.0.1:{free_port()}",
                             "--timeout", "1"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert result.returncode != 0 and "cannot reach the broker" in result.stderr


def test_subscriber_example(mosquitto: Mosquitto, tmp_path: Path) -> None:
    pub = publish_state(mosquitto.url, tmp_path, "exampledev")
    result = subprocess.run(
        [sys.executable, "tools/subscriber_example.py", "--port", str(mosquitto.port), "--device", "exampledev",
         "--count", "1", "--client-id", "example-test"], cwd=ROOT, capture_output=True, text=True, timeout=30,
    )
    pub.stop()
    assert result.returncode == 0, result.stderr
    assert "[exampledev] now happiness (valence +0.62, arousal +0.41, confidence 0.77)" in result.stdout
