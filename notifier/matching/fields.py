"""``field`` conditions: a JSON path into the envelope and an operator.

Paths look like ``msg.update.builds[*].nvr`` (``[*]`` fans out over a list or an
object's values, ``[2]`` indexes). For the index an equality is a key on
``(path, value)`` with the value typed as JSON compares it, and a ``matches`` regex is
filed under its path so the index can prefilter on the regex's required literal text
(RE2's FilteredRE2, see :mod:`fedmsg_notify.matching.regexes`).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from typing import Any, Final

from fedmsg_notify.bus.envelope import Message
from fedmsg_notify.matching.match import Condition, Key, Requirement, compile_regex, show, show_list
from fedmsg_notify.matching.regexes import anchored_literal, filterable

STAR: Final = object()
FIELD_OPS: Final = ("equals", "in", "matches", "contains", "exists", "gt", "ge", "lt", "le")
ORDER_OPS: Final = ("gt", "ge", "lt", "le")


@functools.lru_cache(maxsize=4096)
def parse_path(path: str) -> tuple[Any, ...]:
    """``msg.update.builds[*].nvr`` → ``("msg", "update", "builds", STAR, "nvr")``; ``[2]`` indexes."""
    segments: list[Any] = []
    if not path or path.strip() != path:
        raise ValueError(f"invalid field path {path!r}: expected dotted keys like msg.update.builds[*].nvr")
    for part in path.split("."):
        name, bracket, rest = part.partition("[")
        if not name and not segments:
            raise ValueError(f"invalid field path {path!r}: it must start with a key, e.g. msg")
        if not name and bracket and segments:
            raise ValueError(f"invalid field path {path!r}: empty key before '['")
        if not name:
            raise ValueError(f"invalid field path {path!r}: empty key between dots")
        if "]" in name:
            raise ValueError(f"invalid field path {path!r}: ']' without '['")
        segments.append(name)
        rest = bracket + rest
        while rest:
            if not rest.startswith("[") or "]" not in rest:
                raise ValueError(f"invalid field path {path!r}: expected [*] or [N] after {name!r}")
            inside, _, rest = rest[1:].partition("]")
            if inside == "*":
                segments.append(STAR)
            elif inside.isdigit():
                segments.append(int(inside))
            else:
                raise ValueError(f"invalid field path {path!r}: [{inside}] is neither [*] nor an index")
    return tuple(segments)


def resolve(node: Any, segments: Sequence[Any], start: int, out: list[Any]) -> None:
    """Append every value ``segments`` reaches from ``node`` (``[*]`` fans out)."""
    for position in range(start, len(segments)):
        segment = segments[position]
        if segment is STAR:
            if isinstance(node, list):
                children: Iterable[Any] = node
            elif isinstance(node, dict):
                children = node.values()
            else:
                return
            for child in children:
                resolve(child, segments, position + 1, out)
            return
        if isinstance(segment, int):
            if not isinstance(node, list) or segment >= len(node):
                return
            node = node[segment]
        else:
            if not isinstance(node, dict) or segment not in node:
                return
            node = node[segment]
    out.append(node)


def value_key(value: Any) -> Any:
    """``value`` as a dictionary key that two values share exactly when :func:`same` holds.

    Python already hashes ``1`` and ``1.0`` alike and compares them exactly; only booleans
    (equal to 0 and 1 in Python, never in JSON) and NaN (equal to nothing) need care.
    ``None`` for values no equality key can stand for (lists, objects, NaN).
    """
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, (int, float)):
        return ("num", value) if value == value else None
    if value is None:
        return ("null",)
    return None


def same(a: Any, b: Any) -> bool:
    """JSON equality: ``true`` is not ``1``, ``1`` is ``1.0``."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    return type(a) is type(b) and bool(a == b)


def compare(op: str, value: Any, bound: Any) -> bool:
    """``value <op> bound`` as the ``gt``/``ge``/``lt``/``le`` operators mean it (never across types)."""
    if not _ordered(value, bound):
        return False
    if op == "gt":
        return bool(value > bound)
    if op == "ge":
        return bool(value >= bound)
    if op == "lt":
        return bool(value < bound)
    return bool(value <= bound)


def _ordered(a: Any, b: Any) -> bool:
    """Whether ``a`` and ``b`` can be compared with < (numbers with numbers, strings with strings)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return False
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return True
    return isinstance(a, str) and isinstance(b, str)


def _plainly_literal(pattern: str) -> bool:
    """``^text$`` or ``^text`` with no backslash or special character: valid RE2 without asking RE2."""
    shape = anchored_literal(pattern)
    if shape is None or "\\" in pattern:
        return False
    body = pattern[1:-1] if shape[0] == "exact" else pattern[1:]
    return body == shape[1]


class Field(Condition):
    __slots__ = ("_regex", "expected", "op", "path", "segments")

    def __init__(self, path: str, op: str, expected: Any) -> None:
        if op not in FIELD_OPS:
            raise ValueError(f"unknown operator {op!r}")
        self.path = path
        self.segments = parse_path(path)
        self.op = op
        self.expected = expected
        # Compiled to validate now, kept only once first needed: with the index prefiltering
        # on required literals, most users' regexes run rarely, and each program costs ~1.3 KB.
        self._regex: Any = None
        if op == "matches" and not _plainly_literal(expected):
            compile_regex(expected)

    @property
    def regex(self) -> Any:
        if self._regex is None:
            self._regex = compile_regex(self.expected)
        return self._regex

    def values(self, message: Message) -> list[Any]:
        out: list[Any] = []
        resolve(message.envelope, self.segments, 0, out)
        return out

    def test(self, message: Message, meta: Any) -> bool:
        values = self.values(message)
        if self.op == "exists":
            return bool(values) == bool(self.expected)
        for value in values:  # noqa: SIM110 (hot path: no generator)
            if self.holds(value):
                return True
        return False

    def holds(self, value: Any) -> bool:
        op, expected = self.op, self.expected
        if op == "equals":
            return same(value, expected)
        if op == "in":
            return any(same(value, option) for option in expected)
        if op == "matches":
            return isinstance(value, str) and self.regex.search(value) is not None
        if op == "contains":
            if isinstance(value, str):
                return isinstance(expected, str) and expected in value
            if isinstance(value, list):
                return any(same(item, expected) for item in value)
            if isinstance(value, dict):
                return isinstance(expected, str) and expected in value
            return False
        return compare(op, value, expected)

    def _equality_keys(self) -> frozenset[Key] | None:
        options = [self.expected] if self.op == "equals" else self.expected if self.op == "in" else None
        if not options:
            return None
        keys = set()
        for option in options:
            key = value_key(option)
            if key is None:
                return None
            keys.add(("field", (self.path, key)))
        return frozenset(keys)

    def requirement(self) -> Requirement | None:
        # "msg.owner equals $me" is as selective as a username.
        keys = self._equality_keys()
        if keys is not None:
            # Strings name someone or something; numbers and booleans (msg.new equals 3) are shared widely.
            named = all(isinstance(k[1][1], str) for k in keys)
            return Requirement(keys, 60 if named else 8)
        if self.op == "exists" and self.expected:
            return Requirement(frozenset({("exists", self.path)}), 6)
        if self.op in ORDER_OPS:
            return Requirement(self.sufficient(), 4)
        if self.op == "matches":
            shape = anchored_literal(self.expected)
            if shape is not None:
                # ^ralph$ is an equality; ^kernel- a prefix, looked up by the value's first characters.
                kind = "field" if shape[0] == "exact" else "fprefix"
                return Requirement(frozenset({(kind, (self.path, shape[1]))}), 60 if kind == "field" else 55)
            if filterable(self.expected):
                return Requirement(frozenset({("regex", (self.path, self.expected))}), 55)
        return None

    def sufficient(self) -> frozenset[Key]:
        keys = self._equality_keys()
        if keys is not None:
            return keys
        if self.op == "exists" and self.expected:
            return frozenset({("exists", self.path)})
        if self.op in ORDER_OPS:
            # Evaluated once per distinct (path, operator, bound) and message by the index.
            return frozenset({("fcmp", (self.path, self.op, self.expected))})
        if self.op == "matches" and _plainly_literal(self.expected):
            shape = anchored_literal(self.expected)
            assert shape is not None
            return frozenset({("field" if shape[0] == "exact" else "fprefix", (self.path, shape[1]))})
        return frozenset()

    def exclusion(self) -> frozenset[Key] | None:
        # exists: false holds exactly when the path reaches nothing.
        return frozenset({("exists", self.path)}) if self.op == "exists" and not self.expected else None

    def why_not(self, message: Message, meta: Any) -> str | None:
        if self.test(message, meta):
            return None
        values = self.values(message)
        got = "nothing (no such field)" if not values else show_list(values)
        return f"{self.describe()}: got {got}"

    def describe(self) -> str:
        return f"field {self.path} {self.op} {show(self.expected)}"
