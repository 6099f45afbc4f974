"""The SQLite store's digests: the groups of unflushed entries, and a flush that claims them."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager

from fedmsg_notify.backend import Destination
from fedmsg_notify.store import shared, sqlite_rows
from fedmsg_notify.store.records import DigestEntry, DigestGroup


def groups(db: sqlite3.Connection) -> list[DigestGroup]:
    rows = db.execute(
        "SELECT account, recipient, COUNT(*) AS n, MIN(created) AS first, MIN(every) AS every, MIN(max) AS max"
        " FROM digest_entries WHERE flushed_into IS NULL GROUP BY dest"
    )
    return [
        DigestGroup(
            destination=Destination(row["account"], row["recipient"]),
            count=int(row["n"]),
            first_created=float(row["first"]),
            every=None if row["every"] is None else float(row["every"]),
            max=None if row["max"] is None else int(row["max"]),
        )
        for row in rows
    ]


class Claimed(Exception):
    """Another flusher claimed some of the entries between the read and the claim."""


def unflushed(db: sqlite3.Connection, destination: Destination, limit: int | None) -> list[sqlite3.Row]:
    """The destination's oldest unflushed entries (at most ``limit``), with their shared parts."""
    return db.execute(
        f"{sqlite_rows.ENTRY_SELECT} WHERE e.dest = ? AND e.flushed_into IS NULL ORDER BY e.id LIMIT ?",
        (destination.key, -1 if limit is None else limit),
    ).fetchall()


def flush_digest(
    read: sqlite3.Connection,
    transaction: Callable[[], AbstractContextManager[sqlite3.Connection]],
    destination: Destination,
    limit: int | None,
    render: Callable[[Sequence[DigestEntry], int], tuple[Mapping[str, str], str]],
    now: float,
    *,
    render_cap: int = 100,
) -> tuple[int, int] | None:
    """Claim up to ``limit`` unflushed entries and queue their digest, atomically.

    ``render(entries, total)`` gets at most ``render_cap`` entries and the true count
    and returns (rendered parts, msg_id). The entries are read and rendered outside the
    write lock (a 100-entry digest takes tens of milliseconds to render, which intake
    commits and send marks would otherwise wait for); the claim and the new delivery are
    then one transaction (``BEGIN IMMEDIATE``) that claims only entries still unclaimed
    and is rolled back if any was claimed meanwhile, so a second flusher (another task,
    another process) can never make a second digest of the same entries. Returns
    (delivery id, entries claimed), or ``None`` when there was nothing to flush or
    another flusher got there first.
    """
    rows = unflushed(read, destination, limit)
    if not rows:
        return None
    entries = [shared.digest_entry(row) for row in rows[:render_cap]]
    total = len(rows)
    rendered, msg_id = render(entries, total)
    try:
        with transaction() as db:
            cursor = db.execute(
                "INSERT INTO deliveries (dest, account, recipient, kind, msg_id, rule, topic, service, rendered,"
                " options, meta, timestamp, count, next_attempt, created)"
                " VALUES (?,?,?,'digest',?,?,?,?,?,?,?,?,?,?,?)",
                shared.digest_values(destination, rows, entries[0], rendered, msg_id, now),
            )
            delivery_id = cursor.lastrowid
            assert delivery_id is not None
            db.execute("UPDATE deliveries SET position = id WHERE id = ?", (delivery_id,))
            claimed = db.executemany(
                "UPDATE digest_entries SET flushed_into = ? WHERE id = ? AND flushed_into IS NULL",
                [(delivery_id, row["id"]) for row in rows],
            ).rowcount
            if claimed != total:
                raise Claimed
    except Claimed:
        return None
    return int(delivery_id), total
