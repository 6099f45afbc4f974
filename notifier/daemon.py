"""The daemon: bus -> decode -> meta -> match -> render -> deliver (foundation version)."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

from fedmsg_notify.backend import Backend, DeliveryError, Item
from fedmsg_notify.bus import Subscriber
from fedmsg_notify.config import Config
from fedmsg_notify.envelope import Message
from fedmsg_notify.meta import compute_meta
from fedmsg_notify.render import Renderer
from fedmsg_notify.rules import RuleSet

log = logging.getLogger(__name__)


class Daemon:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.rules = RuleSet.load(config.rule_paths, config.accounts)
        self.renderer = Renderer(config.template_paths)
        self.backends: dict[str, Backend] = {
            name: account.backend(name, account.options) for name, account in config.accounts.items()
        }
        self.subscriber: Subscriber | None = None
        self._stop = asyncio.Event()
        self._counter = 0

    def stop(self) -> None:
        self._stop.set()

    async def handle(self, message: Message) -> None:
        meta = compute_meta(message)
        for route in self.rules.routes(message, meta):
            backend = self.backends[route.destination.account]
            rendered = self.renderer.render(type(backend), message, meta, route)
            self._counter += 1
            item = Item(
                id=self._counter,
                msg_id=message.msg_id,
                destination=route.destination,
                rule=route.rule.name,
                topic=message.topic,
                service=message.service,
                rendered=rendered,
                meta=meta.as_dict(),
                timestamp=message.timestamp,
            )
            try:
                await backend.send(item)
            except DeliveryError as exc:
                log.warning("delivery of %s to %s failed: %s", message.msg_id, route.destination, exc.reason)

    async def _consume(self) -> None:
        assert self.subscriber is not None
        async for batch in self.subscriber.batches():
            for message in batch:
                await self.handle(message)

    async def run(self, ready: asyncio.Event | None = None) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self.stop)
            except (NotImplementedError, RuntimeError):  # not the main thread
                pass
        for backend in self.backends.values():
            await backend.start()
        self.subscriber = Subscriber(
            self.config.endpoints,
            self.config.subscribe,
            max_bytes=self.config.max_message_bytes,
            receive_queue=self.config.receive_queue,
        )
        log.info("listening on %s", ", ".join(self.config.endpoints) or "(no endpoints)")
        consumer = asyncio.create_task(self._consume())
        if ready is not None:
            ready.set()
        stopper = asyncio.create_task(self._stop.wait())
        try:
            await asyncio.wait({consumer, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            consumer.cancel()
            stopper.cancel()
            self.subscriber.close()
            for backend in self.backends.values():
                await backend.close()
            self._log_counts()

    def _log_counts(self) -> None:
        if self.subscriber and self.subscriber.malformed:
            counts: dict[str, Any] = dict(self.subscriber.malformed)
            log.info("malformed messages dropped: %s", counts)
