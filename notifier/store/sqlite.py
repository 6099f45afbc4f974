"""The durable store: every accepted delivery and digest entry, and what became of it.

SQLite in WAL mode, one file at the configured ``state`` path. Data flows one way
through the tables:

* ``accepted`` — the dedup log, unique on (msg_id, destination). A row is inserted
  (``INSERT OR IGNORE``) in the same transaction as the delivery or digest entry it
  guards, so a destination never gets a message twice: not when the bus replays it,
  not when two rules route it there, not across restarts.
* ``deliveries`` — the outbox. ``queued`` rows wait for their destination's worker;
  a send ends as ``sent``, ``failed`` (permanent, with the reason) or — for flood
  coalescing — ``coalesced`` into a summary row (``merged_into``). ``next_attempt``
  holds the retry schedule, so it survives a restart.
* ``digest_entries`` — messages waiting for a digest; a flush claims them
  (``flushed_into``) and inserts the digest's delivery in one transaction.
* ``messages`` / ``bodies`` — what a message's deliveries and entries share, stored once
  per batch: its metadata (and envelope, for digests) and each distinct rendering; rows
  point at a body (``body``) and pruning forgets the shared rows with their last row
  (:mod:`~fedmsg_notify.store.shared`, written by :mod:`~fedmsg_notify.store.sqlite_rows`).
* ``destinations`` / ``counters`` — what ``status`` shows besides the queues.

Durability: ``journal_mode=WAL`` with ``synchronous=NORMAL``. In WAL mode NORMAL
loses no committed transaction when the *process* dies (kill -9, OOM killer, a crash):
the commit is in the WAL file, in the kernel's page cache, and the kill test proves it.
Only a power cut or kernel crash can roll back the last few transactions. Then (a)
messages accepted in the last moment are lost, exactly as if they had arrived while
the daemon was down (the fedmsg bus is fire-and-forget; no publisher waits for our
commit), and (b) a delivery marked sent in the last moment is sent again (the backends'
idempotency keys cover Mastodon and email). ``FULL`` would close that by fsyncing every
commit — one per send — which costs more than it buys here.

All methods are synchronous and short; the daemon calls them from its event loop
(each is a handful of indexed statements, well under a millisecond) -- except
:meth:`Outbox.accept`, a batch's durable commit, which the daemon runs on a second
connection (:meth:`Outbox.intake_twin`) in its intake writer thread
(:mod:`~fedmsg_notify.store.writer`), with the checkpoints.

This module holds the connection, intake, the delivery queue, flood coalescing and
retention; the tables are in :mod:`~fedmsg_notify.store.sqlite_schema`, digests in
:mod:`~fedmsg_notify.store.sqlite_digest` and ``status`` in
:mod:`~fedmsg_notify.store.sqlite_status`, as the PostgreSQL store splits its own.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from fedmsg_notify.backend import Destination, Item
from fedmsg_notify.store import shared, sqlite_digest, sqlite_rows
from fedmsg_notify.store.records import (
    MERGED_META_CAP,
    Accepted,
    DestinationStatus,
    DigestEntry,
    DigestGroup,
    NewDelivery,
    NewDigestEntry,
    _dumps,
)
from fedmsg_notify.store.sqlite_schema import SCHEMA, SCHEMA_VERSION, migrate
from fedmsg_notify.store.sqlite_status import destination_status

# The records and the schema used to live here; their old import path keeps working.
__all__ = [
    "MERGED_META_CAP",
    "SCHEMA",
    "SCHEMA_VERSION",
    "Accepted",
    "DestinationStatus",
    "DigestEntry",
    "DigestGroup",
    "NewDelivery",
    "NewDigestEntry",
    "Outbox",
]

log = logging.getLogger(__name__)

def _destination(account: str, recipient: str | None) -> Destination:
    return Destination(account, recipient)


class Outbox:
    """The SQLite store. ``readonly`` opens an existing file for ``status`` without touching it."""

    def __init__(self, path: str | Path, *, readonly: bool = False, timeout: float = 10.0) -> None:
        self.path = Path(path)
        if readonly:
            if not self.path.exists():
                raise FileNotFoundError(f"{self.path}: no state database (has the daemon ever run?)")
            self.db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=timeout)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: we issue BEGIN IMMEDIATE ourselves, so a transaction
            # takes the write lock up front and two writers never deadlock on an upgrade.
            self.db = sqlite3.connect(self.path, timeout=timeout, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            # The schema, and every batch accepted from the bus, is on disk before we go on
            # (FULL for the schema; an accept fsyncs the WAL after its commit, see
            # transaction); the workers' bookkeeping commits with NORMAL, which a crash of
            # the machine can only roll back to "send again".
            self.db.execute("PRAGMA synchronous=FULL")
            found = migrate(self.db)
            if 0 < found < SCHEMA_VERSION:
                log.info("%s: schema upgraded from version %d to %d", self.path, found, SCHEMA_VERSION)
            self.db.execute("PRAGMA synchronous=NORMAL")
        self._wal_entry_synced = False
        self._timeout_ms = int(timeout * 1000)
        # Once an intake writer thread shares the file, send marks do not wait for its lock.
        self._marks_wait = True
        self.db.row_factory = sqlite3.Row

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def transaction(self, *, durable: bool = False) -> Iterator[sqlite3.Connection]:
        """One write transaction; ``durable``: on disk before this returns (survives a power loss).

        The durable commit is an ordinary (NORMAL) commit followed by an fsync of the WAL
        file, *after* the write lock is released: the fsync -- the slow part on a busy disk
        -- never holds up another connection's write (a worker marking a send). It is as
        durable as ``synchronous=FULL``: the fsync covers every frame written so far, and
        if a checkpoint moved our frames into the database file first, that checkpoint
        fsynced the database before the WAL could be reused (SQLite does, in NORMAL mode).
        """
        if self.db.in_transaction:
            # Left open by a COMMIT the storage refused (full disk): start from a clean slate.
            with contextlib.suppress(sqlite3.Error):
                self.db.execute("ROLLBACK")
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
            self.db.execute("COMMIT")
        except BaseException:
            # A failed COMMIT (disk full, I/O error) may leave the transaction open or already
            # rolled back by SQLite; either way nothing of it is stored, and the caller hears why.
            if self.db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self.db.execute("ROLLBACK")
            raise
        if durable:
            self._sync_wal()

    def _sync_wal(self) -> None:
        """fsync the WAL (and, the first time, its directory entry: the WAL is created per run)."""
        try:
            fd = os.open(f"{self.path}-wal", os.O_RDONLY)
        except FileNotFoundError:
            # No WAL (a filesystem where SQLite could not enable it): the commit is in the file itself.
            fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        if not self._wal_entry_synced:
            fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            self._wal_entry_synced = True

    def intake_twin(self) -> Callable[[], Outbox]:
        """What opens a second connection to the file, for the intake's writer thread (call it there).

        From now on checkpoints are the twin's job (:meth:`checkpoint`): this connection --
        the event loop's -- never runs one, so the loop never waits for a checkpoint's fsyncs.
        """
        self.db.execute("PRAGMA wal_autocheckpoint=0")
        self._marks_wait = False
        path = self.path
        return lambda: Outbox(path)

    def checkpoint(self) -> None:
        """Copy the WAL into the database (PASSIVE: never waits for another connection).

        When the whole WAL was copied, one small write restarts it here, at once: the first
        write into a restarted WAL fsyncs its header, and that should be this thread's, not
        the event loop's next send mark.
        """
        busy, log_frames, copied = self.db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        if not busy and log_frames > 1 and copied == log_frames:
            self.db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    # -- intake ---------------------------------------------------------------------

    def accept(
        self, deliveries: Sequence[NewDelivery], entries: Sequence[NewDigestEntry] = (), *, now: float
    ) -> Accepted:
        """Store a batch in ONE durable transaction; (msg_id, destination) pairs seen before are skipped."""
        # Packed (and compressed) before the write lock is taken: the loop's send marks wait
        # for the lock, so it is held for the inserts only.
        packed = shared.pack_batch(deliveries, entries)
        with self.transaction(durable=True) as db:
            return sqlite_rows.store_packed(db, packed, now)

    # -- the delivery queue -----------------------------------------------------------

    def pending_destinations(self) -> list[Destination]:
        """Every destination with queued deliveries (workers to start after a restart)."""
        rows = self.db.execute("SELECT DISTINCT account, recipient FROM deliveries WHERE state = 'queued'")
        return [_destination(row["account"], row["recipient"]) for row in rows]

    def window(self, destination: Destination, now: float, limit: int) -> list[tuple[Item, int]]:
        """The next ``limit`` due deliveries of a destination, in send order, with their attempt counts."""
        rows = self.db.execute(
            f"{sqlite_rows.ITEM_SELECT} WHERE d.dest = ? AND d.state = 'queued' AND d.next_attempt <= ?"
            " ORDER BY d.position LIMIT ?",
            (destination.key, now, limit),
        ).fetchall()
        return [(shared.item(row), int(row["attempts"])) for row in rows]

    def holds(self, item: Item, now: float) -> bool:
        """Whether this daemon may send ``item`` now: always, with one daemon per file."""
        return True

    def next_due(self, destination: Destination) -> float | None:
        """When the destination's earliest queued delivery may be tried (``None``: nothing queued)."""
        row = self.db.execute(
            "SELECT MIN(next_attempt) FROM deliveries WHERE dest = ? AND state = 'queued'", (destination.key,)
        ).fetchone()
        return None if row[0] is None else float(row[0])

    def pending_count(self, destination: Destination, *, created_before: float | None = None) -> int:
        if created_before is None:
            row = self.db.execute(
                "SELECT COUNT(*) FROM deliveries WHERE dest = ? AND state = 'queued'", (destination.key,)
            ).fetchone()
        else:
            row = self.db.execute(
                "SELECT COUNT(*) FROM deliveries WHERE dest = ? AND state = 'queued' AND created < ?",
                (destination.key, created_before),
            ).fetchone()
        return int(row[0])

    def mark_sent(self, item: Item, now: float) -> None:
        """Record a success. Called right after ``send`` returns, with no await in between.

        One statement, committed on its own; the ``deliveries_sent`` trigger counts it for
        the destination within the same implicit transaction.
        """
        with self._no_wait():
            self.db.execute(
                "UPDATE deliveries SET state = 'sent', finished = ?, last_error = NULL WHERE id = ?", (now, item.id)
            )

    @contextmanager
    def _no_wait(self) -> Iterator[None]:
        """A send mark on the event loop's connection: if the intake writer holds the lock, fail at once.

        SQLite's busy handler sleeps in steps of up to 100 ms, blocking the thread -- here the
        event loop. The worker keeps the outcome and tries again in a few milliseconds without
        blocking (``storage_busy``), sending nothing meanwhile.
        """
        if self._marks_wait:
            yield
            return
        self.db.execute("PRAGMA busy_timeout=0")
        try:
            yield
        finally:
            self.db.execute(f"PRAGMA busy_timeout={self._timeout_ms}")

    def mark_retry(self, item: Item, attempts: int, next_attempt: float, reason: str) -> None:
        with self._no_wait(), self.transaction() as db:
            db.execute(
                "UPDATE deliveries SET attempts = ?, next_attempt = ?, last_error = ? WHERE id = ?",
                (attempts, next_attempt, reason, item.id),
            )

    def mark_failed(self, item: Item, attempts: int, reason: str, now: float) -> None:
        with self._no_wait(), self.transaction() as db:
            db.execute(
                "UPDATE deliveries SET state = 'failed', attempts = ?, last_error = ?, finished = ? WHERE id = ?",
                (attempts, reason, now, item.id),
            )

    # -- flood coalescing ---------------------------------------------------------------

    def coalesce(
        self,
        destination: Destination,
        merge: int,
        summarise: Callable[[Sequence[Item]], Mapping[str, str]],
        now: float,
    ) -> int | None:
        """Merge the ``merge`` oldest queued deliveries into one summary delivery; return its id.

        The merged rows stay in the table as ``coalesced`` with a pointer to the summary,
        and the destination's coalesced counter grows by the messages they stood for:
        nothing is silently discarded.
        """
        if merge < 2:
            return None
        with self.transaction() as db:
            rows = db.execute(
                f"{sqlite_rows.ITEM_SELECT} WHERE d.dest = ? AND d.state = 'queued' ORDER BY d.position LIMIT ?",
                (destination.key, merge),
            ).fetchall()
            if len(rows) < 2:
                return None
            items = [shared.item(row) for row in rows]
            rendered = dict(summarise(items))
            total = sum(item.count for item in items)
            services = {item.service for item in items}
            topics = {item.topic for item in items}
            cursor = db.execute(
                "INSERT INTO deliveries (position, dest, account, recipient, kind, msg_id, rule, topic, service,"
                " rendered, options, meta, timestamp, count, next_attempt, created)"
                " VALUES (?,?,?,?,'summary',?,?,?,?,?,?,?,?,?,?,?)",
                (
                    min(int(row["position"]) for row in rows),
                    destination.key,
                    destination.account,
                    destination.to,
                    f"coalesced:{items[0].id}",
                    items[0].rule,
                    topics.pop() if len(topics) == 1 else "",
                    services.pop() if len(services) == 1 else "various",
                    _dumps(rendered),
                    _dumps(dict(items[0].options)),
                    _dumps({}),
                    items[-1].timestamp,
                    total,
                    now,
                    now,
                ),
            )
            summary_id = cursor.lastrowid
            assert summary_id is not None
            ids = [item.id for item in items]
            db.executemany(
                "UPDATE deliveries SET state = 'coalesced', merged_into = ?, finished = ? WHERE id = ?",
                [(summary_id, now, i) for i in ids],
            )
            # Messages merged for the first time; a summary merged again was counted already.
            newly = sum(int(row["count"]) for row in rows if row["kind"] != "summary")
            db.execute(
                "INSERT INTO destinations (dest, account, recipient, coalesced) VALUES (?,?,?,?)"
                " ON CONFLICT(dest) DO UPDATE SET coalesced = coalesced + excluded.coalesced",
                (destination.key, destination.account, destination.to, newly),
            )
        return int(summary_id)

    # -- digests --------------------------------------------------------------------------

    def digest_groups(self) -> list[DigestGroup]:
        return sqlite_digest.groups(self.db)

    def flush_digest(
        self,
        destination: Destination,
        limit: int | None,
        render: Callable[[Sequence[DigestEntry], int], tuple[Mapping[str, str], str]],
        now: float,
        *,
        render_cap: int = 100,
    ) -> tuple[int, int] | None:
        """Claim up to ``limit`` unflushed entries and queue their digest, atomically (see :mod:`sqlite_digest`)."""
        return sqlite_digest.flush_digest(
            self.db, self.transaction, destination, limit, render, now, render_cap=render_cap
        )

    # -- counters, status, housekeeping ---------------------------------------------------

    def add_counters(self, deltas: Mapping[str, int]) -> None:
        if not any(deltas.values()):
            return
        with self.transaction() as db:
            db.executemany(
                "INSERT INTO counters (name, value) VALUES (?, ?)"
                " ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
                [(name, value) for name, value in deltas.items() if value],
            )

    def counters(self) -> dict[str, int]:
        return {row["name"]: int(row["value"]) for row in self.db.execute("SELECT name, value FROM counters")}

    def status(self, now: float) -> list[DestinationStatus]:
        """Per destination: where every notification is. Read-only; safe while the daemon runs."""
        return destination_status(self.db)

    def prune(
        self,
        now: float,
        *,
        keep_done: float = 7 * 86400,
        keep_sent_rows: float = 86400,
        keep_failed: float = 30 * 86400,
    ) -> int:
        """Forget finished work older than the retention.

        The dedup log (``accepted``, a few dozen bytes per message and destination) is
        kept ``keep_done`` so a replayed message is still recognised; the rows of sent
        deliveries carry their rendered text (a mail's HTML) and go after a day, or a
        busy bus would grow the database by gigabytes a week.
        """
        with self.transaction() as db:
            bodies: list[int] = []
            removed = 0
            for query, cutoff in (
                ("DELETE FROM deliveries WHERE state IN ('sent', 'coalesced') AND finished < ?",
                 now - min(keep_sent_rows, keep_done)),
                ("DELETE FROM deliveries WHERE state = 'failed' AND finished < ?", now - keep_failed),
                ("DELETE FROM digest_entries WHERE flushed_into IS NOT NULL AND created < ?", now - keep_done),
            ):
                gone = db.execute(query + " RETURNING body", (cutoff,)).fetchall()
                removed += len(gone)
                bodies.extend(int(row[0]) for row in gone if row[0] is not None)
            # The messages and renderings those rows shared, once nothing else points at them
            # (parts of the rows counted above, so not counted again).
            sqlite_rows.forget_shared(db, bodies)
            removed += db.execute("DELETE FROM accepted WHERE at < ?", (now - keep_done,)).rowcount
        return removed

