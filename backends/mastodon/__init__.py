"""The Mastodon backend: posts on a microblog account (the successor of @fedora-firehose).

One rendered ``status`` part per message becomes one status (a "post"). What makes
this backend more than an HTTP POST:

* **Length as Mastodon counts it.** The instance's limit comes from
  ``GET /api/v2/instance`` (``/api/v1/instance`` on older servers), read once. Mastodon's
  ``StatusLengthValidator`` counts every http(s) URL as 23 characters
  (``characters_reserved_per_url``), counts only the ``@user`` part of a remote mention,
  and adds the content warning (``spoiler_text``) to the total. Text that does not fit
  is cut at a word boundary with an ellipsis and the trailing link is kept whole.
* **Text only.** Content from the bus is plain text: controls are stripped, the status
  is posted as ``text/plain`` (instances with Markdown/HTML posting honour that), and
  ``@user@host`` in message content is defused so the firehose never notifies or
  DMs anyone a message happens to name.
* **Never twice.** Every post carries an ``Idempotency-Key`` derived from
  (msg_id, destination): a retry after a timeout, or after a restart, returns the
  status the server already created instead of posting again.
* **Rate limits.** Default pace follows Mastodon's own limits; ``X-RateLimit-*`` headers
  and 429 ``Retry-After`` stop sending until the window resets, and the engine then
  coalesces the backlog through :meth:`MastodonBackend.summarise`.

The HTTP client is ``httpx`` (async, HTTP/1.1 keep-alive, precise timeouts), imported
lazily so that config validation works without the ``mastodon`` extra installed.

The package: ``settings`` (the account and a rule's options), ``text`` (counting and
fitting a status), ``api`` (instance limits, rate-limit headers, responses, idempotency
keys) and ``backend`` (:class:`MastodonBackend`: the client, the post, summaries).
"""

from __future__ import annotations

from fedmsg_notify.backends.mastodon.api import (
    Limits,
    classify,
    error_text,
    idempotency_key,
    limits_from_instance,
    reset_seconds,
    retry_after_seconds,
)
from fedmsg_notify.backends.mastodon.backend import MastodonBackend
from fedmsg_notify.backends.mastodon.settings import MastodonAccount, MastodonOptions, Visibility, instance_url
from fedmsg_notify.backends.mastodon.text import defuse_mentions, fit_status, status_length

__all__ = [
    "Limits",
    "MastodonAccount",
    "MastodonBackend",
    "MastodonOptions",
    "Visibility",
    "classify",
    "defuse_mentions",
    "error_text",
    "fit_status",
    "idempotency_key",
    "instance_url",
    "limits_from_instance",
    "reset_seconds",
    "retry_after_seconds",
    "status_length",
]
