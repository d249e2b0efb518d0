from __future__ import annotations

import json

import jsonschema
import pytest

from edge.config import EXAMPLE_CONFIG, config_schema, load_config, parse_config
from edge.errors import ConfigError

MINIMAL = 'device_id = "dev1"\n'


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "device.toml")
    return str(info.value)


def test_example_config_is_valid() -> None:
    config = parse_config(EXAMPLE_CONFIG)
    assert config.device_id == "jetson-01"
    assert [s.kind for s in config.sources] == ["camera", "microphone", "serial"]
    assert config.mqtt.port == 1883


def test_minimal_config_gets_defaults() -> None:
    config = parse_config(MINIMAL)
    assert config.backend.default == "auto"
    assert config.mqtt.topic_root == "emoedge"


def test_syntax_error_names_line() -> None:
    msg = error_of('device_id = "x"\n[mqtt]\nurl = \n')
    assert "not valid TOML" in msg and "line 3" in msg


def test_unknown_key_names_path_and_line() -> None:
    msg = error_of(MINIMAL + "[mqtt]\nurl = 'mqtt://h:1883'\nprot = '5'\n")
    assert "mqtt.prot (line 4): unknown key" in msg


def test_wrong_type_names_path_and_value() -> None:
    msg = error_of(MINIMAL + "[mqtt]\nkeepalive_s = 'ten'\n")
    assert "mqtt.keepalive_s (line 3)" in msg and "'ten'" in msg


def test_missing_required_value() -> None:
    msg = error_of("[mqtt]\nurl = 'mqtt://h'\n")
    assert "device_id: required value missing" in msg


def test_out_of_range_number_in_array_of_tables() -> None:
    text = MINIMAL + """
[models.eeg]
[[sources]]
name = "a"
kind = "serial"
model = "eeg"
port = "/dev/ttyACM0"

[[sources]]
name = "b"
kind = "serial"
model = "eeg"
port = "/dev/ttyACM1"
baudrate = 12
"""
    msg = error_of(text)
    assert "sources[1].baudrate (line 15)" in msg and "greater than or equal to 1200" in msg


def test_all_problems_reported_at_once() -> None:
    msg = error_of("device_id = 'a b'\n[fusion]\nconfidence_floor = 2\n")
    assert "2 problem(s)" in msg and "device_id" in msg and "fusion.confidence_floor" in msg


def test_source_must_name_a_configured_model() -> None:
    msg = error_of(MINIMAL + "[[sources]]\nname='cam'\nkind='camera'\nmodel='face'\n")
    assert "uses model 'face', not in [models]" in msg


def test_unknown_source_kind() -> None:
    msg = error_of(MINIMAL + "[models.x]\n[[sources]]\nname='cam'\nkind='lidar'\nmodel='x'\n")
    assert "sources[0]" in msg and "lidar" in msg


def test_password_in_file_is_refused() -> None:
    msg = error_of(MINIMAL + "[mqtt]\npassword = 'hunter2'\n")
    assert "must not be written in the config file" in msg
    assert "hunter2" not in msg


def test_password_in_url_is_refused() -> None:
    msg = error_of(MINIMAL + "[mqtt]\nurl = 'mqtt://u:hunter2@host:1883'\n")
    assert "must not carry a password" in msg


def test_secret_comes_from_environment_and_is_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_PW", "hunter2")
    config = parse_config(MINIMAL + "[mqtt]\nusername='robot'\npassword_env='MY_PW'\n")
    secret = config.mqtt.password()
    assert secret is not None and secret.get_secret_value() == "hunter2"
    assert "hunter2" not in repr(config) and "hunter2" not in str(secret)


def test_tls_cert_needs_key() -> None:
    msg = error_of(MINIMAL + "[mqtt.tls]\nca_file='ca.crt'\ncert_file='c.crt'\n")
    assert "cert_file and key_file go together" in msg


def test_serial_source_needs_one_address() -> None:
    msg = error_of(MINIMAL + "[models.eeg]\n[[sources]]\nname='e'\nkind='serial'\nmodel='eeg'\n")
    assert "exactly one of 'port' or 'usb'" in msg


def test_duplicate_source_names() -> None:
    src = "[[sources]]\nname='e'\nkind='serial'\nmodel='eeg'\nport='/dev/x'\n"
    msg = error_of(MINIMAL + "[models.eeg]\n" + src + src)
    assert "repeated: e" in msg


def test_missing_file(tmp_path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml")


def test_schema_validates_example() -> None:
    import sys

    schema = config_schema()
    json.dumps(schema)
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        import tomli as tomllib
    jsonschema.validate(tomllib.loads(EXAMPLE_CONFIG), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"device_id": "x", "bogus": 1}, schema)
