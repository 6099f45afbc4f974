"""Secrets stay secret: passwords, tokens and keys never appear in logs, errors or command output."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from fedmsg_notify import redact
from fedmsg_notify.config import load_config
from fedmsg_notify.validation import StrictModel, validate
from fedmsg_notify.yaml_positions import ProblemsError, load_located
from pydantic import SecretStr

SECRET = "hunter2-Zq8xV"  # recognisable, never a substring of anything else in the output


@pytest.fixture
def redacting() -> Iterator[None]:
    """Install log redaction for one test and put the previous record factory back afterwards."""
    previous = logging.getLogRecordFactory()
    redact.install_log_redaction()
    try:
        yield
    finally:
        logging.setLogRecordFactory(previous)


class Login(StrictModel):
    user: str
    password: SecretStr
    api_token: str
    port: int


@pytest.mark.parametrize(
    "text",
    [
        f"user: ralph\npassword: [{SECRET}]\napi_token: x\nport: 1\n",
        f"user: ralph\npassword: x\napi_token: {{t: {SECRET}}}\nport: 1\n",
        f"user: ralph\npassword: x\napi_token: x\nport: 1\npasswd: {SECRET}\n",
    ],
    ids=["secretstr-field", "token-named-field", "misspelled-key"],
)
def test_validation_errors_never_echo_secret_values(text: str) -> None:
    """A mistyped password or token is reported by position and expectation, never by its value."""
    doc = load_located("/etc/fedmsg-notify/config.yaml", text)
    parsed, problems = validate(Login, doc.data, doc)
    assert parsed is None and problems
    rendered = "\n".join(str(p) for p in problems)
    assert "config.yaml:" in rendered
    assert SECRET not in rendered, rendered


def test_ordinary_values_are_still_echoed() -> None:
    """Hiding secrets does not make other errors vague: a bad port still shows what was written."""
    doc = load_located("c.yaml", "user: ralph\npassword: x\napi_token: x\nport: eighty\n")
    _, problems = validate(Login, doc.data, doc)
    assert [str(p) for p in problems] == [
        "c.yaml:4:7: port: expected a valid integer, unable to parse string as an integer, got 'eighty'"
    ]


def test_secretstr_type_error_hides_value() -> None:
    """A password given as a number is reported as 'not shown (secret)' at its line and column."""
    doc = load_located("c.yaml", "user: ralph\npassword: 123456789\napi_token: x\nport: 1\n")
    _, problems = validate(Login, doc.data, doc)
    assert [str(p) for p in problems] == [
        "c.yaml:2:11: password: expected a valid string, got a value that is not shown (secret)"
    ]


def test_url_passwords_are_masked_in_config_errors(tmp_path: Path) -> None:
    """A password written into an endpoint or SMTP URL is masked in the error that rejects it."""
    config = tmp_path / "config.yaml"
    config.write_text(
        f"bus: {{endpoints: ['tcp://ralph:{SECRET}@bus.example.org:x']}}\n"
        f"accounts: {{mail: {{backend: email, smtp: 'smtp://ralph:{SECRET}@', from: a@example.org}}}}\n"
    )
    with pytest.raises(ProblemsError) as caught:
        load_config(config)
    rendered = "\n".join(str(p) for p in caught.value.problems)
    assert "config.yaml:1:" in rendered and "config.yaml:2:" in rendered
    assert SECRET not in rendered, rendered


def test_irc_channel_key_type_error_hides_value(tmp_path: Path) -> None:
    """An inline IRC channel key of the wrong type is not echoed in the configuration error."""
    config = tmp_path / "config.yaml"
    config.write_text(
        "accounts:\n"
        "  libera: {backend: irc, server: 'ircs://irc.example.org:6697', nick: bot,\n"
        "           channel_keys: {'#secret': 7777777711}}\n"
    )
    with pytest.raises(ProblemsError) as caught:
        load_config(config)
    rendered = "\n".join(str(p) for p in caught.value.problems)
    assert "config.yaml:3:" in rendered
    assert "7777777711" not in rendered, rendered


def test_registered_secrets_are_masked_in_logs(redacting: None, caplog: pytest.LogCaptureFixture) -> None:
    """Once an account's secrets are loaded, a log line or traceback that contains one shows *** instead."""
    caplog.set_level(logging.DEBUG)
    redact.register_secret(SECRET)
    log = logging.getLogger("fedmsg_notify.test")
    log.debug("AUTH PLAIN for ralph with %s", SECRET)
    log.info("connecting to smtp://ralph:%s@mail.example.org:587", "pa55word-in-url")
    try:
        raise ValueError(f"server said: bad password {SECRET}")
    except ValueError:
        log.exception("login failed")
    text = caplog.text + "".join(r.exc_text or "" for r in caplog.records)
    assert SECRET not in text and "pa55word-in-url" not in text
    assert "AUTH PLAIN for ralph with ***" in caplog.text
    assert "smtp://ralph:***@mail.example.org:587" in caplog.text
    assert "login failed" in caplog.text


def test_secrets_of_loaded_accounts_are_registered(
    tmp_path: Path, redacting: None, caplog: pytest.LogCaptureFixture
) -> None:
    """Loading a config registers the passwords read from password files, so no later log line can show them."""
    caplog.set_level(logging.DEBUG)
    password = tmp_path / "sasl.pw"
    password.write_text("sasl-Pw-9c1b7e\n")
    config = tmp_path / "config.yaml"
    config.write_text(
        "accounts:\n"
        "  libera:\n"
        "    backend: irc\n"
        "    server: 'ircs://irc.example.org:6697'\n"
        "    nick: bot\n"
        f"    sasl: {{username: bot, password_file: {password}}}\n"
        "    channel_keys: {'#inner': inline-key-4242}\n"
    )
    load_config(config)
    logging.getLogger("irc.client").debug("-> AUTHENTICATE %s / JOIN #inner %s", "sasl-Pw-9c1b7e", "inline-key-4242")
    assert "sasl-Pw-9c1b7e" not in caplog.text and "inline-key-4242" not in caplog.text
    assert "AUTHENTICATE *** / JOIN #inner ***" in caplog.text


def test_short_values_are_not_treated_as_secrets() -> None:
    """A three-letter 'password' would mask ordinary words everywhere, so it is not registered."""
    redact.register_secret("abc")
    assert redact.redact("abc def") == "abc def"
