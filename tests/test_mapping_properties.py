"""Property tests: the mapping is total. Whatever JSON arrives (missing fields, nulls, wrong types, huge strings
and integers, any Unicode, lone surrogates, NaN, infinity), every function returns or raises MappingError,
and every body it returns is a valid Ongoing body that orjson can encode."""

from __future__ import annotations

import copy
import datetime
import operator
import re
from typing import Any

import orjson
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from pipeline.errors import MappingError
from pipeline.mapping import (
    StockMapping,
    fallback_order_number,
    invoice_wants_order,
    map_invoice,
    map_product,
    map_stock,
    order_number_for,
    product_excluded,
)
from tests.mapping_schema import FIXTURES, fixture, tenant, validate

PRODUCTS = fixture("poweroffice/products.json")
GROUPS = fixture("poweroffice/product_groups.json")
INVOICES = fixture("poweroffice/outgoing_invoices.json")
CUSTOMERS = fixture("poweroffice/customers.json")
ADDRESSES = fixture("poweroffice/contact_delivery_addresses.json")
LINES = [
    line
    for path in sorted((FIXTURES / "poweroffice" / "outgoing_invoice_lines").glob("*.json"))
    for line in fixture(f"poweroffice/outgoing_invoice_lines/{path.name}")
]
INVENTORIES = [article["inventoryInfo"] for article in fixture("ongoing/articles.json")]
CODES = sorted({product["Code"] for product in PRODUCTS})
DATE = re.compile(r"\d{4}-\d{2}-\d{2}")

EXAMPLES = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ---------------------------------------------------------------------------------------------------------------
# Strategies: JSON that may be anything, and records that are a real fixture with some fields spoilt.

texts = st.one_of(
    st.text(max_size=20),
    st.text(st.characters(categories=["Cs", "Cc", "Zs", "So"]), max_size=8),  # surrogates, controls, emoji
    st.sampled_from(["", "   ", "0", "-1", "1e999", "NaN", "12,50", "2024-02-30", "2024-03-15T10:00:00Z", " BA-12 "]),
    st.builds(operator.mul, st.sampled_from(["x", "ø", "\U0001d518\u0000"]), st.integers(50_000, 100_000)),  # huge
)
numbers = st.one_of(
    st.integers(),
    st.sampled_from([-(2**63), 2**63, 2**53 + 1]),
    st.builds(pow, st.just(10), st.integers(300, 5000)),  # past float range and past int-to-text limits
    st.floats(allow_nan=True, allow_infinity=True),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, texts)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=12), children, max_size=3),
    max_leaves=8,
)


def _spoil(draw: st.DrawFn, targets: list[dict[str, Any]]) -> None:
    """Replace or remove up to three fields, anywhere in `targets`."""
    for _ in range(draw(st.integers(0, 3))):
        target = draw(st.sampled_from(targets))
        key = draw(st.sampled_from(sorted(target) or ["Id"]))
        if draw(st.booleans()):
            target[key] = draw(json_values)
        else:
            target.pop(key, None)


@st.composite
def _spoilt_record(draw: st.DrawFn, bases: list[dict[str, Any]]) -> dict[str, Any]:
    record = copy.deepcopy(draw(st.sampled_from(bases)))
    _spoil(draw, [record])
    return record


def spoilt(bases: list[dict[str, Any]], fields: list[str] | None = None) -> st.SearchStrategy[Any]:
    """Mostly a fixture record with a few fields replaced by anything or removed; else any JSON at all."""
    keys = sorted({key for base in bases for key in base}) if fields is None else fields
    record = _spoilt_record(bases)
    return st.one_of(
        record, record, record, st.dictionaries(st.sampled_from(keys) | st.text(), json_values), json_values
    )


def _with_lines(invoice: dict[str, Any]) -> bool:
    return (FIXTURES / "poweroffice" / "outgoing_invoice_lines" / f"{invoice['Id']}.json").exists()


# Coherent observations, as the poller makes them: an invoice, its lines, its customer, its addresses.
OBSERVATIONS = [
    (
        invoice,
        fixture(f"poweroffice/outgoing_invoice_lines/{invoice['Id']}.json"),
        next(c for c in CUSTOMERS if c["Number"] == invoice["CustomerNo"]),
        [a for a in ADDRESSES if a["ContactId"] == invoice["CustomerId"]],
    )
    for invoice in INVOICES
    if _with_lines(invoice)
]


@st.composite
def observations(draw: st.DrawFn) -> tuple[Any, Any, Any, Any]:
    """Mostly a real observation with a few fields spoilt anywhere in it; else pieces of anything."""
    if draw(st.integers(0, 3)) == 0:
        return (
            draw(spoilt(INVOICES)),
            draw(st.lists(spoilt(LINES), max_size=6) | json_values),
            draw(st.none() | spoilt(CUSTOMERS)),
            draw(st.lists(spoilt(ADDRESSES), max_size=3) | json_values),
        )
    invoice, lines, customer, addresses = copy.deepcopy(draw(st.sampled_from(OBSERVATIONS)))
    lines = draw(st.permutations(lines))
    nested = [value for value in customer.values() if isinstance(value, dict)]
    _spoil(draw, [invoice, customer, *lines, *addresses, *nested])
    if draw(st.integers(0, 9)) == 0:
        customer = None
    return invoice, lines, customer, addresses


products = spoilt(PRODUCTS)
groups = st.one_of(st.none(), st.none(), spoilt(GROUPS))
invoices = spoilt(INVOICES)
tenants = st.builds(
    tenant,
    product_group_codes=st.sampled_from([(), ("BA12",), ("srv", "BA12")]),
    stock_items_only=st.booleans(),
    skip_services=st.booleans(),
    order_trigger=st.sampled_from(["paid", "invoiced"]),
    stock_figure=st.sampled_from(["numberOfItems", "sellableNumberOfItems"]),
)
order_numbers = st.one_of(st.sampled_from(["6065", "15799-15799"]), st.sampled_from(["6065", "15799-15799"]), texts)
REGISTRY = frozenset(CODES) - {"SVC-INSTALL"}
known = st.one_of(st.just(REGISTRY), st.just(REGISTRY), st.frozensets(st.sampled_from([*CODES, "", " BA-12 "])))


def encodable(body: dict[str, Any]) -> None:
    orjson.dumps(body)  # raises on NaN-free but unencodable values such as lone surrogates


def reasoned(exc: MappingError) -> None:
    event(f"MappingError {type(exc).__name__}")
    assert isinstance(exc.field, str)
    assert exc.field
    assert isinstance(exc.reason, str)
    assert exc.reason


# ---------------------------------------------------------------------------------------------------------------


@EXAMPLES
@given(product=products, group=groups, settings_=tenants)
def test_products_map_or_fail_with_a_field(product: Any, group: Any, settings_: Any) -> None:
    """Any product JSON maps to a valid PostArticleModel or raises MappingError naming a field."""
    try:
        result = map_product(product, group, settings_)
    except MappingError as exc:
        reasoned(exc)
    else:
        event("article mapped")
        validate(result.body, "PostArticleModel")
        encodable(result.body)
        assert result.body["articleNumber"] == result.body["articleNumber"].strip()
        assert map_product(product, group, settings_) == result  # pure: same input, same output
    try:
        reason = product_excluded(product, group, settings_)
    except MappingError as exc:
        reasoned(exc)
    else:
        assert reason is None or (isinstance(reason, str) and reason)


@EXAMPLES
@given(
    observation=observations(),
    settings_=tenants,
    order_number=order_numbers,
    observed_on=st.dates(),
    known_articles=known,
)
def test_invoices_map_or_fail_with_a_field(
    observation: tuple[Any, Any, Any, Any],
    settings_: Any,
    order_number: Any,
    observed_on: datetime.date,
    known_articles: frozenset[str],
) -> None:
    """Any invoice observation maps to a valid PostOrderModel or raises MappingError naming a field; a valid
    order holds every invoice line exactly once and names the articles it waits for."""
    invoice, invoice_lines, customer, delivery_addresses = observation
    try:
        result = map_invoice(
            invoice,
            invoice_lines,
            customer,
            delivery_addresses,
            settings_,
            order_number=order_number,
            observed_on=observed_on,
            known_articles=known_articles,
        )
    except MappingError as exc:
        reasoned(exc)
        return
    event("order mapped")
    body = result.body
    validate(body, "PostOrderModel")
    encodable(body)
    assert DATE.fullmatch(body["deliveryDate"])
    assert 1 <= len(body["orderNumber"]) <= 50
    assert body["orderLines"], "an order always has something to pick"
    rows = [entry["rowNumber"] for entry in body["orderLines"]]
    rows += [entry["rowNumber"] for entry in body.get("advanced", {}).get("orderTextLines", [])]
    assert sorted(rows) == sorted(str(entry["Id"]) for entry in invoice_lines)
    # (An order line may name an article the registry lacks: the order then waits for it. Rule 9.)
    assert result.article_numbers == tuple(dict.fromkeys(entry["articleNumber"] for entry in body["orderLines"]))


@EXAMPLES
@given(invoice=invoices, settings_=tenants)
def test_invoice_trigger_and_numbers_are_total(invoice: Any, settings_: Any) -> None:
    """The invoice trigger and the order numbers return or raise MappingError for any invoice JSON."""
    for call in (
        lambda: invoice_wants_order(invoice, settings_),
        lambda: order_number_for(invoice),
        lambda: fallback_order_number(invoice),
    ):
        try:
            out = call()
        except MappingError as exc:
            reasoned(exc)
        else:
            assert out is None or (isinstance(out, str) and out)


@EXAMPLES
@given(
    inventory=spoilt(INVENTORIES, ["numberOfItems", "sellableNumberOfItems"]),
    product=st.none() | products,
    settings_=tenants,
)
def test_stock_maps_or_skips(inventory: Any, product: Any, settings_: Any) -> None:
    """Any inventory/product JSON gives a stock patch with a finite value or a skip reason; it never raises."""
    result = map_stock(inventory, product, settings_)
    if isinstance(result, StockMapping):
        assert result.value == result.value
        assert abs(result.value) != float("inf")
        assert result.product_id > 0
        assert result.product_code
    else:
        assert isinstance(result, str)
        assert result
