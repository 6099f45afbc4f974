"""SIGHUP reloads: a broken config.yaml, a changed template, a removed account.

The broken config goes through the daemon as a process (the signal itself); the other two
call ``Daemon.reload()``, what the SIGHUP handler runs, so the test can read what the
recording backend rendered and what the outbox holds.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import pytest
from fedmsg_notify.bus.zeromq import Publisher
from fedmsg_notify.commands.cli import main
from fedmsg_notify.config.model import load_config
from fedmsg_notify.daemon import Daemon
from fedmsg_notify.testing import RecordingBackend, envelopes, read_recording

from tests.loopgaps import loop_gaps
from tests.test_lifecycle import (  # noqa: F401 (fixtures)
    BODHI,
    BODHI_RULE,
    DaemonProcess,
    NotifySocket,
    daemons,
    notify,
    until,
    write_config,
)


def test_sighup_with_a_broken_config_yaml_keeps_running_the_old_one(
    tmp_path: Path, endpoint: str, notify: NotifySocket, daemons: list[DaemonProcess]  # noqa: F811
) -> None:
    """A config.yaml that no longer parses is refused with its position logged; deliveries go on."""
    rec = tmp_path / "rec.log"
    config = write_config(tmp_path, endpoint, BODHI_RULE, {"rec": f"path: '{rec}'"})
    log = tmp_path / "daemon.log"
    daemon = DaemonProcess(config, notify, log)
    daemons.append(daemon)
    good = config.read_text()
    config.write_text(good + "accounts: [this is: not: valid\n")
    notify.seen.clear()
    daemon.signal(signal.SIGHUP)
    notify.wait_for("RELOADING=1")
    notify.wait_for("READY=1")
    until(lambda: "reload refused" in log.read_text(), 10, "the refusal in the log")
    assert "config.yaml:" in log.read_text(), "the problem names the file and line"
    publisher = Publisher(endpoint, username="tester", wait=10.0)
    try:
        [message] = envelopes(1, BODHI)
        publisher.send_envelope(message)
        until(lambda: [m for _, m, _ in read_recording(rec)] == [message["msg_id"]], 20, "a delivery after it")
    finally:
        publisher.close(linger_ms=0)
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(20) == 0


def write(tmp: Path, endpoint: str, accounts: str, template: str) -> Path:
    (tmp / "rules").mkdir(exist_ok=True)
    (tmp / "rules" / "a.yaml").write_text(
        "rules:\n  - {name: all, match: {}, deliver: [{via: rec}, {via: other}]}\n"
        if "other" in accounts else "rules:\n  - {name: all, match: {}, deliver: [{via: rec}]}\n"
    )
    (tmp / "templates" / "recording").mkdir(parents=True, exist_ok=True)
    (tmp / "templates" / "recording" / "default.j2").write_text(template)
    config = tmp / "config.yaml"
    config.write_text(
        f"bus: {{endpoints: [{endpoint}]}}\naccounts:\n{accounts}"
        f"rules: [{tmp / 'rules'}]\ntemplates: [{tmp / 'templates'}]\nstate: {tmp / 'state.db'}\n"
    )
    return config


RECORDER = "fedmsg_notify.testing:RecordingBackend"


async def test_reload_picks_up_a_changed_template_and_keeps_a_removed_accounts_queue(
    tmp_path: Path, endpoint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """After a reload new messages render with the new template; a removed account's queued deliveries stay queued."""
    accounts = f"  rec: {{backend: '{RECORDER}'}}\n  other: {{backend: '{RECORDER}', mode: hang}}\n"
    config = write(tmp_path, endpoint, accounts, "{% block text %}old: {{ topic }}{% endblock %}")
    daemon = Daemon(load_config(config), shutdown_timeout=1.0)
    ready = asyncio.Event()
    task = asyncio.create_task(daemon.run(ready))
    publisher = None
    try:
        await asyncio.wait_for(ready.wait(), 10)
        publisher = Publisher(endpoint, username="tester", wait=5.0)
        first, second = envelopes(2, BODHI)
        await asyncio.to_thread(publisher.send_envelope, first)
        rec = RecordingBackend.instances["rec"]
        async with asyncio.timeout(15):
            while not rec.items:
                await asyncio.sleep(0.02)
        assert rec.items[0].rendered["text"] == f"old: {BODHI}"
        # "other" hangs on the first message: one in flight, none sent. Now remove it and change the template.
        write(tmp_path, endpoint, f"  rec: {{backend: '{RECORDER}'}}\n", "{% block text %}new: {{ topic }}{% endblock %}")
        assert await daemon.reload() is True
        await asyncio.to_thread(publisher.send_envelope, second)
        async with asyncio.timeout(15):
            while len(rec.items) < 2:
                await asyncio.sleep(0.02)
        assert RecordingBackend.instances["rec"].items[-1].rendered["text"] == f"new: {BODHI}"
        assert daemon.store is not None
        rows = {row.account: row for row in daemon.store.status(0)}
        assert rows["other"].queued + rows["other"].in_retry == 1 and rows["other"].sent == 0, rows["other"]
        # `status`, reading the new configuration, says why they wait.
        assert main(["status", "-c", str(config)]) == 0
        out = capsys.readouterr().out
        assert "other\n  queued 1," in out
        assert f"  waiting: account 'other' is not in {config}; its deliveries are kept until it is back" in out
    finally:
        if publisher is not None:
            publisher.close(linger_ms=0)
        daemon.stop()
        await asyncio.wait_for(task, 20)


async def test_reload_builds_the_new_rules_off_the_event_loop(
    tmp_path: Path, endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a slow reload compiles the new rule set, the event loop (intake) keeps running; a broken set is refused."""
    import time

    from fedmsg_notify.daemon import lifecycle

    config = write(tmp_path, endpoint, f"  rec: {{backend: '{RECORDER}'}}\n", "{{ topic }}")
    daemon = Daemon(load_config(config), shutdown_timeout=1.0)
    real = lifecycle.build_pipeline
    slept: list[float] = []

    def slow(cfg: Any) -> Any:
        time.sleep(0.5)  # what compiling 100k rules costs, blocking its thread
        slept.append(0.5)
        return real(cfg)

    monkeypatch.setattr(lifecycle, "build_pipeline", slow)
    old = daemon.pipeline
    started = time.monotonic()
    async with loop_gaps(0.01) as gaps:
        assert await daemon.reload() is True
    took = time.monotonic() - started
    assert daemon.pipeline is not old
    assert slept == [0.5] and took >= 0.5, "the slow build did not run"
    # Blocked, the loop would show one gap of the whole 0.5 s; in a thread it keeps ticking.
    assert gaps and max(gaps) < 0.4, f"the loop stalled {max(gaps or [0]):.2f} s during a 0.5 s reload"
    (tmp_path / "rules" / "a.yaml").write_text("rules:\n  - {name: all, match: {topic: [}, deliver: [{via: rec}]}\n")
    kept = daemon.pipeline
    assert await daemon.reload() is False
    assert daemon.pipeline is kept
