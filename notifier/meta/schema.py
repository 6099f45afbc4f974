"""Metadata from fedora-messaging's schema packages, where they are installed.

A message from the AMQP bus names its schema in the ``fedora_messaging_schema`` header
(``bodhi.update.comment.v1``); the schema packages (entry-point group ``fedora.messages``:
``bodhi-messages``, ``koji-fedoramessaging-messages``, …) are the maintained description
of each service's messages, so their ``summary``, ``url``, ``app_icon``, ``agent_name``,
``usernames`` and ``packages`` are used as they are. No library, no schema package for the
name, or a schema that raises on this body: ``None``, and the caller falls back to the
service files, then the generic sentence.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Any

from fedmsg_notify.bus.envelope import UNPRINTABLE, Message

log = logging.getLogger(__name__)

SCHEMA_HEADER = "fedora_messaging_schema"
_MAX_TEXT = 1000
_MAX_NAMES = 200


@dataclass(frozen=True, slots=True)
class SchemaText:
    """What one schema class says about a message."""

    schema: str
    app_name: str | None
    summary: str
    url: str | None
    icon: str | None
    agent: str | None
    usernames: tuple[str, ...]
    packages: tuple[str, ...]


@functools.cache
def _library() -> Any:
    """``fedora_messaging.message``, or None when the library is not installed."""
    try:
        from fedora_messaging import message
    except ImportError:
        return None
    return message


@functools.lru_cache(maxsize=1024)
def schema_class(name: str) -> Any:
    """The schema class registered under ``name``, or None (no library, or an unknown schema)."""
    library = _library()
    if library is None:
        return None
    try:
        # get_class logs its own error for an unknown name: it is quieted, a miss is normal here.
        previous = library._log.level
        library._log.setLevel(logging.CRITICAL)
        try:
            cls = library.get_class(name)
        finally:
            library._log.setLevel(previous)
    except Exception:
        return None
    return None if cls is library.Message else cls


def _line(value: Any) -> str | None:
    """One printable line, bounded: schema text lands in IRC lines, subjects and popups."""
    if not isinstance(value, str) or not value.strip():
        return None
    return UNPRINTABLE.sub(" ", value).strip()[:_MAX_TEXT] or None


def _names(values: Any) -> tuple[str, ...]:
    if not isinstance(values, list | tuple | set):
        return ()
    out = [v for v in (_line(value) for value in list(values)[:_MAX_NAMES]) if v]
    return tuple(dict.fromkeys(out))


def schema_text(message: Message) -> SchemaText | None:
    """The schema's own text for an AMQP message, or None when no installed schema can give it."""
    headers = message.envelope.get("headers")
    if not isinstance(headers, dict):
        return None
    name = headers.get(SCHEMA_HEADER)
    if not isinstance(name, str):
        return None
    cls = schema_class(name)
    if cls is None:
        return None
    try:
        instance = cls(body=message.body, topic=message.topic, headers=dict(headers))
        summary = _line(instance.summary)
        if summary is None:
            return None
        return SchemaText(
            schema=name,
            app_name=_line(instance.app_name),
            summary=summary,
            url=_line(instance.url),
            icon=_line(instance.app_icon),
            agent=_line(instance.agent_name),
            usernames=_names(instance.usernames),
            packages=_names(instance.packages),
        )
    except Exception as exc:
        # A schema that does not expect this body: fall back, one line in the log, no traceback.
        log.info("schema %s could not describe message %s (%s: %s)", name, message.msg_id, type(exc).__name__, exc)
        return None


USER_HEADER = "fedora_messaging_user_"
PACKAGE_HEADER = "fedora_messaging_rpm_"


def header_names(message: Message) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The users and packages fedora-messaging put in the headers (``fedora_messaging_user_<name>: true``, …)."""
    headers = message.envelope.get("headers")
    if not isinstance(headers, dict):
        return (), ()
    users: list[str] = []
    packages: list[str] = []
    for name, value in headers.items():
        if value is not True or not isinstance(name, str):
            continue
        if name.startswith(USER_HEADER):
            users.append(name[len(USER_HEADER) :])
        elif name.startswith(PACKAGE_HEADER):
            packages.append(name[len(PACKAGE_HEADER) :])
    return _names(users[:_MAX_NAMES]), _names(packages[:_MAX_NAMES])
