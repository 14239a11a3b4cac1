"""Request-rate limiting per PowerOffice subscription key, fair across tenants.

PowerOffice counts requests per *subscription key* (10/s by default), and one key serves every goods owner. So
there is one `RateLimiter` per key (`LimiterRegistry.for_key`), shared by every tenant that uses it.

Use: `grant = await limiter.acquire(tenant)`, send the request, then `limiter.release(grant)` when its answer (or
its failure) arrived, also on cancellation; after a 429, `limiter.throttled(grant, seconds)` before releasing.

Guarantees:
- **No more than the limit arrives at the server in any window.** The server counts a request when it *arrives*,
  which is some time between our start and the answer. So a grant holds its place in the window from its start
  until a full window after its answer (in flight it holds it for as long as it takes), and a new request starts
  only while fewer than `capacity` places are held. Any two requests that hold no place at the same time arrive
  a full window apart: no scheduling delay, CPU load or network jitter on the way can put more than `capacity`
  arrivals into one window. A token bucket, or a window anchored on starts, allows more.
- **Fair across tenants.** Each tenant has a FIFO queue; grants go round-robin over the tenants that are waiting,
  so a tenant with 50,000 queued requests delays a tenant with 3 by at most one slot per request.
- **Pause.** `pause(seconds)` stops every grant on the key until the pause is over (the caller caps it).
- **Backs off, then recovers (AIMD).** A 429 means someone else shares the key or the server's limit is lower
  than ours: `throttled()` pauses the key and halves its pace (at least 1 request per window). The pace grows
  back by one request per window to the configured limit. A 429 for a request started before the last cut
  answers the old pace, and cuts nothing more.

There is no background task: the first waiter to arrive becomes the *dispatcher*, waits for the next free place,
grants it to whoever's turn it is, and hands the dispatcher role to another waiter when its own turn comes. The
clock and the sleep function are injected, so tests run the limiter on virtual time without real sleeps.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

import anyio

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

# Slack on top of the window for what the anchoring cannot see (the server's clock ticking a little faster than
# ours, its window rounding). Costs 1% of the throughput at 10 rps.
DEFAULT_WINDOW_MARGIN = 0.01
# After a 429 the pace is multiplied by this (and rounded down, at least 1 per window) ...
DECREASE = 0.5
# ... and then grows back by one request per this many windows.
RECOVERY_WINDOWS = 1.0


@dataclass(eq=False, slots=True)
class Grant:
    """One request's place in the window: held from `started` until a window after `answered`."""

    tenant: str
    started: float
    answered: float | None = None  # None while the request is in flight


@dataclass(eq=False, slots=True)
class _Waiter:
    tenant: str
    grant: Grant | None = None
    wake: anyio.Event = field(default_factory=anyio.Event)


class RateLimiter:
    """At most `requests_per_second` request arrivals in any one-second window, served round-robin by tenant.

    A fractional rate is rounded down to whole requests per (stretched) window: 2.5 rps → 2 per second,
    0.5 rps → 1 per 2 seconds. Never exceeding the rate matters more than using every last fraction of it.
    """

    def __init__(
        self,
        requests_per_second: float,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = anyio.sleep,
        window_margin: float = DEFAULT_WINDOW_MARGIN,
    ) -> None:
        if not requests_per_second > 0:
            raise ValueError(f"requests_per_second must be positive, got {requests_per_second}")
        if window_margin < 0:
            raise ValueError(f"window_margin must not be negative, got {window_margin}")
        self.requests_per_second = float(requests_per_second)
        self.capacity = max(1, math.floor(requests_per_second + 1e-9))
        self.window = max(1.0, self.capacity / requests_per_second) + window_margin
        self._margin = window_margin
        self._clock = clock
        self._sleep = sleep
        self._held: deque[Grant] = deque()  # grants still holding a place, oldest start first
        self._paused_until = -math.inf
        self._cut_at = -math.inf  # when the pace was last cut after a 429
        self._cut_to = self.capacity  # the pace right after that cut
        self._answered = anyio.Event()
        self._queues: dict[str, deque[_Waiter]] = {}
        self._turns: deque[str] = deque()  # tenants with waiters, in round-robin order
        self._leader: _Waiter | None = None
        self.granted = 0
        self.throttles = 0
        self.waited = 0.0  # seconds all granted acquire() calls spent waiting (read by pipeline.metrics)

    def __repr__(self) -> str:
        return f"RateLimiter({self.requests_per_second:g} rps, waiting={self.waiting}, tenants={len(self._turns)})"

    @property
    def waiting(self) -> int:
        """How many acquire() calls are queued right now."""
        return sum(len(q) for q in self._queues.values())

    def pace(self) -> int:
        """How many requests may hold a place in the window right now (the limit, less any 429 cut)."""
        if self._cut_to >= self.capacity:
            return self.capacity
        since = self._clock() - max(self._cut_at, self._paused_until)
        grown = math.floor(max(0.0, since) / (self.window * RECOVERY_WINDOWS) + 1e-9)
        return min(self.capacity, self._cut_to + grown)

    def set_rate(self, requests_per_second: float) -> None:
        """Change the limit from the next grant on (a worker's share of the key, `pipeline.workers`). Places
        already held stay held for their window, so lowering the rate slows the next starts at once; a 429 cut in
        force stays (its pace still grows back, now towards the new limit)."""
        if not requests_per_second > 0:
            raise ValueError(f"requests_per_second must be positive, got {requests_per_second}")
        if requests_per_second == self.requests_per_second:
            return
        uncut = self._cut_to >= self.capacity
        self.requests_per_second = float(requests_per_second)
        self.capacity = max(1, math.floor(requests_per_second + 1e-9))
        self.window = max(1.0, self.capacity / requests_per_second) + self._margin
        self._cut_to = self.capacity if uncut else min(self._cut_to, self.capacity)
        self._answered.set()  # a dispatcher waiting for an answer looks again at the new limit

    def pause(self, seconds: float) -> None:
        """Grant nothing on this key for `seconds` from now (extends, never shortens, a running pause)."""
        self._paused_until = max(self._paused_until, self._clock() + max(0.0, seconds))

    def throttled(self, grant: Grant, seconds: float) -> None:
        """The server answered `grant`'s request with 429: pause the key for `seconds` and cut its pace."""
        self.throttles += 1
        self.pause(seconds)
        if grant.started > self._cut_at:
            pace = self.pace()
            self._cut_at = self._clock()
            self._cut_to = max(1, math.floor(pace * DECREASE))

    def release(self, grant: Grant) -> None:
        """The grant's request has its answer (or failed, or was cancelled): its place frees a window from now."""
        if grant.answered is None:
            grant.answered = self._clock()
            self._answered.set()

    async def acquire(self, tenant: str) -> Grant:
        """Wait for this tenant's turn and a free place, then return: the caller may start one request now.

        The caller must `release()` the grant when the request is over, however it ends; until then it holds
        its place. Cancellation while waiting gives the place up cleanly (and passes the dispatcher role on).
        """
        waiter = _Waiter(tenant)
        arrived = self._clock()
        queue = self._queues.get(tenant)
        if queue is None:
            queue = self._queues[tenant] = deque()
            self._turns.append(tenant)
        queue.append(waiter)
        try:
            while waiter.grant is None:
                if self._leader is None:
                    self._leader = waiter
                if self._leader is waiter:
                    await self._dispatch(waiter)
                else:
                    waiter.wake = anyio.Event()
                    await waiter.wake.wait()
            self.waited += self._clock() - arrived
        except BaseException:
            if waiter.grant is None:
                self._discard(waiter)
            else:
                self.release(waiter.grant)
            raise
        finally:
            if self._leader is waiter:
                self._leader = None
                self._hand_over()
        return waiter.grant

    def _ready_at(self, now: float) -> float | None:
        """When the next request may start; None when it must wait for an answer (every place is in flight)."""
        window = self.window
        self._held = deque(g for g in self._held if g.answered is None or g.answered + window > now)
        frees = sorted(g.answered + window for g in self._held if g.answered is not None)
        pace = self.pace()
        ready = self._paused_until
        need = len(self._held) - pace + 1  # places that must free before the next start
        if need <= 0:
            return ready
        if pace < self.capacity:  # the pace grows back by itself, which frees a place too
            step = max(ready, self._next_step(now))
            return step if need > len(frees) else max(ready, min(frees[need - 1], step))
        return None if need > len(frees) else max(ready, frees[need - 1])

    def _next_step(self, now: float) -> float:
        """When the cut pace next grows by one."""
        start = max(self._cut_at, self._paused_until)
        step = self.window * RECOVERY_WINDOWS
        return start + (math.floor(max(0.0, now - start) / step + 1e-9) + 1) * step

    async def _dispatch(self, me: _Waiter) -> None:
        """Grant places in turn order until `me` has one."""
        while me.grant is None:
            now = self._clock()
            ready = self._ready_at(now)
            if ready is None:
                self._answered = anyio.Event()
                await self._answered.wait()
                continue
            if ready > now:
                await self._sleep(ready - now)
                continue
            tenant = self._turns.popleft()
            queue = self._queues[tenant]
            chosen = queue.popleft()
            if queue:
                self._turns.append(tenant)
            else:
                del self._queues[tenant]
            chosen.grant = Grant(tenant, now)
            self._held.append(chosen.grant)
            self.granted += 1
            if chosen is not me:
                chosen.wake.set()

    def _discard(self, waiter: _Waiter) -> None:
        queue = self._queues.get(waiter.tenant)
        if queue is None or waiter not in queue:
            return
        queue.remove(waiter)
        if not queue:
            del self._queues[waiter.tenant]
            self._turns.remove(waiter.tenant)

    def _hand_over(self) -> None:
        """Make the waiter whose turn is next the dispatcher (if anyone is waiting)."""
        if not self._turns:
            return
        successor = self._queues[self._turns[0]][0]
        self._leader = successor
        successor.wake.set()


class LimiterRegistry:
    """One `RateLimiter` per subscription key. Keys are held only as hashes, and never shown."""

    def __init__(
        self,
        requests_per_second: float = 10.0,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = anyio.sleep,
        window_margin: float = DEFAULT_WINDOW_MARGIN,
    ) -> None:
        self.requests_per_second = requests_per_second
        self._clock = clock
        self._sleep = sleep
        self._margin = window_margin
        self._limiters: dict[str, RateLimiter] = {}

    def __repr__(self) -> str:
        return f"LimiterRegistry({self.requests_per_second:g} rps, keys={len(self._limiters)})"

    def for_key(self, subscription_key: str) -> RateLimiter:
        """The limiter every tenant on `subscription_key` shares (created on first use)."""
        digest = hashlib.sha256(subscription_key.encode()).hexdigest()
        limiter = self._limiters.get(digest)
        if limiter is None:
            limiter = self._limiters[digest] = RateLimiter(
                self.requests_per_second, clock=self._clock, sleep=self._sleep, window_margin=self._margin
            )
        return limiter


def max_in_window(times: Iterable[float], window: float = 1.0) -> int:
    """The largest number of `times` inside any half-open window `[t, t + window)`: the peak request rate."""
    ordered = sorted(times)
    best = 0
    lo = 0
    for hi, t in enumerate(ordered):
        while ordered[lo] <= t - window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best
