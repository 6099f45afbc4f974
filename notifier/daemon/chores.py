"""Housekeeping: the systemd watchdog, counters and AMQP state saved, old rows pruned, room made on a full disk."""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter

from fedmsg_notify import systemd
from fedmsg_notify.bus.amqp import AmqpSubscriber, amqp_state_path
from fedmsg_notify.bus.signatures import Verifier
from fedmsg_notify.bus.zeromq import Subscriber
from fedmsg_notify.clock import Clock
from fedmsg_notify.config.model import Config
from fedmsg_notify.daemon.routing import RouteProcesses
from fedmsg_notify.delivery.intake import Pipeline
from fedmsg_notify.store.interface import Store

log = logging.getLogger(__name__)

COUNTERS_EVERY = 30.0
PRUNE_EVERY = 3600.0


class Chores:
    """The daemon's periodic and on-fault housekeeping.

    Mixed into :class:`~fedmsg_notify.daemon.lifecycle.Daemon`, which sets up the
    state declared below and runs :meth:`_watchdog` and :meth:`_housekeeping` as tasks.
    """

    config: Config
    clock: Clock
    pipeline: Pipeline
    store: Store | None
    subscriber: Subscriber | None
    amqp: AmqpSubscriber | None
    verifier: Verifier | None
    _saved_malformed: Counter[str]
    _saved_refused: Counter[str]
    _saved_fallbacks: Counter[str]
    _saved_intake: Counter[str]
    _fallback_engine: object
    router: RouteProcesses

    def _free_space(self, reason: str) -> None:
        """Housekeeping on a storage fault: prune finished rows, which SQLite reuses for new ones."""
        if self.store is not None and "full" in reason:
            # Sent rows first: their rendered text is most of the file; the dedup log stays.
            pruned = self.store.prune(self.clock.time(), keep_sent_rows=0)
            log.info("%s: pruned %d finished row(s) to make room", reason, pruned)

    def _count_refused(self, refused: int) -> None:
        if refused and self.store is not None:
            self.store.add_counters({"refused.storage": refused})


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

    def _save_fallbacks(self) -> None:
        """Metadata fallbacks by service and field (where the service files' knowledge is thin), for ``status``."""
        engine = getattr(self.pipeline.meta, "__self__", None)
        counts = getattr(engine, "fallback_counts", None)
        if self.store is None or not callable(counts):
            return
        if engine is not self._fallback_engine:  # a reload made a new engine, counting from 0
            self._fallback_engine, self._saved_fallbacks = engine, Counter()
        current: Counter[str] = Counter()
        for service, fields in counts().items():
            for name, n in fields.items():
                current[f"fallback.{service}.{name}"] = n
        delta = current - self._saved_fallbacks
        if delta:
            self.store.add_counters(dict(delta))
            self._saved_fallbacks = current

    def _save_counters(self) -> None:
        self._save_amqp_state()
        if self.store is None:
            return
        self._save_fallbacks()
        current = Counter(self.subscriber.malformed if self.subscriber is not None else {})
        if self.amqp is not None:
            current.update(self.amqp.malformed)
        delta = current - self._saved_malformed
        if delta:
            self.store.add_counters({f"malformed.{reason}": n for reason, n in delta.items()})
            self._saved_malformed = current
            log.info("malformed messages dropped so far: %s", dict(current))
        # Intake slices routed in the intake processes and on the loop, for `status` (which shows
        # them only for a daemon that ever had intake processes: no writes for the others).
        intake = Counter({"intake.process": self.router.routed_remote, "intake.loop": self.router.routed_local,
                          "intake.digests_process": self.router.digests_remote})
        delta = intake - self._saved_intake
        if delta and self.router.starts:
            self.store.add_counters(dict(delta))
            self._saved_intake = intake
        refused = Counter(self.verifier.rejected if self.verifier is not None else {})
        delta = refused - self._saved_refused
        if delta:
            self.store.add_counters({f"signature.{reason}": n for reason, n in delta.items()})
            self._saved_refused = refused
            log.info("messages failing signature validation so far: %s", dict(refused))
