"""Intake from the buses: each batch stored in slices, one transaction each, then the workers woken.

Each slice is matched and rendered on the event loop and committed in the intake writer
thread (:mod:`~fedmsg_notify.store.writer`), awaited: the loop runs on while the disk syncs.

ZeroMQ batches are held and retried while a shared store reconnects; an AMQP batch is
acknowledged to the broker only once it is stored, and goes back to it otherwise.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Sequence
from typing import TYPE_CHECKING

from fedmsg_notify.backend import Destination
from fedmsg_notify.bus.amqp import AmqpBatch, AmqpSubscriber
from fedmsg_notify.bus.envelope import Message
from fedmsg_notify.bus.signatures import Verifier
from fedmsg_notify.bus.zeromq import Subscriber
from fedmsg_notify.clock import Clock
from fedmsg_notify.daemon.routing import Routed, RouteProcesses
from fedmsg_notify.delivery.digest import DigestScheduler
from fedmsg_notify.delivery.guard import IntakeGuard
from fedmsg_notify.delivery.intake import Pipeline, route_batch
from fedmsg_notify.delivery.workers import DestinationWorker
from fedmsg_notify.store.interface import Store
from fedmsg_notify.store.records import NewDelivery, NewDigestEntry
from fedmsg_notify.store.writer import IntakeWriter

log = logging.getLogger(__name__)

# Messages routed, rendered and committed per transaction.
INTAKE_SLICE = 64
# Messages routed and rendered between two yields to the event loop.
ROUTE_SLICE = 8
# Routed slices that may wait for their commit behind the one committing (AMQP: routing ahead of it).
ROUTE_AHEAD = 2


class BusIntake:
    """Reads the buses into the intake stage, a slice of messages per store transaction.

    Mixed into :class:`~fedmsg_notify.daemon.lifecycle.Daemon`, which sets up the
    state declared below and starts :meth:`_consume_all` as the ``intake`` task.
    """

    store: Store | None
    writer: IntakeWriter | None
    verifier: Verifier | None
    pipeline: Pipeline
    clock: Clock
    digests: DigestScheduler | None
    guard: IntakeGuard
    subscriber: Subscriber | None
    amqp: AmqpSubscriber | None
    router: RouteProcesses

    if TYPE_CHECKING:

        def worker(self, destination: Destination) -> DestinationWorker: ...

    async def accept(self, batch: Sequence[Message], routed: Awaitable[Routed] | None = None) -> bool:
        """The intake stage for one bus batch: stored in one transaction, then workers woken.

        ``routed``: the batch's routing, already under way (:meth:`route`); by default it is
        routed here. False if the storage refused the batch (full, read-only): nothing of it
        was stored, and a bus that can redeliver (AMQP) should leave it on the broker.
        """
        return await self.guard.run(functools.partial(self._store_batch, routed=routed), batch)

    async def route(self, batch: Sequence[Message]) -> Routed:
        """Metadata, rules and rendering for one slice: the deliveries and digest entries to store.

        In an intake process when one is ready (:mod:`~fedmsg_notify.daemon.routing`), else on
        the loop (templates and rules are not shared with threads), a few messages at a time
        with a yield between them (three email renderings of a message take ~1-2 ms).
        """
        if self.verifier is not None:
            # Forged, tampered and unsigned messages stop here (or go on marked unverified).
            batch = [message for message in batch if self.verifier.admit(message)]
        elsewhere = await self.router.route(batch) if batch else None
        if elsewhere is not None:
            return elsewhere
        deliveries: list[NewDelivery] = []
        entries: list[NewDigestEntry] = []
        for start in range(0, len(batch), ROUTE_SLICE):
            if start:
                await asyncio.sleep(0)
            routed, digested = route_batch(self.pipeline, batch[start : start + ROUTE_SLICE])
            deliveries += routed
            entries += digested
        return deliveries, entries

    async def _store_batch(self, batch: Sequence[Message], routed: Awaitable[Routed] | None = None) -> None:
        # The durable commit in the writer thread, so a slow disk stalls nothing else.
        assert self.store is not None
        deliveries, entries = await (routed if routed is not None else self.route(batch))
        if not deliveries and not entries:
            return
        now = self.clock.time()
        if self.writer is not None:
            accepted = await self.writer.accept(deliveries, entries, now=now)
        else:
            accepted = self.store.accept(deliveries, entries, now=now)
        for destination in accepted.deliveries:
            self.worker(destination).notify()
        if accepted.digests and self.digests is not None:
            self.digests.notify()
        if accepted.duplicates:
            log.debug("%d (message, destination) pairs seen before, skipped", accepted.duplicates)

    async def _consume_all(self) -> None:
        consumers = [self._consume()]
        if self.amqp is not None:
            consumers.append(self._consume_amqp(self.amqp))
        await asyncio.gather(*consumers)

    async def _consume_amqp(self, amqp: AmqpSubscriber) -> None:
        """AMQP intake: a batch is acknowledged to the broker only after :meth:`accept` returned.

        ``accept`` returning means the batch's deliveries and digest entries are committed to
        the store; if it raises (a storage fault) the batch goes back to the broker (nack with
        requeue) and the error propagates, so nothing unstored is ever acknowledged.
        """
        batch: AmqpBatch
        async for batch in amqp.batches():
            stored = True
            messages = batch.messages
            pieces = [messages[start : start + INTAKE_SLICE] for start in range(0, len(messages), INTAKE_SLICE)]
            # Routed ROUTE_AHEAD slices ahead of the one committing, as on ZeroMQ.
            routing = [asyncio.create_task(self.route(piece), name="route") for piece in pieces[: ROUTE_AHEAD + 1]]
            try:
                for n, piece in enumerate(pieces):
                    if n + ROUTE_AHEAD + 1 < len(pieces):
                        routing.append(asyncio.create_task(self.route(pieces[n + ROUTE_AHEAD + 1]), name="route"))
                    stored = await self.accept(piece, routing[n])
                    if not stored:
                        break
                    await asyncio.sleep(0)
            except BaseException:
                await batch.nack()
                raise
            finally:
                for task in routing:
                    task.cancel()
            if stored:
                await batch.ack()
            else:
                # The storage refused it (disk full, read-only): it stays on the broker, and
                # comes back when the guard's next probe may succeed (slices already stored
                # are recognised then as seen before).
                await batch.nack()
                await asyncio.sleep(self.guard.probe_every)

    async def _consume(self) -> None:
        """ZeroMQ intake: slices routed ahead of their commit, committed in order.

        While one slice commits (in the writer thread) the next one is routed, in an intake
        process or on the loop: one slice routing per intake process (one on the loop), at most
        ROUTE_AHEAD slices waiting for their commit. A slice is stored only after every slice
        before it, so each destination's deliveries keep the bus's order.
        """
        assert self.subscriber is not None
        subscriber = self.subscriber
        ahead: asyncio.Queue[tuple[Sequence[Message], asyncio.Task[Routed]]] = asyncio.Queue(maxsize=ROUTE_AHEAD)

        async def read() -> None:
            routing: set[asyncio.Task[Routed]] = set()
            async for batch in subscriber.batches():
                # Slices, with a yield between them: a 512-message burst would otherwise hold
                # the event loop for a few hundred milliseconds while the workers wait.
                for start in range(0, len(batch), INTAKE_SLICE):
                    # As many slices routing at once as there are processes to route them; what
                    # arrives meanwhile waits in the socket and makes the next slice: slices grow
                    # with the load instead of a queue of small ones each paying its own commit.
                    while len(routing) >= max(1, self.router.processes):
                        _, routing = await asyncio.wait(routing, return_when=asyncio.FIRST_COMPLETED)
                    piece = batch[start : start + INTAKE_SLICE]
                    task = asyncio.create_task(self.route(piece), name="route")
                    routing.add(task)
                    await ahead.put((piece, task))
                    await asyncio.sleep(0)

        async def store() -> None:
            while True:
                piece, routed = await ahead.get()
                while True:
                    try:
                        stored = await self.accept(piece, routed)
                        break
                    except OSError as exc:
                        # The shared store is restarting: hold the slice (the bus buffers the rest) and retry.
                        log.warning("storing messages failed, retrying in 0.5 s: %s", exc)
                        await asyncio.sleep(0.5)
                if not stored and not routed.done():
                    routed.cancel()  # refused while the storage fails: its routing is not needed
                await asyncio.sleep(0)

        reader = asyncio.create_task(read(), name="intake reader")
        storer = asyncio.create_task(store(), name="intake store")
        try:
            done, _ = await asyncio.wait({reader, storer}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
        finally:
            reader.cancel()
            storer.cancel()
            while not ahead.empty():
                ahead.get_nowait()[1].cancel()
            await asyncio.gather(reader, storer, return_exceptions=True)
