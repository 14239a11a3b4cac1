"""End to end under a fault script: 10% of calls answer 5xx, 5% answer 429, 2% time out, across full syncs of three
tenants. The final state of both fakes is exact, every order is created once, nothing stays quarantined or without
a terminal outcome, and retries stay bounded."""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pipeline.clients.http import RetryPolicy
from pipeline.config import Settings
from pipeline.eventlog.sqlite import SqliteEventLog
from pipeline.events import (
    COMMAND_TYPES,
    OUTCOME_TYPES,
    CommandFailed,
    CommandSkipped,
    CommandSucceeded,
    EntityRedriven,
)
from pipeline.fakes.faults import Fault, FaultScript
from pipeline.fakes.world import World, fake_world
from pipeline.runtime import CycleReport, Runtime
from tests.test_e2e_crash import check_final_state

NOW = datetime.now(UTC)
TIMEOUT = 0.25  # the clients' timeout here; a "time out" fault answers only after it
# Short waits keep the test fast; attempts and the other bounds are the production ones.
POLICY = RetryPolicy(wait_initial=0.005, wait_max=0.05, wait_jitter=0.005, rate_limit_wait=0.01)


@dataclass(slots=True)
class RandomFaults(FaultScript):
    """Each request, independently: `status_share` a 503, `throttle_share` a 429, `hang_share` no answer in time."""

    seed: int = 0
    status_share: float = 0.10
    throttle_share: float = 0.05
    hang_share: float = 0.02
    hits: Counter[str] = field(default_factory=Counter)
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def take(self, method: str, path: str) -> Fault | None:
        roll = self.rng.random()
        if roll < self.status_share:
            self.hits["5xx"] += 1
            return Fault("status", status=503)
        roll -= self.status_share
        if roll < self.throttle_share:
            self.hits["429"] += 1
            return Fault("status", status=429, retry_after="0")
        roll -= self.throttle_share
        if roll < self.hang_share:
            self.hits["timeout"] += 1
            return Fault("hang", seconds=TIMEOUT * 2)
        return None


def settings_for(world: World, tmp_path: Path) -> Settings:
    settings = world.settings(tmp_path / "pipeline.db", requests_per_second=1000)
    return dataclasses.replace(
        settings,
        poweroffice=dataclasses.replace(settings.poweroffice, timeout_seconds=TIMEOUT),
        ongoing=dataclasses.replace(settings.ongoing, timeout_seconds=TIMEOUT),
    )


async def cycle(settings: Settings) -> CycleReport:
    async with Runtime(settings, clock=lambda: NOW, policy=POLICY) as runtime:
        return await runtime.cycle()


def requests(world: World) -> int:
    return len(world.poweroffice.requests) + len(world.ongoing.requests)


WORLD = {"products": 30, "customers": 10, "invoices": 40, "now": NOW, "requests_per_second": 1000}


@pytest.mark.anyio
@pytest.mark.timeout(120)
async def test_full_sync_under_5xx_429_and_timeouts_ends_exact(tmp_path: Path) -> None:
    # The same sync without faults, for the request count to bound the retries against.
    async with fake_world(3, **WORLD) as clean:  # type: ignore[arg-type]
        assert (await cycle(settings_for(clean, tmp_path / "clean"))).exit_code == 0
        baseline = requests(clean)

    async with fake_world(3, **WORLD) as world:  # type: ignore[arg-type]
        po_faults, wms_faults = RandomFaults(seed=1), RandomFaults(seed=2, status_share=0.07)
        applied_then_failed = RandomFaults(seed=3, status_share=0.03, throttle_share=0.0, hang_share=0.0)
        world.poweroffice.faults = po_faults
        world.ongoing.faults = wms_faults
        world.ongoing.after_apply = applied_then_failed  # the other 3% of 5xx: the write was applied first
        settings = settings_for(world, tmp_path / "faults")
        reports = []
        for _ in range(6):
            reports.append(await cycle(settings))
            last = reports[-1]
            if last.exit_code == 0 and not any(t.waiting for t in last.tenants.values()):
                break
        assert reports[-1].exit_code == 0, reports[-1]
        check_final_state(world, settings)

        async with await SqliteEventLog.open(settings.database) as log:
            answered: dict[int, list[object]] = {}
            attempts = []
            async for stored in log.read(types=OUTCOME_TYPES):
                event = stored.event
                assert isinstance(event, CommandSucceeded | CommandFailed | CommandSkipped)
                answered.setdefault(event.command, []).append(event)
                if isinstance(event, CommandSucceeded | CommandFailed):
                    attempts.append(event.attempts)
            async for command in log.read(types=COMMAND_TYPES):
                outcomes = answered.get(command.position, [])
                assert any(isinstance(o, CommandSucceeded | CommandSkipped) for o in outcomes), (
                    f"{command.entity} at {command.position} has no success or skip: {outcomes}"
                )
            standing = await log.latest([CommandSucceeded.TYPE, CommandFailed.TYPE, EntityRedriven.TYPE])
            stuck = [e for e, s in standing.items() if isinstance(s.event, CommandFailed) and s.event.permanent]
            assert stuck == [], "quarantined"

        injected = po_faults.hits + wms_faults.hits + applied_then_failed.hits
        total = requests(world)
        sender_retries = sum(a - 1 for a in attempts)
        print(
            f"cycles={len(reports)} requests={total} baseline={baseline} faults={dict(injected)}"
            f" sender_retries={sender_retries} max_attempts={max(attempts)}"
        )
        assert max(attempts) <= POLICY.attempts
        assert sum(injected.values()) > 0
        assert total <= 2 * baseline, (total, baseline)

        # With the faults gone, one more cycle finds nothing to write.
        world.poweroffice.faults = FaultScript()
        world.ongoing.faults = FaultScript()
        world.ongoing.after_apply = FaultScript()
        # (A request the fault script made hang may be logged only when its answer is ready: count the others.)
        writes = len(world.ongoing.writes())
        patches = sum(1 for r in world.poweroffice.requests if r.method == "PATCH" and r.fault is None)
        assert (await cycle(settings)).exit_code == 0
        assert len(world.ongoing.writes()) == writes
        assert sum(1 for r in world.poweroffice.requests if r.method == "PATCH" and r.fault is None) == patches
