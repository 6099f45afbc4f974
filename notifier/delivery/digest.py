"""The digest stage: entries wait in the store and go out as one delivery.

A route with ``digest: {every, max}`` stores a digest entry instead of a delivery. A
destination's digest is flushed when ``max`` entries are pending (in chunks of
``max``) or ``every`` seconds after its oldest pending entry arrived. Both are
computed from the store, so a digest due while the daemon was down goes out right
after the restart. A flush claims its entries and queues the digest delivery in one
transaction (:meth:`Store.flush_digest`), so two triggers in the same instant never
produce two digests of the same messages.

Rendering: the backend's ``digest`` template through ``Renderer.render_digest`` when
the renderer has it (summary first, then details, at most ``render_cap`` entries, with
the true count); a digest of one message is that message's normal rendering, so it
reads like a normal delivery.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Mapping, Sequence

from fedmsg_notify.backend import Backend, Destination
from fedmsg_notify.clock import Clock
from fedmsg_notify.store.interface import Store
from fedmsg_notify.store.records import DigestEntry, DigestGroup
from fedmsg_notify.store.writer import StoreThread

log = logging.getLogger(__name__)

RENDER_CAP = 100
# Seconds between two scans for full digests that new entries asked for.
SCAN_EVERY = 0.25

# (destination, at most RENDER_CAP entries, true total) -> rendered parts
RenderDigest = Callable[[Destination, Sequence[DigestEntry], int], Mapping[str, str]]


def digest_msg_id(entries: Sequence[DigestEntry], total: int) -> str:
    """Unique per destination: every entry is in exactly one digest, so its first entry names it."""
    return entries[0].msg_id if total == 1 else f"digest:{entries[0].msg_id}"


def joined_parts(backend: type[Backend] | None, entries: Sequence[DigestEntry], total: int) -> dict[str, str]:
    """The fallback digest when no digest template renders: a count line, then each entry's text."""
    if total == 1:
        return dict(entries[0].rendered)
    parts = backend.parts if backend is not None else tuple(entries[0].rendered)
    single_line = backend.line_parts if backend is not None else frozenset()
    more = total - len(entries)
    headline = f"{total} messages"
    out: dict[str, str] = {}
    for part in parts:
        if part in single_line:
            first = entries[0].rendered.get(part, "")
            out[part] = f"{headline}: {first}" if first else headline
            continue
        lines = [entry.rendered.get(part, "") for entry in entries]
        if more > 0:
            lines.append(f"... and {more} more")
        out[part] = "\n".join([headline, *lines])
    return out


class DigestScheduler:
    """Flushes due digests; :meth:`notify` after intake stored new entries."""

    def __init__(
        self,
        store: Store,
        render: RenderDigest,
        queued: Callable[[Destination], None],
        *,
        clock: Clock,
        render_cap: int = RENDER_CAP,
        thread: StoreThread | None = None,
    ) -> None:
        self.store = store
        self.render = render
        self.queued = queued
        self.clock = clock
        self.render_cap = render_cap
        self.wake = asyncio.Event()
        self.stopped = asyncio.Event()
        self.scan_every = SCAN_EVERY
        # Where scans and flushes run (with its own store connection); None: on the loop.
        self.thread = thread

    def notify(self) -> None:
        self.wake.set()

    def stop(self) -> None:
        self.stopped.set()
        self.wake.set()

    def flush_due(
        self, queued: Callable[[Destination], None] | None = None, store: Store | None = None
    ) -> tuple[int, float | None]:
        """Flush every due digest; return (digests queued, when the next one is due).

        ``queued`` hears each destination given a digest (default: the scheduler's own
        callback); ``store``: the store to use (default: the scheduler's).
        """
        store = store or self.store
        now = self.clock.time()
        flushed = 0
        next_due: float | None = None
        for group in store.digest_groups():
            due = group.due_at()
            if due is not None and due <= now:
                flushed += self._flush(group, now, store, queued or self.queued)
                # Entries left below `max` wait for the timer of their own oldest entry.
                continue
            if due is not None:
                next_due = due if next_due is None else min(next_due, due)
        if flushed:
            # Leftovers after a max-triggered flush may have their own deadline.
            for group in store.digest_groups():
                due = group.due_at()
                if due is not None and due > now:
                    next_due = due if next_due is None else min(next_due, due)
        return flushed, next_due

    def _flush(self, group: DigestGroup, now: float, store: Store, queued: Callable[[Destination], None]) -> int:
        by_count = group.max is not None and group.count >= group.max
        flushed = 0
        remaining = group.count
        while remaining > 0:
            if by_count and group.max is not None and remaining < group.max:
                break
            result = store.flush_digest(
                group.destination, group.max, self._render(group.destination), now, render_cap=self.render_cap
            )
            if result is None:
                break  # another flusher claimed them first
            _, claimed = result
            remaining -= claimed
            flushed += 1
            log.info("digest of %d messages queued for %s", claimed, group.destination)
        if flushed:
            queued(group.destination)
        return flushed

    def _render(
        self, destination: Destination
    ) -> Callable[[Sequence[DigestEntry], int], tuple[Mapping[str, str], str]]:
        def render(entries: Sequence[DigestEntry], total: int) -> tuple[Mapping[str, str], str]:
            return self.render(destination, entries, total), digest_msg_id(entries, total)

        return render

    async def run(self) -> None:
        while not self.stopped.is_set():
            self.wake.clear()
            scanned = time.monotonic()
            try:
                if self.thread is None:
                    _, next_due = self.flush_due()
                else:
                    # Scanned and rendered in the scheduler's thread; the workers are woken here.
                    given: list[Destination] = []
                    _, next_due = await self.thread.run(functools.partial(self.flush_due, given.append))
                    for destination in given:
                        self.queued(destination)
            except Exception:
                log.exception("flushing digests failed; trying again in 30 s")
                next_due = self.clock.time() + 30.0
            timeout = None if next_due is None else max(0.0, next_due - self.clock.time())
            woken = await self.clock.wait(self.wake, timeout)
            if woken and not self.stopped.is_set():
                # New entries: scanned at most every SCAN_EVERY seconds, however busy the bus
                # (the scan groups every unflushed entry; intake stores a slice every few ms).
                rest = scanned + self.scan_every - time.monotonic()
                if rest > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.stopped.wait(), rest)
