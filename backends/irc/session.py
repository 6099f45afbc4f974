"""One IRC connection per account: registration, channels, pacing, delivery receipts.

The ``irc`` library (``irc.client_aio``) parses the protocol and answers the
server's PINGs; this module owns everything a long-running bot needs on top:

* registration with server password, SASL PLAIN or NickServ, alternative nicks and
  regaining the configured nick later;
* lazy, paced JOINs (with keys) and the channel modes that matter to us (``+c``);
* one send pace for the whole connection, because servers count flood per client,
  not per channel;
* a delivery receipt: after the lines of a message we send ``PING <token>`` and
  the message counts as delivered when the matching PONG comes back. Servers
  handle a client's commands in order, so the PONG proves the server processed
  (and relayed) every line before it; a line lost in a dying connection is
  reported as a temporary failure and retried instead of silently vanishing.
  Errors for our target that arrive before the PONG (401 no such nick, 404 cannot
  send to channel) belong to this delivery;
* reconnecting with capped exponential backoff and jitter, then rejoining.

Library exceptions and protocol errors are translated into
:class:`~fedmsg_notify.backend.TemporaryFailure` / ``PermanentFailure`` here.

What the server says (welcome, nick changes, joins, modes, PONGs, errors) is handled by
:class:`~fedmsg_notify.backends.irc.events.SessionEvents`, which :class:`Session` mixes in;
the address and settings are in :mod:`~fedmsg_notify.backends.irc.settings`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import ssl
import time
from collections import Counter
from collections.abc import Coroutine
from typing import Any

from fedmsg_notify.backend import PermanentFailure, TemporaryFailure
from fedmsg_notify.pacing import TokenBucket

from .events import HANDLED_EVENTS, RegistrationFailed, SessionEvents
from .nicks import NickChooser
from .protocol import connection_classes
from .settings import Server, SessionSettings, fold, is_channel

log = logging.getLogger(__name__)

# Server, SessionSettings, fold and is_channel used to live here.
__all__ = ["RegistrationFailed", "Server", "Session", "SessionSettings", "fold", "is_channel"]

# Channel modes that forbid colours: ``+c`` blocks or strips them (solanum,
# InspIRCd, UnrealIRCd), ``+S`` strips them (UnrealIRCd).
NO_COLOUR_MODES = frozenset("cS")


class Session(SessionEvents):
    """The bot's presence on one network; ``deliver`` is what the backend calls."""

    def __init__(self, account_name: str, settings: SessionSettings) -> None:
        self.account_name = account_name
        self.settings = settings
        self.bucket = TokenBucket(settings.rate, settings.burst)
        self.nick = settings.nick
        self.user: str | None = None
        self.host: str | None = None
        self.connects = 0
        self._conn: Any = None
        self._ready = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._side_tasks: set[asyncio.Task[None]] = set()
        self._lost = asyncio.Event()
        self._welcome: asyncio.Future[None] | None = None
        self._next_attempt = 0.0
        self._nicks = NickChooser(settings.nick, settings.alt_nicks)
        self._wanted: dict[str, str] = {fold(ch): ch for ch in settings.channels}
        self._joined: set[str] = set()
        self._joins: dict[str, asyncio.Future[None]] = {}
        self._modes: dict[str, set[str]] = {}
        self._modes_known: dict[str, asyncio.Event] = {}
        self._receipts: dict[str, asyncio.Future[None]] = {}
        self._target_errors: dict[str, list[tuple[str, str]]] = {}
        self._in_flight = Counter[str]()
        self._tokens = itertools.count(1)
        self._last_heard = time.monotonic()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start connecting in the background; deliveries wait for (or fail without) it."""
        reactor_cls, _ = connection_classes()
        self._reactor = reactor_cls(loop=asyncio.get_running_loop())
        for event in HANDLED_EVENTS:
            self._reactor.add_global_handler(event, self._dispatch)
        self._task = asyncio.create_task(self._run(), name=f"irc-{self.account_name}")

    async def close(self) -> None:
        """Let the server drain what we sent, say goodbye, and stop reconnecting."""
        self._closing = True
        if self._ready.is_set():
            # ngircd spins on "Broken pipe" when a client vanishes with lines still
            # queued for it: wait for the receipt of everything sent, then QUIT and let
            # the server close the connection.
            with contextlib.suppress(TemporaryFailure, PermanentFailure):
                await self._receipt(timeout=5.0)
            with contextlib.suppress(Exception):
                self._conn.quit("fedmsg-notify stopping")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._lost.wait(), timeout=3.0)
        if self._conn is not None and self._conn.connected:
            self._conn.disconnect()
        for task in [self._task, *self._side_tasks]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    @property
    def connected(self) -> bool:
        return self._ready.is_set()

    async def _run(self) -> None:
        """Connect, stay connected while it lasts, back off, repeat until closed."""
        failures = 0
        while not self._closing:
            started = time.monotonic()
            try:
                await self._connect_once()
                await self._lost.wait()
                if not self._closing:
                    log.warning("irc %s: connection to %s lost", self.account_name, self.settings.server)
            except (TimeoutError, OSError, ConnectionError, ssl.SSLError, RegistrationFailed) as exc:
                log.warning("irc %s: cannot connect to %s: %s", self.account_name, self.settings.server, exc)
            except Exception:
                # A bug must not end the reconnect loop: the bot would stay silent forever.
                log.exception("irc %s: unexpected error on %s", self.account_name, self.settings.server)
            finally:
                self._on_lost()
            if self._closing:
                return
            # A connection that lived a while resets the backoff; one that dies right
            # after registration (K-line, wrong password) keeps backing off.
            failures = 0 if time.monotonic() - started > 60 else failures + 1
            delay = min(self.settings.reconnect_max, self.settings.reconnect_min * 2 ** max(failures - 1, 0))
            delay *= random.uniform(0.5, 1.0)  # jitter: many bots restarting together spread out
            self._next_attempt = time.monotonic() + delay
            log.info("irc %s: reconnecting in %.1f s", self.account_name, delay)
            await asyncio.sleep(delay)

    async def _connect_once(self) -> None:
        s = self.settings
        self._lost.clear()
        loop = asyncio.get_running_loop()
        self._welcome = loop.create_future()
        self._nicks = NickChooser(s.nick, s.alt_nicks)
        from irc.connection import AioFactory

        kwargs: dict[str, Any] = {}
        if s.server.tls:
            kwargs = {"ssl": self._tls_context(), "server_hostname": s.server.host}
        factory = AioFactory(**kwargs)
        if self._conn is not None:
            self._reactor._remove_connection(self._conn)  # one live connection per session
        self._conn = self._reactor.server()
        self._sasl_ok = False
        await asyncio.wait_for(
            self._conn.connect(
                s.server.host, s.server.port, s.nick, server_password=s.password,
                username=s.username or s.nick, ircname=s.realname, factory=factory,
                sasl_login=s.sasl_username, sasl_password=s.sasl_password,
            ),
            timeout=s.connect_timeout,
        )
        await asyncio.wait_for(asyncio.shield(self._welcome), timeout=s.connect_timeout)
        self.connects += 1
        self._last_heard = time.monotonic()
        log.info("irc %s: registered on %s as %s", self.account_name, s.server, self.nick)
        if s.nickserv_password and not self._sasl_ok:
            # NickServ syntax "IDENTIFY <account> <password>" (Atheme/Anope): works on
            # networks without SASL; the account is the configured nick.
            self._conn.privmsg("NickServ", f"IDENTIFY {s.nick} {s.nickserv_password}")
        self._ready.set()
        self._spawn(self._rejoin())
        self._spawn(self._keepalive())
        if fold(self.nick) != fold(s.nick):
            self._spawn(self._regain())

    def _tls_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.settings.ca_file)
        if not self.settings.verify_tls:
            log.warning("irc %s: TLS certificate verification is OFF for %s", self.account_name, self.settings.server)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def _on_lost(self) -> None:
        """Forget per-connection state; everything in flight fails as temporary."""
        self._ready.clear()
        self._joined.clear()
        self._modes.clear()
        for event in self._modes_known.values():
            event.set()
        self._modes_known.clear()
        failure = TemporaryFailure(f"disconnected from {self.settings.server}", retry_after=self.retry_after())
        for future in [*self._joins.values(), *self._receipts.values()]:
            if not future.done():
                future.set_exception(failure)
                future.exception()  # a failed join nobody awaits any more must not warn
        self._joins.clear()
        self._receipts.clear()
        for task in self._side_tasks:
            task.cancel()
        if self._conn is not None and self._conn.connected:
            self._conn.disconnect()

    def retry_after(self) -> float:
        return max(1.0, self._next_attempt - time.monotonic())

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    # ------------------------------------------------------------------ background

    async def _rejoin(self) -> None:
        """JOIN the configured channels and every channel used before, paced."""
        for channel in list(self._wanted.values()):
            with contextlib.suppress(TemporaryFailure, PermanentFailure):
                await self.join(channel)

    async def _regain(self) -> None:
        """Periodically ask for the configured nick back while an alternative is in use."""
        while fold(self.nick) != fold(self.settings.nick):
            await asyncio.sleep(self.settings.regain_interval)
            await self._try_regain()

    async def _try_regain(self) -> None:
        nicklen = getattr(getattr(self._conn, "features", None), "nicklen", None)
        if isinstance(nicklen, int):
            self._nicks.learn_limit(nicklen)
        if not self._nicks.fits(self.settings.nick):
            return  # longer than this server's NICKLEN: asking again is pointless
        if self._ready.is_set() and fold(self.nick) != fold(self.settings.nick):
            await self.bucket.take()
            self._write("nick", self.settings.nick)

    async def _keepalive(self) -> None:
        """Notice a dead connection (no data for ``keepalive`` s, no PONG) and reconnect."""
        while True:
            await asyncio.sleep(self.settings.keepalive / 3)
            if time.monotonic() - self._last_heard > self.settings.keepalive:
                try:
                    await self._receipt(timeout=self.settings.keepalive / 2)
                except (TemporaryFailure, PermanentFailure):
                    log.warning("irc %s: server stopped answering, reconnecting", self.account_name)
                    self._conn.disconnect("ping timeout")
                    return

    # ------------------------------------------------------------------ delivery

    async def wait_ready(self, timeout: float) -> None:
        """Return once registered; :class:`TemporaryFailure` if not within ``timeout``."""
        if self._ready.is_set():
            return
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._ready.wait(), timeout=timeout)
        if not self._ready.is_set():
            raise TemporaryFailure(f"not connected to {self.settings.server}", retry_after=self.retry_after())

    async def join(self, channel: str) -> None:
        """Be in ``channel`` (JOIN once, paced, with its key) and know its modes."""
        key = fold(channel)
        self._wanted.setdefault(key, channel)
        if key in self._joined:
            return
        future = self._joins.get(key)
        sender = future is None
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self._joins[key] = future
            self._modes_known[key] = asyncio.Event()
            await self.bucket.take()
            if not future.done():
                self._write("join", channel, self.settings.channel_keys.get(key, ""))
        try:
            await asyncio.wait_for(asyncio.shield(future), timeout=self.settings.receipt_timeout)
        except TimeoutError:
            self._joins.pop(key, None)
            raise TemporaryFailure(f"no answer to JOIN {channel}") from None
        except PermanentFailure:
            self._wanted.pop(key, None)
            raise
        if sender:
            # RPL_CHANNELMODEIS tells whether the channel forbids colours (+c).
            await self.bucket.take()
            self._write("mode", channel, "")
        # Colour stripping depends on the modes: wait briefly for RPL_CHANNELMODEIS.
        known = self._modes_known.get(key)
        if known is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(known.wait(), timeout=10.0)

    def colours_allowed(self, target: str) -> bool:
        return not (self._modes.get(fold(target), set()) & NO_COLOUR_MODES)

    def budget(self, command: str, target: str) -> int:
        from .lines import relay_budget

        return relay_budget(command, target, self.nick, self.user, self.host)

    async def deliver(self, command: str, target: str, lines: list[str]) -> None:
        """Send ``lines`` to ``target`` (paced), then wait for the server's receipt."""
        key = fold(target)
        errors = self._target_errors.setdefault(key, [])
        mark = len(errors)
        self._in_flight[key] += 1
        try:
            for line in lines:
                await self.bucket.take()
                self._write(command, target, line)
            await self._receipt(timeout=self.settings.receipt_timeout)
            new = errors[mark:]
        finally:
            self._in_flight[key] -= 1
            if not self._in_flight[key]:
                del self._in_flight[key]
                self._target_errors.pop(key, None)
        for kind, text in new:
            if kind == "cannotsendtochan":
                # Kicked, banned, +m: forget the channel so the next attempt rejoins.
                self._joined.discard(key)
                raise TemporaryFailure(f"cannot send to {target}: {text}")
            raise PermanentFailure(f"{target}: {text}")

    async def _receipt(self, timeout: float) -> None:
        """PING the server and wait for its PONG (see the module docstring)."""
        token = f"fn{next(self._tokens)}"
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._receipts[token] = future
        try:
            self._write("ping", token)
            await asyncio.wait_for(asyncio.shield(future), timeout=timeout)
        except TimeoutError:
            raise TemporaryFailure(f"{self.settings.server} did not confirm within {timeout:.0f} s") from None
        finally:
            self._receipts.pop(token, None)

    def _write(self, command: str, *args: str) -> None:
        """Send one command through the library; a dead transport is a temporary failure."""
        from irc.client import MessageTooLong, ServerNotConnectedError

        if self._conn is None or not self._ready.is_set():
            raise TemporaryFailure(f"not connected to {self.settings.server}", retry_after=self.retry_after())
        try:
            getattr(self._conn, command)(*args)
        except ServerNotConnectedError:
            raise TemporaryFailure(f"not connected to {self.settings.server}", retry_after=self.retry_after()) from None
        except MessageTooLong as exc:
            raise PermanentFailure(f"line too long for IRC: {exc}") from None
