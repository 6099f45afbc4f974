"""Message metadata: who did what to what, with a link, for every message.

Knowledge of each service's message shapes is data: one YAML file per service
(:mod:`fedmsg_notify.meta.service_files`) maps topic patterns to jinja2 *expressions*
for ``title``, ``subtitle``, ``link``, ``icon``, ``agent``, ``usernames`` and
``packages``, compiled once at load time and run in a sandbox with typed slots
(:mod:`fedmsg_notify.meta.sandbox`). Per message we pick the entry (a dict lookup, cached
per topic) and evaluate it.

Evaluation order is ``let`` (service, then topic), ``agent``, ``usernames``,
``packages``, ``link``, ``icon``, ``title``, ``subtitle``; each result is visible to the
later expressions. Names an expression sees: ``body`` (alias ``msg``, the envelope's
``msg``), ``message`` (the whole envelope), ``topic``, ``subtopic``, ``service``, ``env``,
``rest`` (the topic after the service), the ``let`` names and the fields computed so far.

Every field fails closed. An expression that raises, puts a mapping, list, None or empty
string into a slot, gives a link that would not work (:func:`~fedmsg_notify.meta.quality.valid_link`)
or a sentence that reads badly (:func:`~fedmsg_notify.meta.quality.sentence_problem`)
falls back: to the service's default expression, then to what the message says about
itself (:mod:`fedmsg_notify.meta.generic`), then — for links — the service's home page,
then nothing. Every such fallback is counted per service and field
(:meth:`MetaEngine.fallback_counts`), so the benchmark and ``status`` show where the
service files' knowledge is thin. Unexpected errors (not a message shape, a bug in a
file) are also logged, once per file and field.

Per message, the chosen entry first runs as one combined template (one jinja2 call
instead of one per expression); only when that fails, or its link or sentence is
rejected, are the expressions run one by one with their fallbacks.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from fedmsg_notify.bus.envelope import KNOWN_ENVS, Message
from fedmsg_notify.config.yaml_positions import Problem, ProblemsError
from fedmsg_notify.meta.filters import fas_user, names, nvr_name, packages_only, usernames_only
from fedmsg_notify.meta.generic import (
    generic_agent,
    generic_link,
    generic_packages,
    generic_subtitle,
    generic_usernames,
)
from fedmsg_notify.meta.quality import sentence_problem, valid_link
from fedmsg_notify.meta.sandbox import SlotError, as_text, first_user, shared_globals
from fedmsg_notify.meta.schema import header_names, schema_text
from fedmsg_notify.meta.service_files import (
    FIELDS,
    CompiledEntry,
    CompiledExpr,
    CompiledService,
    combine,
    load_services,
)

__all__ = [
    "FIELDS",
    "GENERIC_ICON",
    "Meta",
    "MetaEngine",
    "compute_meta",
    "default_engine",
    "fas_user",
    "nvr_name",
]

log = logging.getLogger(__name__)

SHIPPED_SERVICES_DIR = Path(__file__).resolve().parent / "services"
FEDMSG_ICONS = "https://apps.fedoraproject.org/img/icons/"
GENERIC_ICON = FEDMSG_ICONS + "fedmsg.png"
# The fallback counter's key for a message whose service no file describes.
NO_SERVICE_FILE = "service"
# Past this many (service, field) keys, new services are counted together under this name.
OTHER_SERVICES = "(other services)"
_FALLBACK_KEYS = 2048


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


def _always(_value: Any) -> bool:
    return True


def _link_ok(value: str | None) -> bool:
    return value is None or valid_link(value)


def _sentence_ok(value: str | None) -> bool:
    return value is None or sentence_problem(value) is None


def _on_staging(service: CompiledService, env: str, link: str | None) -> str | None:
    """The staging host's link for a ``stg`` message, where the service had a staging host."""
    if link is None or env != "stg" or not service.staging:
        return link
    parts = urlsplit(link)
    host = service.staging.get(parts.netloc)
    return urlunsplit(parts._replace(netloc=host)) if host else link


class MetaEngine:
    """Computes :class:`Meta` from the shipped service files plus user directories."""

    def __init__(self, extra_dirs: Sequence[Path] = (), *, strict: bool = True) -> None:
        """Load every service file; with ``strict`` (the default) any problem raises :class:`ProblemsError`."""
        self.dirs = (SHIPPED_SERVICES_DIR, *(Path(d) for d in extra_dirs))
        self.services, self.problems = load_services(self.dirs)
        if strict and self.problems:
            raise ProblemsError(self.problems)
        self._reported: set[tuple[str, str]] = set()
        # (service, field) → how many messages fell back from the service file's expression.
        self.fallbacks: Counter[tuple[str, str]] = Counter()

    def check(self) -> list[Problem]:
        """Re-read every service file and return all problems (syntax, keys, expressions)."""
        _, problems = load_services(self.dirs)
        return problems

    def _count_fallback(self, service: str, name: str, n: int = 1) -> None:
        key = (service, name)
        if key not in self.fallbacks and len(self.fallbacks) >= _FALLBACK_KEYS:
            # Unknown services are named by whoever publishes; a hostile publisher inventing
            # service names must not grow this table without bound.
            key = (OTHER_SERVICES, name)
        self.fallbacks[key] += n

    def merge_fallbacks(self, counts: Mapping[tuple[str, str], int]) -> None:
        """Add fallbacks counted elsewhere (an intake process's engine), within the same bound."""
        for (service, name), n in counts.items():
            self._count_fallback(service, name, n)

    def fallback_counts(self) -> dict[str, dict[str, int]]:
        """Fallbacks so far, by service then field (``service``: no file describes the service)."""
        out: dict[str, dict[str, int]] = {}
        for (service, name), count in sorted(self.fallbacks.items()):
            out.setdefault(service, {})[name] = count
        return out

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
        service = self.services.get(service_name)
        if service is None:
            return self._generic(message, service_name, rest, subtopic)
        entry = service.select(rest)
        ctx: dict[str, Any] = {
            # The sandbox's globals, merged here so jinja2 can use this dict as the
            # context as-is (shared=True) instead of rebuilding it from a ChainMap.
            **shared_globals(),
            **_expression_context(message, service_name, rest, subtopic),
            "_icon": service.icon or GENERIC_ICON,
        }
        if not entry.combined:
            entry.fast = combine(entry)
            entry.combined = True
        if entry.fast is not None:
            try:
                done = entry.fast.make_module(ctx, shared=True).__dict__
            except Exception:
                pass  # the slow path below finds, logs and replaces the failing field
            else:
                link, subtitle = done["link"], done["subtitle"]
                if _link_ok(link) and _sentence_ok(subtitle):
                    if subtitle is None:
                        self._count_fallback(service_name, "subtitle")
                        subtitle = generic_subtitle(service_name, rest, done["agent"], message.body)
                    link = _on_staging(service, message.parts.env, link)
                    return Meta(
                        done["title"],
                        subtitle,
                        link,
                        done["icon"],
                        done["agent"],
                        usernames_only(done["usernames"]),
                        packages_only(done["packages"]),
                    )
        return self._compute_slowly(service, entry, message, service_name, rest, subtopic)

    def _generic(self, message: Message, service_name: str, rest: str, subtopic: str) -> Meta:
        """A service no file describes: what the message says about itself."""
        body = message.body
        self._count_fallback(service_name or message.topic, NO_SERVICE_FILE)
        agent = generic_agent(body)
        return Meta(
            title=subtopic or message.topic,
            subtitle=generic_subtitle(service_name or message.topic, rest, agent, body),
            link=generic_link(body),
            icon=GENERIC_ICON,
            agent=agent,
            usernames=generic_usernames(body, agent),
            packages=generic_packages(body),
            source="generic",
        )

    def _compute_slowly(
        self,
        service: CompiledService,
        entry: CompiledEntry,
        message: Message,
        service_name: str,
        rest: str,
        subtopic: str,
    ) -> Meta:
        """One expression at a time, each failing one replaced by its fallbacks."""
        body = message.body
        ctx = _expression_context(message, service_name, rest, subtopic)
        for let in entry.lets:
            ok, value = self._run(service, let, ctx)
            ctx[let.name[4:]] = value if ok else None

        def field(
            name: str,
            finish: Callable[[Any], Any],
            accept: Callable[[Any], bool],
            when_unset: Callable[[], Any],
            when_failed: Callable[[], Any] | None = None,
        ) -> Any:
            value, failed = self._field(service, entry, name, ctx, finish, accept)
            if failed:
                self._count_fallback(service_name, name)
                fell_back.add(name)
            if value is _UNSET:
                value = when_unset()
            elif value is _FAILED:
                value = (when_failed or when_unset)()
            return value

        def nothing() -> None:
            return None

        fell_back: set[str] = set()

        agent = ctx["agent"] = field("agent", first_user, _always, lambda: generic_agent(body))
        usernames = ctx["usernames"] = field("usernames", names, _always, lambda: names([agent]))
        packages = ctx["packages"] = field("packages", names, _always, lambda: generic_packages(body))
        link = ctx["link"] = field(
            "link", as_text, _link_ok, lambda: generic_link(body), lambda: generic_link(body) or service.home
        )
        icon = ctx["icon"] = field("icon", as_text, _always, nothing) or service.icon or GENERIC_ICON
        title = ctx["title"] = field("title", as_text, _always, nothing) or subtopic or message.topic
        subtitle = field("subtitle", as_text, _sentence_ok, nothing)
        if subtitle is None:
            if "subtitle" not in fell_back:
                self._count_fallback(service_name, "subtitle")
            subtitle = generic_subtitle(service_name, rest, agent, body)
        link = _on_staging(service, message.parts.env, link)
        return Meta(title, subtitle, link, icon, agent, usernames_only(usernames), packages_only(packages))

    def _field(
        self,
        service: CompiledService,
        entry: CompiledEntry,
        name: str,
        ctx: dict[str, Any],
        finish: Callable[[Any], Any],
        accept: Callable[[Any], bool],
    ) -> tuple[Any, bool]:
        """(value, whether a candidate failed): the topic's expression, then the service default.

        ``_UNSET`` when the service defines no expression for the field, ``_FAILED`` when
        every candidate failed (raised, or gave a value ``accept`` refuses).
        """
        own = entry.fields.get(name)
        if own is None:
            return _UNSET, False
        default = service.fallback.fields.get(name)
        candidates = [own] if default is None or default is own else [own, default]
        for expr in candidates:
            ok, raw = self._run(service, expr, ctx)
            if ok:
                value = finish(raw)
                if accept(value):
                    return value, expr is not own
        return _FAILED, True

    def _run(self, service: CompiledService, expr: CompiledExpr, ctx: dict[str, Any]) -> tuple[bool, Any]:
        """Evaluate one expression: (True, value), or (False, None) when it fails.

        A value of the wrong shape (:class:`SlotError` for a slot; a type, attribute, key or
        value error when an operation meets a mapping, list or None it did not expect) is
        what messages do and is only counted; any other error (the sandbox refusing an
        operation, arithmetic) is a bug in the file, logged once per (file, field).
        """
        try:
            return True, expr.run(**ctx)
        except _SHAPE_ERRORS as exc:
            log.debug("%s: %s of service %s: %s", expr.where, expr.name, service.names[0], exc)
            return False, None
        except Exception as exc:
            key = (str(expr.where), expr.name)
            if key not in self._reported:
                self._reported.add(key)
                log.warning(
                    "%s: %s of service %s failed on %s (%s: %s); using the fallback value",
                    expr.where,
                    expr.name,
                    service.names[0],
                    ctx.get("topic"),
                    type(exc).__name__,
                    exc,
                )
            return False, None


# Errors that mean "the message is not shaped as this expression expects"; SecurityError
# (a sandbox refusal) is deliberately not among them.
_SHAPE_ERRORS = (SlotError, TypeError, AttributeError, LookupError)


class _Marker:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


_UNSET: Any = _Marker("<unset>")
_FAILED: Any = _Marker("<failed>")


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
