"""The one place that makes output injection impossible, for every backend.

Message content reaches a recipient only through template expressions
(``{{ ... }}``). The renderer passes every expression's value through
:func:`finalize`, which removes NUL and the C0/C1 control characters (keeping
``\\n`` and ``\\t`` for multi-line parts): content can therefore never carry IRC
formatting codes, terminal escapes or NULs. After rendering, :func:`finish_part`
makes every *line part* (IRC line, mail subject, popup summary, console line) a
single line — CR, LF, tabs, vertical space, NEL and U+2028/U+2029 fold to one
space — so content can never start a new IRC command or mail header, and no part
ever contains NUL or a lone CR.

Template *literal* text is trusted: a template may emit IRC formatting through
:func:`irc_color`, whose output is a :class:`Trusted` string that :func:`finalize`
lets through while still cleaning the text it wraps.

Backends use :func:`header_safe` (mail headers), :func:`strip_irc_formatting`
(channels with mode ``+c``) and :func:`plain_text` (no controls, keeps newlines).
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Collection, Mapping
from typing import Any

from markupsafe import Markup

# C0 controls except TAB and LF, DEL, and the C1 block. CR is removed from content
# too: a multi-line part uses LF only, and the backend adds CRLF where its protocol wants it.
_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")
# The JSON escape \ud800 decodes to a lone surrogate, which no backend can encode as UTF-8.
_SURROGATES = re.compile("[\ud800-\udfff]")
# Anything plain_text changes: the controls above (CR among them) and the surrogates.
_NEEDS_CLEANING = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")
# Everything a terminal, an IRC server or a mail parser may take as a line or field
# break (str.splitlines' set plus TAB): folded to one space in single-line parts.
_LINE_BREAKS = re.compile("[\t\n\v\f\r\x1c-\x1e\x85\u2028\u2029]+")
# Control characters other than the line breaks above; only NUL is dropped from
# template literal text, the rest is the template author's trusted formatting.
_NUL = "\x00"
# mIRC formatting: bold, colour (\x03 with up to two "fg[,bg]" numbers), hex colour
# (\x04 RRGGBB[,RRGGBB]), reset, monospace, reverse, italic, strikethrough, underline.
_IRC_FORMATTING = re.compile(
    r"\x03(?:\d{1,2}(?:,\d{1,2})?)?|\x04(?:[0-9a-fA-F]{6}(?:,[0-9a-fA-F]{6})?)?|[\x02\x0f\x11\x16\x1d\x1e\x1f]"
)
# Readable mIRC colours on both light and dark backgrounds (no white, black, greys).
_IRC_PALETTE = ("03", "04", "05", "06", "07", "09", "10", "11", "12", "13")
IRC_RESET = "\x0f"


class Trusted(str):
    """Text built by the renderer's own helpers (IRC colour codes); :func:`finalize` keeps it.

    Only helpers in this module create it; templates cannot construct one, and
    any string operation on it (slicing, ``~``, filters) returns a plain ``str``
    that is cleaned again.
    """

    __slots__ = ()


def plain_text(text: str) -> str:
    """Message content made inert: no NUL or control characters, newlines and tabs kept.

    Lone surrogates (from JSON escapes) become U+FFFD so every part encodes as UTF-8.
    """
    if type(text) is str and _NEEDS_CLEANING.search(text) is None:
        # The usual case, one C-speed scan: nothing below would change the text. This runs
        # for every expression of every rendered part.
        return text
    text = _CONTROLS.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    return _SURROGATES.sub("\ufffd", text)


def one_line(text: str) -> str:
    """``text`` on a single line: every run of line breaks or tabs (and the spaces around it) becomes one space."""
    # split + join rather than one regex with spaces on both sides of the break:
    # that regex backtracks quadratically over long runs of spaces in hostile content.
    pieces = (piece.strip(" ") for piece in _LINE_BREAKS.split(text))
    return " ".join(piece for piece in pieces if piece).strip()


def header_safe(text: str) -> str:
    """A mail header value that cannot be split into a second header by its content.

    RFC 2047 encoded words are defused too: Python's email package (before 3.11.10 /
    3.12.5, CVE-2024-6923) decodes ``=?utf-8?q?=0D=0ABcc:...?=`` in a value it is given
    and writes the decoded CR LF back out, which would start a real ``Bcc:`` header.
    A word joiner between ``=`` and ``?`` keeps the text readable and undecodable.
    """
    return one_line(plain_text(text)).replace("=?", "=\u2060?")


def strip_irc_formatting(text: str) -> str:
    """``text`` without mIRC colour and style codes (for channels that reject them, mode ``+c``)."""
    return _IRC_FORMATTING.sub("", text)


def finalize(value: Any) -> Any:
    """The jinja2 ``finalize`` hook: cleans the value of every ``{{ expression }}``.

    ``None`` prints as nothing (``{{ meta.link }}`` of a message without a link),
    other non-strings are converted first so that their ``str()`` is cleaned as
    well. :class:`Markup` (macros and ``{% set %}`` blocks in HTML parts, already
    escaped) keeps its type so it is not escaped twice.
    """
    if type(value) is str and _NEEDS_CLEANING.search(value) is None:
        return value  # the common case first: this runs for every expression rendered
    if value is None:
        return ""
    if isinstance(value, Trusted):
        return value
    if isinstance(value, Markup):
        return Markup(plain_text(str(value)))
    return plain_text(value if isinstance(value, str) else str(value))


def finalize_html(value: Any) -> Any:
    """``finalize`` for HTML parts: IRC codes mean nothing there, so nothing is trusted."""
    if type(value) is str and _NEEDS_CLEANING.search(value) is None:
        return value
    if isinstance(value, Trusted):
        return plain_text(str.__str__(value))
    return finalize(value)


def finish_part(text: str, *, line: bool) -> str:
    """Post-pass over one rendered part: never a NUL or lone CR; one line if ``line``."""
    text = text.replace(_NUL, "").replace("\r\n", "\n").replace("\r", "\n")
    if line:
        return one_line(text)
    return text.strip()


def finish_parts(
    parts: Mapping[str, str], *, line_parts: Collection[str], html_parts: Collection[str] = ()
) -> dict[str, str]:
    """Parts built outside templates (flood summaries, built-in digests) made as safe as rendered ones.

    Their text may quote message data (a topic's service name), so every non-HTML
    part is cleaned like expression output and every part gets :func:`finish_part`.
    """
    out: dict[str, str] = {}
    for part, text in parts.items():
        clean = text if part in html_parts else plain_text(text)
        out[part] = finish_part(clean, line=part in line_parts)
    return out


def irc_colour_code(key: str) -> str:
    """The mIRC colour number of ``key`` (a service name): stable across runs and hosts."""
    # crc32 rather than hash(): str hashes are salted per process.
    return _IRC_PALETTE[zlib.crc32(key.encode("utf-8", "replace")) % len(_IRC_PALETTE)]


# The same colours as on IRC (mIRC's palette), as HTML for Matrix's formatted_body.
_HTML_PALETTE = {"03": "#009300", "04": "#d40000", "05": "#7f0000", "06": "#9c009c", "07": "#e06c00",
                 "09": "#2e9e2e", "10": "#009393", "11": "#00a0a0", "12": "#0000fc", "13": "#c000c0"}


def html_color(key: Any) -> str:
    """``#rrggbb`` of ``key`` (a service name): the colour IRC shows it in, for ``<font color>``."""
    return _HTML_PALETTE[irc_colour_code("" if key is None else str(key))]


def irc_color(text: Any, service: str | None = None) -> Trusted:
    """``text`` coloured with the stable colour of ``service`` (or of ``text`` itself).

    ``{{ service | irc_color }}`` colours the service name; ``{{ meta.title |
    irc_color(service) }}`` colours the title. The text itself is cleaned first
    (and its own formatting codes removed), so content still cannot inject codes.
    """
    clean = one_line(plain_text("" if text is None else str(text)))
    if not clean:
        return Trusted("")
    code = irc_colour_code(service if service is not None else clean)
    # A leading digit in the text would be read as part of the colour number.
    separator = "\x02\x02" if clean[0].isdigit() or clean[0] == "," else ""
    return Trusted(f"\x03{code}{separator}{clean}{IRC_RESET}")


def irc_bold(text: Any) -> Trusted:
    """``text`` in bold (mIRC ``\\x02``), cleaned like :func:`irc_color`."""
    clean = one_line(plain_text("" if text is None else str(text)))
    return Trusted(f"\x02{clean}\x02") if clean else Trusted("")
