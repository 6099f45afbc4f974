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
and intake messages/s (the accept loop's wall time; CPU-bound, in this process), with the
CPU time per message split into routing + rendering and the store's accept (less
sensitive than wall time to other work on a shared machine).

    .venv/bin/python bench/bench_state.py [--messages 20000]

``--slow-commit MS`` runs the daemon in-process instead, with that many milliseconds added
to every durable intake commit (a disk busy with other writes; 0: the disk as it is), once
with the commits on the event loop (as before) and once in the writer thread, and reports
the loop's longest stall while the workers send and mark what was accepted.
Prints numbers only; nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
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
        storing = [0.0]
        real_accept = store.accept

        def timed_accept(*args: Any, **kwargs: Any) -> Any:
            before = time.process_time()
            try:
                return real_accept(*args, **kwargs)
            finally:
                storing[0] += time.process_time() - before

        store.accept = timed_accept  # type: ignore[method-assign]
        started, cpu_started = time.perf_counter(), time.process_time()
        for start in range(0, count, SLICE):
            accept_batch(store, pipeline, batch[start : start + SLICE], time.time())
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        routing = cpu - storing[0]
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
            "cpu_us_per_msg": round(cpu / count * 1e6, 1),
            "route_render_cpu_us_per_msg": round(routing / count * 1e6, 1),
            "store_cpu_us_per_msg": round(storing[0] / count * 1e6, 1),
            "tables_bytes_per_delivery": {name: round(b / deliveries, 1) for name, b in tables.items()},
        }


def table_sizes(db: sqlite3.Connection) -> dict[str, int]:
    try:
        rows = db.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name ORDER BY 2 DESC").fetchall()
    except sqlite3.OperationalError:  # SQLite built without the dbstat table
        return {}
    return {str(name): int(size) for name, size in rows}


async def loop_stall(count: int, slow_ms: float, in_thread: bool) -> dict[str, Any]:
    """The loop's longest gap while the daemon accepts ``count`` messages, each commit ``slow_ms`` slower.

    The real daemon in-process (three email deliveries per message to a sink that marks
    each one sent on the loop), fed slices of 64 as the bus intake does, with a heartbeat
    task that sleeps 1 ms and records how late it wakes up.
    """
    from fedmsg_notify.daemon import Daemon

    # The durable part of an accept: the WAL fsync after the commit (a release before it: the
    # whole accept, whose commit fsynced under synchronous=FULL).
    hook = "_sync_wal" if hasattr(Outbox, "_sync_wal") else "accept"
    real = getattr(Outbox, hook)

    def slow(self: Outbox, *args: Any, **kwargs: Any) -> Any:
        result = real(self, *args, **kwargs)
        time.sleep(slow_ms / 1000)
        return result

    setattr(Outbox, hook, slow)
    with tempfile.TemporaryDirectory(prefix="fedmsg-notify-stall-") as tmp:
        daemon = Daemon(load_config(write_config(Path(tmp), "rules")))
        daemon.intake_thread = in_thread
        ready = asyncio.Event()
        task = asyncio.create_task(daemon.run(ready))
        await ready.wait()
        loop = asyncio.get_running_loop()
        gaps: list[float] = []
        beating = True

        async def heartbeat() -> None:
            last = loop.time()
            while beating:
                await asyncio.sleep(0.001)
                now = loop.time()
                gaps.append(now - last)
                last = now

        batch = messages(count)
        beat = asyncio.create_task(heartbeat())
        started = time.perf_counter()
        for start in range(0, count, SLICE):
            stored = daemon.accept(batch[start : start + SLICE])
            if inspect.isawaitable(stored):  # a release before the writer thread: accept was synchronous
                await stored
            await asyncio.sleep(0)
        elapsed = time.perf_counter() - started
        beating = False
        await beat
        daemon.stop()
        await task
    setattr(Outbox, hook, real)
    gaps.sort()
    return {
        "commits": "writer thread" if in_thread else "event loop",
        "slow_commit_ms": slow_ms,
        "messages": count,
        "intake_msgs_per_s": round(count / elapsed, 1),
        "loop_max_stall_ms": round(gaps[-1] * 1000, 1),
        "loop_p99_gap_ms": round(gaps[int(len(gaps) * 0.99)] * 1000, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--population", choices=["rules", "recipients", "both"], default="both")
    parser.add_argument("--slow-commit", type=float, default=None, metavar="MS",
                        help="measure the event loop's longest stall instead, each commit MS slower (0: as is)")
    args = parser.parse_args()
    if args.slow_commit is not None:
        for in_thread in (False, True):
            print(json.dumps(asyncio.run(loop_stall(args.messages, args.slow_commit, in_thread))), flush=True)
        return 0
    populations = ["rules", "recipients"] if args.population == "both" else [args.population]
    for population in populations:
        print(json.dumps(measure(population, args.messages)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
