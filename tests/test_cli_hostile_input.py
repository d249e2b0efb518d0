"""Bad input on the command line is one clear line, and never repeats a secret (issue 17, findings 4, 5 and 6).

Every verb runs in-process through ``edge.cli.main``: an exception that escaped as a traceback would
fail the test, and every line printed or logged is searched for the planted password.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from edge.cli import main
from tests.pipeline_helpers import RAVDESS, make_model

PLANTED = "Pl4nted-s3cret"
SECRET_URLS = [f"mqtt://robot:{PLANTED}@127.0.0.1:1883", f"htp://robot:{PLANTED}@x", f"mqtt://robot:{PLANTED}@x:99999",
               f"mqtts://:{PLANTED}@broker.local"]


def cli(capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture, *argv: str) -> tuple[int, str]:
    caplog.clear()
    with caplog.at_level(logging.DEBUG):
        code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out + out.err + "\n".join(r.getMessage() for r in caplog.records)


def device_toml(tmp: Path, url: str = "mqtt://127.0.0.1:1", extra: str = "", model_path: str | None = None) -> Path:
    models = tmp / "models"
    if model_path is None:
        make_model(models, "speech", 1600, RAVDESS, "speech", window_s=0.1)
        model_path = str(models / "speech")
    path = tmp / "device.toml"
    path.write_text(
        f'device_id = "clidev"\n[mqtt]\nurl = "{url}"\n{extra}'
        f'[models.speech]\npath = "{model_path}"\n'
        f'[[sources]]\nname = "mic"\nkind = "replay"\nmodel = "speech"\npath = "x.wav"\n'
    )
    return path


@pytest.mark.parametrize("url", SECRET_URLS)
def test_no_error_path_repeats_a_planted_password(url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  caplog: pytest.LogCaptureFixture) -> None:
    good = device_toml(tmp_path / "good")
    bad = device_toml(tmp_path / "bad", url=url)
    runs = [("config", "check", str(bad)), ("run", "--config", str(bad), "--duration", "1"),
            ("run", "--config", str(good), "--mqtt", url, "--duration", "1"), ("run", "--demo", "--mqtt", url, "--duration", "1"),
            ("doctor", "--json", "--mqtt", url), ("doctor", "--config", str(bad)), ("watch", "--mqtt", url, "--timeout", "1")]
    for argv in runs:
        code, text = cli(capsys, caplog, *argv)
        assert code == 2, (argv, text)
        assert PLANTED not in text, (argv, text)
        errors = [line for line in text.splitlines() if "error:" in line]
        assert len(errors) == 1 and ("--mqtt" in text or "mqtt.url" in text), (argv, text)
        assert "Traceback" not in text and "pydantic" not in text


@pytest.mark.parametrize("url", ["htp://x", "mqtt://x:99999", "", "mqtt://[x"])
def test_bad_mqtt_urls_are_one_line_errors(url: str, capsys: pytest.CaptureFixture[str],
                                           caplog: pytest.LogCaptureFixture) -> None:
    for verb in (("run", "--demo", "--duration", "1"), ("doctor",), ("watch", "--timeout", "1")):
        code, text = cli(capsys, caplog, *verb, "--mqtt", url)
        assert code == 2, (verb, text)
        err = [line for line in text.splitlines() if line.startswith(f"emoedge {verb[0]}: error:")]
        assert len(err) == 1 and "--mqtt" in err[0], (verb, text)


def test_an_outbox_path_that_cannot_be_created_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                           caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    config = device_toml(tmp_path, extra=f'[mqtt.outbox]\npath = "{tmp_path / "a-file" / "o.sqlite"}"\n')
    code, text = cli(capsys, caplog, "run", "--config", str(config), "--duration", "1")
    assert code == 2
    assert "emoedge run: error: mqtt.outbox.path:" in text and "cannot create the outbox" in text


def test_binary_and_deeply_nested_cards_and_configs_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    models = tmp_path / "models"
    make_model(models, "speech", 16, RAVDESS, "speech")
    card = models / "speech" / "card.toml"
    card.write_bytes(bytes(range(256)) * 4)
    code, text = cli(capsys, caplog, "eval", "speech", "--models", str(models), "--data", str(tmp_path))
    assert code == 2 and "card.toml: not a text file" in text
    card.write_text("x = " + "[" * 3000 + "]" * 3000 + "\n")
    code, text = cli(capsys, caplog, "eval", "speech", "--models", str(models), "--data", str(tmp_path))
    assert code == 2 and "card.toml: not valid TOML: arrays or tables nested 3000 deep" in text
    config = tmp_path / "deep.toml"
    config.write_text('device_id = "x"\nx = ' + "[" * 3000 + "]" * 3000 + "\n")
    code, text = cli(capsys, caplog, "config", "check", str(config))
    assert code == 2 and "not valid TOML: arrays or tables nested 3000 deep" in text


def test_eval_refuses_a_card_whose_labels_do_not_match_the_logits(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    models = tmp_path / "models"
    make_model(models, "speech", 16, RAVDESS, "speech")  # 8 logits
    card = models / "speech" / "card.toml"
    card.write_text(card.read_text().replace('"surprised"]', "]").replace(', ]', "]"))  # 7 labels
    assert '"disgust"]' in card.read_text()
    code, text = cli(capsys, caplog, "eval", "speech", "--models", str(models), "--data", str(tmp_path))
    assert code == 2 and "no output has 7 values (one per label)" in text


def test_config_check_catches_a_missing_model_folder_and_tls_file(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    config = device_toml(tmp_path, url="mqtts://127.0.0.1:8883", model_path=str(tmp_path / "no-such-model"),
                         extra=f'[mqtt.tls]\nca_file = "{tmp_path / "no-ca.crt"}"\n')
    code, text = cli(capsys, caplog, "config", "check", str(config))
    assert code == 2
    assert "models.speech.path: no model folder" in text
    assert f"mqtt.tls.ca_file: {tmp_path / 'no-ca.crt'} does not exist" in text
