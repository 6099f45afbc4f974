"""A real notification daemon for the desktop tests: Debian's dunst on a private Xvfb display.

dunst owns ``org.freedesktop.Notifications`` on the test's private session bus
(:class:`tests.dbusserver.SessionBus`). What it showed is read from dunst itself: a rule
matching every notification runs a small script that appends one JSON line per popup
(dunst's ``DUNST_*`` variables: id, app name, summary, body, urgency) to a log file.
Both processes are the test's own, stopped by their handles.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dbus

from tests.dbusserver import BUS_NAME, OBJECT_PATH, SessionBus

DUNST = shutil.which("dunst") or "/usr/bin/dunst"
XVFB = shutil.which("Xvfb") or "/usr/bin/Xvfb"

LOGGER = """\
#!{python}
import json, os
with open({log!r}, "a", encoding="utf-8") as out:
    out.write(json.dumps({{k[6:].lower(): v for k, v in os.environ.items() if k.startswith("DUNST_")}}) + "\\n")
"""

CONFIG = """\
[global]
    monitor = 0
    follow = none
    notification_limit = 0
    idle_threshold = 0
    show_age_threshold = -1
    sticky_history = no
    history_length = 20
    markup = full
[log_every_popup]
    summary = "*"
    script = {script}
"""


def _free_display() -> int:
    for number in range(90, 400):
        if not Path(f"/tmp/.X11-unix/X{number}").exists() and not Path(f"/tmp/.X{number}-lock").exists():
            return number
    raise RuntimeError("no free X display number")


@dataclass
class Dunst:
    """Xvfb plus dunst on ``bus``; ``shown()`` lists what dunst displayed, oldest first."""

    bus: SessionBus
    workdir: Path
    display: int = field(default_factory=_free_display)
    xvfb: subprocess.Popen[bytes] | None = None
    dunst: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.workdir / "shown.jsonl"

    def start(self, timeout: float = 30.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        script = self.workdir / "log-popup.py"
        script.write_text(LOGGER.format(python=sys.executable, log=str(self.log)), encoding="utf-8")
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
        config = self.workdir / "dunstrc"
        config.write_text(CONFIG.format(script=script), encoding="utf-8")
        self.xvfb = subprocess.Popen(
            [XVFB, f":{self.display}", "-nolisten", "tcp", "-screen", "0", "1024x768x24"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while not Path(f"/tmp/.X11-unix/X{self.display}").exists():
            if self.xvfb.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Xvfb :{self.display} did not start")
            time.sleep(0.05)
        env = {**os.environ, "DISPLAY": f":{self.display}", "DBUS_SESSION_BUS_ADDRESS": self.bus.address}
        env.pop("WAYLAND_DISPLAY", None)
        with open(self.workdir / "dunst.err", "ab") as errors:  # the child keeps its own copy
            self.dunst = subprocess.Popen(
                [DUNST, "-config", str(config)], env=env,
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errors,
            )
        while self.server_information() is None:
            if self.dunst.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dunst did not take {BUS_NAME}: {(self.workdir / 'dunst.err').read_text()}")
            time.sleep(0.05)

    def server_information(self) -> tuple[str, ...] | None:
        """``GetServerInformation`` from whoever owns the name, if it is dunst."""
        connection = dbus.bus.BusConnection(self.bus.address)
        try:
            if not connection.name_has_owner(BUS_NAME):
                return None
            proxy = connection.get_object(BUS_NAME, OBJECT_PATH)
            info = tuple(str(v) for v in proxy.GetServerInformation(dbus_interface=BUS_NAME, timeout=5))
            return info if info[0] == "dunst" else None
        except dbus.exceptions.DBusException:
            return None
        finally:
            connection.close()

    def shown(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text(encoding="utf-8").splitlines() if line.strip()]

    def stop(self) -> None:
        for process in (self.dunst, self.xvfb):
            if process is None:
                continue
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.dunst = self.xvfb = None

    def __enter__(self) -> Dunst:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
