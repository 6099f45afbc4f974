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
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from fedmsg_notify.render.sanitize import one_line, plain_text
from fedmsg_notify.store.sqlite import DestinationStatus, Outbox


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
    waiting: dict[str, str] | None = None,
) -> str:
    """``waiting``: why a destination's deliveries wait without being retried (by destination)."""
    lines = [f"state: {path}"]
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
    return "\n".join(lines)


def as_json(
    path: str, rows: list[DestinationStatus], counters: dict[str, int], waiting: dict[str, str] | None = None
) -> dict[str, Any]:
    destinations = [{**asdict(row), "waiting": (waiting or {}).get(row.destination)} for row in rows]
    return {"state": path, "destinations": destinations, "counters": counters}


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
    waiting = removed_accounts(rows, config.accounts, config.source)
    if getattr(args, "json", False):
        print(json.dumps(as_json(path, rows, counters, waiting), indent=2, sort_keys=True))
    else:
        print(render_text(path, rows, counters, now, waiting))
    return 0
