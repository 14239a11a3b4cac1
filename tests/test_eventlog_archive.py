"""The archiving procedure of docs/design.md ("Keeping the log bounded"), step by step, on a real synced log:
the trimmed live file keeps cycles unchanged and replay working; the dated archive keeps everything."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pipeline.eventlog.sqlite import MIGRATIONS, SqliteEventLog, _split
from pipeline.fakes.world import World, fake_world
from pipeline.replay import replay
from pipeline.runtime import Runtime

NOW = datetime.now(UTC)

# Step 2 of the procedure: what the live log keeps below CUT (every head, and each command a kept success names).
TRIM = """
DELETE FROM events WHERE position < :cut
  AND position NOT IN (SELECT position FROM entity_heads)
  AND position NOT IN (
    SELECT json_extract(payload, '$.command') FROM events
    WHERE type = 'command.succeeded' AND (position >= :cut OR position IN (SELECT position FROM entity_heads)))
"""


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
async def world() -> AsyncIterator[World]:
    async with fake_world(2, products=20, customers=5, invoices=15, now=NOW, requests_per_second=500) as w:
        yield w


def _trim(live: Path, trimmed: Path, archive: Path, cut: int) -> None:
    conn = sqlite3.connect(live, isolation_level=None)
    conn.execute("VACUUM INTO ?", [str(archive)])
    conn.execute("VACUUM INTO ?", [str(trimmed)])
    conn.close()
    no_delete = next(s for s in _split(MIGRATIONS[0]) if "events_no_delete" in s)
    copy = sqlite3.connect(trimmed, isolation_level=None)
    copy.execute("DROP TRIGGER events_no_delete")
    copy.execute(TRIM, {"cut": cut})
    copy.execute(no_delete)
    copy.execute("VACUUM")
    copy.close()


@pytest.mark.anyio
async def test_archived_and_trimmed_log_keeps_cycles_unchanged_and_replay_working(world: World, tmp_path: Path) -> None:
    clock = Clock()
    live = tmp_path / "pipeline.db"
    settings = world.settings(live, requests_per_second=500)
    t = world.tenants[0]
    codes = sorted(p["Code"] for p in t.company.products.values())[:3]
    async with Runtime(settings, clock=clock) as runtime:
        for _ in range(2):
            await runtime.cycle()
        for code in codes:  # history: a price change, synced
            world.poweroffice.set_price(t.client_key, code, 999.0)
        clock.now += timedelta(minutes=10)
        await runtime.cycle()
        await runtime.cycle()
        rows = await runtime.log.query("SELECT min(position) FROM checkpoints")
        cut = int(rows[0][0])
        total = await runtime.log.max_position()

    _trim(live, tmp_path / "trimmed.db", tmp_path / "archive-2026-12-31.db", cut)
    archive = sqlite3.connect(tmp_path / "archive-2026-12-31.db")
    assert archive.execute("SELECT count(*) FROM events").fetchone() == (total,)  # the archive keeps everything
    archive.close()
    shutil.move(live, tmp_path / "pipeline.before-trim.db")
    for suffix in ("-wal", "-shm"):
        (tmp_path / f"pipeline.db{suffix}").unlink(missing_ok=True)
    shutil.move(tmp_path / "trimmed.db", live)

    async with await SqliteEventLog.open(live) as log:
        kept = len(await log.query("SELECT position FROM events"))
        assert kept < total  # something was trimmed
        assert (await log.rebuild_heads()).wrong == 0  # every head survived
        with pytest.raises(Exception, match="append-only"):  # and the live log is append-only again
            await log._writer.execute("DELETE FROM events")

    clock.now += timedelta(minutes=10)
    async with Runtime(settings, clock=clock) as runtime:
        head = await runtime.log.max_position()
        report = await runtime.cycle()
        assert report.exit_code == 0, report
        assert await runtime.log.max_position() == head  # nothing looks new or undelivered after the trim
        world.poweroffice.set_price(t.client_key, codes[0], 1234.0)  # a change still flows through
        clock.now += timedelta(minutes=10)
        await runtime.cycle()
        assert world.ongoing.owner(t.goods_owner_id).articles[codes[0]].model["customerPrice"] == 1234.0
        preview = await replay(
            runtime.log, settings, window_from=NOW - timedelta(hours=1), window_to=clock.now + timedelta(hours=1)
        )
        assert preview.observations > 0
        assert preview.failed == 0
        assert preview.changes == []  # the same mapping over the kept observations: nothing to change
