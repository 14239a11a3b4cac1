"""End to end: PowerOffice refusing the stock write-back (403) is a tenant problem, reported as such (exit 2), with
nothing quarantined; the next cycle after the fix writes the stock back with no manual step."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from pipeline.eventlog.sqlite import SqliteEventLog
from pipeline.events import CommandFailed
from pipeline.fakes.faults import Fault
from pipeline.fakes.world import fake_world
from pipeline.runtime import Runtime

NOW = datetime.now(UTC)


@pytest.mark.anyio
async def test_rule4_a_refused_stock_write_is_a_tenant_problem_and_heals_next_cycle(tmp_path: Path) -> None:
    async with fake_world(1, products=10, customers=4, invoices=6, now=NOW, requests_per_second=1000) as world:
        # New articles hold 0 in the fake warehouse: write stock back at once, so the first cycle patches.
        settings = world.settings(
            tmp_path / "pipeline.db", requests_per_second=1000, stock_back_before_first_receipt=True
        )
        (t,) = world.tenants
        world.poweroffice.faults.add(Fault("status", status=403, body=b"{}"), method="PATCH", times=None)
        async with Runtime(settings, clock=lambda: NOW) as runtime:
            report = await runtime.cycle()
        assert report.exit_code == 2
        assert report.tenants[t.name].setup_error
        assert any("sender.poweroffice" in e for e in report.tenants[t.name].errors)
        async with await SqliteEventLog.open(settings.database) as log:
            failures = [s async for s in log.read(types=[CommandFailed.TYPE])]
        assert failures == []

        world.poweroffice.faults.clear()
        async with Runtime(settings, clock=lambda: NOW) as runtime:
            report = await runtime.cycle()
        assert report.exit_code == 0, report
        owner = world.ongoing.owner(t.goods_owner_id)
        stocked = [n for n in owner.articles if t.company.product_by_code(n).get("IsStockItem")]
        assert stocked
        for number in stocked:
            figure = owner.articles[number].model["inventoryInfo"]["numberOfItems"]
            assert t.company.product_by_code(number)["StockOnHand"] == figure, number
