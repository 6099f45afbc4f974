"""The environment templates run in: jinja2's immutable sandbox with size limits, and the helpers.

Two environments per renderer share one loader: text parts, and HTML parts with
autoescaping forced on (``|safe`` and ``{% autoescape %}`` disabled).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import jinja2
from fedmsg_notify.render import sanitize
from jinja2.exceptions import SecurityError
from jinja2.ext import Extension
from jinja2.lexer import TOKEN_BLOCK_BEGIN, TOKEN_NAME, Token, TokenStream
from jinja2.sandbox import ImmutableSandboxedEnvironment, modifies_known_mutable, safe_range
from markupsafe import Markup

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
