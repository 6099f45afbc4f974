"""What the Mastodon API tells us: instance limits, rate-limit headers, error responses; and the idempotency key."""

from __future__ import annotations

import email.utils
import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from fedmsg_notify.backend import DeliveryError, PermanentFailure, TemporaryFailure
from fedmsg_notify.backends.mastodon.text import DEFAULT_MAX_CHARACTERS, DEFAULT_URL_LENGTH
from fedmsg_notify.render.sanitize import plain_text

if TYPE_CHECKING:
    import httpx

# Waiting this long for a rate-limit window we know nothing about is a guess; a 429
# without Retry-After or X-RateLimit-Reset is rare.
DEFAULT_RETRY_AFTER = 60.0
# An error text from the server is shown in logs and `status`; keep it to one short line.
MAX_ERROR_TEXT = 300


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` (delta-seconds or HTTP-date, RFC 9110 10.2.3)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


def reset_seconds(value: str | None, now: float) -> float | None:
    """Seconds until ``X-RateLimit-Reset``: Mastodon sends ISO 8601; some servers epoch seconds."""
    if not value:
        return None
    value = value.strip()
    try:
        number = float(value)
    except ValueError:
        try:
            return max(0.0, datetime.fromisoformat(value).timestamp() - now)
        except ValueError:
            return None
    # A small number is a delta (some proxies send that), a large one an epoch time.
    return max(0.0, number - now) if number > 1e9 else max(0.0, number)


def idempotency_key(msg_id: str, destination: str, content: str = "") -> str:
    """Stable per (message, destination): the same across retries and daemon restarts.

    ``content`` is given for summaries, whose ``msg_id`` is made up by the engine
    (``coalesced:<first id>``): should such an id ever repeat within the server's key
    lifetime (an hour; e.g. after the state file was deleted), a different summary
    must not be mistaken for the earlier one and silently dropped.
    """
    digest = hashlib.sha256(f"{msg_id}\x00{destination}\x00{content}".encode()).hexdigest()
    return f"fedmsg-notify-{digest[:40]}"


@dataclass(frozen=True, slots=True)
class Limits:
    """What the instance allows, from its ``configuration.statuses``."""

    max_characters: int = DEFAULT_MAX_CHARACTERS
    url_length: int = DEFAULT_URL_LENGTH


def limits_from_instance(document: Any) -> Limits | None:
    """Read ``configuration.statuses`` of a v1 or v2 instance document; None if absent."""
    if not isinstance(document, dict):
        return None
    statuses = (document.get("configuration") or {}).get("statuses") or {}
    if not isinstance(statuses, dict):
        return None
    max_chars = statuses.get("max_characters")
    url_length = statuses.get("characters_reserved_per_url", DEFAULT_URL_LENGTH)
    if not isinstance(max_chars, int) or max_chars < 1:
        # Pre-3.x servers: only a bare "max_toot_chars" (Pleroma, glitch forks) or nothing.
        max_chars = document.get("max_toot_chars")
        if not isinstance(max_chars, int) or max_chars < 1:
            return None
    if not isinstance(url_length, int) or url_length < 0:
        url_length = DEFAULT_URL_LENGTH
    return Limits(max_characters=max_chars, url_length=url_length)


# --- Responses ----------------------------------------------------------------------


def error_text(response: httpx.Response) -> str:
    """The server's ``error`` (Mastodon's JSON error body), else the HTTP reason, on one line."""
    text = ""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        text = str(body.get("error") or "")
        if body.get("error_description"):
            text = f"{text}: {body['error_description']}" if text else str(body["error_description"])
    if not text:
        text = response.reason_phrase or "no error text"
    text = " ".join(plain_text(text).split())
    return text[:MAX_ERROR_TEXT]


def classify(response: httpx.Response, now: float) -> DeliveryError | None:
    """The delivery error a response means, or None for success."""
    status = response.status_code
    if 200 <= status < 300:
        return None
    reason = f"HTTP {status} from {response.request.url.host}: {error_text(response)}"
    if status == 429:
        # Both headers may be present; waiting for the later of the two means the
        # retry is not itself refused.
        waits = [
            wait
            for wait in (
                retry_after_seconds(response.headers.get("Retry-After"), now),
                reset_seconds(response.headers.get("X-RateLimit-Reset"), now),
            )
            if wait is not None
        ]
        return TemporaryFailure(reason, retry_after=max(waits) if waits else DEFAULT_RETRY_AFTER)
    if status == 408 or status >= 500:
        wait = retry_after_seconds(response.headers.get("Retry-After"), now)
        return TemporaryFailure(reason, retry_after=wait)
    if 300 <= status < 400:
        where = response.headers.get("Location", "?")
        return PermanentFailure(f"HTTP {status}: the instance address redirects to {where}; configure that instead")
    # 401 bad token, 403 suspended/forbidden, 422 validation, 404 wrong path: the same
    # request will fail the same way, so it is recorded rather than retried.
    return PermanentFailure(reason)
