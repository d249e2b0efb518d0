"""Untrusted MQTT payloads in: one bounded, validated parser for everything EmoEdge reads from a broker.

Anyone who can publish to the broker can send anything to ``<source>/enabled/set`` (and, for
``emoedge watch``, to ``state``). A payload is parsed here only: its size and its nesting depth are
checked *before* ``json.loads`` sees it (a 5,000-deep array raises RecursionError in the stdlib
parser), the result is checked against the command's schema, and every failure is one
``PayloadRejected`` with a short reason. Nothing else is raised, so nothing reaches paho's network
thread.
"""

from __future__ import annotations

import json
import re
from typing import Any

MAX_COMMAND_BYTES = 256  # an enabled/set command is a word or {"enabled": false}
MAX_COMMAND_DEPTH = 2
MAX_STATE_BYTES = 256 * 1024  # what watch accepts on state/status/estimate
MAX_STATE_DEPTH = 16
ENABLE_WORDS = {"on": True, "true": True, "1": True, "enable": True,
                "off": False, "false": False, "0": False, "disable": False}
COMMAND_KEYS = {"enabled", "v", "seq", "ts", "source"}  # what an enabled/set JSON body may carry

_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET = re.compile(rb"[\[\]{}]")


class PayloadRejected(ValueError):
    """A payload from the broker that is too big, too deep, not JSON, or not what the topic takes."""


def json_depth(payload: bytes) -> int:
    """Deepest nesting of arrays and objects, counted without parsing (strings are skipped)."""
    depth = deepest = 0
    for match in _BRACKET.finditer(_STRING.sub(b'""', payload)):
        if match.group() in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth = max(0, depth - 1)
    return deepest


def parse_json_bounded(payload: bytes | bytearray, max_bytes: int = MAX_STATE_BYTES, max_depth: int = MAX_STATE_DEPTH) -> Any:
    """``json.loads`` for untrusted bytes: PayloadRejected (only) when over size or depth, or not JSON."""
    if not isinstance(payload, bytes | bytearray):
        raise PayloadRejected(f"payload of type {type(payload).__name__}, expected bytes")
    if len(payload) > max_bytes:
        raise PayloadRejected(f"{len(payload)} bytes, more than the {max_bytes} allowed")
    depth = json_depth(bytes(payload))
    if depth > max_depth:
        raise PayloadRejected(f"JSON nested {depth} deep, more than the {max_depth} allowed")
    try:
        return json.loads(payload)
    except (ValueError, RecursionError, UnicodeDecodeError) as exc:
        raise PayloadRejected(f"not JSON ({type(exc).__name__})") from None


def parse_enabled(payload: bytes | bytearray) -> bool:
    """``ON``/``OFF``, ``true``/``false``, ``1``/``0``, ``enable``/``disable`` or ``{"enabled": true}``.

    Raises PayloadRejected, and only that, for anything else.
    """
    if not isinstance(payload, bytes | bytearray):
        raise PayloadRejected(f"payload of type {type(payload).__name__}, expected bytes")
    if len(payload) > MAX_COMMAND_BYTES:
        raise PayloadRejected(f"{len(payload)} bytes, more than the {MAX_COMMAND_BYTES} a command may have")
    word = ENABLE_WORDS.get(bytes(payload).decode("utf-8", "replace").strip().lower())
    if word is not None:
        return word
    data = parse_json_bounded(payload, MAX_COMMAND_BYTES, MAX_COMMAND_DEPTH)
    if not isinstance(data, dict):
        raise PayloadRejected(f"expected ON/OFF or a JSON object, got JSON {type(data).__name__}")
    extra = sorted(set(data) - COMMAND_KEYS)
    if extra:
        raise PayloadRejected(f"unknown key(s) {', '.join(repr(k)[:20] for k in extra[:3])}")
    if not isinstance(data.get("enabled"), bool):
        raise PayloadRejected('"enabled" must be true or false')
    return bool(data["enabled"])


def describe(payload: bytes | bytearray, limit: int = 40) -> str:
    """A short, safe rendering of a payload for a log line (never the whole of a hostile one)."""
    head = bytes(payload[:limit])
    return repr(head) + ("..." if len(payload) > limit else "") + f" ({len(payload)} bytes)"
