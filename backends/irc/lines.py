"""Turning a rendered message into IRC protocol lines that are safe and fit.

Pure functions, no I/O: what may reach the wire (never CR, LF or NUL), formatting
codes (kept, or stripped for ``+c`` channels), and the 512-byte limit of RFC 1459
§2.3, which counts the *relayed* line: other clients receive
``:nick!user@host PRIVMSG #chan :text\\r\\n``, so the prefix the server adds comes
out of the budget too.
"""

from __future__ import annotations

import re
import time

from fedmsg_notify.render.sanitize import one_line

from ..summary import describe_age

__all__ = ["age_suffix", "describe_age", "fit", "relay_budget", "wire_safe"]

# RFC 1459 §2.3: "IRC messages are always lines of characters terminated with a
# CR-LF pair, and these messages shall not exceed 512 characters in length,
# counting all characters including the trailing CR-LF".
MAX_LINE_BYTES = 512
# RFC 1035 names are at most 63 bytes per label and 253 in total, but IRC servers
# cap the host shown in a prefix at 63 (HOSTLEN in ircd-hybrid/solanum/ngircd).
MAX_HOST_BYTES = 63
# USERLEN is 10 on most servers; +1 for the "~" of an unverified ident.
MAX_USER_BYTES = 11
ELLIPSIS = "…"
CONTINUATION = "… "

# mIRC formatting codes (bold, colour, hex colour, reset, reverse, italic,
# strikethrough, underline, monospace) come from the trusted ``irc_color`` helper:
# the only control characters a line keeps. Every other one (CTCP's \x01, bell,
# escape, DEL, C1) is dropped; line breaks and NUL become a space first.
_FORMATTING = "\x02\x03\x04\x0f\x16\x1d\x1e\x1f\x11"
_CONTROLS = (chr(c) for c in [*range(0x20), *range(0x7F, 0xA0)])
_CONTROLS_RE = re.compile("[" + "".join(re.escape(ch) for ch in _CONTROLS if ch not in _FORMATTING) + "]")


def wire_safe(text: str) -> str:
    """``text`` with no character that could end, split or hijack a protocol line.

    The renderer already folds line breaks in line parts; this is the backend's
    own second line of defence, so a misbehaving template cannot inject commands.
    """
    return _CONTROLS_RE.sub("", one_line(text.replace("\x00", " "))).strip()


def relay_budget(command: str, target: str, nick: str, user: str | None, host: str | None) -> int:
    """Bytes left for the text of ``command target :text`` once the server relays it.

    ``user``/``host`` are what the server showed us for ourselves (our own JOIN
    echo); unknown ones are counted at the maximum a server lets them be.
    """
    user_len = len(user.encode()) if user else MAX_USER_BYTES
    host_len = len(host.encode()) if host else MAX_HOST_BYTES
    prefix = 1 + len(nick.encode()) + 1 + user_len + 1 + host_len  # ":nick!user@host"
    overhead = prefix + len(f" {command} {target} :".encode()) + len(b"\r\n")
    return MAX_LINE_BYTES - overhead


def _cut(text: str, limit: int) -> str:
    """The longest prefix of ``text`` that is at most ``limit`` bytes of UTF-8.

    Decoding with ``errors="ignore"`` drops a trailing partial sequence, so a
    multi-byte character is never cut in half.
    """
    return text.encode()[: max(limit, 0)].decode(errors="ignore")


def _split_point(piece: str, rest: str) -> int:
    """Where to break ``piece`` (the fitting head of a longer text): at the last space
    in its final third, so words stay whole, else right at its end."""
    if rest[:1] == " ":
        return len(piece)
    space = piece.rfind(" ")
    return space if space >= len(piece) * 2 // 3 else len(piece)


def fit(text: str, budget: int, *, split: bool = False, max_lines: int = 3) -> list[str]:
    """``text`` as one line of at most ``budget`` bytes, truncated with an ellipsis,
    or (``split``) as up to ``max_lines`` continuation lines, the last one truncated."""
    if budget < 16:
        raise ValueError(f"no room for text: {budget} bytes left of the {MAX_LINE_BYTES}-byte IRC line")
    if len(text.encode()) <= budget:
        return [text]
    lines: list[str] = []
    rest = text
    while rest:
        lead = CONTINUATION if lines else ""
        room = budget - len(lead.encode())
        last = not split or len(lines) + 1 >= max_lines
        if len(rest.encode()) <= room:
            lines.append(lead + rest)
            break
        if last:
            lines.append(lead + _cut(rest, room - len(ELLIPSIS.encode())).rstrip() + ELLIPSIS)
            break
        head = _cut(rest, room)
        at = _split_point(head, rest[len(head) :])
        lines.append(lead + head[:at].rstrip())
        rest = rest[at:].lstrip()
    return lines


def age_suffix(timestamp: float, now: float | None = None, *, threshold: float = 120.0) -> str:
    """" (3 min ago)" for a message older than ``threshold`` seconds, else ""."""
    if timestamp <= 0:
        return ""
    age = (time.time() if now is None else now) - timestamp
    if age < threshold:
        return ""
    return f" ({describe_age(age)} ago)"
