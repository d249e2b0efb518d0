"""Replay of recordings as if they were live sensors: WAV audio, video files, and recorded EEG.

``realtime=True`` paces blocks by their time in the file (video frames a slow consumer did not take
are replaced, as from a camera); ``realtime=False`` goes as fast as the consumer reads and never
drops, for evaluation and tests. ``board_time`` is the position in the file (plus the length of the
file for every loop already played).

Recorded EEG, two formats (``save_eeg_recording`` writes both):
  ``.npz``  arrays ``data`` (float32, channels x samples, microvolts), ``sample_rate`` (scalar) and
            ``channels`` (strings).
  ``.csv``  a first line ``# sample_rate=128``, a header line of channel names, then one line of
            comma-separated microvolt values per sample.
"""

from __future__ import annotations

import logging
import time
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edge.ratelog import RateLimitedLog
from firmware_bridge.sources.base import Sample, SampleKind, Source, SourceError
from firmware_bridge.sources.camera import is_video_file

if TYPE_CHECKING:
    from edge.config import ReplayConfig

MAX_BAD_FRAMES = 300  # undecodable video frames in a row before the file is taken as ended


def save_eeg_recording(path: str | Path, data: np.ndarray, sample_rate: float, channels: list[str]) -> Path:
    """Write a recording (channels x samples, microvolts) as .npz or .csv, by the suffix of ``path``."""
    path = Path(path)
    data = np.asarray(data, dtype=np.float32)
    if data.ndim != 2 or data.shape[0] != len(channels):
        raise SourceError(f"{path}: data must be channels x samples with {len(channels)} channels, got {data.shape}")
    if path.suffix == ".npz":
        np.savez_compressed(path, data=data, sample_rate=np.float64(sample_rate), channels=np.array(channels))
    elif path.suffix == ".csv":
        with path.open("w") as f:
            f.write(f"# sample_rate={sample_rate:g}\n" + ",".join(channels) + "\n")
            np.savetxt(f, data.T, delimiter=",", fmt="%.6g")
    else:
        raise SourceError(f"{path}: recorded EEG is .npz or .csv")
    return path


def load_eeg_recording(path: str | Path) -> tuple[np.ndarray, float, list[str]]:
    """(data float32 channels x samples in microvolts, sample_rate, channel names); SourceError says what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise SourceError(f"{path}: recording not found")
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                data, rate, channels = z["data"], float(z["sample_rate"]), [str(c) for c in z["channels"]]
        except KeyError as exc:
            raise SourceError(f"{path}: missing array {exc}; expected data, sample_rate and channels") from None
        except (OSError, ValueError) as exc:
            raise SourceError(f"{path}: not a readable .npz: {exc}") from None
    elif path.suffix == ".csv":
        with path.open() as f:
            first = f.readline().strip()
            header = f.readline().strip()
            if not first.startswith("# sample_rate="):
                raise SourceError(f"{path}:1: expected '# sample_rate=HZ', got {first[:60]!r}")
            try:
                rate = float(first.split("=", 1)[1])
            except ValueError:
                raise SourceError(f"{path}:1: sample rate is not a number: {first[:60]!r}") from None
            channels = [c.strip() for c in header.split(",")]
            try:
                rows = np.loadtxt(f, delimiter=",", dtype=np.float32, ndmin=2)
            except ValueError as exc:
                raise SourceError(f"{path}: bad data line: {exc}") from None
        data = rows.T
    else:
        raise SourceError(f"{path}: recorded EEG is .npz or .csv")
    data = np.asarray(data, dtype=np.float32)
    if data.ndim != 2 or data.shape[0] != len(channels):
        raise SourceError(f"{path}: {len(channels)} channel names but data of shape {data.shape}")
    if not rate > 0:
        raise SourceError(f"{path}: sample rate must be positive, got {rate}")
    return data, rate, channels


def replay_kind(path: str | Path) -> SampleKind:
    suffix = Path(path).suffix.lower()
    if suffix == ".wav":
        return "audio"
    if suffix in (".npz", ".csv"):
        return "eeg"
    if is_video_file(path):
        return "video"
    raise SourceError(f"{path}: cannot replay {suffix or 'a file without suffix'}: use .wav, a video file, .npz or .csv")


class ReplaySource(Source):
    """Plays ``path`` as a source of its kind (see the module docstring)."""

    @classmethod
    def from_config(cls, cfg: ReplayConfig) -> ReplaySource:
        """The source for one ``kind = "replay"`` entry of the device config (not started)."""
        return cls(cfg.name, cfg.path, realtime=cfg.realtime, loop=cfg.loop)

    def __init__(self, name: str, path: str | Path, realtime: bool = True, loop: bool = False,
                 block_s: float = 0.1, eeg_block: int = 8, max_queue: int = 256) -> None:
        super().__init__(name, max_queue=max_queue)
        self.path = Path(path)
        self.kind = replay_kind(self.path)
        if not self.path.is_file():
            raise SourceError(f"{self.path}: file to replay not found")
        self.realtime = realtime
        self.loop = loop
        self.block_s = block_s
        self.eeg_block = eeg_block
        self.emitted = 0
        self.loops = 0
        self.bad_frames = 0  # video frames that could not be decoded and were skipped
        self._ratelog = RateLimitedLog(logging.getLogger(__name__))
        self._check()

    def _check(self) -> None:
        """Fail at construction, in the caller's thread, on a file that cannot be played."""
        if self.kind == "eeg":
            load_eeg_recording(self.path)
        elif self.kind == "audio":
            try:
                with wave.open(str(self.path), "rb") as w:
                    if w.getsampwidth() not in (1, 2, 4):
                        raise SourceError(f"{self.path}: {8 * w.getsampwidth()}-bit WAV; replay reads 8-, 16- and 32-bit PCM")
                    if w.getnframes() == 0:
                        raise SourceError(f"{self.path}: the WAV holds no audio (0 frames)")
            except (wave.Error, EOFError) as exc:
                raise SourceError(f"{self.path}: not a readable WAV: {self._wav_reason(exc)}") from None
        else:
            import cv2

            cap = cv2.VideoCapture(str(self.path))
            opened = cap.isOpened()
            cap.release()
            if not opened:
                raise SourceError(f"{self.path}: OpenCV cannot open this video")

    def _wav_reason(self, exc: Exception) -> str:
        """The wave module's reason, or one when it gives none (an EOFError on a short file is empty)."""
        if str(exc):
            return str(exc)
        size = self.path.stat().st_size if self.path.exists() else 0
        return "the file is empty" if size == 0 else f"the file ends after {size} bytes, inside its header"

    # -- blocks of each kind: (time in file, data, rate, channels)

    def _audio_blocks(self) -> Iterator[tuple[float, np.ndarray, float, list[str] | None]]:
        try:
            w = wave.open(str(self.path), "rb")
        except (wave.Error, EOFError) as exc:
            raise SourceError(f"{self.path}: not a readable WAV: {self._wav_reason(exc)}") from None
        with w:
            width, channels, rate = w.getsampwidth(), w.getnchannels(), w.getframerate()
            if width not in (1, 2, 4):
                raise SourceError(f"{self.path}: {8 * width}-bit WAV; replay reads 8-, 16- and 32-bit PCM")
            block = max(1, int(round(rate * self.block_s)))
            pos = 0
            while True:
                raw = w.readframes(block)
                if not raw:
                    return
                if width == 1:
                    x = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128) / 128
                elif width == 2:
                    x = np.frombuffer(raw, "<i2").astype(np.float32) / 32768
                else:
                    x = (np.frombuffer(raw, "<i4").astype(np.float64) / 2**31).astype(np.float32)
                x = x.reshape(-1, channels).mean(axis=1, dtype=np.float32) if channels > 1 else x
                yield pos / rate, x.astype(np.float32, copy=False), float(rate), None
                pos += x.size

    def _eeg_blocks(self) -> Iterator[tuple[float, np.ndarray, float, list[str] | None]]:
        data, rate, channels = load_eeg_recording(self.path)
        for start in range(0, data.shape[1], self.eeg_block):
            yield start / rate, np.ascontiguousarray(data[:, start:start + self.eeg_block]), rate, channels

    def _video_blocks(self) -> Iterator[tuple[float, np.ndarray, float, list[str] | None]]:
        import cv2

        cap = cv2.VideoCapture(str(self.path))
        if not cap.isOpened():
            raise SourceError(f"{self.path}: OpenCV cannot open this video")
        try:
            fps = cap.get(cv2.CAP_PROP_FPS) or 30.0
            total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
            n = misses = 0
            while True:
                ok, frame = cap.read()
                if ok:
                    misses = 0
                    yield n / fps, frame, fps, None
                    n += 1
                    continue
                if n >= total - 1 or misses >= MAX_BAD_FRAMES:  # the end (or nothing readable is left)
                    return
                # a frame the decoder cannot read in the middle of the file: skip it and seek past it, since
                # reading on after a failure keeps failing; the source goes on with the next good frame
                self.bad_frames += 1
                misses += 1
                self._ratelog.warn("bad-frame", "%s: frame %d of %d cannot be decoded; skipped (%d so far)",
                                   self.path.name, n, total, self.bad_frames)
                n += 1
                cap.set(cv2.CAP_PROP_POS_FRAMES, n)
        finally:
            cap.release()

    def _blocks(self) -> Iterator[tuple[float, np.ndarray, float, list[str] | None]]:
        return {"audio": self._audio_blocks, "eeg": self._eeg_blocks, "video": self._video_blocks}[self.kind]()

    def _run(self) -> None:
        t0 = time.monotonic()
        offset = 0.0
        while not self.stopped:
            end = offset
            for t, data, rate, channels in self._blocks():
                if self.stopped:
                    return
                at = offset + t
                if self.realtime:
                    delay = t0 + at - time.monotonic()
                    if delay > 0 and self._stop.wait(delay):
                        return
                span = (data.shape[-1] / rate) if self.kind != "video" else 1.0 / rate
                end = at + span
                sample = Sample(self.name, self.kind, data, rate, time.time(), at, self.emitted, channels,
                                {"file": self.path.name, "loop": self.loops})
                self._emit(sample, drop_oldest=self.realtime and self.kind == "video")
                self.emitted += 1
            if not self.loop or end == offset:
                return
            offset = end
            self.loops += 1

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "samples_out": self.emitted, "loops": self.loops, "bad_frames": self.bad_frames}
