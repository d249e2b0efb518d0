"""End-to-end latency: from the end of a sensor window to the moment a subscriber receives its estimate.

The whole bridge runs as in production (sources -> features -> runners -> fusion -> outbox ->
MQTT QoS 1 -> broker -> subscriber): EEG and audio stream at their full real-time rates, faces come
from a 640x480 video at 30 frames/s. The subscriber is a separate process (as a robot's controller
would be) that stamps the receive time of every estimate; latency = receive time - ``ts`` (the host
time of the last sample of the window, or the frame's capture time), on the same host clock.

Inputs, none of them shipped data: EEG is synthetic (noise plus alpha rhythm), the audio is the
project's own synthetic speech clip (edge/demo_media), the video is ``--video FILE`` or frames made
here; with the research data present (EMOEDGE_DATA) the made frames carry FER2013 validation faces
that the detector finds, so that the face path does real work.

    emoedge bench e2e [--duration 20] [--video FILE] [--mqtt URL] [--json]
    python -m edge.bench.e2e --duration 20
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path
from typing import Any

import numpy as np

from edge.bench.e2e_report import (
    COMPARE_FLOOR_MS,
    E2E_SCHEMA,
    compare_e2e,
    format_result,
    load_e2e,
    percentiles,
    stage_percentiles,
)
from edge.bench.environment import usable_cores
from edge.errors import EmoEdgeError
from firmware_bridge.sources.base import Sample, SampleKind, Source

EEG_CHANNELS = 32
EEG_RATE = 128.0
EEG_BLOCK = 8  # samples a block: 16 blocks/s, as a board streaming small frames
AUDIO_RATE = 16000.0
AUDIO_BLOCK_S = 0.05
FPS = 30.0
WIDTH, HEIGHT = 640, 480
DEVICE_CHECK_WAIT_S = 60.0  # shadow-mode checks need 32 live windows: 8 s at a 0.25 s hop

_SUBSCRIBER = r"""
import sys, json, time
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
host, port, topic, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
f = open(out, "w", buffering=1)
def on_connect(c, u, fl, rc, p):
    c.subscribe(topic, qos=1)
def on_subscribe(c, u, mid, rcs, p):
    print("ready", flush=True)
def on_message(c, u, m):
    now = time.time()
    b = json.loads(m.payload)
    f.write(json.dumps({"source": b["source"], "seq": b["seq"], "ts": b["ts"], "pub_ts": b.get("pub_ts"),
                        "latency_ms": b.get("latency_ms", {}), "received": now}) + "\n")
c = mqtt.Client(CallbackAPIVersion.VERSION2)
c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
c.connect(host, port)
c.loop_forever()
"""


class PacedSource(Source):
    """Streams prepared blocks at their real-time rate (one block every ``len/rate`` seconds), looping."""

    def __init__(self, name: str, kind: SampleKind, blocks: list[np.ndarray], rate: float, block_period: float,
                 channels: list[str] | None = None) -> None:
        super().__init__(name, max_queue=64)
        self.kind = kind
        self.blocks, self.rate, self.period, self.channels = blocks, rate, block_period, channels

    def _run(self) -> None:
        t = time.perf_counter()
        i = 0
        while not self.stopped:
            t += self.period
            delay = t - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            block = self.blocks[i % len(self.blocks)]
            self._emit(Sample(self.name, self.kind, block, self.rate, time.time(), seq=i, channels=self.channels),
                       drop_oldest=self.kind == "video")
            i += 1


def eeg_blocks(seconds: float = 10.0, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    n = int(seconds * EEG_RATE)
    t = np.arange(n) / EEG_RATE
    data = (rng.standard_normal((EEG_CHANNELS, n)) * 10 + 20 * np.sin(2 * np.pi * 10 * t)).astype(np.float32)
    return [data[:, i : i + EEG_BLOCK] for i in range(0, n - EEG_BLOCK + 1, EEG_BLOCK)]


def _eeg_channel_names() -> list[str] | None:
    try:
        from edge.features.eeg import DEAP_ELECTRODES
    except ImportError:
        return None
    return list(DEAP_ELECTRODES)


def audio_blocks() -> list[np.ndarray]:
    from edge.demo import DEMO_SPEECH

    with wave.open(str(DEMO_SPEECH)) as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).astype(np.float32) / 32768.0
    step = int(AUDIO_BLOCK_S * AUDIO_RATE)
    return [pcm[i : i + step] for i in range(0, len(pcm) - step + 1, step)]


def video_file(video: str | None, folder: Path, count: int = 150) -> tuple[Path, str]:
    """``video`` itself, else a 640x480 MJPEG file written here (with FER2013 faces when the data is present).

    Either way the bench replays a file through the replay source, so decoding is part of the measured path.
    """
    import cv2

    if video:
        if not Path(video).exists():
            raise EmoEdgeError(f"{video}: no such video file")
        return Path(video), f"video file {video}"
    frames, what = video_frames(count)
    path = folder / "bench_faces.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), FPS, (WIDTH, HEIGHT))
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path, f"{what}, MJPEG {WIDTH}x{HEIGHT} at {FPS:g} frames/s"


def video_frames(count: int = 90) -> tuple[list[np.ndarray], str]:
    """Frames made here: noise, and FER2013 validation faces (a new one every second) when the data is present."""
    from edge.paths import data_dir

    faces = _detectable_faces(data_dir() / "fer2013" / "validation")
    rng = np.random.default_rng(0)
    frames = []
    for i in range(count):
        frame = np.full((HEIGHT, WIDTH, 3), 90, np.uint8)
        frame += rng.integers(0, 12, frame.shape, dtype=np.uint8)
        if faces:
            face = faces[(i // 30) % len(faces)]  # a new face every second, moving a little
            x, y = 240 + int(20 * np.sin(i / 10)), 160
            frame[y : y + 160, x : x + 160] = face[:, :, None]
        frames.append(frame)
    what = f"frames made with {len(faces)} FER2013 validation faces" if faces else "frames made without faces (no data)"
    return frames, what


def _detectable_faces(folder: Path, want: int = 3) -> list[np.ndarray]:
    """A few FER2013 faces, upscaled to 160 px, that the Haar detector finds at half resolution."""
    import cv2

    from edge.features import face as face_features

    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.glob("*/*.jpg"))[:200]:
        img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if img is None:
            continue
        big = cv2.resize(img, (160, 160), interpolation=cv2.INTER_CUBIC)
        frame = np.full((HEIGHT // 2, WIDTH // 2), 90, np.uint8)
        small = cv2.resize(big, (80, 80), interpolation=cv2.INTER_AREA)
        frame[80:160, 120:200] = small
        if face_features.detect_faces(frame, min_size=20):
            found.append(big)
            if len(found) >= want:
                break
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_broker(tmp: Path) -> tuple[str, Any]:
    """A Mosquitto on loopback when installed (what a device would run), else the embedded amqtt broker."""
    mosquitto = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    port = _free_port()
    if mosquitto:
        conf = tmp / "mosquitto.conf"
        user = "user root\n" if hasattr(os, "geteuid") and os.geteuid() == 0 else ""
        conf.write_text(f"{user}listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\n")
        proc = subprocess.Popen([mosquitto, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                return f"mqtt://127.0.0.1:{port}", proc
            except OSError:
                time.sleep(0.05)
        proc.kill()
        raise EmoEdgeError("mosquitto did not start for the e2e bench")
    from edge.demo import EmbeddedBroker

    return EmbeddedBroker(port=port).start().url, None


def measure_e2e(
    duration: float = 20.0, video: str | None = None, models: str | None = None, broker_url: str | None = None,
    faces: bool = True, warmup: float = 2.0, face_model: str = "face",
) -> dict[str, Any]:
    """Run the bridge for ``duration`` seconds and return latency percentiles per source (see module doc)."""
    from edge.config import DeviceConfig
    from edge.paths import models_dir
    from edge.pipeline import Pipeline
    from edge.publish import Publisher

    root = models_dir(models)
    wanted = {"eeg": "eeg", "speech": "speech"} | ({face_model: face_model} if faces else {})
    missing = [m for m in wanted if not (root / m / "card.toml").exists()]
    if missing:
        raise EmoEdgeError(f"the e2e bench runs the shipped models; missing in {root}: {', '.join(missing)}")
    tmp = Path(tempfile.mkdtemp(prefix="emoedge-e2e-"))
    broker_proc = None
    if broker_url is None:
        broker_url, broker_proc = _start_broker(tmp)
    from urllib.parse import urlsplit

    parts = urlsplit(broker_url)
    protocol = "5" if broker_proc is not None else "3.1.1"  # 3.1.1 works with every broker, amqtt included
    sources = [
        {"name": "eeg", "kind": "replay", "path": "synthetic", "model": "eeg", "window_s": 2.0, "hop_s": 0.25},
        {"name": "mic", "kind": "replay", "path": "speech_demo.wav", "model": "speech", "hop_s": 0.25},
    ]
    if faces:
        sources.append({"name": "camera", "kind": "camera", "model": face_model, "device": "bench", "detect_every": 5})
    config = DeviceConfig.model_validate({
        "device_id": "e2e",
        "mqtt": {"url": broker_url, "protocol": protocol, "outbox": {"path": str(tmp / "outbox.sqlite")},
                 "stats_interval_s": 3600},
        "backend": {"threads": 1},
        "models": {m: {"path": str(root / m)} for m in wanted},
        "sources": sources,
    })
    video_path, video_what = video_file(video, tmp) if faces else (None, "none")
    feeds: dict[str, Source] = {
        "eeg": PacedSource("eeg", "eeg", eeg_blocks(), EEG_RATE, EEG_BLOCK / EEG_RATE, channels=_eeg_channel_names()),
        "mic": PacedSource("mic", "audio", audio_blocks(), AUDIO_RATE, AUDIO_BLOCK_S),
    }
    if faces:
        from firmware_bridge.sources.replay import ReplaySource

        assert video_path is not None

        feeds["camera"] = ReplaySource("camera", video_path, realtime=True, loop=True, max_queue=2)
    out = tmp / "received.txt"
    sub = subprocess.Popen(
        [sys.executable, "-c", _SUBSCRIBER, parts.hostname or "127.0.0.1", str(parts.port or 1883), "emoedge/e2e/+/estimate", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    publisher = None
    pipeline = None
    try:
        assert sub.stdout is not None
        if sub.stdout.readline().strip() != "ready":
            raise EmoEdgeError(f"the bench subscriber did not start: {sub.stderr.read() if sub.stderr else ''}")
        publisher = Publisher(config.mqtt, config.device_id, [s["name"] for s in sources]).start()
        pipeline = Pipeline(config, publisher, sources=feeds).start()
        from edge.trust import CheckedRunner

        time.sleep(warmup)
        checks_s = wait_for_device_checks(pipeline)
        precisions = {n: r.runner.status() if isinstance(r.runner, CheckedRunner) else None for n, r in pipeline.runs.items()}
        t_begin = time.time()
        before = {n: (r.received, r.estimates, r.slot.skipped if r.slot else 0, r.faces) for n, r in pipeline.runs.items()}
        time.sleep(duration)
        t_end = time.time()
        after = {n: (r.received, r.estimates, r.slot.skipped if r.slot else 0, r.faces) for n, r in pipeline.runs.items()}
    finally:
        if pipeline is not None:
            pipeline.stop()
        if publisher is not None:
            publisher.flush(5)
            publisher.stop()
        time.sleep(0.5)
        sub.terminate()
        sub.wait(5)
        if broker_proc is not None:
            broker_proc.terminate()
            broker_proc.wait(5)
    rows = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    result: dict[str, Any] = {
        "schema": E2E_SCHEMA, "duration_s": duration, "video": video_what,
        "broker": "mosquitto" if broker_proc else "amqtt (embedded)",
        "load_avg_1m": round(os.getloadavg()[0], 2), "cpus": usable_cores(), "cpus_total": os.cpu_count(),
        "environment": _environment(),
        "device_checks_s": round(checks_s, 1), "sources": {},
    }
    for name in feeds:
        mine = [r for r in rows if r["source"] == name and t_begin <= float(r["ts"]) <= t_end]
        lat = np.array([(float(r["received"]) - float(r["ts"])) * 1e3 for r in mine])
        seqs = [int(r["seq"]) for r in rows if r["source"] == name]
        rec0, est0, skip0, face0 = before[name]
        rec1, est1, skip1, face1 = after[name]
        entry: dict[str, Any] = {
            "estimates": int(lat.size), **percentiles(lat),
            "model": next(s["model"] for s in sources if s["name"] == name),
            "precision": (precisions[name] or {}).get("active"),
            "max_ms": round(float(lat.max()), 2) if lat.size else None,
            "lost": (max(seqs) + 1 - len(set(seqs))) if seqs else 0,
            "stages": stage_percentiles(mine),
        }
        if name == "camera":
            frames_in = rec1 - rec0
            entry["frames_in_fps"] = round(frames_in / duration, 2)
            entry["frames_skipped"] = skip1 - skip0
            entry["frames_processed_fps"] = round((frames_in - (skip1 - skip0)) / duration, 2)
            entry["faces_per_s"] = round((face1 - face0) / duration, 2)
        else:
            entry["samples_per_s"] = round((rec1 - rec0) / duration, 1)
        result["sources"][name] = entry
    shutil.rmtree(tmp, ignore_errors=True)
    return result


def wait_for_device_checks(pipeline: Any, timeout: float = DEVICE_CHECK_WAIT_S) -> float:
    """Wait (at most ``timeout``) until no source still checks a model against FP32 on live windows, so that the
    measured period runs what a device runs after its first minute, not the shadow check's extra inferences."""
    from edge.trust import CheckedRunner

    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if not any(isinstance(r.runner, CheckedRunner) and r.runner.status()["pending"] for r in pipeline.runs.values()):
            break
        time.sleep(0.2)
    return time.monotonic() - started


def _environment() -> dict[str, Any]:
    from edge.backends.probe import cpu_info
    from edge.bench.environment import collect

    env = collect(providers=False)
    return {"cpu_model": env.get("cpu_model"), "cpu_cores_usable": env.get("cpu_cores_usable"),
            "cpu": cpu_info().describe(), "python": env.get("python"), "libraries": env.get("libraries")}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--duration", type=float, default=20.0, help="seconds measured (after a 2 s warm-up)")
    parser.add_argument("--video", help="faces from this video file (default: frames made here)")
    parser.add_argument("--no-faces", action="store_true", help="EEG and audio only")
    parser.add_argument("--face-model", default="face", metavar="NAME",
                        help="the camera's model folder under --models (default: face; face_fast runs one pass a face)")
    parser.add_argument("--models", help="model folder (default: models/ or EMOEDGE_MODELS)")
    parser.add_argument("--mqtt", help="an existing broker (default: start Mosquitto, else the embedded broker)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--out", metavar="DIR", help="write e2e.json (and e2e.md, compare.md) into this folder")
    parser.add_argument("--compare", metavar="OLD/e2e.json", help="print each figure as a ratio to an earlier run")
    parser.add_argument("--tolerance", type=float, default=0.10,
                        help=f"growth counted as a regression, if also over {COMPARE_FLOOR_MS:g} ms (default: 0.10)")
    parser.add_argument("--fail-on-regression", action="store_true", help="exit 1 when a figure regressed (with --compare)")


def run_e2e(args: argparse.Namespace) -> int:
    """Entry point for ``emoedge bench e2e``."""
    baseline = load_e2e(args.compare) if args.compare else None  # a bad baseline fails before the 20 s run
    result = measure_e2e(duration=args.duration, video=args.video, models=args.models, broker_url=args.mqtt,
                         faces=not args.no_faces, face_model=args.face_model)
    text = format_result(result)
    print(json.dumps(result, indent=2) if args.json else text)
    out = Path(args.out) if args.out else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "e2e.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        (out / "e2e.md").write_text(text + "\n", encoding="utf-8")
    worse: list[str] = []
    if baseline is not None:
        table, worse = compare_e2e(result, baseline, args.tolerance)
        print(f"\nCompared with {args.compare}:\n\n{table}")
        if worse:
            print("\nRegressions:\n  " + "\n  ".join(worse))
        if out is not None:
            (out / "compare.md").write_text(table + "\n", encoding="utf-8")
    return 1 if worse and args.fail_on_regression else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="emoedge bench e2e --", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run_e2e(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
