"""What only the shared store does: leases between daemons, their expiry, one digest per window, reconnecting."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import pytest
from fedmsg_notify.backend import Destination
from fedmsg_notify.store.postgresql import Outbox, StoreUnavailable, safe_url
from fedmsg_notify.store.records import DigestEntry, NewDelivery, NewDigestEntry

from tests.postgresserver import PostgresServer, _bindir, postgres_server  # noqa: F401 (fixture)

DEST = Destination("mail", "a@example.org")
NOW = 1_000_000.0


@pytest.fixture
def two(request: pytest.FixtureRequest) -> Iterator[tuple[Outbox, Outbox]]:
    """Two daemons' stores on one fresh database."""
    url = request.getfixturevalue("postgres_server").create_database()
    a, b = Outbox(url, owner="a", lease=30.0), Outbox(url, owner="b", lease=30.0)
    yield a, b
    a.close()
    b.close()


def delivery(msg_id: str) -> NewDelivery:
    return NewDelivery(msg_id, DEST, "rule", "org.fedoraproject.prod.bodhi.x", "bodhi", {"text": msg_id})


def test_the_same_message_accepted_by_two_daemons_is_queued_once(two: tuple[Outbox, Outbox]) -> None:
    a, b = two
    assert a.accept([delivery("m1")], now=NOW).deliveries == {DEST}
    assert b.accept([delivery("m1"), delivery("m2")], now=NOW).duplicates == 1
    assert a.pending_count(DEST) == 2


def test_leased_rows_are_skipped_by_the_other_daemon_until_the_lease_ends(two: tuple[Outbox, Outbox]) -> None:
    a, b = two
    a.accept([delivery(f"m{n}") for n in range(6)], now=NOW)
    mine = [item.msg_id for item, _ in a.window(DEST, NOW, 4)]
    theirs = [item.msg_id for item, _ in b.window(DEST, NOW, 4)]
    assert (mine, theirs) == (["m0", "m1", "m2", "m3"], ["m4", "m5"])
    assert a.holds(a.window(DEST, NOW, 4)[0][0], NOW + 1)
    # The other daemon waits for the lease, not for ever and not in a busy loop.
    assert b.next_due(DEST) == NOW
    b_items = b.window(DEST, NOW, 10)
    for item, _ in b_items:
        b.mark_sent(item, NOW)
    assert b.window(DEST, NOW + 1, 10) == []
    assert b.next_due(DEST) == NOW + 30
    # a "dies": after its lease the rows are b's.
    taken = [item.msg_id for item, _ in b.window(DEST, NOW + 31, 10)]
    assert taken == ["m0", "m1", "m2", "m3"]


def test_closing_hands_leases_back_at_once(request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue("postgres_server").create_database()
    a, b = Outbox(url, owner="a"), Outbox(url, owner="b")
    a.accept([delivery("m1")], now=NOW)
    assert len(a.window(DEST, NOW, 10)) == 1
    assert b.window(DEST, NOW, 10) == []
    a.close()
    assert [item.msg_id for item, _ in b.window(DEST, NOW, 10)] == ["m1"]
    b.close()


def entry(msg_id: str) -> NewDigestEntry:
    return NewDigestEntry(
        msg_id, DEST, "rule", "r.yaml", None, {}, 60.0, None, "t", "bodhi", {"msg": {}}, {}, {"text": msg_id}, NOW
    )


def render(entries: Sequence[DigestEntry], total: int) -> tuple[Mapping[str, str], str]:
    return {"text": str(total)}, f"digest:{entries[0].msg_id}"


def test_a_digest_is_flushed_once_even_if_a_second_daemon_flushes_right_after(two: tuple[Outbox, Outbox]) -> None:
    a, b = two
    a.accept([], [entry(f"m{n}") for n in range(3)], now=NOW)
    assert a.flush_digest(DEST, None, render, NOW + 30) is None  # not due yet
    assert a.flush_digest(DEST, None, render, NOW + 60) is not None
    # A new entry came in just after: the other daemon's late flush must not send it alone now.
    b.accept([], [entry("m9")], now=NOW + 60)
    assert b.flush_digest(DEST, None, render, NOW + 60.5) is None
    assert b.flush_digest(DEST, None, render, NOW + 121) is not None


def test_a_lost_connection_is_reopened() -> None:
    """The store survives its server restarting; while it is down, calls say so with StoreUnavailable."""
    bindir = _bindir()
    assert bindir is not None
    server = PostgresServer(bindir)
    try:
        store = Outbox(server.create_database(), owner="a")
        store.accept([delivery("m1")], now=NOW)
        server.stop("immediate")
        with pytest.raises(StoreUnavailable, match=r"127\.0\.0\.1"):
            store.pending_count(DEST)
        server.start()
        assert store.pending_count(DEST) == 1
        store.close()
    finally:
        server.close()


def test_the_url_in_logs_has_no_password() -> None:
    assert safe_url("postgresql://u:secret@h:5/db") == "postgresql://u@h:5/db"
