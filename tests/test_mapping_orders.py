"""Paid invoice → order: one case per row of DESIGN §4's invoice table, the invoice trigger, order numbers and
the errors."""

from __future__ import annotations

import datetime
import math
from collections.abc import Collection
from typing import Any

import pytest

from pipeline.errors import MappingError
from pipeline.mapping import (
    NothingToShip,
    OrderMapping,
    fallback_order_number,
    invoice_wants_order,
    map_invoice,
    order_number_for,
)
from tests.mapping_schema import find, fixture, tenant, validate

INVOICES = "poweroffice/outgoing_invoices.json"
CUSTOMERS = "poweroffice/customers.json"
ADDRESSES = "poweroffice/contact_delivery_addresses.json"
OBSERVED = datetime.date(2024, 3, 20)
# The tenant's article registry: every fixture product except the service, which its filters leave out.
KNOWN = frozenset({"BA-12", "GR-7", "OLD-1", "NP-3", "LOOSE-9"})
LEFT_OUT = {"SVC-INSTALL": "a service (ProductType Service), and the tenant skips services"}
ABSENT = object()

PAID = 15798  # company customer, OrderNo, DeliveryDate, every kind of line
PERSON = 15799  # person customer, no OrderNo, no DeliveryDate
SERVICES = 15803  # services only


def observation(
    invoice_no: int,
    invoice: dict[str, Any] | None = None,
    customer: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """An invoice observation (invoice, lines, customer snapshot, delivery addresses) from the fixtures."""
    record = find(INVOICES, "InvoiceNo", invoice_no)
    record.update(invoice or {})
    snapshot = find(CUSTOMERS, "Number", find(INVOICES, "InvoiceNo", invoice_no)["CustomerNo"])
    snapshot.update(customer or {})
    return {
        "invoice": record,
        "lines": fixture(f"poweroffice/outgoing_invoice_lines/{record['Id']}.json"),
        "customer": snapshot,
        "delivery_addresses": [a for a in fixture(ADDRESSES) if a["ContactId"] == snapshot["Id"]],
    }


def mapped(
    obs: dict[str, Any],
    *,
    order_number: str | None = None,
    known: Collection[str] = KNOWN,
    left_out: dict[str, str] = LEFT_OUT,
    observed_on: datetime.date = OBSERVED,
) -> OrderMapping:
    """map_invoice on an observation, checked against the Ongoing schema."""
    result = map_invoice(
        obs["invoice"],
        obs["lines"],
        obs["customer"],
        obs["delivery_addresses"],
        tenant(),
        order_number=order_number_for(obs["invoice"]) if order_number is None else order_number,
        observed_on=observed_on,
        known_articles=known,
        left_out=left_out,
    )
    validate(result.body, "PostOrderModel")
    return result


def dig(body: dict[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = body
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return ABSENT
        node = node[key]
    return node


def line(body: dict[str, Any], row: str) -> dict[str, Any]:
    (found,) = [entry for entry in body["orderLines"] if entry["rowNumber"] == row]
    return found


def text_line(body: dict[str, Any], row: str) -> dict[str, Any]:
    (found,) = [entry for entry in body["advanced"]["orderTextLines"] if entry["rowNumber"] == row]
    return found


def with_line(obs: dict[str, Any], line_id: int, **changes: Any) -> dict[str, Any]:
    for entry in obs["lines"]:
        if entry["Id"] == line_id:
            entry.update(changes)
    return obs


FORD_MAIL = {
    "customerNumber": "10010",
    "name": "Ford Motor Company AS",
    "address1": "Postboks 404",
    "address2": "Att: Ola Nordmann",
    "postCode": "0161",
    "city": "Oslo",
    "countryCode": "NO",
}


@pytest.mark.parametrize(
    ("invoice_no", "invoice", "customer", "path", "expected"),
    [
        pytest.param(PAID, {}, {}, ("goodsOwnerId",), 42, id="order-goods-owner-from-tenant"),
        pytest.param(
            PAID,
            {},
            {},
            ("goodsOwnerOrderId",),
            "ee373540-ca8d-4562-8fb6-6fb52de47722",
            id="order-goods-owner-order-id-from-invoice-id",
        ),
        pytest.param(PAID, {}, {}, ("orderNumber",), "6065", id="order-number-from-order-no"),
        pytest.param(PERSON, {}, {}, ("orderNumber",), "15799", id="order-number-falls-back-to-invoice-no"),
        pytest.param(PAID, {}, {}, ("deliveryDate",), "2024-03-15", id="order-delivery-date-from-invoice"),
        pytest.param(
            PERSON, {}, {}, ("deliveryDate",), "2024-03-20", id="order-delivery-date-from-observation-when-missing"
        ),
        pytest.param(
            PAID,
            {"DeliveryDate": "2024-03-15T00:00:00+01:00"},
            {},
            ("deliveryDate",),
            "2024-03-15",
            id="order-delivery-date-time-part-ignored",
        ),
        pytest.param(
            PAID, {}, {}, ("termsOfDeliveryType",), {"code": "DAP"}, id="order-terms-of-delivery-from-delivery-term"
        ),
        pytest.param(
            PERSON, {}, {}, ("termsOfDeliveryType",), ABSENT, id="order-terms-of-delivery-omitted-without-term"
        ),
        pytest.param(PAID, {}, {}, ("productionCode",), "15798", id="order-production-code-from-invoice-no"),
        pytest.param(
            PAID, {}, {}, ("referenceNumber",), "PO-778 Ola", id="order-reference-number-from-customer-reference"
        ),
        pytest.param(PERSON, {}, {}, ("referenceNumber",), ABSENT, id="order-reference-number-omitted-when-null"),
        pytest.param(
            PAID,
            {},
            {},
            ("emailNotification",),
            {"toBeNotified": True, "value": "faktura@ford.example"},
            id="order-email-from-invoice-email-address",
        ),
        pytest.param(
            PERSON,
            {},
            {},
            ("emailNotification",),
            {"toBeNotified": True, "value": "kari@nordmann.example"},
            id="order-email-falls-back-to-email-address",
        ),
        pytest.param(
            PAID,
            {},
            {"InvoiceEmailAddress": None, "EmailAddress": " "},
            ("emailNotification",),
            {"toBeNotified": False},
            id="order-email-not-notified-without-address",
        ),
        pytest.param(
            PAID,
            {},
            {},
            ("smsNotification",),
            {"toBeNotified": True, "value": "+4712345678"},
            id="order-sms-from-phone-number",
        ),
        pytest.param(
            PERSON, {}, {}, ("smsNotification",), {"toBeNotified": False}, id="order-sms-not-notified-without-phone"
        ),
        pytest.param(
            PAID, {}, {}, ("consignee", "customerNumber"), "10010", id="consignee-customer-number-from-number"
        ),
        pytest.param(
            PAID,
            {},
            {"Number": None},
            ("consignee", "customerNumber"),
            "10010",
            id="consignee-customer-number-falls-back-to-invoice-customer-no",
        ),
        pytest.param(PAID, {}, {}, ("consignee", "name"), "Ford Motor Company AS", id="consignee-name-from-legal-name"),
        pytest.param(
            PAID,
            {},
            {"LegalName": None},
            ("consignee", "name"),
            "Ford Motor",
            id="consignee-name-falls-back-to-name",
        ),
        pytest.param(
            PERSON, {}, {}, ("consignee", "name"), "Kari Nordmann", id="consignee-name-falls-back-to-first-last-name"
        ),
        pytest.param(
            PERSON,
            {},
            {"LegalName": "Gammelt Firma AS"},
            ("consignee", "name"),
            "Kari Nordmann",
            id="consignee-name-of-person-ignores-legal-name",
        ),
        pytest.param(PAID, {}, {}, ("consignee",), FORD_MAIL, id="consignee-address-from-mail-address"),
        pytest.param(
            PERSON,
            {},
            {},
            ("consignee",),
            {
                "customerNumber": "10011",
                "name": "Kari Nordmann",
                "address1": "Storgata 1",
                "address2": "Leilighet H0203",
                "postCode": "9008",
                "city": "Tromsø",
                "countryCode": "NO",
            },
            id="consignee-address-from-primary-delivery-address",
        ),
        pytest.param(
            PAID,
            {},
            {"MailAddress": {"Id": 777, "AddressLine1": None, "City": " ", "CountryCode": "NO"}},
            ("consignee",),
            {
                "customerNumber": "10010",
                "name": "Ford Motor Company AS",
                "address1": "Lagerveien 12",
                "postCode": "3036",
                "city": "Drammen",
                "countryCode": "NO",
            },
            id="consignee-address-mail-address-with-only-country-is-not-set",
        ),
        pytest.param(
            PAID,
            {},
            {
                "MailAddress": {
                    "AddressLine1": "Rue de Rivoli 1",
                    "ZipCode": "75001",
                    "City": "Paris",
                    "CountryCode": "FR",
                }
            },
            ("consignee", "countryCode"),
            "FR",
            id="consignee-country-code-from-address",
        ),
        pytest.param(
            PAID,
            {},
            {"MailAddress": {"AddressLine1": "Postboks 404", "City": "Oslo", "CountryCode": None}},
            ("consignee", "countryCode"),
            "NO",
            id="consignee-country-code-defaults-to-no",
        ),
    ],
)
def test_order_header_row(
    invoice_no: int, invoice: dict[str, Any], customer: dict[str, Any], path: tuple[str, ...], expected: Any
) -> None:
    """Each DESIGN §4 invoice/customer row fills its REST field (or leaves it out when unset)."""
    body = mapped(observation(invoice_no, invoice, customer)).body
    assert dig(body, path) == expected


@pytest.mark.parametrize(
    ("line_id", "changes", "key", "expected"),
    [
        pytest.param(476023749, {}, "rowNumber", "476023749", id="order-line-row-number-from-line-id"),
        pytest.param(476023749, {}, "articleNumber", "BA-12", id="order-line-article-number-from-product-code"),
        pytest.param(476023749, {}, "numberOfItems", 100, id="order-line-number-of-items-from-quantity"),
        pytest.param(476023750, {}, "numberOfItems", 2.5, id="order-line-number-of-items-fractional"),
        pytest.param(476023749, {}, "comment", "Big blue box", id="order-line-comment-from-description"),
        pytest.param(476023749, {"Description": None}, "comment", ABSENT, id="order-line-comment-omitted-when-null"),
        pytest.param(
            476023749,
            {},
            "prices",
            {"linePrice": 10050, "customerLinePrice": 9045, "currencyCode": "NOK", "discountPercentage": 10},
            id="order-line-prices",
        ),
        pytest.param(
            476023750,
            {},
            "prices",
            {"linePrice": 49.99, "customerLinePrice": 49.99, "currencyCode": "NOK"},
            id="order-line-line-price-is-quantity-times-unit-price-rounded",
        ),
        pytest.param(
            476023749,
            {"ProductUnitPrice": None, "NetAmount": None, "Allowance": None},
            "prices",
            {"currencyCode": "NOK"},
            id="order-line-currency-code-from-invoice",
        ),
        pytest.param(
            476023749,
            {"Allowance": -12.5},
            ("prices", "discountPercentage"),
            -12.5,
            id="order-line-discount-percentage-from-allowance",
        ),
        pytest.param(
            476023749,
            {"NetAmount": 9045.004},
            ("prices", "customerLinePrice"),
            9045,
            id="order-line-customer-line-price-from-net-amount",
        ),
        pytest.param(
            476023749, {"ProductCode": " BA-12 "}, "articleNumber", "BA-12", id="order-line-product-code-stripped"
        ),
    ],
)
def test_order_line_row(line_id: int, changes: dict[str, Any], key: str | tuple[str, ...], expected: Any) -> None:
    """Each DESIGN §4 order-line row fills its REST field from the invoice line."""
    body = mapped(with_line(observation(PAID), line_id, **changes)).body
    path = key if isinstance(key, tuple) else (key,)
    assert dig(line(body, str(line_id)), path) == expected


@pytest.mark.parametrize(
    ("line_id", "changes", "known", "expected", "warns"),
    [
        pytest.param(
            476023751,
            {},
            KNOWN,
            {"rowNumber": "476023751", "numberOfItems": 1, "comment": "Leveres til bakdøren, ring på"},
            False,
            id="order-text-line-from-text-line",
        ),
        pytest.param(
            476023753,
            {},
            KNOWN,
            {"rowNumber": "476023753", "numberOfItems": 1, "comment": "Fakturagebyr"},
            True,
            id="order-fee-line-becomes-text-line",
        ),
        pytest.param(
            476023754,
            {},
            KNOWN,
            {"rowNumber": "476023754", "numberOfItems": 1, "comment": "Frakt"},
            True,
            id="order-line-without-product-code-becomes-text-line",
        ),
        pytest.param(
            476023752,
            {},
            KNOWN,
            {"rowNumber": "476023752", "numberOfItems": 1, "comment": "Montering, 1 time"},
            True,
            id="order-service-line-becomes-text-line",
        ),
        pytest.param(
            476023750,
            {"ProductCode": "FILTERED-1"},
            KNOWN,
            {"rowNumber": "476023750", "numberOfItems": 1, "comment": "Løs vare, 2,5 kg"},
            True,
            id="order-line-of-filtered-out-product-becomes-text-line",
        ),
        pytest.param(
            476023750,
            {"Quantity": 0},
            KNOWN,
            {"rowNumber": "476023750", "numberOfItems": 1, "comment": "Løs vare, 2,5 kg"},
            True,
            id="order-line-with-zero-quantity-becomes-text-line",
        ),
        pytest.param(
            476023750,
            {"Quantity": -1, "Description": None},
            KNOWN,
            {"rowNumber": "476023750", "numberOfItems": 1},
            True,
            id="order-line-with-negative-quantity-becomes-text-line",
        ),
    ],
)
def test_order_text_line(
    line_id: int, changes: dict[str, Any], known: Collection[str], expected: dict[str, Any], warns: bool
) -> None:
    """Text lines, and lines that cannot be picked, become advanced.orderTextLines; only the latter warn."""
    left_out = {**LEFT_OUT, "FILTERED-1": "not a stock item, and the tenant syncs stock items only"}
    result = mapped(with_line(observation(PAID), line_id, **changes), known=known, left_out=left_out)
    assert text_line(result.body, str(line_id)) == expected
    assert str(line_id) not in [entry["rowNumber"] for entry in result.body["orderLines"]]
    assert any(str(line_id) in warning for warning in result.warnings) == warns


def test_order_full_body() -> None:
    """The paid fixture invoice maps to exactly this order: lines in SortOrder, every invoice line once."""
    result = mapped(observation(PAID))
    assert result.body == {
        "goodsOwnerId": 42,
        "orderNumber": "6065",
        "goodsOwnerOrderId": "ee373540-ca8d-4562-8fb6-6fb52de47722",
        "deliveryDate": "2024-03-15",
        "termsOfDeliveryType": {"code": "DAP"},
        "productionCode": "15798",
        "referenceNumber": "PO-778 Ola",
        "emailNotification": {"toBeNotified": True, "value": "faktura@ford.example"},
        "smsNotification": {"toBeNotified": True, "value": "+4712345678"},
        "consignee": FORD_MAIL,
        "orderLines": [
            {
                "rowNumber": "476023749",
                "articleNumber": "BA-12",
                "numberOfItems": 100,
                "comment": "Big blue box",
                "prices": {
                    "linePrice": 10050,
                    "customerLinePrice": 9045,
                    "currencyCode": "NOK",
                    "discountPercentage": 10,
                },
            },
            {
                "rowNumber": "476023750",
                "articleNumber": "LOOSE-9",
                "numberOfItems": 2.5,
                "comment": "Løs vare, 2,5 kg",
                "prices": {"linePrice": 49.99, "customerLinePrice": 49.99, "currencyCode": "NOK"},
            },
        ],
        "advanced": {
            "orderTextLines": [
                {"rowNumber": "476023751", "numberOfItems": 1, "comment": "Leveres til bakdøren, ring på"},
                {"rowNumber": "476023752", "numberOfItems": 1, "comment": "Montering, 1 time"},
                {"rowNumber": "476023753", "numberOfItems": 1, "comment": "Fakturagebyr"},
                {"rowNumber": "476023754", "numberOfItems": 1, "comment": "Frakt"},
            ]
        },
    }
    assert result.article_numbers == ("BA-12", "LOOSE-9")
    assert len(result.warnings) == 3  # service, fee and the line without a product code; not the text line


def test_order_is_the_same_on_replay() -> None:
    """Mapping the same observation again, on a later day, gives the same order (no clock inside)."""
    obs = observation(PERSON)
    first = mapped(obs, observed_on=OBSERVED)
    again = mapped(obs, observed_on=OBSERVED)
    assert first == again
    assert mapped(obs, observed_on=datetime.datetime(2024, 3, 20, 23, 59)).body == first.body


def test_order_without_any_delivery_address_warns() -> None:
    """A customer with no address at all still gets its order, and the log gets a warning."""
    result = mapped(observation(SERVICES), known=KNOWN | {"SVC-INSTALL"})
    assert result.body["consignee"] == {"customerNumber": "10012", "name": "Fjellbutikken"}
    assert any("no address" in warning for warning in result.warnings)


def test_order_without_primary_delivery_address_uses_first_and_warns() -> None:
    """With no MailAddress and no primary delivery address, the first usable one is used, with a warning."""
    obs = observation(PERSON)
    for address in obs["delivery_addresses"]:
        address["IsPrimary"] = False
    result = mapped(obs)
    assert result.body["consignee"]["address1"] == "Hyttevegen 3"
    assert any("9001" in warning for warning in result.warnings)


def test_order_ignores_other_contacts_delivery_addresses() -> None:
    """A delivery address belonging to another contact is never shipped to."""
    obs = observation(PERSON)
    obs["delivery_addresses"] = fixture(ADDRESSES)  # includes Ford's primary address
    for address in obs["delivery_addresses"]:
        if address["ContactId"] == 555:
            address["IsPrimary"] = False
    result = mapped(obs)
    assert result.body["consignee"]["address1"] == "Hyttevegen 3"


@pytest.mark.parametrize(
    ("invoice_no", "change", "field"),
    [
        pytest.param(PAID, lambda o: o.update(customer=None), "customer", id="order-error-customer-snapshot-missing"),
        pytest.param(
            PAID,
            lambda o: (o.update(customer=None), o["invoice"].update(CustomerNo=None, CustomerId=None)),
            "CustomerNo",
            id="order-error-invoice-names-no-customer",
        ),
        pytest.param(
            PAID, lambda o: o["customer"].update(Id=999), "CustomerId", id="order-error-snapshot-of-another-customer"
        ),
        pytest.param(PAID, lambda o: o["invoice"].update(Id=None), "Id", id="order-error-no-invoice-id"),
        pytest.param(
            PAID,
            lambda o: o["invoice"].update(DeliveryDate="15.03.2024"),
            "DeliveryDate",
            id="order-error-unparseable-delivery-date",
        ),
        pytest.param(
            PAID,
            lambda o: o["invoice"].update(DeliveryDate="2024-02-30"),
            "DeliveryDate",
            id="order-error-impossible-delivery-date",
        ),
        pytest.param(PAID, lambda o: o.update(lines=[]), "Lines", id="order-error-no-lines"),
        pytest.param(PAID, lambda o: o["lines"][1].update(Id=None), "Lines[1].Id", id="order-error-line-without-id"),
        pytest.param(
            PAID, lambda o: o["lines"][1].update(Id=476023751), "Lines[1].Id", id="order-error-duplicate-line-ids"
        ),
        pytest.param(
            PAID,
            lambda o: o["lines"][1].update(Quantity=None),
            "Lines[1].Quantity",
            id="order-error-product-line-without-quantity",
        ),
        pytest.param(
            PAID,
            lambda o: o["lines"][1].update(Quantity=math.nan),
            "Lines[1].Quantity",
            id="order-error-quantity-nan",
        ),
        pytest.param(
            PAID,
            lambda o: o["lines"][1].update(ProductUnitPrice=math.inf),
            "Lines[1].ProductUnitPrice",
            id="order-error-unit-price-infinite",
        ),
        pytest.param(
            PAID,
            lambda o: o["lines"][1].update(Quantity=1e9, ProductUnitPrice=1e9),
            "Lines[1].ProductUnitPrice",
            id="order-error-line-price-out-of-range",
        ),
        pytest.param(PAID, lambda o: o["lines"].append("fee"), "Lines[6]", id="order-error-line-not-an-object"),
        pytest.param(
            PAID,
            lambda o: o["customer"].update(MailAddress="Postboks 404"),
            "customer.MailAddress",
            id="order-error-mail-address-not-an-object",
        ),
    ],
)
def test_order_error(invoice_no: int, change: Any, field: str) -> None:
    """An invoice that cannot become an order raises MappingError naming the v2 field."""
    obs = observation(invoice_no)
    change(obs)
    with pytest.raises(MappingError) as caught:
        mapped(obs, order_number="6065")
    assert caught.value.field == field
    assert caught.value.reason
    assert not isinstance(caught.value, NothingToShip)


@pytest.mark.parametrize(
    "order_number",
    [
        pytest.param("", id="order-error-empty-order-number"),
        pytest.param("   ", id="order-error-blank-order-number"),
        pytest.param("9" * 51, id="order-error-order-number-longer-than-50"),
    ],
)
def test_order_number_checked(order_number: str) -> None:
    """The order number the projector passes must be usable by Ongoing (1 to 50 characters)."""
    with pytest.raises(MappingError) as caught:
        mapped(observation(PAID), order_number=order_number)
    assert caught.value.field == "orderNumber"


def test_order_of_services_only_is_nothing_to_ship() -> None:
    """An invoice whose lines are all services the filters leave out needs no order: NothingToShip."""
    with pytest.raises(NothingToShip) as caught:
        mapped(observation(SERVICES))
    assert caught.value.field == "Lines"
    assert "no product to pick" in caught.value.reason or "is a product to pick" in caught.value.reason


@pytest.mark.parametrize(
    ("line_id", "changes", "known", "left_out", "waits_for"),
    [
        pytest.param(476023750, {}, KNOWN - {"LOOSE-9"}, LEFT_OUT, "LOOSE-9", id="rule9-product-that-failed-to-map"),
        pytest.param(476023750, {"ProductCode": "NEW-1"}, KNOWN, LEFT_OUT, "NEW-1", id="rule9-product-never-seen"),
        pytest.param(
            476023750,
            {"ProductCode": "SVC-INSTALL"},
            KNOWN | {"SVC-INSTALL"},
            LEFT_OUT,
            None,
            id="rule9-left-out-but-has-article",
        ),
        pytest.param(
            476023750, {}, KNOWN, {**LEFT_OUT, "LOOSE-9": "filtered"}, None, id="rule9-registry-wins-over-filter"
        ),
    ],
)
def test_rule9_product_line_is_never_a_text_line(
    line_id: int, changes: dict[str, Any], known: Collection[str], left_out: dict[str, str], waits_for: str | None
) -> None:
    """A line with a product code is an order line whose article is in `article_numbers` (so the sender holds the
    order until that article is delivered), whether or not the registry has the article; a warning names the
    article the order waits for."""
    result = mapped(with_line(observation(PAID), line_id, **changes), known=known, left_out=left_out)
    row = line(result.body, str(line_id))
    assert row["articleNumber"] in result.article_numbers
    assert str(line_id) not in [t["rowNumber"] for t in result.body.get("advanced", {}).get("orderTextLines", [])]
    waits = [w for w in result.warnings if "waits" in w]
    if waits_for is None:
        assert not waits
    else:
        assert row["articleNumber"] == waits_for
        assert any(waits_for in w for w in waits)


def test_rule9_an_invoice_of_unknown_products_only_still_becomes_an_order() -> None:
    """No product in the registry at all (every product failed to map): still an order, waiting for them all."""
    result = mapped(observation(PAID), known=frozenset())
    assert result.article_numbers == ("BA-12", "LOOSE-9")


@pytest.mark.parametrize(
    ("invoice_no", "changes", "settings", "reason"),
    [
        pytest.param(PAID, {}, {}, None, id="trigger-paid-invoice-wants-order"),
        pytest.param(15800, {}, {}, "unpaid: Balance 125.00", id="trigger-unpaid-invoice-waits"),
        pytest.param(PAID, {"Balance": "0.00"}, {}, None, id="trigger-balance-as-text"),
        pytest.param(PAID, {"Balance": "125"}, {}, "unpaid: Balance 125.00", id="trigger-unpaid-balance-as-text"),
        pytest.param(PAID, {"Balance": 0.001}, {}, None, id="trigger-balance-below-half-a-cent-is-paid"),
        pytest.param(PAID, {"Balance": -10}, {}, "unpaid: Balance -10.00", id="trigger-negative-balance-is-not-paid"),
        pytest.param(PAID, {"Balance": None}, {}, "unpaid: Balance missing", id="trigger-balance-missing"),
        pytest.param(PAID, {"VoucherType": None}, {}, None, id="trigger-missing-voucher-type-is-an-invoice"),
        pytest.param(15801, {}, {}, "credit note", id="trigger-credit-note-never"),
        pytest.param(15802, {}, {}, "reversed: the invoice voucher was nullified", id="trigger-reversed-invoice-never"),
        pytest.param(15800, {}, {"order_trigger": "invoiced"}, None, id="trigger-invoiced-takes-unpaid"),
        pytest.param(15801, {}, {"order_trigger": "invoiced"}, "credit note", id="trigger-invoiced-never-credit-note"),
    ],
)
def test_invoice_wants_order(
    invoice_no: int, changes: dict[str, Any], settings: dict[str, Any], reason: str | None
) -> None:
    """The invoice trigger (seed `*`: paid by default, credit notes never) says when an invoice becomes an order."""
    invoice = {**find(INVOICES, "InvoiceNo", invoice_no), **changes}
    assert invoice_wants_order(invoice, tenant(**settings)) == reason


def test_invoice_wants_order_rejects_garbage_balance() -> None:
    """A Balance that is not a number is a MappingError naming Balance, not a guess."""
    with pytest.raises(MappingError) as caught:
        invoice_wants_order({**find(INVOICES, "InvoiceNo", PAID), "Balance": "betalt"}, tenant())
    assert caught.value.field == "Balance"


@pytest.mark.parametrize(
    ("changes", "own", "fallback"),
    [
        pytest.param({}, "6065", "6065-15798", id="order-number-order-no-then-order-no-dash-invoice-no"),
        pytest.param({"OrderNo": None}, "15798", "15798-15798", id="order-number-invoice-no-without-order-no"),
        pytest.param({"OrderNo": "6065"}, "6065", "6065-15798", id="order-number-from-numeric-text"),
        pytest.param({"OrderNo": 0}, "15798", "15798-15798", id="order-number-zero-order-no-is-none"),
        pytest.param(
            {"InvoiceNo": None},
            "6065",
            "6065-ee373540-ca8d-4562-8fb6-6fb52de47722",
            id="order-number-fallback-uses-id-without-invoice-no",
        ),
    ],
)
def test_order_numbers(changes: dict[str, Any], own: str, fallback: str) -> None:
    """order_number_for gives OrderNo else InvoiceNo; fallback_order_number gives <OrderNo>-<InvoiceNo>."""
    invoice = {**find(INVOICES, "InvoiceNo", PAID), **changes}
    assert order_number_for(invoice) == own
    assert fallback_order_number(invoice) == fallback


def test_order_number_without_any_number() -> None:
    """An invoice with neither OrderNo nor InvoiceNo cannot be numbered: MappingError naming InvoiceNo."""
    invoice = {**find(INVOICES, "InvoiceNo", PAID), "OrderNo": None, "InvoiceNo": None}
    with pytest.raises(MappingError) as caught:
        order_number_for(invoice)
    assert caught.value.field == "InvoiceNo"


def test_colliding_order_numbers_get_distinct_fallbacks() -> None:
    """Two invoices of a tenant claiming one order number (OrderNo 15799 vs InvoiceNo 15799) are told apart by
    the fallback, and the order carries the number the projector chose."""
    first = {**find(INVOICES, "InvoiceNo", PAID), "OrderNo": 15799}
    second = find(INVOICES, "InvoiceNo", PERSON)
    assert order_number_for(first) == order_number_for(second) == "15799"
    chosen = fallback_order_number(second)
    assert chosen not in {order_number_for(first), fallback_order_number(first)}
    assert mapped(observation(PERSON), order_number=chosen).body["orderNumber"] == "15799-15799"
