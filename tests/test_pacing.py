"""The pacing stage: a token bucket per account."""

from __future__ import annotations

import asyncio

import pytest
from fedmsg_notify.clock import FakeClock
from fedmsg_notify.pacing import TokenBucket


async def test_burst_goes_out_at_once_then_the_rate_applies() -> None:
    """After a burst, an IRC account sends at its rate instead of being kicked for flooding."""
    clock = FakeClock(0.0)
    bucket = TokenBucket(rate=2.0, burst=3, clock=clock)
    for _ in range(3):
        await bucket.take()
    assert clock.sleeps == []
    for _ in range(4):
        await bucket.take()
    assert clock.time() == pytest.approx(2.0)  # 4 more at 2/s
    assert all(s == pytest.approx(0.5) for s in clock.sleeps)


async def test_idle_time_refills_only_up_to_the_burst() -> None:
    """A quiet hour does not let an account send an hour's worth at once."""
    clock = FakeClock(0.0)
    bucket = TokenBucket(rate=1.0, burst=2, clock=clock)
    clock.advance(3600.0)
    assert [bucket.try_take() for _ in range(3)] == [0.0, 0.0, pytest.approx(1.0)]


def test_clock_stepping_back_does_not_drain_the_bucket() -> None:
    """An NTP step backwards does not stall deliveries."""
    clock = FakeClock(100.0)
    bucket = TokenBucket(rate=1.0, burst=1, clock=clock)
    clock.advance(-50.0)
    assert bucket.try_take() == 0.0


def test_per_horizon_and_bad_pace() -> None:
    """The coalescing threshold follows the pace, and a nonsensical pace is refused with the values."""
    assert TokenBucket(rate=0.5, burst=4, clock=FakeClock()).per(60.0) == 34
    with pytest.raises(ValueError, match="rate=0"):
        TokenBucket(rate=0, burst=1)


async def test_take_never_waits_for_a_sliver_below_the_clocks_resolution() -> None:
    """At a timestamp near 1e9 a float cannot add a 1e-14 s wait: the bucket must not wait for it forever."""
    clock = FakeClock(1_764_000_000.123)
    bucket = TokenBucket(rate=3.0, burst=1, clock=clock)
    for _ in range(3000):
        await asyncio.wait_for(bucket.take(), 5)
    # 3000 sends at 3/s: about 1000 s of (fake) time went by, not more and not less.
    assert 990 <= clock.time() - 1_764_000_000.123 <= 1001
