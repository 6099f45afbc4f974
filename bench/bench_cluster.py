"""One daemon on SQLite, one on PostgreSQL, two on one PostgreSQL: the same population, the same table.

    .venv/bin/python bench/bench_cluster.py [--rules 1000] [--messages 20000]

Each daemon is its own process running the real :class:`~fedmsg_notify.daemon.Daemon`
with the rule population of ``ours.py`` and :class:`~fedmsg_notify.testing.NullBackend`
as the sink; the publisher (``publisher.py``) sends the real sample messages as fast as
it can. With ZeroMQ input every daemon hears every message and the store's accept key
lets one of them queue each delivery, so the second daemon adds sending capacity but
also repeats the intake work (metadata, matching, rendering) of every message: what
bounds the two-daemon ratio until input comes from one shared AMQP queue. Time runs from
the publisher's start to the moment every daemon has received every message and no
delivery is queued. PostgreSQL is a throwaway cluster (``tests/postgresserver.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))


async def run_child(args: argparse.Namespace) -> None:
    """One daemon: load the population, warm up, run until SIGTERM; progress in ``args.progress``."""
    from bench_rules import load_samples
    from fedmsg_notify.config.model import load_config
    from fedmsg_notify.daemon import Daemon
    from fedmsg_notify.matching.rules import RuleSet
    from fedmsg_notify.testing import NullBackend
    from ours import population

    pairs = load_samples()
    config = Path(args.config)
    docs, _ = population(args.rules, pairs)
    ruleset = RuleSet.from_documents(docs, load_config(config).accounts)
    daemon = Daemon(load_config(config))
    daemon.pipeline = dataclasses.replace(daemon.pipeline, rules=ruleset)
    for message, _ in pairs:
        meta = daemon.pipeline.meta(message)
        for route in daemon.pipeline.rules.routes(message, meta):
            daemon.pipeline.renderer.render(NullBackend, message, meta, route)
    seen = {"n": 0}
    real_accept = daemon.accept

    async def accept(batch: Any) -> bool:
        stored = await real_accept(batch)
        seen["n"] += len(batch)
        return stored

    daemon.accept = accept  # type: ignore[method-assign]
    ready = asyncio.Event()
    task = asyncio.create_task(daemon.run(ready))
    await ready.wait()
    progress = Path(args.progress)
    while not task.done():
        sink = NullBackend.instances.get("mail")
        progress.write_text(json.dumps({"received": seen["n"], "sent": sink.delivered if sink else 0}))
        await asyncio.sleep(0.1)


def queued(state: str) -> int:
    if state.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(state) as db:
            row = db.execute("SELECT COUNT(*) FROM deliveries WHERE state = 'queued'").fetchone()
    else:
        with sqlite3.connect(f"file:{state}?mode=ro", uri=True) as db:
            row = db.execute("SELECT COUNT(*) FROM deliveries WHERE state = 'queued'").fetchone()
    return int(row[0]) if row else 0


def run(name: str, daemons: int, state: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from ours import free_endpoint, start_publisher

    endpoint = free_endpoint()
    procs: list[tuple[subprocess.Popen[bytes], Path]] = []
    for n in range(daemons):
        folder = tmp / f"{name.replace(' ', '-')}-{n}"
        folder.mkdir()
        (folder / "rules").mkdir()
        config = folder / "config.yaml"
        config.write_text(
            json.dumps(
                {
                    "bus": {"endpoints": [endpoint]},
                    "accounts": {"mail": {"backend": "fedmsg_notify.testing:NullBackend"}},
                    "rules": [str(folder / "rules")],
                    "state": state,
                    "signatures": {"validate": False},
                }
            )
        )
        progress = folder / "progress.json"
        argv = [sys.executable, __file__, "--child", "--config", str(config), "--progress", str(progress)]
        with (folder / "log").open("w") as log:
            proc = subprocess.Popen([*argv, "--rules", str(args.rules)], stdout=log, stderr=subprocess.STDOUT)
        procs.append((proc, progress))
    # Every daemon has loaded and warmed up when it first reports progress.
    deadline = time.monotonic() + 600
    while not all(p.exists() for _, p in procs):
        assert time.monotonic() < deadline, "daemons did not start"
        time.sleep(0.2)
    start = time.perf_counter()
    publisher = start_publisher(endpoint, args.messages, 0)
    reports: list[dict[str, int]] = []
    try:
        while True:
            time.sleep(0.1)
            reports = [json.loads(p.read_text() or "{}") for _, p in procs]
            if all(r.get("received", 0) >= args.messages for r in reports) and queued(state) == 0:
                break
            assert time.perf_counter() - start < 900, f"{name}: not done after 900 s: {reports}"
        elapsed = time.perf_counter() - start
    finally:
        for proc, _ in procs:
            proc.terminate()
        for proc, _ in procs:
            proc.wait(60)
        publisher.communicate()
    sent = [r.get("sent", 0) for r in reports]
    return {
        "name": name,
        "daemons": daemons,
        "messages": args.messages,
        "seconds": round(elapsed, 2),
        "msgs_per_s": round(args.messages / elapsed, 1),
        "sent_per_daemon": sent,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--child", action="store_true")
    parser.add_argument("--config")
    parser.add_argument("--progress")
    parser.add_argument("--rules", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=20000)
    args = parser.parse_args()
    if args.child:
        asyncio.run(run_child(args))
        return 0
    from tests.postgresserver import PostgresServer, _bindir

    bindir = _bindir()
    if bindir is None:
        print("PostgreSQL is not installed (apt-get install postgresql)", file=sys.stderr)
        return 1
    tmp = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    server = PostgresServer(bindir)
    rows: list[dict[str, Any]] = []
    try:
        rows.append(run("1 daemon, SQLite", 1, str(tmp / "state.sqlite"), args, tmp))
        rows.append(run("1 daemon, PostgreSQL", 1, server.create_database(), args, tmp))
        rows.append(run("2 daemons, PostgreSQL", 2, server.create_database(), args, tmp))
    finally:
        server.close()
        shutil.rmtree(tmp, ignore_errors=True)
    one_pg = rows[1]["msgs_per_s"]
    print(f"| run | msgs/s | seconds | sent per daemon |  ({args.messages} messages, {args.rules} rules, {os.cpu_count()} cores)")
    print("| --- | ---: | ---: | --- |")
    for row in rows:
        print(f"| {row['name']} | {row['msgs_per_s']} | {row['seconds']} | {row['sent_per_daemon']} |")
    print(f"two daemons / one daemon on PostgreSQL: {rows[2]['msgs_per_s'] / one_pg:.2f}x")
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "cluster.json").write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
