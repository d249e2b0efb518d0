"""The MQTT publisher (paho-mqtt 2, callback API version 2), in the style of Frigate's MQTT contract.

Guarantee, stated plainly: estimates and states are delivered **at least once, in order**, per
device, across broker outages and restarts of EmoEdge (until the bounded outbox has to evict, which
is counted in ``stats``). Each carries a per-source ``seq`` that keeps counting across restarts, so
a subscriber that drops any ``(source, seq)`` it has already seen gets every estimate **exactly
once, in order**. Duplicates can only happen around a lost connection or a crash (a message the
broker got but whose PUBACK never came back is sent again with the same ``seq``).

How: every such message goes to the SQLite outbox first, is published with QoS 1 in outbox order,
and is deleted only after its PUBACK. After a reconnect paho re-sends what was in flight; the
sender sends nothing new until those are acknowledged, so order holds.

``status`` (retained) is ``online`` on every connect, ``offline`` as the last will and ``stopped``
on a clean exit. ``<source>/enabled/set`` turns a source on or off and is answered on the
retained ``<source>/enabled``. ``stats`` is sent only while connected (it is a sample, not a log).
"""

from __future__ import annotations

import collections
import json
import logging
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from edge.config import MqttConfig
from edge.errors import EmoEdgeError
from edge.estimate import SCHEMA_VERSION, EmotionState, Estimate
from edge.paths import cache_dir
from edge.publish.outbox import Outbox
from edge.publish.topics import Topics

log = logging.getLogger(__name__)

# CONNACK reasons that a retry cannot fix (MQTT 5 codes; paho maps 3.1.1 return codes onto them).
FATAL_CONNACK = {
    128: "the broker refused the connection (unspecified error)",
    129: "the broker could not parse the CONNECT packet",
    130: "protocol error",
    132: "the broker does not support this MQTT protocol version (try protocol = \"3.1.1\")",
    133: "the broker rejected the client id",
    134: "bad user name or password",
    135: "not authorized",
    138: "this client is banned",
    140: "bad authentication method",
}
ENABLE_WORDS = {"on": True, "true": True, "1": True, "enable": True, "off": False, "false": False, "0": False, "disable": False}


class BrokerError(EmoEdgeError):
    """The broker refused us for a reason that retrying cannot fix (credentials, TLS, protocol)."""

    exit_code = 4


def default_outbox_path(device_id: str) -> Path:
    return cache_dir() / "outbox" / f"{device_id}.sqlite"


def parse_enabled(payload: bytes) -> bool | None:
    """``ON``/``OFF``, ``true``/``false``, ``1``/``0`` or ``{"enabled": true}``; None when it is none of those."""
    text = payload.decode("utf-8", "replace").strip()
    word = ENABLE_WORDS.get(text.lower())
    if word is not None:
        return word
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if isinstance(data, dict) and isinstance(data.get("enabled"), bool):
        return bool(data["enabled"])
    return None


class Publisher:
    """Publishes a device's estimates, state, stats and status; keeps them in an outbox while away."""

    def __init__(
        self,
        config: MqttConfig,
        device_id: str,
        sources: Iterable[str] = (),
        outbox: Outbox | None = None,
        on_enable: Callable[[str, bool], None] | None = None,
        window: int = 20,
        on_enroll: Callable[[bytes], dict[str, Any]] | None = None,
    ) -> None:
        self.config = config
        self.device_id = device_id
        self.topics = Topics(config.topic_root, device_id)
        self.enabled: dict[str, bool] = {s: True for s in sources}
        self.outbox = outbox or Outbox(
            config.outbox.path or default_outbox_path(device_id), config.outbox.max_messages, config.outbox.synchronous
        )
        self.on_enable = on_enable
        self.on_enroll = on_enroll  # enroll/set -> the reply published on enroll (the pipeline sets it)
        self.window = window
        self._room = window  # in flight at most: the window, or less when the broker's Receive Maximum says so
        self.error: BrokerError | None = None
        self.connected = threading.Event()
        self.listening = threading.Event()  # the <source>/enabled/set subscription is acknowledged
        self._first_connack = threading.Event()
        self._cond = threading.Condition()
        self._acks: collections.deque[tuple[int, bool]] = collections.deque()
        self._inflight: dict[int, int] = {}  # mid -> outbox row id (owned by the sender thread)
        self._draining = False
        self._stopping = threading.Event()
        self._sender: threading.Thread | None = None
        self._counts = collections.Counter[str]()
        self._status_details: dict[str, Any] = {}  # e.g. each model's device check, carried by every status
        self._disconnected_at: float | None = time.time()
        self._client = self._make_client()

    # --- set-up ----------------------------------------------------------------------------
    def _make_client(self) -> mqtt.Client:
        cfg = self.config
        protocol = mqtt.MQTTv5 if cfg.protocol == "5" else mqtt.MQTTv311
        client_id = cfg.client_id or f"emoedge-{self.device_id}-{uuid.uuid4().hex[:8]}"
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol)
        paho_log = logging.getLogger("edge.publish.paho")
        if paho_log.isEnabledFor(logging.DEBUG):  # paho logs every refused retry as an error: only at -vv
            client.enable_logger(paho_log)
        client.max_inflight_messages_set(self.window)
        client.reconnect_delay_set(1, 8)
        if cfg.username is not None:
            password = cfg.password()
            client.username_pw_set(cfg.username, password.get_secret_value() if password else None)
        if cfg.use_tls:
            tls = cfg.tls
            key_password = tls.key_password() if tls else None
            try:
                client.tls_set(
                    ca_certs=str(tls.ca_file) if tls else None,
                    certfile=str(tls.cert_file) if tls and tls.cert_file else None,
                    keyfile=str(tls.key_file) if tls and tls.key_file else None,
                    keyfile_password=key_password.get_secret_value() if key_password else None,
                    cert_reqs=ssl.CERT_REQUIRED,
                )
            except (OSError, ssl.SSLError, ValueError) as exc:
                raise BrokerError(f"TLS set-up for {cfg.url} failed: {exc} (check mqtt.tls files)") from None
            if tls and tls.insecure:
                client.tls_insecure_set(True)
        will = self._status_payload("offline")
        client.will_set(self.topics.status, will, qos=cfg.qos.status, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.on_subscribe = lambda *args: self.listening.set()
        return client

    def _status_payload(self, status: str) -> bytes:
        now = time.time()
        body = {"v": SCHEMA_VERSION, "device": self.device_id, "status": status,
                "seq": self.outbox.next_seq("status"), "ts": now, "pub_ts": now, **self._status_details}
        return json.dumps(body, separators=(",", ":")).encode()

    def set_status_details(self, details: dict[str, Any]) -> None:
        """Carry ``details`` (JSON-able) in every ``status`` payload from now on, and republish ``online`` when
        connected, so that a subscriber sees at once, e.g., that a model fell back to FP32 and why. The last
        will is set at connect time and keeps the details of then."""
        self._status_details = dict(details)
        if self.connected.is_set():
            self._client.publish(self.topics.status, self._status_payload("online"), qos=self.config.qos.status, retain=True)

    def start(self, wait_s: float = 5.0) -> Publisher:
        """Connect (in the background if the broker is away) and start sending the outbox.

        Raises BrokerError at once for what retrying cannot fix: TLS verification, refused credentials.
        """
        cfg = self.config
        reachable = True
        try:
            self._client.connect(cfg.host, cfg.port, keepalive=cfg.keepalive_s)
        except ssl.SSLError as exc:
            raise BrokerError(f"TLS handshake with {cfg.host}:{cfg.port} failed: {exc.reason or exc}") from None
        except OSError as exc:
            log.warning("broker %s:%s not reachable (%s); keeping messages in the outbox and retrying", cfg.host, cfg.port, exc)
            self._client.connect_async(cfg.host, cfg.port, keepalive=cfg.keepalive_s)
            reachable = False
        self._client.loop_start()
        self._sender = threading.Thread(target=self._send_loop, name="mqtt-outbox", daemon=True)
        self._sender.start()
        if wait_s > 0 and reachable:  # wait for the CONNACK: refused credentials are reported here
            deadline = time.monotonic() + wait_s
            self._first_connack.wait(wait_s)
            self.check()
            if self.connected.is_set():
                self.listening.wait(max(0.0, deadline - time.monotonic()))
        return self

    def check(self) -> None:
        """Raise the fatal broker error, if one happened."""
        if self.error is not None:
            raise self.error

    # --- paho callbacks (network thread) ----------------------------------------------------
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any) -> None:
        if reason.is_failure:
            why = FATAL_CONNACK.get(reason.value)
            if why is not None:
                self.error = BrokerError(f"broker {self.config.host}:{self.config.port} refused the connection: {why} ({reason})")
                log.error("%s", self.error)
                client.disconnect()
                self._stopping.set()
            else:
                log.warning("broker refused the connection for now (%s); retrying", reason)
            self._first_connack.set()
            with self._cond:
                self._cond.notify_all()
            return
        receive_max = getattr(props, "ReceiveMaximum", None)  # MQTT 5: the broker's limit on unacknowledged QoS>0
        self._room = min(self.window, int(receive_max)) if receive_max else self.window
        self._counts["connects"] += 1
        if self._disconnected_at is not None and self._counts["connects"] > 1:
            self._counts["offline_ms"] += int((time.time() - self._disconnected_at) * 1e3)
        self._disconnected_at = None
        client.publish(self.topics.status, self._status_payload("online"), qos=self.config.qos.status, retain=True)
        client.subscribe(self.topics.enabled_set_filter, qos=1)
        client.subscribe(self.topics.enroll_set, qos=1)
        for source, on in self.enabled.items():
            self._publish_enabled(source, on)
        log.info("connected to %s:%s", self.config.host, self.config.port)
        self.connected.set()
        self._first_connack.set()
        with self._cond:
            self._cond.notify_all()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any) -> None:
        if self.connected.is_set():
            log.warning("disconnected from the broker (%s); keeping messages in the outbox", reason)
            self._counts["disconnects"] += 1
            self._disconnected_at = time.time()
        self.connected.clear()
        self.listening.clear()
        with self._cond:
            self._draining = True  # paho re-sends what was in flight; send nothing new until it is acked
            self._cond.notify_all()

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: ReasonCode, props: Any) -> None:
        self._acks.append((mid, reason.is_failure))
        with self._cond:
            self._cond.notify_all()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == self.topics.enroll_set:
            self._answer_enroll(bytes(msg.payload))
            return
        source = self.topics.source_of_enabled_set(msg.topic)
        if source is None:
            return
        if source not in self.enabled:
            log.warning("%s: no source named '%s' (sources: %s)", msg.topic, source, ", ".join(self.enabled))
            return
        value = parse_enabled(msg.payload)
        if value is None:
            log.warning("%s: expected ON/OFF, true/false or {\"enabled\": true}, got %r", msg.topic, msg.payload[:40])
            return
        self.enabled[source] = value
        if self.on_enable is not None:
            self.on_enable(source, value)
        self._publish_enabled(source, value)

    def _answer_enroll(self, payload: bytes) -> None:
        if self.on_enroll is not None:
            reply = self.on_enroll(payload)
        else:
            reply = {"action": None, "ok": False, "message": "this device has no model that can adapt"}
        now = time.time()
        body = {"v": SCHEMA_VERSION, "device": self.device_id, **reply, "seq": self.outbox.next_seq("enroll"),
                "ts": now, "pub_ts": now}
        self._client.publish(self.topics.enroll, json.dumps(body, separators=(",", ":")), qos=1, retain=False)

    def _publish_enabled(self, source: str, on: bool) -> None:
        now = time.time()
        body = {"v": SCHEMA_VERSION, "device": self.device_id, "source": source, "enabled": on,
                "seq": self.outbox.next_seq(f"enabled:{source}"), "ts": now, "pub_ts": now}
        self._client.publish(self.topics.enabled(source), json.dumps(body, separators=(",", ":")), qos=1, retain=True)

    # --- the sender thread ------------------------------------------------------------------
    def _send_loop(self) -> None:
        cursor = 0
        while True:
            with self._cond:
                self._cond.wait(0.2)
            self._take_acks()
            if self._stopping.is_set():
                return
            if not self.connected.is_set():
                continue
            if self._draining:
                if self._inflight:
                    continue
                self._draining = False
            room = self._room - len(self._inflight)
            if room <= 0:
                continue
            for row in self.outbox.after(cursor, room):
                payload = row.payload[:-1] + b',"pub_ts":' + f"{time.time():.6f}".encode() + b"}"
                info = self._client.publish(row.topic, payload, qos=row.qos, retain=row.retain)
                if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
                    log.warning("publish to %s failed (%s); will retry", row.topic, mqtt.error_string(info.rc))
                    break  # not queued by paho: send it again next round
                self._inflight[info.mid] = row.id
                cursor = self.outbox.sent_upto = row.id
                self._counts["sent"] += 1
                if info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN:
                    break  # paho keeps it and re-sends after the reconnect

    def _take_acks(self) -> None:
        done: list[int] = []
        while self._acks:
            mid, failed = self._acks.popleft()
            row = self._inflight.pop(mid, None)
            if row is None:
                continue  # a status/enabled/stats message, not from the outbox
            if failed:
                self._counts["rejected"] += 1
            self._counts["acked"] += 1
            done.append(row)
        self.outbox.ack(done)

    # --- what the pipeline calls -----------------------------------------------------------
    def publish_estimate(self, estimate: Estimate) -> int:
        """Queue one estimate (never dropped while the outbox has room); returns its seq."""
        seq = self.outbox.put(
            estimate.source, self.topics.estimate(estimate.source), estimate.payload(self.device_id),
            qos=self.config.qos.estimate,
        )
        self._wake()
        return seq

    def publish_state(self, state: EmotionState) -> int:
        """Queue the fused state (retained; only the newest unsent one is kept)."""
        seq = self.outbox.put(
            "state", self.topics.state, state.payload(self.device_id), qos=self.config.qos.state, retain=True,
            replace_unsent=True,
        )
        self._wake()
        return seq

    def publish_stats(self, stats: dict[str, Any]) -> bool:
        """Send a stats sample now if connected (stats are not kept while the broker is away)."""
        if not self.connected.is_set():
            return False
        now = time.time()
        body = {"v": SCHEMA_VERSION, "device": self.device_id, "seq": self.outbox.next_seq("stats"),
                "ts": now, "pub_ts": now, **stats, "mqtt": self.stats()}
        self._client.publish(self.topics.stats, json.dumps(body, separators=(",", ":")), qos=self.config.qos.stats)
        return True

    def set_enabled(self, source: str, on: bool) -> None:
        """The device itself changed a source (answered on the retained ``<source>/enabled``)."""
        self.enabled[source] = on
        if self.connected.is_set():
            self._publish_enabled(source, on)

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def stats(self) -> dict[str, Any]:
        offline_ms = self._counts["offline_ms"]
        if self._disconnected_at is not None:
            offline_ms += int((time.time() - self._disconnected_at) * 1e3)
        return {
            "connected": self.connected.is_set(),
            "connects": self._counts["connects"],
            "disconnects": self._counts["disconnects"],
            "offline_s": round(offline_ms / 1e3, 3),
            "sent": self._counts["sent"],
            "acked": self._counts["acked"],
            "rejected": self._counts["rejected"],
            "inflight": len(self._inflight),
            "outbox": len(self.outbox),
            "evicted": self.outbox.evicted,
        }

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until the outbox is empty and nothing is in flight; False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.outbox) == 0 and not self._inflight:
                return True
            if self.error is not None:
                return False
            time.sleep(0.02)
        return len(self.outbox) == 0 and not self._inflight

    def stop(self, flush_s: float = 5.0, status: str = "stopped") -> None:
        """Send what is pending (up to ``flush_s``), publish ``stopped``, disconnect cleanly.

        What could not be sent stays in the outbox for the next start.
        """
        if self.connected.is_set() and self.error is None:
            if not self.flush(flush_s):
                log.warning("%d message(s) not acknowledged; they stay in the outbox %s", len(self.outbox), self.outbox.path)
            info = self._client.publish(self.topics.status, self._status_payload(status), qos=self.config.qos.status, retain=True)
            try:
                info.wait_for_publish(2.0)
            except (RuntimeError, ValueError):
                pass
        self._stopping.set()
        self._wake()
        if self._sender is not None:
            self._sender.join(2.0)
        self.connected.clear()
        self._client.disable_logger()  # paho's loop logs a spurious "not connected" error while it winds down
        self._client.disconnect()
        self._client.loop_stop()
        self.outbox.close()
