"""`fedmsg-notify status`: where every notification is, from the state database alone."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
from fedmsg_notify.backend import Destination, Item
from fedmsg_notify.bus.zeromq import Publisher
from fedmsg_notify.commands import status as status_command
from fedmsg_notify.commands.cli import main
from fedmsg_notify.config.model import load_config
from fedmsg_notify.daemon import Daemon
from fedmsg_notify.store.records import NewDelivery, NewDigestEntry
from fedmsg_notify.store.sqlite import Outbox
from fedmsg_notify.testing import envelopes

RECORDER = "fedmsg_notify.testing:RecordingBackend"
BODHI = "org.fedoraproject.prod.bodhi.update.comment"


def write_config(tmp: Path, endpoint: str, accounts: str) -> Path:
    (tmp / "rules.yaml").write_text("rules:\n  - {name: all, match: {}, deliver: [{via: bad, to: '#x'}]}\n")
    path = tmp / "config.yaml"
    path.write_text(
        f"bus: {{endpoints: [{endpoint}]}}\naccounts:\n{accounts}\nrules: [{tmp / 'rules.yaml'}]\n"
        f"state: {tmp / 'state.db'}\n"
    )
    return path


async def until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def test_permanent_failure_and_malformed_counts_show_in_status(
    tmp_path: Path, endpoint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A user sees that a destination rejects messages, why, and how much garbage the bus sent."""
    config = write_config(
        tmp_path, endpoint, f"  bad: {{backend: '{RECORDER}', mode: permanent, reason: '550 5.1.1 user unknown'}}"
    )
    daemon = Daemon(load_config(config))
    ready = asyncio.Event()
    task = asyncio.create_task(daemon.run(ready))
    await asyncio.wait_for(ready.wait(), 10)
    publisher = Publisher(endpoint, username="tester", wait=5.0)
    try:
        # A bodhi comment and a message of a service no file describes (its metadata falls back).
        batch = [*envelopes(1, BODHI), *envelopes(1, "org.fedoraproject.prod.mystery.thing.happened")]
        # Garbage first: one publisher's frames arrive in order, so once both good
        # messages have failed, the malformed one has certainly been counted.
        await asyncio.to_thread(publisher.send_raw, [BODHI.encode(), b"{not json"])
        await asyncio.to_thread(lambda: [publisher.send_envelope(e) for e in batch])
        assert daemon.store is not None
        store = daemon.store
        await until(lambda: [r.failed for r in store.status(time.time())] == [2], 10, "two permanent failures")
    finally:
        publisher.close(linger_ms=0)
        daemon.stop()
        await asyncio.wait_for(task, 20)

    capsys.readouterr()
    assert main(["status", "-c", str(config)]) == 0
    out = capsys.readouterr().out
    assert "bad:#x" in out
    assert "failed 2," in out and "queued 0," in out
    assert "last permanent failure: 550 5.1.1 user unknown" in out
    assert "malformed messages dropped: 1" in out
    # Where the service files know nothing, status says so (by service, busiest first).
    assert "metadata fallbacks (generic text used): 1" in out and "  mystery: 1 (service 1)" in out, out

    assert main(["status", "-c", str(config), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    [row] = data["destinations"]
    assert (row["destination"], row["failed"], row["last_failure"]) == ("bad:#x", 2, "550 5.1.1 user unknown")
    assert sum(v for k, v in data["counters"].items() if k.startswith("malformed.")) == 1
    assert data["counters"].get("fallback.mystery.service") == 1, data["counters"]


def test_status_shows_retries_digests_coalesced_and_last_success(
    tmp_path: Path, endpoint: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Queued, retrying (next attempt and reason), coalesced, digest (next flush) and last success per destination."""
    config = write_config(tmp_path, endpoint, f"  bad: {{backend: '{RECORDER}'}}")
    now = time.time()
    # `status` reads the clock a moment after the rows were written: it sees the same instant here.
    monkeypatch.setattr(status_command, "time", SimpleNamespace(time=lambda: now))
    irc, mail = Destination("irc", "#fedora"), Destination("mail", "me@example.org")
    store = Outbox(tmp_path / "state.db")
    store.accept(
        [NewDelivery(f"m{n}", irc, "r", BODHI, "bodhi", {"text": "x"}) for n in range(6)],
        [NewDigestEntry("d1", mail, "r", "f", None, {}, 3600.0, None, BODHI, "bodhi", {}, {}, {"text": "d"}, now)],
        now=now,
    )
    items = [item for item, _ in store.window(irc, now, 10)]
    store.mark_sent(items[0], now - 120)
    store.mark_retry(items[1], 3, now + 300, "connection refused")

    def summarise(merged: object) -> dict[str, str]:
        return {"text": "3 more"}

    store.coalesce(irc, 3, summarise, now)  # type: ignore[arg-type]
    store.close()

    assert main(["status", "-c", str(config)]) == 0
    out = capsys.readouterr().out
    # The retrying row was among the three oldest, merged into the summary.
    assert "irc:#fedora\n  queued 3, in retry 0, failed 0, coalesced 3, digest pending 0, sent 1\n" in out
    assert "last success: " in out and "ago)" in out
    assert "mail:me@example.org" in out and "digest pending 1" in out
    assert "next digest: " in out and "(in 1h)" in out
    assert main(["status", "-c", str(config), "--json"]) == 0
    rows = {r["destination"]: r for r in json.loads(capsys.readouterr().out)["destinations"]}
    assert rows["irc:#fedora"]["coalesced"] == 3
    assert rows["irc:#fedora"]["queued"] == 3  # the summary and two untouched deliveries
    assert rows["mail:me@example.org"]["next_digest"] == pytest.approx(now + 3600)


def test_status_lists_a_retry_with_its_reason(
    tmp_path: Path, endpoint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A destination that is down shows when it will be tried again and why it failed."""
    config = write_config(tmp_path, endpoint, f"  bad: {{backend: '{RECORDER}'}}")
    now = time.time()
    dest = Destination("irc", "#fedora")
    store = Outbox(tmp_path / "state.db")
    store.accept([NewDelivery("m1", dest, "r", BODHI, "bodhi", {"text": "x"})], now=now)
    [(item, _)] = store.window(dest, now, 1)
    assert isinstance(item, Item)
    store.mark_retry(item, 2, now + 90, "connection refused")
    store.close()
    assert main(["status", "-c", str(config)]) == 0
    out = capsys.readouterr().out
    assert "in retry 1" in out
    assert "next retry: " in out and "connection refused" in out
    assert "last success: never" in out


def test_status_without_a_state_database_says_so(
    tmp_path: Path, endpoint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before the first run, status names the missing state file instead of printing an empty table."""
    config = write_config(tmp_path, endpoint, f"  bad: {{backend: '{RECORDER}'}}")
    assert main(["status", "-c", str(config)]) == 1
    err = capsys.readouterr().err
    assert str(tmp_path / "state.db") in err and "has not run" in err
    assert not (tmp_path / "state.db").exists()


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(0, "0s"), (59.4, "59s"), (59.6, "1m"), (3540, "59m"), (3599.4, "1h"), (3600, "1h"), (5400, "2h"),
     (86399, "1d"), (200000, "2d")],
)
def test_span_rounds_into_the_next_unit(seconds: float, shown: str) -> None:
    """Half a second short of an hour reads "1h", not "60m": the unit is chosen after rounding."""
    assert status_command._span(seconds) == shown
