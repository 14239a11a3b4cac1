"""Request-rate limiting per PowerOffice subscription key, fair across tenants.

PowerOffice counts requests per *subscription key* (10/s by default), and one key serves every goods owner. So
there is one `RateLimiter` per key (`LimiterRegistry.for_key`), shared by every tenant that uses it.

Guarantees of `RateLimiter.acquire`:
- **No burst above the limit in any window.** The limiter remembers the start times of the last `capacity`
  grants and lets a new one start only once the oldest of them is a full window old. A token bucket would allow
  a full bucket plus the refill inside one second; this never does.
- **Fair across tenants.** Each tenant has a FIFO queue; grants go round-robin over the tenants that are waiting,
  so a tenant with 50,000 queued requests delays a tenant with 3 by at most one slot per request.
- **Pause.** `pause(seconds)` (after a 429) stops every grant on the key until the pause is over.

There is no background task: the first waiter to arrive becomes the *dispatcher*, sleeps until the next slot,
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

# The server measures arrival times, we measure grant times; a little slack keeps scheduling jitter between the
# two from turning into 429s. Costs 2% of the throughput at 10 rps.
DEFAULT_WINDOW_MARGIN = 0.02


@dataclass(eq=False, slots=True)
class _Waiter:
    tenant: str
    granted: bool = False
    wake: anyio.Event = field(default_factory=anyio.Event)


class RateLimiter:
    """At most `requests_per_second` request starts in any one-second window, served round-robin by tenant.

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
        self._clock = clock
        self._sleep = sleep
        self._starts: deque[float] = deque(maxlen=self.capacity)
        self._paused_until = -math.inf
        self._queues: dict[str, deque[_Waiter]] = {}
        self._turns: deque[str] = deque()  # tenants with waiters, in round-robin order
        self._leader: _Waiter | None = None
        self.granted = 0
        self.waited = 0.0  # seconds all granted acquire() calls spent waiting (read by pipeline.metrics)

    def __repr__(self) -> str:
        return f"RateLimiter({self.requests_per_second:g} rps, waiting={self.waiting}, tenants={len(self._turns)})"

    @property
    def waiting(self) -> int:
        """How many acquire() calls are queued right now."""
        return sum(len(q) for q in self._queues.values())

    def pause(self, seconds: float) -> None:
        """Grant nothing on this key for `seconds` from now (extends, never shortens, a running pause)."""
        self._paused_until = max(self._paused_until, self._clock() + max(0.0, seconds))

    async def acquire(self, tenant: str) -> None:
        """Wait for this tenant's turn and a free slot, then return: the caller may start one request now.

        Cancellation while waiting gives the place up cleanly (and passes the dispatcher role on).
        """
        waiter = _Waiter(tenant)
        arrived = self._clock()
        queue = self._queues.get(tenant)
        if queue is None:
            queue = self._queues[tenant] = deque()
            self._turns.append(tenant)
        queue.append(waiter)
        try:
            while not waiter.granted:
                if self._leader is None:
                    self._leader = waiter
                if self._leader is waiter:
                    await self._dispatch(waiter)
                else:
                    waiter.wake = anyio.Event()
                    await waiter.wake.wait()
            self.waited += self._clock() - arrived
        except BaseException:
            if not waiter.granted:
                self._discard(waiter)
            raise
        finally:
            if self._leader is waiter:
                self._leader = None
                self._hand_over()

    def _ready_at(self) -> float:
        ready = self._paused_until
        if len(self._starts) == self.capacity:
            ready = max(ready, self._starts[0] + self.window)
        return ready

    async def _dispatch(self, me: _Waiter) -> None:
        """Grant slots in turn order until `me` has one."""
        while not me.granted:
            now = self._clock()
            ready = self._ready_at()
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
            chosen.granted = True
            self._starts.append(now)
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
