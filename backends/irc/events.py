"""A session's reactions to what the server says: welcome, nicks, joins, modes, receipts, errors.

JOIN refusals are told apart here: those no retry can fix fail the delivery for good.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from fedmsg_notify.backend import PermanentFailure, TemporaryFailure

from .nicks import NickChooser
from .settings import SessionSettings, fold

log = logging.getLogger(__name__)

# JOIN replies that no retry can fix (wrong key, banned, no such channel, bad name):
# the delivery fails permanently and ``status`` shows why. Full or invite-only
# channels, or a missing account registration, may change: those are temporary.
JOIN_PERMANENT = {
    "badchannelkey": "wrong channel key",
    "bannedfromchan": "banned from the channel",
    "nosuchchannel": "no such channel",
    "badchanmask": "invalid channel name",
}
JOIN_TEMPORARY = {
    "channelisfull": "channel is full",
    "inviteonlychan": "channel is invite-only",
    "toomanychannels": "joined too many channels",
    "needreggednick": "channel needs a registered nick",
    "nochanmodes": "channel needs a registered nick",
    "unavailresource": "channel temporarily unavailable",
}
# Every event a session handles (see ``SessionEvents._dispatch``).
HANDLED_EVENTS = (
    "welcome", "nicknameinuse", "erroneusnickname", "nickcollision", "unavailresource", "join", "part",
    "kick", "nick", "quit", "mode", "channelmodeis", "pong", "disconnect", "error", "passwdmismatch",
    "yourebannedcreep", "login_failed", "saslsuccess", "nosuchnick", "cannotsendtochan", "nosuchchannel",
    "396", *JOIN_PERMANENT, *JOIN_TEMPORARY, "all_raw_messages",
)


class SessionEvents:
    """The ``irc`` library's events, as they change a session's state.

    Mixed into :class:`~fedmsg_notify.backends.irc.session.Session`, which owns the
    state declared below (set in its ``__init__``) and the background tasks the
    handlers start. Handlers run in the event loop, called by the library's reactor.
    """

    account_name: str
    settings: SessionSettings
    nick: str
    user: str | None
    host: str | None
    _conn: Any
    _ready: asyncio.Event
    _closing: bool
    _lost: asyncio.Event
    _welcome: asyncio.Future[None] | None
    _nicks: NickChooser
    _joined: set[str]
    _joins: dict[str, asyncio.Future[None]]
    _modes: dict[str, set[str]]
    _modes_known: dict[str, asyncio.Event]
    _receipts: dict[str, asyncio.Future[None]]
    _target_errors: dict[str, list[tuple[str, str]]]
    _last_heard: float

    if TYPE_CHECKING:

        def _spawn(self, coro: Coroutine[Any, Any, None]) -> None: ...

        async def _try_regain(self) -> None: ...

    _sasl_ok = False

    def _dispatch(self, connection: Any, event: Any) -> None:
        """Route a library event to ``_on_<type>``; a bug in a handler must not kill
        the connection (the library would let it escape into ``data_received``)."""
        if connection is not self._conn:
            return
        handler = getattr(self, f"_on_{event.type}", None)
        if handler is None:
            kind = event.type
            if kind in JOIN_PERMANENT or kind in JOIN_TEMPORARY:
                handler = self._on_join_error
            elif kind in ("nicknameinuse", "erroneusnickname", "nickcollision", "unavailresource"):
                handler = self._on_nick_refused
            elif kind in ("nosuchnick", "nosuchchannel", "cannotsendtochan"):
                handler = self._on_target_error
            elif kind in ("yourebannedcreep", "error"):
                handler = self._on_server_error
            else:
                return
        try:
            handler(event)
        except Exception:
            log.exception("irc %s: error handling %s", self.account_name, event.type)

    def _on_all_raw_messages(self, event: Any) -> None:
        self._last_heard = time.monotonic()

    def _on_welcome(self, event: Any) -> None:
        self.nick = event.target or self.nick
        if self._welcome is not None and not self._welcome.done():
            self._welcome.set_result(None)

    def _on_saslsuccess(self, event: Any) -> None:
        self._sasl_ok = True
        log.info("irc %s: SASL authentication succeeded", self.account_name)

    def _on_login_failed(self, event: Any) -> None:
        reason = " ".join(event.arguments[-1:]) or "refused"
        log.error("irc %s: SASL authentication failed: %s; continuing unauthenticated", self.account_name, reason)

    def _on_passwdmismatch(self, event: Any) -> None:
        self._fail_registration("the server refused the password (password_file)")

    def _on_server_error(self, event: Any) -> None:
        reason = " ".join(str(a) for a in [event.target, *event.arguments] if a)
        # ERROR is also the server's goodbye after our own QUIT.
        level = logging.INFO if self._closing else logging.WARNING
        log.log(level, "irc %s: server says: %s", self.account_name, reason)
        if self._welcome is not None and not self._welcome.done():
            self._fail_registration(reason)

    def _fail_registration(self, reason: str) -> None:
        if self._welcome is not None and not self._welcome.done():
            self._welcome.set_exception(RegistrationFailed(reason))
            self._welcome.exception()

    def _on_nick_refused(self, event: Any) -> None:
        if self._ready.is_set():
            return  # a regain attempt failed; keep the alternative nick and try later
        candidate = self._nicks.refused(self.nick, erroneous=event.type == "erroneusnickname")
        if candidate is None:
            self._fail_registration("every nick is taken")
            return
        log.info("irc %s: nick %s unavailable (%s), trying %s", self.account_name,
                 event.arguments[0] if event.arguments else "?", event.type, candidate)
        self.nick = candidate
        self._conn.nick(candidate)

    def _on_nick(self, event: Any) -> None:
        old, new = event.source.nick, event.target
        if fold(old) == fold(self.nick):
            self.nick = new
            log.info("irc %s: now known as %s", self.account_name, new)
        elif fold(old) == fold(self.settings.nick) and self._ready.is_set():
            self._spawn(self._try_regain())  # whoever held our nick just dropped it

    def _on_quit(self, event: Any) -> None:
        if fold(event.source.nick) == fold(self.settings.nick) and fold(self.nick) != fold(self.settings.nick):
            self._spawn(self._try_regain())

    def _on_join(self, event: Any) -> None:
        if fold(event.source.nick) != fold(self.nick):
            return
        key = fold(event.target)
        # Our own JOIN echo shows the user@host others see in front of our lines.
        self.user, self.host = event.source.user, event.source.host
        self._joined.add(key)
        self._modes.setdefault(key, set())
        self._modes_known.setdefault(key, asyncio.Event())
        future = self._joins.pop(key, None)
        if future is not None and not future.done():
            future.set_result(None)

    def _on_join_error(self, event: Any) -> None:
        if event.type == "unavailresource" and not self._ready.is_set():
            self._on_nick_refused(event)  # 437 during registration: the nick is held
            return
        channel = event.arguments[0] if event.arguments else ""
        key = fold(channel)
        future = self._joins.pop(key, None)
        text = JOIN_PERMANENT.get(event.type) or JOIN_TEMPORARY.get(event.type, event.type)
        log.warning("irc %s: cannot join %s: %s", self.account_name, channel, text)
        if future is not None and not future.done():
            error_cls = PermanentFailure if event.type in JOIN_PERMANENT else TemporaryFailure
            future.set_exception(error_cls(f"cannot join {channel}: {text}"))
            future.exception()
        elif event.type in ("nosuchchannel",):
            self._on_target_error(event)

    def _on_part(self, event: Any) -> None:
        if fold(event.source.nick) == fold(self.nick):
            self._joined.discard(fold(event.target))

    def _on_kick(self, event: Any) -> None:
        if event.arguments and fold(event.arguments[0]) == fold(self.nick):
            log.warning("irc %s: kicked from %s: %s", self.account_name, event.target, " ".join(event.arguments[1:]))
            self._joined.discard(fold(event.target))

    def _on_channelmodeis(self, event: Any) -> None:
        channel, *modes = event.arguments
        self._apply_modes(channel, " ".join(modes))
        known = self._modes_known.get(fold(channel))
        if known is not None:
            known.set()

    def _on_mode(self, event: Any) -> None:
        self._apply_modes(event.target, " ".join(event.arguments))

    def _apply_modes(self, channel: str, text: str) -> None:
        from irc.modes import parse_channel_modes

        flags = self._modes.setdefault(fold(channel), set())
        for sign, mode, _param in parse_channel_modes(text):
            if sign == "+":
                flags.add(mode)
            else:
                flags.discard(mode)

    def _on_396(self, event: Any) -> None:
        # RPL_HOSTHIDDEN: the network gave us a cloak; lines now carry that host.
        if event.arguments:
            self.host = event.arguments[0].rpartition("@")[2] or self.host

    def _on_target_error(self, event: Any) -> None:
        target = event.arguments[0] if event.arguments else ""
        text = event.arguments[-1] if len(event.arguments) > 1 else event.type
        errors = self._target_errors.get(fold(target))
        if errors is not None:
            errors.append((event.type, text))

    def _on_pong(self, event: Any) -> None:
        token = event.arguments[0] if event.arguments else event.target
        future = self._receipts.get(token)
        if future is not None and not future.done():
            future.set_result(None)

    def _on_disconnect(self, event: Any) -> None:
        self._lost.set()
        if self._welcome is not None and not self._welcome.done():
            self._fail_registration("the server closed the connection")


class RegistrationFailed(Exception):
    """The server ended the connection before welcoming us (password, ban, no nick)."""
