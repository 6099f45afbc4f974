"""The SQLite store's ``status``: per destination, where every notification is."""

from __future__ import annotations

import sqlite3

from fedmsg_notify.store.records import DestinationStatus
from fedmsg_notify.store.shared import StatusRows


def destination_status(db: sqlite3.Connection) -> list[DestinationStatus]:
    """Per destination: where every notification is. Read-only; safe while the daemon runs."""
    status = StatusRows()
    entry = status.entry

    for row in db.execute(
        "SELECT dest, account, SUM(attempts = 0) AS fresh, SUM(attempts > 0) AS retrying,"
        " MIN(CASE WHEN attempts > 0 THEN next_attempt END) AS next_retry"
        " FROM deliveries WHERE state = 'queued' GROUP BY dest"
    ):
        e = entry(row["dest"], row["account"])
        e["queued"] = int(row["fresh"] or 0) + int(row["retrying"] or 0)
        e["in_retry"] = int(row["retrying"] or 0)
        e["next_retry"] = row["next_retry"]
        if row["retrying"]:
            reason = db.execute(
                "SELECT last_error FROM deliveries WHERE dest = ? AND state = 'queued' AND attempts > 0"
                " ORDER BY next_attempt LIMIT 1",
                (row["dest"],),
            ).fetchone()
            e["last_retry_reason"] = reason[0]
    for row in db.execute(
        "SELECT dest, account, COUNT(*) AS n, MAX(finished) AS last FROM deliveries"
        " WHERE state = 'failed' GROUP BY dest"
    ):
        e = entry(row["dest"], row["account"])
        e["failed"] = int(row["n"])
        reason = db.execute(
            "SELECT last_error FROM deliveries WHERE dest = ? AND state = 'failed' ORDER BY finished DESC, id DESC"
            " LIMIT 1",
            (row["dest"],),
        ).fetchone()
        e["last_failure"] = reason[0]
    status.add_pending_digests(
        db.execute(
            "SELECT dest, account, COUNT(*) AS n, MIN(created) AS first, MIN(every) AS every FROM digest_entries"
            " WHERE flushed_into IS NULL GROUP BY dest"
        )
    )
    status.add_totals(db.execute("SELECT dest, account, last_success, sent, coalesced FROM destinations"))
    return status.statuses()
