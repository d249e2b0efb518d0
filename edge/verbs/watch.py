"""``emoedge watch``: subscribe to a device and print its fused emotion state as it changes."""

from __future__ import annotations

import argparse
import json
import threading
import time
from typing import Any

from edge.verbs import add_verb


def register(sub: Any) -> None:
    parser = add_verb(
        sub, "watch", "print the fused emotion state of a device (or all devices) as it changes",
        "  emoedge watch                                   # every device on mqtt://127.0.0.1:1883\n"
        "  emoedge watch --mqtt mqtt://kiosk.local:1883 --device jetson-01\n"
        "  emoedge watch --config device.toml --estimates  # broker, TLS and credentials from the config\n"
        "  emoedge watch --json --count 10                 # ten raw state payloads, then exit",
    )
    parser.add_argument("--mqtt", metavar="URL", help="broker URL (default: the config's, else mqtt://127.0.0.1:1883)")
    parser.add_argument("--config", metavar="FILE", help="take broker, TLS, credentials, topic root and device from a device config")
    parser.add_argument("--device", metavar="ID", help="device id (default: the config's, else every device)")
    parser.add_argument("--root", metavar="TOPIC", help="topic root (default: the config's, else emoedge)")
    parser.add_argument("--protocol", choices=["3.1.1", "5"], help="MQTT protocol version (default 3.1.1: works with every broker)")
    parser.add_argument("--estimates", action="store_true", help="also print every per-source estimate")
    parser.add_argument("--json", action="store_true", help="print the raw JSON payloads, one a line")
    parser.add_argument("--count", type=int, metavar="N", help="exit after N state messages")
    parser.add_argument("--timeout", type=float, metavar="SECONDS", help="exit after this long")
    parser.set_defaults(func=watch)


def watch(args: argparse.Namespace) -> int:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from edge.config import MqttConfig, load_config
    from edge.errors import EmoEdgeError

    cfg = MqttConfig()
    device = args.device
    if args.config:
        config = load_config(args.config)
        cfg, device = config.mqtt, device or config.device_id
    updates: dict[str, Any] = {"protocol": args.protocol or ("3.1.1" if not args.config else cfg.protocol)}
    if args.mqtt:
        updates["url"] = args.mqtt
    if args.root:
        updates["topic_root"] = args.root
    cfg = MqttConfig.model_validate({**cfg.model_dump(), **updates})
    base = f"{cfg.topic_root}/{device or '+'}"
    topics = [f"{base}/state", f"{base}/status"] + ([f"{base}/+/estimate"] if args.estimates else [])

    done = threading.Event()
    failure: list[str] = []
    states = 0
    last: dict[str, tuple[str, float, float]] = {}
    seen: dict[tuple[str, str], int] = {}

    def on_connect(client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            failure.append(f"broker {cfg.host}:{cfg.port} refused the connection: {reason}")
            done.set()
            return
        for topic in topics:
            client.subscribe(topic, qos=1)

    def on_message(client: Any, userdata: Any, msg: Any) -> None:
        nonlocal states
        try:
            body = json.loads(msg.payload)
        except ValueError:
            return
        parts = msg.topic.split("/")
        dev = parts[-2] if parts[-1] in ("state", "status") else parts[-3]
        kind = parts[-1]
        if kind == "estimate":
            key = (dev, body.get("source", parts[-2]))
            if body.get("seq", -1) <= seen.get(key, -1):
                return  # a re-sent duplicate (at-least-once delivery): drop by (source, seq)
            seen[key] = body.get("seq", -1)
        if args.json:
            print(json.dumps({"topic": msg.topic, **body}), flush=True)
        elif kind == "status":
            print(f"{_clock(body)} {dev}: {body.get('status')}", flush=True)
        elif kind == "estimate":
            track = f" track {body['track_id']}" if "track_id" in body else ""
            print(f"{_clock(body)} {dev}/{body.get('source')}{track}: {body.get('label')} "
                  f"(conf {body.get('confidence', 0):.2f})", flush=True)
        elif kind == "state":
            now = (body.get("label", "?"), body.get("valence", 0.0), body.get("arousal", 0.0))
            prev = last.get(dev)
            if prev is None or prev[0] != now[0] or abs(prev[1] - now[1]) > 0.05 or abs(prev[2] - now[2]) > 0.05:
                srcs = ", ".join(f"{k} {v.get('weight', 0):.2f}" for k, v in body.get("sources", {}).items())
                print(f"{_clock(body)} {dev}: {now[0]:<9} valence {now[1]:+.2f} arousal {now[2]:+.2f} "
                      f"confidence {body.get('confidence', 0):.2f}  [{srcs}]", flush=True)
            last[dev] = now
        if kind == "state":
            states += 1
            if args.count and states >= args.count:
                done.set()

    protocol = mqtt.MQTTv5 if cfg.protocol == "5" else mqtt.MQTTv311
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=protocol)
    if cfg.username is not None:
        password = cfg.password()
        client.username_pw_set(cfg.username, password.get_secret_value() if password else None)
    if cfg.use_tls:
        tls = cfg.tls
        client.tls_set(ca_certs=str(tls.ca_file) if tls else None,
                       certfile=str(tls.cert_file) if tls and tls.cert_file else None,
                       keyfile=str(tls.key_file) if tls and tls.key_file else None)
    client.on_connect = on_connect
    client.on_message = on_message
    try:
        client.connect(cfg.host, cfg.port, keepalive=cfg.keepalive_s)
    except OSError as exc:
        raise EmoEdgeError(f"cannot reach the broker at {cfg.host}:{cfg.port}: {exc}") from None
    client.loop_start()
    print(f"watching {', '.join(topics)} on {cfg.host}:{cfg.port} (Ctrl-C to stop)", flush=True)
    try:
        done.wait(args.timeout)
    except KeyboardInterrupt:
        pass
    finally:
        client.disconnect()
        client.loop_stop()
    if failure:
        raise EmoEdgeError(failure[0])
    return 0


def _clock(body: dict[str, Any]) -> str:
    ts = body.get("ts")
    return time.strftime("%H:%M:%S", time.localtime(ts)) if isinstance(ts, int | float) else "--:--:--"
