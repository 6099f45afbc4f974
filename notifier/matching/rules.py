"""Rule files: loading, strict validation with positions, and routing (SPEC "Rule files").

A rule file holds ``rules:`` (a list of ``name`` / ``match`` / ``deliver``) and may
set ``me:`` (the owner's username, substituted for ``$me``). Every problem in every
file is collected and reported as ``file:line:col: message`` before anything runs;
conditions are compiled once here (:mod:`match`) and filed in a candidate index
(:mod:`index`) so :meth:`RuleSet.routes`, the hot path, evaluates only rules that
could match.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import re2
import yaml
from fedmsg_notify.backend import Destination
from fedmsg_notify.bus.envelope import Message
from fedmsg_notify.config.validation import did_you_mean, validate
from fedmsg_notify.config.yaml_positions import LocatedDocument, PathKey, Position, Problem, ProblemsError, load_located
from fedmsg_notify.matching.fields import FIELD_OPS, Field
from fedmsg_notify.matching.index import RuleIndex
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
from fedmsg_notify.meta.engine import Meta

log = logging.getLogger(__name__)

# Rule files may come from many users (SPEC "Hostile input"): bound what one file can
# cost at load time and in memory. Fedora's heaviest FMN users had a few hundred rules.
MAX_RULES_PER_FILE: Final = 10_000
MAX_FILE_BYTES: Final = 5 * 1024 * 1024
# YAML aliases let a small file expand into a huge document ("billion laughs").
MAX_EXPANDED_VALUES: Final = 2_000_000

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
_DURATION = re.compile(r"(\d+)\s*([smhd])")
_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400}


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
    options: Mapping[str, Any] = field(default_factory=dict)


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
    """``30m``, ``1h``, ``1d``, ``1h30m`` or a number of seconds; :class:`ValueError` otherwise."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like 30m, 1h or 1d")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str) and value.strip() and _DURATION.sub("", value).strip() == "":
        seconds = float(sum(int(n) * _UNITS[unit] for n, unit in _DURATION.findall(value)))
    else:
        raise ValueError(f"expected a duration like 30m, 1h or 1d, got {value!r}")
    if seconds <= 0:
        raise ValueError(f"digest interval must be positive, got {value!r}")
    return seconds


def _where(path: PathKey) -> str:
    return ".".join(str(p) for p in path) or "top level"


class _FileCompiler:
    """Validates and compiles one parsed rule file, collecting every problem."""

    def __init__(self, doc: LocatedDocument, accounts: Mapping[str, Any], problems: list[Problem]) -> None:
        self.doc = doc
        self.accounts = accounts
        self.problems = problems
        self.me: str | None = None

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
        rule = Rule(name=name if isinstance(name, str) else "?", file=self.doc.file, line=at.line, column=at.column)
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
        return children[0] if len(children) == 1 else All(children)

    def condition(self, key: str, value: Any, path: PathKey) -> Condition | None:
        if key == "topic":
            globs = self.strings(value, path, substitute=False)
            if globs is None:
                return None
            try:
                return Topic([glob(g) for g in globs])
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
            return kinds[key](values)
        if key == "severity":
            try:
                return Severity.parse(value)
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
            return All(kept) if key == "all" else AnyOf(kept)
        # not
        inner = self.match(value, path)
        return None if inner is None else Not(inner)

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
            return Field(value["path"], op, expected)
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
            route = self.destination(raw, (*path, n), rule)
            if route is not None:
                routes.append(route)
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
        return Route(
            destination=Destination(via, to if isinstance(to, str) else None),
            rule=rule,
            template=template if isinstance(template, str) else None,
            digest=digest,
            options=options,
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


def _alias_expansion(file: Path, text: str) -> Problem | None:
    """Refuse a "billion laughs" file: a few aliases that expand to millions of values.

    The loader copies every alias, so the expanded size is what loading would cost.
    """
    if "&" not in text or "*" not in text:
        return None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except (yaml.YAMLError, RecursionError):
        return None  # the real load reports syntax errors with their positions
    sizes: dict[int, int] = {}

    def size(node: yaml.Node) -> int:
        known = sizes.get(id(node))
        if known is not None:
            return known
        total = 1
        if isinstance(node, yaml.MappingNode):
            total += sum(size(k) + size(v) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            total += sum(size(child) for child in node.value)
        sizes[id(node)] = total
        return total

    try:
        expanded = size(root) if root is not None else 0
    except RecursionError:
        expanded = MAX_EXPANDED_VALUES + 1
    if expanded > MAX_EXPANDED_VALUES:
        return Problem(
            Position(str(file), 1, 1),
            f"rule file expands to {expanded} values through YAML aliases, the limit is {MAX_EXPANDED_VALUES}",
        )
    return None


def _yaml_hints(file: Path, problems: list[Problem]) -> list[Problem]:
    """Add the usual cause to YAML syntax errors: ``[*]`` unquoted inside ``{...}``."""
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return problems
    out = []
    for problem in problems:
        near = lines[max(0, problem.position.line - 2) : problem.position.line]
        if problem.message.startswith("invalid YAML") and any("[*]" in line and "{" in line for line in near):
            problem = Problem(
                problem.position,
                f'{problem.message} (inside {{...}} a path with [*] must be quoted: path: "msg.a[*].b")',
            )
        out.append(problem)
    return out


def rule_files(paths: Iterable[Path | str]) -> list[Path]:
    """Every ``*.yaml`` in each directory (sorted by name), or the file itself, in config order."""
    files: list[Path] = []
    for entry in paths:
        base = Path(entry).expanduser()
        if base.is_dir():
            files.extend(sorted(p for p in base.glob("*.yaml") if p.is_file()))
        elif base.is_file():
            files.append(base)
        else:
            # The SPEC's sketch lists a system and a per-user directory; a daemon running
            # as one of them rarely has both, so a missing one is not fatal, only logged.
            log.warning("rule path %s does not exist; no rules loaded from it", base)
    return files


class RuleSet:
    """Every loaded rule, in order, plus the index :meth:`routes` uses."""

    def __init__(self, rules: Sequence[CompiledRule], files: int = 0) -> None:
        self.rules: tuple[CompiledRule, ...] = tuple(rules)
        self.files = files
        self.index = RuleIndex(rule.condition for rule in self.rules)
        # Destinations numbered once here, so dedup per message compares small ints
        # instead of hashing dataclasses.
        numbers: dict[Destination, int] = {}
        self._plan: tuple[tuple[Condition, tuple[tuple[int, Route], ...]], ...] = tuple(
            (rule.condition, tuple((numbers.setdefault(r.destination, len(numbers)), r) for r in rule.routes))
            for rule in self.rules
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
    ) -> RuleSet:
        """Load every rule file; raise :class:`ProblemsError` with every problem in every file."""
        files = rule_files(paths)
        problems: list[Problem] = []
        docs: list[LocatedDocument] = []
        for file in files:
            size = file.stat().st_size
            if size > max_file_bytes:
                problems.append(
                    Problem(
                        Position(str(file), 1, 1), f"rule file too large: {size} bytes, the limit is {max_file_bytes}"
                    )
                )
                continue
            try:
                text = file.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                problems.append(Problem(Position(str(file), 1, 1), f"cannot read rule file: {exc}"))
                continue
            bomb = _alias_expansion(file, text)
            if bomb is not None:
                problems.append(bomb)
                continue
            try:
                docs.append(load_located(file, text))
            except ProblemsError as exc:
                problems.extend(_yaml_hints(file, exc.problems))
            except RecursionError:
                problems.append(Problem(Position(str(file), 1, 1), "rule file is nested too deeply"))
        try:
            ruleset = cls.from_documents(docs, accounts, max_rules_per_file=max_rules_per_file)
        except ProblemsError as exc:
            problems.extend(exc.problems)
        if problems:
            raise ProblemsError(problems)
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
        count = 0
        for doc in docs:
            count += 1
            rules.extend(_FileCompiler(doc, accounts, problems).compile(max_rules_per_file))
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
