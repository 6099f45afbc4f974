"""sd_notify: readiness, watchdog and stopping notices to systemd (``Type=notify``).

The protocol is one datagram per notice on the ``AF_UNIX`` socket named by
``$NOTIFY_SOCKET`` (sd_notify(3)); a leading ``@`` means the abstract namespace. Not
running under systemd (no variable) makes every call a no-op, so the daemon behaves
the same in a terminal.
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger(__name__)


def notify(*states: str) -> bool:
    """Send ``READY=1``-style assignments; True if systemd (or a test) was listening."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address or not states:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall("\n".join(states).encode("utf-8"))
    except OSError as exc:
        # A notice lost is not worth dying for; systemd's timeouts will speak up.
        log.warning("sd_notify %s to %s failed: %s", ", ".join(states), address.lstrip("\0"), exc)
        return False
    return True


def ready() -> bool:
    return notify("READY=1", "STATUS=delivering")


def reloading() -> bool:
    # MONOTONIC_USEC lets Type=notify-reload match this notice to the reload it asked for.
    return notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")


def stopping() -> bool:
    return notify("STOPPING=1")


def status(text: str) -> bool:
    return notify(f"STATUS={text}")


def watchdog_interval() -> float | None:
    """Seconds between ``WATCHDOG=1`` pings: half of ``WatchdogSec``, as sd_watchdog_enabled(3) advises."""
    usec = os.environ.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = os.environ.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None  # meant for another process (we were forked or exec'd by the real target)
    try:
        value = int(usec)
    except ValueError:
        log.warning("ignoring WATCHDOG_USEC=%r: not an integer", usec)
        return None
    return value / 2 / 1_000_000 if value > 0 else None


def watchdog() -> bool:
    return notify("WATCHDOG=1")
