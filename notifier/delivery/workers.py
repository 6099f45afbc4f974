"""The delivery stage: one worker and one bounded queue per destination.

Each destination (account + recipient) has its own asyncio task that reads windows of
``window`` due rows from the store — never the whole backlog, so memory stays flat
under a flood — and sends them one at a time through the account's token bucket. A
dead SMTP server therefore never delays IRC, and a hung send is cut off by
``send_timeout`` and retried like any temporary failure.

Exactly once, and the one window left open
-------------------------------------------
A delivery is marked ``sent`` in the statement right after ``backend.send`` returns,
in the same task and with no ``await`` in between, so nothing else runs in that gap
(if the intake writer thread holds the SQLite lock at that instant, the mark is kept and
written a few milliseconds later, and nothing more is sent to the destination meanwhile). What no local protocol
can close is a crash after the remote side accepted the message and before our commit:
at most one delivery per destination (the one in flight — sends to a destination are
sequential) is then sent again after the restart. Backends that can be idempotent
close it on the remote side: ``Item.id`` is stable across restarts (AUTOINCREMENT,
never reused), and a digest's or message's ``msg_id`` is unique per destination, so a
Mastodon ``Idempotency-Key`` or an email ``Message-ID`` derived from them turns the
repeat into a no-op. Backends without that (IRC, desktop popups) are at-least-once
for that single in-flight delivery.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from fedmsg_notify.backend import Backend, Destination, Item
from fedmsg_notify.clock import Clock
from fedmsg_notify.delivery.coalesce import Coalescer
from fedmsg_notify.delivery.retry import Outcome, RetryPolicy
from fedmsg_notify.pacing import TokenBucket
from fedmsg_notify.store.faults import storage_busy, storage_fault
from fedmsg_notify.store.interface import Store

log = logging.getLogger(__name__)

WINDOW_SECONDS = 5.0
# How often an outcome the storage refused to record (disk full) is tried again.
RECORD_RETRY = 1.0
# How soon an outcome is recorded again when the intake writer held the store's lock (real time).
BUSY_RETRY = 0.005
# While a destination is paused after a failure, how often its backlog limits are applied.
BACKLOG_CHECK = 10.0


class BackendHandle:
    """One account's backend instance, its pace, and whether it has been started."""

    def __init__(self, backend: Backend, clock: Clock) -> None:
        self.backend = backend
        rate, burst = backend.pace
        self.bucket = TokenBucket(rate, burst, clock)
        self.clock = clock
        self._shared = False
        self.started = False
        self.inflight = 0
        self._lock = asyncio.Lock()

    def share_pace(self, store: Store) -> None:
        """With a store several daemons share, pace through the account's cluster-wide bucket instead."""
        if self._shared or not getattr(store, "cluster", False):
            return
        from fedmsg_notify.store.pg_pace import SharedBucket

        run = store._call  # type: ignore[attr-defined]
        self.bucket = SharedBucket(self.backend.account_name, self.bucket.rate, self.bucket.burst, run, self.clock)
        self._shared = True

    async def ensure_started(self) -> None:
        """Start the backend on first use; a failure is retried on the next send."""
        if self.started:
            return
        async with self._lock:
            if not self.started:
                await self.backend.start()
                self.started = True

    async def close(self, grace: float = 10.0) -> None:
        """Close once sends in flight (e.g. from before a reload) have finished, or ``grace`` passed."""
        for _ in range(int(grace * 20)):
            if self.inflight == 0:
                break
            await asyncio.sleep(0.05)
        if self.started:
            try:
                await self.backend.close()
            except Exception:
                log.exception("closing backend of account %s failed", self.backend.account_name)
            self.started = False


class DestinationWorker:
    """Sends one destination's queued deliveries, in order, paced, with retries."""

    def __init__(
        self,
        destination: Destination,
        store: Store,
        handles: Callable[[str], BackendHandle | None],
        *,
        clock: Clock,
        policy: RetryPolicy,
        coalescer: Coalescer | None = None,
        window: int = 100,
        send_timeout: float = 30.0,
    ) -> None:
        self.destination = destination
        self.store = store
        self.handles = handles
        self.clock = clock
        self.policy = policy
        self.coalescer = coalescer
        self.window = window
        self.send_timeout = send_timeout
        self.wake = asyncio.Event()
        self.stopped = asyncio.Event()
        self.paused_until = 0.0
        # Whether queued rows may wait for a later retry time. Only this worker schedules
        # retries (everything else queues rows due at once and wakes it), so once the store
        # said "nothing queued" it stays False until _failed schedules one.
        self.may_have_retries = True
        self.task: asyncio.Task[None] | None = None
        # Outcomes already known but not yet in the store (it refused the write): nothing
        # more is sent until they are, so a sent row is never sent again because of it.
        self.unrecorded: list[tuple[str, Callable[[], object]]] = []
        # Whether the last refused write found the store locked by the intake writer (see
        # Outbox._no_wait) rather than the storage failing.
        self._lock_busy = False
        self._absent = False

    def start(self) -> None:
        self.task = asyncio.create_task(self._supervise(), name=f"deliver {self.destination}")

    def notify(self) -> None:
        """New rows were queued for this destination."""
        self.wake.set()

    def stop(self) -> None:
        """Finish the send in flight, then exit; queued rows stay in the store."""
        self.stopped.set()
        self.wake.set()

    async def _supervise(self) -> None:
        # The worker is the only thing standing between a destination and its backlog: if
        # it crashes (a store error, a bug), log it with context and carry on.
        while not self.stopped.is_set():
            try:
                await self.run()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("delivery worker of %s crashed; restarting it in 5 s", self.destination)
                await self.clock.wait(self.stopped, 5.0)
        if self.unrecorded and not self._flush_unrecorded():
            log.warning("%d outcome(s) for %s could not be recorded before stopping; those deliveries may be"
                        " sent again after the restart", len(self.unrecorded), self.destination)

    async def run(self) -> None:
        while not self.stopped.is_set():
            if self.unrecorded and not self._flush_unrecorded():
                if self._lock_busy:
                    # Not a schedule but a lock held for a few ms: real time, also under a fake clock.
                    await asyncio.sleep(BUSY_RETRY)
                else:
                    await self.clock.wait(self.stopped, RECORD_RETRY)
                continue
            now = self.clock.time()
            if now < self.paused_until:
                # The server failed temporarily: send nothing to it until the retry is due,
                # rather than hammering it with the rest of the queue. An account with a
                # backlog limit has it applied meanwhile, every BACKLOG_CHECK seconds.
                pause = self.paused_until - now
                if self._backlog_limited():
                    self._apply_backlog_limits(now)
                    pause = min(pause, BACKLOG_CHECK)
                await self.clock.wait(self.stopped, pause)
                continue
            self.wake.clear()
            handle = self.handles(self.destination.account)
            if handle is None:
                # The account disappeared in a reload (or another daemon of a cluster holds
                # it): keep its rows, wait for it to return. Said once per absence.
                if not self._absent:
                    log.warning("account '%s' not served here: deliveries to %s wait in the store", *self._names())
                    self._absent = True
                await self.clock.wait(self.wake, None)
                continue
            self._absent = False
            handle.share_pace(self.store)
            if self.coalescer is not None:
                self.coalescer.check(self.store, self.destination, handle.backend, handle.bucket, now)
            # Load only what the pace sends in a few seconds, so a slow destination comes back
            # here (and to the coalescing check) often rather than once per big window.
            rate, burst = handle.bucket.rate, handle.bucket.burst
            size = max(1, min(self.window, burst + int(rate * WINDOW_SECONDS)))
            batch = self.store.window(self.destination, now, size)
            if not batch:
                due = self._next_due()
                await self.clock.wait(self.wake, None if due is None else due - now)
                continue
            for item, attempts in batch:
                current = self.handles(self.destination.account)
                if self.stopped.is_set() or current is None:
                    break
                current.share_pace(self.store)
                await current.bucket.take()
                if self.stopped.is_set():
                    break
                if not self.store.holds(item, self.clock.time()):
                    # A shared store's claim on the row would run out mid-send: claim again first.
                    break
                outcome = await self.deliver(current, item, attempts)
                if self.unrecorded:
                    break
                if not outcome.sent and not outcome.permanent:
                    self.paused_until = self.clock.time() + outcome.delay
                    break
            else:
                if len(batch) < size and not self.wake.is_set() and not self.stopped.is_set():
                    # A short window was everything due, and nothing was queued while it was
                    # sent (that sets wake): wait right away instead of asking the store again.
                    # Saves two or three queries per wakeup, i.e. per delivery when messages trickle in.
                    due = self._next_due()
                    await self.clock.wait(self.wake, None if due is None else due - self.clock.time())

    def _backlog_limited(self) -> bool:
        handle = self.handles(self.destination.account)
        if handle is None or self.coalescer is None:
            return False
        account = handle.backend.account
        return any(getattr(account, key, None) is not None for key in ("max_backlog", "max_backlog_age"))

    def _apply_backlog_limits(self, now: float) -> None:
        handle = self.handles(self.destination.account)
        if handle is not None and self.coalescer is not None:
            self.coalescer.check(self.store, self.destination, handle.backend, handle.bucket, now)

    def _next_due(self) -> float | None:
        """When the earliest queued row may be sent; ``None``: nothing queued (no query if none can be)."""
        if not self.may_have_retries:
            return None
        due = self.store.next_due(self.destination)
        if due is None:
            self.may_have_retries = False
        return due

    def _names(self) -> tuple[str, str]:
        return self.destination.account, self.destination.key

    async def deliver(self, handle: BackendHandle, item: Item, attempts: int) -> Outcome:
        """One attempt: send with a timeout, then record the outcome in the store."""
        handle.inflight += 1
        try:
            await handle.ensure_started()
            # asyncio.timeout, not wait_for: the send runs in this task, so its return flows
            # straight into mark_sent below without a trip through the event loop.
            async with asyncio.timeout(self.send_timeout):
                await handle.backend.send(item)
        except asyncio.CancelledError:
            # Shutdown ran out of patience: the row stays queued and is sent next start.
            raise
        except Exception as exc:
            return self._failed(item, attempts + 1, exc, handle.backend.retry_cap)
        else:
            # No await between the backend's success and this commit (see module docstring).
            at = self.clock.time()
            self._record(f"sent {item.msg_id}", lambda: self.store.mark_sent(item, at))
            return Outcome(sent=True)
        finally:
            handle.inflight -= 1

    def _failed(self, item: Item, attempts: int, exc: Exception, cap: float | None = None) -> Outcome:
        outcome = self.policy.classify(item, attempts, exc, cap)
        now = self.clock.time()
        if outcome.permanent:
            log.error(
                "delivery of %s to %s failed permanently (rule %s): %s",
                item.msg_id,
                item.destination,
                item.rule,
                outcome.reason,
            )
            self._record(f"failed {item.msg_id}", lambda: self.store.mark_failed(item, attempts, outcome.reason, now))
        else:
            log.warning(
                "delivery of %s to %s failed (attempt %d), retrying in %.1f s: %s",
                item.msg_id,
                item.destination,
                attempts,
                outcome.delay,
                outcome.reason,
            )
            self.may_have_retries = True
            due = now + outcome.delay
            self._record(f"retry {item.msg_id}", lambda: self.store.mark_retry(item, attempts, due, outcome.reason))
        return outcome

    def _record(self, what: str, write: Callable[[], object]) -> None:
        """Write an outcome to the store; if the storage refuses (full, read-only), keep it to write later."""
        try:
            write()
        except Exception as exc:
            if storage_busy(exc):
                self._lock_busy = True
                self.unrecorded.append((what, write))
                return
            reason = storage_fault(exc)
            if reason is None:
                raise
            self._lock_busy = False
            log.error("%s: could not record '%s' for %s (%s); sends to it wait until it can be",
                      reason, what, self.destination, exc)
            self.unrecorded.append((what, write))

    def _flush_unrecorded(self) -> bool:
        """Write the outcomes the storage refused before; True once all are in."""
        while self.unrecorded:
            what, write = self.unrecorded[0]
            try:
                write()
            except Exception as exc:
                self._lock_busy = storage_busy(exc)
                if not self._lock_busy and storage_fault(exc) is None:
                    raise
                return False
            self.unrecorded.pop(0)
            if not self._lock_busy:
                log.info("recorded '%s' for %s now that the storage accepts writes", what, self.destination)
        return True
