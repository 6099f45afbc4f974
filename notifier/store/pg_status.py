"""What ``status`` reads from the PostgreSQL store: per destination, and the cluster (daemons, account holders)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import psycopg
from fedmsg_notify.store.records import DestinationStatus
from fedmsg_notify.store.shared import StatusRows

Row = dict[str, Any]


@dataclass(frozen=True, slots=True)
class DaemonStatus:
    """One daemon of the cluster as its heartbeat row says."""

    id: str
    host: str
    pid: int
    started: float
    seen: float
    sent: int
    accounts: tuple[str, ...]
    claimed: int
    # Its AMQP connection as it last said (queue, connected, unacked, received), None without AMQP.
    bus: dict[str, Any] | None = None

    def alive(self, now: float, stale: float) -> bool:
        return now - self.seen <= stale


def destination_status(db: psycopg.Connection[Row]) -> list[DestinationStatus]:
    status = StatusRows()
    entry = status.entry

    for row in db.execute(
        "SELECT dest, MIN(account) AS account, COUNT(*) AS n, COUNT(*) FILTER (WHERE attempts > 0) AS retrying,"
        " MIN(next_attempt) FILTER (WHERE attempts > 0) AS next_retry"
        " FROM deliveries WHERE state = 'queued' GROUP BY dest"
    ):
        e = entry(row["dest"], row["account"])
        e["queued"] = int(row["n"])
        e["in_retry"] = int(row["retrying"])
        e["next_retry"] = row["next_retry"]
        if row["retrying"]:
            reason = db.execute(
                "SELECT last_error FROM deliveries WHERE dest = %s AND state = 'queued' AND attempts > 0"
                " ORDER BY next_attempt LIMIT 1",
                (row["dest"],),
            ).fetchone()
            e["last_retry_reason"] = reason["last_error"] if reason else None
    for row in db.execute(
        "SELECT dest, MIN(account) AS account, COUNT(*) AS n FROM deliveries WHERE state = 'failed' GROUP BY dest"
    ):
        e = entry(row["dest"], row["account"])
        e["failed"] = int(row["n"])
        reason = db.execute(
            "SELECT last_error FROM deliveries WHERE dest = %s AND state = 'failed' ORDER BY finished DESC, id DESC"
            " LIMIT 1",
            (row["dest"],),
        ).fetchone()
        e["last_failure"] = reason["last_error"] if reason else None
    status.add_pending_digests(
        db.execute(
            "SELECT dest, MIN(account) AS account, COUNT(*) AS n, MIN(created) AS first, MIN(every) AS every"
            " FROM digest_entries WHERE flushed_into IS NULL GROUP BY dest"
        )
    )
    status.add_totals(db.execute("SELECT dest, account, last_success, sent, coalesced FROM destinations"))
    return status.statuses()


def cluster_status(db: psycopg.Connection[Row], now: float) -> list[DaemonStatus]:
    """Every daemon that has run against this database, with the accounts it holds and the rows it claimed."""
    holders: dict[str, list[str]] = {}
    for row in db.execute("SELECT account, daemon FROM holders ORDER BY account"):
        holders.setdefault(row["daemon"], []).append(row["account"])
    claimed = {
        row["lease_owner"]: int(row["n"])
        for row in db.execute(
            "SELECT lease_owner, COUNT(*) AS n FROM deliveries WHERE state = 'queued' AND lease_owner IS NOT NULL"
            " AND lease_until > %s GROUP BY lease_owner",
            (now,),
        )
    }
    return [
        DaemonStatus(
            id=row["id"],
            host=row["host"],
            pid=int(row["pid"]),
            started=float(row["started"]),
            seen=float(row["seen"]),
            sent=int(row["sent"]),
            accounts=tuple(holders.get(row["id"], ())),
            claimed=claimed.get(row["id"], 0),
            bus=_bus(row.get("bus")),
        )
        for row in db.execute("SELECT * FROM daemons ORDER BY started")
    ]


def _bus(text: str | None) -> dict[str, Any] | None:
    try:
        value = json.loads(text) if text else None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


@dataclass(frozen=True, slots=True)
class Holder:
    """Which daemon last took a connection-bound account, and when."""

    account: str
    daemon: str
    since: float


def holders(db: psycopg.Connection[Row]) -> list[Holder]:
    return [
        Holder(row["account"], row["daemon"], float(row["since"]))
        for row in db.execute("SELECT account, daemon, since FROM holders ORDER BY account")
    ]


def paces(db: psycopg.Connection[Row]) -> dict[str, tuple[float, float]]:
    """Each account's shared bucket: (tokens left, when that was counted)."""
    return {
        row["account"]: (float(row["tokens"]), float(row["updated"]))
        for row in db.execute("SELECT account, tokens, updated FROM pace_buckets")
    }
