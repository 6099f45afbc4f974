"""Each message's shared parts are stored once, forgotten with their last row, and old files upgrade."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from fedmsg_notify.backend import Destination
from fedmsg_notify.store.records import DigestEntry, NewDelivery, NewDigestEntry
from fedmsg_notify.store.sqlite import Outbox

from tests.postgresserver import postgres_server  # noqa: F401 (fixture)

Store = Any
A, B, C = (Destination("mail", f"{who}@example.org") for who in "abc")
NOW = 1_000_000.0
META = {"title": "ralph commented", "usernames": ["ralph"], "packages": ["python-foo"]}
# Bus data the standard library keeps exact: a 70-bit integer, which orjson would turn into a float.
ENVELOPE = {"topic": "org.fedoraproject.prod.bodhi.update.comment", "msg": {"big": 2**70, "text": "ok"}}


def delivery(msg_id: str, dest: Destination, text: str, meta: Mapping[str, Any] = META) -> NewDelivery:
    return NewDelivery(msg_id, dest, "rule", "org.fedoraproject.prod.bodhi.x", "bodhi", {"text": text}, meta=meta, timestamp=NOW)


def entry(msg_id: str, dest: Destination, meta: Mapping[str, Any] = META) -> NewDigestEntry:
    return NewDigestEntry(
        msg_id, dest, "rule", "rules.yaml", None, {}, 3600.0, None, "org.fedoraproject.prod.bodhi.x", "bodhi",
        ENVELOPE, meta, {"text": f"digest line {msg_id}"}, NOW,
    )  # fmt: skip


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        outbox: Store = Outbox(tmp_path / "state.db")
    else:
        from fedmsg_notify.store.postgresql import Outbox as PgOutbox

        outbox = PgOutbox(request.getfixturevalue("postgres_server").create_database(), owner="test")
    yield outbox
    outbox.close()


def count(store: Store, table: str) -> int:
    row = store.db.execute(f"SELECT COUNT(*) AS n FROM {table}").fetchone()
    return int(row[0] if isinstance(store, Outbox) else row["n"])


def test_a_message_to_three_destinations_is_stored_once_and_alike_renderings_once(store: Store) -> None:
    """Three deliveries of one message: one message row; two renderings alike share one body."""
    meta = dict(META)  # one dict per message, as the intake builds it
    store.accept([delivery("m1", A, "same", meta), delivery("m1", B, "same", meta), delivery("m1", C, "other", meta)],
                 now=NOW)  # fmt: skip
    assert (count(store, "messages"), count(store, "bodies")) == (1, 2)
    texts = {}
    for dest in (A, B, C):
        [(item, _)] = store.window(dest, NOW, 10)
        texts[dest] = item.rendered["text"]
        assert item.meta == META and item.msg_id == "m1" and item.topic.endswith("bodhi.x")
    assert texts == {A: "same", B: "same", C: "other"}


def test_a_digest_entry_keeps_its_envelope_exact_and_shares_the_message_row(store: Store) -> None:
    """A message both delivered and digested is one message row; the entry reads its envelope back exactly."""
    meta = dict(META)
    store.accept([delivery("m1", A, "hello", meta)], [entry("m1", B, meta)], now=NOW)
    assert count(store, "messages") == 1
    seen: list[DigestEntry] = []

    def render(entries: Sequence[DigestEntry], total: int) -> tuple[Mapping[str, str], str]:
        seen.extend(entries)
        return {"text": "digest"}, "digest:m1"

    assert store.flush_digest(B, None, render, NOW + 7200) is not None  # an hour after: due
    [got] = seen
    assert got.envelope == ENVELOPE and got.envelope["msg"]["big"] == 2**70
    assert (got.meta, got.rendered) == (META, {"text": "digest line m1"})


def test_pruning_forgets_shared_rows_with_their_last_delivery(store: Store) -> None:
    """A body and its message stay while one delivery still points at them and go with the last."""
    meta = dict(META)
    store.accept([delivery("m1", A, "same", meta), delivery("m1", B, "same", meta)], now=NOW)
    [(first, _)] = store.window(A, NOW, 10)
    store.mark_sent(first, NOW)
    store.prune(NOW + 2 * 86400)
    assert (count(store, "messages"), count(store, "bodies")) == (1, 1)
    [(second, _)] = store.window(B, NOW + 2 * 86400, 10)
    assert second.rendered == {"text": "same"}
    store.mark_sent(second, NOW + 2 * 86400)
    store.prune(NOW + 4 * 86400)
    assert (count(store, "deliveries"), count(store, "messages"), count(store, "bodies")) == (0, 0, 0)


def test_a_version_1_state_file_is_upgraded_and_its_queued_rows_still_send(tmp_path: Path) -> None:
    """An upgrade keeps what the old release queued: inline rows are read as they are."""
    from fedmsg_notify.store import sqlite_schema

    path = tmp_path / "old.db"
    old_schema = sqlite_schema.SCHEMA.replace(",\n    -- The message's rendering in ``bodies`` (then rendered and meta"
                                              " are ''); NULL: inline.\n    body INTEGER", "")  # fmt: skip
    old_schema = old_schema.replace(",\n    flushed_into INTEGER,\n    body INTEGER", ",\n    flushed_into INTEGER")
    assert "body INTEGER" not in old_schema
    with sqlite3.connect(path) as db:
        db.executescript(old_schema)
        db.execute("PRAGMA user_version=1")
        db.execute(
            "INSERT INTO deliveries (position, dest, account, recipient, msg_id, rule, topic, service, rendered,"
            " options, meta, timestamp, next_attempt, created) VALUES (1, ?, 'mail', ?, 'old', 'r', 't', 's',"
            " '{\"text\":\"queued before the upgrade\"}', '{}', '{\"title\":\"x\"}', 1.0, 0, 0)",
            (A.key, A.to),
        )
    store = Outbox(path)
    try:
        assert store.db.execute("PRAGMA user_version").fetchone()[0] == sqlite_schema.SCHEMA_VERSION
        [(item, _)] = store.window(A, NOW, 10)
        assert (item.rendered, item.meta) == ({"text": "queued before the upgrade"}, {"title": "x"})
        store.accept([delivery("new", A, "after")], now=NOW)
        assert [i.msg_id for i, _ in store.window(A, NOW, 10)] == ["old", "new"]
    finally:
        store.close()


def test_a_state_file_from_a_newer_release_is_refused(tmp_path: Path) -> None:
    """Rows of a layout this release does not know are not misread."""
    from fedmsg_notify.store.sqlite_schema import SchemaTooNew

    path = tmp_path / "new.db"
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version=99")
    with pytest.raises(SchemaTooNew, match="99"):
        Outbox(path)


def test_a_version_1_postgresql_database_is_migrated_and_its_rows_still_send(
    postgres_server: Any,  # noqa: F811
) -> None:
    """Migration 2 adds the shared tables to a database of version 1 without touching its rows."""
    import psycopg
    from fedmsg_notify.store.pg_schema import LATEST, MIGRATIONS
    from fedmsg_notify.store.postgresql import Outbox as PgOutbox

    url = postgres_server.create_database()
    with psycopg.connect(url, autocommit=True) as db:
        db.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied DOUBLE PRECISION"
                   " NOT NULL DEFAULT extract(epoch FROM now()))")  # fmt: skip
        db.execute(MIGRATIONS[0][1].encode())
        db.execute("INSERT INTO schema_migrations (version) VALUES (1)")
        db.execute(
            "INSERT INTO deliveries (dest, account, recipient, msg_id, rule, topic, service, rendered, options, meta,"
            " timestamp, next_attempt, created) VALUES (%s, 'mail', %s, 'old', 'r', 't', 's',"
            " '{\"text\":\"queued before\"}', '{}', '{}', 1.0, 0, 0)",
            (A.key, A.to),
        )
    store = PgOutbox(url, owner="test")
    try:
        versions = [row["version"] for row in store.db.execute("SELECT version FROM schema_migrations ORDER BY 1")]
        assert versions == [number for number, _ in MIGRATIONS] and versions[-1] == LATEST
        store.accept([delivery("new", A, "after")], now=NOW)
        assert [(i.msg_id, i.rendered["text"]) for i, _ in store.window(A, NOW, 10)] == [
            ("old", "queued before"),
            ("new", "after"),
        ]
    finally:
        store.close()


def test_a_replayed_message_adds_no_shared_rows(store: Store) -> None:
    """Rows seen before are skipped with the message and body rows only they would have pointed at."""
    meta = dict(META)
    store.accept([delivery("m1", A, "one", meta)], now=NOW)
    again = store.accept([delivery("m1", A, "one", dict(META)), delivery("m2", A, "two", dict(META))], now=NOW)
    assert again.duplicates == 1
    assert (count(store, "messages"), count(store, "bodies")) == (2, 2)
    assert [(i.msg_id, i.rendered["text"]) for i, _ in store.window(A, NOW, 10)] == [("m1", "one"), ("m2", "two")]
