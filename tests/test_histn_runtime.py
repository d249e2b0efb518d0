"""Raw EEG at run time: the headset front end (continuous band-pass behind overlapping windows, the
wearer's first minute, 256 Hz headsets, channel names, flat and saturated channels), and a simulated
14-channel Emotiv headset on a pty driving `emoedge run` to MQTT estimates from histn (real Mosquitto)."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edge.errors import InputError
from edge.features.eeg_raw import EMOTIV_ELECTRODES, BandPass, RawEEGFeatures, WearerNormaliser
from tests.mqtt_broker import Collector, Mosquitto

ROOT = Path(__file__).resolve().parent.parent


def headset_stream(seconds: float, rate: float = 128.0, seed: int = 0) -> np.ndarray:
    """[14, time] microvolts like an EPOC: ~4,200 uV DC, a drift, alpha and noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    x = 4200 + 30 * np.sin(2 * np.pi * 0.05 * t) + 10 * np.sin(2 * np.pi * 10 * t + rng.uniform(0, 6, (14, 1)))
    return x + rng.normal(0, 3, (14, t.size))


def windows_of(stream: np.ndarray, width: int, hop: int) -> list[np.ndarray]:
    return [stream[:, s : s + width] for s in range(0, stream.shape[1] - width + 1, hop)]


def test_overlapping_windows_see_one_continuous_stream() -> None:
    stream = headset_stream(20)
    front = RawEEGFeatures(hop_s=0.25, norm_s=10.0)
    outs = [front(w, 128.0, list(EMOTIV_ELECTRODES)) for w in windows_of(stream, 128, 32)]
    # the same stream filtered in one go, normalised by its first 10 s, last window
    band = BandPass(14, 128.0)
    filtered = band(stream[:, : 128 + 32 * (len(outs) - 1)])
    norm = WearerNormaliser(14, 128.0, seconds=10.0)
    norm.update(filtered)
    np.testing.assert_allclose(outs[-1], norm.transform(filtered[:, -128:]), atol=1e-4)
    assert front.status()["wearer_ready"] and front.discontinuities == 0
    assert np.abs(outs[-1]).max() < 6.0  # no 4,200 uV offset and no start-up transient left
    early = RawEEGFeatures(hop_s=0.25, norm_s=10.0)
    first = early(stream[:, :128], 128.0, None)
    assert not early.status()["wearer_ready"] and early.status()["wearer_progress"] == pytest.approx(0.1)
    assert (first == 0).all()  # under 2 s of the wearer: the average wearer, not a guess from 1 s


def test_a_256_hz_headset_is_decimated_and_said_once(caplog: pytest.LogCaptureFixture) -> None:
    stream = headset_stream(6, rate=256.0)
    front = RawEEGFeatures(hop_s=0.5, norm_s=3.0)
    with caplog.at_level(logging.WARNING):
        outs = [front(w, 256.0, list(EMOTIV_ELECTRODES)) for w in windows_of(stream, 256, 128)]
    assert outs[-1].shape == (14, 128) and front.stats()["resampled_from_hz"] == 256.0
    assert sum("256 Hz" in r.getMessage() for r in caplog.records) == 1
    # 10 Hz alpha survives at the model's 128 Hz: its spectrum peaks at 10 Hz
    spectrum = np.abs(np.fft.rfft(outs[-1], axis=1)).mean(0)
    assert int(np.argmax(spectrum)) == 10
    with pytest.raises(InputError, match="200 Hz; this model needs 128 Hz or an integer multiple"):
        RawEEGFeatures()(headset_stream(1, rate=200.0), 200.0, list(EMOTIV_ELECTRODES))


def test_channel_names_pick_and_order_and_bad_ones_are_named() -> None:
    stream = headset_stream(4)
    names = list(EMOTIV_ELECTRODES)
    straight = RawEEGFeatures(hop_s=1.0, norm_s=2.0)
    shuffled = RawEEGFeatures(hop_s=1.0, norm_s=2.0)
    order = np.random.default_rng(1).permutation(14)
    for w in windows_of(stream, 128, 128):
        a = straight(w, 128.0, names)
        b = shuffled(w[order], 128.0, [names[i] for i in order])
    np.testing.assert_array_equal(a, b)
    with pytest.raises(InputError, match="the model needs AF3, the board has Fp1, F7"):
        RawEEGFeatures()(stream[:, :128], 128.0, ["Fp1", *names[1:]])
    with pytest.raises(InputError, match="names no channels and sends 13"):
        RawEEGFeatures()(stream[:13, :128], 128.0, None)


def test_flat_and_saturated_channels_are_flagged_zeroed_and_lower_confidence() -> None:
    stream = headset_stream(4)
    stream[0] = 4200.0  # AF3 off the head
    stream[4] = 4200 + np.clip(np.random.default_rng(2).normal(0, 10, stream.shape[1]), -5, 5)  # T7 at its rails
    front = RawEEGFeatures(hop_s=1.0, norm_s=2.0)
    for w in windows_of(stream, 128, 128):
        out = front(w, 128.0, list(EMOTIV_ELECTRODES))
    assert front.status()["flat"] == ["AF3"] and front.status()["saturated"] == ["T7"]
    assert (out[0] == 0).all() and (out[4] == 0).all() and np.abs(out[1]).max() > 0
    assert front.confidence_factor() == pytest.approx(12 / 14)
    assert front.stats()["flagged_windows"] == 4


def shipped_histn(tmp_path: Path, norm_s: float) -> Path:
    """models/histn copied with a shorter wearer minute (so a test sees it become ready)."""
    src = ROOT / "models" / "histn"
    if not (src / "model.onnx").exists():
        pytest.skip("models/histn has no trained model.onnx in this checkout")
    from edge.card import load_card, save_card

    dst = tmp_path / "histn"
    dst.mkdir()
    shutil.copy(src / "model.onnx", dst / "model.onnx")
    card = load_card(src / "card.toml")
    card.features.params["norm_s"] = norm_s
    save_card(card, dst / "card.toml")
    return dst


def test_simulated_headset_on_a_pty_drives_emoedge_run_to_mqtt(mosquitto: Mosquitto, tmp_path: Path) -> None:
    from edge.publish.schemas import kind_of_topic, validate
    from firmware_bridge.simulated_boards import EmotivBoardSimulator
    from firmware_bridge.simulator import open_pty

    model = shipped_histn(tmp_path, norm_s=3.0)
    pty = open_pty()
    sim = EmotivBoardSimulator(pty.master_fd, rate=256.0, saturated=["T7"]).start()
    config = tmp_path / "device.toml"
    config.write_text(
        f'device_id = "headset"\n[mqtt]\nurl = "{mosquitto.url}"\nstats_interval_s = 1.0\n'
        f'[mqtt.outbox]\npath = "{tmp_path / "o.sqlite"}"\n[backend]\nthreads = 1\n'
        f'[models.histn]\npath = "{model}"\n'
        f'[[sources]]\nname = "eeg"\nkind = "serial"\nmodel = "histn"\nport = "{pty.slave_path}"\nbaudrate = 921600\nhop_s = 0.5\n'
    )
    sub = Collector(mosquitto.port, "emoedge/headset/#")
    try:
        result = subprocess.run([sys.executable, "-m", "edge", "run", "--config", str(config), "--duration", "7"],
                                cwd=ROOT, capture_output=True, text=True, timeout=60)
    finally:
        sim.stop()
        pty.close()
    time.sleep(0.3)
    sub.close()
    assert result.returncode == 0, result.stderr
    estimates = sub.on("/eeg/estimate")
    assert len(estimates) >= 8, result.stderr
    for body in estimates:
        assert body["model"]["name"] == "histn"
        assert set(body["probs"]) == {f"{t}:{lv}" for t in ("valence", "arousal") for lv in ("1-2", "3-4", "5", "6-7", "8-9")}
        assert sum(v for k, v in body["probs"].items() if k.startswith("valence:")) == pytest.approx(1, abs=1e-3)
        views = body["views"]
        v_high = sum(v for k, v in body["probs"].items() if k in ("valence:5", "valence:6-7", "valence:8-9"))
        assert views["valence_high"] == pytest.approx(v_high, abs=2e-3)
        assert 0 <= views["anxious"] <= 1 and views["anxious_state"] == (views["anxious"] >= 0.5)
        assert views["saturated"] == ["T7"]
    ready = [b["views"]["wearer_ready"] for b in estimates]
    assert not ready[0] and ready[-1] and ready == sorted(ready)  # published: not ready, then ready for good
    assert estimates[0]["confidence"] < 0.5  # scaled down while the wearer's first seconds come in
    signal = sub.on("/stats")[-1]["sources"]["eeg"]["signal"]
    assert signal["resampled_from_hz"] == 256.0 and signal["saturated"] == ["T7"]
    assert result.stderr.count("256 Hz") == 1
    for topic, body, _, _ in sub.messages:
        validate(kind_of_topic(topic) or "?", body)
