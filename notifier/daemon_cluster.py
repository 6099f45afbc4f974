"""One daemon as a member of a cluster sharing a PostgreSQL store.

Every :data:`TICK` seconds the member

* writes its heartbeat (``status`` lists the daemons alive),
* wakes a worker for every destination with due rows nobody holds — rows another daemon
  accepted and has not claimed, or whose lease a dead daemon left behind — and the digest
  scheduler (a digest another daemon would have flushed),
* tries to take the lock of each connection-bound account nobody holds, starting the
  backend when it gets one, and stops the backends of accounts whose lock it lost.

Input still comes from ZeroMQ, where every daemon hears every message: the accept key in
the store lets exactly one of them queue each (message, destination), and whichever
daemon's worker claims the row first sends it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from typing import Any, Protocol

from fedmsg_notify.backend import Destination
from fedmsg_notify.config.model import Config
from fedmsg_notify.config.yaml_positions import Position, Problem, ProblemsError
from fedmsg_notify.store.pg_cluster import AccountLocks, claimable_destinations, heartbeat
from fedmsg_notify.store.postgresql import Outbox as SharedOutbox


class Daemon(Protocol):
    """What a member needs of :class:`fedmsg_notify.daemon.Daemon` (not imported: it imports us)."""

    config: Config
    daemon_id: str
    store: Any
    digests: Any
    handles: dict[str, Any]

    def _serves(self, account: str) -> bool: ...

    def worker(self, destination: Destination) -> Any: ...


log = logging.getLogger(__name__)

TICK = 1.0


def _password(config: Config) -> str | None:
    if config.state_password_file is None:
        return None
    return config.state_password_file.read_text(encoding="utf-8").strip()


def open_shared_store(config: Config, owner: str, *, readonly: bool = False) -> SharedOutbox:
    """The PostgreSQL store of ``config``; a failure reads like a config error, without the password."""
    try:
        return SharedOutbox(
            config.state_url or "", owner=owner, password=_password(config), lease=config.state_lease, readonly=readonly
        )
    except Exception as exc:
        where = Position(config.source, 1, 1)
        raise ProblemsError([Problem(where, f"state: cannot open the PostgreSQL store: {exc}")]) from exc


class ClusterMember:
    def __init__(self, daemon: Daemon, started: float) -> None:
        self.daemon = daemon
        self.started = started
        store = daemon.store
        assert isinstance(store, SharedOutbox)
        self.store: SharedOutbox = store
        url, password = daemon.config.state_url or "", _password(daemon.config)
        self.locks: AccountLocks = AccountLocks(url, daemon.daemon_id, password)
        # Take what we can before the backends start, so the first start is already the right one.
        self.locks.acquire(self._bound(), time.time())
        if self.locks.held:
            log.info("holding connection-bound account(s) %s", ", ".join(sorted(self.locks.held)))

    def _bound(self) -> list[str]:
        return sorted(name for name, account in self.daemon.config.accounts.items() if account.backend.connection_bound)

    async def run(self) -> None:
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("cluster housekeeping failed (retrying in %.0f s): %s", TICK, exc)
            await asyncio.sleep(TICK)

    async def tick(self) -> None:
        now = time.time()
        gained, lost = self.locks.acquire(self._bound(), now)
        for account in sorted(lost):
            handle = self.daemon.handles.get(account)
            if handle is not None:
                await handle.close(grace=0)
        for account in sorted(gained):
            log.info("now holding connection-bound account %s", account)
            handle = self.daemon.handles.get(account)
            if handle is not None:
                try:
                    await handle.ensure_started()
                except Exception as exc:
                    log.error("starting backend of account %s failed: %s", account, exc)
        amqp = getattr(self.daemon, "amqp", None)
        bus = amqp.snapshot() if amqp is not None else None
        self.store._call(
            lambda db: heartbeat(db, self.daemon.daemon_id, socket.gethostname(), os.getpid(), self.started, now, bus)
        )
        for account, recipient in self.store._call(lambda db: claimable_destinations(db, now)):
            if self.daemon._serves(account):
                self.daemon.worker(Destination(account, recipient)).notify()
        if self.daemon.digests is not None:
            self.daemon.digests.notify()
