"""Service files: one YAML file per service, validated and compiled once at load time.

A service file looks like::

    service: bodhi                 # or a list of names: [koji, buildsys]
    icon: https://apps.fedoraproject.org/img/icons/bodhi.png
    home: https://bodhi.fedoraproject.org      # the last link candidate
    staging: {bodhi.fedoraproject.org: bodhi.stg.fedoraproject.org}   # hosts of stg messages
    let:                           # helper values, evaluated first, in order
      update: body.update or body.comment.update
    defaults:                      # fields every topic of the service shares
      link: '"https://bodhi.fedoraproject.org/updates/" ~ update.alias'
    topics:                        # exact names first, then the most specific glob
      update.comment:
        subtitle: 'agent ~ " commented on " ~ update.title'
      "update.request.*":
        ...

Patterns are matched against the topic after the service name (``update.comment``
for ``org.fedoraproject.prod.bodhi.update.comment``). A user directory's file replaces
the shipped service of the same name as a whole; a later directory wins over an earlier one.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedmsg_notify.config.validation import StrictModel, validate
from fedmsg_notify.config.yaml_positions import LocatedDocument, Position, Problem, ProblemsError, load_located
from fedmsg_notify.meta.quality import valid_link
from fedmsg_notify.meta.sandbox import Evaluator, compiled_expression, compiled_template
from jinja2 import Template, TemplateError
from pydantic import Field

log = logging.getLogger(__name__)

FIELDS = ("agent", "usernames", "packages", "link", "icon", "title", "subtitle")
# Selection results are cached per (service, topic rest); the topic space of a bus is
# small, but a hostile publisher could invent topics, so the cache is bounded.
_SELECTION_CACHE_LIMIT = 8192


class EntrySpec(StrictModel):
    """The expressions of one topic pattern (or a service's defaults)."""

    let: dict[str, str] = Field(default_factory=dict)
    title: str | None = None
    subtitle: str | None = None
    link: str | None = None
    icon: str | None = None
    agent: str | None = None
    usernames: str | None = None
    packages: str | None = None


class ServiceFile(StrictModel):
    """One ``services/*.yaml`` file."""

    service: str | list[str]
    icon: str | None = None
    # The service's home page: the link when every expression's link fails.
    home: str | None = None
    # Hosts a message from the staging environment ("stg") links to instead.
    staging: dict[str, str] = Field(default_factory=dict)
    let: dict[str, str] = Field(default_factory=dict)
    defaults: EntrySpec = Field(default_factory=EntrySpec)
    # Entries are validated one by one (see _compile_service) so that a typo in one topic
    # is reported with a "did you mean" and does not hide the problems of the others.
    topics: dict[str, dict[str, Any]] = Field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CompiledExpr:
    """An expression compiled once, with where it came from for error messages."""

    name: str
    source: str
    where: Position
    run: Evaluator


@dataclass(slots=True)
class CompiledEntry:
    """One topic pattern's expressions, merged over the service's defaults."""

    pattern: str
    lets: tuple[CompiledExpr, ...]
    fields: dict[str, CompiledExpr]
    # All of the above as one template of ``{% set %}`` statements: one jinja2 call per
    # message instead of one per expression (jinja2's per-call context setup dominates).
    # Any failure in it reruns the expressions one by one to find and report the culprit.
    fast: Template | None = None
    combined: bool = False


@dataclass(slots=True)
class CompiledService:
    names: tuple[str, ...]
    file: str
    icon: str | None
    home: str | None
    staging: dict[str, str]
    exact: dict[str, CompiledEntry]
    globs: list[tuple[str, CompiledEntry]]
    fallback: CompiledEntry
    cache: dict[str, CompiledEntry] = field(default_factory=dict)

    def select(self, rest: str) -> CompiledEntry:
        """The entry for the topic after the service name: exact match, else first glob."""
        entry = self.cache.get(rest)
        if entry is not None:
            return entry
        entry = self.exact.get(rest)
        if entry is None:
            entry = next((e for pattern, e in self.globs if fnmatch.fnmatchcase(rest, pattern)), self.fallback)
        if len(self.cache) >= _SELECTION_CACHE_LIMIT:
            self.cache.clear()
        self.cache[rest] = entry
        return entry


# jinja2 keywords and literals cannot be assigned to; a let of that name could never be used.
_RESERVED_NAMES = frozenset(
    {"and", "or", "not", "in", "is", "if", "else", "true", "false", "none", "True", "False", "None", "loop"}
)


def _compile(name: str, source: str, doc: LocatedDocument, path: tuple[str | int, ...]) -> CompiledExpr | Problem:
    where = doc.where(path)
    try:
        # A let keeps "undefined" (not None) so later expressions behave exactly as in the
        # combined template: ``x | string`` is "" either way, never "None".
        run = compiled_expression(source, not name.startswith("let "))
    except TemplateError as exc:
        line = getattr(exc, "lineno", None) or 1
        # The value's own position plus the expression's line (block scalars span lines).
        pos = Position(where.file, where.line + line - 1, where.column) if line > 1 else where
        return Problem(pos, f"{name}: invalid expression {source.strip()!r}: {exc.message or exc}")
    return CompiledExpr(name=name, source=source, where=where, run=run)


def _compile_service(doc: LocatedDocument) -> tuple[CompiledService | None, list[Problem]]:
    spec, problems = validate(ServiceFile, doc.data, doc)
    if spec is None:
        return None, problems
    names_ = (spec.service,) if isinstance(spec.service, str) else tuple(spec.service)
    if not names_ or any(not n or "." in n for n in names_):
        return None, [Problem(doc.where(("service",)), "service: names must be non-empty and contain no '.'")]

    def lets(mapping: dict[str, str], base: tuple[str | int, ...]) -> list[CompiledExpr]:
        out: list[CompiledExpr] = []
        for key, source in mapping.items():
            if not key.isidentifier() or key in _RESERVED_NAMES:
                problems.append(
                    Problem(doc.where((*base, "let", key), key=True), f"let: '{key}' is not a usable variable name")
                )
                continue
            compiled = _compile(f"let {key}", source, doc, (*base, "let", key))
            if isinstance(compiled, Problem):
                problems.append(compiled)
            else:
                out.append(compiled)
        return out

    def fields_of(entry: EntrySpec, base: tuple[str | int, ...]) -> dict[str, CompiledExpr]:
        out: dict[str, CompiledExpr] = {}
        for name in FIELDS:
            source = getattr(entry, name)
            if source is None:
                continue
            compiled = _compile(name, source, doc, (*base, name))
            if isinstance(compiled, Problem):
                problems.append(compiled)
            else:
                out[name] = compiled
        return out

    service_lets = lets(spec.let, ())
    default_lets = lets(spec.defaults.let, ("defaults",))
    defaults = fields_of(spec.defaults, ("defaults",))
    fallback = CompiledEntry("*", tuple(service_lets + default_lets), dict(defaults))
    exact: dict[str, CompiledEntry] = {}
    globs: list[tuple[str, CompiledEntry]] = []
    for pattern, raw in spec.topics.items():
        entry_spec, found = validate(EntrySpec, raw, doc, ("topics", pattern))
        problems.extend(found)
        if entry_spec is None:
            continue
        entry = CompiledEntry(
            pattern,
            tuple(service_lets + default_lets + lets(entry_spec.let, ("topics", pattern))),
            {**defaults, **fields_of(entry_spec, ("topics", pattern))},
        )
        if any(ch in pattern for ch in "*?["):
            globs.append((pattern, entry))
        else:
            exact.setdefault(pattern, entry)
    if problems:
        return None, problems
    # The most specific pattern wins: more literal characters first, file order breaks ties.
    globs.sort(key=lambda item: -len(item[0].replace("*", "").replace("?", "")))
    if spec.home is not None and not valid_link(spec.home):
        return None, [Problem(doc.where(("home",)), "home: must be an absolute http(s) URL")]
    return CompiledService(names_, doc.file, spec.icon, spec.home, dict(spec.staging), exact, globs, fallback), []


# How each field's raw value becomes its final value inside the combined template; the
# second form is used when no entry defines the field (the generic value).
_FAST_FIELDS = (
    ("agent", "({}) | _first_user", "_generic_agent(body)"),
    ("usernames", "({}) | names", "[agent] | names"),
    ("packages", "({}) | names", "_generic_packages(body)"),
    ("link", "({}) | _text", "_generic_link(body)"),
    ("icon", "(({}) | _text) or _icon", "_icon"),
    ("title", "(({}) | _text) or subtopic or topic", "subtopic or topic"),
    ("subtitle", "({}) | _text", "none"),
)


def combine(entry: CompiledEntry) -> Template | None:
    """The entry's combined template, built when the entry first sees a message."""
    lines = [f"{{% set {let.name[4:]} = ({let.source}) %}}" for let in entry.lets]
    for name, wrap, generic in _FAST_FIELDS:
        expr = entry.fields.get(name)
        lines.append(f"{{% set {name} = {wrap.format(expr.source) if expr else generic} %}}")
    try:
        return compiled_template("".join(lines))
    except TemplateError:  # every part compiled on its own and let names are checked, so unexpected
        log.exception("cannot combine the expressions of %s; evaluating them one by one", entry.pattern)
        return None


def load_services(dirs: Sequence[Path]) -> tuple[dict[str, CompiledService], list[Problem]]:
    """Every service of ``dirs``; a later directory's service replaces an earlier one's."""
    registry: dict[str, CompiledService] = {}
    problems: list[Problem] = []
    for directory in dirs:
        directory = Path(directory)
        if not directory.is_dir():
            problems.append(Problem(Position(str(directory), 1, 1), "services directory does not exist"))
            continue
        seen_here: dict[str, str] = {}
        for path in sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")]):
            try:
                doc = load_located(path)
            except ProblemsError as exc:
                problems.extend(exc.problems)
                continue
            if doc.data is None:
                continue  # an empty file defines nothing; not worth a failure
            service, found = _compile_service(doc)
            problems.extend(found)
            if service is None:
                continue
            for name in service.names:
                if name in seen_here:
                    problems.append(
                        Problem(doc.where(("service",)), f"service '{name}' is already defined in {seen_here[name]}")
                    )
                    continue
                seen_here[name] = str(path)
                registry[name] = service
    return registry, problems
