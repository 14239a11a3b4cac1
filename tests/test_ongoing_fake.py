"""The fake Ongoing server itself, driven with plain aiohttp requests (no client code in the way)."""

from __future__ import annotations

import base64
import functools
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import anyio
import orjson
import pytest

from pipeline.fakes.faults import Fault
from pipeline.fakes.ongoing import FakeOngoing, serve_ongoing
from tests.ongoing_schema import article_body, fake_validator, order_body

OWNER = 159
OTHER = 160


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


AUTH = basic("wms", "secret")


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Server:
    fake: FakeOngoing
    url: str
    http: aiohttp.ClientSession
    clock: Clock

    async def call(
        self, method: str, path: str, body: Any = None, *, headers: dict[str, str] | None = None, **kw: Any
    ) -> tuple[int, Any]:
        data = orjson.dumps(body) if body is not None else None
        async with self.http.request(
            method,
            self.url + path,
            data=data,
            headers=headers if headers is not None else {**AUTH, "Content-Type": "application/json"},
            **kw,
        ) as resp:
            raw = await resp.read()
            return resp.status, orjson.loads(raw) if raw else None


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    clock = Clock()
    fake = FakeOngoing(
        username="wms",
        password="secret",
        goods_owner_credentials={OTHER: ("other", "pw2")},
        clock=clock,
        validator=fake_validator,
    )
    async with serve_ongoing(fake) as url, aiohttp.ClientSession() as http:
        yield Server(fake, url, http, clock)
    assert fake.schema_violations == []


pytestmark = pytest.mark.anyio


async def test_base_url_names_the_warehouse(server: Server) -> None:
    """serve_ongoing yields a base URL ending in /{warehouse}/api/v1."""
    assert server.url.endswith(f"/{server.fake.warehouse}/api/v1")


async def test_requests_without_valid_basic_auth_are_refused(server: Server) -> None:
    """No header or a wrong password gives 401 with ASP.NET's {"Message": …} body."""
    status, body = await server.call("GET", f"/articles?goodsOwnerId={OWNER}", headers={})
    assert status == 401
    assert body == {"Message": "Authorization has been denied for this request."}
    status, _ = await server.call("GET", f"/articles?goodsOwnerId={OWNER}", headers=basic("wms", "nope"))
    assert status == 401


async def test_goods_owner_with_own_credentials_refuses_the_default_user(server: Server) -> None:
    """A goods owner given its own credentials is reachable with those only; the others still with the default."""
    status, _ = await server.call("GET", f"/articles?goodsOwnerId={OTHER}")
    assert status == 401
    status, rows = await server.call("GET", f"/articles?goodsOwnerId={OTHER}", headers=basic("other", "pw2"))
    assert (status, rows) == (200, [])
    status, _ = await server.call("GET", f"/articles?goodsOwnerId={OWNER}", headers=basic("other", "pw2"))
    assert status == 401


async def test_article_put_upserts_by_goods_owner_and_number(server: Server) -> None:
    """A second PUT of the same number updates the same article; another goods owner gets its own."""
    status, first = await server.call("PUT", "/articles", article_body(OWNER, "A1", "First", unitCode="St"))
    assert status == 200
    assert first["message"] == "Article A1 First Updated/Created"
    status, second = await server.call("PUT", "/articles", article_body(OWNER, "A1", "Second"))
    assert second["articleSystemId"] == first["articleSystemId"]
    stored = server.fake.article(OWNER, "A1")
    assert stored is not None
    assert (stored["articleName"], stored["unitCode"]) == ("Second", "st")
    _, other = await server.call("PUT", "/articles", article_body(OTHER, "A1"), headers={**basic("other", "pw2")})
    assert other["articleSystemId"] != first["articleSystemId"]


async def test_order_put_creates_then_updates_and_counts_creations(server: Server) -> None:
    """The first PUT creates (201, status 200 Open), the next updates (200) the same orderId; one creation."""
    await server.call("PUT", "/articles", article_body(OWNER, "A1"))
    status, created = await server.call("PUT", "/orders", order_body(OWNER, "O1", [("A1", 2)]))
    assert status == 201
    assert "Order number O1 created/updated" in created["message"]
    assert "Customer with customer number 'C1'" in created["message"]
    status, updated = await server.call("PUT", "/orders", order_body(OWNER, "O1", [("A1", 3)]))
    assert status == 200
    assert updated["orderId"] == created["orderId"]
    assert "Customer" not in updated["message"]
    assert server.fake.creations(OWNER, "O1") == 1
    order = server.fake.order(OWNER, "O1")
    assert order is not None
    assert order["orderInfo"]["orderStatus"] == {"number": 200, "text": "Open"}
    assert order["orderLines"][0]["orderedNumberOfItems"] == 3.0


async def test_order_line_with_unknown_article_is_refused(server: Server) -> None:
    """A line naming an article the goods owner lacks gives 400 naming it, and nothing is created."""
    await server.call("PUT", "/articles", article_body(OWNER, "A1"))
    status, body = await server.call("PUT", "/orders", order_body(OWNER, "O1", [("A1", 1), ("NOPE", 1)]))
    assert status == 400
    assert "NOPE" in body["Message"]
    assert server.fake.order(OWNER, "O1") is None
    assert server.fake.creations(OWNER, "O1") == 0


async def test_order_update_refused_once_the_warehouse_started(server: Server) -> None:
    """At status 300 or more an update is a 400 and the order stays as it was."""
    await server.call("PUT", "/articles", article_body(OWNER, "A1"))
    await server.call("PUT", "/orders", order_body(OWNER, "O1", [("A1", 1)]))
    server.fake.set_order_status(OWNER, "O1", 400)
    status, body = await server.call("PUT", "/orders", order_body(OWNER, "O1", [("A1", 9)]))
    assert status == 400
    assert "status 400" in body["Message"]
    order = server.fake.order(OWNER, "O1")
    assert order is not None
    assert order["orderLines"][0]["orderedNumberOfItems"] == 1.0
    assert order["orderInfo"]["orderStatus"]["text"] == "Picked"


async def test_order_model_errors_use_the_model_state_shape(server: Server) -> None:
    """A missing required field is a 400 with Message and ModelState, like ASP.NET's validation."""
    server.fake.validator = None  # this body is invalid on purpose
    status, body = await server.call("PUT", "/orders", {"goodsOwnerId": OWNER, "orderNumber": "O1"})
    assert status == 400
    assert body["Message"] == "The request is invalid."
    assert set(body["ModelState"]) == {"model.DeliveryDate", "model.Consignee"}


async def test_schema_validator_refuses_and_records_bad_bodies(server: Server) -> None:
    """With a validator, a body off the published schema is a 400 and lands in schema_violations."""
    status, _ = await server.call("PUT", "/articles", {"goodsOwnerId": OWNER, "articleNumber": "A", "bogus": 1})
    assert status == 400
    assert len(server.fake.schema_violations) == 1
    assert server.fake.article(OWNER, "A") is None
    server.fake.schema_violations.clear()


async def test_writes_for_one_goods_owner_are_processed_one_at_a_time(server: Server) -> None:
    """Two simultaneous writes for one goods owner are processed one after the other, not side by side."""
    server.fake.write_latency = 0.05
    async with anyio.create_task_group() as tg:
        for n in ("A1", "A2"):
            tg.start_soon(server.call, "PUT", "/articles", article_body(OWNER, n))
    first, second = sorted(server.fake.writes(OWNER), key=lambda r: r.ended)
    assert second.ended - first.ended >= 0.05
    assert server.fake.peak_in_flight(OWNER) == 2  # both were at the server: the second queued


async def test_writes_for_different_goods_owners_run_side_by_side(server: Server) -> None:
    """Writes of two goods owners are not serialised against each other."""
    server.fake.write_latency = 0.1
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.call, "PUT", "/articles", article_body(OWNER, "A1"))
        tg.start_soon(
            functools.partial(server.call, headers=basic("other", "pw2")), "PUT", "/articles", article_body(OTHER, "A1")
        )
    a, b = server.fake.writes()
    assert a.goods_owner_id != b.goods_owner_id
    assert max(a.at, b.at) < min(a.ended, b.ended)  # their times overlap


async def test_queued_write_times_out_like_the_real_server(server: Server) -> None:
    """A write that waits longer than write_queue_timeout fails with 500 {"Message":"An error has occurred."}."""
    server.fake.write_latency = 0.3
    server.fake.write_queue_timeout = 0.05
    results: dict[str, tuple[int, Any]] = {}

    async def put(number: str) -> None:
        results[number] = await server.call("PUT", "/articles", article_body(OWNER, number))

    async with anyio.create_task_group() as tg:
        tg.start_soon(put, "A1")
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(put, "A2")
    assert results["A1"][0] == 200
    assert results["A2"] == (500, {"Message": "An error has occurred."})
    assert server.fake.article(OWNER, "A2") is None


async def test_article_paging_by_system_id(server: Server) -> None:
    """articleSystemIdFrom is inclusive, maxArticlesToGet caps the page, ids ascend."""
    for i in range(5):
        await server.call("PUT", "/articles", article_body(OWNER, f"A{i}"))
    _, rows = await server.call("GET", f"/articles?goodsOwnerId={OWNER}&maxArticlesToGet=2")
    ids = [r["articleSystemId"] for r in rows]
    assert len(ids) == 2
    assert ids == sorted(ids)
    _, rest = await server.call(
        "GET", f"/articles?goodsOwnerId={OWNER}&articleSystemIdFrom={ids[1]}&maxArticlesToGet=10"
    )
    assert next(r["articleSystemId"] for r in rest) == ids[1]
    assert len(rest) == 4


async def test_array_parameters_are_repeated_keys_and_csv_matches_nothing(server: Server) -> None:
    """articleNumbers=A&articleNumbers=B selects both; articleNumbers=A,B is one value matching nothing."""
    for n in ("A", "B", "C"):
        await server.call("PUT", "/articles", article_body(OWNER, n))
    _, rows = await server.call(
        "GET", "/articles", params=[("goodsOwnerId", str(OWNER)), ("articleNumbers", "A"), ("articleNumbers", "B")]
    )
    assert sorted(r["articleNumber"] for r in rows) == ["A", "B"]
    _, rows = await server.call("GET", f"/articles?goodsOwnerId={OWNER}&articleNumbers=A,B")
    assert rows == []


async def test_inventory_and_stock_changed_filter(server: Server) -> None:
    """set_inventory shows in inventoryInfo and moves the stock-changed time stockInfoChangedFrom filters on."""
    for n in ("A", "B"):
        await server.call("PUT", "/articles", article_body(OWNER, n))
    server.clock.now += timedelta(hours=1)
    since = server.clock.now
    server.clock.now += timedelta(minutes=5)
    server.fake.set_inventory(OWNER, "B", numberOfItems=7, sellableNumberOfItems=5)
    params = [("goodsOwnerId", str(OWNER)), ("stockInfoChangedFrom", since.isoformat(timespec="milliseconds"))]
    _, rows = await server.call("GET", "/articles", params=params)
    assert [r["articleNumber"] for r in rows] == ["B"]
    assert rows[0]["inventoryInfo"]["numberOfItems"] == 7.0
    assert rows[0]["inventoryInfo"]["sellableNumberOfItems"] == 5.0


async def test_stock_changed_from_older_than_a_day_is_a_400(server: Server) -> None:
    """stockInfoChangedFrom more than 24 h old is refused with a message about the 24 hours."""
    old = (server.clock.now - timedelta(hours=25)).isoformat()
    status, body = await server.call(
        "GET", "/articles", params={"goodsOwnerId": str(OWNER), "stockInfoChangedFrom": old}
    )
    assert status == 400
    assert "24 hours" in body["Message"]


async def test_orders_found_by_number_and_by_id(server: Server) -> None:
    """GET /orders?orderNumber= returns an array; GET /orders/{id} the order; a missing id is an empty 404."""
    await server.call("PUT", "/articles", article_body(OWNER, "A1"))
    _, created = await server.call("PUT", "/orders", order_body(OWNER, "O1", [("A1", 1)]))
    _, rows = await server.call("GET", f"/orders?goodsOwnerId={OWNER}&orderNumber=O1")
    assert [r["orderInfo"]["orderId"] for r in rows] == [created["orderId"]]
    _, none = await server.call("GET", f"/orders?goodsOwnerId={OWNER}&orderNumber=O2")
    assert none == []
    status, order = await server.call("GET", f"/orders/{created['orderId']}")
    assert status == 200
    assert order["orderInfo"]["orderNumber"] == "O1"
    assert await server.call("GET", "/orders/999999") == (404, None)


async def test_fault_script_applies_before_the_handler(server: Server) -> None:
    """A scripted 503 answers instead of the handler, once, and is logged with the fault."""
    server.fake.faults.add(Fault("status", status=503), method="PUT", path="/articles", times=1)
    status, body = await server.call("PUT", "/articles", article_body(OWNER, "A1"))
    assert (status, body) == (503, {"Message": "An error has occurred."})
    assert server.fake.article(OWNER, "A1") is None
    status, _ = await server.call("PUT", "/articles", article_body(OWNER, "A1"))
    assert status == 200
    assert [r.fault for r in server.fake.requests] == ["status", None]


async def test_hold_parks_the_answer_after_applying_the_write(server: Server) -> None:
    """hold() lets the write land, then keeps the client waiting until released."""
    await server.call("PUT", "/articles", article_body(OWNER, "A1"))
    hold = server.fake.hold(path="/orders", entity="order:O1")
    answer: list[int] = []

    async def put() -> None:
        answer.append((await server.call("PUT", "/orders", order_body(OWNER, "O1", [("A1", 1)])))[0])

    async with anyio.create_task_group() as tg:
        tg.start_soon(put)
        await hold.reached.wait()
        assert server.fake.creations(OWNER, "O1") == 1
        assert answer == []
        hold.release.set()
    assert answer == [201]
