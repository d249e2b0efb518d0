"""``emoedge listen PORT``: read a board for a while and report the link statistics (bring-up of a new board)."""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from typing import Any

from edge.verbs import add_verb


def register(sub: Any) -> None:
    parser = add_verb(
        sub, "listen", "read a serial board and print link statistics: frames by type, rate, CRC errors, gaps, drift",
        "  emoedge listen /dev/ttyACM0\n"
        "  emoedge listen 2e8a:000a --seconds 30 --json\n"
        "  emoedge listen /dev/ttyUSB0 --baud 115200 --text     # a sketch printing lines of numbers",
    )
    parser.add_argument("port", help="device path (/dev/ttyACM0) or USB VID:PID[:SERIAL] in hex")
    parser.add_argument("--seconds", type=float, default=5.0, help="how long to listen (default 5; 0 = until Ctrl-C)")
    parser.add_argument("--baud", type=int, default=921600, help="baud rate (default 921600; ignored by USB CDC boards)")
    parser.add_argument("--text", action="store_true", help="plain-text mode: lines of comma/tab/space-separated numbers")
    parser.add_argument("--json", action="store_true", help="one JSON object")
    parser.set_defaults(func=run)


def listen(port: str, seconds: float, baud: int = 921600, text: bool = False) -> dict[str, Any]:
    """Read ``port`` for ``seconds`` and return decoder and link statistics."""
    from firmware_bridge import protocol as P
    from firmware_bridge.link import SerialLink, is_usb_id

    decoder: P.FrameDecoder | P.TextLineDecoder = P.TextLineDecoder() if text else P.FrameDecoder()
    lock = threading.Lock()

    def on_data(data: bytes, host_time: float) -> None:
        with lock:
            decoder.feed(data, host_time)

    usb = port if is_usb_id(port) and not port.startswith("/") else None
    link = SerialLink(port=None if usb else port, usb=usb, baudrate=baud, on_data=on_data)
    link.open_once()  # a wrong path fails now, with the reason, instead of retrying quietly
    started = time.monotonic()
    link.start()
    try:
        while seconds <= 0 or time.monotonic() - started < seconds:
            time.sleep(0.1)
    except KeyboardInterrupt:
        pass
    finally:
        link.stop()
    with lock:
        stats = decoder.stats()
    stats.update(link.stats())
    stats["mode"] = "text" if text else "frames"
    stats["seconds"] = round(time.monotonic() - started, 3)
    return stats


def run(args: argparse.Namespace) -> int:
    stats = listen(args.port, args.seconds, args.baud, args.text)
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"emoedge listen {args.port} ({stats['seconds']} s, {stats['mode']})")
    table.add_column("statistic")
    table.add_column("value", overflow="fold")
    keys = ["frames", "frames_by_type", "rate_hz", "nominal_rate_hz", "drift_ppm", "crc_errors", "framing_errors",
            "lost_frames", "duplicates", "resyncs", "discarded_bytes", "unsupported_version", "versions_seen",
            "unknown_type", "malformed", "board_resets", "board_overflows", "board_dropped", "device", "columns",
            "bad_lines", "board_errors", "last_board_error", "bytes", "outages", "connects", "last_error"]
    for key in keys:
        if key in stats:
            table.add_row(key, str(stats[key]))
    Console().print(table)
    if stats["frames"] == 0:
        print("no frames: is the board sending, at this baud rate, in this mode (--text for lines of numbers)?",
              file=sys.stderr)
        return 1
    return 0
