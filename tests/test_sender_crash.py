"""A sender killed (SIGKILL) between the server applying a write and the outcome being recorded, then restarted:
upserts repeat at most once, the order is created exactly once, and every command ends with one success. The first
kill also finds an answer that was received but still waited to be recorded."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from anyio.abc import Process

from pipeline.eventlog.base import NewEvent
from pipeline.eventlog.sqlite import SqliteEventLog
from pipeline.events import COMMAND_TYPES, OUTCOME_TYPES, ArticleUpsertRequested, CommandSucceeded, OrderUpsertRequested
from pipeline.fakes.ongoing import FakeOngoing, Hold, serve_ongoing
from tests.ongoing_schema import article_body, fake_validator, order_body

OWNER = 159
CHILD = Path(__file__).with_name("sender_crash_child.py")
ROOT = Path(__file__).parent.parent

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


async def start(database: Path, url: str, *mode: str) -> Process:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return await anyio.open_process(
        [sys.executable, str(CHILD), str(database), url, *mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )


async def kill_when_parked(process: Process, hold: Hold) -> None:
    """Wait until the fake has applied the held write and parked its answer, then SIGKILL the sender."""
    with anyio.fail_after(30):
        await hold.reached.wait()
    process.send_signal(signal.SIGKILL)
    assert await process.wait() == -signal.SIGKILL
    hold.release.set()
    await process.aclose()


async def successes(database: Path) -> dict[int, int]:
    """command position -> number of CommandSucceeded for it; plus 0 for commands without any outcome."""
    log = await SqliteEventLog.open(database)
    try:
        counts = {s.position: 0 async for s in log.read(types=COMMAND_TYPES)}
        async for stored in log.read(types=OUTCOME_TYPES):
            if isinstance(stored.event, CommandSucceeded):
                counts[stored.event.command] += 1
        return counts
    finally:
        await log.close()


async def test_killed_sender_repeats_an_upsert_at_most_once_and_creates_the_order_once(tmp_path: Path) -> None:
    """Kill during an article write (the previous article's answer not yet recorded), then during the order write;
    the third run finishes the job."""
    database = tmp_path / "log.db"
    fake = FakeOngoing(username="wms", password="pw", validator=fake_validator)
    log = await SqliteEventLog.open(database)
    try:
        commands = [
            ("article:A1", ArticleUpsertRequested(dict(article_body(OWNER, "A1")))),
            ("article:A2", ArticleUpsertRequested(dict(article_body(OWNER, "A2")))),
            (
                "order:inv-1",
                OrderUpsertRequested(
                    dict(order_body(OWNER, "O1", [("A1", 1), ("A2", 3)], invoice_id="inv-1")),
                    invoice_id="inv-1",
                    article_numbers=["A1", "A2"],
                ),
            ),
        ]
        await log.append([NewEvent("acme", entity, event, entity) for entity, event in commands])
    finally:
        await log.close()

    async with serve_ongoing(fake) as url:
        # 1. Killed after Ongoing applied A2 but before the sender read the answer, while A1's answer waited to be
        # recorded (the log takes no outcome in this run): neither is in the log.
        hold = fake.hold(path="/articles$", entity="article:A2")
        await kill_when_parked(await start(database, url, "stuck"), hold)
        assert list((await successes(database)).values()) == [0, 0, 0]
        assert [len(fake.writes(OWNER, f"article:{a}")) for a in ("A1", "A2")] == [1, 1]

        # 2. Restarted: A1 and A2 are sent again (their outcomes were lost); the order goes once both deliveries
        # are in the log, and the sender is killed after Ongoing created it.
        hold = fake.hold(path="/orders$", entity="order:O1")
        await kill_when_parked(await start(database, url), hold)
        assert list((await successes(database)).values()) == [1, 1, 0]
        assert fake.creations(OWNER, "O1") == 1

        # 3. Restarted again: the order is looked up, found open, and upserted (an update, not a creation).
        process = await start(database, url)
        async with process:
            with anyio.fail_after(30):
                code = await process.wait()
            assert process.stderr is not None
            errors = (await process.stderr.receive()).decode() if code else ""
            assert code == 0, errors

    assert list((await successes(database)).values()) == [1, 1, 1]
    assert len(fake.writes(OWNER, "article:A1")) == 2
    assert len(fake.writes(OWNER, "article:A2")) == 2
    assert len(fake.writes(OWNER, "order:O1")) == 2
    assert fake.creations(OWNER, "O1") == 1
    order = fake.order(OWNER, "O1")
    assert order is not None
    assert [line["orderedNumberOfItems"] for line in order["orderLines"]] == [1.0, 3.0]
    assert fake.schema_violations == []
