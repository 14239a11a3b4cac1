"""The real PowerOffice client against the fake server: auth, paging, batching, errors, retries, rate limiting."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs

import aiohttp
import anyio
import anyio.lowlevel
import orjson
import pytest

from pipeline.clients.http import Attempts, RetryPolicy
from pipeline.clients.poweroffice import Page, PowerOfficeClient, TenantPowerOffice, number_ranges
from pipeline.clients.ratelimit import Grant, RateLimiter, max_in_window
from pipeline.config import PowerOfficeSettings, Secret, TenantSettings
from pipeline.errors import AuthError, PermanentApiError, TransientApiError
from pipeline.fakes.faults import Fault
from pipeline.fakes.generate import generate_company
from pipeline.fakes.poweroffice import FakePowerOffice, serve_poweroffice

APP = "application-key-1"
SUB = "subscription-key-1"
ACME = "client-key-acme-0001"
BETA = "client-key-beta-0002"
NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


class WallClock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


class Monotonic:
    """The client's token clock, moved by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class RecordingLimiter(RateLimiter):
    """The real limiter, also noting when it granted slots and when it was paused (monotonic time)."""

    def __init__(self, rps: float, **kwargs: Any) -> None:
        super().__init__(rps, **kwargs)
        self.grants: list[tuple[float, str]] = []
        self.pauses: list[tuple[float, float]] = []

    async def acquire(self, tenant: str) -> Grant:
        grant = await super().acquire(tenant)
        self.grants.append((time.monotonic(), tenant))
        return grant

    def pause(self, seconds: float) -> None:
        self.pauses.append((time.monotonic(), seconds))
        super().pause(seconds)


@dataclass
class Rig:
    fake: FakePowerOffice
    client: PowerOfficeClient
    limiter: RecordingLimiter
    origin: str

    def tenant(self, name: str = "acme", key: str = ACME) -> TenantPowerOffice:
        return self.client.for_tenant(TenantSettings(name=name, poweroffice_client_key=Secret(key)))


def make_fake(**kwargs: Any) -> FakePowerOffice:
    options: dict[str, Any] = {"requests_per_second": 1000, "clock": WallClock()}
    options.update(kwargs)
    fake = FakePowerOffice(application_key=APP, subscription_keys=[SUB], **options)
    fake.add_company(ACME, generate_company(11, products=30, customers=20, invoices=40, now=NOW))
    fake.add_company(BETA, generate_company(12, products=10, customers=5, invoices=10, now=NOW))
    return fake


@asynccontextmanager
async def rig(
    fake: FakePowerOffice | None = None,
    *,
    rps: float = 1000,
    margin: float = 0.0,
    page_size: int = 5000,
    timeout: float = 5.0,
    policy: RetryPolicy | None = None,
    clock: Monotonic | None = None,
) -> AsyncIterator[Rig]:
    fake = fake or make_fake()
    limiter = RecordingLimiter(rps, window_margin=margin)
    async with serve_poweroffice(fake) as origin, aiohttp.ClientSession() as session:
        settings = PowerOfficeSettings(
            api_url=f"{origin}/v2",
            token_url=f"{origin}/OAuth/Token",
            application_key=Secret(APP),
            subscription_key=Secret(SUB),
            requests_per_second=rps,
            page_size=page_size,
            timeout_seconds=timeout,
        )
        client = PowerOfficeClient(
            session,
            settings,
            limiter,
            policy=policy or RetryPolicy(rate_limit_wait=0.05),
            clock=clock or time.monotonic,
        )
        yield Rig(fake, client, limiter, origin)


async def all_pages(pages: AsyncIterator[Page]) -> list[Page]:
    return [page async for page in pages]


def calls(fake: FakePowerOffice) -> list[tuple[str, str, int]]:
    """(method, lower-case path, status) of every logged request."""
    return [(r.method, r.path.lower(), r.status) for r in fake.requests]


# --------------------------------------------------------------------------------------------------- auth


@pytest.mark.anyio
async def test_wrong_client_key_is_a_permanent_auth_error_naming_the_tenant() -> None:
    """invalid_client becomes AuthError naming the tenant, never the key, after exactly one token request."""
    async with rig() as r:
        tenant = r.tenant("gamma", "client-key-that-does-not-exist")
        with pytest.raises(AuthError) as caught:
            await all_pages(tenant.products())
    error = caught.value
    assert error.status == 400
    assert error.tenant == "gamma"
    assert "gamma" in str(error)
    assert "invalid_client" in str(error)
    assert "client-key-that-does-not-exist" not in str(error)
    assert APP not in str(error)
    assert not error.transient
    assert calls(r.fake) == [("POST", "/oauth/token", 400)]


@pytest.mark.anyio
async def test_token_is_cached_and_shared_by_concurrent_calls() -> None:
    """Many concurrent calls of one tenant share one token request; another tenant gets its own token."""
    async with rig() as r:
        acme, beta = r.tenant(), r.tenant("beta", BETA)
        async with anyio.create_task_group() as group:
            for _ in range(8):
                group.start_soon(all_pages, acme.product_groups())
        await all_pages(beta.product_groups())
        await all_pages(acme.product_groups())
    tokens = [c for c in calls(r.fake) if c[1] == "/oauth/token"]
    assert len(tokens) == 2
    assert r.fake.tokens_issued == 2


@pytest.mark.anyio
async def test_token_expiring_mid_run_is_renewed_once_and_the_page_retried() -> None:
    """A token the server expires between pages gets a 401, one renewal, and the read carries on."""
    clock = WallClock()
    fake = make_fake(clock=clock, token_ttl=1200)
    async with rig(fake, page_size=10) as r:
        pages = []
        async for page in r.tenant().products():
            pages.append(page)
            clock.now += timedelta(seconds=1300)  # the server's clock passes the token's lifetime
    assert [len(p) for p in pages] == [10, 10, 10]
    assert calls(fake) == [
        ("POST", "/oauth/token", 200),
        ("GET", "/v2/products", 200),
        ("GET", "/v2/products", 401),
        ("POST", "/oauth/token", 200),
        ("GET", "/v2/products", 200),
        ("GET", "/v2/products", 401),
        ("POST", "/oauth/token", 200),
        ("GET", "/v2/products", 200),
        # The third page was full: paging goes on until a short page or a 204 (rule 5).
        ("GET", "/v2/products", 401),
        ("POST", "/oauth/token", 200),
        ("GET", "/v2/products", 204),
    ]


class QueuedLimiter(RecordingLimiter):
    """Each grant comes `wait` seconds (on the test's clocks) after it was asked for: a thousand tenants ahead."""

    def __init__(self, rps: float, advance: Callable[[float], None], wait: float) -> None:
        super().__init__(rps)
        self.advance = advance
        self.wait = wait

    async def acquire(self, tenant: str) -> Grant:
        self.advance(self.wait)
        return await super().acquire(tenant)


@pytest.mark.anyio
async def test_a_token_is_read_when_its_request_may_start_not_before_its_wait_at_the_limiter() -> None:
    """With a thousand tenants on one key a grant comes ~100 s after it was asked for, longer than the renewal
    margin. A token that was valid when the request began to wait, but is due for renewal when the request may
    start, is renewed with that grant, and the call then goes with the fresh token: no request is spent on a 401."""
    clock, wall = Monotonic(), WallClock()

    def advance(seconds: float) -> None:
        clock.now += seconds
        wall.now += timedelta(seconds=seconds)

    fake = make_fake(clock=wall, token_ttl=1200)
    async with rig(fake, clock=clock) as r:
        tenant = r.tenant()
        await all_pages(tenant.product_groups())  # a token: renewed from 1140 s on, expired at 1200 s
        r.client.limiter = QueuedLimiter(1000, advance, 100.0)
        advance(1110)  # 30 s before its renewal: still good to start waiting with
        await all_pages(tenant.product_groups())
    assert calls(fake)[2:] == [("POST", "/oauth/token", 200), ("GET", "/v2/productgroups", 200)]


@pytest.mark.anyio
async def test_token_is_renewed_ahead_of_its_expiry() -> None:
    """Once `expires_in` minus the renewal margin has passed on the client's clock, a new token is fetched
    before the call, so no request is wasted on a 401."""
    clock = Monotonic()
    async with rig(make_fake(token_ttl=1200), clock=clock) as r:
        tenant = r.tenant()
        await all_pages(tenant.product_groups())
        clock.now += 1139  # still inside the lifetime less 60 s
        await all_pages(tenant.product_groups())
        clock.now += 2
        await all_pages(tenant.product_groups())
    assert [c[1] for c in calls(r.fake)] == [
        "/oauth/token",
        "/v2/productgroups",
        "/v2/productgroups",
        "/oauth/token",
        "/v2/productgroups",
    ]
    assert all(c[2] == 200 for c in calls(r.fake))


@pytest.mark.anyio
async def test_a_second_401_after_renewal_is_an_auth_error() -> None:
    """If the fresh token is refused too, the call fails with AuthError instead of looping."""
    fake = make_fake()
    fake.faults.add(Fault("status", status=401, body=b""), path="/v2/productgroups", times=2)
    async with rig(fake) as r:
        with pytest.raises(AuthError) as caught:
            await all_pages(r.tenant().product_groups())
    assert caught.value.status == 401
    assert [c[1:] for c in calls(fake)] == [
        ("/oauth/token", 200),
        ("/v2/productgroups", 401),
        ("/oauth/token", 200),
        ("/v2/productgroups", 401),
    ]


@pytest.mark.anyio
@pytest.mark.parametrize("status", [401, 403])
async def test_rule4_refused_access_on_a_read_is_an_auth_error(status: int) -> None:
    """A 403 (a missing privilege or module) is the tenant's setup, like a 401 that a renewal does not cure:
    both are an AuthError naming the tenant, so the runtime stops that tenant's stage and quarantines nothing."""
    fake = make_fake()
    fake.faults.add(Fault("status", status=status, body=b'{"Message":"denied"}'), path="/v2/products", times=None)
    async with rig(fake) as r:
        with pytest.raises(AuthError) as caught:
            await all_pages(r.tenant().products())
    assert caught.value.status == status
    assert caught.value.tenant == "acme"
    assert ACME not in str(caught.value)


@pytest.mark.anyio
async def test_rule12_a_page_with_one_unparsable_record_is_read_leniently() -> None:
    """A literal NaN in one record makes orjson refuse the page; every other record still arrives as parsed,
    and the bad one comes back as rejected, with its Id and the field named."""
    fake = make_fake()
    products = fake.company(ACME).products
    bad_id = sorted(products)[3]
    products[bad_id]["UnitPrice"] = orjson.Fragment(b"NaN")
    async with rig(fake, page_size=10) as r:
        pages = await all_pages(r.tenant().products())
    assert [p.size for p in pages] == [10, 10, 10]
    assert [p["Id"] for page in pages for p in page] == [i for i in sorted(products) if i != bad_id]
    (rejected,) = pages[0].rejected
    assert rejected.readable["Id"] == bad_id
    assert rejected.fields == ("UnitPrice",)
    assert '"UnitPrice":NaN' in rejected.raw


@pytest.mark.anyio
async def test_every_request_goes_through_the_limiter() -> None:
    """Token calls and API calls alike take a limiter slot under the tenant's name."""
    async with rig() as r:
        await all_pages(r.tenant().product_groups())
        await all_pages(r.tenant("beta", BETA).product_groups())
    assert [t for _, t in r.limiter.grants] == ["acme", "acme", "beta", "beta"]
    assert len(r.fake.requests) == 4


# ------------------------------------------------------------------------------------------------- paging


@pytest.mark.anyio
async def test_three_full_pages_then_a_204() -> None:
    """30 products in pages of 10: the last page is full, so a fourth request (a 204) proves the end, although
    the header names no next page."""
    async with rig(page_size=10) as r:
        tenant = r.tenant()
        pages = await all_pages(tenant.products())
    assert [len(p) for p in pages] == [10, 10, 10]
    assert [p["Id"] for page in pages for p in page] == sorted(r.fake.company(ACME).products)
    product_calls = [x for x in r.fake.requests if x.path.lower() == "/v2/products"]
    assert [parse_qs(x.query) for x in product_calls] == [
        {"PageNumber": [str(n)], "PageSize": ["10"]} for n in (1, 2, 3, 4)
    ]
    assert [x.status for x in product_calls] == [200, 200, 200, 204]
    assert tenant.requests == 5


@pytest.mark.anyio
async def test_rule5_header_without_next_page_link_does_not_end_paging() -> None:
    """An X-Pagination header that never names a next page (seen from third parties) must not end paging on a
    full page: every record is read, until a short page."""
    fake = make_fake()
    fake.pagination_links = False
    async with rig(fake) as r:
        pages = await all_pages(r.tenant().products(page_size=7))
    assert [len(p) for p in pages] == [7, 7, 7, 7, 2]
    assert [p["Id"] for page in pages for p in page] == sorted(fake.company(ACME).products)


@pytest.mark.anyio
async def test_rule5_a_server_capping_the_page_size_is_followed_by_its_links() -> None:
    """A server that serves fewer records than asked, but says there is a next page, is read to the end."""
    fake = make_fake()
    fake.page_size_cap = 8
    async with rig(fake) as r:
        pages = await all_pages(r.tenant().products(page_size=20))
    assert [len(p) for p in pages] == [8, 8, 8, 6]
    assert [p["Id"] for page in pages for p in page] == sorted(fake.company(ACME).products)


@pytest.mark.anyio
async def test_rule5_a_server_ignoring_page_number_fails_instead_of_looping() -> None:
    """The same full page again means the server ignores PageNumber: a clear error, not an endless read."""
    fake = make_fake()
    fake.pagination_header = False
    async with rig(fake) as r:
        body = orjson.dumps([{"Id": n} for n in range(10)])
        fake.faults.add(Fault("status", status=200, body=body), path="/v2/products", times=None)
        with pytest.raises(PermanentApiError, match="paging did not advance"):
            await all_pages(r.tenant().products(page_size=10))


@pytest.mark.anyio
async def test_pages_carry_the_server_date() -> None:
    """Each page carries the server's `Date` (whole seconds, from the fake's clock)."""
    clock = WallClock()
    clock.now = datetime(2026, 3, 2, 12, 0, 5, 750_000, tzinfo=UTC)
    async with rig(make_fake(clock=clock)) as r:
        pages = await all_pages(r.tenant().products())
    assert pages[0].server_time == datetime(2026, 3, 2, 12, 0, 5, tzinfo=UTC)


@pytest.mark.anyio
async def test_without_pagination_header_pages_until_short_page_or_204() -> None:
    """With no X-Pagination header the client reads until a short page, or a 204 after full pages."""
    fake = make_fake()
    fake.pagination_header = False
    async with rig(fake) as r:
        tenant = r.tenant()
        exact = await all_pages(tenant.products(page_size=10))
        short = await all_pages(tenant.products(page_size=7))
    statuses = [x.status for x in fake.requests if x.path.lower() == "/v2/products"]
    assert [len(p) for p in exact] == [10, 10, 10]
    assert [len(p) for p in short] == [7, 7, 7, 7, 2]
    assert statuses == [200, 200, 200, 204] + [200] * 5


@pytest.mark.anyio
async def test_empty_result_is_a_204_and_no_pages() -> None:
    """A change filter after every record gives a 204 with no body: no pages, one request."""
    async with rig() as r:
        pages = await all_pages(r.tenant().products(changed_after=NOW + timedelta(days=1)))
    assert pages == []
    assert calls(r.fake)[-1] == ("GET", "/v2/products", 204)
    assert "lastChangedDateTimeOffsetGreaterThan=2026-03-03T12:00:00.000000Z" in r.fake.requests[-1].query


@pytest.mark.anyio
async def test_change_filters_are_sent_and_strict() -> None:
    """changed_after and balance_changed_after reach the server as filters that exclude the boundary."""
    clock = WallClock()
    fake = make_fake(clock=clock)
    clock.now = NOW + timedelta(hours=1)
    price = fake.set_price(ACME, "P-00004", 10.0)
    invoice_id = next(
        i["Id"]
        for i in fake.company(ACME).invoices.values()
        if i["Balance"] != 0 and i["VoucherType"] == "OutgoingInvoice"
    )
    fake.pay_invoice(ACME, invoice_id)
    async with rig(fake) as r:
        tenant = r.tenant()
        changed = await all_pages(tenant.products(changed_after=NOW))
        boundary = await all_pages(tenant.products(changed_after=clock.now))
        paid = await all_pages(tenant.outgoing_invoices(balance_changed_after=NOW))
    assert [[p["Code"] for p in page] for page in changed] == [["P-00004"]]
    assert changed[0][0] == price
    assert boundary == []
    assert [[i["Id"] for i in page] for page in paid] == [[invoice_id]]


# ----------------------------------------------------------------------------------------------- batching


def test_number_ranges_compress_runs() -> None:
    """Consecutive numbers become ranges; duplicates and order do not matter."""
    assert number_ranges([7, 1, 2, 3, 3, 9, 10]) == ["1-3", "7", "9-10"]
    assert number_ranges([]) == []


@pytest.mark.anyio
async def test_customers_by_numbers_batches_under_the_url_limit() -> None:
    """600 scattered numbers are split over several requests, each URL short enough; runs go as ranges."""
    fake = make_fake()
    fake.add_company(BETA, generate_company(12, products=5, customers=1300, invoices=0, now=NOW))
    wanted = list(range(10000, 11200, 2))
    async with rig(fake) as r:
        tenant = r.tenant("beta", BETA)
        scattered = await tenant.customers_by_numbers(wanted)
        before = len(fake.requests)
        ranged = await tenant.customers_by_numbers(range(10000, 11300))
        ranged_requests = len(fake.requests) - before
    customer_calls = [x for x in fake.requests if x.path.lower() == "/v2/customers"]
    assert sorted(c["Number"] for c in scattered) == wanted
    assert len(customer_calls) - ranged_requests >= 2
    assert all(x.status == 200 for x in customer_calls)
    assert all(len(r.origin) + len(x.path) + len(x.query) + 1 < 2000 for x in customer_calls)
    assert len(ranged) == 1300
    assert ranged_requests == 1
    assert "customerNos=10000-11299" in customer_calls[-1].query


@pytest.mark.anyio
async def test_delivery_addresses_by_contact_ids() -> None:
    """Delivery addresses come back for exactly the contacts asked for."""
    async with rig() as r:
        company = r.fake.company(ACME)
        contacts = sorted({a["ContactId"] for a in company.delivery_addresses.values()})[:5]
        addresses = await r.tenant().delivery_addresses([*contacts, 999_999_999])
    expected = [a for a in company.delivery_addresses.values() if a["ContactId"] in contacts]
    assert sorted(a["Id"] for a in addresses) == sorted(a["Id"] for a in expected)


@pytest.mark.anyio
async def test_invoice_lines_and_unknown_invoice() -> None:
    """Lines come from /OutgoingInvoices/{id}/Lines; an unknown invoice is a permanent 404."""
    async with rig() as r:
        company = r.fake.company(ACME)
        invoice_id = next(iter(company.invoices))
        lines = await r.tenant().invoice_lines(invoice_id)
        with pytest.raises(PermanentApiError) as caught:
            await r.tenant().invoice_lines("00000000-0000-4000-8000-000000000000")
    assert lines == company.invoice_lines[invoice_id]
    assert caught.value.status == 404
    assert caught.value.path == "/v2/OutgoingInvoices/00000000-0000-4000-8000-000000000000/Lines"


# -------------------------------------------------------------------------------------------------- writes


@pytest.mark.anyio
async def test_patch_stock_on_hand_returns_the_product() -> None:
    """The JSON-Patch is accepted (the fake insists on application/json-patch+json) and the product returned."""
    async with rig() as r:
        product = next(p for p in r.fake.company(ACME).products.values() if p["IsStockItem"])
        answered = await r.tenant().patch_stock_on_hand(product["Id"], 12.5)
    assert answered["Id"] == product["Id"]
    assert answered["StockOnHand"] == 12.5
    assert r.fake.company(ACME).products[product["Id"]]["StockOnHand"] == 12.5


# -------------------------------------------------------------------------------------------------- errors


@pytest.mark.anyio
async def test_server_errors_then_success_are_retried() -> None:
    """Two 503s then success: the call succeeds and reports three attempts."""
    fake = make_fake()
    fake.faults.add(Fault("status", status=503), path="/v2/productgroups", times=2)
    attempts = Attempts()
    async with rig(fake) as r:
        pages = await all_pages(r.tenant().product_groups(attempts=attempts))
    assert len(pages[0]) == len(fake.company(ACME).product_groups)
    assert attempts.count == 3
    assert [x.status for x in fake.requests if x.path.lower() == "/v2/productgroups"] == [503, 503, 200]


@pytest.mark.anyio
async def test_timeouts_and_dropped_connections_are_retried() -> None:
    """A request that hangs past the client's timeout, and dropped connections, are retried to success."""
    fake = make_fake()
    fake.faults.add(Fault("hang", seconds=0.5), path="/v2/products/", times=1)
    fake.faults.add(Fault("drop"), path="/v2/productgroups", times=2)
    async with rig(fake, timeout=0.2) as r:
        product = next(p for p in fake.company(ACME).products.values() if p["IsStockItem"])
        attempts = Attempts()
        patched = await r.tenant().patch_stock_on_hand(product["Id"], 3, attempts=attempts)
        groups = await all_pages(r.tenant().product_groups())
    assert patched["StockOnHand"] == 3
    assert attempts.count == 2
    assert len(groups[0]) == len(fake.company(ACME).product_groups)


@pytest.mark.anyio
async def test_transient_errors_give_up_after_the_bounded_attempts() -> None:
    """A server that keeps failing is given up on after the policy's attempts, with a transient error."""
    fake = make_fake()
    fake.faults.add(Fault("status", status=502), path="/v2/productgroups", times=None)
    attempts = Attempts()
    async with rig(fake, policy=RetryPolicy(attempts=3)) as r:
        with pytest.raises(TransientApiError) as caught:
            await all_pages(r.tenant().product_groups(attempts=attempts))
    assert caught.value.status == 502
    assert attempts.count == 3


@pytest.mark.anyio
async def test_permanent_4xx_is_not_retried_and_carries_context() -> None:
    """A 400 on a stock patch of a non-stock item fails at once with status, method, path and detail."""
    async with rig() as r:
        service = next(p for p in r.fake.company(ACME).products.values() if not p["IsStockItem"])
        attempts = Attempts()
        with pytest.raises(PermanentApiError) as caught:
            await r.tenant().patch_stock_on_hand(service["Id"], 5, attempts=attempts)
    error = caught.value
    assert attempts.count == 1
    assert (error.status, error.method, error.path, error.tenant) == (
        400,
        "PATCH",
        f"/v2/Products/{service['Id']}",
        "acme",
    )
    assert "IsStockItem" in error.detail
    assert not isinstance(error, AuthError)


@pytest.mark.anyio
@pytest.mark.parametrize(
    "body",
    [
        b'{"Title":"Object(s) not found","Status":404,"Detail":"Product with id = 5 not found."}',
        b'{"title":"Object(s) not found","status":404,"detail":"Product with id = 5 not found."}',
    ],
    ids=["pascal-case", "lower-case"],
)
async def test_problem_details_in_either_key_case(body: bytes) -> None:
    """ProblemDetails are read whatever the key case: the error carries title and detail."""
    fake = make_fake()
    fake.faults.add(Fault("status", status=404, body=body), path="/v2/products")
    async with rig(fake) as r:
        with pytest.raises(PermanentApiError) as caught:
            await all_pages(r.tenant().products())
    assert caught.value.detail == "Object(s) not found - Product with id = 5 not found."


# ---------------------------------------------------------------------------------------------- rate limit


async def settle(condition: Callable[[], bool]) -> None:
    """Let other tasks run until `condition` holds (bounded; waits on I/O, never on a timer)."""
    for _ in range(10_000):
        if condition():
            return
        await anyio.lowlevel.checkpoint()
    raise AssertionError("condition never became true")


@pytest.mark.anyio
async def test_429_bursts_with_two_tenants_on_one_key() -> None:
    """Two tenants share a 25 rps key. The big one queues 75 reads (three windows' worth); the small one's 3
    reads, queued after them, are served in turn with the backlog (FIFO would put them after all 75). 429s pause the
    whole key and are retried; no one-second window at the server holds more than 25 requests."""
    rps = 25
    fake = make_fake(requests_per_second=rps)
    fake.faults.add(
        Fault(
            "status",
            status=429,
            body=b'{"statusCode":"429","message":"Rate limit is exceeded. Try again in 1 seconds."}',
            retry_after="0.2",
        ),
        path="/lines",
        times=2,
    )
    big_ids = list(fake.company(ACME).invoices)[:25] * 3
    small_ids = list(fake.company(BETA).invoices)[:3]
    async with rig(fake, rps=rps, margin=0.1, policy=RetryPolicy(rate_limit_wait=0.2)) as r:
        big, small = r.tenant(), r.tenant("beta", BETA)
        await all_pages(big.product_groups())  # tokens first, so only line reads compete below
        await all_pages(small.product_groups())
        start = time.monotonic()

        async def read_lines(tenant: TenantPowerOffice, ids: list[str]) -> None:
            async with anyio.create_task_group() as group:
                for invoice_id in ids:
                    group.start_soon(tenant.invoice_lines, invoice_id)

        async with anyio.create_task_group() as outer:
            outer.start_soon(read_lines, big, big_ids)
            await settle(lambda: r.limiter.waiting >= 40)  # the big tenant's backlog is queued
            await read_lines(small, small_ids)
            small_took = time.monotonic() - start
            big_backlog = r.limiter.waiting
            outer.cancel_scope.cancel()  # the rest of the backlog proves nothing more

    small_reads = [x for x in fake.requests_of(BETA) if x.path.lower().endswith("/lines")]
    assert [x.status for x in small_reads] == [200, 200, 200]
    assert small_took < 1.6  # round-robin: within the first or second window; FIFO: behind all 75 (> 2 s)
    assert big_backlog >= 20
    assert [x.status for x in fake.requests].count(429) == 2
    assert max_in_window(x.at for x in fake.requests) <= rps
    assert len(r.limiter.pauses) == 2
    for paused_at, seconds in r.limiter.pauses:
        assert seconds == pytest.approx(0.2)
        assert not [g for g, _ in r.limiter.grants if paused_at < g < paused_at + seconds - 0.01]
