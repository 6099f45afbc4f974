"""A status's text as Mastodon counts it: links at a fixed cost, mentions defused, cut at a word."""

from __future__ import annotations

import re
import unicodedata

# Mastodon's defaults (app/validators/status_length_validator.rb); the instance may
# advertise other values.
DEFAULT_MAX_CHARACTERS = 500
DEFAULT_URL_LENGTH = 23
ELLIPSIS = "…"
# What Mastodon treats as a link for length counting (its URL_PATTERN is twitter-text's
# URL regex restricted to http/https). Trailing sentence punctuation is not part of the
# URL there either; leaving it outside means we never count a character as "free" that
# the server counts.
URL_RE = re.compile(r"(?<![A-Za-z0-9@$#])https?://[^\s<>\"'`]+?(?=[.,;:!?)\]}'\"]*(?:\s|$))", re.IGNORECASE)
# twitter-text only takes a link whose host ends in a top-level domain; for others
# (localhost, a bare IP) the server counts every character, and so do we.
DOMAIN_RE = re.compile(r"^https?://(?:[^/?#@\s]*@)?[^/?#:\s]+\.[^\W\d_]{2,}\.?(?::\d+)?(?:[/?#]|$)", re.IGNORECASE)
# A mention (Account::MENTION_RE: "@user" or "@user@host" after a non-word character)
# would notify that user, or DM them on a "direct" post. Content from the bus must
# not do that: every "@" that could start one is defused (a superset of Mastodon's rule).
MENTION_RE = re.compile(r"(?<!\w)@(?=\w)")
HASHTAG_RE = re.compile(r"^\w+$", re.UNICODE)
# U+2060 WORD JOINER after "@" breaks Mastodon's mention regex yet renders as nothing.
MENTION_BREAK = "@\u2060"
# Zero-width joiner and emoji/text variation selectors: part of the character before them.
JOINERS = "\u200d\ufe0e\ufe0f"


def defuse_mentions(text: str) -> str:
    """Stop ``@user`` / ``@user@host`` in message content from notifying (or DMing) anyone."""
    return MENTION_RE.sub(MENTION_BREAK, text)


def status_length(text: str, url_length: int = DEFAULT_URL_LENGTH) -> int:
    """The length Mastodon's validator gives ``text``: a link counts ``url_length``.

    Mastodon counts grapheme clusters; counting code points instead can only
    over-count (a cluster is one or more code points), so a text that fits here fits there.
    """
    length = 0
    pos = 0
    for match in URL_RE.finditer(text):
        length += match.start() - pos + _url_cost(match.group(), url_length)
        pos = match.end()
    return length + len(text) - pos


def _url_cost(url: str, url_length: int) -> int:
    return url_length if DOMAIN_RE.match(url) else max(len(url), url_length)


def _cut_point(text: str, budget: int, url_length: int) -> int:
    """Largest index ``i`` such that ``text[:i]`` fits ``budget``, never inside a URL."""
    used = 0
    pos = 0
    for match in URL_RE.finditer(text):
        plain = match.start() - pos
        if used + plain >= budget:
            return pos + (budget - used)
        used += plain
        cost = _url_cost(match.group(), url_length)
        if used + cost > budget:
            # The link would not fit whole: a half link is worse than none.
            return match.start()
        used += cost
        pos = match.end()
    return min(len(text), pos + (budget - used))


def _clean_boundary(text: str, cut: int) -> str:
    """``text[:cut]`` moved back to a word boundary (if one is near) or a whole character."""
    if cut >= len(text):
        return text
    # Never separate a base character from its combining marks or a ZWJ sequence.
    while cut > 0 and (unicodedata.combining(text[cut]) or text[cut] in JOINERS or text[cut - 1] == "\u200d"):
        cut -= 1
    head = text[:cut]
    if not text[cut].isspace():
        space = max(head.rfind(" "), head.rfind("\n"))
        # Back off to the previous word only if that loses little; otherwise a very
        # long "word" (a hash, an NVR) would leave nothing at all.
        if space > 0 and cut - space <= max(20, cut // 3):
            head = head[:space]
    return head.rstrip(" \n,;:-")


def fit_status(text: str, limit: int, *, url_length: int = DEFAULT_URL_LENGTH, reserved: int = 0) -> str:
    """``text`` cut to ``limit - reserved`` Mastodon characters, keeping a trailing link whole.

    ``reserved`` is what the content warning already takes (Mastodon counts it too).
    A link at the very end (the template's ``meta.link``) is kept; the body before
    it is cut at a word boundary and marked with an ellipsis.
    """
    budget = limit - reserved
    if status_length(text, url_length) <= budget:
        return text
    for body, tail in _keep_options(text):
        tail_cost = status_length(tail, url_length) + 1 if tail else 0
        if tail_cost + len(ELLIPSIS) > budget:
            continue
        room = budget - tail_cost - len(ELLIPSIS)
        head = _clean_boundary(body, _cut_point(body, room, url_length)) if room > 0 else ""
        return f"{head}{ELLIPSIS} {tail}" if tail else f"{head}{ELLIPSIS}"
    return ELLIPSIS[:budget]


def _keep_options(text: str) -> list[tuple[str, str]]:
    """Ways to split ``text`` into (body to cut, tail kept whole), most kept first.

    The tail is the run of links and hashtags that ends the text (the template's
    ``meta.link``, the configured hashtags). When it does not fit, the last link
    alone is kept; failing that, nothing is.
    """
    stripped = text.rstrip()
    tail_start = len(stripped)
    last_link: re.Match[str] | None = None
    for token in reversed(list(re.finditer(r"\S+", stripped))):
        word = token.group()
        if URL_RE.fullmatch(word):
            last_link = last_link or token
        elif not (word.startswith("#") and HASHTAG_RE.match(word[1:])):
            break
        tail_start = token.start()
    options = []
    if tail_start < len(stripped):
        options.append((stripped[:tail_start].rstrip(), stripped[tail_start:]))
    if last_link is not None and last_link.span() != (tail_start, len(stripped)):
        options.append((stripped[: last_link.start()].rstrip(), last_link.group()))
    options.append((stripped, ""))
    return options
