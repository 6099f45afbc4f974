"""Rule files (foundation version: ``match: {}`` routes everything)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedmsg_notify.backend import Destination
from fedmsg_notify.envelope import Message
from fedmsg_notify.meta import Meta
from fedmsg_notify.yaml_positions import Problem, ProblemsError, load_located


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    file: str


@dataclass(frozen=True, slots=True)
class Route:
    destination: Destination
    rule: Rule
    template: str | None = None
    digest: Mapping[str, Any] | None = None
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class RuleSet:
    routes_all: list[Route]

    @classmethod
    def load(cls, paths: Iterable[Path], accounts: Mapping[str, Any]) -> RuleSet:
        routes: list[Route] = []
        problems: list[Problem] = []
        for base in paths:
            files = sorted(base.glob("*.yaml")) if base.is_dir() else [base] if base.exists() else []
            for file in files:
                doc = load_located(file)
                for n, raw in enumerate((doc.data or {}).get("rules", [])):
                    rule = Rule(name=raw["name"], file=str(file))
                    for m, dest in enumerate(raw.get("deliver", [])):
                        if dest["via"] not in accounts:
                            problems.append(
                                Problem(
                                    doc.where(("rules", n, "deliver", m, "via")), f"undefined account '{dest['via']}'"
                                )
                            )
                            continue
                        routes.append(Route(Destination(dest["via"], dest.get("to")), rule))
        if problems:
            raise ProblemsError(problems)
        return cls(routes)

    def routes(self, message: Message, meta: Meta) -> list[Route]:
        seen: dict[Destination, Route] = {}
        for route in self.routes_all:
            seen.setdefault(route.destination, route)
        return list(seen.values())
