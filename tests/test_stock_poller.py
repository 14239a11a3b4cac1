"""The Ongoing stock poller with malformed rows (rules 3 and 12): the real client against the fake Ongoing server.

A row the poller cannot read is appended as `observation.rejected` naming the field; every other row of the page
is observed; the poll's cursor moves; the rejection stands in `audit failures` until the row is observed again.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from pipeline import audit
from pipeline.clients.ongoing import OngoingClient
from pipeline.config import OngoingSettings, Secret, TenantSettings
from pipeline.eventlog.sqlite import SqliteEventLog
from pipeline.events import ObservationRejected, StockObserved
from pipeline.fakes.ongoing import FakeOngoing, serve_ongoing
from pipeline.pollers.ongoing_stock import CURSOR, StockPollResult, poll_stock

pytestmark = pytest.mark.anyio

OWNER = 42
NOW = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)
TENANT = TenantSettings(name="acme", poweroffice_client_key=Secret("k"), ongoing_goods_owner_id=OWNER)


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Stock:
    fake: FakeOngoing
    clock: Clock
    log: SqliteEventLog
    client: OngoingClient

    async def poll(self) -> StockPollResult:
        return await poll_stock(self.log, self.client.for_tenant(TENANT), TENANT, now=self.clock.now, page_size=4)

    def model(self, number: str) -> dict[str, Any]:
        return self.fake.owner(OWNER).articles[number].model


@pytest.fixture
async def stock(tmp_path: Path) -> AsyncIterator[Stock]:
    clock = Clock()
    fake = FakeOngoing(username="wms", password="s3cret", clock=clock)
    for n in range(10):
        fake.add_article(OWNER, f"A{n}", f"Vare {n}")
        fake.set_inventory(OWNER, f"A{n}", numberOfItems=n + 1, sellableNumberOfItems=n + 1)
    log = await SqliteEventLog.open(tmp_path / "events.db", clock=clock)
    try:
        async with serve_ongoing(fake) as url, aiohttp.ClientSession() as http:
            settings = OngoingSettings(api_url=url, username="wms", password=Secret("s3cret"))
            yield Stock(fake, clock, log, OngoingClient(http, settings, clock=clock))
    finally:
        await log.close()


def _set(field: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(model: dict[str, Any]) -> None:
        model[field] = value

    return mutate


def _figure(name: str, raw: bytes) -> Callable[[dict[str, Any]], None]:
    def mutate(model: dict[str, Any]) -> None:
        model["inventoryInfo"] = {**model["inventoryInfo"], name: orjson.Fragment(raw)}

    return mutate


CASES = {
    "null-articleNumber": (_set("articleNumber", None), "articleNumber", False),
    "number-articleNumber": (_set("articleNumber", 17), "articleNumber", False),
    "null-inventoryInfo": (_set("inventoryInfo", None), "inventoryInfo", True),
    "text-inventoryInfo": (_set("inventoryInfo", "many"), "inventoryInfo", True),
    "NaN-numberOfItems": (_figure("numberOfItems", b"NaN"), "inventoryInfo.numberOfItems", True),
    "1e400-numberOfItems": (_figure("numberOfItems", b"1e400"), "inventoryInfo.numberOfItems", True),
    "surrogate-articleName": (_set("articleName", orjson.Fragment(b'"\\ud800"')), "articleName", True),
}


@pytest.mark.parametrize("case", CASES)
async def test_rule3_a_malformed_stock_row_is_its_own_problem(stock: Stock, case: str) -> None:
    mutate, field, named = CASES[case]
    mutate(stock.model("A5"))  # on the second page of 4
    result = await stock.poll()
    observed = {e.entity async for e in stock.log.read(types=[StockObserved.TYPE])}
    (rejection,) = [e async for e in stock.log.read(types=[ObservationRejected.TYPE])]
    failures = await audit.failures(stock.log)
    assert observed == {f"stock:A{n}" for n in range(10) if n != 5}
    assert rejection.event.field == field
    if named:
        assert rejection.entity == "stock:A5"
    else:
        assert rejection.entity.startswith("stock:?")
    assert [r.entity for r in failures] == [rejection.entity]
    assert (result.observed, result.rejected, result.rows) == (9, 1, 10)
    assert await stock.log.cursor(CURSOR, "acme") is not None


async def test_rule3_a_stock_row_read_again_after_its_fix_is_observed(stock: Stock) -> None:
    """The broken row read again adds nothing; fixed (figures as before), it is observed and stops standing."""
    await stock.poll()
    model = stock.model("A3")
    good = model["inventoryInfo"]
    model["inventoryInfo"] = {**good, "numberOfItems": orjson.Fragment(b"NaN")}
    stock.fake.set_inventory(OWNER, "A3")
    stock.clock.now += timedelta(minutes=15)
    await stock.poll()
    stock.clock.now += timedelta(minutes=15)
    await stock.poll()
    assert len([e async for e in stock.log.read(types=[ObservationRejected.TYPE])]) == 1
    assert [r.entity for r in await audit.failures(stock.log)] == ["stock:A3"]
    model["inventoryInfo"] = good
    stock.fake.set_inventory(OWNER, "A3")
    stock.clock.now += timedelta(minutes=15)
    await stock.poll()
    assert await audit.failures(stock.log) == []
    observed = [e.entity async for e in stock.log.read(types=[StockObserved.TYPE])]
    assert observed.count("stock:A3") == 2
