"""The PostgreSQL store's schema: versioned migrations, applied once under an advisory lock.

Every daemon of a cluster runs :func:`migrate` when it opens the store. The first takes
the session advisory lock :data:`MIGRATION_LOCK`, applies the migrations newer than
the version recorded in ``schema_migrations`` (each in its own transaction, together
with its row there; a new database gets them all in one, recorded as the
latest) and lets go; the others wait on the lock and then find nothing to
do. A database written by a newer release (a version we do not know) is refused rather
than used half-understood.

The tables mirror the SQLite store's (see :mod:`fedmsg_notify.store.sqlite`) plus what
several daemons need: a lease on each queued delivery (``lease_owner``/``lease_until``,
claimed with ``FOR UPDATE SKIP LOCKED``), the daemons alive (``daemons``) and which
daemon holds each connection-bound account (``holders``), and each account's token
bucket shared by all daemons (``pace_buckets``, see :mod:`fedmsg_notify.store.pg_pace`).
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import tuple_row

# Any 64-bit constant of our own: pg_advisory_lock keys are shared by all users of a database.
MIGRATION_LOCK = 0x66_6E_6F_74_69_66_79_01  # "fnotify" + 1

MIGRATIONS: tuple[tuple[int, str], ...] = (
    (
        1,
        """
CREATE TABLE accepted (
    msg_id TEXT NOT NULL,
    dest TEXT NOT NULL,
    at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (msg_id, dest)
);
CREATE INDEX accepted_at ON accepted(at);

CREATE SEQUENCE delivery_positions;
CREATE TABLE deliveries (
    id BIGSERIAL PRIMARY KEY,
    position BIGINT NOT NULL DEFAULT nextval('delivery_positions'),
    dest TEXT NOT NULL,
    account TEXT NOT NULL,
    recipient TEXT,
    kind TEXT NOT NULL DEFAULT 'message',
    msg_id TEXT NOT NULL,
    rule TEXT NOT NULL,
    topic TEXT NOT NULL,
    service TEXT NOT NULL,
    rendered TEXT NOT NULL,
    options TEXT NOT NULL,
    meta TEXT NOT NULL,
    timestamp DOUBLE PRECISION NOT NULL,
    count INTEGER NOT NULL DEFAULT 1,
    state TEXT NOT NULL DEFAULT 'queued',
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt DOUBLE PRECISION NOT NULL,
    last_error TEXT,
    merged_into BIGINT,
    created DOUBLE PRECISION NOT NULL,
    finished DOUBLE PRECISION,
    lease_owner TEXT,
    lease_until DOUBLE PRECISION
);
CREATE INDEX deliveries_queue ON deliveries(dest, position) WHERE state = 'queued';
CREATE INDEX deliveries_finished ON deliveries(state, finished);

CREATE TABLE digest_entries (
    id BIGSERIAL PRIMARY KEY,
    dest TEXT NOT NULL,
    account TEXT NOT NULL,
    recipient TEXT,
    msg_id TEXT NOT NULL,
    rule TEXT NOT NULL,
    rule_file TEXT NOT NULL,
    template TEXT,
    options TEXT NOT NULL,
    every DOUBLE PRECISION,
    max INTEGER,
    topic TEXT NOT NULL,
    service TEXT NOT NULL,
    envelope TEXT NOT NULL,
    meta TEXT NOT NULL,
    rendered TEXT NOT NULL,
    timestamp DOUBLE PRECISION NOT NULL,
    created DOUBLE PRECISION NOT NULL,
    flushed_into BIGINT
);
CREATE INDEX digest_pending ON digest_entries(dest, id) WHERE flushed_into IS NULL;

CREATE TABLE destinations (
    dest TEXT PRIMARY KEY,
    account TEXT NOT NULL,
    recipient TEXT,
    last_success DOUBLE PRECISION,
    sent BIGINT NOT NULL DEFAULT 0,
    coalesced BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE counters (
    name TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);

CREATE TABLE daemons (
    id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    started DOUBLE PRECISION NOT NULL,
    seen DOUBLE PRECISION NOT NULL,
    sent BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE holders (
    account TEXT PRIMARY KEY,
    daemon TEXT NOT NULL,
    since DOUBLE PRECISION NOT NULL
);
""",
    ),
    (
        # Each message's shared parts once (see fedmsg_notify.store.shared): deliveries and
        # digest entries point at a body (one rendering), the body at its message. Rows of
        # version 1 keep their parts inline (body NULL).
        2,
        """
CREATE TABLE messages (
    id BIGSERIAL PRIMARY KEY,
    msg_id TEXT NOT NULL,
    topic TEXT NOT NULL,
    service TEXT NOT NULL,
    timestamp DOUBLE PRECISION NOT NULL,
    meta BYTEA NOT NULL,
    envelope BYTEA
);
CREATE TABLE bodies (
    id BIGSERIAL PRIMARY KEY,
    message BIGINT NOT NULL,
    parts BYTEA NOT NULL
);
CREATE INDEX bodies_message ON bodies(message);
ALTER TABLE deliveries ADD COLUMN body BIGINT;
ALTER TABLE digest_entries ADD COLUMN body BIGINT;
CREATE INDEX deliveries_body ON deliveries(body) WHERE body IS NOT NULL;
CREATE INDEX digest_entries_body ON digest_entries(body) WHERE body IS NOT NULL;
""",
    ),
    (
        # The cluster-wide pace of each account (see pg_pace), and each daemon's bus connection for
        # `status`. IF NOT EXISTS: harmless if renumbered in a merge.
        3,
        """
CREATE TABLE IF NOT EXISTS pace_buckets (
    account TEXT PRIMARY KEY,
    tokens DOUBLE PRECISION NOT NULL,
    updated DOUBLE PRECISION NOT NULL,
    granted INTEGER NOT NULL DEFAULT 0
);
ALTER TABLE daemons ADD COLUMN IF NOT EXISTS bus TEXT;
""",
    ),
)

LATEST = MIGRATIONS[-1][0]


class SchemaTooNew(RuntimeError):
    pass


def current_version(db: psycopg.Connection[Any]) -> int:
    with db.cursor(row_factory=tuple_row) as cursor:
        exists = cursor.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
        if not exists or not exists[0]:
            return 0
        row = cursor.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations").fetchone()
        return int(row[0]) if row else 0


def migrate(db: psycopg.Connection[Any]) -> list[int]:
    """Bring the schema to :data:`LATEST`; return the versions this call applied (usually none)."""
    applied: list[int] = []
    db.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
    try:
        db.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied DOUBLE PRECISION"
            " NOT NULL DEFAULT extract(epoch FROM now()))"
        )
        version = current_version(db)
        if version > LATEST:
            raise SchemaTooNew(
                f"the database has schema version {version}, newer than this release knows ({LATEST});"
                " upgrade fedmsg-notify on this host"
            )
        if version == 0:
            # A new database is created at the latest version in one step (one row recorded).
            with db.transaction():
                for _, script in MIGRATIONS:
                    db.execute(script.encode())
                db.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (LATEST,))
            return [LATEST]
        for number, script in MIGRATIONS:
            if number <= version:
                continue
            with db.transaction():
                db.execute(script.encode())
                db.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (number,))
            applied.append(number)
    finally:
        db.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
    return applied
