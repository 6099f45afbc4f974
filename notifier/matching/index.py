"""The candidate index: which rules could possibly match a message.

Old FMN tested every rule of every user against every message and took seconds per
message. Here each rule is filed under what it requires — an exact topic, a
dot-aligned topic prefix or suffix, a service, a username, an agent or a package —
using the most selective requirement its conditions give (see
:meth:`fedmsg_notify.matching.match.Condition.requirement`). For a message we probe the
index with the few keys the message carries and evaluate only those candidates plus
the rules nothing could index (``not:``-only rules, globs with wildcards at both
ends, ``match: {}``). The result equals brute-force evaluation; a property test
checks that.
"""

from __future__ import annotations

from collections.abc import Iterable

from fedmsg_notify.bus.envelope import Message
from fedmsg_notify.matching.match import Condition, field_key, parse_path, resolve
from fedmsg_notify.meta.engine import Meta

KINDS = ("topic", "tprefix", "tsuffix", "service", "user", "agent", "package", "field")


class RuleIndex:
    """Rule ordinals by requirement key; ``residual`` rules are always candidates."""

    __slots__ = ("field_paths", "residual", "tables")

    def __init__(self, conditions: Iterable[Condition]) -> None:
        tables: dict[str, dict[str, list[int]]] = {kind: {} for kind in KINDS}
        residual: list[int] = []
        for ordinal, condition in enumerate(conditions):
            requirement = condition.requirement()
            if requirement is None:
                residual.append(ordinal)
                continue
            for kind, value in requirement.keys:
                tables[kind].setdefault(value, []).append(ordinal)
        self.tables = {kind: {k: tuple(v) for k, v in table.items()} for kind, table in tables.items()}
        self.residual = tuple(residual)
        # The distinct field paths rules index on (usually a handful: msg.owner, msg.agent...),
        # each resolved once per message.
        paths = {key.partition("\0")[0] for key in self.tables["field"]}
        self.field_paths = tuple((path, parse_path(path)) for path in sorted(paths))

    def candidates(self, message: Message, meta: Meta) -> set[int]:
        """Ordinals of every rule that might match (a superset of those that do)."""
        found: set[int] = set(self.residual)
        tables = self.tables
        topic = message.topic
        hit = tables["topic"].get(topic)
        if hit:
            found.update(hit)
        prefixes, suffixes = tables["tprefix"], tables["tsuffix"]
        if prefixes or suffixes:
            # Every dot splits the topic into a prefix ending at it and a suffix starting at it.
            dot = topic.find(".")
            while dot >= 0:
                hit = prefixes.get(topic[: dot + 1])
                if hit:
                    found.update(hit)
                hit = suffixes.get(topic[dot:])
                if hit:
                    found.update(hit)
                dot = topic.find(".", dot + 1)
        hit = tables["service"].get(message.parts.service)
        if hit:
            found.update(hit)
        users = tables["user"]
        for name in meta.usernames:
            hit = users.get(name)
            if hit:
                found.update(hit)
        if meta.agent is not None:
            hit = tables["agent"].get(meta.agent)
            if hit:
                found.update(hit)
        packages = tables["package"]
        for name in meta.packages:
            hit = packages.get(name)
            if hit:
                found.update(hit)
        if self.field_paths:
            fields = tables["field"]
            values: list[object] = []
            for path, segments in self.field_paths:
                values.clear()
                resolve(message.envelope, segments, 0, values)
                for value in values:
                    if isinstance(value, str):
                        hit = fields.get(field_key(path, value))
                        if hit:
                            found.update(hit)
        return found

    def stats(self) -> dict[str, int]:
        """Rules per kind of key and in the residual list (for the benchmark and logs)."""
        counts = {kind: sum(len(v) for v in table.values()) for kind, table in self.tables.items()}
        counts["residual"] = len(self.residual)
        return counts
