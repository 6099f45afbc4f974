"""The daemon: wires the stages together and runs their lifecycle.

    bus ─▶ intake (meta, rules, render; one transaction per batch, committed in the
           writer thread) ─▶ outbox (SQLite)
        ─▶ digest scheduler ─▶ outbox
        ─▶ one worker per destination (coalesce, pace, send, retry) ─▶ backend

Each stage lives in its own module (``intake``, ``outbox``, ``digest``, ``workers``,
``coalesce``, ``pacing``, ``retry``); this one only starts, reloads and stops them,
with the bus intake in :mod:`~fedmsg_notify.daemon.consume`, the housekeeping in
:mod:`~fedmsg_notify.daemon.chores` and opening the store in :mod:`~fedmsg_notify.daemon.state`.

Signals: ``SIGHUP`` reloads config, rules and templates atomically — the new set is
built completely first, and if anything in it is invalid the errors are logged and the
old set keeps running. ``SIGTERM``/``SIGINT`` stop intake, give sends in flight
``shutdown_timeout`` seconds, and leave everything else queued in the store for the
next start. systemd hears about all of it through sd_notify (:mod:`systemd`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import secrets
import signal
import socket
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from fedmsg_notify import systemd, webserver
from fedmsg_notify.backend import Destination
from fedmsg_notify.bus.amqp import AmqpSubscriber
from fedmsg_notify.bus.signatures import make_verifier
from fedmsg_notify.bus.zeromq import Subscriber
from fedmsg_notify.clock import Clock
from fedmsg_notify.config.model import Config, load_config
from fedmsg_notify.config.yaml_positions import ProblemsError
from fedmsg_notify.daemon.chores import Chores
from fedmsg_notify.daemon.consume import BusIntake
from fedmsg_notify.daemon.pipeline import build_pipeline, render_digest
from fedmsg_notify.daemon.routing import Fallbacks, RouteProcesses
from fedmsg_notify.daemon.state import open_store
from fedmsg_notify.delivery.coalesce import Coalescer
from fedmsg_notify.delivery.digest import DigestScheduler
from fedmsg_notify.delivery.guard import IntakeGuard
from fedmsg_notify.delivery.intake import Pipeline
from fedmsg_notify.delivery.retry import RetryPolicy
from fedmsg_notify.delivery.workers import BackendHandle, DestinationWorker
from fedmsg_notify.meta.engine import MetaEngine
from fedmsg_notify.store.interface import Store
from fedmsg_notify.store.records import DigestEntry
from fedmsg_notify.store.writer import IntakeWriter, StoreThread

if TYPE_CHECKING:
    from fedmsg_notify.store.pg_cluster import AccountLocks

log = logging.getLogger(__name__)


def _build_all(source: str) -> tuple[Config, Pipeline, Any]:
    """Everything a reload swaps in, built off the event loop (see :meth:`Daemon.reload`)."""
    config = load_config(source)
    return config, build_pipeline(config), make_verifier(config.signatures)


class Daemon(BusIntake, Chores):
    def __init__(
        self,
        config: Config,
        *,
        clock: Clock | None = None,
        policy: RetryPolicy | None = None,
        coalescer: Coalescer | None = None,
        send_timeout: float = 30.0,
        shutdown_timeout: float = 10.0,
        window: int = 100,
    ) -> None:
        self.config = config
        self.clock = clock or Clock()
        self.policy = policy or RetryPolicy()
        self.coalescer = coalescer if coalescer is not None else Coalescer()
        self.send_timeout = send_timeout
        self.shutdown_timeout = shutdown_timeout
        self.window = window
        self.pipeline = build_pipeline(config)
        self.verifier = make_verifier(config.signatures)
        self.handles: dict[str, BackendHandle] = {
            name: BackendHandle(account.backend(name, account.options), self.clock)
            for name, account in config.accounts.items()
        }
        self.store: Store | None = None
        # Commits intake batches off the event loop (False: on it, as before; for comparisons).
        self.intake_thread = True
        self.writer: IntakeWriter | None = None
        self.digest_thread: StoreThread | None = None
        # This daemon's name in a shared (PostgreSQL) store's leases, heartbeats and account locks.
        self.daemon_id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.locks: AccountLocks | None = None
        self.subscriber: Subscriber | None = None
        self.amqp: AmqpSubscriber | None = None
        self.workers: dict[str, DestinationWorker] = {}
        self.digests: DigestScheduler | None = None
        self.reloads = 0
        self._reload_lock = asyncio.Lock()
        # The HTTP server of the web backend, when the config has a `web:` section.
        self.web: Any = None
        self._stop = asyncio.Event()
        self._saved_malformed: Counter[str] = Counter()
        self._saved_refused: Counter[str] = Counter()
        self._saved_fallbacks: Counter[str] = Counter()
        self._saved_intake: Counter[str] = Counter()
        self._fallback_engine: object = None
        self._tasks: set[asyncio.Task[Any]] = set()
        # Intake pauses while the storage fails (disk full, read-only) and resumes by itself.
        self.guard = IntakeGuard(self.clock, on_fault=self._free_space, on_resume=self._count_refused)
        # Metadata, matching and rendering in `intake_processes` other processes (none: on the loop).
        self.router = RouteProcesses(self._merge_fallbacks)

    # -- public --------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop intake and shut down (what SIGTERM does)."""
        self._stop.set()

    async def run(self, ready: asyncio.Event | None = None) -> None:
        self._install_signals()
        self.store = store = self._open_store()
        if self.intake_thread:
            self.writer = IntakeWriter(store)
            self.writer.start()
        pruned = store.prune(self.clock.time())
        if pruned:
            log.info("pruned %d finished rows older than the retention", pruned)
        if getattr(store, "cluster", False):
            self._start_cluster()
        if self.config.web is not None:
            # Kept feed items are back before any queued web delivery is sent.
            webserver.attach_feed_file(self.config)
            webserver.declare_feeds(self.config, self.pipeline.rules)
        await self._start_backends(h for name, h in self.handles.items() if self._serves(name))
        for destination in store.pending_destinations():
            self.worker(destination)
        # Digest scans and renderings in a thread of their own, beside the intake writer's.
        self.digest_thread = StoreThread(store, "digests") if self.intake_thread else None
        self.digests = DigestScheduler(
            store, self._render_digest, lambda d: self.worker(d).notify(), clock=self.clock, thread=self.digest_thread
        )
        self._spawn(self.digests.run(), "digests")
        self.subscriber = Subscriber(
            self.config.endpoints,
            self.config.subscribe,
            max_bytes=self.config.max_message_bytes,
            max_depth=self.config.max_json_depth,
            max_string=self.config.max_string_length,
            receive_queue=self.config.receive_queue,
        )
        if self.config.amqp is not None:
            self.amqp = AmqpSubscriber(
                self.config.amqp,
                max_bytes=self.config.max_message_bytes,
                max_depth=self.config.max_json_depth,
                max_string=self.config.max_string_length,
            )
            self.amqp.on_change = self._save_amqp_state
            self._save_amqp_state()
        if self.config.web is not None:
            self.web = await webserver.start_web(
                self.config.web, self.config.source, webserver.snapshot_of(self, self.clock.time)
            )
        self.router.start(self.config)
        # What was built so far (100k compiled rules, templates) lives until a reload: kept out
        # of the cyclic collector's full passes, each of which would stall the loop for as long
        # as walking all of it takes (~0.5 s at 100k rules). A reload and the shutdown undo it
        # (so garbage frozen with it is collected then).
        gc.freeze()
        consumer = asyncio.create_task(self._consume_all(), name="intake")
        # Periodic chores end with the loop; they hold no work worth waiting for.
        background = [
            asyncio.create_task(self._watchdog(), name="watchdog"),
            asyncio.create_task(self._housekeeping(), name="housekeeping"),
        ]
        log.info(
            "listening on %s; state in %s; %d destination(s) with queued deliveries",
            ", ".join([*self.config.endpoints, *([self.config.amqp.redacted_url] if self.config.amqp else [])])
            or "(no endpoints)",
            getattr(store, "path", self.config.state_path),
            len(self.workers),
        )
        systemd.ready()
        if ready is not None:
            ready.set()
        stopper = asyncio.create_task(self._stop.wait())
        try:
            await asyncio.wait({consumer, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in background:
                task.cancel()
            await self._shutdown(consumer, stopper)
        if consumer.done() and not consumer.cancelled() and consumer.exception() is not None:
            raise RuntimeError("intake stopped unexpectedly") from consumer.exception()

    def worker(self, destination: Destination) -> DestinationWorker:
        """The destination's worker, started on first use."""
        worker = self.workers.get(destination.key)
        if worker is None:
            assert self.store is not None
            worker = DestinationWorker(
                destination,
                self.store,
                self._handle,
                clock=self.clock,
                policy=self.policy,
                coalescer=self.coalescer,
                window=self.window,
                send_timeout=self.send_timeout,
            )
            self.workers[destination.key] = worker
            worker.start()
        return worker

    async def reload(self) -> bool:
        """Build the new config, rules, templates and backends; swap them in only if all are valid.

        Reloads run one at a time: a second SIGHUP waits for the first, so sets swap in order.
        """
        async with self._reload_lock:
            return await self._reload()

    async def _reload(self) -> bool:
        systemd.reloading()
        try:
            # In a worker thread: compiling 100k rules takes seconds, and intake keeps running
            # on the previous set meanwhile; the swap below happens on the loop, all at once.
            config, pipeline, verifier = await asyncio.to_thread(_build_all, self.config.source)
        except ProblemsError as exc:
            for problem in exc.problems:
                log.error("reload refused: %s", problem)
            log.error("reload refused (%d problem(s)); still running the previous configuration", len(exc.problems))
            systemd.ready()
            return False
        except Exception:
            log.exception("reload refused; still running the previous configuration")
            systemd.ready()
            return False
        for what in ("endpoints", "subscribe", "state_path", "state_url", "max_message_bytes", "receive_queue", "amqp",
                     "web"):
            if getattr(config, what) != getattr(self.config, what):
                log.warning("reload: '%s' changed; it takes effect after a restart", what)
        handles, retired = self._reuse_handles(config)
        try:
            self._save_fallbacks()  # the old engine's counts, before its replacement starts from 0
        except Exception as exc:
            log.warning("saving metadata fallback counts failed: %s", exc)
        self.config, self.pipeline, self.handles = config, pipeline, handles
        gc.unfreeze()  # the previous set may go now; the collector sees everything again
        if self.store is not None:  # running: the intake processes build the new set too (meanwhile, the loop routes)
            self.router.start(config)
        self._save_counters_or_warn("at the reload")
        self.verifier, self._saved_refused = verifier, Counter()
        for worker in self.workers.values():
            worker.handles = self._handle
            worker.notify()
        for handle in retired:
            self._spawn(handle.close(self.shutdown_timeout), "close retired backend")
        if config.web is not None:
            webserver.declare_feeds(config, pipeline.rules)
        self.reloads += 1
        log.info("reloaded %s: %d account(s)", config.source, len(config.accounts))
        systemd.ready()
        return True

    # -- internals -----------------------------------------------------------------------

    def _save_counters_or_warn(self, when: str) -> None:
        """The counters saved, unless the storage fails (full, read-only): they are only counts."""
        try:
            self._save_counters()
        except Exception as exc:
            log.warning("saving the counters %s failed: %s", when, exc)

    def _merge_fallbacks(self, counts: Fallbacks) -> None:
        engine = getattr(self.pipeline.meta, "__self__", None)
        if isinstance(engine, MetaEngine):
            engine.merge_fallbacks(counts)

    def _open_store(self) -> Store:
        return open_store(self.config, self.daemon_id)

    def _serves(self, account: str) -> bool:
        """Whether this daemon sends for ``account`` now: always, unless it is connection-bound and held elsewhere."""
        if self.locks is None:
            return True
        account_config = self.config.accounts.get(account)
        if account_config is None or not account_config.backend.connection_bound:
            return True
        return account in self.locks.held

    def _handle(self, account: str) -> BackendHandle | None:
        return self.handles.get(account) if self._serves(account) else None

    def _start_cluster(self) -> None:
        from fedmsg_notify.daemon_cluster import ClusterMember

        member = ClusterMember(self, time.time())
        self.locks = member.locks
        self._spawn(member.run(), "cluster")

    def _reuse_handles(self, config: Config) -> tuple[dict[str, BackendHandle], list[BackendHandle]]:
        """Keep an account's running backend when its settings did not change (no IRC reconnect)."""
        handles: dict[str, BackendHandle] = {}
        for name, account in config.accounts.items():
            old_account = self.config.accounts.get(name)
            old = self.handles.get(name)
            same = (
                old is not None
                and old_account is not None
                and old_account.backend is account.backend
                and old_account.options == account.options
            )
            handles[name] = (
                old if same and old is not None else BackendHandle(account.backend(name, account.options), self.clock)
            )
        retired = [handle for name, handle in self.handles.items() if handles.get(name) is not handle]
        return handles, retired

    def _spawn(self, coroutine: Any, name: str) -> None:
        task = asyncio.create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        handlers: Mapping[signal.Signals, Callable[[], None]] = {
            signal.SIGTERM: self.stop,
            signal.SIGINT: self.stop,
            signal.SIGHUP: lambda: self._spawn(self.reload(), "reload"),
        }
        for sig, handler in handlers.items():
            try:
                loop.add_signal_handler(sig, handler)
            except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
                pass

    async def _start_backends(self, handles: Any) -> None:
        for handle in handles:
            try:
                await handle.ensure_started()
            except Exception as exc:
                # Not fatal: the destination's worker retries the start with backoff.
                log.error("starting backend of account %s failed: %s", handle.backend.account_name, exc)

    def _render_digest(self, destination: Destination, entries: Sequence[DigestEntry], total: int) -> Mapping[str, str]:
        # In an intake process when one is ready (from the digest thread, which waits for it
        # without holding the interpreter lock the loop needs), else here.
        rendered = self.router.render_digest(destination, entries, total)
        return rendered if rendered is not None else render_digest(self.pipeline, destination, entries, total)

    async def _shutdown(self, consumer: asyncio.Task[None], stopper: asyncio.Task[Any]) -> None:
        systemd.stopping()
        log.info("stopping: intake closed, waiting up to %.0f s for sends in flight", self.shutdown_timeout)
        stopper.cancel()
        consumer.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await consumer
        self.router.close()
        gc.unfreeze()
        if self.subscriber is not None:
            self.subscriber.close()
        if self.amqp is not None:
            await self.amqp.close()
        if self.writer is not None:
            # A commit in flight finishes first (what it stored is sent after the restart).
            await self.writer.close()
        if self.digests is not None:
            self.digests.stop()
        for worker in self.workers.values():
            worker.stop()
        tasks = [w.task for w in self.workers.values() if w.task is not None] + list(self._tasks)
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=self.shutdown_timeout)
            for task in pending:
                task.cancel()
            if pending:
                log.warning(
                    "%d task(s) still busy after %.0f s; their rows stay queued", len(pending), self.shutdown_timeout
                )
                await asyncio.wait(pending, timeout=1.0)
        if self.digest_thread is not None:
            await self.digest_thread.close()
        self._save_counters_or_warn("at shutdown")
        if self.web is not None:
            await self.web.close()
        for handle in self.handles.values():
            await handle.close(grace=0)
        if self.locks is not None:
            self.locks.close()
        if self.store is not None:
            queued = sum(self.store.pending_count(w.destination) for w in self.workers.values())
            log.info("stopped; %d deliveries stay queued for the next start", queued)
            self.store.close()
