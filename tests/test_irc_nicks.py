"""Nick fallback on a server with ngircd's default nick length (9): alt_nicks, then a short numbered nick, quickly."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from fedmsg_notify.backends.irc import IRCAccount, IRCBackend
from fedmsg_notify.backends.irc.nicks import NickChooser

from tests.ircserver import Ngircd


@pytest.fixture(scope="module")
def short_nicks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ngircd]:
    """ngircd as shipped: nicks of at most 9 characters, per-command throttling on."""
    server = Ngircd(tmp_path_factory.mktemp("ngircd9") / "run", max_nick_length=9)
    server.start()
    yield server
    server.stop()


async def start(server: Ngircd, **options: object) -> tuple[IRCBackend, float]:
    account = IRCAccount.model_validate(
        {"backend": "irc", "server": f"irc://127.0.0.1:{server.port}", "connect_timeout": 20, **options}
    )
    bot = IRCBackend("net", account)
    began = time.monotonic()
    await bot.start()
    await bot.session.wait_ready(20)
    return bot, time.monotonic() - began


async def test_a_too_long_nick_falls_back_to_alt_nicks(short_nicks: Ngircd) -> None:
    bot, took = await start(short_nicks, nick="fedora-firehose", alt_nicks=["fedora-notifications", "fedbot"])
    try:
        assert bot.session.nick == "fedbot"
        assert took < 4, f"registration took {took:.1f} s"
    finally:
        await bot.close()


async def test_a_too_long_nick_without_alternatives_gets_a_short_numbered_one(short_nicks: Ngircd) -> None:
    bot, took = await start(short_nicks, nick="fedora-firehose")
    try:
        assert bot.session.nick == "fedora-f1"
        assert took < 4, f"registration took {took:.1f} s"
    finally:
        await bot.close()


def test_candidates_respect_the_limit() -> None:
    chooser = NickChooser("fedora-firehose", ["toolongalternative", "fn"])
    # Refused as erroneous while longer than 9: the limit becomes 9, the long alternative is skipped.
    assert chooser.refused("fedora-firehose", erroneous=True) == "fn"
    assert chooser.refused("fn", erroneous=False) == "fedora-f1"
    assert chooser.refused("fedora-f1", erroneous=False) == "fedora-f2"
    taken = NickChooser("bot", [])
    assert [taken.refused("bot", erroneous=False), taken.refused("bot_", erroneous=False)] == ["bot_", "bot1"]
