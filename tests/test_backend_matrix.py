"""The Matrix backend against a real Synapse (from PyPI), read by a second user.

One homeserver serves the whole module (it takes seconds to start); each test makes
its own rooms. Synapse's default message rate limits are on throughout.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fedmsg_notify.backend import Destination, Item, PermanentFailure, TemporaryFailure
from fedmsg_notify.backends.matrix import MatrixAccount, MatrixBackend
from fedmsg_notify.bus.envelope import Message
from fedmsg_notify.matching.rules import Route, Rule
from fedmsg_notify.meta.engine import Meta
from fedmsg_notify.render.renderer import Renderer
from pydantic import ValidationError

from tests.synapseserver import Reader, Synapse, synapse_python

# Skipped only outside CI: there scripts/test.sh has made .venv-synapse, and a missing one must fail.
pytestmark = pytest.mark.skipif(synapse_python() is None and not os.environ.get("CI"),
                                reason="no .venv-synapse: run scripts/test.sh")

RENDERER = Renderer([])
_ids = itertools.count(1)
BOT = "@fedbot:localhost"
MakeBot = Callable[..., Awaitable[MatrixBackend]]


@pytest.fixture(scope="module")
def synapse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Synapse]:
    server = Synapse(tmp_path_factory.mktemp("synapse"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tokens(synapse: Synapse, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("tokens")
    files = {}
    for name in ("fedbot", "reader"):
        path = folder / f"{name}.token"
        path.write_text(synapse.register(name) + "\n", encoding="utf-8")
        files[name] = path
    return files


@pytest.fixture(scope="module")
def reader(synapse: Synapse, tokens: dict[str, Path]) -> Iterator[Reader]:
    client = Reader(synapse, tokens["reader"].read_text().strip(), "@reader:localhost")
    yield client
    client.close()


@pytest.fixture
async def make_bot(synapse: Synapse, tokens: dict[str, Path]) -> AsyncIterator[MakeBot]:
    bots: list[MatrixBackend] = []

    async def make(**options: Any) -> MatrixBackend:
        account = MatrixAccount.model_validate(
            {"backend": "matrix", "homeserver": synapse.url, "user_id": BOT, "token_file": str(tokens["fedbot"])}
            | options)
        bot = MatrixBackend("chat", account)
        await bot.start()
        bots.append(bot)
        return bot

    yield make
    for bot in bots:
        await bot.close()


def item(to: str, body: str, *, html: str = "", msg_id: str | None = None, service: str = "bodhi",
         options: dict[str, Any] | None = None) -> Item:
    n = next(_ids)
    return Item(id=n, msg_id=msg_id or f"msg-{n}", destination=Destination("chat", to), rule="test",
                topic=f"org.fedoraproject.prod.{service}.update.comment", service=service,
                rendered={"body": body, "html": html}, options=options or {}, timestamp=time.time())


def rendered(subtitle: str, link: str | None, title: str = "bodhi") -> dict[str, str]:
    message = Message.from_envelope({"topic": "org.fedoraproject.prod.bodhi.update.comment", "msg": {},
                                     "timestamp": time.time(), "msg_id": f"2026-x{next(_ids)}"})
    meta = Meta(title=title, subtitle=subtitle, link=link, icon=None, agent=None, usernames=(), packages=())
    route = Route(Destination("chat", "#r:localhost"), Rule("r", "rules/r.yaml"), template=None)
    return dict(RENDERER.render(MatrixBackend, message, meta, route))


async def deliver(bot: MatrixBackend, delivery: Item) -> None:
    """What the outbox does with a temporary failure: wait as long as the server asked, then send again.

    Synapse's default message limits are on, and every test's bot is the same user, so
    a test that follows others may meet a 429 on its first sends.
    """
    deadline = time.monotonic() + 120
    while True:
        try:
            await bot.send(delivery)
            return
        except TemporaryFailure as exc:
            if "M_LIMIT_EXCEEDED" not in exc.reason or time.monotonic() > deadline:
                raise
            await asyncio.sleep(exc.retry_after or 1.0)


def room_name(prefix: str) -> str:
    return f"{prefix}{next(_ids)}"


async def test_notice_with_colour_and_link_reaches_room_by_alias(make_bot: MakeBot, reader: Reader) -> None:
    """An alias destination is joined and resolved; the post is an m.notice with a plain and an HTML body."""
    alias = room_name("firehose")
    room = reader.create_room(alias)
    bot = await make_bot()
    parts = rendered("ralph commented on fedmsg-1.0", "https://bodhi.fedoraproject.org/updates/FEDORA-1")
    one = item(f"#{alias}:localhost", parts["body"], html=parts["html"])
    await deliver(bot, one)
    (event,) = reader.messages(room)
    content = event["content"]
    assert event["sender"] == BOT
    assert content["msgtype"] == "m.notice"
    assert content["body"] == "bodhi: ralph commented on fedmsg-1.0 https://bodhi.fedoraproject.org/updates/FEDORA-1"
    assert content["format"] == "org.matrix.custom.html"
    assert re.fullmatch(r'<font color="#[0-9a-f]{6}"><b>bodhi</b></font> ralph commented on fedmsg-1\.0 '
                        r'<a href="https://bodhi\.fedoraproject\.org/updates/FEDORA-1">[^<]+</a>',
                        content["formatted_body"]), content["formatted_body"]


async def test_msgtype_text_when_configured(make_bot: MakeBot, reader: Reader) -> None:
    room = reader.create_room()
    bot = await make_bot(msgtype="m.text")
    await deliver(bot, item(room, "account default"))
    await deliver(bot, item(room, "destination says notice", options={"msgtype": "m.notice"}))
    assert [e["content"]["msgtype"] for e in reader.messages(room)] == ["m.text", "m.notice"]


async def test_html_injection_arrives_as_text(make_bot: MakeBot, reader: Reader) -> None:
    """<script> and javascript: links in message content reach the room as text, never as markup."""
    room = reader.create_room()
    bot = await make_bot()
    parts = rendered('<script>alert(1)</script> <a href="javascript:alert(2)">x</a>\x07\x1b[31m',
                     "javascript:alert(3)", title="<b>bold</b>")
    await deliver(bot, item(room, parts["body"], html=parts["html"]))
    (event,) = reader.messages(room)
    formatted = event["content"]["formatted_body"]
    assert "<script" not in formatted and "<a href=\"javascript" not in formatted and "<b>bold" not in formatted
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in formatted
    assert "javascript:alert(3)" in formatted  # shown as text, not made a link
    assert formatted.count("<a ") == 0
    body = event["content"]["body"]
    assert "<script>alert(1)</script>" in body  # the plain body is text by definition
    assert not re.search(r"[\x00-\x09\x0b-\x1f\x7f]", body)


async def test_same_delivery_retried_after_crash_appears_once(make_bot: MakeBot, reader: Reader) -> None:
    """A second daemon sending the same delivery (same transaction id, same token) adds no event."""
    room = reader.create_room()
    first = await make_bot()
    delivery = item(room, "only once", msg_id="2026-crash-1")
    await deliver(first, delivery)
    await first.close()  # the "crash": the outbox never marked it sent
    second = await make_bot()
    await deliver(second, delivery)
    await deliver(second, item(room, "the next one"))
    assert [e["content"]["body"] for e in reader.messages(room)] == ["only once", "the next one"]


async def test_direct_message_room_created_once(make_bot: MakeBot, reader: Reader) -> None:
    """A user destination gets one direct room (invited, recorded in m.direct) reused by later sends."""
    bot = await make_bot()
    await deliver(bot, item(reader.user_id, "hello ralph"))
    (room,) = [r for r in reader.invites()]
    reader.join(room)
    again = await make_bot()  # a restart: the room is found in m.direct, not created again
    await deliver(again, item(reader.user_id, "second"))
    assert [e["content"]["body"] for e in reader.messages(room)] == ["hello ralph", "second"]


async def test_room_the_bot_cannot_post_in_fails_permanently(make_bot: MakeBot, reader: Reader) -> None:
    room = reader.create_room(power_level_content_override={"events_default": 50})
    bot = await make_bot()
    with pytest.raises(PermanentFailure, match="M_FORBIDDEN"):
        await deliver(bot, item(room, "not allowed"))


async def test_unknown_alias_fails_permanently(make_bot: MakeBot) -> None:
    bot = await make_bot()
    with pytest.raises(PermanentFailure, match="#nowhere:localhost"):
        await deliver(bot, item("#nowhere:localhost", "lost?"))


async def test_encrypted_room_is_refused_naming_the_room(make_bot: MakeBot, reader: Reader) -> None:
    room = reader.create_room(initial_state=[{"type": "m.room.encryption", "state_key": "",
                                              "content": {"algorithm": "m.megolm.v1.aes-sha2"}}])
    bot = await make_bot()
    with pytest.raises(PermanentFailure, match=re.escape(room) + ".*encrypted"):
        await deliver(bot, item(room, "secret"))
    assert reader.messages(room) == []


async def test_password_login_once_token_cached_never_logged(
    synapse: Synapse, reader: Reader, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """password_file logs in once with the stable device id; the token is cached (0600) and reused."""
    synapse.register("pwbot", "pw-secret-5521")
    (tmp_path / "pw").write_text("pw-secret-5521\n", encoding="utf-8")
    options = {"backend": "matrix", "homeserver": synapse.url, "user_id": "@pwbot:localhost",
               "password_file": str(tmp_path / "pw"), "state_dir": str(tmp_path / "state")}
    room = reader.create_room()
    caplog.set_level(logging.DEBUG)
    first = MatrixBackend("pw", MatrixAccount.model_validate(options))
    await first.start()
    await deliver(first, item(room, "after login"))
    await first.close()
    cache = tmp_path / "state" / "matrix-pw.token"
    token = json.loads(cache.read_text())["access_token"]
    assert cache.stat().st_mode & 0o777 == 0o600
    second = MatrixBackend("pw", MatrixAccount.model_validate(options))
    await second.start()
    assert second.session.client is not None and second.session.client.api.token == token  # no second login
    await deliver(second, item(room, "cached token"))
    await second.close()
    assert [e["content"]["body"] for e in reader.messages(room)] == ["after login", "cached token"]
    assert caplog.text.count("logged in as @pwbot:localhost (device FEDMSGNOTIFY)") == 1
    assert token not in caplog.text and "pw-secret-5521" not in caplog.text


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"homeserver": "http://matrix.example.org"}, "must use https"),
        ({"user_id": "fedbot"}, "@bot:server"),
        ({"token_file": None}, "exactly one of token_file"),
        ({"password_file": "/x/pw"}, "exactly one of token_file"),
        ({"token_file": "relative/token"}, "absolute path"),
        ({"msgtype": "m.emote"}, "msgtype"),
    ],
)
def test_account_errors_name_the_problem(options: dict[str, Any], error: str) -> None:
    data = {"backend": "matrix", "homeserver": "https://fedora.ems.host", "user_id": BOT,
            "token_file": "/etc/fedmsg-notify/matrix.token"} | options
    with pytest.raises(ValidationError, match=error):
        MatrixAccount.model_validate({k: v for k, v in data.items() if v is not None})


def test_bad_destination_is_permanent() -> None:
    bot = MatrixBackend("chat", MatrixAccount.model_validate(
        {"backend": "matrix", "homeserver": "https://x.org", "user_id": BOT, "token_file": "/t"}))
    with pytest.raises(PermanentFailure, match="not a Matrix room alias"):
        bot._target(item("fedora-firehose", "x"))


def test_summary_is_the_irc_backlog_line_in_both_parts() -> None:
    bot = MatrixBackend("chat", MatrixAccount.model_validate(
        {"backend": "matrix", "homeserver": "https://x.org", "user_id": BOT, "token_file": "/t"}))
    parts = bot.summarise([item("#r:x", "a", service="bodhi") for _ in range(3)] + [item("#r:x", "<b>", service="koji")])
    assert parts["body"].startswith("backlog: 4 messages coalesced") and "bodhi: 3 more (update.comment)" in parts["body"]
    assert parts["html"] == f"<em>{parts['body']}</em>"


def test_shipped_matrix_firehose_rule_loads(tmp_path: Path) -> None:
    """rules/matrix/firehose.yaml, the Matrix twin of the firehose example, loads with a matrix account."""
    from fedmsg_notify.config.model import load_config, shipped_rules_dir
    from fedmsg_notify.matching.rules import RuleSet

    config = tmp_path / "c.yaml"
    config.write_text(
        "accounts:\n  fedora-chat: {backend: matrix, homeserver: 'https://fedora.ems.host',"
        " user_id: '@fedora-firehose:fedora.im', token_file: /etc/fedmsg-notify/matrix.token}\n"
        f"rules: ['{shipped_rules_dir() / 'matrix'}']\nstate: '{tmp_path / 's.db'}'\n", encoding="utf-8")
    cfg = load_config(config)
    (rule,) = RuleSet.load(cfg.rule_paths, cfg.accounts).rules
    assert rule.routes[0].destination == Destination("fedora-chat", "#fedora-firehose:fedora.im")


async def test_digest_is_one_message_with_a_line_per_entry(make_bot: MakeBot, reader: Reader) -> None:
    entries = [{"message": {}, "topic": "org.fedoraproject.prod.bodhi.update.comment", "service": "bodhi",
                "meta": {"title": "bodhi", "subtitle": f"ralph pushed <i>pkg{n}</i>"}, "rendered": {}}
               for n in range(3)]
    route = Route(Destination("chat", "#r:localhost"), Rule("digest", "rules.yaml"))
    parts = RENDERER.render_digest(MatrixBackend, entries, route, 5)
    assert parts["body"].splitlines() == ["5 messages:", *(f"• bodhi: ralph pushed <i>pkg{n}</i>" for n in range(3)),
                                          "…and 2 more"]
    room = reader.create_room()
    bot = await make_bot()
    await deliver(bot, item(room, parts["body"], html=parts["html"], msg_id="digest:7"))
    (event,) = reader.messages(room)
    assert "<li><font color=" in event["content"]["formatted_body"]
    assert "&lt;i&gt;pkg0&lt;/i&gt;" in event["content"]["formatted_body"]


async def test_revoked_token_is_temporary_and_keeps_the_delivery(
    synapse: Synapse, reader: Reader, tmp_path: Path
) -> None:
    """A logged-out token makes sends fail temporarily (queued, not lost) until the token file is fixed."""
    token = synapse.register("revoked")
    (tmp_path / "t").write_text(token, encoding="utf-8")
    bot = MatrixBackend("rv", MatrixAccount.model_validate(
        {"backend": "matrix", "homeserver": synapse.url, "user_id": "@revoked:localhost",
         "token_file": str(tmp_path / "t")}))
    await bot.start()
    room = reader.create_room()
    import httpx

    httpx.post(f"{synapse.url}/_matrix/client/v3/logout", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    delivery = item(room, "kept")
    with pytest.raises(TemporaryFailure, match="M_UNKNOWN_TOKEN"):
        await bot.send(delivery)
    login = httpx.post(f"{synapse.url}/_matrix/client/v3/login", timeout=10, json={
        "type": "m.login.password", "identifier": {"type": "m.id.user", "user": "revoked"},
        "password": "pw-for-tests"})
    (tmp_path / "t").write_text(login.json()["access_token"], encoding="utf-8")  # the operator's fix
    await deliver(bot, delivery)  # the same backend: it re-read the token file
    await bot.close()
    assert [e["content"]["body"] for e in reader.messages(room)] == ["kept"]
