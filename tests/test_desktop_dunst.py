"""The desktop backend against a real notification daemon: dunst on Xvfb on the private session bus.

The popup, flood (max_open) and restart behaviours are checked against what dunst itself
displayed (tests/dunstserver.py logs each popup from a dunst rule). Tests that must inject
clicks or closes, or vary the server's capabilities, stay on python-dbusmock's template.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from fedmsg_notify.backend import Destination, Item
from fedmsg_notify.backends.desktop import DesktopAccount, DesktopBackend

from tests.dbusserver import SessionBus
from tests.dunstserver import Dunst


@pytest.fixture
def bus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SessionBus]:
    with SessionBus(tmp_path / "dbus") as running:
        monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", running.address)
        yield running


@pytest.fixture
async def make_backend() -> AsyncIterator[Any]:
    made: list[DesktopBackend] = []

    async def make(**options: Any) -> DesktopBackend:
        backend = DesktopBackend("desktop", DesktopAccount.model_validate({"backend": "desktop", **options}))
        made.append(backend)
        await backend.start()
        return backend

    yield make
    for backend in made:
        await backend.close()


def item(summary: str, body: str = "", *, n: int = 1, **extra: Any) -> Item:
    fields: dict[str, Any] = {
        "id": n, "msg_id": f"m-{n}", "destination": Destination("desktop"), "rule": "my koji builds",
        "topic": "org.fedoraproject.prod.buildsys.build.state.change", "service": "buildsys",
        "rendered": {"summary": summary, "body": body},
        "meta": {"link": f"https://koji.fedoraproject.org/koji/buildinfo?buildID={n}"},
    }
    fields.update(extra)
    return Item(**fields)


async def shown(dunst: Dunst, count: int, timeout: float = 15.0) -> list[dict[str, Any]]:
    """What dunst displayed once it has shown at least ``count`` popups."""
    deadline = asyncio.get_running_loop().time() + timeout
    while len(got := dunst.shown()) < count:
        assert asyncio.get_running_loop().time() < deadline, f"dunst showed {got}, wanted {count}"
        await asyncio.sleep(0.05)
    return got


async def test_dunst_shows_the_popup_with_its_urgency(bus: SessionBus, tmp_path: Path, make_backend: Any) -> None:
    """A build popup reaches a real notification daemon with its sentence, details, app name and urgency."""
    with Dunst(bus, tmp_path / "dunst") as dunst:
        backend = await make_backend(app_name="fedmsg-notify")
        await backend.send(item("ralph's foo-1.0-1.fc44 build failed", "buildsys: foo", options={"urgency": "critical"}))
        await backend.send(item("bar built", "buildsys: bar", n=2, options={"urgency": "low"}))
        popups = {p["summary"]: p for p in await shown(dunst, 2)}  # logged in no particular order
    first, second = popups["ralph's foo-1.0-1.fc44 build failed"], popups["bar built"]
    assert (first["app_name"], first["body"], first["urgency"]) == ("fedmsg-notify", "buildsys: foo", "CRITICAL")
    assert (second["body"], second["urgency"]) == ("buildsys: bar", "LOW")
    assert first["id"] != second["id"]


async def test_flood_stays_within_max_open_on_dunst(bus: SessionBus, tmp_path: Path, make_backend: Any) -> None:
    """Ten builds with max_open 2: dunst holds two popups, the second one counting the rest."""
    with Dunst(bus, tmp_path / "dunst") as dunst:
        backend = await make_backend(max_open=2)
        for n in range(1, 11):
            await backend.send(item(f"build {n} done", n=n))
        await backend.send(item("marker", n=99))
        # The summary popup counting all ten after the first is the last update dunst gets.
        deadline = asyncio.get_running_loop().time() + 15
        got = dunst.shown()
        while not any(p["summary"] == "10 new koji messages" for p in got):
            assert asyncio.get_running_loop().time() < deadline, got
            await asyncio.sleep(0.05)
            got = dunst.shown()
    # dunst runs its rule script per popup in parallel: the log is in no particular order.
    [first] = [p for p in got if p["summary"] == "build 1 done"]
    updates = [p for p in got if p is not first]
    # Every later popup replaced one summary popup: two on screen at most, never eleven.
    assert {p["id"] for p in updates} == {updates[0]["id"]} and updates[0]["id"] != first["id"]
    final = next(p for p in updates if p["summary"] == "10 new koji messages")
    assert final["body"].startswith("• marker\n• build 10 done")


async def test_restarted_dunst_gets_the_next_popup(bus: SessionBus, tmp_path: Path, make_backend: Any) -> None:
    """When the notification daemon is restarted, the next popup goes to the new one."""
    with Dunst(bus, tmp_path / "first") as first:
        backend = await make_backend()
        await backend.send(item("one", n=1))
        assert [p["summary"] for p in await shown(first, 1)] == ["one"]
    with Dunst(bus, tmp_path / "second") as second:
        await backend.send(item("two", n=2))
        assert [p["summary"] for p in await shown(second, 1)] == ["two"]
