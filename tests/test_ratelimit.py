"""RateLimiter: answer-anchored window, round-robin fairness, pauses, AIMD, cancellation; all on virtual time."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Awaitable, Callable

import anyio
import anyio.lowlevel
import pytest

from pipeline.clients.ratelimit import Grant, LimiterRegistry, RateLimiter, max_in_window


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


async def instant(limiter: RateLimiter, tenant: str) -> Grant:
    """A request whose answer arrives the moment it starts."""
    grant = await limiter.acquire(tenant)
    limiter.release(grant)
    return grant


async def grant_times(limiter: RateLimiter, time: VirtualTime, tenants: list[str]) -> list[tuple[str, float]]:
    """Start one acquire per entry of `tenants` (in that order) and record (tenant, grant time)."""
    grants: list[tuple[str, float]] = []

    async def one(tenant: str) -> None:
        await instant(limiter, tenant)
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
        await instant(limiter, "a")
    time.now = 0.9
    for _ in range(5):
        await instant(limiter, "a")
    await instant(limiter, "a")
    assert time.now == pytest.approx(1.0)
    for _ in range(4):
        await instant(limiter, "a")
    await instant(limiter, "a")  # the 16th: the five from 0.9 are in every window until 1.9
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
    await instant(limiter, "a")
    limiter.pause(2.5)
    limiter.pause(1.0)  # a shorter pause never cuts a running one short
    await instant(limiter, "b")
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
    await instant(limiter, "a")  # uses the only slot of the first second
    done: list[str] = []

    async def wait_for(tenant: str, scope: anyio.CancelScope | None = None) -> None:
        with scope or anyio.CancelScope():
            await instant(limiter, tenant)
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


class SimTime:
    """Discrete-event time: `sleep` waits for the clock, `run` moves it to the next deadline once every task has
    settled. Requests can take time (network, server) while the limiter waits, all without real sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self._sleepers: list[tuple[float, int, anyio.Event]] = []
        self._seq = 0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        event = anyio.Event()
        self._seq += 1
        self._sleepers.append((self.now + max(0.0, seconds), self._seq, event))
        await event.wait()

    async def run(self, *jobs: Callable[[], Awaitable[None]]) -> None:
        done = 0

        async def job(fn: Callable[[], Awaitable[None]]) -> None:
            nonlocal done
            await fn()
            done += 1

        async with anyio.create_task_group() as group:
            for fn in jobs:
                group.start_soon(job, fn)
            while done < len(jobs):
                # Let every runnable task run to its next wait (a wake-up chain here is a few hops long; the
                # asyncio backend of anyio.wait_all_tasks_blocked would poll with real 0.1 s sleeps instead).
                for _ in range(50):
                    await anyio.lowlevel.checkpoint()
                if done == len(jobs):
                    break
                assert self._sleepers, "deadlock: every task waits and nothing sleeps"
                self._sleepers.sort()
                deadline, _, event = self._sleepers.pop(0)
                self.now = max(self.now, deadline)
                event.set()


def jittered_traffic(
    limiter: RateLimiter, time: SimTime, rng: random.Random, *, anchor_on_start: bool
) -> tuple[list[Callable[[], Awaitable[None]]], list[float]]:
    """3 tenants x 4 workers x 10 requests; each request reaches the server 0-250 ms after it starts and its
    answer comes back 0-250 ms later. Returns the jobs and the list the server's arrival times go into."""
    arrivals: list[float] = []

    async def request(tenant: str) -> None:
        grant = await limiter.acquire(tenant)
        if anchor_on_start:  # what a start-anchored window did: the place frees a window after the start
            limiter.release(grant)
        await time.sleep(rng.uniform(0.0, 0.25))
        arrivals.append(time.now)
        await time.sleep(rng.uniform(0.0, 0.25))
        limiter.release(grant)

    def worker(tenant: str) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            for _ in range(10):
                await request(tenant)

        return run

    return [worker(t) for t in ("big", "mid", "small") for _ in range(4)], arrivals


@pytest.mark.anyio
@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_jittered_arrivals_never_exceed_the_limit(seed: int) -> None:
    """With 0-250 ms between our start and the server's arrival, the server never counts more than 10 in a second,
    because a place frees only a window after the answer. The same traffic on a start-anchored window does
    exceed it (so the scenario can tell), and the answer-anchored one still keeps most of the throughput."""
    time = SimTime()
    limiter = RateLimiter(10, clock=time.clock, sleep=time.sleep, window_margin=0)
    jobs, arrivals = jittered_traffic(limiter, time, random.Random(seed), anchor_on_start=False)
    await time.run(*jobs)
    assert len(arrivals) == 120
    assert max_in_window(arrivals) <= 10
    assert time.now <= 120 / 10 * 1.5  # each place is held one window plus at most 0.5 s of latency

    start_time = SimTime()
    naive = RateLimiter(10, clock=start_time.clock, sleep=start_time.sleep, window_margin=0)
    jobs, naive_arrivals = jittered_traffic(naive, start_time, random.Random(seed), anchor_on_start=True)
    await start_time.run(*jobs)
    assert max_in_window(naive_arrivals) > 10


@pytest.mark.anyio
async def test_a_request_in_flight_holds_its_place_until_a_window_after_its_answer() -> None:
    """At 2 rps, two requests still in flight after 5 s keep a third waiting; the first answer at 5 s lets it
    start at 6 s, one window later."""
    time = SimTime()
    limiter = RateLimiter(2, clock=time.clock, sleep=time.sleep, window_margin=0)
    started: list[float] = []

    async def slow() -> None:
        grant = await limiter.acquire("a")
        started.append(time.now)
        await time.sleep(5.0)
        limiter.release(grant)

    async def slower() -> None:
        grant = await limiter.acquire("a")
        started.append(time.now)
        await time.sleep(9.0)
        limiter.release(grant)

    async def third() -> None:
        await time.sleep(0.1)
        grant = await limiter.acquire("b")
        started.append(time.now)
        limiter.release(grant)

    await time.run(slow, slower, third)
    assert started == [0.0, 0.0, 6.0]


@pytest.mark.anyio
async def test_429_halves_the_pace_then_it_grows_back_one_per_window() -> None:
    """AIMD: after a 429 at 10 rps the key pauses, then allows 5, 6, 7, 8, 9 and again 10 starts per window."""
    time = VirtualTime()
    limiter = limiter_on(time, 10)
    first = [await instant(limiter, "a") for _ in range(10)]
    limiter.throttled(first[0], 1.0)
    assert limiter.pace() == 5
    grants = await grant_times(limiter, time, ["a", "b"] * 30)
    per_window = Counter(t for _, t in grants)
    assert [per_window[float(s)] for s in range(1, 8)] == [5, 6, 7, 8, 9, 10, 10]
    assert limiter.pace() == 10
    assert limiter.throttles == 1


@pytest.mark.anyio
async def test_429s_of_requests_started_before_the_cut_cut_nothing_more() -> None:
    """The other 429s of one overload (requests already in flight at the cut) pause, but halve the pace once."""
    time = VirtualTime()
    limiter = limiter_on(time, 10)
    first = [await instant(limiter, "a") for _ in range(10)]
    for grant in first:
        limiter.throttled(grant, 1.0)
    assert limiter.pace() == 5
    time.now = 1.0
    after = await instant(limiter, "a")  # started after the cut: its 429 answers the new pace
    limiter.throttled(after, 1.0)
    assert limiter.pace() == 2
    assert limiter.throttles == 11


@pytest.mark.anyio
async def test_pace_never_drops_below_one_request_per_window() -> None:
    """Repeated 429s slow a key down to one request per window, never to a standstill."""
    time = VirtualTime()
    limiter = limiter_on(time, 10)
    for _ in range(6):
        time.now += 0.01  # each 429 answers a request started after the previous cut
        limiter.throttled(Grant("a", time.now), 0.0)
    assert limiter.pace() == 1
    grants = await grant_times(limiter, time, ["a"] * 2)
    assert len(grants) == 2


@pytest.mark.anyio
async def test_release_is_idempotent_and_keeps_the_first_answer_time() -> None:
    """Releasing twice (a finally after an except) does not move the answer time, so the place frees on time."""
    time = VirtualTime()
    limiter = limiter_on(time, 1)
    grant = await limiter.acquire("a")
    limiter.release(grant)
    time.now = 0.5
    limiter.release(grant)
    assert grant.answered == 0.0
    await instant(limiter, "a")
    assert time.now == pytest.approx(1.0)
