"""TLS with a CA made in the test (and a client certificate), and refused credentials: a clear error, no retry loop."""

from __future__ import annotations

import logging
import subprocess
import time
from pathlib import Path

import pytest

from edge.config import MqttConfig, OutboxConfig, TlsConfig
from edge.publish import BrokerError, Publisher
from tests.mqtt_broker import Collector, Mosquitto


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(folder: Path, name: str) -> tuple[Path, Path]:
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
            "-keyout", f"{name}.key", "-out", f"{name}.crt", cwd=folder)
    return folder / f"{name}.crt", folder / f"{name}.key"


def make_cert(folder: Path, ca: str, name: str, server: bool) -> tuple[Path, Path]:
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
            "-out", f"{name}.csr", cwd=folder)
    ext = folder / f"{name}.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n" if server else "extendedKeyUsage=clientAuth\n")
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key", "-CAcreateserial",
            "-days", "2", "-out", f"{name}.crt", "-extfile", ext.name, cwd=folder)
    return folder / f"{name}.crt", folder / f"{name}.key"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("pki")
    make_ca(folder, "ca")
    make_ca(folder, "other-ca")
    make_cert(folder, "ca", "server", server=True)
    make_cert(folder, "ca", "client", server=False)
    return folder


@pytest.fixture(scope="module")
def tls_broker(pki: Path, tmp_path_factory: pytest.TempPathFactory):
    conf = (f"cafile {pki / 'ca.crt'}\ncertfile {pki / 'server.crt'}\nkeyfile {pki / 'server.key'}\n"
            f"require_certificate true\nallow_anonymous true\n")
    broker = Mosquitto(tmp_path_factory.mktemp("tlsbroker"), listener_conf=conf).start()
    yield broker
    broker.stop()


def test_tls_with_ca_and_client_certificate(tls_broker: Mosquitto, pki: Path, tmp_path: Path) -> None:
    tls = TlsConfig(ca_file=pki / "ca.crt", cert_file=pki / "client.crt", key_file=pki / "client.key")
    cfg = MqttConfig(url=f"mqtts://127.0.0.1:{tls_broker.port}", tls=tls, outbox=OutboxConfig(path=tmp_path / "o.sqlite"))
    pub = Publisher(cfg, "tlsdev").start()
    assert pub.connected.is_set()
    pub.set_enabled("cam", True)
    pub.stop()


def test_tls_with_the_wrong_ca_is_a_clear_error(tls_broker: Mosquitto, pki: Path, tmp_path: Path) -> None:
    tls = TlsConfig(ca_file=pki / "other-ca.crt", cert_file=pki / "client.crt", key_file=pki / "client.key")
    cfg = MqttConfig(url=f"mqtts://127.0.0.1:{tls_broker.port}", tls=tls, outbox=OutboxConfig(path=tmp_path / "o.sqlite"))
    with pytest.raises(BrokerError, match="TLS handshake .* failed: .*CERTIFICATE_VERIFY_FAILED"):
        Publisher(cfg, "tlsdev").start()


def test_tls_missing_ca_file_is_a_clear_error(tmp_path: Path) -> None:
    tls = TlsConfig(ca_file=tmp_path / "nope.crt")
    cfg = MqttConfig(url="mqtts://127.0.0.1:8883", tls=tls, outbox=OutboxConfig(path=tmp_path / "o.sqlite"))
    with pytest.raises(BrokerError, match="TLS set-up .* failed"):
        Publisher(cfg, "tlsdev")


@pytest.fixture(scope="module")
def auth_broker(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("authbroker")
    passwd = folder / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwd), "robot", "s3cret-pw"], check=True, capture_output=True)
    broker = Mosquitto(folder, listener_conf=f"allow_anonymous false\npassword_file {passwd}\n").start()
    yield broker
    broker.stop()


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_wrong_password_stops_with_a_clear_error(
    auth_broker: Mosquitto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, protocol: str
) -> None:
    monkeypatch.setenv("TEST_MQTT_PW", "wrong-pw-123")
    cfg = MqttConfig(url=auth_broker.url, protocol=protocol, username="robot", password_env="TEST_MQTT_PW",
                     outbox=OutboxConfig(path=tmp_path / "o.sqlite"))
    pub = Publisher(cfg, "authdev")
    caplog.set_level(logging.DEBUG)
    start = time.monotonic()
    with pytest.raises(BrokerError, match="refused the connection: (bad user name or password|not authorized)"):
        pub.start(wait_s=5)
    assert time.monotonic() - start < 3
    time.sleep(1.5)  # longer than the reconnect delay: no retry loop behind our back
    assert pub._counts["connects"] == 0  # noqa: SLF001
    assert "wrong-pw-123" not in caplog.text
    pub.stop()


def test_right_password_connects(auth_broker: Mosquitto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_MQTT_PW", "s3cret-pw")
    cfg = MqttConfig(url=auth_broker.url, username="robot", password_env="TEST_MQTT_PW",
                     outbox=OutboxConfig(path=tmp_path / "o.sqlite"))
    pub = Publisher(cfg, "authdev").start()
    assert pub.connected.is_set()
    pub.stop()
