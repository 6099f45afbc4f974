"""kill -9 in the middle of a flood against real servers, counted on the server's side.

``test_lifecycle.py`` proves the crash path with the recording backend, which drops a
repeated item id itself; here the remote is a real SMTP server (each Message-ID it
received is counted) and a real IRC server, ngircd (each line a second client read is
counted). After the restart and a replay of the bus, every message has arrived, and at
most one (the send in flight at the kill) arrived twice.
"""

from __future__ import annotations

import contextlib
import re
import signal
import socket
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedmsg_notify.backend import Destination, Item
from fedmsg_notify.backends.email.compose import message_id
from fedmsg_notify.bus.zeromq import Publisher
from fedmsg_notify.testing import envelopes

from tests.conftest import free_port
from tests.ircserver import Ngircd
from tests.smtpserver import smtp_server
from tests.test_lifecycle import DaemonProcess, NotifySocket, daemons, notify, until  # noqa: F401 (fixtures)

BODHI = "org.fedoraproject.prod.bodhi.update.comment"
RULES = "rules:\n  - {name: everything, match: {}, deliver: [{via: out, to: '%s'}]}\n"


def write_config(tmp: Path, endpoint: str, to: str, account: str) -> Path:
    (tmp / "rules").mkdir(exist_ok=True)
    (tmp / "rules" / "a.yaml").write_text(RULES % to)
    config = tmp / "config.yaml"
    config.write_text(
        f"bus: {{endpoints: [{endpoint}]}}\naccounts:\n  out: {{{account}, rate: 1000, burst: 1000}}\n"
        f"rules: [{tmp / 'rules'}]\nstate: {tmp / 'state.db'}\n"
    )
    return config


def flood_kill_restart(
    tmp: Path, config: Path, notify: NotifySocket, daemons: list[DaemonProcess], endpoint: str,  # noqa: F811
    flood: list[dict[str, Any]], marker: dict[str, Any], arrived: Callable[[], int], marker_seen: Callable[[], bool],
) -> None:
    """Publish ``flood``, kill -9 once some (not all) arrived, restart, replay it all and then ``marker``."""
    log = tmp / "daemon.log"
    daemons.append(DaemonProcess(config, notify, log))
    publisher = Publisher(endpoint, username="tester", wait=10.0)
    for envelope in flood:
        publisher.send_envelope(envelope)
    until(lambda: arrived() >= len(flood) // 10, 60, "deliveries under way")
    daemons[0].proc.kill()
    assert daemons[0].wait() == -signal.SIGKILL
    assert arrived() < len(flood), "the kill came after the last delivery; the test proves nothing"
    publisher.close(linger_ms=0)
    daemons.append(DaemonProcess(config, notify, log))
    replay = Publisher(endpoint, username="tester", wait=10.0)
    try:
        for envelope in [*flood, marker]:
            replay.send_envelope(envelope)
    finally:
        replay.close(linger_ms=2000)
    # One destination sends in acceptance order: the marker comes after any resent delivery.
    until(marker_seen, 120, "the marker sent after the replay")
    daemons[1].signal(signal.SIGTERM)
    assert daemons[1].wait() == 0


def test_kill_9_mid_flood_against_a_real_smtp_server(
    tmp_path: Path, endpoint: str, notify: NotifySocket, daemons: list[DaemonProcess]  # noqa: F811
) -> None:
    """Every message reaches the SMTP server; at most one Message-ID arrives twice."""
    port = free_port()
    to = "ralph@example.org"
    config = write_config(tmp_path, endpoint, to,
                          f"backend: email, smtp: 'smtp://127.0.0.1:{port}', from: 'n <notify@example.org>'")
    with smtp_server(port) as server:
        def ids() -> Counter[str]:
            return Counter(str(d.mail["Message-ID"]) for d in list(server.delivered))

        def expected_id(msg_id: object) -> str:
            return message_id(Item(id=0, msg_id=str(msg_id), destination=Destination("out", to), rule="",
                                   topic="", service="", rendered={}), "example.org")

        flood = list(envelopes(300, BODHI))
        [marker] = envelopes(1, BODHI, {"marker": True})
        flood_kill_restart(tmp_path, config, notify, daemons, endpoint, flood, marker,
                           lambda: len(server.delivered), lambda: expected_id(marker["msg_id"]) in ids())
        got = ids()
    wanted = {expected_id(e["msg_id"]) for e in [*flood, marker]}
    assert set(got) == wanted, f"{len(wanted - set(got))} messages never reached the server"
    repeats = {k: n for k, n in got.items() if n > 1}
    assert len(repeats) <= 1 and all(n == 2 for n in repeats.values()), repeats


class ChannelReader:
    """A plain IRC client in a thread: joins ``channel`` on ngircd and keeps every PRIVMSG text."""

    def __init__(self, port: int, channel: str) -> None:
        self.texts: list[str] = []
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.channel = channel
        self.joined = threading.Event()
        self.sock.sendall(b"NICK reader\r\nUSER reader 0 * :reader\r\n")
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        assert self.joined.wait(30), "the reader could not join"

    def _read(self) -> None:
        buffer = b""
        with contextlib.suppress(OSError):
            while chunk := self.sock.recv(65536):
                buffer += chunk
                *lines, buffer = buffer.split(b"\r\n")
                for raw in lines:
                    line = raw.decode("utf-8", "replace")
                    if line.startswith("PING"):
                        self.sock.sendall(b"PONG" + raw[4:] + b"\r\n")
                    elif " 001 " in line:
                        self.sock.sendall(f"JOIN {self.channel}\r\n".encode())
                    elif " JOIN " in line and line.startswith(":reader!"):
                        self.joined.set()
                    elif f" PRIVMSG {self.channel} :" in line:
                        self.texts.append(line.split(f" PRIVMSG {self.channel} :", 1)[1])

    def close(self) -> None:
        self.sock.close()
        self.thread.join(10)


def test_kill_9_mid_flood_against_ngircd(
    tmp_path: Path, endpoint: str, notify: NotifySocket, daemons: list[DaemonProcess]  # noqa: F811
) -> None:
    """Every message reaches the channel on ngircd; at most one line arrives twice."""
    server = Ngircd(tmp_path / "ngircd", throttle=False)
    server.start()
    reader = None
    try:
        reader = ChannelReader(server.port, "#crash")
        config = write_config(tmp_path, endpoint, "#crash",
                              f"backend: irc, server: 'irc://127.0.0.1:{server.port}', nick: fnbot, "
                              "reconnect_min: 0.2, reconnect_max: 1.0")
        wiki = "org.fedoraproject.prod.wiki.article.edit"
        flood = [next(envelopes(1, wiki, {"user": "tester", "title": f"page-{n}"})) for n in range(300)]
        [marker] = envelopes(1, wiki, {"user": "tester", "title": "page-marker"})
        texts = reader.texts

        def pages() -> Counter[str]:
            return Counter(m.group(1) for text in list(texts) for m in [re.search(r"page-(\w+)", text)] if m)

        flood_kill_restart(tmp_path, config, notify, daemons, endpoint, flood, marker,
                           lambda: sum(pages().values()), lambda: "marker" in pages())
        got = pages()
    finally:
        if reader is not None:
            reader.close()
        server.stop()
    assert set(got) == {str(n) for n in range(300)} | {"marker"}, f"{301 - len(got)} messages never arrived"
    repeats = {k: n for k, n in got.items() if n > 1}
    assert len(repeats) <= 1 and all(n == 2 for n in repeats.values()), repeats
