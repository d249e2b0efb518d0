"""The ``emoedge`` command: one verb a module under ``edge.verbs``.

Each verb module has ``register(subparsers)``, which adds its parser and sets ``func``. Verb modules
import nothing heavy at module level, so that ``emoedge --help`` and ``doctor`` start fast on a Jetson.
Errors that are the user's to fix (``EmoEdgeError``) print one clear message and exit non-zero.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from edge import __version__
from edge.errors import EmoEdgeError, redact_url

# verb -> module; the order is the order of `emoedge --help`.
VERBS: dict[str, str] = {
    # device
    "doctor": "edge.verbs.doctor",
    "config": "edge.verbs.config",
    "ports": "edge.verbs.ports",
    "listen": "edge.verbs.listen",
    # models
    "train": "edge.verbs.train",
    "eval": "edge.verbs.eval",
    "explain": "edge.verbs.explain",
    "calibrate": "edge.verbs.calibrate",
    "quantize": "edge.verbs.quantize",
    "build": "edge.verbs.build",
    "bench": "edge.verbs.bench",
    # persons
    "adapt": "edge.verbs.adapt",
    "enroll": "edge.verbs.enroll",
    "profiles": "edge.verbs.profiles",
    # running
    "run": "edge.verbs.run",
    "simulate": "edge.verbs.simulate",
    "watch": "edge.verbs.watch",
    # shipping
    "bundle": "edge.verbs.bundle",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="emoedge",
        description="Emotion inference on edge devices: models, engines, sensor bridge and MQTT.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run 'emoedge VERB --help' for a verb's options and examples.",
    )
    parser.add_argument("--version", action="version", version=f"emoedge {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for module in VERBS.values():
        importlib.import_module(module).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except EmoEdgeError as exc:
        print(f"emoedge {args.verb}: error: {redact_url(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
