"""Reconcile against both fakes and a real SQLite log: each kind of difference is reported once with the right
fields; `--repair` fixes what it may through the normal senders; the next reconcile agrees."""

from __future__ import annotations

import dataclasses
import io
import json
import math
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from pipeline import audit, reconcile
from pipeline.config import Settings
from pipeline.eventlog.sqlite import SqliteEventLog
from pipeline.events import ReconcileRecorded
from pipeline.fakes.faults import Fault
from pipeline.fakes.world import FakeTenant, World, fake_world
from pipeline.runtime import Runtime

pytestmark = pytest.mark.anyio

NOW = datetime.now(UTC)


def fixed_clock() -> datetime:
    return NOW


@pytest.fixture
async def world() -> AsyncIterator[World]:
    async with fake_world(1, products=20, customers=8, invoices=20, now=NOW, requests_per_second=500) as w:
        yield w


def settings_for(world: World, tmp_path: Path) -> Settings:
    # Stock goes back from the first cycle (the fake warehouse holds no goods yet), so stock can be compared.
    return world.settings(tmp_path / "pipeline.db", requests_per_second=500, stock_back_before_first_receipt=True)


async def sync(settings: Settings) -> None:
    async with Runtime(settings, clock=fixed_clock) as runtime:
        report = await runtime.cycle()
    assert report.exit_code in (0, 1)


def by_issue(report: reconcile.ReconcileReport, kind: str, issue: str) -> dict[str, reconcile.Difference]:
    found: dict[str, reconcile.Difference] = {}
    for t in report.tenants.values():
        for d in t.differences:
            if d.kind == kind and d.issue == issue:
                assert d.key not in found, f"{kind} {issue} {d.key} reported twice"
                found[d.key] = d
    return found


def fields(d: reconcile.Difference) -> dict[str, tuple[Any, Any]]:
    return {f.field: (f.poweroffice, f.ongoing) for f in d.fields}


async def test_after_a_sync_both_systems_agree_and_the_run_is_recorded(world: World, tmp_path: Path) -> None:
    settings = settings_for(world, tmp_path)
    await sync(settings)
    report = await reconcile.run(settings, by="tester")
    assert [d.as_json() for t in report.tenants.values() for d in t.differences] == []
    assert report.exit_code == 0
    t = report.tenants[world.tenants[0].name]
    assert t.kinds["products"].checked > 0
    assert t.kinds["orders"].checked > 0
    assert t.kinds["stock"].checked > 0
    async with await SqliteEventLog.open(settings.database) as log:
        records = [e async for e in log.read(types=[ReconcileRecorded.TYPE])]
    assert len(records) == 1
    event = records[0].event
    assert isinstance(event, ReconcileRecorded)
    assert event.agreed is True
    assert event.by == "tester"
    assert event.counts["products"]["checked"] == t.kinds["products"].checked
    assert event.requests == t.requests
    assert event.requests["poweroffice"] > 0
    assert event.requests["ongoing"] > 0
    async with await SqliteEventLog.open(settings.database) as log:
        [row] = await audit.history(log, world.tenants[0].name, "reconcile")
    assert row.summary.startswith("reconcile by tester (products, orders, stock): agreed, repairs 0")


def tenant_of(world: World) -> FakeTenant:
    return world.tenants[0]


def pick_articles(world: World, t: FakeTenant) -> tuple[str, str, dict[str, Any]]:
    """Two synced article numbers with names, and a stock item product with an article (all different)."""
    owner = world.ongoing.owner(t.goods_owner_id)
    stock_item = next(
        p for p in t.company.products.values() if p.get("IsStockItem") and str(p.get("Code") or "") in owner.articles
    )
    named = [n for n, a in sorted(owner.articles.items()) if a.model.get("articleName") and n != stock_item["Code"]]
    return named[0], named[1], stock_item


async def break_things(world: World, t: FakeTenant, *, unrepairable: bool) -> dict[str, Any]:
    """Make each kind of difference once; returns what was done, for the assertions."""
    g = t.goods_owner_id
    edited, deleted, stock_item = pick_articles(world, t)
    po_name = world.ongoing.article(g, edited)["articleName"]  # type: ignore[index]
    world.ongoing.edit_article(g, edited, articleName="Edited by hand")
    world.ongoing.delete_article(g, deleted)
    world.poweroffice.set_stock(t.client_key, stock_item["Code"], 5)
    orders = sorted(world.ongoing.owner(g).orders)
    assert len(orders) >= 2, "the generated company should have at least two orders"
    world.ongoing.delete_order(g, orders[0])
    done: dict[str, Any] = {
        "edited": (edited, po_name),
        "deleted": deleted,
        "stock": (stock_item["Code"], world.ongoing.article(g, stock_item["Code"])["inventoryInfo"]["numberOfItems"]),  # type: ignore[index]
        "missing_order": orders[0],
    }
    if unrepairable:
        world.ongoing.add_article(g, "WAREHOUSE-ONLY", "Pallet wrap")
        started = world.ongoing.owner(g).orders[orders[1]]
        ours = started.model["orderInfo"]["deliveryDate"]
        started.model["orderInfo"]["deliveryDate"] = "2031-01-01"
        world.ongoing.set_order_status(g, orders[1], 300)
        done["started"] = (orders[1], ours)
    return done


async def test_each_difference_is_reported_once_with_its_fields(world: World, tmp_path: Path) -> None:
    settings = settings_for(world, tmp_path)
    t = tenant_of(world)
    await sync(settings)
    done = await break_things(world, t, unrepairable=True)

    report = await reconcile.run(settings)

    assert report.exit_code == 1
    edited, po_name = done["edited"]
    different = by_issue(report, "products", "different")
    assert set(different) == {edited}
    assert fields(different[edited]) == {"articleName": (po_name, "Edited by hand")}
    assert set(by_issue(report, "products", "missing")) == {done["deleted"]}
    assert set(by_issue(report, "products", "only_in_ongoing")) == {"WAREHOUSE-ONLY"}
    assert set(by_issue(report, "orders", "missing")) == {done["missing_order"]}
    assert by_issue(report, "orders", "different") == {}
    started_number, ours = done["started"]
    started = by_issue(report, "orders", "started")
    assert set(started) == {started_number}
    assert fields(started[started_number]) == {"deliveryDate": (ours, "2031-01-01")}
    code, figure = done["stock"]
    stock = by_issue(report, "stock", "different")
    assert set(stock) == {code}
    assert fields(stock[code]) == {"StockOnHand": (5, figure)}
    # A dry run appends the record and nothing else.
    assert all(r.appended == 0 for r in report.tenants.values())


async def test_repair_fixes_what_it_may_and_leaves_the_rest(world: World, tmp_path: Path) -> None:
    settings = settings_for(world, tmp_path)
    t = tenant_of(world)
    await sync(settings)
    done = await break_things(world, t, unrepairable=True)
    g = t.goods_owner_id
    writes_before = len(world.ongoing.writes(g))

    report = await reconcile.run(settings, repair=True)
    assert report.tenants[t.name].appended == 4  # edited, deleted, missing order, stock; not the other two
    assert len(world.ongoing.writes(g)) == writes_before  # reconcile itself writes nothing
    await sync(settings)

    after = await reconcile.run(settings)
    left = {(d.kind, d.issue, d.key) for d in after.tenants[t.name].differences}
    assert left == {("products", "only_in_ongoing", "WAREHOUSE-ONLY"), ("orders", "started", done["started"][0])}
    assert world.ongoing.article(g, "WAREHOUSE-ONLY") is not None
    assert world.ongoing.order(g, done["started"][0])["orderInfo"]["deliveryDate"] == "2031-01-01"  # type: ignore[index]
    assert world.ongoing.creations(g, done["missing_order"]) == 2  # created again, once


async def test_after_repair_and_a_cycle_the_next_reconcile_agrees(world: World, tmp_path: Path) -> None:
    settings = settings_for(world, tmp_path)
    t = tenant_of(world)
    await sync(settings)
    await break_things(world, t, unrepairable=False)
    assert (await reconcile.run(settings)).exit_code == 1

    repaired = await reconcile.run(settings, repair=True)
    assert repaired.tenants[t.name].appended == 4
    await sync(settings)

    again = await reconcile.run(settings)
    assert [d.as_json() for d in again.tenants[t.name].differences] == []
    assert again.exit_code == 0
    async with await SqliteEventLog.open(settings.database) as log:
        records = [e.event async for e in log.read(types=[ReconcileRecorded.TYPE])]
        assert [r.agreed for r in records if isinstance(r, ReconcileRecorded)] == [False, False, True]
        # Each repair command names the reconcile record as its cause.
        record_position = repaired.tenants[t.name].record_position
        assert record_position is not None
        caused = await log.caused_by([record_position])
        assert len(caused) == 4


async def test_requests_per_side_are_pages_plus_a_small_constant(tmp_path: Path) -> None:
    async with fake_world(1, products=230, customers=5, invoices=5, now=NOW, requests_per_second=500) as w:
        base = settings_for(w, tmp_path)
        settings = dataclasses.replace(
            base,
            poweroffice=dataclasses.replace(base.poweroffice, page_size=50),
            ongoing=dataclasses.replace(base.ongoing, page_size=50),
        )
        t = w.tenants[0]
        for product in t.company.products.values():
            w.ongoing.add_article(t.goods_owner_id, str(product["Code"]), str(product.get("Name") or ""))
        po_before, wms_before = len(w.poweroffice.requests_of(t.client_key)), len(w.ongoing.requests)

        report = await reconcile.run(settings, kinds=["products", "stock"])

        n = len(t.company.products)
        pages = math.ceil(n / 50)
        requests = report.tenants[t.name].requests
        # PowerOffice: the product pages (+1 when the last is full), one page of groups, one token.
        assert requests["poweroffice"] <= pages + 3
        assert requests["ongoing"] <= pages + 1
        # The counter agrees with what the fakes saw (the token call is not logged per client key).
        assert len(w.ongoing.requests) - wms_before == requests["ongoing"]
        assert len(w.poweroffice.requests_of(t.client_key)) - po_before <= requests["poweroffice"]
        assert report.tenants[t.name].kinds["products"].checked == n


async def test_command_prints_the_summary_grouped_fields_and_json_and_exits_by_agreement(
    world: World, tmp_path: Path
) -> None:
    from pipeline.cli import build_parser

    args = build_parser().parse_args(["reconcile", "--kind", "products", "--repair", "--json", "--since", "2026-01-01"])
    assert (args.kind, args.repair, args.json, args.since) == ("products", True, True, "2026-01-01")

    settings = settings_for(world, tmp_path)
    await sync(settings)
    t = tenant_of(world)
    out = io.StringIO()
    console = Console(file=out, width=200)
    assert (
        await reconcile.command(
            console, settings, tenant=None, kinds=reconcile.KINDS, since=None, repair=False, as_json=False
        )
        == 0
    )
    assert "PowerOffice and Ongoing agree" in out.getvalue()
    assert "requests: ongoing" in out.getvalue()

    number = sorted(world.ongoing.owner(t.goods_owner_id).articles)[0]
    world.ongoing.edit_article(t.goods_owner_id, number, articleName="Edited by hand")
    out.truncate(0)
    code = await reconcile.command(
        console, settings, tenant=t.name, kinds=["products"], since=None, repair=False, as_json=False
    )
    assert code == 1
    text = out.getvalue()
    assert f"{t.name} products articleName: 1" in text
    assert f'{number}: "' in text
    assert '"Edited by hand"' in text
    assert "dry run" in text

    out.truncate(0)
    out.seek(0)
    code = await reconcile.command(
        console, settings, tenant=t.name, kinds=["products"], since=None, repair=False, as_json=True
    )
    assert code == 1
    data = json.loads(out.getvalue())
    assert data["agreed"] is False
    [difference] = data["tenants"][t.name]["differences"]
    assert difference["key"] == number
    assert difference["fields"][0]["field"] == "articleName"
    assert difference["fields"][0]["ongoing"] == "Edited by hand"


async def test_an_order_created_before_the_window_is_found_by_number_not_reported_missing(
    world: World, tmp_path: Path
) -> None:
    settings = settings_for(world, tmp_path)
    await sync(settings)
    t = tenant_of(world)
    orders = world.ongoing.owner(t.goods_owner_id).orders
    old = sorted(orders)[0]
    orders[old].model["orderInfo"]["createdDate"] = "2001-01-01T00:00:00.000Z"  # outside the created-from listing
    before = len(world.ongoing.requests)

    report = await reconcile.run(settings, kinds=["orders"])

    assert report.exit_code == 0, [d.as_json() for d in report.tenants[t.name].differences]
    looked_up = [r for r in world.ongoing.requests[before:] if "orderNumbers=" in r.query]
    assert len(looked_up) == 1
    assert f"orderNumbers={old}" in looked_up[0].query


async def test_a_side_that_cannot_be_read_is_reported_and_recorded_and_the_run_exits_1(
    world: World, tmp_path: Path
) -> None:
    settings = settings_for(world, tmp_path)
    await sync(settings)
    t = tenant_of(world)
    world.ongoing.faults.add(Fault("status", status=403), method="GET", path="/articles", times=None)

    report = await reconcile.run(settings, repair=True)

    result = report.tenants[t.name]
    assert report.exit_code == 1
    assert result.error is not None
    assert "403" in result.error
    assert result.appended == 0  # nothing is repaired from half a picture
    async with await SqliteEventLog.open(settings.database) as log:
        [stored] = [e async for e in log.read(types=[ReconcileRecorded.TYPE])]
    assert isinstance(stored.event, ReconcileRecorded)
    assert stored.event.error == result.error
    assert stored.event.agreed is False


async def test_an_invoice_the_pollers_missed_is_reported_and_its_repair_is_the_observation(
    world: World, tmp_path: Path
) -> None:
    """A paid invoice whose balance change lies behind the poller's cursor (and its overlap) never reaches the log.
    Reconcile reads PowerOffice's invoices, observes it, reports its order missing; the repair appends the
    observation (with the poller's dedupe key), the projector makes the order, the sender delivers it."""
    settings = settings_for(world, tmp_path)
    t = tenant_of(world)
    await sync(settings)
    company = t.company
    template = next(
        i
        for i in company.invoices.values()
        if world.ongoing.order(t.goods_owner_id, str(i.get("OrderNo") or i.get("InvoiceNo"))) is not None
    )
    # Behind the poller's cursor (the latest balance change it read) by more than its overlap; after the floor.
    cursor = max(
        datetime.fromisoformat(i["BalanceLastChangedDateTimeOffset"].replace("Z", "+00:00"))
        for i in company.invoices.values()
    )
    behind = cursor - timedelta(minutes=10)
    assert world.orders_since is not None
    assert behind > world.orders_since
    backdated = behind.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    missed = world.poweroffice.add_invoice(
        t.client_key,
        {
            **{k: v for k, v in template.items() if k != "Id"},
            "InvoiceNo": 990001,
            "OrderNo": 990001,
            "BalanceLastChangedDateTimeOffset": backdated,
        },
        company.invoice_lines[template["Id"]],
    )
    await sync(settings)  # the poller reads from its cursor: it does not see the backdated invoice
    assert world.ongoing.order(t.goods_owner_id, "990001") is None

    report = await reconcile.run(settings, kinds=["orders"])
    missing = by_issue(report, "orders", "missing")
    assert set(missing) == {"990001"}
    assert missing["990001"].entity == f"invoice:{missing_id(missed)}"

    repaired = await reconcile.run(settings, kinds=["orders"], repair=True)
    assert repaired.tenants[t.name].appended == 1
    async with await SqliteEventLog.open(settings.database) as log:
        [observation] = [e async for e in log.read(entity=f"invoice:{missing_id(missed)}")]
        assert observation.causation == repaired.tenants[t.name].record_position
    await sync(settings)
    assert world.ongoing.order(t.goods_owner_id, "990001") is not None
    assert (await reconcile.run(settings, kinds=["orders"])).exit_code == 0


def missing_id(invoice: dict[str, Any]) -> str:
    return str(invoice["Id"])
