"""`fedmsg-notify publish` with its defaults: every message reaches a local daemon, or it says so."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

from fedmsg_notify.bus.envelope import Message
from fedmsg_notify.bus.zeromq import LOCAL_RECONNECT_MAX_MS, RECONNECT_MAX_MS, Publisher, Subscriber, is_local
from fedmsg_notify.config.model import load_config
from fedmsg_notify.daemon import Daemon
from fedmsg_notify.testing import RecordingBackend

from tests.conftest import free_port

RECORDER = "fedmsg_notify.testing:RecordingBackend"
TOPIC = "org.fedoraproject.prod.bodhi.update.comment"


def write_config(tmp: Path, endpoint: str) -> Path:
    (tmp / "rules.yaml").write_text("rules:\n  - {name: all, match: {}, deliver: [{via: rec, to: '#x'}]}\n")
    path = tmp / "config.yaml"
    path.write_text(
        f"bus: {{endpoints: [{endpoint}]}}\naccounts:\n  rec: {{backend: '{RECORDER}'}}\n"
        f"rules: [{tmp / 'rules.yaml'}]\nstate: {tmp / 'state.db'}\n"
    )
    return path


def publish_cli(
    endpoint: str, lines: list[str], *extra: str, topic: str | None = TOPIC
) -> subprocess.CompletedProcess[str]:
    topic_args = ["--topic", topic] if topic else []
    return subprocess.run(
        [sys.executable, "-m", "fedmsg_notify", "publish", "--endpoint", endpoint, *topic_args, *extra],
        input="".join(line + "\n" for line in lines),
        capture_output=True,
        text=True,
        timeout=60,
    )


async def delivered(count: int, timeout: float = 20.0) -> int:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        backend = RecordingBackend.instances.get("rec")
        if backend is not None and len(backend.items) >= count:
            return len(backend.items)
        await asyncio.sleep(0.05)
    backend = RecordingBackend.instances.get("rec")
    return len(backend.items) if backend else 0


async def test_publish_right_after_start_and_after_a_long_idle_delivers_everything(tmp_path: Path) -> None:
    """Defaults only: 60 stdin lines right after the daemon starts, then 5 single publishes after 12 s idle."""
    RecordingBackend.instances.clear()
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    daemon = Daemon(load_config(write_config(tmp_path, endpoint)))
    ready = asyncio.Event()
    task = asyncio.create_task(daemon.run(ready))
    try:
        await asyncio.wait_for(ready.wait(), 10)
        first = await asyncio.to_thread(publish_cli, endpoint, [f'{{"n": {n}}}' for n in range(60)])
        assert first.returncode == 0, first.stderr
        assert await delivered(60) == 60
        # Idle long enough for a 5 s reconnect backoff to have reached its ceiling.
        await asyncio.sleep(12)
        for n in range(5):
            again = await asyncio.to_thread(publish_cli, endpoint, [f'{{"again": {n}}}'])
            assert again.returncode == 0, again.stderr
        assert await delivered(65) == 65
        backend = RecordingBackend.instances["rec"]
        assert len(backend.items) == 65
    finally:
        daemon.stop()
        await asyncio.wait_for(task, 20)


def test_publish_with_no_subscriber_says_how_many_were_lost_and_fails() -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    result = publish_cli(endpoint, ['{"a": 1}', '{"b": 2}'], "--wait", "0.5")
    assert result.returncode == 1
    assert "2 of 2 messages went out with no subscriber" in result.stderr
    assert "Traceback" not in result.stderr
    quiet = publish_cli(endpoint, ['{"a": 1}'], "--no-wait")
    assert quiet.returncode == 0, quiet.stderr


def test_publish_verbose_into_a_closed_pipe_has_no_traceback(tmp_path: Path) -> None:
    """`publish -v | head -1`: the reader leaves early; no BrokenPipeError traceback."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    (tmp_path / "in.jsonl").write_text("".join(f'{{"n": {n}}}\n' for n in range(2000)))
    err = tmp_path / "err"
    cmd = (
        f"{sys.executable} -m fedmsg_notify publish -v --no-wait --endpoint {endpoint} --topic {TOPIC}"
        f" <{tmp_path / 'in.jsonl'} 2>{err} | head -1"
    )
    out = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=60)
    assert len(out.stdout.splitlines()) == 1
    stderr = err.read_text()
    assert "BrokenPipeError" not in stderr and "Traceback" not in stderr, stderr


def test_explain_into_a_closed_pipe_has_no_traceback(tmp_path: Path) -> None:
    """Any printing command: `explain` of many messages into `head -1` ends without a traceback."""
    envelope = json.dumps({"topic": TOPIC, "timestamp": 1344350200, "msg": {"comment": {"text": "hi"}}})
    (tmp_path / "many.jsonl").write_text((envelope + "\n") * 3000)
    err = tmp_path / "err"
    cmd = f"{sys.executable} -m fedmsg_notify explain {tmp_path / 'many.jsonl'} 2>{err} | head -1"
    out = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=120)
    assert len(out.stdout.splitlines()) == 1
    stderr = err.read_text()
    assert "BrokenPipeError" not in stderr and "Traceback" not in stderr, stderr


def test_local_endpoints_reconnect_quickly() -> None:
    assert is_local("tcp://127.0.0.1:9940") and is_local("tcp://localhost:1") and is_local("ipc:///tmp/x")
    assert not is_local("tcp://hub.fedoraproject.org:9940")
    assert LOCAL_RECONNECT_MAX_MS < 1_000 < RECONNECT_MAX_MS


def test_publisher_counts_messages_nobody_subscribed_to() -> None:
    publisher = Publisher(f"tcp://127.0.0.1:{free_port()}", wait=0.2)
    try:
        publisher.publish(TOPIC, {"x": 1})
        assert (publisher.sent, publisher.unheard) == (1, 1)
    finally:
        publisher.close(linger_ms=0)


async def test_publish_reads_the_bundled_samples_as_they_are(tmp_path: Path) -> None:
    """`publish` without --topic takes sample lines (and full envelopes): each keeps its own topic and body."""
    path = subprocess.run(
        [sys.executable, "-m", "fedmsg_notify", "demo", "--samples"], capture_output=True, text=True, timeout=60
    ).stdout.strip()
    lines = [line for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()][:5]
    wanted = [json.loads(line)["message"] for line in lines]
    # One full envelope too, as `tail --json` prints them.
    lines.append(json.dumps({"topic": TOPIC, "msg": {"plain": "envelope"}, "timestamp": 1}))
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    subscriber = Subscriber([endpoint])
    got: list[Message] = []

    async def collect() -> None:
        async for message in subscriber.messages():
            got.append(message)
            if len(got) == len(lines):
                return

    try:
        reader = asyncio.create_task(asyncio.wait_for(collect(), 30))
        result = await asyncio.to_thread(publish_cli, endpoint, lines, topic=None)
        assert result.returncode == 0, result.stderr
        await reader
    finally:
        subscriber.close()
    assert [m.topic for m in got] == [w["topic"] for w in wanted] + [TOPIC]
    assert [m.body for m in got] == [w["msg"] for w in wanted] + [{"plain": "envelope"}]


def test_publish_without_topic_rejects_a_bare_body() -> None:
    result = publish_cli(f"tcp://127.0.0.1:{free_port()}", ['{"agent": "ralph"}'], "--no-wait", topic=None)
    assert result.returncode == 1
    assert "<stdin>:1: without --topic each input must be a full envelope" in result.stderr


def test_explain_takes_bodies_with_topic(tmp_path: Path) -> None:
    body = tmp_path / "body.json"
    body.write_text('{"agent": "ralph", "comment": {"text": "works for me", "update": {"title": "pkg-1.0"}}}')
    bare = subprocess.run(
        [sys.executable, "-m", "fedmsg_notify", "explain", str(body)], capture_output=True, text=True, timeout=60
    )
    assert bare.returncode == 1 and "give its --topic" in bare.stderr
    ok = subprocess.run(
        [sys.executable, "-m", "fedmsg_notify", "explain", "--json", "--topic", TOPIC, str(body)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["topic"] == TOPIC


async def test_publish_connect_waits_for_the_relay_subscription() -> None:
    """`--connect` to a relay's bound SUB socket (fedmsg-relay's inbound side): every message arrives."""
    import zmq
    import zmq.asyncio

    endpoint = f"tcp://127.0.0.1:{free_port()}"
    ctx = zmq.asyncio.Context.instance()
    relay = ctx.socket(zmq.SUB)
    relay.setsockopt(zmq.SUBSCRIBE, b"")
    relay.setsockopt(zmq.LINGER, 0)
    relay.bind(endpoint)
    try:
        sender = asyncio.create_task(
            asyncio.to_thread(publish_cli, endpoint, [f'{{"n": {n}}}' for n in range(20)], "--connect")
        )
        got = []
        for _ in range(20):
            _topic, body = await asyncio.wait_for(relay.recv_multipart(), 30)
            got.append(json.loads(body)["msg"]["n"])
        result = await sender
        assert result.returncode == 0, result.stderr
        assert got == list(range(20))
    finally:
        relay.close()
