"""Retry-After at the HTTP edge: read whatever its case, capped, so a server asking for an hour stalls no one."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import aiohttp
import pytest

from pipeline.clients.http import RetryPolicy, retry_after_seconds, send
from pipeline.clients.ongoing import OngoingClient
from pipeline.clients.poweroffice import PowerOfficeClient
from pipeline.clients.ratelimit import Grant, RateLimiter
from pipeline.config import OngoingSettings, PowerOfficeSettings, Secret, TenantSettings
from pipeline.errors import RateLimitedError, TransientApiError
from pipeline.fakes.faults import Fault
from pipeline.fakes.generate import generate_company
from pipeline.fakes.ongoing import FakeOngoing, serve_ongoing
from pipeline.fakes.poweroffice import FakePowerOffice, serve_poweroffice
from tests.test_ratelimit import VirtualTime

APP = "retry-application-key"
SUB = "retry-subscription-key"
NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def ongoing_url() -> AsyncIterator[tuple[FakeOngoing, str]]:
    fake = FakeOngoing(username="wms", password="retry-wms-password")
    async with serve_ongoing(fake) as url:
        yield fake, url


@pytest.mark.anyio
@pytest.mark.parametrize("name", ["retry-after", "RETRY-AFTER", "Retry-After"])
async def test_retry_after_is_read_whatever_its_case(
    name: str, http: aiohttp.ClientSession, ongoing_url: tuple[FakeOngoing, str]
) -> None:
    """A lowercase `retry-after` on a 429 (and on a 503) is honoured like `Retry-After`."""
    fake, url = ongoing_url
    fake.faults.add(Fault("status", status=429, headers=((name, "7"),)), path="/articles", times=1)
    fake.faults.add(Fault("status", status=503, headers=((name, "3"),)), path="/articles", times=1)
    with pytest.raises(RateLimitedError) as limited:
        await send(http, "ongoing", "GET", f"{url}/articles", "/articles")
    assert limited.value.retry_after == 7
    with pytest.raises(TransientApiError) as unavailable:
        await send(http, "ongoing", "GET", f"{url}/articles", "/articles")
    assert unavailable.value.retry_after == 3


@pytest.mark.anyio
async def test_retry_after_is_capped(http: aiohttp.ClientSession, ongoing_url: tuple[FakeOngoing, str]) -> None:
    """3600 seconds, or a date an hour away, is taken as the cap (30 s by default, or the caller's)."""
    fake, url = ongoing_url
    in_an_hour = format_datetime(datetime.now(UTC) + timedelta(hours=1), usegmt=True)
    fake.faults.add(Fault("status", status=429, retry_after="3600"), path="/articles", times=1)
    fake.faults.add(Fault("status", status=503, retry_after=in_an_hour), path="/articles", times=1)
    fake.faults.add(Fault("status", status=429, retry_after="3600"), path="/articles", times=1)
    for cap, expected in ((30.0, 30.0), (30.0, 30.0), (5.0, 5.0)):
        options = {} if cap == 30.0 else {"retry_after_cap": cap}  # 30 s is the default
        with pytest.raises(TransientApiError) as caught:
            await send(http, "ongoing", "GET", f"{url}/articles", "/articles", **options)
        assert caught.value.retry_after == expected


def test_retry_after_parsing() -> None:
    """Seconds or an HTTP date; never negative, never above the cap; junk is None."""
    now = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
    assert retry_after_seconds("12", now) == 12
    assert retry_after_seconds(" 1.5 ", now) == 1.5
    assert retry_after_seconds("-4", now) == 0
    assert retry_after_seconds("3600", now) == 30
    assert retry_after_seconds("3600", now, cap=120) == 120
    assert retry_after_seconds(format_datetime(now + timedelta(seconds=20), usegmt=True), now) == 20
    assert retry_after_seconds(format_datetime(now - timedelta(seconds=20), usegmt=True), now) == 0
    for junk in (None, "", "soon", "nan", "Mon, 99 Foo"):
        assert retry_after_seconds(junk, now) is None


class PauseLog(RateLimiter):
    """The real limiter on virtual time, noting each 429 it was told about (virtual time, seconds)."""

    def __init__(self, time: VirtualTime) -> None:
        super().__init__(1000, clock=time.clock, sleep=time.sleep, window_margin=0)
        self.time = time
        self.told: list[tuple[float, float]] = []

    def throttled(self, grant: Grant, seconds: float) -> None:
        self.told.append((self.time.now, seconds))
        super().throttled(grant, seconds)


@pytest.mark.anyio
@pytest.mark.parametrize(("cap", "expected"), [(None, 30.0), (5.0, 5.0)])
async def test_retry_after_3600_pauses_every_tenant_on_the_key_only_up_to_the_cap(
    cap: float | None, expected: float, http: aiohttp.ClientSession
) -> None:
    """A 429 saying 3600 for one tenant holds the key (every tenant) for the cap, not an hour; then both go on.
    The cap is the config's `retry_after_cap_seconds` (30 s by default)."""
    fake = FakePowerOffice(application_key=APP, subscription_keys=[SUB], requests_per_second=1000)
    fake.add_company("retry-client-a", generate_company(1, products=5, customers=2, invoices=2, now=NOW))
    fake.add_company("retry-client-b", generate_company(2, products=5, customers=2, invoices=2, now=NOW))
    fake.faults.add(Fault("status", status=429, retry_after="3600"), path="/Products", times=1)
    time = VirtualTime()
    limiter = PauseLog(time)
    async with serve_poweroffice(fake) as origin:
        settings = PowerOfficeSettings(
            api_url=f"{origin}/v2",
            token_url=f"{origin}/OAuth/Token",
            application_key=Secret(APP),
            subscription_key=Secret(SUB),
            **({} if cap is None else {"retry_after_cap_seconds": cap}),
        )
        client = PowerOfficeClient(http, settings, limiter, policy=RetryPolicy(rate_limit_wait=0.05))
        a = client.for_tenant(TenantSettings(name="a", poweroffice_client_key=Secret("retry-client-a")))
        b = client.for_tenant(TenantSettings(name="b", poweroffice_client_key=Secret("retry-client-b")))
        products_a = [p async for page in a.products() for p in page]
        paused_at = time.now
        products_b = [p async for page in b.products() for p in page]
    assert len(products_a) == len(products_b) == 5
    assert limiter.told == [(pytest.approx(0.0), expected)]
    assert time.now == pytest.approx(paused_at)  # the pause was already served by the retry of a
    assert paused_at == pytest.approx(expected)


@pytest.mark.anyio
async def test_ongoing_settings_cap_reaches_the_edge(
    http: aiohttp.ClientSession, ongoing_url: tuple[FakeOngoing, str]
) -> None:
    """The Ongoing client passes its `retry_after_cap_seconds` to the edge: a 503 saying 3600 carries the cap."""
    fake, url = ongoing_url
    fake.faults.add(Fault("status", status=503, retry_after="3600"), path="/orders", times=None)
    settings = OngoingSettings(
        api_url=url, username="wms", password=Secret("retry-wms-password"), retry_after_cap_seconds=2.0
    )
    client = OngoingClient(http, settings, policy=RetryPolicy(attempts=2))
    owner = client.for_tenant(TenantSettings(name="acme", poweroffice_client_key=Secret("x"), ongoing_goods_owner_id=1))
    with pytest.raises(TransientApiError) as caught:
        await owner.find_order("ORDER-1")
    assert caught.value.retry_after == 2.0
