"""The retry stage: one place decides what a failed send means and when to try again.

Backends only say *temporary* or *permanent* and why (:class:`DeliveryError`); this
stage owns the backoff: capped exponential with full jitter (a retry storm from many
destinations spreads out instead of synchronising), never earlier than a server's
``Retry-After``. The resulting ``next_attempt`` is stored with the delivery, so a
retry schedule survives a restart.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field

from fedmsg_notify.backend import BackendUnavailable, DeliveryError, Item

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one send attempt."""

    sent: bool
    permanent: bool = False
    reason: str = ""
    delay: float = 0.0


@dataclass(slots=True)
class RetryPolicy:
    """Capped exponential backoff with full jitter (AWS architecture blog, "Exponential Backoff And Jitter")."""

    base: float = 2.0
    cap: float = 900.0
    # A server asking for more than this is still obeyed, but only up to the cap's double:
    # a bogus ``Retry-After: 31536000`` must not park a destination for a year.
    max_retry_after: float = 3600.0
    rng: random.Random = field(default_factory=random.Random)

    def ceiling(self, attempts: int, cap: float | None = None) -> float:
        """The largest delay allowed after ``attempts`` failed attempts (1 = the first failure)."""
        limit = self.cap if cap is None else min(self.cap, cap)
        return min(limit, self.base * float(2 ** min(60, max(0, attempts - 1))))

    def delay(self, attempts: int, retry_after: float | None = None, cap: float | None = None) -> float:
        delay = self.rng.uniform(0.0, self.ceiling(attempts, cap))
        if retry_after is not None and retry_after > 0:
            delay = max(delay, min(retry_after, self.max_retry_after))
        return delay

    def classify(self, item: Item, attempts: int, error: BaseException, cap: float | None = None) -> Outcome:
        """Turn what ``send`` raised into an outcome; anything unexpected counts as temporary.

        ``cap`` is the backend's own ceiling (``Backend.retry_cap``), for destinations where
        checking again is cheap and waiting long is costly (a desktop after login).
        """
        if isinstance(error, DeliveryError):
            if not error.temporary:
                return Outcome(sent=False, permanent=True, reason=error.reason)
            return Outcome(sent=False, reason=error.reason, delay=self.delay(attempts, error.retry_after, cap))
        if isinstance(error, BackendUnavailable):
            # A missing library: installing it and restarting fixes this, so keep the work.
            return Outcome(sent=False, reason=str(error), delay=self.delay(attempts, cap=cap))
        if isinstance(error, TimeoutError):
            return Outcome(sent=False, reason="send timed out", delay=self.delay(attempts, cap=cap))
        # A backend bug must not lose the message or stall the destination forever: log it
        # with context (never the rendered text, which may be private) and retry later.
        log.error(
            "backend of %s raised %s delivering %s (item %d); treating it as temporary",
            item.destination,
            type(error).__name__,
            item.msg_id,
            item.id,
            exc_info=error,
        )
        return Outcome(
            sent=False, reason=f"unexpected {type(error).__name__}: {error}", delay=self.delay(attempts, cap=cap)
        )
