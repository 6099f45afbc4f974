"""Our daemon end to end, for ``bench/run.py``: one fresh subprocess per configuration.

    .venv/bin/python bench/run.py                      # raw, fedmsg, ours at 1k/10k/100k rules
    .venv/bin/python bench/ours.py --long [--messages 1000000] [--rules 10000]

Each configuration runs the real :class:`~fedmsg_notify.daemon.Daemon` in a child process
(so peak RSS and CPU are that run's alone): ZeroMQ SUB socket -> decode -> (signature
validation off) -> metadata -> rule index and match -> render (the shipped ``email/``
templates, subject + text + autoescaped HTML) -> SQLite outbox (WAL) -> one worker per
destination -> :class:`fedmsg_notify.testing.NullBackend`, which records delivery times.
The publisher (``bench/publisher.py``) is another process sending the real sample
messages with unique msg_ids.

Two runs per rule count:

* **throughput**: the publisher sends as fast as it can; time runs from the first frame
  the daemon decodes to the last delivery (or the last message accepted, whichever is
  later). CPU per message is this process's CPU over the same span. Digest entries
  (the hourly "my packages" rule) are stored and sent only when 100 have gathered.
* **latency**: the publisher sends at a steady 1,000 msg/s with its send time in the
  envelope (``bench_sent``); latency is publish -> ``NullBackend.send`` for every
  immediate delivery.

Both start after a warm-up pass over the sample shapes (metadata and templates compiled
on first sight, once per daemon lifetime), outside the measured span.

``--long`` (run on its own, it takes minutes) streams 1M messages at a steady rate the
daemon keeps up with, through 10k rules by default, and reports peak RSS and RSS samples
along the way: the "peak RSS after 1M messages" target, i.e. that nothing grows per
message. Rule count there is smaller because the rule set's own memory is measured by
the 100k-rule rows of the main table.

The synthetic population (``population()``) is shaped like Fedora's FMN users: most
people's rules are *targeted* -- about their own packages and their own username -- and
a small, fixed number of people subscribe to *broad* topics:

* every person has the four FMN-style targeted rules (the generator of
  ``bench_rules.py``): "my builds" (``msg.owner`` is me), "my packages" (five packages,
  not my own actions; an hourly digest), "mentions of me" (not my own actions) and "one
  event on my packages" (an exact topic);
* every username the sample messages mention is ONE person (people are unique), and
  every package they mention is among the packages of two people; everyone else is a
  stranger the bus never mentions (user12345, pkg678). So however many rules there
  are, a message concerns the same few people -- as on the real bus;
* 20 *watchers* (a fixed number, whatever the rule count) also have broad rules: 2
  firehoses (everything but repo and tag churn: an unindexable ``not:`` rule, evaluated
  for every message), and 18 people following one or two services or topics (all
  bodhi, all pagure, failed koji builds, composes, ...).

The rule set is compiled in memory (``RuleSet.from_documents``) and swapped into the
daemon's pipeline: parsing 25,000 YAML files would only measure the YAML parser.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import random
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

WATCHERS = 20
# Broad rules of the watchers: (rule name, match) -- services and topics people follow whole.
BROAD: list[tuple[str, dict[str, Any]]] = [
    ("all bodhi", {"service": "bodhi"}),
    ("all pagure", {"service": "pagure"}),
    ("composes", {"service": ["compose", "pungi"]}),
    ("failed builds", {"topic": "*.buildsys.build.state.change", "field": {"path": "msg.new", "equals": 3}}),
    ("copr", {"service": "copr"}),
    ("new upstream releases", {"service": ["anitya", "hotness"]}),
    ("CI results", {"service": ["ci", "jenkins"]}),
    ("stable pushes", {"topic": "*.bodhi.update.request.stable"}),
    ("pull requests", {"topic": "org.fedoraproject.prod.pagure.pull-request.*"}),
    ("package db", {"service": "pkgdb"}),
    ("bugzilla", {"service": "bugzilla"}),
    ("cloud images", {"service": ["autocloud", "fedimg"]}),
    ("openqa", {"service": "openqa"}),
    ("meetings", {"service": "meetbot"}),
    ("wiki edits", {"service": "wiki"}),
    ("elections", {"service": "fedora_elections"}),
]
FIREHOSE: dict[str, Any] = {"not": {"topic": ["*.buildsys.repo.*", "*.buildsys.tag"]}}
FIREHOSES = 2


def targeted_rules(user: str, packages: list[str], topic: str, to: dict[str, Any]) -> list[dict[str, Any]]:
    """The four FMN-style rules every person has (as in bench_rules.py)."""
    return [
        {
            "name": "my builds",
            "match": {"topic": "*.buildsys.build.state.change", "field": {"path": "msg.owner", "equals": "$me"}},
            "deliver": [to],
        },
        {
            "name": "my packages",
            "match": {"packages": packages, "not": {"agent": "$me"}},
            "deliver": [{**to, "digest": {"every": "1h", "max": 100}}],
        },
        {"name": "mentions of me", "match": {"users": "$me", "not": {"agent": "$me"}}, "deliver": [to]},
        {
            "name": "one event on my packages",
            "match": {"topic": topic, "packages": packages[:2], "not": {"agent": "$me"}},
            "deliver": [to],
        },
    ]


def population(
    count: int, pairs: list[Any], seed: int = 1, broad_people: int = WATCHERS
) -> tuple[list[Any], dict[str, Any]]:
    """``count`` rules as in-memory rule documents, and a description of who they belong to."""
    from fedmsg_notify.config.yaml_positions import LocatedDocument

    rng = random.Random(seed)
    real_users = sorted({u for _, m in pairs for u in m.usernames})
    real_packages = sorted({p for _, m in pairs for p in m.packages})
    topics = sorted({m.topic for m, _ in pairs})
    # Every real package is followed by two of the people the bus mentions (or strangers
    # when there are too few of them).
    follows: dict[str, list[str]] = {user: [] for user in real_users}
    for package in real_packages:
        for user in rng.sample(real_users, min(2, len(real_users))):
            follows[user].append(package)
    docs: list[Any] = []
    n = 0
    watchers = involved = strangers = broad_rules = 0

    def add(user: str, rules: list[dict[str, Any]]) -> None:
        nonlocal n
        rules = rules[: count - n]
        n += len(rules)
        docs.append(LocatedDocument(file=f"<user {user}>", data={"me": user, "rules": rules}))

    # Watchers first: their broad rules are what makes most deliveries, and their number is fixed.
    for w in range(broad_people):
        if n >= count:
            break
        user = f"watcher{w}"
        to = {"via": "mail", "to": f"{user}@example.org"}
        if w < FIREHOSES:
            broad = [{"name": "firehose", "match": FIREHOSE, "deliver": [to]}]
        else:
            picks = rng.sample(BROAD, rng.choice((1, 2)))
            broad = [{"name": name, "match": match, "deliver": [to]} for name, match in picks]
        own = [f"pkg{rng.randrange(1 << 30)}" for _ in range(5)]
        before = n
        add(user, broad + targeted_rules(user, own, rng.choice(topics), to))
        broad_rules += min(len(broad), n - before)
        watchers += 1
    for user in real_users:
        if n >= count:
            break
        own = follows[user][:5]
        own += [f"pkg{rng.randrange(1 << 30)}" for _ in range(5 - len(own))]
        add(user, targeted_rules(user, own, rng.choice(topics), {"via": "mail", "to": f"{user}@example.org"}))
        involved += 1
    while n < count:
        user = f"user{len(docs)}"
        own = [f"pkg{rng.randrange(1 << 30)}" for _ in range(5)]
        add(user, targeted_rules(user, own, rng.choice(topics), {"via": "mail", "to": f"{user}@example.org"}))
        strangers += 1
    described = {
        "rules": n,
        "people": len(docs),
        "watchers": watchers,
        "broad_rules": broad_rules,
        "people_the_bus_mentions": involved,
        "strangers": strangers,
        "targeted_rules_per_person": 4,
    }
    return docs, described


# --------------------------------------------------------------------------- the child


def free_endpoint() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{sock.getsockname()[1]}"


def write_rule_files(folder: Path, docs: list[Any]) -> None:
    """The population's documents as rule files, one per person (JSON is YAML)."""
    for n, doc in enumerate(docs):
        (folder / f"person{n}.yaml").write_text(json.dumps(doc.data))


def children_cpu(pids: list[int]) -> float:
    """User + system CPU seconds of these processes so far (the intake processes)."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def rss_mb(pid: int | str = "self") -> float:
    """Current resident set size (of this process, or ``pid``)."""
    with open(f"/proc/{pid}/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb(pid: int | str = "self") -> float:
    """This interpreter's (or ``pid``'s) peak RSS (VmHWM; ru_maxrss would include the parent's, kept over exec)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run_daemon(args: argparse.Namespace) -> dict[str, Any]:
    from bench_rules import load_samples
    from fedmsg_notify.bus import zeromq as bus
    from fedmsg_notify.config.model import load_config
    from fedmsg_notify.daemon import Daemon
    from fedmsg_notify.matching.rules import RuleSet
    from fedmsg_notify.testing import NullBackend

    pairs = load_samples()
    tmp = Path(tempfile.mkdtemp(prefix="fedmsg-notify-bench-"))
    (tmp / "rules").mkdir()
    endpoint = free_endpoint()
    config_text = json.dumps(
        {
            "bus": {"endpoints": [endpoint]},
            "accounts": {"mail": {"backend": "fedmsg_notify.testing:NullBackend"}},
            "rules": [str(tmp / "rules")],
            "state": str(tmp / "state.sqlite"),
            "signatures": {"validate": False},
            "intake_processes": args.processes,
        }
    )
    (tmp / "config.yaml").write_text(config_text)
    NullBackend.record = args.rate > 0
    # FEDMSG_NOTIFY_BENCH_COMMITS_ON_LOOP=1: intake commits on the event loop (as before the writer thread).
    commits_off_loop = os.environ.get("FEDMSG_NOTIFY_BENCH_COMMITS_ON_LOOP") != "1"
    if args.population == "index":
        # bench_index.py's population (ten rules of every shape per person, plus one firehose),
        # written as files and loaded by the daemon itself, as it would be in production.
        from population import RULES_PER_PERSON, write_population
        from population import load_samples as index_samples
        from population import population as index_population

        written = index_population(args.rules, index_samples())
        described = {"rules": sum(len(d["rules"]) for d in written), "people": len(written),
                     "rules_per_person": RULES_PER_PERSON, "firehoses": 1}
        write_population(tmp / "rules", written)
        del written
    elif args.processes:
        # The intake processes build their own pipeline from the configuration, so the rules
        # are files here (one per person, as people keep them), loaded by the daemon itself.
        docs, described = population(args.rules, pairs, broad_people=args.watchers)
        write_rule_files(tmp / "rules", docs)
        del docs
    if args.population == "index" or args.processes:
        loading = time.perf_counter()
        daemon = Daemon(load_config(tmp / "config.yaml"))
        load_seconds = time.perf_counter() - loading
        daemon.intake_thread = commits_off_loop
    else:
        loading = time.perf_counter()
        docs, described = population(args.rules, pairs, broad_people=args.watchers)
        accounts = load_config(tmp / "config.yaml").accounts
        ruleset = RuleSet.from_documents(docs, accounts)
        del docs
        load_seconds = time.perf_counter() - loading
        daemon = Daemon(load_config(tmp / "config.yaml"))
        daemon.intake_thread = commits_off_loop
        daemon.pipeline = dataclasses.replace(daemon.pipeline, rules=ruleset)
        del ruleset

    # Warm-up, outside the measurement: the first message of each topic compiles its
    # metadata expressions and the first use of a template compiles it (milliseconds,
    # once per daemon lifetime). Without it, a 10-second latency run's p99 measures those
    # one-time compilations. Rendered parts are cached per msg_id, and the publisher's
    # msg_ids differ, so nothing measured later is served from this pass.
    for message, _ in pairs:
        meta = daemon.pipeline.meta(message)
        for route in daemon.pipeline.rules.routes(message, meta):
            daemon.pipeline.renderer.render(NullBackend, message, meta, route)
    rss_loaded = rss_mb()

    # The clock starts when the first frame is decoded (as the raw loop's starts at the
    # first recv); the wrapper puts the real decoder back after that one call.
    started: dict[str, float] = {}
    real_decode = bus.decode_frames

    def first_decode(frames: list[bytes], **kwargs: Any) -> Any:
        started["at"], started["cpu"] = time.perf_counter(), time.process_time()
        started["children"] = children_cpu(daemon.router.pids())
        bus.decode_frames = real_decode
        return real_decode(frames, **kwargs)

    bus.decode_frames = first_decode  # type: ignore[assignment]
    seen = {"messages": 0, "last": 0.0}
    sent_at: dict[str, float] = {}
    real_accept = daemon.accept

    async def accept(batch: Any, *rest: Any) -> bool:
        if args.rate:
            for message in batch:
                stamp = message.envelope.get("bench_sent")
                if isinstance(stamp, float):
                    sent_at[message.msg_id] = stamp
        stored = await real_accept(batch, *rest)
        seen["messages"] += len(batch)
        seen["last"] = time.perf_counter()
        return stored

    daemon.accept = accept  # type: ignore[method-assign]
    ready = asyncio.Event()
    task = asyncio.create_task(daemon.run(ready))
    await ready.wait()
    if args.processes:
        # The same warm-up in the intake processes (a pass per process), once they have built the rules.
        while not daemon.router.ready:
            await asyncio.sleep(0.05)
        for _ in range(args.processes):
            await daemon.router.route([message for message, _ in pairs])
    sink = NullBackend.instances["mail"]
    if args.long:
        publisher = start_publisher(endpoint, args.messages, args.long_rate, streaming=True)
    else:
        publisher = start_publisher(endpoint, args.messages, args.rate)
    samples: list[dict[str, float]] = []
    next_sample = 100_000
    assert daemon.store is not None
    try:
        while True:
            await asyncio.sleep(0.02)
            if publisher.poll() is not None and publisher.returncode != 0:
                raise RuntimeError(f"publisher failed with exit code {publisher.returncode}")
            received = seen["messages"] + sum(daemon.subscriber.malformed.values()) if daemon.subscriber else 0
            if args.long and received >= next_sample:
                intake = [round(rss_mb(pid), 1) for pid in daemon.router.pids()]
                samples.append({"messages": received, "rss_mb": round(rss_mb(), 1), "intake_rss_mb": intake})
                print(f"  {received:>9,} messages: RSS {rss_mb():.1f} MB, intake processes {intake} MB",
                      file=sys.stderr, flush=True)
                next_sample += 100_000
            if received < args.messages:
                continue
            if daemon.store.db.execute("SELECT COUNT(*) FROM deliveries WHERE state = 'queued'").fetchone()[0]:
                continue
            break
        own_cpu = time.process_time() - started["cpu"]
        cpu = own_cpu + children_cpu(daemon.router.pids()) - started.get("children", 0.0)
        end = max(sink.last_at or 0.0, seen["last"])
        db = daemon.store.db
        deliveries = db.execute("SELECT COUNT(*) FROM deliveries WHERE kind = 'message'").fetchone()[0]
        digests = db.execute("SELECT COUNT(*) FROM deliveries WHERE kind = 'digest'").fetchone()[0]
        entries = db.execute("SELECT COUNT(*) FROM digest_entries").fetchone()[0]
        failed = db.execute("SELECT COUNT(*) FROM deliveries WHERE state = 'failed'").fetchone()[0]
        intake_rss = [peak_rss_mb(pid) for pid in daemon.router.pids()]
    finally:
        daemon.stop()
        await task
        publisher.communicate()
        shutil.rmtree(tmp, ignore_errors=True)
    count = args.messages
    elapsed = end - started["at"]
    out: dict[str, Any] = {
        "messages": count,
        "seconds": round(elapsed, 4),
        "msgs_per_s": round(count / elapsed, 1),
        "cpu_us_per_msg": round(cpu / count * 1e6, 2),
        "daemon_cpu_us_per_msg": round(own_cpu / count * 1e6, 2),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "intake_processes": args.processes,
        "intake_processes_peak_rss_mb": [round(r, 1) for r in intake_rss],
        "rss_after_load_mb": round(rss_loaded, 1),
        "rules_load_seconds": round(load_seconds, 2),
        "population": described,
        "delivered": sink.delivered,
        "deliveries_per_msg": round(deliveries / count, 2),
        "digest_entries_per_msg": round(entries / count, 2),
        "digests_sent": digests,
        "failed": failed,
    }
    if args.rate:
        latencies = [(at - sent_at[msg_id]) * 1000 for msg_id, at in sink.times if msg_id in sent_at]
        out.update(
            rate=args.rate,
            latency_samples=len(latencies),
            p50_ms=round(percentile(latencies, 0.50), 3) if latencies else None,
            p99_ms=round(percentile(latencies, 0.99), 3) if latencies else None,
            max_ms=round(max(latencies), 3) if latencies else None,
        )
    if samples:
        out["rss_samples"] = samples
    return out


def start_publisher(endpoint: str, count: int, rate: float, *, streaming: bool = False) -> subprocess.Popen[str]:
    if streaming:
        args = [sys.executable, str(HERE / "ours.py"), "--publish", endpoint, str(count), str(rate)]
    else:
        args = [sys.executable, str(HERE / "publisher.py"), endpoint, str(count)] + ([str(rate)] if rate else [])
    return subprocess.Popen(args, stdout=subprocess.PIPE, text=True)


def stream_publish(endpoint: str, count: int, rate: float) -> None:
    """publisher.py for very long runs: encodes as it goes (1M prepared frames would be GBs), paced."""
    import zmq
    from publisher import bench_envelope, sample_envelopes

    samples = sample_envelopes()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.XPUB)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.bind(endpoint)
    sock.recv()
    time.sleep(0.5)
    start = time.perf_counter()
    interval = 1.0 / rate
    for n in range(count):
        envelope = bench_envelope(samples, n)
        if n % 64 == 0:
            # Paced in bursts of 64 (sleeping per message would cost more than sending).
            while (delay := start + n * interval - time.perf_counter()) > 0:
                time.sleep(delay)
        frames = [str(envelope["topic"]).encode(), json.dumps(envelope, sort_keys=True, separators=(",", ":")).encode()]
        sock.send_multipart(frames)
    print(f"DONE {time.perf_counter() - start:.3f}", flush=True)
    sock.close(linger=60_000)
    ctx.term()


def child(argv: list[str]) -> dict[str, Any]:
    """Run one configuration in a fresh interpreter and return its JSON result."""
    proc = subprocess.run(
        [sys.executable, str(HERE / "ours.py"), "--child", *argv], stdout=subprocess.PIPE, text=True, check=False
    )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        return {"error": f"child exited with {proc.returncode}"}
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def label(rules: int) -> str:
    return f"{rules // 1000}k" if rules % 1000 == 0 else str(rules)


def bench_ours(
    messages: int, rules: int, *, latency_seconds: float = 10.0, rate: float = 1000.0, processes: int = 0
) -> list[dict[str, Any]]:
    """One row for ``rules`` rules: throughput over ``messages``, plus latency at a steady ``rate``."""
    common = ["--rules", str(rules), "--processes", str(processes)]
    row = child([*common, "--messages", str(messages)])
    name = f"ours, {label(rules)} rules" + (f", {processes} intake process{'es' if processes > 1 else ''}" if processes else "")
    if "error" in row:
        return [{"name": name, **row}]
    latency = child([*common, "--messages", str(int(rate * latency_seconds)), "--rate", str(rate)])
    for key in ("p50_ms", "p99_ms", "max_ms", "latency_samples", "rate"):
        if key in latency:
            row[key] = latency[key]
    if "error" in latency:
        row["latency_error"] = latency["error"]
    row["name"] = f"{name} ({row['deliveries_per_msg']:g} deliveries/msg)"
    row["rules"] = rules
    pop = row["population"]
    print(
        f"  {name}: {pop['people']} people ({pop['watchers']} watchers with {pop['broad_rules']} broad rules,"
        f" {pop['people_the_bus_mentions']} people the bus mentions, {pop['strangers']} strangers);"
        f" rules compiled in {row['rules_load_seconds']} s, RSS after load {row['rss_after_load_mb']} MB",
        flush=True,
    )
    return [row]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--publish", nargs=3, metavar=("ENDPOINT", "COUNT", "RATE"), help=argparse.SUPPRESS)
    parser.add_argument("--long", action="store_true", help="peak RSS over a long steady stream")
    parser.add_argument("--rules", type=int, default=None)
    parser.add_argument("--messages", type=int, default=None)
    parser.add_argument("--rate", type=float, default=0.0, help="messages/s (0: as fast as possible)")
    parser.add_argument(
        "--watchers", type=int, default=WATCHERS, help="people with broad rules (diagnostic; default %(default)s)"
    )
    parser.add_argument(
        "--population", choices=("fmn", "index"), default="fmn", help="fmn: this file's; index: bench/population.py's"
    )
    parser.add_argument("--processes", type=int, default=0, help="intake_processes (default %(default)s)")
    parser.add_argument("--long-rate", type=float, default=3000.0, help="--long: messages/s (default %(default)s)")
    parser.add_argument("--out", default=str(HERE / "results" / "long.json"))
    args = parser.parse_args()
    if args.publish:
        stream_publish(args.publish[0], int(args.publish[1]), float(args.publish[2]))
        return 0
    if args.child:
        args.rules = args.rules or 1000
        args.messages = args.messages or 10_000
        print(json.dumps(asyncio.run(run_daemon(args))), flush=True)
        return 0
    if args.long:
        rules = args.rules or 10_000
        messages = args.messages or 1_000_000
        rate = args.long_rate
        print(f"long run: {messages:,} messages at {rate:g} msg/s through {rules:,} rules", flush=True)
        row = child(["--long", "--rules", str(rules), "--messages", str(messages), "--long-rate", str(rate),
                     "--processes", str(args.processes)])
        row["name"] = f"ours, {label(rules)} rules, {messages:,} messages at {rate:g} msg/s" + (
            f", {args.processes} intake process(es)" if args.processes else "")
        print(json.dumps(row, indent=2))
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(row, indent=2))
        return 0
    parser.error("use bench/run.py for the table, or --long")
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
