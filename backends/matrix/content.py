"""What goes into a Matrix event, without I/O: addresses, event content, transaction ids.

Content from the bus reaches the room only as text: the plain ``body`` is cleaned of
control characters here (a second guard after the renderer), the ``formatted_body``
comes from an autoescaped template block, and a flood summary's HTML is escaped text.
"""

from __future__ import annotations

import hashlib
import html
import re
from typing import Literal
from urllib.parse import urlsplit

from fedmsg_notify.render.sanitize import plain_text

MsgType = Literal["m.notice", "m.text"]
# Matrix identifiers (spec "Appendices: Identifier Grammar"): sigil, localpart, ":", server name.
SERVER_NAME = r"[A-Za-z0-9.\-]+(?::\d{1,5})?|\[[0-9A-Fa-f:.]+\](?::\d{1,5})?"
USER_ID_RE = re.compile(rf"^@[a-z0-9._=\-/+]+:(?:{SERVER_NAME})$")
# Room version 12 ids carry no server name ("!<hash>"); older ones do.
ROOM_ID_RE = re.compile(rf"^![^\s:]+(?::(?:{SERVER_NAME}))?$")
ALIAS_RE = re.compile(rf"^#[^\s:]+:(?:{SERVER_NAME})$")
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
# A Matrix event may be 65536 bytes in all; leave room for the envelope the server adds.
MAX_BODY_BYTES = 30_000
ELLIPSIS = "…"


def homeserver_url(value: str) -> str:
    """https://host, or http on the loopback only (the access token travels in every request)."""
    parts = urlsplit(value.strip())
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError(f"homeserver must be a URL like https://fedora.ems.host, got '{value}'")
    if parts.scheme == "http" and parts.hostname not in LOCAL_HOSTS:
        raise ValueError(f"homeserver '{value}' must use https (http is allowed only for 127.0.0.1/localhost)")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"homeserver '{value}' must be a plain address without credentials, query or fragment")
    return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"


def destination_kind(to: str) -> Literal["room", "alias", "user"]:
    """Which of the three forms ``to`` is; :class:`ValueError` naming the forms if none."""
    if ROOM_ID_RE.match(to):
        return "room"
    if ALIAS_RE.match(to):
        return "alias"
    if USER_ID_RE.match(to):
        return "user"
    raise ValueError(f"{to!r} is not a Matrix room alias (#room:server), room id (!id:server) or user (@user:server)")


def clean_body(text: str) -> str:
    """The plain body: no control character but newline, no trailing space, cut to the event limit."""
    body = "\n".join(line.rstrip() for line in plain_text(text).replace("\t", " ").split("\n")).strip()
    return _cut(body)


def _cut(text: str) -> str:
    data = text.encode()
    if len(data) <= MAX_BODY_BYTES:
        return text
    return data[: MAX_BODY_BYTES - len(ELLIPSIS.encode())].decode(errors="ignore") + ELLIPSIS


def event_content(body: str, formatted: str, msgtype: MsgType) -> dict[str, str]:
    """An ``m.room.message`` content: plain body, and the HTML one when there is one."""
    content = {"msgtype": msgtype, "body": clean_body(body)}
    html_body = plain_text(formatted).strip()
    if html_body and len(html_body.encode()) <= MAX_BODY_BYTES:
        content["format"] = "org.matrix.custom.html"
        content["formatted_body"] = html_body
    return content


def summary_parts(line: str) -> dict[str, str]:
    """A flood summary line as both parts; the HTML is the same text, escaped."""
    return {"body": line, "html": f"<em>{html.escape(line)}</em>"}


def transaction_id(msg_id: str, destination: str, content: str = "") -> str:
    """Stable per (message, destination): a PUT retried after a crash is the same transaction.

    ``content`` is given for summaries, whose ``msg_id`` the engine makes up, so two
    different summaries never share an id (the server would drop the second one).
    """
    digest = hashlib.sha256(f"{msg_id}\x00{destination}\x00{content}".encode()).hexdigest()
    return f"fedmsg-notify.{digest[:40]}"
