"""The coalescing stage: a backlog the pace cannot send soon is merged, not dropped.

When a destination has more queued deliveries than its token bucket allows within
``horizon`` seconds, the oldest are merged by the backend's ``summarise`` into one
summary delivery ("bodhi: 37 more updates pushed to stable"). The merged rows stay in
the store as ``coalesced`` with a pointer to their summary, and ``status`` counts them.

An account's ``max_backlog`` (a count) and ``max_backlog_age`` (seconds) bound what a
destination that is down for hours keeps waiting: beyond them the oldest are summarised
the same way, also while the worker is paused between retries, so the backlog on disk
stops growing and what is finally sent stays readable.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from fedmsg_notify.backend import Backend, Destination, Item
from fedmsg_notify.pacing import TokenBucket
from fedmsg_notify.render.sanitize import finish_parts
from fedmsg_notify.store.interface import Store

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Coalescer:
    # How far ahead a backlog may reach before it is summarised: a notification more
    # than a minute late is worth less than knowing how many there were.
    horizon: float = 60.0
    # Rows merged per transaction, so a 200k backlog never sits in memory at once.
    chunk: int = 2000

    def check(self, store: Store, destination: Destination, backend: Backend, bucket: TokenBucket, now: float) -> int:
        """Merge until the backlog fits the horizon and the account's limits; return how many rows were merged."""
        threshold = max(2, bucket.per(self.horizon))
        cap = getattr(backend.account, "max_backlog", None)
        if cap is not None:
            threshold = min(threshold, int(cap))
        merged = self._merge(store, destination, backend, now, lambda: store.pending_count(destination) - threshold + 1)
        if merged:
            log.info(
                "%s: backlog over %d deliveries (%.0f s at its pace%s): merged %d into summaries",
                destination,
                threshold,
                self.horizon,
                "" if cap is None else f", max_backlog {cap}",
                merged,
            )
        age = getattr(backend.account, "max_backlog_age", None)
        if age is not None:
            cutoff = now - float(age)
            old = self._merge(
                store, destination, backend, now, lambda: store.pending_count(destination, created_before=cutoff)
            )
            if old:
                log.warning("%s: %d deliveries waited over %.0f s (max_backlog_age): summarised", destination, old, age)
            merged += old
        return merged

    def _merge(
        self, store: Store, destination: Destination, backend: Backend, now: float, excess: Callable[[], int]
    ) -> int:
        """Merge the oldest rows, a chunk per transaction, while ``excess()`` says at least 2 are too many."""
        merged = 0
        while (take := min(excess(), self.chunk)) >= 2:
            try:
                summary = store.coalesce(destination, take, safe_summariser(backend), now)
            except Exception:
                # A broken summariser must not stall deliveries: send the backlog as it is.
                log.exception("summarising the backlog of %s failed; sending it unmerged", destination)
                return merged
            if summary is None:
                break
            merged += take
        return merged


def safe_summariser(backend: Backend) -> Callable[[Sequence[Item]], dict[str, str]]:
    """The backend's summariser with its output made as inert as template output.

    Summaries quote bus data (service names, titles) without going through a template,
    so the same guard every rendered part gets is applied here, in one place, whatever
    the backend's ``summarise`` does.
    """

    def summarise(items: Sequence[Item]) -> dict[str, str]:
        return finish_parts(backend.summarise(items), line_parts=backend.line_parts, html_parts=backend.html_parts)

    return summarise
