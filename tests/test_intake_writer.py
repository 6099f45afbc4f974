"""Intake commits off the event loop: a slow disk stalls nothing else, and nothing accepted is lost."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from fedmsg_notify.bus.envelope import Message
from fedmsg_notify.config.model import load_config
from fedmsg_notify.daemon import Daemon
from fedmsg_notify.store.sqlite import Outbox
from fedmsg_notify.testing import RecordingBackend, envelopes

from tests.loopgaps import loop_gaps

BODHI = "org.fedoraproject.prod.bodhi.update.comment"
SLOW = 0.3  # seconds each durable intake commit takes longer: a disk busy with someone else's writes


def write_config(tmp: Path, endpoint: str) -> Path:
    (tmp / "rules.yaml").write_text(
        "rules:\n  - {name: all, match: {}, deliver: [{via: irc, to: '#a'}, {via: irc, to: '#b'}]}\n"
    )
    path = tmp / "config.yaml"
    path.write_text(
        f"bus: {{endpoints: [{endpoint}]}}\n"
        "accounts:\n  irc: {backend: 'fedmsg_notify.testing:RecordingBackend', rate: 1000, burst: 1000}\n"
        f"rules: [{tmp / 'rules.yaml'}]\nstate: {tmp / 'state.db'}\n"
    )
    return path


async def longest_gap_while_commits_are_slow(
    tmp: Path, endpoint: str, monkeypatch: pytest.MonkeyPatch, *, in_thread: bool
) -> tuple[float, Daemon]:
    """Accept slices with every commit's fsync slowed while the worker sends and marks; the loop's longest gap."""
    real_sync = Outbox._sync_wal

    def slow_sync(self: Outbox) -> None:
        time.sleep(SLOW)
        real_sync(self)

    monkeypatch.setattr(Outbox, "_sync_wal", slow_sync)
    daemon = Daemon(load_config(write_config(tmp, endpoint)))
    daemon.intake_thread = in_thread
    ready = asyncio.Event()
    task = asyncio.create_task(daemon.run(ready))
    await asyncio.wait_for(ready.wait(), 10)
    loop = asyncio.get_running_loop()
    try:
        async with loop_gaps() as gaps:
            for _ in range(6):
                await asyncio.sleep(0.01)  # the bus's next batch arrives (and the heartbeat runs)
                batch = [Message.from_envelope(e) for e in envelopes(20, BODHI)]
                assert await daemon.accept(batch)
            irc = daemon.handles["irc"].backend
            assert isinstance(irc, RecordingBackend)
            deadline = loop.time() + 20
            while len(irc.items) < 6 * 20 * 2:
                assert loop.time() < deadline, f"only {len(irc.items)} of 240 deliveries sent"
                await asyncio.sleep(0.02)
    finally:
        daemon.stop()
        await asyncio.wait_for(task, 20)
    return max(gaps), daemon


async def test_a_slow_disk_does_not_stall_the_event_loop(
    tmp_path: Path, endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With every intake commit 300 ms slow, heartbeats (IRC PINGs, watchdog) keep coming: no gap near 300 ms.

    Commits on the loop give one gap of at least the commit (the next test); off it, the
    longest gap is CPU work (tens of ms here, bench/bench_state.py measures it). The bound is
    half the slow commit, so a loaded test machine's scheduling alone cannot fail it.
    """
    gap, daemon = await longest_gap_while_commits_are_slow(tmp_path, endpoint, monkeypatch, in_thread=True)
    assert gap < SLOW / 2, f"the event loop stalled for {gap * 1000:.0f} ms"
    # Everything accepted was sent once and recorded as sent (the workers' marks were not lost).
    store = Outbox(tmp_path / "state.db", readonly=True)
    try:
        states = dict(store.db.execute("SELECT state, COUNT(*) FROM deliveries GROUP BY state").fetchall())
    finally:
        store.close()
    assert states == {"sent": 240}
    irc = daemon.handles["irc"].backend
    assert isinstance(irc, RecordingBackend)
    assert len({(i.msg_id, i.destination) for i in irc.items}) == len(irc.items) == 240


async def test_the_stall_measurement_sees_a_commit_on_the_loop(
    tmp_path: Path, endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same run with the commits on the event loop stalls it for a whole commit (the test can tell)."""
    gap, _ = await longest_gap_while_commits_are_slow(tmp_path, endpoint, monkeypatch, in_thread=False)
    assert gap >= SLOW * 0.9, f"longest gap {gap * 1000:.0f} ms"


def test_an_accepted_batch_is_on_disk_before_accept_returns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The durable commit fsyncs the WAL after the commit, before accept returns; other writes do not."""
    from fedmsg_notify.backend import Destination
    from fedmsg_notify.store.records import NewDelivery

    synced: list[str] = []
    real_fsync = __import__("os").fsync

    def recording_fsync(fd: int) -> None:
        synced.append(Path(f"/proc/self/fd/{fd}").resolve().name)
        real_fsync(fd)

    store = Outbox(tmp_path / "state.db")
    monkeypatch.setattr("fedmsg_notify.store.sqlite.os.fsync", recording_fsync)
    try:
        dest = Destination("irc", "#a")
        store.accept([NewDelivery("m1", dest, "r", "t", "s", {"text": "x"})], now=1.0)
        assert "state.db-wal" in synced
        synced.clear()
        [(item, _)] = store.window(dest, 1.0, 10)
        store.mark_sent(item, 2.0)
        assert synced == []  # a send mark is bookkeeping: NORMAL, no fsync
    finally:
        store.close()


def test_a_send_mark_does_not_wait_for_the_intake_writers_lock(tmp_path: Path) -> None:
    """While the writer thread holds the lock, a mark on the loop's connection fails at once, and works after."""
    from fedmsg_notify.backend import Destination
    from fedmsg_notify.store.faults import storage_busy
    from fedmsg_notify.store.records import NewDelivery

    loop_store = Outbox(tmp_path / "state.db")
    dest = Destination("irc", "#a")
    loop_store.accept([NewDelivery("m1", dest, "r", "t", "s", {"text": "x"})], now=1.0)
    [(item, _)] = loop_store.window(dest, 1.0, 10)
    twin = loop_store.intake_twin()()
    try:
        twin.db.execute("BEGIN IMMEDIATE")  # an intake transaction in progress
        started = time.perf_counter()
        with pytest.raises(Exception) as caught:
            loop_store.mark_sent(item, 2.0)
        assert storage_busy(caught.value) and time.perf_counter() - started < 0.05
        twin.db.execute("COMMIT")
        loop_store.mark_sent(item, 2.0)
        assert loop_store.pending_count(dest) == 0
        # Other writes on the loop's connection still wait for the lock as before.
        assert int(loop_store.db.execute("PRAGMA busy_timeout").fetchone()[0]) == 10_000
    finally:
        twin.close()
        loop_store.close()


def test_checkpoints_are_the_writer_threads_job(tmp_path: Path) -> None:
    """The loop's connection never checkpoints (its fsyncs would stall the loop); the twin does, and restarts the WAL."""
    from fedmsg_notify.backend import Destination
    from fedmsg_notify.store.records import NewDelivery

    loop_store = Outbox(tmp_path / "state.db")
    twin = loop_store.intake_twin()()
    try:
        assert int(loop_store.db.execute("PRAGMA wal_autocheckpoint").fetchone()[0]) == 0
        dest = Destination("irc", "#a")
        twin.accept([NewDelivery(f"m{n}", dest, "r", "t", "s", {"text": "x" * 500}) for n in range(300)], now=1.0)
        for item, _ in loop_store.window(dest, 1.0, 300):
            loop_store.mark_sent(item, 2.0)
        wal = tmp_path / "state.db-wal"
        grown = wal.stat().st_size
        twin.checkpoint()
        # Copied into the database and restarted by the twin's own small write: the loop's
        # next mark appends to a WAL that already has a header.
        busy, frames, copied = twin.db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        assert (busy, frames, copied) == (0, 1, 1), (busy, frames, copied)
        assert wal.stat().st_size == grown  # reused from the start, not grown
        assert loop_store.pending_count(dest) == 0
    finally:
        twin.close()
        loop_store.close()
