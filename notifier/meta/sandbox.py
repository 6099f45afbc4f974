"""The jinja2 sandbox service-file expressions run in, with typed slots.

A *slot* is any non-literal operand of ``~``: ``agent ~ " commented on " ~ update.title``
has two. A slot takes a non-empty string or a number, nothing else: a mapping, a list,
``None``, an undefined name or ``""`` raise :class:`SlotError`, the expression fails and
the engine falls back (the service's default, then the generic value) exactly as if
the value were missing. This is what keeps ``new FAS account: {'username': 'ralph'}``
off the firehose. Two deliberate exceptions: a conditional operand
(``(" for " ~ x if x else "")``) may be empty, the author chose that; and a nested
``~`` is checked where it is built.

A ``~`` chain is a *URL* when its first piece, evaluated, starts with ``http://`` or
``https://`` (``koji ~ "/buildinfo?buildID=" ~ id``); its slots are then percent-encoded
(path rules before a ``?``, query rules after), so a space-separated bodhi title or a
wiki page named ``What?`` still makes a working link, while a sentence that mentions
``rpms/foo`` is left alone.

Other differences from a stock sandbox: dict keys win over dict methods (``body.update``
is the key), undefined names chain (``body.a.b.c`` is simply undefined), and the text
filters ``string``, ``join``, ``lower``, ``upper``, ``title``, ``capitalize``, ``trim``
refuse mappings and lists instead of printing their repr.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from fedmsg_notify.meta.filters import FILTERS, SlotError, fas_user, names, nvr_name, startingwith
from fedmsg_notify.meta.generic import generic_agent, generic_link, generic_packages, generic_usernames
from jinja2 import ChainableUndefined, Template, Undefined, nodes
from jinja2.compiler import CodeGenerator, Frame, optimizeconst
from jinja2.sandbox import SandboxedEnvironment

__all__ = ["SlotError", "concat_slots", "make_environment", "slot"]


def _looks_like_repr(text: str) -> bool:
    return text.startswith(("{'", "['", '{"', '["')) or text in ("None", "[]", "{}", "()")


def slot(value: Any, lenient: bool = False) -> Any:
    """``value`` if it may fill a slot, else :class:`SlotError`; ``lenient`` also lets ``""`` through."""
    if isinstance(value, str):
        if value.strip():
            if _looks_like_repr(value):
                raise SlotError(f"a repr in a slot: {value[:40]!r}")
            return value
        if lenient:
            return value
        raise SlotError("an empty string in a slot")
    if isinstance(value, Undefined):
        if lenient:
            return ""
        raise SlotError("an undefined value in a slot")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    raise SlotError(f"a {type(value).__name__} in a slot")


# RFC 3986: what may stay unencoded in a whole URL, a path and a query value. "%" stays so
# that values already percent-encoded are not encoded twice.
_URL_SAFE = ":/?#[]@!$&'()*+,;=%~"
_PATH_SAFE = ":/@!$&'()*+,;=%~"
_QUERY_SAFE = ":/@!$'()*+,;%~"


def _encode(text: str, *, whole: bool, query: bool) -> str:
    text = text.strip()
    if whole:
        return quote(text, safe=_URL_SAFE)
    return quote(text, safe=_QUERY_SAFE if query else _PATH_SAFE)


# Kinds of ``~`` operands, decided at compile time (see _SlotCodeGenerator).
LITERAL, STRICT, CONDITIONAL, NESTED = "L", "S", "C", "N"


def concat_slots(pieces: tuple[Any, ...], kinds: str) -> str:
    """``a ~ b ~ c`` with typed slots; a chain whose first piece is an http(s) URL is built as a URL.

    In a URL every strict slot is percent-encoded for where it stands: the first piece as
    a whole URL, later ones as path segments until a literal ``?`` or ``#``, then as query
    values. Literal and conditional parts are the author's and stay as written.
    """
    texts = [
        str(slot(value, kind == CONDITIONAL) if kind in (STRICT, CONDITIONAL) else value)
        for value, kind in zip(pieces, kinds, strict=True)
    ]
    if not texts or not texts[0].lstrip().startswith(("http://", "https://")):
        return "".join(texts)
    out: list[str] = []
    query = False
    for index, (text, kind) in enumerate(zip(texts, kinds, strict=True)):
        piece = _encode(text, whole=index == 0, query=query) if kind == STRICT else text
        out.append(piece)
        query = query or "?" in piece or "#" in piece
    return "".join(out)


class _SlotCodeGenerator(CodeGenerator):
    """Compiles every ``~`` chain to :func:`concat_slots`, with each operand's kind."""

    @optimizeconst
    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        kinds = "".join(_kind(arg) for arg in node.nodes)
        self.write("environment.concat_slots((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write(f"), {kinds!r})")


def _kind(node: nodes.Node) -> str:
    if isinstance(node, nodes.Const):
        return LITERAL
    if isinstance(node, nodes.Concat):
        return NESTED
    return CONDITIONAL if isinstance(node, nodes.CondExpr) else STRICT


def _text_filter(transform: Callable[[str], str]) -> Callable[..., str]:
    """A text filter that gives ``""`` for nothing and refuses a mapping or list (no repr leaks)."""

    def apply(value: Any, *args: Any) -> str:
        if value is None or isinstance(value, Undefined):
            return ""
        if isinstance(value, (dict, list, tuple, set)):
            raise SlotError(f"a {type(value).__name__} given to a text filter")
        return transform(str(value), *args)

    return apply


def _identity(text: str) -> str:
    return text


def _trim(text: str, chars: str | None = None) -> str:
    return text.strip(chars)


def _join(value: Any, separator: str = "", attribute: str | None = None) -> str:
    if value is None or isinstance(value, Undefined):
        return ""
    if isinstance(value, (str, dict)):
        raise SlotError(f"join of a {type(value).__name__}")
    items = [item.get(attribute) if attribute and isinstance(item, dict) else item for item in value]
    return separator.join(str(slot(item)) for item in items)


_TEXT_FILTERS: dict[str, Callable[..., Any]] = {
    "string": _text_filter(_identity),
    "lower": _text_filter(str.lower),
    "upper": _text_filter(str.upper),
    "title": _text_filter(str.title),
    "capitalize": _text_filter(str.capitalize),
    "trim": _text_filter(_trim),
    "join": _join,
}


class MetaEnvironment(SandboxedEnvironment):
    """The sandbox, with typed slots and dict keys winning over dict methods.

    Messages are JSON objects whose keys include ``update``, ``items``, ``values``…;
    jinja2 normally prefers the attribute, so ``body.update`` would be ``dict.update``.
    JSON data has no useful methods, so for dicts we only ever look up keys.
    """

    code_generator_class = _SlotCodeGenerator
    concat_slots = staticmethod(concat_slots)

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


def first_user(value: Any) -> str | None:
    """The agent field's final value: the first username of a list, or the username itself."""
    if isinstance(value, (list, tuple)):
        value = next((item for item in value if item), None)
    if isinstance(value, dict):
        value = value.get("username") or value.get("name")
    return fas_user(value)


def as_text(value: Any) -> str | None:
    """A text field's final value: stripped text, or ``None`` for nothing and for non-scalars."""
    if value is None or isinstance(value, (Undefined, dict, list, tuple, bool)):
        return None
    text = str(value).strip()
    return text or None


@functools.cache
def make_environment() -> SandboxedEnvironment:
    """The one sandbox all engines share (its filters are fixed, so sharing is safe)."""
    # ChainableUndefined: ``body.update.builds`` on a message without ``update`` is simply
    # undefined (falsy, prints as ""), so expressions need no guard at every level.
    env = MetaEnvironment(undefined=ChainableUndefined, autoescape=False)
    env.filters.update(_TEXT_FILTERS)
    env.filters.update(FILTERS)
    env.tests["startingwith"] = startingwith
    # Internal helpers of the combined per-entry template (see service_files.combine).
    env.filters["_first_user"] = first_user
    env.filters["_text"] = as_text
    env.globals.update({"_generic_agent": generic_agent, "_generic_link": generic_link})
    env.globals.update({"_generic_usernames": generic_usernames, "_generic_packages": generic_packages})
    env.globals.update({"fas_user": fas_user, "nvr_name": nvr_name, "names": names})
    return env


@functools.cache
def shared_globals() -> dict[str, Any]:
    return dict(make_environment().globals)


Evaluator = Callable[..., Any]


# Compiling is the expensive part of loading (~2 ms per expression); engines built from
# the same files (the shipped ones, `check` after start-up, tests) share the results.
@functools.lru_cache(maxsize=8192)
def compiled_expression(source: str, undefined_to_none: bool) -> Evaluator:
    return make_environment().compile_expression(source, undefined_to_none=undefined_to_none)


@functools.lru_cache(maxsize=2048)
def compiled_template(source: str) -> Template:
    return make_environment().from_string(source)
