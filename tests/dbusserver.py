"""A real, private D-Bus session bus and a notification server on it, for the desktop backend tests.

* :class:`SessionBus` runs Debian's ``dbus-daemon --session`` (as a child process) on a socket in
  a temporary directory. The address is fixed before the daemon starts, so a test can
  point the backend at a bus that does not exist yet ("not logged in") and start it
  later, or stop and restart it at the same address.
* :class:`NotificationServer` runs python-dbusmock's ``notification_daemon`` template
  on that bus: a real D-Bus service answering ``Notify``/``GetCapabilities``/
  ``CloseNotification``, with the capabilities the test asks for. :meth:`notifies`
  reads back every ``Notify`` call as a :class:`Notified`, and :meth:`emit` sends
  the signals a user's clicks would (``ActionInvoked``, ``NotificationClosed``).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dbus
import dbus.bus

from tests.childio import read_lines

BUS_NAME = "org.freedesktop.Notifications"
OBJECT_PATH = "/org/freedesktop/Notifications"
INTERFACE = "org.freedesktop.Notifications"
MOCK_INTERFACE = "org.freedesktop.DBus.Mock"
# The capabilities of a modern server (GNOME Shell, dunst): markup, links, actions.
FULL_CAPS = ("actions", "body", "body-markup", "body-hyperlinks", "icon-static", "persistence")


SESSION_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <keep_umask/>
  <listen>unix:tmpdir=/tmp</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""


@dataclass(frozen=True)
class Notified:
    """One ``Notify`` call as the server received it."""

    app_name: str
    replaces_id: int
    icon: str
    summary: str
    body: str
    actions: list[str]
    hints: dict[str, Any]
    expire_ms: int

    @property
    def urgency(self) -> int | None:
        value = self.hints.get("urgency")
        return None if value is None else int(value)


class SessionBus:
    """A private session bus at ``unix:path=<workdir>/bus``; startable, stoppable, restartable."""

    def __init__(self, workdir: Path, servicedir: Path | None = None) -> None:
        self.workdir = workdir
        # Where D-Bus looks for activatable services (.service files); none by default.
        self.servicedir = servicedir
        self.socket = workdir / "bus"
        self.address = f"unix:path={self.socket}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        # Our own child (not --fork): stop() reaps it at once, no zombie waits for init.
        # A config of our own, without the standard service directories: a notification
        # daemon installed on the host (dunst, say) must not be D-Bus-activated into our tests.
        config = self.workdir / "session.conf"
        services = f"  <servicedir>{self.servicedir}</servicedir>\n" if self.servicedir else ""
        config.write_text(SESSION_CONFIG.replace("</busconfig>", services + "</busconfig>"), encoding="utf-8")
        self.process = subprocess.Popen(
            ["dbus-daemon", f"--config-file={config}", "--nofork", "--nosyslog", f"--address={self.address}",
             "--print-address=1"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
        )
        assert self.process.stdout is not None
        # The address is printed once the socket listens.
        try:
            read_lines(self.process.stdout, 1, timeout=30)
        except AssertionError as exc:
            raise RuntimeError(f"dbus-daemon did not start at {self.address}: {exc}") from None

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        self.process.wait(5)
        assert self.process.stdout is not None
        self.process.stdout.close()
        self.process = None
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()

    def connect(self) -> dbus.bus.BusConnection:
        """A plain (main-loop-less) client connection for the test itself."""
        return dbus.bus.BusConnection(self.address)

    def __enter__(self) -> SessionBus:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


class NotificationServer:
    """python-dbusmock's notification daemon on ``bus`` with the given capabilities."""

    def __init__(self, bus: SessionBus, caps: tuple[str, ...] = FULL_CAPS) -> None:
        self.bus = bus
        self.caps = caps
        self.process: subprocess.Popen[bytes] | None = None
        self._connection: dbus.bus.BusConnection | None = None

    def start(self) -> None:
        env = {**os.environ, "DBUS_SESSION_BUS_ADDRESS": self.bus.address}
        parameters = json.dumps({"capabilities": " ".join(self.caps)})
        self.process = subprocess.Popen(
            [sys.executable, "-m", "dbusmock", "--session", "--template", "notification_daemon", "-p", parameters],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )
        self._connection = self.bus.connect()
        deadline = time.monotonic() + 10
        while not self._connection.name_has_owner(BUS_NAME):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the dbusmock notification daemon did not come up")
            time.sleep(0.02)

    def stop(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
        if self.process is not None:
            self.process.terminate()
            self.process.wait(5)
            self.process = None

    def _object(self) -> Any:
        assert self._connection is not None
        return self._connection.get_object(BUS_NAME, OBJECT_PATH)

    def notifies(self) -> list[Notified]:
        """Every ``Notify`` call so far, oldest first."""
        calls = self._object().GetCalls(dbus_interface=MOCK_INTERFACE)
        return [
            Notified(
                app_name=str(args[0]),
                replaces_id=int(args[1]),
                icon=str(args[2]),
                summary=str(args[3]),
                body=str(args[4]),
                actions=[str(a) for a in args[5]],
                hints={str(k): v for k, v in args[6].items()},
                expire_ms=int(args[7]),
            )
            for _stamp, method, args in calls
            if str(method) == "Notify"
        ]

    def wait_notifies(self, count: int, timeout: float = 10.0) -> list[Notified]:
        deadline = time.monotonic() + timeout
        while True:
            found = self.notifies()
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.02)

    def reject_notify(self, error: str, message: str) -> None:
        """From now on ``Notify`` fails with the D-Bus error ``error`` (a server refusing a popup)."""
        code = f"raise dbus.exceptions.DBusException({message!r}, name={error!r})"
        self._object().AddMethod(INTERFACE, "Notify", "susssasa{sv}i", "u", code, dbus_interface=MOCK_INTERFACE)

    def emit(self, name: str, signature: str, *args: Any) -> None:
        """Send a signal from the server, as a click or a dismissal would."""
        self._object().EmitSignal(INTERFACE, name, signature, list(args), dbus_interface=MOCK_INTERFACE)

    def close_popup(self, nid: int) -> None:
        """The user dismissed popup ``nid`` (reason 2 in the spec)."""
        self.emit("NotificationClosed", "uu", dbus.UInt32(nid), dbus.UInt32(2))

    def __enter__(self) -> NotificationServer:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()
