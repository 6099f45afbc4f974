"""The pacing stage: a token bucket per account, so each server gets what it tolerates.

IRC networks kill clients that flood (ngircd, Libera: a few lines per second after a
short burst); Mastodon rate-limits per token. The bucket is per *account* because
that is what the server counts, and every destination of the account shares it.
"""

from __future__ import annotations

from fedmsg_notify.clock import Clock


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up; :meth:`take` waits for one."""

    def __init__(self, rate: float, burst: int, clock: Clock | None = None) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"pace needs rate > 0 and burst >= 1, got rate={rate} burst={burst}")
        self.rate = rate
        self.burst = burst
        self.clock = clock or Clock()
        self.tokens = float(burst)
        self.updated = self.clock.time()

    def _refill(self) -> None:
        now = self.clock.time()
        # max(): the wall clock can step backwards (NTP); never count that as negative time.
        self.tokens = min(float(self.burst), self.tokens + max(0.0, now - self.updated) * self.rate)
        self.updated = now

    def try_take(self) -> float:
        """Take a token if one is there (returns 0), else return how long until one is."""
        self._refill()
        # The epsilon: a wait shorter than the clock's resolution (a float of ~1e9 seconds)
        # would add nothing to it, and the bucket would wait for that sliver forever.
        if self.tokens >= 1.0 - 1e-6:
            self.tokens = max(0.0, self.tokens - 1.0)
            return 0.0
        return (1.0 - self.tokens) / self.rate

    async def take(self) -> None:
        while (wait := self.try_take()) > 0:
            await self.clock.sleep(wait)

    def per(self, seconds: float) -> int:
        """How many sends this pace allows within ``seconds`` (the coalescing horizon)."""
        return self.burst + int(self.rate * seconds)
