"""Keeping secrets out of logs and error messages, as a last line of defence.

Backends hold passwords and tokens as ``pydantic.SecretStr`` and never format them; this
module catches what slips through anyway. Secret values found in validated account
settings are remembered (:func:`register_secrets`) and every log record is scrubbed of
them, and of the password part of ``scheme://user:password@host`` URLs, when it is
created (:func:`install_log_redaction`) — so a library that logs a URL or echoes a
login line cannot put a password in the journal.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, SecretBytes, SecretStr

MASK = "***"
# Shorter "secrets" would redact ordinary words (and tell an attacker the length anyway).
MIN_SECRET = 4
# user:password@ inside a URL; the user name stays visible, it helps debugging.
_URL_PASSWORD = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s:/@]*:)(?P<pw>[^\s@/]+)(?=@)")
# Keys whose values are never echoed back in configuration errors.
SECRET_KEY = re.compile(r"pass(word)?|secret|token|(^|_)key(s)?$|credential|api_?key", re.IGNORECASE)

_secrets: set[str] = set()
_pattern: re.Pattern[str] | None = None


def register_secret(value: str | bytes | None) -> None:
    """Remember one secret value so that it is masked wherever it would be logged."""
    global _pattern
    if value is None:
        return
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    text = text.strip()
    if len(text) < MIN_SECRET or text in _secrets:
        return
    _secrets.add(text)
    # Longest first, so a secret containing another is masked whole.
    _pattern = re.compile("|".join(re.escape(s) for s in sorted(_secrets, key=len, reverse=True)))


def register_secrets(obj: Any) -> None:
    """Find every ``SecretStr``/``SecretBytes`` in a model (fields and private attributes) and register it."""
    for value in _walk(obj, depth=0):
        register_secret(value.get_secret_value())


def _walk(obj: Any, depth: int) -> Iterable[SecretStr | SecretBytes]:
    if depth > 8:
        return
    if isinstance(obj, (SecretStr, SecretBytes)):
        yield obj
    elif isinstance(obj, BaseModel):
        for name in type(obj).model_fields:
            yield from _walk(getattr(obj, name, None), depth + 1)
        for value in (obj.__pydantic_private__ or {}).values():
            yield from _walk(value, depth + 1)
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from _walk(value, depth + 1)
    elif isinstance(obj, (list, tuple, set, frozenset)):
        for value in obj:
            yield from _walk(value, depth + 1)


def redact(text: str) -> str:
    """``text`` with registered secrets and URL passwords replaced by ``***``."""
    if _pattern is not None:
        text = _pattern.sub(MASK, text)
    if "://" in text:
        text = _URL_PASSWORD.sub(lambda m: m.group("head") + MASK, text)
    return text


def is_secret_key(name: object) -> bool:
    """Whether a configuration key's name says it holds a secret (its value is never echoed)."""
    return isinstance(name, str) and bool(SECRET_KEY.search(name))


def install_log_redaction() -> None:
    """Scrub every log record as it is made, for every logger and handler (idempotent)."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "_fedmsg_notify_redacting", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: let logging report it as usual
            return record
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and record.exc_info[1] is not None:
            # Exceptions are formatted later by the handler; format (and scrub) them now.
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return record

    factory._fedmsg_notify_redacting = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)
