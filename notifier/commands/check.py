"""``fedmsg-notify check``: validate config, rule files, templates and service files offline.

Every problem is printed (not just the first) as ``file:line:col: message`` on
stdout, sorted by file and position, and the exit status is 1; a clean set prints
one ``OK`` line and exits 0. Nothing is sent and no connection is opened. Output
names files, keys and positions, never account option values, so secrets in the
config cannot leak through it.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedmsg_notify.config.model import Config, load_cli_config
from fedmsg_notify.config.yaml_positions import Position, Problem, ProblemsError
from fedmsg_notify.matching.rules import RuleSet


def _optional_check(module: str, attr: str, *args: Any) -> list[Problem]:
    """Run ``module.attr(*args).check()`` when that checker exists in this build."""
    try:
        factory: Callable[..., Any] | None = getattr(importlib.import_module(module), attr, None)
    except ImportError:
        return []
    if factory is None:
        return []
    try:
        checker = factory(*args)
    except ProblemsError as exc:
        return list(exc.problems)
    if not hasattr(checker, "check"):
        return []
    return list(checker.check())


def residual_problems(ruleset: RuleSet) -> list[Problem]:
    """``check --strict``: one problem per rule the index cannot narrow down, at the rule's position."""
    return [
        Problem(
            Position(rule.rule.file, rule.rule.line, rule.rule.column),
            f"rule '{rule.rule.name}' is residual: no condition narrows which messages it sees, so it is "
            "tested for every message (add a topic, service, user, package or field equality, or drop --strict)",
        )
        for rule in ruleset.residual_rules()
    ]


def check_config(config: Config, *, strict: bool = False) -> tuple[list[Problem], str]:
    """Every problem in the rules, templates and service files ``config`` names, plus a summary.

    With ``strict``, residual rules (tested for every message) are problems too.
    """
    problems: list[Problem] = []
    summary = ""
    try:
        ruleset = RuleSet.load(config.rule_paths, config.accounts)
        summary = f"{len(ruleset)} rules in {ruleset.files} files"
        residual = len(ruleset.residual_rules())
        if residual:
            summary += f" ({residual} residual: tested for every message)"
        if strict:
            problems.extend(residual_problems(ruleset))
    except ProblemsError as exc:
        problems.extend(exc.problems)
    problems.extend(_optional_check("fedmsg_notify.render.renderer", "Renderer", config.template_paths))
    # MetaEngine reads its files when constructed and raises every problem at once;
    # _optional_check turns that into the same list check() would return.
    problems.extend(_optional_check("fedmsg_notify.meta.engine", "MetaEngine", config.service_paths))
    from fedmsg_notify.commands.check_routes import route_problems

    problems.extend(route_problems(config))
    accounts = len(config.accounts)
    summary += f", {accounts} account{'s' if accounts != 1 else ''}; templates and service files valid"
    return _unique(problems), summary


def _unique(problems: list[Problem]) -> list[Problem]:
    seen: set[str] = set()
    out = []
    for problem in problems:
        text = str(problem)
        if text not in seen:
            seen.add(text)
            out.append(problem)
    return sorted(out, key=lambda p: (p.position.file, p.position.line, p.position.column, p.message))


def run_check(args: argparse.Namespace) -> int:
    try:
        config = load_cli_config(getattr(args, "config", None))
    except ProblemsError as exc:
        for problem in _unique(list(exc.problems)):
            print(problem)
        print(f"{len(exc.problems)} problem{'s' if len(exc.problems) != 1 else ''} in the configuration")
        return 1
    problems, summary = check_config(config, strict=bool(getattr(args, "strict", False)))
    from fedmsg_notify.commands.check_routes import library_warnings

    # Warnings (a missing optional library) are printed but do not fail the check.
    for warning in _unique(library_warnings(config)):
        print(warning)
    if problems:
        for problem in problems:
            print(problem)
        print(f"{len(problems)} problem{'s' if len(problems) != 1 else ''} found")
        return 1
    source = config.source if config.source.startswith("<") else str(Path(config.source))
    print(f"OK: {summary} ({source})")
    return 0
