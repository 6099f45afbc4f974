"""The SQLite store's tables (see :mod:`fedmsg_notify.store.sqlite` for what each holds)."""

from __future__ import annotations

SCHEMA_VERSION = 1
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
    finished REAL
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
    flushed_into INTEGER
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

CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""
