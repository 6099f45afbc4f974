"""The intake writer: a batch's durable commit in a thread of its own, awaited from the event loop.

An accepted batch must be on disk before the bus hears "stored" (an AMQP ack) -- an
fsync, which a busy or failing disk can stretch to hundreds of milliseconds. Run on the
event loop it stopped everything else for that long: IRC PINGs unanswered, the systemd
watchdog unpinged, every worker idle. :class:`IntakeWriter` owns one thread and, in it,
a second handle on the store (:meth:`Store.intake_twin`, a connection of its own);
:meth:`accept` hands the rendered batch over and awaits the commit, so the loop keeps
running meanwhile.

* One thread, one batch at a time, in the order handed over: the intake awaits each
  slice before the next, so acceptance order is send order, as before.
* The SQLite commit releases the write lock before its fsync (see
  :meth:`fedmsg_notify.store.sqlite.Outbox.transaction`): a worker's send mark on the
  loop's connection waits at most for the batch's inserts, never for the disk.
* Checkpoints run here too (after a quiet ``checkpoint_every``), never on the loop's
  connection.
* An exception of the commit (a full disk, an I/O error) reaches the awaiting caller
  unchanged, so the intake guard pauses intake exactly as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from fedmsg_notify.store.interface import Store
from fedmsg_notify.store.records import Accepted, NewDelivery, NewDigestEntry

log = logging.getLogger(__name__)

T = TypeVar("T")

CHECKPOINT_EVERY = 5.0


class IntakeWriter:
    def __init__(self, store: Store, *, checkpoint_every: float = CHECKPOINT_EVERY) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="intake-writer")
        # Opened in the thread that uses it (SQLite connections belong to their thread).
        self._twin: Store = self._pool.submit(store.intake_twin()).result()
        self.thread_ident = self._pool.submit(threading.get_ident).result()
        self.checkpoint_every = checkpoint_every
        self._busy = False
        self._checkpoints: asyncio.Task[None] | None = None

    async def _run(self, work: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, work)

    async def accept(
        self, deliveries: Sequence[NewDelivery], entries: Sequence[NewDigestEntry], *, now: float
    ) -> Accepted:
        """Commit a batch in the writer thread; returns once it is durable (raises what the store raised)."""
        self._busy = True
        try:
            return await self._run(lambda: self._twin.accept(deliveries, entries, now=now))
        finally:
            self._busy = False

    def start(self) -> None:
        self._checkpoints = asyncio.create_task(self._checkpoint_loop(), name="intake checkpoints")

    async def _checkpoint_loop(self) -> None:
        while True:
            await asyncio.sleep(self.checkpoint_every)
            if self._busy:
                continue  # the commit's own auto-checkpoint is as good
            try:
                await self._run(self._twin.checkpoint)
            except Exception as exc:  # a full or failing disk: the next round tries again
                log.warning("checkpointing the state failed, trying again in %.0f s: %s", self.checkpoint_every, exc)

    async def close(self) -> None:
        """Stop the checkpoints, let a commit in flight finish, close the twin, end the thread."""
        if self._checkpoints is not None:
            self._checkpoints.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checkpoints
        try:
            await self._run(self._twin.close)
        finally:
            self._pool.shutdown(wait=True)


class StoreThread:
    """A thread of its own with a connection of its own to the store, for work kept off the loop.

    The digest scheduler runs here (:class:`~fedmsg_notify.delivery.digest.DigestScheduler`):
    scanning every unflushed entry and rendering a 100-entry digest take tens of
    milliseconds, which on the loop would hold up every send and the bus.
    """

    def __init__(self, store: Store, name: str) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self.store: Store = self._pool.submit(store.intake_twin()).result()

    async def run(self, work: Callable[[Store], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, work, self.store)

    async def close(self) -> None:
        try:
            await self.run(lambda store: store.close())
        finally:
            self._pool.shutdown(wait=True)
