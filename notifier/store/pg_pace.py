"""An account's pace shared by every daemon of a cluster: one token bucket row per account.

Each daemon used to pace an account with a bucket of its own, so two daemons sending
for one email account sent at twice its ``rate``. With a PostgreSQL store the bucket
is a row of ``pace_buckets`` (tokens left, when last refilled) and a daemon takes
tokens from it in small *grants*: one ``INSERT … ON CONFLICT DO UPDATE … RETURNING``
refills the row by the time passed (the database's clock, the one clock all hosts
share), takes up to ``grant`` whole tokens and says how many it took. The daemon
spends them locally and asks again when they are gone, so a fast account costs one
statement per ``grant`` sends, not one per send.

The bound, cluster-wide: in any ``T`` seconds at most ``burst + rate*T`` tokens leave
the row, and each daemon holds at most one unspent grant, so the sends in that window
are at most ``burst + rate*T + daemons*grant``. ``grant`` is a tenth of a second at the
account's pace (at least 1): an account with ``rate: 4`` takes one token per statement
and holds none.

If the database cannot be reached the daemon falls back to a local bucket paced at the
account's rate divided by the number of daemons alive at the last grant (their share),
and tries the row again after :data:`RETRY`. Sends need the database to be recorded
anyway, so this only covers a blip.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
from fedmsg_notify.clock import Clock
from fedmsg_notify.pacing import TokenBucket

log = logging.getLogger(__name__)

T = TypeVar("T")
Runner = Callable[[Callable[[psycopg.Connection[Any]], T]], T]

# How much of the account's pace one grant covers (seconds).
GRANT_SPAN = 0.1
# After the database failed a grant, how long the local fallback paces alone.
RETRY = 2.0
# A daemon whose heartbeat is older than this does not count for the fallback's share.
ALIVE = 10.0

_AVAILABLE = "LEAST(%(burst)s::float8, b.tokens + GREATEST(0, excluded.updated - b.updated) * %(rate)s::float8)"
_GRANT = f"LEAST(%(want)s::int, FLOOR({_AVAILABLE} + 1e-6)::int)"
_TAKE = f"""
INSERT INTO pace_buckets AS b (account, tokens, updated, granted)
VALUES (%(account)s, %(burst)s::float8 - %(want)s::int, extract(epoch FROM clock_timestamp()), %(want)s::int)
ON CONFLICT (account) DO UPDATE SET
    granted = {_GRANT},
    tokens = GREATEST(0, {_AVAILABLE} - {_GRANT}),
    updated = GREATEST(b.updated, excluded.updated)
RETURNING granted, tokens,
    (SELECT COUNT(*) FROM daemons d WHERE d.seen >= b.updated - %(alive)s) AS alive
"""


def grant_size(rate: float, burst: int) -> int:
    """Tokens per grant: :data:`GRANT_SPAN` at the pace, at least one, at most the burst."""
    return max(1, min(burst, math.floor(rate * GRANT_SPAN)))


def take_grant(db: psycopg.Connection[Any], account: str, rate: float, burst: int, want: int) -> tuple[int, float, int]:
    """Take up to ``want`` tokens from the account's row; (tokens granted, tokens left there, daemons alive)."""
    row = db.execute(_TAKE, {"account": account, "rate": rate, "burst": burst, "want": want, "alive": ALIVE}).fetchone()
    assert row is not None
    values = list(row.values()) if isinstance(row, dict) else list(row)
    return int(values[0]), float(values[1]), int(values[2])


class SharedBucket(TokenBucket):
    """The account's cluster-wide bucket: ``rate``, ``burst`` and :meth:`per` are the account's, for all daemons."""

    def __init__(self, account: str, rate: float, burst: int, run: Runner[Any], clock: Clock | None = None) -> None:
        super().__init__(rate, burst, clock)
        self.account = account
        self.run = run
        self.grant = grant_size(rate, burst)
        self.tokens = 0.0  # what this daemon holds of its last grant
        self.share = 1  # daemons alive at the last grant
        self.grants = 0  # statements run (for tests and the benchmark)
        self.fallback: TokenBucket | None = None
        self.fallback_until = 0.0
        self._lock = asyncio.Lock()

    def try_take(self) -> float:
        """Take a token (returns 0), else return how long until the row is likely to have one."""
        if self.tokens >= 1.0 - 1e-6:
            self.tokens = max(0.0, self.tokens - 1.0)
            return 0.0
        now = self.clock.time()
        if self.fallback is not None and now < self.fallback_until:
            return self.fallback.try_take()
        try:
            grant: tuple[int, float, int] = self.run(
                lambda db: take_grant(db, self.account, self.rate, self.burst, self.grant)
            )
        except (OSError, psycopg.Error) as exc:
            return self._fall_back(now, exc)
        granted, left, alive = grant
        if self.fallback is not None:
            log.info("account %s: paced cluster-wide again", self.account)
            self.fallback = None
        self.grants += 1
        self.share = max(1, alive)
        if granted >= 1:
            self.tokens = float(granted - 1)
            return 0.0
        return max(1e-3, (1.0 - left) / self.rate)

    def _fall_back(self, now: float, exc: BaseException) -> float:
        if self.fallback is None:
            share = max(1, self.share)
            log.warning(
                "account %s: cannot take from the shared pace (%s); pacing locally at 1/%d of it for now",
                self.account,
                str(exc).strip(),
                share,
            )
            self.fallback = TokenBucket(self.rate / share, max(1, self.burst // share), self.clock)
            # Start empty: the row may have been drained just before the database went away.
            self.fallback.tokens = 0.0
        self.fallback_until = now + RETRY
        return self.fallback.try_take()

    async def take(self) -> None:
        # One taker at a time per daemon: the account's destinations share its grants.
        async with self._lock:
            while (wait := self.try_take()) > 0:
                await self.clock.sleep(wait)
