"""The SQLite event log: the shared contract, plus what only a database can show."""

from __future__ import annotations

import dataclasses
import os
import random
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import events as ev
from pipeline.errors import CodecError, SchemaVersionError, StoreError
from pipeline.eventlog import base as ev_base
from pipeline.eventlog.base import EventLog
from pipeline.eventlog.sqlite import SCHEMA_VERSION, SqliteEventLog
from tests.eventlog_contract import EventLogContract, StepClock, product


class TestSqliteContract(EventLogContract):
    async def open_log(self, path: Path, clock: StepClock) -> EventLog:
        return await SqliteEventLog.open(path, clock=clock)


@pytest.mark.anyio
async def test_database_refuses_update_and_delete(tmp_path: Path) -> None:
    """Triggers in the database abort UPDATE and DELETE on events, whoever connects."""
    path = tmp_path / "e.db"
    async with await SqliteEventLog.open(path) as log:
        await log.append([product("a", 1, 1.0)])
    conn = sqlite3.connect(path)
    try:
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute("UPDATE events SET tenant = 'x'")
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute("DELETE FROM events")
        assert conn.execute("SELECT count(*) FROM events").fetchone() == (1,)
    finally:
        conn.close()


@pytest.mark.anyio
async def test_wal_mode_and_payload_is_queryable_json(tmp_path: Path) -> None:
    """The file is in WAL mode and payloads answer SQLite's JSON functions."""
    path = tmp_path / "e.db"
    async with await SqliteEventLog.open(path) as log:
        await log.append([product("a", 7, 12.5)])
        rows = await log.query("SELECT json_extract(payload, '$.product.UnitPrice') FROM events")
        assert rows == [(12.5,)]
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    finally:
        conn.close()


@pytest.mark.anyio
async def test_reader_cannot_write(tmp_path: Path) -> None:
    """The audit query path is read-only."""
    async with await SqliteEventLog.open(tmp_path / "e.db") as log:
        with pytest.raises(Exception, match=r"readonly|read-only|attempt to write"):
            await log.query("INSERT INTO cursors VALUES ('a', 'b', 'c', 'd')")


class _BusyPoint:
    """The point-read connection as a file held by another process leaves it: every statement answers busy
    (SQLITE_BUSY, as a reader sees it while another connection holds the file exclusively or recovers it)."""

    def __init__(self, real: sqlite3.Connection, code: int = sqlite3.SQLITE_BUSY) -> None:
        self.real, self.code, self.calls = real, code, 0

    def execute(self, sql: str, params: object = ()) -> sqlite3.Cursor:
        self.calls += 1
        error = sqlite3.OperationalError("database is locked")
        error.sqlite_errorcode = self.code
        raise error

    def close(self) -> None:
        self.real.close()


@pytest.mark.anyio
async def test_a_busy_point_read_is_answered_by_the_reader_thread(tmp_path: Path) -> None:
    """Point reads run on the event loop and never wait for a lock: a busy answer sends the read to the reader's
    thread (which may wait), and the caller gets the same answer."""
    async with await SqliteEventLog.open(tmp_path / "p.db") as log:
        await log.append([product("a", 1, 1.0)], cursors={("poweroffice.products", "a"): "2026-11-30"})
        busy = _BusyPoint(log._point)  # type: ignore[arg-type]
        log._point = busy  # type: ignore[assignment]
        assert await log.cursor("poweroffice.products", "a") == "2026-11-30"
        assert await log.max_position() == 1
        assert set(await log.latest([ev.ProductObserved.TYPE], tenant="a", entity="product:1")) == {("a", "product:1")}
        assert busy.calls == 3


@pytest.mark.anyio
async def test_a_failing_point_read_is_a_store_error(tmp_path: Path) -> None:
    async with await SqliteEventLog.open(tmp_path / "p.db") as log:
        log._point = _BusyPoint(log._point, sqlite3.SQLITE_IOERR)  # type: ignore[arg-type,assignment]
        with pytest.raises(StoreError, match=r"read from .* failed: database is locked"):
            await log.max_position()


@pytest.mark.anyio
async def test_newer_schema_is_a_clear_error(tmp_path: Path) -> None:
    """A file written by a newer pipeline is refused with a message saying so."""
    path = tmp_path / "e.db"
    async with await SqliteEventLog.open(path):
        pass
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(SchemaVersionError, match=r"newer|understands up to"):
        await SqliteEventLog.open(path)


@pytest.mark.anyio
async def test_reopen_keeps_everything(tmp_path: Path) -> None:
    """Reopening a file keeps events, cursors and checkpoints and does not re-run migrations."""
    path = tmp_path / "e.db"
    async with await SqliteEventLog.open(path) as log:
        await log.append([product("a", 1, 1.0)], cursors={("p", "a"): "c1"}, checkpoints={("s", "a"): 1})
    async with await SqliteEventLog.open(path) as log:
        assert await log.max_position() == 1
        assert await log.cursor("p", "a") == "c1"
        assert await log.checkpoint("s", "a") == 1


@pytest.mark.anyio
async def test_unencodable_event_writes_nothing(tmp_path: Path) -> None:
    """An event that cannot be encoded fails the whole append, cursor included."""
    async with await SqliteEventLog.open(tmp_path / "e.db") as log:
        bad = product("a", 2, 1.0)
        bad = type(bad)(bad.tenant, bad.entity, ev.ProductObserved({"x": {1, 2}}), "bad")
        with pytest.raises(CodecError):
            await log.append([product("a", 1, 1.0), bad], cursors={("p", "a"): "moved"})
        assert await log.max_position() == 0
        assert await log.cursor("p", "a") is None


def _check_batches(path: Path) -> tuple[int, int]:
    """Every batch in the file is whole and the cursor names the last one. Returns (batches, cursor)."""
    conn = sqlite3.connect(path)
    try:
        counts = dict(conn.execute("SELECT json_extract(payload, '$.product.batch'), count(*) FROM events GROUP BY 1"))
        row = conn.execute("SELECT value FROM cursors WHERE poller = 'crash'").fetchone()
    finally:
        conn.close()
    cursor = int(row[0]) if row else 0
    assert all(n == 300 for n in counts.values()), counts
    assert sorted(counts) == list(range(1, cursor + 1))
    return len(counts), cursor


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_sigkill_mid_batch_leaves_all_or_nothing(tmp_path: Path) -> None:
    """Killed with SIGKILL at random points, the log always holds whole batches and a matching cursor."""
    path = tmp_path / "crash.db"
    script = Path(__file__).with_name("crash_append.py")
    rng = random.Random(1234)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    last = 0
    for _ in range(12):
        proc = subprocess.Popen([sys.executable, str(script), str(path)], stdout=subprocess.PIPE, text=True, env=env)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        for _ in range(rng.randint(1, 4)):
            proc.stdout.readline()
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        _, cursor = _check_batches(path)
        assert cursor >= last
        last = cursor
    assert last >= 12


# ------------------------------------------------------------------------------------------------ codec

json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
json_object = st.dictionaries(st.text(max_size=8), json_value, max_size=5)


def _strategy_for(cls: type[ev.Event]) -> st.SearchStrategy[ev.Event]:
    hints = {
        "str": st.text(),
        "int": st.integers(-(2**53), 2**53),
        "bool": st.booleans(),
        "float": st.floats(allow_nan=False, allow_infinity=False),
        "JsonObject": json_object,
        "list[JsonObject]": st.lists(json_object, max_size=3),
        "list[str]": st.lists(st.text(), max_size=3),
        "JsonObject | None": st.none() | json_object,
        "int | None": st.none() | st.integers(-(2**53), 2**53),
        "str | None": st.none() | st.text(),
    }
    fields = {f.name: hints[str(f.type)] for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return st.builds(cls, **fields)


@pytest.mark.parametrize("type_name", sorted(ev.registry()))
def test_every_registered_type_round_trips(type_name: str) -> None:
    """encode → decode gives back an equal event, for every registered type."""
    cls = ev.registry()[type_name]

    @settings(max_examples=60, deadline=None)
    @given(_strategy_for(cls))
    def check(event: ev.Event) -> None:
        assert ev.decode(type_name, cls.VERSION, ev.encode(event)) == event

    check()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_numbers_are_refused(bad: float) -> None:
    """NaN and infinities cannot be stored as JSON, so encoding refuses them instead of writing null."""
    with pytest.raises(CodecError, match="NaN or infinity"):
        ev.encode(ev.ArticleUpsertRequested(body={"prices": [{"x": None, "v": bad}]}))


def test_upcaster_runs_for_old_versions() -> None:
    """A payload stored at an older schema version is upcast before decoding."""

    @ev.register
    @dataclasses.dataclass(frozen=True, slots=True)
    class Renamed(ev.Event):
        TYPE: ClassVar[str] = "test.renamed"
        VERSION: ClassVar[int] = 2
        new_name: str

    ev.upcaster("test.renamed", 1)(lambda d: {"new_name": d["old_name"]})
    assert ev.decode("test.renamed", 1, b'{"old_name": "x"}') == Renamed("x")
    with pytest.raises(CodecError, match="newer"):
        ev.decode("test.renamed", 3, b'{"new_name": "x"}')
    with pytest.raises(CodecError, match="unknown event type"):
        ev.decode("nope", 1, b"{}")


@pytest.mark.anyio
async def test_older_database_is_migrated_forward(tmp_path: Path) -> None:
    """A file at schema version 1 is brought up to the current version on open, its events kept."""
    from pipeline.eventlog.sqlite import MIGRATIONS, _split

    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    for statement in _split(MIGRATIONS[0]):
        conn.execute(statement)
    conn.execute("PRAGMA user_version = 1")
    conn.execute(
        "INSERT INTO events (recorded_at, tenant, entity, type, schema_version, payload, dedupe_key)"
        " VALUES ('2026-11-01T00:00:00.000000Z', 'a', 'product:1', 'product.observed', 1,"
        ' \'{"product": {"Id": 1}, "group": null}\', \'k\')'
    )
    conn.close()
    async with await SqliteEventLog.open(path) as log:
        assert [e.entity async for e in log.read()] == ["product:1"]
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        indexes = {row[1] for row in conn.execute("PRAGMA index_list(events)")}
        assert "events_by_causation" in indexes
    finally:
        conn.close()


@settings(max_examples=40, deadline=None)
@given(
    before=st.lists(st.integers(0, 150), max_size=20),
    keys=st.lists(st.integers(0, 150), max_size=300),
)
def test_multi_row_inserts_keep_order_and_skip_every_duplicate(
    tmp_path_factory: pytest.TempPathFactory, before: list[int], keys: list[int]
) -> None:
    """An append inserts its rows in statements of up to 64 rows, then halves for the rest: whatever the size, the
    rows land in the order given, and a key already in the log or earlier in the same append is skipped."""
    path = tmp_path_factory.mktemp("multi") / "e.db"

    async def run() -> tuple[ev_base.AppendResult, list[str]]:
        async with await SqliteEventLog.open(path) as log:
            await log.append([product("a", k, 1.0, key=f"k{k}") for k in before])
            result = await log.append([product("a", k, 2.0, key=f"k{k}") for k in keys])
            return result, [e.dedupe_key async for e in log.read()]

    result, stored = anyio.run(run)
    expected = list(dict.fromkeys(f"k{k}" for k in before))
    new = [key for key in dict.fromkeys(f"k{k}" for k in keys) if key not in expected]
    assert stored == expected + new
    assert (result.appended, result.skipped) == (len(new), len(keys) - len(new))
