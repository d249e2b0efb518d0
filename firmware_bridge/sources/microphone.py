"""Microphones through PortAudio, with the ``sounddevice`` package.

Why sounddevice: it is well kept (regular releases, wide use), ships wheels, hands blocks to a
callback as numpy arrays with PortAudio's own capture timestamps, and goes through ALSA on Linux and
on a Jetson (JetPack's ALSA devices, USB microphones, I2S codecs), so one code path serves both.
It needs the PortAudio library (``apt install libportaudio2``; the Linux wheel does not bundle it).
The alternative, pyalsaaudio, builds from source against libasound2-dev, is ALSA-only, and leaves
timestamps and format conversion to us. The package is imported only when a microphone is opened,
so EmoEdge works without it: ``pip install 'emoedge[audio]'``.

The callback never blocks (PortAudio would glitch): a block that finds the queue full is dropped
and counted, and PortAudio's own input overflows are counted too. When the device fails (a USB
microphone pulled), the stream is reopened with backoff.
"""

from __future__ import annotations

import logging
import math
import queue
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from firmware_bridge.sources.base import Sample, Source, SourceError

if TYPE_CHECKING:
    from edge.config import MicrophoneConfig

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'emoedge[audio]' (sounddevice) and apt install libportaudio2"


def import_sounddevice() -> Any:
    """The sounddevice module, or SourceError saying how to get it (module or PortAudio missing)."""
    try:
        import sounddevice
    except ImportError as exc:
        raise SourceError(f"microphone capture needs sounddevice: {INSTALL_HINT}") from exc
    except OSError as exc:  # the module is there but the PortAudio library is not
        raise SourceError(f"sounddevice cannot load PortAudio ({exc}): apt install libportaudio2") from exc
    return sounddevice


def to_mono_float32(block: np.ndarray) -> np.ndarray:
    """A PortAudio input block (frames x channels, float32 or int16) as float32 mono in [-1, 1]."""
    x = np.asarray(block)
    if x.dtype == np.int16:
        x = x.astype(np.float32) / 32768.0
    elif x.dtype == np.int32:
        x = (x.astype(np.float64) / 2**31).astype(np.float32)
    else:
        x = x.astype(np.float32, copy=False)
    if x.ndim == 2:
        x = x.mean(axis=1, dtype=np.float32) if x.shape[1] > 1 else x[:, 0]
    return np.clip(x, -1.0, 1.0).astype(np.float32, copy=True)


DEFAULT_BLOCK_S = 0.05


def aligned_block_s(block_s: float | None, hop_s: float | None) -> float:
    """``block_s`` as configured, else at most ``DEFAULT_BLOCK_S`` with the hop a whole number of blocks.

    A window ends on a sample; its block arrives when the block's last sample does. When the hop is not
    a whole number of blocks, windows end inside blocks and wait for the rest of them: on average half a
    block of latency (50 ms with the former 100 ms blocks), for nothing.
    """
    if block_s is not None:
        return block_s
    if hop_s is None:  # half the model's window: 1.5 s for the shipped speech model, 30 blocks
        return DEFAULT_BLOCK_S
    return hop_s / math.ceil(hop_s / DEFAULT_BLOCK_S - 1e-9)


class MicrophoneSource(Source):
    """Blocks of ``block_s`` seconds of mono float32 audio from an input device (ALSA name or index)."""

    kind = "audio"

    @classmethod
    def from_config(cls, cfg: MicrophoneConfig) -> MicrophoneSource:
        """The source for one ``kind = "microphone"`` entry of the device config (not started)."""
        return cls(cfg.name, cfg.device, cfg.sample_rate, aligned_block_s(cfg.block_s, cfg.hop_s))

    def __init__(self, name: str, device: str | int | None = None, sample_rate: int = 16000, block_s: float = 0.05,
                 channels: int = 1, max_queue: int = 256, max_backoff_s: float = 5.0) -> None:
        super().__init__(name, max_queue=max_queue)
        self.device = device
        self.sample_rate = sample_rate
        self.block = max(1, int(round(sample_rate * block_s)))
        self.channels = channels
        self.max_backoff_s = max_backoff_s
        self.emitted = 0
        self.overflows = 0
        self.opens = 0
        self.open_failures = 0
        self.last_error: str | None = None

    def start(self) -> MicrophoneSource:
        """Fails here, in the caller's thread, when sounddevice or PortAudio is missing."""
        import_sounddevice()
        super().start()
        return self

    def on_block(self, indata: np.ndarray, adc_time: float | None, overflow: bool) -> None:
        """PortAudio callback body (also what tests drive): never blocks."""
        if overflow:
            self.overflows += 1
        sample = Sample(self.name, "audio", to_mono_float32(indata), float(self.sample_rate), time.time(), adc_time,
                        self.emitted, None, {"device": self.device})
        try:
            self._queue.put_nowait(sample)
            self.emitted += 1
        except queue.Full:
            self.dropped += 1

    def _run(self) -> None:
        sd = import_sounddevice()

        def callback(indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
            adc = getattr(time_info, "inputBufferAdcTime", None)
            self.on_block(indata, adc if adc else None, bool(status and status.input_overflow))

        backoff = 0.2
        while not self.stopped:
            try:
                stream = sd.InputStream(device=self.device, samplerate=self.sample_rate, channels=self.channels,
                                        dtype="float32", blocksize=self.block, callback=callback)
            except (sd.PortAudioError, ValueError) as exc:
                self.open_failures += 1
                self.last_error = f"cannot open input device {self.device!r}: {exc}"
                if self.open_failures == 1:
                    log.warning("microphone %s: %s; retrying", self.name, self.last_error)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)
                continue
            self.opens += 1
            backoff = 0.2
            with stream:
                while not self.stopped and stream.active:
                    self._stop.wait(0.1)
            if not self.stopped:
                self.last_error = "input stream stopped (device gone?)"
                log.warning("microphone %s: %s; reopening", self.name, self.last_error)

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "samples_out": self.emitted, "overflows": self.overflows, "opens": self.opens,
                "open_failures": self.open_failures, "last_error": self.last_error}


def list_input_devices() -> list[dict[str, Any]]:
    """Input devices PortAudio sees (name, index, channels, default rate); SourceError without sounddevice."""
    sd = import_sounddevice()
    return [
        {"index": i, "name": d["name"], "channels": d["max_input_channels"], "default_rate": d["default_samplerate"]}
        for i, d in enumerate(sd.query_devices()) if d["max_input_channels"] > 0
    ]
