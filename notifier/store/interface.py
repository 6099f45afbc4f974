"""The store interface: what the delivery stage needs from durable state.

Two implementations, each one file plus the helpers it splits out:
:class:`fedmsg_notify.store.sqlite.Outbox` (one daemon, one file) and
:class:`fedmsg_notify.store.postgresql.Outbox` (several daemons sharing one database).
The delivery stage, the daemon and ``status`` type against :class:`Store`, so a third
store is a third file that mypy checks against this protocol, not a fork of the callers.

Every method is synchronous and short: the daemon calls them from its event loop, except
a batch's durable :meth:`Store.accept`, which it runs on an :meth:`Store.intake_twin` in its
writer thread (:mod:`~fedmsg_notify.store.writer`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from fedmsg_notify.backend import Destination, Item
from fedmsg_notify.store.records import (
    Accepted,
    DestinationStatus,
    DigestEntry,
    DigestGroup,
    NewDelivery,
    NewDigestEntry,
)


class Store(Protocol):
    """Durable state: the dedup log, the delivery queue, digest entries, counters."""

    def close(self) -> None: ...

    def intake_twin(self) -> Callable[[], Store]:
        """What opens a second handle on the same state, for the intake writer thread (called there).

        Only :meth:`accept`, :meth:`checkpoint` and :meth:`close` are called on the twin.
        """
        ...

    def checkpoint(self) -> None:
        """Housekeeping of the write-ahead log, from the writer thread (a no-op where the server does it)."""
        ...

    # -- intake -----------------------------------------------------------------------

    def accept(
        self, deliveries: Sequence[NewDelivery], entries: Sequence[NewDigestEntry] = (), *, now: float
    ) -> Accepted:
        """Store a batch atomically; (msg_id, destination) pairs accepted before are skipped."""
        ...

    # -- the delivery queue -----------------------------------------------------------

    def pending_destinations(self) -> list[Destination]:
        """Every destination with queued deliveries (workers to start after a restart)."""
        ...

    def window(self, destination: Destination, now: float, limit: int) -> list[tuple[Item, int]]:
        """The next ``limit`` due deliveries of a destination, in send order, with their attempt counts."""
        ...

    def holds(self, item: Item, now: float) -> bool:
        """Whether this daemon may send ``item`` now (a shared store's claim may have run out)."""
        ...

    def next_due(self, destination: Destination) -> float | None:
        """When the destination's earliest queued delivery may be tried (``None``: nothing queued)."""
        ...

    def pending_count(self, destination: Destination, *, created_before: float | None = None) -> int:
        """Queued deliveries of ``destination`` (only those accepted before ``created_before``, if given)."""
        ...

    def mark_sent(self, item: Item, now: float) -> None: ...

    def mark_retry(self, item: Item, attempts: int, next_attempt: float, reason: str) -> None: ...

    def mark_failed(self, item: Item, attempts: int, reason: str, now: float) -> None: ...

    def coalesce(
        self,
        destination: Destination,
        merge: int,
        summarise: Callable[[Sequence[Item]], Mapping[str, str]],
        now: float,
    ) -> int | None:
        """Merge the ``merge`` oldest queued deliveries into one summary delivery; return its id."""
        ...

    # -- digests ----------------------------------------------------------------------

    def digest_groups(self) -> list[DigestGroup]: ...

    def flush_digest(
        self,
        destination: Destination,
        limit: int | None,
        render: Callable[[Sequence[DigestEntry], int], tuple[Mapping[str, str], str]],
        now: float,
        *,
        render_cap: int = 100,
    ) -> tuple[int, int] | None:
        """Claim up to ``limit`` unflushed entries and queue their digest, once; (delivery id, claimed)."""
        ...

    # -- counters, status, retention --------------------------------------------------

    def add_counters(self, deltas: Mapping[str, int]) -> None: ...

    def counters(self) -> dict[str, int]: ...

    def status(self, now: float) -> list[DestinationStatus]: ...

    def prune(
        self,
        now: float,
        *,
        keep_done: float = ...,
        keep_sent_rows: float = ...,
        keep_failed: float = ...,
    ) -> int:
        """Forget finished work older than the retention; return how many rows went."""
        ...
