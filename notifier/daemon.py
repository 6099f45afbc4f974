"""The daemon: wires the stages together and runs their lifecycle.

    bus ─▶ intake (meta, rules, render; one transaction per batch) ─▶ outbox (SQLite)
        ─▶ digest scheduler ─▶ outbox
        ─▶ one worker per destination (coalesce, pace, send, retry) ─▶ backend

Each stage lives in its own module (``intake``, ``outbox``, ``digest``, ``workers``,
``coalesce``, ``pacing``, ``retry``); this one only starts, reloads and stops them.

Signals: ``SIGHUP`` reloads config, rules and templates atomically — the new set is
built completely first, and if anything in it is invalid the errors are logged and the
old set keeps running. ``SIGTERM``/``SIGINT`` stop intake, give sends in flight
``shutdown_timeout`` seconds, and leave everything else queued in the store for the
next start. systemd hears about all of it through sd_notify (:mod:`systemd`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import signal
import socket
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

from fedmsg_notify import systemd, webserver
from fedmsg_notify.backend import Destination, install_hint
from fedmsg_notify.bus.amqp import AmqpBatch, AmqpSubscriber, amqp_state_path
from fedmsg_notify.bus.envelope import Message
from fedmsg_notify.bus.signatures import make_verifier
from fedmsg_notify.bus.zeromq import Subscriber
from fedmsg_notify.clock import Clock
from fedmsg_notify.config.model import Config, load_config
from fedmsg_notify.config.yaml_positions import Position, Problem, ProblemsError
from fedmsg_notify.delivery.coalesce import Coalescer
from fedmsg_notify.delivery.digest import DigestScheduler, joined_parts
from fedmsg_notify.delivery.guard import IntakeGuard
from fedmsg_notify.delivery.intake import Pipeline, accept_batch
from fedmsg_notify.delivery.retry import RetryPolicy
from fedmsg_notify.delivery.workers import BackendHandle, DestinationWorker
from fedmsg_notify.matching.rules import Route, Rule, RuleSet
from fedmsg_notify.meta.engine import MetaEngine
from fedmsg_notify.render.renderer import Renderer
from fedmsg_notify.store.faults import BadStateFile, check_state_file
from fedmsg_notify.store.sqlite import DigestEntry, Outbox

if TYPE_CHECKING:
    from fedmsg_notify.store.pg_cluster import AccountLocks

log = logging.getLogger(__name__)

COUNTERS_EVERY = 30.0
PRUNE_EVERY = 3600.0
# Messages routed, rendered and committed per transaction.
INTAKE_SLICE = 64


def build_pipeline(config: Config) -> Pipeline:
    """Rules, templates and metadata for ``config``; raises :class:`ProblemsError` if any is invalid."""
    return Pipeline(
        rules=RuleSet.load(config.rule_paths, config.accounts),
        renderer=Renderer(config.template_paths),
        meta=MetaEngine(config.service_paths).compute,
        backends={name: account.backend for name, account in config.accounts.items()},
    )


def _build_all(source: str) -> tuple[Config, Pipeline, Any]:
    """Everything a reload swaps in, built off the event loop (see :meth:`Daemon.reload`)."""
    config = load_config(source)
    return config, build_pipeline(config), make_verifier(config.signatures)


class Daemon:
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
        self.store: Outbox | None = None
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
        self._tasks: set[asyncio.Task[Any]] = set()
        # Intake pauses while the storage fails (disk full, read-only) and resumes by itself.
        self.guard = IntakeGuard(self.clock, on_fault=self._free_space, on_resume=self._count_refused)

    # -- public --------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop intake and shut down (what SIGTERM does)."""
        self._stop.set()

    async def run(self, ready: asyncio.Event | None = None) -> None:
        self._install_signals()
        self.store = store = self._open_store()
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
        self.digests = DigestScheduler(store, self._render_digest, lambda d: self.worker(d).notify(), clock=self.clock)
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

    def accept(self, batch: Sequence[Message]) -> bool:
        """The intake stage for one bus batch: stored in one transaction, then workers woken.

        False if the storage refused the batch (full, read-only): nothing of it was stored,
        and a bus that can redeliver (AMQP) should leave it on the broker.
        """
        return self.guard.run(self._store_batch, batch)

    def _store_batch(self, batch: Sequence[Message]) -> None:
        assert self.store is not None
        if self.verifier is not None:
            # Forged, tampered and unsigned messages stop here (or go on marked unverified).
            batch = [message for message in batch if self.verifier.admit(message)]
        accepted = accept_batch(self.store, self.pipeline, batch, self.clock.time())
        for destination in accepted.deliveries:
            self.worker(destination).notify()
        if accepted.digests and self.digests is not None:
            self.digests.notify()
        if accepted.duplicates:
            log.debug("%d (message, destination) pairs seen before, skipped", accepted.duplicates)

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
        self.config, self.pipeline, self.handles = config, pipeline, handles
        self._save_counters()
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

    def _open_store(self) -> Outbox:
        if self.config.state_url is not None:
            try:
                from fedmsg_notify.daemon_cluster import open_shared_store
            except ImportError as exc:
                where = self.config.state_where or Position(self.config.source, 1, 1)
                problem = f"state: a PostgreSQL store needs psycopg: {install_hint('postgresql')} ({exc})"
                raise ProblemsError([Problem(where, problem)]) from exc

            # The shared store has the same interface (see store/postgresql.py); typed as the embedded one.
            return cast(Outbox, open_shared_store(self.config, self.daemon_id))
        # Reported like a config error: the fix is the `state:` setting, its file or its directory.
        where = self.config.state_where or Position(self.config.source, 1, 1)
        try:
            # A damaged or foreign file is refused before anything writes to it.
            check_state_file(self.config.state_path)
            return Outbox(self.config.state_path)
        except BadStateFile as exc:
            raise ProblemsError([Problem(where, f"state: {exc}")]) from exc
        except (OSError, sqlite3.Error) as exc:
            raise ProblemsError([Problem(where, f"state: cannot open {self.config.state_path}: {exc}")]) from exc

    def _free_space(self, reason: str) -> None:
        """Housekeeping on a storage fault: prune finished rows, which SQLite reuses for new ones."""
        if self.store is not None and "full" in reason:
            # Sent rows first: their rendered text is most of the file; the dedup log stays.
            pruned = self.store.prune(self.clock.time(), keep_sent_rows=0)
            log.info("%s: pruned %d finished row(s) to make room", reason, pruned)

    def _count_refused(self, refused: int) -> None:
        if refused and self.store is not None:
            self.store.add_counters({"refused.storage": refused})

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

    async def _consume_all(self) -> None:
        consumers = [self._consume()]
        if self.amqp is not None:
            consumers.append(self._consume_amqp(self.amqp))
        await asyncio.gather(*consumers)

    async def _consume_amqp(self, amqp: AmqpSubscriber) -> None:
        """AMQP intake: a batch is acknowledged to the broker only after :meth:`accept` returned.

        ``accept`` returning means the batch's deliveries and digest entries are committed to
        the store; if it raises (a storage fault) the batch goes back to the broker (nack with
        requeue) and the error propagates, so nothing unstored is ever acknowledged.
        """
        batch: AmqpBatch
        async for batch in amqp.batches():
            stored = True
            try:
                for start in range(0, len(batch.messages), INTAKE_SLICE):
                    stored = self.accept(batch.messages[start : start + INTAKE_SLICE])
                    if not stored:
                        break
                    await asyncio.sleep(0)
            except BaseException:
                await batch.nack()
                raise
            if stored:
                await batch.ack()
            else:
                # The storage refused it (disk full, read-only): it stays on the broker, and
                # comes back when the guard's next probe may succeed (slices already stored
                # are recognised then as seen before).
                await batch.nack()
                await asyncio.sleep(self.guard.probe_every)

    async def _consume(self) -> None:
        assert self.subscriber is not None
        async for batch in self.subscriber.batches():
            # Store in slices, yielding between them: a 512-message burst would otherwise hold
            # the event loop for a few hundred milliseconds while the workers wait.
            for start in range(0, len(batch), INTAKE_SLICE):
                while True:
                    try:
                        self.accept(batch[start : start + INTAKE_SLICE])
                        break
                    except OSError as exc:
                        # The shared store is restarting: hold the slice (the bus buffers the rest) and retry.
                        log.warning("storing messages failed, retrying in 0.5 s: %s", exc)
                        await asyncio.sleep(0.5)
                await asyncio.sleep(0)

    def _render_digest(self, destination: Destination, entries: Sequence[DigestEntry], total: int) -> Mapping[str, str]:
        backend = self.pipeline.backends.get(destination.account)
        if backend is None:
            # The account is gone (reload); the digest waits in the store as the entries' text.
            return joined_parts(None, entries, total)
        first = entries[0]
        route = Route(
            destination=destination,
            rule=Rule(name=first.rule, file=first.rule_file),
            template=first.template,
            options=dict(first.options),
        )
        payload = [
            {"message": e.envelope, "topic": e.topic, "service": e.service, "meta": e.meta, "rendered": e.rendered}
            for e in entries
        ]
        try:
            return self.pipeline.renderer.render_digest(backend, payload, route, total)
        except Exception:
            log.exception("digest template for %s failed; sending the plain digest", destination)
            return joined_parts(backend, entries, total)

    async def _watchdog(self) -> None:
        interval = systemd.watchdog_interval()
        if interval is None:
            return
        while True:
            # Pinged from the event loop itself: a wedged loop stops the pings and systemd restarts us.
            systemd.watchdog()
            await asyncio.sleep(interval)

    async def _housekeeping(self) -> None:
        since_prune = 0.0
        while True:
            await asyncio.sleep(COUNTERS_EVERY)
            since_prune += COUNTERS_EVERY
            try:
                self._save_counters()
                if since_prune >= PRUNE_EVERY and self.store is not None:
                    since_prune = 0.0
                    self.store.prune(self.clock.time())
            except Exception as exc:
                # A full or read-only disk fails these too; they are tried again next round.
                log.warning("housekeeping failed, trying again in %.0f s: %s", COUNTERS_EVERY, exc)

    def _save_amqp_state(self) -> None:
        """The AMQP connection's state beside the state database, for ``status`` (written atomically)."""
        if self.amqp is None:
            return
        path = amqp_state_path(self.config.state_path)
        tmp = path.with_name(path.name + ".tmp")
        try:
            tmp.write_text(json.dumps(self.amqp.snapshot(), sort_keys=True), encoding="utf-8")
            tmp.replace(path)
        except OSError as exc:
            log.warning("cannot write %s: %s", path, exc)

    def _save_counters(self) -> None:
        self._save_amqp_state()
        if self.subscriber is None or self.store is None:
            return
        current = Counter(self.subscriber.malformed)
        if self.amqp is not None:
            current.update(self.amqp.malformed)
        delta = current - self._saved_malformed
        if delta:
            self.store.add_counters({f"malformed.{reason}": n for reason, n in delta.items()})
            self._saved_malformed = current
            log.info("malformed messages dropped so far: %s", dict(current))
        refused = Counter(self.verifier.rejected if self.verifier is not None else {})
        delta = refused - self._saved_refused
        if delta:
            self.store.add_counters({f"signature.{reason}": n for reason, n in delta.items()})
            self._saved_refused = refused
            log.info("messages failing signature validation so far: %s", dict(refused))

    async def _shutdown(self, consumer: asyncio.Task[None], stopper: asyncio.Task[Any]) -> None:
        systemd.stopping()
        log.info("stopping: intake closed, waiting up to %.0f s for sends in flight", self.shutdown_timeout)
        stopper.cancel()
        consumer.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await consumer
        if self.subscriber is not None:
            self.subscriber.close()
        if self.amqp is not None:
            await self.amqp.close()
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
        self._save_counters()
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
