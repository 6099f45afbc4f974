"""The shared store: PostgreSQL, for several daemons working one stream (``state: postgresql://…``).

Same interface and the same tables as the SQLite :class:`~fedmsg_notify.store.sqlite.Outbox`
(see there for what each table holds); what differs is what several daemons writing at
once need:

* **Dedup across daemons** is the primary key of ``accepted``: every delivery is
  inserted by one statement whose first step is ``INSERT … ON CONFLICT DO NOTHING``
  into it, so two daemons accepting the same message in the same instant serialise on
  the index and exactly one of them queues the delivery. No read-then-write.
* **Leases.** :meth:`window` claims the due rows it returns (``FOR UPDATE SKIP
  LOCKED``, then ``lease_owner``/``lease_until``), so two daemons never send the same
  row; a daemon that dies leaves leases that expire after ``lease`` seconds, and then
  any daemon takes the rows over. The worker checks :meth:`holds` before each send.
* **A digest is flushed once**: a flush takes a transaction-level advisory lock on the
  destination and re-checks that the digest is still due, so a second daemon that
  decided to flush in the same instant finds the entries gone (or not due) and stops.

Every call is synchronous and short, like SQLite's. A lost connection (PostgreSQL
restarting) is re-opened once per call; if that fails the call raises
:class:`StoreUnavailable` and the caller retries later — nothing half-written stays,
since every change is one transaction.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import psycopg
from fedmsg_notify.backend import Destination, Item
from fedmsg_notify.store import pg_digest, pg_rows
from fedmsg_notify.store.pg_rows import ITEM_COLUMNS
from fedmsg_notify.store.pg_schema import migrate
from fedmsg_notify.store.records import (
    Accepted,
    DestinationStatus,
    DigestEntry,
    DigestGroup,
    NewDelivery,
    NewDigestEntry,
    _dumps,
)
from fedmsg_notify.store.shared import item as item_of
from psycopg.rows import dict_row

log = logging.getLogger(__name__)

T = TypeVar("T")
Row = dict[str, Any]


class StoreUnavailable(OSError):
    """The database cannot be reached right now (the caller retries later)."""


def _destination(account: str, recipient: str | None) -> Destination:
    return Destination(account, recipient)


def safe_url(url: str) -> str:
    """The URL as it may appear in a log: any password replaced."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "postgresql://(unparsable URL)"
    host, port, db, user = (str(info.get(key) or "") for key in ("host", "port", "dbname", "user"))
    return f"postgresql://{user + '@' if user else ''}{host}{':' + port if port else ''}/{db}"


class Outbox:
    """The PostgreSQL store, one connection per daemon; ``owner`` names this daemon in leases."""

    cluster = True

    def __init__(
        self,
        url: str,
        *,
        owner: str,
        password: str | None = None,
        readonly: bool = False,
        lease: float = 60.0,
        connect_timeout: float = 5.0,
        twin: bool = False,
    ) -> None:
        self.url = url
        self.path = safe_url(url)
        self.owner = owner
        self.lease = lease
        self._password = password
        self._connect_timeout = connect_timeout
        self._leases: dict[int, float] = {}
        # An intake twin only accepts: it holds no leases, so it hands none back on close.
        self._twin = twin
        self.db = self._connect()
        if not readonly and not twin:
            applied = migrate(self.db)
            if applied:
                log.info("%s: schema migrated to version %d", self.path, applied[-1])

    def _connect(self) -> psycopg.Connection[Row]:
        extra: dict[str, Any] = {"connect_timeout": max(1, int(self._connect_timeout))}
        if self._password is not None:
            extra["password"] = self._password
        try:
            return psycopg.connect(self.url, autocommit=True, row_factory=dict_row, **extra)
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(f"{self.path}: cannot connect: {str(exc).strip()}") from exc

    def intake_twin(self) -> Callable[[], Outbox]:
        """What opens a second connection for the intake's writer thread: a commit waits there, not on the loop."""
        url, owner, password, lease, timeout = self.url, self.owner, self._password, self.lease, self._connect_timeout
        return lambda: Outbox(url, owner=owner, password=password, lease=lease, connect_timeout=timeout, twin=True)

    def checkpoint(self) -> None:
        """Nothing to do: PostgreSQL checkpoints on its own."""

    def close(self) -> None:
        if not self.db.closed and not self.db.broken and not self._twin:
            try:
                # Let the other daemons take what we claimed right away, not after the lease.
                self.db.execute(
                    "UPDATE deliveries SET lease_owner = NULL, lease_until = NULL WHERE lease_owner = %s"
                    " AND state = 'queued'",
                    (self.owner,),
                )
            except psycopg.Error as exc:
                log.warning("%s: could not hand back leases: %s", self.path, exc)
        self.db.close()

    def _call(self, work: Callable[[psycopg.Connection[Row]], T]) -> T:
        """Run ``work``; a broken connection is re-opened and the work retried once; deadlocks retried."""
        for attempt in range(4):
            if self.db.closed or self.db.broken:
                self.db = self._connect()
            try:
                return work(self.db)
            except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure):
                if attempt == 3:
                    raise
                time.sleep(0.01 * (attempt + 1))
            except psycopg.OperationalError as exc:
                if not self.db.broken and not self.db.closed:
                    raise
                if attempt >= 1:
                    raise StoreUnavailable(f"{self.path}: connection lost: {str(exc).strip()}") from exc
                log.warning("%s: connection lost (%s); reconnecting", self.path, str(exc).strip())
        raise AssertionError("unreachable")

    @contextmanager
    def transaction(self) -> Iterator[psycopg.Connection[Row]]:
        with self.db.transaction():
            yield self.db

    # -- intake ---------------------------------------------------------------------

    def accept(
        self, deliveries: Sequence[NewDelivery], entries: Sequence[NewDigestEntry] = (), *, now: float
    ) -> Accepted:
        """Store a batch in ONE transaction; pairs any daemon accepted before are skipped (see :mod:`pg_rows`)."""
        return self._call(lambda db: pg_rows.insert_batch(db, deliveries, entries, now))

    # -- the delivery queue -----------------------------------------------------------

    def pending_destinations(self) -> list[Destination]:
        query = "SELECT DISTINCT account, recipient FROM deliveries WHERE state = 'queued'"
        rows = self._call(lambda db: db.execute(query).fetchall())
        return [_destination(row["account"], row["recipient"]) for row in rows]

    def window(self, destination: Destination, now: float, limit: int) -> list[tuple[Item, int]]:
        """Claim and return the next ``limit`` due deliveries no other daemon holds, in send order."""
        until = now + self.lease

        def work(db: psycopg.Connection[Row]) -> list[Row]:
            return db.execute(
                f"UPDATE deliveries d SET lease_owner = %(me)s, lease_until = %(until)s"
                f" FROM (SELECT id FROM deliveries WHERE dest = %(dest)s AND state = 'queued'"
                f" AND next_attempt <= %(now)s"
                f" AND (lease_owner IS NULL OR lease_owner = %(me)s OR lease_until <= %(now)s)"
                f" ORDER BY position LIMIT %(limit)s FOR UPDATE SKIP LOCKED) c"
                f" WHERE d.id = c.id RETURNING d.position, {', '.join('d.' + c for c in ITEM_COLUMNS.split(', '))}",
                {"me": self.owner, "until": until, "dest": destination.key, "now": now, "limit": limit},
            ).fetchall()

        rows = sorted(self._call(lambda db: pg_rows.attach_bodies(db, work(db))), key=lambda row: row["position"])
        for row in rows:
            self._leases[int(row["id"])] = until
        return [(item_of(row), int(row["attempts"])) for row in rows]

    def holds(self, item: Item, now: float) -> bool:
        """Whether at least half of our lease on ``item`` is left (else re-claim it before sending).

        Half the lease must cover one send: the default 60 s lease against the 30 s send timeout.
        """
        lease = self._leases.get(item.id)
        return lease is not None and lease - now >= self.lease / 2

    def next_due(self, destination: Destination) -> float | None:
        """When a queued delivery may next be tried here: its retry time, or when another daemon's lease ends."""
        row = self._call(
            lambda db: db.execute(
                "SELECT MIN(CASE WHEN lease_owner IS NOT NULL AND lease_owner <> %s AND lease_until > next_attempt"
                " THEN lease_until ELSE next_attempt END) AS due FROM deliveries WHERE dest = %s AND state = 'queued'",
                (self.owner, destination.key),
            ).fetchone()
        )
        return None if row is None or row["due"] is None else float(row["due"])

    def pending_count(self, destination: Destination, *, created_before: float | None = None) -> int:
        before = float("inf") if created_before is None else created_before
        row = self._call(
            lambda db: db.execute(
                "SELECT COUNT(*) AS n FROM deliveries WHERE dest = %s AND state = 'queued' AND created < %s",
                (destination.key, before),
            ).fetchone()
        )
        return int(row["n"]) if row else 0

    def mark_sent(self, item: Item, now: float) -> None:
        """Record a success and count it for the destination and this daemon, in one statement."""
        self._leases.pop(item.id, None)
        self._call(
            lambda db: db.execute(
                "WITH done AS (UPDATE deliveries SET state = 'sent', finished = %(now)s, last_error = NULL,"
                " lease_owner = NULL, lease_until = NULL WHERE id = %(id)s AND state = 'queued'"
                " RETURNING dest, account, recipient),"
                " me AS (UPDATE daemons SET sent = sent + 1 WHERE id = %(me)s AND EXISTS (SELECT 1 FROM done))"
                " INSERT INTO destinations (dest, account, recipient, last_success, sent)"
                " SELECT dest, account, recipient, %(now)s, 1 FROM done"
                " ON CONFLICT (dest) DO UPDATE SET last_success = excluded.last_success,"
                " sent = destinations.sent + 1",
                {"now": now, "id": item.id, "me": self.owner},
            )
        )

    def mark_retry(self, item: Item, attempts: int, next_attempt: float, reason: str) -> None:
        self._leases.pop(item.id, None)
        self._call(
            lambda db: db.execute(
                "UPDATE deliveries SET attempts = %s, next_attempt = %s, last_error = %s, lease_owner = NULL,"
                " lease_until = NULL WHERE id = %s",
                (attempts, next_attempt, reason, item.id),
            )
        )

    def mark_failed(self, item: Item, attempts: int, reason: str, now: float) -> None:
        self._leases.pop(item.id, None)
        self._call(
            lambda db: db.execute(
                "UPDATE deliveries SET state = 'failed', attempts = %s, last_error = %s, finished = %s,"
                " lease_owner = NULL, lease_until = NULL WHERE id = %s",
                (attempts, reason, now, item.id),
            )
        )

    # -- flood coalescing ---------------------------------------------------------------

    def coalesce(
        self,
        destination: Destination,
        merge: int,
        summarise: Callable[[Sequence[Item]], Mapping[str, str]],
        now: float,
    ) -> int | None:
        """Merge the ``merge`` oldest queued deliveries no other daemon holds into one summary."""
        if merge < 2:
            return None

        def work(db: psycopg.Connection[Row]) -> int | None:
            with db.transaction():
                rows = db.execute(
                    f"SELECT {ITEM_COLUMNS}, kind, position FROM deliveries WHERE dest = %s AND state = 'queued'"
                    " AND (lease_owner IS NULL OR lease_owner = %s OR lease_until <= %s)"
                    " ORDER BY position LIMIT %s FOR UPDATE SKIP LOCKED",
                    (destination.key, self.owner, now, merge),
                ).fetchall()
                if len(rows) < 2:
                    return None
                items = [item_of(row) for row in pg_rows.attach_bodies(db, rows)]
                rendered = dict(summarise(items))
                services = {item.service for item in items}
                topics = {item.topic for item in items}
                summary = db.execute(
                    "INSERT INTO deliveries (position, dest, account, recipient, kind, msg_id, rule, topic, service,"
                    " rendered, options, meta, timestamp, count, next_attempt, created)"
                    " VALUES (%s,%s,%s,%s,'summary',%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s) RETURNING id",
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
                        sum(item.count for item in items),
                        now,
                        now,
                    ),
                ).fetchone()
                assert summary is not None
                summary_id = int(summary["id"])
                db.execute(
                    "UPDATE deliveries SET state = 'coalesced', merged_into = %s, finished = %s, lease_owner = NULL,"
                    " lease_until = NULL WHERE id = ANY(%s)",
                    (summary_id, now, [item.id for item in items]),
                )
                newly = sum(int(row["count"]) for row in rows if row["kind"] != "summary")
                db.execute(
                    "INSERT INTO destinations (dest, account, recipient, coalesced) VALUES (%s,%s,%s,%s)"
                    " ON CONFLICT (dest) DO UPDATE SET coalesced = destinations.coalesced + excluded.coalesced",
                    (destination.key, destination.account, destination.to, newly),
                )
                return summary_id

        return self._call(work)

    # -- digests --------------------------------------------------------------------------

    def digest_groups(self) -> list[DigestGroup]:
        return self._call(pg_digest.groups)

    def flush_digest(
        self,
        destination: Destination,
        limit: int | None,
        render: Callable[[Sequence[DigestEntry], int], tuple[Mapping[str, str], str]],
        now: float,
        *,
        render_cap: int = 100,
    ) -> tuple[int, int] | None:
        """Claim up to ``limit`` entries and queue their digest, once across all daemons (see :mod:`pg_digest`)."""
        return self._call(lambda db: pg_digest.flush_digest(db, destination, limit, render, now, render_cap=render_cap))

    # -- counters, status, housekeeping ---------------------------------------------------

    def add_counters(self, deltas: Mapping[str, int]) -> None:
        values = [(name, value) for name, value in deltas.items() if value]
        if not values:
            return

        def work(db: psycopg.Connection[Row]) -> None:
            with db.transaction(), db.cursor() as cursor:
                cursor.executemany(
                    "INSERT INTO counters (name, value) VALUES (%s, %s)"
                    " ON CONFLICT (name) DO UPDATE SET value = counters.value + excluded.value",
                    values,
                )

        self._call(work)

    def counters(self) -> dict[str, int]:
        rows = self._call(lambda db: db.execute("SELECT name, value FROM counters").fetchall())
        return {row["name"]: int(row["value"]) for row in rows}

    def status(self, now: float) -> list[DestinationStatus]:
        from fedmsg_notify.store.pg_status import destination_status

        return self._call(lambda db: destination_status(db))

    def prune(
        self,
        now: float,
        *,
        keep_done: float = 7 * 86400,
        keep_sent_rows: float = 86400,
        keep_failed: float = 30 * 86400,
    ) -> int:
        """Forget finished work older than the retention (the same rules as the SQLite store)."""

        def work(db: psycopg.Connection[Row]) -> int:
            with db.transaction():
                # One prune at a time cluster-wide: two prunes each deleting one of a body's two
                # rows would each still see the other's, and neither would forget the body.
                db.execute("SELECT pg_advisory_xact_lock(hashtext('fedmsg-notify:prune'))")
                bodies: list[int] = []
                removed = 0
                for query, cutoff in (
                    ("DELETE FROM deliveries WHERE state IN ('sent', 'coalesced') AND finished < %s",
                     now - min(keep_sent_rows, keep_done)),
                    ("DELETE FROM deliveries WHERE state = 'failed' AND finished < %s", now - keep_failed),
                    ("DELETE FROM digest_entries WHERE flushed_into IS NOT NULL AND created < %s", now - keep_done),
                ):
                    gone = db.execute(query + " RETURNING body", (cutoff,)).fetchall()
                    removed += len(gone)
                    bodies.extend(int(row["body"]) for row in gone if row["body"] is not None)
                pg_rows.forget_shared(db, bodies)  # parts of the rows counted above
                removed += db.execute("DELETE FROM accepted WHERE at < %s", (now - keep_done,)).rowcount
                return removed

        return self._call(work)
