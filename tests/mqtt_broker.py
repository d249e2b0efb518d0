"""A real Mosquitto broker for tests: on a free loopback port, stoppable and restartable on that port.

Persistence is on, so that a subscriber's persistent session (clean_session=False, QoS 1) and its
queued messages survive a restart of the broker, as they do on a real deployment.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


class Mosquitto:
    """``mosquitto -c conf`` in a temporary folder; ``stop()``/``start()`` keep the port and the persistence."""

    def __init__(self, folder: Path, port: int | None = None, listener_conf: str = "allow_anonymous true\n") -> None:
        if not Path(MOSQUITTO).exists():
            pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.conf = folder / "mosquitto.conf"
        # run as root, mosquitto drops to the "mosquitto" user, which cannot read pytest's private tmp folders
        user = "user root\n" if os.geteuid() == 0 else ""
        self.conf.write_text(
            f"{user}per_listener_settings false\n"
            f"listener {self.port} 127.0.0.1\n"
            f"{listener_conf}"
            f"persistence true\n"
            f"persistence_location {folder}/\n"
            f"autosave_interval 1\n"
            f"max_queued_messages 0\n"
            f"log_dest file {folder}/mosquitto.log\n"
            f"log_type error\nlog_type warning\nlog_type notice\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> Mosquitto:
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_port(self.port)
        except TimeoutError:
            self.stop()
            log = (self.folder / "mosquitto.log").read_text() if (self.folder / "mosquitto.log").exists() else ""
            raise RuntimeError(f"mosquitto did not start: {log[-2000:]}") from None
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def restart(self, down_s: float = 0.0) -> None:
        self.stop()
        time.sleep(down_s)
        self.start()


class Collector:
    """A paho subscriber that records (topic, payload dict or text, retain) of everything it receives.

    ``persistent=True`` uses a persistent session (clean_session=False) so that QoS 1 messages sent
    while it is away (a broker restart) are queued for it.
    """

    def __init__(self, port: int, topic: str, persistent: bool = False, client_id: str | None = None,
                 protocol: int = 4) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.topic = topic
        self.messages: list[tuple[str, Any, bool, float]] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        kwargs: dict[str, Any] = {"client_id": client_id or f"collector-{time.monotonic_ns()}", "protocol": protocol}
        if protocol != mqtt.MQTTv5:
            kwargs["clean_session"] = not persistent
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, **kwargs)
        self.client.reconnect_delay_set(1, 1)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self.subscribed.wait(5), "subscription not acknowledged"

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        try:
            body: Any = json.loads(msg.payload)
        except (ValueError, RecursionError):  # the hostile payloads of test_hostile_mqtt
            body = msg.payload.decode("utf-8", "replace")
        with self.lock:
            self.messages.append((msg.topic, body, bool(msg.retain), time.time()))

    def on(self, suffix: str) -> list[Any]:
        with self.lock:
            return [body for topic, body, _, _ in self.messages if topic.endswith(suffix)]

    def wait_for(self, suffix: str, count: int, timeout: float = 10.0) -> list[Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.on(suffix)
            if len(got) >= count:
                return got
            time.sleep(0.02)
        return self.on(suffix)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """One broker for the session (tests that stop it use their own, see ``Mosquitto``)."""
    broker = Mosquitto(tmp_path_factory.mktemp("mosquitto")).start()
    yield broker
    broker.stop()
