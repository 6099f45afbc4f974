#!/usr/bin/env python3
"""Benchmark: state bytes on disk per message per delivery, and intake throughput.

Accepts ``--messages`` real-shaped messages (the samples, with unique msg_ids) through
the real intake stage (metadata -> rules -> render with the shipped ``email/`` templates
-> ``Store.accept``, slices of 64 as the daemon stores them) into a fresh SQLite state
file, with three email deliveries per message, and nothing sent. Two populations:

* ``rules``: three people's rules match every message (three rules, three recipients):
  the footer names each rule, so no two renderings are alike;
* ``recipients``: one rule delivers every message to three recipients (a team list):
  the three deliveries render alike.

Reports the state file's size (after a WAL checkpoint) divided by messages x deliveries,
and intake messages/s (the accept loop's wall time; CPU-bound, in this process).

    .venv/bin/python bench/bench_state.py [--messages 20000]

``--slow-commit MS`` adds that many milliseconds to every durable intake commit and
reports the event loop's longest stall while a worker marks deliveries sent meanwhile.
Prints numbers only; nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sqlite3
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_rules import load_samples
from fedmsg_notify.bus.envelope import Message
from fedmsg_notify.config.model import load_config
from fedmsg_notify.daemon.lifecycle import build_pipeline
from fedmsg_notify.delivery.intake import accept_batch
from fedmsg_notify.store.sqlite import Outbox

SLICE = 64
DELIVERIES = 3


def write_config(base: Path, population: str) -> Path:
    rules = base / "rules.yaml"
    people = [f"person{n}@example.org" for n in range(DELIVERIES)]
    if population == "rules":
        lines = [
            f"  - {{name: everything-for-person{n}, match: {{}}, deliver: [{{via: mail, to: {to}}}]}}"
            for n, to in enumerate(people)
        ]
    else:
        targets = ", ".join(f"{{via: mail, to: {to}}}" for to in people)
        lines = [f"  - {{name: team-list, match: {{}}, deliver: [{targets}]}}"]
    rules.write_text("rules:\n" + "\n".join(lines) + "\n")
    config = base / "config.yaml"
    config.write_text(
        json.dumps(
            {
                "bus": {"endpoints": []},
                "accounts": {"mail": {"backend": "fedmsg_notify.testing:NullBackend"}},
                "rules": [str(rules)],
                "state": str(base / "state.sqlite"),
                "signatures": {"validate": False},
            }
        )
    )
    return config


def messages(count: int) -> list[Message]:
    samples = [message for message, _ in load_samples()]
    out = []
    for n, sample in zip(range(count), itertools.cycle(samples), strict=False):
        envelope = dict(sample.envelope)
        # Shaped like the bus's own ids ("2026-" and a UUID), unique per message.
        envelope["msg_id"] = f"2026-{uuid.UUID(int=n + 1)}"
        out.append(Message.from_envelope(envelope))
    return out


def measure(population: str, count: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="fedmsg-notify-state-") as tmp:
        base = Path(tmp)
        config = load_config(write_config(base, population))
        pipeline = build_pipeline(config)
        batch = messages(count)
        store = Outbox(config.state_path)
        started = time.perf_counter()
        stored = 0
        for start in range(0, count, SLICE):
            accepted = accept_batch(store, pipeline, batch[start : start + SLICE], time.time())
            stored += len(accepted.deliveries)
        elapsed = time.perf_counter() - started
        deliveries = int(store.db.execute("SELECT COUNT(*) FROM deliveries").fetchone()[0])
        store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        store.close()
        size = Path(config.state_path).stat().st_size
        with sqlite3.connect(config.state_path) as db:
            tables = table_sizes(db)
        return {
            "population": population,
            "messages": count,
            "deliveries": deliveries,
            "file_bytes": size,
            "bytes_per_msg_per_delivery": round(size / deliveries, 1),
            "intake_msgs_per_s": round(count / elapsed, 1),
            "tables_bytes_per_delivery": {name: round(b / deliveries, 1) for name, b in tables.items()},
        }


def table_sizes(db: sqlite3.Connection) -> dict[str, int]:
    try:
        rows = db.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name ORDER BY 2 DESC").fetchall()
    except sqlite3.OperationalError:  # SQLite built without the dbstat table
        return {}
    return {str(name): int(size) for name, size in rows}


async def loop_stall(count: int, slow_ms: float) -> dict[str, Any]:
    """The loop's longest gap while intake commits take ``slow_ms`` longer and a worker marks sends."""
    from stall import measure_stall

    return await measure_stall(count, slow_ms, write_config, messages)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--population", choices=["rules", "recipients", "both"], default="both")
    parser.add_argument("--slow-commit", type=float, default=0.0, metavar="MS")
    args = parser.parse_args()
    if args.slow_commit:
        print(json.dumps(asyncio.run(loop_stall(args.messages, args.slow_commit))), flush=True)
        return 0
    populations = ["rules", "recipients"] if args.population == "both" else [args.population]
    for population in populations:
        print(json.dumps(measure(population, args.messages)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
