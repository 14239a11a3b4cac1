"""The log's cost does not grow with its history: heads kept in the append, per-cycle query plans, the WAL's size."""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from pipeline.eventlog.base import FLAG_GROUPS, NewEvent
from pipeline.eventlog.sqlite import (
    _COLUMNS,
    MIGRATIONS,
    WAL_SIZE_LIMIT,
    SqliteEventLog,
    _split,
    entities_sql,
    latest_sql,
    order_numbers_sql,
    read_sql,
)
from pipeline.events import (
    OBSERVED_TYPES,
    OUTCOME_TYPES,
    ArticleUpsertRequested,
    CommandFailed,
    CommandSucceeded,
    EntityRedriven,
    MappingFailed,
    ObservationRejected,
    OrderUpsertRequested,
    ProductObserved,
    StockObserved,
)
from pipeline.projectors.commands import COMMANDS
from pipeline.senders.base import MARK_TYPES, STANDING_TYPES
from tests.eventlog_contract import flagging_history


def _heads(path: Path) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT tenant, type, entity, position FROM entity_heads ORDER BY 1, 2, 3").fetchall()
    finally:
        conn.close()


def _derived_heads(path: Path) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(
            "SELECT tenant, type, entity, max(position) FROM events GROUP BY tenant, type, entity ORDER BY 1, 2, 3"
        ).fetchall()
    finally:
        conn.close()


def _mixed(rng: random.Random, n: int, start: int) -> list[NewEvent]:
    """Random observations, commands and outcomes over a few tenants and entities, some of them duplicates."""
    out = []
    for i in range(start, start + n):
        tenant = f"t{rng.randrange(3)}"
        pid = rng.randrange(12)
        kind = rng.randrange(4)
        key = f"{tenant}/{pid}/{kind}/{rng.randrange(n)}"  # repeats now and then: a skipped duplicate
        if kind == 0:
            out.append(NewEvent(tenant, f"product:{pid}", ProductObserved({"Id": pid, "i": i}), key))
        elif kind == 1:
            out.append(NewEvent(tenant, f"stock:P{pid}", StockObserved(f"P{pid}", pid, {"numberOfItems": i}), key))
        elif kind == 2:
            out.append(NewEvent(tenant, f"article:P{pid}", ArticleUpsertRequested({"articleNumber": f"P{pid}"}), key))
        else:
            out.append(NewEvent(tenant, f"article:P{pid}", CommandSucceeded(i, {}, 1), key))
    return out


@pytest.mark.anyio
async def test_heads_kept_by_append_equal_heads_rebuilt_from_the_log(tmp_path: Path) -> None:
    """entity_heads, kept in each append's transaction, equals the table rebuilt from events (duplicates too)."""
    path = tmp_path / "e.db"
    rng = random.Random(5)
    async with await SqliteEventLog.open(path) as log:
        for batch in range(20):
            result = await log.append(_mixed(rng, 50, batch * 50))
            assert result.appended > 0
        assert (await log.append(_mixed(random.Random(5), 50, 0))).skipped > 0  # all duplicates: no head moves
        maintained = _heads(path)
        assert maintained == _derived_heads(path)
        before = await log.max_position()
        rebuilt = await log.rebuild_heads()
        assert (rebuilt.heads, rebuilt.wrong) == (len(maintained), 0)
        assert _heads(path) == maintained
        assert await log.max_position() == before  # rebuilding touches no event


@pytest.mark.anyio
async def test_rebuild_heads_repairs_a_damaged_table_and_says_how_much(tmp_path: Path) -> None:
    """Rows lost, stale or invented in entity_heads are found and put right by rebuild_heads."""
    path = tmp_path / "e.db"
    async with await SqliteEventLog.open(path) as log:
        await log.append(_mixed(random.Random(9), 300, 0))
        good = _heads(path)
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            conn.execute("DELETE FROM entity_heads WHERE rowid IN (SELECT rowid FROM entity_heads LIMIT 2)")
        except sqlite3.OperationalError:  # WITHOUT ROWID: delete by key instead
            conn.executemany(
                "DELETE FROM entity_heads WHERE tenant = ? AND type = ? AND entity = ?", [r[:3] for r in good[:2]]
            )
        conn.execute("UPDATE entity_heads SET position = 1 WHERE tenant = ? AND type = ? AND entity = ?", good[2][:3])
        conn.execute("INSERT INTO entity_heads VALUES ('ghost', 'product.observed', 'product:0', 1)")
        conn.close()
        assert _heads(path) != good
        rebuilt = await log.rebuild_heads()
        assert rebuilt.wrong == 4
        assert _heads(path) == good


@pytest.mark.anyio
async def test_migration_to_v3_builds_heads_from_an_existing_log(tmp_path: Path) -> None:
    """A v2 file with history gets its entity_heads from its events when opened, and keeps them from then on."""
    path = tmp_path / "old.db"
    async with await SqliteEventLog.open(tmp_path / "scratch.db") as scratch:
        await scratch.append(_mixed(random.Random(2), 200, 0))
    source = sqlite3.connect(tmp_path / "scratch.db")
    rows = source.execute(f"SELECT {_COLUMNS} FROM events ORDER BY position").fetchall()
    source.close()
    conn = sqlite3.connect(path, isolation_level=None)
    for script in MIGRATIONS[:2]:
        for statement in _split(script):
            conn.execute(statement)
    conn.execute("PRAGMA user_version = 2")
    conn.executemany(f"INSERT INTO events ({_COLUMNS}) VALUES ({', '.join('?' * 10)})", rows)
    conn.close()
    async with await SqliteEventLog.open(path) as log:
        assert _heads(path) == _derived_heads(path)
        assert len(_heads(path)) > 20
        await log.append(_mixed(random.Random(3), 100, 1000))
        assert _heads(path) == _derived_heads(path)


def _flags(path: Path) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT tenant, grp, entity, type, position FROM entity_flags ORDER BY 1, 2, 3").fetchall()
    finally:
        conn.close()


def _derived_flags(path: Path) -> list[tuple[Any, ...]]:
    """entity_flags computed here from the events alone: per (tenant, group, entity) the newest member event, if
    it is one of the group's flags."""
    conn = sqlite3.connect(path)
    try:
        newest: dict[tuple[str, str, str], tuple[str, int]] = {}
        for position, tenant, entity, type_ in conn.execute("SELECT position, tenant, entity, type FROM events"):
            for group in FLAG_GROUPS:
                key = (tenant, group.name, entity)
                if type_ in group.members and position > newest.get(key, ("", 0))[1]:
                    newest[key] = (type_, position)
    finally:
        conn.close()
    groups = {g.name: g for g in FLAG_GROUPS}
    return sorted((*key, t, p) for key, (t, p) in newest.items() if t in groups[key[1]].flags)


@pytest.mark.anyio
async def test_flags_kept_by_append_equal_flags_rebuilt_from_the_log(tmp_path: Path) -> None:
    """entity_flags, kept in each append's transaction, equals the flags derived from the events (duplicates, several
    events of one entity in one append), and rebuild_heads finds nothing wrong in it."""
    path = tmp_path / "e.db"
    rng = random.Random(8)
    async with await SqliteEventLog.open(path) as log:
        for batch in range(20):
            await log.append(flagging_history(rng, 40, batch * 40))
            assert _flags(path) == _derived_flags(path)
        assert (await log.append(flagging_history(random.Random(8), 40, 0))).skipped > 0
        maintained = _flags(path)
        assert maintained == _derived_flags(path)
        assert {row[1] for row in maintained} == {g.name for g in FLAG_GROUPS}  # every group has flags
        rebuilt = await log.rebuild_heads()
        assert (rebuilt.flags, rebuilt.wrong) == (len(maintained), 0)
        assert _flags(path) == maintained


@pytest.mark.anyio
async def test_rebuild_heads_repairs_damaged_flags_and_counts_them(tmp_path: Path) -> None:
    """Flags lost, stale or invented are found and put right by rebuild_heads, and counted as wrong."""
    path = tmp_path / "e.db"
    async with await SqliteEventLog.open(path) as log:
        await log.append(flagging_history(random.Random(3), 300, 0))
        good = _flags(path)
        assert len(good) >= 3
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("DELETE FROM entity_flags WHERE tenant = ? AND grp = ? AND entity = ?", good[0][:3])
        conn.execute("UPDATE entity_flags SET position = 1 WHERE tenant = ? AND grp = ? AND entity = ?", good[1][:3])
        conn.execute("INSERT INTO entity_flags VALUES ('ghost', 'marks', 'order:0', 'command.failed', 1)")
        conn.close()
        rebuilt = await log.rebuild_heads()
        assert rebuilt.wrong == 3
        assert _flags(path) == good


@pytest.mark.anyio
async def test_migration_to_v4_builds_flags_from_an_existing_log(tmp_path: Path) -> None:
    """A v3 file with history gets its entity_flags from its heads when opened, and keeps them from then on."""
    path = tmp_path / "old.db"
    async with await SqliteEventLog.open(tmp_path / "scratch.db") as scratch:
        await scratch.append(flagging_history(random.Random(6), 300, 0))
    source = sqlite3.connect(tmp_path / "scratch.db")
    rows = source.execute(f"SELECT {_COLUMNS} FROM events ORDER BY position").fetchall()
    source.close()
    conn = sqlite3.connect(path, isolation_level=None)
    for script in MIGRATIONS[:3]:
        for statement in _split(script):
            conn.execute(statement)
    conn.execute("PRAGMA user_version = 3")
    conn.executemany(f"INSERT INTO events ({_COLUMNS}) VALUES ({', '.join('?' * 10)})", rows)
    conn.close()
    async with await SqliteEventLog.open(path) as log:
        assert _flags(path) == _derived_flags(path)
        assert len(_flags(path)) > 5
        await log.append(flagging_history(random.Random(7), 100, 1000))
        assert _flags(path) == _derived_flags(path)


@pytest.mark.anyio
async def test_flag_groups_in_the_database_are_the_code_s(tmp_path: Path) -> None:
    """The migration's flag_groups rows are exactly FLAG_GROUPS (the code picks the group, the trigger uses rows)."""
    path = tmp_path / "e.db"
    async with await SqliteEventLog.open(path):
        pass
    conn = sqlite3.connect(path)
    try:
        rows = set(conn.execute("SELECT grp, type, flag FROM flag_groups"))
    finally:
        conn.close()
    assert rows == {(g.name, t, int(t in g.flags)) for g in FLAG_GROUPS for t in g.members}


# ---------------------------------------------------------------------------------------------- query plans

SENDER_TYPES = (*COMMANDS, *OUTCOME_TYPES)


def _per_cycle_queries() -> dict[str, tuple[str, list[Any]]]:
    """Every query an unchanged cycle makes of the log, as the log builds it."""
    tenant = "t1"

    def paged(q: tuple[str, list[Any]]) -> tuple[str, list[Any]]:
        return q[0], [*q[1], 500]

    return {
        "projector: new observations": paged(read_sql(after=10, tenant=tenant, types=OBSERVED_TYPES)),
        "sender: new commands and outcomes": paged(read_sql(after=10, upto=99, tenant=tenant, types=SENDER_TYPES)),
        "projector: last commands": latest_sql(COMMANDS, tenant=tenant),
        "projector: last products": latest_sql([ProductObserved.TYPE], tenant=tenant),
        "stock poller: last stock": latest_sql([StockObserved.TYPE], tenant=tenant),
        "invoice poller: one invoice": latest_sql(["invoice.observed"], tenant=tenant, entity="invoice:1"),
        "sender: marks of some entities": latest_sql(MARK_TYPES, tenant=tenant, entities=["article:A", "order:1"]),
        "sender: successes of some entities": latest_sql([CommandSucceeded.TYPE], tenant=tenant, entities=["a:1"]),
        "sender: a command of one entity": latest_sql(COMMANDS, tenant=tenant, entity="article:A"),
        "sender: flagged entities": entities_sql(
            (CommandFailed.TYPE, EntityRedriven.TYPE), tenant=tenant, newest_of=MARK_TYPES
        ),
        "sender: standing flagged entities": entities_sql(
            (CommandFailed.TYPE, EntityRedriven.TYPE), tenant=tenant, newest_of=STANDING_TYPES
        ),
        "problems: quarantined": entities_sql([CommandFailed.TYPE], tenant=tenant, newest_of=STANDING_TYPES),
        "problems: mapping failures": entities_sql(
            [MappingFailed.TYPE], tenant=tenant, newest_of=(*OBSERVED_TYPES, MappingFailed.TYPE)
        ),
        "problems: rejections": entities_sql(
            [ObservationRejected.TYPE], tenant=tenant, newest_of=(*OBSERVED_TYPES, ObservationRejected.TYPE)
        ),
        "projector: who holds these order numbers": order_numbers_sql(tenant, ["1001", "1002"]),
        "checkpoint": ("SELECT position FROM checkpoints WHERE stage = ? AND tenant = ?", ["projector", tenant]),
        "cursor": ("SELECT value FROM cursors WHERE poller = ? AND tenant = ?", ["poweroffice.products", tenant]),
        "head": ("SELECT coalesce(max(position), 0) FROM events", []),
    }


@pytest.mark.anyio
async def test_per_cycle_queries_search_indexes_and_never_scan_history(tmp_path: Path) -> None:
    """EXPLAIN QUERY PLAN of each per-cycle query: index searches with the tenant and type bound, no scan."""
    path = tmp_path / "e.db"
    async with await SqliteEventLog.open(path) as log:
        await log.append(_mixed(random.Random(1), 400, 0))
    conn = sqlite3.connect(path)
    try:
        conn.execute("ANALYZE")  # plans must hold with statistics too, not only on SQLite's default guesses
        for name, (sql, params) in _per_cycle_queries().items():
            plan = [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params)]
            for step in plan:
                assert not step.startswith("SCAN"), (name, plan)
                if "LIMIT" in sql:  # a page of a read merges index ranges: no sort of everything after the checkpoint
                    assert "TEMP B-TREE" not in step, (name, plan)
                if name.startswith("projector: who holds"):  # a range of the partial index per number, then heads
                    assert plan[0] == "SEARCH e USING INDEX events_by_order_number (tenant=? AND <expr>=?)", plan
                    assert plan[2] == "SEARCH h USING PRIMARY KEY (tenant=? AND type=? AND entity=?)", plan
                    continue
                if step.startswith("SEARCH events USING INDEX"):
                    # Reading one tenant's new events walks (tenant, type, position) ranges, never all its rows.
                    assert "events_by_tenant_type (tenant=? AND type=? AND rowid>?" in step, (name, plan)
                if step.startswith("SEARCH entity_heads"):
                    assert "(tenant=? AND type=?" in step, (name, plan)
                if "newest_of" in name or name.startswith(("problems", "sender: flagged", "sender: standing")):
                    # The entities flagged now: a range of the flags table, never the heads of all that failed once.
                    assert plan == ["SEARCH entity_flags USING PRIMARY KEY (tenant=? AND grp=?)"], (name, plan)
            assert any(step.startswith("SEARCH") for step in plan) or "max(position)" in sql, (name, plan)
    finally:
        conn.close()


@contextmanager
def _count_steps(conn: sqlite3.Connection) -> Iterator[Callable[[], int]]:
    """Count SQLite's virtual machine steps (in units of 100) while the block runs."""
    steps = 0

    def tick() -> int:
        nonlocal steps
        steps += 1
        return 0

    conn.set_progress_handler(tick, 100)
    try:
        yield lambda: steps
    finally:
        conn.set_progress_handler(None, 100)


def _cycle_reads(conn: sqlite3.Connection, after: int) -> int:
    """The work (VM steps) of the per-cycle queries for tenant t1 with checkpoints at `after`."""
    with _count_steps(conn) as steps:
        for _, (sql, params) in _per_cycle_queries().items():
            params = [after if p == 10 else (after + 1000 if p == 99 else p) for p in params]
            conn.execute(sql, params).fetchall()
        return steps()


@pytest.mark.anyio
async def test_cycle_reads_cost_the_same_on_a_long_history(tmp_path: Path) -> None:
    """With the checkpoints at the head, the per-cycle reads cost the same after 40× more history."""
    path = tmp_path / "e.db"
    async with await SqliteEventLog.open(path) as log:
        await log.append(_mixed(random.Random(1), 500, 0))
        conn = sqlite3.connect(path)
        try:
            short = _cycle_reads(conn, await log.max_position())
            for batch in range(1, 40):
                await log.append(_mixed(random.Random(batch), 500, batch * 500))
            long = _cycle_reads(conn, await log.max_position())
        finally:
            conn.close()
    assert short > 0
    assert long <= short * 1.3 + 5, (short, long)


def _failed_once(start: int, n: int) -> list[NewEvent]:
    """`n` new orders, each failed once (transiently) and then delivered: history every tenant piles up."""
    out = []
    for i in range(start, start + n):
        entity = f"order:{i}"
        out += [
            NewEvent("t1", entity, OrderUpsertRequested({"orderNumber": str(i)}, str(i), []), f"o/{i}/cmd"),
            NewEvent("t1", entity, CommandFailed(i, 503, "later", 3, False), f"o/{i}/failed"),
            NewEvent("t1", entity, CommandSucceeded(i, {}, 1), f"o/{i}/ok"),
            NewEvent("t1", f"product:{i}", ProductObserved({"Id": i}), f"p/{i}"),
            NewEvent("t1", f"product:{i}", MappingFailed(i, "Code", "conflict"), f"p/{i}/mapfail"),
            NewEvent("t1", f"product:{i}", ProductObserved({"Id": i, "v": 2}), f"p/{i}/again"),
        ]
    return out


@pytest.mark.anyio
async def test_flagged_entities_cost_what_is_flagged_now_not_what_failed_once(tmp_path: Path) -> None:
    """Entities that failed once and were delivered since (every order does now and then: orders are entities
    forever) cost the per-cycle "which entities fail now" reads nothing: 40× more of them, the same work."""
    path = tmp_path / "e.db"
    queries = {k: v for k, v in _per_cycle_queries().items() if k.startswith(("problems", "sender: flagged"))}
    assert len(queries) == 4

    def work(conn: sqlite3.Connection) -> int:
        with _count_steps(conn) as steps:
            for sql, params in queries.values():
                conn.execute(sql, params).fetchall()
            return steps()

    async with await SqliteEventLog.open(path) as log:
        quarantined = NewEvent("t1", "order:x", CommandFailed(1, 400, "no", 1, True), "x")
        await log.append([*_failed_once(0, 50), quarantined])
        conn = sqlite3.connect(path)
        try:
            short = work(conn)
            for batch in range(1, 40):
                await log.append(_failed_once(batch * 50, 50))
            long = work(conn)
        finally:
            conn.close()
        assert await log.entities([CommandFailed.TYPE], tenant="t1", newest_of=STANDING_TYPES) == {"order:x"}
    assert long <= short * 1.3 + 5, (short, long)


# ---------------------------------------------------------------------------------------------- disk


@pytest.mark.anyio
async def test_wal_is_cut_back_after_a_big_fill(tmp_path: Path) -> None:
    """A fill bigger than WAL_SIZE_LIMIT in one transaction grows the -wal file past it; the next appends (what a
    cycle does) checkpoint it and cut it back below the limit, so a long run's WAL stays bounded."""
    path = tmp_path / "e.db"
    wal = tmp_path / "e.db-wal"
    filler = "x" * 700
    async with await SqliteEventLog.open(path) as log:
        big = [
            NewEvent("t", f"product:{i}", ProductObserved({"Id": i, "pad": filler}), f"t/{i}") for i in range(25_000)
        ]
        await log.append(big)
        peak = wal.stat().st_size
        assert peak > WAL_SIZE_LIMIT  # the fill alone outgrows the limit: without the limit the file stays this big
        for i in range(3):  # a cycle's small appends: outcomes, checkpoint moves
            await log.append([], checkpoints={("projector", "t"): 25_000 + i})
        assert wal.stat().st_size <= WAL_SIZE_LIMIT
        assert await log.checkpoint_wal() == 0


# ---------------------------------------------------------------------------------------------- group commit


@pytest.mark.anyio
async def test_concurrent_appends_share_commits_and_each_keeps_its_own_answer(tmp_path: Path) -> None:
    """Appends made side by side (sender lanes recording outcomes) each land whole, with their own counts and
    checkpoints; one that the database refuses fails alone, and the others land."""
    import anyio

    from pipeline.errors import StoreError
    from tests.eventlog_contract import product

    results: dict[int, Any] = {}
    async with await SqliteEventLog.open(tmp_path / "e.db") as log:
        await log.append([product("t", 0, 1.0)])

        async def one(i: int) -> None:
            events = [product("t", i, 1.0), product("t", 0, 1.0)]  # the second is a duplicate every time
            if i == 7:
                events = [NewEvent(None, "x", ProductObserved({}), "bad")]  # type: ignore[arg-type]
            try:
                results[i] = await log.append(events, checkpoints={("lane", f"t{i}"): i})
            except StoreError as exc:
                results[i] = exc

        async with anyio.create_task_group() as tg:
            for i in range(1, 30):
                tg.start_soon(one, i)
        assert isinstance(results.pop(7), StoreError)
        assert {(r.appended, r.skipped) for r in results.values()} == {(1, 1)}
        assert await log.max_position() == 29  # product 0, then one new product per good append
        assert [await log.checkpoint("lane", f"t{i}") for i in (1, 7, 29)] == [1, 0, 29]
        assert sorted([e.entity async for e in log.read()]) == sorted(f"product:{i}" for i in range(30) if i != 7)
