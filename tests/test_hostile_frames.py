"""One bad frame from a board must not stop the bridge (issue 17, finding 2).

A board on a pseudo-terminal sends good-CRC frames that make no sense: sample rate 0 or 3e38, NaN
(first and mid-stream), an infinite scale, a channel count that changes for one frame, and a real
layout change. The bridge runs against a real Mosquitto, keeps publishing, ends on time, and counts
each one; a hypothesis fuzz sends arbitrary frame fields through the real decoder and pipeline.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.config import DeviceConfig
from edge.estimate import Estimate
from edge.pipeline import Pipeline
from edge.verbs.listen import listen
from edge.verbs.run import serve
from firmware_bridge import protocol as P
from firmware_bridge.simulator import PtyPair, open_pty
from firmware_bridge.sources.serial import SerialBoardSource
from tests.mqtt_broker import Collector, Mosquitto
from tests.pipeline_helpers import make_model

CHANNELS, RATE, BLOCK = 4, 64.0, 16  # windows of 0.5 s: 4 x 32 values, the model's input


def write_all(pty: PtyPair, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(pty.master_fd, view):]
        except BlockingIOError:
            time.sleep(0.001)


def good(enc: P.FrameEncoder, t: int, channels: int = CHANNELS, rate: float = RATE) -> bytes:
    rng = np.random.default_rng(t)
    return enc.eeg(t * 1000, rng.integers(-2000, 2000, (channels, BLOCK)), rate, 0.5)


def raw_eeg(enc: P.FrameEncoder, t: int, rate: float, scale: float, values: np.ndarray, fmt: int = P.FMT_FLOAT32) -> bytes:
    """An EEG frame with any head fields (the encoder's own checks are the board's, not ours)."""
    values = np.asarray(values)
    raw = values.T.astype("<f4").tobytes() if fmt == P.FMT_FLOAT32 else values.T.astype("<i2").tobytes()
    return enc.frame(P.FrameType.EEG, P.EEG_HEAD.pack(fmt, values.shape[0], values.shape[1], rate, scale) + raw, t * 1000)


def eeg_config(tmp: Path, port: str, broker: Mosquitto | None = None) -> DeviceConfig:
    models = tmp / "models"
    make_model(models, "eeg", CHANNELS * 32, ["calm", "happy", "sad"], "eeg", window_s=0.5)
    mqtt = {"url": broker.url, "outbox": {"path": str(tmp / "o.sqlite")}, "stats_interval_s": 0.5} if broker else {}
    return DeviceConfig.model_validate({
        "device_id": "frames", "mqtt": mqtt, "models": {"eeg": {"path": str(models / "eeg")}}, "backend": {"threads": 1},
        "sources": [{"name": "eeg", "kind": "serial", "model": "eeg", "port": port, "window_s": 0.5, "hop_s": 0.25}],
    })


def test_bad_frames_do_not_stop_the_bridge(mosquitto: Mosquitto, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    pty = open_pty()
    cfg = eeg_config(tmp_path, pty.slave_path, mosquitto)
    sub = Collector(mosquitto.port, "emoedge/frames/#")
    enc = P.FrameEncoder()
    phases: dict[str, float] = {}

    def board() -> None:
        nan = np.full((CHANNELS, BLOCK), 1.0)
        nan[1, 3] = np.nan
        script = [("absurd rate first", [raw_eeg(enc, 0, 3e38, 1.0, np.ones((CHANNELS, BLOCK)))]),
                  ("nan first", [raw_eeg(enc, 0, RATE, 1.0, nan)])]
        script += [("good", [good(enc, i) for i in range(20)])]
        script += [("rate zero", [raw_eeg(enc, 0, 0.0, 0.5, np.ones((CHANNELS, BLOCK)), P.FMT_INT16)]),
                   ("nan mid-stream", [raw_eeg(enc, 0, RATE, 1.0, nan)]),
                   ("infinite scale", [raw_eeg(enc, 0, RATE, float("inf"), np.ones((CHANNELS, BLOCK)), P.FMT_INT16)]),
                   ("one frame of 5 channels", [good(enc, 0, channels=5)]),
                   ("good again", [good(enc, i) for i in range(20)]),
                   ("persistent 5 channels", [good(enc, i, channels=5) for i in range(12)])]
        for phase, frames in script:
            phases[phase] = time.time()
            for frame in frames:
                write_all(pty, frame)
                time.sleep(0.02)
        enc.first = True  # the board restarts with its old firmware
        phases["restarted"] = time.time()
        for i in range(60):
            write_all(pty, good(enc, i))
            time.sleep(0.02)

    threading.Timer(0.5, board).start()
    start = time.monotonic()
    with caplog.at_level("WARNING"):
        assert serve(cfg, duration=4.5, plain=True, extra_sources={"eeg": SerialBoardSource("eeg", port=pty.slave_path)}) == 0
    assert time.monotonic() - start < 12
    time.sleep(0.3)
    sub.close()
    pty.close()
    with sub.lock:
        times = [t for topic, _, _, t in sub.messages if topic.endswith("/eeg/estimate")]
    assert sum(phases["good"] < t < phases["rate zero"] + 0.1 for t in times) >= 5
    assert sum(phases["good again"] < t < phases["persistent 5 channels"] + 0.1 for t in times) >= 5
    assert sum(t > phases["restarted"] for t in times) >= 10, "no estimates after the board restarted"
    stats = sub.on("/stats")[-1]["sources"]["eeg"]
    assert stats["link"]["malformed"] == 5  # absurd rate, 2 x NaN, rate zero, infinite scale: refused by the decoder
    assert stats["malformed"] >= 8  # the lone 5-channel frame and the new layout before it was believed
    assert stats["layout_changes"] == 2  # to 5 channels (persistent), back to 4 (FIRST)
    assert stats["errors"] >= 1 and stats["failing"] is False  # 5-channel windows did not fit the model
    assert any("layout changed" in r.getMessage() for r in caplog.records)


def test_listen_counts_senseless_frames_as_malformed() -> None:
    pty = open_pty()
    enc = P.FrameEncoder()
    frames = [good(enc, 0), raw_eeg(enc, 1, 0.0, 1.0, np.ones((2, 4))), raw_eeg(enc, 2, float("nan"), 1.0, np.ones((2, 4))),
              raw_eeg(enc, 3, 3e38, 1.0, np.ones((2, 4))), enc.audio(4000, np.zeros(8), 0), good(enc, 5)]
    threading.Timer(0.3, lambda: [write_all(pty, f) for f in frames]).start()
    stats = listen(pty.slave_path, 1.0)
    pty.close()
    assert stats["malformed"] == 4 and stats["frames"] == 2
    assert stats["nominal_rate_hz"] == RATE


frame_fields = st.fixed_dictionaries({
    "fmt": st.sampled_from([P.FMT_INT16, P.FMT_FLOAT32]),
    "channels": st.integers(1, 6),
    "samples": st.integers(0, 24),
    "rate": st.one_of(st.floats(width=32), st.sampled_from([0.0, RATE, 1e-3, 3e38, float("nan")])),
    "scale": st.one_of(st.floats(width=32), st.just(0.5)),
    "first": st.booleans(),
    "value": st.floats(width=32),
})


def test_fuzzed_frame_fields_through_the_decoder_and_pipeline(tmp_path: Path) -> None:
    pty = open_pty()
    cfg = eeg_config(tmp_path, pty.slave_path)
    got: list[Estimate] = []
    pipe = Pipeline(cfg, sources={"eeg": SerialBoardSource("eeg", port=pty.slave_path)}, on_estimate=got.append).start()
    enc = P.FrameEncoder()
    try:
        time.sleep(0.3)

        @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(frame_fields)
        def send(f: dict) -> None:
            rng = np.random.default_rng(f["channels"] * 100 + f["samples"])
            values = rng.integers(-3000, 3000, (f["channels"], f["samples"])).astype(np.float64)
            if f["samples"]:
                values[0, 0] = f["value"] if f["fmt"] == P.FMT_FLOAT32 else 7
            enc.first = f["first"]
            write_all(pty, raw_eeg(enc, 1, f["rate"], f["scale"], values, f["fmt"]))

        send()
        time.sleep(0.5)
        assert not pipe.stopping and not pipe.errors
        before = len(got)
        enc.first = True  # the board restarts cleanly: estimates must follow
        for i in range(40):
            write_all(pty, good(enc, i))
            time.sleep(0.01)
        deadline = time.monotonic() + 5
        while len(got) < before + 10 and time.monotonic() < deadline:
            time.sleep(0.05)
        stats = pipe.stats()["sources"]["eeg"]
    finally:
        pipe.stop()
        pty.close()
    assert len(got) >= before + 10, stats
    assert not pipe.errors and stats.get("failed") is None
    assert all(np.isfinite(list(e.probs.values())).all() for e in got)
