"""``emoedge enroll ACTION ...``: drive a running device's live enrollment from a shell (MQTT enroll/set).

Sends one command to ``<root>/<device>/enroll/set`` and prints the device's reply from
``<root>/<device>/enroll``; exits 0 when the device says ok, 1 when it refused (the message says why),
2 when no reply came. Offline, from a labelled folder, use ``emoedge adapt``.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from typing import Any

from edge.verbs import add_verb


def register(sub: Any) -> None:
    parser = add_verb(
        sub, "enroll", "per-person enrollment on a running device: select a person, label seconds, fit, forget",
        "  emoedge enroll select alice --device jetson-01                 # alice is active on every source\n"
        "  emoedge enroll label happy --seconds 6 --source mic --device jetson-01\n"
        "  emoedge enroll label sad --seconds 6 --source mic --device jetson-01\n"
        "  emoedge enroll fit --source mic --device jetson-01\n"
        "  emoedge enroll forget alice --device jetson-01\n"
        "  emoedge adapt speech --person alice --data DIR                 # offline, from a labelled folder",
    )
    parser.add_argument("action", choices=["select", "label", "fit", "forget"])
    parser.add_argument("value", nargs="?", help="select/forget: the person (select without one: none); label: the label")
    parser.add_argument("--person", help="label/fit: the person (default: the active one)")
    parser.add_argument("--source", help="the source (select: default every source)")
    parser.add_argument("--seconds", type=float, help="label: how many seconds from now")
    parser.add_argument("--mqtt", metavar="URL", help="broker URL (default: the config's, else mqtt://127.0.0.1:1883)")
    parser.add_argument("--config", metavar="FILE", help="take broker, TLS, credentials, topic root and device from a device config")
    parser.add_argument("--device", metavar="ID", help="device id (default: the config's)")
    parser.add_argument("--root", metavar="TOPIC", help="topic root (default: the config's, else emoedge)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the reply (default 10)")
    parser.add_argument("--json", action="store_true", help="print the reply as JSON")
    parser.set_defaults(func=run)


def command_of(args: argparse.Namespace) -> dict[str, Any]:
    """The enroll/set payload for the arguments (schema ``enroll_set.json``)."""
    from edge.errors import ConfigError

    cmd: dict[str, Any] = {"action": args.action, "id": f"cli-{time.time_ns()}"}
    if args.source:
        cmd["source"] = args.source
    if args.action in ("select", "forget"):
        if args.action == "forget" and not args.value:
            raise ConfigError("enroll forget: name the person")
        cmd["person"] = args.value
    elif args.action == "label":
        if not args.value or args.seconds is None:
            raise ConfigError("enroll label: needs a label and --seconds N")
        cmd["label"], cmd["seconds"] = args.value, args.seconds
    if args.person and args.action in ("label", "fit"):
        cmd["person"] = args.person
    return cmd


def run(args: argparse.Namespace) -> int:
    from edge.config import MqttConfig, load_config
    from edge.errors import ConfigError, EmoEdgeError
    from edge.publish import Subscriber, Topics

    cfg, device = MqttConfig.model_validate({}), args.device
    if args.config:
        config = load_config(args.config)
        cfg, device = config.mqtt, device or config.device_id
    if not device:
        raise ConfigError("enroll: --device ID is needed (or --config FILE)")
    updates: dict[str, Any] = {}
    if args.mqtt:
        updates["url"] = args.mqtt
    if args.root:
        updates["topic_root"] = args.root
    cfg = MqttConfig.model_validate({**cfg.model_dump(), **updates})
    cmd = command_of(args)
    topics = Topics(cfg.topic_root, device)
    reply: list[dict[str, Any]] = []
    done = threading.Event()

    def on_message(msg: Any) -> None:
        try:
            body = json.loads(msg.payload)
        except ValueError:
            return
        if isinstance(body, dict) and body.get("id") == cmd["id"]:
            reply.append(body)
            done.set()

    sub = Subscriber(cfg, [topics.enroll], on_message).start()  # the one MQTT client factory (edge.publish.connection)
    try:
        if not sub.subscribed.wait(args.timeout):
            raise EmoEdgeError(sub.refused or f"broker {cfg.host}:{cfg.port}: no subscription to {topics.enroll} "
                                              f"within {args.timeout:g} s")
        sub.client.publish(topics.enroll_set, json.dumps(cmd), qos=1).wait_for_publish(args.timeout)
        if not done.wait(args.timeout):
            raise EmoEdgeError(f"no reply from device '{device}' on {topics.enroll} within {args.timeout:g} s "
                               "(is it running, with this topic root?)")
    finally:
        sub.stop()
    body = reply[0]
    if args.json:
        print(json.dumps(body, indent=2))
    else:
        print(f"{'ok' if body.get('ok') else 'refused'}: {body.get('message')}")
        for head, h in (body.get("heads") or {}).items():
            counts = ", ".join(f"{k} {v}" for k, v in h.get("counts", {}).items() if v)
            print(f"  {head}: {'adapted' if h.get('adapted') else 'population'} ({counts}); {h.get('reason')}")
    return 0 if body.get("ok") else 1
