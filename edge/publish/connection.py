"""The one way EmoEdge makes an MQTT client: the publisher, ``emoedge watch`` and ``emoedge doctor`` use it.

``make_client`` applies a config's protocol, credentials and TLS (CA, client certificate, key and its
passphrase) the same way for every caller, checks the TLS files first and names the config key of
the one that is wrong, and never lets OpenSSL prompt for a passphrase on the terminal (an
unattended bridge has no one to answer). ``guard`` wraps every callback paho calls, so that an
exception in one is logged (rate-limited) and counted instead of ending paho's network thread,
which would silence the device while it still looks connected. ``Subscriber`` is a small client
for reading topics (watch, the doctor's probe).
"""

from __future__ import annotations

import collections
import logging
import ssl
import threading
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge.config import MqttConfig
from edge.errors import EmoEdgeError, redact_url
from edge.ratelog import RateLimitedLog

log = logging.getLogger("edge.publish")

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


class BrokerError(EmoEdgeError):
    """The broker refused us for a reason that retrying cannot fix (credentials, TLS, protocol)."""

    exit_code = 4


class CallbackGuard:
    """Wraps paho callbacks: an exception is logged (once per interval) and counted, never raised into paho."""

    def __init__(self, logger: logging.Logger = log) -> None:
        self.errors: collections.Counter[str] = collections.Counter()
        self._ratelog = RateLimitedLog(logger)

    def __call__(self, name: str, fn: Callable[..., Any]) -> Callable[..., None]:
        def guarded(*args: Any) -> None:
            try:
                fn(*args)
            except Exception as exc:  # noqa: BLE001 - whatever it is, paho's thread must live on
                self.errors[name] += 1
                self._ratelog.warn(name, "MQTT %s callback failed (%d so far): %s: %s", name, self.errors[name],
                                   type(exc).__name__, str(exc)[:200])

        return guarded

    @property
    def total(self) -> int:
        return sum(self.errors.values())


def tls_file_problems(cfg: MqttConfig) -> list[str]:
    """Each TLS file that the config names and that is missing or unreadable, as ``mqtt.tls.<key>: why``."""
    tls = cfg.tls
    problems: list[str] = []
    for key in ("ca_file", "cert_file", "key_file") if tls is not None else ():
        path: Path | None = getattr(tls, key)
        if path is None:
            continue
        if not path.is_file():
            problems.append(f"mqtt.tls.{key}: {path} does not exist or is not a file")
            continue
        try:
            with path.open("rb"):
                pass
        except OSError as exc:
            problems.append(f"mqtt.tls.{key}: {path} cannot be read ({exc.strerror or exc})")
    return problems


def make_client(
    cfg: MqttConfig,
    client_id: str | None = None,
    *,
    will: tuple[str, bytes, int] | None = None,
    max_inflight: int | None = None,
    guard: CallbackGuard | None = None,
    callbacks: dict[str, Callable[..., Any]] | None = None,
) -> mqtt.Client:
    """A paho client (callback API 2) set up from ``cfg``; every callback in ``callbacks`` goes through ``guard``.

    Raises BrokerError for TLS material that is missing (naming its key) or cannot be loaded (a wrong
    key passphrase, an encrypted key with no ``key_password_env`` set).
    """
    protocol = mqtt.MQTTv5 if cfg.protocol == "5" else mqtt.MQTTv311
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id or f"emoedge-{uuid.uuid4().hex[:12]}",
                         protocol=protocol)
    paho_log = logging.getLogger("edge.publish.paho")
    if paho_log.isEnabledFor(logging.DEBUG):  # paho logs every refused retry as an error: only at -vv
        client.enable_logger(paho_log)
    if max_inflight is not None:
        client.max_inflight_messages_set(max_inflight)
    client.reconnect_delay_set(1, 8)
    if cfg.username is not None:
        password = cfg.password()
        client.username_pw_set(cfg.username, password.get_secret_value() if password else None)
    if cfg.use_tls:
        problems = tls_file_problems(cfg)
        if problems:
            raise BrokerError(f"TLS set-up for {redact_url(cfg.url)} failed: {'; '.join(problems)}")
        tls = cfg.tls
        key_password = tls.key_password() if tls else None
        try:
            client.tls_set(
                ca_certs=str(tls.ca_file) if tls else None,
                certfile=str(tls.cert_file) if tls and tls.cert_file else None,
                keyfile=str(tls.key_file) if tls and tls.key_file else None,
                # never None: with None, OpenSSL asks for an encrypted key's passphrase on the terminal
                keyfile_password=key_password.get_secret_value() if key_password else "",
                cert_reqs=ssl.CERT_REQUIRED,
            )
        except (OSError, ssl.SSLError, ValueError) as exc:
            hint = "check mqtt.tls files"
            if tls and tls.key_file and key_password is None:
                hint = (f"if mqtt.tls.key_file is encrypted, set mqtt.tls.key_password_env and that variable"
                        f"{' (' + tls.key_password_env + ' is not set)' if tls.key_password_env else ''}")
            raise BrokerError(f"TLS set-up for {redact_url(cfg.url)} failed: {exc} ({hint})") from None
        if tls and tls.insecure:
            client.tls_insecure_set(True)
    if will is not None:
        topic, payload, qos = will
        client.will_set(topic, payload, qos=qos, retain=True)
    guard = guard or CallbackGuard()
    for name, fn in (callbacks or {}).items():
        setattr(client, f"on_{name}", guard(name, fn))
    return client


class Subscriber:
    """Subscribes to ``topics`` with ``make_client`` and hands each message to ``on_message`` (guarded).

    ``start()`` connects (one clear error when the broker cannot be reached or refuses),
    ``wait_connack(timeout)`` says whether the broker answered, ``stop()`` disconnects.
    """

    def __init__(self, cfg: MqttConfig, topics: Iterable[str], on_message: Callable[[Any], None] | None = None,
                 client_id: str | None = None) -> None:
        self.cfg = cfg
        self.topics = list(topics)
        self.guard = CallbackGuard()
        self.connack = threading.Event()
        self.subscribed = threading.Event()
        self.refused: str | None = None
        self._on_message = on_message
        self.client = make_client(cfg, client_id, guard=self.guard, callbacks={
            "connect": self._connected, "message": self._message, "subscribe": self._subscribed,
        })

    def _connected(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            why = FATAL_CONNACK.get(reason.value, str(reason))
            self.refused = f"broker {self.cfg.host}:{self.cfg.port} refused the connection: {why}"
        else:
            for topic in self.topics:
                client.subscribe(topic, qos=1)
        self.connack.set()

    def _subscribed(self, *args: Any) -> None:
        self.subscribed.set()

    def _message(self, client: mqtt.Client, userdata: Any, msg: Any) -> None:
        if self._on_message is not None:
            self._on_message(msg)

    def start(self, timeout: float = 5.0) -> Subscriber:
        """Connect and start the network thread; BrokerError when the broker is unreachable or TLS fails."""
        cfg = self.cfg
        try:
            self.client.connect(cfg.host, cfg.port, keepalive=cfg.keepalive_s)
        except ssl.SSLError as exc:
            raise BrokerError(f"TLS handshake with {cfg.host}:{cfg.port} failed: {exc.reason or exc}") from None
        except OSError as exc:
            raise BrokerError(f"cannot reach the broker at {cfg.host}:{cfg.port}: {exc.strerror or exc}") from None
        self.client.loop_start()
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
