"""Match conditions: compiled once when rules load, evaluated for every message.

A rule's ``match`` mapping becomes a small tree of :class:`Condition` objects. Each
condition answers three questions: does it hold for this message (``test``, the hot
path), why not (``why_not``, for ``explain``), and what must a message have for it
to possibly hold (``requirement``, for the candidate index in :mod:`index`).

User-written regexes run on RE2 (``google-re2``): matching time is linear in the
input, so no pattern can stall the daemon (SPEC "Hostile input"). Topic globs are
translated to RE2 too, with plain string tests for the common shapes.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Final

import re2
from fedmsg_notify.bus.envelope import Message
from fedmsg_notify.meta.engine import Meta

# RE2 logs rejected patterns to stderr by itself; we report them with positions instead.
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False
# Generous but bounded memory for one compiled program (RE2's default is 8 MiB).
_RE2_OPTIONS.max_mem = 8 << 20


class PatternError(ValueError):
    """A regex or glob that cannot be compiled; the message says why."""


@functools.lru_cache(maxsize=16384)
def compile_regex(pattern: str) -> Any:
    """Compile ``pattern`` with RE2, raising :class:`PatternError` with RE2's reason.

    Cached: thousands of users' rule files repeat the same few patterns, and a
    compiled RE2 program is immutable, so they can share it.
    """
    try:
        return re2.compile(pattern, _RE2_OPTIONS)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else exc
        text = reason.decode("utf-8", "replace") if isinstance(reason, bytes) else str(reason)
        raise PatternError(
            f"invalid regex {pattern!r}: {text} (regexes use RE2 syntax: no backreferences or lookaround)"
        ) from exc


def show(value: Any, limit: int = 120) -> str:
    """A value as a user would write it in JSON, shortened for one-line messages."""
    try:
        text = json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def show_list(values: Sequence[Any]) -> str:
    return show(values[0]) if len(values) == 1 else show(list(values))


@dataclass(frozen=True, slots=True)
class Requirement:
    """What a message must carry for a condition to hold: any one of ``keys``.

    Keys are ``(kind, value)`` pairs the index knows how to look up (exact topic,
    dot-aligned topic prefix or suffix, service, user, agent, package). A higher
    ``score`` means fewer messages are expected to carry the key, so the index
    files the rule under the most selective requirement it has.
    """

    keys: frozenset[tuple[str, str]]
    score: int


class Condition:
    """Base of every compiled condition."""

    __slots__ = ()

    def test(self, message: Message, meta: Meta) -> bool:
        raise NotImplementedError

    def why_not(self, message: Message, meta: Meta) -> str | None:
        """``None`` when the condition holds, else a readable description of the first failure."""
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def requirement(self) -> Requirement | None:
        """Keys one of which every matching message has; ``None`` if the condition cannot be indexed."""
        return None


class Everything(Condition):
    """``match: {}``: every message."""

    __slots__ = ()

    def test(self, message: Message, meta: Meta) -> bool:
        return True

    def why_not(self, message: Message, meta: Meta) -> str | None:
        return None

    def describe(self) -> str:
        return "everything"


# --- topics -----------------------------------------------------------------------------------------


class Glob:
    """One topic glob: ``*`` is any run of characters (dots included), ``?`` one character,
    ``[abc]`` / ``[!abc]`` a character class; everything else is literal."""

    __slots__ = ("exact", "kind", "literal", "pattern", "regex")

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        tokens = _glob_tokens(pattern)
        stars = [n for n, t in enumerate(tokens) if t == ("*",)]
        literal_only = all(t[0] == "lit" for t in tokens if t != ("*",))
        self.regex: Any = None
        self.literal = ""
        self.exact = False
        # Plain string tests for the shapes people write; RE2 for the rest.
        if not stars and literal_only:
            self.kind = "exact"
            self.literal = "".join(t[1] for t in tokens)
            self.exact = True
        elif literal_only and len(stars) == 1 and stars[0] == len(tokens) - 1:
            self.kind = "prefix"
            self.literal = "".join(t[1] for t in tokens[:-1])
        elif literal_only and len(stars) == 1 and stars[0] == 0:
            self.kind = "suffix"
            self.literal = "".join(t[1] for t in tokens[1:])
        elif literal_only and len(stars) == 2 and stars == [0, len(tokens) - 1] and len(tokens) > 2:
            self.kind = "infix"
            self.literal = "".join(t[1] for t in tokens[1:-1])
        else:
            self.kind = "regex"
            self.regex = compile_regex("(?s)" + "".join(_token_regex(t) for t in tokens))

    def __call__(self, topic: str) -> bool:
        kind = self.kind
        if kind == "exact":
            return topic == self.literal
        if kind == "prefix":
            return topic.startswith(self.literal)
        if kind == "suffix":
            return topic.endswith(self.literal)
        if kind == "infix":
            return self.literal in topic
        return self.regex.fullmatch(topic) is not None

    def index_key(self) -> tuple[tuple[str, str], int] | None:
        """The index key and its selectivity score, from the literal text the glob pins down."""
        if self.exact:
            # Below users and packages: one exact topic (koji build state changes) can be a
            # large share of all traffic, while a username or package is a tiny one.
            return ("topic", self.literal), 40
        tokens = _glob_tokens(self.pattern)
        head = _literal_run(tokens)
        tail = _literal_run(list(reversed(tokens)))[::-1]
        candidates: list[tuple[tuple[str, str], int]] = []
        # Only dot-aligned pieces are indexed, so the lookup per message is a few
        # dictionary probes (one per dot in the topic), whatever the patterns are.
        cut = head.rfind(".")
        if cut > 0:
            prefix = head[: cut + 1]
            # org.fedoraproject.prod. is shared by nearly every topic: only segments
            # after the first three really narrow things down.
            candidates.append((("tprefix", prefix), prefix.count(".") - 3))
        cut = tail.find(".")
        if cut >= 0 and cut < len(tail) - 1:
            suffix = tail[cut:]
            candidates.append((("tsuffix", suffix), 5 * suffix.count(".")))
        if not candidates:
            return None
        best = max(candidates, key=lambda item: item[1])
        return best if best[1] > 0 else None


@functools.lru_cache(maxsize=16384)
def glob(pattern: str) -> Glob:
    """A compiled :class:`Glob`, shared between rules that write the same pattern."""
    return Glob(pattern)


def _glob_tokens(pattern: str) -> list[tuple[str, ...]]:
    """``("*",)``, ``("?",)``, ``("class", regex)`` or ``("lit", char)`` per element."""
    tokens: list[tuple[str, ...]] = []
    i, n = 0, len(pattern)
    while i < n:
        char = pattern[i]
        if char == "*":
            if not tokens or tokens[-1] != ("*",):
                tokens.append(("*",))
            i += 1
        elif char == "?":
            tokens.append(("?",))
            i += 1
        elif char == "[":
            end = pattern.find("]", i + 2 if i + 1 < n and pattern[i + 1] in "!]" else i + 1)
            if end < 0:
                tokens.append(("lit", char))
                i += 1
                continue
            body = pattern[i + 1 : end]
            negate = body.startswith("!")
            if negate:
                body = body[1:]
            escaped = "".join("\\" + c if c in "\\^[]" else c for c in body)
            tokens.append(("class", ("[^" if negate else "[") + escaped + "]"))
            i = end + 1
        else:
            tokens.append(("lit", char))
            i += 1
    return tokens


def _token_regex(token: tuple[str, ...]) -> str:
    if token == ("*",):
        return ".*"
    if token == ("?",):
        return "."
    if token[0] == "class":
        return token[1]
    return str(re2.escape(token[1]))


def _literal_run(tokens: Sequence[tuple[str, ...]]) -> str:
    out = []
    for token in tokens:
        if token[0] != "lit":
            break
        out.append(token[1])
    return "".join(out)


class Topic(Condition):
    __slots__ = ("globs",)

    def __init__(self, globs: Sequence[Glob]) -> None:
        self.globs = tuple(globs)

    def test(self, message: Message, meta: Meta) -> bool:
        topic = message.topic
        # Explicit loops: this runs for every candidate rule, and a generator costs more
        # than the comparison it wraps.
        for pattern in self.globs:  # noqa: SIM110
            if pattern(topic):
                return True
        return False

    def why_not(self, message: Message, meta: Meta) -> str | None:
        return None if self.test(message, meta) else f"{self.describe()}: got {show(message.topic)}"

    def describe(self) -> str:
        return f"topic {show_list([g.pattern for g in self.globs])}"

    def requirement(self) -> Requirement | None:
        keys = []
        for pattern in self.globs:
            found = pattern.index_key()
            if found is None:
                return None
            keys.append(found)
        return Requirement(frozenset(k for k, _ in keys), min(s for _, s in keys))


# --- topic parts and metadata -----------------------------------------------------------------------


class _OneOf(Condition):
    """A message attribute (a string or ``None``) that must be one of ``values``."""

    __slots__ = ("values", "written")
    label: ClassVar[str] = ""
    index_kind: ClassVar[str | None] = None
    score: ClassVar[int] = 0

    def __init__(self, values: Iterable[str]) -> None:
        self.written = tuple(values)
        self.values = frozenset(self.written)

    def attribute(self, message: Message, meta: Meta) -> str | None:
        raise NotImplementedError

    def test(self, message: Message, meta: Meta) -> bool:
        return self.attribute(message, meta) in self.values

    def why_not(self, message: Message, meta: Meta) -> str | None:
        if self.test(message, meta):
            return None
        got = self.attribute(message, meta)
        return f"{self.describe()}: got {'nothing' if got is None else show(got)}"

    def describe(self) -> str:
        return f"{self.label} {show_list(self.written)}"

    def requirement(self) -> Requirement | None:
        if self.index_kind is None:
            return None
        return Requirement(frozenset((self.index_kind, v) for v in self.values), self.score)


class Service(_OneOf):
    __slots__ = ()
    label = "service"
    index_kind = "service"
    score = 10

    def attribute(self, message: Message, meta: Meta) -> str | None:
        return message.parts.service


class Env(_OneOf):
    __slots__ = ()
    label = "env"

    def attribute(self, message: Message, meta: Meta) -> str | None:
        return message.parts.env


class Agent(_OneOf):
    __slots__ = ()
    label = "agent"
    index_kind = "agent"
    score = 50

    def attribute(self, message: Message, meta: Meta) -> str | None:
        return meta.agent


class _AnyOf(Condition):
    """A metadata list (usernames, packages) that must share an element with ``values``."""

    __slots__ = ("values", "written")
    label: ClassVar[str] = ""
    index_kind: ClassVar[str] = ""

    def __init__(self, values: Iterable[str]) -> None:
        self.written = tuple(values)
        self.values = frozenset(self.written)

    def attribute(self, meta: Meta) -> Sequence[str]:
        raise NotImplementedError

    def test(self, message: Message, meta: Meta) -> bool:
        return not self.values.isdisjoint(self.attribute(meta))

    def why_not(self, message: Message, meta: Meta) -> str | None:
        if self.test(message, meta):
            return None
        return f"{self.describe()}: got {show(list(self.attribute(meta)))}"

    def describe(self) -> str:
        return f"{self.label} {show_list(self.written)}"

    def requirement(self) -> Requirement | None:
        return Requirement(frozenset((self.index_kind, v) for v in self.values), 50)


class Users(_AnyOf):
    __slots__ = ()
    label = "users"
    index_kind = "user"

    def attribute(self, meta: Meta) -> Sequence[str]:
        return meta.usernames


class Packages(_AnyOf):
    __slots__ = ()
    label = "packages"
    index_kind = "package"

    def attribute(self, meta: Meta) -> Sequence[str]:
        return meta.packages


# --- fields -----------------------------------------------------------------------------------------

STAR: Final = object()
FIELD_OPS: Final = ("equals", "in", "matches", "contains", "exists", "gt", "ge", "lt", "le")


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


def field_key(path: str, value: str) -> str:
    """The index key of "the field at ``path`` equals ``value``" (NUL cannot occur in a path)."""
    return f"{path}\0{value}"


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


def same(a: Any, b: Any) -> bool:
    """JSON equality: ``true`` is not ``1``, ``1`` is ``1.0``."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    return type(a) is type(b) and bool(a == b)


def _ordered(a: Any, b: Any) -> bool:
    """Whether ``a`` and ``b`` can be compared with < (numbers with numbers, strings with strings)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return False
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return True
    return isinstance(a, str) and isinstance(b, str)


class Field(Condition):
    __slots__ = ("expected", "op", "path", "regex", "segments")

    def __init__(self, path: str, op: str, expected: Any) -> None:
        if op not in FIELD_OPS:
            raise ValueError(f"unknown operator {op!r}")
        self.path = path
        self.segments = parse_path(path)
        self.op = op
        self.expected = expected
        self.regex: Any = compile_regex(expected) if op == "matches" else None

    def values(self, message: Message) -> list[Any]:
        out: list[Any] = []
        resolve(message.envelope, self.segments, 0, out)
        return out

    def test(self, message: Message, meta: Meta) -> bool:
        values = self.values(message)
        op = self.op
        if op == "exists":
            return bool(values) == bool(self.expected)
        return any(self.holds(value) for value in values)

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
        if not _ordered(value, expected):
            return False
        if op == "gt":
            return bool(value > expected)
        if op == "ge":
            return bool(value >= expected)
        if op == "lt":
            return bool(value < expected)
        return bool(value <= expected)  # le

    def requirement(self) -> Requirement | None:
        # "msg.owner equals $me" is as selective as a username: index string equality.
        if self.op == "equals" and isinstance(self.expected, str):
            return Requirement(frozenset({("field", field_key(self.path, self.expected))}), 60)
        if self.op == "in" and self.expected and all(isinstance(v, str) for v in self.expected):
            return Requirement(frozenset(("field", field_key(self.path, v)) for v in self.expected), 60)
        return None

    def why_not(self, message: Message, meta: Meta) -> str | None:
        if self.test(message, meta):
            return None
        values = self.values(message)
        if not values:
            got = "nothing (no such field)"
        else:
            got = show_list(values)
        return f"{self.describe()}: got {got}"

    def describe(self) -> str:
        return f"field {self.path} {self.op} {show(self.expected)}"


# --- combinations -----------------------------------------------------------------------------------


class All(Condition):
    __slots__ = ("children",)

    def __init__(self, children: Sequence[Condition]) -> None:
        self.children = tuple(children)

    def test(self, message: Message, meta: Meta) -> bool:
        for child in self.children:  # noqa: SIM110 (hot path: no generator)
            if not child.test(message, meta):
                return False
        return True

    def why_not(self, message: Message, meta: Meta) -> str | None:
        for child in self.children:
            reason = child.why_not(message, meta)
            if reason is not None:
                return reason
        return None

    def describe(self) -> str:
        if len(self.children) == 1:
            return self.children[0].describe()
        return "(" + " and ".join(child.describe() for child in self.children) + ")"

    def requirement(self) -> Requirement | None:
        best: Requirement | None = None
        for child in self.children:
            found = child.requirement()
            if found is not None and (best is None or found.score > best.score):
                best = found
        return best


class AnyOf(Condition):
    __slots__ = ("children",)

    def __init__(self, children: Sequence[Condition]) -> None:
        self.children = tuple(children)

    def test(self, message: Message, meta: Meta) -> bool:
        for child in self.children:  # noqa: SIM110 (hot path: no generator)
            if child.test(message, meta):
                return True
        return False

    def why_not(self, message: Message, meta: Meta) -> str | None:
        if self.test(message, meta):
            return None
        reasons = [child.why_not(message, meta) or child.describe() for child in self.children]
        return "any: none held (" + "; ".join(reasons) + ")"

    def describe(self) -> str:
        return "(" + " or ".join(child.describe() for child in self.children) + ")"

    def requirement(self) -> Requirement | None:
        keys: set[tuple[str, str]] = set()
        score = None
        for child in self.children:
            found = child.requirement()
            if found is None:
                return None
            keys |= found.keys
            score = found.score if score is None else min(score, found.score)
        return Requirement(frozenset(keys), score or 0)


class Not(Condition):
    __slots__ = ("child",)

    def __init__(self, child: Condition) -> None:
        self.child = child

    def test(self, message: Message, meta: Meta) -> bool:
        return not self.child.test(message, meta)

    def why_not(self, message: Message, meta: Meta) -> str | None:
        if self.test(message, meta):
            return None
        return f"not {self.child.describe()}: it held"

    def describe(self) -> str:
        return f"not {self.child.describe()}"
