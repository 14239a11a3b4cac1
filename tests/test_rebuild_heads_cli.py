"""`pipeline audit rebuild-heads`: recompute the derived heads table from the log, from the command line."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import anyio
import orjson
import pytest

from pipeline.cli import main
from pipeline.eventlog.sqlite import SqliteEventLog
from tests.eventlog_contract import product

CONFIG = """
database = "{db}"

[poweroffice]
application_key = "app"
subscription_key = "sub"

[ongoing]
api_url = "http://127.0.0.1:9/api/v1"
username = "u"
password = "p"

[[tenants]]
name = "acme"
poweroffice_client_key = "key"
ongoing_goods_owner_id = 1
"""


def test_audit_rebuild_heads_repairs_the_table_and_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A lost head is put back by `audit rebuild-heads`, which says how many rows were wrong; events stay."""
    db = tmp_path / "pipeline.db"

    async def fill() -> None:
        async with await SqliteEventLog.open(db) as log:
            await log.append([product("acme", i, 1.0) for i in range(5)])
            await log.append([product("acme", 1, 2.0)])

    anyio.run(fill)
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("DELETE FROM entity_heads WHERE entity = 'product:1'")
    conn.close()
    config = tmp_path / "pipeline.toml"
    config.write_text(CONFIG.format(db=db))
    assert main(["--config", str(config), "audit", "rebuild-heads"]) == 0
    assert "5 rows, 1 were wrong or missing" in capsys.readouterr().out  # five entities, one head lost
    assert main(["--config", str(config), "audit", "--json", "rebuild-heads"]) == 0
    assert orjson.loads(capsys.readouterr().out) == {"heads": 5, "wrong": 0, "flags": 0}
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("SELECT position FROM entity_heads WHERE entity = 'product:1'").fetchone() == (6,)
        assert conn.execute("SELECT count(*) FROM events").fetchone() == (6,)
    finally:
        conn.close()
