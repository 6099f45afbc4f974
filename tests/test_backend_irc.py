"""The IRC backend against a real IRC server (Debian's ngircd), read by a second client.

ngircd has neither SASL nor channel mode ``+c``: SASL, NickServ and ``+c`` run against
inspircd with atheme services in ``test_irc_services.py``. Only a network that drops a
client whose SASL failed is the scripted server's (``tests/ircserver.py``). Everything
else goes through ngircd: plain and TLS, server password, keys, nick collisions, private
messages, restarts, floods.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from fedmsg_notify.backend import Destination, Item, PermanentFailure, TemporaryFailure
from fedmsg_notify.backends.irc import IRCAccount, IRCBackend
from fedmsg_notify.backends.irc.lines import MAX_LINE_BYTES, fit, relay_budget, wire_safe
from fedmsg_notify.bus.envelope import Message
from fedmsg_notify.matching.rules import Route, Rule
from fedmsg_notify.meta.engine import Meta
from fedmsg_notify.render.renderer import Renderer
from fedmsg_notify.render.sanitize import irc_color
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from tests.ircserver import Listener, Ngircd, ScriptedServer

SERVER_PASSWORD = "srv-sekrit-7781"
SASL_PASSWORD = "sasl-sekrit-4410"
RENDERER = Renderer([])  # shipped templates only
_ids = itertools.count(1)

MakeBot = Callable[..., Awaitable[IRCBackend]]


def item(to: str, line: str, *, service: str = "bodhi", options: dict[str, Any] | None = None,
         timestamp: float = 0.0, account: str = "testnet") -> Item:
    n = next(_ids)
    return Item(
        id=n, msg_id=f"msg-{n}", destination=Destination(account, to), rule="test", topic=f"org.test.{service}.x",
        service=service, rendered={"line": line}, options=options or {}, timestamp=timestamp,
    )


def unique(prefix: str) -> str:
    return f"{prefix}{next(_ids)}"


@pytest.fixture(scope="module")
def secrets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("secrets")
    (folder / "server.pw").write_text(SERVER_PASSWORD + "\n")
    (folder / "sasl.pw").write_text(SASL_PASSWORD + "\n")
    (folder / "keyed.key").write_text("door-key\n")
    return folder


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def ngircd(tmp_path_factory: pytest.TempPathFactory, ca: trustme.CA) -> Iterator[Ngircd]:
    """ngircd with a server password and a TLS port; throttling off for protocol tests."""
    workdir = tmp_path_factory.mktemp("ngircd")
    cert = ca.issue_cert("127.0.0.1", "localhost")
    chain, key = workdir / "cert.pem", workdir / "key.pem"
    cert.private_key_pem.write_to_path(str(key))
    chain.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    server = Ngircd(workdir / "run", password=SERVER_PASSWORD, throttle=False, tls_cert=(chain, key))
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def listener(ngircd: Ngircd) -> AsyncIterator[Listener]:
    client = Listener(ngircd.port, unique("watcher"), SERVER_PASSWORD)
    await client.connect()
    yield client
    await client.close()


@pytest.fixture
async def make_bot(ngircd: Ngircd, secrets: Path) -> AsyncIterator[MakeBot]:
    """Start bots on the module's ngircd (or another server); all are closed afterwards."""
    bots: list[IRCBackend] = []

    async def make(**overrides: Any) -> IRCBackend:
        options: dict[str, Any] = {
            "backend": "irc", "server": f"irc://127.0.0.1:{ngircd.port}", "nick": unique("fnbot"),
            "password_file": str(secrets / "server.pw"), "rate": 50, "burst": 20,
            "reconnect_min": 0.2, "reconnect_max": 1.0, "regain_interval": 0.3,
        }
        options.update(overrides)
        bot = IRCBackend("testnet", IRCAccount.model_validate({k: v for k, v in options.items() if v is not None}))
        await bot.start()
        bots.append(bot)
        return bot

    yield make
    for bot in bots:
        await bot.close()


def relayed(listener: Listener, text: str) -> str:
    """The raw line the listener received that carried ``text``."""
    return next(line for line in listener.raw if line.endswith(text))


# ---------------------------------------------------------------------------- lines


async def test_line_reaches_channel_with_service_colour(make_bot: MakeBot, listener: Listener) -> None:
    """A rendered line arrives in the channel as one PRIVMSG, its service title coloured."""
    channel = unique("#fedora-firehose")
    await listener.join(channel)
    bot = await make_bot()
    line = f"{irc_color('bodhi.update.comment', 'bodhi')} alice commented on FEDORA-2024-1 https://bodhi.test/u/1"
    await bot.send(item(channel, line))
    [got] = await listener.wait_for(1, channel)
    assert got.command == "PRIVMSG"
    assert got.sender.startswith(f"{bot.session.nick}!")
    assert got.text == line
    assert got.text.startswith("\x03")


async def test_notice_option_sends_notice(make_bot: MakeBot, listener: Listener) -> None:
    """A destination with ``notice: true`` gets NOTICEs, which bots use so other bots stay quiet."""
    channel = unique("#notices")
    await listener.join(channel)
    bot = await make_bot()
    await bot.send(item(channel, "koji build done", options={"notice": True}))
    [got] = await listener.wait_for(1, channel)
    assert (got.command, got.text) == ("NOTICE", "koji build done")


async def test_old_message_says_how_old(make_bot: MakeBot, listener: Listener) -> None:
    """A message delivered late says how old it is, so readers do not take it for news."""
    channel = unique("#late")
    await listener.join(channel)
    bot = await make_bot()
    await bot.send(item(channel, "bodhi: update pushed", timestamp=time.time() - 200))
    await bot.send(item(channel, "bodhi: fresh update", timestamp=time.time() - 5))
    first, second = await listener.wait_for(2, channel)
    assert first.text == "bodhi: update pushed (3 min ago)"
    assert second.text == "bodhi: fresh update"


async def test_600_byte_message_truncated_to_a_valid_line(make_bot: MakeBot, listener: Listener) -> None:
    """A 600-byte message arrives as one line within 512 bytes (prefix included), ending in an ellipsis."""
    channel = unique("#long")
    await listener.join(channel)
    bot = await make_bot()
    await bot.send(item(channel, "word " * 120))
    [got] = await listener.wait_for(1, channel)
    raw = relayed(listener, got.text)
    assert len(raw.encode()) + 2 <= MAX_LINE_BYTES
    assert len(raw.encode()) + 2 > MAX_LINE_BYTES - 80, "truncated far more than needed"
    assert got.text.endswith("…")
    assert ("word " * 120).startswith(got.text[:-1])


async def test_multibyte_characters_never_cut_in_half(make_bot: MakeBot, listener: Listener) -> None:
    """Long text in a non-Latin script is truncated between characters: no mojibake, nothing invalid."""
    channel = unique("#utf8")
    await listener.join(channel)
    bot = await make_bot()
    text = "ビルド完了🎉" * 60  # 3- and 4-byte UTF-8 characters, ~1300 bytes
    await bot.send(item(channel, text))
    [got] = await listener.wait_for(1, channel)
    assert "\ufffd" not in got.text
    assert got.text.endswith("…")
    assert text.startswith(got.text[:-1])
    assert len(relayed(listener, got.text).encode()) + 2 <= MAX_LINE_BYTES


async def test_split_option_sends_continuation_lines(make_bot: MakeBot, listener: Listener) -> None:
    """With ``split: true`` a long message continues on following lines instead of losing its end."""
    channel = unique("#split")
    await listener.join(channel)
    bot = await make_bot()
    words = [f"w{n:03d}" for n in range(180)]  # 900 bytes
    await bot.send(item(channel, " ".join(words), options={"split": True}))
    await bot.send(item(channel, "marker"))  # sent after: once it is here, every continuation line is too
    got = await listener.wait_for(1, channel)
    while "marker" not in (texts := [m.text for m in got]):
        got = await listener.wait_for(len(got) + 1, channel)
    lines = got[: texts.index("marker")]
    assert len(lines) == 2
    assert lines[1].text.startswith("… ")
    assert " ".join(m.text.removeprefix("… ") for m in lines).split() == words
    for message in lines:
        assert len(relayed(listener, message.text).encode()) + 2 <= MAX_LINE_BYTES


# ---------------------------------------------------------------------------- injection


async def test_injection_arrives_as_text_on_one_line(make_bot: MakeBot, listener: Listener) -> None:
    """CR, LF and NUL in content arrive as text in the right channel; no command is injected."""
    channel, other = unique("#target"), unique("#other")
    await listener.join(channel)
    await listener.join(other)
    bot = await make_bot()
    hostile = [
        "build failed\r\nQUIT :bye",
        f"comment\nPRIVMSG {other} :x",
        "nul\x00byte\x01ACTION dances\x01",
    ]
    for line in hostile:
        await bot.send(item(channel, line))
    await bot.send(item(channel, "still here"))
    got = [m.text for m in await listener.wait_for(4, channel)]
    assert got == ["build failed QUIT :bye", f"comment PRIVMSG {other} :x", "nul byteACTION dances", "still here"]
    assert listener.messages(other) == []
    assert not [line for line in listener.raw if line.startswith(f":{bot.session.nick}!") and line.split(" ")[1] == "QUIT"]


@settings(max_examples=300, deadline=None)
@given(st.text(), st.sampled_from(["#c", "#fedora-firehose-with-a-long-name", "somenick"]), st.booleans())
def test_formatted_lines_never_carry_line_breaks(text: str, target: str, split: bool) -> None:
    """Whatever the content, every wire line is one valid UTF-8 line that fits the relay budget."""
    bot = IRCBackend("net", IRCAccount.model_validate({"backend": "irc", "server": "irc://x", "nick": "fnbot"}))
    budget = relay_budget("PRIVMSG", target, "fnbot", None, None)
    try:
        lines = bot.format(item(target, text, account="net"), target, "privmsg", split=split)
    except PermanentFailure:
        assert not wire_safe(text)
        return
    for line in lines:
        assert not set(line) & {"\r", "\n", "\x00"}
        assert len(line.encode()) <= budget
        line.encode().decode()


@settings(max_examples=200, deadline=None)
@given(st.text(), st.text(), st.text(max_size=50))
def test_shipped_template_output_is_wire_safe(title: str, subtitle: str, agent: str) -> None:
    """Hostile metadata rendered through the shipped irc template and the backend yields only clean lines."""
    message = Message.from_envelope({
        "topic": "org.fedoraproject.prod.bodhi.update.comment", "msg": {"agent": agent},
        "timestamp": time.time(), "msg_id": "2024-x",
    })
    meta = Meta(title=title, subtitle=subtitle, link=f"https://x.test/{agent}", icon=None, agent=agent,
                usernames=(), packages=())
    route = Route(Destination("net", "#c"), Rule("r", "rules/r.yaml"), template=None)
    rendered = RENDERER.render(IRCBackend, message, meta, route)
    bot = IRCBackend("net", IRCAccount.model_validate({"backend": "irc", "server": "irc://x", "nick": "fnbot"}))
    lines = bot.format(item("#c", rendered["line"], account="net"), "#c", "privmsg", split=True)
    for line in lines:
        assert not set(line) & {"\r", "\n", "\x00", "\x01"}
        assert len(line.encode()) <= relay_budget("PRIVMSG", "#c", "fnbot", None, None)


def test_fit_truncates_at_character_boundary() -> None:
    """Cutting a line never leaves half a character."""
    assert fit("€" * 10, 16) == ["€" * 4 + "…"]
    assert fit("short", 16) == ["short"]


# ---------------------------------------------------------------------------- recipients


async def test_private_message_reaches_the_nick(make_bot: MakeBot, listener: Listener) -> None:
    """A destination ``to: <nick>`` delivers a private message to that user."""
    bot = await make_bot()
    await bot.send(item(listener.nick, "your build finished"))
    [got] = await listener.wait_for(1, listener.nick)
    assert (got.command, got.text) == ("PRIVMSG", "your build finished")


async def test_private_message_to_absent_nick_fails_permanently(make_bot: MakeBot) -> None:
    """A message to a nick that is not online is reported (status shows it) instead of retried forever."""
    bot = await make_bot()
    with pytest.raises(PermanentFailure, match="nobody-here"):
        await bot.send(item("nobody-here", "hello"))


async def test_invalid_target_fails_permanently(make_bot: MakeBot) -> None:
    """A destination that is neither a channel nor a nick is refused before touching the server."""
    bot = await make_bot()
    with pytest.raises(PermanentFailure, match="neither a channel nor a nick"):
        await bot.send(item("#bad channel", "x"))


async def test_nick_in_use_takes_alternative_then_regains(make_bot: MakeBot, listener: Listener, ngircd: Ngircd) -> None:
    """If the nick is taken the bot still delivers under its alternative nick, and takes its nick back later."""
    channel = unique("#nicks")
    await listener.join(channel)
    nick = unique("fedbot")
    squatter = Listener(ngircd.port, nick, SERVER_PASSWORD)
    await squatter.connect()
    bot = await make_bot(nick=nick, alt_nicks=[f"{nick}-alt"])
    await bot.send(item(channel, "first"))
    [first] = await listener.wait_for(1, channel)
    assert first.sender.startswith(f"{nick}-alt!")
    await squatter.close()
    for _ in range(50):
        if bot.session.nick == nick:
            break
        await asyncio.sleep(0.1)
    await bot.send(item(channel, "second"))
    second = (await listener.wait_for(2, channel))[1]
    assert second.sender.startswith(f"{nick}!")


async def test_kicked_bot_rejoins_on_next_delivery(make_bot: MakeBot, listener: Listener) -> None:
    """A bot kicked from a channel joins again for its next line instead of failing forever."""
    channel = unique("#kick")
    await listener.join(channel)
    bot = await make_bot()
    await bot.send(item(channel, "before the kick"))
    await listener.wait_for(1, channel)
    parted = listener.expect(lambda line: f" KICK {channel} {bot.session.nick}" in line)
    listener.send(f"KICK {channel} {bot.session.nick} :testing")
    await asyncio.wait_for(parted, 5)
    await bot.send(item(channel, "after the kick"))
    texts = [m.text for m in await listener.wait_for(2, channel)]
    assert texts == ["before the kick", "after the kick"]


async def test_configured_channels_joined_on_connect(make_bot: MakeBot, listener: Listener) -> None:
    """Channels listed in the account are joined at connect, before the first message for them."""
    channel = unique("#joined")
    await listener.join(channel)
    nick = unique("fnjoin")
    joined = listener.expect(lambda line: line.startswith(f":{nick}!") and " JOIN " in line)
    await make_bot(nick=nick, channels=[channel])
    assert channel in await asyncio.wait_for(joined, 10)


async def test_lines_leave_at_the_configured_pace(make_bot: MakeBot, listener: Listener) -> None:
    """The bot never sends faster than its rate after the burst, whatever the channel count."""
    first, second = unique("#pace"), unique("#pace")
    await listener.join(first)
    await listener.join(second)
    bot = await make_bot(rate=10, burst=2)
    await bot.session.wait_ready(10)
    await bot.session.join(first)
    await bot.session.join(second)
    await asyncio.sleep(0.3)  # let the bucket refill to its burst
    started = time.monotonic()
    await asyncio.gather(*(bot.send(item(first if n % 2 else second, f"p{n}")) for n in range(12)))
    elapsed = time.monotonic() - started
    assert elapsed >= (12 - 2) / 10 * 0.9
    await listener.wait_for(6, first)
    await listener.wait_for(6, second)


async def test_channel_with_key(make_bot: MakeBot, listener: Listener, secrets: Path) -> None:
    """A keyed channel is joined with the key from its key file; a wrong key is a permanent, named failure."""
    channel = unique("#keyed")
    await listener.join(channel, modes="+k door-key")
    bot = await make_bot(channel_keys={channel: {"key_file": str(secrets / "keyed.key")}})
    await bot.send(item(channel, "behind the door"))
    [got] = await listener.wait_for(1, channel)
    assert got.text == "behind the door"
    wrong = await make_bot(channel_keys={channel: "not-the-key"})
    with pytest.raises(PermanentFailure, match="wrong channel key"):
        await wrong.send(item(channel, "let me in"))


# ---------------------------------------------------------------------------- connection


async def test_tls_with_test_certificate(make_bot: MakeBot, listener: Listener, ngircd: Ngircd, ca: trustme.CA,
                                         tmp_path: Path) -> None:
    """ircs:// verifies the server certificate against ca_file and delivers over TLS."""
    channel = unique("#tls")
    await listener.join(channel)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    bot = await make_bot(server=f"ircs://127.0.0.1:{ngircd.tls_port}", ca_file=str(ca_file))
    await bot.send(item(channel, "over tls"))
    [got] = await listener.wait_for(1, channel)
    assert got.text == "over tls"


async def test_tls_untrusted_certificate_is_refused(make_bot: MakeBot, ngircd: Ngircd,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """Without the test CA the certificate does not verify: nothing is sent and the log says why."""
    bot = await make_bot(server=f"ircs://127.0.0.1:{ngircd.tls_port}", reconnect_min=5.0, reconnect_max=5.0)
    bot.ready_wait = 2.0  # type: ignore[misc]
    with pytest.raises(TemporaryFailure, match="not connected"):
        await bot.send(item("#tls", "must not arrive"))
    assert "CERTIFICATE_VERIFY_FAILED" in caplog.text


async def test_wrong_server_password_is_a_temporary_failure(make_bot: MakeBot, tmp_path: Path) -> None:
    """A refused server password keeps deliveries queued (temporary) rather than dropping them."""
    (tmp_path / "bad.pw").write_text("wrong\n")
    bot = await make_bot(password_file=str(tmp_path / "bad.pw"), reconnect_min=5.0, reconnect_max=5.0)
    bot.ready_wait = 2.0  # type: ignore[misc]
    with pytest.raises(TemporaryFailure):
        await bot.send(item("#x", "nope"))


async def test_sasl_wrong_password_is_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A refused SASL login is logged plainly, and deliveries wait instead of vanishing."""
    (tmp_path / "wrong.pw").write_text("wrong\n")
    server = ScriptedServer(sasl_accounts={"fedbot-acct": SASL_PASSWORD}, require_sasl=True)
    await server.start()
    bot = IRCBackend("testnet", IRCAccount.model_validate({
        "backend": "irc", "server": f"irc://127.0.0.1:{server.port}", "nick": "fnbot", "reconnect_min": 5.0,
        "sasl": {"username": "fedbot-acct", "password_file": str(tmp_path / "wrong.pw")},
    }))
    bot.ready_wait = 2.0  # type: ignore[misc]
    try:
        await bot.start()
        with pytest.raises(TemporaryFailure):
            await bot.send(item("#sasl", "x"))
        assert "SASL authentication failed" in caplog.text
    finally:
        await bot.close()
        await server.close()


async def test_server_password_never_logged(make_bot: MakeBot, listener: Listener,
                                            caplog: pytest.LogCaptureFixture) -> None:
    """Even with debug logging on, the server password is nowhere in the log."""
    caplog.set_level(logging.DEBUG)
    channel = unique("#secret")
    await listener.join(channel)
    bot = await make_bot()
    await bot.send(item(channel, "hi"))
    await listener.wait_for(1, channel)
    assert "PASS" not in caplog.text or SERVER_PASSWORD not in caplog.text
    assert SERVER_PASSWORD not in caplog.text
    assert SERVER_PASSWORD not in repr(bot.irc_account)


async def test_server_restart_mid_stream(tmp_path: Path, secrets: Path) -> None:
    """After a server restart the bot reconnects and rejoins, and every line arrives exactly once."""
    server = Ngircd(tmp_path / "restart", password=SERVER_PASSWORD, throttle=False)
    server.start()
    channel = "#restart"
    bot = IRCBackend("testnet", IRCAccount.model_validate({
        "backend": "irc", "server": f"irc://127.0.0.1:{server.port}", "nick": "fnrestart", "rate": 20, "burst": 1,
        "password_file": str(secrets / "server.pw"), "reconnect_min": 0.3, "reconnect_max": 1.0,
    }))
    bot.ready_wait = 0.0  # type: ignore[misc]  # fail fast while disconnected, like a real outbox retry
    listeners = [Listener(server.port, "watcher", SERVER_PASSWORD)]
    await listeners[0].connect()
    await listeners[0].join(channel)
    await bot.start()
    await bot.session.wait_ready(10)
    sent: list[str] = []
    failures: list[str] = []
    listener_back = asyncio.Event()

    async def stream() -> None:
        for n in range(60):
            line = f"line {n:02d}"
            while True:
                try:
                    await bot.send(item(channel, line))
                    break
                except TemporaryFailure as exc:
                    # What the outbox does: the line stays queued and is retried later
                    # (here: once the second listener is in the channel to see it).
                    failures.append(exc.reason)
                    await listener_back.wait()
                    await asyncio.sleep(0.1)
            sent.append(line)

    sender = asyncio.create_task(stream())
    try:
        await listeners[0].wait_for(15, channel)
        server.restart()  # mid-stream: the listener is cut off too, a new one joins
        listeners.append(Listener(server.port, "watcher2", SERVER_PASSWORD))
        await listeners[1].connect()
        await listeners[1].join(channel)
        listener_back.set()
        await asyncio.wait_for(sender, 30)
        before = [m.text for m in listeners[0].messages(channel)]
        after = [m.text for m in listeners[1].messages(channel)]
        assert 15 <= len(before) < 60
        assert before + after == [f"line {n:02d}" for n in range(60)]
        assert failures, "the restart should have interrupted at least one send"
        assert bot.session.connects == 2
    finally:
        sender.cancel()
        await bot.close()
        for client in listeners:
            await client.close()
        server.stop()


def test_summary_line_counts_per_service_and_lag() -> None:
    """A coalesced backlog names each service's count and how far behind the bot is."""
    bot = IRCBackend("net", IRCAccount.model_validate({"backend": "irc", "server": "irc://x", "nick": "fnbot"}))
    old = time.time() - 250
    items = [item("#c", "x", service="koji", timestamp=old) for _ in range(57)]
    items += [item("#c", "y", service="bodhi", timestamp=old + 100) for _ in range(12)]
    line = bot.summarise(items)["line"]
    assert "69 messages" in line
    assert "koji: 57 more" in line and "bodhi: 12 more" in line
    assert line.index("koji") < line.index("bodhi")
    assert line.startswith("\x0313backlog:\x0f 69 messages coalesced, 4 min behind - ")


def test_account_secrets_are_not_shown(secrets: Path) -> None:
    """Channel keys and passwords never appear in the account's repr or dump (what check and status print)."""
    account = IRCAccount.model_validate({
        "backend": "irc", "server": "ircs://irc.libera.chat", "nick": "fnbot",
        "password_file": str(secrets / "server.pw"), "channel_keys": {"#a": "literal-key-55"},
    })
    shown = repr(account) + str(account.model_dump()) + repr(account.session_settings(1, 1))
    assert "literal-key-55" not in shown and SERVER_PASSWORD not in shown
    assert account.session_settings(1, 1).channel_keys == {"#a": "literal-key-55"}


# ---------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"server": "http://irc.example"}, "irc:// or ircs://"),
        ({"nick": "bad nick"}, "not a valid IRC nick"),
        ({"password_file": "/nonexistent/pw"}, "(?s)password_file.*cannot read password from /nonexistent/pw"),
        ({"channels": ["fedora"]}, "not a valid channel name"),
        ({"sasl": {"username": "u"}}, "password_file"),
    ],
)
def test_account_errors_name_the_problem(options: dict[str, Any], error: str) -> None:
    """A wrong IRC account setting is refused with a message naming what is wrong."""
    data = {"backend": "irc", "server": "ircs://irc.libera.chat:6697", "nick": "fedora-firehose"} | options
    with pytest.raises(ValidationError, match=error):
        IRCAccount.model_validate(data)


# ---------------------------------------------------------------------------- end to end


@pytest.fixture
def throttled_ngircd(tmp_path: Path) -> Iterator[Ngircd]:
    """ngircd with its default flood throttling on, as a real network would have it."""
    server = Ngircd(tmp_path / "throttled", password=SERVER_PASSWORD, throttle=True)
    server.start()
    yield server
    server.stop()


async def test_flood_of_500_reaches_channel_coalesced_without_disconnect(
    tmp_path: Path, secrets: Path, throttled_ngircd: Ngircd, endpoint: str
) -> None:
    """500 messages published at full speed through the daemon all reach the channel, individually or counted
    in a backlog line, in order, and the bot is never disconnected for flooding."""
    from fedmsg_notify.bus.envelope import build_envelope
    from fedmsg_notify.config.model import load_config
    from fedmsg_notify.daemon import Daemon
    from fedmsg_notify.delivery.coalesce import Coalescer
    from fedmsg_notify.testing import publish_all

    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "firehose.yaml").write_text(
        "rules:\n  - name: firehose\n    match: {topic: '*.bodhi.*'}\n"
        "    deliver: [{via: firehose, to: '#fedora-firehose'}]\n",
        encoding="utf-8",
    )
    config = tmp_path / "config.yaml"
    config.write_text(
        f"bus: {{endpoints: ['{endpoint}']}}\n"
        f"accounts:\n  firehose: {{backend: irc, server: 'irc://127.0.0.1:{throttled_ngircd.port}', nick: fedbot,"
        f" password_file: '{secrets / 'server.pw'}', rate: 2, burst: 5}}\n"
        f"rules: ['{rules}']\nstate: '{tmp_path / 'state.db'}'\n",
        encoding="utf-8",
    )
    channel = "#fedora-firehose"
    listener = Listener(throttled_ngircd.port, "reader", SERVER_PASSWORD)
    await listener.connect()
    await listener.join(channel)
    # A 5-second horizon instead of a minute keeps the test short; the mechanism is the same.
    daemon = Daemon(load_config(config), coalescer=Coalescer(horizon=5.0))
    ready = asyncio.Event()
    running = asyncio.create_task(daemon.run(ready))
    count = 500

    def represented() -> tuple[list[int], int]:
        single, coalesced = [], 0
        for message in listener.messages(channel):
            if match := re.search(r"(\d+) messages coalesced", message.text):
                coalesced += int(match.group(1))
            elif match := re.search(r"python-pkg(\d+)", message.text):
                single.append(int(match.group(1)))
        return single, coalesced

    try:
        await asyncio.wait_for(ready.wait(), 10)
        messages = [
            build_envelope(
                "org.fedoraproject.prod.bodhi.update.comment",
                {"comment": {"text": f"works for me {n}", "user": {"name": "ralph"},
                             "update": {"title": f"python-pkg{n:03d}-1.0-1.fc44"}}},
                i=n + 1, username="bodhi",
            )
            for n in range(count)
        ]
        await asyncio.to_thread(publish_all, endpoint, messages)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            single, coalesced = represented()
            if len(single) + coalesced >= count:
                break
            await asyncio.sleep(0.2)
        bot = daemon.handles["firehose"].backend
        assert isinstance(bot, IRCBackend)
        assert bot.session.connects == 1 and bot.session.connected
    finally:
        daemon.stop()
        await asyncio.wait_for(running, 20)
        await listener.close()
    single, coalesced = represented()
    assert len(single) + coalesced == count, (len(single), coalesced)
    assert single == sorted(single), "individual lines out of order"
    assert len(set(single)) == len(single), "a line arrived twice"
    assert coalesced > 0, "a 500-message flood at 2 lines/s must be coalesced"
    summaries = [m.text for m in listener.messages(channel) if "coalesced" in m.text]
    # The flood is seconds old: a lag under a minute is not worth a word.
    assert all("bodhi:" in text and "behind" not in text for text in summaries)
    assert any(m.text.startswith("\x03") for m in listener.messages(channel)), "service title not coloured"
    quits = [line for line in listener.raw if line.startswith(":fedbot!") and line.split(" ")[1] == "QUIT"]
    assert all("fedmsg-notify stopping" in line for line in quits), quits  # only our own goodbye at shutdown
