"""The projector: observations in the log become commands (or failures), checkpointed, never twice."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.config import Secret, TenantSettings
from pipeline.eventlog.base import NewEvent, StoredEvent
from pipeline.eventlog.sqlite import SqliteEventLog
from pipeline.events import (
    ArticleUpsertRequested,
    InvoiceObserved,
    MappingFailed,
    ObservationSkipped,
    OrderUpsertRequested,
    ProductObserved,
    StockObserved,
    StockPatchRequested,
)
from pipeline.projectors.commands import Command, Failed, Projection, Skipped, project, project_event
from tests.eventlog_contract import StepClock
from tests.mapping_schema import find, fixture, validate

TENANT = TenantSettings(name="acme", poweroffice_client_key=Secret("k"), ongoing_goods_owner_id=42)
PAID = "ee373540-ca8d-4562-8fb6-6fb52de47722"


@pytest.fixture
async def log(tmp_path: Path) -> AsyncIterator[SqliteEventLog]:
    log = await SqliteEventLog.open(tmp_path / "p.db", clock=StepClock())
    try:
        yield log
    finally:
        await log.close()


def product_event(product: dict[str, Any], key: str | None = None) -> NewEvent:
    groups = fixture("poweroffice/product_groups.json")
    group = next((g for g in groups if g["Id"] == product.get("ProductGroupId")), None)
    return NewEvent(
        "acme",
        f"product:{product['Id']}",
        ProductObserved(product, group),
        key or f"acme/product:{product['Id']}/{product.get('UnitPrice')}",
    )


def invoice_event(invoice_id: str, **changes: Any) -> NewEvent:
    invoice = {**find("poweroffice/outgoing_invoices.json", "Id", invoice_id), **changes}
    customer = find("poweroffice/customers.json", "Number", invoice["CustomerNo"])
    addresses = [a for a in fixture("poweroffice/contact_delivery_addresses.json") if a["ContactId"] == customer["Id"]]
    try:
        lines = fixture(f"poweroffice/outgoing_invoice_lines/{invoice_id}.json")
    except FileNotFoundError:
        lines = []
    return NewEvent(
        "acme",
        f"invoice:{invoice['Id']}",
        InvoiceObserved(invoice, lines, customer, addresses),
        f"acme/invoice:{invoice['Id']}/{sorted(changes.items())}",
    )


async def commands(log: SqliteEventLog) -> list[StoredEvent]:
    types = [ArticleUpsertRequested.TYPE, OrderUpsertRequested.TYPE, StockPatchRequested.TYPE, MappingFailed.TYPE]
    return [e async for e in log.read(types=types)]


@pytest.mark.anyio
async def test_products_become_article_commands_once(log: SqliteEventLog) -> None:
    """Each product yields one article command; re-projecting or re-observing it unchanged yields nothing."""
    products = fixture("poweroffice/products.json")
    await log.append([product_event(p) for p in products])
    first = await project(log, TENANT)
    assert first.commands == len(products) - first.skipped - first.failed
    made = await commands(log)
    assert {e.entity for e in made} >= {"article:BA-12", "article:LOOSE-9"}
    for e in made:
        assert isinstance(e.event, ArticleUpsertRequested)
        validate(e.event.body, "PostArticleModel")
        assert e.mapping_version is not None
        assert e.causation is not None
    again = await project(log, TENANT)
    assert again.observed == 0
    # The same product observed again (a new observation with identical content) changes nothing.
    await log.append([product_event(products[0], key="again")])
    third = await project(log, TENANT)
    assert (third.observed, third.commands, third.unchanged) == (1, 0, 1)
    assert len(await commands(log)) == len(made)


@pytest.mark.anyio
async def test_price_change_makes_exactly_one_new_command(log: SqliteEventLog) -> None:
    """A changed product produces one new article command for that article only."""
    products = fixture("poweroffice/products.json")
    await log.append([product_event(p) for p in products])
    await project(log, TENANT)
    before = len(await commands(log))
    changed = {**find("poweroffice/products.json", "Code", "BA-12"), "UnitPrice": 999.5}
    await log.append([product_event(changed)])
    result = await project(log, TENANT)
    assert result.commands == 1
    made = await commands(log)
    assert len(made) == before + 1
    assert made[-1].entity == "article:BA-12"
    assert isinstance(made[-1].event, ArticleUpsertRequested)
    assert made[-1].event.body["customerPrice"] == 999.5


@pytest.mark.anyio
async def test_unmappable_product_fails_alone(log: SqliteEventLog) -> None:
    """A product without a code becomes a mapping failure naming Code; the rest of the batch still flows."""
    good = find("poweroffice/products.json", "Code", "BA-12")
    bad = {**find("poweroffice/products.json", "Code", "LOOSE-9"), "Code": None}
    await log.append([product_event(bad), product_event(good)])
    result = await project(log, TENANT)
    assert (result.commands, result.failed) == (1, 1)
    made = await commands(log)
    failure = next(e for e in made if e.type == MappingFailed.TYPE)
    assert isinstance(failure.event, MappingFailed)
    assert failure.event.field == "Code"
    assert failure.entity == f"product:{bad['Id']}"
    assert any(e.entity == "article:BA-12" for e in made)


@pytest.mark.anyio
async def test_paid_invoices_become_orders_and_others_do_not(log: SqliteEventLog) -> None:
    """A paid invoice becomes one order; unpaid invoices and credit notes become nothing."""
    await log.append([product_event(p) for p in fixture("poweroffice/products.json")])
    unpaid = "8c2f1e0a-7d4b-4c1e-b1a2-5e6f7a8b9c0d"
    credit = "1d9e8f7a-6b5c-4d3e-a2f1-0e9d8c7b6a54"
    await log.append([invoice_event(PAID), invoice_event(unpaid), invoice_event(credit)])
    await project(log, TENANT)
    orders = [e for e in await commands(log) if e.type == OrderUpsertRequested.TYPE]
    assert [e.entity for e in orders] == [f"order:{PAID}"]
    order = orders[0].event
    assert isinstance(order, OrderUpsertRequested)
    validate(order.body, "PostOrderModel")
    assert order.body["orderNumber"] == "6065"
    assert set(order.article_numbers) <= {line["articleNumber"] for line in order.body["orderLines"]}


@pytest.mark.anyio
async def test_invoice_paid_later_gives_exactly_one_order(log: SqliteEventLog) -> None:
    """An unpaid invoice that becomes paid produces one order, and observing it again produces no other."""
    await log.append([product_event(p) for p in fixture("poweroffice/products.json")])
    unpaid = "8c2f1e0a-7d4b-4c1e-b1a2-5e6f7a8b9c0d"
    await log.append([invoice_event(unpaid)])
    await project(log, TENANT)
    assert not [e for e in await commands(log) if e.type == OrderUpsertRequested.TYPE]
    await log.append([invoice_event(unpaid, Balance=0)])
    await project(log, TENANT)
    await log.append([invoice_event(unpaid, Balance=0.0, BalanceLastChangedDateTimeOffset="2026-11-02T00:00:00Z")])
    await project(log, TENANT)
    orders = [e for e in await commands(log) if e.type == OrderUpsertRequested.TYPE]
    assert [e.entity for e in orders] == [f"order:{unpaid}"]


@pytest.mark.anyio
async def test_order_number_collision_is_renumbered_and_recorded(log: SqliteEventLog) -> None:
    """A second invoice with an order number already taken gets <OrderNo>-<InvoiceNo>, recorded on the command."""
    await log.append([product_event(p) for p in fixture("poweroffice/products.json")])
    twin = "3b0d7c1e-51a9-4c52-9a43-2f8f4f0c9a11"
    first = invoice_event(PAID)
    second = invoice_event(twin, OrderNo=6065)
    assert isinstance(second.event, InvoiceObserved)
    second_inv = second.event.invoice
    await log.append([first, second])
    await project(log, TENANT)
    orders = {e.entity: e.event for e in await commands(log) if e.type == OrderUpsertRequested.TYPE}
    a, b = orders[f"order:{PAID}"], orders[f"order:{twin}"]
    assert isinstance(a, OrderUpsertRequested)
    assert isinstance(b, OrderUpsertRequested)
    assert a.body["orderNumber"] == "6065"
    assert a.renumbered_from is None
    assert b.body["orderNumber"] == f"6065-{second_inv['InvoiceNo']}"
    assert b.renumbered_from == "6065"
    # Re-projecting the first invoice later keeps its number (it owns it).
    await log.append([invoice_event(PAID, CustomerReference="changed")])
    await project(log, TENANT)
    latest = (await log.latest([OrderUpsertRequested.TYPE], tenant="acme", entity=f"order:{PAID}")).popitem()[1]
    assert isinstance(latest.event, OrderUpsertRequested)
    assert latest.event.body["orderNumber"] == "6065"


@pytest.mark.anyio
async def test_stock_becomes_patch_for_stock_items_only(log: SqliteEventLog) -> None:
    """Stock of a PowerOffice stock item becomes a StockOnHand patch; other articles are skipped."""
    await log.append([product_event(p) for p in fixture("poweroffice/products.json")])
    await log.append(
        [
            NewEvent("acme", "stock:BA-12", StockObserved("BA-12", 1, {"numberOfItems": 17.0}), "s1"),
            NewEvent("acme", "stock:GR-7", StockObserved("GR-7", 2, {"numberOfItems": 3.0}), "s2"),
            NewEvent("acme", "stock:NOPE", StockObserved("NOPE", 3, {"numberOfItems": 3.0}), "s3"),
        ]
    )
    await project(log, TENANT)
    patches = [e.event for e in await commands(log) if e.type == StockPatchRequested.TYPE]
    ba12 = find("poweroffice/products.json", "Code", "BA-12")
    assert patches == [StockPatchRequested(ba12["Id"], "BA-12", 17.0)]
    skipped = {e.entity: e.event async for e in log.read(types=[ObservationSkipped.TYPE])}
    assert set(skipped) == {"stock:GR-7", "stock:NOPE"}
    assert all(isinstance(e, ObservationSkipped) for e in skipped.values())
    assert "not a stock item" in skipped["stock:GR-7"].reason  # type: ignore[union-attr]
    assert "not in PowerOffice" in skipped["stock:NOPE"].reason  # type: ignore[union-attr]


# ------------------------------------------------------------------------------------------------ properties

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(10**12), 10**12)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
    | st.text(min_size=300, max_size=2000)
)
junk = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)


def _overlay(base: dict[str, Any], keys: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """The base record with any of its fields replaced by junk or removed."""
    return st.fixed_dictionaries({}, optional={k: junk for k in keys}).flatmap(
        lambda repl: st.sets(st.sampled_from(keys), max_size=4).map(
            lambda drop: {k: v for k, v in {**base, **repl}.items() if k not in drop}
        )
    )


_PRODUCT = find("poweroffice/products.json", "Code", "BA-12")
_INVOICE = find("poweroffice/outgoing_invoices.json", "Id", PAID)
_LINES = fixture(f"poweroffice/outgoing_invoice_lines/{PAID}.json")
_CUSTOMER = find("poweroffice/customers.json", "Number", _INVOICE["CustomerNo"])


def _stored(event: Any, position: int = 7) -> StoredEvent:
    from datetime import UTC, datetime

    return StoredEvent(position, datetime(2026, 11, 1, tzinfo=UTC), "acme", "x", event.TYPE, 1, event, None, None, "k")


def _check(done: Any) -> None:
    if isinstance(done, Command):
        if isinstance(done.event, ArticleUpsertRequested):
            validate(done.event.body, "PostArticleModel")
        if isinstance(done.event, OrderUpsertRequested):
            validate(done.event.body, "PostOrderModel")
        # Commands must be storable: no NaN or infinities anywhere.
        from pipeline.events import encode

        encode(done.event)
    else:
        assert isinstance(done, Failed) or (isinstance(done, Skipped) and done.reason)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(product=_overlay(_PRODUCT, list(_PRODUCT)), group=st.none() | junk)
def test_any_product_json_projects_to_a_command_or_a_failure(product: dict[str, Any], group: Any) -> None:
    """Arbitrary product JSON never raises out of the projector: a valid command, a failure, or a skip."""
    state = Projection(TENANT)
    _check(project_event(state, _stored(ProductObserved(product, group if isinstance(group, dict) else None))))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    invoice=_overlay(_INVOICE, list(_INVOICE)),
    lines=st.lists(st.one_of(*[_overlay(line, list(line)) for line in _LINES]), max_size=4) | st.lists(junk),
    customer=st.none() | _overlay(_CUSTOMER, list(_CUSTOMER)),
)
def test_any_invoice_json_projects_to_a_command_or_a_failure(
    invoice: dict[str, Any], lines: list[Any], customer: dict[str, Any] | None
) -> None:
    """Arbitrary invoice, line and customer JSON never raises out of the projector."""
    state = Projection(TENANT, articles={"BA-12", "NP-3"})
    _check(project_event(state, _stored(InvoiceObserved(invoice, lines, customer, []))))


def test_nan_price_is_a_failure_not_a_command() -> None:
    """A NaN price cannot be sent: the product fails with the field named."""
    done = project_event(Projection(TENANT), _stored(ProductObserved({**_PRODUCT, "UnitPrice": math.nan})))
    assert isinstance(done, Failed)
    assert done.failure.field == "UnitPrice"


def test_stock_index_keeps_every_field_the_stock_mapping_reads() -> None:
    """The projector's trimmed product index maps stock exactly like the full product does."""
    from pipeline.mapping import map_stock

    state = Projection(TENANT)
    for product in fixture("poweroffice/products.json"):
        state.remember_product(product)
        trimmed = state.products[product["Code"]]
        for figures in ({"numberOfItems": 5.0}, {"numberOfItems": -1.0}, {}):
            assert map_stock(figures, trimmed, TENANT) == map_stock(figures, product, TENANT)


# ------------------------------------------------------------------------------------------------ issue rules

SERVICES_ONLY = find("poweroffice/outgoing_invoices.json", "InvoiceNo", 15803)["Id"]


async def events_of(log: SqliteEventLog, *types: str) -> list[StoredEvent]:
    return [e async for e in log.read(types=list(types))]


@pytest.mark.anyio
async def test_rule9_order_with_an_unmapped_product_waits_for_its_article(log: SqliteEventLog) -> None:
    """A paid invoice whose product failed to map (UnitPrice 1e308) still becomes an order: its line is an order
    line and `article_numbers` names the article, so the sender holds the order until the fixed product's article
    is delivered. No new order command is needed when the product is fixed."""
    products = fixture("poweroffice/products.json")
    broken = {**find("poweroffice/products.json", "Code", "LOOSE-9"), "UnitPrice": 1e308}
    await log.append([product_event(p) for p in products if p["Code"] != "LOOSE-9"] + [product_event(broken)])
    await log.append([invoice_event(PAID)])
    await project(log, TENANT)
    (order,) = await events_of(log, OrderUpsertRequested.TYPE)
    assert isinstance(order.event, OrderUpsertRequested)
    assert "LOOSE-9" in [line["articleNumber"] for line in order.event.body["orderLines"]]
    assert "LOOSE-9" in order.event.article_numbers
    assert any("LOOSE-9" in w and "waits" in w for w in order.event.warnings)
    texts = order.event.body.get("advanced", {}).get("orderTextLines", [])
    assert all("Løs vare" not in (t.get("comment") or "") for t in texts)
    # The product is fixed in PowerOffice: its article comes; the order command stands as it is.
    fixed = {**broken, "UnitPrice": 49.99}
    await log.append([product_event(fixed)])
    await project(log, TENANT)
    assert any(e.entity == "article:LOOSE-9" for e in await events_of(log, ArticleUpsertRequested.TYPE))
    assert len(await events_of(log, OrderUpsertRequested.TYPE)) == 1


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("settings", "recorded"),
    [
        pytest.param({"skip_services": True}, True, id="rule9-services-only-is-skipped-with-a-recorded-reason"),
        pytest.param({}, False, id="rule9-services-synced-make-an-order"),
    ],
)
async def test_rule9_paid_invoice_is_never_dropped_silently(
    log: SqliteEventLog, settings: dict[str, Any], recorded: bool
) -> None:
    """An invoice with no goods to pick (services the tenant leaves out) leaves an `observation.skipped` saying
    why; with services synced, it is an order like any other. Either way the paid invoice leaves a trace."""
    import dataclasses

    tenant = dataclasses.replace(TENANT, **settings)
    await log.append([product_event(p) for p in fixture("poweroffice/products.json")])
    await log.append([invoice_event(SERVICES_ONLY, Balance=0)])
    await project(log, tenant)
    skips = [e for e in await events_of(log, ObservationSkipped.TYPE) if e.entity == f"invoice:{SERVICES_ONLY}"]
    orders = await events_of(log, OrderUpsertRequested.TYPE)
    if recorded:
        assert orders == []
        (skip,) = skips
        assert isinstance(skip.event, ObservationSkipped)
        assert "nothing to ship" in skip.event.reason
    else:
        assert [e.entity for e in orders] == [f"order:{SERVICES_ONLY}"]
        assert skips == []


def _twin(code: str = "BA-12", **changes: Any) -> dict[str, Any]:
    return {**find("poweroffice/products.json", "Code", code), "Id": 9001, **changes}


@pytest.mark.anyio
async def test_rule11_two_products_with_one_code_are_a_conflict(log: SqliteEventLog) -> None:
    """Two products with one Code: neither is sent, both stand in `audit failures` naming both product ids."""
    from pipeline.audit import failures

    await log.append([product_event(p) for p in fixture("poweroffice/products.json")])
    await log.append([product_event(_twin(UnitPrice=1.0))])
    await project(log, TENANT)
    articles = [e.entity for e in await events_of(log, ArticleUpsertRequested.TYPE)]
    assert "article:BA-12" not in articles
    rows = [r for r in await failures(log) if r.type == MappingFailed.TYPE]
    assert {r.entity for r in rows} == {"product:1610", "product:9001"}
    for r in rows:
        assert "1610" in r.payload["reason"]
        assert "9001" in r.payload["reason"]
        assert r.payload["field"] == "Code"


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("resolution", "skipped"),
    [
        pytest.param({"Code": "BA-13"}, False, id="rule11-resolved-by-a-code-change"),
        pytest.param({"IsArchived": True}, True, id="rule11-resolved-by-archiving-one"),
    ],
)
async def test_rule11_a_later_twin_never_replaces_the_article(
    log: SqliteEventLog, resolution: dict[str, Any], skipped: bool
) -> None:
    """A second product taking a delivered article's Code sends nothing for that article until the conflict is
    resolved in PowerOffice; then the first product's article is current again and no failure stands."""
    from pipeline.audit import failures

    await log.append([product_event(p) for p in fixture("poweroffice/products.json")])
    await project(log, TENANT)
    before = [e for e in await events_of(log, ArticleUpsertRequested.TYPE) if e.entity == "article:BA-12"]
    assert len(before) == 1
    await log.append([product_event(_twin(UnitPrice=1.0, Name="Another thing"))])
    await project(log, TENANT)
    after = [e for e in await events_of(log, ArticleUpsertRequested.TYPE) if e.entity == "article:BA-12"]
    assert after == before  # nothing replaces BA-12's article
    assert {r.entity for r in await failures(log)} == {"product:1610", "product:9001"}

    await log.append([product_event(_twin(UnitPrice=1.0, Name="Another thing", **resolution), key="resolved")])
    await project(log, TENANT)
    assert await failures(log) == []
    latest = [e for e in await events_of(log, ArticleUpsertRequested.TYPE) if e.entity == "article:BA-12"][-1]
    assert isinstance(latest.event, ArticleUpsertRequested)
    assert latest.event.product_id == 1610
    assert latest.event.body["customerPrice"] != 1.0
    twin_skips = [e for e in await events_of(log, ObservationSkipped.TYPE) if e.entity == "product:9001"]
    assert bool(twin_skips) == skipped
    if not skipped:
        assert any(e.entity == "article:BA-13" for e in await events_of(log, ArticleUpsertRequested.TYPE))


def _stock(n: int, article: str = "BA-12", **inventory: Any) -> NewEvent:
    info = {"numberOfItems": 0.0, "sellableNumberOfItems": 0.0, "lastInDate": None, **inventory}
    return NewEvent("acme", f"stock:{article}", StockObserved(article, 1, info), f"s{n}")


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("observations", "settings", "patches"),
    [
        pytest.param([{}], {}, [], id="rule14-new-article-at-zero-is-left-alone"),
        pytest.param([{"sellableNumberOfItems": -3.0}], {}, [], id="rule14-orders-before-goods-are-not-a-receipt"),
        pytest.param([{"numberOfItems": 5.0}], {}, [5.0], id="rule14-first-non-zero-goes-back"),
        pytest.param(
            [{}, {"numberOfItems": 5.0}, {"numberOfItems": 0.0, "sellableNumberOfItems": 1.0}],
            {},
            [5.0, 0.0],
            id="rule14-zero-goes-back-once-held",
        ),
        pytest.param([{"lastInDate": "2026-11-01T10:00:00Z"}], {}, [0.0], id="rule14-received-before-goes-back"),
        pytest.param([{}], {"stock_back_before_first_receipt": True}, [0.0], id="rule14-setting-switches-the-rule-off"),
    ],
)
async def test_rule14_stock_is_not_zeroed_before_the_warehouse_held_the_article(
    log: SqliteEventLog, observations: list[dict[str, Any]], settings: dict[str, Any], patches: list[float]
) -> None:
    """PowerOffice's StockOnHand is left alone (with a recorded reason) until Ongoing shows the article held; from
    then on every figure goes back, zeros too. Each run projects one observation, as cycles would."""
    import dataclasses

    tenant = dataclasses.replace(TENANT, **settings)
    await log.append([product_event(p) for p in fixture("poweroffice/products.json")])
    for i, inventory in enumerate(observations):
        await log.append([_stock(i, **inventory)])
        await project(log, tenant)
    made = [e.event.value for e in await events_of(log, StockPatchRequested.TYPE)]  # type: ignore[attr-defined]
    assert made == patches
    reasons = [
        e.event.reason  # type: ignore[attr-defined]
        for e in await events_of(log, ObservationSkipped.TYPE)
        if e.entity == "stock:BA-12"
    ]
    assert len(reasons) == len(observations) - len(patches)
    assert all("not held" in r for r in reasons)


class _CountingLog:
    """The log, counting the events its reads hand out (what projecting had to load)."""

    def __init__(self, inner: SqliteEventLog) -> None:
        self.inner = inner
        self.loaded = 0

    async def latest(self, types: Any, **query: Any) -> dict[tuple[str, str], StoredEvent]:
        found = await self.inner.latest(types, **query)
        self.loaded += len(found)
        return found

    async def order_commands_numbered(self, tenant: str, numbers: Any) -> list[StoredEvent]:
        found = await self.inner.order_commands_numbered(tenant, numbers)
        self.loaded += len(found)
        return found

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.mark.anyio
async def test_a_changing_cycle_loads_the_orders_its_invoices_need_not_every_order(log: SqliteEventLog) -> None:
    """Orders are entities forever. Projecting new observations loads the orders of the invoices observed and the
    holders of the numbers they would take, not every order of the tenant; numbering and dedupe stay as before:
    an order number held by an old order is still taken (renumbered), an unchanged invoice still makes nothing."""
    products = fixture("poweroffice/products.json")
    await log.append([product_event(p) for p in products])
    history = [
        NewEvent(
            "acme",
            f"order:old-{i}",
            OrderUpsertRequested({"orderNumber": str(90000 + i), "orderLines": []}, f"old-{i}", []),
            f"acme/old/{i}",
        )
        for i in range(400)
    ]
    holder = OrderUpsertRequested({"orderNumber": "6065", "orderLines": []}, "holder", [])
    history.insert(7, NewEvent("acme", "order:holder", holder, "acme/holder"))
    await log.append(history)
    await project(log, TENANT)  # the products
    counting = _CountingLog(log)
    await log.append([invoice_event(PAID)])
    result = await project(counting, TENANT)  # type: ignore[arg-type]
    assert result.commands == 1
    assert counting.loaded < 50, counting.loaded  # the catalogue and the holder, not 401 orders
    made = (await log.latest([OrderUpsertRequested.TYPE], tenant="acme", entity=f"order:{PAID}")).popitem()[1]
    assert isinstance(made.event, OrderUpsertRequested)
    assert made.event.renumbered_from == "6065"  # held by an order from long ago, found by its number
    assert made.event.body["orderNumber"] == "6065-15798"
    # Observed again unchanged (a new key): its last command is loaded, equal, so nothing is appended.
    again = invoice_event(PAID)
    await log.append([again._replace(dedupe_key="acme/again")])
    before = await log.max_position()
    assert (await project(counting, TENANT)).unchanged == 1
    assert await log.max_position() == before  # the checkpoint moved, no command appended


@pytest.mark.anyio
@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_orders_loaded_on_demand_number_as_every_order_loaded_would(
    tmp_path: Path, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Invoices sharing order numbers, re-observed, over several runs in small batches: the commands made with the
    orders loaded per batch are exactly those made with every order loaded."""
    import random

    rng = random.Random(seed)
    runs: list[list[NewEvent]] = []
    ids = [f"inv-{i}" for i in range(12)]
    for run in range(6):
        picked = [rng.choice(ids) for _ in range(5)]
        runs.append(
            [
                invoice_event(PAID, Id=i, InvoiceNo=100 + ids.index(i), OrderNo=rng.choice([1, 2, 3, None]))._replace(
                    dedupe_key=f"acme/{run}/{n}"
                )
                for n, i in enumerate(picked)
            ]
        )

    async def made(path: Path) -> list[tuple[str, Any, Any]]:
        async with await SqliteEventLog.open(path, clock=StepClock()) as log:
            await log.append([product_event(p) for p in fixture("poweroffice/products.json")])
            for events in runs:
                await log.append(events)
                await project(log, TENANT, batch_size=2)
            return [
                (e.entity, e.event.body["orderNumber"], e.event.renumbered_from)
                async for e in log.read(types=[OrderUpsertRequested.TYPE])
                if isinstance(e.event, OrderUpsertRequested)
            ]

    on_demand = await made(tmp_path / "a.db")
    full = Projection.load.__func__  # type: ignore[attr-defined]

    async def load_all(cls: type[Projection], log_: Any, tenant: TenantSettings, **_: Any) -> Projection:
        return await full(cls, log_, tenant, all_orders=True)  # type: ignore[no-any-return]

    monkeypatch.setattr(Projection, "load", classmethod(load_all))
    assert len(on_demand) > 10
    assert any(r for _, _, r in on_demand)  # some were renumbered
    assert on_demand == await made(tmp_path / "b.db")
