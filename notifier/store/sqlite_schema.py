"""The SQLite store's tables (see :mod:`fedmsg_notify.store.sqlite` for what each holds)."""

from __future__ import annotations

import sqlite3

# 1: parts inline in every row. 2: each message's shared parts once (see ``shared``):
# ``messages`` and ``bodies``, and a ``body`` column that deliveries and entries point with.
SCHEMA_VERSION = 2
SCHEMA = """
CREATE TABLE IF NOT EXISTS accepted (
    msg_id TEXT NOT NULL,
    dest TEXT NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (msg_id, dest)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS accepted_at ON accepted(at);

CREATE TABLE IF NOT EXISTS deliveries (
    -- AUTOINCREMENT: ids are never reused after pruning, because backends derive
    -- idempotency keys from them.
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    -- Send order; a flood summary takes the place of the oldest row it merged.
    position INTEGER,
    dest TEXT NOT NULL,
    account TEXT NOT NULL,
    recipient TEXT,
    kind TEXT NOT NULL DEFAULT 'message',          -- message | digest | summary
    msg_id TEXT NOT NULL,
    rule TEXT NOT NULL,
    topic TEXT NOT NULL,
    service TEXT NOT NULL,
    rendered TEXT NOT NULL,
    options TEXT NOT NULL,
    meta TEXT NOT NULL,
    timestamp REAL NOT NULL,
    count INTEGER NOT NULL DEFAULT 1,
    state TEXT NOT NULL DEFAULT 'queued',          -- queued | sent | failed | coalesced
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL,
    last_error TEXT,
    merged_into INTEGER,
    created REAL NOT NULL,
    finished REAL,
    -- The message's rendering in ``bodies`` (then rendered and meta are ''); NULL: inline.
    body INTEGER
);
CREATE INDEX IF NOT EXISTS deliveries_queue ON deliveries(dest, state, position);
CREATE INDEX IF NOT EXISTS deliveries_finished ON deliveries(state, finished);

CREATE TABLE IF NOT EXISTS digest_entries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    dest TEXT NOT NULL,
    account TEXT NOT NULL,
    recipient TEXT,
    msg_id TEXT NOT NULL,
    rule TEXT NOT NULL,
    rule_file TEXT NOT NULL,
    template TEXT,
    options TEXT NOT NULL,
    every REAL,
    max INTEGER,
    topic TEXT NOT NULL,
    service TEXT NOT NULL,
    envelope TEXT NOT NULL,
    meta TEXT NOT NULL,
    rendered TEXT NOT NULL,
    timestamp REAL NOT NULL,
    created REAL NOT NULL,
    flushed_into INTEGER,
    body INTEGER
);
CREATE INDEX IF NOT EXISTS digest_pending ON digest_entries(dest, flushed_into, id);

CREATE TABLE IF NOT EXISTS destinations (
    dest TEXT PRIMARY KEY,
    account TEXT NOT NULL,
    recipient TEXT,
    last_success REAL,
    sent INTEGER NOT NULL DEFAULT 0,
    coalesced INTEGER NOT NULL DEFAULT 0
);

-- A delivery's success updates its destination's statistics in the same statement, so
-- marking it sent -- once per send, the hot path -- is one atomic round trip.
CREATE TRIGGER IF NOT EXISTS deliveries_sent AFTER UPDATE OF state ON deliveries
WHEN NEW.state = 'sent'
BEGIN
    INSERT INTO destinations (dest, account, recipient, last_success, sent)
    VALUES (NEW.dest, NEW.account, NEW.recipient, NEW.finished, 1)
    ON CONFLICT(dest) DO UPDATE SET last_success = excluded.last_success, sent = sent + 1;
END;

-- One row per accepted message, one per distinct rendering of it (see ``shared``).
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY,
    msg_id TEXT NOT NULL,
    topic TEXT NOT NULL,
    service TEXT NOT NULL,
    timestamp REAL NOT NULL,
    meta BLOB NOT NULL,
    envelope BLOB
);
CREATE TABLE IF NOT EXISTS bodies (
    id INTEGER PRIMARY KEY,
    message INTEGER NOT NULL,
    parts BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS bodies_message ON bodies(message);

CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""

# After SCHEMA: a version-1 file gets the ``body`` columns (NULL: its rows stay inline), then
# the indexes that pruning uses to find bodies no row points at.
BODY_INDEXES = """
CREATE INDEX IF NOT EXISTS deliveries_body ON deliveries(body) WHERE body IS NOT NULL;
CREATE INDEX IF NOT EXISTS digest_entries_body ON digest_entries(body) WHERE body IS NOT NULL;
"""


class SchemaTooNew(RuntimeError):
    """The file was written by a newer release, whose rows this one would misread."""


def migrate(db: sqlite3.Connection) -> int:
    """Create or upgrade the tables to :data:`SCHEMA_VERSION` (one transaction); return the version found."""
    found = int(db.execute("PRAGMA user_version").fetchone()[0])
    if found > SCHEMA_VERSION:
        raise SchemaTooNew(
            f"the state file has schema version {found}, newer than this release knows ({SCHEMA_VERSION});"
            " upgrade fedmsg-notify or point state: at another file"
        )
    db.execute("BEGIN IMMEDIATE")
    try:
        for statement in _statements(SCHEMA):
            db.execute(statement)
        for table in ("deliveries", "digest_entries"):
            columns = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
            if "body" not in columns:
                db.execute(f"ALTER TABLE {table} ADD COLUMN body INTEGER")
        for statement in _statements(BODY_INDEXES):
            db.execute(statement)
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return found


def _statements(script: str) -> list[str]:
    """A script's statements (a trigger's body holds semicolons of its own)."""
    out: list[str] = []
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            out.append(pending)
            pending = ""
    return out
