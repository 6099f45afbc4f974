"""Time as a dependency: the delivery stages read the clock and sleep through this.

Retries, pacing and digest schedules are all about time; injecting a :class:`Clock`
lets tests check a backoff schedule or a digest deadline without sleeping.
"""

from __future__ import annotations

import asyncio
import time


class Clock:
    """Wall-clock time (stored in the database, so it must survive restarts) and real sleeps."""

    def time(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    async def wait(self, event: asyncio.Event, timeout: float | None) -> bool:
        """Wait for ``event`` at most ``timeout`` seconds (``None``: forever); True if it was set."""
        if event.is_set():
            return True
        if timeout is None:
            await event.wait()
            return True
        try:
            await asyncio.wait_for(event.wait(), max(0.0, timeout))
        except TimeoutError:
            return False
        return True


class FakeClock(Clock):
    """A clock that only moves when something sleeps on it; every sleep is recorded."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def time(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    async def sleep(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        self.sleeps.append(seconds)
        self.now += seconds
        # Yield so other tasks run, as a real sleep would let them.
        await asyncio.sleep(0)

    async def wait(self, event: asyncio.Event, timeout: float | None) -> bool:
        # Let other tasks run first: they may set the event "before the timeout".
        for _ in range(3):
            if event.is_set():
                return True
            await asyncio.sleep(0)
        if timeout is None:
            await event.wait()
            return True
        await self.sleep(timeout)
        return event.is_set()
