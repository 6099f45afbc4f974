"""Metadata, matching and rendering in other processes: the daemon's second core.

With ``intake_processes: N`` (N ≥ 1) the intake stage hands each slice of decoded messages
to a pool of N processes started with ``spawn``; each builds its own pipeline (rules,
templates, service files) from the daemon's validated :class:`~fedmsg_notify.config.model.Config`
and returns the slice's rendered deliveries and digest entries. The daemon keeps what
only it can do: the bus sockets, signature checks, the store's commits, the workers'
sends. The handoff is bounded and needs no durability of its own: a slice is in flight
to a process only while the intake awaits it, and nothing of it is stored (or acked to
AMQP) before the result is back, exactly as when it is routed on the loop.

Whenever no process can take a slice — the pool is still building its rules (100k of
them take seconds), a process died, the pool is being replaced after a reload — the
slice is routed on the daemon's own loop with the daemon's own pipeline, so intake never
waits for a process and nothing depends on one being there. A dead pool is replaced
after a pause that doubles up to a minute.

What a process logs (a template that fails, a broken rule) comes back with its result
and goes through the daemon's handlers with its original logger, level and pid; the
metadata fallbacks it counted are added to the daemon's engine, so ``status`` shows them.
A process ignores SIGINT and SIGHUP (they are the daemon's to act on) and exits when the
daemon is gone, even after a ``kill -9``.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from fedmsg_notify.backend import Destination
from fedmsg_notify.bus.envelope import Message
from fedmsg_notify.config.model import Config
from fedmsg_notify.daemon.pipeline import build_pipeline, render_digest
from fedmsg_notify.delivery.intake import Pipeline, route_batch
from fedmsg_notify.store.records import DigestEntry, NewDelivery, NewDigestEntry
from fedmsg_notify.store.shared import prepack

log = logging.getLogger(__name__)

Routed = tuple[list[NewDelivery], list[NewDigestEntry]]
# Fallback counts by (service, field), as MetaEngine keeps them.
Fallbacks = Mapping[tuple[str, str], int]

# Seconds before a pool that died (or could not start) is replaced; doubles up to the cap.
RESTART_AFTER = 2.0
RESTART_CAP = 60.0
# Seconds the digest thread waits for a process to render a digest before doing it itself.
DIGEST_TIMEOUT = 30.0


class RouteProcesses:
    """A pool of intake processes, or nothing while there is none ready (see the module doc)."""

    def __init__(
        self, on_fallbacks: Callable[[Fallbacks], None] | None = None, *, restart_after: float = RESTART_AFTER
    ) -> None:
        self.on_fallbacks = on_fallbacks
        self.restart_after = restart_after
        self.config: Config | None = None
        self.processes = 0
        self.ready = False
        # Slices routed in a process, slices routed on the loop instead (no process ready), pools started.
        self.routed_remote = 0
        self.routed_local = 0
        self.starts = 0
        # Digests rendered in a process.
        self.digests_remote = 0
        self._pool: ProcessPoolExecutor | None = None
        self._warming: asyncio.Task[None] | None = None
        self._pause: float | None = None  # the next pause after a death (None: restart_after)
        self._restart: asyncio.TimerHandle | None = None

    def start(self, config: Config) -> None:
        """Start a pool for ``config`` (replacing the current one); none if it asks for 0 processes."""
        self.close()
        self.config, self.processes = config, config.intake_processes
        if self.processes <= 0:
            return
        self._pool = ProcessPoolExecutor(
            max_workers=self.processes,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_child,
            initargs=(config, logging.getLogger().getEffectiveLevel(), os.getpid()),
        )
        self.starts += 1
        self._warming = asyncio.get_running_loop().create_task(self._warm(self._pool), name="intake processes")

    def close(self) -> None:
        """Stop the pool; slices in flight finish in their process first."""
        pool, self._pool, self.ready = self._pool, None, False
        if self._restart is not None:
            self._restart.cancel()
            self._restart = None
        if self._warming is not None:
            self._warming.cancel()
            self._warming = None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    def pids(self) -> list[int]:
        """The pool's process ids (for tests and status)."""
        processes = getattr(self._pool, "_processes", None) or {}
        return sorted(processes)

    async def route(self, batch: Sequence[Message]) -> Routed | None:
        """The slice routed and rendered in a process; ``None``: route it on the loop instead."""
        pool = self._pool
        if pool is None or not self.ready:
            self.routed_local += 1
            return None
        try:
            deliveries, entries, fallbacks, records = await asyncio.get_running_loop().run_in_executor(
                pool, _route_in_child, list(batch)
            )
        except BrokenProcessPool:
            if pool is self._pool:
                self._died("an intake process died")
            self.routed_local += 1
            return None
        except Exception:
            # A bug on the way there or back (routing itself catches per message): this slice on the loop.
            log.exception("routing %d message(s) in an intake process failed; routing them here", len(batch))
            self.routed_local += 1
            return None
        for record in records:
            logging.getLogger(record.name).handle(record)
        if fallbacks and self.on_fallbacks is not None:
            self.on_fallbacks(fallbacks)
        self.routed_remote += 1
        self._pause = None
        return deliveries, entries

    def render_digest(
        self, destination: Destination, entries: Sequence[DigestEntry], total: int
    ) -> Mapping[str, str] | None:
        """A digest rendered in an intake process, waited for in this thread; ``None``: render it here.

        For the digest thread: it blocks until the process answers, holding nothing the loop
        needs, where rendering 100 entries itself would compete with the loop for the
        interpreter. On the loop's own thread (no digest thread) it declines.
        """
        pool = self._pool
        if pool is None or not self.ready:
            return None
        try:
            asyncio.get_running_loop()
            return None  # the event loop's thread must not block on the process
        except RuntimeError:
            pass
        try:
            parts, records = pool.submit(_render_digest_in_child, destination, list(entries), total).result(
                timeout=DIGEST_TIMEOUT
            )
        except Exception as exc:  # a dead pool (the next slice replaces it), a timeout: render it here
            log.warning("rendering a digest for %s in an intake process failed (%s); rendering it here",
                        destination, type(exc).__name__)
            return None
        for record in records:
            logging.getLogger(record.name).handle(record)
        self.digests_remote += 1
        parts_map: Mapping[str, str] = parts
        return parts_map

    async def _warm(self, pool: ProcessPoolExecutor) -> None:
        """Ready once the pool's first process has built its pipeline."""
        started = time.monotonic()
        try:
            pid = await asyncio.get_running_loop().run_in_executor(pool, os.getpid)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the initializer failed (BrokenProcessPool) or the pool was shut down
            if pool is self._pool:
                self._died(f"intake processes could not start: {type(exc).__name__}: {exc}")
            return
        if pool is self._pool:
            self.ready = True
            log.info(
                "%d intake process(es) ready (first: pid %d, %.1f s to build the rules and templates)",
                self.processes,
                pid,
                time.monotonic() - started,
            )

    def _died(self, why: str) -> None:
        pool, self._pool, self.ready = self._pool, None, False
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        pause = self._pause or self.restart_after
        self._restart = asyncio.get_running_loop().call_later(pause, self._start_again)
        log.warning("%s; routing on the daemon's loop, a new pool in %.1f s", why, pause)
        self._pause = min(pause * 2, RESTART_CAP)

    def _start_again(self) -> None:
        self._restart = None
        if self.config is not None and self._pool is None:
            log.info("starting %d intake process(es) again", self.processes)
            self.start(self.config)


# -- in the intake process ------------------------------------------------------------

_pipeline: Pipeline | None = None
_reported: Counter[tuple[str, str]] = Counter()
_records: list[logging.LogRecord] = []


class _Collect(logging.Handler):
    """Keeps this process's log records for the daemon, made safe to pickle."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            record.msg = record.getMessage()
            record.args = None
            if record.exc_info:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
                record.exc_info = None
            _records.append(record)
        except Exception:  # a record that cannot be formatted is not worth losing a slice for
            self.handleError(record)


def _watch_parent(parent: int) -> None:
    # The pool's queues do not tell a process that the daemon was killed: it would wait forever.
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(0)


def _start_child(config: Config, level: int, parent: int) -> None:
    global _pipeline
    for signum in (signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    threading.Thread(target=_watch_parent, args=(parent,), name="watch daemon", daemon=True).start()
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(_Collect())
    root.setLevel(level)
    _pipeline = build_pipeline(config)
    # The rules and templates live as long as this process (a reload starts a new one): out
    # of the collector's sight, so no full collection walks 100k rules mid-stream.
    gc.collect()
    gc.freeze()
    _records.clear()


def _render_digest_in_child(
    destination: Destination, entries: list[DigestEntry], total: int
) -> tuple[Mapping[str, str], list[Any]]:
    assert _pipeline is not None
    parts = render_digest(_pipeline, destination, entries, total)
    records = list(_records)
    _records.clear()
    return parts, records


def _route_in_child(batch: list[Message]) -> tuple[list[NewDelivery], list[NewDigestEntry], Fallbacks, list[Any]]:
    global _reported
    assert _pipeline is not None
    deliveries, entries = route_batch(_pipeline, batch)
    deliveries = prepack(deliveries)  # compressed here, on this process's core
    fallbacks: Fallbacks = {}
    engine = getattr(_pipeline.meta, "__self__", None)
    counts = getattr(engine, "fallbacks", None)
    if isinstance(counts, Counter):
        delta = counts - _reported
        if delta:
            fallbacks, _reported = dict(delta), Counter(counts)
    records = list(_records)
    _records.clear()
    return deliveries, entries, fallbacks, records
