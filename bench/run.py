"""The benchmark harness: our daemon against the physical limit and the peer, in one run.

    .venv/bin/python bench/run.py [--messages N] [--rules 1000,10000,100000] [--out FILE]

Measures on this machine, side by side, over the same real-shaped messages:
- raw:    a pyzmq ``recv_multipart`` + ``json.loads`` loop (the physical limit);
- fedmsg: the real fedmsg library's ``tail_messages`` loop (the peer);
- ours:   the daemon end to end (bus -> decode -> meta -> match -> render -> a null
          backend that records delivery time) with 1k, 10k and 100k synthetic rules.
Reports messages/s, the ratio to the raw loop, CPU per message and peak RSS, then
p50/p99 publish-to-delivery latency at a steady 1k msg/s. Prints a table and writes
JSON. Machines here are shared and noisy: read the ratios, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import zmq

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def free_endpoint() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{sock.getsockname()[1]}"


def start_publisher(endpoint: str, count: int, rate: float = 0.0) -> subprocess.Popen[str]:
    args = [sys.executable, str(HERE / "publisher.py"), endpoint, str(count)]
    if rate:
        args.append(str(rate))
    return subprocess.Popen(args, stdout=subprocess.PIPE, text=True)


def bench_raw(count: int) -> dict[str, Any]:
    """The physical limit: receive and parse, nothing else."""
    endpoint = free_endpoint()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    publisher = start_publisher(endpoint, count)
    sock.connect(endpoint)
    loads = json.loads
    recv = sock.recv_multipart
    frames = recv()
    start, cpu0 = time.perf_counter(), time.process_time()
    loads(frames[1])
    for _ in range(count - 1):
        loads(recv()[1])
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu0
    publisher.communicate()
    sock.close(0)
    ctx.term()
    return result("raw pyzmq + json.loads", count, elapsed, cpu, peak_rss_mb())


def bench_fedmsg(count: int) -> dict[str, Any]:
    """The peer: fedmsg's own receive loop, in its own virtualenv."""
    python = os.environ.get("FEDMSG_PYTHON") or str(ROOT / ".venv-fedmsg" / "bin" / "python")
    if not Path(python).exists():
        return {"name": "fedmsg.tail_messages", "error": f"{python} missing (run scripts/test.sh once)"}
    endpoint = free_endpoint()
    receiver = subprocess.Popen(
        [python, str(HERE / "fedmsg_receiver.py"), endpoint, str(count)], stdout=subprocess.PIPE, text=True
    )
    assert receiver.stdout is not None
    receiver.stdout.readline()  # READY
    publisher = start_publisher(endpoint, count)
    line = receiver.stdout.readline().split()
    publisher.communicate()
    receiver.wait()
    elapsed, cpu, rss_kb = float(line[1]), float(line[2]), int(line[3])
    return result("fedmsg.tail_messages", count, elapsed, cpu, rss_kb / 1024)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def result(name: str, count: int, elapsed: float, cpu: float, rss_mb: float, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "messages": count,
        "seconds": round(elapsed, 4),
        "msgs_per_s": round(count / elapsed, 1),
        "cpu_us_per_msg": round(cpu / count * 1e6, 2),
        "peak_rss_mb": round(rss_mb, 1),
        **extra,
    }


def print_table(rows: list[dict[str, Any]], raw_rate: float) -> None:
    header = f"{'run':56} {'msgs/s':>10} {'vs raw':>7} {'cpu µs/msg':>11} {'peak RSS MB':>12} {'p50 ms':>7} {'p99 ms':>7}"
    print(header)
    print("-" * len(header))
    for row in rows:
        if "error" in row:
            print(f"{row['name']:56} {row['error']}")
            continue
        ratio = row["msgs_per_s"] / raw_rate if raw_rate else 0.0
        p50 = f"{row['p50_ms']:.2f}" if "p50_ms" in row else "-"
        p99 = f"{row['p99_ms']:.2f}" if "p99_ms" in row else "-"
        print(
            f"{row['name']:56} {row['msgs_per_s']:>10.0f} {ratio:>6.0%} {row['cpu_us_per_msg']:>11.1f} "
            f"{row['peak_rss_mb']:>12.1f} {p50:>7} {p99:>7}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--rules", default="1000,10000,100000")
    parser.add_argument("--processes", default="0,1", help="intake_processes values, a row each (default %(default)s)")
    parser.add_argument("--out", default=str(HERE / "results" / "bench.json"))
    args = parser.parse_args()
    rows = [bench_raw(args.messages), bench_fedmsg(args.messages)]
    try:
        from ours import bench_ours  # type: ignore[import-not-found]
    except ImportError:
        bench_ours = None
    if bench_ours is not None:
        for processes in (int(n) for n in args.processes.split(",") if n):
            for rules in (int(n) for n in args.rules.split(",") if n):
                rows.extend(bench_ours(args.messages, rules, processes=processes))
    raw_rate = rows[0]["msgs_per_s"]
    print_table(rows, raw_rate)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": os.uname().nodename, "cpus": os.cpu_count(), "runs": rows}, indent=2))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    raise SystemExit(main())
