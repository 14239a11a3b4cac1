"""A fake PowerOffice Go v2 API (aiohttp), faithful to reference/poweroffice/NOTES.md §1, §2 and §7.

What it does like the real one:
- **Auth.** `POST {origin}/OAuth/Token` (any casing, also under `/Demo`) with `Authorization: Basic
  base64(applicationKey:clientKey)` (or client_id/client_secret in the form), `grant_type=client_credentials` and
  the subscription key → `{access_token, token_type, expires_in}`. Wrong keys → 400 `invalid_client`. Tokens
  expire after `token_ttl` seconds of the fake's `clock`. API calls need `Bearer` + the subscription key
  (`Ocp-Apim-Subscription-Key` header or `subscription-key` query): 401 otherwise.
- **Paths are case-insensitive**; the API lives under `/v2` (and `/Demo/v2`).
- **Several companies**, one per client key, each with its own data (`Company` from `pipeline.fakes.generate`).
- **Lists**: `PageNumber` (from 1) / `PageSize` (default `default_page_size`, at most 20,000), bare PascalCase
  arrays, **204 with an empty body when empty**, an `X-Pagination` header with `nextPageLink` (absent on the
  last page; switch the header off with `pagination_header = False`, or keep it without links with
  `pagination_links = False`; `page_size_cap` serves fewer records per page than asked, links still pointing
  on). `$top`/`$skip` → 400. URLs longer than `max_url_length` → a misleading 404, as reported for the real
  gateway.
- **`Date`** on every answer, from the fake's `clock` (HTTP dates have whole seconds).
- **Raw values**: an `orjson.Fragment` stored in a record field is served verbatim, so a test can make a page
  carry what a real server once sent and a strict parser refuses (`NaN`, `1e400`, a lone surrogate).
- **Change filters are strictly `>`**, with the real traps: a stock change moves only
  `StockOnHandLastChangedDatetimeOffset` (not `LastChangedDateTimeOffset`); an address change does not move the
  customer's `LastChangedDateTimeOffset`; a payment moves `Balance` and `BalanceLastChangedDateTimeOffset`.
- **Rate limit per subscription key** (`requests_per_second` in any one-second window, token calls included):
  over it, 429 with `Retry-After` and the gateway's JSON body.
- **`PATCH /Products/{id}`**: JSON-Patch (`application/json-patch+json` only; 415 otherwise) on the patchable
  fields; `StockOnHand` only on stock items (400 otherwise); answers 200 with the product.
- **Errors** are ProblemDetails: PascalCase keys as in the spec for 404s and bad resource parameters, lower-case
  keys (as once observed) for validation errors.

Test hooks: `requests` (a `LoggedRequest` per request, the newest `requests_kept` of them, so a long run's
memory stays flat; `requests_served` counts them all; `key` is `"<subscription tag>/<client tag>"`, tags from
`key_tag`, never the keys), `faults` (a `FaultScript`, matched against the path plus `?query`),
and mutation helpers that bump the right timestamps (`set_price`, `set_stock`, `pay_invoice`, `change_address`…).
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import math
import secrets
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import orjson
from aiohttp import web

from pipeline.fakes.faults import FaultScript, LoggedRequest, apply_fault
from pipeline.fakes.generate import Company, JsonObject, format_time
from pipeline.serving import serve_app

SUBSCRIPTION_HEADER = "Ocp-Apim-Subscription-Key"
MAX_PAGE_SIZE = 20_000

PRODUCT_PATCHABLE = (
    "Code", "Description", "Gtin", "IsArchived", "IsStockItem", "Name", "OptionalSalesAccountId",
    "ProductGroupId", "ProductType", "StandardSalesAccountId", "StockOnHand", "UnitCost", "UnitOfMeasureCode",
    "UnitPrice",
)  # fmt: skip
_PATCHABLE = {name.lower(): name for name in PRODUCT_PATCHABLE}
_STOCK_FIELDS = {"StockOnHand"}


def key_tag(key: str) -> str:
    """A short, stable, non-reversible name for a key, for request logs and assertions."""
    return "k" + hashlib.sha256(key.encode()).hexdigest()[:8]


def _utcnow() -> datetime:
    return datetime.now(UTC)


@functools.lru_cache(maxsize=262_144)
def _record_time(text: str) -> datetime:
    """A stored record's timestamp (our own 7-digit format) as a datetime; cached, records are re-read a lot."""
    return datetime.fromisoformat(text)


class _Problem(Exception):
    """Raised by a handler to answer with a ProblemDetails body."""

    def __init__(self, status: int, title: str, detail: str = "", *, lower: bool = False) -> None:
        super().__init__(title)
        self.status = status
        self.title = title
        self.detail = detail
        self.lower = lower

    def response(self) -> web.Response:
        if self.lower:
            body: JsonObject = {"title": self.title, "status": self.status, "detail": self.detail}
        else:
            body = {"Type": None, "Title": self.title, "Status": self.status, "Detail": self.detail}
        return _json(body, status=self.status)


def _json(data: Any, *, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data), content_type="application/json", headers=headers)


@dataclass(slots=True)
class _Token:
    client_key: str
    expires_at: datetime


class FakePowerOffice:
    """In-memory PowerOffice Go companies behind the v2 API. See the module docstring for the behaviour.

    `clock` gives the fake's wall time (timestamps written by mutations, token expiry); `monotonic` times the
    rate-limit window and the request log. Both are injectable for tests.
    """

    def __init__(
        self,
        *,
        application_key: str,
        subscription_keys: Collection[str],
        requests_per_second: float = 10,
        token_ttl: float = 1200,
        default_page_size: int = 5000,
        clock: Callable[[], datetime] = _utcnow,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.application_key = application_key
        self.subscription_keys = frozenset(subscription_keys)
        self.requests_per_second = requests_per_second
        self.token_ttl = token_ttl
        self.default_page_size = default_page_size
        self.clock = clock
        self.monotonic = monotonic
        self.pagination_header = True
        self.pagination_links = True
        self.page_size_cap: int | None = None
        self.max_url_length = 2000
        self.requests: list[LoggedRequest] = []
        self.requests_kept = 20_000
        self.requests_served = 0
        self.faults = FaultScript()
        self.tokens_issued = 0
        self._companies: dict[str, Company] = {}
        self._tokens: dict[str, _Token] = {}
        self._admitted: dict[str, deque[float]] = {}

    def __repr__(self) -> str:
        return f"FakePowerOffice(companies={len(self._companies)}, requests={len(self.requests)})"

    # ------------------------------------------------------------------------------------------ companies

    def add_company(self, client_key: str, company: Company) -> None:
        """Serve `company` to whoever authenticates with `client_key`."""
        self._companies[client_key] = company

    def company(self, client_key: str) -> Company:
        return self._companies[client_key]

    def arrivals(self, subscription_key: str) -> list[float]:
        """When each logged request with this subscription key arrived (the `monotonic` clock), 429s included:
        `pipeline.clients.ratelimit.max_in_window` of them is the key's peak rate as the server counted it."""
        tag = key_tag(subscription_key)
        return [r.at for r in self.requests if r.key is not None and r.key.split("/", 1)[0] == tag]

    def requests_of(self, client_key: str) -> list[LoggedRequest]:
        """The logged requests made with this client key (token calls included)."""
        tag = "/" + key_tag(client_key)
        return [r for r in self.requests if r.key is not None and r.key.endswith(tag)]

    # ------------------------------------------------------------------------------- mutation helpers

    def _product(self, client_key: str, code: str) -> JsonObject:
        return self.company(client_key).product_by_code(code)

    def set_price(self, client_key: str, code: str, price: float) -> JsonObject:
        """Change a product's `UnitPrice`: moves its `LastChangedDateTimeOffset`."""
        return self.update_product(client_key, code, UnitPrice=price)

    def update_product(self, client_key: str, code: str, **fields: Any) -> JsonObject:
        """Change product fields (not stock): moves its `LastChangedDateTimeOffset`."""
        if _STOCK_FIELDS & fields.keys():
            raise ValueError("use set_stock for StockOnHand: it moves a different timestamp")
        product = self._product(client_key, code)
        product.update(fields)
        product["LastChangedDateTimeOffset"] = format_time(self.clock())
        return product

    def set_stock(self, client_key: str, code: str, value: float) -> JsonObject:
        """Change `StockOnHand`: moves only `StockOnHandLastChangedDatetimeOffset` (the trap)."""
        product = self._product(client_key, code)
        _set_stock(product, value, self.clock())
        return product

    def add_product(self, client_key: str, *, code: str, name: str, **fields: Any) -> JsonObject:
        """Create a product (created and changed now). Returns the stored DTO."""
        company = self.company(client_key)
        now = format_time(self.clock())
        pid = company.new_id()
        product: JsonObject = {
            "Id": pid,
            "Code": code,
            "Name": name,
            "Description": None,
            "Gtin": None,
            "ProductType": "Product",
            "UnitOfMeasureCode": "EA",
            "UnitPrice": None,
            "UnitCost": None,
            "ProductGroupId": None,
            "ProductGroupCode": None,
            "IsArchived": False,
            "IsStockItem": True,
            "StockOnHand": 0.0,
            "StockAvailable": 0.0,
            "StockOnHandLastChangedDatetimeOffset": now,
            "CreatedDateTimeOffset": now,
            "LastChangedDateTimeOffset": now,
        }
        product.update(fields)
        company.products[pid] = product
        return product

    def pay_invoice(self, client_key: str, invoice_id: str) -> JsonObject:
        """Register full payment: `Balance` 0, `BalanceLastChangedDateTimeOffset` now."""
        invoice = self.company(client_key).invoices[invoice_id]
        invoice["Balance"] = 0.0
        invoice["BalanceLastChangedDateTimeOffset"] = format_time(self.clock())
        if invoice.get("MatchId") is None:
            invoice["MatchId"] = int(uuid.UUID(invoice_id).int % 10**9)
        return invoice

    def add_invoice(self, client_key: str, invoice: JsonObject, lines: Sequence[JsonObject] = ()) -> JsonObject:
        """Add an invoice (its `Id` a uuid string) with lines; its balance timestamp defaults to now."""
        company = self.company(client_key)
        now = format_time(self.clock())
        stored = dict(invoice)
        stored.setdefault("Id", str(uuid.uuid4()))
        stored.setdefault("VoucherType", "OutgoingInvoice")
        stored.setdefault("BalanceLastChangedDateTimeOffset", now)
        stored.setdefault("CreatedDateTimeOffset", now)
        stored.setdefault("LastChangedDateTimeOffset", now)
        company.invoices[stored["Id"]] = stored
        company.invoice_lines[stored["Id"]] = [dict(line) for line in lines]
        return stored

    def change_address(self, client_key: str, customer_no: int, **fields: Any) -> JsonObject:
        """Change a customer's `MailAddress` (creating it if missing). The customer's own
        `LastChangedDateTimeOffset` does **not** move (the trap); the address's does."""
        company = self.company(client_key)
        customer = company.customer_by_number(customer_no)
        address = customer.get("MailAddress")
        if address is None:
            address = customer["MailAddress"] = {
                "Id": company.new_id(),
                "AddressLine1": None,
                "AddressLine2": None,
                "ZipCode": None,
                "City": None,
                "CountryCode": "NO",
                "ExternalCode": None,
            }
        address.update(fields)
        address["LastChangedDateTimeOffset"] = format_time(self.clock())
        return customer

    def change_delivery_address(self, client_key: str, address_id: int, **fields: Any) -> JsonObject:
        """Change a contact delivery address: moves the address's timestamp, not the customer's."""
        address = self.company(client_key).delivery_addresses[address_id]
        address.update(fields)
        address["LastChangedDateTimeOffset"] = format_time(self.clock())
        return address

    def update_customer(self, client_key: str, customer_no: int, **fields: Any) -> JsonObject:
        """Change customer fields (not addresses): moves the customer's `LastChangedDateTimeOffset`."""
        customer = self.company(client_key).customer_by_number(customer_no)
        customer.update(fields)
        customer["LastChangedDateTimeOffset"] = format_time(self.clock())
        return customer

    # -------------------------------------------------------------------------------------------- server

    def create_app(self) -> web.Application:
        """The aiohttp application: one catch-all route, because PowerOffice's paths are case-insensitive."""
        app = web.Application(client_max_size=4 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._entry)
        return app

    def _identify(self, request: web.Request) -> str | None:
        """Which keys made this request, as tags (for the log; validation happens in `_serve`)."""
        sub = request.headers.get(SUBSCRIPTION_HEADER) or request.query.get("subscription-key")
        client: str | None = None
        auth = request.headers.get("Authorization", "")
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer":
            token = self._tokens.get(value.strip())
            client = token.client_key if token else None
        elif scheme.lower() == "basic":
            client = _basic_pair(value)[1]
        if sub is None:
            return None
        return key_tag(sub) + (f"/{key_tag(client)}" if client else "")

    async def _entry(self, request: web.Request) -> web.StreamResponse:
        at = self.monotonic()
        target = request.path + (f"?{request.query_string}" if request.query_string else "")
        fault = self.faults.take(request.method, target)
        key = self._identify(request)
        status = 0
        try:
            response = await apply_fault(fault, request, self._serve)
            status = response.status
            if not response.prepared:
                response.headers["Date"] = format_datetime(self.clock().astimezone(UTC), usegmt=True)
            return response
        finally:
            self.requests.append(
                LoggedRequest(
                    at,
                    request.method,
                    request.path,
                    request.query_string,
                    status,
                    fault.kind if fault else None,
                    key,
                )
            )
            self.requests_served += 1
            if len(self.requests) > 2 * self.requests_kept:  # trimmed in halves: amortised O(1) per request
                del self.requests[: len(self.requests) - self.requests_kept]

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        sub = request.headers.get(SUBSCRIPTION_HEADER) or request.query.get("subscription-key")
        if sub is None:
            return _json(
                {
                    "statusCode": 401,
                    "message": "Access denied due to missing subscription key. Make sure to include "
                    "subscription key when making requests to an API.",
                },
                status=401,
            )
        if sub not in self.subscription_keys:
            return _json(
                {
                    "statusCode": 401,
                    "message": "Access denied due to invalid subscription key. Make sure to provide a valid "
                    "key for an active subscription.",
                },
                status=401,
            )
        wait = self._admit(sub)
        if wait is not None:
            seconds = max(1, math.ceil(wait))
            return _json(
                {"statusCode": "429", "message": f"Rate limit is exceeded. Try again in {seconds} seconds."},
                status=429,
                headers={"Retry-After": str(seconds)},
            )
        path = request.path.lower().rstrip("/")
        if path.startswith("/demo/"):
            path = path[len("/demo") :]
        try:
            if path == "/oauth/token":
                return await self._token(request)
            if path == "/v2" or path.startswith("/v2/"):
                return await self._api(request, path[len("/v2") :])
            raise _Problem(404, "Not found", f"No resource at {request.path}.")
        except _Problem as problem:
            return problem.response()

    def _admit(self, sub: str) -> float | None:
        """Count the request against its subscription key; seconds to wait when over the limit, else None."""
        if math.isinf(self.requests_per_second):
            return None
        capacity = max(1, math.floor(self.requests_per_second))
        window = max(1.0, capacity / self.requests_per_second)
        now = self.monotonic()
        admitted = self._admitted.setdefault(key_tag(sub), deque())
        while admitted and admitted[0] <= now - window:
            admitted.popleft()
        if len(admitted) >= capacity:
            return admitted[0] + window - now
        admitted.append(now)
        return None

    # --------------------------------------------------------------------------------------------- token

    async def _token(self, request: web.Request) -> web.Response:
        if request.method != "POST":
            raise _Problem(405, "Method not allowed", "Use POST.")
        form = await request.post()
        application, client = _basic_pair(request.headers.get("Authorization", "").partition(" ")[2])
        if application is None:
            application = _form_str(form.get("client_id"))
            client = _form_str(form.get("client_secret"))
        if _form_str(form.get("grant_type")) != "client_credentials":
            return _json(
                {"error": "unsupported_grant_type", "error_description": "Use grant_type=client_credentials."},
                status=400,
            )
        if application != self.application_key or client is None or client not in self._companies:
            return _json(
                {
                    "error": "invalid_client",
                    "error_description": "Client integration not found. Please ensure the provided keys are "
                    "matching the desired environment.",
                },
                status=400,
            )
        value = secrets.token_urlsafe(32)
        self._tokens[value] = _Token(client, self.clock() + timedelta(seconds=self.token_ttl))
        self.tokens_issued += 1
        return _json({"access_token": value, "token_type": "bearer", "expires_in": self.token_ttl})

    # ----------------------------------------------------------------------------------------------- api

    async def _api(self, request: web.Request, path: str) -> web.Response:
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        token = self._tokens.get(value.strip()) if scheme.lower() == "bearer" else None
        if token is None or token.expires_at <= self.clock():
            return web.Response(status=401)
        company = self._companies.get(token.client_key)
        if company is None:
            return web.Response(status=401)
        if len(str(request.url)) > self.max_url_length:
            # The real gateway answers over-long URLs with a 404 that says nothing about the length.
            raise _Problem(404, "Not found", "Resource not found.")
        query = {k.lower(): v for k, v in request.query.items()}
        if "$top" in query or "$skip" in query:
            raise _Problem(400, "Invalid resourceParameter", "OData query options are not supported.")
        parts = [p for p in path.split("/") if p]
        method = request.method
        match parts:
            case ["products"] if method == "GET":
                return self._page(request, query, _filter_products(company, query))
            case ["products", pid] if method == "GET":
                return _json(_by_id(company.products, pid, "Product"))
            case ["products", pid] if method == "PATCH":
                return await self._patch_product(request, company, pid)
            case ["productgroups"] if method == "GET":
                return self._page(request, query, _filter_groups(company, query))
            case ["productgroups", gid] if method == "GET":
                return _json(_by_id(company.product_groups, gid, "Product group"))
            case ["customers"] if method == "GET":
                return self._page(request, query, _filter_customers(company, query))
            case ["customers", cid] if method == "GET":
                return _json(_by_id(company.customers, cid, "Customer"))
            case ["contactdeliveryaddresses"] if method == "GET":
                return self._page(request, query, _filter_addresses(company, query))
            case ["outgoinginvoices"] if method == "GET":
                return self._page(request, query, _filter_invoices(company, query))
            case ["outgoinginvoices", iid] if method == "GET":
                return _json(_invoice(company, iid))
            case ["outgoinginvoices", iid, "lines"] if method == "GET":
                invoice = _invoice(company, iid)
                return self._page(request, query, company.invoice_lines.get(invoice["Id"], []))
            case ["clientintegrationinformation"] if method == "GET":
                return _json({"ClientName": company.name, "ValidPrivileges": [], "InvalidPrivileges": []})
        raise _Problem(404, "Not found", f"No resource at {method} {request.path}.")

    def _page(self, request: web.Request, query: Mapping[str, str], items: Sequence[JsonObject]) -> web.Response:
        """One page of `items` as a bare array (204 when empty), with `X-Pagination`."""
        try:
            size = int(query.get("pagesize", self.default_page_size))
            number = int(query.get("pagenumber", 1))
        except ValueError:
            raise _Problem(400, "Invalid resourceParameter", "PageSize and PageNumber are integers.") from None
        if not 1 <= size <= MAX_PAGE_SIZE or number < 1:
            raise _Problem(
                400,
                "Invalid resourceParameter",
                f"PageSize must be between 1 and {MAX_PAGE_SIZE}, PageNumber at least 1.",
            )
        if self.page_size_cap is not None:
            size = min(size, self.page_size_cap)
        chunk = items[(number - 1) * size : number * size]
        if not chunk:
            return web.Response(status=204)
        fields = query.get("fields")
        if fields:
            wanted = {f.strip().lower() for f in fields.split(",") if f.strip()}
            chunk = [{k: v for k, v in item.items() if k.lower() in wanted} for item in chunk]
        headers: dict[str, str] = {}
        if self.pagination_header:
            pages = math.ceil(len(items) / size)
            meta: JsonObject = {"totalCount": len(items), "pageSize": size, "currentPage": number, "totalPages": pages}
            if number > 1 and self.pagination_links:
                meta["previousPageLink"] = _page_link(request, number - 1)
            if number < pages and self.pagination_links:
                meta["nextPageLink"] = _page_link(request, number + 1)
            headers["X-Pagination"] = orjson.dumps(meta).decode()
        return _json(chunk, headers=headers)

    async def _patch_product(self, request: web.Request, company: Company, pid: str) -> web.Response:
        product = _by_id(company.products, pid, "Product")
        if request.content_type != "application/json-patch+json":
            raise _Problem(415, "Unsupported Media Type", "Send a JSON-Patch document as application/json-patch+json.")
        try:
            ops = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            raise _Problem(400, "Invalid patch document", "The body is not JSON.", lower=True) from None
        if not isinstance(ops, list) or not ops:
            raise _Problem(400, "Invalid patch document", "Expected a non-empty JSON array.", lower=True)
        patched = dict(product)
        for op in ops:
            _apply_op(patched, op, company)
        if patched.get("StockOnHand") != product.get("StockOnHand") and not patched.get("IsStockItem"):
            raise _Problem(
                400,
                "Validation error",
                f"StockOnHand can only be set on stock items; product {product['Id']} has IsStockItem false.",
                lower=True,
            )
        now = self.clock()
        changed = {k for k in PRODUCT_PATCHABLE if patched.get(k) != product.get(k)}
        new_stock = patched.get("StockOnHand")
        patched["StockOnHand"] = product.get("StockOnHand")
        patched["StockAvailable"] = product.get("StockAvailable")
        if changed - _STOCK_FIELDS:
            patched["LastChangedDateTimeOffset"] = format_time(now)
        if "StockOnHand" in changed:
            _set_stock(patched, new_stock, now)
        product.clear()
        product.update(patched)
        return _json(product)


# ---------------------------------------------------------------------------------------------- helpers


def _basic_pair(value: str) -> tuple[str | None, str | None]:
    """(application key, client key) from a Basic credential; (None, None) when unreadable."""
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None, None
    app, sep, client = decoded.partition(":")
    return (app, client) if sep else (None, None)


def _form_str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _page_link(request: web.Request, number: int) -> str:
    pairs = [(k, v) for k, v in request.query.items() if k.lower() != "pagenumber"]
    pairs.append(("PageNumber", str(number)))
    return str(request.url.with_query(pairs))


def _set_stock(product: JsonObject, value: float | None, now: datetime) -> None:
    old = product.get("StockOnHand") or 0.0
    product["StockOnHand"] = value
    if value is None:
        product["StockAvailable"] = None
    else:
        available = product.get("StockAvailable")
        product["StockAvailable"] = value if available is None else available + (value - old)
    product["StockOnHandLastChangedDatetimeOffset"] = format_time(now)


def _apply_op(product: JsonObject, op: object, company: Company) -> None:
    """Apply one JSON-Patch operation to a product copy; raises _Problem for anything not allowed."""
    if not isinstance(op, dict) or not isinstance(op.get("op"), str) or not isinstance(op.get("path"), str):
        raise _Problem(400, "Invalid patch document", "Each operation needs 'op' and 'path'.", lower=True)
    kind = op["op"].lower()
    segments = [s for s in op["path"].split("/") if s]
    name = _PATCHABLE.get(segments[0].lower()) if len(segments) == 1 else None
    if name is None:
        raise _Problem(400, "Invalid patch document", f"The path {op['path']!r} cannot be patched.", lower=True)
    if kind in ("replace", "add"):
        if "value" not in op:
            raise _Problem(400, "Invalid patch document", f"'{kind}' needs a value.", lower=True)
        value = op["value"]
    elif kind == "remove":
        value = None
    elif kind == "test":
        if product.get(name) != op.get("value"):
            raise _Problem(400, "Patch test failed", f"{name} is not {op.get('value')!r}.", lower=True)
        return
    else:
        raise _Problem(400, "Invalid patch document", f"Operation {kind!r} is not supported.", lower=True)
    numeric = {"StockOnHand", "UnitCost", "UnitPrice"}
    if name in numeric and value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise _Problem(400, "Validation error", f"{name} must be a number.", lower=True)
    if name in ("IsArchived", "IsStockItem") and not isinstance(value, bool):
        raise _Problem(400, "Validation error", f"{name} must be true or false.", lower=True)
    if name == "StockOnHand" and value is not None:
        value = float(value)
    if name == "ProductGroupId":
        group = company.product_groups.get(value) if isinstance(value, int) else None
        if value is not None and group is None:
            raise _Problem(400, "Validation error", f"Product group {value!r} does not exist.", lower=True)
        product["ProductGroupCode"] = group["Code"] if group else None
    product[name] = value


def _by_id(records: Mapping[int, JsonObject], raw: str, what: str) -> JsonObject:
    try:
        record = records.get(int(raw))
    except ValueError:
        record = None
    if record is None:
        raise _Problem(404, "Object(s) not found", f"{what} with id = {raw} not found.")
    return record


def _invoice(company: Company, raw: str) -> JsonObject:
    try:
        key = str(uuid.UUID(raw))
    except ValueError:
        raise _Problem(400, "Invalid id", f"{raw!r} is not a uuid.") from None
    invoice = company.invoices.get(key)
    if invoice is None:
        raise _Problem(404, "Object(s) not found", f"Outgoing invoice with id = {raw} not found.")
    return invoice


def _filter_time(query: Mapping[str, str], name: str) -> datetime | None:
    raw = query.get(name.lower())
    if raw is None or not raw.strip():
        return None
    try:
        value = datetime.fromisoformat(raw.strip())
    except ValueError:
        raise _Problem(400, "Invalid filter", f"{name}: {raw!r} is not a date-time.") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _after(items: Iterable[JsonObject], query: Mapping[str, str], name: str, field: str) -> list[JsonObject]:
    """Keep records whose `field` is strictly later than the `name` filter (all records without the filter)."""
    bound = _filter_time(query, name)
    if bound is None:
        return list(items)
    return [r for r in items if r.get(field) and _record_time(r[field]) > bound]


def _ranges(query: Mapping[str, str], name: str) -> list[tuple[int, int]] | None:
    """Parse a number filter like "10000-11000, 12000, 13000-"; None when absent."""
    raw = query.get(name.lower())
    if raw is None or not raw.strip():
        return None
    out: list[tuple[int, int]] = []
    try:
        for token in raw.split(","):
            token = token.strip()
            if not token:
                continue
            low, dash, high = token.partition("-")
            if not dash:
                out.append((int(low), int(low)))
            else:
                out.append((int(low) if low.strip() else -(2**63), int(high) if high.strip() else 2**63))
    except ValueError:
        raise _Problem(400, "Invalid filter", f"{name}: {raw!r} is not a list of numbers and ranges.") from None
    return out


def _in_ranges(value: object, ranges: list[tuple[int, int]]) -> bool:
    return isinstance(value, int) and any(low <= value <= high for low, high in ranges)


def _words(query: Mapping[str, str], name: str) -> set[str] | None:
    raw = query.get(name.lower())
    if raw is None or not raw.strip():
        return None
    return {w.strip().lower() for w in raw.split(",") if w.strip()}


def _flag(query: Mapping[str, str], name: str) -> bool | None:
    raw = query.get(name.lower())
    if raw is None or not raw.strip():
        return None
    if raw.strip().lower() not in ("true", "false"):
        raise _Problem(400, "Invalid filter", f"{name}: expected true or false.")
    return raw.strip().lower() == "true"


def _filter_products(company: Company, query: Mapping[str, str]) -> list[JsonObject]:
    items = _after(
        company.products.values(), query, "lastChangedDateTimeOffsetGreaterThan", "LastChangedDateTimeOffset"
    )
    items = _after(items, query, "createdDateTimeOffsetGreaterThan", "CreatedDateTimeOffset")
    items = _after(
        items, query, "stockOnHandLastChangedDatetimeOffsetGreaterThan", "StockOnHandLastChangedDatetimeOffset"
    )
    if (codes := _words(query, "codes")) is not None:
        items = [p for p in items if (p.get("Code") or "").lower() in codes]
    if (names := _words(query, "names")) is not None:
        items = [p for p in items if (p.get("Name") or "").lower() in names]
    if (groups := _words(query, "productGroupCodes")) is not None:
        items = [p for p in items if (p.get("ProductGroupCode") or "").lower() in groups]
    if (archived := _flag(query, "isArchived")) is not None:
        items = [p for p in items if bool(p.get("IsArchived")) == archived]
    if (kinds := _words(query, "type")) is not None:
        items = [p for p in items if (p.get("ProductType") or "").lower() in kinds]
    return items


def _filter_groups(company: Company, query: Mapping[str, str]) -> list[JsonObject]:
    items = _after(
        company.product_groups.values(), query, "lastChangedDateTimeOffsetGreaterThan", "LastChangedDateTimeOffset"
    )
    items = _after(items, query, "createdDateTimeOffsetGreaterThan", "CreatedDateTimeOffset")
    if (codes := _words(query, "codes")) is not None:
        items = [g for g in items if (g.get("Code") or "").lower() in codes]
    if (archived := _flag(query, "isArchived")) is not None:
        items = [g for g in items if bool(g.get("IsArchived")) == archived]
    return items


def _filter_customers(company: Company, query: Mapping[str, str]) -> list[JsonObject]:
    items = _after(
        company.customers.values(), query, "lastChangedDateTimeOffsetGreaterThan", "LastChangedDateTimeOffset"
    )
    items = _after(items, query, "customerCreatedDateTimeOffsetGreaterThan", "CustomerCreatedDateTimeOffset")
    if (numbers := _ranges(query, "customerNos")) is not None:
        items = [c for c in items if _in_ranges(c.get("Number"), numbers)]
    if (external := _ranges(query, "externalNos")) is not None:
        items = [c for c in items if _in_ranges(c.get("ExternalNumber"), external)]
    return items


def _filter_addresses(company: Company, query: Mapping[str, str]) -> list[JsonObject]:
    items = _after(
        company.delivery_addresses.values(), query, "lastChangedDateTimeOffsetGreaterThan", "LastChangedDateTimeOffset"
    )
    items = _after(items, query, "createdDateTimeOffsetGreaterThan", "CreatedDateTimeOffset")
    if (ids := _ranges(query, "contactIds")) is not None:
        items = [a for a in items if _in_ranges(a.get("ContactId"), ids)]
    if (codes := _words(query, "externalCodes")) is not None:
        items = [a for a in items if (a.get("ExternalCode") or "").lower() in codes]
    return items


def _date_filter(query: Mapping[str, str], name: str) -> date | None:
    raw = query.get(name.lower())
    if raw is None or not raw.strip():
        return None
    try:
        return date.fromisoformat(raw.strip()[:10])
    except ValueError:
        raise _Problem(400, "Invalid filter", f"{name}: {raw!r} is not a date.") from None


def _filter_invoices(company: Company, query: Mapping[str, str]) -> list[JsonObject]:
    items = _after(
        company.invoices.values(),
        query,
        "balanceLastChangedDateTimeOffsetGreaterThan",
        "BalanceLastChangedDateTimeOffset",
    )
    items = _after(items, query, "sentDateTimeOffsetGreaterThan", "SentDateTimeOffset")
    if (start := _date_filter(query, "fromDate")) is not None:
        items = [i for i in items if date.fromisoformat(i["VoucherDate"][:10]) >= start]
    if (end := _date_filter(query, "toDate")) is not None:
        items = [i for i in items if date.fromisoformat(i["VoucherDate"][:10]) <= end]
    for name, field in (("invoiceNos", "InvoiceNo"), ("voucherNos", "VoucherNo"), ("customerNos", "CustomerNo")):
        if (ranges := _ranges(query, name)) is not None:
            items = [i for i in items if _in_ranges(i.get(field), ranges)]
    if (ids := _words(query, "invoiceIds")) is not None:
        items = [i for i in items if i["Id"].lower() in ids]
    if _flag(query, "onlyUnpaidInvoices"):
        items = [i for i in items if i.get("Balance") not in (0, None)]
    return items


# ------------------------------------------------------------------------------------------------ serving


@asynccontextmanager
async def serve_poweroffice(fake: FakePowerOffice, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
    """Serve `fake` on `host:port` (0 = any free port) for the duration; yields the origin `http://host:port`."""
    async with serve_app(fake.create_app(), host, port) as origin:
        yield origin
