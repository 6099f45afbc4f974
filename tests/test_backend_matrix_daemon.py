"""The Matrix backend through the whole daemon, against a real Synapse with its default rate limits.

Its own homeserver (module-scoped), because the last test stops and restarts it.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fedmsg_notify.bus.envelope import build_envelope
from fedmsg_notify.config.model import load_config
from fedmsg_notify.daemon import Daemon
from fedmsg_notify.delivery.coalesce import Coalescer
from fedmsg_notify.store.records import DestinationStatus
from fedmsg_notify.store.sqlite import Outbox
from fedmsg_notify.testing import publish_all

from tests.synapseserver import Reader, Synapse, synapse_python

# Skipped only outside CI: there scripts/test.sh has made .venv-synapse, and a missing one must fail.
pytestmark = pytest.mark.skipif(synapse_python() is None and not os.environ.get("CI"),
                                reason="no .venv-synapse: run scripts/test.sh")

BOT = "@fedbot:localhost"


@pytest.fixture(scope="module")
def synapse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Synapse]:
    server = Synapse(tmp_path_factory.mktemp("synapse"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def bot_token(synapse: Synapse, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tokens") / "fedbot.token"
    path.write_text(synapse.register("fedbot") + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def reader(synapse: Synapse) -> Iterator[Reader]:
    client = Reader(synapse, synapse.register("reader"), "@reader:localhost")
    yield client
    client.close()


def write_config(tmp_path: Path, synapse: Synapse, token: Path, endpoint: str, rooms: list[str]) -> Path:
    rules = tmp_path / "rules"
    rules.mkdir()
    deliver = ", ".join(f"{{via: chat, to: '{room}'}}" for room in rooms)
    (rules / "firehose.yaml").write_text(
        f"rules:\n  - name: firehose\n    match: {{topic: '*.bodhi.*'}}\n    deliver: [{deliver}]\n", encoding="utf-8")
    config = tmp_path / "config.yaml"
    config.write_text(
        f"bus: {{endpoints: ['{endpoint}']}}\n"
        f"accounts:\n  chat: {{backend: matrix, homeserver: '{synapse.url}', user_id: '{BOT}', token_file: '{token}'}}\n"
        f"rules: ['{rules}']\nstate: '{tmp_path / 'state.db'}'\n",
        encoding="utf-8",
    )
    return config


def comments(first: int, count: int) -> list[dict[str, Any]]:
    return [
        build_envelope(
            "org.fedoraproject.prod.bodhi.update.comment",
            {"comment": {"text": f"works for me {n}", "user": {"name": "ralph"},
                         "update": {"title": f"python-pkg{n:03d}-1.0-1.fc44"}}},
            i=n + 1, username="bodhi",
        )
        for n in range(first, first + count)
    ]


def represented(reader: Reader, room: str) -> tuple[list[int], int]:
    """Package numbers posted one by one, and how many messages summaries stand for."""
    single, coalesced = [], 0
    for event in reader.messages(room):
        body = event["content"].get("body", "")
        if match := re.search(r"(\d+) messages coalesced", body):
            coalesced += int(match.group(1))
        elif match := re.search(r"python-pkg(\d+)", body):
            single.append(int(match.group(1)))
    return single, coalesced


async def until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(check):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.3)


def status_rows(tmp_path: Path) -> list[DestinationStatus]:
    store = Outbox(tmp_path / "state.db", readonly=True)
    try:
        return store.status(time.time())
    finally:
        store.close()


async def test_100_messages_at_full_speed_arrive_in_order_or_coalesced(
    tmp_path: Path, synapse: Synapse, bot_token: Path, reader: Reader, endpoint: str
) -> None:
    """A burst of 100 reaches the room, each message individually or counted in a summary, in order, with
    Synapse's default rc_message on; nothing fails and nothing repeats."""
    room = reader.create_room()
    daemon = Daemon(load_config(write_config(tmp_path, synapse, bot_token, endpoint, [room])),
                    coalescer=Coalescer(horizon=5.0))  # a 5 s horizon instead of 60 s keeps the test short
    ready = asyncio.Event()
    running = asyncio.create_task(daemon.run(ready))
    try:
        await asyncio.wait_for(ready.wait(), 10)
        await asyncio.to_thread(publish_all, endpoint, comments(0, 100))

        def complete() -> bool:
            single, coalesced = represented(reader, room)
            return len(single) + coalesced >= 100

        await until(complete, 180, "100 messages represented in the room")
    finally:
        daemon.stop()
        await asyncio.wait_for(running, 30)
    single, coalesced = represented(reader, room)
    assert len(single) + coalesced == 100, (len(single), coalesced)
    assert single == sorted(set(single)), "individual messages out of order or repeated"
    assert coalesced > 0, "100 messages at 0.15/s must be coalesced"
    (row,) = status_rows(tmp_path)
    assert row.failed == 0 and row.queued == 0, row


async def test_room_the_bot_cannot_post_in_is_a_permanent_failure_in_status(
    tmp_path: Path, synapse: Synapse, bot_token: Path, reader: Reader, endpoint: str
) -> None:
    room = reader.create_room(power_level_content_override={"events_default": 50})
    daemon = Daemon(load_config(write_config(tmp_path, synapse, bot_token, endpoint, [room])))
    ready = asyncio.Event()
    running = asyncio.create_task(daemon.run(ready))
    try:
        await asyncio.wait_for(ready.wait(), 10)
        await asyncio.to_thread(publish_all, endpoint, comments(0, 1))
        await until(lambda: any(r.failed for r in status_rows(tmp_path)), 120, "the failure in status")
    finally:
        daemon.stop()
        await asyncio.wait_for(running, 30)
    (row,) = status_rows(tmp_path)
    assert row.failed == 1 and row.in_retry == 0
    assert row.last_failure is not None and "M_FORBIDDEN" in row.last_failure and room in row.last_failure


async def test_homeserver_stopped_and_restarted_everything_delivered_after(
    tmp_path: Path, synapse: Synapse, bot_token: Path, reader: Reader, endpoint: str
) -> None:
    """Messages published while the homeserver is down wait in the outbox and all arrive, once, after it is back."""
    room = reader.create_room()
    daemon = Daemon(load_config(write_config(tmp_path, synapse, bot_token, endpoint, [room])))
    ready = asyncio.Event()
    running = asyncio.create_task(daemon.run(ready))
    try:
        await asyncio.wait_for(ready.wait(), 10)
        await asyncio.to_thread(publish_all, endpoint, comments(0, 3))
        await until(lambda: len(represented(reader, room)[0]) == 3, 120, "the first 3 messages")
        await asyncio.to_thread(synapse.stop)
        await asyncio.to_thread(publish_all, endpoint, comments(3, 3))
        await until(lambda: any(r.in_retry for r in status_rows(tmp_path)), 60, "a retry while the server is down")
        await asyncio.to_thread(synapse.start)
        await until(lambda: len(represented(reader, room)[0]) == 6, 180, "all 6 messages after the restart")
    finally:
        daemon.stop()
        await asyncio.wait_for(running, 30)
    single, coalesced = represented(reader, room)
    assert single == list(range(6)) and coalesced == 0
    (row,) = status_rows(tmp_path)
    assert row.failed == 0 and row.queued == 0
