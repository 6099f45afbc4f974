"""Matching throughput at 1k, 10k and 100k rules: indexed matcher versus testing every rule.

Run: ``.venv/bin/python bench/bench_rules.py [--sizes 1000 10000 100000] [--seconds 2]``

Builds synthetic Fedora-like users, each with a rule file of four rules (``me:`` set
to the user), the shapes people wrote in FMN:

- *my builds*: ``topic: "*.buildsys.build.state.change"`` + ``field msg.owner equals $me``
- *my packages*: ``packages: [five packages]`` + ``not: {agent: $me}`` (an hourly digest)
- *mentions of me*: ``users: $me`` + ``not: {agent: $me}``
- *one event on my packages*: an exact topic + ``packages`` + ``not: {agent: $me}``

and one user in two hundred also has an unindexable rule (``not:`` only). Users and
packages are drawn from the real samples plus synthetic names, so some rules match.
Then every real sample message is routed repeatedly and messages/s printed, for the
index and for brute force, so the growth is visible. It prints numbers; it asserts
nothing.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fedmsg_notify.bus.envelope import MalformedMessage, Message  # noqa: E402
from fedmsg_notify.config.model import load_config  # noqa: E402
from fedmsg_notify.config.yaml_positions import LocatedDocument  # noqa: E402
from fedmsg_notify.matching.rules import RuleSet  # noqa: E402
from fedmsg_notify.meta.engine import Meta, MetaEngine  # noqa: E402

SAMPLES = ROOT / "notifier" / "data" / "samples.jsonl"


def load_samples() -> list[tuple[Message, Meta]]:
    engine = MetaEngine()
    pairs = []
    for line in SAMPLES.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            message = Message.from_envelope(json.loads(line)["message"])
        except MalformedMessage:
            continue
        pairs.append((message, engine.compute(message)))
    return pairs


def user_files(count: int, pairs: list[tuple[Message, Meta]], seed: int = 1) -> list[LocatedDocument]:
    """``count`` rules as one in-memory rule document per synthetic user."""
    rng = random.Random(seed)
    real_users = sorted({u for _, m in pairs for u in m.usernames})
    real_packages = sorted({p for _, m in pairs for p in m.packages})
    topics = sorted({m.topic for m, _ in pairs})
    docs = []
    n = 0
    while n < count:
        # One user in fifty is someone the samples mention; the rest are strangers.
        user = rng.choice(real_users) if real_users and rng.random() < 0.02 else f"user{len(docs)}"
        packages = [
            rng.choice(real_packages) if real_packages and rng.random() < 0.02 else f"pkg{rng.randrange(count)}"
            for _ in range(5)
        ]
        to = {"via": "mail", "to": f"{user}+{len(docs)}@example.org"}
        rules: list[dict[str, Any]] = [
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
                "match": {"topic": rng.choice(topics), "packages": packages[:2], "not": {"agent": "$me"}},
                "deliver": [to],
            },
        ]
        if len(docs) % 200 == 0:
            rules.append(
                {
                    "name": "firehose",
                    "match": {"not": {"topic": ["*.buildsys.repo.*", "*.buildsys.tag"]}},
                    "deliver": [to],
                }
            )
        rules = rules[: count - n]
        n += len(rules)
        docs.append(LocatedDocument(file=f"<user {len(docs)}>", data={"me": user, "rules": rules}))
    return docs


def rate(fn: Any, pairs: list[tuple[Message, Meta]], seconds: float) -> tuple[float, float]:
    """Messages per second calling ``fn(message, meta)`` over the samples for about ``seconds``,
    and the mean length of what ``fn`` returned."""
    done = 0
    total = 0
    started = time.perf_counter()
    while True:
        for message, meta in pairs:
            total += len(fn(message, meta))
            done += 1
            if done % 16 == 0 and time.perf_counter() - started >= seconds:
                return done / (time.perf_counter() - started), total / done
        if time.perf_counter() - started >= seconds:
            return done / (time.perf_counter() - started), total / done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument("--seconds", type=float, default=2.0, help="time per measurement (default %(default)s)")
    args = parser.parse_args()
    accounts = load_config("<bench>", "accounts: {mail: {backend: console}}").accounts
    pairs = load_samples()
    print(f"{len(pairs)} sample messages; {args.seconds:g} s per measurement")
    print(
        f"{'rules':>8} {'load s':>7} {'residual':>8} {'cand/msg':>9} {'routes/msg':>10} {'indexed msg/s':>14} {'brute msg/s':>12}"
    )
    for size in args.sizes:
        started = time.perf_counter()
        ruleset = RuleSet.from_documents(user_files(size, pairs), accounts)
        load_seconds = time.perf_counter() - started
        candidates = sum(len(ruleset.index.candidates(m, meta)) for m, meta in pairs) / len(pairs)
        indexed, per_message = rate(ruleset.routes, pairs, args.seconds)
        brute, _ = rate(ruleset.matching_brute_force, pairs, args.seconds)
        print(
            f"{len(ruleset):>8} {load_seconds:>7.1f} {ruleset.index.stats()['residual']:>8} {candidates:>9.1f} "
            f"{per_message:>10.2f} {indexed:>14,.0f} {brute:>12,.0f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
