"""RateLimiter: sliding-window limit, round-robin fairness, pauses, cancellation; all on virtual time."""

from __future__ import annotations

from collections.abc import Callable

import anyio
import anyio.lowlevel
import pytest

from pipeline.clients.ratelimit import LimiterRegistry, RateLimiter, max_in_window


class VirtualTime:
    """A clock that only moves when the limiter sleeps: sleeping N seconds jumps N seconds ahead."""

    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)
        await anyio.lowlevel.checkpoint()


class ManualTime:
    """A clock moved by the test (`advance`); sleepers wake when it passes their deadline."""

    def __init__(self) -> None:
        self.now = 0.0
        self._sleepers: list[tuple[float, anyio.Event]] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        event = anyio.Event()
        self._sleepers.append((self.now + seconds, event))
        await event.wait()

    def advance(self, seconds: float) -> None:
        self.now += seconds
        for deadline, event in self._sleepers:
            if deadline <= self.now:
                event.set()
        self._sleepers = [(d, e) for d, e in self._sleepers if d > self.now]


async def settle(condition: Callable[[], bool]) -> None:
    """Let other tasks run until `condition` holds (bounded, never sleeps)."""
    for _ in range(1000):
        if condition():
            return
        await anyio.lowlevel.checkpoint()
    raise AssertionError("condition never became true")


def limiter_on(time: VirtualTime | ManualTime, rps: float) -> RateLimiter:
    return RateLimiter(rps, clock=time.clock, sleep=time.sleep, window_margin=0)


async def grant_times(limiter: RateLimiter, time: VirtualTime, tenants: list[str]) -> list[tuple[str, float]]:
    """Start one acquire per entry of `tenants` (in that order) and record (tenant, grant time)."""
    grants: list[tuple[str, float]] = []

    async def one(tenant: str) -> None:
        await limiter.acquire(tenant)
        grants.append((tenant, time.now))

    async with anyio.create_task_group() as group:
        for tenant in tenants:
            group.start_soon(one, tenant)
    return grants


@pytest.mark.anyio
async def test_never_more_than_the_limit_in_any_window() -> None:
    """35 requests at 10 rps start in whole windows of 10: no one-second window ever holds more than 10."""
    time = VirtualTime()
    limiter = limiter_on(time, 10)
    grants = await grant_times(limiter, time, ["a"] * 35)
    times = [t for _, t in grants]
    assert max_in_window(times) == 10
    assert times == [0.0] * 10 + [1.0] * 10 + [2.0] * 10 + [3.0] * 5


@pytest.mark.anyio
async def test_window_slides_rather_than_refilling_like_a_bucket() -> None:
    """After 10 starts at t=0 the 11th waits the full second (a token bucket would let it go at 0.1 s)."""
    time = VirtualTime()
    limiter = limiter_on(time, 10)
    for _ in range(5):
        await limiter.acquire("a")
    time.now = 0.9
    for _ in range(5):
        await limiter.acquire("a")
    await limiter.acquire("a")
    assert time.now == pytest.approx(1.0)
    for _ in range(4):
        await limiter.acquire("a")
    await limiter.acquire("a")  # the 16th: the five from 0.9 are in every window until 1.9
    assert time.now == pytest.approx(1.9)


@pytest.mark.anyio
async def test_tenants_are_served_round_robin() -> None:
    """A tenant with 3 requests queued behind another's 50 is done within the second window, not after 5 s."""
    time = VirtualTime()
    limiter = limiter_on(time, 10)
    grants = await grant_times(limiter, time, ["big"] * 50 + ["small"] * 3)
    small = [t for tenant, t in grants if tenant == "small"]
    big = [t for tenant, t in grants if tenant == "big"]
    assert len(small) == 3
    assert max(small) <= 1.0
    assert max(big) == pytest.approx(5.0)
    second_window = [tenant for tenant, t in grants if t == 1.0]
    assert second_window[:6] == ["big", "small", "big", "small", "big", "small"]
    assert max_in_window([t for _, t in grants]) == 10


@pytest.mark.anyio
async def test_pause_holds_every_tenant() -> None:
    """pause() after a 429 delays the next start on the key, whichever tenant asks."""
    time = VirtualTime()
    limiter = limiter_on(time, 10)
    await limiter.acquire("a")
    limiter.pause(2.5)
    limiter.pause(1.0)  # a shorter pause never cuts a running one short
    await limiter.acquire("b")
    assert time.now == pytest.approx(2.5)


@pytest.mark.anyio
async def test_fractional_rate_spreads_starts() -> None:
    """0.5 rps lets one request start every two seconds."""
    time = VirtualTime()
    limiter = limiter_on(time, 0.5)
    grants = await grant_times(limiter, time, ["a"] * 3)
    assert [t for _, t in grants] == [0.0, 2.0, 4.0]


@pytest.mark.anyio
async def test_margin_widens_the_window() -> None:
    """The window margin (slack for network jitter) delays the next window by exactly that much."""
    time = VirtualTime()
    limiter = RateLimiter(2, clock=time.clock, sleep=time.sleep, window_margin=0.05)
    grants = await grant_times(limiter, time, ["a"] * 3)
    assert [t for _, t in grants] == pytest.approx([0.0, 0.0, 1.05])


@pytest.mark.anyio
async def test_cancelled_dispatcher_hands_over() -> None:
    """Cancelling the waiter that dispatches passes the role on: the other tenant still gets its slot."""
    time = ManualTime()
    limiter = limiter_on(time, 1)
    await limiter.acquire("a")  # uses the only slot of the first second
    done: list[str] = []

    async def wait_for(tenant: str, scope: anyio.CancelScope | None = None) -> None:
        with scope or anyio.CancelScope():
            await limiter.acquire(tenant)
            done.append(tenant)

    async with anyio.create_task_group() as group:
        doomed = anyio.CancelScope()
        group.start_soon(wait_for, "a", doomed)
        await settle(lambda: limiter.waiting == 1)
        group.start_soon(wait_for, "b")
        await settle(lambda: limiter.waiting == 2)
        doomed.cancel()
        await settle(lambda: limiter.waiting == 1)
        time.advance(1.0)
    assert done == ["b"]
    assert limiter.waiting == 0
    assert limiter.granted == 2


def test_bad_rates_are_refused() -> None:
    """A zero or negative rate is a programming error."""
    with pytest.raises(ValueError):
        RateLimiter(0)
    with pytest.raises(ValueError):
        RateLimiter(-1)


def test_registry_shares_one_limiter_per_key_and_hides_keys() -> None:
    """The same subscription key gets the same limiter; another key its own; no key shows in repr."""
    registry = LimiterRegistry(10)
    first = registry.for_key("sub-key-secret-1")
    assert registry.for_key("sub-key-secret-1") is first
    assert registry.for_key("sub-key-secret-2") is not first
    assert "secret" not in repr(registry)
    assert "secret" not in repr(first)


def test_max_in_window_counts_half_open_windows() -> None:
    """The peak counts starts in [t, t+1): 10 at 0 and 10 at 1.0 are two windows of 10."""
    assert max_in_window([]) == 0
    assert max_in_window([0.0] * 10 + [1.0] * 10) == 10
    assert max_in_window([0.0, 0.5, 0.99, 1.2]) == 3
