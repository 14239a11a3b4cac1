"""`pipeline fakes --activity`: a seeded, clock-driven stream of changes that the real pipeline picks up."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pipeline.eventlog.sqlite import SqliteEventLog
from pipeline.fakes.activity import MAX_CATCH_UP, Activity, Change
from pipeline.fakes.world import fake_world
from pipeline.runtime import Runtime

NOW = datetime.now(UTC).replace(microsecond=0)
EVERY = timedelta(seconds=3)


async def story(seed: int, steps: int) -> list[tuple[str, str, str]]:
    async with fake_world(2, products=8, customers=4, invoices=12, now=NOW) as world:
        activity = Activity(world, NOW, seed=seed, every=EVERY)
        made = activity.tick(NOW + EVERY * (steps - 1))
        made += [c for i in range(steps) for c in activity.tick(NOW + EVERY * i)]  # nothing more is due
        return [(c.tenant, c.kind, c.words) for c in made]


@pytest.mark.anyio
async def test_the_same_seed_tells_the_same_story() -> None:
    """Same seed and world: the same changes in the same order; another seed: another story."""
    first = await story(2026, 10)
    assert len(first) == 10
    assert first == await story(2026, 10)
    assert first != await story(7, 10)
    assert first[0][1] == "malformed"


@pytest.mark.anyio
async def test_steps_follow_the_injected_clock() -> None:
    """A step is made when its time has come, never before; a long pause catches up a bounded number of steps."""
    async with fake_world(1, products=5, customers=2, invoices=4, now=NOW) as world:
        activity = Activity(world, NOW, every=EVERY)
        assert [c.kind for c in activity.tick(NOW)] == ["malformed"]
        assert activity.tick(NOW + timedelta(seconds=2.9)) == []
        assert len(activity.tick(NOW + EVERY)) == 1
        later = NOW + timedelta(hours=1)
        assert len(activity.tick(later)) == MAX_CATCH_UP
        assert activity.next_at == later + EVERY
        assert activity.tick(later + timedelta(seconds=1)) == []


@pytest.mark.anyio
async def test_the_pipeline_sees_the_world_move(tmp_path: Path) -> None:
    """After a first cycle, a minute of activity gives the next cycle prices, an order, stock going back and a
    malformed product that is quarantined as a mapping failure; a repair ends a quarantine."""
    async with fake_world(2, products=10, customers=4, invoices=20, now=NOW, requests_per_second=1000) as world:
        settings = world.settings(tmp_path / "p.db", requests_per_second=1000)
        activity = Activity(world, NOW, every=EVERY)
        async with Runtime(settings) as runtime:
            await runtime.cycle()
            before = await runtime.log.max_position()
            made: list[Change] = []
            for i in range(20):  # one minute at one change every 3 s
                made += activity.tick(NOW + EVERY * i)
            report = await runtime.cycle()
            log: SqliteEventLog = runtime.log
            types = {row[0] for row in await log.query("SELECT type FROM events WHERE position > ?", [before])}
        kinds = {c.kind for c in made}
        assert {"price", "payment", "stock", "malformed"} <= kinds, kinds
        assert {"article.upsert_requested", "order.upsert_requested", "stock.patch_requested"} <= types, types
        assert "mapping.failed" in types
        assert sum(r.delivered for r in report.tenants.values()) > 0
