#!/usr/bin/env python3
"""A minimal EmoEdge subscriber for robot and kiosk developers (needs only paho-mqtt 2).

    python tools/subscriber_example.py --host 127.0.0.1 --port 1883 --device jetson-01

What it shows:
* the retained ``state`` gives the current fused emotion at once, even to a late joiner;
* ``status`` says whether the device is online, stopped cleanly, or gone (``offline``, the last will);
* estimates come at least once: keep the last ``seq`` per source and drop repeats, which makes
  them exactly once and in order. A persistent session (fixed client id, clean_session=False,
  QoS 1) makes the broker keep estimates for you while your robot is briefly away.
"""

from __future__ import annotations

import argparse
import json

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument("--device", default="+", help="device id (default: every device)")
    parser.add_argument("--root", default="emoedge", help="topic root")
    parser.add_argument("--client-id", default="robot-controller-1", help="fixed, so that the session persists")
    parser.add_argument("--count", type=int, default=0, help="exit after this many state changes (0: never)")
    args = parser.parse_args()

    base = f"{args.root}/{args.device}"
    last_seq: dict[tuple[str, str], int] = {}
    changes = 0
    current: dict[str, str] = {}

    def on_connect(client, userdata, flags, reason, properties):
        if reason.is_failure:
            raise SystemExit(f"broker refused us: {reason}")
        client.subscribe([(f"{base}/state", 1), (f"{base}/status", 1), (f"{base}/+/estimate", 1)])

    def on_message(client, userdata, msg):
        nonlocal changes
        body = json.loads(msg.payload)
        device, kind = body.get("device", "?"), msg.topic.rsplit("/", 1)[-1]
        if kind == "status":
            print(f"[{device}] {body['status']}")
        elif kind == "estimate":
            key = (device, body["source"])
            if body["seq"] <= last_seq.get(key, -1):
                return  # already seen: a re-send after a lost connection
            last_seq[key] = body["seq"]
            # react to single modalities here, e.g. body["label"], body["confidence"], body.get("track_id")
        elif kind == "state":
            if body["label"] != current.get(device):
                current[device] = body["label"]
                changes += 1
                print(f"[{device}] now {body['label']} (valence {body['valence']:+.2f}, "
                      f"arousal {body['arousal']:+.2f}, confidence {body['confidence']:.2f})", flush=True)
                # a kiosk would change its screen here; a robot its behaviour
                if args.count and changes >= args.count:
                    client.disconnect()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=args.client_id, clean_session=False)
    client.on_connect = on_connect
    client.on_message = on_message
    client.connect(args.host, args.port)
    try:
        client.loop_forever()
    except KeyboardInterrupt:
        client.disconnect()


if __name__ == "__main__":
    main()
