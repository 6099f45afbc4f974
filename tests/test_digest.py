"""Digests: flushed by count or schedule, across restarts, capped, and never twice."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from fedmsg_notify.backend import Destination
from fedmsg_notify.bus.zeromq import Publisher
from fedmsg_notify.clock import FakeClock
from fedmsg_notify.config.model import load_config
from fedmsg_notify.daemon import Daemon
from fedmsg_notify.delivery.digest import DigestScheduler, joined_parts
from fedmsg_notify.store.records import DigestEntry, NewDigestEntry
from fedmsg_notify.store.sqlite import Outbox
from fedmsg_notify.testing import RecordingBackend, envelopes

from tests.loopgaps import loop_gaps

DEST = Destination("mail", "me@example.org")
T0 = 1_000_000.0
BODHI = "org.fedoraproject.prod.bodhi.update.comment"


def entry(n: int, every: float | None = 60.0, most: int | None = None) -> NewDigestEntry:
    return NewDigestEntry(
        msg_id=f"m{n}",
        destination=DEST,
        rule="digest",
        rule_file="rules.yaml",
        template=None,
        options={},
        every=every,
        max=most,
        topic=BODHI,
        service="bodhi",
        envelope={"topic": BODHI, "msg": {"n": n}},
        meta={"title": f"t{n}"},
        rendered={"text": f"message {n}"},
        timestamp=T0,
    )


def render(destination: Destination, entries: Sequence[DigestEntry], total: int) -> Mapping[str, str]:
    return joined_parts(RecordingBackend, entries, total)


def scheduler(store: Outbox, clock: FakeClock, queued: list[Destination], cap: int = 100) -> DigestScheduler:
    return DigestScheduler(store, render, queued.append, clock=clock, render_cap=cap)


def digests(store: Outbox) -> list[tuple[int, str]]:
    rows = store.db.execute("SELECT count, rendered FROM deliveries WHERE kind = 'digest' ORDER BY id")
    return [(int(r[0]), str(r[1])) for r in rows]


def test_max_flushes_in_chunks_of_max(tmp_path: Path) -> None:
    """With max: 2, five waiting messages make two digests of two; the fifth waits for more company."""
    store = Outbox(tmp_path / "s.db")
    store.accept([], [entry(n, every=None, most=2) for n in range(5)], now=T0)
    queued: list[Destination] = []
    flushed, next_due = scheduler(store, FakeClock(T0), queued).flush_due()
    assert flushed == 2 and next_due is None
    assert [count for count, _ in digests(store)] == [2, 2]
    assert queued == [DEST]
    [group] = store.digest_groups()
    assert group.count == 1
    store.close()


def test_every_flushes_on_schedule_from_the_first_entry(tmp_path: Path) -> None:
    """A digest goes out `every` seconds after its oldest message arrived, not before."""
    store = Outbox(tmp_path / "s.db")
    clock = FakeClock(T0)
    store.accept([], [entry(1)], now=T0)
    store.accept([], [entry(2)], now=T0 + 30)
    sched = scheduler(store, clock, [])
    clock.now = T0 + 59.9
    assert sched.flush_due() == (0, T0 + 60)
    clock.now = T0 + 60
    assert sched.flush_due() == (1, None)
    [(count, text)] = digests(store)
    assert count == 2 and "message 1" in text and "message 2" in text
    store.close()


def test_digest_due_while_down_goes_out_after_restart(tmp_path: Path) -> None:
    """Entries survive a restart and an overdue digest is sent as soon as the daemon is back."""
    store = Outbox(tmp_path / "s.db")
    store.accept([], [entry(n) for n in range(3)], now=T0)
    store.close()
    reopened = Outbox(tmp_path / "s.db")
    assert scheduler(reopened, FakeClock(T0 + 3600), []).flush_due()[0] == 1
    assert [count for count, _ in digests(reopened)] == [3]
    reopened.close()


def test_rendering_is_capped_but_the_count_is_true(tmp_path: Path) -> None:
    """A digest of 150 messages renders 100 of them and says there were 150."""
    store = Outbox(tmp_path / "s.db")
    store.accept([], [entry(n) for n in range(150)], now=T0)
    seen: list[tuple[int, int]] = []

    def counting(destination: Destination, entries: Sequence[DigestEntry], total: int) -> Mapping[str, str]:
        seen.append((len(entries), total))
        return render(destination, entries, total)

    DigestScheduler(store, counting, lambda d: None, clock=FakeClock(T0 + 60)).flush_due()
    assert seen == [(100, 150)]
    [(count, text)] = digests(store)
    assert count == 150 and "150 messages" in text and "and 50 more" in text
    store.close()


def test_digest_item_names_every_service_user_and_package(tmp_path: Path) -> None:
    """A digest's filter headers can name what it covers: its item carries the union of its entries' services, users and packages."""
    store = Outbox(tmp_path / "s.db")
    first, second = entry(1), entry(2)
    second = dataclasses.replace(second, service="buildsys", meta={"usernames": ["ralph", "toshio"], "packages": ["kernel"]})
    first = dataclasses.replace(first, meta={"usernames": ["ralph"], "packages": ["python-fedmsg"]})
    store.accept([], [first, second], now=T0)
    DigestScheduler(store, render, lambda d: None, clock=FakeClock(T0 + 60)).flush_due()
    [(item, _)] = store.window(DEST, T0 + 61, 10)
    assert item.count == 2
    assert dict(item.meta) == {
        "services": ["bodhi", "buildsys"],
        "usernames": ["ralph", "toshio"],
        "packages": ["kernel", "python-fedmsg"],
    }
    store.close()


def test_two_flushers_in_the_same_instant_send_one_digest(tmp_path: Path) -> None:
    """Two processes flushing the same digest at the same moment produce one digest, not two."""
    setup = Outbox(tmp_path / "s.db")
    setup.accept([], [entry(n) for n in range(10)], now=T0)
    setup.close()
    barrier = threading.Barrier(2)
    results: list[Any] = []

    def slow_render(entries: Sequence[DigestEntry], total: int) -> tuple[Mapping[str, str], str]:
        time.sleep(0.1)  # widen the window between the claim and the commit
        return {"text": f"{total}"}, f"digest:{entries[0].msg_id}"

    def flusher() -> None:
        store = Outbox(tmp_path / "s.db")
        barrier.wait()
        results.append(store.flush_digest(DEST, None, slow_render, T0 + 60))
        store.close()

    threads = [threading.Thread(target=flusher) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    claimed = [r for r in results if r is not None]
    assert len(results) == 2 and len(claimed) == 1, results
    assert claimed[0][1] == 10
    check = Outbox(tmp_path / "s.db")
    assert [count for count, _ in digests(check)] == [10]
    assert check.db.execute("SELECT COUNT(DISTINCT flushed_into) FROM digest_entries").fetchone()[0] == 1
    check.close()


def test_one_message_digest_reads_like_a_normal_delivery() -> None:
    """A digest that holds a single message is that message's own rendering, no "1 messages" header."""
    store_entry = DigestEntry(
        id=1, msg_id="m1", destination=DEST, rule="r", rule_file="f", template=None, options={}, topic=BODHI,
        service="bodhi", envelope={}, meta={}, rendered={"text": "alice commented"}, timestamp=T0, created=T0,
    )  # fmt: skip
    assert joined_parts(RecordingBackend, [store_entry], 1) == {"text": "alice commented"}


DIGEST_RULES = """
rules:
  - name: digest
    match: {topic: '*.bodhi.*'}
    deliver:
      - {via: mail, digest: {every: 1, max: 2}}
      - {via: now}
"""


async def _run_daemon(tmp: Path, endpoint: str, body: Callable[[Daemon], Any]) -> None:
    (tmp / "rules").mkdir(exist_ok=True)
    (tmp / "rules" / "a.yaml").write_text(DIGEST_RULES)
    recorder = "fedmsg_notify.testing:RecordingBackend"
    (tmp / "config.yaml").write_text(
        f"bus: {{endpoints: [{endpoint}]}}\n"
        f"accounts:\n  mail: {{backend: '{recorder}'}}\n  now: {{backend: '{recorder}'}}\n"
        f"rules: [{tmp / 'rules'}]\nstate: {tmp / 'state.db'}\n"
    )
    daemon = Daemon(load_config(tmp / "config.yaml"))
    ready = asyncio.Event()
    task = asyncio.create_task(daemon.run(ready))
    await asyncio.wait_for(ready.wait(), 10)
    try:
        await body(daemon)
    finally:
        daemon.stop()
        await asyncio.wait_for(task, 20)


async def until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def _backend(daemon: Daemon, name: str) -> RecordingBackend:
    backend = daemon.handles[name].backend
    assert isinstance(backend, RecordingBackend)
    return backend


async def test_daemon_digests_same_instant_and_across_a_restart(tmp_path: Path, endpoint: str) -> None:
    """Five messages at once make digests of two and two; the fifth survives a restart and goes out on time."""
    publisher = Publisher(endpoint, username="tester", wait=5.0)
    batch = list(envelopes(5, BODHI))

    async def first_run(daemon: Daemon) -> None:
        await asyncio.to_thread(lambda: [publisher.send_envelope(e) for e in batch])
        mail, now = _backend(daemon, "mail"), _backend(daemon, "now")
        await until(lambda: len(mail.items) == 2 and len(now.items) == 5, 10, "two digests")
        assert [i.count for i in mail.items] == [2, 2]
        assert {i.msg_id for i in mail.items} == {f"digest:{batch[0]['msg_id']}", f"digest:{batch[2]['msg_id']}"}

    await _run_daemon(tmp_path, endpoint, first_run)
    publisher.close(linger_ms=0)
    store = Outbox(tmp_path / "state.db", readonly=True)
    [row] = [r for r in store.status(time.time()) if r.destination == "mail"]
    assert row.digest_pending == 1 and row.next_digest is not None
    store.close()
    await asyncio.sleep(1.0)  # the leftover's `every` passes while the daemon is down

    async def second_run(daemon: Daemon) -> None:
        mail = _backend(daemon, "mail")
        await until(lambda: len(mail.items) == 1, 10, "the overdue digest after the restart")
        assert mail.items[0].count == 1 and mail.items[0].msg_id == batch[4]["msg_id"]

    await _run_daemon(tmp_path, endpoint, second_run)


async def test_daemon_one_message_digest_matches_immediate_rendering(tmp_path: Path, endpoint: str) -> None:
    """A lone message in a digest is rendered exactly as an immediate delivery of it would be."""
    publisher = Publisher(endpoint, username="tester", wait=5.0)
    [envelope] = list(envelopes(1, BODHI))

    async def run(daemon: Daemon) -> None:
        await asyncio.to_thread(publisher.send_envelope, envelope)
        mail, now = _backend(daemon, "mail"), _backend(daemon, "now")
        await until(lambda: len(mail.items) == 1 and len(now.items) == 1, 10, "the digest of one")
        assert mail.items[0].rendered == now.items[0].rendered
        assert mail.items[0].msg_id == envelope["msg_id"]

    try:
        await _run_daemon(tmp_path, endpoint, run)
    finally:
        publisher.close(linger_ms=0)


@pytest.mark.parametrize("every,most,count,expected", [(60.0, None, 1, T0 + 60), (None, 3, 3, T0), (None, 3, 2, None)])
def test_due_time(every: float | None, most: int | None, count: int, expected: float | None) -> None:
    """A digest is due at first+every, at once when max is reached, and never by time without `every`."""
    from fedmsg_notify.store.records import DigestGroup

    assert DigestGroup(DEST, count, T0, every, most).due_at() == expected


def test_rendering_a_digest_holds_no_write_lock(tmp_path: Path) -> None:
    """While a slow digest renders, another connection commits an intake batch at once (the claim comes after)."""
    store = Outbox(tmp_path / "s.db")
    store.accept([], [entry(n) for n in range(3)], now=T0)
    rendering = threading.Event()
    committed: list[float] = []
    in_transaction: list[bool] = []

    def slow_render(entries: Sequence[DigestEntry], total: int) -> tuple[Mapping[str, str], str]:
        rendering.set()
        in_transaction.append(store.db.in_transaction)
        time.sleep(0.5)
        return {"text": f"{total}"}, f"digest:{entries[0].msg_id}"

    def intake() -> None:
        other = Outbox(tmp_path / "s.db")
        assert rendering.wait(5)
        started = time.monotonic()
        other.accept([], [entry(n) for n in range(10, 12)], now=T0)
        committed.append(time.monotonic() - started)
        other.close()

    thread = threading.Thread(target=intake)
    thread.start()
    result = store.flush_digest(DEST, None, slow_render, T0 + 60)
    thread.join(10)
    assert result is not None and result[1] == 3, "the digest claims what it rendered, not the later entries"
    assert in_transaction == [False], "rendered inside the write transaction"
    assert committed and committed[0] < 0.45, f"the intake commit waited {committed} s for the rendering"
    assert store.db.execute("SELECT COUNT(*) FROM digest_entries WHERE flushed_into IS NULL").fetchone()[0] == 2
    store.close()


def test_a_digest_whose_entries_were_claimed_meanwhile_is_not_queued(tmp_path: Path) -> None:
    """Rendered from a read that another flusher overtook: nothing is queued, the other's digest stands."""
    store = Outbox(tmp_path / "s.db")
    store.accept([], [entry(n) for n in range(4)], now=T0)
    other = Outbox(tmp_path / "s.db")

    def overtaken(entries: Sequence[DigestEntry], total: int) -> tuple[Mapping[str, str], str]:
        # Meanwhile another flusher takes two of the four.
        assert other.flush_digest(DEST, 2, lambda e, t: ({"text": "other"}, "digest:other"), T0 + 60) is not None
        return {"text": f"{total}"}, f"digest:{entries[0].msg_id}"

    assert store.flush_digest(DEST, None, overtaken, T0 + 60) is None
    assert [count for count, _ in digests(store)] == [2]
    assert store.db.execute("SELECT COUNT(*) FROM digest_entries WHERE flushed_into IS NULL").fetchone()[0] == 2
    other.close()
    store.close()


async def test_daemon_renders_digests_off_the_event_loop(tmp_path: Path, endpoint: str) -> None:
    """A digest that takes 0.4 s to render is rendered in the digest thread: the loop keeps ticking meanwhile."""
    publisher = Publisher(endpoint, username="tester", wait=5.0)
    threads: list[int] = []

    async def body(daemon: Daemon) -> None:
        assert daemon.digests is not None
        real = daemon.digests.render

        def slow(destination: Destination, entries: Sequence[DigestEntry], total: int) -> Mapping[str, str]:
            threads.append(threading.get_ident())
            time.sleep(0.4)
            return real(destination, entries, total)

        daemon.digests.render = slow
        async with loop_gaps(0.01) as gaps:
            await asyncio.to_thread(lambda: [publisher.send_envelope(e) for e in envelopes(2, BODHI)])
            mail = _backend(daemon, "mail")
            await until(lambda: len(mail.items) == 1, 15, "the digest of two")
        assert mail.items[0].count == 2
        assert threads and threading.get_ident() not in threads, "rendered on the loop's thread"
        assert max(gaps) < 0.3, f"the loop stood still for {max(gaps):.2f} s"

    try:
        await _run_daemon(tmp_path, endpoint, body)
    finally:
        publisher.close(linger_ms=0)
