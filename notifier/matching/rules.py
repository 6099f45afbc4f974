"""Rule files: the loaded rule set and routing (SPEC "Rule files").

A rule file holds ``rules:`` (a list of ``name`` / ``match`` / ``deliver``) and may
set ``me:`` (the owner's username, substituted for ``$me``). Every problem in every
file is collected and reported as ``file:line:col: message`` before anything runs.
Files are read and compiled by :mod:`rule_files` (cached per file version) and
:mod:`rule_compiler`; the compiled conditions are filed in a candidate index
(:mod:`index`) so :meth:`RuleSet.routes`, the hot path, evaluates only rules that
could match.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from fedmsg_notify.backend import Destination
from fedmsg_notify.bus.envelope import Message
from fedmsg_notify.config.yaml_positions import LocatedDocument, Problem, ProblemsError
from fedmsg_notify.matching.compiled import CompiledRule, Digest, Route, Rule, Verdict, parse_duration
from fedmsg_notify.matching.index import RuleIndex
from fedmsg_notify.matching.match import Condition
from fedmsg_notify.matching.rule_compiler import FileCompiler
from fedmsg_notify.matching.rule_files import (
    MAX_FILE_BYTES,
    MAX_RULES_PER_FILE,
    CompiledFiles,
    collector_paused,
    rule_files,
)
from fedmsg_notify.meta.engine import Meta

__all__ = ["CompiledRule", "Digest", "Route", "Rule", "RuleSet", "Verdict", "parse_duration", "rule_files"]

# Every load in this process shares one cache: the daemon's reloads recompile only changed files.
FILES = CompiledFiles()


class RuleSet:
    """Every loaded rule, in order, plus the index :meth:`routes` uses."""

    def __init__(self, rules: Sequence[CompiledRule], files: int = 0) -> None:
        self.rules: tuple[CompiledRule, ...] = tuple(rules)
        self.files = files
        # How many files this load compiled (the others came from the cache).
        self.recompiled = files
        self.index = RuleIndex(rule.condition for rule in self.rules)
        # Destinations numbered once here, so dedup per message compares small ints
        # instead of hashing dataclasses.
        numbers: dict[Destination, int] = {}
        # Destinations are shared objects within a file load: look them up by identity
        # first, since hashing a dataclass costs more than the rest of this loop.
        by_id: dict[int, int] = {}

        def number(destination: Destination) -> int:
            found = by_id.get(id(destination))
            if found is None:
                found = by_id[id(destination)] = numbers.setdefault(destination, len(numbers))
            return found

        self._plan: tuple[tuple[Condition, tuple[tuple[int, Route], ...]], ...] = tuple(
            (rule.condition, tuple((number(r.destination), r) for r in rule.routes)) for rule in self.rules
        )

    def __len__(self) -> int:
        return len(self.rules)

    @classmethod
    def load(
        cls,
        paths: Iterable[Path | str],
        accounts: Mapping[str, Any],
        *,
        max_rules_per_file: int = MAX_RULES_PER_FILE,
        max_file_bytes: int = MAX_FILE_BYTES,
        cache: CompiledFiles | None = None,
    ) -> RuleSet:
        """Load every rule file; raise :class:`ProblemsError` with every problem in every file.

        Files unchanged since the last load (of ``cache``, by default the process's) are not
        compiled again; ``recompiled`` on the result says how many were.
        """
        files = rule_files(paths)
        with collector_paused():
            rules, problems, compiled = (cache or FILES).load(
                files, accounts, max_rules=max_rules_per_file, max_bytes=max_file_bytes
            )
            if problems:
                raise ProblemsError(problems)
            ruleset = cls(rules, files=len(files))
        ruleset.recompiled = compiled
        return ruleset

    @classmethod
    def from_documents(
        cls,
        docs: Iterable[LocatedDocument],
        accounts: Mapping[str, Any],
        *,
        max_rules_per_file: int = MAX_RULES_PER_FILE,
    ) -> RuleSet:
        """Compile already-parsed rule documents (the benchmark builds them in memory)."""
        problems: list[Problem] = []
        rules: list[CompiledRule] = []
        shared: dict[Any, Any] = {}
        count = 0
        for doc in docs:
            count += 1
            rules.extend(FileCompiler(doc, accounts, problems, shared).compile(max_rules_per_file))
        if problems:
            raise ProblemsError(problems)
        return cls(rules, files=count)

    def residual_rules(self) -> list[CompiledRule]:
        """Rules no condition of which narrows the messages they see: tested for every message."""
        return [self.rules[n] for n in self.index.residual]

    def matching(self, message: Message, meta: Meta) -> list[CompiledRule]:
        """The rules that match, in load order, evaluating only the index's candidates."""
        rules = self.rules
        return [
            rules[n] for n in sorted(self.index.candidates(message, meta)) if rules[n].condition.test(message, meta)
        ]

    def matching_brute_force(self, message: Message, meta: Meta) -> list[CompiledRule]:
        """The same answer as :meth:`matching`, by testing every rule (for tests and ``explain``)."""
        return [rule for rule in self.rules if rule.condition.test(message, meta)]

    def routes(self, message: Message, meta: Meta) -> list[Route]:
        """Where ``message`` goes: each destination at most once, the first matching rule's route wins."""
        plan = self._plan
        seen: set[int] = set()
        out: list[Route] = []
        for n in sorted(self.index.candidates(message, meta)):
            condition, routes = plan[n]
            if not condition.test(message, meta):
                continue
            for number, route in routes:
                if number not in seen:
                    seen.add(number)
                    out.append(route)
        return out

    def explain(self, message: Message, meta: Meta) -> list[Verdict]:
        """Every rule's verdict for ``message``, in load order."""
        verdicts = []
        for rule in self.rules:
            failed = rule.condition.why_not(message, meta)
            verdicts.append(Verdict(rule=rule.rule, matched=failed is None, failed=failed))
        return verdicts
