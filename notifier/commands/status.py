"""``fedmsg-notify status``: where every notification is, per destination.

Reads the state database only (opened read-only), so it works while the daemon runs
and after it stopped, and never needs the backends' credentials: it prints destination
names, counts, times and failure reasons, nothing from an account's options.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import time
from collections import Counter
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fedmsg_notify.render.sanitize import one_line, plain_text
from fedmsg_notify.store.faults import storage_health
from fedmsg_notify.store.records import DestinationStatus
from fedmsg_notify.store.sqlite import Outbox


def _when(timestamp: float | None, now: float) -> str:
    if timestamp is None:
        return "never"
    stamp = datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    delta = timestamp - now
    if abs(delta) < 1:
        return f"{stamp} (now)"
    relative = f"in {_span(delta)}" if delta > 0 else f"{_span(-delta)} ago"
    return f"{stamp} ({relative})"


def _span(seconds: float) -> str:
    """The span in its largest unit, rounded; one that rounds up to the next unit shows in it ("1h", not "60m")."""
    for unit, size, limit in (("s", 1, 60), ("m", 60, 60), ("h", 3600, 24)):
        shown = round(seconds / size)
        if shown < limit:
            return f"{shown}{unit}"
    return f"{round(seconds / 86400)}d"


def _inert(text: str) -> str:
    """Failure reasons quote remote servers (SMTP replies, IRC ERROR lines): no terminal escapes, one line."""
    return one_line(plain_text(text))


def render_text(
    path: str,
    rows: list[DestinationStatus],
    counters: dict[str, int],
    now: float,
    storage: str | None = None,
    waiting: dict[str, str] | None = None,
) -> str:
    """``waiting``: why a destination's deliveries wait without being retried (by destination)."""
    lines = [f"state: {path}"]
    if storage is not None:
        lines.append(f"WARNING: {storage}: the daemon refuses new messages until it can write again")
    if not rows:
        lines.append("no deliveries recorded yet")
    for row in rows:
        lines.append(f"{row.destination}")
        lines.append(
            f"  queued {row.queued}, in retry {row.in_retry}, failed {row.failed}, coalesced {row.coalesced},"
            f" digest pending {row.digest_pending}, sent {row.sent}"
        )
        lines.append(f"  last success: {_when(row.last_success, now)}")
        if waiting and row.destination in waiting:
            lines.append(f"  waiting: {waiting[row.destination]}")
        if row.in_retry:
            reason = _inert(row.last_retry_reason or "unknown reason")
            lines.append(f"  next retry: {_when(row.next_retry, now)}: {reason}")
        if row.failed:
            lines.append(f"  last permanent failure: {_inert(row.last_failure or 'unknown reason')}")
        if row.digest_pending:
            when = _when(row.next_digest, now) if row.next_digest is not None else "when its max is reached"
            lines.append(f"  next digest: {when}")
    malformed = {name.removeprefix("malformed."): n for name, n in counters.items() if name.startswith("malformed.")}
    if malformed:
        detail = ", ".join(f"{reason} {n}" for reason, n in sorted(malformed.items()))
        lines.append(f"malformed messages dropped: {sum(malformed.values())} ({detail})")
    refused = {name.removeprefix("signature."): n for name, n in counters.items() if name.startswith("signature.")}
    if refused:
        detail = ", ".join(f"{reason} {n}" for reason, n in sorted(refused.items()))
        lines.append(f"messages failing signature validation: {sum(refused.values())} ({detail})")
    if counters.get("refused.storage"):
        lines.append(f"messages refused while the storage failed: {counters['refused.storage']}")
    if counters.get("intake.process"):
        lines.append(
            f"intake slices matched and rendered in intake processes: {counters['intake.process']},"
            f" on the daemon's own loop: {counters.get('intake.loop', 0)}"
            f" (digests rendered in intake processes: {counters.get('intake.digests_process', 0)})"
        )
    lines.extend(render_fallbacks(counters))
    return "\n".join(lines)


def render_fallbacks(counters: dict[str, int], most: int = 10) -> list[str]:
    """Where metadata fell back (no service file, or its expression did not fit the message), busiest first."""
    by_service: Counter[str] = Counter()
    fields: dict[str, list[str]] = {}
    for name, n in counters.items():
        if name.startswith("fallback.") and n:
            service, _, field = name.removeprefix("fallback.").rpartition(".")
            by_service[service] += n
            fields.setdefault(service, []).append(f"{field} {n}")
    if not by_service:
        return []
    lines = [f"metadata fallbacks (generic text used): {sum(by_service.values())}"]
    for service, n in by_service.most_common(most):
        lines.append(f"  {_inert(service)}: {n} ({', '.join(sorted(fields[service]))})")
    if len(by_service) > most:
        lines.append(f"  … and {len(by_service) - most} more service(s)")
    return lines


def as_json(
    path: str,
    rows: list[DestinationStatus],
    counters: dict[str, int],
    storage: str | None = None,
    amqp: dict[str, Any] | None = None,
    waiting: dict[str, str] | None = None,
) -> dict[str, Any]:
    destinations = [{**asdict(row), "waiting": (waiting or {}).get(row.destination)} for row in rows]
    out = {"state": path, "storage": storage, "destinations": destinations, "counters": counters}
    if amqp is not None:
        out["amqp"] = amqp
    return out


def read_amqp_state(state_path: Path) -> dict[str, Any] | None:
    """What the daemon last recorded about its AMQP connection, or None (no AMQP bus, never ran)."""
    from fedmsg_notify.bus.amqp import amqp_state_path

    try:
        data = json.loads(amqp_state_path(state_path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def render_amqp(amqp: dict[str, Any], now: float) -> list[str]:
    state = "connected" if amqp.get("connected") else "NOT connected"
    since = amqp.get("since")
    when = _when(since if isinstance(since, float) else None, now)
    lines = [
        f"AMQP broker {_inert(str(amqp.get('broker')))}: {state} since {when}",
        f"  queue {_inert(str(amqp.get('queue')))}{' (durable)' if amqp.get('durable') else ''}:"
        f" {amqp.get('unacked', 0)} unacked, {amqp.get('received', 0)} received,"
        f" {amqp.get('connects', 0)} connection(s) made",
    ]
    if amqp.get("last_error"):
        lines.append(f"  last connection error: {_inert(str(amqp['last_error']))}")
    updated = amqp.get("updated")
    lines.append(f"  recorded {_when(updated if isinstance(updated, float) else None, now)}")
    return lines


def removed_accounts(rows: list[DestinationStatus], accounts: Any, source: object) -> dict[str, str]:
    """Destinations with work left whose account the configuration no longer has: kept, not sent."""
    return {
        row.destination: f"account '{row.account}' is not in {source}; its deliveries are kept until it is back"
        for row in rows
        if row.account not in accounts and (row.queued or row.in_retry or row.digest_pending)
    }


def run_status(args: argparse.Namespace) -> int:
    from fedmsg_notify.config.model import load_cli_config

    config = load_cli_config(args.config)
    if config.state_url is not None:
        return _run_cluster_status(args, config)
    path = str(config.state_path)
    try:
        store = Outbox(config.state_path, readonly=True)
    except FileNotFoundError:
        print(f"{path}: no state database yet; the daemon has not run with this configuration", file=sys.stderr)
        return 1
    now = time.time()
    try:
        rows = store.status(now)
        counters = store.counters()
    except sqlite3.Error as exc:
        print(f"{path}: cannot read the state database: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
    storage = storage_health(config.state_path)
    waiting = removed_accounts(rows, config.accounts, config.source)
    amqp = read_amqp_state(config.state_path) if config.amqp is not None else None
    if getattr(args, "json", False):
        print(json.dumps(as_json(path, rows, counters, storage, amqp, waiting), indent=2, sort_keys=True))
    else:
        text = render_text(path, rows, counters, now, storage, waiting)
        print("\n".join([text, *render_amqp(amqp, now)]) if amqp is not None else text)
    return 0


def _run_cluster_status(args: argparse.Namespace, config: Any) -> int:
    """The same report from a shared PostgreSQL store, with the cluster's daemons and account holders."""
    import psycopg
    from fedmsg_notify.commands.status_cluster import cluster_json, read_cluster, render_cluster
    from fedmsg_notify.config.yaml_positions import ProblemsError

    now = time.time()
    try:
        path, rows, counters, daemons = read_cluster(config, now)
    except psycopg.errors.UndefinedTable:
        print("the shared state database has no tables yet; no daemon has run with it", file=sys.stderr)
        return 1
    except (ProblemsError, OSError, psycopg.Error) as exc:
        print(f"cannot read the shared state: {exc}", file=sys.stderr)
        return 1
    if getattr(args, "json", False):
        report = {**as_json(path, rows, counters), "cluster": cluster_json(daemons, now)}
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        print("\n".join([render_text(path, rows, counters, now), *render_cluster(daemons, now)]))
    return 0
