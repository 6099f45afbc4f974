"""The SQLite store's rows in the shared layout (see :mod:`~fedmsg_notify.store.shared`).

Writing an accepted batch (messages, bodies, then the deliveries and digest entries that
point at them), the queries that read them back with their shared parts, and
forgetting the shared rows nothing points at any more.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from fedmsg_notify.backend import Destination
from fedmsg_notify.store.records import Accepted, NewDelivery, NewDigestEntry, _dumps
from fedmsg_notify.store.shared import PackedBatch, delivery_values, pack_batch

# A delivery with what its body and message hold (NULL for a row with its parts inline).
ITEM_SELECT = (
    "SELECT d.id, d.msg_id, d.account, d.recipient, d.rule, d.topic, d.service, d.rendered, d.options, d.meta,"
    " d.timestamp, d.count, d.attempts, d.kind, d.position, b.parts AS body_parts, m.meta AS body_meta"
    " FROM deliveries d LEFT JOIN bodies b ON b.id = d.body LEFT JOIN messages m ON m.id = b.message"
)
ENTRY_SELECT = (
    "SELECT e.*, b.parts AS body_parts, m.meta AS body_meta, m.envelope AS body_envelope"
    " FROM digest_entries e LEFT JOIN bodies b ON b.id = e.body LEFT JOIN messages m ON m.id = b.message"
)


def first_time(db: sqlite3.Connection, msg_id: str, destination: Destination, now: float) -> bool:
    cursor = db.execute(
        "INSERT OR IGNORE INTO accepted (msg_id, dest, at) VALUES (?,?,?)", (msg_id, destination.key, now)
    )
    return cursor.rowcount == 1


def insert_batch(
    db: sqlite3.Connection, deliveries: Sequence[NewDelivery], entries: Sequence[NewDigestEntry], now: float
) -> Accepted:
    """Store a batch in the caller's transaction; (msg_id, destination) pairs seen before are skipped."""
    return store_packed(db, pack_batch(deliveries, entries), now)


def store_packed(db: sqlite3.Connection, packed: PackedBatch, now: float) -> Accepted:
    """Store a batch packed beforehand (outside the write lock: packing compresses) in the caller's transaction."""
    fresh = [first_time(db, new.msg_id, new.destination, now) for new, _ in packed.deliveries]
    fresh_entries = [first_time(db, e.msg_id, e.destination, now) for e, _ in packed.entries]
    duplicates = fresh.count(False) + fresh_entries.count(False)
    if duplicates:
        packed = _without_duplicates(packed, fresh, fresh_entries)
    new_deliveries = [new for new, _ in packed.deliveries]
    new_entries = [entry for entry, _ in packed.entries]
    # Ids given here, consecutive after the largest: one statement per table for the batch
    # (this connection holds the write lock, so nobody else inserts meanwhile).
    first_message = int(db.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM messages").fetchone()[0])
    db.executemany(
        "INSERT INTO messages (id, msg_id, topic, service, timestamp, meta, envelope) VALUES (?,?,?,?,?,?,?)",
        [
            (first_message + n, m.msg_id, m.topic, m.service, m.timestamp, m.meta, m.envelope)
            for n, m in enumerate(packed.messages)
        ],
    )
    first_body = int(db.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM bodies").fetchone()[0])
    db.executemany(
        "INSERT INTO bodies (id, message, parts) VALUES (?,?,?)",
        [(first_body + n, first_message + m, parts) for n, (m, parts) in enumerate(packed.bodies)],
    )
    body_ids = [first_body + n for n in range(len(packed.bodies))]
    first_id: int | None = None
    for new, body in packed.deliveries:
        cursor = db.execute(
            "INSERT INTO deliveries (dest, account, recipient, msg_id, rule, topic, service, rendered, options,"
            " meta, timestamp, next_attempt, created, state, last_error, finished, body)"
            " VALUES (?,?,?,?,?,?,?,'',?,'',?,?,?,?,?,?,?)",
            delivery_values(new, body_ids[body], now),
        )
        if first_id is None:
            first_id = cursor.lastrowid
    if first_id is not None:
        # Send order is insertion order: one statement for the batch, not one per row.
        db.execute("UPDATE deliveries SET position = id WHERE id >= ? AND position IS NULL", (first_id,))
    db.executemany(
        "INSERT INTO digest_entries (dest, account, recipient, msg_id, rule, rule_file, template, options, every,"
        " max, topic, service, envelope, meta, rendered, timestamp, created, body)"
        " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,'','','',?,?,?)",
        [
            (
                entry.destination.key,
                entry.destination.account,
                entry.destination.to,
                entry.msg_id,
                entry.rule,
                entry.rule_file,
                entry.template,
                _dumps(dict(entry.options)),
                entry.every,
                entry.max,
                entry.topic,
                entry.service,
                entry.timestamp,
                now,
                body_ids[body],
            )
            for entry, body in packed.entries
        ],
    )
    touched = frozenset(new.destination for new in new_deliveries if new.error is None)
    return Accepted(touched, frozenset(entry.destination for entry in new_entries), duplicates)


def _without_duplicates(packed: PackedBatch, fresh: list[bool], fresh_entries: list[bool]) -> PackedBatch:
    """The packed batch without the rows seen before, and without what only they pointed at."""
    deliveries = [row for row, ok in zip(packed.deliveries, fresh, strict=True) if ok]
    entries = [row for row, ok in zip(packed.entries, fresh_entries, strict=True) if ok]
    used_bodies = sorted({body for _, body in [*deliveries, *entries]})
    used_messages = sorted({packed.bodies[body][0] for body in used_bodies})
    message_at = {old: new for new, old in enumerate(used_messages)}
    body_at = {old: new for new, old in enumerate(used_bodies)}
    return PackedBatch(
        messages=[packed.messages[m] for m in used_messages],
        bodies=[(message_at[packed.bodies[b][0]], packed.bodies[b][1]) for b in used_bodies],
        deliveries=[(row, body_at[body]) for row, body in deliveries],
        entries=[(row, body_at[body]) for row, body in entries],
    )


def forget_shared(db: sqlite3.Connection, bodies: Sequence[int]) -> int:
    """Delete these bodies if no row points at them any more, then their messages likewise."""
    candidates = sorted(set(bodies))
    messages: list[int] = []
    removed = 0
    for body in candidates:
        row = db.execute(
            "DELETE FROM bodies WHERE id = ? AND NOT EXISTS (SELECT 1 FROM deliveries WHERE body = ?)"
            " AND NOT EXISTS (SELECT 1 FROM digest_entries WHERE body = ?) RETURNING message",
            (body, body, body),
        ).fetchone()
        if row is not None:
            removed += 1
            messages.append(int(row[0]))
    for message in sorted(set(messages)):
        removed += db.execute(
            "DELETE FROM messages WHERE id = ? AND NOT EXISTS (SELECT 1 FROM bodies WHERE message = ?)",
            (message, message),
        ).rowcount
    return removed

