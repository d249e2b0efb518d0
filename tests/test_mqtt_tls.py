"""TLS with a CA made in the test (and a client certificate), and refused credentials: a clear error, no retry loop."""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from edge.config import MqttConfig, OutboxConfig, TlsConfig
from edge.publish import BrokerError, Publisher
from tests.mqtt_broker import Mosquitto


def openssl(*args: str, cwd: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make the test CA (apt-get install openssl)")
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


def make_encrypted_client(folder: Path, passphrase: str) -> tuple[Path, Path]:
    openssl("genrsa", "-aes256", "-passout", f"pass:{passphrase}", "-out", "enc.key", "2048", cwd=folder)
    openssl("req", "-new", "-key", "enc.key", "-passin", f"pass:{passphrase}", "-subj", "/CN=enc", "-out", "enc.csr", cwd=folder)
    (folder / "enc.ext").write_text("extendedKeyUsage=clientAuth\n")
    openssl("x509", "-req", "-in", "enc.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2",
            "-out", "enc.crt", "-extfile", "enc.ext", cwd=folder)
    return folder / "enc.crt", folder / "enc.key"


def test_an_encrypted_key_without_its_passphrase_never_prompts_on_the_terminal(pki: Path, tmp_path: Path) -> None:
    """Issue 17 finding 6: with key_password_env unset, OpenSSL asked "Enter PEM pass phrase:" on the tty and waited."""
    import os
    import pty
    import select
    import sys

    cert, key = make_encrypted_client(pki, "board-secret")
    script = (
        "from edge.config import MqttConfig, TlsConfig, OutboxConfig\n"
        "from edge.publish import Publisher\n"
        "from edge.errors import EmoEdgeError\n"
        f"tls = TlsConfig(ca_file={str(pki / 'ca.crt')!r}, cert_file={str(cert)!r}, key_file={str(key)!r}, "
        "key_password_env='T_KEY_PW_UNSET')\n"
        f"cfg = MqttConfig(url='mqtts://127.0.0.1:8883', tls=tls, outbox=OutboxConfig(path={str(tmp_path / 'o.sqlite')!r}))\n"
        "try:\n    Publisher(cfg, 'encdev')\nexcept EmoEdgeError as exc:\n    print('REFUSED', exc)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "T_KEY_PW_UNSET"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    pid, fd = pty.fork()
    if pid == 0:  # the child has the pty as its controlling terminal, where OpenSSL would prompt
        os.execve(sys.executable, [sys.executable, "-c", script], env)
    output = b""
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:
                    break
                if not chunk:
                    break
                output += chunk
                if b"pass phrase" in output:
                    break
    finally:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
        os.waitpid(pid, 0)
        os.close(fd)
    text = output.decode(errors="replace")
    assert "pass phrase" not in text, text
    assert "REFUSED TLS set-up" in text and "T_KEY_PW_UNSET is not set" in text, text


def test_an_encrypted_key_with_its_passphrase_connects(tls_broker: Mosquitto, pki: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    cert, key = make_encrypted_client(pki, "board-secret")
    monkeypatch.setenv("T_KEY_PW", "board-secret")
    tls = TlsConfig(ca_file=pki / "ca.crt", cert_file=cert, key_file=key, key_password_env="T_KEY_PW")
    cfg = MqttConfig(url=f"mqtts://127.0.0.1:{tls_broker.port}", tls=tls, outbox=OutboxConfig(path=tmp_path / "o.sqlite"))
    pub = Publisher(cfg, "encdev").start()
    assert pub.connected.is_set()
    pub.stop()


def test_doctor_probes_a_tls_broker_as_run_reaches_it(tls_broker: Mosquitto, pki: Path, tmp_path: Path) -> None:
    """Issue 17 finding 6: doctor's probe spoke plain MQTT and reported a TLS broker that run reaches as absent."""
    from edge.verbs.doctor import _broker_answers

    tls = TlsConfig(ca_file=pki / "ca.crt", cert_file=pki / "client.crt", key_file=pki / "client.key")
    cfg = MqttConfig(url=f"mqtts://127.0.0.1:{tls_broker.port}", tls=tls)
    ok, detail = _broker_answers(cfg)
    assert ok, detail
    assert "(TLS) answers" in detail
    wrong = MqttConfig(url=f"mqtts://127.0.0.1:{tls_broker.port}", tls=TlsConfig(ca_file=pki / "other-ca.crt"))
    ok, detail = _broker_answers(wrong)
    assert not ok and "CERTIFICATE_VERIFY_FAILED" in detail
