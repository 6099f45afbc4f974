"""The retry stage: backoff schedule, Retry-After, and what counts as temporary."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest
from fedmsg_notify.backend import Destination, Item, PermanentFailure, TemporaryFailure
from fedmsg_notify.clock import FakeClock
from fedmsg_notify.delivery.retry import RetryPolicy
from fedmsg_notify.delivery.workers import BackendHandle, DestinationWorker
from fedmsg_notify.store.records import NewDelivery
from fedmsg_notify.store.sqlite import Outbox
from fedmsg_notify.testing import RecordingAccount, RecordingBackend

DEST = Destination("rec-retry", "#chan")
ITEM = Item(id=1, msg_id="m1", destination=DEST, rule="r", topic="t", service="s", rendered={})


def test_backoff_ceiling_doubles_and_is_capped() -> None:
    """A destination that stays down is retried ever less often, but at least every `cap` seconds."""
    policy = RetryPolicy(base=2.0, cap=60.0)
    assert [policy.ceiling(n) for n in range(1, 8)] == [2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]


def test_backend_retry_cap_lowers_the_ceiling() -> None:
    """A backend with a low retry cap (desktop: 30 s) is retried soon after its server is back, not 15 min later."""
    from fedmsg_notify.backends.desktop import DesktopBackend

    policy = RetryPolicy(rng=random.Random(2))
    assert DesktopBackend.retry_cap == 30.0
    delays = [policy.classify(ITEM, 20, TemporaryFailure("no session bus"), DesktopBackend.retry_cap).delay for _ in range(200)]
    assert max(delays) <= 30.0
    assert max(policy.classify(ITEM, 20, TemporaryFailure("down")).delay for _ in range(200)) > 30.0


def test_full_jitter_stays_within_the_ceiling() -> None:
    """Retries of many destinations spread out instead of hitting a recovering server at once."""
    policy = RetryPolicy(base=1.0, cap=30.0, rng=random.Random(1))
    delays = [policy.delay(5) for _ in range(500)]
    assert all(0.0 <= d <= 16.0 for d in delays)
    assert max(delays) - min(delays) > 8.0  # really jittered, not a constant


def test_retry_after_is_honoured_but_bounded() -> None:
    """A server's Retry-After is obeyed, but a bogus year-long one does not park a destination for a year."""
    policy = RetryPolicy(base=1.0, cap=30.0, max_retry_after=3600.0, rng=random.Random(2))
    assert all(policy.delay(1, retry_after=120.0) >= 120.0 for _ in range(50))
    assert policy.delay(1, retry_after=31_536_000.0) == 3600.0


def _store(tmp_path: Path, count: int = 1) -> Outbox:
    store = Outbox(tmp_path / "state.db")
    store.accept(
        [NewDelivery(f"msg-{n}", DEST, "rule", "t.topic", "svc", {"text": f"hello {n}"}) for n in range(count)],
        now=1_000_000.0,
    )
    return store


def _worker(store: Outbox, backend: RecordingBackend, clock: FakeClock, policy: RetryPolicy) -> DestinationWorker:
    handle = BackendHandle(backend, clock)
    return DestinationWorker(DEST, store, {DEST.account: handle}.get, clock=clock, policy=policy, send_timeout=0.5)


async def _until(condition: object, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():  # type: ignore[operator]
        assert loop.time() < deadline, "timed out waiting"
        await asyncio.sleep(0.01)


async def test_retry_schedule_with_fake_clock(tmp_path: Path) -> None:
    """Temporary failures are retried after jittered, growing, Retry-After-respecting delays, then delivered."""
    store = _store(tmp_path)
    clock = FakeClock(1_000_000.0)
    policy = RetryPolicy(base=2.0, cap=900.0, rng=random.Random(42))
    backend = RecordingBackend("rec-retry", RecordingAccount(backend="recording"))
    backend.fail_next(TemporaryFailure("421 busy"), TemporaryFailure("429", retry_after=120.0), TemporaryFailure("x"))
    worker = _worker(store, backend, clock, policy)
    worker.start()
    await _until(lambda: len(backend.items) == 1)
    worker.stop()
    await asyncio.wait_for(worker.task, 5)  # type: ignore[arg-type]
    expected = random.Random(42)
    first = expected.uniform(0, 2.0)
    second = max(expected.uniform(0, 4.0), 120.0)
    third = expected.uniform(0, 8.0)
    assert clock.sleeps == pytest.approx([first, second, third])
    assert len(backend.attempts) == 4
    assert store.status(clock.time())[0].sent == 1
    store.close()


async def test_retry_time_survives_a_restart(tmp_path: Path) -> None:
    """A delivery waiting for its retry is not sent early after a restart, and is sent when due."""
    store = _store(tmp_path)
    item, attempts = store.window(DEST, 1_000_000.0, 10)[0]
    store.mark_retry(item, attempts + 1, 1_000_300.0, "connection refused")
    store.close()
    reopened = Outbox(tmp_path / "state.db")
    assert reopened.window(DEST, 1_000_299.0, 10) == []
    [(again, tries)] = reopened.window(DEST, 1_000_300.0, 10)
    assert (again.id, tries) == (item.id, 1)
    reopened.close()


async def test_permanent_failure_is_not_retried(tmp_path: Path) -> None:
    """A rejected delivery is recorded with its reason and never tried again."""
    store = _store(tmp_path, count=2)
    clock = FakeClock(1_000_000.0)
    backend = RecordingBackend("rec-retry", RecordingAccount(backend="recording"))
    backend.fail_next(PermanentFailure("550 no such user"))
    worker = _worker(store, backend, clock, RetryPolicy())
    worker.start()
    await _until(lambda: len(backend.items) == 1)
    worker.stop()
    await asyncio.wait_for(worker.task, 5)  # type: ignore[arg-type]
    [status] = store.status(clock.time())
    assert (status.failed, status.last_failure, status.queued, status.sent) == (1, "550 no such user", 0, 1)
    assert len(backend.attempts) == 2
    store.close()


async def test_unexpected_exception_and_hang_count_as_temporary(tmp_path: Path) -> None:
    """A backend bug or a hung server delays the delivery instead of losing it or stalling the destination."""
    store = _store(tmp_path)
    clock = FakeClock(1_000_000.0)
    backend = RecordingBackend("rec-retry", RecordingAccount(backend="recording"))
    backend.fail_next(RuntimeError("backend bug"), "hang")
    worker = _worker(store, backend, clock, RetryPolicy(rng=random.Random(3)))
    worker.start()
    await _until(lambda: len(backend.items) == 1)
    worker.stop()
    await asyncio.wait_for(worker.task, 5)  # type: ignore[arg-type]
    assert len(backend.attempts) == 3
    assert len(clock.sleeps) == 2
    store.close()
