"""The ``irc`` library's asyncio client, adapted for a bot that must never fall over.

``irc.client_aio`` parses the protocol, answers PINGs and dispatches events; these
subclasses add what its asyncio connection lacks or does unsafely: SASL (only the
threaded client has it), no logging of raw outgoing lines (PASS, AUTHENTICATE and
IDENTIFY carry secrets), tolerant decoding and line handling, and a clean
disconnect on a transport that is already gone.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

log = logging.getLogger(__name__)


def connection_classes() -> tuple[type[Any], type[Any]]:
    """The ``irc`` library's asyncio reactor and connection, extended (imported lazily
    so the backend module, and config validation, work without the library)."""
    from irc.client_aio import AioConnection, AioReactor
    from jaraco.stream import buffer

    class Connection(AioConnection):  # type: ignore[misc]  # irc ships no type hints
        # A server may send bytes that are not UTF-8 (old clients' nicks, topics):
        # replace them instead of letting a UnicodeDecodeError kill the connection.
        buffer_class = buffer.LenientDecodingLineBuffer

        async def connect(
            self, server: str, port: int, nickname: str, *, server_password: str | None,
            username: str, ircname: str, factory: Any, sasl_login: str | None, sasl_password: str | None,
        ) -> Connection:
            """AioConnection.connect plus SASL: ``CAP LS`` goes out before NICK/USER so
            the server holds registration until ``CAP END`` (IRCv3 capability
            negotiation); the SASL state machine is the library's own."""
            self.buffer = self.buffer_class()
            self.handlers: dict[str, Any] = {}
            self.real_server_name = ""
            self.real_nickname = nickname
            self.server, self.port, self.server_address = server, port, (server, port)
            self.nickname, self.username, self.ircname = nickname, username, ircname
            # The library's SASL state machine reads the SASL secret from ``password``.
            self.password, self.sasl_login = sasl_password, sasl_login
            protocol = self.protocol_class(self, self.reactor.loop)
            self.transport, self.protocol = await factory(protocol, self.server_address)
            self.connected = True
            if server_password:
                self.pass_(server_password)  # RFC 2812 §3.1.1: PASS before NICK/USER
            if sasl_login and sasl_password:
                self._sasl_step = None
                for event in ("cap", "authenticate", "saslsuccess", "saslfail"):
                    self.add_global_handler(event, self._sasl_state_machine, -42)
                self.cap("LS")
                self._sasl_step = self._sasl_cap_ls
            self.nick(nickname)
            self.user(username, ircname)
            return self

        def process_data(self, new_data: bytes) -> None:
            """Like the library's, but one line it cannot parse (or a handler bug) is
            logged and skipped instead of tearing the connection down."""
            self.buffer.feed(new_data)
            for line in self.buffer:
                if not line:
                    continue
                try:
                    self._process_line(line)
                except Exception:
                    log.exception("irc: cannot handle server line %r", line[:200])

        def send_raw(self, string: str) -> None:
            """Write one line; unlike the library's, never logs it (PASS, AUTHENTICATE and
            IDENTIFY carry secrets) and never raises on a closed transport."""
            if self.transport is None or self.transport.is_closing():
                from irc.client import ServerNotConnectedError

                raise ServerNotConnectedError("not connected")
            self.transport.write(self._prep_message(string))

        def disconnect(self, message: str = "") -> None:
            # The library sends QUIT here even when the transport is already gone.
            try:
                del self.connected
            except AttributeError:
                return
            # The library registers its SASL state machine on the shared reactor and
            # only removes it when SASL finishes: a connection lost mid-SASL must not
            # leave it reacting to the next connection's events.
            for event in ("cap", "authenticate", "saslsuccess", "saslfail"):
                with contextlib.suppress(ValueError, KeyError):
                    self.reactor.remove_global_handler(event, self._sasl_state_machine)
            if self.transport is not None and not self.transport.is_closing():
                with contextlib.suppress(Exception):
                    self.quit(message)
                self.transport.close()
            from irc.client import Event

            self._handle_event(Event("disconnect", self.server, "", [message]))

    class Reactor(AioReactor):  # type: ignore[misc]  # irc ships no type hints
        connection_class = Connection

    return Reactor, Connection
