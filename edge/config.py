"""The one config file of a device (TOML), validated by pydantic.

Every error names the key path (``sources[1].baudrate``) and, where it can be found, the line.
Secrets never live in the file: the file names the environment variable that holds them, and the
resolved values are ``SecretStr`` so that they never appear in a repr or a log line.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from edge.errors import ConfigError, redact_url
from edge.kinds import Backend, Precision

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 on JetPack 6
    import tomli as tomllib

SECRET_KEYS = {"password", "key_password", "passphrase"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=True)  # enum fields hold their values


class TlsConfig(_Strict):
    """TLS to the broker: a CA file, and optionally a client certificate and key."""

    ca_file: Path
    cert_file: Path | None = None
    key_file: Path | None = None
    key_password_env: str | None = Field(default=None, description="environment variable holding the key passphrase")
    insecure: bool = Field(default=False, description="skip hostname verification (testing only)")

    @model_validator(mode="after")
    def _cert_and_key_together(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together: give both or neither")
        return self

    def key_password(self) -> SecretStr | None:
        return _secret_from_env(self.key_password_env)


class QosConfig(_Strict):
    status: Literal[0, 1, 2] = 1
    estimate: Literal[0, 1, 2] = 1
    state: Literal[0, 1, 2] = 1
    stats: Literal[0, 1, 2] = 0


class OutboxConfig(_Strict):
    """On-disk queue that keeps messages while the broker is away."""

    path: Path | None = Field(default=None, description="SQLite file; default under the cache folder")
    max_messages: int = Field(default=100_000, ge=10, le=10_000_000, description="when full, the oldest are evicted (counted in stats)")
    synchronous: Literal["normal", "full"] = Field(default="normal", description="normal: survives a crash of the process; full: also a power cut (one fsync a message)"
    )


class MqttConfig(_Strict):
    url: str = Field(default="mqtt://127.0.0.1:1883", description="mqtt://host:port or mqtts://host:port")
    topic_root: str = Field(default="emoedge", description="topics are <topic_root>/<device_id>/...")
    protocol: Literal["3.1.1", "5"] = "5"
    client_id: str | None = None
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    username: str | None = None
    password_env: str | None = Field(default="EMOEDGE_MQTT_PASSWORD", description="environment variable with the password")
    tls: TlsConfig | None = None
    qos: QosConfig = QosConfig()
    outbox: OutboxConfig = OutboxConfig()
    stats_interval_s: float = Field(default=10.0, gt=0, le=3600)
    ack_timeout_s: float = Field(default=30.0, ge=1, le=3600,
        description="connected, messages in flight and no PUBACK for this long: the connection is stalled and is re-made",
    )
    state_interval_s: float = Field(default=5.0, gt=0, le=3600, description="retained state is re-sent at least this often")

    @model_validator(mode="before")
    @classmethod
    def _no_inline_secrets(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in SECRET_KEYS & set(data):
                raise ValueError(
                    f"'{key}' must not be written in the config file; put it in an environment variable "
                    f"and name that variable with '{key}_env'"
                )
        return data

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        shown = redact_url(repr(value))[:120]
        try:
            parts = urlsplit(value)
        except ValueError as exc:  # e.g. an unbalanced [ in the host
            raise ValueError(f"not a URL ({exc}): {shown}") from None
        if parts.password is not None:
            raise ValueError("the URL must not carry a password (it would show in logs and process lists); "
                             "use username and password_env")
        if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl") or not parts.hostname:
            raise ValueError(f"expected mqtt://host[:port] or mqtts://host[:port], got {shown}")
        try:
            port = parts.port
        except ValueError:
            raise ValueError(f"bad port in {shown} (expected 1-65535)") from None
        if port is not None and not 0 < port < 65536:
            raise ValueError(f"port out of range in {shown} (expected 1-65535)")
        return value

    @field_validator("topic_root")
    @classmethod
    def _topic_root(cls, value: str) -> str:
        if not value or any(c in value for c in "#+\0") or value.startswith("/") or value.endswith("/"):
            raise ValueError("topic_root must be non-empty, without wildcards (#, +) and without a leading or trailing /")
        return value

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or (8883 if parts.scheme in ("mqtts", "ssl") else 1883)

    @property
    def use_tls(self) -> bool:
        return self.tls is not None or urlsplit(self.url).scheme in ("mqtts", "ssl")

    def password(self) -> SecretStr | None:
        return _secret_from_env(self.password_env)


def mqtt_with(base: MqttConfig | None, option: str = "--mqtt", **updates: Any) -> MqttConfig:
    """``base`` (default: the defaults) with ``updates`` (url, protocol, topic_root) validated; a ConfigError
    naming ``option`` and never repeating a password, instead of pydantic's traceback."""
    data = (base or MqttConfig()).model_dump()
    data.update({k: v for k, v in updates.items() if v is not None})
    try:
        return MqttConfig.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or "mqtt"
        raise ConfigError(f"{option if key == 'url' else 'mqtt.' + key}: "
                          f"{redact_url(err['msg'].removeprefix('Value error, '))}") from None


class ModelSettings(_Strict):
    """How one model of the zoo runs on this device."""

    enabled: bool = True
    path: Path | None = Field(default=None, description="model folder; default models/<name>")
    backend: Backend | None = Field(default=None, description="default: [backend].default")
    precision: Precision = Field(default=Precision.AUTO, description="auto: the fastest precision that passed the device check here (see edge/trust.py)"
    )
    max_batch: int = Field(default=8, ge=1, le=256)


class _SourceBase(_Strict):
    """What every ``[[sources]]`` entry has; each kind's class adds its own fields (built by
    ``firmware_bridge.sources.make_source``)."""

    name: str = Field(pattern=r"^[a-z0-9_\-]+$", description="used in MQTT topics: <name>/estimate")
    model: str = Field(description="a key of [models]")
    enabled: bool = True
    window_s: float | None = Field(default=None, gt=0, le=60, description="default: the model card's window")
    hop_s: float | None = Field(default=None, gt=0, le=60, description="default: half the window")


class CameraConfig(_SourceBase):
    kind: Literal["camera"]
    device: int | str = Field(default=0, description="index, video file, RTSP URL or GStreamer pipeline")
    width: int = Field(default=640, ge=16, le=7680)
    height: int = Field(default=480, ge=16, le=4320)
    fps: float = Field(default=30, gt=0, le=240)
    detect_every: int = Field(default=5, ge=1, le=300, description="run the face detector every N frames; track between")


class MicrophoneConfig(_SourceBase):
    kind: Literal["microphone"]
    device: str | int | None = Field(default=None, description="ALSA device name or index; default device when absent")
    sample_rate: int = Field(default=16000, ge=8000, le=192000)
    block_s: float | None = Field(default=None, gt=0, le=2, description="seconds a callback delivers; default: 50 ms, "
                                  "shortened so that hop_s is a whole number of blocks (windows end where blocks end)")


class SerialConfig(_SourceBase):
    kind: Literal["serial"]
    port: str | None = Field(default=None, description="device path, e.g. /dev/ttyACM0")
    usb: str | None = Field(default=None, description="VID:PID[:SERIAL] in hex, stable across re-plugging")
    baudrate: int = Field(default=921600, ge=1200, le=12_000_000)
    text_mode: bool = Field(default=False, description="plain-text lines of numbers instead of binary frames")

    @model_validator(mode="after")
    def _one_address(self) -> SerialConfig:
        if (self.port is None) == (self.usb is None):
            raise ValueError("give exactly one of 'port' or 'usb'")
        if self.usb is not None and not re.fullmatch(r"[0-9a-fA-F]{4}:[0-9a-fA-F]{4}(:\S+)?", self.usb):
            raise ValueError(f"usb must be VID:PID[:SERIAL] in hex, got {self.usb!r}")
        return self


class ReplayConfig(_SourceBase):
    kind: Literal["replay"]
    path: Path = Field(description="WAV, video or recorded EEG file")
    realtime: bool = True
    loop: bool = False


SourceConfig = Annotated[CameraConfig | MicrophoneConfig | SerialConfig | ReplayConfig, Field(discriminator="kind")]


class BackendConfig(_Strict):
    default: Backend = Backend.AUTO
    threads: int = Field(default=0, ge=0, le=256, description="ONNX Runtime intra-op threads; 0 = one per core")
    engine_cache: Path | None = Field(default=None, description="TensorRT engine cache; default EMOEDGE_CACHE")


class FusionConfig(_Strict):
    confidence_floor: float = Field(default=0.35, ge=0, le=1, description="below this the fused state is 'unknown'")
    stale_after_s: float = Field(default=3.0, gt=0, le=600, description="an estimate older than this stops counting")
    half_life_s: float = Field(default=1.0, gt=0, le=600, description="freshness weight halves every half_life_s")
    smoothing_s: float = Field(default=1.0, ge=0, le=600, description="time constant of the exponential smoothing")
    weights: dict[str, float] = Field(default_factory=dict, description="prior weight per source name or modality")
    prototypes: dict[str, tuple[float, float]] = Field(
        default_factory=dict,
        description="extra circumplex prototypes: label = [valence, arousal] in [-1, 1]; nan for an axis the label does not name",
    )

    @field_validator("prototypes")
    @classmethod
    def _prototypes_in_range(cls, value: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
        for label, va in value.items():
            if any(not (x != x or -1.0 <= x <= 1.0) for x in va):  # x != x: nan, an open axis
                raise ValueError(f"prototype '{label}': valence and arousal must be in [-1, 1] (or nan), got {list(va)}")
        return value


class DeviceConfig(_Strict):
    """The whole config of one device."""

    device_id: str = Field(pattern=r"^[A-Za-z0-9_\-]+$", description="used in MQTT topics")
    mqtt: MqttConfig = MqttConfig()
    backend: BackendConfig = BackendConfig()
    models: dict[str, ModelSettings] = Field(default_factory=dict)
    sources: list[SourceConfig] = Field(default_factory=list)
    fusion: FusionConfig = FusionConfig()
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @model_validator(mode="after")
    def _sources_name_models(self) -> DeviceConfig:
        names = [s.name for s in self.sources]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"source names must be unique; repeated: {', '.join(dupes)}")
        for source in self.sources:
            if source.model not in self.models:
                known = ", ".join(sorted(self.models)) or "none"
                raise ValueError(f"source '{source.name}' uses model '{source.model}', not in [models] (known: {known})")
        return self


def _secret_from_env(var: str | None) -> SecretStr | None:
    if not var:
        return None
    value = os.environ.get(var)
    return SecretStr(value) if value is not None else None


def _loc_to_path(loc: tuple[int | str, ...], data: Any) -> str:
    """('sources', 1, 'serial', 'baudrate') -> 'sources[1].baudrate' (dropping union tags)."""
    out = ""
    node = data
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            node = node[part] if isinstance(node, list) and part < len(node) else None
            continue
        if isinstance(node, dict) and part not in node and part in ("camera", "microphone", "serial", "replay"):
            continue  # pydantic's discriminator tag, not a key of the file
        out += f".{part}" if out else str(part)
        node = node.get(part) if isinstance(node, dict) else None
    return out or "(top level)"


def _find_line(text: str, loc: tuple[int | str, ...]) -> int | None:
    """Best-effort line of the key named by ``loc`` (tomllib gives positions only for syntax errors).

    Finds the table header of the first key (the n-th ``[[sources]]`` for ``sources[n]``), then the
    last key's assignment inside that table.
    """
    keys = [p for p in loc if isinstance(p, str)]
    if not keys:
        return None
    lines = text.splitlines()
    begin, end = 0, len(lines)
    if len(loc) > 1:
        header = re.compile(r"^\s*\[\[?\s*" + re.escape(keys[0]) + r"\s*[\].]")
        hits = [i for i, line in enumerate(lines) if header.match(line)]
        if not hits:
            return None
        nth = loc[1] if isinstance(loc[1], int) and loc[1] < len(hits) else 0
        begin = hits[nth]
        end = next((i for i in range(begin + 1, len(lines)) if lines[i].lstrip().startswith("[")), len(lines))
    assignment = re.compile(r"^\s*" + re.escape(keys[-1]) + r"\s*=")
    for i in range(begin, end):
        if assignment.match(lines[i]):
            return i + 1
    return begin + 1 if len(loc) > 1 else None


def parse_config(text: str, source: str = "<config>") -> DeviceConfig:
    """Parse and validate config text; every problem is reported at once, with key path and line."""
    data = load_toml_text(text, source, ConfigError)
    try:
        return DeviceConfig.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = _loc_to_path(tuple(err["loc"]), data)
            line = _find_line(text, tuple(err["loc"]))
            at = f" (line {line})" if line else ""
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            elif err["type"] == "missing":
                msg = "required value missing"
            given = ""
            if err["type"] not in ("missing", "extra_forbidden") and not isinstance(err.get("input"), dict | list):
                given = f" (given: {redact_url(repr(err.get('input')))[:200]})"
            problems.append(f"  {where}{at}: {redact_url(msg)}{given}")
        raise ConfigError(f"{source}: {len(problems)} problem(s):\n" + "\n".join(problems)) from None


MAX_TOML_DEPTH = 64


def load_toml_text(text: str, source: str, error: type[Exception] = ConfigError) -> dict[str, Any]:
    """``tomllib.loads`` with one-line errors: not TOML, or nested deeper than any real file is (tomllib recurses)."""
    depth = 0
    deepest = 0
    for char in re.sub(r'"(?:[^"\\\n]|\\.)*"|\'[^\'\n]*\'', "", text):  # brackets outside simple strings
        if char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth = max(0, depth - 1)
    if deepest > MAX_TOML_DEPTH:
        raise error(f"{source}: not valid TOML: arrays or tables nested {deepest} deep (at most {MAX_TOML_DEPTH})")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{source}: not valid TOML: {exc}") from None
    except RecursionError:
        raise error(f"{source}: not valid TOML: nested too deep") from None


def load_config(path: str | os.PathLike[str]) -> DeviceConfig:
    """Load a device config file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read config: {exc}") from None
    return parse_config(text, str(p))


def config_schema() -> dict[str, Any]:
    """JSON Schema of the config file, for editors and validators."""
    schema = DeviceConfig.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "EmoEdge device config"
    return schema


EXAMPLE_CONFIG = """\
# EmoEdge device config. Check it with: emoedge config check device.toml
device_id = "jetson-01"

[mqtt]
url = "mqtt://127.0.0.1:1883"          # mqtts://host:8883 for TLS
topic_root = "emoedge"                 # topics: emoedge/jetson-01/...
protocol = "5"                         # or "3.1.1"
# username = "robot"
password_env = "EMOEDGE_MQTT_PASSWORD" # the password is read from this environment variable
stats_interval_s = 10

# [mqtt.tls]
# ca_file = "/etc/emoedge/ca.crt"
# cert_file = "/etc/emoedge/client.crt"
# key_file = "/etc/emoedge/client.key"

[backend]
default = "auto"                       # TensorRT where an engine exists, else ONNX Runtime
threads = 0

[models.face]
precision = "auto"                     # the fastest precision that passed the device check here

[models.speech]
precision = "auto"                     # the fastest precision that passed the device check here

[models.eeg]
precision = "auto"                     # the fastest precision that passed the device check here

[[sources]]
name = "camera"
kind = "camera"
model = "face"
device = 0                             # index, file, rtsp:// URL or GStreamer pipeline
width = 640
height = 480

[[sources]]
name = "mic"
kind = "microphone"
model = "speech"
sample_rate = 16000

[[sources]]
name = "eeg"
kind = "serial"
model = "eeg"
port = "/dev/ttyACM0"                  # or usb = "2e8a:000a"
baudrate = 921600
window_s = 4.0                         # EEG band power over 4 s (the eeg card sets no window) ...
hop_s = 0.5                            # ... every 0.5 s

[fusion]
confidence_floor = 0.35
stale_after_s = 3.0
"""
