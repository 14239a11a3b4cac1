"""Rule 4, the poll side: refused credentials are a tenant problem, not an entity problem.

A 401 or 403 from either API while polling is an `AuthError` (which the runtime reports as that tenant's setup
error, stopping its stage for the cycle). The poll moves no cursor and records nothing about any record, so the
first poll after the credentials are fixed carries on from where the last good one stopped, with no manual step.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest

from pipeline.clients.ongoing import OngoingClient
from pipeline.config import OngoingSettings, Secret, TenantSettings
from pipeline.errors import AuthError
from pipeline.eventlog.sqlite import SqliteEventLog
from pipeline.events import InvoiceObserved, ObservationRejected, ProductObserved, StockObserved
from pipeline.fakes.faults import Fault
from pipeline.fakes.ongoing import FakeOngoing, serve_ongoing
from pipeline.fakes.world import fake_world
from pipeline.pollers.ongoing_stock import CURSOR as STOCK_CURSOR
from pipeline.pollers.ongoing_stock import poll_stock
from pipeline.pollers.poweroffice import INVOICES_CURSOR, PRODUCTS_CURSOR
from pipeline.runtime import Runtime
from tests.poweroffice_world import ACME, world

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("status", [401, 403])
async def test_rule4_poweroffice_refusal_fails_the_poll_and_the_next_poll_carries_on(
    tmp_path: Path, status: int
) -> None:
    async with world(tmp_path, products=8, invoices=12) as w:
        await w.products()
        await w.invoices()
        products_cursor = await w.log.cursor(PRODUCTS_CURSOR, "acme")
        invoices_cursor = await w.log.cursor(INVOICES_CURSOR, "acme")
        w.clock.advance(hours=1)
        company = w.fake.company(ACME)
        code = next(iter(company.products.values()))["Code"]
        w.fake.set_price(ACME, code, 77.0)
        invoice = next(i for i in company.invoices.values() if i["VoucherType"] == "OutgoingInvoice" and i["Balance"])
        w.fake.pay_invoice(ACME, invoice["Id"])
        w.clock.advance(minutes=10)
        before = await w.log.max_position()

        w.fake.faults.add(Fault("status", status=status, body=b'{"Message":"denied"}'), path="/v2/", times=None)
        with pytest.raises(AuthError) as products_refused:
            await w.products()
        with pytest.raises(AuthError) as invoices_refused:
            await w.invoices()
        assert (products_refused.value.status, invoices_refused.value.status) == (status, status)
        assert products_refused.value.tenant == invoices_refused.value.tenant == "acme"
        # Nothing recorded, no cursor moved.
        assert await w.log.max_position() == before
        assert await w.log.cursor(PRODUCTS_CURSOR, "acme") == products_cursor
        assert await w.log.cursor(INVOICES_CURSOR, "acme") == invoices_cursor

        w.fake.faults.clear()  # the credentials (or the privileges) are fixed
        products = await w.products()
        invoices = await w.invoices()
        observed_products = [e.event.product for e in await w.events(ProductObserved.TYPE)]
        observed_invoices = [e.event.invoice for e in await w.events(InvoiceObserved.TYPE)]
        rejected = await w.events(ObservationRejected.TYPE)
    assert products.observed == 1
    assert invoices.observed == 1
    assert [p["UnitPrice"] for p in observed_products if p["Code"] == code][-1] == 77.0
    assert [i["Id"] for i in observed_invoices] == [invoice["Id"]]
    assert rejected == []


async def test_rule4_a_403_on_invoice_lines_is_a_refusal_not_a_vanished_invoice(tmp_path: Path) -> None:
    """A refusal on the lines of one invoice stops the poll as a refusal; nothing about the invoice is recorded."""
    async with world(tmp_path, invoices=12) as w:
        await w.invoices()
        w.clock.advance(hours=1)
        company = w.fake.company(ACME)
        invoice = next(i for i in company.invoices.values() if i["VoucherType"] == "OutgoingInvoice" and i["Balance"])
        w.fake.pay_invoice(ACME, invoice["Id"])
        w.clock.advance(minutes=10)
        w.fake.faults.add(Fault("status", status=403, body=b""), path="/lines", times=None)
        with pytest.raises(AuthError):
            await w.invoices()
        assert await w.events(InvoiceObserved.TYPE) == []
        assert await w.log.cursor(INVOICES_CURSOR, "acme") is None
        w.fake.faults.clear()
        await w.invoices()
        assert [e.entity for e in await w.events(InvoiceObserved.TYPE)] == [f"invoice:{invoice['Id']}"]


OWNER = 42
NOW = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


async def _stock(tmp_path: Path, password: str, fake: FakeOngoing, url: str, http: aiohttp.ClientSession) -> int:
    settings = OngoingSettings(api_url=url, username="wms", password=Secret(password))
    client = OngoingClient(http, settings, clock=Clock())
    tenant = TenantSettings(name="acme", poweroffice_client_key=Secret("k"), ongoing_goods_owner_id=OWNER)
    log = await SqliteEventLog.open(tmp_path / "events.db", clock=Clock())
    try:
        result = await poll_stock(log, client.for_tenant(tenant), tenant, now=NOW)
        return result.observed
    finally:
        await log.close()


@pytest.fixture
async def ongoing() -> AsyncIterator[tuple[FakeOngoing, str, aiohttp.ClientSession]]:
    fake = FakeOngoing(username="wms", password="s3cret", clock=Clock())
    fake.add_article(OWNER, "A1", "Hylle")
    fake.set_inventory(OWNER, "A1", numberOfItems=5, sellableNumberOfItems=5)
    async with serve_ongoing(fake) as url, aiohttp.ClientSession() as http:
        yield fake, url, http


@pytest.mark.parametrize("refusal", ["wrong password", "403"])
async def test_rule4_ongoing_stock_refusal_fails_the_poll_and_the_next_poll_carries_on(
    tmp_path: Path, ongoing: tuple[FakeOngoing, str, aiohttp.ClientSession], refusal: str
) -> None:
    fake, url, http = ongoing
    if refusal == "403":
        fake.faults.add(Fault("status", status=403, body=b'{"Message":"Forbidden"}'), path="/articles", times=None)
    with pytest.raises(AuthError) as refused:
        await _stock(tmp_path, "wrong" if refusal == "wrong password" else "s3cret", fake, url, http)
    assert refused.value.tenant == "acme"
    assert "s3cret" not in str(refused.value)
    log = await SqliteEventLog.open(tmp_path / "events.db")
    try:
        assert await log.cursor(STOCK_CURSOR, "acme") is None
        assert await log.max_position() == 0
    finally:
        await log.close()
    fake.faults.clear()
    assert await _stock(tmp_path, "s3cret", fake, url, http) == 1
    log = await SqliteEventLog.open(tmp_path / "events.db")
    try:
        assert [e.entity async for e in log.read(types=[StockObserved.TYPE])] == ["stock:A1"]
    finally:
        await log.close()


async def test_rule4_a_refused_tenant_is_reported_and_its_next_cycle_needs_no_manual_step(tmp_path: Path) -> None:
    """Through the runtime: PowerOffice refusing every read (403) stops each tenant's stage for the cycle and is
    reported per tenant as a setup error (exit code 2); nothing is quarantined. Once access is back, the next
    cycle syncs everything."""
    now = datetime.now(UTC)
    async with fake_world(2, products=6, customers=4, invoices=8, now=now, requests_per_second=500) as fakes:
        settings = fakes.settings(tmp_path / "pipeline.db", requests_per_second=500)
        fakes.poweroffice.faults.add(Fault("status", status=403, body=b""), path="/v2/", times=None)
        async with Runtime(settings, clock=lambda: now) as runtime:
            refused = await runtime.cycle()
        assert refused.exit_code == 2
        for report in refused.tenants.values():
            assert report.setup_error
            assert any("403" in error for error in report.errors)
            assert report.failed == 0
        fakes.poweroffice.faults.clear()
        later = now + timedelta(minutes=15)
        async with Runtime(settings, clock=lambda: later) as runtime:
            fixed = await runtime.cycle()
            failures = await runtime.log.query("SELECT count(*) FROM events WHERE type = 'command.failed'")
        assert fixed.exit_code == 0, fixed
        assert failures == [(0,)]
        for t in fakes.tenants:
            articles = fakes.ongoing.owner(t.goods_owner_id).articles
            assert len(articles) == len(t.company.products)
