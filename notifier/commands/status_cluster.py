"""``status`` for a shared PostgreSQL store: the destinations, plus the daemons and who holds which account."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fedmsg_notify.config.model import Config
from fedmsg_notify.store.pg_status import DaemonStatus, cluster_status
from fedmsg_notify.store.records import DestinationStatus

# A daemon writes its heartbeat every second; one silent this long is reported dead.
STALE = 10.0


def read_cluster(config: Config, now: float) -> tuple[str, list[DestinationStatus], dict[str, int], list[DaemonStatus]]:
    from fedmsg_notify.daemon_cluster import open_shared_store

    store = open_shared_store(config, owner="status", readonly=True)
    try:
        rows = store.status(now)
        counters = store.counters()
        daemons = store._call(lambda db: cluster_status(db, now))
    finally:
        store.db.close()
    return store.path, rows, counters, daemons


def render_cluster(daemons: list[DaemonStatus], now: float) -> list[str]:
    alive = [d for d in daemons if d.alive(now, STALE)]
    lines = [f"cluster: {len(alive)} daemon(s) alive of {len(daemons)} seen"]
    for daemon in daemons:
        state = "alive" if daemon.alive(now, STALE) else f"silent for {now - daemon.seen:.0f} s"
        accounts = ", ".join(daemon.accounts) if daemon.accounts else "none"
        lines.append(
            f"  {daemon.id} ({state}): sent {daemon.sent}, claimed {daemon.claimed}, holds accounts: {accounts}"
        )
    return lines


def cluster_json(daemons: list[DaemonStatus], now: float) -> list[dict[str, Any]]:
    return [{**asdict(d), "alive": d.alive(now, STALE)} for d in daemons]
