"""Message metadata: who did what to what, with a link, for every message.

Knowledge of each service's message shapes is data: one YAML file per service
(``services/<service>.yaml``, plus user directories that add or override
services) maps topic patterns to jinja2 *expressions* for ``title``, ``subtitle``,
``link``, ``icon``, ``agent``, ``usernames`` and ``packages``. Expressions run in a
sandbox and are compiled once when the files are loaded; per message we only pick
the entry (a dict lookup, cached per topic) and evaluate it.

A service file looks like::

    service: bodhi                 # or a list of names: [koji, buildsys]
    icon: https://apps.fedoraproject.org/img/icons/bodhi.png
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
for ``org.fedoraproject.prod.bodhi.update.comment``). Evaluation order is ``let``
(service, then topic), ``agent``, ``usernames``, ``packages``, ``link``, ``icon``,
``title``, ``subtitle``; each result is visible to the later expressions. A field
no entry defines, or whose expression fails on a message, gets the generic value
(the failure is logged once per file and field).

Names an expression sees: ``body`` (alias ``msg``, the envelope's ``msg``), ``message``
(the whole envelope), ``topic``, ``subtopic``, ``service``, ``env``, ``rest`` (the topic
after the service), the ``let`` names and the fields computed so far. Missing keys are
simply undefined at any depth, and dict keys win over dict methods (``body.update`` is
the key). Extra filters: ``fas_user``, ``nvr_name``, ``names``, ``compact``, ``https``,
``strip_prefix``, ``strip_suffix``, ``shorten``, ``commas``, ``email_address``,
``email_name``; extra test: ``startingwith``.

A user directory's file replaces the shipped service of the same name as a whole; a
later directory wins over an earlier one. Per message, the chosen entry runs as one
combined template (one jinja2 call instead of one per expression); only when that fails
are the expressions run one by one to find, log and replace the failing one.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from email.utils import parseaddr
from pathlib import Path
from typing import Any

from fedmsg_notify.bus.envelope import KNOWN_ENVS, Message
from fedmsg_notify.config.validation import StrictModel, validate
from fedmsg_notify.config.yaml_positions import LocatedDocument, Position, Problem, ProblemsError, load_located
from fedmsg_notify.meta.schema import header_names, schema_text
from jinja2 import ChainableUndefined, Template, TemplateError, Undefined
from jinja2.sandbox import SandboxedEnvironment
from pydantic import Field

log = logging.getLogger(__name__)

SHIPPED_SERVICES_DIR = Path(__file__).resolve().parent / "services"
FIELDS = ("agent", "usernames", "packages", "link", "icon", "title", "subtitle")
FEDMSG_ICONS = "https://apps.fedoraproject.org/img/icons/"
GENERIC_ICON = FEDMSG_ICONS + "fedmsg.png"
# Selection results are cached per (service, topic rest); the topic space of a bus is
# small, but a hostile publisher could invent topics, so the cache is bounded.
_SELECTION_CACHE_LIMIT = 8192


@dataclass(frozen=True, slots=True)
class Meta:
    """What rules match on and templates show: a title, one sentence, a link, and who/what is involved."""

    title: str
    subtitle: str
    link: str | None
    icon: str | None
    agent: str | None
    usernames: tuple[str, ...]
    packages: tuple[str, ...]
    # Where the metadata came from: "schema <name>" (a fedora-messaging schema package),
    # "service" (a service file) or "generic"; `explain` shows it.
    source: str = "service"

    def as_dict(self) -> dict[str, Any]:
        # By hand, not dataclasses.asdict: that deep-copies recursively and cost ~10 µs per
        # call, paid per delivery. Every field is a str, None or a tuple of str (immutable).
        return {
            "title": self.title,
            "subtitle": self.subtitle,
            "link": self.link,
            "icon": self.icon,
            "agent": self.agent,
            "usernames": self.usernames,
            "packages": self.packages,
            "source": self.source,
        }


# --------------------------------------------------------------------------- helpers
# Filters available to service files. They are tolerant: metadata is best effort and a
# message with an unexpected shape must produce "no value", not an exception.

_OPENID = re.compile(r"^(?:https?://)?([A-Za-z0-9_.-]+)\.id\.fedoraproject\.org/?$")
_NVR = re.compile(r"^(?P<name>.+)-(?P<version>[^-]+)-(?P<release>[^-]+)$")


def fas_user(value: Any) -> str | None:
    """A FAS username from a username, FAS OpenID URL or ``@fedoraproject.org`` address.

    Other e-mail addresses would need an account-system lookup (impossible offline), so
    they give ``None`` rather than a guess.
    """
    if not isinstance(value, str) or not value:
        return None
    text: str = value.strip()
    match = _OPENID.match(text)
    if match:
        return str(match.group(1))
    if "@" in text:
        local, _, domain = text.partition("@")
        return local if domain.lower() == "fedoraproject.org" and local else None
    if "/" in text or " " in text:
        return None
    return text


def nvr_name(value: Any) -> str | None:
    """``foo-bar-1.2-3.fc30`` → ``foo-bar`` (a plain name without version passes through)."""
    if not isinstance(value, str) or not value:
        return None
    match = _NVR.match(value.strip())
    return match.group("name") if match else value.strip()


# Hostile messages can nest lists arbitrarily deep or carry huge ones; names live at
# most a few levels down, and no event involves more people or packages than this.
_FLATTEN_DEPTH = 4
_FLATTEN_ITEMS = 10_000


def _flatten(value: Any) -> list[Any]:
    """Leaves of nested lists (a mapping contributes its keys), iteratively and bounded."""
    out: list[Any] = []
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack and len(out) < _FLATTEN_ITEMS:
        item, depth = stack.pop()
        if item is None or isinstance(item, Undefined):
            continue
        if isinstance(item, (str, bytes)) or not isinstance(item, Iterable):
            out.append(item)
        elif depth < _FLATTEN_DEPTH:
            children = list(item)[:_FLATTEN_ITEMS]
            stack.extend((child, depth + 1) for child in reversed(children))
    return out


def compact(value: Any) -> list[Any]:
    """Flatten nested lists and drop empty values (``None``, ``""``, undefined)."""
    return [item for item in _flatten(value) if item not in (None, "") and not isinstance(item, Undefined)]


def names(value: Any) -> tuple[str, ...]:
    """Flatten, drop empties, deduplicate and sort: the canonical shape of usernames/packages."""
    # Only strings count: a dict or number where a name belongs is a shape the service
    # file did not expect, and "{'name': ...}" must never become a username.
    return tuple(sorted({item.strip() for item in compact(value) if isinstance(item, str) and item.strip()}))


def https(value: Any) -> str | None:
    """Force ``https://`` (Fedora's web apps redirect plain http)."""
    if not isinstance(value, str) or not value:
        return None
    return "https://" + value[len("http://") :] if value.startswith("http://") else value


def strip_suffix(value: Any, suffix: str) -> Any:
    if isinstance(value, str) and value.endswith(suffix):
        return value[: -len(suffix)]
    return value


def strip_prefix(value: Any, prefix: str) -> Any:
    if isinstance(value, str) and value.startswith(prefix):
        return value[len(prefix) :]
    return value


def shorten(value: Any, length: int = 60) -> str:
    """First line of ``value``, cut to ``length`` characters with an ellipsis."""
    text = "" if value is None or isinstance(value, Undefined) else str(value)
    text = text.strip().splitlines()[0] if text.strip() else ""
    return text if len(text) <= length else text[: length - 1].rstrip() + "…"


def _commas(items: Any) -> str:
    """``a``, ``a and b``, ``a, b and c``: lists read as English in sentences."""
    values = [str(item) for item in compact(items)]
    if len(values) <= 1:
        return "".join(values)
    return ", ".join(values[:-1]) + " and " + values[-1]


def email_address(value: Any) -> str | None:
    """``"Jane Doe" <jane@example.org>`` → ``jane@example.org``."""
    if not isinstance(value, str) or not value:
        return None
    address = parseaddr(value)[1]
    return address or None


def email_name(value: Any) -> str | None:
    """``"Jane Doe" <jane@example.org>`` → ``Jane Doe`` (the address when there is no name)."""
    if not isinstance(value, str) or not value:
        return None
    name, address = parseaddr(value)
    return name or address or None


def _startswith(value: Any, prefix: str) -> bool:
    return isinstance(value, str) and value.startswith(prefix)


FILTERS: dict[str, Callable[..., Any]] = {
    "email_address": email_address,
    "email_name": email_name,
    "fas_user": fas_user,
    "nvr_name": nvr_name,
    "compact": compact,
    "names": names,
    "https": https,
    "strip_suffix": strip_suffix,
    "strip_prefix": strip_prefix,
    "shorten": shorten,
    "commas": _commas,
}


class _MetaEnvironment(SandboxedEnvironment):
    """The sandbox, with dict keys winning over dict methods.

    Messages are JSON objects whose keys include ``update``, ``items``, ``values``…;
    jinja2 normally prefers the attribute, so ``body.update`` would be ``dict.update``.
    JSON data has no useful methods, so for dicts we only ever look up keys.
    """

    def getattr(self, obj: Any, attribute: str) -> Any:
        if type(obj) is dict:
            try:
                return obj[attribute]
            except KeyError:
                return self.undefined(obj=obj, name=attribute)
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        if type(obj) is dict:
            try:
                return obj[argument]
            except (KeyError, TypeError):
                return self.undefined(obj=obj, name=argument)
        return super().getitem(obj, argument)


@functools.cache
def make_environment() -> SandboxedEnvironment:
    """The one sandbox all engines share (its filters are fixed, so sharing is safe)."""
    # ChainableUndefined: ``body.update.builds`` on a message without ``update`` is simply
    # undefined (falsy, prints as ""), so expressions need no guard at every level.
    env = _MetaEnvironment(undefined=ChainableUndefined, autoescape=False)
    env.filters.update(FILTERS)
    env.tests["startingwith"] = _startswith
    # Internal helpers of the combined per-entry template (see _combine).
    env.filters["_first_user"] = _first_user
    env.filters["_text"] = _text
    env.globals.update({"_generic_agent": generic_agent, "_generic_link": generic_link})
    env.globals.update({"fas_user": fas_user, "nvr_name": nvr_name, "names": names})
    return env


@functools.cache
def _shared_globals() -> dict[str, Any]:
    return dict(make_environment().globals)


# Compiling is the expensive part of loading (~2 ms per expression); engines built from
# the same files (the shipped ones, `check` after start-up, tests) share the results.
@functools.lru_cache(maxsize=8192)
def _compiled_expression(source: str, undefined_to_none: bool) -> Evaluator:
    return make_environment().compile_expression(source, undefined_to_none=undefined_to_none)


@functools.lru_cache(maxsize=2048)
def _compiled_template(source: str) -> Template:
    return make_environment().from_string(source)


# --------------------------------------------------------------------------- file model


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
    let: dict[str, str] = Field(default_factory=dict)
    defaults: EntrySpec = Field(default_factory=EntrySpec)
    # Entries are validated one by one (see _compile_service) so that a typo in one topic
    # is reported with a "did you mean" and does not hide the problems of the others.
    topics: dict[str, dict[str, Any]] = Field(default_factory=dict)


Evaluator = Callable[..., Any]


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
        run = _compiled_expression(source, not name.startswith("let "))
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
    return CompiledService(names_, doc.file, spec.icon, exact, globs, fallback), []


# How each field's raw value becomes its final value inside the combined template; the
# second form is used when no entry defines the field (the generic value).
_FAST_FIELDS = (
    ("agent", "({}) | _first_user", "_generic_agent(body)"),
    ("usernames", "({}) | names", "[agent] | names"),
    ("packages", "({}) | names", "()"),
    ("link", "({}) | _text", "_generic_link(body)"),
    ("icon", "(({}) | _text) or _icon", "_icon"),
    ("title", "(({}) | _text) or subtopic or topic", "subtopic or topic"),
    ("subtitle", "({}) | _text", "none"),
)


def _combine(entry: CompiledEntry) -> Template | None:
    """The entry's combined template, built when the entry first sees a message."""
    lines = [f"{{% set {let.name[4:]} = ({let.source}) %}}" for let in entry.lets]
    for name, wrap, generic in _FAST_FIELDS:
        expr = entry.fields.get(name)
        lines.append(f"{{% set {name} = {wrap.format(expr.source) if expr else generic} %}}")
    try:
        return _compiled_template("".join(lines))
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


# --------------------------------------------------------------------------- generic values

_AGENT_KEYS = ("agent", "username", "user", "owner", "submitter", "author")
_LINK_KEYS = ("link", "url", "html_url", "weburl")
# Last topic word → past tense, so an unknown service still reads "ralph updated …".
_VERBS = {
    "new": "created",
    "create": "created",
    "created": "created",
    "add": "added",
    "added": "added",
    "update": "updated",
    "updated": "updated",
    "edit": "edited",
    "edited": "edited",
    "delete": "deleted",
    "deleted": "deleted",
    "remove": "removed",
    "removed": "removed",
    "complete": "completed",
    "completed": "completed",
    "done": "finished",
    "finish": "finished",
    "end": "finished",
    "start": "started",
    "started": "started",
    "change": "changed",
    "comment": "commented on",
    "request": "requested",
    "approve": "approved",
    "approved": "approved",
    "reject": "rejected",
    "fail": "failed",
    "failed": "failed",
    "publish": "published",
    "upload": "uploaded",
    "receive": "pushed to",
    "push": "pushed",
    "tag": "tagged",
    "untag": "untagged",
    "close": "closed",
    "closed": "closed",
    "open": "opened",
    "reopen": "reopened",
    "merge": "merged",
    "merged": "merged",
    "retire": "retired",
    "award": "awarded",
    "vote": "voted on",
}


def generic_agent(body: Any) -> str | None:
    if not isinstance(body, dict):
        return None
    for key in _AGENT_KEYS:
        value = body.get(key)
        if isinstance(value, dict):
            value = value.get("name") or value.get("username")
        if isinstance(value, list) and value:
            value = value[0]
        user = fas_user(value)
        if user:
            return user
    return None


def generic_link(body: Any) -> str | None:
    if not isinstance(body, dict):
        return None
    for key in _LINK_KEYS:
        value = body.get(key)
        if isinstance(value, str) and value.startswith(("http://", "https://")):
            return value
    return None


def generic_subtitle(service: str, rest: str, agent: str | None) -> str:
    """``ralph updated the fmn preference``; ``mirrormanager crawler started``."""
    words = [w for w in re.split(r"[._]", rest) if w]
    verb = _VERBS.get(words[-1].lower()) if words else None
    if verb is not None:
        thing = " ".join([service, *words[:-1]])
        return f"{agent} {verb} {thing}" if agent else f"{thing} {verb}"
    thing = " ".join([service, *words])
    return f"{agent}: {thing}" if agent else f"new {thing} message"


# --------------------------------------------------------------------------- engine


def _split(message: Message, known: Mapping[str, object]) -> tuple[str, str, str]:
    """(service, topic after the service, subtopic).

    A few publishers send topics without prefix or environment (``fedoracollege.media.upload``);
    when the topic has no known environment and starts with a known service, read it that way.
    """
    parts = message.parts
    if parts.env not in KNOWN_ENVS:
        first, _, rest = message.topic.partition(".")
        if first in known:
            return first, rest, message.topic
    service = parts.service
    rest = parts.subtopic[len(service) + 1 :] if parts.subtopic.startswith(service + ".") else ""
    return service, rest, parts.subtopic


class MetaEngine:
    """Computes :class:`Meta` from the shipped service files plus user directories."""

    def __init__(self, extra_dirs: Sequence[Path] = (), *, strict: bool = True) -> None:
        """Load every service file; with ``strict`` (the default) any problem raises :class:`ProblemsError`."""
        self.dirs = (SHIPPED_SERVICES_DIR, *(Path(d) for d in extra_dirs))
        self.services, self.problems = load_services(self.dirs)
        if strict and self.problems:
            raise ProblemsError(self.problems)
        self._reported: set[tuple[str, str]] = set()

    def check(self) -> list[Problem]:
        """Re-read every service file and return all problems (syntax, keys, expressions)."""
        _, problems = load_services(self.dirs)
        return problems

    def compute(self, message: Message) -> Meta:
        if "headers" not in message.envelope:
            return self._compute(message)
        # fedora-messaging (AMQP): the schema package's own text when it is installed.
        text = schema_text(message)
        if text is None:
            # No schema: the service files describe it, and the sender's user and package
            # headers (fedora_messaging_user_* / _rpm_*) add to who and what is involved.
            meta = self._compute(message)
            users, packages = header_names(message)
            if not users and not packages:
                return meta
            return dataclasses.replace(
                meta,
                usernames=tuple(dict.fromkeys((*meta.usernames, *users))),
                packages=tuple(dict.fromkeys((*meta.packages, *packages))),
            )
        _service, _rest, subtopic = _split(message, self.services)
        return Meta(
            title=subtopic or message.topic,
            subtitle=text.summary,
            link=text.url,
            icon=text.icon or GENERIC_ICON,
            agent=text.agent,
            usernames=text.usernames,
            packages=text.packages,
            source=f"schema {text.schema}",
        )

    def _compute(self, message: Message) -> Meta:
        service_name, rest, subtopic = _split(message, self.services)
        body = message.body
        service = self.services.get(service_name)
        if service is None:
            agent = generic_agent(body)
            return Meta(
                title=subtopic or message.topic,
                subtitle=generic_subtitle(service_name or message.topic, rest, agent),
                link=generic_link(body),
                icon=GENERIC_ICON,
                agent=agent,
                usernames=(agent,) if agent else (),
                packages=(),
                source="generic",
            )
        entry = service.select(rest)
        ctx: dict[str, Any] = {
            # The sandbox's globals, merged here so jinja2 can use this dict as the
            # context as-is (shared=True) instead of rebuilding it from a ChainMap.
            **_shared_globals(),
            **_expression_context(message, service_name, rest, subtopic),
            "_icon": service.icon or GENERIC_ICON,
        }
        if not entry.combined:
            entry.fast = _combine(entry)
            entry.combined = True
        if entry.fast is not None:
            try:
                done = entry.fast.make_module(ctx, shared=True).__dict__
            except Exception:
                pass  # the slow path below finds, logs and replaces the failing field
            else:
                return Meta(
                    done["title"],
                    done["subtitle"] or generic_subtitle(service_name, rest, done["agent"]),
                    done["link"],
                    done["icon"],
                    done["agent"],
                    done["usernames"],
                    done["packages"],
                )
        return self._compute_slowly(service, entry, message, service_name, rest, subtopic)

    def _compute_slowly(
        self,
        service: CompiledService,
        entry: CompiledEntry,
        message: Message,
        service_name: str,
        rest: str,
        subtopic: str,
    ) -> Meta:
        """One expression at a time, so a failing one is reported and replaced by its generic value."""
        body = message.body
        ctx = _expression_context(message, service_name, rest, subtopic)
        for let in entry.lets:
            ctx[let.name[4:]] = self._run(service, let, ctx, None)
        fields = entry.fields

        expr: CompiledExpr | None = fields.get("agent")
        agent: str | None
        agent = _first_user(self._run(service, expr, ctx, generic_agent(body))) if expr else generic_agent(body)
        ctx["agent"] = agent

        expr = fields.get("usernames")
        usernames = names(self._run(service, expr, ctx, [agent])) if expr else ((agent,) if agent else ())
        ctx["usernames"] = usernames

        expr = fields.get("packages")
        packages = names(self._run(service, expr, ctx, ())) if expr else ()
        ctx["packages"] = packages

        expr = fields.get("link")
        link = _text(self._run(service, expr, ctx, generic_link(body))) if expr else generic_link(body)
        ctx["link"] = link

        expr = fields.get("icon")
        icon = _text(self._run(service, expr, ctx, None)) if expr else None
        icon = icon or service.icon or GENERIC_ICON
        ctx["icon"] = icon

        expr = fields.get("title")
        title = _text(self._run(service, expr, ctx, None)) if expr else None
        title = title or subtopic or message.topic
        ctx["title"] = title

        expr = fields.get("subtitle")
        subtitle = _text(self._run(service, expr, ctx, None)) if expr else None
        subtitle = subtitle or generic_subtitle(service_name, rest, agent)
        return Meta(title, subtitle, link, icon, agent, usernames, packages)

    def _run(self, service: CompiledService, expr: CompiledExpr, ctx: dict[str, Any], fallback: Any) -> Any:
        """Evaluate one expression; a failure is logged once per (file, field) and gives ``fallback``."""
        try:
            return expr.run(**ctx)
        except Exception as exc:
            key = (str(expr.where), expr.name)
            if key not in self._reported:
                self._reported.add(key)
                log.warning(
                    "%s: %s of service %s failed on %s (%s: %s); using the generic value",
                    expr.where,
                    expr.name,
                    service.names[0],
                    ctx.get("topic"),
                    type(exc).__name__,
                    exc,
                )
            return fallback


def _first_user(value: Any) -> str | None:
    if isinstance(value, (list, tuple)):
        value = next((item for item in value if item), None)
    return fas_user(value)


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, Undefined):
        return None
    text = str(value).strip()
    return text or None


_default_engine: MetaEngine | None = None


def default_engine() -> MetaEngine:
    """The engine of the shipped services only (built on first use)."""
    global _default_engine
    if _default_engine is None:
        _default_engine = MetaEngine()
    return _default_engine


def compute_meta(message: Message) -> Meta:
    """Metadata from the shipped service files (use :class:`MetaEngine` for user directories)."""
    return default_engine().compute(message)


def _expression_context(message: Message, service_name: str, rest: str, subtopic: str) -> dict[str, Any]:
    """The names a service file's expressions see (both evaluation paths use this)."""
    body = message.body
    return {
        "body": body,
        "msg": body,
        "message": message.envelope,
        "topic": message.topic,
        "subtopic": subtopic,
        "service": service_name,
        "env": message.parts.env,
        "rest": rest,
    }
