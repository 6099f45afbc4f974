"""What a rule file compiles to: rules, their routes and digests (SPEC "Rule files").

Plain frozen records shared by the compiler (:mod:`rule_compiler`), the loader
(:mod:`rule_files`) and the rule set (:mod:`rules`), and everything downstream
(intake, rendering, ``explain``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

from fedmsg_notify.backend import Destination
from fedmsg_notify.config import durations
from fedmsg_notify.matching.match import Condition

# Most routes have no backend options: they share one read-only empty mapping.
NO_OPTIONS: Final[Mapping[str, Any]] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    file: str
    line: int = 0
    column: int = 1


@dataclass(frozen=True, slots=True)
class Digest:
    """Batch deliveries: send when ``every_seconds`` have passed and/or ``max`` messages wait.

    ``template`` overrides the backend's ``digest.j2`` for this destination.
    """

    every_seconds: float | None = None
    max: int | None = None
    template: str | None = None


@dataclass(frozen=True, slots=True)
class Route:
    destination: Destination
    rule: Rule
    template: str | None = None
    digest: Digest | None = None
    options: Mapping[str, Any] = field(default_factory=lambda: NO_OPTIONS)


@dataclass(frozen=True, slots=True)
class CompiledRule:
    rule: Rule
    condition: Condition
    routes: tuple[Route, ...]


@dataclass(frozen=True, slots=True)
class Verdict:
    """``explain``'s answer for one rule: matched, or the first condition that failed."""

    rule: Rule
    matched: bool
    failed: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule.name,
            "file": self.rule.file,
            "line": self.rule.line,
            "matched": self.matched,
            "failed": self.failed,
        }


def parse_duration(value: Any) -> float:
    """A digest's ``every``: ``30m``, ``1h``, ``1d``, ``1h30m`` or seconds; :class:`ValueError` otherwise."""
    return durations.parse_duration(value, "digest interval")
