"""The bus: a ZeroMQ SUB socket on every endpoint (receiving) and a PUB socket (publishing).

Receiving drains the socket in batches so a burst does not overflow ZeroMQ's queues
(with the default high-water mark of 1000 a slow reader silently loses messages);
malformed frame sets are counted by reason and logged, never fatal.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import zmq
import zmq.asyncio
from fedmsg_notify.bus.envelope import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_DEPTH,
    DEFAULT_MAX_STRING,
    MalformedMessage,
    Message,
    build_envelope,
    canonical_json,
    decode_frames,
)

log = logging.getLogger(__name__)

BATCH = 512
# Keepalive so a half-open TCP connection to a silent publisher is noticed.
KEEPALIVE = {zmq.TCP_KEEPALIVE: 1, zmq.TCP_KEEPALIVE_IDLE: 60, zmq.TCP_KEEPALIVE_INTVL: 15, zmq.TCP_KEEPALIVE_CNT: 4}


# Reconnect backoff ceiling for remote endpoints, and for endpoints on this host. A local
# publisher (``fedmsg-notify publish``, a test bus) comes and goes in moments and only waits
# a few seconds for us; a 5 s backoff would make it miss us, and retrying a local port every
# 200 ms costs nothing.
RECONNECT_MAX_MS = 5_000
LOCAL_RECONNECT_MAX_MS = 200


def is_local(url: str) -> bool:
    """True for ipc://, inproc:// and tcp:// endpoints on a loopback address."""
    scheme, _, rest = url.partition("://")
    if scheme in ("ipc", "inproc"):
        return True
    host = rest.rsplit(":", 1)[0].strip("[]").lower()
    return host in ("localhost", "::1", "*") or host.startswith("127.")


def _tune(sock: zmq.Socket[Any], *, reconnect_max_ms: int = RECONNECT_MAX_MS) -> None:
    for option, value in KEEPALIVE.items():
        sock.setsockopt(option, value)
    sock.setsockopt(zmq.RECONNECT_IVL, 100)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, reconnect_max_ms)


class Subscriber:
    """SUB socket connected to every endpoint; yields checked :class:`Message` batches."""

    def __init__(
        self,
        endpoints: Iterable[str],
        subscribe: Iterable[str] = ("",),
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_depth: int = DEFAULT_MAX_DEPTH,
        max_string: int = DEFAULT_MAX_STRING,
        receive_queue: int = 100_000,
        context: zmq.asyncio.Context | None = None,
        decode: Callable[[list[bytes]], Message] | None = None,
    ) -> None:
        self.endpoints = list(endpoints)
        self.prefixes = list(subscribe) or [""]
        self.max_bytes = max_bytes
        self.malformed: Counter[str] = Counter()
        self.received = 0
        self._decode = decode or (
            lambda frames: decode_frames(frames, max_bytes=self.max_bytes, max_depth=max_depth, max_string=max_string)
        )
        self._ctx = context or zmq.asyncio.Context.instance()
        self._sock = self._ctx.socket(zmq.SUB)
        _tune(self._sock)
        self._sock.setsockopt(zmq.RCVHWM, receive_queue)
        # A hard ceiling far above the soft limit: ZeroMQ drops the peer beyond it, so the
        # soft limit (counted and logged) is what users normally see.
        self._sock.setsockopt(zmq.MAXMSGSIZE, max(max_bytes * 8, 16 * 1024 * 1024))
        self._sock.setsockopt(zmq.LINGER, 0)
        for prefix in self.prefixes:
            self._sock.setsockopt(zmq.SUBSCRIBE, prefix.encode("utf-8"))
        for url in self.endpoints:
            # connect() never fails for a down endpoint: ZeroMQ keeps retrying in the background.
            # Options are taken per connection at connect(), so each endpoint gets its own backoff.
            self._sock.setsockopt(zmq.RECONNECT_IVL_MAX, LOCAL_RECONNECT_MAX_MS if is_local(url) else RECONNECT_MAX_MS)
            self._sock.connect(url)
        self._sync: zmq.Socket[bytes] = zmq.Socket.shadow(self._sock.underlying)

    def close(self) -> None:
        self._sock.close(linger=0)

    def _decode_counted(self, frames: list[bytes], out: list[Message]) -> None:
        self.received += 1
        try:
            out.append(self._decode(frames))
        except MalformedMessage as exc:
            self.malformed[exc.reason] += 1
            total = sum(self.malformed.values())
            # Log the first few of each kind, then every 1000th, so a flood of garbage
            # cannot flood the log either.
            if self.malformed[exc.reason] <= 5 or total % 1000 == 0:
                log.warning("malformed message dropped (%s): %s [%d malformed so far]", exc.reason, exc.detail, total)

    async def batches(self) -> AsyncIterator[list[Message]]:
        """Yield lists of decoded messages; each list is what the socket held at that moment."""
        while True:
            await self._sock.poll()
            batch: list[Message] = []
            for _ in range(BATCH):
                try:
                    frames = self._sync.recv_multipart(flags=zmq.NOBLOCK)
                except zmq.Again:
                    break
                self._decode_counted(frames, batch)
            if batch:
                yield batch

    async def messages(self) -> AsyncIterator[Message]:
        async for batch in self.batches():
            for message in batch:
                yield message


class Publisher:
    """Publishes fedmsg-compatible envelopes, as ``fedmsg.publish``/``fedmsg-logger`` do.

    ``bind`` makes us an endpoint subscribers connect to; otherwise we connect to a
    relay's inbound endpoint. Either way ZeroMQ's slow-joiner problem applies: a PUB
    socket drops messages for subscribers that have not finished connecting. We use an
    XPUB socket, which hears every subscription, wait until one arrives (or ``wait``
    seconds pass) before the first send, and count what went out while no subscription
    matched its topic (:attr:`unheard`): ZeroMQ drops those without a word.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        bind: bool = True,
        username: str = "fedmsg-notify",
        wait: float = 1.0,
        context: zmq.Context[Any] | None = None,
        signer: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.username = username
        self.wait = wait
        self.signer = signer
        self.counter = 0
        self.sent = 0
        # Messages sent while no subscription matched their topic.
        self.unheard = 0
        self._ctx = context or zmq.Context.instance()
        self._bind = bind
        self._sock = self._ctx.socket(zmq.XPUB)
        _tune(self._sock, reconnect_max_ms=LOCAL_RECONNECT_MAX_MS if is_local(endpoint) else RECONNECT_MAX_MS)
        self._sock.setsockopt(zmq.SNDHWM, 0)
        self._sock.setsockopt(zmq.LINGER, 5_000)
        if bind:
            self._sock.bind(endpoint)
        else:
            self._sock.connect(endpoint)
        self._ready = False
        # Subscribed prefixes and how many subscribe frames each has had: XPUB passes one
        # frame per new prefix and the unsubscribe when the last holder leaves.
        self._prefixes: Counter[bytes] = Counter()

    @property
    def last_endpoint(self) -> str:
        value = self._sock.getsockopt(zmq.LAST_ENDPOINT)
        return value.decode() if isinstance(value, bytes) else str(value)

    @property
    def subscribed(self) -> bool:
        self._drain_subscriptions()
        return bool(self._prefixes)

    def _note(self, frame: bytes) -> None:
        if not frame:
            return
        prefix = frame[1:]
        if frame[0] == 1:
            self._prefixes[prefix] += 1
        elif frame[0] == 0 and self._prefixes[prefix] > 0:
            self._prefixes[prefix] -= 1
            if not self._prefixes[prefix]:
                del self._prefixes[prefix]

    def _drain_subscriptions(self) -> None:
        while True:
            try:
                self._note(self._sock.recv(flags=zmq.NOBLOCK))
            except zmq.Again:
                return

    def wait_for_subscribers(self) -> None:
        if self._ready:
            return
        self._ready = True
        deadline = time.monotonic() + self.wait
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        seen = False
        while (remaining := deadline - time.monotonic()) > 0:
            if not poller.poll(timeout=int(remaining * 1000) + 1):
                break
            self._note(self._sock.recv())  # a (un)subscription frame
            if not seen:
                seen = True
                # Other subscribers usually connect within moments of the first.
                deadline = min(deadline, time.monotonic() + 0.3)

    def _heard(self, topic: bytes) -> bool:
        self._drain_subscriptions()
        return any(topic.startswith(prefix) for prefix in self._prefixes)

    def envelope(self, topic: str, msg: Any) -> dict[str, Any]:
        self.counter += 1
        envelope = build_envelope(topic, msg, i=self.counter, username=self.username)
        return self.signer(envelope) if self.signer else envelope

    def send_envelope(self, envelope: dict[str, Any]) -> None:
        self.send_raw([envelope["topic"].encode("utf-8"), canonical_json(envelope).encode("utf-8")])

    def publish(self, topic: str, msg: Any) -> dict[str, Any]:
        envelope = self.envelope(topic, msg)
        self.send_envelope(envelope)
        return envelope

    def send_raw(self, frames: list[bytes]) -> None:
        """Send arbitrary frames (tests and fuzzing use this to play a hostile peer)."""
        self.wait_for_subscribers()
        if not self._heard(frames[0] if frames else b""):
            self.unheard += 1
        self._sock.send_multipart(frames)
        self.sent += 1

    def close(self, linger_ms: int = 5_000) -> None:
        self._sock.close(linger=linger_ms)
