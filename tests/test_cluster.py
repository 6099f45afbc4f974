"""Two daemons, one PostgreSQL store: real processes, a real PostgreSQL cluster, a real SMTP server.

Input is ZeroMQ (every daemon hears every message; the store's accept key lets one of
them queue each); the daemons then compete for the queued rows through leases.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from fedmsg_notify.bus.zeromq import Publisher
from fedmsg_notify.config.model import load_config
from fedmsg_notify.config.yaml_positions import ProblemsError
from fedmsg_notify.testing import envelopes, read_recording

from tests.conftest import free_port
from tests.needs import missing, require_module
from tests.postgresserver import PostgresServer, _bindir, postgres_server  # noqa: F401 (fixture)
from tests.smtpserver import Handler, smtp_server
from tests.test_lifecycle import BODHI, DaemonProcess, NotifySocket, until

TO = "someone@example.org"


@pytest.fixture
def pg_url(request: pytest.FixtureRequest) -> str:
    """A fresh database of the session's PostgreSQL cluster."""
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.create_database()


@pytest.fixture
def smtp() -> Iterator[tuple[int, Handler]]:
    port = free_port()
    with smtp_server(port) as handler:
        yield port, handler


@pytest.fixture
def started() -> Iterator[list[DaemonProcess]]:
    procs: list[DaemonProcess] = []
    yield procs
    for proc in procs:
        proc.kill()
        proc.notify.close()


def write_config(
    tmp: Path, name: str, bus: str, smtp_port: int, url: str, deliver: str, lease: float = 10.0, extra: str = ""
) -> Path:
    """One daemon's config: its own file and log, the shared bus, SMTP server and database."""
    folder = tmp / name
    (folder / "rules").mkdir(parents=True)
    (folder / "rules" / "r.yaml").write_text(
        f"rules:\n  - name: bodhi\n    match: {{service: bodhi}}\n    deliver:\n      - {deliver}\n"
    )
    config = folder / "config.yaml"
    config.write_text(
        f"bus: {{endpoints: [{bus}]}}\n"
        "accounts:\n"
        f'  mail: {{backend: email, smtp: "smtp://127.0.0.1:{smtp_port}", from: "n@example.org",'
        " rate: 100000, burst: 100000}\n"
        f"{extra}"
        f"rules: [{folder / 'rules'}]\n"
        f"state: {url}\n"
        f"state_lease: {lease}\n"
    )
    return config


def start(tmp: Path, name: str, config: Path, procs: list[DaemonProcess]) -> DaemonProcess:
    proc = DaemonProcess(config, NotifySocket(), tmp / f"{name}.log")
    procs.append(proc)
    return proc


MESSAGE_ID = re.compile(rb"^Message-ID: *(<[^>\r\n]+>)", re.IGNORECASE | re.MULTILINE)


def message_ids(handler: Handler) -> Counter[str]:
    """Message-IDs of the mails the server accepted, counted (a cheap header scan, not a full parse)."""
    with handler.lock:
        datas = [d.data for d in handler.delivered]
    found: Counter[str] = Counter()
    for data in datas:
        match = MESSAGE_ID.search(data.split(b"\r\n\r\n", 1)[0])
        assert match, data[:500]
        found[match.group(1).decode()] += 1
    return found


def mails(handler: Handler) -> int:
    with handler.lock:
        return len(handler.delivered)


def sent_per_daemon(url: str) -> list[int]:
    with psycopg.connect(url) as db:
        return [int(row[0]) for row in db.execute("SELECT sent FROM daemons ORDER BY started")]


def publish(bus: str, count: int, pace: float = 0.0) -> threading.Thread:
    """Publish ``count`` bodhi envelopes in the background (``pace`` seconds per 100)."""

    def run() -> None:
        publisher = Publisher(bus, username="tester", wait=10.0)
        try:
            for n, envelope in enumerate(envelopes(count, BODHI)):
                publisher.send_envelope(envelope)
                if pace and n % 100 == 99:
                    time.sleep(pace)
        finally:
            publisher.close(linger_ms=5000)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_a_password_in_the_url_is_refused_naming_the_file(tmp_path: Path) -> None:
    """The password never sits in the URL (logs, `ps`): the config says where to put it instead."""
    config = tmp_path / "c.yaml"
    config.write_text("state: postgresql://notify:s3cret@db.example.org/notify\n")
    with pytest.raises(ProblemsError) as caught:
        load_config(config)
    [problem] = caught.value.problems
    assert str(config) in str(problem) and ":1:" in str(problem)
    assert "state_password_file" in str(problem) and "s3cret" not in str(problem)


def test_migrations_run_once_under_the_lock(pg_url: str) -> None:
    """Several daemons starting at once: the schema is created once and recorded at its version."""
    from fedmsg_notify.store.pg_schema import LATEST, MIGRATIONS
    from fedmsg_notify.store.postgresql import Outbox

    stores: list[Outbox] = []
    errors: list[BaseException] = []

    def open_one(n: int) -> None:
        try:
            stores.append(Outbox(pg_url, owner=f"d{n}"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_one, args=(n,)) for n in range(4)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert errors == []
        with psycopg.connect(pg_url) as db:
            versions = db.execute("SELECT version FROM schema_migrations ORDER BY version").fetchall()
        # Created once, in one step, at the latest version (an existing database gets each newer one once).
        assert versions == [(LATEST,)] and MIGRATIONS[-1][0] == LATEST
    finally:
        for store in stores:
            store.close()


def test_two_daemons_mail_2000_messages_once_and_share_the_work(
    tmp_path: Path, pg_url: str, smtp: tuple[int, Handler], started: list[DaemonProcess]
) -> None:
    """Both daemons hear all 2,000 messages; each message is mailed once; both daemons sent some."""
    port, handler = smtp
    bus = f"tcp://127.0.0.1:{free_port()}"
    for name in ("a", "b"):
        start(tmp_path, name, write_config(tmp_path, name, bus, port, pg_url, f"{{via: mail, to: {TO}}}"), started)
    publish(bus, 2000, pace=0.05).join(120)
    until(lambda: mails(handler) >= 2000, 180, "2,000 mails")
    ids = message_ids(handler)
    # Both daemons' counts are committed with their sends: once they add up, nothing more is in flight.
    until(lambda: sum(sent_per_daemon(pg_url)) >= 2000, 30, "both daemons' send counts")
    assert len(ids) == 2000
    assert max(ids.values()) == 1, "a message was mailed twice"
    split = sent_per_daemon(pg_url)
    print(f"sends per daemon: {split}")
    assert len(split) == 2 and min(split) > 0, f"one daemon did all the work: {split}"
    # `status` shows the cluster: both daemons alive, with what each sent.
    out = subprocess.run(
        [sys.executable, "-m", "fedmsg_notify", "status", "-c", str(tmp_path / "a" / "config.yaml"), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    report = json.loads(out.stdout)
    assert sorted(d["sent"] for d in report["cluster"]["daemons"]) == sorted(split)
    assert all(d["alive"] for d in report["cluster"]["daemons"])
    assert report["cluster"]["queue"]["queued"] == 0
    assert report["destinations"][0]["sent"] == 2000


def test_kill_9_one_daemon_the_other_takes_over_its_leases(
    tmp_path: Path, pg_url: str, smtp: tuple[int, Handler], started: list[DaemonProcess]
) -> None:
    """Killing a daemon mid-flood loses nothing: its claimed rows go to the other after the lease."""
    port, handler = smtp
    bus = f"tcp://127.0.0.1:{free_port()}"
    # A short lease, so the takeover comes soon after the kill (it must still cover a send and
    # any stall of the event loop on this loaded machine, or a live daemon's row is taken over).
    deliver = f"{{via: mail, to: {TO}}}"
    a = start(tmp_path, "a", write_config(tmp_path, "a", bus, port, pg_url, deliver, lease=5.0), started)
    start(tmp_path, "b", write_config(tmp_path, "b", bus, port, pg_url, deliver, lease=5.0), started)
    sender = publish(bus, 2000, pace=0.1)
    until(lambda: mails(handler) >= 200, 120, "deliveries under way")
    a.proc.kill()
    assert a.wait() == -signal.SIGKILL
    at_kill = len(message_ids(handler))
    sender.join(120)
    assert at_kill < 2000, "the kill came after the last delivery; the test proves nothing"
    until(lambda: len(message_ids(handler)) >= 2000, 180, "every message after the kill")
    ids = message_ids(handler)
    assert len(ids) == 2000
    repeats = sum(n - 1 for n in ids.values())
    # One destination, and only the send in flight at the kill can be repeated.
    assert repeats <= 1, f"{repeats} repeats"


def test_a_digest_under_two_daemons_goes_out_once_per_window(
    tmp_path: Path, pg_url: str, smtp: tuple[int, Handler], started: list[DaemonProcess]
) -> None:
    """Both daemons see the digest fall due; one digest mail per window, each message in exactly one."""
    port, handler = smtp
    bus = f"tcp://127.0.0.1:{free_port()}"
    deliver = f"{{via: mail, to: {TO}, digest: {{every: 2s}}}}"
    for name in ("a", "b"):
        start(tmp_path, name, write_config(tmp_path, name, bus, port, pg_url, deliver), started)
    publish(bus, 30).join(60)
    until(lambda: len(handler.delivered) >= 1, 60, "the first digest")
    # A second batch, later: its digest is the positive marker that the first window is over.
    publisher = Publisher(bus, username="tester", wait=10.0)
    try:
        for n, envelope in enumerate(envelopes(10, BODHI, {"n": 1000, "agent": "later"})):
            publisher.send_envelope({**envelope, "msg_id": f"later-{n}"})
    finally:
        publisher.close(linger_ms=5000)
    until(lambda: len(handler.delivered) >= 2, 60, "the second digest")
    with psycopg.connect(pg_url) as db:
        counts = [int(r[0]) for r in db.execute("SELECT count FROM deliveries WHERE kind = 'digest' ORDER BY id")]
        flushed = db.execute("SELECT COUNT(*) FROM digest_entries WHERE flushed_into IS NULL").fetchone()
    assert counts == [30, 10], counts
    assert flushed == (0,)
    assert len(handler.delivered) == 2


def test_postgresql_restart_mid_stream_loses_nothing(
    tmp_path: Path, smtp: tuple[int, Handler], started: list[DaemonProcess]
) -> None:
    """PostgreSQL is killed and restarted while messages arrive; both daemons reconnect and every mail goes out."""
    bindir = _bindir()
    if bindir is None:
        missing("PostgreSQL is not installed (scripts/setup.d/postgresql.sh installs it)")
    server = PostgresServer(bindir)
    try:
        url = server.create_database()
        port, handler = smtp
        bus = f"tcp://127.0.0.1:{free_port()}"
        for name in ("a", "b"):
            start(tmp_path, name, write_config(tmp_path, name, bus, port, url, f"{{via: mail, to: {TO}}}"), started)
        sender = publish(bus, 600, pace=0.3)
        until(lambda: mails(handler) >= 100, 60, "deliveries under way")
        server.restart()
        sender.join(120)
        until(lambda: len(message_ids(handler)) >= 600, 120, "every message after the restart")
        ids = message_ids(handler)
        assert len(ids) == 600
        assert all(proc.proc.poll() is None for proc in started), "a daemon died with the database"
    finally:
        server.close()


def connections(path: Path) -> list[tuple[str, int]]:
    file = Path(f"{path}.connections")
    if not file.exists():
        return []
    return [(kind, int(pid)) for kind, pid, _ in (line.split() for line in file.read_text().splitlines())]


def test_a_connection_bound_account_has_one_holder_and_fails_over_after_kill_9(
    tmp_path: Path, pg_url: str, smtp: tuple[int, Handler], started: list[DaemonProcess]
) -> None:
    """Like an IRC connection: only one daemon opens it; kill -9 that one and the other opens it and sends the rest."""
    port, _ = smtp
    bus = f"tcp://127.0.0.1:{free_port()}"
    record = tmp_path / "chat.log"
    extra = f"  chat: {{backend: 'fedmsg_notify.testing:ConnectionBoundRecorder', path: '{record}'}}\n"
    procs = [
        start(tmp_path, name, write_config(tmp_path, name, bus, port, pg_url, "{via: chat}", extra=extra), started)
        for name in ("a", "b")
    ]
    sender = publish(bus, 600, pace=0.2)
    until(lambda: len(read_recording(record)) >= 100, 60, "deliveries under way")
    [(kind, holder)] = connections(record)
    assert kind == "start"
    victim = next(p for p in procs if p.proc.pid == holder)
    survivor = next(p for p in procs if p.proc.pid != holder)
    victim.proc.kill()
    assert victim.wait() == -signal.SIGKILL
    sender.join(120)
    until(lambda: len({m for _, m, _ in read_recording(record)}) >= 600, 90, "every line after the failover")
    assert connections(record) == [("start", holder), ("start", survivor.proc.pid)]
    per_msg = Counter(m for _, m, _ in read_recording(record))
    assert len(per_msg) == 600
    assert sum(n - 1 for n in per_msg.values()) <= 1


async def test_an_irc_account_under_two_daemons_one_connection_then_failover(
    tmp_path: Path, pg_url: str, smtp: tuple[int, Handler], started: list[DaemonProcess]
) -> None:
    """Real ngircd: one daemon holds the IRC connection; kill -9 it, the other connects and sends every remaining line."""
    import asyncio

    from tests.ircserver import Listener, Ngircd

    server = Ngircd(tmp_path / "irc", throttle=False)
    server.start()
    watcher = Listener(server.port, "watcher")
    try:
        await watcher.connect()
        await watcher.join("#cluster")
        port, _ = smtp
        bus = f"tcp://127.0.0.1:{free_port()}"
        extra = f"  chat: {{backend: irc, server: 'irc://127.0.0.1:{server.port}', nick: fedbot, rate: 20, burst: 5}}\n"
        deliver = "{via: chat, to: '#cluster'}"
        procs = [
            await asyncio.to_thread(
                start, tmp_path, name, write_config(tmp_path, name, bus, port, pg_url, deliver, extra=extra), started
            )
            for name in ("a", "b")
        ]
        sender = publish(bus, 120, pace=1.0)
        await watcher.wait_for(20, "#cluster", timeout=60)

        def holder() -> str:
            with psycopg.connect(pg_url) as db:
                row = db.execute("SELECT daemon FROM holders WHERE account = 'chat'").fetchone()
                return str(row[0]) if row else ""

        first = holder()
        victim = next(p for p in procs if f":{p.proc.pid}:" in first)
        survivor = next(p for p in procs if p is not victim)
        joins = [line for line in watcher.raw if " JOIN " in line and line.startswith(":fedbot")]
        assert len(joins) == 1, joins
        victim.proc.kill()
        assert await asyncio.to_thread(victim.wait) == -signal.SIGKILL
        await asyncio.to_thread(sender.join, 120)
        lines = await watcher.wait_for(120, "#cluster", timeout=120)
        assert f":{survivor.proc.pid}:" in holder()
        # Every line arrived; only the one in flight at the kill may have come twice.
        assert 120 <= len(lines) <= 121, len(lines)

        def all_sent() -> bool:
            with psycopg.connect(pg_url) as db:
                return db.execute("SELECT COUNT(*) FROM deliveries WHERE state <> 'sent'").fetchone() == (0,)

        await asyncio.to_thread(until, all_sent, 30, "every delivery marked sent")
    finally:
        await watcher.close()
        server.stop()


def test_status_of_a_database_no_daemon_has_used_says_so(tmp_path: Path, pg_url: str) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(f"state: {pg_url}\n")
    out = subprocess.run(
        [sys.executable, "-m", "fedmsg_notify", "status", "-c", str(config)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 1
    assert "no daemon has run with it" in out.stderr


def test_two_daemons_on_one_amqp_queue_compete_and_mail_each_message_once(
    tmp_path: Path, pg_url: str, smtp: tuple[int, Handler], started: list[DaemonProcess]
) -> None:
    """Competing consumers: two daemons on one durable AMQP queue, one PostgreSQL store.

    The broker hands each message to one of the two consumers; every message is mailed
    exactly once, both daemons sent mail, and the queue drains to zero unacknowledged.
    """
    import asyncio
    import uuid

    require_module("aio_pika")
    from fedmsg_notify.bus.amqp_publish import AmqpPublisher

    from tests.rabbitmqserver import rabbitmq_available, rabbitmq_node

    if not rabbitmq_available():
        missing("rabbitmq-server is not installed (scripts/setup.d/rabbitmq.sh installs it)")
    port, handler = smtp
    queue = f"cluster-{uuid.uuid4()}"
    with rabbitmq_node() as broker:
        amqp = f"{{amqp: {{url: '{broker.url}', queue: '{queue}', prefetch: 20}}}}"
        for name in ("a", "b"):
            config = write_config(tmp_path, name, "", port, pg_url, f"{{via: mail, to: {TO}}}")
            config.write_text(config.read_text().replace("bus: {endpoints: []}", f"bus: {amqp}"))
            start(tmp_path, name, config, started)

        def consumers() -> int:
            out = broker.ctl("list_queues", "name", "consumers").stdout
            return sum(int(f[1]) for f in (line.split() for line in out.splitlines()) if len(f) == 2 and f[0] == queue)

        until(lambda: consumers() == 2, 60, "both daemons consuming the queue")
        ids: list[str] = []

        async def flood() -> None:
            publisher = AmqpPublisher(broker.url)
            try:
                for n in range(1000):
                    ids.append(await publisher.publish("org.fedoraproject.prod.bodhi.update.comment", {"n": n}))
            finally:
                await publisher.close()

        asyncio.run(flood())
        until(lambda: mails(handler) >= 1000, 180, "1,000 mails")
        until(lambda: sum(sent_per_daemon(pg_url)) >= 1000, 30, "both daemons' send counts")
        until(lambda: broker.queue_counts(queue) == (0, 0), 30, "the queue to drain")
        found = message_ids(handler)
        assert len(found) == 1000
        assert max(found.values()) == 1, "a message was mailed twice"
        split = sent_per_daemon(pg_url)
        print(f"sends per daemon: {split}")
        assert len(split) == 2 and min(split) > 0, f"one daemon did all the work: {split}"
        for proc in started:
            proc.signal(signal.SIGTERM)
            assert proc.wait() == 0
