"""The AMQP bus against a real RabbitMQ node, with the real fedora-messaging as the outside publisher."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fedmsg_notify.bus.amqp_publish import AmqpPublisher
from fedmsg_notify.config.model import load_config
from fedmsg_notify.daemon import Daemon
from fedmsg_notify.testing import RecordingBackend

from tests.needs import require_module
from tests.rabbitmqserver import RabbitMQ, fedora_messaging_config, fedora_publish, rabbitmq_node

require_module("aio_pika")
RECORDER = "fedmsg_notify.testing:RecordingBackend"
ALL = """
rules:
  - name: everything
    match: {}
    deliver:
      - {via: rec}
"""


def bodhi_comment(alias: str = "FEDORA-2026-abc123", user: str = "ralph") -> dict[str, Any]:
    return {
        "comment": {
            "karma": 1,
            "text": "works for me",
            "timestamp": "2026-12-02 10:00:00",
            "user": {"name": user},
            "update": {
                "alias": alias,
                "builds": [{"nvr": "python-foo-1.0-1.fc41"}],
                "user": {"name": "bowlofeggs"},
                "status": "testing",
                "request": None,
                "release": {"name": "F41", "branch": "f41", "id_prefix": "FEDORA", "dist_tag": "f41"},
                "title": "python-foo-1.0-1.fc41",
            },
        }
    }


@pytest.fixture(scope="module")
def broker() -> Iterator[RabbitMQ]:
    with rabbitmq_node() as node:
        yield node


def amqp_config(tmp: Path, amqp: str, rules: str = ALL, account: str = "") -> Path:
    (tmp / "rules").mkdir(exist_ok=True)
    (tmp / "rules" / "a.yaml").write_text(rules)
    path = tmp / "config.yaml"
    path.write_text(
        f"bus:\n  amqp: {amqp}\n"
        f"accounts:\n  rec: {{backend: '{RECORDER}'{', ' + account if account else ''}}}\n"
        f"rules: [{tmp / 'rules'}]\nstate: {tmp / 'state.db'}\n"
    )
    return path


async def until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


@pytest.fixture
async def start() -> AsyncIterator[Callable[[Path], Awaitable[Daemon]]]:
    running: list[tuple[Daemon, asyncio.Task[None]]] = []

    async def starter(config: Path) -> Daemon:
        daemon = Daemon(load_config(config))
        ready = asyncio.Event()
        task = asyncio.create_task(daemon.run(ready))
        await asyncio.wait_for(ready.wait(), 20)
        running.append((daemon, task))
        return daemon

    yield starter
    for daemon, task in running:
        daemon.stop()
        await asyncio.wait_for(task, 30)


def recorder(daemon: Daemon) -> RecordingBackend:
    backend = daemon.handles["rec"].backend
    assert isinstance(backend, RecordingBackend)
    return backend


async def connected(daemon: Daemon) -> None:
    await until(lambda: daemon.amqp is not None and daemon.amqp.connected, 30, "the AMQP consumer")


async def test_bodhi_comment_published_by_fedora_messaging_gets_the_schemas_summary_and_url(
    broker: RabbitMQ, tmp_path: Path, start: Callable[[Path], Awaitable[Daemon]]
) -> None:
    """``fedora_messaging.api.publish`` of a bodhi UpdateCommentV1: the schema's own text reaches the destination."""
    queue = f"q-{uuid.uuid4()}"
    daemon = await start(amqp_config(tmp_path, f"{{url: '{broker.url}', queue: '{queue}'}}"))
    await connected(daemon)
    fm = fedora_messaging_config(tmp_path, broker.url)
    await asyncio.to_thread(
        fedora_publish,
        fm,
        [
            {
                "schema": "bodhi.update.comment.v1",
                "topic": "org.fedoraproject.prod.bodhi.update.comment",
                "body": bodhi_comment(),
            },
            # base.message: no schema package describes it, so the generic sentence is used.
            {
                "schema": "base.message",
                "topic": "org.fedoraproject.prod.mystery.thing.happened",
                "body": {"agent": "alice", "what": "x"},
            },
        ],
    )
    rec = recorder(daemon)
    await until(lambda: len(rec.items) >= 2, 30, "both deliveries")
    by_topic = {item.topic: item for item in rec.items}
    bodhi = by_topic["org.fedoraproject.prod.bodhi.update.comment"]
    assert bodhi.meta["subtitle"] == "ralph commented on update python-foo-1.0-1.fc41 (karma: 1)"
    assert bodhi.meta["link"] == "https://bodhi.fedoraproject.org/updates/FEDORA-2026-abc123"
    assert bodhi.meta["source"] == "schema bodhi.update.comment.v1"
    assert bodhi.meta["usernames"] == ["bowlofeggs", "ralph"] or tuple(bodhi.meta["usernames"]) == (
        "bowlofeggs",
        "ralph",
    )
    assert list(bodhi.meta["packages"]) == ["python-foo"]
    assert "ralph commented on update python-foo-1.0-1.fc41" in bodhi.rendered["text"]
    mystery = by_topic["org.fedoraproject.prod.mystery.thing.happened"]
    assert mystery.meta["source"] == "generic"
    assert mystery.meta["subtitle"]
    assert "Traceback" not in mystery.rendered["text"]
    await until(lambda: broker.queue_counts(queue) == (0, 0), 20, "the queue to drain")


async def test_hostile_messages_are_rejected_counted_and_the_daemon_keeps_running(
    broker: RabbitMQ, tmp_path: Path, start: Callable[[Path], Awaitable[Daemon]]
) -> None:
    """Non-JSON, huge, wrong content type and a schema header with a line break: rejected (not requeued)."""
    queue = f"q-{uuid.uuid4()}"
    daemon = await start(amqp_config(tmp_path, f"{{url: '{broker.url}', queue: '{queue}'}}"))
    await connected(daemon)
    publisher = AmqpPublisher(broker.url)
    topic = "org.fedoraproject.prod.mystery.thing"
    try:
        await publisher.publish(topic, None, raw_body=b"this is not json {")
        await publisher.publish(topic, None, raw_body=b'{"x": "' + b"a" * 1_100_000 + b'"}')
        await publisher.publish(topic, {"a": 1}, content_type="text/plain")
        await publisher.publish(topic, {"a": 1}, headers={"fedora_messaging_schema": "bodhi\r\nX-Evil: 1"})
        await publisher.publish(topic, {"a": 1}, headers={"fedora_messaging_severity": "loud"})
        good = await publisher.publish(topic, {"agent": "alice"})
    finally:
        await publisher.close()
    rec = recorder(daemon)
    await until(lambda: len(rec.items) >= 1, 30, "the good message")
    assert [item.msg_id for item in rec.items] == [good]
    assert daemon.amqp is not None
    assert dict(daemon.amqp.malformed) == {
        "invalid-json": 1,
        "too-large": 1,
        "bad-content-type": 1,
        "bad-schema": 1,
        "bad-severity": 1,
    }
    # Rejected without requeue: nothing comes back, nothing waits.
    await until(lambda: broker.queue_counts(queue) == (0, 0), 20, "the queue to drain")


async def test_broker_restart_mid_stream_reconnects_and_loses_nothing(
    broker: RabbitMQ, tmp_path: Path, start: Callable[[Path], Awaitable[Daemon]]
) -> None:
    """The broker goes away and comes back: the daemon reconnects by itself; the durable queue keeps the rest."""
    queue = f"q-{uuid.uuid4()}"
    daemon = await start(amqp_config(tmp_path, f"{{url: '{broker.url}', queue: '{queue}'}}"))
    await connected(daemon)
    assert daemon.amqp is not None
    topic = "org.fedoraproject.prod.mystery.thing"
    publisher = AmqpPublisher(broker.url)
    ids = [await publisher.publish(topic, {"n": n}) for n in range(50)]
    await publisher.close()
    rec = recorder(daemon)
    await until(lambda: len(rec.items) >= 50, 30, "the first 50")
    await asyncio.to_thread(broker.stop)
    await until(lambda: daemon.amqp is not None and not daemon.amqp.connected, 30, "the daemon to see the loss")
    await asyncio.to_thread(broker.start)
    # Published while the daemon may still be reconnecting: the durable queue holds them.
    publisher = AmqpPublisher(broker.url)
    ids += [await publisher.publish(topic, {"n": n}) for n in range(50, 100)]
    await publisher.close()
    await until(lambda: len({item.msg_id for item in rec.items}) >= 100, 60, "all 100 after the restart")
    assert {item.msg_id for item in rec.items} == set(ids)
    assert daemon.amqp.connects >= 2
    await until(lambda: broker.queue_counts(queue) == (0, 0), 20, "the queue to drain")


TWO = """
rules:
  - name: everything
    match: {}
    deliver:
      - {via: one, to: "#a"}
      - {via: two}
"""


def test_kill_9_mid_flood_then_restart_delivers_all_1000_and_drains_the_queue(broker: RabbitMQ, tmp_path: Path) -> None:
    """At-least-once end to end: what was received but not committed at the kill is redelivered by the broker.

    Acks follow the store's commit, so a kill -9 leaves the uncommitted messages unacked;
    the broker redelivers them to the restarted daemon, and dedup by message id hides
    the repeats already stored. At most one send per destination can repeat (the one in
    flight at the kill).
    """
    from fedmsg_notify.testing import read_recording

    from tests.test_lifecycle import DaemonProcess, NotifySocket, accepted_count, until

    queue = f"q-{uuid.uuid4()}"
    rec_one, rec_two = tmp_path / "one.log", tmp_path / "two.log"
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "a.yaml").write_text(TWO)
    config = tmp_path / "config.yaml"
    config.write_text(
        f"bus:\n  amqp: {{url: '{broker.url}', queue: '{queue}', prefetch: 50}}\n"
        "accounts:\n"
        f"  one: {{backend: '{RECORDER}', path: '{rec_one}', delay: 0.002}}\n"
        f"  two: {{backend: '{RECORDER}', path: '{rec_two}', delay: 0.003}}\n"
        f"rules: [{tmp_path / 'rules'}]\nstate: {tmp_path / 'state.db'}\n"
    )
    notify = NotifySocket()
    log = tmp_path / "daemon.log"
    daemons: list[DaemonProcess] = []
    ids: list[str] = []

    async def flood() -> None:
        publisher = AmqpPublisher(broker.url)
        try:
            for n in range(1000):
                ids.append(await publisher.publish("org.fedoraproject.prod.mystery.flood", {"n": n}))
                if n % 50 == 49:
                    await asyncio.sleep(0.02)
        finally:
            await publisher.close()

    def delivered() -> int:
        return len(read_recording(rec_one)) + len(read_recording(rec_two))

    import threading

    try:
        daemons.append(DaemonProcess(config, notify, log))
        until(lambda: broker.queue_counts(queue)[0] >= 0, 30, "the daemon's queue")
        sender = threading.Thread(target=lambda: asyncio.run(flood()))
        sender.start()
        until(lambda: accepted_count(tmp_path) >= 400 and delivered() >= 1, 60, "intake and deliveries under way")
        daemons[0].proc.kill()
        assert daemons[0].wait() == -9
        at_kill = delivered()
        print(f"at the kill: {accepted_count(tmp_path)} pairs accepted, {at_kill} delivered, {len(ids)} published")
        assert at_kill < 2000, "the kill came after the last delivery; the test proves nothing"
        sender.join(120)
        assert len(ids) == 1000
        daemons.append(DaemonProcess(config, notify, log))

        def complete() -> bool:
            return len(read_recording(rec_one)) >= 1000 and len(read_recording(rec_two)) >= 1000

        until(complete, 120, "every delivery after the restart")
        until(lambda: broker.queue_counts(queue) == (0, 0), 30, "the queue to drain to 0 unacked")
        for path, dest in ((rec_one, "one:#a"), (rec_two, "two")):
            lines = read_recording(path)
            per_msg = {msg_id for _, msg_id, _ in lines}
            assert per_msg == set(ids), f"{dest}: missing {len(set(ids) - per_msg)}"
            assert len(lines) == 1000, f"{dest}: {len(lines) - 1000} duplicate deliveries"
            assert len(read_recording(Path(str(path) + ".repeats"))) <= 1
        daemons[1].signal(15)
        assert daemons[1].wait() == 0
    finally:
        for daemon in daemons:
            daemon.kill()
        notify.close()


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RabbitMQ, Any, Path]]:
    import trustme

    ca = trustme.CA()
    tmp = tmp_path_factory.mktemp("tls")
    server = ca.issue_cert("localhost", "127.0.0.1")
    ca.cert_pem.write_to_path(str(tmp / "ca.pem"))
    server.cert_chain_pems[0].write_to_path(str(tmp / "server.pem"))
    server.private_key_pem.write_to_path(str(tmp / "server.key"))
    with rabbitmq_node(tls=(tmp / "ca.pem", tmp / "server.pem", tmp / "server.key")) as node:
        yield node, ca, tmp


def client_files(ca: Any, tmp: Path, name: str) -> tuple[Path, Path]:
    client = ca.issue_cert(f"{name}@fedmsg-notify.test")
    cert, key = tmp / f"{name}.pem", tmp / f"{name}.key"
    client.cert_chain_pems[0].write_to_path(str(cert))
    client.private_key_pem.write_to_path(str(key))
    return cert, key


async def test_tls_with_a_client_certificate_delivers(
    tls_broker: tuple[RabbitMQ, Any, Path], tmp_path: Path, start: Callable[[Path], Awaitable[Daemon]]
) -> None:
    """amqps:// with the CA and a client certificate the broker requires (as Fedora's public broker does)."""
    broker, ca, files = tls_broker
    cert, key = client_files(ca, tmp_path, "good")
    amqp = f"{{url: '{broker.tls_url}', ca_cert: '{files / 'ca.pem'}', cert: '{cert}', key: '{key}'}}"
    daemon = await start(amqp_config(tmp_path, amqp))
    await connected(daemon)
    publisher = AmqpPublisher(broker.url)
    msg_id = await publisher.publish("org.fedoraproject.prod.mystery.tls", {"agent": "alice"})
    await publisher.close()
    rec = recorder(daemon)
    await until(lambda: len(rec.items) >= 1, 30, "the message over TLS")
    assert rec.items[0].msg_id == msg_id


async def test_tls_with_a_certificate_of_another_ca_is_a_clear_error(
    tls_broker: tuple[RabbitMQ, Any, Path],
    tmp_path: Path,
    start: Callable[[Path], Awaitable[Daemon]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The broker refuses a client certificate it does not trust: logged as a connection error, retried, no crash."""
    import trustme

    broker, _ca, files = tls_broker
    cert, key = client_files(trustme.CA(), tmp_path, "stranger")
    amqp = f"{{url: '{broker.tls_url}', ca_cert: '{files / 'ca.pem'}', cert: '{cert}', key: '{key}'}}"
    with caplog.at_level("ERROR", logger="fedmsg_notify.bus.amqp"):
        daemon = await start(amqp_config(tmp_path, amqp))
        assert daemon.amqp is not None
        await until(lambda: daemon.amqp is not None and daemon.amqp.last_error is not None, 30, "the TLS refusal")
    assert not daemon.amqp.connected
    assert "guest:guest" not in caplog.text
    assert any("cannot connect to amqps://guest:***@localhost" in r.getMessage() for r in caplog.records), caplog.text
    assert "does not accept the client certificate bus.amqp.cert" in (daemon.amqp.last_error or "")


async def test_status_shows_the_broker_connection_queue_and_unacked_count(
    broker: RabbitMQ, tmp_path: Path, start: Callable[[Path], Awaitable[Daemon]], capsys: pytest.CaptureFixture[str]
) -> None:
    import argparse

    from fedmsg_notify.commands.status import run_status

    queue = f"q-{uuid.uuid4()}"
    config = amqp_config(tmp_path, f"{{url: '{broker.url}', queue: '{queue}'}}")
    daemon = await start(config)
    await connected(daemon)
    publisher = AmqpPublisher(broker.url)
    await publisher.publish("org.fedoraproject.prod.mystery.thing", {"agent": "alice"})
    await publisher.close()
    await until(lambda: len(recorder(daemon).items) >= 1, 30, "the delivery")
    daemon._save_counters()
    assert run_status(argparse.Namespace(config=str(config), json=False)) == 0
    text = capsys.readouterr().out
    assert "AMQP broker amqp://guest:***@127.0.0.1:" in text
    assert "guest:guest" not in text
    assert ": connected since" in text
    assert f"queue {queue} (durable): 0 unacked, 1 received, 1 connection(s) made" in text
    assert run_status(argparse.Namespace(config=str(config), json=True)) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["amqp"]["connected"] is True and data["amqp"]["queue"] == queue


async def test_a_schema_that_raises_on_the_body_falls_back_to_the_service_file(
    broker: RabbitMQ, tmp_path: Path, start: Callable[[Path], Awaitable[Daemon]]
) -> None:
    """A bodhi schema header on a body the schema cannot read: the service file's sentence, no traceback."""
    daemon = await start(amqp_config(tmp_path, f"{{url: '{broker.url}'}}"))
    await connected(daemon)
    publisher = AmqpPublisher(broker.url)
    await publisher.publish(
        "org.fedoraproject.prod.bodhi.update.comment",
        {"comment": {"text": "no update here"}, "agent": "erin"},
        schema="bodhi.update.comment.v1",
    )
    await publisher.close()
    rec = recorder(daemon)
    await until(lambda: len(rec.items) >= 1, 30, "the delivery")
    item = rec.items[0]
    assert item.meta["source"] == "service"
    assert item.meta["subtitle"]
    assert "Traceback" not in item.rendered["text"] and "Error" not in item.rendered["text"]


async def test_a_storage_fault_hands_the_batch_back_to_the_broker_unacknowledged(
    broker: RabbitMQ, tmp_path: Path, start: Callable[[Path], Awaitable[Daemon]]
) -> None:
    """Nothing is acknowledged that is not stored: when accepting fails, the broker keeps the message."""
    import sqlite3

    queue = f"q-{uuid.uuid4()}"
    config = amqp_config(tmp_path, f"{{url: '{broker.url}', queue: '{queue}'}}")
    daemon = Daemon(load_config(config))
    failures: list[int] = []

    def broken_accept(batch: Any, *routed: Any) -> None:  # routed: the slice's routing, under way
        failures.append(len(batch))
        raise sqlite3.OperationalError("disk I/O error")

    daemon.accept = broken_accept  # type: ignore[method-assign]
    ready = asyncio.Event()
    task = asyncio.create_task(daemon.run(ready))
    await asyncio.wait_for(ready.wait(), 20)
    await connected(daemon)
    publisher = AmqpPublisher(broker.url)
    msg_id = await publisher.publish("org.fedoraproject.prod.mystery.thing", {"agent": "frank"})
    await publisher.close()
    with pytest.raises(RuntimeError, match="intake stopped unexpectedly"):
        await asyncio.wait_for(task, 30)
    assert failures == [1]
    await until(lambda: broker.queue_counts(queue) == (1, 0), 20, "the message back in the queue, unacked by us")
    # The next daemon (storage healthy) gets it from the broker.
    healthy = await start(config)
    await until(lambda: len(recorder(healthy).items) >= 1, 30, "the redelivered message")
    assert recorder(healthy).items[0].msg_id == msg_id
    await until(lambda: broker.queue_counts(queue) == (0, 0), 20, "the queue to drain")


async def test_passive_declares_use_an_existing_queue_and_name_a_missing_one(
    broker: RabbitMQ, tmp_path: Path, start: Callable[[Path], Awaitable[Daemon]]
) -> None:
    """For brokers that forbid declaring: nothing is declared or bound; a missing queue is a clear, retried error."""
    import aio_pika

    (tmp_path / "missing").mkdir()
    missing = await start(
        amqp_config(tmp_path / "missing", f"{{url: '{broker.url}', queue: nope, passive_declares: true}}")
    )
    assert missing.amqp is not None
    await until(lambda: missing.amqp is not None and missing.amqp.last_error is not None, 30, "the refusal")
    assert "the queue 'nope' must already exist" in (missing.amqp.last_error or "")

    queue = f"q-{uuid.uuid4()}"
    connection = await aio_pika.connect(broker.url)
    channel = await connection.channel()
    declared = await channel.declare_queue(queue, durable=True)
    await declared.bind("amq.topic", routing_key="org.fedoraproject.prod.passive.#")
    await connection.close()
    (tmp_path / "ok").mkdir()
    daemon = await start(
        amqp_config(tmp_path / "ok", f"{{url: '{broker.url}', queue: '{queue}', passive_declares: true}}")
    )
    await connected(daemon)
    publisher = AmqpPublisher(broker.url)
    msg_id = await publisher.publish("org.fedoraproject.prod.passive.thing", {"agent": "gina"})
    await publisher.close()
    await until(lambda: len(recorder(daemon).items) >= 1, 30, "the message through the existing queue")
    assert recorder(daemon).items[0].msg_id == msg_id


async def test_a_digest_of_amqp_messages_carries_the_schemas_text(
    broker: RabbitMQ, tmp_path: Path, start: Callable[[Path], Awaitable[Daemon]]
) -> None:
    """Digest entries are stored in the intake's transaction like deliveries; at max they go out as one item."""
    rules = "rules:\n  - {name: daily, match: {service: bodhi}, deliver: [{via: rec, digest: {every: 1d, max: 3}}]}\n"
    daemon = await start(amqp_config(tmp_path, f"{{url: '{broker.url}'}}", rules=rules))
    await connected(daemon)
    await asyncio.to_thread(
        fedora_publish,
        fedora_messaging_config(tmp_path, broker.url),
        [
            {
                "schema": "bodhi.update.comment.v1",
                "topic": "org.fedoraproject.prod.bodhi.update.comment",
                "body": bodhi_comment(alias=f"FEDORA-2026-{n}", user=f"user{n}"),
            }
            for n in range(3)
        ],
    )
    rec = recorder(daemon)
    await until(lambda: len(rec.items) >= 1, 30, "the digest")
    digest = rec.items[0]
    assert digest.count == 3
    for n in range(3):
        assert f"user{n} commented on update python-foo-1.0-1.fc41 (karma: 1)" in digest.rendered["text"]
