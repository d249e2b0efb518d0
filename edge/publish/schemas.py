"""The JSON Schemas of every payload (``edge/publish/schema/*.json``), for tests and subscribers."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

SCHEMA_DIR = Path(__file__).resolve().parent / "schema"
KINDS = ("estimate", "state", "status", "stats", "enabled", "enroll", "explanation")


@cache
def load_schema(kind: str) -> dict[str, Any]:
    if kind not in KINDS and kind != "common":
        raise ValueError(f"no payload schema '{kind}' (known: {', '.join(KINDS)})")
    return json.loads((SCHEMA_DIR / f"{kind}.json").read_text(encoding="utf-8"))


def validate(kind: str, payload: dict[str, Any]) -> None:
    """Raise jsonschema.ValidationError when ``payload`` breaks the ``kind`` schema (jsonschema: dev extra)."""
    import jsonschema
    from referencing import Registry, Resource

    registry = Registry().with_resources(
        (load_schema(k)["$id"], Resource.from_contents(load_schema(k))) for k in (*KINDS, "common")
    )
    jsonschema.Draft202012Validator(load_schema(kind), registry=registry).validate(payload)


def kind_of_topic(topic: str) -> str | None:
    """Which schema a topic's payload follows (``.../cam/estimate`` -> ``estimate``)."""
    last = topic.rsplit("/", 1)[-1]
    if last in KINDS:
        return last
    return None
