"""Prefiltering ``matches`` regexes on the literal text they require (RE2's FilteredRE2).

A regex like ``^kernel-\\d+`` can only match a value containing ``kernel-``. RE2
computes such required pieces ("atoms") for each regex and finds, in one pass over a
value, every regex whose atoms are present: the index uses that to wake only the rules
whose regex could match, instead of running every regex on every message. Regexes
without a usable atom (``.``, ``^a``, ``x|y``) cannot be prefiltered and leave their
condition unindexed.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, Final

import re2

# Patterns per FilteredRE2: its atoms share one RE2::Set, whose program (and the DFA built
# while matching) grow with the number of atoms; chunks keep each one small.
CHUNK: Final = 4096
# A pattern whose only atom is this text: every value is searched with it appended, so a
# match that does not report it means RE2 failed (out of memory) rather than found nothing.
_SENTINEL: Final = "\x01fedmsgnotifysentinel\x01"
_SENTINEL_PATTERN: Final = "fedmsgnotifysentinel"


@functools.lru_cache(maxsize=16384)
def filterable(pattern: str) -> bool:
    """Whether RE2 finds a required literal in ``pattern`` (else every value is a potential match)."""
    probe = re2.Filter()
    try:
        probe.Add(pattern)
        probe.Compile()
    except re2.error:
        return False
    # A regex with atoms is never a potential match of the empty string; an unfiltered one always is.
    return probe.Match("", potential=True) is None


class RegexFilter:
    """Every distinct prefilterable regex on one field path; :meth:`potential` is the lookup."""

    __slots__ = ("chunks", "patterns")

    def __init__(self, patterns: Sequence[str]) -> None:
        self.patterns = tuple(patterns)
        self.chunks: list[tuple[Any, int, int]] = []
        for start in range(0, len(self.patterns), CHUNK):
            part = self.patterns[start : start + CHUNK]
            found = re2.Filter()
            for pattern in part:
                found.Add(pattern)
            sentinel = found.Add(_SENTINEL_PATTERN)
            found.Compile()
            self.chunks.append((found, start, sentinel))

    def potential(self, value: str) -> list[str]:
        """The patterns that might match ``value`` (a superset of those that do)."""
        text = value + _SENTINEL
        out: list[str] = []
        patterns = self.patterns
        for found, start, sentinel in self.chunks:
            hits = found.Match(text, potential=True)
            if not hits or hits[-1] != sentinel:
                # RE2 gave up on this value: every pattern of the chunk stays a candidate.
                out.extend(patterns[start : start + sentinel])
                continue
            out.extend(patterns[start + n] for n in hits[:-1])
        return out


# Characters RE2 gives a meaning to outside a class; every other character stands for itself.
_SPECIAL: Final = frozenset("\\.+*?()|[]{}^$")
_PUNCTUATION: Final = frozenset("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")


@functools.lru_cache(maxsize=16384)
def anchored_literal(pattern: str) -> tuple[str, str] | None:
    """``("exact", text)`` for ``^text$``, ``("prefix", text)`` for ``^text...``; else ``None``.

    The shapes people write for "my username" and "my package's builds" (``^ralph$``,
    ``^kernel-[0-9]``): the index looks them up like an equality or a prefix, with no
    RE2 program kept for them. Conservative: any alternation, flag or escape other
    than a backslashed punctuation mark, and the pattern is left to RE2's prefilter.
    """
    if not pattern.startswith("^") or "|" in pattern:
        return None
    text: list[str] = []
    i, n = 1, len(pattern)
    while i < n:
        char = pattern[i]
        if char == "\\" and i + 1 < n and pattern[i + 1] in _PUNCTUATION:
            text.append(pattern[i + 1])
            i += 2
            continue
        if char in _SPECIAL:
            break
        text.append(char)
        i += 1
    if i == n:
        return ("prefix", "".join(text)) if text else None
    if pattern[i] == "$" and i == n - 1:
        return ("exact", "".join(text))
    # A quantifier after the run applies to its last character, which may then be absent.
    if pattern[i] in "*?{+" and text:
        text.pop()
    return ("prefix", "".join(text)) if text else None
