"""Anyone who can publish to the broker attacks the bridge (issue 17, findings 1 and 8): it keeps publishing.

Real Mosquitto, the real publisher and pipeline with a real ONNX model; the attacks are the ones the
issue reproduced: a JSON array nested 5,000 deep on ``<source>/enabled/set`` (also retained), a
flood of 2,000 commands, a broker that stops acknowledging, hostile ``state`` payloads for watch.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.config import DeviceConfig, MqttConfig, OutboxConfig
from edge.estimate import Estimate, ModelInfo
from edge.publish import Publisher
from edge.publish.control import MAX_COMMAND_BYTES, PayloadRejected, parse_enabled, parse_json_bounded
from edge.verbs.run import serve
from tests.mqtt_broker import Collector, Mosquitto
from tests.pipeline_helpers import RAVDESS, ListSource, make_model

ROOT = Path(__file__).resolve().parent.parent
DEEP = b"[" * 5000 + b"]" * 5000


def _json_values() -> st.SearchStrategy[object]:
    leaves = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
    return st.recursive(leaves, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                        max_leaves=30)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(
    st.binary(max_size=600),
    _json_values().map(lambda v: json.dumps(v).encode()),
    st.integers(1, 20_000).map(lambda d: b"[" * d + b"]" * d),
    st.integers(1, 20_000).map(lambda d: b'{"enabled":' * d + b"true" + b"}" * d),
    st.sampled_from([b"ON", b"off", b" true\n", b'{"enabled": false}', b'{"enabled": 1}', b"\xff\xfe", b""]),
))
def test_control_parser_never_raises_anything_but_payload_rejected(payload: bytes) -> None:
    try:
        value = parse_enabled(payload)
    except PayloadRejected as exc:
        assert str(exc)
        return
    assert isinstance(value, bool) and len(payload) <= MAX_COMMAND_BYTES


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.binary(max_size=2000), st.integers(1, 50_000).map(lambda d: b'{"a":' * d + b"1" + b"}" * d),
                 _json_values().map(lambda v: json.dumps(v).encode())))
def test_bounded_json_parser_never_raises_anything_but_payload_rejected(payload: bytes) -> None:
    try:
        parse_json_bounded(payload)
    except PayloadRejected:
        pass


def test_the_parser_accepts_what_the_contract_names_and_refuses_the_rest() -> None:
    assert parse_enabled(b"ON") is True and parse_enabled(b"disable") is False
    assert parse_enabled(b'{"enabled": false, "v": 1}') is False
    for bad in (DEEP, b'{"enabled": "yes"}', b'{"enabled": true, "rm": 1}', b"[true]", b"x" * 1000):
        with pytest.raises(PayloadRejected):
            parse_enabled(bad)


def bridge_config(broker: Mosquitto, tmp: Path, device: str, **mqtt_extra: object) -> DeviceConfig:
    models = tmp / "models"
    make_model(models, "speech", 1600, RAVDESS, "speech", window_s=0.1)
    return DeviceConfig.model_validate({
        "device_id": device,
        "mqtt": {"url": broker.url, "outbox": {"path": str(tmp / "o.sqlite")}, "state_interval_s": 0.5,
                 "stats_interval_s": 0.5, **mqtt_extra},
        "models": {"speech": {"path": str(models / "speech")}}, "backend": {"threads": 1},
        "sources": [{"name": "mic", "kind": "replay", "path": "x", "model": "speech", "hop_s": 0.1}],
    })


def live_mic(seconds: float) -> ListSource:
    """Audio blocks of 0.1 s paced at 50 ms: about 20 estimates a second for ``seconds``."""
    rng = np.random.default_rng(0)
    n = int(seconds / 0.05)
    return ListSource("mic", "audio", [rng.uniform(-1, 1, 1600).astype(np.float32) for _ in range(n)], 16000.0,
                      interval=0.05)


def sender(port: int) -> mqtt.Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"attacker-{time.monotonic_ns()}")
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client


def arrival_gaps(sub: Collector, suffix: str, after: float) -> list[float]:
    with sub.lock:
        times = [t for topic, _, _, t in sub.messages if topic.endswith(suffix) and t >= after]
    return [b - a for a, b in zip(times, times[1:], strict=False)]


def test_deep_payload_on_enabled_set_does_not_silence_the_device(mosquitto: Mosquitto, tmp_path: Path) -> None:
    cfg = bridge_config(mosquitto, tmp_path, "deepdev")
    sub = Collector(mosquitto.port, "emoedge/deepdev/#")
    attacker = sender(mosquitto.port)
    attacked_at: list[float] = []

    def attack() -> None:
        attacked_at.append(time.time())
        attacker.publish("emoedge/deepdev/mic/enabled/set", DEEP, qos=1).wait_for_publish(2)
        attacker.publish("emoedge/deepdev/mic/enabled/set", b'{"enabled": ' * 3000, qos=1).wait_for_publish(2)
        time.sleep(1.0)
        attacker.publish("emoedge/deepdev/mic/enabled/set", b"OFF", qos=1).wait_for_publish(2)

    threading.Timer(1.0, attack).start()
    start = time.monotonic()
    assert serve(cfg, duration=3.5, plain=True, extra_sources={"mic": live_mic(6)}) == 0
    assert time.monotonic() - start < 10  # ends on time
    time.sleep(0.3)
    attacker.loop_stop()
    sub.close()
    after = [b for t, b in [(t, b) for topic, b, _, t in sub.messages if topic.endswith("/mic/estimate")]
             if t > attacked_at[0] + 0.3]
    assert len(after) >= 5, "estimates stopped after the hostile payload"
    assert [b["enabled"] for b in sub.on("/mic/enabled")][-1] is False  # a later OFF still works
    assert [b["status"] for b in sub.on("/status")][-1] == "stopped"
    mqtt_stats = sub.on("/stats")[-1]["mqtt"]
    assert mqtt_stats["commands_rejected"] >= 2 and mqtt_stats["callback_errors"] == 0
    assert mqtt_stats["inflight"] < 20


def test_a_retained_command_is_applied_once_and_cleared(mosquitto: Mosquitto, tmp_path: Path) -> None:
    attacker = sender(mosquitto.port)
    attacker.publish("emoedge/retdev/mic/enabled/set", DEEP, qos=1, retain=True).wait_for_publish(2)
    cfg = bridge_config(mosquitto, tmp_path, "retdev")
    sub = Collector(mosquitto.port, "emoedge/retdev/#")
    assert serve(cfg, duration=1.5, plain=True, extra_sources={"mic": live_mic(3)}) == 0
    sub.close()
    assert len(sub.on("/mic/estimate")) >= 5  # the retained hostile command broke no start
    attacker.publish("emoedge/retdev/mic/enabled/set", b"OFF", qos=1, retain=True).wait_for_publish(2)
    sub = Collector(mosquitto.port, "emoedge/retdev/#")
    assert serve(cfg, duration=1.0, plain=True, extra_sources={"mic": live_mic(2)}) == 0  # applied once ...
    sub.close()
    assert [b["enabled"] for b in sub.on("/mic/enabled")][-1] is False
    later = Collector(mosquitto.port, "emoedge/retdev/mic/enabled/set")  # ... and cleared from the broker
    time.sleep(0.5)
    later.close()
    attacker.loop_stop()
    assert [b for b in later.on("/enabled/set") if b] == []


def test_a_command_flood_is_rate_limited_and_estimates_keep_flowing(
        mosquitto: Mosquitto, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = bridge_config(mosquitto, tmp_path, "flooddev")
    sub = Collector(mosquitto.port, "emoedge/flooddev/#")
    attacker = sender(mosquitto.port)
    flood_at: list[float] = []

    def flood() -> None:
        flood_at.append(time.time())
        for i in range(2000):
            payload = [b"ON", b"garbage", DEEP[:400], b'{"enabled": true}'][i % 4]
            attacker.publish(f"emoedge/flooddev/{'mic' if i % 3 else 'nosuch'}/enabled/set", payload, qos=0)

    threading.Timer(0.8, flood).start()
    with caplog.at_level(logging.WARNING):
        assert serve(cfg, duration=4.0, plain=True, extra_sources={"mic": live_mic(6)}) == 0
    attacker.loop_stop()
    time.sleep(0.3)
    sub.close()
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("edge")]
    assert len(warnings) <= 10, [r.getMessage() for r in warnings]  # was 1,146 lines
    gaps = arrival_gaps(sub, "/mic/estimate", flood_at[0])
    assert gaps and max(gaps) < 1.5, f"estimates paused {max(gaps):.2f} s"  # was a 3 s pause
    mqtt_stats = sub.on("/stats")[-1]["mqtt"]
    assert mqtt_stats["commands_dropped"] > 1000 and mqtt_stats["callback_errors"] == 0
    assert sub.on("/mic/enabled")[-1]["enabled"] is True


def estimate(i: int) -> Estimate:
    info = ModelInfo("speech", "0.0.1", "0" * 64, "onnxruntime", "fp32")
    return Estimate("mic", "speech", {"calm": 1.0}, "calm", 0.9, 0.1, -0.2, time.time(), 0.1, info, {"infer": 1.0})


def test_a_stalled_connection_is_detected_and_remade(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "broker").start()
    try:
        cfg = MqttConfig(url=broker.url, keepalive_s=30, ack_timeout_s=1, outbox=OutboxConfig(path=tmp_path / "o.sqlite"))
        pub = Publisher(cfg, "stalldev", ["mic"]).start()
        sub = Collector(broker.port, "emoedge/stalldev/mic/estimate")
        for i in range(5):
            pub.publish_estimate(estimate(i))
        assert pub.flush(5)
        assert broker.proc is not None
        os.kill(broker.proc.pid, signal.SIGSTOP)  # TCP stays up, nothing is acknowledged
        try:
            for i in range(5, 15):
                pub.publish_estimate(estimate(i))
            deadline = time.monotonic() + 6
            while pub.stats()["stalls"] == 0 and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            os.kill(broker.proc.pid, signal.SIGCONT)
        assert pub.stats()["stalls"] >= 1
        assert pub.flush(15), pub.stats()
        got = sorted({b["seq"] for b in sub.wait_for("/estimate", 15, timeout=5)})
        assert got == list(range(15))
        assert pub.stats()["connects"] >= 2
        pub.stop()
        sub.close()
    finally:
        broker.stop()


def test_watch_survives_hostile_state_payloads(mosquitto: Mosquitto) -> None:
    attacker = sender(mosquitto.port)
    for i, payload in enumerate([DEEP, b"[1, 2]", b'{"valence": "high", "label": []}', b'{"ts": 1e300, "valence": 1e999}',
                                 b'{"sources": {"x": 3}}', b"\xff" * 10]):
        attacker.publish(f"hostile/evil{i}/state", payload, qos=1, retain=True).wait_for_publish(2)
    proc = subprocess.Popen([sys.executable, "-m", "edge", "watch", "--mqtt", mosquitto.url, "--root", "hostile", "--timeout", "15",
                             "--count", "1"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("watching")
        time.sleep(1.0)  # every hostile retained payload has reached watch by now
        good = {"v": 1, "device": "gooddev", "seq": 0, "ts": time.time(), "pub_ts": time.time(), "label": "happiness",
                "valence": 0.5, "arousal": 0.2, "confidence": 0.8, "sources": {}}
        attacker.publish("hostile/gooddev/state", json.dumps(good), qos=1).wait_for_publish(2)
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
        for i in range(6):
            attacker.publish(f"hostile/evil{i}/state", b"", qos=1, retain=True).wait_for_publish(2)
        attacker.loop_stop()
    assert proc.returncode == 0, err
    assert "gooddev: happiness" in out
    assert "Traceback" not in err and "RecursionError" not in err
