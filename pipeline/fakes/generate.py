"""Realistic PowerOffice Go companies for the fake server, the demo, tests and benchmarks.

`generate_company(seed, now=...)` is deterministic for a seed: the same call gives the same company. Records are
PascalCase v2 DTO dicts shaped like the spec's ProductDto, ProductGroupDto, CustomerDto, ContactDeliveryAddressDto,
OutgoingInvoiceDto and OutgoingInvoiceLineDto, with the awkward cases a real company has:
- products with and without a group and a GTIN, services (ProductType "Service", not stock items), a few
  non-stock and archived products;
- customers that are persons or companies, with and without a mail address, an email or a phone number; some
  with delivery addresses instead of (or besides) a mail address;
- invoices paid (`Balance == 0`) and unpaid, partly paid ones, credit notes (`VoucherType` OutgoingCreditNote),
  `OrderNo` sometimes null and sometimes shared by two invoices; lines of type Normal and Text, invoice-fee
  lines and freight lines without a `ProductCode`.
All timestamps lie at or before `now`, written like PowerOffice writes them (`…T10:53:00.1234560Z`).
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

JsonObject = dict[str, Any]

# Word lists read better as lines of words than as one quoted item per line.
_ADJECTIVES = tuple("Blå Rød Grønn Stor Liten Solid Lett Ekstra Rustfri Klassisk Robust Myk".split())  # noqa: SIM905
_NOUNS = tuple("eske hylle lampe stol krok skrue pute kopp bolle kabel boks matte sekk vott lue flaske".split())  # noqa: SIM905
_SERVICES = ("Montering", "Frakt", "Konsulenttime", "Service", "Opplæring", "Emballasje")
_GROUPS = (
    ("100", "Kjøkken"),
    ("200", "Bad"),
    ("300", "Verktøy"),
    ("400", "Klær"),
    ("500", "Elektro"),
    ("600", "Hage"),
    ("900", "Tjenester"),
)
_FIRST = ("Ola", "Kari", "Per", "Ingrid", "Nils", "Astrid", "Lars", "Sigrid", "Jonas", "Nora", "Emil", "Åse")
_LAST = ("Nordmann", "Hansen", "Johansen", "Olsen", "Larsen", "Berg", "Haugen", "Bakke", "Dahl", "Lie", "Ås")
_COMPANY = ("Fjord", "Nord", "Vest", "Fjell", "Kyst", "Skog", "Havn", "Elv", "Bre", "Lys", "Stein", "Vik")
_COMPANY_KIND = ("Handel", "Bygg", "Design", "Sport", "Interiør", "Marin", "Service", "Import")
_STREETS = ("Storgata", "Kirkeveien", "Strandveien", "Skolegata", "Parkveien", "Sjøgata", "Bakkeveien")
_PLACES = (
    ("0150", "Oslo"),
    ("5003", "Bergen"),
    ("7010", "Trondheim"),
    ("4006", "Stavanger"),
    ("9008", "Tromsø"),
    ("3015", "Drammen"),
    ("1530", "Moss"),
    ("2317", "Hamar"),
)
_UNITS = ("EA", "EA", "EA", "EA", "BX", "KGM", "LTR", "MTR")
_TERMS = ("DAP", "EXW", "FCA", None, None)


def format_time(when: datetime) -> str:
    """A timestamp as PowerOffice writes it: UTC, seven fraction digits, `Z`."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "0Z"


@dataclass
class Company:
    """One PowerOffice client (company): the records the fake server serves, keyed by their ids."""

    name: str
    product_groups: dict[int, JsonObject] = field(default_factory=dict)
    products: dict[int, JsonObject] = field(default_factory=dict)
    customers: dict[int, JsonObject] = field(default_factory=dict)
    delivery_addresses: dict[int, JsonObject] = field(default_factory=dict)
    invoices: dict[str, JsonObject] = field(default_factory=dict)
    invoice_lines: dict[str, list[JsonObject]] = field(default_factory=dict)
    next_id: int = 1

    def new_id(self) -> int:
        """A fresh int64 id, unique within the company (products, groups, contacts, addresses, lines)."""
        value = self.next_id
        self.next_id += 1
        return value

    def product_by_code(self, code: str) -> JsonObject:
        for product in self.products.values():
            if product.get("Code") == code:
                return product
        raise KeyError(code)

    def customer_by_number(self, number: int) -> JsonObject:
        for customer in self.customers.values():
            if customer.get("Number") == number:
                return customer
        raise KeyError(number)

    def paid_invoices(self) -> list[JsonObject]:
        """Invoices (not credit notes) with `Balance == 0`."""
        return [i for i in self.invoices.values() if i["VoucherType"] == "OutgoingInvoice" and i.get("Balance") == 0]


def _gtin(rng: random.Random) -> str:
    """A valid EAN-13 with a Norwegian GS1 prefix (70…)."""
    digits = [7, 0] + [rng.randrange(10) for _ in range(10)]
    total = sum(d * (3 if i % 2 else 1) for i, d in enumerate(digits))
    return "".join(map(str, digits)) + str((10 - total % 10) % 10)


def _when(rng: random.Random, now: datetime, *, max_days: float, min_days: float = 0.0) -> datetime:
    """A random moment between `max_days` and `min_days` before `now`."""
    return now - timedelta(days=rng.uniform(min_days, max_days))


def _between(rng: random.Random, start: datetime, end: datetime) -> datetime:
    """A random moment in [start, end] (spread out: real records rarely share a timestamp)."""
    return start + (end - start) * rng.random()


def _money(value: float) -> float:
    return round(value, 2)


def generate_company(
    seed: int,
    *,
    products: int = 200,
    customers: int = 50,
    invoices: int = 300,
    paid_ratio: float = 0.6,
    now: datetime,
    name: str | None = None,
) -> Company:
    """A company with that many products, customers and invoices (about 5% of the invoices are credit notes).

    Deterministic for (`seed`, arguments). `paid_ratio` is the share of invoices with `Balance == 0`.
    Ids start at a seed-dependent base so different companies rarely share ids.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    rng = random.Random(seed)
    company = Company(name=name or f"{rng.choice(_COMPANY)} {rng.choice(_COMPANY_KIND)} AS")
    company.next_id = 1000 + (seed % 97) * 1_000_000

    _add_groups(company, rng, now)
    _add_products(company, rng, now, products)
    _add_customers(company, rng, now, customers)
    _add_invoices(company, rng, now, invoices, paid_ratio)
    return company


def _add_groups(company: Company, rng: random.Random, now: datetime) -> None:
    for code, label in _GROUPS:
        created = _when(rng, now, max_days=900, min_days=400)
        service = code == "900"
        gid = company.new_id()
        company.product_groups[gid] = {
            "Id": gid,
            "Code": code,
            "Name": label,
            "Description": f"Varegruppe {label.lower()}",
            "IsArchived": False,
            "ProductType": "Service" if service else "Product",
            "UnitOfMeasureCode": "HUR" if service else "EA",
            "UnitPrice": None,
            "UnitCost": None,
            "StandardSalesAccount": 3000,
            "StandardSalesAccountId": 3000,
            "StandardSalesAccountAgricultureDepartment": "None",
            "OptionalSalesAccount": None,
            "OptionalSalesAccountId": None,
            "OptionalSalesAccountAgricultureDepartment": None,
            "CreatedDateTimeOffset": format_time(created),
            "LastChangedDateTimeOffset": format_time(created + timedelta(days=rng.uniform(0, 300))),
            "CreatedFromImportJournalId": None,
        }


def _add_products(company: Company, rng: random.Random, now: datetime, count: int) -> None:
    goods = [g for g in company.product_groups.values() if g["ProductType"] == "Product"]
    service_group = next(g for g in company.product_groups.values() if g["ProductType"] == "Service")
    for n in range(count):
        service = rng.random() < 0.08
        if service:
            name = f"{rng.choice(_SERVICES)} {n}"
            group: JsonObject | None = service_group if rng.random() < 0.8 else None
            unit = "HUR"
            stock_item = False
        else:
            name = f"{rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)}"
            group = rng.choice(goods) if rng.random() < 0.85 else None
            unit = rng.choice(_UNITS)
            stock_item = rng.random() < 0.95
        created = _when(rng, now, max_days=730, min_days=30)
        changed = _between(rng, created, min(now, created + timedelta(days=400)))
        cost = _money(rng.uniform(5, 800))
        stock = float(rng.randrange(0, 500)) if stock_item else None
        pid = company.new_id()
        company.products[pid] = {
            "Id": pid,
            "Code": f"{'S' if service else 'P'}-{n + 1:05d}",
            "Name": name,
            "Description": None if rng.random() < 0.3 else f"{name} ({unit.lower()})",
            "Gtin": None if service or rng.random() < 0.15 else _gtin(rng),
            "ProductType": "Service" if service else "Product",
            "UnitOfMeasureCode": unit,
            "UnitPrice": _money(cost * rng.uniform(1.3, 2.5)),
            "UnitCost": cost,
            "ProductGroupId": group["Id"] if group else None,
            "ProductGroupCode": group["Code"] if group else None,
            "IsArchived": rng.random() < 0.03,
            "IsStockItem": stock_item,
            "StockOnHand": stock,
            "StockAvailable": None if stock is None else max(0.0, stock - rng.randrange(0, 5)),
            "StockOnHandLastChangedDatetimeOffset": (format_time(_when(rng, now, max_days=60)) if stock_item else None),
            "StandardSalesAccount": 3000,
            "StandardSalesAccountId": 3000,
            "StandardSalesAccountAgricultureDepartment": "None",
            "OptionalSalesAccount": None,
            "OptionalSalesAccountId": None,
            "OptionalSalesAccountAgricultureDepartment": None,
            "CreatedDateTimeOffset": format_time(created),
            "LastChangedDateTimeOffset": format_time(changed),
            "CreatedFromImportJournalId": None,
        }


def _address(rng: random.Random, changed: datetime, aid: int) -> JsonObject:
    zip_code, city = rng.choice(_PLACES)
    return {
        "Id": aid,
        "AddressLine1": f"{rng.choice(_STREETS)} {rng.randrange(1, 120)}",
        "AddressLine2": None if rng.random() < 0.8 else f"Postboks {rng.randrange(1, 999)}",
        "ZipCode": zip_code,
        "City": city,
        "CountryCode": "NO" if rng.random() < 0.95 else "SE",
        "ExternalCode": None,
        "LastChangedDateTimeOffset": format_time(changed),
    }


def _add_customers(company: Company, rng: random.Random, now: datetime, count: int) -> None:
    for n in range(count):
        cid = company.new_id()
        person = rng.random() < 0.3
        created = _when(rng, now, max_days=1500, min_days=200)
        changed = _between(rng, created, min(now, created + timedelta(days=600)))
        first: str | None = None
        last: str | None = None
        legal: str | None = None
        org: str | None = None
        if person:
            first, last = rng.choice(_FIRST), rng.choice(_LAST)
            display = f"{first} {last}"
            email_stem = f"{first}.{last}".lower()
        else:
            display = f"{rng.choice(_COMPANY)} {rng.choice(_COMPANY_KIND)}"
            legal = f"{display} AS" if rng.random() < 0.8 else None
            org = str(rng.randrange(800_000_000, 999_999_999))
            email_stem = "post"
        domain = "example.no"
        email = f"{email_stem}{n}@{domain}".replace("å", "a").replace("ø", "o") if rng.random() < 0.8 else None
        invoice_email = (email if rng.random() < 0.5 else f"faktura{n}@{domain}") if rng.random() < 0.5 else None
        mail = _address(rng, changed, company.new_id()) if rng.random() < 0.75 else None
        company.customers[cid] = {
            "Id": cid,
            "Number": 10000 + n,
            "IsPerson": person,
            "FirstName": first,
            "LastName": last,
            "Name": display,
            "LegalName": legal,
            "OrganizationNumber": org,
            "EmailAddress": email,
            "InvoiceEmailAddress": invoice_email,
            "InvoiceEmailAddressCC": None,
            "InvoiceDeliveryType": "PdfByEmail" if (email or invoice_email) else "Print",
            "PhoneNumber": f"+47{rng.randrange(40_000_000, 99_999_999)}" if rng.random() < 0.7 else None,
            "WebsiteUrl": None,
            "MailAddress": mail,
            "CurrencyCode": "NOK",
            "PaymentTerm": 14,
            "PaymentTermId": 14,
            "DeliveryTerm": None,
            "DeliveryTermId": None,
            "Allowance": 0.0,
            "IsArchived": False,
            "IsActive": True,
            "IsVatFree": False,
            "ExternalNumber": None,
            "ExternalImportReference": None,
            "ContactGroupIds": [],
            "CustomerSince": created.date().isoformat(),
            "DateOfBirth": None,
            "SubledgerAccountId": 1500,
            "CustomerCreatedDateTimeOffset": format_time(created),
            "ContactCreatedDateTimeOffset": format_time(created),
            "LastChangedDateTimeOffset": format_time(changed),
        }
        wanted = rng.randrange(1, 3) if mail is None else (1 if rng.random() < 0.3 else 0)
        for k in range(wanted):
            aid = company.new_id()
            address = _address(rng, changed, aid)
            address.update(
                {
                    "ContactId": cid,
                    "IsPrimary": k == 0,
                    "CreatedDateTimeOffset": format_time(changed),
                }
            )
            company.delivery_addresses[aid] = address


def _line(
    company: Company,
    rng: random.Random,
    product: JsonObject | None,
    *,
    kind: str,
    sort: int,
    sign: int,
    description: str,
    quantity: float | None,
    price: float,
) -> JsonObject:
    allowance = 10.0 if kind == "Normal" and rng.random() < 0.15 else 0.0
    net = 0.0 if quantity is None else _money(sign * quantity * price * (1 - allowance / 100))
    vat = _money(net * 0.25)
    return {
        "Id": company.new_id(),
        "LineType": kind,
        "SortOrder": sort,
        "ProductId": product["Id"] if product else None,
        "ProductCode": product["Code"] if product else None,
        "Description": description,
        "Quantity": None if quantity is None else sign * quantity,
        "ProductUnitPrice": price if quantity is not None else None,
        "ProductUnitCost": product["UnitCost"] if product else None,
        "Allowance": allowance,
        "UnitOfMeasureCode": product["UnitOfMeasureCode"] if product else None,
        "NetAmount": net,
        "NetPostedAmount": net,
        "VatAmount": vat,
        "VatRate": 0.25 if quantity is not None else None,
        "VatCode": "3" if quantity is not None else None,
        "TotalAmount": _money(net + vat),
        "TotalPostedAmount": _money(net + vat),
        "AccountNo": 3000 if quantity is not None else None,
        "IsAccrued": False,
        "ExternalImportReference": None,
    }


def _add_invoices(company: Company, rng: random.Random, now: datetime, count: int, paid_ratio: float) -> None:
    customers = list(company.customers.values())
    products = [p for p in company.products.values() if not p["IsArchived"]]
    goods = [p for p in products if p["ProductType"] == "Product"] or products
    services = [p for p in products if p["ProductType"] == "Service"]
    if not customers or not products:
        return
    # Invoice dates spread over the last 120 days, oldest first, numbered in that order.
    moments = sorted(_when(rng, now, max_days=120, min_days=0.01) for _ in range(count))
    order_nos: list[int] = []
    for n, created in enumerate(moments):
        credit = rng.random() < 0.05
        sign = -1 if credit else 1
        customer = rng.choice(customers)
        lines: list[JsonObject] = []
        for _ in range(rng.randrange(1, 6)):
            product = rng.choice(services) if services and rng.random() < 0.1 else rng.choice(goods)
            lines.append(
                _line(
                    company,
                    rng,
                    product,
                    kind="Normal",
                    sort=len(lines),
                    sign=sign,
                    description=product["Name"],
                    quantity=float(rng.randrange(1, 20)),
                    price=product["UnitPrice"] or 0.0,
                )
            )
        if rng.random() < 0.2:
            lines.append(
                _line(
                    company,
                    rng,
                    None,
                    kind="Text",
                    sort=len(lines),
                    sign=sign,
                    description="Levering etter avtale",
                    quantity=None,
                    price=0.0,
                )
            )
        if not credit and rng.random() < 0.15:
            lines.append(
                _line(
                    company,
                    rng,
                    None,
                    kind="InvoiceFee",
                    sort=len(lines),
                    sign=1,
                    description="Fakturagebyr",
                    quantity=1.0,
                    price=59.0,
                )
            )
        if not credit and rng.random() < 0.1:
            # A freight charge typed in by hand: a normal line with no product behind it.
            lines.append(
                _line(
                    company,
                    rng,
                    None,
                    kind="Normal",
                    sort=len(lines),
                    sign=1,
                    description="Frakt",
                    quantity=1.0,
                    price=149.0,
                )
            )
        net = _money(sum(line["NetAmount"] for line in lines))
        total = _money(sum(line["TotalAmount"] for line in lines))

        # OrderNo: mostly its own, sometimes missing (invoice not made from a Go order), sometimes the same
        # as an earlier invoice's (a second invoice for one order). The second invoice always
        # shares the first's; the third never has one.
        roll = rng.random()
        order_no: int | None
        if n == 1:
            order_no = order_nos[0]
        elif n == 2 or (n > 0 and roll < 0.17):
            order_no = None
        elif n > 0 and roll < 0.25:
            order_no = rng.choice(order_nos)
        else:
            order_no = 5000 + n
            order_nos.append(order_no)

        paid = rng.random() < paid_ratio
        if credit:
            balance = 0.0 if rng.random() < 0.7 else total
        elif paid:
            balance = 0.0
        elif rng.random() < 0.15:
            balance = _money(total * rng.uniform(0.2, 0.8))  # part-paid
        else:
            balance = total
        changed = created
        if balance != total:
            changed = _between(rng, created, min(now, created + timedelta(days=30)))
        voucher_date: date = created.date()
        invoice_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        currency = "NOK" if rng.random() < 0.95 else "EUR"
        company.invoices[invoice_id] = {
            "Id": invoice_id,
            "InvoiceNo": 1000 + n,
            "VoucherNo": 50000 + n,
            "VoucherType": "OutgoingCreditNote" if credit else "OutgoingInvoice",
            "VoucherDate": voucher_date.isoformat(),
            "OrderNo": order_no,
            "ImportedOrderNo": None,
            "OrderDate": voucher_date.isoformat() if order_no else None,
            "DeliveryDate": (voucher_date + timedelta(days=rng.randrange(0, 5))).isoformat()
            if rng.random() < 0.7
            else None,
            "DueDate": (voucher_date + timedelta(days=14)).isoformat(),
            "DeliveryTerm": rng.choice(_TERMS),
            "PaymentTerm": 14,
            "CustomerId": customer["Id"],
            "CustomerNo": customer["Number"],
            "CustomerReference": None if rng.random() < 0.6 else f"{rng.choice(_FIRST)} {rng.choice(_LAST)}",
            "PurchaseOrderReference": None if rng.random() < 0.7 else f"PO-{rng.randrange(1000, 9999)}",
            "ContractNo": None,
            "Cid": str(rng.randrange(10**12, 10**13)),
            "CurrencyCode": currency,
            "CurrencyExchangeRate": 1.0 if currency == "NOK" else 11.5,
            "NetAmount": net,
            "TotalAmount": total,
            "NetPostedAmount": net,
            "TotalPostedAmount": total,
            "Balance": balance,
            "BalanceLastChangedDateTimeOffset": format_time(changed),
            "MatchId": rng.randrange(1, 10**9) if balance != total else None,
            "SentDateTimeOffset": format_time(created + timedelta(minutes=rng.uniform(1, 60))),
            "InvoiceDeliveryType": customer["InvoiceDeliveryType"],
            "DeliveryAddress1": None,
            "DeliveryAddress2": None,
            "DeliveryAddressZipCode": None,
            "DeliveryAddressCity": None,
            "DeliveryAddressCountryCode": None,
            "IsReversed": False,
            "IsCreatedByCurrentIntegration": False,
            "ExternalImportReference": None,
            "CustomMatchingReference": None,
            "CreatedDateTimeOffset": format_time(created),
            "LastChangedDateTimeOffset": format_time(changed),
        }
        company.invoice_lines[invoice_id] = lines
