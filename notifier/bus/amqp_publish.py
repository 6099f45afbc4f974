"""Publishing in the fedora-messaging wire format (``publish --amqp``, tests, the benchmark)."""

from __future__ import annotations

import asyncio
import datetime
import json
import ssl
import time
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from fedmsg_notify.bus.amqp import SCHEMA_HEADER, SENT_AT_HEADER, SEVERITY_HEADER

if TYPE_CHECKING:
    import aio_pika.abc


def fedora_headers(
    body: Any, *, schema: str = "base.message", severity: int = 20, sent_at: float | None = None
) -> dict[str, Any]:
    """The headers ``fedora_messaging`` puts on a message of ``schema`` (users and packages aside)."""
    when = datetime.datetime.fromtimestamp(time.time() if sent_at is None else sent_at, datetime.UTC)
    return {
        SCHEMA_HEADER: schema,
        SENT_AT_HEADER: when.replace(microsecond=0).isoformat(),
        SEVERITY_HEADER: severity,
        "priority": 0,
    }


class AmqpPublisher:
    """Publishes in the fedora-messaging wire format (``fedora-messaging consume`` reads it).

    Persistent messages with publisher confirms: :meth:`publish` returns once the broker has
    taken the message.
    """

    def __init__(self, url: str, *, exchange: str = "amq.topic", ssl_context: ssl.SSLContext | None = None) -> None:
        self.url = url
        self.exchange_name = exchange
        self.ssl_context = ssl_context
        self._connection: aio_pika.abc.AbstractConnection | None = None
        self._exchange: aio_pika.abc.AbstractExchange | None = None
        self._opening = asyncio.Lock()

    async def _open(self) -> aio_pika.abc.AbstractExchange:
        import aio_pika

        # One connection however many publishes run concurrently.
        async with self._opening:
            if self._exchange is None:
                self._connection = await aio_pika.connect(self.url, ssl_context=self.ssl_context, timeout=30)
                channel = await self._connection.channel(publisher_confirms=True)
                self._exchange = await channel.get_exchange(self.exchange_name, ensure=False)
            return self._exchange

    async def publish(
        self,
        topic: str,
        body: Any,
        *,
        schema: str = "base.message",
        message_id: str | None = None,
        headers: Mapping[str, Any] | None = None,
        raw_body: bytes | None = None,
        content_type: str = "application/json",
    ) -> str:
        """Publish one message; returns its message id. ``raw_body`` sends bytes as they are (tests)."""
        import aio_pika

        exchange = await self._open()
        msg_id = message_id or str(uuid.uuid4())
        all_headers = {**fedora_headers(body, schema=schema), **(headers or {})}
        data = raw_body if raw_body is not None else json.dumps(body).encode("utf-8")
        message = aio_pika.Message(
            data,
            headers=all_headers,
            content_type=content_type,
            content_encoding="utf-8",
            message_id=msg_id,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            priority=0,
        )
        await exchange.publish(message, routing_key=topic)
        return msg_id

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()
        self._connection = None
        self._exchange = None
