"""Compiling one parsed rule file: strict validation with positions, conditions built once.

Every problem is collected (not just the first) with the position of the value or key
it is about, so ``check`` can list them all. Equal conditions are compiled once and
shared (thousands of files say ``topic: "*.bodhi.update.*"`` or ``msg.new equals 3``);
so are destinations, which a person's rules repeat.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, TypeVar

import re2
from fedmsg_notify.backend import Destination
from fedmsg_notify.config.validation import did_you_mean, validate
from fedmsg_notify.config.yaml_positions import LocatedDocument, PathKey, Problem
from fedmsg_notify.matching.compiled import NO_OPTIONS, CompiledRule, Digest, Route, Rule, parse_duration
from fedmsg_notify.matching.fields import FIELD_OPS, Field
from fedmsg_notify.matching.match import (
    Agent,
    All,
    AnyOf,
    Condition,
    Env,
    Everything,
    Not,
    Packages,
    PatternError,
    Service,
    Users,
)
from fedmsg_notify.matching.severity import Severity
from fedmsg_notify.matching.topics import Topic, glob

T = TypeVar("T")

FILE_KEYS: Final = ("me", "rules")
RULE_KEYS: Final = ("name", "match", "deliver")
MATCH_KEYS: Final = (
    "topic",
    "service",
    "env",
    "users",
    "agent",
    "packages",
    "severity",
    "field",
    "all",
    "any",
    "not",
)
DELIVER_KEYS: Final = ("via", "to", "template", "digest")
DIGEST_KEYS: Final = ("every", "max", "template")
ME: Final = "$me"


def _where(path: PathKey) -> str:
    return ".".join(str(p) for p in path) or "top level"


class FileCompiler:
    """Validates and compiles one parsed rule file, collecting every problem.

    ``shared`` maps a condition's (or destination's) defining values to the one object
    built for them; pass the same dict to every file of a load.
    """

    def __init__(
        self,
        doc: LocatedDocument,
        accounts: Mapping[str, Any],
        problems: list[Problem],
        shared: dict[Any, Any] | None = None,
    ) -> None:
        self.doc = doc
        self.accounts = accounts
        self.problems = problems
        self.shared: dict[Any, Any] = {} if shared is None else shared
        self.me: str | None = None

    def share(self, key: Any, make: Callable[[], T]) -> T:
        """The object already built for ``key``, else ``make()`` remembered under it."""
        found = self.shared.get(key)
        if found is None:
            found = self.shared[key] = make()
        return found

    def error(self, path: PathKey, message: str, *, key: bool = False) -> None:
        self.problems.append(Problem(self.doc.where(path, key=key), message))

    def unknown_keys(self, data: Mapping[str, Any], allowed: Sequence[str], path: PathKey, what: str = "key") -> bool:
        clean = True
        for key in data:
            if key not in allowed:
                hint = did_you_mean(str(key), list(allowed))
                expected = "" if hint else f" (expected one of: {', '.join(allowed)})"
                self.error((*path, key), f"unknown {what} '{key}' in {_where(path)}{hint}{expected}", key=True)
                clean = False
        return clean

    # --- file and rules -------------------------------------------------------------------------

    def compile(self, max_rules: int) -> list[CompiledRule]:
        data = self.doc.data
        if data is None:
            return []
        if not isinstance(data, dict):
            self.error((), "a rule file must be a mapping with 'rules:' (and optionally 'me:')")
            return []
        self.unknown_keys(data, FILE_KEYS, ())
        if "me" in data:
            if isinstance(data["me"], str) and data["me"].strip():
                self.me = data["me"].strip()
            else:
                self.error(("me",), f"me: expected a username, got {data['me']!r}")
        raw_rules = data.get("rules")
        if raw_rules is None:
            self.error((), "missing required key 'rules' in top level")
            return []
        if not isinstance(raw_rules, list):
            self.error(("rules",), "rules: expected a list of rules (name, match, deliver)")
            return []
        if len(raw_rules) > max_rules:
            self.error(("rules",), f"too many rules: {len(raw_rules)} in one file, the limit is {max_rules}")
            return []
        compiled: list[CompiledRule] = []
        names: dict[str, int] = {}
        for n, raw in enumerate(raw_rules):
            rule = self.rule(raw, ("rules", n), names)
            if rule is not None:
                compiled.append(rule)
        return compiled

    def rule(self, raw: Any, path: PathKey, names: dict[str, int]) -> CompiledRule | None:
        if not isinstance(raw, dict):
            self.error(path, f"{_where(path)}: expected a rule (a mapping with name, match, deliver)")
            return None
        before = len(self.problems)
        self.unknown_keys(raw, RULE_KEYS, path)
        for key in RULE_KEYS:
            if key not in raw:
                self.error(path, f"missing required key '{key}' in {_where(path)}")
        name = raw.get("name")
        if "name" in raw:
            if not isinstance(name, str) or not name.strip():
                self.error((*path, "name"), f"{_where((*path, 'name'))}: expected a non-empty string")
            elif name in names:
                self.error((*path, "name"), f"duplicate rule name '{name}' (also rules.{names[name]})")
            else:
                names[name] = int(path[-1])
        condition = self.match(raw["match"], (*path, "match"), top=True) if "match" in raw else None
        at = self.doc.where(path)
        shown = sys.intern(name) if isinstance(name, str) else "?"
        rule = Rule(name=shown, file=self.doc.file, line=at.line, column=at.column)
        routes = self.deliver(raw["deliver"], (*path, "deliver"), rule) if "deliver" in raw else []
        if len(self.problems) > before or condition is None:
            return None
        return CompiledRule(rule=rule, condition=condition, routes=tuple(routes))

    # --- match ----------------------------------------------------------------------------------

    def match(self, data: Any, path: PathKey, *, top: bool = False) -> Condition | None:
        if not isinstance(data, dict):
            self.error(path, f"{_where(path)}: expected a mapping of conditions ({', '.join(MATCH_KEYS)})")
            return None
        if not data:
            if top:
                return Everything()
            self.error(path, f"{_where(path)}: needs at least one condition")
            return None
        self.unknown_keys(data, MATCH_KEYS, path)
        children: list[Condition] = []
        ok = True
        for key, value in data.items():
            if key not in MATCH_KEYS:
                ok = False
                continue
            child = self.condition(str(key), value, (*path, key))
            if child is None:
                ok = False
            else:
                children.append(child)
        if not ok:
            return None
        if len(children) == 1:
            return children[0]
        return self.share((All, *map(id, children)), lambda: All(children))

    def condition(self, key: str, value: Any, path: PathKey) -> Condition | None:
        if key == "topic":
            globs = self.strings(value, path, substitute=False)
            if globs is None:
                return None
            try:
                return self.share((Topic, *globs), lambda: Topic([glob(g) for g in globs]))
            except PatternError as exc:
                self.error(path, f"{_where(path)}: {exc}")
                return None
        if key in ("service", "env", "users", "agent", "packages"):
            values = self.strings(value, path, substitute=key in ("users", "agent", "packages"))
            if values is None:
                return None
            kinds: dict[str, type[Service | Env | Agent | Users | Packages]] = {
                "service": Service,
                "env": Env,
                "agent": Agent,
                "users": Users,
                "packages": Packages,
            }
            kind = kinds[key]
            return self.share((kind, *values), lambda: kind(values))
        if key == "severity":
            try:
                return self.share((Severity, json.dumps(value, sort_keys=True)), lambda: Severity.parse(value))
            except ValueError as exc:
                self.error(path, f"{_where(path)}: {exc}")
                return None
        if key == "field":
            return self.field(value, path)
        if key in ("all", "any"):
            if not isinstance(value, list) or not value:
                self.error(path, f"{_where(path)}: expected a non-empty list of condition mappings")
                return None
            children = [self.match(item, (*path, n)) for n, item in enumerate(value)]
            if any(child is None for child in children):
                return None
            kept = [child for child in children if child is not None]
            combine = All if key == "all" else AnyOf
            return self.share((combine, *map(id, kept)), lambda: combine(kept))
        # not
        inner = self.match(value, path)
        return None if inner is None else self.share((Not, id(inner)), lambda: Not(inner))

    def strings(self, value: Any, path: PathKey, *, substitute: bool) -> list[str] | None:
        items = value if isinstance(value, list) else [value]
        if not items or not all(isinstance(item, str) and item for item in items):
            self.error(path, f"{_where(path)}: expected a string or a non-empty list of strings, got {value!r}")
            return None
        if not substitute:
            return list(items)
        out = []
        for n, item in enumerate(items):
            replaced, ok = self.substitute(item, (*path, n) if isinstance(value, list) else path)
            if not ok:
                return None
            out.append(replaced)
        return out

    def substitute(self, value: Any, path: PathKey, *, escape: bool = False) -> tuple[Any, bool]:
        """Replace ``$me`` in strings (and in lists of them) with the file's ``me:``; ``(value, ok)``."""
        if isinstance(value, list):
            pairs = [self.substitute(item, (*path, n), escape=escape) for n, item in enumerate(value)]
            return [item for item, _ in pairs], all(ok for _, ok in pairs)
        if not isinstance(value, str) or ME not in value:
            return value, True
        if self.me is None:
            self.error(path, f"{_where(path)}: '$me' is used but this file does not set 'me:'")
            return value, False
        # In a regex the username is literal text, not a pattern.
        me = str(re2.escape(self.me)) if escape else self.me
        return value.replace(ME, me), True

    def field(self, value: Any, path: PathKey) -> Condition | None:
        if not isinstance(value, dict):
            self.error(path, f"{_where(path)}: expected {{path: msg.some.key, <operator>: value}}")
            return None
        ok = self.unknown_keys(value, ("path", *FIELD_OPS), path, what="operator")
        ops = [key for key in value if key in FIELD_OPS]
        if "path" not in value:
            self.error(path, f"missing required key 'path' in {_where(path)}")
            ok = False
        elif not isinstance(value["path"], str):
            self.error((*path, "path"), f"{_where((*path, 'path'))}: expected a string like msg.update.builds[*].nvr")
            ok = False
        if not ops and ok:
            self.error(path, f"{_where(path)}: needs one operator ({', '.join(FIELD_OPS)})")
            return None
        if len(ops) > 1:
            self.error((*path, ops[1]), f"{_where(path)}: one operator per field condition, got {', '.join(ops)}")
            return None
        if not ok:
            return None
        op = ops[0]
        at = (*path, op)
        expected = value[op]
        if op == "in" and not isinstance(expected, list):
            self.error(at, f"{_where(at)}: expected a list of values, got {expected!r}")
            return None
        if op == "matches" and not isinstance(expected, str):
            self.error(at, f"{_where(at)}: expected a regex string, got {expected!r}")
            return None
        if op == "exists" and not isinstance(expected, bool):
            self.error(at, f"{_where(at)}: expected true or false, got {expected!r}")
            return None
        if op in ("gt", "ge", "lt", "le") and (
            isinstance(expected, bool) or not isinstance(expected, (int, float, str))
        ):
            self.error(at, f"{_where(at)}: expected a number or a string, got {expected!r}")
            return None
        if op == "contains" and isinstance(expected, (list, dict)):
            self.error(at, f"{_where(at)}: expected a single value, got {expected!r}")
            return None
        expected, substituted = self.substitute(expected, at, escape=op == "matches")
        if not substituted:
            return None
        try:
            where = value["path"]
            # json.dumps tells 1 from 1.0 and true, as the operators do.
            written = expected if isinstance(expected, str) else json.dumps(expected, sort_keys=True)
            return self.share(
                (Field, where, op, type(expected).__name__, written), lambda: Field(sys.intern(where), op, expected)
            )
        except PatternError as exc:
            self.error(at, f"{_where(at)}: {exc}")
        except ValueError as exc:
            self.error((*path, "path"), f"{_where((*path, 'path'))}: {exc}")
        return None

    # --- deliver --------------------------------------------------------------------------------

    def deliver(self, value: Any, path: PathKey, rule: Rule) -> list[Route]:
        if not isinstance(value, list) or not value:
            self.error(path, f"{_where(path)}: expected a non-empty list of destinations ({{via: account, ...}})")
            return []
        routes = []
        for n, raw in enumerate(value):
            # A person's rules repeat the same few destinations: validate each written form once.
            try:
                key: Any = ("route", json.dumps(raw, sort_keys=True))
            except (TypeError, ValueError):
                key = None
            known = self.shared.get(key) if key is not None else None
            if known is not None:
                routes.append(dataclasses.replace(known, rule=rule))
                continue
            before = len(self.problems)
            route = self.destination(raw, (*path, n), rule)
            if route is not None:
                routes.append(route)
                if key is not None and len(self.problems) == before:
                    self.shared[key] = route
        return routes

    def destination(self, raw: Any, path: PathKey, rule: Rule) -> Route | None:
        if not isinstance(raw, dict):
            self.error(path, f"{_where(path)}: expected a mapping like {{via: account, to: recipient}}")
            return None
        if "via" not in raw:
            self.error(path, f"missing required key 'via' in {_where(path)}")
            return None
        via = raw["via"]
        names = sorted(self.accounts)
        if not isinstance(via, str) or via not in self.accounts:
            shown = via if isinstance(via, str) else repr(via)
            defined = f" (defined: {', '.join(names)})" if names else " (the config defines no accounts)"
            self.error((*path, "via"), f"undefined account '{shown}'{did_you_mean(str(via), names)}{defined}")
            return None
        backend = getattr(self.accounts[via], "backend", None)
        options_model = getattr(backend, "Options", None)
        option_keys = list(getattr(options_model, "model_fields", {}))
        before = len(self.problems)
        self.unknown_keys(raw, (*DELIVER_KEYS, *option_keys), path)
        to = raw.get("to")
        if "to" in raw and (not isinstance(to, str) or not to):
            self.error((*path, "to"), f"{_where((*path, 'to'))}: expected a recipient string, got {to!r}")
        elif to is None and getattr(backend, "needs_recipient", False):
            self.error(
                path,
                f"missing required key 'to' in {_where(path)}: account '{via}' "
                f"({getattr(backend, 'name', '?')}) needs a recipient",
            )
        template = raw.get("template")
        if "template" in raw and (not isinstance(template, str) or not template):
            self.error((*path, "template"), f"{_where((*path, 'template'))}: expected a template name")
        digest = self.digest(raw["digest"], (*path, "digest")) if "digest" in raw else None
        options = {key: v for key, v in raw.items() if key in option_keys and key not in DELIVER_KEYS}
        if options_model is not None and len(self.problems) == before:
            parsed, found = validate(options_model, options, self.doc, path)
            self.problems.extend(found)
            if parsed is not None:
                options = parsed.model_dump(exclude_unset=True)
        if len(self.problems) > before:
            return None
        recipient = to if isinstance(to, str) else None
        return Route(
            destination=self.share((Destination, via, recipient), lambda: Destination(via, recipient)),
            rule=rule,
            template=template if isinstance(template, str) else None,
            digest=digest,
            options=options or NO_OPTIONS,
        )

    def digest(self, value: Any, path: PathKey) -> Digest | None:
        if not isinstance(value, dict) or not value:
            self.error(path, f"{_where(path)}: expected {{every: 1h, max: 100}} (either or both)")
            return None
        ok = self.unknown_keys(value, DIGEST_KEYS, path)
        every: float | None = None
        limit: int | None = None
        if "every" in value:
            try:
                every = parse_duration(value["every"])
            except ValueError as exc:
                self.error((*path, "every"), f"{_where((*path, 'every'))}: {exc}")
                ok = False
        if "max" in value:
            limit = value["max"]
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
                self.error((*path, "max"), f"{_where((*path, 'max'))}: expected a positive whole number, got {limit!r}")
                ok = False
        template = value.get("template")
        if "template" in value and (not isinstance(template, str) or not template):
            self.error((*path, "template"), f"{_where((*path, 'template'))}: expected a template name")
            ok = False
        if "every" not in value and "max" not in value and ok:
            self.error(path, f"{_where(path)}: expected {{every: 1h, max: 100}} (either or both)")
            ok = False
        return Digest(every_seconds=every, max=limit, template=template) if ok else None
