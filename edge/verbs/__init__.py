"""One module per ``emoedge`` verb; each has ``register(subparsers)``. See ``edge.cli``."""

from __future__ import annotations

import argparse
from typing import Any


def add_verb(sub: Any, name: str, help: str, examples: str = "", description: str | None = None) -> argparse.ArgumentParser:
    """Add a verb parser with its examples shown at the end of ``--help``."""
    return sub.add_parser(
        name,
        help=help,
        description=description or help,
        epilog=("examples:\n" + examples) if examples else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
