"""The Ongoing client against the fake server: upserts, look-ups, paging, auth, and errors at the edge."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qsl

import aiohttp
import anyio
import pytest

from pipeline.clients.http import Attempts, RetryPolicy
from pipeline.clients.ongoing import OngoingClient, TenantOngoing, order_status
from pipeline.config import OngoingSettings, Secret, TenantSettings
from pipeline.errors import AuthError, PermanentApiError, TransientApiError
from pipeline.fakes.faults import Fault
from pipeline.fakes.ongoing import FakeOngoing, serve_ongoing
from tests.ongoing_schema import article_body, fake_validator, order_body

OWNER = 159
OWN_CREDS = 160  # a goods owner with its own API user


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def tenant(name: str, owner: int, creds: tuple[str, str] | None = None) -> TenantSettings:
    return TenantSettings(
        name=name,
        poweroffice_client_key=Secret("client-key"),
        ongoing_goods_owner_id=owner,
        ongoing_username=creds[0] if creds else None,
        ongoing_password=Secret(creds[1]) if creds else None,
    )


@dataclass
class Env:
    fake: FakeOngoing
    url: str
    http: aiohttp.ClientSession
    clock: Clock

    def client(
        self, *, timeout: float = 5.0, policy: RetryPolicy | None = None, password: str = "s3cret"
    ) -> OngoingClient:
        settings = OngoingSettings(api_url=self.url, username="wms", password=Secret(password), timeout_seconds=timeout)
        return OngoingClient(self.http, settings, policy=policy or RetryPolicy(), clock=self.clock)

    def owner(self, *, timeout: float = 5.0, policy: RetryPolicy | None = None) -> TenantOngoing:
        return self.client(timeout=timeout, policy=policy).for_tenant(tenant("acme", OWNER))


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    clock = Clock()
    fake = FakeOngoing(
        username="wms",
        password="s3cret",
        goods_owner_credentials={OWN_CREDS: ("beta-user", "beta-pw")},
        clock=clock,
        validator=fake_validator,
    )
    async with serve_ongoing(fake) as url, aiohttp.ClientSession() as http:
        yield Env(fake, url, http, clock)
    assert fake.schema_violations == []


pytestmark = pytest.mark.anyio


async def test_put_article_then_update_keeps_the_article(env: Env) -> None:
    """Upsert then update: same articleSystemId, new fields stored, the answer's message passed through."""
    ongoing = env.owner()
    first = await ongoing.put_article(dict(article_body(OWNER, "A1", "Sko", customerPrice=100.0)))
    second = await ongoing.put_article(dict(article_body(OWNER, "A1", "Sko, rød", customerPrice=120.0)))
    assert first["articleSystemId"] == second["articleSystemId"]
    assert second["message"] == "Article A1 Sko, rød Updated/Created"
    stored = env.fake.article(OWNER, "A1")
    assert stored is not None
    assert (stored["articleName"], stored["customerPrice"]) == ("Sko, rød", 120.0)


async def test_put_order_then_find_and_get_it(env: Env) -> None:
    """An order is created, updated in place, then found by number and by id with its status."""
    ongoing = env.owner()
    await ongoing.put_article(dict(article_body(OWNER, "A1")))
    created = await ongoing.put_order(dict(order_body(OWNER, "O1", [("A1", 1)], invoice_id="inv-1")))
    updated = await ongoing.put_order(dict(order_body(OWNER, "O1", [("A1", 2)], invoice_id="inv-1")))
    assert created["orderId"] == updated["orderId"]
    assert env.fake.creations(OWNER, "O1") == 1
    found = await ongoing.find_order("O1")
    assert found is not None
    assert found["orderInfo"]["goodsOwnerOrderId"] == "inv-1"
    assert order_status(found) == (200, "Open")
    by_id = await ongoing.get_order(created["orderId"])
    assert by_id["orderInfo"]["orderNumber"] == "O1"
    assert await ongoing.find_order("O2") is None


async def test_unknown_article_on_an_order_is_a_permanent_error(env: Env) -> None:
    """A 400 with an ASP.NET Message body becomes PermanentApiError with status, path, tenant and the message."""
    ongoing = env.owner()
    attempts = Attempts()
    with pytest.raises(PermanentApiError) as caught:
        await ongoing.put_order(dict(order_body(OWNER, "O1", [("GHOST", 1)])), attempts=attempts)
    err = caught.value
    assert (err.status, err.method, err.path, err.tenant) == (400, "PUT", "/orders", "acme")
    assert "GHOST" in err.detail
    assert attempts.count == 1  # a 4xx is not retried


async def test_empty_error_body_is_translated_too(env: Env) -> None:
    """A 404 with no body at all is still a PermanentApiError with status and path (and no query string)."""
    with pytest.raises(PermanentApiError) as caught:
        await env.owner().get_order(424242)
    assert (caught.value.status, caught.value.path, caught.value.detail) == (404, "/orders/424242", "")


async def test_tenant_credentials_override_the_default_ones(env: Env) -> None:
    """A tenant's own user is used for its goods owner; the default user is refused there (AuthError)."""
    client = env.client()
    own = client.for_tenant(tenant("beta", OWN_CREDS, ("beta-user", "beta-pw")))
    result = await own.put_article(dict(article_body(OWN_CREDS, "B1")))
    assert result["articleSystemId"]
    wrong = client.for_tenant(tenant("beta", OWN_CREDS))
    with pytest.raises(AuthError) as caught:
        await wrong.put_article(dict(article_body(OWN_CREDS, "B2")))
    assert caught.value.status == 401
    assert "Authorization has been denied" in str(caught.value)


async def test_bad_password_never_shows_in_the_error(env: Env) -> None:
    """A refused login names the tenant and user, never the password."""
    ongoing = env.client(password="hunter2-wrong").for_tenant(tenant("acme", OWNER))
    with pytest.raises(AuthError) as caught:
        await ongoing.find_order("O1")
    text = f"{caught.value} {caught.value!r} {caught.value.detail}"
    assert "hunter2" not in text
    assert "acme" in text
    assert "wms" in text


async def test_body_for_another_goods_owner_is_refused_before_sending(env: Env) -> None:
    """A body whose goodsOwnerId is not the tenant's raises ValueError and sends nothing."""
    with pytest.raises(ValueError, match="goods owner"):
        await env.owner().put_article(dict(article_body(OWNER + 1, "A1")))
    assert env.fake.requests == []


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param(Fault("status", status=503), id="5xx"),
        pytest.param(Fault("status", status=500, body=b""), id="5xx-empty-body"),
        pytest.param(Fault("drop"), id="dropped-connection"),
        pytest.param(Fault("hang", seconds=0.5), id="timeout"),
        pytest.param(Fault("status", status=429, retry_after="0"), id="429-retry-after"),
    ],
)
async def test_transient_failures_are_retried_until_success(env: Env, fault: Fault) -> None:
    """Two transient failures, then success: the write lands once and three attempts are counted."""
    env.fake.faults.add(fault, method="PUT", path="/articles", times=2)
    attempts = Attempts()
    result = await env.owner(timeout=0.2).put_article(dict(article_body(OWNER, "A1")), attempts=attempts)
    assert result["articleSystemId"]
    assert [r.fault for r in env.fake.writes(OWNER)] == [fault.kind, fault.kind, None]
    if fault.kind == "drop":
        # aiohttp itself may resend an idempotent PUT once when the server drops the connection.
        assert attempts.count in (2, 3)
    else:
        assert attempts.count == 3


async def test_transient_failures_give_up_within_the_policy(env: Env) -> None:
    """A server that keeps failing gives TransientApiError after the policy's attempts."""
    env.fake.faults.add(Fault("status", status=502), times=None)
    attempts = Attempts()
    with pytest.raises(TransientApiError) as caught:
        await env.owner(policy=RetryPolicy(attempts=3)).put_article(dict(article_body(OWNER, "A1")), attempts=attempts)
    assert caught.value.status == 502
    assert "An error has occurred" in caught.value.detail
    assert attempts.count == 3


async def test_one_write_in_flight_per_goods_owner(env: Env) -> None:
    """Concurrent writes through one client for one goods owner reach the server one at a time."""
    env.fake.write_latency = 0.02
    client = env.client()
    async with anyio.create_task_group() as tg:
        for i in range(5):
            # Separate TenantOngoing objects still share the goods owner's lock.
            tg.start_soon(client.for_tenant(tenant("acme", OWNER)).put_article, dict(article_body(OWNER, f"A{i}")))
    assert env.fake.peak_in_flight(OWNER) == 1
    writes = sorted(env.fake.writes(OWNER), key=lambda r: r.at)
    assert all(a.ended <= b.at for a, b in itertools.pairwise(writes))


async def test_articles_pages_by_system_id_and_stops_on_a_short_page(env: Env) -> None:
    """25 articles in pages of 10: three pages, cursor = last id + 1, the third page short."""
    ongoing = env.owner()
    for i in range(25):
        env.fake.add_article(OWNER, f"A{i:02}")
    pages = [page async for page in ongoing.articles(page_size=10)]
    assert [len(p) for p in pages] == [10, 10, 5]
    assert [r["articleNumber"] for p in pages for r in p] == [f"A{i:02}" for i in range(25)]
    assert all("inventoryInfo" in r for p in pages for r in p)
    cursors = [dict(parse_qsl(r.query))["articleSystemIdFrom"] for r in env.fake.requests]
    assert cursors == ["1", str(pages[0][-1]["articleSystemId"] + 1), str(pages[1][-1]["articleSystemId"] + 1)]


async def test_articles_full_page_then_empty_page_ends(env: Env) -> None:
    """When the last page is exactly full, one more (empty) page is asked for and ends the iteration."""
    for i in range(4):
        env.fake.add_article(OWNER, f"A{i}")
    pages = [page async for page in env.owner().articles(page_size=2)]
    assert [len(p) for p in pages] == [2, 2]
    assert len(env.fake.requests) == 3


async def test_article_numbers_are_sent_as_repeated_keys(env: Env) -> None:
    """article_numbers go out as articleNumbers=A&articleNumbers=B, and select exactly those."""
    for n in ("A", "B", "C"):
        env.fake.add_article(OWNER, n)
    pages = [page async for page in env.owner().articles(article_numbers=["A", "C"])]
    assert sorted(r["articleNumber"] for p in pages for r in p) == ["A", "C"]
    pairs = parse_qsl(env.fake.requests[0].query)
    assert [v for k, v in pairs if k == "articleNumbers"] == ["A", "C"]


async def test_stock_changed_from_filters_and_carries_inventory(env: Env) -> None:
    """stockInfoChangedFrom (sent as UTC with offset) returns only articles whose stock changed since."""
    for n in ("A", "B"):
        env.fake.add_article(OWNER, n)
    env.clock.now += timedelta(hours=2)
    since = env.clock.now
    env.fake.set_inventory(OWNER, "A", numberOfItems=12, sellableNumberOfItems=10)
    pages = [page async for page in env.owner().articles(stock_changed_from=since)]
    rows = [r for p in pages for r in p]
    assert [(r["articleNumber"], r["inventoryInfo"]["numberOfItems"]) for r in rows] == [("A", 12.0)]
    sent = dict(parse_qsl(env.fake.requests[0].query))["stockInfoChangedFrom"]
    assert sent == "2026-11-02T14:00:00.000+00:00"


async def test_stock_changed_from_older_than_24h_raises_before_any_request(env: Env) -> None:
    """An old or naive stock_changed_from raises ValueError at once; nothing is sent."""
    ongoing = env.owner()
    with pytest.raises(ValueError, match="24 hours"):
        ongoing.articles(stock_changed_from=env.clock.now - timedelta(hours=24, seconds=1))
    with pytest.raises(ValueError, match="offset"):
        ongoing.articles(stock_changed_from=datetime(2026, 11, 2, 11, 0))
    assert env.fake.requests == []
    # Just inside the window is fine.
    pages = [p async for p in ongoing.articles(stock_changed_from=env.clock.now - timedelta(hours=23))]
    assert pages == []
