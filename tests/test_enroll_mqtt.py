"""Live enrollment over MQTT against a real Mosquitto: the shipped speech model in a running pipeline, a person
selected, two labels captured from the live source, fit, estimates marked adapted, forget, profile gone."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest

from edge.config import DeviceConfig, MqttConfig, OutboxConfig
from edge.estimate import Estimate
from edge.paths import models_dir
from edge.pipeline import Pipeline
from edge.publish import Publisher
from edge.publish.schemas import validate
from firmware_bridge.sources.base import Sample, Source
from tests.mqtt_broker import Collector, Mosquitto

RATE = 16000.0
ROOT = Path(__file__).resolve().parent.parent


class SwitchSource(Source):
    """Live audio, 5x faster than real time, whose content the test switches: a tone, or noise."""

    def __init__(self, name: str) -> None:
        super().__init__(name, max_queue=64)
        self.kind = "audio"  # type: ignore[assignment]
        self.sound = "tone"
        self.rng = np.random.default_rng(0)
        self.n = 0

    def _block(self) -> np.ndarray:
        t = (np.arange(1600) + self.n * 1600) / RATE
        if self.sound == "tone":
            return (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)
        return (0.3 * self.rng.standard_normal(1600)).astype(np.float32)

    def _run(self) -> None:
        while not self.stopped:
            self._emit(Sample(self.name, "audio", self._block(), RATE, time.time(), seq=self.n))  # type: ignore[arg-type]
            self.n += 1
            time.sleep(0.02)  # 0.1 s of audio every 0.02 s


class Control:
    """A controller on the broker: sends enroll/set commands and waits for each reply."""

    def __init__(self, port: int, replies: Collector) -> None:
        self.replies = replies
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.sent = 0

    def send(self, **command) -> dict:
        self.sent += 1
        command["id"] = self.sent
        self.client.publish("emoedge/enr/enroll/set", json.dumps(command), qos=1).wait_for_publish(5)
        got = self.replies.wait_for("/enroll", self.sent, timeout=15)
        assert len(got) >= self.sent, f"no reply to {command}"
        reply = next(r for r in got if r.get("id") == self.sent)
        validate("enroll", reply)
        return reply

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def wait(cond, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.02)
    return bool(cond())


def test_live_enrollment_over_mqtt(mosquitto: Mosquitto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = tmp_path / "state"
    monkeypatch.setenv("EMOEDGE_STATE", str(state))
    cfg = DeviceConfig.model_validate({
        "device_id": "enr", "models": {"speech": {"path": str(models_dir() / "speech")}}, "backend": {"threads": 1},
        "sources": [{"name": "mic", "kind": "replay", "path": "x", "model": "speech", "hop_s": 0.5}],
    })
    replies = Collector(mosquitto.port, "emoedge/enr/enroll")
    estimates_seen = Collector(mosquitto.port, "emoedge/enr/mic/estimate")
    pub = Publisher(MqttConfig(url=mosquitto.url, outbox=OutboxConfig(path=tmp_path / "o.sqlite")), "enr",
                    sources=["mic"]).start()
    source = SwitchSource("mic")
    got: list[Estimate] = []
    pipe = Pipeline(cfg, publisher=pub, sources={"mic": source}, on_estimate=got.append)
    pipe.start()
    ctl = Control(mosquitto.port, replies)
    try:
        assert wait(lambda: len(got) >= 3)
        assert all(e.profile is None and not e.adapted for e in got)
        # bad input: each gets ok false and a message that names the problem; estimating goes on
        assert "no person is active" in ctl.send(action="fit", source="mic")["message"]
        bad = ctl.send(action="select", person="../alice", source="mic")
        assert not bad["ok"] and "not a safe file name" in bad["message"]
        assert ctl.send(action="select", person="alice", source="mic")["ok"]
        short = ctl.send(action="label", label="happy", seconds=1, source="mic")
        assert not short["ok"] and "too few" in short["message"]
        assert "is not one of" in ctl.send(action="label", label="joyful", seconds=3, source="mic")["message"]

        source.sound = "tone"
        time.sleep(1.0)  # the windows now hold only the tone
        assert ctl.send(action="label", label="happy", seconds=3, source="mic")["ok"]
        time.sleep(3.3)
        one_class = ctl.send(action="fit", source="mic")
        assert not one_class["ok"] and "at least 2 classes" in one_class["message"]
        source.sound = "noise"
        time.sleep(1.0)
        assert ctl.send(action="label", label="sad", seconds=3, source="mic")["ok"]
        time.sleep(3.3)
        fit = ctl.send(action="fit", source="mic")
        assert fit["ok"], fit
        counts = fit["heads"]["logits"]["counts"]
        assert counts["happy"] >= 5 and counts["sad"] >= 5 and sum(counts.values()) == counts["happy"] + counts["sad"]
        assert fit["adapted"] is True, fit["heads"]["logits"]["reason"]
        path = state / "profiles" / "speech" / "alice.json"
        assert path.is_file() and (path.stat().st_mode & 0o777) == 0o600
        stored = json.loads(path.read_text())  # statistics and head weights only, never a sample
        assert set(stored) == {"format", "person", "model", "model_sha256", "created", "updated", "normalisation", "heads"}
        assert set(stored["heads"]["logits"]) == {"adapted", "reason", "counts", "strength", "fit_seconds", "weight", "bias"}

        # estimates now come from alice's head: noise reads as sad, the tone as happy
        n = len(got)
        assert wait(lambda: len(got) >= n + 6)
        after = got[n:]
        assert all(e.profile == "alice" and e.adapted for e in after)
        # (the label itself may be 'unknown': noise is far from any speech the population OOD statistics know)
        top = [max(e.probs, key=lambda k: e.probs[k]) for e in after]
        assert sum(t == "sad" for t in top) >= len(after) - 2
        assert all(e.label in ("sad", "unknown") for e in after if top[after.index(e)] == "sad")
        on_broker = estimates_seen.wait_for("/estimate", 1)
        last = on_broker[-1]
        validate("estimate", last)
        assert wait(lambda: any(m.get("adapted") for m in estimates_seen.on("/estimate")))

        forget = ctl.send(action="forget", person="alice")
        assert forget["ok"] and forget["deleted"] == [str(path)]
        assert not path.exists()
        n = len(got)
        assert wait(lambda: len(got) >= n + 3)
        assert all(e.profile is None and not e.adapted for e in got[n + 1 :])

        # the same commands from a shell
        def shell(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "edge", "enroll", *args, "--mqtt", mosquitto.url,
                                   "--device", "enr", "--timeout", "20"], capture_output=True, text=True, timeout=60,
                                  cwd=ROOT)

        refused = shell("fit", "--source", "mic")
        assert refused.returncode == 1 and "no person is active" in refused.stdout
        selected = shell("select", "bob", "--json")
        assert selected.returncode == 0 and json.loads(selected.stdout)["person"] == "bob"
        n = len(got)
        assert wait(lambda: len(got) >= n + 3)
        assert got[-1].profile == "bob" and not got[-1].adapted  # active, no profile yet: population head
    finally:
        ctl.close()
        pipe.stop()
        pub.stop()
        replies.close()
        estimates_seen.close()
