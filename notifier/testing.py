"""Test helpers shipped with the package (as ``structlog.testing`` is): a recording backend and a publisher.

:class:`RecordingBackend` is a real backend (``backend: fedmsg_notify.testing:RecordingBackend``
in a config) that records what it receives and can be told to fail temporarily, fail
permanently or hang. With ``path`` it appends one ``<item id> <msg_id> <destination>``
line per delivery to a file, so a test in another process can count deliveries after
a ``kill -9``. Like a remote service with idempotency keys (Mastodon's
``Idempotency-Key``, an MTA deduplicating on ``Message-ID``), it accepts an item id
only once — repeats are counted in ``<path>.repeats`` instead — which is what lets the
engine promise exactly-once across a crash (see :mod:`fedmsg_notify.delivery.workers`).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, ClassVar, Literal

from fedmsg_notify.backend import AccountOptions, Backend, Item, PermanentFailure, TemporaryFailure
from fedmsg_notify.bus.envelope import build_envelope
from fedmsg_notify.bus.zeromq import Publisher


class RecordingAccount(AccountOptions):
    # Append one line per delivery here (and repeats to <path>.repeats).
    path: str | None = None
    # Seconds each send takes: a slow destination.
    delay: float = 0.0
    # What every send does: succeed, fail temporarily, fail permanently, or never return.
    mode: Literal["ok", "temporary", "permanent", "hang"] = "ok"
    retry_after: float | None = None
    reason: str = "recording backend told to fail"


class RecordingBackend(Backend):
    """Records deliveries in memory (``items``) and optionally in a file; failures on demand."""

    name: ClassVar[str] = "recording"
    parts: ClassVar[tuple[str, ...]] = ("text",)
    rate: ClassVar[float] = 100_000.0
    burst: ClassVar[int] = 100_000
    supports_digest: ClassVar[bool] = True
    Account: ClassVar[type[AccountOptions]] = RecordingAccount
    # The live instance per account name, so an in-process test can reach the backend
    # the daemon built from its config.
    instances: ClassVar[dict[str, RecordingBackend]] = {}

    def __init__(self, account_name: str, account: AccountOptions) -> None:
        super().__init__(account_name, account)
        options = account if isinstance(account, RecordingAccount) else RecordingAccount(backend="recording")
        self.options = options
        self.mode = options.mode
        self.delay = options.delay
        self.items: list[Item] = []
        self.attempts: list[Item] = []
        self.sent_at: list[float] = []
        self.repeats = 0
        self.started = 0
        self.closed = 0
        self._seen: set[int] = set()
        self._scripted: deque[Exception | Literal["hang"]] = deque()
        self._release = asyncio.Event()
        RecordingBackend.instances[account_name] = self

    # -- control ----------------------------------------------------------------------------

    def fail_next(self, *errors: Exception | Literal["hang"]) -> None:
        """The next sends raise these (or hang, for ``"hang"``), in order; then back to ``mode``."""
        self._scripted.extend(errors)

    def release(self) -> None:
        """Let hung sends return (successfully)."""
        self._release.set()

    # -- the backend contract ---------------------------------------------------------------

    async def start(self) -> None:
        self.started += 1
        if self.options.path and Path(self.options.path).exists():
            for line in Path(self.options.path).read_text(encoding="utf-8").splitlines():
                if line.strip():
                    self._seen.add(int(line.split()[0]))

    async def close(self) -> None:
        self.closed += 1

    async def send(self, item: Item) -> None:
        self.attempts.append(item)
        if self._scripted:
            scripted = self._scripted.popleft()
            if scripted == "hang":
                await self._release.wait()
            else:
                raise scripted
        if self.mode == "hang":
            await self._release.wait()
        elif self.mode == "temporary":
            raise TemporaryFailure(self.options.reason, retry_after=self.options.retry_after)
        elif self.mode == "permanent":
            raise PermanentFailure(self.options.reason)
        if self.delay:
            await asyncio.sleep(self.delay)
        self._record(item)

    def _record(self, item: Item) -> None:
        if item.id in self._seen:
            self.repeats += 1
            if self.options.path:
                _append(self.options.path + ".repeats", f"{item.id} {item.msg_id} {item.destination}\n")
            return
        self._seen.add(item.id)
        self.items.append(item)
        self.sent_at.append(time.monotonic())
        if self.options.path:
            # One write(2) of a short line on an O_APPEND file: a kill -9 cannot split it.
            _append(self.options.path, f"{item.id} {item.msg_id} {item.destination}\n")


class ConnectionBoundRecorder(RecordingBackend):
    """A :class:`RecordingBackend` that behaves like an IRC connection in a cluster.

    ``connection_bound``: with several daemons on a shared store only the holder of the
    account's lock starts it. Each start and close appends ``start|close <pid> <time>``
    to ``<path>.connections``, so a test sees which daemon held the account and when.
    """

    connection_bound: ClassVar[bool] = True

    async def start(self) -> None:
        await super().start()
        if self.options.path:
            _append(self.options.path + ".connections", f"start {os.getpid()} {time.time()}\n")

    async def close(self) -> None:
        await super().close()
        if self.options.path:
            _append(self.options.path + ".connections", f"close {os.getpid()} {time.time()}\n")


class NullBackend(Backend):
    """Accepts every delivery at once and keeps only counts and times: the benchmark's sink.

    Shaped like the email backend (subject, text and an autoescaped HTML part, rendered
    through the shipped ``email/`` templates), the costliest rendering a delivery gets,
    so the benchmark measures real template work; nothing leaves the process. Memory
    stays flat however many deliveries pass (no item is kept), unless ``record`` is set:
    then ``(msg_id, time.time())`` per delivery for latency measurements.
    """

    name: ClassVar[str] = "email"
    parts: ClassVar[tuple[str, ...]] = ("subject", "text", "html")
    line_parts: ClassVar[frozenset[str]] = frozenset({"subject"})
    html_parts: ClassVar[frozenset[str]] = frozenset({"html"})
    # Never the bottleneck and never coalesced: the pace allows anything.
    rate: ClassVar[float] = 1e9
    burst: ClassVar[int] = 1_000_000_000
    supports_digest: ClassVar[bool] = True
    needs_recipient: ClassVar[bool] = True
    instances: ClassVar[dict[str, NullBackend]] = {}
    record: ClassVar[bool] = False

    def __init__(self, account_name: str, account: AccountOptions) -> None:
        super().__init__(account_name, account)
        self.delivered = 0
        self.first_at: float | None = None
        self.last_at: float | None = None
        self.times: list[tuple[str, float]] = []
        NullBackend.instances[account_name] = self

    async def send(self, item: Item) -> None:
        now = time.perf_counter()
        if self.first_at is None:
            self.first_at = now
        self.last_at = now
        self.delivered += 1
        if self.record:
            self.times.append((item.msg_id, time.time()))


def _append(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode("utf-8"))
    finally:
        os.close(fd)


def read_recording(path: str | Path) -> list[tuple[int, str, str]]:
    """The (item id, msg_id, destination) lines a :class:`RecordingBackend` wrote."""
    file = Path(path)
    if not file.exists():
        return []
    out: list[tuple[int, str, str]] = []
    for line in file.read_text(encoding="utf-8").splitlines():
        fields = line.split(" ", 2)
        if len(fields) == 3:
            out.append((int(fields[0]), fields[1], fields[2]))
    return out


def envelopes(count: int, topic: str, body: Any = None, *, username: str = "tester") -> Iterator[dict[str, Any]]:
    """``count`` fresh envelopes (unique msg_ids) on ``topic``, numbered in ``body["n"]`` by default."""
    for n in range(count):
        msg = body if body is not None else {"n": n, "agent": username}
        yield build_envelope(topic, msg, i=n + 1, username=username)


def publish_all(endpoint: str, messages: Iterable[dict[str, Any]], *, wait: float = 5.0) -> int:
    """Bind ``endpoint``, wait for a subscriber, send every envelope as is, close; return how many."""
    publisher = Publisher(endpoint, username="tester", wait=wait)
    sent = 0
    try:
        for envelope in messages:
            publisher.send_envelope(envelope)
            sent += 1
    finally:
        publisher.close()
    return sent
