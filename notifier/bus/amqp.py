"""The AMQP bus: fedora-messaging traffic from a RabbitMQ broker (Fedora's bus today).

A fedora-messaging message on the wire is the routing key (the topic), a JSON body (what
fedmsg called ``msg``), the AMQP ``message_id`` and headers: ``fedora_messaging_schema``,
``fedora_messaging_severity``, ``sent-at`` and one ``fedora_messaging_user_<name>`` /
``fedora_messaging_rpm_<name>`` / … per user, package, etc. :func:`decode_amqp` turns that
into the same checked :class:`Message` the ZeroMQ bus yields, with the same limits.

Acknowledgement is the caller's job and an explicit contract: :meth:`AmqpSubscriber.batches`
yields :class:`AmqpBatch` objects; the caller stores the batch's messages durably and only
then calls :meth:`AmqpBatch.ack`. If storing fails it calls :meth:`AmqpBatch.nack` (requeue),
so the broker redelivers; dedup by message id makes a redelivery invisible. Malformed
messages are rejected without requeue (counted, never redelivered forever).

The connection is re-established by itself with capped exponential backoff; messages that
were in flight when a connection died are redelivered by the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import re
import ssl
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedmsg_notify.bus.envelope import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_DEPTH,
    DEFAULT_MAX_STRING,
    UNPRINTABLE,
    MalformedMessage,
    Message,
    decode_text,
)

if TYPE_CHECKING:
    import aio_pika.abc

log = logging.getLogger(__name__)

BATCH = 512
SCHEMA_HEADER = "fedora_messaging_schema"
SEVERITY_HEADER = "fedora_messaging_severity"
SENT_AT_HEADER = "sent-at"
# Schema names are entry-point names ("bodhi.update.comment.v1", "base.message"); anything
# else in the header (newlines, quotes, shell or template syntax) is an attack, not a schema.
SCHEMA_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,200}$")
MAX_HEADERS = 1000
MAX_HEADER_VALUE = 4096
JSON_TYPES = ("application/json", "application/json; charset=utf-8", "")


def amqp_state_path(state_path: Path) -> Path:
    """Where the daemon records its AMQP connection state for ``status``: beside the state database."""
    return state_path.with_name(state_path.name + ".amqp.json")


@dataclass(frozen=True, slots=True)
class AmqpSettings:
    """The ``bus.amqp`` section, validated (see SPEC "The bus today")."""

    url: str
    queue: str | None = None
    exchange: str = "amq.topic"
    routing_keys: tuple[str, ...] = ("#",)
    ca_cert: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    passive_declares: bool = False
    prefetch: int = 100
    reconnect_min: float = 0.5
    reconnect_max: float = 30.0

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context for ``amqps://`` URLs (CA and client certificate); None for plain ``amqp://``."""
        if not self.url.startswith("amqps://"):
            return None
        context = ssl.create_default_context(cafile=str(self.ca_cert) if self.ca_cert else None)
        if self.cert is not None:
            context.load_cert_chain(str(self.cert), str(self.key) if self.key else None)
        return context

    @property
    def redacted_url(self) -> str:
        """The URL without its password, for logs and ``status``."""
        return re.sub(r"^(amqps?://[^:/@]*):[^@/]*@", r"\1:***@", self.url)


def _header_value(value: Any) -> Any:
    """A header value as JSON-safe data (AMQP tables also carry bytes, dates and decimals)."""
    if isinstance(value, bool | int | float) or value is None:
        return value
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, datetime.datetime):
        value = value.isoformat()
    text = str(value)
    if len(text) > MAX_HEADER_VALUE:
        raise MalformedMessage("bad-header", f"a header value of {len(text)} characters, limit {MAX_HEADER_VALUE}")
    return text


def _sent_at(value: Any, received: float) -> float:
    if isinstance(value, datetime.datetime):
        return value.timestamp()
    if isinstance(value, str):
        try:
            return datetime.datetime.fromisoformat(value).timestamp()
        except ValueError:
            pass
    return received


def decode_amqp(
    routing_key: str,
    body: bytes,
    *,
    message_id: str | None,
    headers: Mapping[str, Any] | None,
    content_type: str | None = None,
    received: float,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_string: int = DEFAULT_MAX_STRING,
) -> Message:
    """One fedora-messaging message as a checked :class:`Message`; raise :class:`MalformedMessage` if it is not one.

    The envelope has fedmsg's shape (``topic``, ``msg``, ``msg_id``, ``timestamp``) plus
    ``headers`` (JSON-safe) and ``severity``, so rules, templates and the store see one format.
    """
    size = len(body) + len(routing_key)
    if size > max_bytes:
        raise MalformedMessage("too-large", f"{size} bytes, limit {max_bytes}")
    if (content_type or "").lower() not in JSON_TYPES:
        raise MalformedMessage("bad-content-type", f"content type {content_type!r}, expected application/json")
    raw_headers = dict(headers or {})
    if len(raw_headers) > MAX_HEADERS:
        raise MalformedMessage("bad-header", f"{len(raw_headers)} headers, limit {MAX_HEADERS}")
    clean: dict[str, Any] = {}
    for name, value in raw_headers.items():
        if not isinstance(name, str) or UNPRINTABLE.search(name):
            raise MalformedMessage("bad-header", "a header name with whitespace or control characters")
        clean[name] = _header_value(value)
    schema = clean.get(SCHEMA_HEADER)
    if schema is not None and (not isinstance(schema, str) or not SCHEMA_NAME.match(schema)):
        raise MalformedMessage("bad-schema", f"{SCHEMA_HEADER} is not a schema name: {str(schema)[:60]!r}")
    severity = clean.get(SEVERITY_HEADER, 20)
    if not isinstance(severity, int) or isinstance(severity, bool) or not 0 <= severity <= 100:
        raise MalformedMessage("bad-severity", f"{SEVERITY_HEADER} is not a logging level: {str(severity)[:20]!r}")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedMessage("invalid-utf8", str(exc)) from None
    # The body is checked (size, depth, string length, JSON) with the ZeroMQ bus's rules by
    # decoding a fedmsg-shaped envelope that embeds it verbatim.
    envelope_text = (
        '{"topic":'
        + json.dumps(routing_key)
        + ',"timestamp":'
        + repr(_sent_at(raw_headers.get(SENT_AT_HEADER), received))
        + ',"msg_id":'
        + json.dumps(message_id)
        + ',"msg":'
        + text
        + "}"
    )
    if not text.strip():
        raise MalformedMessage("invalid-json", "empty body")
    message = decode_text(envelope_text, frame_topic=routing_key, max_depth=max_depth + 1, max_string=max_string)
    if message.envelope.get("msg_id") is None:
        raise MalformedMessage("bad-msg-id", "no AMQP message_id")
    message.envelope["headers"] = clean
    message.envelope["severity"] = severity
    message.received = received
    return message


@dataclass(slots=True)
class AmqpBatch:
    """Messages received together; the caller acknowledges them once they are durably stored."""

    messages: list[Message]
    deliveries: list[aio_pika.abc.AbstractIncomingMessage] = field(default_factory=list)
    owner: AmqpSubscriber | None = None

    async def ack(self) -> None:
        """Acknowledge every delivery of the batch (call only after the store committed them)."""
        await self._settle(requeue=None)

    async def nack(self) -> None:
        """Hand the batch back to the broker for redelivery (storing it failed)."""
        await self._settle(requeue=True)

    async def _settle(self, requeue: bool | None) -> None:
        # One AMQP frame per channel: the last delivery tag with multiple=True settles all before it.
        last: dict[int, aio_pika.abc.AbstractIncomingMessage] = {}
        for delivery in self.deliveries:
            last[id(delivery.channel)] = delivery
        if self.owner is not None:
            self.owner.unacked -= len(self)
            self.owner = None
        for delivery in last.values():
            try:
                if requeue is None:
                    await delivery.ack(multiple=True)
                else:
                    await delivery.nack(multiple=True, requeue=requeue)
            except Exception as exc:
                # The channel died after delivery: the broker redelivers these; dedup hides the repeat.
                log.warning("could not settle %d AMQP deliveries (%s); the broker will redeliver", len(self), exc)

    def __len__(self) -> int:
        return len(self.deliveries)


class AmqpSubscriber:
    """Consumes from a RabbitMQ queue bound to ``exchange`` with ``routing_keys``; yields :class:`AmqpBatch`."""

    def __init__(
        self,
        settings: AmqpSettings,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_depth: int = DEFAULT_MAX_DEPTH,
        max_string: int = DEFAULT_MAX_STRING,
    ) -> None:
        self.settings = settings
        self.max_bytes = max_bytes
        self.max_depth = max_depth
        self.max_string = max_string
        self.malformed: Counter[str] = Counter()
        self.received = 0
        self.connected = False
        self.connects = 0
        self.unacked = 0
        self.queue_name: str | None = settings.queue
        self.last_error: str | None = None
        self.since: float | None = None
        # Called on every connect and loss (the daemon writes the status file `status` reads).
        self.on_change: Callable[[], None] | None = None
        self._incoming: asyncio.Queue[aio_pika.abc.AbstractIncomingMessage] = asyncio.Queue()
        self._connection: aio_pika.abc.AbstractConnection | None = None
        self._runner: asyncio.Task[None] | None = None

    async def _setup(self) -> tuple[aio_pika.abc.AbstractConnection, aio_pika.abc.AbstractChannel]:
        # Imported here: the client comes with the `amqp` extra, needed only when `bus.amqp` is set.
        import aio_pika

        connection = await aio_pika.connect(self.settings.url, ssl_context=self.settings.ssl_context(), timeout=30)
        try:
            channel = await self._declare(connection)
        except BaseException:
            # A refused declare or bind: this connection is of no use; the retry makes a new one.
            with contextlib.suppress(Exception):
                await connection.close()
            raise
        return connection, channel

    async def _declare(self, connection: aio_pika.abc.AbstractConnection) -> aio_pika.abc.AbstractChannel:
        import aio_pika

        s = self.settings
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=s.prefetch)
        if s.passive_declares:
            exchange = await channel.get_exchange(s.exchange, ensure=True)
        elif s.exchange.startswith("amq."):
            exchange = await channel.get_exchange(s.exchange, ensure=False)
        else:
            exchange = await channel.declare_exchange(s.exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        if s.queue is None:
            queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        elif s.passive_declares:
            queue = await channel.get_queue(s.queue, ensure=True)
        else:
            queue = await channel.declare_queue(s.queue, durable=True)
        if not s.passive_declares:
            for key in s.routing_keys:
                await queue.bind(exchange, routing_key=key)
        self.queue_name = queue.name
        await queue.consume(self._incoming.put, no_ack=False)
        return channel

    async def _run(self) -> None:
        from aiormq.exceptions import AMQPError

        delay = self.settings.reconnect_min
        while True:
            try:
                connection, channel = await self._setup()
            except (TimeoutError, OSError, AMQPError, ssl.SSLError, ValueError) as exc:
                self.last_error = f"{type(exc).__name__}: {exc}{self._hint(exc)}"
                log.error(
                    "AMQP: cannot connect to %s (%s); retrying in %.1f s",
                    self.settings.redacted_url,
                    self.last_error,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.reconnect_max)
                continue
            except Exception as exc:
                # Not a failure we know, but still no reason to stop reading the bus for good.
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception(
                    "AMQP: unexpected error connecting to %s; retrying in %.1f s", self.settings.redacted_url, delay
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.reconnect_max)
                continue
            self._connection = connection
            self.connected = True
            self.connects += 1
            self.last_error = None
            self.since = time.time()
            self._changed()
            delay = self.settings.reconnect_min
            log.info("AMQP: consuming %s from %s", self.queue_name, self.settings.redacted_url)
            await self._closed(connection, channel)
            with contextlib.suppress(Exception):
                await connection.close()
            self.connected = False
            self._connection = None
            self.since = time.time()
            self._changed()
            log.warning("AMQP: connection to %s lost; reconnecting", self.settings.redacted_url)

    def _changed(self) -> None:
        if self.on_change is not None:
            try:
                self.on_change()
            except Exception:
                log.exception("AMQP: recording the connection state failed")

    def snapshot(self) -> dict[str, Any]:
        """The connection's state for ``status``: broker (password masked), queue, unacked, errors."""
        return {
            "broker": self.settings.redacted_url,
            "queue": self.queue_name or "(exclusive, not declared yet)",
            "durable": self.settings.queue is not None,
            "connected": self.connected,
            "since": self.since,
            "connects": self.connects,
            "unacked": self.unacked,
            "received": self.received,
            "last_error": self.last_error,
            "updated": time.time(),
        }

    def _hint(self, exc: BaseException) -> str:
        """What a bare TLS failure most likely means, so the log line says what to fix."""
        text = f"{type(exc).__name__} {exc}".lower()
        if "not_found" in text and self.settings.passive_declares:
            return (
                f" — with passive_declares the exchange {self.settings.exchange!r} and the queue"
                f" {self.settings.queue!r} must already exist on the broker"
            )
        if "access_refused" in text or "authentication" in text:
            return " — the broker refused the user name or password in bus.amqp.url, or this vhost"
        if not self.settings.url.startswith("amqps://"):
            return ""
        if "certificate verify failed" in text:
            return " — the broker's certificate is not signed by bus.amqp.ca_cert"
        if any(word in text for word in ("reset", "eof", "certificate", "alert", "unknown ca")):
            if self.settings.cert is None:
                return (
                    " — the broker closed the TLS connection; does it require a client certificate (bus.amqp.cert/key)?"
                )
            return " — the broker closed the TLS connection: it does not accept the client certificate bus.amqp.cert"
        return ""

    @staticmethod
    async def _closed(connection: aio_pika.abc.AbstractConnection, channel: aio_pika.abc.AbstractChannel) -> None:
        """Until the connection or the channel closes (a broker may close just the channel)."""
        lost = asyncio.Event()
        connection.close_callbacks.add(lambda *_: lost.set())
        channel.close_callbacks.add(lambda *_: lost.set())
        await lost.wait()

    def _decode(self, delivery: aio_pika.abc.AbstractIncomingMessage, received: float) -> Message:
        return decode_amqp(
            delivery.routing_key or "",
            delivery.body,
            message_id=delivery.message_id,
            headers=delivery.headers,
            content_type=delivery.content_type,
            received=received,
            max_bytes=self.max_bytes,
            max_depth=self.max_depth,
            max_string=self.max_string,
        )

    async def _reject(self, delivery: aio_pika.abc.AbstractIncomingMessage, exc: MalformedMessage) -> None:
        self.malformed[exc.reason] += 1
        total = sum(self.malformed.values())
        if self.malformed[exc.reason] <= 5 or total % 1000 == 0:
            log.warning("malformed AMQP message rejected (%s): %s [%d malformed so far]", exc.reason, exc.detail, total)
        with contextlib.suppress(Exception):
            await delivery.reject(requeue=False)

    async def batches(self) -> AsyncIterator[AmqpBatch]:
        """Yield what has arrived, in batches; malformed messages are rejected here and counted."""
        if self._runner is None:
            self._runner = asyncio.create_task(self._run(), name="amqp-connection")
        while True:
            first = await self._incoming.get()
            deliveries = [first]
            while len(deliveries) < BATCH and not self._incoming.empty():
                deliveries.append(self._incoming.get_nowait())
            received = time.time()
            batch = AmqpBatch(messages=[])
            for delivery in deliveries:
                self.received += 1
                try:
                    batch.messages.append(self._decode(delivery, received))
                except MalformedMessage as exc:
                    await self._reject(delivery, exc)
                    continue
                batch.deliveries.append(delivery)
            if batch.deliveries:
                self.unacked += len(batch)
                batch.owner = self
                yield batch

    async def close(self) -> None:
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._runner
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await self._connection.close()
        self.connected = False
