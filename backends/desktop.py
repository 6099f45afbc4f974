"""The desktop backend: libnotify popups on a developer's own machine, over the session D-Bus.

What a user sees, and what keeps it pleasant:

* **A popup per thing that concerns them**, from the ``desktop`` templates: a one-line
  ``summary`` and a ``body``, an icon for the service, the destination's urgency
  (``low``/``normal``/``critical``) and expiry, and an "Open" action that opens the
  message's link in the browser when the notification server supports actions.
* **Never a wall of them.** At most ``max_open`` popups are open at once (the old
  fedmsg-notify stopped at 100 because shells choke); past that, one "N new koji
  messages" popup is kept up to date instead. A flood the account's pace cannot show
  in time is merged by the engine through :meth:`DesktopBackend.summarise` into one
  such popup. A newer message about an object that still has a popup open (the same
  update, the same build: the same link) replaces that popup instead of stacking.
* **Nothing lost while logged out.** Without a session bus or a notification server,
  ``send`` raises :class:`TemporaryFailure` saying which: the delivery stays queued in
  the outbox (``fedmsg-notify status`` shows it) and the engine retries it with its
  backoff; the first retry after the session is back shows it, once.

Text is text: templates render plain text, and the backend escapes ``& < >`` for
servers that parse the body as markup (capability ``body-markup``), so a ``<b>`` in
a commit message shows as written instead of being interpreted; servers without it
get the plain text unchanged (they display it literally). The only markup ever sent
is our own link, for servers advertising ``body-hyperlinks`` but no actions.

Threading: ``notify2`` and ``dbus-python`` are synchronous. Every D-Bus object lives on
one helper thread (:class:`_DBusThread`) that also runs GLib's main context, so the
``NotificationClosed``/``ActionInvoked`` signals and a bus going away are seen; the
event loop only awaits futures from it. The connection is private (never libdbus'
shared session connection, which cannot be re-made after the bus restarts) and goes
to ``$DBUS_SESSION_BUS_ADDRESS``, else ``unix:path=$XDG_RUNTIME_DIR/bus`` (what a
systemd user service has).

Configuration (``~/.config/fedmsg-notify/config.yaml``; the per-user unit
``fedmsg-notify-user.service`` runs it)::

    accounts:
      desktop:
        backend: desktop
        max_open: 100          # popups open at once; the last slot is the "N new messages" one
        expire_ms: -1          # -1: the server's default, 0: until dismissed
        app_name: fedmsg-notify
        icons: {bodhi: /home/me/.local/share/icons/bodhi.png}   # or an icon-theme name
        open_with: [firefox, --new-tab]                         # default: xdg-open, else gio open
    # in a rule file:
    deliver:
      - {via: desktop, urgency: critical, expire_ms: 0}
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import functools
import html
import logging
import os
import queue
import re
import shutil
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar
from urllib.parse import urlsplit

from fedmsg_notify.backend import (
    AccountOptions,
    Backend,
    BackendUnavailable,
    Item,
    PermanentFailure,
    TemporaryFailure,
    install_hint,
    missing_modules,
)
from fedmsg_notify.config.validation import StrictModel
from fedmsg_notify.render import sanitize
from pydantic import Field, ValidationError, field_validator

log = logging.getLogger(__name__)

T = TypeVar("T")

Urgency = Literal["low", "normal", "critical"]
# The notification spec's urgency hint values (a byte).
URGENCY_LEVELS: Mapping[str, int] = {"low": 0, "normal": 1, "critical": 2}

BUS_NAME = "org.freedesktop.Notifications"
OBJECT_PATH = "/org/freedesktop/Notifications"
INTERFACE = "org.freedesktop.Notifications"
# Seconds a single D-Bus call may take; libdbus' own default (25 s) would eat the
# engine's whole send timeout on a hung notification server.
CALL_TIMEOUT = 5.0
# Popup text limits: shells truncate the summary to one line anyway, and a 1 MB
# comment from the bus must not reach the shell at all.
MAX_SUMMARY = 200
MAX_BODY = 1000
# Lines listed in a "23 new koji messages" popup before "…and 18 more".
SUMMARY_LINES = 5
# A popup we never heard closing (a server that does not send NotificationClosed on
# expiry) stops counting against max_open this long after it should have expired, or
# after STALE_AFTER when it has no expiry (server default, never, critical).
EXPIRY_SLACK = 60.0
STALE_AFTER = 3600.0
# Service names as the bus spells them versus as people know them.
SERVICE_NAMES: Mapping[str, str] = {"buildsys": "koji", "fedora_elections": "elections", "fedbadges": "badges"}

# The shipped icons (package data of fedmsg_notify.data; resolved at import, not per popup).
ICONS_DIR = Path(str(resources.files("fedmsg_notify.data"))) / "icons"
APP_ICON = "fedmsg-notify.svg"
GENERIC_ICON = "dialog-information"
# fedmsg.meta's icons are URLs, which notification servers do not load. The service
# icon's file name picks a freedesktop icon-naming-spec name instead (present in every
# icon theme); unknown ones get the shipped fedmsg-notify icon.
ICON_NAMES: Mapping[str, str] = {
    "abrt": "dialog-warning",
    "anitya": "software-update-available",
    "askbot": "dialog-question",
    "badges": "emblem-favorite",
    "bodhi": "system-software-update",
    "bugzilla": "dialog-warning",
    "copr": "applications-development",
    "downloads": "folder-download",
    "elections": "emblem-default",
    "fedocal": "x-office-calendar",
    "git-logo": "applications-development",
    "github": "applications-development",
    "hotness": "software-update-available",
    "jenkins": "applications-engineering",
    "koji": "applications-engineering",
    "koschei": "applications-engineering",
    "mailman": "mail-message-new",
    "mediawiki": "accessories-text-editor",
    "meetbot": "user-available",
    "nagios": "network-server",
    "openqa": "applications-engineering",
    "pagure": "applications-development",
    "pungi": "media-optical",
    "taskotron": "applications-engineering",
    "zabbix": "network-server",
}
# An icon-theme name: what the icon naming spec allows (lowercase words joined by "-").
ICON_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}$")
INSTALL_HINT = install_hint("desktop")


# --- configuration --------------------------------------------------------------------


class DesktopAccount(AccountOptions):
    """``accounts.<name>`` for ``backend: desktop``."""

    # Shown by the notification server as the sender of every popup.
    app_name: str = Field(default="fedmsg-notify", min_length=1, max_length=64)
    # One slot is kept for the "N new messages" popup, hence at least 2.
    max_open: int = Field(default=100, ge=2, le=10_000, description="popups open at once")
    expire_ms: int = Field(default=-1, ge=-1, description="popup lifetime in ms; -1 server default, 0 never")
    # service → icon-theme name or absolute image file, overriding the built-in choice.
    icons: dict[str, str] = Field(default_factory=dict)
    # The command that opens a link for the "Open" action; default xdg-open, else gio open.
    open_with: list[str] | None = Field(default=None, min_length=1)

    @field_validator("icons")
    @classmethod
    def _icons(cls, value: dict[str, str]) -> dict[str, str]:
        for service, icon in value.items():
            if not (ICON_NAME_RE.match(icon) or Path(icon).expanduser().is_absolute()):
                raise ValueError(f"icon '{icon}' for '{service}' must be an icon name or an absolute file path")
        return {service: _icon_setting(icon) for service, icon in value.items()}


class DesktopOptions(StrictModel):
    """Per-destination options in a rule: ``{via: desktop, urgency: critical, expire_ms: 0}``."""

    urgency: Urgency = "normal"
    expire_ms: int | None = Field(default=None, ge=-1)


def _icon_setting(icon: str) -> str:
    path = Path(icon).expanduser()
    return path.as_uri() if path.is_absolute() else icon


def session_bus_address(environ: Mapping[str, str] | None = None) -> str | None:
    """Where the session bus is: ``$DBUS_SESSION_BUS_ADDRESS``, else the systemd user bus socket."""
    env = os.environ if environ is None else environ
    address = env.get("DBUS_SESSION_BUS_ADDRESS", "").strip()
    if address:
        return address
    runtime = env.get("XDG_RUNTIME_DIR", "").strip()
    return f"unix:path={runtime}/bus" if runtime else None


# --- what a popup shows (pure, built on the event loop) ----------------------------------


@dataclass(frozen=True, slots=True)
class Popup:
    """One notification, before the server's capabilities decide its final form."""

    summary: str
    body: str
    icon: str
    urgency: int
    expire_ms: int
    # Opened by the "Open" action; http(s) only.
    link: str | None = None
    # Popups with the same key replace each other while open (the same update or build).
    key: str | None = None
    # The short line and the service label this popup adds to an "N new messages" popup.
    line: str = ""
    label: str = ""
    count: int = 1


def service_label(service: str) -> str:
    return SERVICE_NAMES.get(service, service)


def web_link(value: Any) -> str | None:
    """``value`` if it is an http(s) URL; a ``javascript:`` or ``file:`` link from the bus is never opened.

    Spaces, controls (NUL) and other unprintable characters make it no link at all:
    it is passed to a browser and, for some servers, written into the popup's markup.
    """
    if not isinstance(value, str) or not value or not value.isprintable() or " " in value:
        return None
    try:
        parts = urlsplit(value)
    except ValueError:
        return None
    return value if parts.scheme in ("http", "https") and parts.netloc else None


def popup_icon(meta_icon: Any, service: str, overrides: Mapping[str, str] | None = None) -> str:
    """An icon a notification server can load: an icon-theme name or a ``file://`` URI.

    Servers only take theme names and local files (spec: "file:// is the only URI
    scheme supported"); fedmsg.meta's ``https://…/koji.png`` is mapped to a theme name
    by its file name, and anything unknown gets the shipped fedmsg-notify icon.
    """
    if overrides and service in overrides:
        return overrides[service]
    if isinstance(meta_icon, str) and meta_icon:
        if meta_icon.startswith("file://"):
            return meta_icon
        if meta_icon.startswith("/"):
            return Path(meta_icon).as_uri()
        if ICON_NAME_RE.match(meta_icon):
            return meta_icon
        stem = Path(urlsplit(meta_icon).path).stem
        if stem in ICON_NAMES:
            return ICON_NAMES[stem]
    if service_label(service) in ICON_NAMES:
        return ICON_NAMES[service_label(service)]
    shipped = ICONS_DIR / APP_ICON
    return shipped.as_uri() if shipped.exists() else GENERIC_ICON


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def build_popup(item: Item, account: DesktopAccount) -> Popup:
    """The popup for ``item``: rendered text, the destination's urgency and expiry, icon, link, object key."""
    try:
        options = DesktopOptions.model_validate(dict(item.options)) if item.options else DesktopOptions()
    except ValidationError as exc:
        # Options stored with the delivery by an older configuration: show it plainly
        # rather than retry a popup that can never become valid.
        log.warning("%s: ignoring invalid popup options %s: %s", item.destination, dict(item.options),
                    exc.errors()[0].get("msg", exc))
        options = DesktopOptions()
    meta = item.meta or {}
    summary = _cut(sanitize.one_line(sanitize.plain_text(item.rendered.get("summary", ""))), MAX_SUMMARY)
    body = _cut(sanitize.plain_text(item.rendered.get("body", "")).strip(), MAX_BODY)
    label = service_label(item.service)
    if not summary:
        # A template without a summary block still must not show an empty popup.
        summary, body = _cut(sanitize.one_line(body), MAX_SUMMARY) or f"{label}: {item.topic}", ""
    link = web_link(meta.get("link"))
    return Popup(
        summary=summary,
        body=body,
        icon=popup_icon(meta.get("icon"), item.service, account.icons),
        urgency=URGENCY_LEVELS[options.urgency],
        expire_ms=options.expire_ms if options.expire_ms is not None else account.expire_ms,
        link=link,
        # Summaries of a flood (count > 1) stand for many objects: they never replace.
        key=f"{item.service} {link}" if link and item.count == 1 else None,
        line=summary,
        label=label,
        count=item.count,
    )


def flood_parts(entries: Sequence[tuple[str, str, int]]) -> dict[str, str]:
    """The "23 new koji messages" popup for ``(label, line, count)`` entries, oldest first."""
    total = sum(count for _, _, count in entries)
    per_label = Counter[str]()
    for label, _, count in entries:
        per_label[label] += count
    if len(per_label) == 1:
        summary = f"{total} new {next(iter(per_label))} message{'s' if total != 1 else ''}"
    else:
        detail = ", ".join(f"{label} {count}" for label, count in per_label.most_common())
        summary = f"{total} new messages ({detail})"
    # The newest first: that is what the user missed most recently.
    recent = [(line, count) for _, line, count in reversed(entries) if line][:SUMMARY_LINES]
    lines = [f"• {_cut(line, 120)}" for line, _ in recent]
    # A listed line may itself stand for several messages (an earlier summary).
    shown = sum(count for _, count in recent)
    if total > shown:
        lines.append(f"…and {total - shown} more")
    return {"summary": summary, "body": "\n".join(lines)}


def body_for_server(popup: Popup, caps: frozenset[str]) -> str:
    """The body as this server must receive it: escaped for markup servers, plain otherwise.

    Without actions the link goes into the body, clickable where the server
    advertises ``body-hyperlinks``, so it can still be reached.
    """
    markup = "body-markup" in caps
    body = html.escape(popup.body, quote=False) if markup else popup.body
    if popup.link and "actions" not in caps and popup.link not in popup.body:
        if markup and "body-hyperlinks" in caps:
            link = f'<a href="{html.escape(popup.link, quote=True)}">{html.escape(popup.link, quote=False)}</a>'
        else:
            link = html.escape(popup.link, quote=False) if markup else popup.link
        body = f"{body}\n{link}" if body else link
    return body


# --- the helper thread -------------------------------------------------------------------


class _DBusThread:
    """One thread owning every D-Bus object and running GLib's default main context.

    dbus-python delivers signals through GLib; nothing else in the daemon uses GLib,
    so this thread iterates the default context (via ctypes, like python-dbusmock
    does) and runs submitted jobs in between. ``g_main_context_wakeup`` interrupts a
    blocking iteration when a job arrives; GLib keeps the wakeup pending if nobody is
    polling yet, so none is lost. notify2 keeps its connection in module globals, so
    all desktop accounts share this one thread and never race on them.
    """

    _instance: ClassVar[_DBusThread | None] = None
    _guard: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self) -> None:
        try:
            glib = ctypes.CDLL("libglib-2.0.so.0")
        except OSError as exc:  # dbus-python's GLib main loop links it, so this is rare
            raise BackendUnavailable(f"the desktop backend needs GLib (libglib-2.0.so.0): {exc}") from exc
        self._iterate = glib.g_main_context_iteration
        self._iterate.argtypes = [ctypes.c_void_p, ctypes.c_int]
        self._iterate.restype = ctypes.c_int
        self._wakeup = glib.g_main_context_wakeup
        self._wakeup.argtypes = [ctypes.c_void_p]
        self._wakeup.restype = None
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], concurrent.futures.Future[Any]] | None] = (
            queue.SimpleQueue()
        )
        self.users = 0
        self._thread = threading.Thread(target=self._run, name="desktop-dbus", daemon=True)
        self._thread.start()

    @classmethod
    def acquire(cls) -> _DBusThread:
        with cls._guard:
            if cls._instance is None:
                cls._instance = cls()
            cls._instance.users += 1
            return cls._instance

    def release(self) -> None:
        with _DBusThread._guard:
            self.users -= 1
            if self.users > 0:
                return
            _DBusThread._instance = None
        self._jobs.put(None)
        self._wakeup(None)
        self._thread.join(timeout=5)

    async def call(self, function: Callable[[], T]) -> T:
        """Run ``function`` on the thread and await its result without blocking the loop."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._jobs.put((function, future))
        self._wakeup(None)
        return await asyncio.wrap_future(future)

    def dispatch_pending(self) -> None:
        """Handle signals that already arrived (popups closed meanwhile) before deciding anything.

        Only from a job on this thread, which owns the context; bounded, in case a
        flood of signals keeps arriving.
        """
        for _ in range(1000):
            if not self._iterate(None, 0):
                return

    def _run(self) -> None:
        while True:
            while True:
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    return
                function, future = job
                if not future.set_running_or_notify_cancel():
                    continue
                try:
                    future.set_result(function())
                except BaseException as exc:  # handed to the awaiting coroutine
                    future.set_exception(exc)
            # Blocks until a D-Bus message, a timeout source or a wakeup.
            self._iterate(None, 1)


# --- the session: connection, capabilities, open popups (helper thread only) -------------


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


# --- the backend -------------------------------------------------------------------------


class DesktopBackend(Backend):
    name: ClassVar[str] = "desktop"
    connection_bound: ClassVar[bool] = True
    parts: ClassVar[tuple[str, ...]] = ("summary", "body")
    line_parts: ClassVar[frozenset[str]] = frozenset({"summary"})
    # A burst of 4 popups, then one per 10 s: a backlog of more than a minute of that
    # (the engine's horizon) becomes one "N new messages" popup instead of a wall.
    rate: ClassVar[float] = 0.1
    burst: ClassVar[int] = 4
    needs_recipient: ClassVar[bool] = False
    # Asking the local session bus again is cheap; after a login the queued popups
    # should appear within half a minute, not after a 15-minute backoff.
    retry_cap: ClassVar[float | None] = 30.0
    extra: ClassVar[str | None] = "desktop"
    Account: ClassVar[type[AccountOptions]] = DesktopAccount
    Options: ClassVar[type[StrictModel]] = DesktopOptions

    @classmethod
    def missing_libraries(cls, account: AccountOptions) -> list[str]:
        return missing_modules("notify2", "dbus")

    def __init__(self, account_name: str, account: AccountOptions) -> None:
        super().__init__(account_name, account)
        assert isinstance(account, DesktopAccount)
        self.settings: DesktopAccount = account
        self._thread: _DBusThread | None = None
        self._session: _Session | None = None
        # Process ids of openers started by the "Open" action, reaped as they finish.
        self._openers: list[int] = []

    # -- lifecycle --

    async def start(self) -> None:
        _imports()
        if self._thread is None:
            self._thread = _DBusThread.acquire()
        await self._thread.call(self._connect)

    async def close(self) -> None:
        if self._thread is None:
            return
        await self._thread.call(self._disconnect)
        thread, self._thread = self._thread, None
        await asyncio.to_thread(thread.release)
        self._reap()

    # -- sending --

    async def send(self, item: Item) -> None:
        if self._thread is None:
            await self.start()
        assert self._thread is not None
        popup = build_popup(item, self.settings)
        shown = await self._thread.call(functools.partial(self._show, popup))
        log.debug("%s: %s %s as popup %d", self.account_name, shown[0], item.msg_id, shown[1])

    def summarise(self, items: Sequence[Item]) -> dict[str, str]:
        """One popup for a backlog: "23 new koji messages" and the latest few lines."""
        entries = [(service_label(item.service), _item_line(item), item.count) for item in items]
        return sanitize.finish_parts(flood_parts(entries), line_parts=self.line_parts)

    # -- on the helper thread --

    def _connect(self) -> _Session:
        """Open a private connection and find a notification server; TemporaryFailure if there is none."""
        if self._session is not None and self._session.alive:
            return self._session
        dbus, _notify2 = _imports()
        address = session_bus_address()
        if address is None:
            raise TemporaryFailure(
                "no D-Bus session bus: neither DBUS_SESSION_BUS_ADDRESS nor XDG_RUNTIME_DIR is set"
                " (is the user logged in?)"
            )
        try:
            connection = dbus.bus.BusConnection(address, mainloop=dbus.mainloop.glib.DBusGMainLoop())
        except dbus.DBusException as exc:
            raise TemporaryFailure(f"no D-Bus session bus at {address}: {_dbus_reason(exc)}") from None
        try:
            owner = str(connection.get_name_owner(BUS_NAME)) if connection.name_has_owner(BUS_NAME) else ""
            # A server that D-Bus starts on demand (a .service file) counts as present.
            if not owner and BUS_NAME not in connection.list_activatable_names():
                raise TemporaryFailure(f"no notification server on the session bus at {address} ({BUS_NAME})")
            # Addressed by the well-known name (not the current owner), so a restarted or
            # D-Bus-activated server is reached too; no introspection round trip.
            proxy = connection.get_object(BUS_NAME, OBJECT_PATH, introspect=False, follow_name_owner_changes=True)
            interface = _TimedInterface(dbus.Interface(proxy, dbus_interface=INTERFACE), CALL_TIMEOUT)
            caps = frozenset(str(cap) for cap in interface.GetCapabilities())
        except dbus.DBusException as exc:
            connection.close()
            name = str(exc.get_dbus_name() or "")
            if name.startswith("org.freedesktop.DBus.Error.Spawn.") or name.endswith(".Error.ServiceUnknown"):
                # A .service file exists but the server it names could not start (no display, say).
                raise TemporaryFailure(
                    f"no notification server on the session bus at {address} ({BUS_NAME} could not be started:"
                    f" {_dbus_reason(exc)})"
                ) from None
            raise TemporaryFailure(f"notification server on {address} did not answer: {_dbus_reason(exc)}") from None
        except TemporaryFailure:
            connection.close()
            raise
        session = _Session(address, connection, interface, caps, str(owner))
        # Only the notification server's own signals count (dbus-python follows its owner).
        connection.add_signal_receiver(
            functools.partial(self._closed, session), "NotificationClosed", INTERFACE, BUS_NAME, OBJECT_PATH
        )
        connection.add_signal_receiver(
            functools.partial(self._action, session), "ActionInvoked", INTERFACE, BUS_NAME, OBJECT_PATH
        )
        connection.add_signal_receiver(
            functools.partial(self._lost, session, "the session bus went away"),
            "Disconnected",
            "org.freedesktop.DBus.Local",
            None,
            "/org/freedesktop/DBus/Local",
        )
        connection.watch_name_owner(BUS_NAME, functools.partial(self._owner_changed, session))
        self._session = session
        log.info("%s: notification server on %s (capabilities: %s)", self.account_name, address,
                 " ".join(sorted(caps)) or "none")
        return session

    def _disconnect(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            session.alive = False
            session.connection.close()

    def _show(self, popup: Popup) -> tuple[str, int]:
        if self._thread is not None:
            self._thread.dispatch_pending()
        session = self._connect()
        session.prune(time.monotonic())
        replaces = session.by_key.get(popup.key, 0) if popup.key else 0
        if not replaces and session.regular_open() >= self.settings.max_open - 1:
            return self._show_overflow(session, popup)
        nid = self._notify(session, popup, replaces, with_action=True)
        if replaces and nid != replaces:
            # The server made a new popup instead of replacing (the old one is gone or stays).
            session.forget(replaces)
        session.open[nid] = _Open(popup.key, popup.link, _stale_at(popup.expire_ms, popup.urgency))
        if popup.key:
            session.by_key[popup.key] = nid
        return ("replaced" if replaces and nid == replaces else "shown", nid)

    def _show_overflow(self, session: _Session, popup: Popup) -> tuple[str, int]:
        """At the cap: fold ``popup`` into the one "N new messages" popup (replaced in place)."""
        session.overflow.append((popup.label, popup.line, popup.count))
        # Memory stays bounded however long the user leaves the popup open: older entries
        # keep only their count per service.
        if len(session.overflow) > 4 * SUMMARY_LINES:
            merged = Counter[str]()
            for label, _, count in session.overflow[:-SUMMARY_LINES]:
                merged[label] += count
            recent = session.overflow[-SUMMARY_LINES:]
            session.overflow[:] = [(label, "", count) for label, count in merged.items()] + recent
        session.overflow_urgency = max(session.overflow_urgency, popup.urgency)
        parts = flood_parts(session.overflow)
        summary = Popup(
            summary=parts["summary"],
            body=parts["body"],
            icon=popup_icon(None, "", self.settings.icons),
            urgency=session.overflow_urgency,
            expire_ms=popup.expire_ms,
        )
        replaces = session.overflow_id if session.overflow_id in session.open else 0
        nid = self._notify(session, summary, replaces, with_action=False)
        if replaces and nid != replaces:
            session.open.pop(replaces, None)
        session.overflow_id = nid
        session.open[nid] = _Open(None, None, _stale_at(summary.expire_ms, summary.urgency))
        return ("overflow", nid)

    def _notify(self, session: _Session, popup: Popup, replaces: int, *, with_action: bool) -> int:
        """The transport: one ``Notify`` call through notify2; D-Bus errors become TemporaryFailure."""
        dbus, notify2 = _imports()
        # notify2 keeps its connection in module globals; only this thread touches them.
        notify2.dbus_iface = session.interface
        notify2.appname = self.settings.app_name
        notify2.initted = True
        notification = notify2.Notification(popup.summary, body_for_server(popup, session.caps), popup.icon)
        notification.id = replaces
        notification.set_urgency(popup.urgency)
        notification.set_timeout(popup.expire_ms)
        if popup.link and with_action and "actions" in session.caps:
            # "default" is what a click on the popup does; "open" is the visible button.
            notification.add_action("default", "Open", _no_callback)
            notification.add_action("open", "Open", _no_callback)
        try:
            notification.show()
        except dbus.DBusException as exc:
            reason = f"showing a popup on {session.address} failed: {_dbus_reason(exc)}"
            if str(exc.get_dbus_name()) in REJECTED:
                # The server refuses this popup itself: the same call would fail forever.
                raise PermanentFailure(reason) from None
            # The bus or the server went away (or hangs): start over on the next attempt.
            self._lost(session, _dbus_reason(exc))
            raise TemporaryFailure(reason) from None
        return int(notification.id)

    # signal handlers (helper thread, from GLib)

    def _closed(self, session: _Session, nid: Any, reason: Any = 0) -> None:
        session.forget(int(nid))

    def _action(self, session: _Session, nid: Any, action: Any) -> None:
        entry = session.open.get(int(nid))
        if entry is None or entry.link is None or str(action) not in ("default", "open"):
            return
        self._open_link(entry.link)

    def _owner_changed(self, session: _Session, owner: Any) -> None:
        # Called once right away with the current owner, then on every change.
        previous, session.owner = session.owner, str(owner)
        if session.owner == previous:
            return
        if previous:
            # The server that showed our popups is gone or restarted and forgot them:
            # stop counting and replacing them. (From no owner to one is a server D-Bus
            # just started for us: the popups we sent are its own.)
            session.open.clear()
            session.by_key.clear()
            session.overflow_id = 0
            session.overflow.clear()
        if session.owner:
            try:
                session.caps = frozenset(str(cap) for cap in session.interface.GetCapabilities())
            except Exception as exc:  # read again on the next connection
                log.warning("%s: reading the new notification server's capabilities failed: %s",
                            self.account_name, exc)

    def _lost(self, session: _Session, reason: str, *args: Any) -> None:
        if not session.alive:
            return
        session.alive = False
        log.warning("%s: lost the session bus at %s (%s); reconnecting on the next popup",
                    self.account_name, session.address, reason)
        try:
            session.connection.close()
        except Exception:  # already closed by the bus going away
            pass

    def _open_link(self, link: str) -> None:
        self._reap()
        command = self.settings.open_with or _default_opener()
        if command is None:
            log.warning("%s: cannot open %s: neither xdg-open nor gio is installed", self.account_name, link)
            return
        quiet = [(os.POSIX_SPAWN_OPEN, fd, os.devnull, os.O_RDWR, 0) for fd in (0, 1, 2)]
        try:
            # A bare pid rather than a Popen: xdg-open may become the browser and outlive
            # the daemon, which is fine; it runs in its own session and is reaped when done.
            pid = os.posix_spawnp(command[0], [*command, link], _opener_env(), file_actions=quiet, setsid=True)
        except OSError as exc:
            log.warning("%s: cannot open %s with %s: %s", self.account_name, link, command[0], exc)
            return
        self._openers.append(pid)

    def _reap(self) -> None:
        running = []
        for pid in self._openers:
            try:
                done, _status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere
                continue
            if done == 0:
                running.append(pid)
        self._openers = running


def _no_callback(*_args: Any) -> None:
    """notify2 wants a callback per action; ours are dispatched from the ActionInvoked signal."""


def _default_opener() -> list[str] | None:
    if shutil.which("xdg-open"):
        return ["xdg-open"]
    if shutil.which("gio"):
        return ["gio", "open"]
    return None


# What a browser needs to find the graphical session.
DISPLAY_VARIABLES = ("DISPLAY", "WAYLAND_DISPLAY", "XAUTHORITY", "XDG_CURRENT_DESKTOP", "XDG_SESSION_TYPE")


def _opener_env() -> dict[str, str]:
    """Our environment plus the session's display variables.

    A user service started before login (lingering) has no DISPLAY; desktops import
    theirs into the systemd user manager at login, so ask it for them when missing.
    """
    env = dict(os.environ)
    if env.get("DISPLAY") or env.get("WAYLAND_DISPLAY"):
        return env
    systemctl = shutil.which("systemctl")
    if systemctl is None:
        return env
    try:
        shown = subprocess.run([systemctl, "--user", "show-environment"], capture_output=True, text=True,
                               timeout=2, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return env
    for line in shown.splitlines():
        name, _, value = line.partition("=")
        if name in DISPLAY_VARIABLES and value:
            env.setdefault(name, value)
    return env


def _stale_at(expire_ms: int, urgency: int) -> float:
    now = time.monotonic()
    if expire_ms > 0 and urgency < URGENCY_LEVELS["critical"]:
        return now + expire_ms / 1000 + EXPIRY_SLACK
    return now + STALE_AFTER


def _item_line(item: Item) -> str:
    summary = sanitize.one_line(sanitize.plain_text(item.rendered.get("summary", "")))
    return summary or item.topic


def _dbus_reason(exc: Exception) -> str:
    """A D-Bus error as one short line: its message, else its name."""
    message = getattr(exc, "get_dbus_message", lambda: None)() or str(exc)
    return sanitize.one_line(sanitize.plain_text(str(message)))[:300]
