"""The PostgreSQL store's digests: groups of unflushed entries, and a flush that happens once cluster-wide."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import psycopg
from fedmsg_notify.backend import Destination
from fedmsg_notify.store.pg_rows import attach_bodies
from fedmsg_notify.store.records import MERGED_META_CAP, DigestEntry, DigestGroup, _dumps
from fedmsg_notify.store.shared import envelope_of, meta_of, rendered_of

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
        entries = [_entry(row) for row in rows[:render_cap]]
        total = len(rows)
        rendered, msg_id = render(entries, total)
        first = entries[0]
        services = {row["service"] for row in rows}
        created = db.execute(
            "INSERT INTO deliveries (dest, account, recipient, kind, msg_id, rule, topic, service, rendered,"
            " options, meta, timestamp, count, next_attempt, created)"
            " VALUES (%s,%s,%s,'digest',%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s) RETURNING id",
            (
                destination.key,
                destination.account,
                destination.to,
                msg_id,
                first.rule,
                first.topic if total == 1 else "",
                services.pop() if len(services) == 1 else "various",
                _dumps(dict(rendered)),
                _dumps(dict(first.options)),
                _dumps(dict(first.meta) if total == 1 else _merged_meta(rows)),
                float(rows[-1]["timestamp"]),
                total,
                now,
                now,
            ),
        ).fetchone()
        assert created is not None
        db.execute(
            "UPDATE digest_entries SET flushed_into = %s WHERE id = ANY(%s) AND flushed_into IS NULL",
            (created["id"], [row["id"] for row in rows]),
        )
        return int(created["id"]), total


def _entry(row: Row) -> DigestEntry:
    return DigestEntry(
        id=int(row["id"]),
        msg_id=row["msg_id"],
        destination=Destination(row["account"], row["recipient"]),
        rule=row["rule"],
        rule_file=row["rule_file"],
        template=row["template"],
        options=json.loads(row["options"]),
        topic=row["topic"],
        service=row["service"],
        envelope=envelope_of(row),
        meta=meta_of(row),
        rendered=rendered_of(row),
        timestamp=float(row["timestamp"]),
        created=float(row["created"]),
    )


def _merged_meta(rows: Sequence[Row]) -> dict[str, Any]:
    """The union of the services, usernames and packages of a digest's entries."""
    services: dict[str, None] = {}
    usernames: dict[str, None] = {}
    packages: dict[str, None] = {}
    for row in rows:
        services.setdefault(row["service"], None)
        meta = meta_of(row)
        for name in meta.get("usernames") or ():
            if len(usernames) < MERGED_META_CAP:
                usernames.setdefault(str(name), None)
        for name in meta.get("packages") or ():
            if len(packages) < MERGED_META_CAP:
                packages.setdefault(str(name), None)
    return {"services": sorted(services), "usernames": sorted(usernames), "packages": sorted(packages)}
