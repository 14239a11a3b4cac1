"""PowerOffice paid outgoing invoice → Ongoing order upsert body (DESIGN §4, "Paid invoice → order").

| v2 source                                                   | PostOrderModel                                    |
|-------------------------------------------------------------|---------------------------------------------------|
| tenant                                                      | goodsOwnerId                                      |
| OrderNo, else InvoiceNo (the projector settles collisions)  | orderNumber                                       |
| Id                                                          | goodsOwnerOrderId                                 |
| DeliveryDate, else the observation's date                   | deliveryDate ("YYYY-MM-DD")                       |
| DeliveryTerm                                                | termsOfDeliveryType.code                          |
| InvoiceNo                                                   | productionCode                                    |
| CustomerReference                                           | referenceNumber                                   |
| customer InvoiceEmailAddress, else EmailAddress             | emailNotification {value, toBeNotified}           |
| customer PhoneNumber                                        | smsNotification {value, toBeNotified}             |
| customer Number, else the invoice's CustomerNo              | consignee.customerNumber                          |
| customer LegalName, else Name, else "FirstName LastName"    | consignee.name                                    |
| customer MailAddress if set, else its primary delivery      | consignee.address1/address2/postCode/city/        |
| address: AddressLine1/AddressLine2/ZipCode/City/CountryCode |   countryCode                                     |
| line Id / ProductCode / Quantity / Description              | orderLines[].rowNumber/articleNumber/             |
|                                                             |   numberOfItems/comment                           |
| line Quantity × ProductUnitPrice / NetAmount / Allowance,   | orderLines[].prices.linePrice/customerLinePrice/  |
| invoice CurrencyCode                                        |   discountPercentage/currencyCode                 |
| Text lines (and lines that cannot be picked, below)         | advanced.orderTextLines[] {rowNumber,             |
|                                                             |   numberOfItems: 1, comment}                      |

Every invoice line appears in the order exactly once, as an order line or as a text line. A line with a
ProductCode is an order line, always: its article goes into `article_numbers`, and the sender holds the order
until every one of them is delivered, so a product that failed to map or is not known yet makes the order wait
(with a warning), never turns goods into a text line. A line becomes a text line (with a warning) only when it
is not goods: its LineType is InvoiceFee, Summary or TotalHours; it has no ProductCode; its product is one the
tenant's filters leave out (`left_out`) and the registry has no article for it; or its Quantity is zero or
negative (nothing to pick).

Choices, each for a reason:
- Null and empty values are omitted, never sent as null (see `pipeline.mapping.products`). The two
  notifications are always sent, with `toBeNotified` true only when there is an address or a number: the seed
  sets NotifyByEmail/NotifyBySms either way.
- A person's LegalName is ignored (the v2 spec calls it relevant only for companies).
- MailAddress "is set" when any of AddressLine1, AddressLine2, ZipCode or City is set (CountryCode alone is
  PowerOffice's default, not an address). A missing CountryCode on a chosen address becomes "NO", the default
  PowerOffice itself applies. A delivery address whose ContactId names another contact is never used.
- A consignee without a name or an address is a warning, not an error: the warehouse can complete it, while a
  quarantined invoice could only be fixed by re-driving the same stale snapshot.
- Lines are ordered by SortOrder (as the invoice shows them), so the body does not depend on the order in which
  the API returned them.
- An invoice with no lines at all is an error (PowerOffice may omit lines of imported invoices, and a paid
  invoice of goods must not vanish silently). One with lines but no order line (services or fees only) raises
  `NothingToShip`, a MappingError subclass the projector records as an `observation.skipped` with the reason.
"""

from __future__ import annotations

import datetime
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from pipeline.config import TenantSettings
from pipeline.errors import MappingError
from pipeline.mapping import values
from pipeline.mapping.values import Json

CREDIT_NOTE: Final = "OutgoingCreditNote"  # OutgoingInvoiceVoucherType enum: OutgoingInvoice | OutgoingCreditNote
INVOICE: Final = "OutgoingInvoice"
TEXT_LINE: Final = "Text"  # VoucherLineType enum: Normal | Text | Summary | InvoiceFee | TotalHours
NOT_GOODS: Final = frozenset({"InvoiceFee", "Summary", "TotalHours"})
ORDER_NUMBER_MAX: Final = 50  # Ongoing's limit on orderNumber (PatchOrderNumberModel)
DEFAULT_COUNTRY: Final = "NO"
# Balance is money in the client currency: below half a cent it is zero.
_PAID_TOLERANCE: Final = 0.005


class NothingToShip(MappingError):
    """The invoice has lines, but none of them is goods to pick (services, fees, text): no order is needed."""


@dataclass(frozen=True, slots=True)
class OrderMapping:
    """A PostOrderModel body, the article numbers its order lines need, and warnings worth logging."""

    body: dict[str, Any]
    article_numbers: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


def invoice_wants_order(invoice: Mapping[str, Any], tenant: TenantSettings) -> str | None:
    """None when the invoice should become an order; else the reason it should not.

    Never: credit notes (VoucherType OutgoingCreditNote), other voucher types, and reversed invoices (a reversal
    nullifies the voucher and settles its ledger entry, so its Balance reads 0 as if paid). Otherwise, with the
    default trigger "paid", only when Balance is 0 (numbers given as text are accepted); with "invoiced", always.
    Raises MappingError only when a field it reads has the wrong JSON type or is not a finite number.
    """
    inv = values.obj(invoice, "invoice")
    voucher_type = values.text(inv, "VoucherType", "VoucherType")
    if voucher_type == CREDIT_NOTE:
        return "credit note"
    if voucher_type is not None and voucher_type != INVOICE:
        return f"voucher type {values.shown(voucher_type)} is not an outgoing invoice"
    if values.flag(inv, "IsReversed", "IsReversed") is True:
        return "reversed: the invoice voucher was nullified"
    if tenant.order_trigger == "invoiced":
        return None
    balance = values.number(inv, "Balance", "Balance")
    if balance is None:
        return "unpaid: Balance missing"
    if abs(balance) >= _PAID_TOLERANCE:
        return f"unpaid: Balance {balance:.2f}"
    return None


def order_number_for(invoice: Mapping[str, Any]) -> str:
    """The invoice's own order number: OrderNo (set when the invoice began as a draft in Go), else InvoiceNo.

    Raises MappingError("InvoiceNo") when the invoice has neither.
    """
    inv = values.obj(invoice, "invoice")
    order_no = _positive(inv, "OrderNo")
    if order_no is not None:
        return str(order_no)
    invoice_no = _positive(inv, "InvoiceNo")
    if invoice_no is not None:
        return str(invoice_no)
    raise MappingError("InvoiceNo", "the invoice has neither an OrderNo nor an InvoiceNo to number the order")


def fallback_order_number(invoice: Mapping[str, Any]) -> str:
    """The number to use when another invoice of the tenant already owns `order_number_for(invoice)`:
    ``<OrderNo>-<InvoiceNo>`` (``<InvoiceNo>-<InvoiceNo>`` without an OrderNo; the invoice Id stands in for a
    missing InvoiceNo). Invoice numbers are unique within a company and plain numbers carry no dash, so a
    fallback collides neither with another fallback nor with a plain number.

    Raises MappingError when the invoice has no number at all.
    """
    inv = values.obj(invoice, "invoice")
    primary = order_number_for(inv)
    invoice_no = _positive(inv, "InvoiceNo")
    suffix = str(invoice_no) if invoice_no is not None else values.text(inv, "Id", "Id")
    if suffix is None:
        raise MappingError("Id", "the invoice has neither an InvoiceNo nor an Id to make its order number unique")
    return f"{primary}-{suffix}"


def map_invoice(
    invoice: Mapping[str, Any],
    lines: Sequence[Mapping[str, Any]],
    customer: Mapping[str, Any] | None,
    delivery_addresses: Sequence[Mapping[str, Any]],
    tenant: TenantSettings,
    *,
    order_number: str,
    observed_on: datetime.date,
    known_articles: Collection[str],
    left_out: Mapping[str, str] | None = None,
) -> OrderMapping:
    """Map an OutgoingInvoiceDto, its lines and its customer snapshot to a `PUT /orders` body.

    `order_number` is the number the projector chose (see `order_number_for` / `fallback_order_number`);
    `observed_on` is the date of the observation, used when the invoice has no DeliveryDate so that a replay
    gives the same order; `known_articles` holds the article numbers in the tenant's registry (a line whose
    product is not among them is still an order line, and the order waits for that article); `left_out` maps
    the product Codes the tenant's filters leave out to the reason (their lines are text lines).

    Raises MappingError naming the field when the order cannot be made: no customer snapshot ("customer"), no
    customer at all ("CustomerNo"), no Id, an unreadable DeliveryDate, no lines ("Lines"), a product line
    without an Id or a Quantity, a number that is not finite, a field of the wrong JSON type. Raises
    NothingToShip when no line is goods to pick. Never raises anything else.
    """
    inv = values.obj(invoice, "invoice")
    invoice_id = values.text(inv, "Id", "Id")
    if invoice_id is None:
        raise MappingError("Id", "the invoice has no Id")
    number = _checked_order_number(order_number)
    cust = _customer(inv, customer)
    warnings: list[str] = []

    body: dict[str, Any] = {
        "goodsOwnerId": tenant.ongoing_goods_owner_id,
        "orderNumber": number,
        "goodsOwnerOrderId": invoice_id,
        "deliveryDate": _delivery_date(inv, observed_on),
    }
    terms = values.text(inv, "DeliveryTerm", "DeliveryTerm")
    if terms is not None:
        body["termsOfDeliveryType"] = {"code": terms}
    invoice_no = values.integer(inv, "InvoiceNo", "InvoiceNo")
    if invoice_no is not None:
        body["productionCode"] = str(invoice_no)
    reference = values.text(inv, "CustomerReference", "CustomerReference")
    if reference is not None:
        body["referenceNumber"] = reference
    email = values.text(cust, "InvoiceEmailAddress", "customer.InvoiceEmailAddress") or values.text(
        cust, "EmailAddress", "customer.EmailAddress"
    )
    body["emailNotification"] = _notification(email)
    body["smsNotification"] = _notification(values.text(cust, "PhoneNumber", "customer.PhoneNumber"))
    body["consignee"] = _consignee(inv, cust, delivery_addresses, warnings)

    order_lines, text_lines, article_numbers = _lines(inv, lines, known_articles, left_out or {}, warnings)
    body["orderLines"] = order_lines
    if text_lines:
        body["advanced"] = {"orderTextLines": text_lines}
    return OrderMapping(body=body, article_numbers=tuple(article_numbers), warnings=tuple(warnings))


# ---------------------------------------------------------------------------------------------------------------
# Header


def _positive(inv: Json, key: str) -> int | None:
    """A document number, or None when it is missing, 0 or negative (none of which numbers anything)."""
    value = values.integer(inv, key, key)
    return value if value is not None and value > 0 else None


def _checked_order_number(order_number: object) -> str:
    number = None
    if isinstance(order_number, str):
        number = values.text({"orderNumber": order_number}, "orderNumber", "orderNumber")
    if number is None:
        raise MappingError("orderNumber", f"expected a non-empty order number, got {values.shown(order_number)}")
    if len(number) > ORDER_NUMBER_MAX:
        raise MappingError(
            "orderNumber", f"{values.shown(number)} is longer than Ongoing's {ORDER_NUMBER_MAX} characters"
        )
    return number


def _delivery_date(inv: Json, observed_on: datetime.date) -> str:
    when = values.day(inv, "DeliveryDate", "DeliveryDate")
    if when is None:
        # A datetime is a date too; only its calendar date counts.
        when = datetime.date(observed_on.year, observed_on.month, observed_on.day)
    return when.isoformat()


def _notification(value: str | None) -> dict[str, Any]:
    if value is None:
        return {"toBeNotified": False}
    return {"toBeNotified": True, "value": value}


# ---------------------------------------------------------------------------------------------------------------
# Customer → consignee


def _customer(inv: Json, customer: object) -> Json:
    customer_no = values.integer(inv, "CustomerNo", "CustomerNo")
    customer_id = values.integer(inv, "CustomerId", "CustomerId")
    if customer is None:
        if customer_no is None and customer_id is None:
            raise MappingError("CustomerNo", "the invoice names no customer (CustomerNo and CustomerId are empty)")
        who = customer_no if customer_no is not None else f"id {customer_id}"
        raise MappingError("customer", f"the observation carries no snapshot of customer {who}")
    cust = values.obj(customer, "customer")
    snapshot_id = values.integer(cust, "Id", "customer.Id")
    if customer_id is not None and snapshot_id is not None and customer_id != snapshot_id:
        raise MappingError(
            "CustomerId", f"the invoice is for customer id {customer_id}, but the snapshot is of {snapshot_id}"
        )
    return cust


def _consignee(
    inv: Json, cust: Json, delivery_addresses: Sequence[Mapping[str, Any]], warnings: list[str]
) -> dict[str, Any]:
    consignee: dict[str, Any] = {}
    number = values.integer(cust, "Number", "customer.Number")
    if number is None:
        number = values.integer(inv, "CustomerNo", "CustomerNo")
    if number is not None:
        consignee["customerNumber"] = str(number)
    who = f"customer {number}" if number is not None else "the customer"
    name = _consignee_name(cust)
    if name is not None:
        consignee["name"] = name
    else:
        warnings.append(f"{who} has no LegalName, Name or FirstName/LastName: the consignee has no name")
    address = _address(cust, delivery_addresses, who, warnings)
    if address:
        consignee.update(address)
    else:
        warnings.append(f"{who} has neither a MailAddress nor a delivery address: the consignee has no address")
    return consignee


def _consignee_name(cust: Json) -> str | None:
    is_person = values.flag(cust, "IsPerson", "customer.IsPerson") is True
    legal = None if is_person else values.text(cust, "LegalName", "customer.LegalName")
    if legal is not None:
        return legal
    name = values.text(cust, "Name", "customer.Name")
    if name is not None:
        return name
    parts = [
        values.text(cust, "FirstName", "customer.FirstName"),
        values.text(cust, "LastName", "customer.LastName"),
    ]
    full = " ".join(p for p in parts if p is not None)
    return full or None


_ADDRESS_FIELDS: Final = (
    ("AddressLine1", "address1"),
    ("AddressLine2", "address2"),
    ("ZipCode", "postCode"),
    ("City", "city"),
)


def _address(
    cust: Json, delivery_addresses: Sequence[Mapping[str, Any]], who: str, warnings: list[str]
) -> dict[str, str]:
    mail = values.opt_obj(cust, "MailAddress", "customer.MailAddress")
    if mail is not None:
        address = _read_address(mail, "customer.MailAddress")
        if address:
            return address
    return _delivery_address(cust, delivery_addresses, who, warnings)


def _read_address(raw: Json, where: str) -> dict[str, str]:
    """The consignee address fields of a ContactAddressDto/ContactDeliveryAddressDto; {} when it is empty."""
    out: dict[str, str] = {}
    for source, target in _ADDRESS_FIELDS:
        value = values.text(raw, source, f"{where}.{source}")
        if value is not None:
            out[target] = value
    if not out:
        return {}
    out["countryCode"] = values.text(raw, "CountryCode", f"{where}.CountryCode") or DEFAULT_COUNTRY
    return out


def _delivery_address(
    cust: Json, delivery_addresses: Sequence[Mapping[str, Any]], who: str, warnings: list[str]
) -> dict[str, str]:
    """The customer's primary delivery address; else (with a warning) the first usable one."""
    if not isinstance(delivery_addresses, Sequence) or isinstance(delivery_addresses, str | bytes):
        raise MappingError("delivery_addresses", f"expected a list, got {values.kind(delivery_addresses)}")
    contact = values.integer(cust, "Id", "customer.Id")
    primary: dict[str, str] = {}
    fallback: tuple[int | None, dict[str, str]] | None = None
    for i, item in enumerate(delivery_addresses):
        where = f"delivery_addresses[{i}]"
        raw = values.obj(item, where)
        owner = values.integer(raw, "ContactId", f"{where}.ContactId")
        if contact is not None and owner is not None and owner != contact:
            continue  # another contact's address: never ship there
        address = _read_address(raw, where)
        if not address:
            continue
        if values.flag(raw, "IsPrimary", f"{where}.IsPrimary") is True and not primary:
            primary = address
        elif fallback is None:
            fallback = (values.integer(raw, "Id", f"{where}.Id"), address)
    if primary:
        return primary
    if fallback is not None:
        address_id, address = fallback
        warnings.append(f"{who} has no MailAddress and no primary delivery address: used delivery address {address_id}")
        return address
    return {}


# ---------------------------------------------------------------------------------------------------------------
# Lines


@dataclass(frozen=True, slots=True)
class _Line:
    index: int
    raw: Json
    row: str

    def where(self, key: str) -> str:
        return f"Lines[{self.index}].{key}"


def _lines(
    inv: Json,
    lines: Sequence[Mapping[str, Any]],
    known_articles: Collection[str],
    left_out: Mapping[str, str],
    warnings: list[str],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    if not isinstance(lines, Sequence) or isinstance(lines, str | bytes):
        raise MappingError("Lines", f"expected a list of invoice lines, got {values.kind(lines)}")
    if not lines:
        raise MappingError("Lines", "the invoice has no lines (PowerOffice may omit them for imported invoices)")
    currency = values.text(inv, "CurrencyCode", "CurrencyCode")
    order_lines: list[dict[str, Any]] = []
    text_lines: list[dict[str, Any]] = []
    article_numbers: dict[str, None] = {}  # ordered set
    for line in _ordered(lines):
        comment = values.text(line.raw, "Description", line.where("Description"))
        pick = _pick(line, known_articles, left_out, warnings)
        if isinstance(pick, str):
            if pick:
                warnings.append(f"line {line.row} {pick}: sent as a text line")
            text_line: dict[str, Any] = {"rowNumber": line.row, "numberOfItems": 1}
            if comment is not None:
                text_line["comment"] = comment
            text_lines.append(text_line)
            continue
        order_lines.append(_order_line(line, pick, comment, currency))
        article_numbers[pick.article_number] = None
    if not order_lines:
        raise NothingToShip(
            "Lines", f"none of the {len(lines)} invoice lines is a product to pick (services, fees or text only)"
        )
    return order_lines, text_lines, list(article_numbers)


def _ordered(lines: Sequence[Mapping[str, Any]]) -> list[_Line]:
    """The lines with their row numbers, in SortOrder (then API) order. Line Ids must be there and unique."""
    keyed: list[tuple[tuple[int, int, int], _Line]] = []
    seen: set[str] = set()
    for i, item in enumerate(lines):
        raw = values.obj(item, f"Lines[{i}]")
        line_id = values.integer(raw, "Id", f"Lines[{i}].Id")
        if line_id is None:
            raise MappingError(f"Lines[{i}].Id", "the invoice line has no Id, needed as its row number")
        row = str(line_id)
        if row in seen:
            raise MappingError(f"Lines[{i}].Id", f"two invoice lines have the Id {row}")
        seen.add(row)
        sort = values.integer(raw, "SortOrder", f"Lines[{i}].SortOrder")
        key = (0, sort, i) if sort is not None else (1, 0, i)
        keyed.append((key, _Line(index=i, raw=raw, row=row)))
    keyed.sort(key=lambda pair: pair[0])
    return [line for _, line in keyed]


@dataclass(frozen=True, slots=True)
class _Pick:
    article_number: str
    quantity: float


def _pick(
    line: _Line, known_articles: Collection[str], left_out: Mapping[str, str], warnings: list[str]
) -> _Pick | str:
    """What to pick for a line; or, for a line that becomes a text line, why ("" for a Text line, which needs
    no warning). A line with a product code is picked even when the registry has no article for it: the order
    then waits for the article (a warning says so)."""
    line_type = values.text(line.raw, "LineType", line.where("LineType"))
    if line_type == TEXT_LINE:
        return ""
    if line_type in NOT_GOODS:
        return f"({line_type}) is not a product line"
    code = values.text(line.raw, "ProductCode", line.where("ProductCode"))
    if code is None:
        return "has no ProductCode"
    if code not in known_articles and code in left_out:
        return f"has product {values.shown(code)}, which the tenant's filters leave out ({left_out[code]})"
    quantity = values.number(line.raw, "Quantity", line.where("Quantity"))
    if quantity is None:
        raise MappingError(line.where("Quantity"), f"line {line.row} (product {values.shown(code)}) has no Quantity")
    if quantity <= 0:
        return f"has Quantity {values.json_number(quantity)}: nothing to pick"
    if quantity >= values.MONEY_LIMIT:
        raise MappingError(
            line.where("Quantity"), f"line {line.row}: Quantity {values.shown(quantity)} is out of range"
        )
    if code not in known_articles:
        warnings.append(
            f"line {line.row} has product {values.shown(code)}, which has no article yet (its product failed to map"
            " or was not seen): the order waits for that article"
        )
    return _Pick(article_number=code, quantity=quantity)


def _order_line(line: _Line, pick: _Pick, comment: str | None, currency: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "rowNumber": line.row,
        "articleNumber": pick.article_number,
        "numberOfItems": values.json_number(pick.quantity),
    }
    if comment is not None:
        out["comment"] = comment
    prices: dict[str, Any] = {}
    unit_price = values.number(line.raw, "ProductUnitPrice", line.where("ProductUnitPrice"))
    if unit_price is not None:
        prices["linePrice"] = values.times_money(pick.quantity, unit_price, line.where("ProductUnitPrice"))
    net = values.money(line.raw, "NetAmount", line.where("NetAmount"))
    if net is not None:
        prices["customerLinePrice"] = net
    if currency is not None:
        prices["currencyCode"] = currency
    allowance = values.number(line.raw, "Allowance", line.where("Allowance"))
    if allowance is not None:
        prices["discountPercentage"] = values.json_number(allowance)
    if prices:
        out["prices"] = prices
    return out
