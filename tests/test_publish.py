"""The publisher against a real Mosquitto: every payload follows its JSON Schema; status, state, enabled/set."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from edge.config import MqttConfig, OutboxConfig
from edge.estimate import Contribution, EmotionState, Estimate, ModelInfo
from edge.publish import Publisher
from edge.publish.schemas import kind_of_topic, validate
from tests.mqtt_broker import Collector, Mosquitto, mosquitto  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parent.parent
MODEL = ModelInfo("toy", "0.0.1", "ab" * 32, "onnxruntime", "fp32")


def make_estimate(source: str = "cam", i: int = 0, track: int | None = 3) -> Estimate:
    return Estimate(
        source, "face", {"happy": 0.7, "sad": 0.3}, "happy", 0.4, 0.37, 0.26, time.time(), None, MODEL,
        {"features": 1.2, "infer": 0.8}, track_id=track, box=(10, 20, 64, 64),
    )


def make_publisher(url: str, tmp: Path, protocol: str = "5", device: str = "dev1", **kw) -> Publisher:
    cfg = MqttConfig(url=url, protocol=protocol, outbox=OutboxConfig(path=tmp / f"{device}.sqlite"), **kw)
    return Publisher(cfg, device, sources=["cam", "mic"])


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_every_payload_follows_its_schema(mosquitto: Mosquitto, tmp_path: Path, protocol: str) -> None:
    device = f"schema{protocol.replace('.', '')}"
    sub = Collector(mosquitto.port, f"emoedge/{device}/#")
    pub = make_publisher(mosquitto.url, tmp_path, protocol, device).start()
    pub.publish_estimate(make_estimate())
    pub.publish_estimate(make_estimate("mic", track=None))
    state = EmotionState("happiness", 0.5, 0.3, 0.6, time.time(), {"cam": Contribution(1.0, 0.6, 0.5, 0.3, 0.1, "happy")})
    pub.publish_state(state)
    assert pub.flush(5)
    stats = {"uptime_s": 1.0, "sources": {"cam": {"kind": "video", "enabled": True, "rate_hz": 30.0, "estimates": 1, "dropped": 0}}}
    assert pub.publish_stats(stats)
    sub.wait_for("/stats", 1)
    pub.stop()
    sub.wait_for("/status", 2)
    sub.close()
    kinds = set()
    for topic, body, _, _ in sub.messages:
        kind = kind_of_topic(topic)
        assert kind is not None, topic
        validate(kind, body)
        kinds.add(kind)
        assert body["pub_ts"] >= body["ts"] - 1e-3
    assert kinds == {"estimate", "state", "stats", "status", "enabled"}
    assert [b["status"] for b in sub.on("/status")] == ["online", "stopped"]
    assert [e["seq"] for e in sub.on("/cam/estimate")] == [0]
    est = sub.on("/cam/estimate")[0]
    assert est["track_id"] == 3 and "image" not in est and "audio" not in est


def test_schema_rejects_a_broken_payload() -> None:
    import jsonschema

    good = make_estimate().payload("d") | {"seq": 0, "pub_ts": time.time()}
    validate("estimate", good)
    for broken in ({**good, "valence": 1.5}, {k: v for k, v in good.items() if k != "seq"}, {**good, "frame": [1, 2]}):
        with pytest.raises(jsonschema.ValidationError):
            validate("estimate", broken)


def test_status_retained_and_last_will_on_crash(mosquitto: Mosquitto, tmp_path: Path) -> None:
    """A killed process leaves ``offline`` (the will) as the retained status."""
    script = (
        "import sys, time\n"
        "from edge.config import MqttConfig, OutboxConfig\n"
        "from edge.publish import Publisher\n"
        f"cfg = MqttConfig(url='{mosquitto.url}', outbox=OutboxConfig(path=r'{tmp_path / 'w.sqlite'}'))\n"
        "Publisher(cfg, 'willdev').start()\n"
        "print('up', flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"up"
        watcher = Collector(mosquitto.port, "emoedge/willdev/status")
        assert watcher.wait_for("/status", 1)[-1]["status"] == "online"
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and watcher.on("/status")[-1]["status"] != "offline":
        time.sleep(0.05)
    assert watcher.on("/status")[-1]["status"] == "offline"
    validate("status", watcher.on("/status")[-1])
    watcher.close()


def test_enabled_set_toggles_and_answers_retained(mosquitto: Mosquitto, tmp_path: Path) -> None:
    toggled: list[tuple[str, bool]] = []
    cfg = MqttConfig(url=mosquitto.url, outbox=OutboxConfig(path=tmp_path / "e.sqlite"))
    pub = Publisher(cfg, "endev", sources=["cam", "mic"], on_enable=lambda s, on: toggled.append((s, on))).start()
    ctl = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    ctl.connect("127.0.0.1", mosquitto.port)
    ctl.loop_start()
    ctl.publish("emoedge/endev/cam/enabled/set", "OFF", qos=1).wait_for_publish(2)
    ctl.publish("emoedge/endev/mic/enabled/set", '{"enabled": false}', qos=1).wait_for_publish(2)
    ctl.publish("emoedge/endev/nosuch/enabled/set", "OFF", qos=1).wait_for_publish(2)
    ctl.publish("emoedge/endev/mic/enabled/set", "maybe", qos=1).wait_for_publish(2)
    deadline = time.monotonic() + 5
    while len(toggled) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert toggled == [("cam", False), ("mic", False)]
    late = Collector(mosquitto.port, "emoedge/endev/+/enabled")  # joins late: gets the retained answers
    deadline = time.monotonic() + 5
    latest: dict[str, bool] = {}
    while time.monotonic() < deadline and latest != {"cam": False, "mic": False}:
        got = late.on("/enabled")
        latest = {b["source"]: b["enabled"] for b in got}
        time.sleep(0.02)
    assert latest == {"cam": False, "mic": False}
    for b in got:
        validate("enabled", b)
    ctl.loop_stop()
    late.close()
    pub.stop()
