"""A long run against the fakes keeps flat memory: the fake's request log keeps only the newest requests."""

from __future__ import annotations

import base64

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


@pytest.mark.anyio
async def test_ongoing_fake_keeps_a_bounded_request_log() -> None:
    """The Ongoing fake's log is bounded the same way, and a write still in progress while the log is trimmed is
    completed in its own entry (status and end time filled in), never written over another one."""
    import anyio
    import orjson

    from pipeline.fakes.ongoing import FakeOngoing, serve_ongoing
    from tests.ongoing_schema import article_body

    fake = FakeOngoing(username="wms", password="secret")
    fake.requests_kept = 5
    hold = fake.hold(path="/articles", entity="article:A1")
    auth = {"Authorization": "Basic " + base64.b64encode(b"wms:secret").decode()}
    async with serve_ongoing(fake) as origin, aiohttp.ClientSession(headers=auth) as session:

        async def put() -> None:
            body = orjson.dumps(article_body(1, "A1"))
            headers = {"Content-Type": "application/json"}
            async with session.put(f"{origin}/articles", data=body, headers=headers) as resp:
                await resp.read()

        async with anyio.create_task_group() as tg:
            tg.start_soon(put)
            await hold.reached.wait()
            for i in range(23):
                async with session.get(f"{origin}/articles?goodsOwnerId=1&n={i}") as resp:
                    await resp.read()
            hold.release.set()
    assert fake.requests_served == 24
    assert 5 <= len(fake.requests) <= 10
    assert fake.requests[-1].query.endswith("n=22")
    assert all(r.status != 0 for r in fake.requests)  # every kept entry was completed
    assert all(not r.write for r in fake.requests)  # the trimmed write did not land on a newer entry
