"""Rendering a matched message (or a digest) into a backend's parts through jinja2.

Resolution order for backend ``B`` and subtopic ``s.o.e`` (the topic after the
environment): the destination's ``template``; ``B/s.o.e.j2``; ``B/s.o.j2``;
``B/s.j2``; ``B/default.j2`` — user template directories before the shipped
``templates/``. The shipped templates stay reachable as ``@shipped/<name>``, so a
user template can ``{% extends "@shipped/email/default.j2" %}`` and override one block.
Digests use ``B/digest.j2`` with ``messages`` (``message``, ``topic``, ``meta``,
``rendered`` each) and ``count`` (the true total); a one-message digest is rendered
like a normal delivery.

Context: ``message`` (the envelope), ``body`` (its ``msg``), ``topic``, ``service``,
``meta``, ``rule`` (``name``, ``file``), ``destination`` (``account``, ``to``).
Helpers (functions and filters): ``ago(ts)``, ``isotime(ts)``, ``irc_color(text,
service)``, ``irc_bold(text)``. ``None`` prints as nothing; ``trim_blocks`` and
``lstrip_blocks`` are on, so block tags on their own line leave no blank lines.
On JSON objects ``.name`` reads the field even when a dict method has that name
(``body.update``).

Single-part backends render the whole template; multi-part backends render one
``{% block <part> %}`` per part (an absent block is an empty part; ``check`` says so).
Parts in ``html_parts`` come from a second environment with autoescaping forced on
(``|safe`` and ``{% autoescape %}`` are disabled there). Every expression's value
passes :func:`sanitize.finalize` and every part :func:`sanitize.finish_part`, so
message content cannot inject protocol lines, headers, markup or control codes into
any backend.

Templates run in jinja2's immutable sandbox with ``StrictUndefined``: no access to
Python internals, no file or module access, bounded arithmetic and ``range()``. A
template that fails (syntax, sandbox violation, undefined name) is logged once with
its file and line and that delivery falls back to the backend's shipped
``default.j2``, then to a built-in plain sentence; rendering never raises to the
caller. Each (template, message) is rendered once however many destinations share
it (the destination and rule only enter the cache key when the template reads them).
"""

from __future__ import annotations

import difflib
import html
import logging
import time
import traceback
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from fedmsg_notify.backend import Backend
from fedmsg_notify.bus.envelope import MalformedMessage, Message, split_topic
from fedmsg_notify.config.model import shipped_templates_dir
from fedmsg_notify.config.yaml_positions import Position, Problem
from fedmsg_notify.matching.rules import Route
from fedmsg_notify.meta.engine import Meta
from fedmsg_notify.render import sanitize
from jinja2 import meta as jinja_meta
from jinja2 import nodes
from jinja2.exceptions import SecurityError
from jinja2.ext import Extension
from jinja2.lexer import TOKEN_BLOCK_BEGIN, TOKEN_NAME, Token, TokenStream
from jinja2.sandbox import ImmutableSandboxedEnvironment, modifies_known_mutable, safe_range
from markupsafe import Markup

log = logging.getLogger(__name__)

SHIPPED_PREFIX = "@shipped"
# What a per-message template sees, and what a digest template sees.
MESSAGE_CONTEXT = frozenset({"message", "body", "topic", "service", "meta", "rule", "destination", "verified"})
DIGEST_CONTEXT = frozenset({"messages", "count", "rule", "destination"})
# Rendered parts of recent (template, message) pairs: enough for every destination
# of a burst of messages to share one rendering, small enough to never matter.
RENDER_CACHE_SIZE = 4096
# Topics come from the bus: lookups per (backend, subtopic) are bounded, not one per topic ever seen.
LOOKUP_CACHE_SIZE = 10_000
# Longest topic prefix tried as a file name; real topics have 3-5 parts after the env,
# and a hostile 10,000-part topic must not cost 10,000 file lookups.
MAX_TOPIC_PARTS = 8
# Sandbox arithmetic limits: a template must not be able to allocate gigabytes
# (``'x' * 10**10``) or spin the CPU (``9 ** 9 ** 9``) in the daemon.
MAX_SEQUENCE_LENGTH = 1_000_000
MAX_INT_BITS = 4096
# range() items a single rendering may create in total: nested loops over range()
# would otherwise multiply jinja2's per-call limit (100,000) into a hang.
RANGE_BUDGET = 100_000


# jinja2's own template-side objects whose public attributes are all safe to read.
_PLAIN_OBJECTS = frozenset({jinja2.utils.Namespace, jinja2.runtime.LoopContext})


class _Sandbox(ImmutableSandboxedEnvironment):
    """jinja2's immutable sandbox plus limits on ``*``, ``**`` and ``+``."""

    # Intercepted operators are also excluded from compile-time constant folding,
    # so the limits hold for literals in the template as well.
    intercepted_binops = frozenset({"*", "**", "+"})
    range_left = RANGE_BUDGET

    def bounded_range(self, *args: int) -> range:
        """``range()`` for templates, within one budget per rendering (reset by the renderer)."""
        items = safe_range(*args)
        self.range_left -= len(items)
        if self.range_left < 0:
            raise SecurityError(f"templates may create at most {RANGE_BUDGET} range() items per rendering")
        return items

    def getattr(self, obj: Any, attribute: str) -> Any:
        # For JSON objects ``.name`` means the field: ``body.update.title`` of a bodhi
        # message must not resolve to dict.update (which the sandbox would then refuse).
        if isinstance(obj, dict):
            if attribute in obj:
                return obj[attribute]
            if modifies_known_mutable(obj, attribute):
                # A missing field, not a sandbox escape: report it as one.
                return self.undefined(obj=obj, name=attribute)
        elif type(obj) in _PLAIN_OBJECTS and not attribute.startswith("_"):
            # namespace() and loop: the sandbox's checks refuse nothing but "_" names on
            # these, so the same answer without them (digest templates read ns.x and
            # loop.index0 in nested loops, thousands of times per digest).
            try:
                value = getattr(obj, attribute)
            except AttributeError:
                return self.undefined(obj=obj, name=attribute)
            wrapped = self.wrap_str_format(value)
            return value if wrapped is None else wrapped
        return super().getattr(obj, attribute)

    def call_binop(self, context: jinja2.runtime.Context, operator: str, left: Any, right: Any) -> Any:
        _check_binop(operator, left, right)
        return super().call_binop(context, operator, left, right)


def _length(value: Any) -> int | None:
    return len(value) if isinstance(value, (str, list, tuple)) else None


def _check_binop(operator: str, left: Any, right: Any) -> None:
    ints = isinstance(left, int) and isinstance(right, int)
    if operator == "**" and ints and right > 0 and abs(left) > 1 and right * left.bit_length() > MAX_INT_BITS:
        raise SecurityError(f"{left} ** {right} is too large for a template")
    if operator == "*":
        if ints and left.bit_length() + right.bit_length() > MAX_INT_BITS:
            raise SecurityError("integer product is too large for a template")
        for seq, times in ((left, right), (right, left)):
            size = _length(seq)
            if size is not None and isinstance(times, int) and size * times > MAX_SEQUENCE_LENGTH:
                raise SecurityError(f"repeating a sequence {times} times is too large for a template")
    if operator == "+":
        sizes = (_length(left), _length(right))
        if sizes[0] is not None and sizes[1] is not None and sizes[0] + sizes[1] > MAX_SEQUENCE_LENGTH:
            raise SecurityError("concatenation is too large for a template")


class _AlwaysEscape(Extension):
    """HTML parts are always autoescaped: ``{% autoescape %}`` blocks are refused there."""

    def filter_stream(self, stream: TokenStream) -> Iterator[Token]:
        previous: Token | None = None
        for token in stream:
            if (
                previous is not None
                and previous.type == TOKEN_BLOCK_BEGIN
                and token.type == TOKEN_NAME
                and token.value == "autoescape"
            ):
                raise jinja2.TemplateSyntaxError(
                    "'autoescape' is not allowed: HTML parts are always autoescaped",
                    token.lineno,
                    stream.name,
                    stream.filename,
                )
            previous = token
            yield token


def _not_safe(value: Any) -> Any:
    """``|safe`` in HTML parts: content stays escaped; only markup the template built itself passes."""
    return value if isinstance(value, Markup) else str(value)


def ago(timestamp: Any, now: float | None = None) -> str:
    """``"5 minutes ago"`` for a Unix timestamp (``""`` if it is not a number)."""
    if not isinstance(timestamp, (int, float)) or isinstance(timestamp, bool):
        return ""
    seconds = int((time.time() if now is None else now) - timestamp)
    if seconds < 0:
        return "in the future"
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            n = seconds // size
            return f"{n} {unit}{'s' if n != 1 else ''} ago"
    return "just now"


def isotime(timestamp: Any) -> str:
    """``"2012-08-07 14:36 UTC"`` for a Unix timestamp (``""`` if it is not a number)."""
    if not isinstance(timestamp, (int, float)) or isinstance(timestamp, bool):
        return ""
    try:
        return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(timestamp))
    except (OverflowError, OSError, ValueError):
        return ""


_HELPERS: dict[str, Callable[..., Any]] = {
    "ago": ago,
    "isotime": isotime,
    "irc_color": sanitize.irc_color,
    "irc_bold": sanitize.irc_bold,
    "html_color": sanitize.html_color,
}


def _environment(loader: jinja2.BaseLoader, *, html_part: bool) -> _Sandbox:
    env = _Sandbox(
        loader=loader,
        undefined=jinja2.StrictUndefined,
        autoescape=html_part,
        finalize=sanitize.finalize_html if html_part else sanitize.finalize,
        extensions=[_AlwaysEscape] if html_part else [],
        # Templates are reloaded by building a new Renderer on SIGHUP; no stat() per message.
        auto_reload=False,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(_HELPERS)
    env.globals.update(_HELPERS)
    env.globals["range"] = env.bounded_range
    # lipsum(n) builds n paragraphs: useless in a notification, a memory lever in a template.
    env.globals.pop("lipsum", None)
    if html_part:
        env.filters["safe"] = _not_safe
    return env


def candidates(backend: str, subtopic: str, explicit: str | None = None) -> list[str]:
    """Template names to try, in SPEC order, for ``backend`` and topic part ``subtopic``."""
    names = [explicit] if explicit else []
    parts = [p for p in subtopic.split(".") if p][:MAX_TOPIC_PARTS]
    for n in range(len(parts), 0, -1):
        names.append(f"{backend}/{'.'.join(parts[:n])}.j2")
    names.append(f"{backend}/default.j2")
    return names


class _LRU(OrderedDict[Any, Any]):
    """A dict that forgets its least recently used entries beyond ``size``."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def lookup(self, key: Any) -> Any:
        value = self.get(key)
        if value is not None:
            self.move_to_end(key)
        return value

    def store(self, key: Any, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        if len(self) > self.size:
            self.popitem(last=False)


@dataclass(frozen=True, slots=True)
class _Analysis:
    """What a template (with everything it includes or extends) reads from the context."""

    variables: frozenset[str] | None  # None: unknown (a dynamic include), assume everything
    extends: bool


def _digest_template(route: Route) -> str | None:
    explicit = getattr(route, "digest_template", None)
    if isinstance(explicit, str) and explicit:
        return explicit
    digest: Any = route.digest
    value = digest.get("template") if isinstance(digest, Mapping) else getattr(digest, "template", None)
    return value if isinstance(value, str) and value else None


def _route_context(route: Route) -> dict[str, Any]:
    return {
        "rule": {"name": route.rule.name, "file": route.rule.file},
        "destination": {"account": route.destination.account, "to": route.destination.to},
    }


def _plain_sentence(meta: Mapping[str, Any]) -> str:
    words = [meta.get("title"), meta.get("subtitle"), meta.get("link")]
    head = f"{words[0]}: " if words[0] else ""
    return head + " ".join(str(w) for w in words[1:] if w)


def _fallback_parts(backend_cls: type[Backend], text: str) -> dict[str, str]:
    """The last resort, no jinja2 involved: the same sentence in every part."""
    out: dict[str, str] = {}
    for part in backend_cls.parts:
        clean = sanitize.plain_text(text)
        if part in backend_cls.html_parts:
            clean = html.escape(clean)
        out[part] = sanitize.finish_part(clean, line=part in backend_cls.line_parts)
    return out


def _failure_location(exc: BaseException, default: str) -> tuple[str, int | None]:
    """File and line of a template error: syntax errors carry them, runtime errors are in the traceback."""
    if isinstance(exc, jinja2.TemplateSyntaxError):
        return exc.filename or exc.name or default, exc.lineno
    # jinja2 rewrites tracebacks so template frames name the template file and line.
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if frame.filename.endswith(".j2") or frame.filename.startswith("<"):
            return frame.filename, frame.lineno
    return default, None


class Renderer:
    """Renders messages and digests for backends; one per loaded configuration."""

    def __init__(self, template_dirs: Sequence[Path] = ()) -> None:
        self.template_dirs = [Path(p) for p in template_dirs]
        self.shipped_dir = shipped_templates_dir()
        search = [str(p) for p in self.template_dirs] + [str(self.shipped_dir)]
        # followlinks only affects directory walking (list_templates); names with ".."
        # or absolute paths are refused by FileSystemLoader itself.
        self.loader = jinja2.ChoiceLoader(
            [
                jinja2.PrefixLoader({SHIPPED_PREFIX: jinja2.FileSystemLoader(str(self.shipped_dir))}),
                jinja2.FileSystemLoader(search),
            ]
        )
        self.text_env = _environment(self.loader, html_part=False)
        self.html_env = _environment(self.loader, html_part=True)
        self._exists = _LRU(LOOKUP_CACHE_SIZE)
        self._resolved = _LRU(LOOKUP_CACHE_SIZE)
        self._templates: dict[tuple[str, bool], jinja2.Template | Exception] = {}
        self._flat_globals: dict[jinja2.Template, dict[str, Any]] = {}
        self._analyses: dict[str, _Analysis] = {}
        self._rendered = _LRU(RENDER_CACHE_SIZE)
        self._reported: set[tuple[str, int | None, str]] = set()
        # renders / cache_hits / resolutions / failures / fallbacks: for tests and status.
        self.stats: Counter[str] = Counter()

    # -- template lookup -------------------------------------------------------------

    def exists(self, name: str) -> bool:
        """Whether ``name`` (relative to the template directories) names a template (cached)."""
        found: bool | None = self._exists.lookup(name)
        if found is None:
            try:
                self.loader.get_source(self.text_env, name)
                found = True
            except (jinja2.TemplateNotFound, OSError, ValueError):  # ValueError: a NUL in the name
                found = False
            self._exists.store(name, found)
        return found

    def resolve(self, backend: str, subtopic: str, explicit: str | None = None) -> str | None:
        """The first existing template name in SPEC order, cached per (backend, subtopic, explicit)."""
        key = (backend, subtopic, explicit)
        # Stored as a 1-tuple so that "no template at all" (None) is cached too.
        cached: tuple[str | None] | None = self._resolved.lookup(key)
        if cached is None:
            self.stats["resolutions"] += 1
            found = next((name for name in candidates(backend, subtopic, explicit) if self.exists(name)), None)
            if explicit and found != explicit:
                log.warning("template '%s' not found in %s; using %s", explicit, self._dirs(), found)
            cached = (found,)
            self._resolved.store(key, cached)
        return cached[0]

    def template_for(self, backend_cls: type[Backend], message: Message, route: Route) -> str | None:
        """The template name ``render`` starts from for this message and destination (for ``explain``)."""
        return self.resolve(backend_cls.name, message.parts.subtopic, route.template)

    def _dirs(self) -> str:
        return ", ".join(str(p) for p in [*self.template_dirs, self.shipped_dir])

    def _load(self, name: str, html_part: bool) -> jinja2.Template:
        key = (name, html_part)
        if key not in self._templates:
            env = self.html_env if html_part else self.text_env
            try:
                self._templates[key] = env.get_template(name)
            except Exception as exc:
                # Remembered so a broken file is compiled (and logged) once, not per message.
                self._templates[key] = exc
        found = self._templates[key]
        if isinstance(found, Exception):
            raise found
        return found

    def _analyse(self, name: str, seen: frozenset[str] = frozenset()) -> _Analysis:
        """Context names read by ``name`` and the templates it includes, imports or extends."""
        if name in self._analyses:
            return self._analyses[name]
        try:
            source, filename, _ = self.loader.get_source(self.text_env, name)
            ast = self.text_env.parse(source, name, filename)
        except Exception:
            return _Analysis(None, False)
        variables: set[str] | None = set(jinja_meta.find_undeclared_variables(ast))
        for ref in jinja_meta.find_referenced_templates(ast):
            if ref is None:  # a computed name: it could read anything
                variables = None
                continue
            if ref in seen:  # recursive include
                continue
            sub = self._analyse(ref, seen | {name})
            if sub.variables is None or variables is None:
                variables = None
            else:
                variables |= sub.variables
        result = _Analysis(None if variables is None else frozenset(variables), any(ast.find_all(nodes.Extends)))
        self._analyses[name] = result
        return result

    # -- rendering -------------------------------------------------------------------

    def render(self, backend_cls: type[Backend], message: Message, meta: Meta, route: Route) -> dict[str, str]:
        """The rendered parts of ``backend_cls`` for ``message`` going to ``route``; never raises."""
        return self._render_message(backend_cls, message, meta.as_dict(), route)

    def _render_message(
        self, backend_cls: type[Backend], message: Message, meta: Mapping[str, Any], route: Route
    ) -> dict[str, str]:
        context: dict[str, Any] = {
            "message": message.envelope,
            "body": message.body,
            "topic": message.topic,
            "service": message.service,
            "meta": dict(meta),
            # False for a message that failed signature checks but is delivered (on_invalid: mark).
            "verified": message.verified,
            **_route_context(route),
        }
        first = self.template_for(backend_cls, message, route)
        chain = [first, f"{SHIPPED_PREFIX}/{backend_cls.name}/default.j2"]
        return self._render_chain(backend_cls, chain, context, message.topic, message.msg_id, route, meta)

    def render_digest(
        self,
        backend_cls: type[Backend],
        entries: Sequence[Mapping[str, Any]],
        route: Route,
        total: int,
    ) -> dict[str, str]:
        """One payload for a batch of messages; a one-message digest reads like a normal delivery.

        ``entries`` are ``{"message": envelope, "topic", "service", "meta", "rendered"}`` (possibly
        capped); ``total`` is the true number of messages. Never raises.
        """
        if total == 1 and len(entries) == 1:
            entry = entries[0]
            try:
                message = Message.from_envelope(entry["message"])
            except (MalformedMessage, KeyError) as exc:
                log.warning("digest entry is not a message (%s); rendering it as a digest", exc)
            else:
                return self._render_message(backend_cls, message, entry.get("meta") or {}, route)
        context: dict[str, Any] = {
            "messages": [
                {
                    "message": e.get("message"),
                    "topic": e.get("topic"),
                    "service": e.get("service") or split_topic(str(e.get("topic") or "")).service,
                    "meta": dict(e.get("meta") or {}),
                    "rendered": dict(e.get("rendered") or {}),
                }
                for e in entries
            ],
            "count": total,
            **_route_context(route),
        }
        name = f"{backend_cls.name}/digest.j2"
        chain = [_digest_template(route), name, f"{SHIPPED_PREFIX}/{name}"]
        topic = f"digest of {total} messages"
        try:
            return self._render_chain(backend_cls, chain, context, topic, None, route, None)
        except _AllFailed:
            return self._digest_fallback(backend_cls, context["messages"], total)

    def _render_chain(
        self,
        backend_cls: type[Backend],
        chain: Sequence[str | None],
        context: dict[str, Any],
        topic: str,
        msg_id: str | None,
        route: Route,
        meta: Mapping[str, Any] | None,
    ) -> dict[str, str]:
        tried: list[str] = []
        for name in chain:
            if name is None or name in tried or not self.exists(name):
                continue
            tried.append(name)
            try:
                return self._render_cached(backend_cls, name, context, msg_id, route)
            except Exception as exc:
                self.stats["failures"] += 1
                self._report(name, exc, topic)
        self.stats["fallbacks"] += 1
        if meta is None:
            raise _AllFailed
        return _fallback_parts(backend_cls, _plain_sentence(meta))

    def _render_cached(
        self,
        backend_cls: type[Backend],
        name: str,
        context: dict[str, Any],
        msg_id: str | None,
        route: Route,
    ) -> dict[str, str]:
        if msg_id is None:  # digests are unique; nothing to share
            return self._render_parts(backend_cls, name, context)
        used = self._analyse(name).variables
        key = (
            backend_cls,
            name,
            msg_id,
            (route.rule.name, route.rule.file) if used is None or "rule" in used else None,
            route.destination if used is None or "destination" in used else None,
        )
        cached: tuple[tuple[str, str], ...] | None = self._rendered.lookup(key)
        if cached is not None:
            self.stats["cache_hits"] += 1
            return dict(cached)
        parts = self._render_parts(backend_cls, name, context)
        self._rendered.store(key, tuple(parts.items()))
        return parts

    def _render_parts(self, backend_cls: type[Backend], name: str, context: dict[str, Any]) -> dict[str, str]:
        self.stats["renders"] += 1
        self.text_env.range_left = self.html_env.range_left = RANGE_BUDGET
        out: dict[str, str] = {}
        single = len(backend_cls.parts) == 1
        # One jinja2 context per template (text or HTML environment), shared by its blocks:
        # building a context costs about as much as rendering a short block.
        contexts: dict[jinja2.Template, jinja2.runtime.Context] = {}
        for part in backend_cls.parts:
            template = self._load(name, part in backend_cls.html_parts)
            if single:
                text = self._render_whole(template, context)
            else:
                text = self._render_block(template, name, part, context, contexts)
            out[part] = sanitize.finish_part(text, line=part in backend_cls.line_parts)
        return out

    def _new_context(self, template: jinja2.Template, context: dict[str, Any]) -> jinja2.runtime.Context:
        """``template.new_context(context)``, without re-reading the globals' ChainMap every time.

        jinja2 flattens ``template.globals`` (a ChainMap) twice per context; the globals are
        fixed once the environment is built, so they are flattened once per template here.
        """
        flat = self._flat_globals.get(template)
        if flat is None:
            flat = self._flat_globals[template] = dict(template.globals)
        env = template.environment
        return env.context_class(env, {**flat, **context}, template.name, template.blocks, globals=flat)

    def _render_whole(self, template: jinja2.Template, context: dict[str, Any]) -> str:
        """``template.render(context)`` (single-part backends)."""
        try:
            return "".join(template.root_render_func(self._new_context(template, context)))
        except Exception:
            template.environment.handle_exception()

    def _render_block(
        self,
        template: jinja2.Template,
        name: str,
        part: str,
        context: dict[str, Any],
        contexts: dict[jinja2.Template, jinja2.runtime.Context],
    ) -> str:
        """One ``{% block part %}`` of ``template``; an absent block renders as nothing."""
        try:
            extends = self._analyse(name).extends
            ctx = contexts.get(template)
            if ctx is None:
                ctx = contexts[template] = self._new_context(template, context)
                if extends:
                    # Running the template once collects the blocks it inherits (and makes
                    # super() work); the child-most definition of each block comes first.
                    # Blocks only read the context, so the other parts reuse it.
                    for _ in template.root_render_func(ctx):
                        pass
            if extends:
                found = ctx.blocks.get(part)
                block = found[0] if found else None
            else:
                block = template.blocks.get(part)
            if block is None:
                return ""
            return "".join(block(ctx))
        except Exception:
            template.environment.handle_exception()

    def _report(self, name: str, exc: BaseException, topic: str) -> None:
        file, line = _failure_location(exc, name)
        reason = f"{type(exc).__name__}: {exc}"
        key = (file, line, reason)
        if key in self._reported:
            return
        if len(self._reported) > 10_000:  # a template failing differently on every message
            self._reported.clear()
        self._reported.add(key)
        where = f"{file}:{line}" if line is not None else file
        log.warning("template %s failed for %s (%s); falling back to the default", where, topic, reason)

    def _digest_fallback(
        self, backend_cls: type[Backend], messages: Sequence[Mapping[str, Any]], total: int
    ) -> dict[str, str]:
        sentences = [_plain_sentence(m.get("meta") or {}) for m in messages]
        more = total - len(sentences)
        summary = f"{total} messages"
        out: dict[str, str] = {}
        for part in backend_cls.parts:
            if part in backend_cls.line_parts:
                text = f"{summary}: " + "; ".join(sentences)
            else:
                lines = [*sentences, *([f"... and {more} more"] if more > 0 else [])]
                text = "\n".join(lines)
            text = sanitize.plain_text(text)
            if part in backend_cls.html_parts:
                text = "<ul>\n" + "\n".join(f"<li>{html.escape(line)}</li>" for line in text.split("\n")) + "\n</ul>"
            out[part] = sanitize.finish_part(text, line=part in backend_cls.line_parts)
        return out

    # -- check -----------------------------------------------------------------------

    def check(self) -> list[Problem]:
        """Every problem in every template of the user and shipped directories, as positioned problems."""
        problems: list[Problem] = []
        for base in [*self.template_dirs, self.shipped_dir]:
            if not base.is_dir():
                continue
            for path in sorted(base.rglob("*.j2")):
                problems.extend(self._check_file(path, path.relative_to(base).as_posix()))
        return problems

    def _check_file(self, path: Path, name: str) -> list[Problem]:
        def at(line: int | None, message: str) -> Problem:
            return Problem(Position(str(path), line or 1, 1), message)

        try:
            source = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            return [at(1, f"cannot read template: {exc}")]
        backend_cls = _backend_for(name)
        envs = [self.text_env]
        if backend_cls is not None and backend_cls.html_parts:
            envs.append(self.html_env)
        ast: nodes.Template | None = None
        for env in envs:
            try:
                parsed = env.parse(source, name, str(path))
                env.compile(parsed, name, str(path))
            except jinja2.TemplateSyntaxError as exc:
                return [at(exc.lineno, exc.message or str(exc))]
            ast = ast or parsed
        assert ast is not None
        problems = [at(line, message) for line, message in self._scan(ast, name, backend_cls)]
        return sorted(problems, key=lambda p: p.position.line)

    def _scan(self, ast: nodes.Template, name: str, backend_cls: type[Backend] | None) -> Iterator[tuple[int, str]]:
        """Static checks: Python internals, includes outside the template directories, unknown names, blocks."""
        for getattr_node in ast.find_all(nodes.Getattr):
            if getattr_node.attr.startswith("_"):
                yield getattr_node.lineno, _internals(getattr_node.attr)
        for getitem_node in ast.find_all(nodes.Getitem):
            key = _const_str(getitem_node.arg)
            if key is not None and key.startswith("_"):
                yield getitem_node.lineno, _internals(key)
        for tag, node in _references(ast):
            targets = _template_names(node.template)
            if targets and not any(self.exists(target) for target in targets):
                yield node.lineno, f"{tag} '{' or '.join(targets)}': no such template in {self._dirs()}"
        digest = "digest" in Path(name).name
        known = (DIGEST_CONTEXT if digest else MESSAGE_CONTEXT) | set(self.text_env.globals)
        undeclared = jinja_meta.find_undeclared_variables(ast) - known
        for var in sorted(undeclared):
            line = next((n.lineno for n in ast.find_all(nodes.Name) if n.name == var), 1)
            close = difflib.get_close_matches(var, sorted(known), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            yield line, f"unknown variable '{var}'{hint}"
        if backend_cls is not None and len(backend_cls.parts) > 1 and not any(ast.find_all(nodes.Extends)):
            blocks = {b.name for b in ast.find_all(nodes.Block)}
            for part in backend_cls.parts:
                if part not in blocks:
                    yield (
                        1,
                        (
                            f"no {{% block {part} %}}: {backend_cls.name} renders "
                            f"{', '.join(backend_cls.parts)}; its {part} would be empty"
                        ),
                    )


class _AllFailed(Exception):
    """Every template of a digest chain failed; the caller uses the built-in digest."""


def _backend_for(name: str) -> type[Backend] | None:
    """The backend class of ``<backend>/...j2``, if that directory names a known backend."""
    from fedmsg_notify.backends import backend_class  # late: backends import this package's modules

    head, sep, _ = name.partition("/")
    if not sep:
        return None
    try:
        found: type[Backend] = backend_class(head)
    except (KeyError, ImportError):
        return None
    return found


def _const_str(node: nodes.Node) -> str | None:
    return node.value if isinstance(node, nodes.Const) and isinstance(node.value, str) else None


_Reference = nodes.Include | nodes.Import | nodes.FromImport | nodes.Extends


def _references(ast: nodes.Template) -> Iterator[tuple[str, _Reference]]:
    for node in ast.find_all((nodes.Include, nodes.Import, nodes.FromImport, nodes.Extends)):
        if isinstance(node, nodes.Include):
            if not node.ignore_missing:
                yield "include", node
        elif isinstance(node, nodes.Import):
            yield "import", node
        elif isinstance(node, nodes.FromImport):
            yield "from", node
        elif isinstance(node, nodes.Extends):
            yield "extends", node


def _internals(attr: str) -> str:
    return f"'{attr}' is not allowed: templates cannot reach Python internals"


def _template_names(node: nodes.Expr) -> list[str]:
    """Constant template names of an include/import/extends; a list means "the first that exists"."""
    if isinstance(node, nodes.Const) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, (nodes.List, nodes.Tuple)):
        names = [_const_str(item) for item in node.items]
        return [n for n in names if n is not None] if all(n is not None for n in names) else []
    return []  # computed at render time: cannot be checked statically
