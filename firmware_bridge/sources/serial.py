"""Sensor boards on a serial port: EEG and audio boards that speak the frame protocol, or quick
sketches that print lines of numbers (plain-text mode).

Bytes arrive on the link's reader thread, are decoded there, and each data frame leaves as one
Sample (EEG: float32 microvolts, channels x samples; audio: float32 mono in [-1, 1]) stamped with the
board's clock and the host's receive time. Samples are never dropped here: when the consumer falls
behind, the queue pushes back on the reader, then on the port, and the board's own overflow
counter (heartbeat, FLAG_OVERFLOW) and the sequence gaps say what was lost.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import numpy as np

from firmware_bridge import protocol as P
from firmware_bridge.link import SerialLink
from firmware_bridge.sources.base import Sample, SampleKind, Source

if TYPE_CHECKING:
    from edge.config import SerialConfig


class SerialBoardSource(Source):
    """A board on ``port`` (device path) or ``usb`` (VID:PID[:SERIAL]), read through a reconnecting link.

    text_mode: lines of numbers instead of frames; each emitted Sample holds the lines of about
    ``text_block_s`` seconds, as ``text_kind`` (columns x lines), at the rate estimated from arrivals.
    """

    @classmethod
    def from_config(cls, cfg: SerialConfig) -> SerialBoardSource:
        """The source for one ``kind = "serial"`` entry of the device config (not started)."""
        return cls(cfg.name, port=cfg.port, usb=cfg.usb, baudrate=cfg.baudrate, text_mode=cfg.text_mode)

    def __init__(self, name: str, port: str | None = None, usb: str | None = None, baudrate: int = 921600,
                 text_mode: bool = False, text_kind: SampleKind = "eeg", text_block_s: float = 0.125,
                 max_queue: int = 1024, link_kwargs: dict[str, Any] | None = None) -> None:
        super().__init__(name, max_queue=max_queue)
        self.kind = text_kind if text_mode else "eeg"
        self.text_mode = text_mode
        self.text_block_s = text_block_s
        self.decoder: P.FrameDecoder | P.TextLineDecoder = P.TextLineDecoder() if text_mode else P.FrameDecoder()
        self.link = SerialLink(port=port, usb=usb, baudrate=baudrate, on_data=self._on_data, **(link_kwargs or {}))
        self.emitted = 0
        self._rows: list[np.ndarray] = []
        self._rows_since: float | None = None
        self._lock = threading.Lock()

    # -- reader thread of the link

    def _on_data(self, data: bytes, host_time: float) -> None:
        out: list[Sample] = []
        with self._lock:  # decode under the lock (stats() reads the decoder), emit outside it
            if isinstance(self.decoder, P.TextLineDecoder):
                sample = self._on_text(self.decoder.feed(data, host_time), host_time)
                out = [sample] if sample is not None else []
            else:
                for frame in self.decoder.feed(data, host_time):
                    sample = self._sample(frame)
                    if sample is not None:
                        out.append(sample)
        for sample in out:
            self._emit(sample)

    def _sample(self, frame: P.Frame) -> Sample | None:
        body = frame.body
        meta: dict[str, Any] = {"frame_seq": frame.seq, "gap_frames": frame.gap, "flags": frame.flags}
        if isinstance(body, P.EegBlock):
            info = self.decoder.info if isinstance(self.decoder, P.FrameDecoder) else None
            names = info.channel_names if info and len(info.channel_names) == body.channels else None
            self.kind = "eeg"
            sample = Sample(self.name, "eeg", body.microvolts(), float(body.sample_rate), frame.host_time,
                            frame.board_time, self.emitted, names or [f"ch{i + 1}" for i in range(body.channels)],
                            {**meta, "format": P.FORMAT_NAMES[body.sample_format], "channel_names_known": bool(names)})
        elif isinstance(body, P.AudioBlock):
            self.kind = "audio"
            sample = Sample(self.name, "audio", body.floats(), float(body.sample_rate), frame.host_time,
                            frame.board_time, self.emitted, None, meta)
        else:
            return None
        self.emitted += 1
        return sample

    def _on_text(self, rows: list[np.ndarray], host_time: float) -> Sample | None:
        if not rows:
            return None
        if self._rows_since is None:
            self._rows_since = host_time
        self._rows.extend(rows)
        rate = self.decoder.rate_hz()
        if host_time - self._rows_since < self.text_block_s and len(self._rows) < 1024:
            return None
        columns = self._rows[-1].size
        rows_ok = [r for r in self._rows if r.size == columns]
        data = np.stack(rows_ok, axis=1).astype(np.float32)
        self._rows, self._rows_since = [], None
        sample = Sample(self.name, self.kind, data if self.kind != "audio" else data[0], rate, host_time, None,
                        self.emitted, [f"col{i + 1}" for i in range(columns)], {"text_mode": True})
        self.emitted += 1
        return sample

    # -- Source

    def _run(self) -> None:
        self.link.start()
        try:
            self._stop.wait()
        finally:
            self.link.stop()

    def stats(self) -> dict[str, Any]:
        with self._lock:
            decoded = self.decoder.stats()
        return {**super().stats(), **decoded, **self.link.stats(), "samples_out": self.emitted}
