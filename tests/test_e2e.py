"""End to end: the real pipeline (Runtime, clients, log) against both fakes, on generated companies."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from pipeline.config import Secret, Settings, TenantSettings
from pipeline.errors import MappingError
from pipeline.eventlog.sqlite import SqliteEventLog
from pipeline.fakes.world import FakeTenant, World, fake_world
from pipeline.mapping import (
    invoice_wants_order,
    map_invoice,
    map_product,
    order_number_for,
    product_excluded,
)
from pipeline.runtime import CycleReport, Runtime
from tests.mapping_schema import validate
from tests.ongoing_schema import fake_validator

# The fakes keep real time (payments, stock changes), so the pipeline runs at a fixed moment of today.
NOW = datetime.now(UTC)


def fixed_clock() -> datetime:
    return NOW


@pytest.fixture
async def world() -> AsyncIterator[World]:
    # A high limit keeps the test fast; the limiter itself is tested on its own.
    async with fake_world(2, products=25, customers=10, invoices=30, now=NOW, requests_per_second=500) as w:
        w.ongoing.validator = fake_validator  # every body the pipeline sends must fit the schema
        yield w
    assert w.ongoing.schema_violations == []


def settings_for(world: World, tmp_path: Path) -> Settings:
    return world.settings(tmp_path / "pipeline.db", requests_per_second=500)


async def cycle(settings: Settings) -> CycleReport:
    async with Runtime(settings, clock=fixed_clock) as runtime:
        return await runtime.cycle()


def group_of(t: FakeTenant, product: dict[str, Any]) -> dict[str, Any] | None:
    return t.company.product_groups.get(product.get("ProductGroupId"))  # type: ignore[arg-type]


def expected_articles(t: FakeTenant, tenant: TenantSettings) -> dict[str, dict[str, Any]]:
    out = {}
    for p in t.company.products.values():
        if product_excluded(p, group_of(t, p), tenant):
            continue
        try:
            body = map_product(p, group_of(t, p), tenant).body
        except MappingError:
            continue
        out[body["articleNumber"]] = body
    return out


def expected_orders(world: World, t: FakeTenant, tenant: TenantSettings, known: set[str]) -> dict[str, dict[str, Any]]:
    """invoice id -> the order body the mapping makes for it (with its own order number)."""
    out = {}
    for inv in t.company.invoices.values():
        changed = datetime.fromisoformat(inv["BalanceLastChangedDateTimeOffset"].replace("Z", "+00:00"))
        if world.orders_since and changed <= world.orders_since:
            continue
        if invoice_wants_order(inv, tenant):
            continue
        customer = next((c for c in t.company.customers.values() if c.get("Number") == inv.get("CustomerNo")), None)
        addresses = [a for a in t.company.delivery_addresses.values() if customer and a["ContactId"] == customer["Id"]]
        try:
            order = map_invoice(
                inv,
                t.company.invoice_lines.get(inv["Id"], []),
                customer,
                addresses,
                tenant,
                order_number=order_number_for(inv),
                observed_on=NOW.date(),
                known_articles=known,
            )
        except MappingError:
            continue
        out[inv["Id"]] = order.body
    return out


def assert_article(expected: dict[str, Any], model: dict[str, Any]) -> None:
    for key, value in expected.items():
        if key == "goodsOwnerId":
            continue
        got = model.get(key)
        if key == "unitCode":  # Ongoing stores unit codes in lower case
            assert str(got).lower() == str(value).lower()
        elif isinstance(value, dict):
            assert isinstance(got, dict), key
            assert {k: got.get(k) for k in value} == value, key
        else:
            assert got == value, key


@pytest.mark.anyio
async def test_full_cycle_matches_the_mapping_and_second_cycle_writes_nothing(world: World, tmp_path: Path) -> None:
    """Every article and order in Ongoing equals the mapping of PowerOffice's data; a second cycle does nothing."""
    settings = settings_for(world, tmp_path)
    report = await cycle(settings)
    assert report.exit_code == 0, report
    for t, tenant in zip(world.tenants, settings.tenants, strict=True):
        owner = world.ongoing.owner(t.goods_owner_id)
        articles = expected_articles(t, tenant)
        assert set(owner.articles) == set(articles)
        for number, body in articles.items():
            validate(body, "PostArticleModel")
            model = world.ongoing.article(t.goods_owner_id, number)
            assert model is not None
            assert_article(body, model)
        orders = expected_orders(world, t, tenant, set(articles))
        assert orders, "the generated data should give some paid invoices in the window"
        got = {o.body["goodsOwnerOrderId"]: o.body for o in owner.orders.values()}
        assert set(got) == set(orders)  # unpaid invoices and credit notes made nothing
        numbers = [b["orderNumber"] for b in got.values()]
        assert len(numbers) == len(set(numbers))
        for invoice_id, body in orders.items():
            actual = got[invoice_id]
            # The number is the invoice's own unless another invoice took it first (then <OrderNo>-<InvoiceNo>).
            assert actual["orderNumber"] in (body["orderNumber"], f"{body['orderNumber']}-{body['productionCode']}")
            assert {**actual, "orderNumber": body["orderNumber"]} == body
            assert world.ongoing.creations(t.goods_owner_id, actual["orderNumber"]) == 1

    async with await SqliteEventLog.open(settings.database) as log:
        before = await log.max_position()
    writes_before = len(world.ongoing.writes())
    po_before = len(world.poweroffice.requests)
    second = await cycle(settings)
    assert second.exit_code == 0
    assert len(world.ongoing.writes()) == writes_before
    po_writes = [r for r in world.poweroffice.requests[po_before:] if r.method == "PATCH"]
    assert po_writes == []
    async with await SqliteEventLog.open(settings.database) as log:
        assert await log.max_position() == before


@pytest.mark.anyio
async def test_changes_flow_exactly_once(world: World, tmp_path: Path) -> None:
    """A price change re-upserts one article, a payment makes one order, warehouse stock reaches PowerOffice."""
    settings = settings_for(world, tmp_path)
    await cycle(settings)
    t = world.tenants[0]
    owner = world.ongoing.owner(t.goods_owner_id)
    product = next(p for p in t.company.products.values() if p["Code"] in owner.articles and p.get("IsStockItem"))
    unpaid = next(
        i
        for i in t.company.invoices.values()
        if i["VoucherType"] == "OutgoingInvoice"
        and i.get("Balance")
        and not i.get("IsReversed")
        and any(line.get("ProductCode") in owner.articles for line in t.company.invoice_lines.get(i["Id"], []))
    )
    orders_before = len(owner.orders)
    writes_before = len(world.ongoing.writes())

    world.poweroffice.set_price(t.client_key, product["Code"], 1234.5)
    world.poweroffice.pay_invoice(t.client_key, unpaid["Id"])
    world.ongoing.set_inventory(t.goods_owner_id, product["Code"], numberOfItems=77, sellableNumberOfItems=70)
    report = await cycle(settings)
    assert report.exit_code == 0

    new_writes = world.ongoing.writes()[writes_before:]
    article_writes = [w for w in new_writes if w.entity and w.entity.startswith("article:")]
    assert [w.entity for w in article_writes] == [f"article:{product['Code']}"]
    assert owner.articles[product["Code"]].model["customerPrice"] == 1234.5
    assert len(owner.orders) == orders_before + 1
    new_order = next(o for o in owner.orders.values() if o.body["goodsOwnerOrderId"] == unpaid["Id"])
    assert world.ongoing.creations(t.goods_owner_id, new_order.body["orderNumber"]) == 1
    assert t.company.product_by_code(product["Code"])["StockOnHand"] == 77

    # And once more: nothing left to do.
    writes_after = len(world.ongoing.writes())
    again = await cycle(settings)
    assert again.exit_code == 0
    assert len(world.ongoing.writes()) == writes_after


@pytest.mark.anyio
async def test_a_tenant_with_refused_credentials_does_not_stop_the_others(world: World, tmp_path: Path) -> None:
    """A wrong client key fails that tenant (exit 2, tenant named, key never shown); the other one syncs fully."""
    settings = settings_for(world, tmp_path)
    bad, good = settings.tenants
    wrong = "wrong-client-key-123"
    settings = dataclasses.replace(
        settings, tenants=(dataclasses.replace(bad, poweroffice_client_key=Secret(wrong)), good)
    )
    report = await cycle(settings)
    assert report.exit_code == 2
    assert report.tenants[bad.name].setup_error
    assert any(bad.name in error for error in report.tenants[bad.name].errors)
    assert not any(wrong in error for error in report.tenants[bad.name].errors)
    assert world.ongoing.owner(bad.ongoing_goods_owner_id).articles == {}
    good_owner = world.ongoing.owner(good.ongoing_goods_owner_id)
    assert len(good_owner.articles) == len(expected_articles(world.tenants[1], good))
    assert report.tenants[good.name].errors == []


@pytest.mark.anyio
async def test_a_malformed_answer_fails_one_tenant_and_the_cycle_goes_on(world: World, tmp_path: Path) -> None:
    """A product list that is not a list hits one tenant's poll; the other tenant is synced in the same cycle."""
    from pipeline.fakes.faults import Fault

    world.poweroffice.faults.add(
        Fault("status", status=200, body=b'{"not": "a list"}'), path=r"/v2/products(\?|$)", times=1
    )
    settings = settings_for(world, tmp_path)
    report = await cycle(settings)
    hit = [t for t in report.tenants.values() if t.errors]
    assert len(hit) == 1
    assert report.exit_code in (1, 2)
    other = next(t for t in world.tenants if t.name != hit[0].name)
    owner = world.ongoing.owner(other.goods_owner_id)
    assert len(owner.articles) == len(expected_articles(other, settings.tenant(other.name)))
    # The next cycle heals the tenant that was hit.
    again = await cycle(settings)
    assert again.exit_code == 0
