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
one helper thread (``dbus_thread._DBusThread``) that also runs GLib's main context, so the
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

The package, by concern: ``settings`` (the account and a rule's options), ``popup`` (what
a popup shows, pure), ``session`` (the session bus, the server's capabilities, the open
popups, D-Bus errors), ``dbus_thread`` (the helper thread), ``opener`` (the "Open"
action's command) and ``backend`` (:class:`DesktopBackend`, which ties them together).
"""

from __future__ import annotations

from fedmsg_notify.backends.desktop.backend import DesktopBackend
from fedmsg_notify.backends.desktop.popup import (
    Popup,
    body_for_server,
    build_popup,
    flood_parts,
    popup_icon,
    service_label,
    web_link,
)
from fedmsg_notify.backends.desktop.session import session_bus_address
from fedmsg_notify.backends.desktop.settings import URGENCY_LEVELS, DesktopAccount, DesktopOptions, Urgency

__all__ = [
    "URGENCY_LEVELS",
    "DesktopAccount",
    "DesktopBackend",
    "DesktopOptions",
    "Popup",
    "Urgency",
    "body_for_server",
    "build_popup",
    "flood_parts",
    "popup_icon",
    "service_label",
    "session_bus_address",
    "web_link",
]
