"""Checks ``check`` makes beyond the schema: what would only fail once a message is delivered.

A destination's ``template:`` (and its digest's) must exist, its ``to:`` must be an address
the backend can deliver to (one mail address, an IRC channel or nick), and an account whose
backend needs a library that is not installed gets a warning naming the extra to install.
Each is reported at ``file:line:col`` of the key in the rule file or config.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fedmsg_notify.backend import install_hint
from fedmsg_notify.config.model import Config
from fedmsg_notify.config.yaml_positions import LocatedDocument, PathKey, Problem, ProblemsError, load_located
from fedmsg_notify.matching.rules import rule_files
from fedmsg_notify.render.renderer import Renderer


def _destinations(doc: LocatedDocument) -> Iterator[tuple[PathKey, dict[str, Any]]]:
    rules = doc.data.get("rules") if isinstance(doc.data, dict) else None
    for n, rule in enumerate(rules if isinstance(rules, list) else []):
        deliver = rule.get("deliver") if isinstance(rule, dict) else None
        for m, raw in enumerate(deliver if isinstance(deliver, list) else []):
            if isinstance(raw, dict):
                yield ("rules", n, "deliver", m), raw


def route_problems(config: Config, renderer: Renderer | None = None) -> list[Problem]:
    """Missing templates and undeliverable recipients in every rule file ``config`` names."""
    renderer = renderer or Renderer(config.template_paths)
    dirs = ", ".join(str(p) for p in [*renderer.template_dirs, renderer.shipped_dir])
    problems: list[Problem] = []
    for file in rule_files(config.rule_paths):
        try:
            doc = load_located(file)
        except ProblemsError:
            continue  # already reported by the rule loader
        for path, raw in _destinations(doc):
            account = config.accounts.get(raw.get("via", ""))
            for where, name in ((("template",), raw.get("template")), (("digest", "template"), _digest(raw))):
                if isinstance(name, str) and name and not renderer.exists(name):
                    problems.append(
                        Problem(doc.where((*path, *where)), f"template '{name}' not found (searched {dirs})")
                    )
            to = raw.get("to")
            if account is not None and isinstance(to, str) and to:
                why = account.backend.recipient_problem(to)
                if why:
                    problems.append(Problem(doc.where((*path, "to")), f"{why} (account '{account.name}')"))
    return problems


def _digest(raw: dict[str, Any]) -> Any:
    digest = raw.get("digest")
    return digest.get("template") if isinstance(digest, dict) else None


def library_warnings(config: Config) -> list[Problem]:
    """Accounts whose backend library is missing: they would disable themselves at start."""
    warnings = []
    for account in config.accounts.values():
        missing = account.backend.missing_libraries(account.options)
        if missing:
            extra = account.backend.extra or account.backend.name
            warnings.append(
                Problem(
                    account.position,
                    f"warning: account '{account.name}' ({account.backend.name}) needs {', '.join(missing)}, "
                    f"which is not installed; the account will be disabled. Install it: {install_hint(extra)}",
                )
            )
    return warnings


__all__ = ["library_warnings", "route_problems"]
