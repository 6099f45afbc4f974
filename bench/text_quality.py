"""How well the metadata reads: links, people and packages against what a reader expects.

    .venv/bin/python bench/text_quality.py [FILE.jsonl] [--services DIR] [--show N] [--json]

FILE holds one JSON object per line: ``{"message": <fedmsg envelope>, "expect": {"link":
..., "usernames": [...], "packages": [...]}}`` (any of the three may be missing; ``id`` is
optional). Default: the shared sample file, else the bundled ``notifier/data/samples.jsonl``.

With ``--variants``, each message is also computed in deterministic variants where one
body value (every top-level one, and an even spread of deeper ones) is replaced by a
mapping, a list, ``None``, ``""`` or a long string: the broken sentences and links among
them, and the fallbacks they cause, show how the service files cope with shapes they
were not written for.

Prints link accuracy (exact match over messages with an expected link), usernames and
packages F1 (micro-averaged over messages with that expectation, and the share of
messages whose set matches exactly), the number of broken sentences (what
``fedmsg_notify.meta.quality.sentence_problem`` refuses) and broken links (a link that is
not a valid absolute http(s) URL), and the engine's fallbacks by service and field.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fedmsg_notify.bus.envelope import Message, split_topic  # noqa: E402
from fedmsg_notify.meta.engine import MetaEngine  # noqa: E402
from fedmsg_notify.meta.quality import sentence_problem, valid_link  # noqa: E402

SHARED_SAMPLES = Path("/work/shared/samples/fedmsg-messages.jsonl")
BUNDLED_SAMPLES = ROOT / "notifier" / "data" / "samples.jsonl"


def _message(envelope: dict[str, Any], fallback_id: str) -> Message:
    # Old samples lack fields Message.from_envelope insists on (msg_id, i); the engine needs none.
    topic = str(envelope.get("topic", ""))
    return Message(
        topic=topic, envelope=envelope, parts=split_topic(topic), msg_id=str(envelope.get("msg_id") or fallback_id)
    )


class _SetScore:
    """Micro-averaged precision/recall/F1 of name sets, and the share of exact matches."""

    def __init__(self) -> None:
        self.tp = self.fp = self.fn = self.exact = self.total = 0

    def add(self, got: set[str], expected: set[str]) -> bool:
        self.tp += len(got & expected)
        self.fp += len(got - expected)
        self.fn += len(expected - got)
        self.total += 1
        self.exact += got == expected
        return got == expected

    def f1(self) -> float:
        if self.tp == 0:
            return 1.0 if self.fp == self.fn == 0 else 0.0
        precision = self.tp / (self.tp + self.fp)
        recall = self.tp / (self.tp + self.fn)
        return 2 * precision * recall / (precision + recall)


_REPLACEMENTS: list[Any] = [{"username": "ralph", "name": "nethack"}, ["ralph", {"name": "x"}], None, "", "z" * 400]
_DEEP_PER_MESSAGE = 12


def _positions(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    items = (
        list(value.items())
        if isinstance(value, dict)
        else list(enumerate(value))[:5]
        if isinstance(value, list)
        else []
    )
    out: list[tuple[Any, ...]] = []
    for key, child in items:
        out.append((*prefix, key))
        out.extend(_positions(child, (*prefix, key)))
    return out


def variants(envelope: dict[str, Any]) -> list[dict[str, Any]]:
    """The envelope with one body value replaced by each odd shape, at deterministic positions."""
    body = envelope.get("msg")
    every = _positions(body)
    deep = [p for p in every if len(p) > 1]
    chosen = [p for p in every if len(p) == 1] + deep[:: max(1, len(deep) // _DEEP_PER_MESSAGE)][:_DEEP_PER_MESSAGE]
    out = []
    for position in chosen:
        for value in _REPLACEMENTS:
            copied = copy.deepcopy(body)
            node = copied
            for key in position[:-1]:
                node = node[key]
            node[position[-1]] = copy.deepcopy(value)
            out.append({**envelope, "msg": copied})
    return out


def measure_variants(path: Path, engine: MetaEngine, show: int) -> dict[str, Any]:
    broken_sentences: list[str] = []
    broken_links: list[str] = []
    count = 0
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        sample = json.loads(line)
        sample_id = str(sample.get("id") or f"{path.name}:{number}")
        for variant in variants(sample["message"]):
            meta = engine.compute(_message(variant, sample_id))
            count += 1
            problem = sentence_problem(meta.subtitle)
            if problem:
                broken_sentences.append(f"{sample_id}: {problem}: {meta.subtitle[:120]!r}")
            if meta.link is not None and not valid_link(meta.link):
                broken_links.append(f"{sample_id}: {meta.link[:120]!r}")
    return {
        "variants": count,
        "broken_sentences": len(broken_sentences),
        "broken_links": len(broken_links),
        "fallbacks": _fallbacks(engine),
        "examples": {"broken_sentences": broken_sentences[:show], "broken_links": broken_links[:show]},
    }


def _fallbacks(engine: MetaEngine) -> dict[str, dict[str, int]]:
    counts = getattr(engine, "fallback_counts", None)  # engines before fallback counting have none
    return counts() if callable(counts) else {}


def measure(path: Path, engine: MetaEngine, show: int) -> dict[str, Any]:
    link_good = link_total = 0
    users, packages = _SetScore(), _SetScore()
    broken_sentences: list[str] = []
    broken_links: list[str] = []
    misses: list[str] = []
    count = 0
    start = time.perf_counter()
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        sample = json.loads(line)
        sample_id = str(sample.get("id") or f"{path.name}:{number}")
        meta = engine.compute(_message(sample["message"], sample_id))
        count += 1
        expect = sample.get("expect", {})
        if "link" in expect:
            link_total += 1
            if meta.link == expect["link"]:
                link_good += 1
            else:
                misses.append(f"{sample_id} link: got {meta.link!r}, expected {expect['link']!r}")
        for name, score in (("usernames", users), ("packages", packages)):
            if name in expect:
                got = set(getattr(meta, name))
                if not score.add(got, set(expect[name] or ())):
                    misses.append(f"{sample_id} {name}: got {sorted(got)}, expected {sorted(expect[name] or ())}")
        problem = sentence_problem(meta.subtitle)
        if problem:
            broken_sentences.append(f"{sample_id}: {problem}: {meta.subtitle!r}")
        if meta.link is not None and not valid_link(meta.link):
            broken_links.append(f"{sample_id}: {meta.link!r}")
    elapsed = time.perf_counter() - start
    return {
        "file": str(path),
        "messages": count,
        "link_accuracy": link_good / link_total if link_total else None,
        "links_expected": link_total,
        "usernames_f1": users.f1(),
        "usernames_exact": users.exact / users.total if users.total else None,
        "packages_f1": packages.f1(),
        "packages_exact": packages.exact / packages.total if packages.total else None,
        "broken_sentences": len(broken_sentences),
        "broken_links": len(broken_links),
        "fallbacks": _fallbacks(engine),
        "us_per_message": elapsed / count * 1e6 if count else 0.0,
        "examples": {
            "broken_sentences": broken_sentences[:show],
            "broken_links": broken_links[:show],
            "misses": misses[:show],
        },
    }


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("file", nargs="?", type=Path, help="JSON-lines samples (default: the shared samples)")
    parser.add_argument("--services", type=Path, action="append", default=[], help="extra service-file directory")
    parser.add_argument("--show", type=int, default=10, help="examples of each problem to print")
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON")
    parser.add_argument("--variants", action="store_true", help="also measure odd-shaped variants of each message")
    args = parser.parse_args(argv)
    path = args.file or (SHARED_SAMPLES if SHARED_SAMPLES.exists() else BUNDLED_SAMPLES)
    result = measure(path, MetaEngine(args.services), args.show)
    if args.variants:
        result["variants"] = measure_variants(path, MetaEngine(args.services), args.show)
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
        return 0
    print(f"{result['messages']} messages from {result['file']} ({result['us_per_message']:.0f} µs/message)")
    print(f"  link accuracy    {_pct(result['link_accuracy'])}  (over {result['links_expected']} expected links)")
    print(f"  usernames F1     {_pct(result['usernames_f1'])}  (exact sets {_pct(result['usernames_exact'])})")
    print(f"  packages F1      {_pct(result['packages_f1'])}  (exact sets {_pct(result['packages_exact'])})")
    print(f"  broken sentences {result['broken_sentences']}")
    print(f"  broken links     {result['broken_links']}")
    print("  fallbacks by service:")
    for service, fields in result["fallbacks"].items():
        print(f"    {service:20s} " + ", ".join(f"{name} {count}" for name, count in fields.items()))
    _print_examples(result["examples"])
    if args.variants:
        shaped = result["variants"]
        print(f"{shaped['variants']} odd-shaped variants")
        print(f"  broken sentences {shaped['broken_sentences']}")
        print(f"  broken links     {shaped['broken_links']}")
        print("  fallbacks by service:")
        for service, fields in shaped["fallbacks"].items():
            print(f"    {service:20s} " + ", ".join(f"{name} {count}" for name, count in fields.items()))
        _print_examples(shaped["examples"])
    return 0


def _print_examples(examples: dict[str, list[str]]) -> None:
    for kind, lines in examples.items():
        if lines:
            print(f"  {kind.replace('_', ' ')}:")
            for line in lines:
                print(f"    {line}")


if __name__ == "__main__":
    raise SystemExit(main())
