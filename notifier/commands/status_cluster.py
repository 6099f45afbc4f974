"""``status`` for a shared PostgreSQL store: the destinations, plus the cluster.

The cluster part says which daemons are alive (heartbeat within :data:`STALE`), what each
sent and holds claimed, its AMQP connection; how deep the shared queue is and who has it
(claimed by live daemons, left behind by silent ones until their leases run out, waiting
for any daemon); and per account its queue, its shared pace and — for a connection-bound
account — which daemon holds it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg
from fedmsg_notify.config.model import Account, Config
from fedmsg_notify.store.pg_status import DaemonStatus, Holder, cluster_status, holders, paces
from fedmsg_notify.store.records import DestinationStatus

# A daemon writes its heartbeat every second; one silent this long is reported dead.
STALE = 10.0


@dataclass(frozen=True, slots=True)
class AccountView:
    name: str
    connection_bound: bool
    queued: int
    rate: float
    burst: int
    # Connection-bound accounts: the daemon holding it (None: nobody took it yet).
    holder: str | None = None
    holder_alive: bool = False
    since: float | None = None
    # The shared bucket's tokens now (None: nothing sent through it yet).
    tokens: float | None = None


@dataclass(frozen=True, slots=True)
class ClusterView:
    daemons: list[DaemonStatus]
    accounts: list[AccountView] = field(default_factory=list)
    queued: int = 0

    def alive(self, now: float) -> list[DaemonStatus]:
        return [d for d in self.daemons if d.alive(now, STALE)]

    def claimed(self, now: float, *, alive: bool) -> int:
        return sum(d.claimed for d in self.daemons if d.alive(now, STALE) == alive)


def read_cluster(config: Config, now: float) -> tuple[str, list[DestinationStatus], dict[str, int], ClusterView]:
    from fedmsg_notify.daemon_cluster import open_shared_store

    store = open_shared_store(config, owner="status", readonly=True)
    try:
        rows = store.status(now)
        counters = store.counters()
        daemons = store._call(lambda db: cluster_status(db, now))
        held = store._call(holders)
        try:
            buckets = store._call(paces)
        except psycopg.errors.UndefinedTable:  # no daemon of this release has migrated it yet
            buckets = {}
    finally:
        store.db.close()
    return store.path, rows, counters, build_view(config, rows, daemons, held, buckets, now)


def build_view(
    config: Config,
    rows: list[DestinationStatus],
    daemons: list[DaemonStatus],
    held: list[Holder],
    buckets: dict[str, tuple[float, float]],
    now: float,
) -> ClusterView:
    queued: dict[str, int] = {}
    for row in rows:
        queued[row.account] = queued.get(row.account, 0) + row.queued
    by_account = {h.account: h for h in held}
    alive = {d.id for d in daemons if d.alive(now, STALE)}
    accounts = []
    for name in sorted(set(config.accounts) | set(queued)):
        account = config.accounts.get(name)
        bound = bool(account is not None and getattr(account.backend, "connection_bound", False))
        rate, burst = _pace(account)
        holder = by_account.get(name) if bound else None
        tokens = None
        if name in buckets and rate > 0:
            left, updated = buckets[name]
            tokens = min(float(burst), left + max(0.0, now - updated) * rate)
        accounts.append(
            AccountView(
                name=name,
                connection_bound=bound,
                queued=queued.get(name, 0),
                rate=rate,
                burst=burst,
                holder=holder.daemon if holder else None,
                holder_alive=holder is not None and holder.daemon in alive,
                since=holder.since if holder else None,
                tokens=tokens,
            )
        )
    return ClusterView(daemons, accounts, sum(row.queued for row in rows))


def _pace(account: Account | None) -> tuple[float, int]:
    """The account's (rate, burst) as its backend will use them: configured, else the backend's default."""
    if account is None:
        return 0.0, 0
    rate = account.options.rate or getattr(account.backend, "rate", None) or 0.0
    burst = account.options.burst or getattr(account.backend, "burst", None) or 0
    return float(rate), int(burst)


def _bus(daemon: DaemonStatus) -> str:
    bus = daemon.bus
    if not bus:
        return ""
    state = "connected" if bus.get("connected") else "NOT connected"
    return (
        f"; AMQP queue {bus.get('queue')} {state}, {bus.get('unacked', 0)} unacked, {bus.get('received', 0)} received"
    )


def render_cluster(view: ClusterView, now: float) -> list[str]:
    alive = view.alive(now)
    lines = [f"cluster: {len(alive)} daemon(s) alive of {len(view.daemons)} seen"]
    for daemon in view.daemons:
        state = "alive" if daemon.alive(now, STALE) else f"silent for {now - daemon.seen:.0f} s"
        accounts = ", ".join(daemon.accounts) if daemon.accounts else "none"
        lines.append(
            f"  {daemon.id} ({state}): sent {daemon.sent}, claimed {daemon.claimed}, holds accounts: {accounts}"
            f"{_bus(daemon)}"
        )
    live, dead = view.claimed(now, alive=True), view.claimed(now, alive=False)
    lines.append(
        f"shared queue: {view.queued} queued: {live} claimed by live daemons, {dead} left by silent daemons"
        f" (taken over when their leases end), {max(0, view.queued - live - dead)} waiting for any daemon"
    )
    for account in view.accounts:
        pace = f"pace {account.rate:g}/s burst {account.burst}, shared"
        if account.tokens is not None:
            pace += f" ({account.tokens:.1f} token(s) left)"
        if account.connection_bound:
            if account.holder is None:
                who = "held by nobody yet"
            elif account.holder_alive:
                who = f"held by {account.holder}"
            else:
                who = f"held by {account.holder}, which is silent: a live daemon takes it within seconds"
            lines.append(f"  account {account.name} (connection-bound): {who}; {account.queued} queued; {pace}")
        else:
            lines.append(f"  account {account.name}: sent by every daemon; {account.queued} queued; {pace}")
    return lines


def cluster_json(view: ClusterView, now: float) -> dict[str, Any]:
    live, dead = view.claimed(now, alive=True), view.claimed(now, alive=False)
    return {
        "daemons": [{**asdict(d), "alive": d.alive(now, STALE)} for d in view.daemons],
        "queue": {
            "queued": view.queued,
            "claimed_by_live": live,
            "claimed_by_silent": dead,
            "waiting": max(0, view.queued - live - dead),
        },
        "accounts": [asdict(a) for a in view.accounts],
    }
