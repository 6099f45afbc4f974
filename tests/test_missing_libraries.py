"""A backend whose library is missing disables itself; the other accounts still deliver.

The daemon runs as a process whose import path starts with stand-in ``irc`` and ``httpx``
packages that raise ImportError, as on a machine without the irc and mastodon extras.
Their deliveries stay queued (installing the extra and restarting sends them) and
``status`` says why; the recording account gets the message at once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from fedmsg_notify.bus.zeromq import Publisher
from fedmsg_notify.testing import envelopes, read_recording

from tests.test_lifecycle import DaemonProcess, NotifySocket, daemons, notify, until  # noqa: F401 (fixtures)

HIDE = 'raise ImportError("No module named {name!r} (hidden by the test)")\n'


def test_irc_and_mastodon_without_their_libraries_wait_while_others_deliver(
    tmp_path: Path, endpoint: str, notify: NotifySocket, daemons: list[DaemonProcess]  # noqa: F811
) -> None:
    """irc and mastodon accounts without their libraries keep the message queued with the reason; rec gets it."""
    hidden = tmp_path / "hidden"
    for name in ("irc", "httpx"):
        (hidden / name).mkdir(parents=True)
        (hidden / name / "__init__.py").write_text(HIDE.format(name=name))
    (tmp_path / "token").write_text("t0ken\n")
    rec = tmp_path / "rec.log"
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "a.yaml").write_text(
        "rules:\n  - {name: all, match: {}, deliver: [{via: chat, to: '#x'}, {via: masto}, {via: rec}]}\n"
    )
    config = tmp_path / "config.yaml"
    config.write_text(
        f"bus: {{endpoints: [{endpoint}]}}\naccounts:\n"
        "  chat: {backend: irc, server: 'irc://127.0.0.1:1', nick: fnbot}\n"
        f"  masto: {{backend: mastodon, instance: 'https://127.0.0.1:1', token_file: {tmp_path / 'token'}}}\n"
        f"  rec: {{backend: 'fedmsg_notify.testing:RecordingBackend', path: '{rec}'}}\n"
        f"rules: [{tmp_path / 'rules'}]\nstate: {tmp_path / 'state.db'}\n"
    )
    env = {"PYTHONPATH": os.pathsep.join([str(hidden), os.environ.get("PYTHONPATH", "")])}
    daemons.append(DaemonProcess(config, notify, tmp_path / "daemon.log", env=env))
    [message] = envelopes(1, "org.fedoraproject.prod.bodhi.update.comment")
    publisher = Publisher(endpoint, username="tester", wait=10.0)
    try:
        publisher.send_envelope(message)
    finally:
        publisher.close(linger_ms=2000)
    until(lambda: [m for _, m, _ in read_recording(rec)] == [message["msg_id"]], 30, "the recording account")

    def status() -> dict[str, dict[str, object]]:
        out = subprocess.run([sys.executable, "-m", "fedmsg_notify", "status", "-c", str(config), "--json"],
                             capture_output=True, text=True, timeout=60, env={**os.environ, **env})
        return {row["destination"]: row for row in json.loads(out.stdout)["destinations"]}

    until(lambda: {"chat:#x", "masto"} <= {d for d, row in status().items() if row["in_retry"] == 1}, 30,
          "both accounts without their library in retry")
    rows = status()
    assert "pip install '.[irc]'" in str(rows["chat:#x"]["last_retry_reason"]), rows["chat:#x"]
    assert "pip install '.[mastodon]'" in str(rows["masto"]["last_retry_reason"]), rows["masto"]
    assert rows["chat:#x"]["sent"] == 0 and rows["masto"]["sent"] == 0
    daemons[0].signal(signal.SIGTERM)
    assert daemons[0].wait() == 0
