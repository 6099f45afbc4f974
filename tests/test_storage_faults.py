"""Faults of the machine under the store: a full disk, a read-only remount, a damaged state file.

The state lives on a real tmpfs of a few hundred KiB (mounted by the test: root only) and
mail goes through a real SMTP server (aiosmtpd) that is down at first. The daemon runs
in-process so the test can watch its intake guard; it must never exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fedmsg_notify.bus.zeromq import Publisher
from fedmsg_notify.commands.cli import main
from fedmsg_notify.config.model import load_config
from fedmsg_notify.daemon import Daemon
from fedmsg_notify.delivery.retry import RetryPolicy
from fedmsg_notify.store.faults import check_state_file, storage_fault, storage_health
from fedmsg_notify.testing import envelopes

from tests.conftest import free_port
from tests.smtpserver import Handler, smtp_server

BODHI = "org.fedoraproject.prod.bodhi.update.comment"
IN_CI = bool(os.environ.get("CI"))


def _mount(target: Path, size: str) -> None:
    target.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(target)],
        capture_output=True, text=True, timeout=30,
    )
    if result.returncode != 0:
        reason = f"cannot mount a tmpfs here (needs root): {result.stderr.strip()}"
        if IN_CI or os.geteuid() == 0:
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs for the state directory, unmounted afterwards."""
    target = tmp_path / "state"
    _mount(target, "1m")
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], capture_output=True, timeout=30)


def write_config(tmp: Path, state_dir: Path, smtp_port: int, endpoint: str) -> Path:
    (tmp / "rules").mkdir(exist_ok=True)
    (tmp / "rules" / "mail.yaml").write_text(
        "rules:\n  - {name: all, match: {}, deliver: [{via: mail, to: me@example.org}]}\n", encoding="utf-8"
    )
    config = tmp / "config.yaml"
    config.write_text(
        f"bus: {{endpoints: [{endpoint}]}}\n"
        "accounts:\n"
        f'  mail: {{backend: email, smtp: "smtp://127.0.0.1:{smtp_port}", from: "n@example.org",'
        " rate: 1000, burst: 1000}\n"
        f"rules: [{tmp / 'rules'}]\n"
        f"state: {state_dir / 'state.db'}\n",
        encoding="utf-8",
    )
    return config


async def until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def running(config: Path) -> AsyncIterator[tuple[Daemon, asyncio.Task[None]]]:
    daemon = Daemon(load_config(config), policy=RetryPolicy(base=0.2, cap=0.5), send_timeout=5.0)
    ready = asyncio.Event()
    task = asyncio.create_task(daemon.run(ready))
    await asyncio.wait_for(ready.wait(), 20)
    try:
        yield daemon, task
    finally:
        daemon.stop()
        await asyncio.wait_for(task, 30)


def rows(state: Path) -> dict[str, int]:
    with contextlib.closing(sqlite3.connect(f"{state.as_uri()}?mode=ro", uri=True)) as db:
        return {state: n for state, n in db.execute("SELECT state, COUNT(*) FROM deliveries GROUP BY state")}


def comments(count: int, size: int, start: int = 0) -> list[dict[str, Any]]:
    """Bodhi comments with ``size`` characters of text each (a long CI log pasted in)."""
    out = []
    for n, envelope in enumerate(envelopes(count + start, BODHI)):
        if n < start:
            continue
        envelope["msg"] = {
            "agent": "tester",
            "comment": {"text": f"{n} " + "log line\n" * (size // 9), "update": {"alias": f"FEDORA-2026-{n:06d}"}},
        }
        out.append(envelope)
    return out


async def send(publisher: Publisher, batch: list[dict[str, Any]]) -> None:
    await asyncio.to_thread(lambda: [publisher.send_envelope(e) for e in batch])


def fill(directory: Path, leave: int) -> Path:
    """A filler file that leaves about ``leave`` bytes free on ``directory``'s filesystem."""
    stats = os.statvfs(directory)
    free = stats.f_bavail * stats.f_frsize
    filler = directory / "filler"
    with filler.open("wb") as out:
        out.write(b"\0" * max(0, free - leave))
    return filler


async def test_a_full_disk_pauses_intake_and_it_resumes_by_itself(tmp_path: Path, small_fs: Path, endpoint: str) -> None:
    """A flood to a dead SMTP server fills the disk: the daemon stays up, refuses and counts, resumes, loses nothing."""
    smtp_port = free_port()
    config = write_config(tmp_path, small_fs, smtp_port, endpoint)
    state = small_fs / "state.db"
    publisher = Publisher(endpoint, username="tester", wait=5.0)
    try:
        async with running(config) as (daemon, task):
            filler = fill(small_fs, 160 * 1024)
            sent = 0
            # Flood until the storage refuses: a few KB of mail per message fills 160 KiB fast.
            while not daemon.guard.paused:
                assert sent < 2000, "the disk never filled"
                await send(publisher, comments(20, 4000, start=sent))
                sent += 20
                await asyncio.sleep(0.1)
            assert "full" in (daemon.guard.fault or "")
            # More messages while full: refused and counted, not stored, and the daemon lives on.
            # (refused_total: a probe may fit one small batch in meanwhile, which resets the
            # current fault's count; the disk then fills again and refuses the next.)
            before = daemon.guard.refused_total
            for _ in range(3):
                await send(publisher, comments(5, 4000, start=sent))
                sent += 5
                await asyncio.sleep(1.2)
            await until(lambda: daemon.guard.refused_total > before, 10, "messages refused while full")
            assert not task.done()
            assert storage_health(state) is not None or daemon.guard.paused
            # Free the space: the next message is accepted without a restart.
            filler.unlink()
            marker = comments(1, 10, start=sent + 100)
            await until(lambda: (asyncio.ensure_future(send(publisher, marker)), not daemon.guard.paused)[1], 30,
                        "intake to resume")
            await until(lambda: marker[0]["msg_id"] in accepted_ids(state), 20, "the marker to be stored")
            assert not task.done()
            refused = daemon.guard.refused_total
            assert refused > 0
            stored = accepted_ids(state)
            # The server comes back: everything that was accepted is sent, once.
            with smtp_server(smtp_port) as handler:
                await until(lambda: len(handler.delivered) >= len(stored), 120, f"{len(stored)} mails")
                await until(lambda: set(rows(state)) == {"sent"}, 30, "every delivery marked sent")
                await asyncio.sleep(0.5)
            # One mail per stored delivery: Message-IDs are stable per delivery, so a resend would repeat one.
            assert len(mail_ids(handler)) == len(handler.delivered) == len(stored)
        with contextlib.closing(sqlite3.connect(f"{state.as_uri()}?mode=ro", uri=True)) as db:
            counters = dict(db.execute("SELECT name, value FROM counters"))
        # What was refused is on record for `status`, counted when the storage took writes again.
        assert counters["refused.storage"] == refused
    finally:
        publisher.close(linger_ms=0)


def accepted_ids(state: Path) -> set[str]:
    with contextlib.closing(sqlite3.connect(f"{state.as_uri()}?mode=ro", uri=True)) as db:
        return {msg_id for (msg_id,) in db.execute("SELECT msg_id FROM deliveries")}


def mail_ids(handler: Handler) -> set[str]:
    found = set()
    for delivered in handler.delivered:
        header = delivered.mail.get("Message-ID") or ""
        found.add(str(header))
    return found


@pytest.fixture
def ext4_fs(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """An 8 MiB ext4 filesystem on a loop device, mounted with ``errors=remount-ro``; (mount point, device)."""
    image, target = tmp_path / "fs.img", tmp_path / "ext4"
    with image.open("wb") as out:
        out.truncate(8 * 1024 * 1024)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, capture_output=True, timeout=60)
    target.mkdir()
    result = subprocess.run(["mount", "-o", "loop,errors=remount-ro", str(image), str(target)],
                            capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        reason = f"cannot loop-mount an ext4 image here (needs root and loop devices): {result.stderr.strip()}"
        if IN_CI or os.geteuid() == 0:
            pytest.fail(reason)
        pytest.skip(reason)
    device = subprocess.run(["findmnt", "-n", "-o", "SOURCE", str(target)], capture_output=True, text=True,
                            check=True, timeout=30).stdout.strip()
    try:
        yield target, device
    finally:
        # The loop device goes with the mount (mount -o loop sets autoclear).
        subprocess.run(["umount", str(target)], capture_output=True, timeout=60)


def remount_after_error(target: Path, image: Path) -> None:
    """What an operator does after the kernel turned the filesystem read-only: unmount, fsck, mount."""
    subprocess.run(["umount", str(target)], check=True, capture_output=True, timeout=60)
    subprocess.run(["e2fsck", "-fy", str(image)], capture_output=True, timeout=120)
    subprocess.run(["mount", "-o", "loop,errors=remount-ro", str(image), str(target)], check=True,
                   capture_output=True, timeout=60)


async def test_a_read_only_remount_pauses_intake_and_nothing_accepted_is_lost(
    tmp_path: Path, ext4_fs: tuple[Path, str], endpoint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The kernel remounts the state's filesystem read-only mid-run (an ext4 error): intake pauses and
    `status` says why; the daemon stays up and stops cleanly; after fsck and a restart all is delivered."""
    mount, device = ext4_fs
    smtp_port = free_port()
    config = write_config(tmp_path, mount, smtp_port, endpoint)
    state = mount / "state.db"
    publisher = Publisher(endpoint, username="tester", wait=5.0)
    try:
        async with running(config) as (daemon, task):
            first = comments(3, 10)
            await send(publisher, first)
            await until(lambda: accepted_ids(state) == {e["msg_id"] for e in first}, 20, "three messages stored")
            # Visible is not yet durable: the intake commit fsyncs the WAL after releasing the lock.
            # The disk error comes after that fsync (accept has returned), as the test means it to.
            await until(lambda: daemon.writer is not None and not daemon.writer._busy, 20, "the commit's fsync")
            # What a failing disk does: ext4 hits an error and the kernel makes it read-only.
            (Path("/sys/fs/ext4") / Path(device).name / "trigger_fs_error").write_text("test: disk error\n")
            n = 3
            while not daemon.guard.paused:
                assert n < 200, "intake never noticed the read-only filesystem"
                await send(publisher, comments(1, 10, start=n))
                n += 1
                await asyncio.sleep(0.2)
            assert daemon.guard.fault in ("storage is read-only", "storage I/O error"), daemon.guard.fault
            assert storage_health(state) == f"{mount} is on a read-only filesystem"
            capsys.readouterr()
            assert main(["status", "-c", str(config)]) == 0
            shown = capsys.readouterr().out
            assert f"WARNING: {mount} is on a read-only filesystem" in shown, shown
            assert not task.done()
        # Stopped cleanly (the context manager awaited run() without an exception).
        remount_after_error(mount, tmp_path / "fs.img")
        with smtp_server(smtp_port) as handler:
            async with running(config):
                await until(lambda: len(handler.delivered) >= 3, 60, "the three accepted mails")
                await until(lambda: set(rows(state)) == {"sent"}, 30, "every delivery marked sent")
        assert accepted_ids(state) >= {e["msg_id"] for e in first}
        assert len(mail_ids(handler)) == len(handler.delivered) == len(accepted_ids(state))
    finally:
        publisher.close(linger_ms=0)


def test_a_corrupt_state_file_is_refused_untouched(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Garbage at `state:`: the daemon refuses to start, names the file and the fix, and never writes to it."""
    state = tmp_path / "state.db"
    garbage = b"SQLite format 3\x00" + os.urandom(8192)
    state.write_bytes(garbage)
    config = write_config(tmp_path, tmp_path, free_port(), f"tcp://127.0.0.1:{free_port()}")
    assert main(["run", "-c", str(config)]) != 0
    err = capsys.readouterr().err
    line = next(n for n, text in enumerate(config.read_text().splitlines(), 1) if text.startswith("state:"))
    assert f"{config}:{line}:" in err, err
    assert str(state) in err and "move it aside" in err and "never deletes it" in err
    assert state.read_bytes() == garbage
    assert not (tmp_path / "state.db-wal").exists()


def test_a_foreign_sqlite_file_is_refused_untouched(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Some other program's database at `state:` is refused, not extended with our tables."""
    state = tmp_path / "state.db"
    with contextlib.closing(sqlite3.connect(state)) as db:
        db.execute("CREATE TABLE photos (id INTEGER PRIMARY KEY, path TEXT)")
        db.execute("INSERT INTO photos (path) VALUES ('cat.jpg')")
        db.commit()
    before = state.read_bytes()
    config = write_config(tmp_path, tmp_path, free_port(), f"tcp://127.0.0.1:{free_port()}")
    assert main(["run", "-c", str(config)]) != 0
    err = capsys.readouterr().err
    assert "not a fedmsg-notify state database" in err and "photos" in err and "move it aside" in err, err
    assert state.read_bytes() == before


def test_storage_faults_are_told_from_bugs(tmp_path: Path) -> None:
    """Full, read-only and I/O errors are storage faults; a syntax error or a constraint is not."""
    db = sqlite3.connect(":memory:")
    with pytest.raises(sqlite3.Error) as syntax:
        db.execute("SELEC 1")
    assert storage_fault(syntax.value) is None
    assert storage_fault(OSError(28, "No space left on device")) == "storage full"
    assert storage_fault(OSError(30, "Read-only file system")) == "storage is read-only"
    assert storage_fault(ValueError("x")) is None
    readonly = tmp_path / "ro.db"
    sqlite3.connect(readonly).execute("CREATE TABLE t (x)").connection.commit()
    ro = sqlite3.connect(f"{readonly.as_uri()}?mode=ro", uri=True)
    with pytest.raises(sqlite3.Error) as refused:
        ro.execute("INSERT INTO t VALUES (1)")
    assert storage_fault(refused.value) == "storage is read-only"
    check_state_file(tmp_path / "absent.db")  # no file yet: fine, the daemon creates it
