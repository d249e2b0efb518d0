"""``emoedge run --demo``: the whole bridge on a fresh machine with nothing attached.

* an embedded MQTT broker on loopback (amqtt, MQTT 3.1.1 only; the ``demo`` extra);
* a simulated EEG board streaming the binary protocol on a pseudo-terminal, read back by the
  serial source exactly as a real board would be: a 14-channel Emotiv-like headset whose raw EEG
  goes to ``histn`` when that model is trained, else a 32-channel board for the band-power ``eeg``;
* a replayed speech recording that the project made itself (``edge/demo_media/``, see its README);
* faces only from a video file or a camera that the user names (``--video``).

No data set file is used or shipped: the data sets' terms forbid redistribution.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import tempfile
import threading
from pathlib import Path
from typing import Any

from edge.config import DeviceConfig
from edge.errors import EmoEdgeError

log = logging.getLogger(__name__)
DEMO_MEDIA = Path(__file__).resolve().parent / "demo_media"
DEMO_SPEECH = DEMO_MEDIA / "speech_demo.wav"
DEMO_DEVICE = "demo"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class EmbeddedBroker:
    """An amqtt broker on its own asyncio loop in a background thread (loopback only, anonymous)."""

    def __init__(self, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.host = host
        self.port = port or free_port(host)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._broker: Any = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> EmbeddedBroker:
        try:
            from amqtt.broker import Broker
        except ImportError:
            raise EmoEdgeError("the demo's embedded broker needs amqtt: pip install 'emoedge[demo]'") from None
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}", "max_connections": 50}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)

            async def begin() -> None:
                self._broker = Broker(config, loop=loop)
                await self._broker.start()

            try:
                loop.run_until_complete(begin())
            except BaseException as exc:  # reported to the caller of start()
                self._error = exc
                self._ready.set()
                return
            self._ready.set()
            loop.run_forever()
            loop.close()

        for name in ("amqtt", "transitions"):
            logging.getLogger(name).setLevel(logging.WARNING)
        self._thread = threading.Thread(target=serve, name="demo-broker", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout) or self._error is not None:
            raise EmoEdgeError(f"the embedded broker did not start on {self.host}:{self.port}: {self._error}")
        return self

    def stop(self) -> None:
        loop = self._loop
        if loop is None or self._broker is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._broker.shutdown(), loop).result(5)
        except Exception as exc:  # a broker that fails to shut down cleanly is still stopped below
            log.debug("embedded broker shutdown: %s", exc)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(5)


def raw_eeg_model(root: Path) -> bool:
    """Whether the models folder has a trained raw-EEG model (histn): then the demo's EEG is a 14-channel
    Emotiv-like headset read by it; else a 32-channel board read by the band-power model (eeg)."""
    from edge.card import load_card
    from edge.errors import EmoEdgeError as _Error

    folder = root / "histn"
    if not (folder / "model.onnx").exists():
        return False
    try:
        return load_card(folder / "card.toml").status == "trained"
    except _Error:
        return False


def demo_config(
    broker_url: str, eeg_port: str | None, video: str | None, models: Path | None = None,
    outbox: Path | None = None, scene_video: str | None = None,
) -> DeviceConfig:
    """The device config of the demo: EEG on the simulator's pty, the shipped speech clip, faces when asked.

    A source whose model is not in the models folder is left out with a warning, so that the demo
    shows what this install has.
    """
    from edge.paths import models_dir

    root = models_dir(models)
    sources: list[dict[str, Any]] = [
        {"name": "mic", "kind": "replay", "model": "speech", "path": str(DEMO_SPEECH), "realtime": True, "loop": True,
         "hop_s": 0.5},
    ]
    if eeg_port is not None and raw_eeg_model(root):  # the raw path: a 14-channel headset into histn
        sources.append({"name": "eeg", "kind": "serial", "model": "histn", "port": eeg_port, "baudrate": 921600,
                        "hop_s": 0.5})
    elif eeg_port is not None:
        sources.append({"name": "eeg", "kind": "serial", "model": "eeg", "port": eeg_port, "baudrate": 921600,
                        "window_s": 4.0, "hop_s": 0.5})
    if video is not None:
        if video.isdigit():
            sources.append({"name": "camera", "kind": "camera", "model": "face", "device": int(video)})
        else:
            sources.append({"name": "camera", "kind": "replay", "model": "face", "path": video, "realtime": True, "loop": True})
    if scene_video is not None:  # scenes the project draws (edge.scene.demo), one sampled every 2 s
        sources.append({"name": "scene", "kind": "replay", "model": "scene", "path": scene_video, "realtime": True,
                        "loop": True, "hop_s": 2.0})
    have = [s for s in sources if (root / s["model"] / "card.toml").exists()]
    for s in sources:
        if s not in have:
            log.warning("demo: no model '%s' in %s; the demo runs without the %s source", s["model"], root, s["name"])
    if not have:
        raise EmoEdgeError(f"demo: none of the demo's models (speech, eeg, face) is in {root}")
    return DeviceConfig.model_validate({
        "device_id": DEMO_DEVICE,
        "mqtt": {"url": broker_url, "protocol": "3.1.1", "stats_interval_s": 2.0, "state_interval_s": 2.0,
                 "outbox": {"path": str(outbox)} if outbox else {}},
        "backend": {"threads": 1},
        "models": {m: {"path": str(root / m)} for m in {s["model"] for s in have}},
        "sources": have,
    })


class Demo:
    """Starts what the demo needs (broker, EEG simulator) and builds its config; a context manager."""

    def __init__(self, video: str | None = None, mqtt_url: str | None = None, config_path: str | None = None) -> None:
        self.video = video
        self.mqtt_url = mqtt_url
        self.config_path = config_path
        self.broker: EmbeddedBroker | None = None
        self.simulator: Any = None
        self._pty: Any = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.sources: dict[str, Any] = {}
        self.config: DeviceConfig

    @property
    def broker_url(self) -> str:
        return self.config.mqtt.url

    def __enter__(self) -> Demo:
        if self.mqtt_url is not None:  # a bad --mqtt is one line naming the option (never its password), not a traceback
            from edge.config import mqtt_with

            mqtt_with(None, url=self.mqtt_url)
        try:
            if self.mqtt_url is None:
                self.broker = EmbeddedBroker().start()
            url = self.mqtt_url or (self.broker.url if self.broker else "")
            eeg_port = self._start_eeg_simulator()
            outbox = None
            self._tmp = tempfile.TemporaryDirectory(prefix="emoedge-demo-")
            if self.broker is not None:  # the embedded broker dies with the demo: so may its outbox
                outbox = Path(self._tmp.name) / "outbox.sqlite"
            from edge.scene.demo import write_demo_video

            scenes = write_demo_video(str(Path(self._tmp.name) / "scenes.avi"))
            self.config = demo_config(url, eeg_port, self.video, outbox=outbox, scene_video=scenes)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _start_eeg_simulator(self) -> str | None:
        """A simulated EEG board on a pseudo-terminal; returns the port the serial source opens."""
        try:
            from firmware_bridge.simulated_boards import EegBoardSimulator, EmotivBoardSimulator
            from firmware_bridge.simulator import open_pty
        except ImportError:
            log.warning("no EEG board simulator in this install (firmware_bridge.simulator); the demo runs without EEG")
            return None
        from edge.paths import models_dir

        self._pty = open_pty()
        board = EmotivBoardSimulator if raw_eeg_model(models_dir()) else EegBoardSimulator
        self.simulator = board(self._pty.master_fd).start()
        return str(self._pty.slave_path)

    def __exit__(self, *exc: object) -> None:
        if self.simulator is not None:
            self.simulator.stop()
            self.simulator = None
        if self._pty is not None:
            self._pty.close()
            self._pty = None
        if self.broker is not None:
            self.broker.stop()
            self.broker = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
