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

Beside this module: ``lookup`` (finding, loading and analysing templates; the
:class:`Renderer` is a :class:`~fedmsg_notify.render.lookup.TemplateLookup`),
``sandbox`` (the jinja2 environments and the helpers), ``template_check`` (what
``check`` reports about template files) and ``sanitize`` (the text rules every part passes).
"""

from __future__ import annotations

import html
import logging
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jinja2
from fedmsg_notify.backend import Backend
from fedmsg_notify.bus.envelope import MalformedMessage, Message, split_topic
from fedmsg_notify.config.yaml_positions import Problem
from fedmsg_notify.matching.rules import Route
from fedmsg_notify.meta.engine import Meta
from fedmsg_notify.render import sanitize
from fedmsg_notify.render.lookup import _LRU, SHIPPED_PREFIX, TemplateLookup, candidates
from fedmsg_notify.render.sandbox import RANGE_BUDGET, ago
from fedmsg_notify.render.template_check import check_templates

log = logging.getLogger(__name__)

# Re-exported: these used to live here.
__all__ = ["SHIPPED_PREFIX", "Renderer", "ago", "candidates"]

# Rendered parts of recent (template, message) pairs: enough for every destination
# of a burst of messages to share one rendering, small enough to never matter.
RENDER_CACHE_SIZE = 4096


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


class Renderer(TemplateLookup):
    """Renders messages and digests for backends; one per loaded configuration."""

    def __init__(self, template_dirs: Sequence[Path] = ()) -> None:
        super().__init__(template_dirs)
        self._flat_globals: dict[jinja2.Template, dict[str, Any]] = {}
        self._rendered = _LRU(RENDER_CACHE_SIZE)
        self._reported: set[tuple[str, int | None, str]] = set()

    def template_for(self, backend_cls: type[Backend], message: Message, route: Route) -> str | None:
        """The template name ``render`` starts from for this message and destination (for ``explain``)."""
        return self.resolve(backend_cls.name, message.parts.subtopic, route.template)

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
        return check_templates(self)


class _AllFailed(Exception):
    """Every template of a digest chain failed; the caller uses the built-in digest."""
