"""The IRC backend against real services: inspircd linked to atheme (NickServ, SaslServ).

SASL PLAIN success and refusal, NickServ IDENTIFY and channel mode ``+c`` (inspircd's
blockcolor refuses formatted lines in such a channel) are checked against the real
servers of ``tests/ircservices.py``; that an account is logged in is read back from the
server's own WHOIS reply (330 "is logged in as"), not from what the bot says about itself.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from fedmsg_notify.backend import Destination, Item
from fedmsg_notify.backends.irc import IRCAccount, IRCBackend
from fedmsg_notify.render.sanitize import irc_color

from tests.ircserver import Listener
from tests.ircservices import IrcServices

_ids = itertools.count(1)


def unique(prefix: str) -> str:
    return f"{prefix}{next(_ids)}"


def item(to: str, line: str) -> Item:
    n = next(_ids)
    return Item(
        id=n, msg_id=f"msg-{n}", destination=Destination("net", to), rule="test", topic="org.test.koji.x",
        service="koji", rendered={"line": line}, options={}, timestamp=0.0,
    )


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IrcServices]:
    server = IrcServices(tmp_path_factory.mktemp("ircservices") / "run")
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def watcher(services: IrcServices) -> AsyncIterator[Listener]:
    client = Listener(services.port, unique("watcher"))
    await client.connect()
    yield client
    await client.close()


async def register(services: IrcServices, nick: str, password: str) -> None:
    """A NickServ account ``nick`` with ``password``, registered by a client of that nick."""
    client = Listener(services.port, nick)
    await client.connect()
    try:
        done = client.expect(lambda line: "is now registered" in line or ("NickServ" in line.split(" ")[0] and
                             "REGISTER" in line.upper() and "denied" in line.lower()))
        client.send(f"PRIVMSG NickServ :REGISTER {password} {nick}@example.org")
        reply = await asyncio.wait_for(done, 15)
        assert "is now registered" in reply, reply
    finally:
        await client.close()


async def logged_in_as(watcher: Listener, nick: str) -> str | None:
    """The account the server says ``nick`` is logged in to (WHOIS 330), or None."""
    account = watcher.expect(lambda line: f" 330 {watcher.nick} {nick} " in line or f" 318 {watcher.nick} {nick} " in line)
    watcher.send(f"WHOIS {nick}")
    line = await asyncio.wait_for(account, 10)
    return line.split(" ")[4] if " 330 " in line else None


def bot_for(services: IrcServices, nick: str, **options: object) -> IRCBackend:
    settings = {"backend": "irc", "server": f"irc://127.0.0.1:{services.port}", "nick": nick, "rate": 50,
                "burst": 20, "reconnect_min": 0.2, "reconnect_max": 1.0, **options}
    return IRCBackend("net", IRCAccount.model_validate(settings))


async def test_sasl_plain_login_is_accepted_by_saslserv(
    services: IrcServices, watcher: Listener, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With the right password atheme's SaslServ logs the bot in before registration; lines arrive."""
    caplog.set_level(logging.DEBUG)
    account, password = unique("fnacct"), "sasl-right-4410"
    await register(services, account, password)
    (tmp_path / "sasl.pw").write_text(password + "\n")
    channel = unique("#sasl")
    await watcher.join(channel)
    nick = unique("fnbot")
    bot = bot_for(services, nick, sasl={"username": account, "password_file": str(tmp_path / "sasl.pw")})
    try:
        await bot.start()
        await bot.send(item(channel, "authenticated hello"))
        [got] = await watcher.wait_for(1, channel)
        assert got.text == "authenticated hello" and got.sender.startswith(f"{nick}!")
        assert await logged_in_as(watcher, nick) == account
    finally:
        await bot.close()
    assert password not in caplog.text
    settings = IRCAccount.model_validate(
        {"backend": "irc", "server": "irc://x", "nick": nick, "sasl": {"username": account, "password_file": str(tmp_path / "sasl.pw")}}
    )
    assert password not in repr(settings) and password not in str(settings.model_dump())


async def test_sasl_wrong_password_is_refused_and_logged(
    services: IrcServices, watcher: Listener, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """SaslServ refuses a wrong password: the failure is logged plainly and the bot is not logged in.

    inspircd lets a client whose SASL failed register anyway, so the bot goes on
    unauthenticated and still delivers; a network that disconnects instead is the
    scripted server's case in test_backend_irc.py.
    """
    account = unique("fnacct")
    await register(services, account, "the-right-one")
    (tmp_path / "wrong.pw").write_text("the-wrong-one\n")
    nick = unique("fnbot")
    bot = bot_for(services, nick, sasl={"username": account, "password_file": str(tmp_path / "wrong.pw")})
    channel = unique("#nosasl")
    await watcher.join(channel)
    try:
        await bot.start()
        await bot.send(item(channel, "unauthenticated hello"))
        [got] = await watcher.wait_for(1, channel)
        assert got.text == "unauthenticated hello"
        assert "SASL authentication failed" in caplog.text
        assert await logged_in_as(watcher, nick) is None
    finally:
        await bot.close()
    assert "the-wrong-one" not in caplog.text


async def test_nickserv_identify_logs_the_bot_in(
    services: IrcServices, watcher: Listener, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Without SASL the bot IDENTIFYs to NickServ: the server then reports its nick logged in to that account."""
    caplog.set_level(logging.DEBUG)
    nick, password = unique("fnbot"), "ns-sekrit-99"
    await register(services, nick, password)
    (tmp_path / "ns.pw").write_text(password + "\n")
    bot = bot_for(services, nick, nickserv_password_file=str(tmp_path / "ns.pw"))
    channel = unique("#ns")
    await watcher.join(channel)
    try:
        await bot.start()
        await bot.send(item(channel, "identified"))
        await watcher.wait_for(1, channel)
        deadline = asyncio.get_running_loop().time() + 15
        while (account := await logged_in_as(watcher, nick)) is None:
            assert asyncio.get_running_loop().time() < deadline, "NickServ never logged the bot in"
            await asyncio.sleep(0.1)
        assert account == nick
    finally:
        await bot.close()
    assert password not in caplog.text


async def test_colours_stripped_in_a_plus_c_channel(services: IrcServices, watcher: Listener) -> None:
    """inspircd refuses formatted lines in a +c channel; the bot sends them plain there and coloured elsewhere."""
    plain, colourful = unique("#plain"), unique("#colourful")
    await watcher.join(plain, modes="+c")
    await watcher.join(colourful)
    bot = bot_for(services, unique("fnbot"))
    line = f"{irc_color('koji', 'koji')} \x02build\x02 of rpm-4.19 completed"
    try:
        await bot.start()
        await bot.send(item(plain, line))
        await bot.send(item(colourful, line))
        [coloured] = await watcher.wait_for(1, colourful)
        assert coloured.text == line
        # Same bot, same queue order: the +c line was sent first, so it is here by now if at all.
        assert [m.text for m in await watcher.wait_for(1, plain)] == ["koji build of rpm-4.19 completed"]
    finally:
        await bot.close()


async def test_colours_dropped_once_an_operator_sets_plus_c(services: IrcServices, watcher: Listener) -> None:
    """When +c is set while the bot is in the channel, its next lines come plain (none refused); -c restores colour."""
    channel = unique("#chan")
    await watcher.join(channel)
    bot = bot_for(services, unique("fnbot"))
    line = f"{irc_color('copr', 'copr')} build started"
    try:
        await bot.start()
        await bot.send(item(channel, line))
        await watcher.wait_for(1, channel)
        watcher.send(f"MODE {channel} +c")
        for _ in range(150):
            if not bot.session.colours_allowed(channel):
                break
            await asyncio.sleep(0.1)
        await bot.send(item(channel, line))
        await watcher.wait_for(2, channel)
        watcher.send(f"MODE {channel} -c")
        for _ in range(150):
            if bot.session.colours_allowed(channel):
                break
            await asyncio.sleep(0.1)
        await bot.send(item(channel, line))
        got = await watcher.wait_for(3, channel)
        assert [m.text for m in got] == [line, "copr build started", line]
    finally:
        await bot.close()
