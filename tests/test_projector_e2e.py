"""The projector's rules of issue 8 through the real pipeline (Runtime, clients, log, senders) against both fakes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pipeline.audit import failures
from pipeline.config import Settings
from pipeline.fakes.generate import format_time
from pipeline.fakes.world import World, fake_world
from pipeline.runtime import CycleReport, Runtime
from tests.ongoing_schema import fake_validator


@pytest.fixture
async def world() -> AsyncIterator[World]:
    async with fake_world(1, products=12, customers=6, invoices=16, requests_per_second=1000) as w:
        w.ongoing.validator = fake_validator
        yield w
    assert w.ongoing.schema_violations == []


@pytest.fixture
def settings(world: World, tmp_path: Path) -> Settings:
    return world.settings(tmp_path / "p.db", requests_per_second=1000)


async def cycle(settings: Settings) -> CycleReport:
    async with Runtime(settings) as runtime:
        return await runtime.cycle()


@pytest.mark.anyio
async def test_rule9_paid_invoice_of_a_broken_product_waits_then_ships_whole(world: World, settings: Settings) -> None:
    """A paid invoice whose product cannot be mapped is not shipped without that product: its order waits, and
    once the product is fixed in PowerOffice the next cycle sends the order with the product's line in it."""
    t = world.tenants[0]
    products = {p["Code"]: p for p in t.company.products.values() if p.get("ProductType") == "Product"}
    invoice, code = next(
        (i, line["ProductCode"])
        for i in t.company.invoices.values()
        if i["VoucherType"] == "OutgoingInvoice" and not i.get("IsReversed") and i.get("Balance")
        for line in t.company.invoice_lines.get(i["Id"], [])
        if line.get("ProductCode") in products and (line.get("Quantity") or 0) > 0
    )
    world.poweroffice.update_product(t.client_key, code, UnitPrice=1e308)
    world.poweroffice.pay_invoice(t.client_key, invoice["Id"])
    owner = world.ongoing.owner(t.goods_owner_id)

    first = await cycle(settings)
    assert first.exit_code == 1  # the product stands unmapped
    assert not [o for o in owner.orders.values() if o.body["goodsOwnerOrderId"] == invoice["Id"]]

    world.poweroffice.update_product(t.client_key, code, UnitPrice=10.0)
    second = await cycle(settings)
    (order,) = [o for o in owner.orders.values() if o.body["goodsOwnerOrderId"] == invoice["Id"]]
    assert code in [line["articleNumber"] for line in order.body["orderLines"]]
    assert second.tenants[t.name].unmapped == 0


@pytest.mark.anyio
async def test_rule11_a_second_product_with_a_code_never_replaces_the_article(world: World, settings: Settings) -> None:
    """A new product taking an existing Code changes nothing in Ongoing and stands in `audit failures` with the
    first one, both named; archiving it in PowerOffice resolves the conflict and the cycle is clean again."""
    await cycle(settings)
    t = world.tenants[0]
    original = next(p for p in t.company.products.values() if p.get("ProductType") == "Product")
    code = original["Code"]
    name = world.ongoing.article(t.goods_owner_id, code)["articleName"]
    twin = world.poweroffice.add_product(t.client_key, code=code, name="Someone else's thing", UnitPrice=1.0)

    report = await cycle(settings)
    assert report.exit_code == 1
    assert world.ongoing.article(t.goods_owner_id, code)["articleName"] == name
    async with Runtime(settings) as runtime:
        rows = await failures(runtime.log, t.name)
    assert {r.entity for r in rows} == {f"product:{original['Id']}", f"product:{twin['Id']}"}
    assert all(str(original["Id"]) in r.summary and str(twin["Id"]) in r.summary for r in rows)

    twin["IsArchived"] = True
    twin["LastChangedDateTimeOffset"] = format_time(datetime.now(UTC))
    resolved = await cycle(settings)
    assert resolved.exit_code == 0, resolved
    assert world.ongoing.article(t.goods_owner_id, code)["articleName"] == name


@pytest.mark.anyio
async def test_rule14_poweroffice_stock_is_left_alone_until_goods_arrive(world: World, settings: Settings) -> None:
    """A new article's zero stock does not wipe PowerOffice's figure; the first receipt goes back, and after
    that a zero goes back too."""
    t = world.tenants[0]
    product = next(
        p for p in t.company.products.values() if p.get("IsStockItem") and p.get("StockOnHand") and p.get("Code")
    )
    before = product["StockOnHand"]
    await cycle(settings)
    assert t.company.product_by_code(product["Code"])["StockOnHand"] == before
    world.ongoing.set_inventory(t.goods_owner_id, product["Code"], numberOfItems=5, sellableNumberOfItems=5)
    await cycle(settings)
    assert t.company.product_by_code(product["Code"])["StockOnHand"] == 5
    world.ongoing.set_inventory(t.goods_owner_id, product["Code"], numberOfItems=0, sellableNumberOfItems=0)
    await cycle(settings)
    assert t.company.product_by_code(product["Code"])["StockOnHand"] == 0
