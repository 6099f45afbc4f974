"""The daemon in-process: intake to delivery, dedup, isolation of destinations, coalescing, reload."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fedmsg_notify.bus.zeromq import Publisher
from fedmsg_notify.clock import FakeClock
from fedmsg_notify.config.model import load_config
from fedmsg_notify.daemon import Daemon
from fedmsg_notify.delivery.coalesce import Coalescer
from fedmsg_notify.store.sqlite import Outbox
from fedmsg_notify.testing import RecordingBackend, envelopes

BODHI = "org.fedoraproject.prod.bodhi.update.comment"
RECORDER = "fedmsg_notify.testing:RecordingBackend"


@dataclass
class Running:
    daemon: Daemon
    endpoint: str
    tmp: Path
    config: Path
    publisher: Publisher | None = None

    def backend(self, account: str) -> RecordingBackend:
        handle = self.daemon.handles[account]
        assert isinstance(handle.backend, RecordingBackend)
        return handle.backend

    async def publish(self, count: int, topic: str = BODHI) -> list[dict[str, Any]]:
        batch = list(envelopes(count, topic))
        await self.replay(batch)
        return batch

    async def replay(self, batch: list[dict[str, Any]]) -> None:
        # One publisher for the whole test: a re-bound one would wait for the subscriber's
        # reconnect backoff.
        if self.publisher is None:
            self.publisher = Publisher(self.endpoint, username="tester", wait=5.0)
        publisher = self.publisher
        await asyncio.to_thread(lambda: [publisher.send_envelope(envelope) for envelope in batch])


def config_text(tmp: Path, endpoint: str, accounts: dict[str, str], rules: str) -> Path:
    (tmp / "rules").mkdir(exist_ok=True)
    (tmp / "rules" / "a.yaml").write_text(rules)
    lines = [f"bus: {{endpoints: [{endpoint}]}}", "accounts:"]
    lines += [f"  {name}: {{backend: '{RECORDER}'{', ' + opts if opts else ''}}}" for name, opts in accounts.items()]
    lines += [f"rules: [{tmp / 'rules'}]", f"state: {tmp / 'state.db'}"]
    path = tmp / "config.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
async def start(tmp_path: Path, endpoint: str) -> AsyncIterator[Callable[..., Any]]:
    running: list[tuple[Daemon, asyncio.Task[None], Running]] = []

    async def starter(accounts: dict[str, str], rules: str, **kwargs: Any) -> Running:
        path = config_text(tmp_path, endpoint, accounts, rules)
        daemon = Daemon(load_config(path), **kwargs)
        ready = asyncio.Event()
        task = asyncio.create_task(daemon.run(ready))
        await asyncio.wait_for(ready.wait(), 10)
        run = Running(daemon, endpoint, tmp_path, path)
        running.append((daemon, task, run))
        return run

    yield starter
    for daemon, task, run in running:
        daemon.stop()
        await asyncio.wait_for(task, 20)
        if run.publisher is not None:
            run.publisher.close(linger_ms=0)


async def until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


TWO_RULES = """
rules:
  - {name: bodhi, match: {topic: '*.bodhi.*'}, deliver: [{via: irc, to: '#fedora'}, {via: mail, to: me}]}
  - {name: again, match: {topic: '*.bodhi.*'}, deliver: [{via: irc, to: '#fedora'}]}
"""


async def test_messages_reach_every_destination_once(start: Callable[..., Any]) -> None:
    """Each routed message arrives once per destination, even when replayed or routed there by two rules."""
    run: Running = await start({"irc": "", "mail": ""}, TWO_RULES)
    batch = await run.publish(20)
    irc, mail = run.backend("irc"), run.backend("mail")
    await until(lambda: len(irc.items) == 20 and len(mail.items) == 20, 10, "20 deliveries each")
    await run.replay(batch[:5])
    more = await run.publish(1)
    await until(lambda: len(irc.items) == 21, 10, "the next message")
    assert [i.msg_id for i in irc.items] == [e["msg_id"] for e in batch + more]
    assert {i.destination.key for i in irc.items} == {"irc:#fedora"}
    assert irc.items[0].rendered["text"]  # rendered by the templates, not empty
    assert irc.items[0].rule == "bodhi"


async def test_a_hung_destination_does_not_delay_another(start: Callable[..., Any]) -> None:
    """A server that never answers holds up only its own notifications."""
    rules = "rules:\n  - {name: all, match: {}, deliver: [{via: stuck}, {via: fine}]}\n"
    run: Running = await start({"stuck": "mode: hang", "fine": ""}, rules, send_timeout=600.0, shutdown_timeout=0.5)
    await run.publish(30)
    fine, stuck = run.backend("fine"), run.backend("stuck")
    await until(lambda: len(fine.items) == 30, 10, "the healthy destination")
    assert len(stuck.attempts) == 1 and stuck.items == []


async def test_a_hang_times_out_into_a_retry(start: Callable[..., Any]) -> None:
    """A send that hangs is cut off and retried, so the destination recovers by itself."""
    rules = "rules:\n  - {name: all, match: {}, deliver: [{via: flaky}]}\n"
    run: Running = await start({"flaky": ""}, rules, send_timeout=0.2)
    flaky = run.backend("flaky")
    flaky.fail_next("hang")
    run.daemon.policy.base = 0.05
    await run.publish(3)
    await until(lambda: len(flaky.items) == 3, 10, "delivery after the timeout")
    assert len(flaky.attempts) == 4
    assert [i.msg_id for i in flaky.items] == [i.msg_id for i in flaky.attempts[1:]]


async def test_a_flood_to_a_slow_destination_is_coalesced_not_dropped(start: Callable[..., Any]) -> None:
    """Hundreds of messages to a 2-per-second account become a summary; every message is counted."""
    rules = "rules:\n  - {name: all, match: {}, deliver: [{via: slow}]}\n"
    run: Running = await start({"slow": "rate: 2, burst: 1"}, rules, coalescer=Coalescer(horizon=1.0))
    await run.publish(200)
    slow = run.backend("slow")
    await until(lambda: sum(i.count for i in slow.items) == 200, 15, "all 200 accounted for")
    summaries = [i for i in slow.items if i.count > 1]
    assert summaries, "nothing was coalesced"
    assert "more messages" in summaries[0].rendered["text"]
    assert len(slow.items) < 20
    assert run.daemon.store is not None
    [row] = run.daemon.store.status(run.daemon.clock.time())
    assert row.coalesced == sum(i.count for i in summaries)


async def test_reload_refuses_a_broken_rule_set_and_applies_a_good_one(start: Callable[..., Any]) -> None:
    """A bad reload keeps the old rules; a good one takes effect without reconnecting unchanged accounts."""
    rules = "rules:\n  - {name: all, match: {}, deliver: [{via: irc}]}\n"
    run: Running = await start({"irc": ""}, rules)
    before = run.daemon.pipeline
    backend = run.backend("irc")
    (run.tmp / "rules" / "b.yaml").write_text("rules:\n  - {name: x, match: {}, deliver: [{via: ghost}]}\n")
    assert await run.daemon.reload() is False
    assert run.daemon.pipeline is before
    (run.tmp / "rules" / "b.yaml").unlink()
    marker = "org.fedoraproject.prod.marker.done"
    (run.tmp / "rules" / "a.yaml").write_text(
        "rules:\n  - {name: none, match: {topic: nothing}, deliver: [{via: irc}]}\n"
        f"  - {{name: marker, match: {{topic: {marker}}}, deliver: [{{via: irc}}]}}\n"
    )
    assert await run.daemon.reload() is True
    assert run.daemon.pipeline is not before
    assert run.backend("irc") is backend and backend.started == 1
    await run.publish(2)
    [sent_after] = await run.publish(1, topic=marker)
    # The marker was published after the two bodhi messages: once it is here, they were matched (or not).
    await until(lambda: len(backend.items) >= 1, 15, "the marker")
    assert [item.msg_id for item in backend.items] == [sent_after["msg_id"]]


async def test_sigterm_lets_the_send_in_flight_finish(tmp_path: Path, endpoint: str) -> None:
    """A stop during a slow send waits for it (within the shutdown timeout): it is recorded sent, not retried."""
    rules = "rules:\n  - {name: all, match: {}, deliver: [{via: slow}]}\n"
    path = config_text(tmp_path, endpoint, {"slow": "delay: 1.5"}, rules)
    daemon = Daemon(load_config(path), shutdown_timeout=10.0)
    ready = asyncio.Event()
    task = asyncio.create_task(daemon.run(ready))
    await asyncio.wait_for(ready.wait(), 10)
    run = Running(daemon, endpoint, tmp_path, path)
    try:
        backend = run.backend("slow")
        [published] = await run.publish(1)
        await until(lambda: len(backend.attempts) == 1, 15, "the send to begin")
        assert backend.items == []  # still in flight
        daemon.stop()  # what SIGTERM does
        await asyncio.wait_for(task, 20)
    finally:
        if run.publisher is not None:
            run.publisher.close(linger_ms=0)
    assert [item.msg_id for item in backend.items] == [published["msg_id"]]
    assert len(backend.attempts) == 1  # finished, not cancelled and tried again
    store = Outbox(tmp_path / "state.db")
    try:
        [row] = store.status(0)
    finally:
        store.close()
    assert (row.sent, row.queued, row.in_retry) == (1, 0, 0)


@pytest.mark.parametrize(("backlog", "coalesced"), [(50, False), (200, True)])
async def test_the_default_horizon_is_sixty_seconds_of_sending(
    start: Callable[..., Any], backlog: int, coalesced: bool
) -> None:
    """At 1 send/s a backlog under 60 is sent one by one; a larger one is summarised down to about a minute's worth."""
    rules = "rules:\n  - {name: all, match: {}, deliver: [{via: slow}]}\n"
    clock = FakeClock()
    run: Running = await start({"slow": "rate: 1, burst: 1"}, rules, clock=clock)  # the default Coalescer()
    slow = run.backend("slow")
    slow.fail_next("hang")  # the first send hangs while the backlog builds up
    await run.publish(1 + backlog)
    store = run.daemon.store
    await until(lambda: accepted(run.tmp) == 1 + backlog, 15, "the backlog accepted")
    assert store is not None
    slow.release()
    await until(lambda: sum(i.count for i in slow.items) == 1 + backlog, 15, "every message accounted for")
    summaries = [i for i in slow.items if i.count > 1]
    if coalesced:
        assert summaries, "a backlog over a minute's worth was sent one by one"
        assert len(slow.items) <= 80, len(slow.items)  # ~60 sends (one minute at 1/s) plus the few sent meanwhile
    else:
        assert summaries == [] and len(slow.items) == 1 + backlog


def accepted(tmp: Path) -> int:
    with sqlite3.connect(f"{(tmp / 'state.db').as_uri()}?mode=ro", uri=True) as db:
        return int(db.execute("SELECT COUNT(*) FROM accepted").fetchone()[0])


def _rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


async def test_a_30_minute_outage_under_100k_messages_stays_bounded_and_is_all_accounted_for(
    start: Callable[..., Any],
) -> None:
    """A destination down for 30 (fake) minutes while 100k messages arrive at full speed.

    ``max_backlog`` bounds what waits on disk (the oldest are summarised, also while the
    worker is paused between retries), memory stays flat, and after recovery every message
    is delivered or counted in a summary: the counts add up to exactly 100,000.
    """
    from fedmsg_notify.bus.envelope import Message

    rules = "rules:\n  - {name: all, match: {}, deliver: [{via: down}]}\n"
    clock = FakeClock()
    run: Running = await start({"down": "rate: 20, burst: 20, mode: temporary, max_backlog: 2000"}, rules, clock=clock)
    down = run.backend("down")
    store = run.daemon.store
    assert store is not None
    worker_destination = None
    total, slice_size = 100_000, 500
    envelopes_iter = envelopes(total, BODHI)
    rss_before = _rss_mb()
    peak_backlog = 0
    for n in range(total // slice_size):
        batch = [Message.from_envelope(next(envelopes_iter)) for _ in range(slice_size)]
        assert await run.daemon.accept(batch)
        clock.advance(1800 / (total // slice_size))  # the 30 minutes pass while the bus talks
        for _ in range(5):
            await asyncio.sleep(0)
        if worker_destination is None and run.daemon.workers:
            worker_destination = next(iter(run.daemon.workers.values())).destination
        if worker_destination is not None and n % 20 == 19:
            peak_backlog = max(peak_backlog, store.pending_count(worker_destination))
    assert worker_destination is not None
    grown = _rss_mb() - rss_before
    print(f"RSS grew {grown:.0f} MB over 100k messages; peak backlog {peak_backlog}; {len(down.attempts)} attempts")
    assert grown < 150, f"RSS grew {grown:.0f} MB during the outage"
    # Bounded while down: the limit plus what one check interval lets in (the worker checks every 10 s).
    assert peak_backlog <= 2000 + 10 * slice_size, peak_backlog
    down.mode = "ok"  # the destination comes back; the worker finds out at its next retry
    await until(lambda: sum(i.count for i in down.items) == total, 60, "every message delivered or summarised")
    [row] = store.status(clock.time())
    assert row.queued == 0 and row.failed == 0, row
    assert sum(i.count for i in down.items) == total
    assert row.coalesced > 0 and row.coalesced + sum(1 for i in down.items if i.count == 1) == total, row
