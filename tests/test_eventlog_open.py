"""Choosing the store: a SQLite log needs nothing but the standard library and aiosqlite."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.config import load_settings
from pipeline.errors import ConfigError
from pipeline.eventlog import is_postgres
from tests.test_config import ENV, GOOD, write


def test_database_names_its_store() -> None:
    """Only a postgresql:// (or postgres://) URL selects PostgreSQL; paths, even odd ones, stay SQLite files."""
    assert is_postgres("postgresql://u@h/db")
    assert is_postgres("postgres://h/db")
    assert not is_postgres("pipeline.db")
    assert not is_postgres(Path("postgresql:/x"))
    assert not is_postgres("data/postgresql.db")


def test_sqlite_log_works_without_asyncpg(tmp_path: Path) -> None:
    """With asyncpg made unimportable, the CLI and runtime import and `open_log` opens and writes a SQLite file."""
    script = f"""
import sys
sys.modules["asyncpg"] = None  # importing it now raises ImportError
import anyio
import pipeline.cli, pipeline.runtime, pipeline.audit, pipeline.commands
from pipeline.eventlog import open_log
from tests.eventlog_contract import product

async def main():
    log = await open_log({str(tmp_path / "e.db")!r})
    await log.append([product("a", 1, 1.0)])
    print(type(log).__name__, await log.max_position())
    await log.close()

anyio.run(main)
"""
    root = Path(__file__).parent.parent
    done = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["SqliteEventLog", "1"]


def test_config_takes_a_postgres_url_with_the_password_from_the_environment(tmp_path: Path) -> None:
    """`database = "postgresql://…"` stays a URL (not a path), ${ENV} expanded; its password is not in the repr;
    a missing variable is a config error."""
    text = GOOD.replace('"data/pipeline.db"', '"postgresql://pipeline:${PG_PASSWORD}@db.example:5432/log"')
    s = load_settings(write(tmp_path, text), env={**ENV, "PG_PASSWORD": "pg-secret-6"})
    assert s.database == "postgresql://pipeline:pg-secret-6@db.example:5432/log"
    assert is_postgres(s.database)
    assert "pg-secret-6" not in repr(s)
    with pytest.raises(ConfigError, match="PG_PASSWORD is not set"):
        load_settings(write(tmp_path, text), env=ENV)
