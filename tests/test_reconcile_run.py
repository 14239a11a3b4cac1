"""`pipeline run` reconciles each tenant on a schedule (`reconcile_every_hours`) and shows what it found in the log,
`/metrics` and the status page; it repairs only with `reconcile_repair`."""

from __future__ import annotations

import dataclasses
import io
from datetime import UTC, datetime
from pathlib import Path

import pytest
from rich.console import Console

from pipeline.commands import run_forever
from pipeline.config import Settings
from pipeline.eventlog.base import NewEvent
from pipeline.eventlog.sqlite import SqliteEventLog
from pipeline.events import ReconcileRecorded
from pipeline.fakes.world import World, fake_world
from pipeline.runtime import TenantState
from pipeline.web import Status, create_app

pytestmark = pytest.mark.anyio

NOW = datetime.now(UTC)


def fixed_clock() -> datetime:
    return NOW


async def records(settings: Settings) -> list[ReconcileRecorded]:
    async with await SqliteEventLog.open(settings.database) as log:
        return [
            e.event async for e in log.read(types=[ReconcileRecorded.TYPE]) if isinstance(e.event, ReconcileRecorded)
        ]


async def run_cycles(settings: Settings, cycles: int, status: Status, between: object = None) -> list[TenantState]:
    states: list[TenantState] = []

    def cycled(state: TenantState) -> None:
        states.append(state)
        if callable(between):
            between(state)

    code = await run_forever(
        Console(file=io.StringIO()),
        settings,
        cycles=cycles,
        interval=0,
        clock=fixed_clock,
        status=status,
        cycled=cycled,
    )
    assert code == 0
    return states


def settings_for(world: World, tmp_path: Path, **changes: object) -> Settings:
    base = world.settings(tmp_path / "p.db", requests_per_second=1000, stock_back_before_first_receipt=True)
    return dataclasses.replace(base, status_port=0, **changes)  # type: ignore[arg-type]


async def test_run_reconciles_once_per_period_and_reports_differences(tmp_path: Path) -> None:
    async with fake_world(1, products=10, customers=4, invoices=10, now=NOW, requests_per_second=1000) as world:
        settings = settings_for(world, tmp_path)
        t = world.tenants[0]
        status = Status(settings.interval_seconds, fixed_clock)

        def after_first(state: TenantState) -> None:
            if state.cycles == 1:  # the warehouse edits an article by hand after the first reconcile
                number = sorted(world.ongoing.owner(t.goods_owner_id).articles)[0]
                world.ongoing.edit_article(t.goods_owner_id, number, articleName="Edited by hand")

        states = await run_cycles(settings, 2, status, after_first)
        # The first cycle reconciled (nothing recorded before); the second was within the 24 h.
        found = await records(settings)
        assert len(found) == 1
        assert found[0].agreed is True
        assert found[0].by == "pipeline run"
        assert states[0].reconcile_differences == {"products": 0, "orders": 0, "stock": 0}
        assert states[1].reconcile_differences == states[0].reconcile_differences  # kept from the last one

        # Another run a day later: due again, and it finds the edit (it repairs nothing by default).
        later = datetime.fromtimestamp(NOW.timestamp() + 25 * 3600, UTC)
        status = Status(settings.interval_seconds, lambda: later)
        code = await run_forever(
            Console(file=io.StringIO()), settings, cycles=1, interval=0, clock=lambda: later, status=status
        )
        assert code == 0
        found = await records(settings)
        assert [r.agreed for r in found] == [True, False]
        assert found[1].repairs == 0
        assert found[1].counts["products"]["different"] == 1
        state = status.states[t.name]
        assert state.reconcile_differences == {"products": 1, "orders": 0, "stock": 0}
        metrics = (await _get(status, "/metrics")).splitlines()
        assert f'pipeline_reconcile_differences{{kind="products",tenant="{t.name}"}} 1.0' in metrics
        assert "reconcile" in await _get(status, "/")


async def test_reconcile_every_hours_zero_turns_it_off(tmp_path: Path) -> None:
    async with fake_world(1, products=5, customers=3, invoices=5, now=NOW, requests_per_second=1000) as world:
        settings = settings_for(world, tmp_path, reconcile_every_hours=0.0)
        status = Status(settings.interval_seconds, fixed_clock)
        states = await run_cycles(settings, 1, status)
        assert await records(settings) == []
        assert states[0].reconcile_differences is None


async def test_reconcile_repair_true_appends_repairs_the_next_cycle_sends(tmp_path: Path) -> None:
    async with fake_world(1, products=10, customers=4, invoices=10, now=NOW, requests_per_second=1000) as world:
        settings = settings_for(world, tmp_path, reconcile_repair=True, reconcile_every_hours=0.0001)
        t = world.tenants[0]
        status = Status(settings.interval_seconds, fixed_clock)
        deleted: list[str] = []

        def between(state: TenantState) -> None:
            if state.cycles == 1:
                victim = sorted(world.ongoing.owner(t.goods_owner_id).articles)[0]
                world.ongoing.delete_article(t.goods_owner_id, victim)
                deleted.append(victim)

        clock = [NOW]

        def ticking() -> datetime:  # a second per reading: every cycle's reconcile is due (period 0.36 s)
            clock[0] = datetime.fromtimestamp(clock[0].timestamp() + 1, UTC)
            return clock[0]

        code = await run_forever(
            Console(file=io.StringIO()),
            settings,
            cycles=3,
            interval=0,
            clock=ticking,
            status=status,
            cycled=between,
        )
        assert code == 0
        found = await records(settings)
        assert [(r.agreed, r.repairs) for r in found] == [(True, 0), (False, 1), (True, 0)]
        assert world.ongoing.article(t.goods_owner_id, deleted[0]) is not None


async def _get(status: Status, path: str) -> str:
    from aiohttp.test_utils import TestClient, TestServer

    async with TestClient(TestServer(create_app(status))) as client:
        response = await client.get(path)
        return await response.text()


async def test_a_reconcile_that_could_not_read_a_side_is_tried_again_next_cycle(tmp_path: Path) -> None:
    async with fake_world(1, products=5, customers=3, invoices=5, now=NOW, requests_per_second=1000) as world:
        settings = settings_for(world, tmp_path)
        t = world.tenants[0]
        async with await SqliteEventLog.open(settings.database, clock=fixed_clock) as log:
            failed = ReconcileRecorded(
                by="pipeline run",
                kinds=["products"],
                window_from=None,
                mapping_version=1,
                repair=False,
                agreed=False,
                counts={},
                error="ApiError: Ongoing answered 503",
            )
            await log.append([NewEvent(t.name, "reconcile", failed, "earlier-failure")])
        status = Status(settings.interval_seconds, fixed_clock)
        states = await run_cycles(settings, 1, status)
        found = await records(settings)
        assert [r.error is None for r in found] == [False, True]  # within the 24 h, but the last one failed
        assert states[0].reconcile_differences == {"products": 0, "orders": 0, "stock": 0}


async def test_a_cycle_cut_by_its_deadline_does_not_reconcile(tmp_path: Path) -> None:
    """A cycle that reached its deadline left deliveries for the next one, so comparing the two sides then would
    only report what is still on its way (and the next reconcile would be a day off). It waits for a cycle that
    did its work: that one reconciles, and agrees."""
    import anyio

    from pipeline.runtime import Runtime

    async with fake_world(1, products=10, customers=4, invoices=10, now=NOW, requests_per_second=1000) as world:
        settings = settings_for(world, tmp_path)
        states: list[TenantState] = []
        async with Runtime(settings, clock=fixed_clock, command="run") as runtime:
            await runtime.run(anyio.Event(), cycles=1, deadline=0, on_cycle=states.append)
            assert states[-1].report is not None
            assert states[-1].report.deadline_reached
            assert states[-1].reconcile_differences is None
            assert await records(settings) == []
            await runtime.run(anyio.Event(), cycles=3, interval=0, on_cycle=states.append)
        done = [s for s in states if s.report is not None and not s.report.deadline_reached]
        assert done
        found = await records(settings)
        assert len(found) == 1
        assert found[0].agreed is True
