"""No message shape makes the firehose print a repr, an empty slot or a dead link.

The property: take every sample message, replace one of its body values (at any depth)
by a mapping, a list, ``None``, an empty string or a very long string, and the sentence
still reads (no ``{``/``[``/``None`` that the message's own text does not hold, no doubled
space, no dangling preposition) and the link is either absent or a working absolute URL.
Which values are replaced is chosen deterministically (every top-level key, and an even
spread of deeper ones) so the test stays fast and its failures reproducible.
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from fedmsg_notify.bus.envelope import Message, split_topic
from fedmsg_notify.meta.engine import MetaEngine

REPLACEMENTS: list[Any] = [
    {"username": "ralph", "name": "nethack", "icon": "https://example.org/x.png"},
    ["ralph", {"name": "nethack"}],
    None,
    "",
    "z" * 400,
]
DEEP_PATHS_PER_SAMPLE = 12
DANGLING = {"to", "for", "on", "in", "of", "by", "with", "from", "into", "at", "the", "a", "an", "and"}

Path_ = tuple[Any, ...]


def paths(value: Any, prefix: Path_ = ()) -> Iterator[Path_]:
    """Every position in a JSON body (keys of mappings, indexes of lists), depth first."""
    if isinstance(value, dict):
        items: list[tuple[Any, Any]] = list(value.items())
    elif isinstance(value, list):
        items = list(enumerate(value))[:5]
    else:
        return
    for key, child in items:
        yield (*prefix, key)
        yield from paths(child, (*prefix, key))


def chosen_paths(body: Any) -> list[Path_]:
    every = list(paths(body))
    top = [p for p in every if len(p) == 1]
    deep = [p for p in every if len(p) > 1]
    step = max(1, len(deep) // DEEP_PATHS_PER_SAMPLE)
    return top + deep[::step][:DEEP_PATHS_PER_SAMPLE]


def replaced(body: Any, path: Path_, value: Any) -> Any:
    copied = copy.deepcopy(body)
    node = copied
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = copy.deepcopy(value)
    return copied


def strings(value: Any) -> str:
    """All the text a body carries, so that a bracket the message itself wrote is allowed."""
    if isinstance(value, str):
        return value + "\n"
    if isinstance(value, dict):
        return "".join(strings(k) + strings(v) for k, v in value.items())
    if isinstance(value, list):
        return "".join(strings(v) for v in value)
    return ""


def sentence_defects(subtitle: str, own_text: str) -> list[str]:
    defects = []
    for mark in ("{", "["):
        if mark in subtitle and mark not in own_text:
            defects.append(f"{mark!r} that the message does not contain")
    if re.search(r"\bNone\b", subtitle) and "None" not in own_text:
        defects.append("None")
    if "  " in subtitle:
        defects.append("doubled space")
    if subtitle != subtitle.strip() or not subtitle:
        defects.append("empty or padded")
    if subtitle.rsplit(None, 1)[-1].lower() in DANGLING:
        defects.append("dangling preposition")
    return defects


def link_defects(link: str | None) -> list[str]:
    if link is None:
        return []
    defects = []
    try:
        parts = urlsplit(link)
        host = parts.hostname
    except ValueError:  # a bracketed "host" that is no IPv6 address
        return ["unparsable"]
    if parts.scheme not in ("http", "https") or not host:
        defects.append("not absolute http(s)")
    if re.search(r"[\s{}]", link):
        defects.append("whitespace or brace")
    return defects


def test_no_body_value_of_any_shape_breaks_the_sentence_or_the_link(
    samples: list[dict[str, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    """Replacing any body value by a dict, list, None, "" or a long string never yields a repr, empty slot or dead link."""
    caplog.set_level(logging.WARNING, logger="fedmsg_notify.meta")
    engine = MetaEngine()
    failures: list[str] = []
    variants = 0
    for sample in samples:
        envelope = sample["message"]
        body = envelope.get("msg")
        for path in chosen_paths(body):
            for value in REPLACEMENTS:
                variant_body = replaced(body, path, value)
                variant = {**envelope, "msg": variant_body}
                topic = variant["topic"]
                message = Message(topic=topic, envelope=variant, parts=split_topic(topic), msg_id=sample["id"])
                meta = engine.compute(message)
                variants += 1
                defects = sentence_defects(meta.subtitle, strings(variant_body)) + link_defects(meta.link)
                if defects:
                    failures.append(f"{sample['id']} {path}={value!r:.30}: {defects}: {meta.subtitle!r} {meta.link!r}")
    print(f"\n{variants} variants of {len(samples)} samples checked")
    assert variants > 3000
    assert not failures, f"{len(failures)} broken:\n" + "\n".join(failures[:40])
    # An odd shape is a counted fallback, not a bug in a shipped file: nothing is logged.
    assert [r.getMessage() for r in caplog.records] == []
    assert engine.fallback_counts(), "the variants must have made some expressions fall back"


@pytest.mark.parametrize(
    ("subtitle", "defect"),
    [
        ("new FAS account: {'username': 'ralph'}", "'{' that the message does not contain"),
        ("openQA job  (, ) for  created", "doubled space"),
        ('ralph retagged "some title" with', "dangling preposition"),
        ("bodhi finished pushing x to testing for None", "None"),
    ],
)
def test_the_property_catches_the_defects_seen_on_the_firehose(subtitle: str, defect: str) -> None:
    """The checks above recognise each broken sentence the issue quotes (so the property test can fail)."""
    assert defect in sentence_defects(subtitle, "")


def test_the_property_catches_dead_links() -> None:
    """A link without a host, or with a space or a brace, is a defect."""
    assert link_defects("/w/uploads/d/d1/Cat.jpg")
    assert link_defects("https://bodhi.fedoraproject.org/updates/a-1-1 b-1-1")
    assert link_defects("https://apps.fedoraproject.org/tagger/{'name': 'nethack'}")
    assert not link_defects("https://bodhi.fedoraproject.org/updates/a-1-1%20b-1-1")
