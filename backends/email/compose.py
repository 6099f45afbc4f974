"""Building one mail from a rendered item: headers, MIME structure, threading.

The mail is an RFC 5322 ``multipart/alternative`` (text, then HTML) built with the
standard library's :class:`email.message.EmailMessage` under the ``SMTP`` policy, which
itself refuses CR/LF inside a header value. Every header value that comes from message
content is also folded to one line here first, so a bus message can never add a header
or a recipient (two independent defences).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.errors import HeaderParseError
from email.headerregistry import Address, AddressHeader
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from fedmsg_notify.backend import Item
from fedmsg_notify.render import sanitize

# Filterable headers repeat once per user or package; a message naming hundreds of
# packages (a mass rebuild) must not produce a header block larger than the body.
MAX_USERNAME_HEADERS = 10
MAX_PACKAGE_HEADERS = 20
MAX_CATEGORY_HEADERS = 20
# RFC 5322 2.1.1: a line must stay under 998 characters; folding handles long values,
# but a single header this long is noise, not information.
MAX_HEADER_VALUE = 400
# A subject is read in a one-line list view: RFC 5322 recommends lines under 78.
MAX_SUBJECT = 200

_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029\x85]+")


def header_safe(value: object, limit: int = MAX_HEADER_VALUE) -> str:
    """``value`` as one line of printable text, at most ``limit`` characters.

    :func:`fedmsg_notify.render.sanitize.header_safe` is the project's one guard; folding any
    remaining control character here too keeps this module safe on its own, so a
    header value taken from a bus message can never end the header and start another.
    """
    text = _CONTROL.sub(" ", sanitize.header_safe(str(value))).strip()
    if len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    return text


def parse_address(value: str, *, what: str, error: type[Exception] = ValueError) -> Address:
    """Exactly one mailbox (``Name <user@host>`` or ``user@host``), else ``error``."""
    if _CONTROL.search(value):
        raise error(f"'{what}' address {value!r} contains control characters")
    try:
        header = AddressHeader.value_parser(value)  # RFC 5322 address-list parser, no side effects
        mailboxes = header.all_mailboxes
        defects = list(header.all_defects)
    except (HeaderParseError, IndexError, ValueError):
        mailboxes, defects = [], []
    if len(mailboxes) != 1 or defects or not mailboxes[0].domain or not mailboxes[0].local_part:
        raise error(f"'{what}' must be one mail address like 'Name <user@example.org>', got {value!r}")
    box = mailboxes[0]
    return Address(display_name=box.display_name or "", username=box.local_part, domain=box.domain)


@dataclass(frozen=True, slots=True)
class Sender:
    """The account's ``from`` and the domain its Message-IDs and List-Ids live under."""

    address: Address
    domain: str

    @classmethod
    def from_header(cls, value: str) -> Sender:
        address = parse_address(value, what="from")
        # Message-IDs and List-Ids belong to the sending domain (RFC 5322 3.6.4, RFC 2919);
        # deriving them from the configured address keeps them stable across hosts.
        return cls(address=address, domain=address.domain)


def slug(text: str, limit: int = 60) -> str:
    """A List-Id label: lower-case letters, digits and dashes (RFC 2919 ``dot-atom-text``)."""
    out = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return out[:limit].strip("-") or "rule"


def _digest_hex(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode("utf-8", "surrogatepass")).hexdigest()[:32]


def message_id(item: Item, domain: str) -> str:
    """Stable per (message, destination): a retried delivery carries the same Message-ID."""
    return f"<{_digest_hex('message', item.msg_id, item.destination.key)}@{domain}>"


def object_key(item: Item) -> str | None:
    """What this message is about (one update, one build, one package), if it can tell.

    Preference: an explicit ``object`` in meta; the meta link without its fragment
    (an update's, a build's page — comments on it add ``#comment-3``); else the
    service and the one package concerned. Messages about several things do not thread.
    """
    meta = item.meta
    explicit = meta.get("object")
    if isinstance(explicit, str) and explicit:
        return f"{item.service}:{explicit}"
    link = meta.get("link")
    if isinstance(link, str) and link.startswith(("http://", "https://")):
        try:
            parts = urlsplit(link)
        except ValueError:
            # A link from the bus that urllib cannot parse ("http://[x"): thread by the
            # link's text instead of failing the mail.
            return f"{item.service}:link:{link.split('#', 1)[0]}"
        return urlunsplit((parts.scheme, parts.netloc.lower(), parts.path.rstrip("/"), parts.query, ""))
    packages = _strings(meta.get("packages"))
    if len(packages) == 1:
        return f"{item.service}:package:{packages[0]}"
    return None


def thread_id(key: str, domain: str) -> str:
    return f"<{_digest_hex('thread', key)}@{domain}>"


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, Iterable) and not isinstance(value, (bytes, Mapping)):
        return [v for v in value if isinstance(v, str) and v]
    return []


def _unique(values: Iterable[str], cap: int) -> list[str]:
    seen: dict[str, None] = {}
    for value in values:
        clean = header_safe(value, 200)
        if clean:
            seen.setdefault(clean, None)
        if len(seen) >= cap:
            break
    return list(seen)


# What the outbox calls a digest's service when its messages came from several.
MIXED_SERVICES = "various"


def services_of(item: Item) -> list[str]:
    """Every service a (digest) item covers: ``meta.services`` when the engine merged them."""
    found = [*_strings(item.meta.get("services")), item.service]
    return _unique([s for s in found if s != MIXED_SERVICES], MAX_CATEGORY_HEADERS)


def subject_of(item: Item) -> str:
    subject = header_safe(item.rendered.get("subject", ""), MAX_SUBJECT)
    if subject:
        return subject
    # A template without a subject block still says what happened, never "fedmsg notification".
    title = header_safe(item.meta.get("subtitle") or item.meta.get("title") or item.topic, MAX_SUBJECT)
    if item.count > 1:
        return header_safe(f"{item.count} updates: {', '.join(services_of(item))}", MAX_SUBJECT)
    return header_safe(f"[{item.service}] {title}", MAX_SUBJECT)


def compose(item: Item, sender: Sender, recipient: Address, *, now: datetime | None = None) -> EmailMessage:
    """The complete mail for ``item``, from ``sender`` to ``recipient``."""
    mail = EmailMessage(policy=SMTP)
    domain = sender.domain
    mail["From"] = sender.address
    mail["To"] = recipient
    mail["Subject"] = subject_of(item)
    # The event's own time keeps a retried mail identical; a digest carries its flush time.
    when = datetime.fromtimestamp(item.timestamp, UTC) if item.timestamp > 0 else (now or datetime.now(UTC))
    mail["Date"] = format_datetime(when)
    mail["Message-ID"] = message_id(item, domain)
    key = object_key(item) if item.count == 1 else None
    if key is not None:
        # The thread root is never sent: mail clients group by References alone, so every
        # mail about one update or build points at the same imaginary first message.
        root = thread_id(key, domain)
        mail["In-Reply-To"] = root
        mail["References"] = root
    rule = header_safe(item.rule, 120)
    mail["List-Id"] = f"{_quote_phrase(rule)} <{slug(rule)}.fedmsg-notify.{domain}>"
    # RFC 3834: automatic mail; vacation responders and mailing lists must not answer.
    mail["Auto-Submitted"] = "auto-generated"
    mail["Precedence"] = "bulk"
    if item.topic:  # a digest of several topics has none
        mail["X-Fedmsg-Topic"] = header_safe(item.topic)
    for service in services_of(item):
        mail["X-Fedmsg-Category"] = service
    for user in _unique(_strings(item.meta.get("usernames")), MAX_USERNAME_HEADERS):
        mail["X-Fedmsg-Username"] = user
    for package in _unique(_strings(item.meta.get("packages")), MAX_PACKAGE_HEADERS):
        mail["X-Fedmsg-Package"] = package
    mail["X-Fedmsg-Rule"] = rule
    if item.count > 1:
        mail["X-Fedmsg-Count"] = str(item.count)
    _set_body(mail, item)
    return mail


def _set_body(mail: EmailMessage, item: Item) -> None:
    text = item.rendered.get("text", "").strip() or subject_of(item)
    html = item.rendered.get("html", "").strip()
    mail.set_content(text + "\n")
    if html:
        mail.add_alternative(html + "\n", subtype="html")


def _quote_phrase(text: str) -> str:
    """A display phrase for List-Id: quoted-string with backslash escapes (RFC 5322 3.2.4).

    Non-ASCII names stay unquoted: the policy turns them into RFC 2047 encoded words,
    which may form a phrase but must not sit inside a quoted string.
    """
    if not text.isascii():
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
