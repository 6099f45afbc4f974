"""`intake_processes`: metadata, matching and rendering in another process (issue 18, both cores).

The daemon runs for real (ZeroMQ publisher, SQLite outbox, the recording backend in the
daemon's process); the intake process is a real ``spawn``-ed process that builds its own
rules and templates. What it renders, logs and counts must reach the daemon; when it dies
the daemon routes on its own loop and starts a new one; a reload rebuilds it; a
``kill -9`` of the daemon takes it down too.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from fedmsg_notify.backend import Item
from fedmsg_notify.bus.zeromq import Publisher
from fedmsg_notify.commands.cli import main
from fedmsg_notify.config.model import load_config
from fedmsg_notify.config.yaml_positions import ProblemsError
from fedmsg_notify.daemon import Daemon
from fedmsg_notify.meta.engine import MetaEngine
from fedmsg_notify.testing import RecordingBackend, envelopes, read_recording

from tests.test_lifecycle import (  # noqa: F401 (fixtures)
    BODHI,
    DaemonProcess,
    NotifySocket,
    daemons,
    notify,
    until,
)
from tests.test_reload import RECORDER
from tests.test_reload import write as write_config


def write(tmp: Path, endpoint: str, template: str, *, processes: int = 1, extra: str = "") -> Path:
    """test_reload's config (one rule, everything to the recording account ``rec``) with ``intake_processes``."""
    config = write_config(tmp, endpoint, f"  rec: {{backend: '{RECORDER}'{extra}}}\n", template)
    config.write_text(config.read_text() + f"intake_processes: {processes}\n")
    return config


@asynccontextmanager
async def running(config: Path, *, restart_after: float = 0.2) -> AsyncIterator[tuple[Daemon, Publisher]]:
    daemon = Daemon(load_config(config), shutdown_timeout=1.0)
    daemon.router.restart_after = restart_after
    ready = asyncio.Event()
    task = asyncio.create_task(daemon.run(ready))
    publisher = None
    try:
        await asyncio.wait_for(ready.wait(), 15)
        publisher = Publisher(str(load_config(config).endpoints[0]), username="tester", wait=5.0)
        yield daemon, publisher
    finally:
        if publisher is not None:
            publisher.close(linger_ms=0)
        daemon.stop()
        await asyncio.wait_for(task, 20)
    assert daemon.router.pids() == [], "the intake processes are stopped with the daemon"


async def until_ready(daemon: Daemon, timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while not daemon.router.ready:
            await asyncio.sleep(0.02)


async def received(count: int, timeout: float = 30.0) -> list[Item]:
    async with asyncio.timeout(timeout):
        while len(RecordingBackend.instances.get("rec", RecordingBackend("x", {})).items) < count:
            await asyncio.sleep(0.02)
    return list(RecordingBackend.instances["rec"].items)


async def send(publisher: Publisher, count: int, first: int = 0) -> list[str]:
    batch = list(envelopes(first + count, BODHI))[first:]
    for envelope in batch:
        await asyncio.to_thread(publisher.send_envelope, envelope)
    return [e["msg_id"] for e in batch]


async def test_messages_are_matched_and_rendered_in_the_intake_process(
    tmp_path: Path, endpoint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """200 messages, all rendered by the other process, arrive in order with the template's text; `status` says
    where the slices were routed."""
    config = write(tmp_path, endpoint, "{% block text %}seen: {{ topic }} #{{ body.n }}{% endblock %}")
    async with running(config) as (daemon, publisher):
        await until_ready(daemon)
        [pid] = daemon.router.pids()
        assert pid != os.getpid()
        ids = await send(publisher, 200)
        items = await received(200)
        assert [i.msg_id for i in items] == ids
        assert [i.rendered["text"] for i in items] == [f"seen: {BODHI} #{n}" for n in range(200)]
        assert daemon.router.routed_remote >= 1 and daemon.router.routed_local == 0
        slices = daemon.router.routed_remote
    assert main(["status", "-c", str(config)]) == 0
    assert f"intake slices matched and rendered in intake processes: {slices}, on the daemon's own loop: 0" in (
        capsys.readouterr().out
    )


async def test_what_the_process_logs_and_counts_reaches_the_daemon(
    tmp_path: Path, endpoint: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A template that fails in the process is logged through the daemon's handlers with the process's pid (and
    the delivery falls back to the default text); the metadata fallbacks it counted are in the daemon's engine,
    what `status` shows."""
    config = write(tmp_path, endpoint, "{% block text %}{{ body.n + 'x' }}{% endblock %}")
    caplog.set_level(logging.INFO)
    topic = "org.fedoraproject.prod.nosuchservice.thing.happened"
    async with running(config) as (daemon, publisher):
        await until_ready(daemon)
        [pid] = daemon.router.pids()
        await asyncio.to_thread(publisher.send_envelope, next(envelopes(1, topic)))
        [item] = await received(1)
        assert topic.split(".", 3)[3] in item.rendered["text"], "the default template's text"
        [record] = [r for r in caplog.records if "default.j2:1 failed" in r.getMessage()]
        assert record.process == pid and record.levelno == logging.WARNING
        assert "TypeError" in record.getMessage() or "unsupported operand" in record.getMessage(), record.getMessage()
        assert record.name.startswith("fedmsg_notify.render")
        engine = daemon.pipeline.meta.__self__  # type: ignore[attr-defined]
        assert isinstance(engine, MetaEngine)
        assert any("nosuchservice" in service for service in engine.fallback_counts()), engine.fallback_counts()
        assert daemon.router.routed_remote == 1


async def test_a_killed_intake_process_is_replaced_and_nothing_is_lost(tmp_path: Path, endpoint: str) -> None:
    """kill -9 of the intake process: the loop routes meanwhile (every message delivered once, in order), a new
    process takes over."""
    config = write(tmp_path, endpoint, "{% block text %}{{ body.n }}{% endblock %}")
    async with running(config) as (daemon, publisher):
        await until_ready(daemon)
        [first] = daemon.router.pids()
        ids = await send(publisher, 50)
        await received(50)
        os.kill(first, signal.SIGKILL)
        ids += await send(publisher, 150, first=50)
        items = await received(200)
        assert [i.msg_id for i in items] == ids, "each message once, in order, across the process's death"
        await until_ready(daemon)
        [second] = daemon.router.pids()
        assert second != first and daemon.router.starts == 2
        remote = daemon.router.routed_remote
        ids += await send(publisher, 20, first=200)
        items = await received(220)
        assert [i.msg_id for i in items] == ids
        assert daemon.router.routed_remote > remote, "the new process routes again"


async def test_a_reload_rebuilds_the_intake_process_with_the_new_templates(tmp_path: Path, endpoint: str) -> None:
    config = write(tmp_path, endpoint, "{% block text %}old {{ body.n }}{% endblock %}")
    async with running(config) as (daemon, publisher):
        await until_ready(daemon)
        [old] = daemon.router.pids()
        await send(publisher, 5)
        assert [i.rendered["text"] for i in await received(5)] == [f"old {n}" for n in range(5)]
        write(tmp_path, endpoint, "{% block text %}new {{ body.n }}{% endblock %}")
        assert await daemon.reload() is True
        # Before the new process is ready the loop renders with the new set; after, the process does.
        await send(publisher, 5, first=5)
        await until_ready(daemon)
        assert daemon.router.pids() != [old]
        remote = daemon.router.routed_remote
        await send(publisher, 5, first=10)
        items = await received(15)
        assert [i.rendered["text"] for i in items[5:]] == [f"new {n}" for n in range(5, 15)]
        assert daemon.router.routed_remote > remote


async def test_a_reload_to_zero_processes_stops_them(tmp_path: Path, endpoint: str) -> None:
    config = write(tmp_path, endpoint, "{% block text %}{{ body.n }}{% endblock %}")
    async with running(config) as (daemon, publisher):
        await until_ready(daemon)
        [pid] = daemon.router.pids()
        write(tmp_path, endpoint, "{% block text %}{{ body.n }}{% endblock %}", processes=0)
        assert await daemon.reload() is True
        assert daemon.router.pids() == [] and not daemon.router.ready
        deadline = time.monotonic() + 10
        while Path(f"/proc/{pid}").exists() and _state(pid) != "Z":
            assert time.monotonic() < deadline, "the old process did not exit"
            await asyncio.sleep(0.05)
        ids = await send(publisher, 3)
        assert [i.msg_id for i in await received(3)] == ids


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry.name))
    return out


def test_kill_9_of_the_daemon_takes_the_intake_process_down_and_a_restart_delivers(
    tmp_path: Path, endpoint: str, notify: NotifySocket, daemons: list[DaemonProcess]  # noqa: F811
) -> None:
    rec = tmp_path / "rec.log"
    config = write(tmp_path, endpoint, "{% block text %}{{ body.n }}{% endblock %}", extra=f", path: '{rec}'")
    log = tmp_path / "daemon.log"
    daemon = DaemonProcess(config, notify, log)
    daemons.append(daemon)
    until(lambda: "intake process(es) ready" in log.read_text(), 30, "the intake process")
    children = _children(daemon.proc.pid)
    assert children, "the daemon has its intake process"
    publisher = Publisher(endpoint, username="tester", wait=10.0)
    try:
        batch = list(envelopes(30, BODHI))
        for envelope in batch[:10]:
            publisher.send_envelope(envelope)
        until(lambda: len(read_recording(rec)) == 10, 20, "the first 10")
        daemon.kill()
        until(lambda: all(_state(pid) in ("gone", "Z") for pid in children), 10, "the intake process to exit")
        until(lambda: not publisher.subscribed, 10, "the killed daemon's subscription to go")
        daemon = DaemonProcess(config, notify, log)
        daemons.append(daemon)
        # ZeroMQ drops what is sent before the new subscription arrives.
        until(lambda: publisher.subscribed, 10, "the restarted daemon's subscription")
        for envelope in batch[10:]:
            publisher.send_envelope(envelope)
        until(lambda: len(read_recording(rec)) == 30, 30, "the other 20 after the restart")
        assert [m for _, m, _ in read_recording(rec)] == [e["msg_id"] for e in batch]
    finally:
        publisher.close(linger_ms=0)
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(20) == 0


def test_intake_processes_is_checked_with_its_position(tmp_path: Path) -> None:
    config = write(tmp_path, "tcp://127.0.0.1:1", "x", processes=-1)
    with pytest.raises(ProblemsError) as caught:
        load_config(config)
    [problem] = caught.value.problems
    assert "intake_processes" in str(problem) and "config.yaml:7:19" in str(problem)


async def test_the_rule_set_is_kept_out_of_full_collections_until_a_reload(tmp_path: Path, endpoint: str) -> None:
    """While running, what was built at start is frozen (no full GC pass walks 100k rules mid-stream); a reload
    and the shutdown unfreeze it, so a replaced set can be collected."""
    import gc

    config = write(tmp_path, endpoint, "{% block text %}{{ body.n }}{% endblock %}", processes=0)
    async with running(config) as (daemon, _publisher):
        assert gc.get_freeze_count() > 0
        assert await daemon.reload() is True
        assert gc.get_freeze_count() == 0
    assert gc.get_freeze_count() == 0


async def test_digests_are_rendered_in_the_intake_process(
    tmp_path: Path, endpoint: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A digest of two goes out; its template ran in the intake process (its failure is logged with that pid) and
    the daemon sent the plain digest it fell back to."""
    config = write(tmp_path, endpoint, "{% block text %}{{ body.n }}{% endblock %}")
    (tmp_path / "rules" / "a.yaml").write_text(
        "rules:\n  - {name: all, match: {}, deliver: [{via: rec, digest: {every: 600, max: 2}}]}\n"
    )
    (tmp_path / "templates" / "recording" / "digest.j2").write_text("{% block text %}{{ count + 'x' }}{% endblock %}")
    caplog.set_level(logging.INFO)
    async with running(config) as (daemon, publisher):
        await until_ready(daemon)
        [pid] = daemon.router.pids()
        await send(publisher, 2)
        [item] = await received(1)
        assert item.count == 2 and item.rendered["text"].count("\n") == 1, "the plain digest of the two"
        [record] = [r for r in caplog.records if "digest.j2:1 failed" in r.getMessage()]
        assert record.process == pid, "the digest template ran in the daemon's own process"
        assert daemon.router.digests_remote == 1
