"""Intake while the storage fails: pause, count what is refused, resume by itself.

A full disk, a read-only remount or an I/O error must not kill the daemon: what is
already stored keeps being sent, and intake stops taking new work until a write
succeeds again. :class:`IntakeGuard` wraps the store's write of one batch:

* the first storage fault (:func:`~fedmsg_notify.store.faults.storage_fault`) pauses
  intake; systemd's status line says ``storage full since …``;
* while paused, a batch is retried at most once per ``probe_every`` seconds (the write
  itself is the probe: nothing else tells whether the next one fits); the others are
  refused at once and counted: a ZeroMQ subscriber cannot get them back, an AMQP
  consumer leaves them on the broker;
* the count is logged once a minute while it lasts, and once more when intake resumes.

Anything else raised by the write is a bug and propagates as before.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from fedmsg_notify import systemd
from fedmsg_notify.clock import Clock
from fedmsg_notify.store.faults import storage_fault

log = logging.getLogger(__name__)

T = TypeVar("T")


class IntakeGuard:
    def __init__(
        self,
        clock: Clock,
        *,
        on_fault: Callable[[str], None] | None = None,
        on_resume: Callable[[int], None] | None = None,
        probe_every: float = 1.0,
        log_every: float = 60.0,
    ) -> None:
        self.clock = clock
        self.on_fault = on_fault
        self.on_resume = on_resume
        self.probe_every = probe_every
        self.log_every = log_every
        self.fault: str | None = None
        self.since: float | None = None
        # Messages refused during the current fault, and over the daemon's life.
        self.refused = 0
        self.refused_total = 0
        self._last_probe = 0.0
        self._last_log = 0.0

    @property
    def paused(self) -> bool:
        return self.fault is not None

    async def run(self, write: Callable[[Sequence[T]], Awaitable[None]], batch: Sequence[T]) -> bool:
        """Store ``batch`` through ``write``; False (and counted) if the storage refused it."""
        now = time.monotonic()
        if self.fault is not None and now - self._last_probe < self.probe_every:
            self._refuse(len(batch), now)
            return False
        self._last_probe = now
        try:
            await write(batch)
        except Exception as exc:
            reason = storage_fault(exc)
            if reason is None:
                raise
            if self.fault is None:
                self._enter(reason, exc, now)
            self._refuse(len(batch), now)
            return False
        if self.fault is not None:
            self._resume()
        return True

    def _enter(self, reason: str, exc: BaseException, now: float) -> None:
        self.fault, self.since, self._last_log = reason, self.clock.time(), now
        stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.since))
        log.error("%s (%s): intake paused; queued deliveries are still being sent", reason, exc)
        systemd.status(f"{reason} since {stamp}; intake paused")
        if self.on_fault is not None:
            try:
                self.on_fault(reason)
            except Exception as cleanup:  # housekeeping may fail on the same storage
                log.warning("freeing space after '%s' failed: %s", reason, cleanup)

    def _refuse(self, count: int, now: float) -> None:
        self.refused += count
        self.refused_total += count
        if now - self._last_log >= self.log_every:
            self._last_log = now
            log.warning("%s: %d message(s) refused so far while intake is paused", self.fault, self.refused)

    def _resume(self) -> None:
        assert self.since is not None
        lasted = self.clock.time() - self.since
        log.warning(
            "storage writable again after %.0f s (%s); intake resumed; %d message(s) were refused meanwhile",
            lasted,
            self.fault,
            self.refused,
        )
        refused, self.refused, self.fault, self.since = self.refused, 0, None, None
        systemd.status("delivering")
        if self.on_resume is not None:
            self.on_resume(refused)
