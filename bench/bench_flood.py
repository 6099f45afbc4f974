#!/usr/bin/env python3
"""Benchmark: a 200k-message flood to a slow destination; does the daemon's memory stay flat?

Runs ``python -m fedmsg_notify run`` as a subprocess with one account paced at a few
sends per second (the "slow destination"), publishes ``--count`` messages, and samples
the daemon's resident memory (``/proc/PID/status``: VmRSS now, VmHWM peak) as the
backlog grows. The backlog lives in the SQLite store and workers read windows of it,
so RSS should stay roughly constant from the first 10% of the flood to the last; the
coalescing stage keeps the *queue* short by merging what the pace cannot send soon.

The publisher keeps at most ``--in-flight`` messages ahead of what the daemon has
stored, so the numbers measure the engine, not ZeroMQ's receive buffer (which is
bounded separately by ``bus.receive_queue``).

    .venv/bin/python bench/bench_flood.py [--count 200000] [--rate 5]

Prints numbers only; nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import os
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fedmsg_notify.bus.zeromq import Publisher
from fedmsg_notify.testing import envelopes

TOPIC = "org.fedoraproject.prod.bodhi.update.comment"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def memory_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process, in KiB."""
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields.get("VmRSS", 0), fields.get("VmHWM", 0)


def stored(db: Path) -> tuple[int, int, int]:
    """(messages accepted, deliveries still queued, messages coalesced) from the state database."""
    if not db.exists():
        return 0, 0, 0
    with sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True, timeout=30) as conn:
        accepted = conn.execute("SELECT COUNT(*) FROM accepted").fetchone()[0]
        queued = conn.execute("SELECT COUNT(*) FROM deliveries WHERE state = 'queued'").fetchone()[0]
        row = conn.execute("SELECT SUM(coalesced) FROM destinations").fetchone()
        return int(accepted), int(queued), int(row[0] or 0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=200_000, help="messages to publish (default %(default)s)")
    parser.add_argument("--rate", type=float, default=5.0, help="the slow destination's sends/second")
    parser.add_argument("--in-flight", type=int, default=5_000, help="max messages published but not yet stored")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="fedmsg-notify-bench-") as tmp:
        base = Path(tmp)
        endpoint = f"tcp://127.0.0.1:{free_port()}"
        (base / "rules.yaml").write_text("rules:\n  - {name: all, match: {}, deliver: [{via: slow}]}\n")
        (base / "config.yaml").write_text(
            f"bus: {{endpoints: [{endpoint}]}}\n"
            f"accounts:\n  slow: {{backend: 'fedmsg_notify.testing:RecordingBackend', rate: {args.rate}, burst: 1}}\n"
            f"rules: [{base / 'rules.yaml'}]\nstate: {base / 'state.db'}\n"
        )
        daemon = subprocess.Popen(
            [sys.executable, "-m", "fedmsg_notify", "run", "-c", str(base / "config.yaml")],
            stderr=open(base / "daemon.log", "w"),  # noqa: SIM115 - lives as long as the daemon
        )
        db = base / "state.db"
        try:
            publisher = Publisher(endpoint, username="bench", wait=30.0)
            time.sleep(1.0)
            rss0, _ = memory_kib(daemon.pid)
            print(f"daemon started: RSS {rss0 / 1024:.1f} MiB; flooding {args.count} messages, pace {args.rate}/s")
            print(f"{'stored':>8} {'queued':>7} {'coalesced':>9} {'RSS MiB':>8} {'peak MiB':>8} {'msg/s':>7}")
            started = time.monotonic()
            marks = {int(args.count * f / 10) for f in range(1, 11)}
            accepted = 0
            for sent, envelope in enumerate(envelopes(args.count, TOPIC), 1):
                publisher.send_envelope(envelope)
                if sent - accepted >= args.in_flight or sent == args.count:
                    while sent - accepted >= args.in_flight or (sent == args.count and accepted < sent):
                        time.sleep(0.05)
                        accepted, queued, coalesced = stored(db)
                        if daemon.poll() is not None:
                            raise SystemExit(f"daemon exited with {daemon.returncode}; see its log")
                    reached = {m for m in marks if m <= accepted}
                    if reached:
                        marks -= reached
                        rss, peak = memory_kib(daemon.pid)
                        rate = accepted / (time.monotonic() - started)
                        print(
                            f"{accepted:>8} {queued:>7} {coalesced:>9} {rss / 1024:>8.1f} {peak / 1024:>8.1f} {rate:>7.0f}"
                        )
            elapsed = time.monotonic() - started
            rss, peak = memory_kib(daemon.pid)
            accepted, queued, coalesced = stored(db)
            print(
                f"done: {accepted} stored in {elapsed:.1f} s ({accepted / elapsed:.0f} msg/s); "
                f"RSS {rss / 1024:.1f} MiB, peak {peak / 1024:.1f} MiB (started at {rss0 / 1024:.1f}); "
                f"{queued} queued, {coalesced} coalesced; database {os.path.getsize(db) / 2**20:.1f} MiB"
            )
            publisher.close(linger_ms=0)
        finally:
            daemon.terminate()
            daemon.wait(30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
