"""The PostgreSQL event log: the shared contract, plus what only the database can show.

These tests need a server: set `PIPELINE_TEST_POSTGRES` to a DSN (`.ci/run` starts one and sets it). Without it
they skip, saying so. Each test works in a schema of its own, dropped at the end of the session.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from pipeline import events as ev
from pipeline.errors import CodecError, SchemaVersionError, StoreError
from pipeline.eventlog import is_postgres, open_log
from pipeline.eventlog.base import EventLog, NewEvent
from tests import postgres_server
from tests.eventlog_contract import EventLogContract, StepClock, product
from tests.postgres_server import drop_schemas, schema_dsn, unavailable

DSN = os.environ.get("PIPELINE_TEST_POSTGRES", "")
PREFIX = "pipeline_test_"

pytestmark = pytest.mark.skipif(unavailable() is not None, reason=unavailable() or "")


@pytest.fixture(scope="module", autouse=True)
def _clean_schemas() -> Iterator[None]:
    drop_schemas(PREFIX)
    yield
    drop_schemas(PREFIX)


def new_schema() -> str:
    return postgres_server.new_schema(PREFIX)


async def open_pg(clock: StepClock | None = None, schema: str | None = None, **kw: Any) -> Any:
    from pipeline.eventlog.postgres import PostgresEventLog

    return await PostgresEventLog.open(DSN, clock=clock or StepClock(), schema=schema or new_schema(), **kw)


async def connect(schema: str) -> Any:
    import asyncpg

    return await asyncpg.connect(DSN, server_settings={"search_path": schema})


class TestPostgresContract(EventLogContract):
    async def open_log(self, path: Path, clock: StepClock) -> EventLog:
        log: EventLog = await open_pg(clock)
        return log


@pytest.fixture
def schema() -> str:
    return new_schema()


@pytest.mark.anyio
async def test_database_refuses_update_delete_and_truncate(schema: str) -> None:
    """Triggers in the database refuse UPDATE, DELETE and TRUNCATE on events, whoever connects."""
    import asyncpg

    async with await open_pg(schema=schema) as log:
        await log.append([product("a", 1, 1.0)])
    conn = await connect(schema)
    try:
        for statement in ("UPDATE events SET tenant = 'x'", "DELETE FROM events", "TRUNCATE events"):
            with pytest.raises(asyncpg.RaiseError, match="append-only"):
                await conn.execute(statement)
        assert await conn.fetchval("SELECT count(*) FROM events") == 1
    finally:
        await conn.close()


@pytest.mark.anyio
async def test_positions_dense_and_heads_kept_in_the_append(schema: str) -> None:
    """Skipped duplicates (stored before, or repeated inside one append) use no position; heads follow at once."""
    async with await open_pg(schema=schema) as log:
        await log.append([product("a", 1, 1.0)])
        result = await log.append([product("a", 1, 1.0), product("a", 2, 1.0), product("a", 2, 1.0)])
        assert (result.appended, result.skipped) == (1, 2)
        await log.append([product("a", 1, 2.0)])
        assert [e.position async for e in log.read()] == [1, 2, 3]
    conn = await connect(schema)
    try:
        heads = await conn.fetch("SELECT entity, position FROM entity_heads ORDER BY entity")
        assert [tuple(r) for r in heads] == [("product:1", 3), ("product:2", 2)]
    finally:
        await conn.close()


@pytest.mark.anyio
async def test_rebuild_heads_repairs_and_counts(schema: str) -> None:
    """rebuild_heads() recomputes entity_heads from the events and says how many rows were wrong or missing."""
    async with await open_pg(schema=schema) as log:
        await log.append([product("a", 1, 1.0), product("a", 2, 1.0), product("a", 1, 2.0)])
        assert (await log.rebuild_heads()).wrong == 0
        conn = await connect(schema)
        try:
            await conn.execute("UPDATE entity_heads SET position = 1 WHERE entity = 'product:1'")
            await conn.execute("DELETE FROM entity_heads WHERE entity = 'product:2'")
        finally:
            await conn.close()
        done = await log.rebuild_heads()
        assert (done.heads, done.wrong) == (2, 2)
        assert (await log.latest(["product.observed"]))[("a", "product:1")].position == 3


@pytest.mark.anyio
async def test_flags_kept_by_append_equal_flags_rebuilt_and_repaired(schema: str) -> None:
    """entity_flags, kept by the statement trigger (several events of one entity in one append), equals the table
    rebuilt from the log; damaged rows are put right by rebuild_heads and counted."""
    import random

    from tests.eventlog_contract import flagging_history

    async with await open_pg(schema=schema) as log:
        rng = random.Random(8)
        for batch in range(10):
            await log.append(flagging_history(rng, 40, batch * 40))
        conn = await connect(schema)
        try:
            query = "SELECT tenant, grp, entity, type, position FROM entity_flags ORDER BY 1, 2, 3"
            maintained = [tuple(r) for r in await conn.fetch(query)]
            assert len(maintained) >= 3
            done = await log.rebuild_heads()
            assert (done.flags, done.wrong) == (len(maintained), 0)
            assert [tuple(r) for r in await conn.fetch(query)] == maintained
            key = "(tenant, grp, entity) = ($1, $2, $3)"
            await conn.execute(f"DELETE FROM entity_flags WHERE {key}", *maintained[0][:3])
            await conn.execute(f"UPDATE entity_flags SET position = 1 WHERE {key}", *maintained[1][:3])
            await conn.execute("INSERT INTO entity_flags VALUES ('ghost', 'marks', 'order:0', 'command.failed', 1)")
            assert (await log.rebuild_heads()).wrong == 3
            assert [tuple(r) for r in await conn.fetch(query)] == maintained
        finally:
            await conn.close()


@pytest.mark.anyio
async def test_failed_append_writes_nothing(schema: str) -> None:
    """An unencodable event, or a failing statement, leaves events, cursors and checkpoints as they were."""
    async with await open_pg(schema=schema) as log:
        bad = product("a", 2, 1.0)
        bad = type(bad)(bad.tenant, bad.entity, ev.ProductObserved({"x": {1, 2}}), "bad")
        with pytest.raises(CodecError):
            await log.append([product("a", 1, 1.0), bad], cursors={("p", "a"): "moved"})
        with pytest.raises(StoreError, match="append to"):  # a checkpoint past bigint fails inside the transaction
            await log.append([product("a", 1, 1.0)], cursors={("p", "a"): "moved"}, checkpoints={("s", "a"): 2**70})
        assert await log.max_position() == 0
        assert await log.cursor("p", "a") is None
        await log.append([product("a", 1, 1.0)])
        assert await log.max_position() == 1


@pytest.mark.anyio
async def test_audit_query_is_read_only_with_a_timeout(schema: str) -> None:
    """query() runs in a read-only transaction: writes are refused, and a runaway query is cancelled."""
    from pipeline.eventlog import postgres

    async with await open_pg(schema=schema) as log:
        await log.append([product("a", 7, 12.5)])
        assert await log.query("SELECT (payload->'product'->>'UnitPrice')::float FROM events") == [(12.5,)]
        with pytest.raises(StoreError, match="read-only"):
            await log.query("INSERT INTO cursors VALUES ('a', 'b', 'c', now())")
        old = postgres.QUERY_TIMEOUT_MS
        postgres.QUERY_TIMEOUT_MS = 50
        try:
            with pytest.raises(StoreError, match="statement timeout"):
                await log.query("SELECT pg_sleep(5)")
        finally:
            postgres.QUERY_TIMEOUT_MS = old


@pytest.mark.anyio
async def test_schema_versions(schema: str) -> None:
    """A database at version 1 is migrated forward keeping its events; a newer one is refused; reopening keeps all."""
    from pipeline.eventlog.postgres import MIGRATIONS, SCHEMA_VERSION

    conn = await connect(schema)
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
        await conn.execute(MIGRATIONS[0])
        await conn.execute(
            "CREATE TABLE pipeline_schema (version integer NOT NULL); INSERT INTO pipeline_schema VALUES (1)"
        )
        await conn.execute(
            "INSERT INTO events (position, recorded_at, tenant, entity, type, schema_version, payload, dedupe_key)"
            " VALUES (1, now(), 'a', 'product:1', 'product.observed', 1, $1, 'k')",
            '{"product": {"Id": 1}, "group": null}',
        )
    finally:
        await conn.close()
    async with await open_pg(schema=schema) as log:
        assert [e.entity async for e in log.read()] == ["product:1"]
        assert list(await log.latest(["product.observed"])) == [("a", "product:1")]  # heads built by the migration
        await log.append([product("a", 2, 1.0)], cursors={("p", "a"): "c1"}, checkpoints={("s", "a"): 2})
    async with await open_pg(schema=schema) as log:
        assert (await log.max_position(), await log.cursor("p", "a"), await log.checkpoint("s", "a")) == (2, "c1", 2)
    conn = await connect(schema)
    try:
        assert await conn.fetchval("SELECT version FROM pipeline_schema") == SCHEMA_VERSION
        await conn.execute("UPDATE pipeline_schema SET version = $1", SCHEMA_VERSION + 1)
    finally:
        await conn.close()
    with pytest.raises(SchemaVersionError, match="understands up to"):
        await open_pg(schema=schema)


@pytest.mark.anyio
async def test_concurrent_writers_never_let_a_reader_skip_a_position(schema: str) -> None:
    """Six writers append side by side while a reader follows with `after=<last seen>`: it sees every position
    exactly once, in order, with none left behind by a later commit of a smaller position."""
    writers, appends, size = 6, 25, 7
    logs = [await open_pg(schema=schema, pool_size=2) for _ in range(writers)]
    reader = await open_pg(schema=schema)
    seen: list[int] = []
    done = anyio.Event()

    async def write(w: int) -> None:
        for i in range(appends):
            await logs[w].append([product(f"t{w}", i * size + k, 1.0) for k in range(size)])

    async def follow() -> None:
        while True:
            finished = done.is_set()
            async for e in reader.read(after=seen[-1] if seen else 0, batch_size=50):
                seen.append(e.position)
            if finished:
                return
            await anyio.lowlevel.checkpoint()

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(follow)
            async with anyio.create_task_group() as wg:
                for w in range(writers):
                    wg.start_soon(write, w)
            done.set()
        total = writers * appends * size
        assert await reader.max_position() == total
        assert seen == list(range(1, total + 1))
    finally:
        for log in [*logs, reader]:
            await log.close()


@pytest.mark.anyio
async def test_open_log_picks_the_store_by_the_database(tmp_path: Path, schema: str) -> None:
    """A postgresql:// database opens the PostgreSQL log (here in a schema of its own, named by the URL, so a log
    another branch or run left in the default schema is no concern); a path opens the SQLite file; a bad server is
    a StoreError that does not show the password."""
    from pipeline.eventlog.postgres import PostgresEventLog
    from pipeline.eventlog.sqlite import SqliteEventLog

    assert is_postgres(DSN)
    assert not is_postgres(tmp_path / "x.db")
    conn = await connect(schema)
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
    finally:
        await conn.close()
    log = await open_log(schema_dsn(schema))
    try:
        assert isinstance(log, PostgresEventLog)
    finally:
        await log.close()
    lite = await open_log(tmp_path / "x.db")
    try:
        assert isinstance(lite, SqliteEventLog)
    finally:
        await lite.close()
    with pytest.raises(StoreError) as info:
        await open_log("postgresql://someone:s3cret-pw@127.0.0.1:1/nowhere")
    assert "s3cret-pw" not in str(info.value)


# ------------------------------------------------------------------------------------------------ migrate-log


async def _sqlite_log_with_history(path: Path, clock: StepClock) -> None:
    from pipeline.eventlog.sqlite import SqliteEventLog

    async with await SqliteEventLog.open(path, clock=clock) as log:
        await log.append([product("a", i, 1.0) for i in range(1, 8)] + [product("b", 1, 2.5)])
        clock.advance(90.123456)
        await log.append(
            [
                product("a", 1, 1.0),
                NewEvent("a", "x", ev.CommandSucceeded(1, {"id": "ø"}, 2), "k1", causation=1, mapping_version=3),
            ],
            cursors={("products", "a"): "2026-11-01T00:00:00Z"},
            checkpoints={("projector", "a"): 8},
        )


async def _all(log: Any) -> list[Any]:
    return [e async for e in log.read(batch_size=3)]


@pytest.mark.anyio
async def test_migrate_log_copies_verifies_and_is_idempotent(tmp_path: Path, schema: str) -> None:
    """migrate-log copies events (positions, times, payloads, envelopes), cursors and checkpoints; a second run
    copies nothing; after the SQLite log grows, a third copies only the new events; heads answer as in SQLite."""
    from pipeline.eventlog.migrate import migrate_log
    from pipeline.eventlog.sqlite import SqliteEventLog

    clock = StepClock()
    path = tmp_path / "pipeline.db"
    await _sqlite_log_with_history(path, clock)
    first = await migrate_log(path, DSN, schema=schema)
    assert (first.events, first.copied, first.cursors, first.checkpoints) == (9, 9, 1, 1)
    again = await migrate_log(path, DSN, schema=schema)
    assert (again.events, again.copied, again.checksum) == (9, 0, first.checksum)
    async with await SqliteEventLog.open(path, clock=clock) as lite:
        await lite.append([product("a", 9, 9.0)], checkpoints={("projector", "a"): 10})
    third = await migrate_log(path, DSN, schema=schema)
    assert (third.events, third.copied) == (10, 1)
    async with await SqliteEventLog.open(path) as lite, await open_pg(schema=schema) as pg:
        assert await _all(pg) == await _all(lite)
        assert await pg.cursor("products", "a") == "2026-11-01T00:00:00Z"
        assert await pg.checkpoint("projector", "a") == 10
        types = ["product.observed", "command.succeeded"]
        assert await pg.latest(types, tenant="a") == await lite.latest(types, tenant="a")
        # and the PostgreSQL log goes on from there
        assert (await pg.append([product("a", 10, 1.0)])).appended == 1
        assert await pg.max_position() == 11


@pytest.mark.anyio
async def test_migrate_log_refuses_a_target_that_is_another_log(tmp_path: Path, schema: str) -> None:
    """A target whose events are not the start of the source's is refused before anything is copied."""
    from pipeline.eventlog.migrate import MigrationError, migrate_log

    path = tmp_path / "pipeline.db"
    await _sqlite_log_with_history(path, StepClock())
    async with await open_pg(schema=schema) as pg:
        await pg.append([product("z", 1, 1.0)])
    with pytest.raises(MigrationError, match="not a copy of this log"):
        await migrate_log(path, DSN, schema=schema)
    async with await open_pg(schema=schema) as pg:
        assert await pg.max_position() == 1
    with pytest.raises(MigrationError, match="no such SQLite event log"):
        await migrate_log(tmp_path / "missing.db", DSN, schema=schema)


def test_migrate_log_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`pipeline migrate-log --from FILE --to URL` copies and says what it verified; a non-PostgreSQL --to is a
    usage error."""
    from pipeline.cli import main

    schema = new_schema()
    path = tmp_path / "pipeline.db"
    asyncio.run(_sqlite_log_with_history(path, StepClock()))

    async def make_schema() -> None:
        conn = await connect(schema)
        try:
            await conn.execute(f'CREATE SCHEMA "{schema}"')
        finally:
            await conn.close()

    asyncio.run(make_schema())
    target = schema_dsn(schema)
    assert main(["migrate-log", "--from", str(path), "--to", target]) == 0
    out = capsys.readouterr().out
    assert "9 events (9 copied now), 1 cursors, 1 checkpoints; verified, sha256" in out
    assert main(["migrate-log", "--from", str(path), "--to", str(tmp_path / "other.db")]) == 2
    assert "expected a postgresql:// URL" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ end to end


@pytest.mark.anyio
async def test_sync_on_postgres_end_to_end(tmp_path: Path, schema: str) -> None:
    """The real runtime with `database = postgresql://…` against both fakes: every paid invoice becomes one order,
    and a second cycle writes nothing to either API and appends nothing to the log."""
    import dataclasses
    from datetime import UTC, datetime

    from pipeline.fakes.world import fake_world
    from pipeline.runtime import Runtime

    now = datetime.now(UTC)
    conn = await connect(schema)
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
    finally:
        await conn.close()
    async with fake_world(2, products=15, customers=6, invoices=15, now=now, requests_per_second=500) as world:
        settings = dataclasses.replace(
            world.settings(tmp_path / "unused.db", requests_per_second=500),
            database=schema_dsn(schema),
        )
        async with Runtime(settings, clock=lambda: now) as runtime:
            assert (await runtime.cycle()).exit_code == 0
            before = await runtime.log.max_position()
        assert before > 0
        assert not (tmp_path / "unused.db").exists()
        orders = {t.goods_owner_id: dict(world.ongoing.owner(t.goods_owner_id).orders) for t in world.tenants}
        assert any(orders.values())
        for t in world.tenants:
            for order in orders[t.goods_owner_id].values():
                assert world.ongoing.creations(t.goods_owner_id, order.body["orderNumber"]) == 1
        writes = len(world.ongoing.writes())
        async with Runtime(settings, clock=lambda: now) as runtime:
            assert (await runtime.cycle()).exit_code == 0
            assert await runtime.log.max_position() == before
        assert len(world.ongoing.writes()) == writes


# ------------------------------------------------------------------------------------------------ crash


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_sigkill_mid_batch_leaves_all_or_nothing(schema: str) -> None:
    """Killed with SIGKILL at random points, the PostgreSQL log holds whole batches, a matching cursor, and
    positions without a hole."""
    import random
    import signal
    import subprocess
    import sys

    async def make_schema() -> None:
        conn = await connect(schema)
        try:
            await conn.execute(f'CREATE SCHEMA "{schema}"')
        finally:
            await conn.close()

    async def check() -> tuple[int, int]:
        conn = await connect(schema)
        try:
            counts = dict(
                await conn.fetch("SELECT (payload->'product'->>'batch')::int, count(*) FROM events GROUP BY 1")
            )
            cursor = int(await conn.fetchval("SELECT value FROM cursors WHERE poller = 'crash'") or 0)
            total, top = await conn.fetchrow("SELECT count(*), coalesce(max(position), 0) FROM events")
        finally:
            await conn.close()
        assert all(n == 300 for n in counts.values()), counts
        assert sorted(counts) == list(range(1, cursor + 1))
        assert total == top
        return len(counts), cursor

    asyncio.run(make_schema())
    target = schema_dsn(schema)
    script = Path(__file__).with_name("crash_append.py")
    rng = random.Random(1234)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    last = 0
    for _ in range(8):
        proc = subprocess.Popen([sys.executable, str(script), target], stdout=subprocess.PIPE, text=True, env=env)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        for _ in range(rng.randint(1, 4)):
            proc.stdout.readline()
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        _, cursor = asyncio.run(check())
        assert cursor >= last
        last = cursor
    assert last >= 8


@pytest.mark.anyio
@pytest.mark.timeout(120)
async def test_operator_commands_on_postgres(tmp_path: Path, schema: str) -> None:
    """After a sync on PostgreSQL, the operator's commands read the same log: `audit stats` (with delivery
    freshness), `audit failures`, `audit history`, `redrive` (which looks the entity up by SQL) and `replay
    --dry-run` all answer, as they do on SQLite."""
    import subprocess
    import sys
    from datetime import UTC, datetime

    from pipeline.fakes.world import fake_world
    from pipeline.runtime import Runtime

    conn = await connect(schema)
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
    finally:
        await conn.close()
    database = schema_dsn(schema)
    async with fake_world(1, products=6, customers=3, invoices=6, requests_per_second=500) as world:
        config = tmp_path / "pipeline.toml"
        config.write_text(world.config_toml(database, requests_per_second=500))
        from pipeline.config import load_settings

        async with Runtime(load_settings(config)) as runtime:
            assert (await runtime.cycle()).exit_code == 0
        tenant = world.tenants[0].name

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pipeline", *args, "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "COLUMNS": "200"},
        )

    stats = await anyio.to_thread.run_sync(cli, "audit", "stats")
    assert stats.returncode == 0, stats.stderr
    assert "command.succeeded" in stats.stdout
    assert "freshness" in stats.stdout.lower()
    failures = await anyio.to_thread.run_sync(cli, "audit", "failures")
    assert failures.returncode == 0, failures.stderr
    articles = await runtime_entities(database, tenant)
    history = await anyio.to_thread.run_sync(cli, "audit", "history", tenant, articles[0])
    assert history.returncode == 0, history.stderr
    assert "delivered" in history.stdout
    redrive = await anyio.to_thread.run_sync(cli, "redrive", tenant, articles[0], "--reason", "check")
    assert redrive.returncode == 2, redrive
    assert "not quarantined" in redrive.stderr + redrive.stdout
    unknown = await anyio.to_thread.run_sync(cli, "redrive", tenant, "article:nope", "--reason", "check")
    assert unknown.returncode == 2, unknown
    assert "has no entity" in unknown.stderr + unknown.stdout
    now = datetime.now(UTC)
    replay = await anyio.to_thread.run_sync(
        cli,
        "replay",
        "--from",
        "2000-01-01T00:00:00Z",
        "--to",
        (now.replace(year=now.year + 1)).isoformat(),
        "--dry-run",
    )
    assert replay.returncode == 0, replay.stderr


async def runtime_entities(database: str, tenant: str) -> list[str]:
    """The tenant's delivered article entities in the log at `database`."""
    async with await open_log(database) as log:
        delivered = await log.entities([ev.CommandSucceeded.TYPE], tenant=tenant)
        return sorted(delivered & await log.entities([ev.ArticleUpsertRequested.TYPE], tenant=tenant))


@pytest.mark.anyio
async def test_order_number_holders_are_found_by_index_not_by_walking_the_orders(schema: str) -> None:
    """Who holds an order number is a range of the partial index on the order commands' number (then one head per
    hit), not a walk of every order command the tenant has; the flagged entities are a range of entity_flags."""
    from pipeline.events import CommandFailed, OrderUpsertRequested

    async with await open_pg(schema=schema) as log:
        events = []
        for i in range(3000):
            body = {"orderNumber": str(i)}
            events.append(NewEvent(f"t{i % 3}", f"order:{i}", OrderUpsertRequested(body, str(i), []), f"o{i}"))
            events.append(NewEvent(f"t{i % 3}", f"order:{i}", CommandFailed(i, 400, "no", 1, True), f"f{i}"))
        await log.append(events)
        assert [e.entity for e in await log.order_commands_numbered("t1", ["1", "4", "5"])] == ["order:1", "order:4"]
        conn = await connect(schema)
        try:
            await conn.execute("ANALYZE")
            from pipeline.eventlog.postgres import ORDER_NUMBERS_SQL

            plan = "\n".join(r[0] for r in await conn.fetch(f"EXPLAIN {ORDER_NUMBERS_SQL}", "t1", ["1", "4"]))
            assert "events_by_order_number" in plan, plan
            flagged = "EXPLAIN SELECT entity FROM entity_flags WHERE tenant = $1 AND grp = $2 AND type = ANY($3)"
            plan = "\n".join(r[0] for r in await conn.fetch(flagged, "t1", "standing", ["command.failed"]))
            assert "entity_flags_pkey" in plan, plan
        finally:
            await conn.close()
