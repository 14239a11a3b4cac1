"""Ongoing WMS REST v1 client: the only module that speaks Ongoing's HTTP (DESIGN §2, reference NOTES §1–§2).

`OngoingClient` holds the shared aiohttp session and settings; `for_tenant()` gives a `TenantOngoing` bound to one
goods owner and its credentials (a tenant's own `ongoing_username`/`ongoing_password` replace the default ones).

Contract of every call:
- HTTP Basic auth on every request; the URL is `{api_url}{path}` with `api_url = …/{warehouse}/api/v1`.
- Failures arrive as the project's errors, translated once in `pipeline.clients.http.send`: `TransientApiError`
  (timeouts, dropped connections, 5xx; retried here with the `RetryPolicy`, bounded in attempts and time,
  honouring Retry-After) or `PermanentApiError` (other 4xx: not retried). 401/403 become `AuthError`. Each error
  carries method, path (never the query string), status, tenant and the trimmed detail of an ASP.NET
  `{"Message": …}` body or of whatever else came back (empty bodies give an empty detail).
- Writes (`PUT /articles`, `PUT /orders`) are upserts keyed by (goodsOwnerId, articleNumber/orderNumber), so a
  retry after a lost answer repeats an upsert and creates nothing twice. Ongoing processes writes one at a time
  per goods owner and lets parallel ones queue until they time out, so this client never has more than one write
  in flight per goods owner (one lock per goods owner, shared by every `TenantOngoing` of the client, held for
  one HTTP attempt at a time). Reads are not serialised.
- A body whose `goodsOwnerId` is not the tenant's is refused with `ValueError` before anything is sent: it would
  write into another goods owner's warehouse.

Body shapes are the published `PostArticleModel` / `PostOrderModel`; the TypedDicts below name the fields this
project sends (the mapping builds the dicts; the schema tests check them against the vendored schemas).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, NotRequired, TypedDict, TypeVar

import aiohttp
import anyio
import orjson

from pipeline.clients.http import Attempts, Response, RetryPolicy, retrying, send
from pipeline.clients.lenient_json import Page, parse_page
from pipeline.config import OngoingSettings, TenantSettings
from pipeline.errors import AuthError, PermanentApiError, TransientApiError, remember_secrets

SYSTEM = "ongoing"
T = TypeVar("T")
DEFAULT_POLICY = RetryPolicy()

# `stockInfoChangedFrom` must be within 24 hours of the server's clock [NOTES §1 "Status codes and errors"].
STOCK_CHANGED_WINDOW = timedelta(hours=24)

# Order status numbers at or above this mean the warehouse has started on the order (300 Released, 320 Allocated,
# 400 Picked, ...): Ongoing then refuses updates [NOTES §1 "Idempotency and upserts"; get-order-statuses].
WAREHOUSE_STARTED_STATUS = 300


# ---------------------------------------------------------------------------------------------------------------
# Request and response shapes (the subset of the published models this project uses)


class CodeName(TypedDict, total=False):
    code: str | None
    name: str | None


class ArticleBarCodeInfo(TypedDict, total=False):
    barCode: str | None
    barCodePackage: str | None
    barCodePallet: str | None


class PostArticleModel(TypedDict):
    goodsOwnerId: int
    articleNumber: str
    articleName: NotRequired[str | None]
    productCode: NotRequired[str | None]
    unitCode: NotRequired[str | None]
    description: NotRequired[str | None]
    isStockArticle: NotRequired[bool | None]
    isActive: NotRequired[bool | None]
    customerPrice: NotRequired[float | None]
    purchasePrice: NotRequired[float | None]
    purcaseCurrencyCode: NotRequired[str | None]  # sic: the API's spelling
    barCodeInfo: NotRequired[ArticleBarCodeInfo | None]
    articleGroup: NotRequired[CodeName | None]


class Notification(TypedDict, total=False):
    toBeNotified: bool | None
    value: str | None


class PostOrderConsignee(TypedDict, total=False):
    customerNumber: str | None
    name: str | None
    address1: str | None
    address2: str | None
    address3: str | None
    postCode: str | None
    city: str | None
    countryCode: str | None


class OrderLinePrices(TypedDict, total=False):
    linePrice: float | None
    customerLinePrice: float | None
    currencyCode: str | None
    discountPercentage: float | None


class PostOrderLine(TypedDict):
    rowNumber: str
    articleNumber: str
    numberOfItems: float
    comment: NotRequired[str | None]
    prices: NotRequired[OrderLinePrices | None]


class PostOrderTextLine(TypedDict):
    rowNumber: str
    comment: NotRequired[str | None]
    numberOfItems: NotRequired[float]


class PostOrderAdvanced(TypedDict, total=False):
    orderTextLines: list[PostOrderTextLine] | None


class PostOrderModel(TypedDict):
    goodsOwnerId: int
    orderNumber: str
    deliveryDate: str
    consignee: PostOrderConsignee
    goodsOwnerOrderId: NotRequired[str | None]
    referenceNumber: NotRequired[str | None]
    productionCode: NotRequired[str | None]
    termsOfDeliveryType: NotRequired[CodeName | None]
    emailNotification: NotRequired[Notification | None]
    smsNotification: NotRequired[Notification | None]
    orderLines: NotRequired[list[PostOrderLine] | None]
    advanced: NotRequired[PostOrderAdvanced | None]


class PostArticleResponse(TypedDict):
    articleSystemId: int | None
    message: str | None


class PostOrderResponse(TypedDict):
    orderId: int | None
    message: str | None


def _utcnow() -> datetime:
    return datetime.now(UTC)


def order_status(order: dict[str, Any]) -> tuple[int | None, str]:
    """The (number, text) of a GetOrderModel's `orderInfo.orderStatus`; (None, "") when absent."""
    info = order.get("orderInfo") or {}
    status = info.get("orderStatus") or {}
    number = status.get("number")
    return (number if isinstance(number, int) else None, str(status.get("text") or ""))


def format_time(value: datetime) -> str:
    """A query-string time as Ongoing wants it: UTC with an explicit offset, milliseconds."""
    if value.tzinfo is None:
        raise ValueError("a time sent to Ongoing needs a UTC offset")
    return value.astimezone(UTC).isoformat(timespec="milliseconds")


class OngoingClient:
    """One Ongoing installation (one base URL); hand out `TenantOngoing`s with `for_tenant`.

    `clock` is consulted only for the 24-hour limit on `stockInfoChangedFrom`.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        settings: OngoingSettings,
        *,
        policy: RetryPolicy = DEFAULT_POLICY,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.session = session
        self.settings = settings
        self.policy = policy
        self.clock = clock
        self.base_url = settings.api_url.rstrip("/")
        remember_secrets(settings.password.reveal())  # scrubbed from every error text from now on
        self._write_locks: dict[int, anyio.Lock] = {}

    def for_tenant(self, tenant: TenantSettings) -> TenantOngoing:
        if tenant.ongoing_goods_owner_id <= 0:
            raise ValueError(f"tenant {tenant.name} has no Ongoing goods owner id")
        lock = self._write_locks.setdefault(tenant.ongoing_goods_owner_id, anyio.Lock())
        return TenantOngoing(self, tenant, lock)


class TenantOngoing:
    """Ongoing calls for one tenant (one goods owner). Cheap to create; shares the client's session and locks."""

    def __init__(self, client: OngoingClient, tenant: TenantSettings, write_lock: anyio.Lock) -> None:
        self.client = client
        self.tenant = tenant
        self.goods_owner_id = tenant.ongoing_goods_owner_id
        self._write_lock = write_lock
        if tenant.ongoing_username is not None and tenant.ongoing_password is not None:
            self._username, self._password = tenant.ongoing_username, tenant.ongoing_password
        else:
            self._username, self._password = client.settings.username, client.settings.password
        remember_secrets(self._password.reveal())

    # -- writes ------------------------------------------------------------------------------------------------

    async def put_article(self, body: dict[str, Any], *, attempts: Attempts | None = None) -> dict[str, Any]:
        """`PUT /articles`: create or update the article `body["articleNumber"]`.

        Returns the PostArticleResponse `{articleSystemId, message}`. Raises ValueError for a body of another
        goods owner, ApiError subclasses as described in the module docstring.
        """
        self._check_owner(body)
        return await self._call(
            "PUT", "/articles", self._object("PUT", "/articles"), body=body, attempts=attempts, write=True
        )

    async def put_order(self, body: dict[str, Any], *, attempts: Attempts | None = None) -> dict[str, Any]:
        """`PUT /orders`: create or update the order `body["orderNumber"]` (200 or 201 are both success).

        Returns the PostOrderResponse `{orderId, message}`. Ongoing refuses (4xx → PermanentApiError) an update of
        an order the warehouse has started on; look it up first (`find_order`).
        """
        self._check_owner(body)
        return await self._call(
            "PUT", "/orders", self._object("PUT", "/orders"), body=body, attempts=attempts, write=True
        )

    # -- reads -------------------------------------------------------------------------------------------------

    async def find_order(self, order_number: str) -> dict[str, Any] | None:
        """`GET /orders?goodsOwnerId=&orderNumber=`: the GetOrderModel with exactly that number, or None."""
        params = [("goodsOwnerId", str(self.goods_owner_id)), ("orderNumber", order_number)]
        for order in await self._call("GET", "/orders", self._array("GET", "/orders"), params=params):
            info = order.get("orderInfo") or {}
            if info.get("orderNumber") == order_number:
                return order
        return None

    async def get_order(self, order_id: int) -> dict[str, Any]:
        """`GET /orders/{orderId}`: the GetOrderModel. A missing order is a PermanentApiError (404)."""
        path = f"/orders/{int(order_id)}"
        return await self._call("GET", path, self._object("GET", path))

    def articles(
        self,
        *,
        stock_changed_from: datetime | None = None,
        page_size: int = 1000,
        article_numbers: Sequence[str] = (),
    ) -> AsyncIterator[Page]:
        """`GET /articles?goodsOwnerId=…`, paged by id: yields pages of GetArticleModel rows (with `inventoryInfo`);
        rows that would not parse are in each page's `rejected`.

        Paging follows NOTES §1: `articleSystemIdFrom` (inclusive) + `maxArticlesToGet`, ascending ids, the next
        cursor is the largest id seen + 1, and a short or empty page ends it. `article_numbers` narrows the search
        (sent as repeated keys). Raises ValueError at once (before any request) when `page_size` < 1 or
        `stock_changed_from` is naive or older than 24 h by the client's clock: Ongoing answers that with a 400.
        """
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        if stock_changed_from is not None:
            if stock_changed_from.tzinfo is None:
                raise ValueError("stock_changed_from needs a UTC offset")
            if self.client.clock() - stock_changed_from > STOCK_CHANGED_WINDOW:
                raise ValueError("stock_changed_from must be within 24 hours of now; do a full sweep instead")
        return self._article_pages(stock_changed_from, page_size, tuple(article_numbers))

    async def _article_pages(
        self, stock_changed_from: datetime | None, page_size: int, article_numbers: tuple[str, ...]
    ) -> AsyncIterator[Page]:
        cursor = 1
        while True:
            params = [
                ("goodsOwnerId", str(self.goods_owner_id)),
                ("articleSystemIdFrom", str(cursor)),
                ("maxArticlesToGet", str(page_size)),
            ]
            params += [("articleNumbers", number) for number in article_numbers]
            if stock_changed_from is not None:
                params.append(("stockInfoChangedFrom", format_time(stock_changed_from)))
            page = await self._call("GET", "/articles", self._page("GET", "/articles"), params=params)
            if not page.size:
                return
            yield page
            if page.size < page_size:
                return
            # Rows come in id order: the next page starts after the largest id read (from a row that would not
            # parse too, when its id did). No id at all, or a server that ignored the cursor, would make paging
            # loop forever.
            ids = [row.get("articleSystemId") for row in page]
            ids += [item.readable.get("articleSystemId") for item in page.rejected]
            nxt = max((i for i in ids if isinstance(i, int) and not isinstance(i, bool)), default=0) + 1
            if nxt <= cursor:
                raise PermanentApiError(
                    SYSTEM, "GET", "/articles", 200, "article paging did not advance", tenant=self.tenant.name
                )
            cursor = nxt

    async def orders_by_numbers(self, numbers: Sequence[str], *, batch: int = 40) -> list[dict[str, Any]]:
        """`GET /orders?goodsOwnerId=&orderNumbers=…&orderNumbers=…`: the orders with these numbers, `batch` numbers
        per request (repeated keys, NOTES §1), so the URL stays short. Numbers Ongoing does not know are absent."""
        if batch < 1:
            raise ValueError("batch must be at least 1")
        wanted = list(dict.fromkeys(numbers))
        out: list[dict[str, Any]] = []
        for start in range(0, len(wanted), batch):
            chunk = wanted[start : start + batch]
            params = [("goodsOwnerId", str(self.goods_owner_id)), *(("orderNumbers", n) for n in chunk)]
            out.extend(await self._call("GET", "/orders", self._array("GET", "/orders"), params=params))
        return out

    def orders(
        self, *, created_from: datetime | None = None, page_size: int = 500
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """`GET /orders?goodsOwnerId=…`, paged by id (`orderIdFrom` inclusive + `maxOrdersToGet`), optionally only
        orders created from `created_from` (`orderCreatedTimeFrom`). Yields pages of GetOrderModel rows.

        Ongoing cannot filter on `goodsOwnerOrderId` (NOTES §1): a caller matching orders to invoices reads the
        goods owner's orders in pages and matches them itself. Raises ValueError for `page_size` < 1 or a naive
        `created_from`.
        """
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        if created_from is not None and created_from.tzinfo is None:
            raise ValueError("created_from needs a UTC offset")
        return self._order_pages(created_from, page_size)

    async def _order_pages(self, created_from: datetime | None, page_size: int) -> AsyncIterator[list[dict[str, Any]]]:
        cursor = 1
        while True:
            params = [
                ("goodsOwnerId", str(self.goods_owner_id)),
                ("orderIdFrom", str(cursor)),
                ("maxOrdersToGet", str(page_size)),
            ]
            if created_from is not None:
                params.append(("orderCreatedTimeFrom", format_time(created_from)))
            page = await self._call("GET", "/orders", self._array("GET", "/orders"), params=params)
            if not page:
                return
            yield page
            if len(page) < page_size:
                return
            ids = [(row.get("orderInfo") or {}).get("orderId") for row in page]
            nxt = max((i for i in ids if isinstance(i, int)), default=0) + 1
            if not all(isinstance(i, int) for i in ids) or nxt <= cursor:
                raise PermanentApiError(
                    SYSTEM, "GET", "/orders", 200, "order paging did not advance", tenant=self.tenant.name
                )
            cursor = nxt

    # -- plumbing ----------------------------------------------------------------------------------------------

    def _check_owner(self, body: dict[str, Any]) -> None:
        owner = body.get("goodsOwnerId")
        if owner != self.goods_owner_id:
            raise ValueError(
                f"body is for goods owner {owner!r}, tenant {self.tenant.name} is goods owner {self.goods_owner_id}"
            )

    def _authorization(self) -> str:
        return aiohttp.encode_basic_auth(self._username, self._password.reveal())

    async def _call(
        self,
        method: str,
        path: str,
        parse: Callable[[Response], T],
        *,
        params: list[tuple[str, str]] | None = None,
        body: dict[str, Any] | None = None,
        attempts: Attempts | None = None,
        write: bool = False,
    ) -> T:
        """One logical call: retried per the client's policy; the answer is parsed inside the retry loop, so an
        unreadable 2xx (raised as TransientApiError by `parse`) is retried like a 5xx."""
        client = self.client
        headers = {"Accept": "application/json"}
        data: bytes | None = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            data = orjson.dumps(body)

        async def go() -> T:
            # Built per attempt so the plain password lives no longer than the request.
            kwargs: dict[str, Any] = {"headers": {**headers, "Authorization": self._authorization()}}
            if params is not None:
                kwargs["params"] = params
            if data is not None:
                kwargs["data"] = data
            response = await send(
                client.session,
                SYSTEM,
                method,
                client.base_url + path,
                path,
                tenant=self.tenant.name,
                timeout=client.settings.timeout_seconds,
                retry_after_cap=client.settings.retry_after_cap_seconds,
                **kwargs,
            )
            return parse(response)

        async def once() -> T:
            if not write:
                return await go()
            async with self._write_lock:
                return await go()

        try:
            return await retrying(client.policy, once, attempts)
        except PermanentApiError as exc:
            if exc.status in (401, 403) and not isinstance(exc, AuthError):
                raise AuthError(
                    SYSTEM,
                    method,
                    path,
                    exc.status,
                    f"credentials of user {self._username!r} refused {exc.detail}".strip(),
                    tenant=self.tenant.name,
                ) from exc
            raise

    def _decode(self, response: Response, method: str, path: str) -> Any:
        try:
            return response.json()
        except orjson.JSONDecodeError as exc:
            # A 2xx we cannot read: the request may or may not have been applied. Upserts make a retry safe.
            raise TransientApiError(
                SYSTEM, method, path, response.status, "answer is not JSON", tenant=self.tenant.name
            ) from exc

    def _object(self, method: str, path: str) -> Callable[[Response], dict[str, Any]]:
        def parse(response: Response) -> dict[str, Any]:
            data = self._decode(response, method, path)
            if not isinstance(data, dict):
                raise TransientApiError(
                    SYSTEM, method, path, response.status, "expected a JSON object", tenant=self.tenant.name
                )
            return data

        return parse

    def _page(self, method: str, path: str) -> Callable[[Response], Page]:
        """A list read, parsed leniently: a row the JSON parser refuses, or one that is not an object, is
        returned in `rejected` while the rest of the page goes on (see `lenient_json`)."""

        def parse(response: Response) -> Page:
            try:
                return parse_page(response.body)
            except ValueError as exc:
                raise TransientApiError(
                    SYSTEM, method, path, response.status, str(exc), tenant=self.tenant.name
                ) from exc

        return parse

    def _array(self, method: str, path: str) -> Callable[[Response], list[dict[str, Any]]]:
        def parse(response: Response) -> list[dict[str, Any]]:
            data = self._decode(response, method, path)
            if data is None:
                return []
            if not isinstance(data, list) or not all(isinstance(row, dict) for row in data):
                raise TransientApiError(
                    SYSTEM,
                    method,
                    path,
                    response.status,
                    "expected a JSON array of objects",
                    tenant=self.tenant.name,
                )
            return data

        return parse
