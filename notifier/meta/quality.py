"""What makes a link work and a sentence readable: the checks every computed value must pass.

The engine uses them to reject a value and fall back to the next candidate; the property
tests and ``bench/text_quality.py`` use them to count what slipped through.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

# A host: DNS labels (or an IPv4 address), an optional port. IPv6 literals never appear
# in Fedora links and are refused rather than parsed.
_HOST = re.compile(
    r"^[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*(?::\d{1,5})?$"
)
# Characters that cannot appear unencoded in a working link (RFC 3986 §2: not reserved,
# not unreserved), plus whitespace of any kind.
_UNSAFE_IN_URL = re.compile(r"[\s{}<>\"\\^`|]")
_MAX_LINK = 4096


def valid_link(value: object) -> bool:
    """An absolute ``http(s)`` URL with a host and nothing that would break it when clicked."""
    if not isinstance(value, str) or not value or len(value) > _MAX_LINK:
        return False
    if _UNSAFE_IN_URL.search(value):
        return False
    try:
        parts = urlsplit(value)
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return False
    host = parts.netloc.rpartition("@")[2]
    return bool(_HOST.match(host))


# A sentence must not end on a word that needs an object, nor show what a template left
# behind: an empty slot, a Python repr, a literal None/undefined.
_DANGLING = frozenset(
    {"to", "for", "on", "in", "of", "by", "with", "from", "into", "at", "onto", "as", "the", "a", "an"}
    | {"and", "or", "about", "via", "than"}
)
_REPR = re.compile(r"\{'|\['|\[\]|\{\}|\(\)|\(\s|\s\)|\bNone\b|\bUndefined\b|''|\"\"|\s[,:;.]|[:,]$")


def sentence_problem(value: object) -> str | None:
    """Why ``value`` would read badly as a notification sentence, or ``None`` when it reads fine."""
    if not isinstance(value, str) or not value.strip():
        return "empty"
    if value != value.strip():
        return "leading or trailing space"
    if "  " in value:
        return "doubled space"
    match = _REPR.search(value)
    if match:
        return f"template residue {match.group(0)!r}"
    last = value.rsplit(None, 1)[-1].lower()
    if last in _DANGLING:
        return f"dangling {last!r}"
    return None
