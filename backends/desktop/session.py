"""The session bus and its notification server: where the bus is, calls with timeouts, open popups.

Also how D-Bus errors read (:func:`_dbus_reason`) and which mean the server refuses a popup.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fedmsg_notify.backend import BackendUnavailable, install_hint
from fedmsg_notify.backends.desktop.settings import URGENCY_LEVELS
from fedmsg_notify.render import sanitize

BUS_NAME = "org.freedesktop.Notifications"
OBJECT_PATH = "/org/freedesktop/Notifications"
INTERFACE = "org.freedesktop.Notifications"
# Seconds a single D-Bus call may take; libdbus' own default (25 s) would eat the
# engine's whole send timeout on a hung notification server.
CALL_TIMEOUT = 5.0
# A popup we never heard closing (a server that does not send NotificationClosed on
# expiry) stops counting against max_open this long after it should have expired, or
# after STALE_AFTER when it has no expiry (server default, never, critical).
EXPIRY_SLACK = 60.0
STALE_AFTER = 3600.0
INSTALL_HINT = install_hint("desktop")


def session_bus_address(environ: Mapping[str, str] | None = None) -> str | None:
    """Where the session bus is: ``$DBUS_SESSION_BUS_ADDRESS``, else the systemd user bus socket."""
    env = os.environ if environ is None else environ
    address = env.get("DBUS_SESSION_BUS_ADDRESS", "").strip()
    if address:
        return address
    runtime = env.get("XDG_RUNTIME_DIR", "").strip()
    return f"unix:path={runtime}/bus" if runtime else None


@dataclass(slots=True)
class _Open:
    key: str | None
    link: str | None
    stale_at: float


@dataclass(slots=True)
class _Session:
    """A private connection to one session bus and what is shown through it."""

    address: str
    connection: Any  # dbus.bus.BusConnection
    interface: Any
    caps: frozenset[str]
    # The server's unique bus name: popups belong to it, and a new owner forgot them.
    owner: str = ""
    open: dict[int, _Open] = field(default_factory=dict)
    by_key: dict[str, int] = field(default_factory=dict)
    overflow_id: int = 0
    overflow: list[tuple[str, str, int]] = field(default_factory=list)
    overflow_urgency: int = 0
    alive: bool = True

    def forget(self, nid: int) -> None:
        entry = self.open.pop(nid, None)
        if entry is not None and entry.key is not None and self.by_key.get(entry.key) == nid:
            del self.by_key[entry.key]
        if nid == self.overflow_id:
            self.overflow_id = 0
            self.overflow.clear()
            self.overflow_urgency = 0

    def prune(self, now: float) -> None:
        for nid in [nid for nid, entry in self.open.items() if entry.stale_at <= now]:
            self.forget(nid)

    def regular_open(self) -> int:
        return len(self.open) - (1 if self.overflow_id in self.open else 0)


# Errors by which a server refuses a popup itself (rather than being away or busy).
REJECTED = frozenset({
    "org.freedesktop.DBus.Error.InvalidArgs",
    "org.freedesktop.DBus.Error.UnknownMethod",
    "org.freedesktop.DBus.Error.NotSupported",
})
# The notification spec's method signatures. Given explicitly, dbus-python needs no
# introspection round trip and never guesses a wrong type (e.g. for the hints dict).
SIGNATURES: Mapping[str, str] = {
    "Notify": "susssasa{sv}i",
    "GetCapabilities": "",
    "CloseNotification": "u",
    "GetServerInformation": "",
}


class _TimedInterface:
    """notify2 calls the interface without a timeout or signature; this one adds both to every call."""

    def __init__(self, interface: Any, timeout: float) -> None:
        self._interface = interface
        self._timeout = timeout

    def __getattr__(self, name: str) -> Any:
        return functools.partial(getattr(self._interface, name), timeout=self._timeout, signature=SIGNATURES[name])


def _imports() -> tuple[Any, Any]:
    try:
        import dbus
        import dbus.bus
        import dbus.mainloop.glib
        import notify2
    except ImportError as exc:
        raise BackendUnavailable(
            f"the desktop backend needs notify2 and dbus-python ({exc.name} is missing): {INSTALL_HINT}"
        ) from exc
    return dbus, notify2


def _stale_at(expire_ms: int, urgency: int) -> float:
    now = time.monotonic()
    if expire_ms > 0 and urgency < URGENCY_LEVELS["critical"]:
        return now + expire_ms / 1000 + EXPIRY_SLACK
    return now + STALE_AFTER


def _dbus_reason(exc: Exception) -> str:
    """A D-Bus error as one short line: its message, else its name."""
    message = getattr(exc, "get_dbus_message", lambda: None)() or str(exc)
    return sanitize.one_line(sanitize.plain_text(str(message)))[:300]
