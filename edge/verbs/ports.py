"""``emoedge ports``: the serial ports of this machine with their USB identities (for ``usb = "VID:PID"``)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from edge.verbs import add_verb


def register(sub: Any) -> None:
    parser = add_verb(
        sub, "ports", "list serial ports with USB VID:PID, serial number and description",
        "  emoedge ports\n"
        "  emoedge ports --json\n"
        "  # then, in the device config:  usb = \"2e8a:000a:E6614103E7\"  (stable across re-plugging)",
    )
    parser.add_argument("--json", action="store_true", help="a JSON list")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from firmware_bridge.link import list_ports

    ports = [p.as_dict() for p in list_ports()]
    if args.json:
        print(json.dumps(ports, indent=2))
        return 0
    if not ports:
        print("no serial ports found (a board on USB shows up as /dev/ttyACM* or /dev/ttyUSB*)")
        return 0
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="serial ports")
    for col in ("device", "usb (VID:PID:SERIAL)", "description", "manufacturer", "location"):
        table.add_column(col, overflow="fold")
    for p in ports:
        table.add_row(*(escape(str(p[k] or "")) for k in ("device", "usb", "description", "manufacturer", "location")))
    Console().print(table)
    return 0
