"""The daemon as a process with its web server on, a bus publisher, and an SSE reader."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from fedmsg_notify.bus.zeromq import Publisher

from tests.conftest import free_port

BODHI = "org.fedoraproject.prod.bodhi.update.comment"


def bodhi_comment(agent: str, alias: str, karma: int = 1) -> dict[str, Any]:
    return {
        "agent": agent,
        "comment": {
            "user": {"name": agent},
            "karma": karma,
            "text": "works for me",
            "update": {"alias": alias, "builds": [{"nvr": "python-fedmsg-1.1.7-1.fc40"}], "user": {"name": "ralph"}},
        },
    }


@dataclass
class WebDaemon:
    tmp: Path
    endpoint: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path
    publisher: Publisher | None = None
    published: list[dict[str, Any]] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def publish(self, msg: dict[str, Any], topic: str = BODHI) -> dict[str, Any]:
        if self.publisher is None:
            self.publisher = Publisher(self.endpoint, username="tester", wait=10.0)
        envelope = self.publisher.publish(topic, msg)
        self.published.append(envelope)
        return envelope

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.get(self.base + path, timeout=10.0, **kwargs)

    def wait_for_items(self, feed: str, count: int, timeout: float = 15.0, **kwargs: Any) -> None:
        """Until the feed's Atom document holds ``count`` entries (a positive marker)."""
        deadline = time.monotonic() + timeout
        while True:
            response = self.get(f"/feeds/{feed}.atom", **kwargs)
            if response.status_code == 200 and response.text.count("<entry>") >= count:
                return
            assert time.monotonic() < deadline, f"feed {feed} never reached {count} entries:\n{self.log.read_text()}"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.publisher is not None:
            self.publisher.close(linger_ms=0)
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def start_web_daemon(
    tmp: Path, rules: str, accounts: str, *, templates: Path | None = None, web: str = ""
) -> WebDaemon:
    port = free_port()
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    (tmp / "rules").mkdir(exist_ok=True)
    (tmp / "rules" / "web.yaml").write_text(rules)
    lines = [
        f"bus: {{endpoints: [{endpoint}]}}",
        "accounts:",
        *(f"  {line}" for line in accounts.strip().splitlines()),
        f"rules: [{tmp / 'rules'}]",
        f"state: {tmp / 'state.db'}",
        f"web: {{listen: '127.0.0.1:{port}', heartbeat: 1{', ' + web if web else ''}}}",
    ]
    if templates is not None:
        lines.append(f"templates: [{templates}]")
    config = tmp / "config.yaml"
    config.write_text("\n".join(lines) + "\n")
    log = tmp / "daemon.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("NOTIFY_SOCKET", None)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fedmsg_notify", "run", "-c", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    daemon = WebDaemon(tmp=tmp, endpoint=endpoint, port=port, proc=proc, log=log)
    deadline = time.monotonic() + 30
    while True:
        assert proc.poll() is None, f"daemon exited {proc.returncode}:\n{log.read_text()}"
        try:
            if httpx.get(daemon.base + "/healthz", timeout=2.0).status_code == 200:
                return daemon
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"web server never answered:\n{log.read_text()}"
        time.sleep(0.05)


class SSEReader:
    """A live connection to ``/feeds/NAME/events``; every read has a timeout (heartbeats keep it moving)."""

    def __init__(self, url: str, headers: dict[str, str] | None = None, timeout: float = 10.0) -> None:
        self.client = httpx.Client(timeout=httpx.Timeout(timeout))
        self.context = self.client.stream("GET", url, headers=headers or {})
        self.response = self.context.__enter__()
        self.lines = self.response.iter_lines()
        self.timeout = timeout

    def wait_open(self) -> None:
        for line in self.lines:
            if line == ": open":
                return
        raise AssertionError("stream ended before it opened")

    def next_event(self) -> tuple[str, str, dict[str, Any]]:
        """The next (id, event, data) — heartbeats skipped — within the timeout."""
        deadline = time.monotonic() + self.timeout
        fields: dict[str, str] = {}
        for line in self.lines:
            assert time.monotonic() < deadline, "no event within the timeout"
            if line == "":
                if "data" in fields:
                    return fields.get("id", ""), fields.get("event", "message"), json.loads(fields["data"])
                fields = {}
                continue
            if line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")
        raise AssertionError("stream ended")

    def close(self) -> None:
        self.context.__exit__(None, None, None)
        self.client.close()


@pytest.fixture
def web_daemons() -> Iterator[list[WebDaemon]]:
    started: list[WebDaemon] = []
    yield started
    for daemon in started:
        daemon.stop()
