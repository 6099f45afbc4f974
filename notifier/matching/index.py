"""The candidate index: which rules could possibly match a message.

Old FMN tested every rule of every user against every message and took seconds per
message. Here each rule is filed under what it requires, using the most selective
requirement its conditions give (see :meth:`fedmsg_notify.matching.match.Condition.requirement`):
an exact topic, a dot-aligned topic prefix or suffix, a run of whole topic segments
anywhere (``*.bodhi.update.*``), a service, env, username, agent or package, a severity,
a field's value on any path (typed as JSON compares it), a field's existence, a numeric or
string bound (each distinct bound evaluated once per message), a regex's anchored literal
(``^ralph$``, ``^kernel-``) or a regex prefiltered on its required literal (RE2's
FilteredRE2). A rule that is only ``not:`` is filed under the keys that make the negated
condition hold, and is a candidate for every message that has none of them.

For a message we derive the few keys it carries and evaluate only the rules they wake,
plus the *residual* rules — those with no condition the index can use (``match: {}``,
``contains`` alone, a regex with no literal RE2 can require, ``not:`` around such a
condition). The result equals brute-force evaluation; a property test checks that.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fedmsg_notify.bus.envelope import Message
from fedmsg_notify.matching.fields import STAR, compare, parse_path, value_key
from fedmsg_notify.matching.match import Condition, Exclusion, Key
from fedmsg_notify.matching.regexes import RegexFilter
from fedmsg_notify.matching.severity import OPS as SEVERITY_OPS
from fedmsg_notify.matching.topics import topic_runs
from fedmsg_notify.meta.engine import Meta

_DOT_KINDS = ("tprefix", "tsuffix")


class PathTrie:
    """The field paths the index needs, merged so a message is walked once for all of them."""

    __slots__ = ("children", "ends")

    def __init__(self) -> None:
        self.children: dict[Any, PathTrie] = {}
        self.ends: list[str] = []

    def add(self, path: str) -> None:
        node = self
        for segment in parse_path(path):
            node = node.children.setdefault(segment, PathTrie())
        if path not in node.ends:
            node.ends.append(path)

    def walk(self, node: Any, out: list[tuple[str, Any]]) -> None:
        """Append ``(path, value)`` for every value each path reaches (as :func:`fields.resolve` does)."""
        for path in self.ends:
            out.append((path, node))
        for segment, child in self.children.items():
            if segment is STAR:
                if isinstance(node, list):
                    for item in node:
                        child.walk(item, out)
                elif isinstance(node, dict):
                    for item in node.values():
                        child.walk(item, out)
            elif isinstance(segment, int):
                if isinstance(node, list) and segment < len(node):
                    child.walk(node[segment], out)
            elif isinstance(node, dict) and segment in node:
                child.walk(node[segment], out)


class RuleIndex:
    """Rule ordinals by key; ``negated`` rules are candidates unless an exclusion key is present."""

    __slots__ = (
        "comparisons",
        "dots",
        "exists_paths",
        "has_kinds",
        "negated",
        "negative",
        "paths",
        "positive",
        "prefix_lengths",
        "regexes",
        "residual",
        "run_lengths",
        "severity_bounds",
    )

    def __init__(self, conditions: Iterable[Condition]) -> None:
        positive: dict[Key, list[int]] = {}
        negative: dict[Key, list[int]] = {}
        negated: list[int] = []
        residual: list[int] = []
        for ordinal, condition in enumerate(conditions):
            entry = condition.index_entry()
            if not entry:
                residual.append(ordinal)
            elif isinstance(entry, Exclusion):
                negated.append(ordinal)
                for key in entry:
                    negative.setdefault(key, []).append(ordinal)
            else:
                for key in entry:
                    positive.setdefault(key, []).append(ordinal)
        self.positive = {key: tuple(v) for key, v in positive.items()}
        self.negative = {key: tuple(v) for key, v in negative.items()}
        self.negated = frozenset(negated)
        self.residual = tuple(residual)
        keys = [*positive, *negative]
        self.has_kinds = frozenset(kind for kind, _ in keys)
        self.dots = any(kind in _DOT_KINDS for kind in self.has_kinds)
        self.run_lengths = tuple(sorted({value.count(".") + 1 for kind, value in keys if kind == "trun"}))
        trie = PathTrie()
        # Per path, the distinct patterns in first-seen order (a dict: 20k patterns on one path).
        regex_patterns: dict[str, dict[str, None]] = {}
        exists_paths: set[str] = set()
        prefix_lengths: dict[str, set[int]] = {}
        comparisons: dict[str, set[tuple[str, Any]]] = {}
        severity_bounds: set[tuple[str, int]] = set()
        for kind, value in keys:
            if kind == "field":
                trie.add(value[0])
            elif kind == "fcmp":
                trie.add(value[0])
                comparisons.setdefault(value[0], set()).add((value[1], value[2]))
            elif kind == "sevcmp":
                severity_bounds.add(value)
            elif kind == "fprefix":
                trie.add(value[0])
                prefix_lengths.setdefault(value[0], set()).add(len(value[1]))
            elif kind == "exists":
                trie.add(value)
                exists_paths.add(value)
            elif kind == "regex":
                trie.add(value[0])
                regex_patterns.setdefault(value[0], {})[value[1]] = None
        self.paths = trie if trie.children else None
        self.exists_paths = frozenset(exists_paths)
        self.prefix_lengths = {path: tuple(sorted(lengths)) for path, lengths in prefix_lengths.items()}
        # Numeric and string bounds (msg.new ge 3, severity ge warning) are few and distinct: each is
        # evaluated once per message, whatever the number of rules sharing it.
        self.comparisons = {path: tuple(bounds) for path, bounds in comparisons.items()}
        self.severity_bounds = tuple(severity_bounds)
        self.regexes = {path: RegexFilter(list(patterns)) for path, patterns in regex_patterns.items()}

    def message_keys(self, message: Message, meta: Meta) -> list[Key]:
        """Every key ``message`` carries that some rule is filed under (and some that none is)."""
        topic = message.topic
        parts = message.parts
        severity = message.severity
        keys: list[Key] = [("topic", topic), ("service", parts.service), ("env", parts.env), ("severity", severity)]
        for bound in self.severity_bounds:
            if SEVERITY_OPS[bound[0]](severity, bound[1]):
                keys.append(("sevcmp", bound))
        if self.dots:
            # Every dot splits the topic into a prefix ending at it and a suffix starting at it.
            dot = topic.find(".")
            while dot >= 0:
                keys.append(("tprefix", topic[: dot + 1]))
                keys.append(("tsuffix", topic[dot:]))
                dot = topic.find(".", dot + 1)
        if self.run_lengths:
            keys.extend(("trun", run) for run in topic_runs(topic, self.run_lengths))
        keys.extend(("user", name) for name in meta.usernames)
        keys.extend(("package", name) for name in meta.packages)
        if meta.agent is not None:
            keys.append(("agent", meta.agent))
        if self.paths is not None:
            found: list[tuple[str, Any]] = []
            self.paths.walk(message.envelope, found)
            regexes, exists, prefixes = self.regexes, self.exists_paths, self.prefix_lengths
            comparisons = self.comparisons
            for path, value in found:
                if path in comparisons:
                    for op, bound in comparisons[path]:
                        if compare(op, value, bound):
                            keys.append(("fcmp", (path, op, bound)))
                typed = value_key(value)
                if typed is not None:
                    keys.append(("field", (path, typed)))
                if path in exists:
                    keys.append(("exists", path))
                if isinstance(value, str):
                    if path in prefixes:
                        size = len(value)
                        keys.extend(("fprefix", (path, value[:n])) for n in prefixes[path] if n <= size)
                    if path in regexes:
                        keys.extend(("regex", (path, pattern)) for pattern in regexes[path].potential(value))
        return keys

    def candidates(self, message: Message, meta: Meta) -> set[int]:
        """Ordinals of every rule that might match (a superset of those that do)."""
        found: set[int] = set(self.residual)
        keys = self.message_keys(message, meta)
        positive = self.positive
        for key in keys:
            hit = positive.get(key)
            if hit:
                found.update(hit)
        if self.negated:
            negative = self.negative
            excluded: set[int] = set()
            for key in keys:
                hit = negative.get(key)
                if hit:
                    excluded.update(hit)
            found |= self.negated - excluded if excluded else self.negated
        return found

    def stats(self) -> dict[str, int]:
        """Rules per kind of key, negated and residual (for the benchmark, logs and ``check``)."""
        counts: dict[str, int] = {}
        for (kind, _), ordinals in self.positive.items():
            counts[kind] = counts.get(kind, 0) + len(ordinals)
        counts["negated"] = len(self.negated)
        counts["residual"] = len(self.residual)
        return counts
