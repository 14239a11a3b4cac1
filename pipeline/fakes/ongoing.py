"""A fake Ongoing WMS REST v1 server (aiohttp), faithful to the reference notes where they know, and explicit where
it has to guess. Used by tests, the demo and the benchmarks.

What it does (paths are under `/{warehouse}/api/v1`):
- HTTP Basic auth. The default user reaches every goods owner except those given their own credentials in
  `goods_owner_credentials`, which only their own credentials reach (so a test can tell which were used).
  Refusals are 401 `{"Message": "Authorization has been denied for this request."}` (ASP.NET's wording).
- `PUT /articles` upserts by (goodsOwnerId, articleNumber), `PUT /orders` by (goodsOwnerId, orderNumber); answers
  are `{articleSystemId|orderId, message}` with the official examples' message texts. An order answers 201 when
  it was created and 200 when updated (the spec documents both; which is which is our inference).
- **Writes are processed one at a time per goods owner.** A write waits for the one in flight for its goods owner;
  one that has waited `write_queue_timeout` seconds fails with 500 `{"Message": "An error has occurred."}`, the
  only failure body seen from the live server. `write_latency` is the time each write holds its turn (counted
  from its arrival or the end of the previous write, whichever is later); `write_latencies[goods_owner_id]`
  sets it for one goods owner. `overlapping_writes()` counts the writes that arrived while another write of their
  goods owner was still at the server, from any connection (two processes writing one goods owner).
- Orders start at status 200 (Open); `set_order_status` moves them. At status ≥ 300 the warehouse has started and
  an update is refused with 400. A line whose article number the goods owner does not have is refused with 400.
  Guesses, because the notes could not settle them: an update replaces the order lines with the ones sent, and an
  article update changes only the fields sent.
- `GET /articles` (paging by `articleSystemIdFrom` + `maxArticlesToGet`, ascending ids; `articleNumber`,
  repeated `articleNumbers`; `stockInfoChangedFrom`, refused with 400 when more than 24 h old by the fake's clock),
  `GET /articles/{id}`, `GET /orders` (`orderNumber`, repeated `orderNumbers`, `orderIdFrom`, `maxOrdersToGet`),
  `GET /orders/{id}`, `GET /orders/statuses`.
- Every request is logged (`requests`, `OngoingRequest` with arrival and end times, goods owner and entity), the
  shared `FaultScript` is applied before anything else, and `hold()` can park the answer to a write after it was
  applied (to kill a client between the server's work and its reading the answer). `after_apply`, a second
  `FaultScript`, replaces the answer of a write that *was applied* (a 5xx, a hang past the client's timeout, a
  dropped connection): the server did the work, the client hears it failed. `slow_turns`, a third, makes a
  matching write's turn longer by a `latency` fault's seconds: the server is still processing it (and counts it
  in flight) while the client may have timed out.
- `validator`, when given, checks every write body (e.g. against the published JSON schemas in the tests): a
  violation is answered 400 and recorded in `schema_violations`.
"""

from __future__ import annotations

import base64
import binascii
import copy
import itertools
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import anyio
import orjson
from aiohttp import web

from pipeline.fakes.faults import FaultScript, LoggedRequest, apply_fault
from pipeline.serving import serve_app

STATUS_TEXTS: Mapping[int, str] = {
    150: "Error",
    200: "Open",
    300: "Released",
    320: "Allocated",
    400: "Picked",
    450: "Sent",
    500: "Collected",
    1000: "Cancelled",
}
OPEN = 200
WAREHOUSE_STARTED = 300
STOCK_CHANGED_WINDOW = timedelta(hours=24)
INVENTORY_FIGURES = (
    "numberOfItems",
    "numberOfBookedItems",
    "numberOfLockedItems",
    "toReceiveNumberOfItems",
    "allocatedNumberOfItems",
    "sellableNumberOfItems",
    "lockedForSaleNumberOfItems",
    "pickedToBeCollectedNumberOfItems",
    "receivedToBeFinishedNumberOfItems",
    "totalStockValue",
)
# Article fields the API answers with JSON numbers even when a PUT sent them as strings [NOTES §1].
_NUMERIC_ARTICLE_FIELDS = frozenset(
    {
        "customerPrice",
        "purchasePrice",
        "stockValuationPrice",
        "weight",
        "netWeight",
        "length",
        "width",
        "height",
        "volume",
        "quantityPerPackage",
        "quantityPerPallet",
        "quantityPerLayerOnPallet",
    }
)

WriteKind = Literal["article", "order"]
Validator = Callable[[WriteKind, dict[str, Any]], str | None]


@dataclass(frozen=True, slots=True)
class OngoingRequest(LoggedRequest):
    """A logged request. `at` is its arrival and `ended` the moment its answer was ready (monotonic seconds).

    A request still in progress shows `status` 0 and `ended` 0.0; a dropped connection ends with `status` 0.
    """

    ended: float = 0.0
    goods_owner_id: int | None = None
    entity: str | None = None  # "article:<number>" / "order:<number>" for writes
    write: bool = False


@dataclass(slots=True)
class Hold:
    """Parks the answer to the next matching write after the write was applied, until `release` is set."""

    method: str
    path: re.Pattern[str]
    entity: str | None
    reached: anyio.Event = field(default_factory=anyio.Event)
    release: anyio.Event = field(default_factory=anyio.Event)
    used: bool = False


@dataclass(slots=True)
class _Article:
    system_id: int
    model: dict[str, Any]
    stock_changed: datetime


@dataclass(slots=True)
class _Order:
    order_id: int
    model: dict[str, Any]
    body: dict[str, Any]


@dataclass(slots=True)
class _Owner:
    articles: dict[str, _Article] = field(default_factory=dict)
    orders: dict[str, _Order] = field(default_factory=dict)
    customers: dict[str, int] = field(default_factory=dict)
    creations: dict[str, int] = field(default_factory=dict)
    lock: anyio.Lock = field(default_factory=anyio.Lock)
    in_flight: int = 0
    peak_in_flight: int = 0
    overlaps: int = 0  # writes that arrived while another write of this goods owner was at the server
    turn_free_at: float = 0.0  # monotonic time the last write released the turn


class _Refused(Exception):
    """Raised inside a handler: answer `status` with an ASP.NET-style `{"Message": …}` body."""

    def __init__(self, status: int, message: str, model_state: Mapping[str, list[str]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.model_state = model_state


_DEFAULT = "default"
_ID_KEY = web.RequestKey("fake_ongoing_identity", str)
_INFO_KEY = web.RequestKey("fake_ongoing_log_info", dict[str, Any])


def _utcnow() -> datetime:
    return datetime.now(UTC)


class FakeOngoing:
    """In-memory Ongoing for any number of goods owners. Build the app with `create_app()` or `serve_ongoing`."""

    def __init__(
        self,
        *,
        username: str,
        password: str,
        write_latency: float = 0.0,
        write_queue_timeout: float = 30.0,
        goods_owner_credentials: Mapping[int, tuple[str, str]] | None = None,
        warehouse: str = "fakewarehouse",
        clock: Callable[[], datetime] = _utcnow,
        validator: Validator | None = None,
    ) -> None:
        self.username = username
        self.password = password
        self.write_latency = write_latency
        # goods owner id -> its own write latency (instead of `write_latency`): one slow warehouse client.
        self.write_latencies: dict[int, float] = {}
        self.write_queue_timeout = write_queue_timeout
        self.goods_owner_credentials = dict(goods_owner_credentials or {})
        self.warehouse = warehouse
        self.clock = clock
        self.validator = validator
        self.faults = FaultScript()
        self.after_apply = FaultScript()  # faults on the answer of a write that was applied
        self.slow_turns = FaultScript()  # latency faults lengthening a write's turn (processing time)
        self.requests: list[OngoingRequest] = []
        self.schema_violations: list[str] = []
        self.holds: list[Hold] = []
        self._owners: dict[int, _Owner] = {}
        self._article_ids = itertools.count(1001)
        self._order_ids = itertools.count(50001)
        self._customer_ids = itertools.count(21001)
        self._monotonic = time.monotonic

    # -- test and operator controls ----------------------------------------------------------------------------

    def owner(self, goods_owner_id: int) -> _Owner:
        return self._owners.setdefault(goods_owner_id, _Owner())

    def add_article(self, goods_owner_id: int, article_number: str, name: str | None = None) -> dict[str, Any]:
        """Create an article directly (as if the warehouse had), returning its GetArticleModel."""
        article = self._upsert_article(goods_owner_id, {"articleNumber": article_number, "articleName": name})
        return copy.deepcopy(article.model)

    def set_inventory(self, goods_owner_id: int, article_number: str, **figures: float) -> None:
        """Set `inventoryInfo` figures (numberOfItems, sellableNumberOfItems, ...) and mark the stock as changed
        now, so `stockInfoChangedFrom` finds the article. KeyError for an unknown article or figure."""
        article = self.owner(goods_owner_id).articles[article_number]
        for name, value in figures.items():
            if name not in INVENTORY_FIGURES:
                raise KeyError(f"unknown inventory figure {name!r}")
            article.model["inventoryInfo"][name] = float(value)
        article.stock_changed = self.clock()

    def set_order_status(self, goods_owner_id: int, order_number: str, status_number: int) -> None:
        """Move an order to `status_number` (200 Open, 300 Released, 320 Allocated, 400 Picked, ...)."""
        order = self.owner(goods_owner_id).orders[order_number]
        order.model["orderInfo"]["orderStatus"] = {
            "number": status_number,
            "text": STATUS_TEXTS.get(status_number, f"Status {status_number}"),
        }

    def edit_article(self, goods_owner_id: int, article_number: str, **fields: Any) -> None:
        """Change an article's fields by hand (as a warehouse user would). KeyError for an unknown article."""
        article = self.owner(goods_owner_id).articles[article_number]
        for name, value in fields.items():
            article.model[name] = copy.deepcopy(value)

    def delete_article(self, goods_owner_id: int, article_number: str) -> None:
        """Remove an article (as if deleted in the warehouse). KeyError for an unknown article."""
        del self.owner(goods_owner_id).articles[article_number]

    def delete_order(self, goods_owner_id: int, order_number: str) -> None:
        """Remove an order (as if deleted in the warehouse, or a write lost). KeyError for an unknown order."""
        del self.owner(goods_owner_id).orders[order_number]

    def article(self, goods_owner_id: int, number: str) -> dict[str, Any] | None:
        found = self.owner(goods_owner_id).articles.get(number)
        return copy.deepcopy(found.model) if found else None

    def order(self, goods_owner_id: int, number: str) -> dict[str, Any] | None:
        found = self.owner(goods_owner_id).orders.get(number)
        return copy.deepcopy(found.model) if found else None

    def order_body(self, goods_owner_id: int, number: str) -> dict[str, Any] | None:
        """The last PUT body accepted for the order."""
        found = self.owner(goods_owner_id).orders.get(number)
        return copy.deepcopy(found.body) if found else None

    def creations(self, goods_owner_id: int, order_number: str) -> int:
        """How many times the order was created (more than 1 would mean a duplicate shipment)."""
        return self.owner(goods_owner_id).creations.get(order_number, 0)

    def peak_in_flight(self, goods_owner_id: int) -> int:
        """The most writes for the goods owner that were ever at the server at once (queued or processing)."""
        return self.owner(goods_owner_id).peak_in_flight

    def overlapping_writes(self, goods_owner_id: int | None = None) -> int:
        """Writes that arrived while another write of the same goods owner was still at the server (queued or
        processing), from any connection or process: 0 means the goods owner never saw two writers at once."""
        owners = self._owners.values() if goods_owner_id is None else [self.owner(goods_owner_id)]
        return sum(o.overlaps for o in owners)

    def writes(self, goods_owner_id: int | None = None, entity: str | None = None) -> list[OngoingRequest]:
        """Logged writes, optionally for one goods owner and/or entity (`article:A1`, `order:O1`)."""
        return [
            r
            for r in self.requests
            if r.write
            and (goods_owner_id is None or r.goods_owner_id == goods_owner_id)
            and (entity is None or r.entity == entity)
        ]

    def hold(self, *, method: str = "PUT", path: str = "/", entity: str | None = None) -> Hold:
        """Park the answer of the next matching write (after applying it) until `hold.release` is set."""
        hold = Hold(method.upper(), re.compile(path, re.IGNORECASE), entity)
        self.holds.append(hold)
        return hold

    # -- the app -----------------------------------------------------------------------------------------------

    def create_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        root = f"/{self.warehouse}/api/v1"
        app.router.add_put(f"{root}/articles", self._put_article)
        app.router.add_get(f"{root}/articles", self._get_articles)
        app.router.add_get(f"{root}/articles/{{article_id:\\d+}}", self._get_article)
        app.router.add_put(f"{root}/orders", self._put_order)
        app.router.add_get(f"{root}/orders", self._get_orders)
        app.router.add_get(f"{root}/orders/statuses", self._get_statuses)
        app.router.add_get(f"{root}/orders/{{order_id:\\d+}}", self._get_order)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
        arrived = self._monotonic()
        fault = self.faults.take(request.method, request.path)
        info: dict[str, Any] = {"arrived": arrived}
        request[_INFO_KEY] = info
        if request.method == "PUT":
            await self._note_write(request, info)

        async def served(req: web.Request) -> web.StreamResponse:
            try:
                identity = self._identify(req)
                req[_ID_KEY] = identity
                response: web.StreamResponse = await handler(req)
                return response
            except _Refused as refused:
                body: dict[str, Any] = {"Message": refused.message}
                if refused.model_state:
                    body["ModelState"] = refused.model_state
                return _json(body, status=refused.status)

        def entry(status: int, ended: float) -> OngoingRequest:
            owner = info.get("goods_owner_id")
            return OngoingRequest(
                at=arrived,
                method=request.method,
                path=request.path,
                query=request.query_string,
                status=status,
                fault=fault.kind if fault else None,
                key=str(owner) if owner is not None else None,
                ended=ended,
                goods_owner_id=owner,
                entity=info.get("entity"),
                write=request.method == "PUT",
            )

        # Logged on arrival (status 0, not ended) and completed in place, so requests still in progress (a hang)
        # are visible too.
        index = len(self.requests)
        self.requests.append(entry(0, 0.0))
        status = 0
        try:
            response = await apply_fault(fault, request, served)
            status = response.status
            return response
        finally:
            self.requests[index] = entry(status, info.get("ended", self._monotonic()))

    async def _note_write(self, request: web.Request, info: dict[str, Any]) -> None:
        """Log a write's goods owner and entity even when a fault answers before the handler reads the body."""
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return
        if not isinstance(body, dict):
            return
        owner = body.get("goodsOwnerId")
        if isinstance(owner, int):
            info["goods_owner_id"] = owner
        kind, key = ("order", "orderNumber") if request.path.endswith("/orders") else ("article", "articleNumber")
        info["entity"] = f"{kind}:{body.get(key)}"

    # -- auth --------------------------------------------------------------------------------------------------

    def _identify(self, request: web.Request) -> str:
        header = request.headers.get("Authorization", "")
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            raise _Refused(401, "Authorization has been denied for this request.")
        try:
            user, _, password = base64.b64decode(encoded, validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise _Refused(401, "Authorization has been denied for this request.") from None
        if (user, password) == (self.username, self.password):
            return _DEFAULT
        for owner, creds in self.goods_owner_credentials.items():
            if (user, password) == tuple(creds):
                return str(owner)
        raise _Refused(401, "Authorization has been denied for this request.")

    def _authorize(self, request: web.Request, goods_owner_id: int) -> None:
        identity = request[_ID_KEY]
        allowed = (
            identity == str(goods_owner_id) if goods_owner_id in self.goods_owner_credentials else identity == _DEFAULT
        )
        if not allowed:
            raise _Refused(401, "Authorization has been denied for this request.")
        request[_INFO_KEY]["goods_owner_id"] = goods_owner_id

    # -- writes ------------------------------------------------------------------------------------------------

    async def _body(self, request: web.Request) -> dict[str, Any]:
        raw = await request.read()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise _Refused(400, "The request is invalid.", {"body": ["not valid JSON"]}) from None
        if not isinstance(body, dict):
            raise _Refused(400, "The request is invalid.", {"body": ["expected a JSON object"]})
        owner = body.get("goodsOwnerId")
        if not isinstance(owner, int) or isinstance(owner, bool):
            raise _Refused(
                400, "The request is invalid.", {"model.GoodsOwnerId": ["The GoodsOwnerId field is required."]}
            )
        return body

    async def _serialised(
        self,
        request: web.Request,
        kind: WriteKind,
        apply: Callable[[int, dict[str, Any]], web.Response],
    ) -> web.Response:
        """Run one write in its goods owner's single lane, as Ongoing does."""
        body = await self._body(request)
        goods_owner_id: int = body["goodsOwnerId"]
        self._authorize(request, goods_owner_id)
        key = "articleNumber" if kind == "article" else "orderNumber"
        number = body.get(key)
        info = request[_INFO_KEY]
        info["entity"] = f"{kind}:{number}"
        if self.validator is not None:
            problem = self.validator(kind, body)
            if problem is not None:
                self.schema_violations.append(f"{kind} {number}: {problem}")
                raise _Refused(400, "The request is invalid.", {"model": [problem]})
        owner = self.owner(goods_owner_id)
        owner.in_flight += 1
        owner.peak_in_flight = max(owner.peak_in_flight, owner.in_flight)
        owner.overlaps += owner.in_flight > 1
        try:
            try:
                with anyio.fail_after(self.write_queue_timeout):
                    await owner.lock.acquire()
            except TimeoutError:
                raise _Refused(500, "An error has occurred.") from None
            try:
                # The turn starts when the write arrived or the previous one finished, whichever is later; reading
                # and checking the body is part of the turn, not extra time on top of it.
                started = max(info["arrived"], owner.turn_free_at)
                latency = self.write_latencies.get(goods_owner_id, self.write_latency)
                slow = self.slow_turns.take(request.method, request.path)
                extra = slow.seconds if slow is not None and slow.kind == "latency" else 0.0
                delay = started + latency + extra - self._monotonic()
                if delay > 0:
                    await anyio.sleep(delay)
                response = apply(goods_owner_id, body)
            finally:
                owner.turn_free_at = self._monotonic()
                owner.lock.release()
        finally:
            owner.in_flight -= 1
        info["ended"] = self._monotonic()
        await self._maybe_hold(request, info["entity"])
        lost = self.after_apply.take(request.method, request.path)
        if lost is not None:

            async def applied(_request: web.Request) -> web.StreamResponse:
                return response

            answer = await apply_fault(lost, request, applied)
            assert isinstance(answer, web.Response)
            return answer
        return response

    async def _maybe_hold(self, request: web.Request, entity: str) -> None:
        for hold in self.holds:
            if hold.used or hold.method != request.method or not hold.path.search(request.path):
                continue
            if hold.entity is not None and hold.entity != entity:
                continue
            hold.used = True
            hold.reached.set()
            await hold.release.wait()
            return

    async def _put_article(self, request: web.Request) -> web.Response:
        return await self._serialised(request, "article", self._apply_article)

    def _apply_article(self, goods_owner_id: int, body: dict[str, Any]) -> web.Response:
        number = body.get("articleNumber")
        if not isinstance(number, str) or not number.strip():
            raise _Refused(
                400, "The request is invalid.", {"model.ArticleNumber": ["The ArticleNumber field is required."]}
            )
        article = self._upsert_article(goods_owner_id, body)
        name = article.model.get("articleName") or ""
        return _json(
            {
                "articleSystemId": article.system_id,
                "message": f"Article {number} {name} Updated/Created".replace("  ", " "),
            }
        )

    def _upsert_article(self, goods_owner_id: int, body: Mapping[str, Any]) -> _Article:
        owner = self.owner(goods_owner_id)
        number = str(body["articleNumber"])
        now = self.clock()
        article = owner.articles.get(number)
        if article is None:
            system_id = next(self._article_ids)
            article = _Article(
                system_id,
                {
                    "goodsOwner": {"id": goods_owner_id, "name": f"Goods owner {goods_owner_id}"},
                    "articleSystemId": system_id,
                    "articleNumber": number,
                    "articleName": None,
                    "inventoryInfo": {name: 0.0 for name in INVENTORY_FIGURES} | {"lastInDate": None},
                },
                now,
            )
            owner.articles[number] = article
        for name, value in body.items():
            if name in ("goodsOwnerId", "articleNumber"):
                continue
            if name in _NUMERIC_ARTICLE_FIELDS and isinstance(value, str):
                try:
                    value = float(value)
                except ValueError:
                    raise _Refused(400, "The request is invalid.", {f"model.{name}": ["not a number"]}) from None
            if name == "unitCode" and isinstance(value, str):
                value = value.lower()  # seen live: "St" comes back as "st"
            article.model[name] = copy.deepcopy(value)
        article.model["articleDataLastUpdated"] = _iso(now)
        return article

    async def _put_order(self, request: web.Request) -> web.Response:
        return await self._serialised(request, "order", self._apply_order)

    def _apply_order(self, goods_owner_id: int, body: dict[str, Any]) -> web.Response:
        owner = self.owner(goods_owner_id)
        number = body.get("orderNumber")
        problems: dict[str, list[str]] = {}
        if not isinstance(number, str) or not number.strip():
            problems["model.OrderNumber"] = ["The OrderNumber field is required."]
        elif len(number) > 50:
            problems["model.OrderNumber"] = ["The OrderNumber field can be at most 50 characters."]
        if not isinstance(body.get("deliveryDate"), str) or not body["deliveryDate"]:
            problems["model.DeliveryDate"] = ["The DeliveryDate field is required."]
        if not isinstance(body.get("consignee"), dict):
            problems["model.Consignee"] = ["The Consignee field is required."]
        lines = body.get("orderLines") or []
        rows: set[str] = set()
        for i, line in enumerate(lines if isinstance(lines, list) else []):
            row = line.get("rowNumber") if isinstance(line, dict) else None
            if not isinstance(row, str) or not row:
                problems[f"model.OrderLines[{i}].RowNumber"] = ["The RowNumber field is required."]
            elif row in rows:
                problems[f"model.OrderLines[{i}].RowNumber"] = [f"Row number {row} is used twice."]
            else:
                rows.add(row)
            if not isinstance(line, dict) or not isinstance(line.get("articleNumber"), str):
                problems[f"model.OrderLines[{i}].ArticleNumber"] = ["The ArticleNumber field is required."]
        if problems:
            raise _Refused(400, "The request is invalid.", problems)
        assert isinstance(number, str)
        for line in lines:
            if line["articleNumber"] not in owner.articles:
                raise _Refused(400, f"Article with article number '{line['articleNumber']}' does not exist.")

        existing = owner.orders.get(number)
        if existing is not None:
            status, text = _status(existing.model)
            if status >= WAREHOUSE_STARTED:
                raise _Refused(400, f"Order {number} can not be updated since it has status {status} ({text}).")
        messages = []
        consignee = body["consignee"]
        customer_number = consignee.get("customerNumber")
        customer_id: int | None = None
        if customer_number:
            customer_id = owner.customers.get(customer_number)
            if customer_id is None:
                customer_id = next(self._customer_ids)
                owner.customers[customer_number] = customer_id
                messages.append(f"Customer with customer number '{customer_number}' and ID '{customer_id}' created.")
        messages.append(f"Order number {number} created/updated")

        if existing is None:
            order_id = next(self._order_ids)
            created = _iso(self.clock())
            status_block = {"number": OPEN, "text": STATUS_TEXTS[OPEN]}
            owner.creations[number] = owner.creations.get(number, 0) + 1
        else:
            order_id = existing.order_id
            created = existing.model["orderInfo"]["createdDate"]
            status_block = existing.model["orderInfo"]["orderStatus"]
        model = self._order_model(goods_owner_id, order_id, body, created, status_block, customer_id)
        owner.orders[number] = _Order(order_id, model, copy.deepcopy(body))
        return _json(
            {"orderId": order_id, "message": " <br/> <br/>".join(messages)}, status=201 if existing is None else 200
        )

    def _order_model(
        self,
        goods_owner_id: int,
        order_id: int,
        body: Mapping[str, Any],
        created: str,
        status_block: Mapping[str, Any],
        customer_id: int | None,
    ) -> dict[str, Any]:
        owner = self.owner(goods_owner_id)
        advanced_in = body.get("advanced") or {}
        info_keys = (
            "orderNumber",
            "goodsOwnerOrderId",
            "referenceNumber",
            "salesCode",
            "orderRemark",
            "deliveryInstruction",
            "servicePointCode",
            "freeText1",
            "freeText2",
            "freeText3",
            "orderType",
            "wayOfDelivery",
            "termsOfDeliveryType",
            "deliveryDate",
            "emailNotification",
            "smsNotification",
            "telephoneNotification",
            "customsInfo",
            "productionCode",
            "consigneeOrderNumber",
            "warehouseInstruction",
            "customerPrice",
            "freightPrice",
            "pickingPriority",
            "invoiceUrl",
        )
        lines = []
        for i, line in enumerate(body.get("orderLines") or []):
            article = owner.articles[line["articleNumber"]]
            lines.append(
                {
                    "id": order_id * 100 + i,
                    "rowNumber": line["rowNumber"],
                    "article": {
                        "articleSystemId": article.system_id,
                        "articleNumber": line["articleNumber"],
                        "articleName": article.model.get("articleName") or "",
                        "productCode": article.model.get("productCode") or "",
                    },
                    "comment": line.get("comment"),
                    "orderedNumberOfItems": float(line.get("numberOfItems") or 0),
                    "allocatedNumberOfItems": 0.0,
                    "pickedNumberOfItems": 0.0,
                    "reportedNumberOfItems": None,
                    "shouldBePicked": line.get("shouldBePicked", True),
                    "prices": copy.deepcopy(line.get("prices")),
                    "subOrderLines": None,
                }
            )
        info: dict[str, Any] = {key: copy.deepcopy(body.get(key)) for key in info_keys}
        info.update(
            {
                "orderId": order_id,
                "createdDate": created,
                "shippedTime": None,
                "orderStatus": dict(status_block),
                "orderedNumberOfItems": sum(line["orderedNumberOfItems"] for line in lines),
                "allocatedNumberOfItems": 0.0,
                "pickedNumberOfItems": 0.0,
                "advanced": {"invoiceNumber": advanced_in.get("invoiceNumber")},
            }
        )
        consignee = copy.deepcopy(body.get("consignee") or {})
        consignee["id"] = customer_id
        return {
            "goodsOwner": {"id": goods_owner_id, "name": f"Goods owner {goods_owner_id}"},
            "orderInfo": info,
            "consignee": consignee,
            "parcels": [],
            "orderLines": lines,
            "tracking": [],
            "returnTracking": [],
            "classes": [],
            "advanced": {"orderTextLines": copy.deepcopy(advanced_in.get("orderTextLines") or [])},
        }

    # -- reads -------------------------------------------------------------------------------------------------

    def _owner_query(self, request: web.Request) -> int:
        raw = request.query.get("goodsOwnerId")
        if raw is None or not raw.isdigit():
            raise _Refused(400, "The request is invalid.", {"goodsOwnerId": ["The goodsOwnerId field is required."]})
        goods_owner_id = int(raw)
        self._authorize(request, goods_owner_id)
        return goods_owner_id

    async def _get_articles(self, request: web.Request) -> web.Response:
        goods_owner_id = self._owner_query(request)
        query = request.query
        rows = sorted(self.owner(goods_owner_id).articles.values(), key=lambda a: a.system_id)
        start = _int_param(query, "articleSystemIdFrom")
        if start is not None:
            rows = [a for a in rows if a.system_id >= start]
        numbers = set(query.getall("articleNumbers", []))
        if "articleNumber" in query:
            numbers.add(query["articleNumber"])
        if numbers:
            rows = [a for a in rows if a.model["articleNumber"] in numbers]
        if "stockInfoChangedFrom" in query:
            since = _parse_time(query["stockInfoChangedFrom"])
            if self.clock() - since > STOCK_CHANGED_WINDOW:
                raise _Refused(400, "stockInfoChangedFrom must be within 24 hours of the current time.")
            rows = [a for a in rows if a.stock_changed >= since]
        if query.get("onlyArticlesInStock", "").lower() == "true":
            rows = [a for a in rows if a.model["inventoryInfo"]["numberOfItems"] > 0]
        limit = _int_param(query, "maxArticlesToGet")
        if limit is not None:
            rows = rows[:limit]
        return _json([a.model for a in rows])

    async def _get_article(self, request: web.Request) -> web.Response:
        wanted = int(request.match_info["article_id"])
        for goods_owner_id, owner in self._owners.items():
            for article in owner.articles.values():
                if article.system_id == wanted:
                    self._authorize(request, goods_owner_id)
                    return _json(article.model)
        return web.Response(status=404)

    async def _get_orders(self, request: web.Request) -> web.Response:
        goods_owner_id = self._owner_query(request)
        query = request.query
        rows = sorted(self.owner(goods_owner_id).orders.values(), key=lambda o: o.order_id)
        numbers = set(query.getall("orderNumbers", []))
        if "orderNumber" in query:
            numbers.add(query["orderNumber"])
        if numbers:
            rows = [o for o in rows if o.model["orderInfo"]["orderNumber"] in numbers]
        start = _int_param(query, "orderIdFrom")
        if start is not None:
            rows = [o for o in rows if o.order_id >= start]
        if "orderCreatedTimeFrom" in query:
            created_from = _parse_time(query["orderCreatedTimeFrom"])
            rows = [o for o in rows if _parse_time(o.model["orderInfo"]["createdDate"]) >= created_from]
        limit = _int_param(query, "maxOrdersToGet")
        if limit is not None:
            rows = rows[:limit]
        return _json([o.model for o in rows])

    async def _get_order(self, request: web.Request) -> web.Response:
        wanted = int(request.match_info["order_id"])
        for goods_owner_id, owner in self._owners.items():
            for order in owner.orders.values():
                if order.order_id == wanted:
                    self._authorize(request, goods_owner_id)
                    return _json(order.model)
        # What the live API answers for a missing id is not documented; an empty 404 is the plainest guess.
        return web.Response(status=404)

    async def _get_statuses(self, request: web.Request) -> web.Response:
        return _json({"orderStatuses": [{"number": n, "text": t} for n, t in STATUS_TEXTS.items()]})


def _status(model: Mapping[str, Any]) -> tuple[int, str]:
    status = model["orderInfo"]["orderStatus"]
    return int(status["number"]), str(status["text"])


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data), content_type="application/json")


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _int_param(query: Mapping[str, str], name: str) -> int | None:
    raw = query.get(name)
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        raise _Refused(400, "The request is invalid.", {name: [f"The value '{raw}' is not valid."]}) from None


def _parse_time(raw: str) -> datetime:
    try:
        when = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise _Refused(400, "The request is invalid.", {"stockInfoChangedFrom": [f"'{raw}' is not a date."]}) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


@asynccontextmanager
async def serve_ongoing(fake: FakeOngoing, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
    """Serve `fake` on `host:port` (0 = any free port); yields the base URL `http://…/{warehouse}/api/v1`.

    On exit, parked holds are released and the server stops, waiting at most a second for requests in progress.
    """
    async with serve_app(fake.create_app(), host, port) as origin:
        try:
            yield f"{origin}/{fake.warehouse}/api/v1"
        finally:
            for hold in fake.holds:  # before the server stops: a parked answer would hold the shutdown up
                hold.release.set()
