"""Sources: every sensor, real, simulated or replayed, yields the same timestamped ``Sample``s.

``make_source(config)`` builds the right one from a ``[[sources]]`` entry of the device config through
``SOURCE_KINDS``, the one registry keyed by ``kind``: each kind's module is imported only when a source
of that kind is made, so OpenCV, PortAudio or pyserial load only when used. Each implementation builds
itself from its config entry (``from_config``, next to the implementation); the config classes
themselves are validated in ``edge.config`` (``CameraConfig``, ``MicrophoneConfig``, ``SerialConfig``,
``ReplayConfig``), whose ``kind`` values are the keys here (a test holds the two to the same list).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from firmware_bridge.sources.base import Sample, SampleKind, Source, SourceError

if TYPE_CHECKING:
    from edge.config import SourceConfig

__all__ = ["SOURCE_KINDS", "Sample", "SampleKind", "Source", "SourceError", "make_source"]

#: kind -> (module, class) of its implementation, imported when first used
SOURCE_KINDS: dict[str, tuple[str, str]] = {
    "camera": ("firmware_bridge.sources.camera", "CameraSource"),
    "microphone": ("firmware_bridge.sources.microphone", "MicrophoneSource"),
    "serial": ("firmware_bridge.sources.serial", "SerialBoardSource"),
    "replay": ("firmware_bridge.sources.replay", "ReplaySource"),
}


def make_source(cfg: SourceConfig) -> Source:
    """A source (not started) for one ``[[sources]]`` entry of the device config."""
    kind = getattr(cfg, "kind", None)
    if kind not in SOURCE_KINDS:
        raise SourceError(f"source {getattr(cfg, 'name', '?')!r}: unknown kind {kind!r} "
                          f"(one of {', '.join(SOURCE_KINDS)})")
    module, name = SOURCE_KINDS[kind]
    source: Source = getattr(importlib.import_module(module), name).from_config(cfg)
    return source
