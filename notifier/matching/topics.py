"""Topic globs: compiled once per distinct pattern, and what the index may file them under.

``*`` is any run of characters (dots included), ``?`` one character, ``[abc]`` /
``[!abc]`` a character class; everything else is literal. Plain string tests cover the
shapes people write; RE2 the rest.

For the index a glob yields keys on the *literal dot-separated segments* it pins down,
whatever its shape: a dot-aligned prefix (``org.fedoraproject.prod.bodhi.*``), a
dot-aligned suffix (``*.update.comment``), or a run of whole segments anywhere in the
middle (``*.bodhi.update.*``, ``org.*.copr.build.*``). A topic has few segments, so the
index probes every run of them per message.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, Final

import re2
from fedmsg_notify.bus.envelope import Message
from fedmsg_notify.matching.match import Condition, Key, Requirement, compile_regex, show, show_list

# Segments (nearly) every topic carries: a key made of them narrows nothing down.
COMMON_SEGMENTS: Final = frozenset({"org", "fedoraproject", "centos", "io", "prod", "stg", "dev"})
# The longest run of middle segments the index files a glob under (longer runs are cut
# to their most selective part); the index probes runs up to this length per message.
MAX_RUN: Final = 3

Token = tuple[str, ...]
STAR: Final[Token] = ("*",)


class Glob:
    """One compiled topic glob; calling it with a topic tests it."""

    __slots__ = ("_key", "exact", "kind", "literal", "pattern", "regex", "tokens")

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        tokens = _glob_tokens(pattern)
        self.tokens = tuple(tokens)
        stars = [n for n, t in enumerate(tokens) if t == STAR]
        literal_only = all(t[0] == "lit" for t in tokens if t != STAR)
        self.regex: Any = None
        self.literal = ""
        self.exact = False
        self._key: tuple[Key, int] | bool | None = False  # not computed yet
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

    def index_key(self) -> tuple[Key, int] | None:
        """The most selective key every matching topic has, with its score; ``None`` if none."""
        if self._key is False:
            self._key = self._index_key()
        return self._key  # type: ignore[return-value]

    def _index_key(self) -> tuple[Key, int] | None:
        if self.exact:
            # Below users and packages: one exact topic (koji build state changes) can be a
            # large share of all traffic, while a username or package is a tiny one.
            return ("topic", self.literal), 40
        tokens = self.tokens
        options: list[tuple[Key, int]] = []
        head = _literal_run(tokens)
        cut = head.rfind(".")
        if cut > 0:
            prefix = head[: cut + 1]
            options.append((("tprefix", prefix), 5 * _rare(prefix[:-1].split("."))))
        tail = _literal_run(tokens[::-1])[::-1]
        cut = tail.find(".")
        if 0 <= cut < len(tail) - 1:
            suffix = tail[cut:]
            options.append((("tsuffix", suffix), 5 * suffix.count(".")))
        for run in _middle_runs(tokens):
            options.append(_best_run(run.split(".")))
        if not options:
            return None
        return max(options, key=lambda item: item[1])

    def exact_keys(self) -> frozenset[Key]:
        """Keys that a topic has exactly when it matches (for ``not:``); empty if the shape has none."""
        if self.kind == "exact":
            return frozenset({("topic", self.literal)})
        if self.kind == "prefix" and self.literal.endswith(".") and len(self.literal) > 1:
            return frozenset({("tprefix", self.literal)})
        if self.kind == "suffix" and self.literal.startswith(".") and len(self.literal) > 1:
            return frozenset({("tsuffix", self.literal)})
        if self.kind == "infix" and len(self.literal) >= 2 and self.literal[0] == self.literal[-1] == ".":
            run = self.literal[1:-1]
            if run.count(".") < MAX_RUN:
                return frozenset({("trun", run)})
        return frozenset()


@functools.lru_cache(maxsize=16384)
def glob(pattern: str) -> Glob:
    """A compiled :class:`Glob`, shared between rules that write the same pattern."""
    return Glob(pattern)


def _rare(segments: Sequence[str]) -> int:
    return sum(1 for s in segments if s not in COMMON_SEGMENTS)


def _best_run(segments: list[str]) -> tuple[Key, int]:
    """The most selective run of at most :data:`MAX_RUN` of these consecutive segments."""
    best: tuple[Key, int] | None = None
    for length in range(min(MAX_RUN, len(segments)), 0, -1):
        for start in range(len(segments) - length + 1):
            part = segments[start : start + length]
            score = 5 * _rare(part)
            if best is None or score > best[1]:
                best = (("trun", ".".join(part)), score)
    assert best is not None
    return best


def _middle_runs(tokens: Sequence[Token]) -> list[str]:
    """Every run of whole segments the glob pins down, each bounded by literal dots.

    In ``*.bodhi.update.*`` that is ``bodhi.update``: a matching topic contains
    ``.bodhi.update.``, so those are whole segments of it with at least one segment
    (maybe empty) on each side — what the index calls a middle run.
    """
    runs = []
    stretch: list[str] = []
    for token in (*tokens, STAR):
        if token[0] == "lit":
            stretch.append(token[1])
            continue
        text = "".join(stretch)
        stretch = []
        first, last = text.find("."), text.rfind(".")
        if first >= 0 and last > first:
            runs.append(text[first + 1 : last])
    return runs


def topic_runs(topic: str, lengths: Sequence[int]) -> list[str]:
    """The message side of :func:`_middle_runs`: runs of ``lengths`` segments not touching either end."""
    segments = topic.split(".")
    inner = len(segments) - 1
    out = []
    for length in lengths:
        for start in range(1, inner - length + 1):
            out.append(".".join(segments[start : start + length]))
    return out


def _glob_tokens(pattern: str) -> list[Token]:
    """``("*",)``, ``("?",)``, ``("class", regex)`` or ``("lit", char)`` per element."""
    tokens: list[Token] = []
    i, n = 0, len(pattern)
    while i < n:
        char = pattern[i]
        if char == "*":
            if not tokens or tokens[-1] != STAR:
                tokens.append(STAR)
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


def _token_regex(token: Token) -> str:
    if token == STAR:
        return ".*"
    if token == ("?",):
        return "."
    if token[0] == "class":
        return token[1]
    return str(re2.escape(token[1]))


def _literal_run(tokens: Sequence[Token]) -> str:
    out = []
    for token in tokens:
        if token[0] != "lit":
            break
        out.append(token[1])
    return "".join(out)


class Topic(Condition):
    __slots__ = ("_requirement", "globs")

    def __init__(self, globs: Sequence[Glob]) -> None:
        self.globs = tuple(globs)
        self._requirement: Requirement | bool | None = False  # not computed yet

    def test(self, message: Message, meta: Any) -> bool:
        topic = message.topic
        # Explicit loops: this runs for every candidate rule, and a generator costs more
        # than the comparison it wraps.
        for pattern in self.globs:  # noqa: SIM110
            if pattern(topic):
                return True
        return False

    def why_not(self, message: Message, meta: Any) -> str | None:
        return None if self.test(message, meta) else f"{self.describe()}: got {show(message.topic)}"

    def describe(self) -> str:
        return f"topic {show_list([g.pattern for g in self.globs])}"

    def requirement(self) -> Requirement | None:
        # One Topic is shared by every rule that writes the same globs: work it out once.
        if self._requirement is False:
            self._requirement = self._compute_requirement()
        return self._requirement  # type: ignore[return-value]

    def _compute_requirement(self) -> Requirement | None:
        keys = []
        for pattern in self.globs:
            found = pattern.index_key()
            if found is None:
                return None
            keys.append(found)
        return Requirement(frozenset(k for k, _ in keys), min(s for _, s in keys))

    def sufficient(self) -> frozenset[Key]:
        out: frozenset[Key] = frozenset()
        for pattern in self.globs:
            out |= pattern.exact_keys()
        return out
