"""One daemon on SQLite, one on PostgreSQL, two on one PostgreSQL: the same population, the same table.

    .venv/bin/python bench/bench_cluster.py [--rules 1000] [--messages 20000] [--bus zeromq|amqp|both]

Each daemon is its own process running the real :class:`~fedmsg_notify.daemon.Daemon`
with the rule population of ``ours.py`` and :class:`~fedmsg_notify.testing.NullBackend`
as the sink; the publisher (``publisher.py``) sends the real sample messages as fast as
it can. With ZeroMQ input every daemon hears every message and the store's accept key
lets one of them queue each delivery, so the second daemon adds sending capacity but
also repeats the intake work (metadata, matching, rendering) of every message. With
``--bus amqp`` (the default ``both`` runs each) the daemons are competing consumers of
one durable queue on a private RabbitMQ node, so each message is taken — decoded,
matched, rendered, stored — by one daemon only. Time runs from the publisher's start to
the moment every message has been received (by every daemon on ZeroMQ, by one on AMQP)
and no delivery is queued. PostgreSQL is a throwaway cluster (``tests/postgresserver.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
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
    calls: Counter[str] = Counter()
    if str(load_config(config).state_url or "").startswith("postgresql://"):
        # Which store calls the daemon makes (by the function that makes them), for the table's notes.
        from fedmsg_notify.store.postgresql import Outbox

        real_call = Outbox._call

        def counted(store: Outbox, work: Any) -> Any:
            calls[work.__qualname__.replace(".<locals>", "").replace(".<lambda>", "")] += 1
            return real_call(store, work)

        Outbox._call = counted  # type: ignore[method-assign,assignment]
    seen = {"n": 0}
    real_accept = daemon.accept

    async def accept(batch: Any, *rest: Any) -> bool:
        stored = await real_accept(batch, *rest)
        seen["n"] += len(batch) if stored else 0

        return stored

    daemon.accept = accept  # type: ignore[method-assign]
    ready = asyncio.Event()
    task = asyncio.create_task(daemon.run(ready))
    await ready.wait()
    progress = Path(args.progress)
    cpu = time.process_time()
    while not task.done():
        sink = NullBackend.instances.get("mail")
        report = {
            "received": seen["n"],
            "sent": sink.delivered if sink else 0,
            "cpu": time.process_time() - cpu,
            "calls": dict(calls),
        }
        progress.write_text(json.dumps(report))
        await asyncio.sleep(0.1)


def busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy so far (all cores, from /proc/stat)."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def tree_cpu(root: int) -> float:
    """CPU seconds of process ``root`` and its descendants alive now (with the children they reaped)."""
    tick = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    spent: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])
        spent[int(entry.name)] = sum(int(f) for f in fields[11:15]) / tick
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += spent.get(pid, 0.0)
        todo.extend(child for child, parent in parents.items() if parent == pid)
    return total


def queued(state: str) -> int:
    if state.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(state) as db:
            row = db.execute("SELECT COUNT(*) FROM deliveries WHERE state = 'queued'").fetchone()
    else:
        with sqlite3.connect(f"file:{state}?mode=ro", uri=True) as db:
            row = db.execute("SELECT COUNT(*) FROM deliveries WHERE state = 'queued'").fetchone()
    return int(row[0]) if row else 0


def run(
    name: str,
    daemons: int,
    state: str,
    args: argparse.Namespace,
    tmp: Path,
    amqp: str | None = None,
    servers: dict[str, int] | None = None,
) -> dict[str, Any]:
    """``amqp``: a broker URL — the daemons then compete for one durable queue instead of each hearing ZeroMQ."""
    from ours import free_endpoint, start_publisher

    endpoint = free_endpoint()
    queue = f"bench-cluster-{uuid.uuid4()}"
    bus: dict[str, Any] = {"endpoints": [endpoint]}
    if amqp is not None:
        bus = {"amqp": {"url": amqp, "queue": queue, "prefetch": args.prefetch}}
    procs: list[tuple[subprocess.Popen[bytes], Path]] = []
    for n in range(daemons):
        folder = tmp / f"{name.replace(' ', '-')}-{n}"
        folder.mkdir()
        (folder / "rules").mkdir()
        config = folder / "config.yaml"
        config.write_text(
            json.dumps(
                {
                    "bus": bus,
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
    before = [json.loads(p.read_text() or "{}") for _, p in procs]
    cpu_before = [b.get("cpu", 0.0) for b in before]
    busy = busy_seconds()
    servers = servers or {}
    server_cpu = {label: tree_cpu(pid) for label, pid in servers.items()}
    own_cpu = time.process_time()
    start = time.perf_counter()
    publisher = None
    if amqp is None:
        publisher = start_publisher(endpoint, args.messages, 0)
    else:
        # The queue exists once every daemon consumes it; publishing runs here, in its own process.
        from amqp import fill

        asyncio.run(fill(amqp, queue, args.messages))
    reports: list[dict[str, int]] = []

    def received() -> bool:
        counts = [r.get("received", 0) for r in reports]
        # ZeroMQ: every daemon hears every message. AMQP: each message goes to one of them.
        return (sum(counts) if amqp else min(counts)) >= args.messages

    try:
        while True:
            time.sleep(0.1)
            reports = [json.loads(p.read_text() or "{}") for _, p in procs]
            if received() and queued(state) == 0:
                break
            assert time.perf_counter() - start < 900, f"{name}: not done after 900 s: {reports}"
        elapsed = time.perf_counter() - start
        busy = busy_seconds() - busy
        server_cpu = {label: tree_cpu(servers[label]) - cpu for label, cpu in server_cpu.items()}
        # The publisher: a process of its own on ZeroMQ (counted by the machine only), this one on AMQP.
        server_cpu["publisher"] = time.process_time() - own_cpu if amqp else 0.0
    finally:
        for proc, _ in procs:
            proc.terminate()
        for proc, _ in procs:
            proc.wait(60)
        if publisher is not None:
            publisher.communicate()
    sent = [r.get("sent", 0) for r in reports]
    return {
        "name": name,
        "daemons": daemons,
        "messages": args.messages,
        "seconds": round(elapsed, 2),
        "msgs_per_s": round(args.messages / elapsed, 1),
        "sent_per_daemon": sent,
        "received_per_daemon": [r.get("received", 0) for r in reports],
        # CPU the daemons used, and the whole machine (daemons, PostgreSQL, broker, publisher, the rest).
        "daemon_cpu_ms_per_msg": round(
            1000 * sum(r.get("cpu", 0.0) - b for r, b in zip(reports, cpu_before, strict=True)) / args.messages, 2
        ),
        "machine_cpu_ms_per_msg": round(1000 * busy / args.messages, 2),
        "cores_busy": round(busy / elapsed, 2),
        **{f"{label}_cpu_ms_per_msg": round(1000 * cpu / args.messages, 2) for label, cpu in server_cpu.items()},
        # Store calls during the run, all daemons together, per message.
        "store_calls_per_msg": {
            name: round(
                sum(
                    r.get("calls", {}).get(name, 0) - b.get("calls", {}).get(name, 0)
                    for r, b in zip(reports, before, strict=True)
                )
                / args.messages,
                3,
            )
            for name in sorted({n for r in reports for n in r.get("calls", {})})
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--child", action="store_true")
    parser.add_argument("--config")
    parser.add_argument("--progress")
    parser.add_argument("--rules", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--prefetch", type=int, default=200)
    parser.add_argument("--bus", choices=("zeromq", "amqp", "both"), default="both")
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
    postmaster = int((server.data / "postmaster.pid").read_text().split()[0])
    rabbit_pid = 0
    rows: list[dict[str, Any]] = []
    ratios: list[str] = []
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, tmp, ignore_errors=True)
        stack.callback(server.close)
        buses: list[tuple[str, str | None]] = []
        if args.bus in ("zeromq", "both"):
            buses.append(("ZeroMQ", None))
        if args.bus in ("amqp", "both"):
            from tests.rabbitmqserver import rabbitmq_available, rabbitmq_node

            if rabbitmq_available():
                node = stack.enter_context(rabbitmq_node())
                buses.append(("AMQP", node.url))
                assert node.process is not None
                rabbit_pid = node.process.pid
            else:
                print("rabbitmq-server is not installed: AMQP rows skipped", file=sys.stderr)
        for label, amqp in buses:
            first = len(rows)
            for name, daemons, state in (
                ("1 daemon, SQLite", 1, str(tmp / f"state-{label}.sqlite")),
                ("1 daemon, PostgreSQL", 1, server.create_database()),
                ("2 daemons, PostgreSQL", 2, server.create_database()),
            ):
                servers = {"postgresql": postmaster}
                if amqp is not None:
                    servers["broker"] = rabbit_pid
                rows.append(run(f"{label}: {name}", daemons, state, args, tmp, amqp, servers))
            one, two = rows[first + 1]["msgs_per_s"], rows[first + 2]["msgs_per_s"]
            ratios.append(f"{label}: two daemons / one daemon on PostgreSQL: {two / one:.2f}x")
    print(f"({args.messages} messages, {args.rules} rules, {os.cpu_count()} cores)")
    print(
        "| run | msgs/s | seconds | received per daemon | sent per daemon | daemons' CPU ms/msg |"
        " machine CPU ms/msg | cores busy |"
    )
    print("| --- | ---: | ---: | --- | --- | ---: | ---: | ---: |")
    for row in rows:
        print(
            f"| {row['name']} | {row['msgs_per_s']} | {row['seconds']} | {row['received_per_daemon']}"
            f" | {row['sent_per_daemon']} | {row['daemon_cpu_ms_per_msg']} | {row['machine_cpu_ms_per_msg']}"
            f" | {row['cores_busy']} |"
        )
    print("\n".join(ratios))
    print("| run | PostgreSQL CPU ms/msg | broker CPU ms/msg | publisher CPU ms/msg (AMQP) |")
    print("| --- | ---: | ---: | ---: |")
    for row in rows:
        print(
            f"| {row['name']} | {row.get('postgresql_cpu_ms_per_msg')} | {row.get('broker_cpu_ms_per_msg', '-')}"
            f" | {row.get('publisher_cpu_ms_per_msg')} |"
        )
    for row in rows:
        if row["store_calls_per_msg"]:
            print(f"{row['name']}: store calls per message: {row['store_calls_per_msg']}")
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "cluster.json").write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
