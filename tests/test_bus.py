"""The bus on real ZeroMQ sockets: round trips, several endpoints, late endpoints, hostile peers."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from typing import Any

import zmq
from fedmsg_notify.bus.envelope import Message
from fedmsg_notify.bus.zeromq import Publisher, Subscriber

from tests.childio import read_lines
from tests.conftest import free_port

TOPIC = "org.fedoraproject.dev.bodhi.update.comment"


async def collect(subscriber: Subscriber, count: int, timeout: float = 10.0) -> list[Message]:
    got: list[Message] = []

    async def run() -> None:
        async for message in subscriber.messages():
            got.append(message)
            if len(got) >= count:
                return

    await asyncio.wait_for(run(), timeout)
    return got


def publish_all(endpoint: str, msgs: list[Any], topic: str = TOPIC) -> None:
    publisher = Publisher(endpoint, wait=5.0)
    try:
        for msg in msgs:
            publisher.publish(topic, msg)
    finally:
        publisher.close()


async def test_publish_reaches_subscriber(endpoint: str) -> None:
    """What we publish arrives as checked messages, in order."""
    subscriber = Subscriber([endpoint])
    try:
        sender = asyncio.create_task(asyncio.to_thread(publish_all, endpoint, [{"n": n} for n in range(50)]))
        got = await collect(subscriber, 50)
        await sender
    finally:
        subscriber.close()
    assert [m.body["n"] for m in got] == list(range(50))
    assert all(m.topic == TOPIC for m in got)


async def test_several_endpoints_at_once() -> None:
    """One daemon listens to every configured endpoint at the same time."""
    endpoints = [f"tcp://127.0.0.1:{free_port()}" for _ in range(3)]
    subscriber = Subscriber(endpoints)
    try:
        senders = [
            asyncio.create_task(asyncio.to_thread(publish_all, ep, [{"from": ep, "n": n} for n in range(5)]))
            for ep in endpoints
        ]
        got = await collect(subscriber, 15)
        await asyncio.gather(*senders)
    finally:
        subscriber.close()
    assert {m.body["from"] for m in got} == set(endpoints)


async def test_endpoint_that_comes_up_later(endpoint: str) -> None:
    """An endpoint that is down at start is reached once it comes up, without a restart."""
    subscriber = Subscriber([endpoint])
    try:
        reader = asyncio.create_task(collect(subscriber, 1))
        await asyncio.sleep(1.0)  # the publisher does not exist yet
        await asyncio.to_thread(publish_all, endpoint, [{"late": True}])
        got = await reader
    finally:
        subscriber.close()
    assert got[0].body == {"late": True}


async def test_subscription_prefixes_filter_topics(endpoint: str) -> None:
    """Configured topic prefixes limit what the socket receives."""
    subscriber = Subscriber([endpoint], ["org.fedoraproject.dev.koji."])

    def send() -> None:
        publisher = Publisher(endpoint, wait=5.0)
        publisher.publish(TOPIC, {"skip": True})
        publisher.publish("org.fedoraproject.dev.koji.build", {"keep": True})
        publisher.close()

    try:
        sender = asyncio.create_task(asyncio.to_thread(send))
        got = await collect(subscriber, 1)
        await sender
    finally:
        subscriber.close()
    assert got[0].body == {"keep": True}


def hostile_frames() -> list[list[bytes]]:
    good = json.dumps({"topic": TOPIC, "msg": {}, "timestamp": 1, "msg_id": "x"}).encode()
    return [
        [TOPIC.encode()],
        [TOPIC.encode(), good, b"third"],
        [TOPIC.encode(), b"\xff\xfe"],
        [TOPIC.encode(), b"{nope"],
        [TOPIC.encode(), b'"a string"'],
        [b"org.fedoraproject.dev.other", good],
        [TOPIC.encode(), b'{"topic": "' + TOPIC.encode() + b'"}'],
        [TOPIC.encode(), b"[" * 10 + b"]" * 10 + b" " * 70_000],
    ]


async def test_hostile_frames_are_counted_and_survived(endpoint: str) -> None:
    """Garbage of every kind is counted by reason and the next good message still arrives."""
    subscriber = Subscriber([endpoint], max_bytes=65_536)

    def send() -> None:
        publisher = Publisher(endpoint, wait=5.0)
        for frames in hostile_frames():
            publisher.send_raw(frames)
        publisher.publish(TOPIC, {"good": True})
        publisher.close()

    try:
        sender = asyncio.create_task(asyncio.to_thread(send))
        got = await collect(subscriber, 1)
        await sender
    finally:
        subscriber.close()
    assert got[0].body == {"good": True}
    assert dict(subscriber.malformed) == {
        "frame-count": 2,
        "invalid-utf8": 1,
        "invalid-json": 1,
        "not-an-object": 1,
        "topic-mismatch": 1,
        "missing-fields": 1,
        "too-large": 1,
    }


async def test_garbage_burst_then_good_message(endpoint: str) -> None:
    """10k garbage messages in a burst do not stop the good one behind them."""
    subscriber = Subscriber([endpoint])

    def send() -> None:
        publisher = Publisher(endpoint, wait=5.0)
        for n in range(10_000):
            publisher.send_raw([TOPIC.encode(), b"garbage %d" % n])
        publisher.publish(TOPIC, {"good": True})
        publisher.close()

    try:
        sender = asyncio.create_task(asyncio.to_thread(send))
        got = await collect(subscriber, 1, timeout=30)
        await sender
    finally:
        subscriber.close()
    assert got[0].body == {"good": True}
    assert subscriber.malformed["invalid-json"] == 10_000


def test_cli_publish_to_cli_tail_round_trip(endpoint: str) -> None:
    """`fedmsg-notify publish` with JSON lines on stdin is printed by `fedmsg-notify tail --json`."""
    tail = subprocess.Popen(
        [sys.executable, "-m", "fedmsg_notify", "tail", "--endpoint", endpoint, "--json", "--topic", "*.bodhi.*"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        lines = '{"n": 1}\n{"n": 2}\n\n{"n": 3}\n'
        publish = subprocess.run(
            [sys.executable, "-m", "fedmsg_notify", "publish", "--endpoint", endpoint, "--topic", TOPIC, "--wait", "10"],
            input=lines,
            text=True,
            capture_output=True,
            timeout=60,
        )
        assert publish.returncode == 0, publish.stderr
        assert tail.stdout is not None
        received = [json.loads(line) for line in read_lines(tail.stdout, 3)]
    finally:
        tail.kill()
        tail.communicate()
    assert [r["msg"] for r in received] == [{"n": 1}, {"n": 2}, {"n": 3}]
    assert [r["i"] for r in received] == [1, 2, 3]
    assert all(r["topic"] == TOPIC for r in received)


def test_cli_publish_rejects_bad_json() -> None:
    """Invalid JSON on stdin is an error naming the line, and nothing is sent."""
    result = subprocess.run(
        [sys.executable, "-m", "fedmsg_notify", "publish", "--endpoint", "tcp://127.0.0.1:1", "--topic", TOPIC],
        input='{"ok": 1}\n{broken\n',
        text=True,
        capture_output=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert "<stdin>:2: invalid JSON" in result.stderr


def test_cli_usage_error_exits_2() -> None:
    """A usage error (a --wait that is not a number) exits with 2, as SPEC's exit codes say.

    (--topic is optional since publish also takes full envelopes; a bare body without it exits 1.)
    """
    result = subprocess.run(
        [sys.executable, "-m", "fedmsg_notify", "publish", "--wait", "soon", "--msg", "{}"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2


def test_publisher_socket_is_xpub_when_binding(endpoint: str) -> None:
    """Binding uses XPUB so the publisher can wait for subscribers (ZeroMQ's slow joiner)."""
    publisher = Publisher(endpoint, wait=0.1)
    try:
        assert publisher._sock.type == zmq.XPUB
        assert publisher.last_endpoint == endpoint
    finally:
        publisher.close(0)


async def test_reconnects_after_publisher_restart(endpoint: str) -> None:
    """When a publisher goes away and comes back on the same endpoint, messages flow again on their own."""
    subscriber = Subscriber([endpoint])
    try:
        first = asyncio.create_task(collect(subscriber, 1))
        await asyncio.to_thread(publish_all, endpoint, [{"phase": 1}])
        assert (await first)[0].body == {"phase": 1}
        await asyncio.sleep(0.5)  # the publisher is gone now
        second = asyncio.create_task(collect(subscriber, 1))
        await asyncio.to_thread(publish_all, endpoint, [{"phase": 2}])
        assert (await second)[0].body == {"phase": 2}
    finally:
        subscriber.close()
