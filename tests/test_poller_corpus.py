"""Rule 3 and rule 12: one malformed record is its own problem.

A corpus of records as a user's PowerOffice company may one day serve them, each placed on the second page of a
poll through the fake server and the real pollers. Whatever the record, the poll guarantees:

- the record is either observed exactly as served, or appended as `observation.rejected` naming the field (and
  then listed by `audit failures`);
- the cursor moves on as if the record were sound;
- every other record of the poll is observed.

What the projector makes of an observed record (an article, an order waiting for its article, a
`mapping.failed`) is its own business and is tested there; two cases below run it to show that a header the
mapping cannot read ends in `audit failures` naming the field.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import audit
from pipeline.events import InvoiceObserved, ObservationRejected, ProductObserved
from pipeline.fakes.generate import Company
from pipeline.pollers.poweroffice import INVOICES_CURSOR, PRODUCTS_CURSOR
from pipeline.projectors.commands import project
from tests.poweroffice_world import ACME, NOW, world

JsonObject = dict[str, Any]
Mutate = Callable[[Company, JsonObject], None]

LONG = "x" * 5000
EMOJI = "📦🚚 Kaffe ☕ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 👩🏽‍💻"


def _set(field: str, value: Any) -> Mutate:
    def mutate(_company: Company, record: JsonObject) -> None:
        record[field] = value

    return mutate


def _raw(field: str, text: bytes) -> Mutate:
    """Serve `text` verbatim as the field's value (what orjson refuses to parse)."""
    return _set(field, orjson.Fragment(text))


def _drop(field: str) -> Mutate:
    def mutate(_company: Company, record: JsonObject) -> None:
        del record[field]

    return mutate


@dataclass(frozen=True)
class Case:
    id: str
    mutate: Mutate
    rejected: str | None = None  # the field the rejection must name; None: the record is observed as served


# ------------------------------------------------------------------------------------------------- products

PRODUCT_FIELDS = (
    "Code", "Name", "Description", "Gtin", "ProductType", "UnitOfMeasureCode", "UnitPrice", "UnitCost",
    "ProductGroupId", "ProductGroupCode", "IsArchived", "IsStockItem", "StockOnHand", "StockAvailable",
    "StandardSalesAccountId", "CreatedDateTimeOffset",
)  # fmt: skip


def _duplicate_code(company: Company, record: JsonObject) -> None:
    other = next(p for p in company.products.values() if p is not record)
    record["Code"] = other["Code"]


PRODUCT_CASES = [
    *(Case(f"null-{f}", _set(f, None)) for f in PRODUCT_FIELDS),
    Case("null-Id", _set("Id", None), rejected="Id"),
    Case("no-Id", _drop("Id"), rejected="Id"),
    Case("text-Id", _set("Id", "P-1"), rejected="Id"),
    Case("float-Id", _set("Id", 1.5), rejected="Id"),
    Case("boolean-Id", _set("Id", True), rejected="Id"),
    Case("NaN-Id", _raw("Id", b"NaN"), rejected="Id"),
    Case("list-ProductGroupId", _set("ProductGroupId", [1, 2]), rejected="ProductGroupId"),
    Case("object-ProductGroupId", _set("ProductGroupId", {"Id": 1}), rejected="ProductGroupId"),
    Case("text-ProductGroupId", _set("ProductGroupId", "ten"), rejected="ProductGroupId"),
    Case("boolean-ProductGroupId", _set("ProductGroupId", False), rejected="ProductGroupId"),
    Case("unknown-ProductGroupId", _set("ProductGroupId", 987654321)),
    Case("number-Code", _set("Code", 12345)),
    Case("list-Name", _set("Name", ["a", "b"])),
    Case("text-UnitPrice", _set("UnitPrice", "12,50")),
    Case("text-IsStockItem", _set("IsStockItem", "false")),
    Case("number-IsArchived", _set("IsArchived", 0)),
    Case("huge-UnitPrice", _set("UnitPrice", 1e308)),
    Case("bigint-UnitCost", _raw("UnitCost", b"18446744073709551616")),
    Case("NaN-UnitPrice", _raw("UnitPrice", b"NaN"), rejected="UnitPrice"),
    Case("Infinity-UnitCost", _raw("UnitCost", b"-Infinity"), rejected="UnitCost"),
    Case("1e400-UnitPrice", _raw("UnitPrice", b"1e400"), rejected="UnitPrice"),
    Case("lone-surrogate-Name", _raw("Name", b'"Hylle \\ud800"'), rejected="Name"),
    Case("invalid-utf8-Description", _raw("Description", b'"\xed\xa0\x80 \xff"'), rejected="Description"),
    Case("long-Name", _set("Name", LONG)),
    Case("emoji-Name", _set("Name", EMOJI)),
    Case("emoji-Code", _set("Code", EMOJI)),
    Case("long-Code", _set("Code", LONG)),
    Case("duplicate-Code", _duplicate_code),
    Case("extra-field", _set("SomethingNew", {"nested": [1, None, "x"]})),
]


@dataclass
class ProductPoll:
    company: Company
    target: JsonObject
    pid: int
    cursor: str | None
    latest: dict[str, JsonObject]
    rejections: list[Any]
    failures: list[audit.Row]


async def _products_poll(tmp_path: Path, case: Case, *, sweep: bool) -> ProductPoll:
    """Poll 12 products in pages of 5 with the case's record on page 2 (first sweep, or a delta in which every
    product changed)."""
    async with world(tmp_path, products=12, page_size=5) as w:
        company = w.fake.company(ACME)
        if not sweep:
            await w.products()
            w.clock.advance(hours=1)
            for product in list(company.products.values()):
                w.fake.set_price(ACME, product["Code"], 10.0)
        pid = sorted(company.products)[6]
        target = company.products[pid]
        case.mutate(company, target)
        w.clock.advance(minutes=10)
        await w.products()
        return ProductPoll(
            company,
            target,
            pid,
            await w.log.cursor(PRODUCTS_CURSOR, "acme"),
            {e.entity: e.event.product for e in await w.events(ProductObserved.TYPE)},
            await w.events(ObservationRejected.TYPE),
            await audit.failures(w.log),
        )


@pytest.mark.anyio
@pytest.mark.parametrize("sweep", [False, True], ids=["delta", "sweep"])
@pytest.mark.parametrize("case", PRODUCT_CASES, ids=lambda c: c.id)
async def test_rule3_a_malformed_product_is_its_own_problem(tmp_path: Path, case: Case, sweep: bool) -> None:
    poll = await _products_poll(tmp_path, case, sweep=sweep)
    pid, target = poll.pid, poll.target
    # Every other product flowed, exactly as served.
    for other_id, product in poll.company.products.items():
        if other_id != pid:
            assert poll.latest[f"product:{other_id}"] == product
    if case.rejected is None:
        assert poll.rejections == []
        assert poll.latest[f"product:{pid}"] == orjson.loads(orjson.dumps(target))
    else:
        (rejection,) = poll.rejections
        event = rejection.event
        assert case.rejected in event.field
        assert event.resource == "Products"
        if event.raw is not None:  # it would not parse: the raw text is kept, with the members that did
            assert event.raw.startswith("{")
            assert event.raw.endswith("}")
            assert event.record["Code"] == target["Code"]
        else:
            assert event.record == target
        # Kept under its own entity when its Id can be read, else under a name made from its content.
        if isinstance(target.get("Id"), int) and not isinstance(target.get("Id"), bool):
            assert rejection.entity == f"product:{pid}"
        else:
            assert rejection.entity.startswith("product:?")
        if sweep:
            assert f"product:{pid}" not in poll.latest
        listed = [r for r in poll.failures if r.type == ObservationRejected.TYPE]
        assert [r.entity for r in listed] == [rejection.entity]
        assert case.rejected in listed[0].summary
    # The cursor moved on as if the record were sound.
    if sweep:
        stamps = [p["LastChangedDateTimeOffset"] for p in poll.company.products.values()]
        assert poll.cursor == max(datetime.fromisoformat(s) for s in stamps).isoformat()
    else:
        assert poll.cursor == (NOW + timedelta(hours=1)).isoformat()


@pytest.mark.anyio
async def test_rule3_a_product_read_again_unchanged_is_not_rejected_twice(tmp_path: Path) -> None:
    """A rejected record re-read in the overlap adds nothing; once fixed in PowerOffice it is observed, and the
    rejection no longer stands in `audit failures`."""
    async with world(tmp_path, products=6) as w:
        company = w.fake.company(ACME)
        target = company.products[sorted(company.products)[2]]
        target["ProductGroupId"] = [1]
        await w.products()
        w.clock.advance(minutes=1)
        await w.products()
        assert len(await w.events(ObservationRejected.TYPE)) == 1
        assert len(await audit.failures(w.log)) == 1
        w.clock.advance(minutes=10)
        w.fake.update_product(ACME, target["Code"], ProductGroupId=None)
        w.clock.advance(minutes=10)
        await w.products()
        assert await audit.failures(w.log) == []
        assert f"product:{target['Id']}" in {e.entity for e in await w.events(ProductObserved.TYPE)}


# ------------------------------------------------------------------------------------------------- invoices


def _isolate(company: Company, invoice: JsonObject) -> tuple[JsonObject, list[JsonObject]]:
    """Give the invoice a customer (and delivery addresses) of its own, so that breaking them touches no other
    invoice; (customer, addresses)."""
    source = company.customer_by_number(invoice["CustomerNo"])
    customer = orjson.loads(orjson.dumps(source))
    customer["Id"] = company.new_id()
    customer["Number"] = 90000 + customer["Id"] % 1000
    company.customers[customer["Id"]] = customer
    addresses = []
    for n in range(2):
        address = {
            "Id": company.new_id(),
            "ContactId": customer["Id"],
            "AddressLine1": f"Lagerveien {n}",
            "AddressLine2": None,
            "ZipCode": "0150",
            "City": "Oslo",
            "CountryCode": "NO",
            "ExternalCode": None,
            "IsPrimary": n == 0,
            "CreatedDateTimeOffset": "2026-01-01T00:00:00.0000000Z",
            "LastChangedDateTimeOffset": "2026-01-01T00:00:00.0000000Z",
        }
        company.delivery_addresses[address["Id"]] = address
        addresses.append(address)
    invoice["CustomerNo"] = customer["Number"]
    invoice["CustomerId"] = customer["Id"]
    return customer, addresses


def _line(field: str, value: Any, index: int = 0) -> Mutate:
    def mutate(company: Company, invoice: JsonObject) -> None:
        company.invoice_lines[invoice["Id"]][index][field] = value

    return mutate


def _customer(field: str, value: Any) -> Mutate:
    def mutate(company: Company, invoice: JsonObject) -> None:
        customer, _ = _isolate(company, invoice)
        customer[field] = value

    return mutate


def _address(field: str, value: Any) -> Mutate:
    def mutate(company: Company, invoice: JsonObject) -> None:
        _, addresses = _isolate(company, invoice)
        addresses[1][field] = value

    return mutate


def _unknown_product_line(company: Company, invoice: JsonObject) -> None:
    line = company.invoice_lines[invoice["Id"]][0]
    line["ProductCode"] = "NO-SUCH-PRODUCT"
    line["ProductId"] = 999_999_999


def _no_lines(company: Company, invoice: JsonObject) -> None:
    company.invoice_lines[invoice["Id"]] = []


def _id(value: Any) -> Mutate:
    """Change the invoice's Id (its lines move with it, so the fake still serves them)."""

    def mutate(company: Company, invoice: JsonObject) -> None:
        old = invoice["Id"]
        invoice["Id"] = value
        if isinstance(value, str):
            company.invoice_lines[value] = company.invoice_lines.pop(old)

    return mutate


def _drop_id(company: Company, invoice: JsonObject) -> None:
    del invoice["Id"]


INVOICE_FIELDS = (
    "InvoiceNo", "OrderNo", "VoucherNo", "VoucherType", "VoucherDate", "DeliveryDate", "CustomerNo", "CustomerId",
    "CurrencyCode", "TotalAmount", "IsReversed", "DeliveryAddress1", "CustomerReference", "MatchId",
)  # fmt: skip

INVOICE_CASES = [
    *(Case(f"null-{f}", _set(f, None)) for f in INVOICE_FIELDS),
    Case("null-Balance", _set("Balance", None)),
    Case("text-Balance", _set("Balance", "n/a")),
    Case("text-IsReversed", _set("IsReversed", "false")),
    Case("number-VoucherType", _set("VoucherType", 7)),
    Case("text-CustomerNo", _set("CustomerNo", "abc")),
    Case("list-CustomerNo", _set("CustomerNo", [10001])),
    Case("huge-TotalAmount", _set("TotalAmount", 1e308)),
    Case("long-CustomerReference", _set("CustomerReference", LONG)),
    Case("emoji-DeliveryAddress1", _set("DeliveryAddress1", EMOJI)),
    Case("NaN-Balance", _raw("Balance", b"NaN"), rejected="Balance"),
    Case("1e400-TotalAmount", _raw("TotalAmount", b"1e400"), rejected="TotalAmount"),
    Case("lone-surrogate-CustomerReference", _raw("CustomerReference", b'"\\udc00"'), rejected="CustomerReference"),
    Case("no-Id", _drop_id, rejected="Id"),
    Case("null-Id", _id(None), rejected="Id"),
    Case("number-Id", _id(12345), rejected="Id"),
    Case("text-Id", _id("not-a-uuid"), rejected="Id"),
    Case("unknown-product-line", _unknown_product_line),
    Case("no-lines", _no_lines),
    Case("null-line-Quantity", _line("Quantity", None)),
    Case("text-line-Quantity", _line("Quantity", "two")),
    Case("emoji-line-Description", _line("Description", EMOJI)),
    Case("NaN-line-Quantity", _line("Quantity", orjson.Fragment(b"NaN")), rejected="Lines[0].Quantity"),
    Case("1e400-line-price", _line("ProductUnitPrice", orjson.Fragment(b"1e400")), rejected="ProductUnitPrice"),
    Case("null-customer-Name", _customer("Name", None)),
    Case("long-customer-Name", _customer("Name", LONG)),
    Case("NaN-customer-Allowance", _customer("Allowance", orjson.Fragment(b"NaN")), rejected="customer.Allowance"),
    Case(
        "surrogate-customer-address",
        _customer("MailAddress", {"City": orjson.Fragment(b'"\\ud800"')}),
        rejected="customer.MailAddress.City",
    ),
    Case("emoji-address-City", _address("City", EMOJI)),
    Case(
        "surrogate-address-City",
        _address("City", orjson.Fragment(b'"Oslo \\ud83d"')),
        rejected="delivery_addresses.City",
    ),
]


@pytest.mark.anyio
@pytest.mark.parametrize("case", INVOICE_CASES, ids=lambda c: c.id)
async def test_rule3_a_malformed_invoice_is_its_own_problem(tmp_path: Path, case: Case) -> None:
    async with world(tmp_path, invoices=30, page_size=3) as w:
        await w.invoices()
        w.clock.advance(hours=1)
        company = w.fake.company(ACME)
        paid = [i for i in company.invoices.values() if i["VoucherType"] == "OutgoingInvoice" and i["Balance"]][:7]
        for invoice in paid:
            w.fake.pay_invoice(ACME, invoice["Id"])
        target = paid[4]
        others = [dict(i) for i in paid if i is not target]
        case.mutate(company, target)
        w.clock.advance(minutes=10)
        result = await w.invoices()
        observed = {e.entity: e.event for e in await w.events(InvoiceObserved.TYPE)}
        rejections = await w.events(ObservationRejected.TYPE)
        cursor = await w.log.cursor(INVOICES_CURSOR, "acme")
        failures = await audit.failures(w.log)
    # Every other paid invoice flowed, with its lines.
    for invoice in others:
        event = observed[f"invoice:{invoice['Id']}"]
        assert event.invoice == invoice
        assert event.lines == company.invoice_lines[invoice["Id"]]
    if case.rejected is None:
        assert rejections == []
        assert observed[f"invoice:{target['Id']}"].invoice == orjson.loads(orjson.dumps(target))
        assert len(observed) == len(paid)
    else:
        (rejection,) = rejections
        assert case.rejected in rejection.event.field
        assert rejection.event.resource == "OutgoingInvoices"
        assert rejection.entity not in observed
        # What would not parse is kept as received (the invoice, or its line, customer or address).
        assert (rejection.event.raw is None) == (case.rejected == "Id")
        if rejection.event.raw is None:
            assert rejection.event.record == target
        listed = [r for r in failures if r.type == ObservationRejected.TYPE]
        assert [r.entity for r in listed] == [rejection.entity]
        assert result.rejected == 1
    # The cursor moved on: every payment was at NOW + 1 h.
    assert cursor == (NOW + timedelta(hours=1)).isoformat()


@pytest.mark.anyio
@pytest.mark.parametrize(("field", "value"), [("Balance", "n/a"), ("IsReversed", "false")])
async def test_rule3_an_invoice_header_the_mapping_cannot_read_is_listed_by_audit(
    tmp_path: Path, field: str, value: str
) -> None:
    """The poller observes the invoice with its lines (a mapping fixed later could still make the order); the
    projector's mapping failure names the field, and `audit failures` lists it."""
    async with world(tmp_path, invoices=12) as w:
        await w.invoices()
        w.clock.advance(hours=1)
        company = w.fake.company(ACME)
        paid = [i for i in company.invoices.values() if i["VoucherType"] == "OutgoingInvoice" and i["Balance"]][:3]
        for invoice in paid:
            w.fake.pay_invoice(ACME, invoice["Id"])
        paid[1][field] = value
        w.clock.advance(minutes=10)
        await w.invoices()
        await project(w.log, w.tenant)
        failures = await audit.failures(w.log)
        observed = {e.entity: e.event for e in await w.events(InvoiceObserved.TYPE)}
    assert observed[f"invoice:{paid[1]['Id']}"].lines == company.invoice_lines[paid[1]["Id"]]
    assert [(r.entity, r.payload["field"]) for r in failures] == [(f"invoice:{paid[1]['Id']}", field)]


# ------------------------------------------------------------------------------------------------- property

BAD_RAW = [b"NaN", b"Infinity", b"1e400", b'"\\ud800"', b'"\xed\xa0\x80"', b"-1e999"]
int64 = st.integers(min_value=-(2**63), max_value=2**64 - 1)  # what a JSON encoder can write
junk = st.one_of(
    st.none(),
    st.booleans(),
    int64,
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
    st.sampled_from([LONG, EMOJI, "", "  ", "12", "n/a", "false", "2026-13-45"]),
    st.lists(int64, max_size=3),
    st.dictionaries(st.text(max_size=5), int64, max_size=3),
    st.sampled_from(BAD_RAW).map(orjson.Fragment),
)
MUTABLE = [*PRODUCT_FIELDS, "Id", "ProductGroupId", "NewField"]


def _expected_rejection(field: str, value: Any) -> str | None:
    """The oracle: which field a rejection must name for this value in this field (None: observed)."""
    if isinstance(value, orjson.Fragment):
        return field
    if field == "Id" and (isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2**63):
        return "Id"
    if field == "ProductGroupId" and value is not None:
        digits = isinstance(value, str) and value.strip().isdigit() and len(value.strip()) < 19
        number = not isinstance(value, bool) and isinstance(value, int) and 0 <= value < 2**63
        if not (digits or number):
            return "ProductGroupId"
    return None


@settings(max_examples=40)
@given(field=st.sampled_from(MUTABLE), value=junk)
@pytest.mark.anyio
async def test_rule3_any_junk_in_any_product_field_stays_with_its_record(field: str, value: Any) -> None:
    """Property: whatever one field of one product holds, that product is observed as served or rejected
    naming exactly that field, and every other product is observed."""
    with tempfile.TemporaryDirectory() as tmp:
        case = Case("junk", _set(field, value), rejected=_expected_rejection(field, value))
        poll = await _products_poll(Path(tmp), case, sweep=True)
    for other_id, product in poll.company.products.items():
        if other_id != poll.pid:
            assert poll.latest[f"product:{other_id}"] == product
    if case.rejected is None:
        assert poll.rejections == []
        assert poll.latest[f"product:{poll.pid}"] == orjson.loads(orjson.dumps(poll.target))
    else:
        (rejection,) = poll.rejections
        assert rejection.event.field == case.rejected
        assert [r.entity for r in poll.failures] == [rejection.entity]
    stamps = [p["LastChangedDateTimeOffset"] for p in poll.company.products.values()]
    assert poll.cursor == max(datetime.fromisoformat(s) for s in stamps).isoformat()


@pytest.mark.anyio
async def test_rule3_a_rejected_invoice_comes_back_once_fixed_in_poweroffice(tmp_path: Path) -> None:
    """Fixing a line, or the invoice itself back to what it was, moves no balance time; the poller reads the
    standing rejections again by id on every poll, so the fix brings the invoice back with no manual step.
    Unfixed, the re-read appends nothing."""
    async with world(tmp_path, invoices=20) as w:
        await w.invoices()
        w.clock.advance(hours=1)
        company = w.fake.company(ACME)
        first, second = [i for i in company.invoices.values() if i["VoucherType"] == "OutgoingInvoice"][:2]
        for invoice in (first, second):
            w.fake.pay_invoice(ACME, invoice["Id"])
        w.clock.advance(minutes=10)
        await w.invoices()  # both observed
        line = company.invoice_lines[first["Id"]][0]
        quantity = line["Quantity"]
        line["Quantity"] = orjson.Fragment(b"NaN")
        w.clock.advance(hours=1)
        w.fake.pay_invoice(ACME, first["Id"])  # a new balance time: read again, and its line will not parse
        number = second["InvoiceNo"]
        w.clock.advance(minutes=10)
        await w.invoices()
        second["InvoiceNo"] = orjson.Fragment(b"1e400")  # broken in place: no balance time moves
        w.fake.pay_invoice(ACME, second["Id"])
        second["BalanceLastChangedDateTimeOffset"] = first["BalanceLastChangedDateTimeOffset"]
        w.clock.advance(minutes=10)
        await w.invoices()
        standing = {r.entity: r.payload["field"] for r in await audit.failures(w.log)}
        assert standing == {f"invoice:{first['Id']}": "Lines[0].Quantity", f"invoice:{second['Id']}": "InvoiceNo"}
        third = [i for i in company.invoices.values() if i["VoucherType"] == "OutgoingInvoice"][2]
        w.fake.pay_invoice(ACME, third["Id"])  # moves the cursor on: the two leave the overlap window
        w.clock.advance(minutes=10)
        await w.invoices()
        w.clock.advance(minutes=15)
        before = await w.log.max_position()
        mark = len(w.fake.requests)
        await w.invoices()  # nothing fixed yet: read again by id, nothing appended
        assert await w.log.max_position() == before
        queries = [r.query for r in w.fake.requests[mark:] if r.path.lower() == "/v2/outgoinginvoices"]
        assert len(queries) == 2
        assert "balanceLastChangedDateTimeOffsetGreaterThan=" in queries[0]
        assert "invoiceIds=" in queries[1]
        line["Quantity"] = quantity
        second["InvoiceNo"] = number
        w.clock.advance(minutes=15)
        await w.invoices()
        failures = await audit.failures(w.log)
        latest = {e.entity: e.event for e in await w.events(InvoiceObserved.TYPE)}
    assert failures == []
    assert latest[f"invoice:{first['Id']}"].lines[0]["Quantity"] == quantity
    assert latest[f"invoice:{second['Id']}"].invoice["InvoiceNo"] == number
