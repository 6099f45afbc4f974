"""Several daemons on one PostgreSQL store: heartbeats, and one holder per connection-bound account.

A connection-bound account (an IRC connection, a desktop bus) must be served by exactly
one daemon at a time. :class:`AccountLocks` holds a session-level advisory lock per such
account on a connection of its own: PostgreSQL releases it the moment that connection
ends — the daemon exits, is killed, or loses the network — and another daemon's next
:meth:`AccountLocks.acquire` (every second) gets it. If our own lock connection breaks
(PostgreSQL restarting), every account is reported lost at once, so the daemon stops
sending there before anybody else can start.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

import psycopg
from psycopg.rows import tuple_row

log = logging.getLogger(__name__)


def heartbeat(
    db: psycopg.Connection[Any],
    owner: str,
    host: str,
    pid: int,
    started: float,
    now: float,
    bus: Mapping[str, Any] | None = None,
) -> None:
    """This daemon is alive at ``now``; ``bus``: its AMQP connection's snapshot, for ``status``."""
    text = None if bus is None else json.dumps(dict(bus), sort_keys=True)
    db.execute(
        "INSERT INTO daemons (id, host, pid, started, seen, bus) VALUES (%s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (id) DO UPDATE SET seen = excluded.seen, bus = excluded.bus",
        (owner, host, pid, started, now, text),
    )


def claimable_destinations(db: psycopg.Connection[Any], now: float) -> list[tuple[str, str | None]]:
    """(account, recipient) of the destinations with rows due that nobody holds: another daemon's
    unclaimed intake, rows a dead daemon's lease left behind, retries another daemon scheduled.

    Rows a live daemon holds are its workers' business: waking ours for them would only
    find them locked (a claim that returns nothing, then a query for when to look again).
    """
    rows = db.execute(
        "SELECT DISTINCT account, recipient FROM deliveries WHERE state = 'queued' AND next_attempt <= %s"
        " AND (lease_owner IS NULL OR lease_until <= %s)",
        (now, now),
    ).fetchall()
    return [(row[0], row[1]) if isinstance(row, tuple) else (row["account"], row["recipient"]) for row in rows]


class AccountLocks:
    """This daemon's advisory locks on connection-bound accounts."""

    def __init__(self, url: str, owner: str, password: str | None = None) -> None:
        self.url = url
        self.owner = owner
        self._password = password
        self.held: set[str] = set()
        self.db: psycopg.Connection[Any] | None = None

    def _connection(self) -> psycopg.Connection[Any]:
        if self.db is None or self.db.closed or self.db.broken:
            extra: dict[str, Any] = {"connect_timeout": 5}
            if self._password is not None:
                extra["password"] = self._password
            self.db = psycopg.connect(self.url, autocommit=True, row_factory=tuple_row, **extra)
        return self.db

    def acquire(self, accounts: list[str], now: float) -> tuple[set[str], set[str]]:
        """Try to hold each of ``accounts``; return (newly held, lost since the last call)."""
        lost: set[str] = set()
        gained: set[str] = set()
        try:
            db = self._connection()
            db.execute("SELECT 1")
        except psycopg.Error as exc:
            if self.held:
                log.warning("lost the account locks (%s): stopping %s", str(exc).strip(), ", ".join(sorted(self.held)))
            lost, self.held = set(self.held), set()
            self.db = None
            return gained, lost
        for account in accounts:
            if account in self.held:
                continue
            try:
                row = db.execute("SELECT pg_try_advisory_lock(hashtext(%s))", (f"account:{account}",)).fetchone()
                if row and row[0]:
                    self.held.add(account)
                    gained.add(account)
                    db.execute(
                        "INSERT INTO holders (account, daemon, since) VALUES (%s, %s, %s)"
                        " ON CONFLICT (account) DO UPDATE SET daemon = excluded.daemon, since = excluded.since",
                        (account, self.owner, now),
                    )
            except psycopg.Error as exc:
                log.warning("taking the lock of account %s failed: %s", account, str(exc).strip())
        return gained, lost

    def close(self) -> None:
        if self.db is not None and not self.db.closed:
            try:
                if self.held:
                    self.db.execute("DELETE FROM holders WHERE daemon = %s", (self.owner,))
            except psycopg.Error:
                pass
            self.db.close()
        self.held = set()
