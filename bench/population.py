"""A Fedora-shaped rule population for ``bench_index.py``: ten rules per person, every shape.

Each person (a rule file with ``me:``) has ten rules, the shapes people write:

1. *my builds*: ``topic: "*.buildsys.build.state.change"`` + ``msg.owner`` equals me
2. *my failed builds*: an exact topic + ``msg.owner`` equals me + ``msg.new`` equals 3
3. *my bodhi updates*: ``topic: "*.bodhi.update.*"`` (wild at both ends) + a regex
   ``^me$`` on ``msg.update.user.name``
4. *my copr builds*: ``topic: "*.copr.build.*"`` + a regex ``\\bme\\b`` on ``msg.owner`` (no
   anchor: prefiltered on its literal by RE2's FilteredRE2)
5. *comments on my updates*: ``topic: "org.fedoraproject.*.bodhi.update.comment"``
   (wild in the middle) + users me + not agent me
6. *my packages*: five packages + not agent me (an hourly digest)
7. *mentions of me*: users me + not agent me
8. *one event on my packages*: an exact topic + two of the packages
9. *my package's builds by name*: a regex ``^<package>-[0-9]`` on ``msg.update.builds[*].nvr``
10. *PRs on my projects*: ``topic: "*.pagure.pull-request.*"`` + ``msg.pullrequest.project.name``
    in two of the packages

Every username the sample messages mention is exactly one person and every package they
mention belongs to two people; everyone else is a stranger the bus never mentions, so a
message concerns the same few people at 1k rules and at 100k (as on the real bus).
One more file holds a firehose: ``not: {topic: ["*.buildsys.repo.*", "*.buildsys.tag"]}``.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fedmsg_notify.bus.envelope import MalformedMessage, Message  # noqa: E402
from fedmsg_notify.meta.engine import Meta, MetaEngine  # noqa: E402

SAMPLES = ROOT / "notifier" / "data" / "samples.jsonl"
RULES_PER_PERSON = 10
FIREHOSE: dict[str, Any] = {"not": {"topic": ["*.buildsys.repo.*", "*.buildsys.tag"]}}


def load_samples() -> list[tuple[Message, Meta, bytes]]:
    """Every sample as (message, meta, its JSON frame)."""
    engine = MetaEngine()
    out = []
    for line in SAMPLES.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        envelope = json.loads(line)["message"]
        try:
            message = Message.from_envelope(envelope)
        except MalformedMessage:
            continue
        out.append((message, engine.compute(message), json.dumps(envelope).encode()))
    return out


def person_rules(user: str, packages: list[str], topic: str) -> list[dict[str, Any]]:
    to = {"via": "mail", "to": f"{user}@example.org"}
    not_me = {"agent": "$me"}
    return [
        {
            "name": "my builds",
            "match": {"topic": "*.buildsys.build.state.change", "field": {"path": "msg.owner", "equals": "$me"}},
            "deliver": [to],
        },
        {
            "name": "my failed builds",
            "match": {
                "topic": "org.fedoraproject.prod.buildsys.build.state.change",
                "all": [{"field": {"path": "msg.owner", "equals": "$me"}}, {"field": {"path": "msg.new", "equals": 3}}],
            },
            "deliver": [{"via": "mail", "to": f"{user}+failed@example.org"}],
        },
        {
            "name": "my bodhi updates",
            "match": {"topic": "*.bodhi.update.*", "field": {"path": "msg.update.user.name", "matches": "^$me$"}},
            "deliver": [to],
        },
        {
            "name": "my copr builds",
            "match": {"topic": "*.copr.build.*", "field": {"path": "msg.owner", "matches": "\\b$me\\b"}},
            "deliver": [to],
        },
        {
            "name": "comments on my updates",
            "match": {"topic": "org.fedoraproject.*.bodhi.update.comment", "users": "$me", "not": not_me},
            "deliver": [to],
        },
        {
            "name": "my packages",
            "match": {"packages": packages, "not": not_me},
            "deliver": [{**to, "digest": {"every": "1h", "max": 100}}],
        },
        {"name": "mentions of me", "match": {"users": "$me", "not": not_me}, "deliver": [to]},
        {"name": "one event on my packages", "match": {"topic": topic, "packages": packages[:2]}, "deliver": [to]},
        {
            "name": "my package's builds",
            "match": {"field": {"path": "msg.update.builds[*].nvr", "matches": f"^{packages[0]}-[0-9]"}},
            "deliver": [to],
        },
        {
            "name": "PRs on my projects",
            "match": {
                "topic": "*.pagure.pull-request.*",
                "field": {"path": "msg.pullrequest.project.name", "in": packages[:2]},
            },
            "deliver": [to],
        },
    ]


def population(rules: int, samples: list[tuple[Message, Meta, bytes]], seed: int = 1) -> list[dict[str, Any]]:
    """About ``rules`` rules as rule documents: one per person, plus the firehose's."""
    rng = random.Random(seed)
    real_users = sorted({u for _, m, _ in samples for u in m.usernames})
    real_packages = sorted({p for _, m, _ in samples for p in m.packages})
    topics = sorted({m.topic for m, _, _ in samples})
    people = max(1, (rules - 1) // RULES_PER_PERSON)
    owners: dict[int, list[str]] = {}
    for n, package in enumerate(real_packages):
        for person in (2 * n % people, (2 * n + 1) % people):
            owners.setdefault(person, []).append(package)
    docs: list[dict[str, Any]] = [
        {"me": "firehose", "rules": [{"name": "firehose", "match": FIREHOSE, "deliver": [{"via": "mail", "to": "all@example.org"}]}]}
    ]
    for person in range(people):
        user = real_users[person] if person < len(real_users) else f"user{person}"
        packages = (owners.get(person, []) + [f"pkg{person}x{k}" for k in range(5)])[:5]
        rng.shuffle(packages)
        docs.append({"me": user, "rules": person_rules(user, packages, rng.choice(topics))})
    return docs


def write_population(directory: Path, docs: list[dict[str, Any]]) -> list[Path]:
    """One YAML file per document, as users would keep them."""
    directory.mkdir(parents=True, exist_ok=True)
    base = getattr(yaml, "CSafeDumper", yaml.SafeDumper)

    class NoAliases(base):  # type: ignore[misc,valid-type]
        """People write each rule out; the dumper would otherwise anchor the shared dicts."""

        def ignore_aliases(self, data: Any) -> bool:
            return True

    dumper = NoAliases
    files = []
    for n, doc in enumerate(docs):
        path = directory / f"{n:06d}.yaml"
        path.write_text(yaml.dump(doc, Dumper=dumper, sort_keys=False, allow_unicode=True), encoding="utf-8")
        files.append(path)
    return files
