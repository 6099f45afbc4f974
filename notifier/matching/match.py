"""Match conditions: compiled once when rules load, evaluated for every message.

A rule's ``match`` mapping becomes a small tree of :class:`Condition` objects. Each
condition answers four questions: does it hold for this message (``test``, the hot
path), why not (``why_not``, for ``explain``), what must a message have for it to
possibly hold (``requirement``), and what makes it hold for certain (``sufficient``).
The candidate index (:mod:`index`) files a rule under its requirement, or, for a
``not:``, under the keys that make the negated condition hold (``exclusion``).

This module holds the base, the metadata conditions and the combinations; topic globs
are in :mod:`topics`, field paths and operators in :mod:`fields`. User-written regexes
run on RE2 (``google-re2``): matching time is linear in the input, so no pattern can
stall the daemon (SPEC "Hostile input").
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

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


def compile_regex(pattern: str) -> Any:
    """Compile ``pattern`` with RE2, raising :class:`PatternError` with RE2's reason.

    Not cached here: equal conditions are compiled once by the rule compiler, and
    compiled programs of 100k users' distinct regexes would otherwise outlive their rules.
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


# ``(kind, value)``: what the index looks up. Kinds: topic, tprefix, tsuffix, trun (a run of
# whole middle segments), service, env, user, agent, package, severity, field
# ((path, value_key)), exists (path), regex ((path, pattern)).
Key = tuple[str, Any]


@dataclass(frozen=True, slots=True)
class Requirement:
    """What a message must carry for a condition to hold: any one of ``keys``.

    Keys are ``(kind, value)`` pairs the index knows how to look up. A higher
    ``score`` means fewer messages are expected to carry the key, so the index
    files the rule under the most selective requirement it has.
    """

    keys: frozenset[Key]
    score: int


class Exclusion(tuple[Key, ...]):
    """Index keys of a ``not:``: the rule is a candidate for messages that have none of them."""

    __slots__ = ()


class Condition:
    """Base of every compiled condition."""

    # What the index files this condition under, worked out once: conditions are immutable
    # and outlive reloads in the per-file cache, so a reload does not recompute 100k of them.
    __slots__ = ("_entry",)
    _entry: tuple[Key, ...]

    def index_entry(self) -> tuple[Key, ...]:
        """The keys the index files this condition under: a plain tuple for a requirement,
        an :class:`Exclusion` for a ``not:``, empty when residual. Tuples, not the frozensets
        they come from: kept for every rule, a frozenset costs 200 bytes more."""
        try:
            return self._entry
        except AttributeError:
            requirement = self.requirement()
            if requirement is not None:
                entry: tuple[Key, ...] = tuple(requirement.keys)
            else:
                exclusion = self.exclusion()
                entry = Exclusion(exclusion) if exclusion else ()
            self._entry = entry
            return entry

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

    def sufficient(self) -> frozenset[Key]:
        """Keys any one of which makes the condition hold for certain (empty: none do)."""
        return frozenset()

    def exclusion(self) -> frozenset[Key] | None:
        """Keys none of which a matching message has (from ``not:``); ``None`` if there are none."""
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


# --- topic parts and metadata -----------------------------------------------------------------------


def _lookup(written: tuple[str, ...]) -> tuple[str, ...] | frozenset[str]:
    """What ``in`` tests against: the written tuple itself when short (a frozenset costs
    over 200 bytes, and most rules name one user or a few packages), else a frozenset."""
    return written if len(written) <= 8 else frozenset(written)



class _OneOf(Condition):
    """A message attribute (a string or ``None``) that must be one of ``values``."""

    __slots__ = ("values", "written")
    label: ClassVar[str] = ""
    index_kind: ClassVar[str] = ""
    score: ClassVar[int] = 0

    def __init__(self, values: Iterable[str]) -> None:
        self.written = tuple(values)
        self.values = _lookup(self.written)

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
        return Requirement(self.sufficient(), self.score)

    def sufficient(self) -> frozenset[Key]:
        return frozenset((self.index_kind, v) for v in self.values)


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
    index_kind = "env"
    score = 1

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
        self.values = _lookup(self.written)

    def attribute(self, meta: Meta) -> Sequence[str]:
        raise NotImplementedError

    def test(self, message: Message, meta: Meta) -> bool:
        values = self.values
        for name in self.attribute(meta):  # noqa: SIM110 (hot path: no generator)
            if name in values:
                return True
        return False

    def why_not(self, message: Message, meta: Meta) -> str | None:
        if self.test(message, meta):
            return None
        return f"{self.describe()}: got {show(list(self.attribute(meta)))}"

    def describe(self) -> str:
        return f"{self.label} {show_list(self.written)}"

    def requirement(self) -> Requirement | None:
        return Requirement(self.sufficient(), 50)

    def sufficient(self) -> frozenset[Key]:
        return frozenset((self.index_kind, v) for v in self.values)


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

    def sufficient(self) -> frozenset[Key]:
        # A key makes every child hold only if it makes each of them hold.
        common = self.children[0].sufficient()
        for child in self.children[1:]:
            common &= child.sufficient()
        return common

    def exclusion(self) -> frozenset[Key] | None:
        # Every child holds, so every `not:` among them excludes its keys.
        keys: frozenset[Key] = frozenset()
        for child in self.children:
            found = child.exclusion()
            if found:
                keys |= found
        return keys or None


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
        keys: set[Key] = set()
        score = None
        for child in self.children:
            found = child.requirement()
            if found is None:
                return None
            keys |= found.keys
            score = found.score if score is None else min(score, found.score)
        return Requirement(frozenset(keys), score or 0)

    def sufficient(self) -> frozenset[Key]:
        out: frozenset[Key] = frozenset()
        for child in self.children:
            out |= child.sufficient()
        return out


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

    def requirement(self) -> Requirement | None:
        # not: {not: X} is X.
        return self.child.child.requirement() if isinstance(self.child, Not) else None

    def sufficient(self) -> frozenset[Key]:
        return self.child.child.sufficient() if isinstance(self.child, Not) else frozenset()

    def exclusion(self) -> frozenset[Key] | None:
        # A message with a key that makes the negated condition hold cannot match.
        return self.child.sufficient() or None
