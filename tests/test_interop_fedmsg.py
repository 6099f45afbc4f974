"""Interop with the real fedmsg library from PyPI, run in its own virtualenv as a separate process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from fedmsg_notify.bus.zeromq import Publisher

from tests.childio import read_lines
from tests.test_lifecycle import NotifySocket

PEER = str(Path(__file__).with_name("fedmsg_peer.py"))
TOPIC = "org.fedoraproject.dev.bodhi.update.comment"


def write_config(tmp_path: Path, endpoint: str) -> Path:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "all.yaml").write_text("rules:\n  - name: everything\n    match: {}\n    deliver: [{via: out}]\n")
    config = tmp_path / "config.yaml"
    config.write_text(
        f"bus: {{endpoints: [{endpoint}]}}\n"
        "accounts: {out: {backend: console}}\n"
        f"rules: [{rules}]\n"
        f"state: {tmp_path / 'state.db'}\n"
    )
    return config


def test_fedmsg_publish_reaches_our_daemon(tmp_path: Path, endpoint: str, fedmsg_python: str) -> None:
    """A message sent with fedmsg.publish() from another process is printed by `fedmsg-notify run`."""
    config = write_config(tmp_path, endpoint)
    notify = NotifySocket()
    with subprocess.Popen(
        [sys.executable, "-m", "fedmsg_notify", "run", "-c", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "NOTIFY_SOCKET": notify.path},
    ) as daemon:
        try:
            notify.wait_for("READY=1", timeout=60)  # subscribed and reconnecting to the endpoint
            # fedmsg binds, then waits before sending; longer than the daemon's 5 s reconnect cap,
            # its subscriber has connected by then however long fedmsg took to start.
            peer = subprocess.run(
                [fedmsg_python, PEER, "publish", endpoint, TOPIC, json.dumps({"agent": "ralph"}), "3"],
                capture_output=True,
                text=True,
                timeout=60,
                env={**os.environ, "FEDMSG_PEER_SLEEP": "6.0"},
            )
            assert peer.returncode == 0, peer.stderr
            assert daemon.stdout is not None
            lines = read_lines(daemon.stdout, 3, timeout=60)
        finally:
            daemon.terminate()
            _, stderr = daemon.communicate(timeout=30)
            notify.close()
    assert all(line.strip() for line in lines), stderr
    assert all("ralph" in line for line in lines), lines


def test_our_publish_is_read_by_fedmsg_tail_messages(endpoint: str, fedmsg_python: str) -> None:
    """Envelopes from our publisher are accepted by fedmsg.tail_messages() exactly as sent."""
    with subprocess.Popen(
        [fedmsg_python, PEER, "tail", endpoint, "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as tail:
        assert tail.stdout is not None
        assert read_lines(tail.stdout, 1, timeout=60)[0].strip() == "READY"
        publisher = Publisher(endpoint, username="interop", wait=10.0)
        sent = [publisher.publish(TOPIC, {"n": n}) for n in range(2)]
        publisher.close()
        out, err = tail.communicate(timeout=60)
    received = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert [r["msg"] for r in received] == sent, err
    assert [r["topic"] for r in received] == [TOPIC, TOPIC]
