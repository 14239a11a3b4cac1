"""PowerOffice pollers: the real client against the fake server, appending to a real SQLite event log."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from pipeline.clients.http import RetryPolicy
from pipeline.clients.poweroffice import parse_timestamp
from pipeline.errors import PermanentApiError, TransientApiError
from pipeline.events import InvoiceObserved, ProductObserved
from pipeline.fakes.faults import Fault
from pipeline.pollers.poweroffice import INVOICES_CURSOR, INVOICES_SINCE, PRODUCTS_CURSOR
from tests.poweroffice_world import ACME, NOW, OVERLAP, World, goods, latest_stamp, world

# --------------------------------------------------------------------------------------------------- products


@pytest.mark.anyio
async def test_first_product_poll_observes_everything_with_groups(tmp_path: Path) -> None:
    """The first run sweeps all products, attaches each one's group, and sets the cursor from the data."""
    async with world(tmp_path) as w:
        result = await w.products()
        events = await w.events(ProductObserved.TYPE)
        cursor = await w.log.cursor(PRODUCTS_CURSOR, "acme")
    company = w.fake.company(ACME)
    assert result.observed == result.seen == len(company.products) == 25
    assert {e.entity for e in events} == {f"product:{pid}" for pid in company.products}
    for stored in events:
        product = stored.event.product
        expected = company.product_groups.get(product["ProductGroupId"]) if product["ProductGroupId"] else None
        assert stored.event.group == expected
    assert cursor == latest_stamp(list(company.products.values()), "LastChangedDateTimeOffset")
    assert "lastchangeddatetimeoffsetgreaterthan" not in w.fake.requests[1].query.lower()


@pytest.mark.anyio
async def test_repoll_without_changes_appends_nothing(tmp_path: Path) -> None:
    """A second poll re-reads its overlap window but appends nothing, and leaves the cursor."""
    async with world(tmp_path) as w:
        await w.products()
        cursor = await w.log.cursor(PRODUCTS_CURSOR, "acme")
        w.clock.advance(minutes=15)
        again = await w.products()
        assert await w.log.cursor(PRODUCTS_CURSOR, "acme") == cursor
        assert again.observed == 0
        assert set((await w.per_entity(ProductObserved.TYPE)).values()) == {1}


@pytest.mark.anyio
async def test_an_overlap_reread_of_unchanged_products_costs_one_request(tmp_path: Path) -> None:
    """A poll whose delta only re-reads products unchanged since their last observation (the overlap always
    re-reads the newest) reads no groups: each keeps its group. A changed product brings the groups back, and its
    new group is observed."""
    async with world(tmp_path) as w:
        await w.products()
        company = w.fake.company(ACME)
        newest = goods(w)[-1]
        product = company.product_by_code(newest)
        w.clock.advance(minutes=1)  # still inside the overlap: the newest product is read again
        mark = len(w.fake.requests)
        again = await w.products()
        quiet_calls = w.requests_since(mark)
        w.clock.advance(minutes=1)
        other = next(g for g in company.product_groups.values() if g["Id"] != product["ProductGroupId"])
        w.fake.update_product(ACME, newest, ProductGroupId=other["Id"])
        w.clock.advance(minutes=1)
        mark = len(w.fake.requests)
        changed = await w.products()
        changed_calls = w.requests_since(mark)
        latest = await w.log.latest([ProductObserved.TYPE], tenant="acme", entity=f"product:{product['Id']}")
    assert again.seen >= 1
    assert again.observed == 0
    assert quiet_calls == ["/v2/products"]
    assert changed.observed == 1
    assert changed_calls == ["/v2/products", "/v2/productgroups"]
    (head,) = latest.values()
    assert head.event.group == other


@pytest.mark.anyio
async def test_records_sharing_the_cursor_timestamp_are_neither_lost_nor_duplicated(tmp_path: Path) -> None:
    """Products stamped with the cursor's exact timestamp that appear only after a poll (replica lag) are
    picked up by the overlap; those already seen are not appended again."""
    async with world(tmp_path) as w:
        await w.products()
        one, two, three = goods(w)[:3]
        w.clock.now = NOW + timedelta(hours=1)
        w.fake.set_price(ACME, one, 11.0)
        w.fake.set_price(ACME, two, 12.0)
        w.clock.now = NOW + timedelta(hours=1, minutes=10)  # the poll runs later: the server time caps nothing
        first = await w.products()
        stamp = await w.log.cursor(PRODUCTS_CURSOR, "acme")
        # A product saved in the same instant becomes visible only now; another changes a second later.
        w.clock.now = NOW + timedelta(hours=1)
        late = w.fake.add_product(ACME, code="LATE-1", name="Sen vare")
        w.clock.advance(seconds=1)
        w.fake.set_price(ACME, three, 13.0)
        w.clock.now = NOW + timedelta(hours=1, minutes=20)
        second = await w.products()
        counts = await w.per_entity(ProductObserved.TYPE)
        cursor = await w.log.cursor(PRODUCTS_CURSOR, "acme")
    company = w.fake.company(ACME)
    p1, p2, p3 = (company.product_by_code(c)["Id"] for c in (one, two, three))
    assert first.observed == 2
    assert stamp == parse_timestamp(late["LastChangedDateTimeOffset"]).isoformat()
    assert second.observed == 2  # LATE-1 and the third; the first two were re-read but are unchanged
    assert counts[f"product:{late['Id']}"] == 1
    assert counts[f"product:{p1}"] == counts[f"product:{p2}"] == counts[f"product:{p3}"] == 2
    assert cursor == (NOW + timedelta(hours=1, seconds=1)).isoformat()


@pytest.mark.anyio
async def test_without_overlap_the_boundary_record_would_be_lost(tmp_path: Path) -> None:
    """The reason for the overlap: a strict `>` filter from the cursor alone misses a late record at it."""
    async with world(tmp_path) as w:
        await w.products()
        w.clock.advance(hours=1)
        w.fake.set_price(ACME, goods(w)[0], 11.0)
        w.clock.advance(minutes=10)
        await w.products()
        w.clock.advance(minutes=-10)
        late = w.fake.add_product(ACME, code="LATE-1", name="Sen vare")
        cursor = parse_timestamp(str(await w.log.cursor(PRODUCTS_CURSOR, "acme")))
        pages = [page async for page in w.client.products(changed_after=cursor)]
    assert parse_timestamp(late["LastChangedDateTimeOffset"]) == cursor
    assert pages == []


@pytest.mark.anyio
async def test_stock_changes_are_invisible_to_the_product_poll(tmp_path: Path) -> None:
    """A stock-only change does not move LastChanged, so the product poll does not see it (the known trap)."""
    async with world(tmp_path) as w:
        await w.products()
        w.clock.advance(hours=1)
        w.fake.set_stock(ACME, goods(w)[0], 999)  # its LastChanged is long before the overlap window
        result = await w.products()
    assert result.observed == 0


@pytest.mark.anyio
async def test_stock_written_back_is_not_a_new_product_observation(tmp_path: Path) -> None:
    """The newest product is always re-read in the overlap; a stock patch on it (our own write-back) is not a
    product change, so the re-read appends nothing. A real change to it still does."""
    async with world(tmp_path) as w:
        await w.products()
        products = w.fake.company(ACME).products.values()
        newest = max(products, key=lambda p: parse_timestamp(p["LastChangedDateTimeOffset"]))["Code"]
        w.clock.advance(minutes=1)
        w.fake.set_stock(ACME, newest, 4242)
        stock_only = await w.products()
        w.fake.set_price(ACME, newest, 1.0)
        priced = await w.products()
    assert stock_only.seen >= 1
    assert stock_only.observed == 0
    assert priced.observed == 1


@pytest.mark.anyio
async def test_cursor_comes_from_the_data_not_the_clock(tmp_path: Path) -> None:
    """The cursor is the newest change seen, however late the poll runs."""
    async with world(tmp_path) as w:
        w.clock.advance(days=30)
        await w.products()
        cursor = await w.log.cursor(PRODUCTS_CURSOR, "acme")
    assert cursor == latest_stamp(list(w.fake.company(ACME).products.values()), "LastChangedDateTimeOffset")


@pytest.mark.anyio
async def test_rule6_a_future_change_time_is_kept_but_the_cursor_stops_at_the_server_time(tmp_path: Path) -> None:
    """A product stamped in 2099 is observed with its stamp as it came, but the cursor stops at the server's
    `Date` less the overlap; a product changed after that (in the server's time) is still read next poll."""
    async with world(tmp_path) as w:
        odd = goods(w)[0]
        w.fake.company(ACME).product_by_code(odd)["LastChangedDateTimeOffset"] = "2099-01-01T00:00:00.0000000Z"
        w.clock.advance(hours=1)
        await w.products()
        cursor = await w.log.cursor(PRODUCTS_CURSOR, "acme")
        w.clock.advance(minutes=15)
        later = goods(w)[1]
        w.fake.set_price(ACME, later, 99.0)
        second = await w.products()
        observed = [e.event.product for e in await w.events(ProductObserved.TYPE)]
    assert cursor == (NOW + timedelta(hours=1) - OVERLAP).isoformat()
    stamps = [p["LastChangedDateTimeOffset"] for p in observed if p["Code"] == odd]
    assert stamps == ["2099-01-01T00:00:00.0000000Z"]
    assert second.observed == 1
    assert [p["UnitPrice"] for p in observed if p["Code"] == later][-1] == 99.0


@pytest.mark.anyio
async def test_rule5_a_record_changed_while_the_poll_ran_is_read_next_time(tmp_path: Path) -> None:
    """The cursor never passes the server time of the poll's first page less the overlap: a product changed on
    the server while a long poll was still reading (stamped before the newest record seen, after the first
    page was served) is read by the next poll."""
    async with world(tmp_path, page_size=5) as w:
        await w.products()
        w.clock.advance(hours=1)
        codes = goods(w)
        w.fake.set_price(ACME, codes[0], 1.0)
        w.clock.advance(minutes=10)
        first_page_served = w.clock.now
        w.clock.advance(minutes=10)  # the server's clock moves on while the poll reads
        w.fake.set_price(ACME, codes[1], 2.0)  # lands on an already-read page, stamped after the first page
        w.clock.advance(minutes=10)
        w.fake.set_price(ACME, codes[2], 3.0)  # seen by this poll: the newest stamp it reads
        w.clock.now = first_page_served
        await w.products()
        cursor = await w.log.cursor(PRODUCTS_CURSOR, "acme")
        w.clock.advance(hours=1)
        await w.products()
        prices = {e.event.product["Code"]: e.event.product["UnitPrice"] for e in await w.events(ProductObserved.TYPE)}
    assert cursor == (first_page_served - OVERLAP).isoformat()
    assert [prices[c] for c in codes[:3]] == [1.0, 2.0, 3.0]


@pytest.mark.anyio
async def test_a_poll_failing_halfway_leaves_the_cursor(tmp_path: Path) -> None:
    """A permanent error on page 3 of 5 fails the poll without moving the cursor; the next poll then
    observes every product exactly once."""
    async with world(tmp_path, page_size=5) as w:
        await w.products()
        before = await w.log.cursor(PRODUCTS_CURSOR, "acme")
        w.clock.advance(hours=1)
        for n, product in enumerate(list(w.fake.company(ACME).products.values())):
            w.fake.set_price(ACME, product["Code"], float(n))
        w.clock.advance(minutes=10)
        w.fake.faults.add(Fault("status", status=400), path=r"/v2/products\?.*PageNumber=3")
        with pytest.raises(PermanentApiError):
            await w.products()
        assert await w.log.cursor(PRODUCTS_CURSOR, "acme") == before
        partial = await w.per_entity(ProductObserved.TYPE)
        result = await w.products()
        counts = await w.per_entity(ProductObserved.TYPE)
        after = await w.log.cursor(PRODUCTS_CURSOR, "acme")
    # A delta's pages are all read before any is appended: the failure on page 3 stored nothing.
    assert sum(partial.values()) == 25
    assert result.observed == 25
    assert set(counts.values()) == {2}  # first sweep plus the price change, each once
    assert after == (NOW + timedelta(hours=1)).isoformat()


# --------------------------------------------------------------------------------------------------- invoices


def unpaid(w: World, count: int) -> list[dict[str, Any]]:
    return [
        i for i in w.fake.company(ACME).invoices.values() if i["VoucherType"] == "OutgoingInvoice" and i["Balance"] != 0
    ][:count]


@pytest.mark.anyio
async def test_first_invoice_poll_starts_at_orders_since(tmp_path: Path) -> None:
    """History before `orders_since` is never read; invoices paid after it are observed with lines, customer
    and delivery addresses, at about one request each."""
    async with world(tmp_path) as w:
        first = await w.invoices()
        assert first.observed == 0
        assert await w.log.cursor(INVOICES_SINCE, "acme") == NOW.isoformat()
        w.clock.advance(hours=1)
        paid = unpaid(w, 3)
        for invoice in paid:
            w.fake.pay_invoice(ACME, invoice["Id"])
        w.clock.advance(minutes=10)
        mark = len(w.fake.requests)
        result = await w.invoices()
        events = await w.events(InvoiceObserved.TYPE)
        cursor = await w.log.cursor(INVOICES_CURSOR, "acme")
    company = w.fake.company(ACME)
    assert {e.entity for e in events} == {f"invoice:{i['Id']}" for i in paid}
    assert result.observed == 3
    assert cursor == (NOW + timedelta(hours=1)).isoformat()
    assert sorted(w.requests_since(mark)) == sorted(
        ["/v2/outgoinginvoices", "/v2/customers", "/v2/contactdeliveryaddresses"]
        + [f"/v2/outgoinginvoices/{i['Id']}/lines" for i in paid]
    )
    assert result.requests == 6
    for stored in events:
        event = stored.event
        invoice_id = event.invoice["Id"]
        customer = company.customer_by_number(event.invoice["CustomerNo"])
        assert event.invoice == company.invoices[invoice_id]
        assert event.lines == company.invoice_lines[invoice_id]
        assert event.customer == customer
        addresses = [a for a in company.delivery_addresses.values() if a["ContactId"] == customer["Id"]]
        assert sorted(a["Id"] for a in event.delivery_addresses) == sorted(a["Id"] for a in addresses)


@pytest.mark.anyio
async def test_non_orders_are_observed_without_lines(tmp_path: Path) -> None:
    """Unpaid invoices and credit notes changed after the start are observed (for audit) with no line reads."""
    async with world(tmp_path) as w:
        await w.invoices()
        w.clock.advance(hours=1)
        open_invoice = w.fake.add_invoice(
            ACME, {"VoucherType": "OutgoingInvoice", "Balance": 100.0, "CustomerNo": 10001}
        )
        credit = w.fake.add_invoice(ACME, {"VoucherType": "OutgoingCreditNote", "Balance": 0.0, "CustomerNo": 10001})
        mark = len(w.fake.requests)
        result = await w.invoices()
        events = {e.entity: e.event for e in await w.events(InvoiceObserved.TYPE)}
    assert result.observed == 2
    assert w.requests_since(mark) == ["/v2/outgoinginvoices"]
    for invoice in (open_invoice, credit):
        event = events[f"invoice:{invoice['Id']}"]
        assert (event.lines, event.customer, event.delivery_addresses) == ([], None, [])


@pytest.mark.anyio
async def test_invoiced_trigger_reads_lines_of_unpaid_invoices(tmp_path: Path) -> None:
    """With order_trigger "invoiced", an unpaid invoice gets its lines too (credit notes still do not)."""
    async with world(tmp_path, order_trigger="invoiced") as w:
        await w.invoices()
        w.clock.advance(hours=1)
        source = unpaid(w, 1)[0]
        header = {k: v for k, v in source.items() if not k.endswith("DateTimeOffset")}
        fresh = w.fake.add_invoice(
            ACME,
            {**header, "Id": "6f1f4f0e-9a55-4d2b-9d39-0c5a3c6e1b11"},
            w.fake.company(ACME).invoice_lines[source["Id"]],
        )
        await w.invoices()
        events = await w.events(InvoiceObserved.TYPE)
    assert len(events) == 1
    assert events[0].event.invoice["Id"] == fresh["Id"]
    assert events[0].event.lines == w.fake.company(ACME).invoice_lines[source["Id"]]


@pytest.mark.anyio
async def test_overlap_reread_costs_no_line_requests(tmp_path: Path) -> None:
    """Paid invoices re-read in the overlap window are recognised from the log: no lines, no look-ups."""
    async with world(tmp_path) as w:
        await w.invoices()
        w.clock.advance(hours=1)
        for invoice in unpaid(w, 4):
            w.fake.pay_invoice(ACME, invoice["Id"])
        await w.invoices()
        w.clock.advance(minutes=1)
        mark = len(w.fake.requests)
        again = await w.invoices()
        total = await w.per_entity(InvoiceObserved.TYPE)
    assert again.seen == 4
    assert again.observed == 0
    assert w.requests_since(mark) == ["/v2/outgoinginvoices"]
    assert set(total.values()) == {1}


@pytest.mark.anyio
async def test_overlap_never_reaches_before_orders_since(tmp_path: Path) -> None:
    """A payment just before the stored start stays unobserved, even inside a later poll's overlap window."""
    async with world(tmp_path) as w:
        early, later = unpaid(w, 2)
        w.clock.now = NOW - timedelta(minutes=1)
        w.fake.pay_invoice(ACME, early["Id"])
        w.clock.now = NOW + timedelta(minutes=1)
        w.fake.pay_invoice(ACME, later["Id"])
        await w.invoices(orders_since=NOW)
        await w.invoices(orders_since=NOW + timedelta(days=5))  # a later default must not move the stored start
        entities = set(await w.per_entity(InvoiceObserved.TYPE))
        since = await w.log.cursor(INVOICES_SINCE, "acme")
    assert entities == {f"invoice:{later['Id']}"}
    assert since == NOW.isoformat()


@pytest.mark.anyio
async def test_configured_orders_since_overrides_the_stored_default(tmp_path: Path) -> None:
    """A tenant's configured orders_since is the floor even when a default one was stored earlier."""
    async with world(tmp_path) as w:
        await w.invoices(orders_since=NOW)
    async with world(tmp_path, orders_since=NOW + timedelta(hours=2)) as w:
        early, late = unpaid(w, 2)
        w.clock.now = NOW + timedelta(hours=1)
        w.fake.pay_invoice(ACME, early["Id"])
        w.clock.now = NOW + timedelta(hours=3)
        w.fake.pay_invoice(ACME, late["Id"])
        await w.invoices(orders_since=NOW + timedelta(hours=2))
        entities = set(await w.per_entity(InvoiceObserved.TYPE))
        since = await w.log.cursor(INVOICES_SINCE, "acme")
    assert entities == {f"invoice:{late['Id']}"}
    assert since == (NOW + timedelta(hours=2)).isoformat()


@pytest.mark.anyio
async def test_invoice_poll_failing_on_lines_leaves_the_cursor(tmp_path: Path) -> None:
    """A lines read that keeps failing fails the poll with the client's error (not an ExceptionGroup); the
    cursor stays; the next poll observes each invoice once."""
    async with world(tmp_path, policy=RetryPolicy(attempts=2)) as w:
        await w.invoices()
        w.clock.advance(hours=1)
        paid = unpaid(w, 3)
        for invoice in paid:
            w.fake.pay_invoice(ACME, invoice["Id"])
        w.fake.faults.add(Fault("status", status=503), path=f"/{paid[1]['Id']}/lines", times=2)
        with pytest.raises(TransientApiError):
            await w.invoices()
        assert await w.log.cursor(INVOICES_CURSOR, "acme") is None
        result = await w.invoices()
        counts = await w.per_entity(InvoiceObserved.TYPE)
    assert result.observed == 3
    assert counts == Counter({f"invoice:{i['Id']}": 1 for i in paid})


@pytest.mark.anyio
async def test_payment_after_an_unpaid_observation_is_observed_with_details(tmp_path: Path) -> None:
    """An invoice first seen unpaid (no lines) is observed again, complete, once it is paid."""
    async with world(tmp_path) as w:
        await w.invoices()
        w.clock.advance(hours=1)
        invoice = w.fake.add_invoice(
            ACME,
            {"VoucherType": "OutgoingInvoice", "Balance": 50.0, "CustomerNo": 10002},
            [{"Id": 1, "LineType": "Normal"}],
        )
        await w.invoices()
        w.clock.advance(hours=1)
        w.fake.pay_invoice(ACME, invoice["Id"])
        await w.invoices()
        history = [e.event for e in await w.events(InvoiceObserved.TYPE)]
    assert [e.invoice["Balance"] for e in history] == [50.0, 0.0]
    assert [e.lines for e in history] == [[], [{"Id": 1, "LineType": "Normal"}]]
    assert history[1].customer == w.fake.company(ACME).customer_by_number(10002)


@pytest.mark.anyio
async def test_rule3_a_record_without_an_id_is_recorded_and_the_rest_flows(tmp_path: Path) -> None:
    """A product with no Id cannot be an entity of its own: it is kept as a rejection (named by its content)
    naming the field; every other product is observed. (More malformed records: test_poller_corpus.py.)"""
    async with world(tmp_path, products=6) as w:
        broken = next(iter(w.fake.company(ACME).products.values()))
        broken["Id"] = None
        result = await w.products()
        observed = await w.per_entity("product.observed")
        (rejected,) = await w.events("observation.rejected")
    assert len(observed) == 5
    assert result.seen == 6
    assert result.rejected == 1
    assert rejected.entity.startswith("product:?")
    assert rejected.event.field == "Id"
    assert rejected.event.record == broken


@pytest.mark.anyio
async def test_rule5_every_list_page_is_read_before_any_detail(tmp_path: Path) -> None:
    """All invoice pages are read back to back, before any lines, customers or addresses; all product pages
    of a delta before the groups. (A list read with other requests in between gives records more time to move
    between pages.)"""
    async with world(tmp_path, page_size=2) as w:
        await w.products()
        await w.invoices()
        w.clock.advance(hours=1)
        for invoice in unpaid(w, 7):
            w.fake.pay_invoice(ACME, invoice["Id"])
        for code in goods(w)[:7]:
            w.fake.set_price(ACME, code, 5.0)
        w.clock.advance(minutes=10)
        mark = len(w.fake.requests)
        products = await w.products()
        product_calls = w.requests_since(mark)
        mark = len(w.fake.requests)
        invoices = await w.invoices()
        invoice_calls = w.requests_since(mark)
    assert (products.observed, invoices.observed) == (7, 7)
    listed = [i for i, path in enumerate(product_calls) if path == "/v2/products"]
    assert listed == list(range(len(listed)))
    assert len(listed) >= 4
    assert set(product_calls[len(listed) :]) == {"/v2/productgroups"}
    listed = [i for i, path in enumerate(invoice_calls) if path == "/v2/outgoinginvoices"]
    assert listed == list(range(4))  # 7 invoices in pages of 2
    assert len(invoice_calls) > 4
