"""Virtual sensor boards that speak the frame protocol on a serial port or pseudo-terminal.

They stand in for hardware in tests, in ``emoedge simulate`` and in ``emoedge run --demo``, and
behave like a board: they pace themselves by their own (optionally drifting) clock, send device info
and heartbeats, and when the host does not read fast enough or the port vanishes they drop blocks,
flag the overflow and count it, instead of blocking forever.

``EegBoardSimulator`` makes EEG whose band powers follow a valence/arousal script: arousal raises
beta and gamma and lowers alpha; valence shifts frontal alpha asymmetry (positive valence: less
alpha over the left frontal electrodes, i.e. more left-frontal activity). ``AudioBoardSimulator``
streams a WAV file (or a synthetic voice-like tone) as PCM16 blocks.
"""

from __future__ import annotations

import logging
import math
import os
import select
import threading
import time
import tty
import wave
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from firmware_bridge import protocol as P

log = logging.getLogger(__name__)

DEAP_CHANNELS = [
    "Fp1", "AF3", "F3", "F7", "FC5", "FC1", "C3", "T7", "CP5", "CP1", "P3", "P7", "PO3", "O1", "Oz", "Pz",
    "Fp2", "AF4", "Fz", "F4", "F8", "FC6", "FC2", "Cz", "C4", "T8", "CP6", "CP2", "P4", "P8", "PO4", "O2",
]
#: Emotiv EPOC / EPOC+ electrode names in the headset's order (DREAMER's and DASPS's order too)
EMOTIV_CHANNELS = ["AF3", "F7", "F3", "FC5", "T7", "P7", "O1", "O2", "P8", "T8", "FC6", "F4", "F8", "AF4"]
EMOTIV_LSB_UV = 0.51  # EPOC: 14-bit samples, 0.51 uV per count
EMOTIV_OFFSET_UV = 4200.0  # the EPOC's raw samples sit near 4,200 uV (its DC level), not at zero
LEFT_FRONTAL = {"Fp1", "AF3", "F3", "F7", "FC5", "FC1"}
RIGHT_FRONTAL = {"Fp2", "AF4", "F4", "F8", "FC6", "FC2"}

# (low Hz, high Hz, amplitude uV at neutral)
BANDS = {
    "theta": (4.0, 8.0, 6.0),
    "slow_alpha": (8.0, 10.0, 6.0),
    "alpha": (8.0, 12.0, 10.0),
    "beta": (12.0, 30.0, 4.0),
    "gamma": (30.0, 45.0, 1.5),
}
ADS1299_SCALE_UV = 4.5e6 / 24 / (1 << 23)  # uV per count at gain 24: 0.02235...
DEFAULT_SCRIPT = [(10.0, 0.0, 0.0), (10.0, 0.7, 0.7), (10.0, -0.7, 0.7), (10.0, -0.6, -0.6), (10.0, 0.6, -0.6)]


@dataclass
class PtyPair:
    """A pseudo-terminal: the simulator writes ``master_fd``; a reader opens ``slave_path`` like a serial port."""

    master_fd: int
    slave_fd: int
    slave_path: str

    def close(self) -> None:
        for fd in (self.master_fd, self.slave_fd):
            try:
                os.close(fd)
            except OSError:
                pass


def open_pty() -> PtyPair:
    """Open a raw pseudo-terminal pair (no echo, no newline translation, so binary frames pass intact).

    The slave end stays open in this process so that its raw settings hold while readers come and go.
    """
    master, slave = os.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    os.set_blocking(master, False)
    return PtyPair(master, slave, os.ttyname(slave))


def band_gains(valence: float, arousal: float) -> dict[str, float]:
    """Gain of each band (1 = neutral) for a valence/arousal state in [-1, 1]."""
    a = float(np.clip(arousal, -1, 1))
    return {
        "theta": 1.0 - 0.1 * a,
        "slow_alpha": 1.0 - 0.45 * a,
        "alpha": 1.0 - 0.45 * a,
        "beta": 1.0 + 0.6 * a,
        "gamma": 1.0 + 0.8 * a,
    }


def script_state(script: list[tuple[float, float, float]], t: float) -> tuple[float, float]:
    """(valence, arousal) at time t of a script of (seconds, valence, arousal) segments, looped."""
    total = sum(max(0.0, s) for s, _, _ in script)
    if not script or total <= 0:
        return 0.0, 0.0
    t = t % total
    for seconds, valence, arousal in script:
        if t < seconds:
            return valence, arousal
        t -= seconds
    return script[-1][1], script[-1][2]


class BoardSimulator(ABC):
    """A paced frame writer on a serial port path or an open file descriptor (e.g. a pty master).

    realtime: pace blocks by the board clock; when the port cannot take a frame within
    ``write_timeout_s`` the block is dropped and counted (as a board with a full USB buffer would).
    Not realtime: send as fast as the reader takes them, never dropping (for throughput tests).
    """

    sensor = P.SENSOR_NONE

    def __init__(self, port: str | int, baudrate: int = 921600, realtime: bool = True, clock_ppm: float = 0.0,
                 start_us: int = 0, block: int = 8, rate: float = 128.0, write_timeout_s: float = 0.25,
                 info_every_s: float = 1.0, seconds: float | None = None) -> None:
        self.port = port
        self.baudrate = baudrate
        self.realtime = realtime
        self.clock_ppm = clock_ppm
        self.start_us = start_us
        self.block = block
        self.rate = float(rate)
        self.write_timeout_s = write_timeout_s
        self.info_every_s = info_every_s
        self.seconds = seconds
        self.encoder = P.FrameEncoder(self.sensor)
        self.frames_sent = 0
        self.blocks_sent = 0
        self.bytes_sent = 0
        self.board_dropped = 0  # samples not sent (port full or gone)
        self.reopens = 0
        self.partial_frames = 0  # frames cut short when the port stopped taking bytes mid-frame
        self._fd: int | None = None
        self._serial: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.done = threading.Event()
        self.error: str | None = None

    # -- port handling

    def _open(self) -> bool:
        if isinstance(self.port, int):
            self._fd = self.port
            return True
        try:
            import serial

            self._serial = serial.Serial(self.port, self.baudrate, timeout=0, write_timeout=0)
            fd = self._serial.fileno()
            os.set_blocking(fd, False)
            self._fd = fd
            return True
        except Exception as exc:  # the port is not there (yet): a board keeps sampling meanwhile
            self.error = str(exc)
            self._fd = None
            return False

    def _close_port(self) -> None:
        if self._serial is not None:
            try:
                self._serial.close()
            except Exception:
                pass
        self._serial = None
        self._fd = None

    def _write(self, data: bytes, may_drop: bool) -> bool:
        """Write a whole frame; False when the port stays full past the write timeout or is gone."""
        if self._fd is None and not (not isinstance(self.port, int) and self._reopen()):
            return False
        view = memoryview(data)
        started = False
        deadline = time.monotonic() + self.write_timeout_s
        while view:
            try:
                n = os.write(self._fd, view)  # type: ignore[arg-type]
                started = started or n > 0
                view = view[n:]
                continue
            except BlockingIOError:
                pass
            except OSError as exc:  # port vanished
                self.error = str(exc)
                if isinstance(self.port, int):
                    return False
                self._close_port()
                return False
            if self._stop.is_set():
                return False
            wait = 0.05
            if may_drop:
                wait = min(wait, deadline - time.monotonic())
                if wait <= 0:  # a board cannot wait: drop the frame (cut short if it had begun)
                    self.partial_frames += started
                    return False
            if self._fd is None:
                return False
            try:
                select.select([], [self._fd], [], wait)
            except (OSError, ValueError):
                return False
        return True

    def _reopen(self) -> bool:
        ok = self._open()
        if ok:
            self.reopens += 1
        return ok

    # -- clock

    def board_us(self, t: float) -> int:
        """The board's timestamp for ideal time t (s since start), on a clock running clock_ppm fast."""
        return (self.start_us + int(round(t * (1.0 + self.clock_ppm * 1e-6) * 1e6))) & 0xFFFFFFFF

    # -- frames

    @abstractmethod
    def make_block(self, index: int, t: float) -> bytes:
        """Encode data block ``index`` whose first sample is at time t."""

    @abstractmethod
    def make_info(self, t: float) -> bytes:
        """Encode the device info frame."""

    def _send(self, frame: bytes, samples: int = 0) -> None:
        ok = self._write(frame, may_drop=self.realtime)
        if ok:
            self.frames_sent += 1
            self.bytes_sent += len(frame)
            if samples:
                self.blocks_sent += 1
        else:
            self.board_dropped += samples
            self.encoder.mark_overflow()

    def _run(self) -> None:
        if not self._open():
            self._reopen_until_stopped()
        block_s = self.block / self.rate
        t0 = time.monotonic()
        next_info = 0.0
        index = 0
        try:
            while not self._stop.is_set():
                t = index * block_s
                if self.seconds is not None and t >= self.seconds:
                    break
                if self.realtime:
                    delay = t0 + t - time.monotonic()
                    if delay > 0 and self._stop.wait(delay):
                        break
                if t >= next_info:
                    self._send(self.make_info(t))
                    self._send(self.encoder.heartbeat(self.board_us(t), self.board_dropped))
                    next_info = t + self.info_every_s
                if self._fd is None and not isinstance(self.port, int) and not self._reopen():
                    self.board_dropped += self.block  # unplugged: the board samples on, and loses the block
                    self.encoder.mark_overflow()
                    index += 1
                    continue
                self._send(self.make_block(index, t), samples=self.block)
                index += 1
        except Exception as exc:  # report, never kill the caller's process from a daemon thread
            self.error = f"{type(exc).__name__}: {exc}"
            log.exception("simulator stopped")
        finally:
            self.done.set()

    def _reopen_until_stopped(self) -> None:
        while not self._stop.is_set() and not self._reopen():
            self._stop.wait(0.05)

    # -- lifecycle

    def start(self) -> BoardSimulator:
        if self._thread is None:
            self._stop.clear()
            self.done.clear()
            self._thread = threading.Thread(target=self._run, name=f"sim-{type(self).__name__}", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 3.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if not isinstance(self.port, int):
            self._close_port()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until a run with ``seconds`` has sent everything."""
        return self.done.wait(timeout)

    def __enter__(self) -> BoardSimulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stats(self) -> dict[str, Any]:
        return {"frames_sent": self.frames_sent, "blocks_sent": self.blocks_sent, "bytes_sent": self.bytes_sent,
                "board_dropped": self.board_dropped, "partial_frames": self.partial_frames, "reopens": self.reopens, "seq_next": self.encoder.seq,
                "error": self.error}


class EegBoardSimulator(BoardSimulator):
    """EEG as sums of band-limited oscillations plus noise, band powers following a valence/arousal script.

    script: [(seconds, valence, arousal), ...] segments in [-1, 1], looped. Each channel has three
    oscillators per band at fixed random frequencies within the band and random phases; their
    amplitudes follow ``band_gains`` of the script's state, smoothed with a 1 s time constant.
    """

    sensor = P.SENSOR_EEG

    def __init__(self, port: str | int, rate: float = 128.0, channels: list[str] | None = None,
                 script: list[tuple[float, float, float]] | None = None, block: int = 8,
                 sample_format: int = P.FMT_INT24, scale_uv: float = ADS1299_SCALE_UV, noise_uv: float = 2.0,
                 seed: int = 0, name: str = "emoedge-sim-eeg", **kwargs: Any) -> None:
        super().__init__(port, rate=rate, block=block, **kwargs)
        self.channels = list(channels or DEAP_CHANNELS)
        self.script = list(script or DEFAULT_SCRIPT)
        self.sample_format = sample_format
        self.scale_uv = scale_uv if sample_format != P.FMT_FLOAT32 else 1.0
        self.noise_uv = noise_uv
        self.name = name
        payload = P.EEG_HEAD.size + len(self.channels) * block * P.FORMAT_SIZES[sample_format]
        if payload > P.MAX_PAYLOAD:
            raise ValueError(f"{len(self.channels)} channels x {block} samples make a {payload}-byte frame; "
                             f"the protocol allows {P.MAX_PAYLOAD}: use a smaller block")
        rng = np.random.default_rng(seed)
        self._rng = rng
        n = len(self.channels)
        self._bands = list(BANDS)
        nyquist = self.rate / 2
        self._freqs = {}
        self._phases = {}
        for b in self._bands:
            lo, hi, _ = BANDS[b]
            self._freqs[b] = rng.uniform(lo, min(hi, nyquist * 0.95), size=(n, 3))
            self._phases[b] = rng.uniform(0, 2 * np.pi, size=(n, 3))
        side = np.zeros(n)
        for i, ch in enumerate(self.channels):
            side[i] = -1.0 if ch in LEFT_FRONTAL else (1.0 if ch in RIGHT_FRONTAL else 0.0)
        self._side = side
        self._gain = {b: 1.0 for b in self._bands}
        self._valence = 0.0

    def state_at(self, t: float) -> tuple[float, float]:
        """The script's (valence, arousal) at time t: the ground truth of the signal."""
        return script_state(self.script, t)

    def microvolts(self, t: float, n: int) -> np.ndarray:
        """(channels, n) float64 microvolts of the n samples starting at time t (advances the smoothing)."""
        valence, arousal = self.state_at(t)
        target = band_gains(valence, arousal)
        k = 1.0 - math.exp(-(n / self.rate) / 1.0)
        for b in self._bands:
            self._gain[b] += k * (target[b] - self._gain[b])
        self._valence += k * (valence - self._valence)
        ts = t + np.arange(n) / self.rate
        out = self.noise_uv * self._rng.standard_normal((len(self.channels), n))
        for b in self._bands:
            amp = BANDS[b][2] * self._gain[b]
            per_channel = np.full(len(self.channels), amp)
            if b in ("alpha", "slow_alpha"):  # positive valence: left frontal alpha down, right up
                per_channel = per_channel * (1.0 + 0.3 * self._valence * self._side)
            waves = np.sin(2 * np.pi * self._freqs[b][:, :, None] * ts[None, None, :] + self._phases[b][:, :, None])
            out += (per_channel[:, None] / math.sqrt(3)) * waves.sum(axis=1)
        return out

    def make_block(self, index: int, t: float) -> bytes:
        uv = self.microvolts(t, self.block)
        data = uv if self.sample_format == P.FMT_FLOAT32 else np.round(uv / self.scale_uv)
        return self.encoder.eeg(self.board_us(t), data, self.rate, self.scale_uv, self.sample_format)

    def make_info(self, t: float) -> bytes:
        return self.encoder.info(self.board_us(t), self.sample_format, len(self.channels), self.rate,
                                 self.scale_uv, self.name, self.channels)


class EmotivBoardSimulator(EegBoardSimulator):
    """A 14-channel Emotiv EPOC-like headset: the EPOC's electrode names and order, 128 Hz (256 Hz as the EPOC+
    can), int16 samples of 0.51 uV around the headset's ~4,200 uV DC level, band powers following the same
    valence/arousal script as ``EegBoardSimulator``.

    For bad-input tests: ``flat`` channels send the DC level only (an electrode off the head), ``saturated``
    channels are clipped a few microvolts around it (an amplifier at its rail); ``channels`` may be given
    in another order or with other names.
    """

    def __init__(self, port: str | int, rate: float = 128.0, channels: list[str] | None = None,
                 offset_uv: float = EMOTIV_OFFSET_UV, flat: tuple[str, ...] | list[str] = (),
                 saturated: tuple[str, ...] | list[str] = (), name: str = "emoedge-sim-epoc", **kwargs: Any) -> None:
        kwargs.setdefault("sample_format", P.FMT_INT16)
        kwargs.setdefault("scale_uv", EMOTIV_LSB_UV)
        super().__init__(port, rate=rate, channels=list(channels or EMOTIV_CHANNELS), name=name, **kwargs)
        unknown = [c for c in (*flat, *saturated) if c not in self.channels]
        if unknown:
            raise ValueError(f"flat/saturated channels {unknown} are not among {self.channels}")
        self.offset_uv = offset_uv
        self.flat = [self.channels.index(c) for c in flat]
        self.saturated = [self.channels.index(c) for c in saturated]

    def microvolts(self, t: float, n: int) -> np.ndarray:
        out = super().microvolts(t, n) + self.offset_uv
        for i in self.flat:
            out[i] = self.offset_uv
        for i in self.saturated:
            out[i] = np.clip(out[i], self.offset_uv - 3.0, self.offset_uv + 3.0)
        return out


def read_wav_mono16(path: str | os.PathLike[str]) -> tuple[np.ndarray, int]:
    """PCM16 mono samples and the rate of a WAV file (stereo is averaged). Raises ValueError when not PCM16."""
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2:
            raise ValueError(f"{path}: {8 * w.getsampwidth()}-bit WAV; the audio board streams 16-bit PCM only")
        rate, channels = w.getframerate(), w.getnchannels()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    if channels > 1:
        pcm = pcm.reshape(-1, channels).mean(axis=1).round().astype(np.int16)
    return pcm.astype(np.int16), rate


def synthetic_voice(seconds: float = 4.0, rate: int = 16000, seed: int = 0) -> np.ndarray:
    """A voice-like PCM16 signal: a gliding harmonic tone with syllable-rate loudness and a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    f0 = 140 + 40 * np.sin(2 * np.pi * 0.5 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 8))
    envelope = 0.5 * (1 + np.sin(2 * np.pi * 4 * t)) ** 2 / 2
    x = 0.3 * envelope * voice / 2.6 + 0.01 * rng.standard_normal(t.size)
    return np.clip(x * 32767, -32768, 32767).astype(np.int16)


class AudioBoardSimulator(BoardSimulator):
    """A microphone board: PCM16 mono blocks from a WAV file (looped), or a synthetic voice when none."""

    sensor = P.SENSOR_AUDIO

    def __init__(self, port: str | int, wav: str | os.PathLike[str] | None = None, block: int = 256,
                 rate: int | None = None, loop: bool = True, name: str = "emoedge-sim-audio", **kwargs: Any) -> None:
        if wav is not None:
            pcm, wav_rate = read_wav_mono16(wav)
        else:
            wav_rate = rate or 16000
            pcm = synthetic_voice(rate=wav_rate)
        if rate is not None and wav is not None and rate != wav_rate:
            raise ValueError(f"{wav} is {wav_rate} Hz; --rate {rate} differs (resampling is not the board's job)")
        if pcm.size == 0:
            raise ValueError(f"{wav}: no samples")
        seconds = kwargs.pop("seconds", None)
        if not loop and seconds is None:
            seconds = pcm.size / wav_rate
        super().__init__(port, rate=wav_rate, block=block, seconds=seconds, **kwargs)
        self.pcm = pcm
        self.name = name
        self.source = Path(wav).name if wav is not None else "synthetic voice"

    def make_block(self, index: int, t: float) -> bytes:
        start = (index * self.block) % self.pcm.size
        idx = (start + np.arange(self.block)) % self.pcm.size
        return self.encoder.audio(self.board_us(t), self.pcm[idx], int(self.rate))

    def make_info(self, t: float) -> bytes:
        return self.encoder.info(self.board_us(t), P.FMT_INT16, 1, self.rate, 1.0 / 32768, self.name, ["mic"])
