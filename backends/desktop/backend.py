"""The desktop backend: popups through the helper thread, at most ``max_open`` at once.

It connects lazily, reconnects when the session bus or the notification server comes back,
and folds what does not fit into one "N new messages" popup.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any, ClassVar

from fedmsg_notify.backend import (
    AccountOptions,
    Backend,
    Item,
    PermanentFailure,
    TemporaryFailure,
    missing_modules,
)
from fedmsg_notify.backends.desktop.dbus_thread import _DBusThread
from fedmsg_notify.backends.desktop.opener import _default_opener, _opener_env
from fedmsg_notify.backends.desktop.popup import (
    SUMMARY_LINES,
    Popup,
    _item_line,
    body_for_server,
    build_popup,
    flood_parts,
    popup_icon,
    service_label,
)
from fedmsg_notify.backends.desktop.session import (
    BUS_NAME,
    CALL_TIMEOUT,
    INTERFACE,
    OBJECT_PATH,
    REJECTED,
    _dbus_reason,
    _imports,
    _Open,
    _Session,
    _stale_at,
    _TimedInterface,
    session_bus_address,
)
from fedmsg_notify.backends.desktop.settings import DesktopAccount, DesktopOptions
from fedmsg_notify.config.validation import StrictModel
from fedmsg_notify.render import sanitize

log = logging.getLogger(__name__)

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
