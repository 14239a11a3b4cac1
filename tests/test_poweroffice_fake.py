"""The fake PowerOffice Go v2 server behaves like the reference says, checked with plain HTTP requests;
and the data generator makes deterministic, spec-shaped, realistic companies."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from pipeline.fakes.faults import Fault
from pipeline.fakes.generate import Company, format_time, generate_company
from pipeline.fakes.poweroffice import FakePowerOffice, key_tag, serve_poweroffice

APP = "application-key-1"
SUB = "subscription-key-1"
CK1 = "client-key-acme"
CK2 = "client-key-beta"
NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
DATA = Path(__file__).parent / "data"


class WallClock:
    """The fake's wall clock, moved by the test."""

    def __init__(self, start: datetime = NOW) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


def make_fake(clock: WallClock | None = None, **kwargs: Any) -> FakePowerOffice:
    options: dict[str, Any] = {"requests_per_second": 1000, "default_page_size": 5000}
    options.update(kwargs)
    fake = FakePowerOffice(
        application_key=APP, subscription_keys=[SUB, "subscription-key-2"], clock=clock or WallClock(), **options
    )
    fake.add_company(CK1, generate_company(1, products=30, customers=12, invoices=40, now=NOW))
    fake.add_company(CK2, generate_company(2, products=7, customers=3, invoices=5, now=NOW))
    return fake


@asynccontextmanager
async def running(fake: FakePowerOffice) -> AsyncIterator[tuple[str, aiohttp.ClientSession]]:
    async with serve_poweroffice(fake) as origin, aiohttp.ClientSession() as session:
        yield origin, session


def basic(app: str, client: str) -> str:
    return "Basic " + base64.b64encode(f"{app}:{client}".encode()).decode()


async def get_token(
    session: aiohttp.ClientSession, origin: str, client: str = CK1, path: str = "/OAuth/Token"
) -> tuple[int, Any]:
    async with session.post(
        origin + path,
        headers={"Authorization": basic(APP, client), "Ocp-Apim-Subscription-Key": SUB},
        data={"grant_type": "client_credentials"},
    ) as resp:
        return resp.status, await resp.json(content_type=None)


async def token_for(session: aiohttp.ClientSession, origin: str, client: str = CK1) -> str:
    status, body = await get_token(session, origin, client)
    assert status == 200, body
    return str(body["access_token"])


def api_headers(token: str, sub: str = SUB) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Ocp-Apim-Subscription-Key": sub}


async def fetch(
    session: aiohttp.ClientSession, url: str, token: str, **params: str
) -> tuple[int, dict[str, str], bytes]:
    async with session.get(url, headers=api_headers(token), params=params) as resp:
        return resp.status, dict(resp.headers), await resp.read()


# --------------------------------------------------------------------------------------------------- auth


@pytest.mark.anyio
@pytest.mark.parametrize("path", ["/OAuth/Token", "/oauth/token", "/Demo/OAuth/Token"])
async def test_token_endpoint_accepts_every_casing(path: str) -> None:
    """The token endpoint answers under both casings (and /Demo) with a bearer token and its lifetime."""
    fake = make_fake(token_ttl=1200)
    async with running(fake) as (origin, session):
        status, body = await get_token(session, origin, path=path)
    assert status == 200
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 1200
    assert isinstance(body["access_token"], str)
    assert body["access_token"]


@pytest.mark.anyio
async def test_wrong_keys_get_invalid_client() -> None:
    """An unknown client key or a wrong application key is a 400 `invalid_client` that repeats no key."""
    fake = make_fake()
    async with running(fake) as (origin, session):
        status, body = await get_token(session, origin, client="no-such-client-key")
        async with session.post(
            origin + "/OAuth/Token",
            headers={"Authorization": basic("wrong-app", CK1), "Ocp-Apim-Subscription-Key": SUB},
            data={"grant_type": "client_credentials"},
        ) as resp:
            wrong_app = (resp.status, await resp.json())
    assert status == 400
    assert body["error"] == "invalid_client"
    assert "no-such-client-key" not in json.dumps(body)
    assert wrong_app[0] == 400
    assert wrong_app[1]["error"] == "invalid_client"


@pytest.mark.anyio
async def test_subscription_key_is_required_everywhere() -> None:
    """Token and API calls without a valid subscription key are refused with 401."""
    fake = make_fake()
    async with running(fake) as (origin, session):
        async with session.post(
            origin + "/OAuth/Token",
            headers={"Authorization": basic(APP, CK1)},
            data={"grant_type": "client_credentials"},
        ) as resp:
            no_key = resp.status
        token = await token_for(session, origin)
        async with session.get(origin + "/v2/Products", headers=api_headers(token, sub="bogus")) as resp:
            bad_key = resp.status
        async with session.get(origin + "/v2/Products", headers={"Authorization": f"Bearer {token}"}) as resp:
            missing = resp.status
        async with session.get(origin + "/v2/Products", params={"subscription-key": SUB}) as resp:
            no_bearer = resp.status
    assert (no_key, bad_key, missing, no_bearer) == (401, 401, 401, 401)


@pytest.mark.anyio
async def test_tokens_expire_with_the_fake_clock() -> None:
    """A token works until its lifetime has passed on the fake's clock, then gets 401."""
    clock = WallClock()
    fake = make_fake(clock, token_ttl=600)
    async with running(fake) as (origin, session):
        token = await token_for(session, origin)
        fresh = (await fetch(session, origin + "/v2/Products", token))[0]
        clock.advance(seconds=599)
        still = (await fetch(session, origin + "/v2/Products", token))[0]
        clock.advance(seconds=2)
        expired = (await fetch(session, origin + "/v2/Products", token))[0]
    assert (fresh, still, expired) == (200, 200, 401)


# ------------------------------------------------------------------------------------------- lists, paging


@pytest.mark.anyio
async def test_paths_are_case_insensitive_and_companies_separate() -> None:
    """/V2/PRODUCTS equals /v2/Products; each client key sees only its own company."""
    fake = make_fake()
    async with running(fake) as (origin, session):
        one = await token_for(session, origin, CK1)
        two = await token_for(session, origin, CK2)
        upper = orjson.loads((await fetch(session, origin + "/V2/PRODUCTS", one))[2])
        lower = orjson.loads((await fetch(session, origin + "/v2/products", one))[2])
        other = orjson.loads((await fetch(session, origin + "/v2/Products", two))[2])
        demo = (await fetch(session, origin + "/Demo/v2/Products", one))[0]
    assert upper == lower
    assert len(upper) == 30
    assert len(other) == 7
    assert {p["Id"] for p in upper}.isdisjoint({p["Id"] for p in other})
    assert demo == 200


@pytest.mark.anyio
async def test_pages_carry_next_links_and_end_with_204() -> None:
    """PageSize pages through a bare array; X-Pagination links the next page; past the end is 204, no body."""
    fake = make_fake(default_page_size=12)
    async with running(fake) as (origin, session):
        token = await token_for(session, origin)
        status, headers, body = await fetch(session, origin + "/v2/Products", token)
        meta = json.loads(headers["X-Pagination"])
        followed = await fetch(session, meta["nextPageLink"], token)
        second = await fetch(session, origin + "/v2/Products", token, PageNumber="2")
        last = await fetch(session, origin + "/v2/Products", token, PageNumber="3")
        past = await fetch(session, origin + "/v2/Products", token, PageNumber="4")
        small = await fetch(session, origin + "/v2/Products", token, PageSize="5", pageNumber="2")
    assert status == 200
    assert len(orjson.loads(body)) == 12
    assert meta["totalCount"] == 30
    assert meta["totalPages"] == 3
    assert meta["nextPageLink"].startswith(origin)
    assert "PageNumber=2" in meta["nextPageLink"]
    assert followed[2] == second[2]
    assert len(orjson.loads(second[2])) == 12
    assert len(orjson.loads(last[2])) == 6
    assert "nextPageLink" not in json.loads(last[1]["X-Pagination"])
    assert past[0] == 204
    assert past[2] == b""
    assert len(orjson.loads(small[2])) == 5


@pytest.mark.anyio
async def test_pages_are_consecutive_slices() -> None:
    """Page 2 follows page 1 without gaps or overlaps, by id order."""
    fake = make_fake(default_page_size=12)
    async with running(fake) as (origin, session):
        token = await token_for(session, origin)
        pages = [
            orjson.loads((await fetch(session, origin + "/v2/Products", token, PageNumber=str(n)))[2])
            for n in (1, 2, 3)
        ]
    ids = [p["Id"] for page in pages for p in page]
    assert ids == sorted(fake.company(CK1).products)


@pytest.mark.anyio
async def test_pagination_header_can_be_switched_off() -> None:
    """With the header off, clients must rely on short pages."""
    fake = make_fake(default_page_size=12)
    fake.pagination_header = False
    async with running(fake) as (origin, session):
        token = await token_for(session, origin)
        status, headers, _ = await fetch(session, origin + "/v2/Products", token)
    assert status == 200
    assert "X-Pagination" not in headers


@pytest.mark.anyio
async def test_pagination_header_without_links() -> None:
    """`pagination_links = False` keeps the header (counts) but never names a next page: the variant that ends
    paging early in a client trusting the header."""
    fake = make_fake(default_page_size=12)
    fake.pagination_links = False
    async with running(fake) as (origin, session):
        token = await token_for(session, origin)
        _, headers, body = await fetch(session, origin + "/v2/Products", token)
    meta = json.loads(headers["X-Pagination"])
    assert meta["totalPages"] == 3
    assert "nextPageLink" not in meta
    assert len(orjson.loads(body)) == 12


@pytest.mark.anyio
async def test_page_size_cap_serves_fewer_records_and_links_on() -> None:
    """`page_size_cap` serves fewer records than asked for; the header still links the next page."""
    fake = make_fake()
    fake.page_size_cap = 8
    async with running(fake) as (origin, session):
        token = await token_for(session, origin)
        _, headers, body = await fetch(session, origin + "/v2/Products", token, PageSize="20")
        _, _, second = await fetch(session, origin + "/v2/Products", token, PageSize="20", PageNumber="2")
    assert len(orjson.loads(body)) == 8
    assert "PageNumber=2" in json.loads(headers["X-Pagination"])["nextPageLink"]
    ids = [p["Id"] for p in orjson.loads(body) + orjson.loads(second)]
    assert ids == sorted(fake.company(CK1).products)[:16]


@pytest.mark.anyio
async def test_every_answer_carries_a_date_from_the_fake_clock() -> None:
    """`Date` follows the fake's clock (whole seconds), on pages, 204s, errors and scripted faults alike."""
    clock = WallClock(NOW + timedelta(seconds=7.9))
    fake = make_fake(clock)
    fake.faults.add(Fault("status", status=503), path="/v2/ProductGroups")
    async with running(fake) as (origin, session):
        token = await token_for(session, origin)
        page = await fetch(session, origin + "/v2/Products", token)
        empty = await fetch(session, origin + "/v2/Products", token, PageNumber="99")
        missing = await fetch(session, origin + "/v2/Products/1", token)
        faulted = await fetch(session, origin + "/v2/ProductGroups", token)
    assert [page[0], empty[0], missing[0], faulted[0]] == [200, 204, 404, 503]
    for _, headers, _ in (page, empty, missing, faulted):
        assert headers["Date"] == "Mon, 02 Mar 2026 12:00:07 GMT"


@pytest.mark.anyio
async def test_raw_values_are_served_verbatim() -> None:
    """An `orjson.Fragment` in a record is served as is: the page holds what a strict parser refuses."""
    fake = make_fake()
    product = fake.company(CK1).products[sorted(fake.company(CK1).products)[0]]
    product["UnitPrice"] = orjson.Fragment(b"NaN")
    async with running(fake) as (origin, session):
        token = await token_for(session, origin)
        _, _, body = await fetch(session, origin + "/v2/Products", token)
    assert b'"UnitPrice":NaN' in body
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(body)


@pytest.mark.anyio
async def test_bad_resource_parameters_are_400_problems() -> None:
    """PageSize over 20,000 and OData $top give 400 ProblemDetails."""
    fake = make_fake()
    async with running(fake) as (origin, session):
        token = await token_for(session, origin)
        big = await fetch(session, origin + "/v2/Products", token, PageSize="20001")
        top = await fetch(session, origin + "/v2/Products", token, **{"$top": "5"})
        limit = await fetch(session, origin + "/v2/Products", token, PageSize="20000")
    assert big[0] == 400
    assert orjson.loads(big[2])["Title"] == "Invalid resourceParameter"
    assert top[0] == 400
    assert limit[0] == 200


@pytest.mark.anyio
async def test_overlong_urls_get_a_misleading_404() -> None:
    """A URL past ~2000 characters is answered 404 like the real gateway."""
    fake = make_fake()
    async with running(fake) as (origin, session):
        token = await token_for(session, origin)
        numbers = ",".join(str(n) for n in range(10000, 10500))
        status = (await fetch(session, origin + "/v2/Customers", token, customerNos=numbers))[0]
    assert status == 404


# ------------------------------------------------------------------------------------- filters and traps


@pytest.mark.anyio
async def test_change_filters_are_strictly_greater() -> None:
    """A record stamped exactly at the filter value is excluded; a microsecond earlier includes it."""
    clock = WallClock()
    fake = make_fake(clock)
    clock.advance(days=1)
    product = fake.set_price(CK1, "P-00003", 99.5)
    stamp = datetime.fromisoformat(product["LastChangedDateTimeOffset"])
    async with running(fake) as (origin, session):
        token = await token_for(session, origin)
        at = await fetch(
            session, origin + "/v2/Products", token, lastChangedDateTimeOffsetGreaterThan=stamp.isoformat()
        )
        before = await fetch(
            session,
            origin + "/v2/Products",
            token,
            lastChangedDateTimeOffsetGreaterThan=(stamp - timedelta(microseconds=1)).isoformat(),
        )
        spaced = await fetch(
            session,
            origin + "/v2/Products",
            token,
            lastChangedDateTimeOffsetGreaterThan=(stamp - timedelta(seconds=1)).strftime("%Y-%m-%d %H:%M:%S.%f -00:00"),
        )
    assert at[0] == 204
    assert [p["Code"] for p in orjson.loads(before[2])] == ["P-00003"]
    assert [p["Code"] for p in orjson.loads(spaced[2])] == ["P-00003"]


@pytest.mark.anyio
async def test_stock_changes_do_not_move_last_changed() -> None:
    """set_stock moves StockOnHandLastChangedDatetimeOffset only: the lastChanged filter does not see it."""
    clock = WallClock()
    fake = make_fake(clock)
    before = dict(fake.company(CK1).product_by_code("P-00002"))
    clock.advance(days=1)
    fake.set_stock(CK1, "P-00002", 321)
    after = fake.company(CK1).product_by_code("P-00002")
    since = (NOW + timedelta(hours=1)).isoformat()
    async with running(fake) as (origin, session):
        token = await token_for(session, origin)
        changed = await fetch(session, origin + "/v2/Products", token, lastChangedDateTimeOffsetGreaterThan=since)
        stock = await fetch(
            session, origin + "/v2/Products", token, stockOnHandLastChangedDatetimeOffsetGreaterThan=since
        )
    assert after["LastChangedDateTimeOffset"] == before["LastChangedDateTimeOffset"]
    assert after["StockOnHandLastChangedDatetimeOffset"] == format_time(clock.now)
    assert changed[0] == 204
    assert [p["Code"] for p in orjson.loads(stock[2])] == ["P-00002"]


@pytest.mark.anyio
async def test_address_changes_do_not_move_the_customer() -> None:
    """change_address updates MailAddress and its timestamp; the customer's LastChanged stays."""
    clock = WallClock()
    fake = make_fake(clock)
    stamp = fake.company(CK1).customer_by_number(10001)["LastChangedDateTimeOffset"]
    clock.advance(days=1)
    fake.change_address(CK1, 10001, AddressLine1="Nygata 1", City="Bodø", ZipCode="8006")
    async with running(fake) as (origin, session):
        token = await token_for(session, origin)
        changed = await fetch(
            session, origin + "/v2/Customers", token, lastChangedDateTimeOffsetGreaterThan=NOW.isoformat()
        )
        fetched = await fetch(session, origin + "/v2/Customers", token, customerNos="10001")
    customer = orjson.loads(fetched[2])[0]
    assert changed[0] == 204
    assert customer["LastChangedDateTimeOffset"] == stamp
    assert customer["MailAddress"]["City"] == "Bodø"
    assert customer["MailAddress"]["LastChangedDateTimeOffset"] == format_time(clock.now)


@pytest.mark.anyio
async def test_payment_moves_balance_and_its_timestamp() -> None:
    """pay_invoice sets Balance 0 and BalanceLastChanged now, so the balance filter finds it."""
    clock = WallClock()
    fake = make_fake(clock)
    unpaid = next(
        i for i in fake.company(CK1).invoices.values() if i["VoucherType"] == "OutgoingInvoice" and i["Balance"] != 0
    )
    clock.advance(hours=2)
    fake.pay_invoice(CK1, unpaid["Id"])
    async with running(fake) as (origin, session):
        token = await token_for(session, origin)
        found = await fetch(
            session,
            origin + "/v2/OutgoingInvoices",
            token,
            balanceLastChangedDateTimeOffsetGreaterThan=(NOW + timedelta(hours=1)).isoformat(),
        )
        open_items = await fetch(session, origin + "/v2/OutgoingInvoices", token, onlyUnpaidInvoices="true")
    invoices = orjson.loads(found[2])
    assert [i["Id"] for i in invoices] == [unpaid["Id"]]
    assert invoices[0]["Balance"] == 0
    assert unpaid["Id"] not in {i["Id"] for i in orjson.loads(open_items[2])}


@pytest.mark.anyio
async def test_number_and_id_filters() -> None:
    """customerNos takes lists and ranges; contactIds picks delivery addresses; invoice lines by invoice id."""
    fake = make_fake()
    company = fake.company(CK1)
    invoice_id = next(iter(company.invoices))
    async with running(fake) as (origin, session):
        token = await token_for(session, origin)
        customers = await fetch(session, origin + "/v2/Customers", token, customerNos="10000-10002, 10005, 10010-")
        contact = next(a["ContactId"] for a in company.delivery_addresses.values())
        addresses = await fetch(session, origin + "/v2/ContactDeliveryAddresses", token, contactIds=str(contact))
        lines = await fetch(session, origin + f"/v2/OutgoingInvoices/{invoice_id}/Lines", token)
        missing = await fetch(
            session, origin + "/v2/OutgoingInvoices/00000000-0000-4000-8000-000000000000/Lines", token
        )
    assert sorted(c["Number"] for c in orjson.loads(customers[2])) == [10000, 10001, 10002, 10005, 10010, 10011]
    assert {a["ContactId"] for a in orjson.loads(addresses[2])} == {contact}
    assert orjson.loads(lines[2]) == company.invoice_lines[invoice_id]
    assert missing[0] == 404
    assert orjson.loads(missing[2])["Title"] == "Object(s) not found"


# ------------------------------------------------------------------------------------------- rate limit


@pytest.mark.anyio
async def test_rate_limit_per_subscription_key() -> None:
    """Over the limit in one second a key gets 429 with Retry-After and the gateway body; another key does not."""
    fake = make_fake(requests_per_second=3)
    async with running(fake) as (origin, session):
        statuses = []
        for _ in range(4):
            async with session.get(origin + "/v2/Products", headers={"Ocp-Apim-Subscription-Key": SUB}) as resp:
                statuses.append(resp.status)
                if resp.status == 429:
                    retry_after = resp.headers["Retry-After"]
                    body = await resp.json()
        async with session.get(
            origin + "/v2/Products", headers={"Ocp-Apim-Subscription-Key": "subscription-key-2"}
        ) as resp:
            other = resp.status
    assert statuses == [401, 401, 401, 429]  # admitted (then refused for the missing token), then throttled
    assert retry_after == "1"
    assert body == {"statusCode": "429", "message": "Rate limit is exceeded. Try again in 1 seconds."}
    assert other == 401


# ------------------------------------------------------------------------------------------------- patch


async def patch(
    session: aiohttp.ClientSession, url: str, token: str, ops: Any, content_type: str = "application/json-patch+json"
) -> tuple[int, Any]:
    headers = {**api_headers(token), "Content-Type": content_type}
    async with session.patch(url, headers=headers, data=orjson.dumps(ops)) as resp:
        return resp.status, await resp.json(content_type=None)


@pytest.mark.anyio
async def test_patch_stock_on_hand() -> None:
    """A StockOnHand replace on a stock item answers the product; only the stock timestamp moves."""
    clock = WallClock()
    fake = make_fake(clock)
    product = next(p for p in fake.company(CK1).products.values() if p["IsStockItem"])
    changed_before = product["LastChangedDateTimeOffset"]
    clock.advance(minutes=5)
    async with running(fake) as (origin, session):
        token = await token_for(session, origin)
        status, body = await patch(
            session,
            origin + f"/v2/Products/{product['Id']}",
            token,
            [{"op": "replace", "path": "/StockOnHand", "value": 17}],
        )
    assert status == 200
    assert body["StockOnHand"] == 17
    assert body["LastChangedDateTimeOffset"] == changed_before
    assert body["StockOnHandLastChangedDatetimeOffset"] == format_time(clock.now)
    assert fake.company(CK1).products[product["Id"]]["StockOnHand"] == 17


@pytest.mark.anyio
async def test_patch_refuses_stock_on_non_stock_items_and_wrong_media_types() -> None:
    """StockOnHand on a service is a 400 problem (lower-case keys); JSON-Patch must be sent as json-patch+json."""
    fake = make_fake()
    service = next(p for p in fake.company(CK1).products.values() if not p["IsStockItem"])
    stock = next(p for p in fake.company(CK1).products.values() if p["IsStockItem"])
    ops = [{"op": "replace", "path": "/StockOnHand", "value": 5}]
    async with running(fake) as (origin, session):
        token = await token_for(session, origin)
        refused = await patch(session, origin + f"/v2/Products/{service['Id']}", token, ops)
        allowed = await patch(
            session,
            origin + f"/v2/Products/{service['Id']}",
            token,
            [{"op": "replace", "path": "/IsStockItem", "value": True}, *ops],
        )
        media = await patch(session, origin + f"/v2/Products/{stock['Id']}", token, ops, "application/json")
        unknown = await patch(session, origin + "/v2/Products/1", token, ops)
        renamed = await patch(
            session, origin + f"/v2/Products/{stock['Id']}", token, [{"op": "replace", "path": "/name", "value": "Ny"}]
        )
    assert refused[0] == 400
    assert set(refused[1]) == {"title", "status", "detail"}
    assert "IsStockItem" in refused[1]["detail"]
    assert allowed[0] == 200
    assert allowed[1]["StockOnHand"] == 5
    assert media[0] == 415
    assert unknown[0] == 404
    assert renamed[0] == 200
    assert renamed[1]["Name"] == "Ny"


# --------------------------------------------------------------------------------------- faults and log


@pytest.mark.anyio
async def test_faults_and_request_log() -> None:
    """A scripted 503 hits once and is logged with its kind; the log names keys by tag, never by value."""
    fake = make_fake()
    fake.faults.add(Fault("status", status=503), path=r"/v2/products\?.*PageNumber=2")
    async with running(fake) as (origin, session):
        token = await token_for(session, origin)
        first = (await fetch(session, origin + "/v2/Products", token, PageSize="20", PageNumber="1"))[0]
        failed = (await fetch(session, origin + "/v2/Products", token, PageSize="20", PageNumber="2"))[0]
        again = (await fetch(session, origin + "/v2/Products", token, PageSize="20", PageNumber="2"))[0]
    assert (first, failed, again) == (200, 503, 200)
    assert [r.fault for r in fake.requests] == [None, None, "status", None]
    assert all(r.key == f"{key_tag(SUB)}/{key_tag(CK1)}" for r in fake.requests)
    assert len(fake.requests_of(CK1)) == 4
    assert fake.requests_of(CK2) == []
    assert CK1 not in repr(fake.requests)
    assert SUB not in repr(fake.requests)


@pytest.mark.anyio
async def test_dropped_connection_fault() -> None:
    """A `drop` fault closes the connection without an answer (twice: aiohttp retries a reused connection once)."""
    fake = make_fake()
    fake.faults.add(Fault("drop"), path="/v2/products", times=2)
    async with running(fake) as (origin, session):
        token = await token_for(session, origin)
        with pytest.raises(aiohttp.ClientError):
            await fetch(session, origin + "/v2/Products", token)
        assert (await fetch(session, origin + "/v2/Products", token))[0] == 200
    assert [r.fault for r in fake.requests] == [None, "drop", "drop", None]
    assert [r.status for r in fake.requests][1:3] == [0, 0]


# ---------------------------------------------------------------------------------------------- generator


def _example_keys(name: str) -> set[str]:
    return set(json.loads((DATA / "poweroffice" / f"{name}.example.json").read_text()))


def test_generator_is_deterministic() -> None:
    """The same seed and arguments give the same company; another seed another one."""
    one = generate_company(7, products=40, customers=10, invoices=30, now=NOW)
    two = generate_company(7, products=40, customers=10, invoices=30, now=NOW)
    other = generate_company(8, products=40, customers=10, invoices=30, now=NOW)
    assert one == two
    assert one.products != other.products


def test_generated_records_use_spec_field_names() -> None:
    """Every generated field exists in the spec's example DTOs (PascalCase v2 names only)."""
    company = generate_company(3, now=NOW)
    shapes: list[tuple[str, list[dict[str, Any]]]] = [
        ("ProductDto", list(company.products.values())),
        ("ProductGroupDto", list(company.product_groups.values())),
        ("CustomerDto", list(company.customers.values())),
        ("ContactDeliveryAddressDto", list(company.delivery_addresses.values())),
        ("OutgoingInvoiceDto", list(company.invoices.values())),
        ("OutgoingInvoiceLineDto", [line for lines in company.invoice_lines.values() for line in lines]),
    ]
    for name, records in shapes:
        allowed = _example_keys(name)
        assert records, name
        for record in records:
            assert set(record) <= allowed, (name, set(record) - allowed)
    mail_keys = set(json.loads((DATA / "poweroffice" / "CustomerDto.example.json").read_text())["MailAddress"])
    for customer in company.customers.values():
        if customer["MailAddress"] is not None:
            assert set(customer["MailAddress"]) <= mail_keys


def test_generated_company_has_the_awkward_cases() -> None:
    """Services, GTIN-less products, persons, customers without mail address, credit notes, shared and missing
    order numbers, text lines and product-less fee lines all occur; all timestamps lie at or before `now`."""
    company: Company = generate_company(5, products=200, customers=50, invoices=300, paid_ratio=0.6, now=NOW)
    products = list(company.products.values())
    assert any(p["ProductType"] == "Service" and not p["IsStockItem"] for p in products)
    assert any(p["Gtin"] is None for p in products)
    assert any(p["Gtin"] for p in products)
    assert any(p["ProductGroupId"] is None for p in products)
    customers = list(company.customers.values())
    assert any(c["IsPerson"] for c in customers)
    assert any(not c["IsPerson"] for c in customers)
    homeless = [c for c in customers if c["MailAddress"] is None]
    assert homeless
    contacts = {a["ContactId"] for a in company.delivery_addresses.values()}
    assert all(c["Id"] in contacts for c in homeless)
    invoices = list(company.invoices.values())
    assert any(i["VoucherType"] == "OutgoingCreditNote" for i in invoices)
    order_nos = [i["OrderNo"] for i in invoices if i["OrderNo"] is not None]
    assert len(order_nos) > len(set(order_nos))
    assert any(i["OrderNo"] is None for i in invoices)
    regular = [i for i in invoices if i["VoucherType"] == "OutgoingInvoice"]
    paid = len(company.paid_invoices()) / len(regular)
    assert 0.5 < paid < 0.7
    lines = [line for ls in company.invoice_lines.values() for line in ls]
    assert any(line["LineType"] == "Text" for line in lines)
    assert any(line["LineType"] != "Text" and line["ProductCode"] is None for line in lines)
    stamps = [
        r[k]
        for group in (products, customers, invoices)
        for r in group
        for k in r
        if k.endswith("DateTimeOffset") or k.endswith("DatetimeOffset")
    ]
    assert all(s is None or datetime.fromisoformat(s) <= NOW for s in stamps)
    assert all(s is None or len(s.split(".")[1]) == 8 for s in stamps)  # seven digits and a Z
