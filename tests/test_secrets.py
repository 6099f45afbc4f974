"""Secrets stay secret: passwords, tokens and keys never appear in logs, errors or command output."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from fedmsg_notify.bus.envelope import build_envelope
from fedmsg_notify.bus.zeromq import Publisher
from fedmsg_notify.commands.cli import main as cli_main
from fedmsg_notify.config import redact
from fedmsg_notify.config.model import load_config
from fedmsg_notify.config.validation import StrictModel, validate
from fedmsg_notify.config.yaml_positions import ProblemsError, load_located
from fedmsg_notify.daemon import Daemon
from pydantic import SecretStr

from tests.conftest import free_port
from tests.ircserver import ScriptedServer
from tests.mastodonserver import MastodonServer
from tests.smtpserver import smtp_server

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


# -- end to end: every backend with real servers refusing the credentials, then the CLI ------------


def _forms(user: str, secret: str) -> list[str]:
    """The secret as it could leak: plain, and base64 as SASL PLAIN / SMTP AUTH PLAIN / LOGIN carry it."""
    return [
        secret,
        base64.b64encode(secret.encode()).decode(),
        base64.b64encode(f"\0{user}\0{secret}".encode()).decode(),
        base64.b64encode(f"{user}\0{user}\0{secret}".encode()).decode(),
    ]


async def test_secrets_never_leak_anywhere(
    tmp_path: Path, endpoint: str, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    """With wrong passwords and tokens on IRC, SMTP and Mastodon, neither the logs (DEBUG), the stored
    failures, nor `check`, `explain` and `status` output ever show a password, key or token."""
    caplog.set_level(logging.DEBUG)
    assert not getattr(logging.getLogRecordFactory(), "_fedmsg_notify_redacting", False), "must run unredacted"
    secrets = {
        "irc-pass": "ircPASS-7f3e91",
        "sasl": "saslPW-2b8c44",
        "chan-key": "chanKEY-5d1a07",
        "inline-key": "inlineKEY-9e6b22",
        "smtp": "smtpPW-4c7d83",
        "token": "mastoTOKEN-1a2b3c4d5e",
    }
    for name, value in secrets.items():
        (tmp_path / name).write_text(value + "\n")
    ca = trustme.CA()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_tls)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    smtp_port, irc = free_port(), ScriptedServer(sasl_accounts={"fnbot": "the-right-one"})
    await irc.start()
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "rules:\n  - name: everything\n    match: {}\n"
        "    deliver: [{via: irc, to: '#keyed'}, {via: mail, to: ralph@example.org}, {via: masto}]\n"
    )
    with (
        smtp_server(
            smtp_port, tls_context=server_tls, require_starttls=True, users={"notifier": "the-right-one"}
        ) as smtp,
        MastodonServer(token="the-right-token") as masto,
    ):
        config = tmp_path / "config.yaml"
        config.write_text(
            f"bus: {{endpoints: ['{endpoint}']}}\n"
            "accounts:\n"
            f"  irc: {{backend: irc, server: 'irc://127.0.0.1:{irc.port}', nick: fnbot,\n"
            f"        password_file: {tmp_path / 'irc-pass'},\n"
            f"        sasl: {{username: fnbot, password_file: {tmp_path / 'sasl'}}},\n"
            f"        channel_keys: {{'#keyed': {{key_file: {tmp_path / 'chan-key'}}}, '#inline': {secrets['inline-key']}}},\n"
            "        reconnect_min: 0.2, reconnect_max: 0.5, connect_timeout: 5}\n"
            f"  mail: {{backend: email, smtp: 'smtp://localhost:{smtp_port}', starttls: required, ca_file: {ca_file},\n"
            f"         from: 'n <notify@example.org>', username: notifier, password_file: {tmp_path / 'smtp'}, timeout: 5}}\n"
            f"  masto: {{backend: mastodon, instance: '{masto.url}', token_file: {tmp_path / 'token'}}}\n"
            f"rules: [{rules}]\n"
            f"state: {tmp_path / 'state.db'}\n"
        )
        daemon = Daemon(load_config(config), shutdown_timeout=2.0)
        ready = asyncio.Event()
        running = asyncio.create_task(daemon.run(ready))
        publisher = Publisher(endpoint, wait=5.0)
        try:
            await asyncio.wait_for(ready.wait(), 20)
            envelope = build_envelope(
                "org.fedoraproject.prod.bodhi.update.comment", {"comment": {"text": "hi"}}, i=1, username="u"
            )
            await asyncio.to_thread(publisher.send_envelope, envelope)
            async with asyncio.timeout(30):
                # Every credential has travelled and been refused before we look at the traces.
                while not (
                    any(line.startswith("AUTHENTICATE ") and line != "AUTHENTICATE PLAIN" for line in irc.lines)
                    and "login refused" in caplog.text
                    and masto.posts
                ):
                    await asyncio.sleep(0.1)
                # ... and the outbox has stored each refusal (the reasons are among the traces checked).
                assert daemon.store is not None
                while not {"mail", "masto"} <= {
                    r.account for r in daemon.store.status(0) if r.last_retry_reason or r.last_failure
                }:
                    await asyncio.sleep(0.1)
        finally:
            publisher.close(linger_ms=0)
            daemon.stop()
            await asyncio.wait_for(running, 30)
            await irc.close()
    assert not smtp.delivered and not masto.statuses  # every credential really was wrong

    (tmp_path / "msg.json").write_text(json.dumps(envelope))
    previous = logging.getLogRecordFactory()
    try:
        for argv in (["check"], ["explain", str(tmp_path / "msg.json")], ["status"], ["status", "--json"]):
            cli_main(["-v", argv[0], "-c", str(config), *argv[1:]])
    finally:
        logging.setLogRecordFactory(previous)
    out, err = capsys.readouterr()

    traces = {
        "logs": caplog.text + "".join(r.exc_text or "" for r in caplog.records),
        "stdout of check/explain/status": out,
        "stderr": err,
        "state database": (tmp_path / "state.db").read_bytes().decode("utf-8", "replace"),
    }
    assert "everything" in out  # explain really ran on the message
    users = {"sasl": "fnbot", "smtp": "notifier"}
    for name, secret in secrets.items():
        for form in _forms(users.get(name, ""), secret):
            for where, text in traces.items():
                assert form not in text, f"{name} secret leaked into {where}"
