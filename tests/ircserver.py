"""Real IRC servers for the IRC backend tests, and a client that records what a channel sees.

* :class:`Ngircd` runs Debian's ``ngircd`` on a loopback port (plain and, optionally,
  TLS with a ``trustme`` certificate), with its log capped and its files in a
  temporary directory writable by ``nobody`` (ngircd drops root to nobody).
* :class:`Listener` is a second, independent client: it registers, joins channels
  (creating keyed channels), and records every PRIVMSG/NOTICE it receives.
* :class:`ScriptedServer` is a minimal IRC server kept only for what a real server
  cannot be made to do here: close the connection of a client whose SASL login failed
  (inspircd lets it register unauthenticated), and record every raw client line so the
  secrets test can see each credential travel. SASL, NickServ and ``+c`` themselves are
  tested against inspircd and atheme (``tests/ircservices.py``). It speaks just enough of
  the protocol (CAP, AUTHENTICATE, NICK/USER, JOIN, MODE, PING, PRIVMSG).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

NGIRCD = shutil.which("ngircd") or "/usr/sbin/ngircd"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


@dataclass
class Ngircd:
    """One ngircd process; ``restart()`` keeps its ports (a server restart mid-stream)."""

    workdir: Path
    password: str | None = None
    throttle: bool = True
    tls_cert: tuple[Path, Path] | None = None  # (certificate chain, key)
    max_nick_length: int = 30  # ngircd's own default is 9
    port: int = field(default_factory=free_port)
    tls_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    def config(self) -> str:
        password = f"Password = {self.password}\n" if self.password else ""
        tls = ""
        if self.tls_cert:
            cert, key = self.tls_cert
            tls = f"[SSL]\nCertFile = {cert}\nKeyFile = {key}\nPorts = {self.tls_port}\n"
        # MaxPenaltyTime = 0 turns ngircd's per-command throttling off (protocol
        # tests); -1 is the default, which pacing tests must keep.
        penalty = "-1" if self.throttle else "0"
        return (
            f"[Global]\nName = irc.test\nInfo = fedmsg-notify tests\nListen = 127.0.0.1\n"
            f"Ports = {self.port}\nPidFile = {self.workdir}/ngircd.pid\nMotdPhrase = test\n{password}"
            f"ServerUID = 65534\n"
            f"[Limits]\nMaxJoins = 50\nMaxNickLength = {self.max_nick_length}\nMaxPenaltyTime = {penalty}\n"
            f"MaxConnectionsIP = 50\nPingTimeout = 120\nPongTimeout = 60\n"
            f"[Options]\nDNS = no\nIdent = no\nPAM = no\n{tls}"
        )

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.workdir, 0o777)  # ngircd runs as nobody after dropping root
        conf = self.workdir / "ngircd.conf"
        conf.write_text(self.config(), encoding="utf-8")
        if self.tls_cert:
            for path in self.tls_cert:
                os.chmod(path, 0o644)
        # Its console log goes to /dev/null: capped by construction (ngircd once
        # wrote 840 MB of "Broken pipe" in 35 s when a client vanished mid-queue).
        self.process = subprocess.Popen(
            [NGIRCD, "-n", "-f", str(conf)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_port(self.port)
        if self.tls_cert:
            _wait_port(self.tls_port)

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


@dataclass
class Received:
    command: str
    sender: str
    target: str
    text: str


class Listener:
    """A plain IRC client over asyncio streams that records what it is sent."""

    def __init__(self, port: int, nick: str, password: str | None = None) -> None:
        self.port = port
        self.nick = nick
        self.password = password
        self.received: list[Received] = []
        self.raw: list[str] = []
        self.changed = asyncio.Event()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self._waiters: list[tuple[Callable[[str], bool], asyncio.Future[str]]] = []

    async def connect(self) -> None:
        self._reader, self._writer = await asyncio.open_connection("127.0.0.1", self.port)
        self._task = asyncio.create_task(self._read())
        if self.password:
            self.send(f"PASS {self.password}")
        welcome = self.expect(lambda line: f" 001 {self.nick} " in line)
        self.send(f"NICK {self.nick}")
        self.send(f"USER {self.nick} 0 * :listener")
        await asyncio.wait_for(welcome, 10)

    def send(self, line: str) -> None:
        assert self._writer is not None
        self._writer.write(line.encode() + b"\r\n")

    def expect(self, predicate: Callable[[str], bool]) -> asyncio.Future[str]:
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._waiters.append((predicate, future))
        return future

    async def join(self, channel: str, key: str | None = None, modes: str | None = None) -> None:
        joined = self.expect(
            lambda line: line.startswith(f":{self.nick}!") and line.lower().replace(":", "").endswith(f"join {channel}")
        )
        self.send(f"JOIN {channel}" + (f" {key}" if key else ""))
        await asyncio.wait_for(joined, 10)
        if modes:
            done = self.expect(lambda line: f" MODE {channel} " in line or " 4" in line[:12])
            self.send(f"MODE {channel} {modes}")
            await asyncio.wait_for(done, 10)

    def messages(self, target: str | None = None) -> list[Received]:
        return [m for m in self.received if target is None or m.target.lower() == target.lower()]

    async def wait_for(self, count: int, target: str | None = None, timeout: float = 30.0) -> list[Received]:
        """The messages for ``target`` once there are at least ``count`` (or fail after ``timeout``)."""
        deadline = time.monotonic() + timeout
        while len(self.messages(target)) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{self.nick} got {len(self.messages(target))} of {count} messages for {target}")
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), remaining)
        return self.messages(target)

    async def _read(self) -> None:
        assert self._reader is not None
        while True:
            raw = await self._reader.readline()
            if not raw:
                return
            line = raw.rstrip(b"\r\n").decode("utf-8", "replace")
            self.raw.append(line)
            if line.startswith("PING"):
                self.send("PONG" + line[4:])
            parts = line.split(" ", 3)
            if len(parts) == 4 and parts[1] in ("PRIVMSG", "NOTICE") and parts[0].startswith(":"):
                text = parts[3][1:] if parts[3].startswith(":") else parts[3]
                self.received.append(Received(parts[1], parts[0][1:], parts[2], text))
            for predicate, future in list(self._waiters):
                if not future.done() and predicate(line):
                    future.set_result(line)
                    self._waiters.remove((predicate, future))
            self.changed.set()

    async def close(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(ConnectionError):
                self.send("QUIT :bye")
                await self._writer.drain()
            self._writer.close()
            with contextlib.suppress(ConnectionError):
                await self._writer.wait_closed()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class ScriptedServer:
    """Just enough IRC for SASL PLAIN and channel mode +c; records every client line."""

    def __init__(self, *, sasl_accounts: dict[str, str] | None = None, channel_modes: dict[str, str] | None = None,
                 require_sasl: bool = False) -> None:
        self.sasl_accounts = sasl_accounts or {}
        self.channel_modes = channel_modes or {}
        self.require_sasl = require_sasl
        self.lines: list[str] = []
        self.authenticated: list[str] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.StreamWriter] = set()
        self.changed = asyncio.Event()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        for writer in list(self._clients):
            writer.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def broadcast(self, line: str) -> None:
        """Send ``line`` to every connected client (a MODE change by a channel operator)."""
        for writer in list(self._clients):
            writer.write(line.encode() + b"\r\n")
            await writer.drain()

    def privmsgs(self, target: str) -> list[str]:
        prefix = f"PRIVMSG {target} :"
        return [line[len(prefix):] for line in self.lines if line.startswith(prefix)]

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"scripted server: condition not met; lines: {self.lines}")
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), 0.2)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._clients.add(writer)
        nick, user, negotiating, registered, account = "*", "", False, False, ""

        def send(line: str) -> None:
            writer.write(f":scripted.test {line}\r\n".encode())

        try:
            while raw := await reader.readline():
                line = raw.rstrip(b"\r\n").decode()
                self.lines.append(line)
                self.changed.set()
                command, _, rest = line.partition(" ")
                if command == "CAP" and rest.startswith("LS"):
                    negotiating = True
                    send(f"CAP {nick} LS :multi-prefix sasl")
                elif command == "CAP" and rest.startswith("REQ"):
                    send(f"CAP {nick} ACK :sasl")
                elif command == "AUTHENTICATE" and rest == "PLAIN":
                    writer.write(b"AUTHENTICATE +\r\n")
                elif command == "AUTHENTICATE":
                    _authzid, login, password = base64.b64decode(rest).decode().split("\0")
                    if self.sasl_accounts.get(login) == password:
                        account = login
                        self.authenticated.append(login)
                        send(f"900 {nick} {nick}!{user}@localhost {login} :You are now logged in as {login}")
                        send(f"903 {nick} :SASL authentication successful")
                    else:
                        send(f"904 {nick} :SASL authentication failed")
                elif command == "CAP" and rest.startswith("END"):
                    negotiating = False
                elif command == "NICK":
                    nick = rest.lstrip(":")
                elif command == "USER":
                    user = rest.split(" ")[0]
                elif command == "PING":
                    send(f"PONG scripted.test :{rest.lstrip(':')}")
                elif command == "JOIN":
                    channel = rest.split(" ")[0]
                    writer.write(f":{nick}!{user}@localhost JOIN {channel}\r\n".encode())
                elif command == "MODE" and rest.split(" ")[0] in self.channel_modes:
                    channel = rest.split(" ")[0]
                    send(f"324 {nick} {channel} {self.channel_modes[channel]}")
                elif command == "MODE":
                    send(f"324 {nick} {rest.split(' ')[0]} +nt")
                elif command == "QUIT":
                    writer.write(b"ERROR :Closing link\r\n")
                    break
                if not registered and not negotiating and nick != "*" and user:
                    if self.require_sasl and not account:
                        writer.write(b"ERROR :SASL required\r\n")
                        break
                    registered = True
                    send(f"001 {nick} :Welcome {nick}!{user}@localhost")
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            self._clients.discard(writer)
            writer.close()
