"""A long run against the fakes keeps flat memory: the fake's request log keeps only the newest requests."""

from __future__ import annotations

import aiohttp
import pytest

from pipeline.fakes.poweroffice import FakePowerOffice, serve_poweroffice


@pytest.mark.anyio
async def test_poweroffice_fake_keeps_a_bounded_request_log() -> None:
    """Past twice `requests_kept` the oldest requests are dropped; `requests_served` still counts every one."""
    fake = FakePowerOffice(application_key="app", subscription_keys=["sub"], requests_per_second=float("inf"))
    fake.requests_kept = 5
    async with serve_poweroffice(fake) as origin, aiohttp.ClientSession() as session:
        for i in range(23):
            async with session.get(f"{origin}/v2/Products?n={i}") as resp:
                await resp.read()
    assert fake.requests_served == 23
    assert 5 <= len(fake.requests) <= 10
    assert fake.requests[-1].query == "n=22"  # the newest are the ones kept
