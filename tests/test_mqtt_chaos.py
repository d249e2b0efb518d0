"""Nothing is lost: the broker goes away mid-stream and comes back; EmoEdge restarts with a full outbox.

The claim checked is the documented guarantee (edge/publish/client.py): at least once and in order
on the wire; exactly once and in order for a subscriber that drops any (source, seq) it has seen.
The subscriber uses a persistent session (QoS 1), as a robot or kiosk should.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from edge.config import MqttConfig, OutboxConfig
from edge.estimate import Estimate, ModelInfo
from edge.publish import Publisher
from tests.mqtt_broker import Collector, Mosquitto, free_port

MODEL = ModelInfo("toy", "0.0.1", "ab" * 32, "onnxruntime", "fp32")


def estimate(source: str, i: int) -> Estimate:
    return Estimate(source, "eeg", {"low_valence": 0.4, "high_valence": 0.6}, "high_valence", 0.2, 0.12, None,
                    time.time(), 2.0, MODEL)


def dedupe(bodies: list[dict]) -> tuple[list[int], int]:
    """Sequence numbers in arrival order with repeats dropped, and how many repeats there were."""
    seen: set[int] = set()
    order: list[int] = []
    for b in bodies:
        if b["seq"] not in seen:
            seen.add(b["seq"])
            order.append(b["seq"])
    return order, len(bodies) - len(order)


def wait_distinct(sub: Collector, suffix: str, n: int, timeout: float) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = sub.on(suffix)
        if len({b["seq"] for b in got}) >= n:
            return got
        time.sleep(0.05)
    return sub.on(suffix)


def test_broker_outage_mid_stream_loses_nothing(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "broker").start()
    sub = Collector(broker.port, "emoedge/chaos/+/estimate", persistent=True, client_id="robot-chaos")
    cfg = MqttConfig(url=broker.url, protocol="5", keepalive_s=5, outbox=OutboxConfig(path=tmp_path / "o.sqlite"))
    pub = Publisher(cfg, "chaos", sources=["eeg", "mic"]).start()
    sent = {"eeg": 0, "mic": 0}
    peak_outbox = 0
    stop = threading.Event()

    def produce() -> None:
        nonlocal peak_outbox
        while not stop.is_set():
            for source in sent:
                pub.publish_estimate(estimate(source, sent[source]))
                sent[source] += 1
            peak_outbox = max(peak_outbox, len(pub.outbox))
            time.sleep(0.02)

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        time.sleep(1.5)
        broker.stop()  # mid-stream, with messages in flight
        time.sleep(3.0)
        assert not pub.connected.is_set()
        broker.start()
        time.sleep(1.5)
    finally:
        stop.set()
        producer.join()
    assert pub.flush(15), pub.stats()
    stats = pub.stats()
    for source, n in sent.items():
        got = wait_distinct(sub, f"/{source}/estimate", n, 15)
        order, repeats = dedupe(got)
        assert order == list(range(n)), f"{source}: {len(order)} distinct of {n}, first gap near {next((i for i, s in enumerate(order) if s != i), None)}"
        print(f"{source}: {n} estimates, {repeats} re-sent duplicate(s) dropped by seq")
    assert stats["disconnects"] >= 1 and stats["connects"] >= 2
    assert peak_outbox > 50  # the outage really queued messages on disk
    assert stats["evicted"] == 0 and stats["outbox"] == 0
    pub.stop()
    sub.close()
    broker.stop()


def test_restart_with_full_outbox_sends_everything_in_order(tmp_path: Path) -> None:
    port = free_port()
    url = f"mqtt://127.0.0.1:{port}"
    outbox = tmp_path / "o.sqlite"
    cfg = MqttConfig(url=url, protocol="3.1.1", outbox=OutboxConfig(path=outbox))
    first = Publisher(cfg, "restart", sources=["mic"]).start(wait_s=0.5)  # no broker yet
    for i in range(40):
        first.publish_estimate(estimate("mic", i))
    first.stop(flush_s=0.2)
    assert outbox.exists()

    broker = Mosquitto(tmp_path / "broker", port=port).start()
    sub = Collector(broker.port, "emoedge/restart/+/estimate", persistent=True, client_id="kiosk-restart")
    second = Publisher(cfg, "restart", sources=["mic"]).start()
    assert len(second.outbox) == 40
    for i in range(5):
        assert second.publish_estimate(estimate("mic", 40 + i)) == 40 + i  # seq keeps counting
    assert second.flush(10)
    order, repeats = dedupe(wait_distinct(sub, "/mic/estimate", 45, 10))
    assert order == list(range(45)) and repeats == 0
    second.stop()
    sub.close()
    broker.stop()
