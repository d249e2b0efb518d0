"""``emoedge config check|schema|example``."""

from __future__ import annotations

import argparse
import json
from typing import Any

from edge.verbs import add_verb


def register(sub: Any) -> None:
    parser = add_verb(
        sub, "config", "check, describe or write the device config file",
        "  emoedge config example > device.toml\n  emoedge config check device.toml\n  emoedge config schema > emoedge.schema.json",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    check = actions.add_parser("check", help="validate a config file; errors name the key and line")
    check.add_argument("file", help="config file (TOML)")
    check.set_defaults(func=run_check)
    schema = actions.add_parser("schema", help="print the JSON Schema of the config file")
    schema.set_defaults(func=run_schema)
    example = actions.add_parser("example", help="print a commented example config")
    example.set_defaults(func=run_example)


def run_check(args: argparse.Namespace) -> int:
    from edge.config import load_config
    from edge.errors import ConfigError

    config = load_config(args.file)
    problems = file_problems(config)
    if problems:
        raise ConfigError(f"{args.file}: {len(problems)} problem(s):\n" + "\n".join(f"  {p}" for p in problems))
    sources = ", ".join(f"{s.name} ({s.kind} -> {s.model})" for s in config.sources) or "none"
    print(f"{args.file}: ok: device {config.device_id}, broker {config.mqtt.host}:{config.mqtt.port}, sources: {sources}")
    return 0


def file_problems(config: Any) -> list[str]:
    """What ``run`` would refuse that the file's syntax cannot show: missing model folders and TLS files, by key."""
    from edge.card import resolve_model_folder
    from edge.errors import ModelError
    from edge.publish.connection import tls_file_problems

    problems = []
    used = {s.model for s in config.sources if s.enabled}
    for key, settings in config.models.items():
        if key not in used or not settings.enabled:
            continue
        where = f"models.{key}.path" if settings.path else f"models.{key}"
        try:
            folder = resolve_model_folder(settings.path or key)
        except ModelError as exc:
            problems.append(f"{where}: {exc}")
            continue
        if not (folder / "card.toml").is_file():
            problems.append(f"{where}: {folder} has no card.toml")
    if config.mqtt.use_tls:
        problems += tls_file_problems(config.mqtt)
    return problems


def run_schema(args: argparse.Namespace) -> int:
    from edge.config import config_schema

    print(json.dumps(config_schema(), indent=2))
    return 0


def run_example(args: argparse.Namespace) -> int:
    from edge.config import EXAMPLE_CONFIG

    print(EXAMPLE_CONFIG, end="")
    return 0
