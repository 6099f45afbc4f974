"""The daemon: wires the pipeline's stages together and runs their lifecycle.

``lifecycle`` holds :class:`Daemon` (start, reload, stop, one worker per destination),
``consume`` the intake from the buses, ``chores`` the periodic housekeeping and
``state`` the opening of the store; :mod:`fedmsg_notify.daemon_cluster` adds what a
daemon sharing a PostgreSQL store with others does.
"""

from __future__ import annotations

from fedmsg_notify.daemon.lifecycle import Daemon
from fedmsg_notify.daemon.pipeline import build_pipeline

__all__ = ["Daemon", "build_pipeline"]
