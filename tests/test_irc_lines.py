"""What an IRC line carries besides the rendering: the environment of non-prod messages, its age, a coloured backlog."""

from __future__ import annotations

import time

from fedmsg_notify.backend import Destination, Item
from fedmsg_notify.backends.irc import IRCAccount, IRCBackend


def bot() -> IRCBackend:
    return IRCBackend("net", IRCAccount.model_validate({"backend": "irc", "server": "irc://x", "nick": "fnbot"}))


def item(topic: str, *, timestamp: float = 0.0) -> Item:
    return Item(
        id=1, msg_id="m1", destination=Destination("net", "#c"), rule="r", topic=topic, service="wiki",
        rendered={"line": "ralph edited Messaging SIG"}, options={}, timestamp=timestamp,
    )  # fmt: skip


def test_staging_and_dev_lines_are_marked() -> None:
    [stg] = bot().format(item("org.fedoraproject.stg.wiki.article.edit"), "#c", "privmsg", split=False)
    [dev] = bot().format(item("org.fedoraproject.dev.wiki.article.edit"), "#c", "privmsg", split=False)
    [prod] = bot().format(item("org.fedoraproject.prod.wiki.article.edit"), "#c", "privmsg", split=False)
    assert stg == "\x02[stg]\x02 ralph edited Messaging SIG"
    assert dev.startswith("\x02[dev]\x02 ")
    assert prod == "ralph edited Messaging SIG"


def test_a_line_68_seconds_late_says_how_old_it_is() -> None:
    late = item("org.fedoraproject.prod.wiki.article.edit", timestamp=time.time() - 68)
    [line] = bot().format(late, "#c", "privmsg", split=False)
    assert line.endswith(" (1 min ago)")
    fresh = item("org.fedoraproject.prod.wiki.article.edit", timestamp=time.time() - 5)
    assert bot().format(fresh, "#c", "privmsg", split=False) == ["ralph edited Messaging SIG"]


def test_backlog_line_is_coloured_and_silent_about_a_trivial_lag() -> None:
    items = [item("org.fedoraproject.prod.wiki.article.edit", timestamp=time.time() - 1) for _ in range(3)]
    line = bot().summarise(items)["line"]
    assert line.startswith("\x03") and "backlog:" in line
    assert "behind" not in line
    old = [item("org.fedoraproject.prod.wiki.article.edit", timestamp=time.time() - 180) for _ in range(3)]
    assert ", 3 min behind - " in bot().summarise(old)["line"]
