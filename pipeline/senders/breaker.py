"""A circuit breaker per (stage, tenant): notice that a goods owner's system is down, and stop hammering it.

    breakers = Breakers(threshold=3, cooldown=60.0, max_cooldown=3600.0)   # one for the life of the process
    breaker = breakers.lane("sender.ongoing", "acme")

- **Closed** (normal): every command may go. Each command whose final answer is a transient failure (its retries
  used up: 5xx, 429, time-outs) counts one; a success, or an answer that shows the system works (a 4xx), resets
  the count.
- **Open**: after `threshold` transient failures in a row, nothing is sent for a cool-down. The commands wait in
  the log with no outcome (none is lost; the checkpoint stays below them) and the lane reports itself degraded.
- **Probe**: once the cool-down is over, one command goes alone. Success closes the breaker; a transient failure
  opens it again with the cool-down doubled, up to `max_cooldown`.

The state lives in memory for the life of the process (`Runtime` keeps one `Breakers`); a new process starts closed.
The clock is injected (monotonic seconds), so tests run on virtual time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(slots=True)
class CircuitBreaker:
    threshold: int = 3
    cooldown: float = 60.0
    max_cooldown: float = 3600.0
    clock: Callable[[], float] = time.monotonic
    failures: int = 0  # transient failures in a row
    open_until: float | None = None
    current_cooldown: float = 0.0
    probing: bool = False
    # No write may start before this: a write that got no answer may still be running at the server.
    settle_until: float = float("-inf")

    def admits(self) -> bool:
        """Whether a command may be sent now. When the cool-down is over this admits exactly one (the probe)."""
        if self.open_until is None:
            return True
        if self.probing or self.clock() < self.open_until:
            return False
        self.probing = True
        return True

    def succeeded(self) -> None:
        """The system answered as a working system would (delivered, or a 4xx about the command itself)."""
        self.failures = 0
        self.open_until = None
        self.current_cooldown = 0.0
        self.probing = False

    def failed(self) -> None:
        """A command's final answer was a transient failure."""
        self.failures += 1
        if self.probing or (self.open_until is None and self.failures >= self.threshold):
            grown = self.cooldown if self.current_cooldown == 0 else self.current_cooldown * 2
            self.current_cooldown = min(grown, self.max_cooldown)
            self.open_until = self.clock() + self.current_cooldown
            self.probing = False

    def neutral(self) -> None:
        """A command ended without saying anything about the system (a skip): a probe may go again."""
        self.probing = False

    @property
    def is_open(self) -> bool:
        return self.open_until is not None

    def describe(self) -> str:
        """Why the lane is degraded, for the summary."""
        left = max(0.0, (self.open_until or 0.0) - self.clock())
        return (
            f"{self.failures} transient failures in a row; sending paused (cool-down {self.current_cooldown:g} s,"
            f" {left:.0f} s left), then one command probes"
        )


@dataclass(slots=True)
class Breakers:
    """One `CircuitBreaker` per (stage, tenant), made on first use with these settings."""

    threshold: int = 3
    cooldown: float = 60.0
    max_cooldown: float = 3600.0
    clock: Callable[[], float] = time.monotonic
    _lanes: dict[tuple[str, str], CircuitBreaker] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.threshold < 1:
            raise ValueError("threshold must be at least 1")
        if self.cooldown <= 0 or self.max_cooldown < self.cooldown:
            raise ValueError("cooldown must be positive and max_cooldown at least cooldown")

    def lane(self, stage: str, tenant: str) -> CircuitBreaker:
        key = (stage, tenant)
        if key not in self._lanes:
            self._lanes[key] = CircuitBreaker(self.threshold, self.cooldown, self.max_cooldown, self.clock)
        return self._lanes[key]
