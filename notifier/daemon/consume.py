"""Intake from the buses: each batch stored in slices, one transaction each, then the workers woken.

Each slice is matched and rendered on the event loop and committed in the intake writer
thread (:mod:`~fedmsg_notify.store.writer`), awaited: the loop runs on while the disk syncs.

ZeroMQ batches are held and retried while a shared store reconnects; an AMQP batch is
acknowledged to the broker only once it is stored, and goes back to it otherwise.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from fedmsg_notify.backend import Destination
from fedmsg_notify.bus.amqp import AmqpBatch, AmqpSubscriber
from fedmsg_notify.bus.envelope import Message
from fedmsg_notify.bus.signatures import Verifier
from fedmsg_notify.bus.zeromq import Subscriber
from fedmsg_notify.clock import Clock
from fedmsg_notify.daemon.routing import RouteProcesses
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

    async def accept(self, batch: Sequence[Message]) -> bool:
        """The intake stage for one bus batch: stored in one transaction, then workers woken.

        False if the storage refused the batch (full, read-only): nothing of it was stored,
        and a bus that can redeliver (AMQP) should leave it on the broker.
        """
        return await self.guard.run(self._store_batch, batch)

    async def _store_batch(self, batch: Sequence[Message]) -> None:
        assert self.store is not None
        if self.verifier is not None:
            # Forged, tampered and unsigned messages stop here (or go on marked unverified).
            batch = [message for message in batch if self.verifier.admit(message)]
        # Matching and rendering on the loop (templates and rules are not shared with threads),
        # a few messages at a time with a yield between them (three email renderings of a
        # message take ~1-2 ms); the durable commit in the writer thread, so a slow disk
        # stalls nothing else.
        deliveries: list[NewDelivery] = []
        entries: list[NewDigestEntry] = []
        elsewhere = await self.router.route(batch) if batch else None
        if elsewhere is not None:
            deliveries, entries = elsewhere
        else:
            for start in range(0, len(batch), ROUTE_SLICE):
                if start:
                    await asyncio.sleep(0)
                routed, digested = route_batch(self.pipeline, batch[start : start + ROUTE_SLICE])
                deliveries += routed
                entries += digested
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
            try:
                for start in range(0, len(batch.messages), INTAKE_SLICE):
                    stored = await self.accept(batch.messages[start : start + INTAKE_SLICE])
                    if not stored:
                        break
                    await asyncio.sleep(0)
            except BaseException:
                await batch.nack()
                raise
            if stored:
                await batch.ack()
            else:
                # The storage refused it (disk full, read-only): it stays on the broker, and
                # comes back when the guard's next probe may succeed (slices already stored
                # are recognised then as seen before).
                await batch.nack()
                await asyncio.sleep(self.guard.probe_every)

    async def _consume(self) -> None:
        assert self.subscriber is not None
        async for batch in self.subscriber.batches():
            # Store in slices, yielding between them: a 512-message burst would otherwise hold
            # the event loop for a few hundred milliseconds while the workers wait.
            for start in range(0, len(batch), INTAKE_SLICE):
                while True:
                    try:
                        await self.accept(batch[start : start + INTAKE_SLICE])
                        break
                    except OSError as exc:
                        # The shared store is restarting: hold the slice (the bus buffers the rest) and retry.
                        log.warning("storing messages failed, retrying in 0.5 s: %s", exc)
                        await asyncio.sleep(0.5)
                await asyncio.sleep(0)
