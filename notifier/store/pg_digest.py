"""The PostgreSQL store's digests: groups of unflushed entries, and a flush that happens once cluster-wide."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import psycopg
from fedmsg_notify.backend import Destination
from fedmsg_notify.store.pg_rows import attach_bodies
from fedmsg_notify.store.records import DigestEntry, DigestGroup
from fedmsg_notify.store.shared import digest_entry, digest_values

Row = dict[str, Any]

_GROUPS = (
    "SELECT account, recipient, COUNT(*) AS n, MIN(created) AS first, MIN(every) AS every, MIN(max) AS max"
    " FROM digest_entries WHERE flushed_into IS NULL"
)


def _group(row: Row) -> DigestGroup:
    return DigestGroup(
        destination=Destination(row["account"], row["recipient"]),
        count=int(row["n"]),
        first_created=float(row["first"]),
        every=None if row["every"] is None else float(row["every"]),
        max=None if row["max"] is None else int(row["max"]),
    )


def groups(db: psycopg.Connection[Row]) -> list[DigestGroup]:
    return [_group(row) for row in db.execute(_GROUPS + " GROUP BY dest, account, recipient").fetchall()]


def flush_digest(
    db: psycopg.Connection[Row],
    destination: Destination,
    limit: int | None,
    render: Callable[[Sequence[DigestEntry], int], tuple[Mapping[str, str], str]],
    now: float,
    *,
    render_cap: int = 100,
) -> tuple[int, int] | None:
    """Claim up to ``limit`` entries and queue their digest, once across all daemons.

    Serialised per destination by an advisory lock held to the end of the transaction;
    under it the digest must still be due (``max`` reached or ``every`` passed), so a
    daemon that decided to flush a moment after another one did finds nothing to do.
    """

    with db.transaction():
        db.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"digest:{destination.key}",))
        group = db.execute(_GROUPS + " AND dest = %s GROUP BY dest, account, recipient", (destination.key,))
        found = group.fetchone()
        due = None if found is None else _group(found).due_at()
        if due is None or due > now:
            return None
        rows = db.execute(
            "SELECT * FROM digest_entries WHERE dest = %s AND flushed_into IS NULL ORDER BY id LIMIT %s",
            (destination.key, limit),
        ).fetchall()
        attach_bodies(db, rows, envelopes=True)
        if not rows:
            return None
        entries = [digest_entry(row) for row in rows[:render_cap]]
        total = len(rows)
        rendered, msg_id = render(entries, total)
        created = db.execute(
            "INSERT INTO deliveries (dest, account, recipient, kind, msg_id, rule, topic, service, rendered,"
            " options, meta, timestamp, count, next_attempt, created)"
            " VALUES (%s,%s,%s,'digest',%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s) RETURNING id",
            digest_values(destination, rows, entries[0], rendered, msg_id, now),
        ).fetchone()
        assert created is not None
        db.execute(
            "UPDATE digest_entries SET flushed_into = %s WHERE id = ANY(%s) AND flushed_into IS NULL",
            (created["id"], [row["id"] for row in rows]),
        )
        return int(created["id"]), total
