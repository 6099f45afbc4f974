"""Opening a popup's link for the "Open" action: which command, with the graphical session's environment."""

from __future__ import annotations

import os
import shutil
import subprocess


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
