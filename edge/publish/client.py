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

Nothing from outside can stop it: commands (``edge.publish.commands``) go through ``edge.publish.control`` (bounded,
validated, never raising), every paho callback is guarded (an exception is logged and counted in
``stats.mqtt.callback_errors``, never ends paho's network thread), commands beyond a steady rate are
dropped and counted, and a connection that stays connected but acknowledges nothing for
``ack_timeout_s`` is closed and re-made (``stalls``). A retained ``.../enabled/set`` is applied once
and then cleared from the broker, so that one stale or hostile retained command cannot act on every
later start.
"""

from __future__ import annotations

import collections
import json
import logging
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from edge.config import MqttConfig
from edge.errors import ConfigError
from edge.estimate import SCHEMA_VERSION, EmotionState, Estimate
from edge.paths import cache_dir
from edge.publish.commands import Commands
from edge.publish.connection import FATAL_CONNACK, BrokerError, CallbackGuard, make_client
from edge.publish.outbox import EvictionReport, Outbox
from edge.publish.topics import Topics
from edge.ratelog import RateLimitedLog

log = logging.getLogger(__name__)
EVICTION_REPORT_S = 10.0  # evictions are logged at most this often, and at exit
ACK_DELETE_S = 0.1  # acknowledged rows are deleted from the outbox in one transaction at most this often

def default_outbox_path(device_id: str) -> Path:
    return cache_dir() / "outbox" / f"{device_id}.sqlite"


def open_outbox(config: MqttConfig, device_id: str) -> Outbox:
    """The configured outbox; a path that cannot be created is a ConfigError naming mqtt.outbox.path."""
    from edge.publish.outbox import OutboxError

    path = config.outbox.path or default_outbox_path(device_id)
    try:
        return Outbox(path, config.outbox.max_messages, config.outbox.synchronous)
    except OutboxError as exc:
        key = "mqtt.outbox.path" if config.outbox.path else "the default outbox (set mqtt.outbox.path, or EMOEDGE_CACHE)"
        raise ConfigError(f"{key}: {exc}") from None


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
        self.outbox = outbox or open_outbox(config, device_id)
        self.window = window
        self._room = window  # in flight at most: the window, or less when the broker's Receive Maximum says so
        self.error: BrokerError | None = None
        self.connected = threading.Event()
        self.listening = threading.Event()  # the <source>/enabled/set subscription is acknowledged
        self._first_connack = threading.Event()
        self._cond = threading.Condition()
        self._acks: collections.deque[tuple[int, bool]] = collections.deque()
        self._inflight: dict[int, int] = {}  # mid -> outbox row id (guarded by _send_lock)
        self._send_lock = threading.Lock()  # one send round at a time: the outbox's order is the order on the wire
        self._cursor = 0  # the last outbox id handed to paho
        self._draining = False
        self._stopping = threading.Event()
        self._sender: threading.Thread | None = None
        self._counts = collections.Counter[str]()
        self._ratelog = RateLimitedLog(log)
        self.commands = Commands(self.topics, device_id, self.outbox, sources, self._counts, self._ratelog,
                                 on_enable=on_enable, on_enroll=on_enroll)
        self._status_details: dict[str, Any] = {}  # e.g. each model's device check, carried by every status
        self._disconnected_at: float | None = time.time()
        self._guard = CallbackGuard(log)
        self._last_progress = time.monotonic()  # the last PUBACK, or when the first message went in flight
        self._evictions = EvictionReport(self.outbox, log, EVICTION_REPORT_S)
        self._client = self._make_client()

    @property
    def enabled(self) -> dict[str, bool]:
        """Each source's on/off state as commanded (``<source>/enabled``)."""
        return self.commands.enabled

    @property
    def on_enroll(self) -> Callable[[bytes], dict[str, Any]] | None:
        """enroll/set -> the reply published on enroll (the pipeline sets it)."""
        return self.commands.on_enroll

    @on_enroll.setter
    def on_enroll(self, handler: Callable[[bytes], dict[str, Any]] | None) -> None:
        self.commands.on_enroll = handler

    # --- set-up ----------------------------------------------------------------------------
    def _make_client(self) -> mqtt.Client:
        cfg = self.config
        return make_client(
            cfg, cfg.client_id or f"emoedge-{self.device_id}-{uuid.uuid4().hex[:8]}",
            will=(self.topics.status, self._status_payload("offline"), cfg.qos.status), max_inflight=self.window,
            guard=self._guard, callbacks={"connect": self._on_connect, "disconnect": self._on_disconnect,
                                          "publish": self._on_publish, "message": self._on_message,
                                          "subscribe": lambda *args: self.listening.set()},
        )

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
            self.commands.publish_enabled(client, source, on)
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
        self._last_progress = time.monotonic()
        self._acks.append((mid, reason.is_failure))
        with self._cond:
            self._cond.notify_all()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self.commands.on_message(client, msg)

    # --- the sender thread ------------------------------------------------------------------
    def _send_loop(self) -> None:
        acked: list[int] = []
        deleted_at = time.monotonic()
        while True:
            with self._cond:
                self._cond.wait(0.2)
            with self._send_lock:
                acked += self._take_acks()  # frees room in the window now; the rows are deleted below
                stopping = self._stopping.is_set()
                if not stopping and self._may_send():
                    self._send_round()
            # Deleting what the broker already has is on nobody's path: batched (one transaction a tenth of a
            # second, not one a PUBACK), so that the pipeline's put() seldom waits for the outbox's lock.
            if acked and (stopping or time.monotonic() - deleted_at >= ACK_DELETE_S):
                self.outbox.ack(acked)
                acked, deleted_at = [], time.monotonic()
            if stopping:
                return

    def _may_send(self) -> bool:
        """The sender thread's checks before a round: connected, not stalled, not re-sending after a reconnect."""
        self._evictions.log()
        if not self.connected.is_set():
            self._last_progress = time.monotonic()
            return False
        if not self._inflight:
            self._last_progress = time.monotonic()
        elif time.monotonic() - self._last_progress > self.config.ack_timeout_s:
            self._reconnect_stalled()
            return False
        if self._draining:
            if self._inflight:
                return False
            self._draining = False
        return True

    def _send_round(self) -> None:
        """Hand what the window has room for to paho, oldest first (the caller holds ``_send_lock``)."""
        room = self._room - len(self._inflight)
        if room <= 0:
            return
        if not self._inflight:
            self._last_progress = time.monotonic()  # the stall clock starts with the first message in flight
        for row in self.outbox.after(self._cursor, room):
            payload = row.payload[:-1] + b',"pub_ts":' + f"{time.time():.6f}".encode() + b"}"
            info = self._client.publish(row.topic, payload, qos=row.qos, retain=row.retain)
            if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
                log.warning("publish to %s failed (%s); will retry", row.topic, mqtt.error_string(info.rc))
                break  # not queued by paho: send it again next round
            self._inflight[info.mid] = row.id
            self._cursor = self.outbox.sent_upto = row.id
            self._counts["sent"] += 1
            if info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN:
                break  # paho keeps it and re-sends after the reconnect

    def _send_or_wake(self) -> None:
        """After a put: send from the calling thread when connected and no round is running (one thread hand-off
        less on the way to the broker); otherwise the sender thread does it."""
        if self.connected.is_set() and not self._draining and not self._stopping.is_set() \
                and self._send_lock.acquire(blocking=False):
            try:
                self._send_round()
            finally:
                self._send_lock.release()
        else:
            self._wake()

    def _reconnect_stalled(self) -> None:
        """Connected, yet nothing acknowledged for ack_timeout_s: close the socket so that paho reconnects and re-sends."""
        self._counts["stalls"] += 1
        self._last_progress = time.monotonic()
        log.warning("broker %s:%s acknowledged nothing for %.0f s with %d message(s) in flight; reconnecting",
                    self.config.host, self.config.port, self.config.ack_timeout_s, len(self._inflight))
        self._drop_connection()  # paho's loop sees the connection end, reconnects and re-sends what was in flight

    def _drop_connection(self) -> None:
        """End the TCP connection under paho without an MQTT DISCONNECT (so the broker treats it as lost)."""
        shutdown = getattr(self._client.socket(), "shutdown", None)
        try:
            if shutdown is not None:
                shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    @property
    def evicted(self) -> int:
        """Messages evicted from the full outbox, in all (persisted across restarts); still known after stop()."""
        return self._evictions.seen

    def _take_acks(self) -> list[int]:
        """The outbox ids the broker acknowledged since the last call, taken out of the in-flight window."""
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
        return done

    # --- what the pipeline calls -----------------------------------------------------------
    def publish_estimate(self, estimate: Estimate) -> int:
        """Queue one estimate (never dropped while the outbox has room); returns its seq."""
        seq = self.outbox.put(
            estimate.source, self.topics.estimate(estimate.source), estimate.payload(self.device_id),
            qos=self.config.qos.estimate,
        )
        self._send_or_wake()
        return seq

    def publish_explanation(self, source: str, seq: int, payload: dict[str, Any]) -> int:
        """Queue the scene model's explanation of the estimate ``seq`` of ``source`` (same seq, own topic)."""
        body = {"v": 1, "device": self.device_id, **payload}
        seq = self.outbox.put(f"{source}:explanation", self.topics.explanation(source), body,
                              qos=self.config.qos.estimate, seq=seq)
        self._send_or_wake()
        return seq

    def publish_state(self, state: EmotionState) -> int:
        """Queue the fused state (retained; only the newest unsent one is kept)."""
        seq = self.outbox.put(
            "state", self.topics.state, state.payload(self.device_id), qos=self.config.qos.state, retain=True,
            replace_unsent=True,
        )
        self._send_or_wake()
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
            self.commands.publish_enabled(self._client, source, on)

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
            "stalls": self._counts["stalls"],
            "callback_errors": self._guard.total,
            "commands": self._counts["commands"],
            "commands_rejected": self._counts["commands_rejected"],
            "commands_dropped": self._counts["commands_dropped"],
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
        said_stopped = False
        if self.connected.is_set() and self.error is None:
            if not self.flush(flush_s):
                log.warning("%d message(s) not acknowledged; they stay in the outbox %s", len(self.outbox), self.outbox.path)
            info = self._client.publish(self.topics.status, self._status_payload(status), qos=self.config.qos.status, retain=True)
            try:
                info.wait_for_publish(2.0)
                said_stopped = info.is_published()
            except (RuntimeError, ValueError):
                pass
        if not said_stopped:
            self._drop_connection()  # without DISCONNECT: the broker then publishes our will, "offline"
        self._stopping.set()
        self._wake()
        if self._sender is not None:
            self._sender.join(2.0)
        self.connected.clear()
        self._client.disable_logger()  # paho's loop logs a spurious "not connected" error while it winds down
        self._client.disconnect()
        self._client.loop_stop()
        self._evictions.log(final=True)
        self.outbox.close()
