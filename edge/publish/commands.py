"""The command topics a device answers, in paho's network thread: ``<source>/enabled/set`` -> the retained
``<source>/enabled``, and ``enroll/set`` -> ``enroll``. Payloads go through ``edge.publish.control`` (bounded,
validated); commands beyond a steady rate are dropped and counted; a retained command is applied once and then
cleared from the broker, so that one stale or hostile retained command cannot act on every later start."""

from __future__ import annotations

import collections
import json
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import paho.mqtt.client as mqtt

from edge.estimate import SCHEMA_VERSION
from edge.publish.control import PayloadRejected, describe, parse_enabled
from edge.publish.outbox import Outbox
from edge.publish.topics import Topics
from edge.ratelog import RateLimitedLog

log = logging.getLogger("edge.publish.client")
COMMAND_BURST = 20  # commands accepted at once ...
COMMAND_RATE = 10.0  # ... and per second after that; the rest are dropped and counted


class Commands:
    """Sources' on/off state and the enrollment hook, changed by commands; counts what it took, refused and dropped
    in the publisher's counters."""

    def __init__(self, topics: Topics, device_id: str, outbox: Outbox, sources: Iterable[str],
                 counts: collections.Counter[str], ratelog: RateLimitedLog,
                 on_enable: Callable[[str, bool], None] | None = None,
                 on_enroll: Callable[[bytes], dict[str, Any]] | None = None) -> None:
        self.topics, self.device_id, self.outbox = topics, device_id, outbox
        self.enabled: dict[str, bool] = {s: True for s in sources}
        self.on_enable = on_enable
        self.on_enroll = on_enroll
        self._counts, self._ratelog = counts, ratelog
        self._tokens, self._tokens_at = float(COMMAND_BURST), time.monotonic()

    def on_message(self, client: mqtt.Client, msg: mqtt.MQTTMessage) -> None:
        """A message on a command topic (paho's network thread): never raises, never blocks."""
        if msg.topic == self.topics.enroll_set:
            if not msg.payload:
                return
            if msg.retain:  # applied once, then cleared, like every command
                client.publish(msg.topic, b"", qos=1, retain=True)
            if not self.take_token():
                self._counts["commands_dropped"] += 1
                return
            self.answer_enroll(client, bytes(msg.payload))
            return
        source = self.topics.source_of_enabled_set(msg.topic)
        if source is None or not msg.payload:  # empty: a retained command being cleared (by us, or its sender)
            return
        if msg.retain:  # applied once, then cleared: a retained command must not act on every later start
            client.publish(msg.topic, b"", qos=1, retain=True)
            self._counts["commands_retained_cleared"] += 1
        if not self.take_token():
            self._counts["commands_dropped"] += 1
            self._ratelog.warn("flood", "%s: more than %.0f commands a second; dropping the excess (%d dropped so far)",
                               msg.topic, COMMAND_RATE, self._counts["commands_dropped"])
            return
        if source not in self.enabled:
            self._counts["commands_rejected"] += 1
            self._ratelog.warn("unknown-source", "%s: no source named %s (sources: %s)", msg.topic[:120],
                               describe(source.encode(), 30), ", ".join(self.enabled))
            return
        try:
            value = parse_enabled(msg.payload)
        except PayloadRejected as exc:
            self._counts["commands_rejected"] += 1
            self._ratelog.warn("bad-command", "%s: expected ON/OFF, true/false or {\"enabled\": true}; %s: %s",
                               msg.topic, exc, describe(msg.payload))
            return
        self._counts["commands"] += 1
        changed = self.enabled.get(source) != value
        self.enabled[source] = value
        if changed and self.on_enable is not None:
            self.on_enable(source, value)
        self.publish_enabled(client, source, value)

    def take_token(self) -> bool:
        """A token bucket for commands: a robot's burst passes, a flood does not stall the network thread."""
        now = time.monotonic()
        self._tokens = min(float(COMMAND_BURST), self._tokens + (now - self._tokens_at) * COMMAND_RATE)
        self._tokens_at = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    def answer_enroll(self, client: mqtt.Client, payload: bytes) -> None:
        """Run an enrollment command and publish the reply on ``enroll``."""
        if self.on_enroll is not None:
            reply = self.on_enroll(payload)
        else:
            reply = {"action": None, "ok": False, "message": "this device has no model that can adapt"}
        now = time.time()
        body = {"v": SCHEMA_VERSION, "device": self.device_id, **reply, "seq": self.outbox.next_seq("enroll"),
                "ts": now, "pub_ts": now}
        client.publish(self.topics.enroll, json.dumps(body, separators=(",", ":")), qos=1, retain=False)

    def publish_enabled(self, client: mqtt.Client, source: str, on: bool) -> None:
        """Say a source's state on the retained ``<source>/enabled``."""
        now = time.time()
        body = {"v": SCHEMA_VERSION, "device": self.device_id, "source": source, "enabled": on,
                "seq": self.outbox.next_seq(f"enabled:{source}"), "ts": now, "pub_ts": now}
        client.publish(self.topics.enabled(source), json.dumps(body, separators=(",", ":")), qos=1, retain=True)
