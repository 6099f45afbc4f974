"""Issue 18's benchmark: the rule index and rule loading at 1k and 100k rules, beside the raw loop.

    .venv/bin/python bench/bench_index.py [--sizes 1000 100000] [--messages 50000] [--seconds 5]
                                          [--e2e] [--baseline /work/main/.venv/bin/python]

The population is ``bench/population.py``'s: ten rules per person of every shape people
write (exact topics, globs wild at both ends and in the middle, field equalities, regexes,
usernames, packages, ``not:``) plus one firehose, written as one YAML file per person.
Each row runs in a fresh interpreter, so RSS is that configuration's alone:

- **raw**: ``bench/run.py``'s pyzmq ``recv_multipart`` + ``json.loads`` loop (the limit);
- **parse**: a plain ``yaml.CSafeLoader`` parse of the same files (what loading is held to);
- **ours, N rules**: ``RuleSet.load`` of the files (time, RSS after, peak RSS), then over the
  real samples: matching alone (``RuleSet.routes`` with metadata computed beforehand) and
  decode + metadata + matching (``json.loads`` → ``Message`` → ``MetaEngine`` → ``routes``,
  the intake's CPU work before rendering and storing);
- with ``--e2e``, the daemon end to end (``bench/ours.py --population index``: bus → ... →
  null backend, rendering and the SQLite outbox included);
- with ``--baseline PYTHON``, the same matching rows with another checkout's code (the index
  before this issue), for comparison.

Matching rates are the best of three runs of ``--seconds`` each (the machine is shared).

It prints a table and JSON; it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def rss_mb() -> float:
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_mb() -> float:
    """This interpreter's peak RSS (VmHWM: getrusage's ru_maxrss would include the parent's, kept over exec)."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rate(fn: Any, items: list[Any], seconds: float, repeat: int = 3) -> tuple[float, float]:
    """Calls per second of ``fn(item)`` cycling over ``items`` for about ``seconds``, and mean len of results.

    The best of ``repeat`` runs: the machine is shared, and other work only ever slows a run down.
    """
    best = 0.0
    mean = 0.0
    for _ in range(repeat):
        done = total = 0
        started = time.perf_counter()
        while True:
            for item in items:
                total += len(fn(item))
                done += 1
            elapsed = time.perf_counter() - started
            if elapsed >= seconds:
                break
        best, mean = max(best, done / elapsed), total / done
    return best, mean


def child_parse(directory: Path) -> dict[str, Any]:
    import yaml

    files = sorted(directory.glob("*.yaml"))
    started = time.perf_counter()
    for path in files:
        yaml.load(path.read_text(encoding="utf-8"), Loader=yaml.CSafeLoader)
    return {"parse_s": time.perf_counter() - started, "files": len(files), "peak_rss_mb": peak_mb()}


def child_match(directory: Path, seconds: float) -> dict[str, Any]:
    from fedmsg_notify.bus.envelope import Message
    from fedmsg_notify.config.model import load_config
    from fedmsg_notify.matching.rules import RuleSet
    from fedmsg_notify.meta.engine import MetaEngine
    from population import load_samples

    samples = load_samples()
    accounts = load_config("<bench>", "accounts: {mail: {backend: console}}").accounts
    before = rss_mb()
    started = time.perf_counter()
    ruleset = RuleSet.load([directory], accounts)
    load_s = time.perf_counter() - started
    loaded = rss_mb()
    stats = ruleset.index.stats()
    pairs = [(m, meta) for m, meta, _ in samples]
    candidates = sum(len(ruleset.index.candidates(m, meta)) for m, meta in pairs) / len(pairs)
    match_rate, routes = rate(lambda pair: ruleset.routes(*pair), pairs, seconds)
    engine = MetaEngine()
    frames = [frame for _, _, frame in samples]

    def intake(frame: bytes) -> Any:
        message = Message.from_envelope(json.loads(frame))
        return ruleset.routes(message, engine.compute(message))

    pipeline_rate, _ = rate(intake, frames, seconds)

    def decode_meta(frame: bytes) -> Any:
        message = Message.from_envelope(json.loads(frame))
        return (engine.compute(message),)

    meta_rate, _ = rate(decode_meta, frames, seconds)
    raw_rate, _ = rate(lambda frame: (json.loads(frame),), frames, seconds)
    return {
        "rules": len(ruleset),
        "files": ruleset.files,
        "load_s": load_s,
        "rss_before_load_mb": before,
        "rss_after_load_mb": loaded,
        "peak_rss_mb": peak_mb(),
        "residual": stats.get("residual", 0),
        "negated": stats.get("negated", 0),
        "candidates_per_msg": candidates,
        "routes_per_msg": routes,
        "match_msgs_per_s": match_rate,
        "pipeline_msgs_per_s": pipeline_rate,
        "decode_meta_msgs_per_s": meta_rate,
        "json_loads_msgs_per_s": raw_rate,
    }


def run_child(python: str, *args: str) -> dict[str, Any]:
    proc = subprocess.run(
        [python, str(Path(__file__).resolve()), "--child", *args], stdout=subprocess.PIPE, text=True, check=False
    )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        return {"error": f"child exited with {proc.returncode}"}
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 100_000])
    parser.add_argument("--messages", type=int, default=50_000, help="raw loop and --e2e messages")
    parser.add_argument("--seconds", type=float, default=3.0, help="time per matching measurement (best of 3)")
    parser.add_argument("--keep", help="write the rule files here (reused if present)")
    parser.add_argument("--e2e", action="store_true", help="also run the daemon end to end (bench/ours.py)")
    parser.add_argument("--baseline", help="a python whose fedmsg_notify is the code to compare with")
    parser.add_argument("--out", default=str(HERE / "results" / "index.json"))
    args = parser.parse_args()
    if args.child:
        kind, directory = args.child[0], Path(args.child[1])
        result = child_parse(directory) if kind == "parse" else child_match(directory, float(args.child[2]))
        print(json.dumps(result), flush=True)
        return 0

    from population import load_samples, population, write_population
    from run import bench_raw

    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="fedmsg-notify-index-"))
    samples = load_samples()
    dirs = {}
    for size in args.sizes:
        directory = base / f"rules{size}"
        if not directory.exists():
            write_population(directory, population(size, samples))
        dirs[size] = directory
    print(f"population in {base}; {len(samples)} sample messages; {os.cpu_count()} CPUs", flush=True)
    report: dict[str, Any] = {"raw": bench_raw(args.messages), "sizes": {}}
    raw = report["raw"]["msgs_per_s"]
    print(f"raw pyzmq + json.loads: {raw:,.0f} msg/s", flush=True)
    for size, directory in dirs.items():
        row: dict[str, Any] = {"parse": run_child(sys.executable, "parse", str(directory))}
        row["ours"] = run_child(sys.executable, "match", str(directory), str(args.seconds))
        if args.baseline:
            row["baseline"] = run_child(args.baseline, "match", str(directory), str(args.seconds))
        if args.e2e:
            from ours import child as ours_child

            row["e2e"] = ours_child(["--rules", str(size), "--messages", str(args.messages), "--population", "index"])
        report["sizes"][size] = row
        print(json.dumps({size: row}), flush=True)
    print_table(report)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {out}")
    return 0


def print_table(report: dict[str, Any]) -> None:
    raw = report["raw"]["msgs_per_s"]
    sizes = report["sizes"]
    first = sizes[min(sizes)]
    print()
    print("| run | rules | load s | ×CSafeLoader | RSS after load MB | peak RSS MB | residual | cand/msg | "
          "routes/msg | match msg/s | decode+meta msg/s | decode+meta+match msg/s | vs raw | vs 1k |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| raw pyzmq + json.loads | – | – | – | – | {report['raw']['peak_rss_mb']:.0f} | – | – | – | – | – | "
          f"{raw:,.0f} | 100% | – |")
    for size, row in sizes.items():
        parse = row["parse"]
        print(f"| CSafeLoader parse | {size:,} | {parse.get('parse_s', 0):.2f} | 1.00 | – | "
              f"{parse.get('peak_rss_mb', 0):.0f} | – | – | – | – | – | – | – | – |")
        for key, name in (("ours", "ours"), ("baseline", "before (main)")):
            r = row.get(key)
            if not r or "error" in r:
                continue
            smallest = first[key]
            print(
                f"| {name} | {r['rules']:,} | {r['load_s']:.2f} | {r['load_s'] / parse['parse_s']:.2f} | "
                f"{r['rss_after_load_mb']:.0f} | {r['peak_rss_mb']:.0f} | {r['residual']} | "
                f"{r['candidates_per_msg']:.1f} | {r['routes_per_msg']:.2f} | {r['match_msgs_per_s']:,.0f} | "
                f"{r.get('decode_meta_msgs_per_s', 0):,.0f} | {r['pipeline_msgs_per_s']:,.0f} | {r['pipeline_msgs_per_s'] / raw:.0%} | "
                f"{r['pipeline_msgs_per_s'] / smallest['pipeline_msgs_per_s']:.2f} |"
            )
        e2e = row.get("e2e")
        if e2e and "error" not in e2e:
            print(f"| daemon end to end | {size:,} | – | – | {e2e.get('rss_after_load_mb', 0):.0f} | "
                  f"{e2e.get('peak_rss_mb', 0):.0f} | – | – | {e2e.get('deliveries_per_msg', 0):.2f} | – | – | "
                  f"{e2e['msgs_per_s']:,.0f} | {e2e['msgs_per_s'] / raw:.0%} | "
                  f"{e2e['msgs_per_s'] / first['e2e']['msgs_per_s']:.2f} |")


if __name__ == "__main__":
    raise SystemExit(main())
