"""The durable store: dedup, send order, outcomes, coalescing, pruning."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from fedmsg_notify.backend import Destination, Item
from fedmsg_notify.store.records import NewDelivery
from fedmsg_notify.store.sqlite import Outbox

from tests.postgresserver import postgres_server  # noqa: F401 (fixture)

# The interface tests run against both stores: SQLite (embedded) and PostgreSQL (shared).
Store = Any

IRC = Destination("irc", "#fedora")
MAIL = Destination("mail", "a@example.org")
NOW = 1_000_000.0


def delivery(msg_id: str, dest: Destination = IRC, service: str = "bodhi") -> NewDelivery:
    return NewDelivery(msg_id, dest, "rule", f"org.fedoraproject.prod.{service}.x", service, {"text": msg_id})


@pytest.fixture(params=["sqlite", "postgresql"])
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Store]:
    """Opens (and reopens) one store of the parametrised kind."""
    if request.param == "sqlite":
        return lambda: Outbox(tmp_path / "state.db")
    from fedmsg_notify.store.postgresql import Outbox as PgOutbox

    url = request.getfixturevalue("postgres_server").create_database()
    return lambda: PgOutbox(url, owner="test")


@pytest.fixture
def store(opener: Callable[[], Store]) -> Iterator[Store]:
    outbox = opener()
    yield outbox
    outbox.close()


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[Outbox]:
    outbox = Outbox(tmp_path / "state.db")
    yield outbox
    outbox.close()


def count(store: Store, query: str, *args: Any) -> int:
    """``SELECT COUNT(*) …`` in either store (``?`` placeholders)."""
    if isinstance(store, Outbox):
        return int(store.db.execute(query, args).fetchone()[0])
    row = store.db.execute(query.replace("?", "%s"), args).fetchone()
    return int(next(iter(row.values())))


def test_wal_mode_and_durable_settings(sqlite_store: Outbox) -> None:
    """The store survives a crash of the process (WAL, synchronous=NORMAL)."""
    store = sqlite_store
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL


def test_same_message_twice_to_a_destination_is_stored_once(store: Store) -> None:
    """A replayed message, or two rules routing it to the same place, reaches the destination once."""
    first = store.accept([delivery("m1"), delivery("m1"), delivery("m1", MAIL)], now=NOW)
    assert first.deliveries == {IRC, MAIL}
    assert first.duplicates == 1
    again = store.accept([delivery("m1")], now=NOW + 5)
    assert (again.deliveries, again.duplicates) == (frozenset(), 1)
    assert store.pending_count(IRC) == 1


def test_dedup_survives_reopening(opener: Callable[[], Store]) -> None:
    """After a restart, a message delivered before is not delivered again."""
    store = opener()
    store.accept([delivery("m1")], now=NOW)
    [(item, _)] = store.window(IRC, NOW, 10)
    store.mark_sent(item, NOW)
    store.close()
    reopened = opener()
    assert reopened.accept([delivery("m1")], now=NOW + 60).duplicates == 1
    assert reopened.pending_count(IRC) == 0
    reopened.close()


def test_a_batch_is_one_transaction(store: Store) -> None:
    """A failure while storing a batch stores none of it, so nothing is half-accepted."""
    # A constraint that rejects the second row of the batch, as a full disk would.
    if isinstance(store, Outbox):
        store.db.execute(
            "CREATE TRIGGER boom BEFORE INSERT ON deliveries WHEN NEW.msg_id = 'm2' BEGIN SELECT RAISE(ABORT, 'boom'); END"
        )
        error: type[Exception] = sqlite3.IntegrityError
    else:
        import psycopg

        store.db.execute("ALTER TABLE deliveries ADD CONSTRAINT boom CHECK (msg_id <> 'm2')")
        error = psycopg.errors.CheckViolation
    with pytest.raises(error, match="boom"):
        store.accept([delivery("m1"), delivery("m2")], now=NOW)
    assert store.pending_count(IRC) == 0
    assert count(store, "SELECT COUNT(*) FROM accepted") == 0


def test_window_is_bounded_and_in_order(store: Store) -> None:
    """Workers read a bounded window of the backlog, oldest first, and only what is due."""
    store.accept([delivery(f"m{n}") for n in range(10)], now=NOW)
    window = store.window(IRC, NOW, 4)
    assert [item.msg_id for item, _ in window] == ["m0", "m1", "m2", "m3"]
    store.mark_retry(window[0][0], 1, NOW + 30, "refused")
    assert [item.msg_id for item, _ in store.window(IRC, NOW, 2)] == ["m1", "m2"]
    assert store.next_due(IRC) == NOW
    assert [item.msg_id for item, _ in store.window(IRC, NOW + 30, 1)] == ["m0"]


def test_outcomes_show_in_status(store: Store) -> None:
    """Status tells sent, retrying (with reason and time) and failed (with reason) apart."""
    store.accept([delivery(f"m{n}") for n in range(4)], now=NOW)
    items = [item for item, _ in store.window(IRC, NOW, 10)]
    store.mark_sent(items[0], NOW + 1)
    store.mark_retry(items[1], 2, NOW + 40, "connection refused")
    store.mark_failed(items[2], 1, "550 mailbox unavailable", NOW + 2)
    [row] = store.status(NOW + 3)
    assert (row.sent, row.queued, row.in_retry, row.failed) == (1, 2, 1, 1)
    assert (row.next_retry, row.last_retry_reason) == (NOW + 40, "connection refused")
    assert (row.last_failure, row.last_success) == ("550 mailbox unavailable", NOW + 1)


def test_render_errors_are_stored_as_failures(store: Store) -> None:
    """A template error for one message shows up in status instead of vanishing."""
    broken = NewDelivery("m1", IRC, "rule", "t", "svc", {}, error="template error: boom")
    accepted = store.accept([broken], now=NOW)
    assert accepted.deliveries == frozenset()
    [row] = store.status(NOW)
    assert (row.failed, row.last_failure, row.queued) == (1, "template error: boom", 0)


def _summarise(items: Sequence[Item]) -> dict[str, str]:
    return {"text": f"{sum(i.count for i in items)} more"}


def test_coalesce_merges_oldest_and_counts_everything(store: Store) -> None:
    """A flood is merged into a summary sent in the merged rows' place; nothing vanishes uncounted."""
    store.accept([delivery(f"m{n}") for n in range(10)], now=NOW)
    summary = store.coalesce(IRC, 6, _summarise, NOW)
    assert summary is not None
    window = [item for item, _ in store.window(IRC, NOW, 10)]
    assert [(i.msg_id, i.count, i.rendered["text"]) for i in window[:2]] == [
        ("coalesced:1", 6, "6 more"),
        ("m6", 1, "m6"),
    ]
    assert len(window) == 5
    merged = count(store, "SELECT COUNT(*) FROM deliveries WHERE merged_into = ?", summary)
    assert merged == 6
    # Merging the summary again counts only the messages not counted before.
    store.coalesce(IRC, 3, _summarise, NOW)
    [row] = store.status(NOW)
    assert row.coalesced == 6 + 2
    assert [i.count for i, _ in store.window(IRC, NOW, 10)] == [8, 1, 1]


def test_prune_forgets_only_old_finished_work(store: Store) -> None:
    """The database does not grow forever, and nothing still queued is pruned."""
    store.accept([delivery("old"), delivery("queued")], now=NOW)
    old, _ = store.window(IRC, NOW, 1)[0]
    store.mark_sent(old, NOW)
    # The sent row and both week-old dedup-log entries; the queued delivery itself stays.
    assert store.prune(NOW + 8 * 86400) == 3
    assert [i.msg_id for i, _ in store.window(IRC, NOW + 8 * 86400, 10)] == ["queued"]


def test_sent_rows_go_after_a_day_but_dedup_is_kept_a_week(store: Store) -> None:
    """Rendered text of sent deliveries must not pile up for a week, yet a replay two days later is still a duplicate."""
    store.accept([delivery("m1")], now=NOW)
    item, _ = store.window(IRC, NOW, 1)[0]
    store.mark_sent(item, NOW)
    store.prune(NOW + 2 * 86400)
    assert count(store, "SELECT COUNT(*) FROM deliveries") == 0
    store.accept([delivery("m1")], now=NOW + 2 * 86400)
    assert store.window(IRC, NOW + 2 * 86400, 10) == []


def test_counters_accumulate(store: Store) -> None:
    """Malformed-message counts add up across daemon runs."""
    store.add_counters({"malformed.not-json": 2})
    store.add_counters({"malformed.not-json": 3, "malformed.too-big": 1, "zero": 0})
    assert store.counters() == {"malformed.not-json": 5, "malformed.too-big": 1}


def test_readonly_open_of_a_missing_database_says_where(tmp_path: Path) -> None:
    """`status` before the first run names the missing file instead of creating an empty one."""
    with pytest.raises(FileNotFoundError, match=r"nothing\.db"):
        Outbox(tmp_path / "nothing.db", readonly=True)
    assert not (tmp_path / "nothing.db").exists()


def test_coalescer_makes_any_backends_summary_inert(store: Store) -> None:
    """Whatever a backend's summariser writes, a line part of the stored summary has no CR, LF or NUL."""
    from fedmsg_notify.backends.console import ConsoleBackend
    from fedmsg_notify.clock import FakeClock
    from fedmsg_notify.delivery.coalesce import Coalescer
    from fedmsg_notify.pacing import TokenBucket

    class Careless(ConsoleBackend):
        def summarise(self, items: Sequence[Item]) -> dict[str, str]:
            return {"line": "bodhi\r\nQUIT :bye\x00 more"}

    backend = Careless("out", ConsoleBackend.Account(backend="console"))
    store.accept([delivery(f"m{n}") for n in range(50)], now=NOW)
    merged = Coalescer(horizon=1.0).check(store, IRC, backend, TokenBucket(1.0, 1, FakeClock(NOW)), NOW)
    assert merged > 0
    summaries = [item for item, _ in store.window(IRC, NOW, 100) if item.count > 1]
    assert summaries
    for item in summaries:
        assert not any(c in item.rendered["line"] for c in "\r\n\x00"), item.rendered


def test_the_records_keep_their_old_import_path() -> None:
    """Code written against the outbox before the store split still imports its records from it."""
    from fedmsg_notify.store import records, sqlite

    for name in ("NewDelivery", "NewDigestEntry", "DigestEntry", "DigestGroup", "Accepted", "DestinationStatus"):
        assert getattr(sqlite, name) is getattr(records, name)


def test_max_backlog_and_max_backlog_age_summarise_the_oldest_and_count_them(store: Store) -> None:
    """A destination down for long: past the account's limits, the oldest are merged into one counted summary."""
    from fedmsg_notify.backends.console import ConsoleBackend
    from fedmsg_notify.clock import FakeClock
    from fedmsg_notify.delivery.coalesce import Coalescer
    from fedmsg_notify.pacing import TokenBucket

    fast = TokenBucket(1000.0, 1000, FakeClock(NOW))  # the pace alone would merge nothing
    by_age = ConsoleBackend("out", ConsoleBackend.Account(backend="console", max_backlog_age="1h"))
    store.accept([delivery(f"old{n}") for n in range(10)], now=NOW - 7200)
    store.accept([delivery(f"new{n}") for n in range(5)], now=NOW)
    assert Coalescer().check(store, IRC, by_age, fast, NOW) == 10
    items = [item for item, _ in store.window(IRC, NOW, 100)]
    assert sorted(item.count for item in items) == [1, 1, 1, 1, 1, 10]
    assert {item.msg_id for item in items if item.count == 1} == {f"new{n}" for n in range(5)}

    by_count = ConsoleBackend("out", ConsoleBackend.Account(backend="console", max_backlog=4))
    assert Coalescer().check(store, IRC, by_count, fast, NOW) == 3  # 6 rows down to 4: the 3 oldest become one
    items = [item for item, _ in store.window(IRC, NOW, 100)]
    assert len(items) == 4 and sum(item.count for item in items) == 15
    [row] = store.status(NOW)
    assert row.coalesced == 12  # 10 by age, then 2 more messages (the first summary was counted already)


def test_max_backlog_age_is_a_duration_and_a_wrong_one_is_refused(tmp_path: Path) -> None:
    from fedmsg_notify.config.model import load_config
    from fedmsg_notify.config.yaml_positions import ProblemsError

    path = tmp_path / "config.yaml"
    path.write_text("accounts:\n  out: {backend: console, max_backlog: 500, max_backlog_age: 6h}\n")
    account = load_config(path).accounts["out"].options
    assert (account.max_backlog, account.max_backlog_age) == (500, 21600.0)
    path.write_text("accounts:\n  out: {backend: console, max_backlog_age: soon}\n")
    with pytest.raises(ProblemsError) as caught:
        load_config(path)
    [problem] = caught.value.problems
    assert problem.position.line == 2 and "max_backlog_age" in str(problem) and "30m, 1h or 1d" in str(problem)
