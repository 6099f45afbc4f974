"""The PostgreSQL store's rows in the shared layout (see :mod:`~fedmsg_notify.store.shared`).

An accepted batch is four pipelined steps in one transaction: the dedup log first
(``INSERT … ON CONFLICT DO NOTHING RETURNING``: two daemons accepting the same message
serialise on its primary key and exactly one of them goes on with it), then the batch's
messages and bodies, then the deliveries and entries that point at them. Bodies are only
ever shared within a batch, so pruning never races an intake for one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from fedmsg_notify.store.records import Accepted, NewDelivery, NewDigestEntry, _dumps
from fedmsg_notify.store.shared import delivery_values, pack_batch

Row = dict[str, Any]

ITEM_COLUMNS = (
    "id, msg_id, account, recipient, rule, topic, service, rendered, options, meta, timestamp, count, attempts, body"
)

_FIRST_TIME = (
    "INSERT INTO accepted (msg_id, dest, at) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING RETURNING 1"
)
_MESSAGE = (
    "INSERT INTO messages (msg_id, topic, service, timestamp, meta, envelope) VALUES (%s,%s,%s,%s,%s,%s) RETURNING id"
)
_BODY = "INSERT INTO bodies (message, parts) VALUES (%s, %s) RETURNING id"
_DELIVERY = (
    "INSERT INTO deliveries (dest, account, recipient, msg_id, rule, topic, service, rendered, options, meta,"
    " timestamp, next_attempt, created, state, last_error, finished, body)"
    " VALUES (%s,%s,%s,%s,%s,%s,%s,'',%s,'',%s,%s,%s,%s,%s,%s,%s)"
)
_ENTRY = (
    "INSERT INTO digest_entries (dest, account, recipient, msg_id, rule, rule_file, template, options, every, max,"
    " topic, service, envelope, meta, rendered, timestamp, created, body)"
    " VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,'','','',%s,%s,%s)"
)


def insert_batch(
    db: psycopg.Connection[Row], deliveries: Sequence[NewDelivery], entries: Sequence[NewDigestEntry], now: float
) -> Accepted:
    """Store a batch in ONE transaction; pairs any daemon accepted before are skipped."""
    with db.transaction(), db.cursor() as cursor:
        pairs = [(new.msg_id, new.destination.key, now) for new in deliveries]
        pairs += [(e.msg_id, e.destination.key, now) for e in entries]
        first = _returning(cursor, _FIRST_TIME, pairs)
        new_deliveries = [new for new, ok in zip(deliveries, first, strict=False) if ok is not None]
        new_entries = [e for e, ok in zip(entries, first[len(deliveries) :], strict=True) if ok is not None]
        packed = pack_batch(new_deliveries, new_entries)
        message_ids = _returning(
            cursor,
            _MESSAGE,
            [(m.msg_id, m.topic, m.service, m.timestamp, m.meta, m.envelope) for m in packed.messages],
        )
        body_ids = _returning(cursor, _BODY, [(message_ids[m], parts) for m, parts in packed.bodies])
        rows = [
            delivery_values(new, body_ids[body], now)
            for new, body in packed.deliveries
        ]
        if rows:
            cursor.executemany(_DELIVERY, rows)
        entry_rows = [
            (
                e.destination.key,
                e.destination.account,
                e.destination.to,
                e.msg_id,
                e.rule,
                e.rule_file,
                e.template,
                _dumps(dict(e.options)),
                e.every,
                e.max,
                e.topic,
                e.service,
                e.timestamp,
                now,
                body_ids[body],
            )
            for e, body in packed.entries
        ]
        if entry_rows:
            cursor.executemany(_ENTRY, entry_rows)
    duplicates = len(deliveries) + len(entries) - len(new_deliveries) - len(new_entries)
    touched = frozenset(new.destination for new in new_deliveries if new.error is None)
    return Accepted(touched, frozenset(e.destination for e in new_entries), duplicates)


def _returning(cursor: psycopg.Cursor[Row], query: str, rows: list[tuple[Any, ...]]) -> list[Any]:
    """Run ``query`` once per row in one pipelined batch; each one's first returned value (None: no row)."""
    if not rows:
        return []
    cursor.executemany(query, rows, returning=True)
    out: list[Any] = []
    while True:
        found = cursor.fetchone()
        out.append(None if found is None else next(iter(found.values())))
        if not cursor.nextset():
            break
    return out


def attach_bodies(db: psycopg.Connection[Row], rows: list[Row], *, envelopes: bool = False) -> list[Row]:
    """Add ``body_parts`` and ``body_meta`` (and ``body_envelope``) to rows that point at a body."""
    wanted = sorted({int(row["body"]) for row in rows if row.get("body") is not None})
    found: dict[int, Row] = {}
    if wanted:
        for hit in db.execute(
            "SELECT b.id, b.parts, m.meta, m.envelope FROM bodies b JOIN messages m ON m.id = b.message"
            " WHERE b.id = ANY(%s)",
            (wanted,),
        ).fetchall():
            found[int(hit["id"])] = hit
    for row in rows:
        body = row.get("body")
        shared: Row | None = None if body is None else found.get(int(body))
        row["body_parts"] = None if shared is None else shared["parts"]
        row["body_meta"] = None if shared is None else shared["meta"]
        if envelopes:
            row["body_envelope"] = None if shared is None else shared["envelope"]
    return rows


def forget_shared(db: psycopg.Connection[Row], bodies: Sequence[int]) -> None:
    """Delete these bodies if no row points at them any more, then their messages likewise."""
    wanted = sorted(set(bodies))
    if not wanted:
        return
    gone = db.execute(
        "DELETE FROM bodies b WHERE b.id = ANY(%s)"
        " AND NOT EXISTS (SELECT 1 FROM deliveries WHERE body = b.id)"
        " AND NOT EXISTS (SELECT 1 FROM digest_entries WHERE body = b.id) RETURNING message",
        (wanted,),
    ).fetchall()
    messages = sorted({int(row["message"]) for row in gone})
    if messages:
        db.execute(
            "DELETE FROM messages m WHERE m.id = ANY(%s) AND NOT EXISTS (SELECT 1 FROM bodies WHERE message = m.id)",
            (messages,),
        )
