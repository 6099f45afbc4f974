"""The desktop backend against a real private D-Bus session bus and a notification server on it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from fedmsg_notify.backend import Destination, Item, PermanentFailure, TemporaryFailure
from fedmsg_notify.backends import backend_class
from fedmsg_notify.backends.desktop import (
    DesktopAccount,
    DesktopBackend,
    popup_icon,
    session_bus_address,
)
from fedmsg_notify.config.model import load_config
from fedmsg_notify.config.yaml_positions import ProblemsError

from tests.dbusserver import BUS_NAME, NotificationServer, Notified, SessionBus

BUILD = "http://koji.fedoraproject.org/koji/buildinfo?buildID="
UPDATE = "https://bodhi.fedoraproject.org/updates/FEDORA-2026-0123456789"


@pytest.fixture
def bus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SessionBus]:
    # A short path: unix socket paths are limited to 108 bytes.
    with SessionBus(tmp_path / "dbus") as running:
        monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", running.address)
        yield running


@pytest.fixture
def server(bus: SessionBus) -> Iterator[NotificationServer]:
    with NotificationServer(bus) as running:
        yield running


@pytest.fixture
async def make_backend() -> AsyncIterator[Any]:
    made: list[DesktopBackend] = []

    async def make(start: bool = True, **options: Any) -> DesktopBackend:
        backend = DesktopBackend("desktop", DesktopAccount.model_validate({"backend": "desktop", **options}))
        made.append(backend)
        if start:
            await backend.start()
        return backend

    yield make
    for backend in made:
        await backend.close()


def item(summary: str, body: str = "", *, n: int = 1, link: str | None = None, service: str = "buildsys",
         **extra: Any) -> Item:
    fields: dict[str, Any] = {
        "id": n,
        "msg_id": f"2026-{n}",
        "destination": Destination("desktop"),
        "rule": "my koji builds",
        "topic": f"org.fedoraproject.prod.{service}.build.state.change",
        "service": service,
        "rendered": {"summary": summary, "body": body},
        "meta": {"link": link if link is not None else f"{BUILD}{n}",
                 "icon": f"https://apps.fedoraproject.org/img/icons/{'koji' if service == 'buildsys' else service}.png"},
    }
    fields.update(extra)
    return Item(**fields)


# --- what a popup looks like ----------------------------------------------------------------


async def test_popup_has_summary_body_icon_urgency_expiry_and_open_action(
    server: NotificationServer, make_backend: Any
) -> None:
    """A build popup shows its sentence, details, the koji icon, the rule's urgency and expiry, and an Open button."""
    backend = await make_backend(expire_ms=8000, app_name="fedmsg-notify")
    await backend.send(item("ralph's foo-1.0-1.fc44 build failed", "buildsys: foo", options={"urgency": "critical"}))
    await backend.send(item("ralph's bar-2.0-1.fc44 build completed", "buildsys: bar", n=2,
                            options={"urgency": "low", "expire_ms": 3000}))
    await backend.send(item("a third one", n=3))

    first, second, third = server.notifies()
    assert first.app_name == "fedmsg-notify" and first.replaces_id == 0
    assert first.summary == "ralph's foo-1.0-1.fc44 build failed"
    assert first.body == "buildsys: foo"
    assert first.icon == "applications-engineering"
    assert first.urgency == 2 and first.expire_ms == 8000
    assert first.actions == ["default", "Open", "open", "Open"]
    assert (second.urgency, second.expire_ms) == (0, 3000)
    assert (third.urgency, third.expire_ms) == (1, 8000)  # defaults: normal, the account's expiry


async def test_body_is_escaped_for_markup_servers_and_sent_as_is_to_others(
    bus: SessionBus, make_backend: Any
) -> None:
    """A `<b>` or `&` in a message shows as written: escaped where the server parses markup, untouched elsewhere."""
    hostile = "<b>bold</b> & <a href='http://evil'>x</a>"
    shown: dict[str, Notified] = {}
    for name, caps in (("markup", ("body", "body-markup")), ("plain", ("body",)),
                       ("links", ("body", "body-markup", "body-hyperlinks"))):
        with NotificationServer(bus, caps) as server:
            backend = await make_backend()
            await backend.send(item("<i>summary</i>", hostile, link=UPDATE))
            await backend.close()
            (shown[name],) = server.notifies()

    assert shown["markup"].body == f"&lt;b&gt;bold&lt;/b&gt; &amp; &lt;a href='http://evil'&gt;x&lt;/a&gt;\n{UPDATE}"
    assert shown["plain"].body == f"{hostile}\n{UPDATE}"
    # Without actions the link is in the body, clickable where the server makes links.
    assert shown["links"].body.endswith(f'\n<a href="{UPDATE}">{UPDATE}</a>')
    # The summary is never markup (spec), so it is never escaped either.
    assert {n.summary for n in shown.values()} == {"<i>summary</i>"}
    assert all(n.actions == [] for n in shown.values())


async def test_open_action_opens_the_link_and_bus_links_that_are_not_web_get_none(
    server: NotificationServer, make_backend: Any, tmp_path: Path
) -> None:
    """Clicking a popup opens its web link; a `javascript:` link from the bus gets no Open button at all."""
    opened = tmp_path / "opened"
    opener = tmp_path / "opener.sh"
    opener.write_text(f'#!/bin/sh\nprintf "%s\\n" "$1" >> {opened}\n', encoding="utf-8")
    opener.chmod(0o755)
    backend = await make_backend(open_with=[str(opener)])
    await backend.send(item("update pushed", link=UPDATE, service="bodhi"))
    await backend.send(item("evil", n=2, link="javascript:alert(1)"))

    await backend.send(item("nul", n=3, link="http://\x00.example.org/"))
    first, evil, nul = server.notifies()
    assert evil.actions == [] and "javascript" not in evil.body
    assert nul.actions == [] and "example.org" not in nul.body
    server.emit("ActionInvoked", "us", 1, "default")
    for _ in range(200):
        if opened.exists():
            break
        await asyncio.sleep(0.02)
    assert opened.read_text(encoding="utf-8") == f"{UPDATE}\n"
    assert first.icon == "system-software-update"


async def test_newer_message_about_the_same_object_replaces_its_open_popup(
    server: NotificationServer, make_backend: Any
) -> None:
    """Build started then completed is one popup updated in place, until the user closes it."""
    backend = await make_backend()
    await backend.send(item("foo build started", n=1, link=f"{BUILD}7"))
    await backend.send(item("foo build completed", n=2, link=f"{BUILD}7"))
    await backend.send(item("bar build started", n=3, link=f"{BUILD}8"))
    server.close_popup(1)
    await backend.send(item("foo build tagged", n=4, link=f"{BUILD}7"))

    calls = server.notifies()
    assert [(c.summary, c.replaces_id) for c in calls] == [
        ("foo build started", 0),
        ("foo build completed", 1),
        ("bar build started", 0),
        ("foo build tagged", 0),  # closed: a fresh popup, not a replacement of a gone one
    ]


async def test_open_popups_never_exceed_max_open_and_the_rest_is_counted_in_one(
    server: NotificationServer, make_backend: Any
) -> None:
    """With room for 3 popups, 6 builds show 2 popups and one "4 new koji messages"; a closed popup frees a slot."""
    backend = await make_backend(max_open=3)
    for n in range(1, 7):
        await backend.send(item(f"build {n} done", n=n))

    calls = server.notifies()
    assert [c.replaces_id for c in calls] == [0, 0, 0, 3, 3, 3]
    assert [c.summary for c in calls[2:]] == [
        "1 new koji message", "2 new koji messages", "3 new koji messages", "4 new koji messages"
    ]
    assert calls[-1].body == "• build 6 done\n• build 5 done\n• build 4 done\n• build 3 done"
    assert calls[-1].actions == []
    assert len({c.replaces_id or i + 1 for i, c in enumerate(calls)}) == 3  # popups 1, 2, 3

    server.close_popup(2)
    await backend.send(item("build 7 done", n=7))
    await backend.send(item("build 8 done", n=8))
    last, overflow = server.notifies()[-2:]
    assert (last.summary, last.replaces_id) == ("build 7 done", 0)
    assert (overflow.summary, overflow.replaces_id) == ("5 new koji messages", 3)


def test_summarise_names_the_count_per_service() -> None:
    """A flood reads "23 new koji messages" with the latest lines; mixed floods count per service."""
    backend = DesktopBackend("desktop", DesktopAccount(backend="desktop"))
    koji = [item(f"ralph's pkg{n} build failed", n=n) for n in range(23)]
    parts = backend.summarise(koji)
    assert parts["summary"] == "23 new koji messages"
    assert parts["body"].splitlines() == [
        "• ralph's pkg22 build failed", "• ralph's pkg21 build failed", "• ralph's pkg20 build failed",
        "• ralph's pkg19 build failed", "• ralph's pkg18 build failed", "…and 18 more",
    ]
    mixed = [*koji[:3], item("3 new bodhi messages", service="bodhi", count=3), item("\x1b[31mx\nnew line", n=9)]
    parts = backend.summarise(mixed)
    assert parts["summary"] == "7 new messages (koji 4, bodhi 3)"
    assert "\x1b" not in parts["body"] and "• [31mx new line" in parts["body"]
    # Every message is listed or counted: the earlier summary's line stands for its 3.
    assert "more" not in parts["body"] and len(parts["body"].splitlines()) == 5


def test_icons_are_theme_names_or_local_files_never_urls(tmp_path: Path) -> None:
    """Service icons become icon-theme names or file:// paths a notification server can load."""
    assert popup_icon("https://apps.fedoraproject.org/img/icons/bodhi.png", "bodhi") == "system-software-update"
    assert popup_icon("dialog-error", "bodhi") == "dialog-error"
    assert popup_icon("/usr/share/icons/x.png", "bodhi") == "file:///usr/share/icons/x.png"
    generic = popup_icon("https://example.org/unknown.png", "unheard-of")
    assert generic.startswith("file://") and generic.endswith("/icons/fedmsg-notify.svg")
    assert Path(generic.removeprefix("file://")).is_file()
    custom = DesktopAccount.model_validate({"backend": "desktop", "icons": {"bodhi": str(tmp_path / "b.png")}})
    assert popup_icon("https://x/bodhi.png", "bodhi", custom.icons) == (tmp_path / "b.png").as_uri()


# --- no session, no server ------------------------------------------------------------------


async def test_no_bus_and_no_server_are_temporary_failures_that_say_which(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_backend: Any
) -> None:
    """Logged out or without a notification daemon, the user reads why nothing popped up, and it is retried."""
    absent = SessionBus(tmp_path / "gone")
    monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", absent.address)
    backend = await make_backend(start=False)
    with pytest.raises(TemporaryFailure, match=f"no D-Bus session bus at {absent.address}"):
        await backend.start()
    with absent:
        with pytest.raises(TemporaryFailure, match="no notification server on the session bus"):
            await backend.send(item("x"))
        with NotificationServer(absent):
            await backend.send(item("now it shows"))
    monkeypatch.delenv("DBUS_SESSION_BUS_ADDRESS")
    assert session_bus_address({"XDG_RUNTIME_DIR": "/run/user/1000"}) == "unix:path=/run/user/1000/bus"
    assert session_bus_address({}) is None


async def test_a_server_that_cannot_start_is_no_server_and_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_backend: Any
) -> None:
    """An installed notification daemon that D-Bus cannot start (no display at login) reads as no server."""
    services = tmp_path / "services"
    services.mkdir()
    (services / "notify.service").write_text(
        f"[D-BUS Service]\nName={BUS_NAME}\nExec=/bin/sh -c 'kill -TRAP $$'\n", encoding="utf-8"
    )
    with SessionBus(tmp_path / "bus", servicedir=services) as bus:
        monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", bus.address)
        backend = await make_backend(start=False)  # start() itself would meet the failing server
        with pytest.raises(TemporaryFailure, match=f"no notification server on the session bus at {bus.address} "
                                                   rf"\({BUS_NAME} could not be started: .*signal"):
            await backend.send(item("x"))
        (services / "notify.service").unlink()
        with NotificationServer(bus) as server:
            await backend.send(item("now it shows"))
            assert len(server.notifies()) == 1


async def test_bus_restart_is_noticed_and_the_next_popup_reconnects(
    bus: SessionBus, make_backend: Any
) -> None:
    """After the session bus goes away (logout) and comes back, popups show again without a daemon restart."""
    with NotificationServer(bus) as server:
        backend = await make_backend()
        await backend.send(item("before"))
        assert len(server.notifies()) == 1
    bus.stop()
    with pytest.raises(TemporaryFailure, match=rf"no D-Bus session bus at {bus.address}|showing a popup on {bus.address} failed"):
        await backend.send(item("while away", n=2))
    bus.start()
    with NotificationServer(bus) as server:
        await backend.send(item("after", n=3))
        assert [c.summary for c in server.notifies()] == ["after"]


async def test_restarted_notification_server_gets_the_next_popups_and_a_fresh_cap(
    bus: SessionBus, make_backend: Any
) -> None:
    """When the notification daemon restarts (the shell crashed), popups go to the new one and the old ones stop counting."""
    with NotificationServer(bus) as server:
        backend = await make_backend(max_open=2)
        await backend.send(item("one", n=1))
        await backend.send(item("two", n=2))
        assert [c.summary for c in server.notifies()] == ["one", "1 new koji message"]
    with NotificationServer(bus, ("body",)) as server:
        await backend.send(item("three <b>", n=3, link=f"{BUILD}1"))
        (call,) = server.notifies()
    # A fresh popup (the old ids mean nothing to the new server), for a server without markup.
    assert (call.summary, call.replaces_id, call.body) == ("three <b>", 0, f"{BUILD}1")


async def test_a_popup_the_server_refuses_is_a_permanent_failure_with_its_reason(
    server: NotificationServer, make_backend: Any
) -> None:
    """A server rejecting the call itself (bad arguments) is recorded with its words rather than retried forever."""
    backend = await make_backend()
    server.reject_notify("org.freedesktop.DBus.Error.InvalidArgs", "icon is not a valid URI")
    with pytest.raises(PermanentFailure, match="icon is not a valid URI"):
        await backend.send(item("refused"))


async def test_invalid_stored_options_show_a_normal_popup(server: NotificationServer, make_backend: Any) -> None:
    """A delivery queued under an older config with a bad urgency still pops up, with the defaults."""
    backend = await make_backend()
    await backend.send(item("queued long ago", options={"urgency": "urgent"}))
    (call,) = server.notifies()
    assert (call.summary, call.urgency) == ("queued long ago", 1)


def test_module_imports_without_notify2_and_start_names_the_extra(tmp_path: Path) -> None:
    """Without notify2/dbus-python the config still validates and the backend says which extra to install."""
    config = tmp_path / "config.yaml"
    config.write_text("accounts:\n  desktop: {backend: desktop, max_open: 5}\n", encoding="utf-8")
    script = textwrap.dedent(
        f"""
        import asyncio, sys
        sys.modules["dbus"] = None
        sys.modules["notify2"] = None
        from fedmsg_notify.config.model import load_config
        from fedmsg_notify.backend import BackendUnavailable
        account = load_config({str(config)!r}).accounts["desktop"]
        backend = account.backend("desktop", account.options)
        try:
            asyncio.run(backend.start())
        except BackendUnavailable as exc:
            print("unavailable:", exc)
        else:
            print("started without notify2")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONWARNINGS": "error"})
    assert result.returncode == 0, result.stderr
    assert "pip install '.[desktop]'" in result.stdout


# --- configuration --------------------------------------------------------------------------


def test_registered_as_builtin_backend() -> None:
    """`backend: desktop` in a config finds this backend."""
    assert backend_class("desktop") is DesktopBackend


def test_config_errors_name_the_place(tmp_path: Path) -> None:
    """A cap below 2, a relative icon file, a typo'd key and a bad urgency in a rule are reported with positions."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "rules:\n  - name: r\n    match: {topic: '*'}\n    deliver: [{via: desktop, urgency: urgent}]\n",
        encoding="utf-8",
    )
    config = tmp_path / "config.yaml"
    config.write_text(
        textwrap.dedent(
            f"""\
            accounts:
              desktop:
                backend: desktop
                max_open: 1
                icons: {{bodhi: 'relative/bodhi.png'}}
                expire_msec: 5
            rules: ['{rules}']
            """
        ),
        encoding="utf-8",
    )
    with pytest.raises(ProblemsError) as problems:
        load_config(config)
    text = str(problems.value)
    assert "config.yaml:4:" in text and "max_open" in text
    assert "icon 'relative/bodhi.png' for 'bodhi' must be an icon name or an absolute file path" in text
    assert "unknown key 'expire_msec'" in text and "did you mean 'expire_ms'" in text

    config.write_text(f"accounts:\n  desktop: {{backend: desktop}}\nrules: ['{rules}']\n", encoding="utf-8")
    from fedmsg_notify.matching.rules import RuleSet

    loaded = load_config(config)
    with pytest.raises(ProblemsError) as bad_rule:
        RuleSet.load(loaded.rule_paths, loaded.accounts)
    assert "rules.yaml:4:" in str(bad_rule.value) and "urgency" in str(bad_rule.value)


# --- end to end through the daemon ----------------------------------------------------------


def write_config(tmp_path: Path, endpoint: str, account: str = "") -> Path:
    rules = tmp_path / "rules"
    rules.mkdir(exist_ok=True)
    (rules / "desktop.yaml").write_text(
        "rules:\n"
        "  - name: my koji builds\n"
        "    match: {topic: '*.buildsys.build.state.change'}\n"
        "    deliver: [{via: desktop, urgency: critical}]\n",
        encoding="utf-8",
    )
    config = tmp_path / "config.yaml"
    config.write_text(
        textwrap.dedent(
            f"""\
            bus: {{endpoints: ['{endpoint}']}}
            accounts:
              desktop: {{backend: desktop{account}}}
            rules: ['{rules}']
            state: '{tmp_path / "state.db"}'
            """
        ),
        encoding="utf-8",
    )
    return config


def builds(count: int) -> list[dict[str, Any]]:
    from fedmsg_notify.bus.envelope import build_envelope

    return [
        build_envelope(
            "org.fedoraproject.prod.buildsys.build.state.change",
            {"owner": "ralph", "name": f"pkg{n:02d}", "version": "1.0", "release": "1.fc44", "new": 3,
             "old": 0, "build_id": 1000 + n, "instance": "primary"},
            i=n + 1,
            username="koji",
        )
        for n in range(count)
    ]


class Running:
    """The daemon running in this process until the test's block ends."""

    def __init__(self, config: Path, **options: Any) -> None:
        from fedmsg_notify.daemon import Daemon

        self.daemon = Daemon(load_config(config), **options)
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Running:
        ready = asyncio.Event()
        self.task = asyncio.create_task(self.daemon.run(ready))
        await asyncio.wait_for(ready.wait(), 10)
        return self

    async def __aexit__(self, *_exc: object) -> None:
        self.daemon.stop()
        assert self.task is not None
        await asyncio.wait_for(self.task, 15)


async def until(predicate: Any, timeout: float = 20.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if predicate():
            return
        await asyncio.sleep(0.05)


async def test_flood_becomes_a_few_popups_that_account_for_every_message(
    server: NotificationServer, tmp_path: Path, endpoint: str
) -> None:
    """Twenty failed builds at once, at one popup a second, show as a few popups, one "N new koji messages", all critical."""
    from fedmsg_notify.delivery.coalesce import Coalescer
    from fedmsg_notify.testing import publish_all

    config = write_config(tmp_path, endpoint, ", rate: 1, burst: 1")

    def represented() -> int:
        total = 0
        for call in server.notifies():
            words = call.summary.split()
            total += int(words[0]) if call.summary.endswith(("koji messages", "koji message")) else 1
        return total

    async with Running(config, coalescer=Coalescer(horizon=1.0)):
        await asyncio.to_thread(publish_all, endpoint, builds(20))
        await until(lambda: represented() >= 20)

    calls = server.notifies()
    assert represented() == 20
    assert len(calls) <= 6
    summaries = [c for c in calls if c.summary.endswith("koji messages")]
    assert summaries and summaries[0].body.startswith("• ralph's pkg")
    assert all(c.urgency == 2 for c in calls)
    # The latest builds still get a popup of their own, with the Open button.
    assert calls[-1].summary == "ralph's pkg19-1.0-1.fc44 build failed"
    assert calls[-1].actions == ["default", "Open", "open", "Open"]


async def test_cap_holds_through_the_daemon(server: NotificationServer, tmp_path: Path, endpoint: str) -> None:
    """With max_open 4 and a fast pace, ten builds leave at most four popups on screen and count the rest."""
    from fedmsg_notify.testing import publish_all

    config = write_config(tmp_path, endpoint, ", max_open: 4, rate: 1000, burst: 1000")
    async with Running(config):
        await asyncio.to_thread(publish_all, endpoint, builds(10))
        await until(lambda: len(server.notifies()) >= 10)

    calls = server.notifies()
    assert len(calls) == 10
    assert sum(1 for c in calls if c.replaces_id == 0) == 4
    assert calls[-1].summary == "7 new koji messages"


@pytest.mark.parametrize("missing", ["bus", "server"])
async def test_logged_out_deliveries_wait_in_status_and_show_once_after_login(
    missing: str, tmp_path: Path, endpoint: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without a session bus or notification server a build is queued (status says which), other accounts still get it, and it pops up once at login."""
    from fedmsg_notify.commands.cli import main
    from fedmsg_notify.delivery.retry import RetryPolicy
    from fedmsg_notify.testing import RecordingBackend, publish_all

    bus = SessionBus(tmp_path / "dbus")
    monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", bus.address)
    config = write_config(tmp_path, endpoint)
    # A second account on the same rule: the desktop's trouble must not hold it up.
    text = config.read_text(encoding="utf-8").replace(
        "accounts:\n", "accounts:\n  other: {backend: 'fedmsg_notify.testing:RecordingBackend'}\n"
    )
    config.write_text(text, encoding="utf-8")
    rules = tmp_path / "rules" / "desktop.yaml"
    rules.write_text(rules.read_text(encoding="utf-8").replace("urgency: critical}", "urgency: critical}, {via: other}"),
                     encoding="utf-8")
    expected = {
        "bus": f"no D-Bus session bus at {bus.address}",
        "server": f"no notification server on the session bus at {bus.address}",
    }[missing]
    if missing == "server":
        bus.start()
    try:
        async with Running(config, policy=RetryPolicy(base=0.2, cap=0.4)) as running:
            published = builds(1)
            await asyncio.to_thread(publish_all, endpoint, published)
            store = running.daemon.store
            assert store is not None
            await until(lambda: any(row.in_retry for row in store.status(0)))
            assert [i.msg_id for i in RecordingBackend.instances["other"].items] == [published[0]["msg_id"]]
            capsys.readouterr()
            assert main(["status", "-c", str(config)]) == 0
            shown = capsys.readouterr().out
            assert "in retry 1" in shown and "sent 0" in shown
            assert expected in shown

            if missing == "bus":
                bus.start()
            with NotificationServer(bus) as server:
                await until(lambda: len(server.notifies()) >= 1)
                # Recorded as sent with nothing queued or retrying: no further popup can come.
                await until(lambda: [(r.sent, r.queued, r.in_retry) for r in store.status(0)
                                     if r.account == "desktop"] == [(1, 0, 0)])
                calls = server.notifies()
    finally:
        bus.stop()
    assert [c.summary for c in calls] == ["ralph's pkg00-1.0-1.fc44 build failed"]
    capsys.readouterr()
    assert main(["status", "-c", str(config)]) == 0
    assert "sent 1" in capsys.readouterr().out


def test_shipped_desktop_rules_make_failed_builds_critical_when_uncommented(
    tmp_path: Path, samples: list[dict[str, Any]]
) -> None:
    """The commented example in rules/desktop.yaml is valid with a desktop account and makes my failed build critical."""
    from fedmsg_notify.bus.envelope import Message
    from fedmsg_notify.config.model import shipped_rules_dir
    from fedmsg_notify.matching.rules import RuleSet
    from fedmsg_notify.meta.engine import compute_meta

    shipped = (shipped_rules_dir() / "desktop.yaml").read_text(encoding="utf-8")
    assert "  # - name: my failed koji builds" in shipped
    lines = shipped.splitlines()
    start = lines.index("  # - name: my failed koji builds")
    for index in range(start, start + 7):
        lines[index] = lines[index].replace("  # ", "  ", 1)
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "desktop.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = tmp_path / "config.yaml"
    config.write_text(f"accounts:\n  desktop: {{backend: desktop}}\nrules: ['{rules}']\n", encoding="utf-8")
    loaded = load_config(config)
    ruleset = RuleSet.load(loaded.rule_paths, loaded.accounts)

    sample = next(s for s in samples if s["id"] == "buildsys.TestKojiBuildStateChangeStart")
    envelope = {**sample["message"], "msg": {**sample["message"]["msg"], "new": 3}}
    failed = Message.from_envelope(envelope)
    [route] = ruleset.routes(failed, compute_meta(failed))
    assert (route.rule.name, dict(route.options)) == ("my failed koji builds", {"urgency": "critical"})
    started = Message.from_envelope(sample["message"])
    [route] = ruleset.routes(started, compute_meta(started))
    assert route.rule.name == "my koji builds" and not route.options
