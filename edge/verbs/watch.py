"""``emoedge watch``: subscribe to a device and print its fused emotion state as it changes."""

from __future__ import annotations

import argparse
import json
import logging
import math
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
    from edge.config import load_config, mqtt_with
    from edge.errors import EmoEdgeError
    from edge.publish import Subscriber, Topics
    from edge.publish.control import PayloadRejected, parse_json_bounded
    from edge.ratelog import RateLimitedLog

    base_cfg, device = None, args.device
    if args.config:
        config = load_config(args.config)
        base_cfg, device = config.mqtt, device or config.device_id
    cfg = mqtt_with(base_cfg, url=args.mqtt, topic_root=args.root,
                    protocol=args.protocol or ("3.1.1" if not args.config else None))
    topics = Topics(cfg.topic_root, device or "+")
    wanted = [topics.state, topics.status] + ([topics.estimate("+")] if args.estimates else [])

    done = threading.Event()
    states = 0
    last: dict[str, tuple[str, float, float]] = {}
    seen: dict[tuple[str, str], int] = {}
    ratelog = RateLimitedLog(logging.getLogger("edge.watch"))

    def on_message(msg: Any) -> None:
        nonlocal states
        where = topics.parse(msg.topic)
        if where is None:
            return
        dev, source, kind = where
        try:
            body = parse_json_bounded(msg.payload)
            if not isinstance(body, dict):
                raise PayloadRejected(f"expected a JSON object, got {type(body).__name__}")
            line = _render(kind, dev, source, body, args.json, msg.topic, last, seen)
        except Exception as exc:  # noqa: BLE001 - anyone can publish here: a bad payload is one line, never the end
            ratelog.warn(kind, "%s: ignored a payload that is not a valid %s message: %s", msg.topic[:120], kind,
                         str(exc)[:120])
            return
        if line:
            print(line, flush=True)
        if kind == "state":
            states += 1
            if args.count and states >= args.count:
                done.set()

    sub = Subscriber(cfg, wanted, on_message).start()
    print(f"watching {', '.join(wanted)} on {cfg.host}:{cfg.port} (Ctrl-C to stop)", flush=True)
    try:
        deadline = None if args.timeout is None else time.monotonic() + args.timeout
        if sub.connack.wait(args.timeout) and sub.refused is None:
            done.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
    except KeyboardInterrupt:
        pass
    finally:
        sub.stop()
    if sub.refused:
        raise EmoEdgeError(sub.refused)
    return 0


def _num(body: dict[str, Any], key: str) -> float:
    value = body.get(key, 0.0)
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise ValueError(f"{key!r} is not a finite number")
    return float(value)


def _render(kind: str, dev: str, source: str | None, body: dict[str, Any], as_json: bool, topic: str,
            last: dict[str, tuple[str, float, float]], seen: dict[tuple[str, str], int]) -> str | None:
    """One line for one message, or None; raises (TypeError, ValueError, ...) on a payload of the wrong shape."""
    if kind == "estimate":
        key = (dev, str(body.get("source", source)))
        seq = body.get("seq", -1)
        if not isinstance(seq, int):
            raise ValueError("'seq' is not an integer")
        if seq <= seen.get(key, -1):
            return None  # a re-sent duplicate (at-least-once delivery): drop by (source, seq)
        seen[key] = seq
    if as_json:
        return json.dumps({"topic": topic, **body})
    if kind == "status":
        return f"{_clock(body)} {dev}: {str(body.get('status'))[:40]}"
    if kind == "estimate":
        track = f" track {body['track_id']}" if "track_id" in body else ""
        return (f"{_clock(body)} {dev}/{str(body.get('source'))[:40]}{track}: {str(body.get('label'))[:40]} "
                f"(conf {_num(body, 'confidence'):.2f})")
    if kind != "state":
        return None
    now = (str(body.get("label", "?"))[:40], _num(body, "valence"), _num(body, "arousal"))
    prev = last.get(dev)
    last[dev] = now
    if prev is None or prev[0] != now[0] or abs(prev[1] - now[1]) > 0.05 or abs(prev[2] - now[2]) > 0.05:
        sources = body.get("sources", {})
        if not isinstance(sources, dict):
            raise ValueError("'sources' is not an object")
        srcs = ", ".join(f"{str(k)[:30]} {_num(v, 'weight'):.2f}" for k, v in list(sources.items())[:16])
        return (f"{_clock(body)} {dev}: {now[0]:<9} valence {now[1]:+.2f} arousal {now[2]:+.2f} "
                f"confidence {_num(body, 'confidence'):.2f}  [{srcs}]")
    return None


def _clock(body: dict[str, Any]) -> str:
    ts = body.get("ts")
    try:
        return time.strftime("%H:%M:%S", time.localtime(ts)) if isinstance(ts, int | float) else "--:--:--"
    except (OverflowError, OSError, ValueError):
        return "--:--:--"
