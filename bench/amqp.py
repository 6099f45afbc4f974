"""The AMQP side of the benchmark: a private RabbitMQ node, the raw consume limit, and the daemon.

    .venv/bin/python bench/amqp.py [--messages N] [--rules 1000,10000,100000] [--out FILE]

Each run pre-fills a durable queue with N real-shaped messages in the fedora-messaging wire
format (the bundled samples' topics and bodies, persistent), then measures draining it:
- raw:  an ``aio-pika`` consume loop, prefetch 1000, ``json.loads`` of every body and one
        ``ack(multiple=True)`` per 250 messages (the physical limit of this client and broker);
- ours: the daemon on ``bus.amqp`` with the same rule populations as ``bench/ours.py``
        (decode → metadata → match → render → SQLite outbox → NullBackend), acking a batch
        after its commit, prefetch 1000.
The clock starts at the first message received and stops when the last is acknowledged
(raw) or delivered (ours). Needs ``rabbitmq-server`` (scripts/setup.d/rabbitmq.sh).
Rows print in the same format as ``bench/run.py``'s table.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT)]


async def fill(url: str, queue: str, count: int) -> None:
    """Declare ``queue`` bound to amq.topic and publish ``count`` sample messages into it."""
    import aio_pika
    from bench_rules import load_samples
    from fedmsg_notify.bus.amqp_publish import AmqpPublisher

    connection = await aio_pika.connect(url)
    channel = await connection.channel()
    declared = await channel.declare_queue(queue, durable=True)
    await declared.bind("amq.topic", routing_key="#")
    await connection.close()
    samples = [(message.topic, message.body) for message, _ in load_samples()]
    publisher = AmqpPublisher(url)
    try:
        for start in range(0, count, 500):
            await asyncio.gather(
                *(publisher.publish(*samples[n % len(samples)]) for n in range(start, min(start + 500, count)))
            )
    finally:
        await publisher.close()
        await asyncio.sleep(0.2)


async def raw(url: str, queue: str, count: int) -> dict[str, Any]:
    import aio_pika

    connection = await aio_pika.connect(url)
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=1000)
    source = await channel.get_queue(queue)
    done = asyncio.Event()
    seen = {"n": 0, "start": 0.0, "cpu": 0.0}
    loads = json.loads

    async def on_message(message: Any) -> None:
        if seen["n"] == 0:
            seen["start"], seen["cpu"] = time.perf_counter(), time.process_time()
        loads(message.body)
        seen["n"] += 1
        if seen["n"] % 250 == 0 or seen["n"] == count:
            await message.ack(multiple=True)
        if seen["n"] == count:
            done.set()

    await source.consume(on_message)
    await done.wait()
    elapsed, cpu = time.perf_counter() - seen["start"], time.process_time() - seen["cpu"]
    await connection.close()
    await asyncio.sleep(0.2)  # aio-pika's close callbacks finish before the loop does
    return row("raw aio-pika consume + json.loads", count, elapsed, cpu)


async def ours(url: str, queue: str, count: int, rules: int, processes: int = 0) -> dict[str, Any]:
    from bench_rules import load_samples
    from fedmsg_notify.config.model import load_config
    from fedmsg_notify.daemon import Daemon
    from fedmsg_notify.matching.rules import RuleSet
    from fedmsg_notify.testing import NullBackend
    from ours import children_cpu, population, write_rule_files  # type: ignore[import-not-found]

    pairs = load_samples()
    tmp = Path(tempfile.mkdtemp(prefix="fedmsg-notify-bench-amqp-"))
    (tmp / "rules").mkdir()
    (tmp / "config.yaml").write_text(
        json.dumps(
            {
                "bus": {"amqp": {"url": url, "queue": queue, "prefetch": 1000}},
                "accounts": {"mail": {"backend": "fedmsg_notify.testing:NullBackend"}},
                "rules": [str(tmp / "rules")],
                "state": str(tmp / "state.sqlite"),
                "intake_processes": processes,
            }
        )
    )
    docs, _described = population(rules, pairs)
    if processes:
        # The intake processes load the rules from files, as the daemon does (bench/ours.py).
        write_rule_files(tmp / "rules", docs)
        daemon = Daemon(load_config(tmp / "config.yaml"))
    else:
        ruleset = RuleSet.from_documents(docs, load_config(tmp / "config.yaml").accounts)
        daemon = Daemon(load_config(tmp / "config.yaml"))
        daemon.pipeline = dataclasses.replace(daemon.pipeline, rules=ruleset)
    for message, _ in pairs:  # warm-up, as bench/ours.py does
        meta = daemon.pipeline.meta(message)
        for route in daemon.pipeline.rules.routes(message, meta):
            daemon.pipeline.renderer.render(NullBackend, message, meta, route)
    seen = {"n": 0, "start": 0.0, "cpu": 0.0}
    real_accept = daemon.accept

    async def accept(batch: Any, *rest: Any) -> bool:
        while processes and not daemon.router.ready:
            # The clock starts once the intake process has built its rules (a daemon that has
            # been running); the slices already under way were routed on the loop.
            await asyncio.sleep(0.05)
        if seen["n"] == 0:
            seen["start"], seen["cpu"] = time.perf_counter(), time.process_time()
            seen["children"] = children_cpu(daemon.router.pids())
        stored = await real_accept(batch, *rest)
        seen["n"] += len(batch)
        return stored

    daemon.accept = accept  # type: ignore[method-assign]
    ready = asyncio.Event()
    task = asyncio.create_task(daemon.run(ready))
    await ready.wait()
    try:
        while True:
            await asyncio.sleep(0.02)
            if seen["n"] < count or daemon.store is None:
                continue
            if daemon.store.db.execute("SELECT COUNT(*) FROM deliveries WHERE state = 'queued'").fetchone()[0]:
                continue
            break
        sink = NullBackend.instances["mail"]
        end = sink.last_at or time.perf_counter()
        elapsed = end - seen["start"]
        cpu = time.process_time() - seen["cpu"] + children_cpu(daemon.router.pids()) - seen.get("children", 0.0)
        deliveries = daemon.store.db.execute("SELECT COUNT(*) FROM deliveries WHERE kind = 'message'").fetchone()[0]
    finally:
        daemon.stop()
        await task
        shutil.rmtree(tmp, ignore_errors=True)
    label = f"{rules // 1000}k" if rules % 1000 == 0 else str(rules)
    extra = f", {processes} intake process" if processes else ""
    return row(f"ours on AMQP, {label} rules{extra} ({deliveries / count:.2f} deliveries/msg)", count, elapsed, cpu)


def row(name: str, count: int, elapsed: float, cpu: float) -> dict[str, Any]:
    import resource

    return {
        "name": name,
        "messages": count,
        "seconds": round(elapsed, 4),
        "msgs_per_s": round(count / elapsed, 1),
        "cpu_us_per_msg": round(cpu / count * 1e6, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def child(url: str, count: int, what: str) -> dict[str, Any]:
    """Fill a fresh queue, then drain it in a fresh interpreter (``what``: raw or a rule count)."""
    queue = f"bench-{uuid.uuid4()}"
    asyncio.run(fill(url, queue, count))
    proc = subprocess.run(
        [sys.executable, __file__, "--child", url, queue, str(count), what],
        stdout=subprocess.PIPE,
        text=True,
        check=False,
    )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        return {"name": what, "error": f"child exited with {proc.returncode}"}
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--rules", default="1000,10000,100000")
    parser.add_argument("--processes", default="0,1", help="intake_processes values, a row each (default %(default)s)")
    parser.add_argument("--out", default=str(HERE / "results" / "amqp.json"))
    args = parser.parse_args()
    if args.child:
        url, queue, count, what = args.child
        rules, _, processes = what.partition(":")
        coroutine = raw(url, queue, int(count)) if what == "raw" else ours(url, queue, int(count), int(rules), int(processes or 0))
        print(json.dumps(asyncio.run(coroutine)), flush=True)
        return 0
    from run import print_table

    from tests.rabbitmqserver import RabbitMQ, rabbitmq_available

    if not rabbitmq_available():
        print("rabbitmq-server is not installed (scripts/setup.d/rabbitmq.sh)", file=sys.stderr)
        return 1
    node = RabbitMQ()
    try:
        node.start()
        rows = [child(node.url, args.messages, "raw")]
        for processes in (n for n in args.processes.split(",") if n):
            for rules in (n for n in args.rules.split(",") if n):
                rows.append(child(node.url, args.messages, f"{rules}:{processes}"))
    finally:
        node.close()
    print_table(rows, rows[0].get("msgs_per_s", 0.0))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": os.uname().nodename, "cpus": os.cpu_count(), "runs": rows}, indent=2))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
