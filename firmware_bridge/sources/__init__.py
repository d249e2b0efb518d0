"""Sources: every sensor, real, simulated or replayed, yields the same timestamped ``Sample``s.

``make_source(config)`` builds the right one from a source entry of the device config
(``edge.config.CameraSource | MicrophoneSource | SerialSource | ReplaySource``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from firmware_bridge.sources.base import Sample, SampleKind, Source, SourceError

if TYPE_CHECKING:
    from edge import config

__all__ = ["Sample", "SampleKind", "Source", "SourceError", "make_source"]


def make_source(cfg: config.CameraSource | config.MicrophoneSource | config.SerialSource | config.ReplaySource) -> Source:
    """A source (not started) for one ``[[sources]]`` entry of the device config."""
    kind = getattr(cfg, "kind", None)
    if kind == "camera":
        from firmware_bridge.sources.camera import CameraSource

        return CameraSource(cfg.name, cfg.device, cfg.width, cfg.height, cfg.fps)  # type: ignore[union-attr]
    if kind == "microphone":
        from firmware_bridge.sources.microphone import MicrophoneSource

        return MicrophoneSource(cfg.name, cfg.device, cfg.sample_rate, cfg.block_s)  # type: ignore[union-attr]
    if kind == "serial":
        from firmware_bridge.sources.serial import SerialBoardSource

        return SerialBoardSource(cfg.name, port=cfg.port, usb=cfg.usb, baudrate=cfg.baudrate,  # type: ignore[union-attr]
                                 text_mode=cfg.text_mode)  # type: ignore[union-attr]
    if kind == "replay":
        from firmware_bridge.sources.replay import ReplaySource

        return ReplaySource(cfg.name, cfg.path, realtime=cfg.realtime, loop=cfg.loop)  # type: ignore[union-attr]
    raise SourceError(f"source {getattr(cfg, 'name', '?')!r}: unknown kind {kind!r}")
