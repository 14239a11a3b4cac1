"""Operating the service from the command line: the log's file (missing, older schema, backup), the status port,
the option places and help texts, JSON logs, and `pipeline check`."""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import signal
import socket
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace

import anyio
import pytest
from rich.console import Console

from pipeline.cli import build_parser, main
from pipeline.commands import Reloads, run_forever
from pipeline.config import load_settings
from pipeline.console import LEGEND
from pipeline.eventlog.sqlite import MIGRATIONS, SCHEMA_VERSION, SqliteEventLog, _split
from pipeline.fakes.faults import Fault
from pipeline.fakes.world import World, fake_world
from pipeline.logs import JsonLines, configure_logging, install_retry_log, log_context
from pipeline.runtime import Runtime, TenantState


@pytest.fixture
async def world() -> AsyncIterator[World]:
    async with fake_world(2, products=6, customers=3, invoices=6, requests_per_second=1000) as w:
        yield w


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """The CLI sets up process-wide logging and retry hooks: put them back after the test."""
    from stamina import instrumentation

    root = logging.getLogger()
    saved = (list(root.handlers), root.level, logging.getLogger("pipeline").level)
    hooks = instrumentation.get_on_retry_hooks()
    yield
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    logging.getLogger("pipeline").setLevel(saved[2])
    instrumentation.set_on_retry_hooks(list(hooks))


@pytest.fixture
def config(world: World, tmp_path: Path) -> Path:
    path = tmp_path / "pipeline.toml"
    path.write_text(world.config_toml("data/pipeline.db", requests_per_second=1000), encoding="utf-8")
    return path


async def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run the CLI in a worker thread (it starts its own event loop); returns (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = await anyio.to_thread.run_sync(main, list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def older_log(path: Path, version: int) -> None:
    """A log file as an older release left it: migrations up to `version` only, one event in it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path)
    for script in MIGRATIONS[:version]:
        for statement in _split(script):
            conn.execute(statement)
    conn.execute(f"PRAGMA user_version = {version}")
    conn.execute(
        "INSERT INTO events (recorded_at, tenant, entity, type, schema_version, payload, dedupe_key)"
        " VALUES ('2026-11-01T00:00:00.000000Z', 'x', 'replay', 'replay.recorded', 1, '{}', 'k')"
    )
    conn.commit()
    conn.close()


def prepend(config: Path, text: str) -> None:
    config.write_text(text + config.read_text(encoding="utf-8"), encoding="utf-8")


def edit(config: Path, old: str, new: str) -> None:
    config.write_text(config.read_text(encoding="utf-8").replace(old, new), encoding="utf-8")


def expected_first(db: Path, tenant: str) -> int:
    conn = sqlite3.connect(db)
    try:
        query = (
            "SELECT count(*) FROM events WHERE tenant = ? AND type = 'observation.skipped' AND entity LIKE 'product:%'"
        )
        return int(conn.execute(query, (tenant,)).fetchone()[0])
    finally:
        conn.close()


def user_version(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])
    finally:
        conn.close()


# ------------------------------------------------------------------------------------------- the log's file


@pytest.mark.anyio
@pytest.mark.parametrize(
    "command",
    [
        ["audit", "stats"],
        ["audit", "failures"],
        ["replay", "--from", "2026-01-01T00:00:00Z", "--to", "2026-01-02T00:00:00Z"],
        ["redrive", "nordlys", "article:P-00001"],
    ],
)
async def test_rule_reading_commands_refuse_a_missing_log_and_create_nothing(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    """audit, replay and redrive on a missing file: one line, exit 2, and neither the file nor its folder appear."""
    code, _, err = await cli(capsys, "--config", str(config), *command)
    assert code == 2
    assert f"no event log at {tmp_path / 'data' / 'pipeline.db'}; run sync first" in err
    assert not (tmp_path / "data").exists()


@pytest.mark.anyio
async def test_rule_audit_never_migrates_an_older_log(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """audit on a file of an older schema refuses (naming `pipeline migrate`) and leaves the file as it was."""
    db = tmp_path / "data" / "pipeline.db"
    older_log(db, SCHEMA_VERSION - 1)
    code, _, err = await cli(capsys, "--config", str(config), "audit", "stats")
    assert code == 2
    assert "pipeline migrate" in err
    assert user_version(db) == SCHEMA_VERSION - 1
    assert not list(db.parent.glob("*.bak"))


@pytest.mark.anyio
async def test_rule_migrate_takes_a_backup_first_and_says_so(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`pipeline migrate` copies the older file to <db>.v<N>.bak, upgrades, and prints both; a second run is a no-op."""
    db = tmp_path / "data" / "pipeline.db"
    old = SCHEMA_VERSION - 1
    older_log(db, old)
    code, out, _ = await cli(capsys, "--config", str(config), "migrate")
    assert code == 0
    assert f"upgraded from schema v{old} to v{SCHEMA_VERSION}" in out
    bak = tmp_path / "data" / f"pipeline.db.v{old}.bak"
    assert user_version(bak) == old
    assert user_version(db) == SCHEMA_VERSION
    conn = sqlite3.connect(bak)
    assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 1
    conn.close()
    code, out, _ = await cli(capsys, "--config", str(config), "migrate")
    assert (code, "is current; nothing to do" in out) == (0, True)


@pytest.mark.anyio
async def test_rule_sync_upgrades_with_a_backup_and_logs_it(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Opening for writing (sync/run) upgrades an older file after copying it, and logs the upgrade."""
    db = tmp_path / "pipeline.db"
    older_log(db, SCHEMA_VERSION - 1)
    with caplog.at_level(logging.WARNING, logger="pipeline.eventlog.sqlite"):
        async with await SqliteEventLog.open(db) as log:
            assert await log.max_position() == 1
    assert user_version(db) == SCHEMA_VERSION
    assert (tmp_path / f"pipeline.db.v{SCHEMA_VERSION - 1}.bak").exists()
    assert "upgrading the event log" in caplog.text


@pytest.mark.anyio
async def test_backup_copies_a_log_while_it_is_open_for_writing(
    config: Path, world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`pipeline backup FILE` copies every event while another connection holds the log; refuses to overwrite."""
    code, _, _ = await cli(capsys, "--config", str(config), "sync")
    assert code == 0
    db = tmp_path / "data" / "pipeline.db"
    async with await SqliteEventLog.open(db) as log:  # as `run` would hold it
        events = await log.max_position()
        code, out, _ = await cli(capsys, "--config", str(config), "backup", str(tmp_path / "copy.db"))
        assert code == 0
        assert "copied to" in out
    conn = sqlite3.connect(tmp_path / "copy.db")
    assert conn.execute("SELECT max(position) FROM events").fetchone()[0] == events
    conn.close()
    code, _, err = await cli(capsys, "--config", str(config), "backup", str(tmp_path / "copy.db"))
    assert code == 2
    assert "exists already" in err


# ---------------------------------------------------------------------------------------------- status port


@pytest.mark.anyio
async def test_rule_a_taken_status_port_is_one_line_naming_the_key(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`run` with status_port taken by another socket: one line naming status_host/status_port, exit 2."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        prepend(config, f"status_port = {port}\n")
        code, _, err = await cli(capsys, "--config", str(config), "run")
    assert code == 2
    assert f"status_port = {port}: cannot listen on 127.0.0.1:{port}" in err
    assert len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------------------------------ options and help


def test_options_work_before_and_after_the_command(monkeypatch: pytest.MonkeyPatch) -> None:
    """`--config` and `-v` are read on either side of the command; `--json` also after the audit question."""
    parser = build_parser()
    assert parser.parse_args(["sync", "--config", "f.toml"]).config == "f.toml"
    assert parser.parse_args(["--config", "f.toml", "sync"]).config == "f.toml"
    assert parser.parse_args(["--config", "f.toml", "sync", "-v"]).verbose is True
    assert parser.parse_args(["sync"]).config is None
    assert parser.parse_args(["audit", "stats", "--json"]).json is True
    assert parser.parse_args(["audit", "--json", "stats"]).json is True
    assert parser.parse_args(["audit", "stats"]).json is False
    args = parser.parse_args(["audit", "--config", "a.toml", "sql", "SELECT 1", "--config", "b.toml"])
    assert (args.config, args.timeout) == ("b.toml", 30.0)


def test_replay_help_says_what_the_flags_do(capsys: pytest.CaptureFixture[str]) -> None:
    """--dry-run says it still records an audit event; --resend-orders says which orders go again and when not."""
    with pytest.raises(SystemExit):
        main(["replay", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(a replay.recorded audit event is still written)" in text
    assert "even if the order was delivered before (never once the warehouse has started on it)" in text


def test_every_argument_has_help() -> None:
    """Every option and positional of every command and audit question says what it is for."""
    missing: list[str] = []

    def walk(parser: argparse.ArgumentParser, name: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for choice, sub in action.choices.items():
                    walk(sub, f"{name} {choice}")
            elif not action.help or action.help == argparse.SUPPRESS:
                missing.append(f"{name}: {action.dest}")

    walk(build_parser(), "pipeline")
    assert missing == []


# ------------------------------------------------------------------------------------------------------- logs


def test_json_log_lines_carry_the_context_fields() -> None:
    """`--log-format json`: one JSON object a line, with tenant/stage/entity when the call gave them."""
    record = logging.LogRecord("pipeline.x", logging.INFO, __file__, 1, "sent %s", ("it",), None)
    record.tenant, record.stage, record.entity = "acme", "sender.ongoing", "article:A1"
    line = json.loads(JsonLines().format(record))
    assert line["message"] == "sent it"
    assert (line["level"], line["tenant"], line["stage"], line["entity"]) == (
        "INFO",
        "acme",
        "sender.ongoing",
        "article:A1",
    )


@pytest.mark.anyio
@pytest.mark.usefixtures("restore_logging")
async def test_log_context_binds_tenant_and_stage_for_started_tasks(tmp_path: Path) -> None:
    """Fields bound with log_context reach the JSON lines of tasks started inside the block, and only those."""
    path = tmp_path / "log.jsonl"
    with path.open("w", encoding="utf-8") as stream:
        configure_logging(verbose=False, json_lines=True, service=True, stream=stream)
        worker = logging.getLogger("pipeline.worker")

        async def tenant_loop() -> None:
            worker.info("inside")

        with log_context(tenant="acme", stage="poll"):
            async with anyio.create_task_group() as tg:
                tg.start_soon(tenant_loop)
        worker.info("outside")
    inside, outside = (json.loads(line) for line in read(path).splitlines())
    assert (inside["tenant"], inside["stage"], inside["message"]) == ("acme", "poll", "inside")
    assert "tenant" not in outside


@pytest.mark.usefixtures("restore_logging")
def test_verbose_shows_pipeline_detail_but_not_aiosqlite(tmp_path: Path) -> None:
    """-v turns the pipeline's loggers to DEBUG; aiosqlite (every statement at DEBUG) stays quiet."""
    with (tmp_path / "log.txt").open("w", encoding="utf-8") as stream:
        configure_logging(verbose=True, json_lines=False, service=False, stream=stream)
        logging.getLogger("pipeline.projectors").debug("pipeline detail")
        logging.getLogger("aiosqlite").debug("executing SELECT 1")
    text = (tmp_path / "log.txt").read_text(encoding="utf-8")
    assert "pipeline detail" in text
    assert "executing" not in text


# ------------------------------------------------------------------------------------------------------ check


@pytest.mark.anyio
async def test_check_reports_each_tenant_and_writes_nothing(
    world: World, config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """All credentials good: a table with OK per tenant and system, exit 0; no write anywhere, no log file."""
    code, out, _ = await cli(capsys, "--config", str(config), "check")
    assert code == 0, out
    for t in world.tenants:
        assert t.name in out
    assert out.count("OK") == 2 * len(world.tenants)
    assert "FAIL" not in out
    assert world.ongoing.writes() == []
    for t in world.tenants:
        assert {r.method for r in world.poweroffice.requests_of(t.client_key)} <= {"GET", "POST"}  # POST: token
    assert not (tmp_path / "data").exists()


@pytest.mark.anyio
async def test_check_names_a_refused_key_and_a_wrong_goods_owner(
    world: World, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A wrong client key fails PowerOffice for that tenant; an unknown goods owner user fails Ongoing; exit 1."""
    first, second = world.tenants
    edit(config, first.client_key, "not-a-valid-key")
    edit(
        config,
        f"ongoing_goods_owner_id = {second.goods_owner_id}",
        f'ongoing_goods_owner_id = {second.goods_owner_id}\nongoing_username = "x"\nongoing_password = "y"',
    )
    code, out, _ = await cli(capsys, "--config", str(config), "check")
    assert code == 1
    lines = {line.split("│")[1].strip(): line for line in out.splitlines() if line.count("│") >= 3}
    assert "FAIL" in lines[first.name].split("│")[2]
    assert "OK" in lines[first.name].split("│")[3]
    assert "OK" in lines[second.name].split("│")[2]
    assert "FAIL HTTP 401" in lines[second.name].split("│")[3]


@pytest.mark.anyio
@pytest.mark.usefixtures("restore_logging")
async def test_sync_logs_one_json_line_per_tenant_and_one_per_cycle(
    world: World, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--log-format json -v sync`: each line is JSON; the cycle lines carry tenant and every count."""
    code, _, err = await cli(capsys, "--log-format", "json", "-v", "--config", str(config), "sync")
    assert code == 0
    lines = [json.loads(line) for line in err.splitlines()]
    mine = [line for line in lines if line["logger"] == "pipeline.cycle"]
    assert sorted(line.get("tenant", "") for line in mine) == sorted(["", *(t.name for t in world.tenants)])
    for line in mine:
        assert line["level"] == "INFO"
        for key in ("observed=", "commands=", "delivered=", "failed=", "quarantined=", "waiting=", "duration="):
            assert key in line["message"]
    assert not [line for line in lines if line["logger"].startswith("aiosqlite")]


@pytest.mark.anyio
async def test_sync_summary_has_a_legend_and_counts_observation_skips(
    world: World, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The summary's `skipped` counts observation.skipped (products a filter leaves out) and command.skipped."""
    first = world.tenants[0]
    edit(config, f'name = "{first.name}"', f'name = "{first.name}"\nproduct_group_codes = ["no-such-group"]')
    code, out, _ = await cli(capsys, "--config", str(config), "sync")
    assert code == 0
    assert LEGEND in " ".join(out.split())
    db = load_settings(config).database
    conn = sqlite3.connect(db)
    for t in world.tenants:
        (expected,) = conn.execute(
            "SELECT count(*) FROM events WHERE tenant = ? AND type IN ('observation.skipped', 'command.skipped')",
            (t.name,),
        ).fetchone()
        row = next(line for line in out.splitlines() if f" {t.name} " in line and "│" in line)
        cells = [c.strip() for c in row.split("│")[1:-1]]
        assert int(cells[4]) == expected
    conn.close()
    assert expected_first(db, first.name) == len(first.company.products)


@pytest.mark.anyio
@pytest.mark.usefixtures("restore_logging")
async def test_retries_log_tenant_method_path_attempt_and_delay(
    world: World, config: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A 503 on one Ongoing read is retried, and the retry is one INFO line naming what and when."""
    install_retry_log()
    world.ongoing.faults.add(Fault("status", status=503), method="GET", path="/articles$", times=1)
    with caplog.at_level(logging.INFO, logger="pipeline.retries"):
        async with Runtime(load_settings(config)) as runtime:
            await runtime.cycle()
    (record,) = [r for r in caplog.records if r.name == "pipeline.retries"]
    assert record.levelno == logging.INFO
    assert record.__dict__["method"] == "GET"
    assert record.__dict__["path"].endswith("/articles")
    assert record.__dict__["attempt"] == 1
    assert record.__dict__["tenant"] in {t.name for t in world.tenants}
    assert "retry 1 in" in record.getMessage()


# ----------------------------------------------------------------------------------------------------- reload


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def write_tenants(config: Path, full: str, count: int) -> None:
    head, *tables = full.split("[[tenants]]")
    config.write_text(head + "".join(f"[[tenants]]{t}" for t in tables[:count]), encoding="utf-8")


@pytest.mark.anyio
async def test_sighup_adds_a_tenant_at_the_next_cycle(
    world: World, config: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """`run`: SIGHUP after a tenant was added to the file runs a cycle with it at once."""
    full = read(config)
    write_tenants(config, "status_port = 0\n" + full, 1)
    settings = load_settings(config)
    stop = anyio.Event()
    states: list[TenantState] = []
    cycled = anyio.Event()

    def record(state: TenantState) -> None:
        states.append(state)
        cycled.set()

    async def next_cycle() -> TenantState:
        nonlocal cycled
        await cycled.wait()
        cycled = anyio.Event()
        return states[-1]

    with caplog.at_level(logging.INFO, logger="pipeline"):
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                lambda: run_forever(
                    Console(file=io.StringIO()), settings, stop=stop, cycled=record, hangup=signal.SIGHUP
                )
            )
            first = await next_cycle()
            assert first.name == world.tenants[0].name
            write_tenants(config, "status_port = 0\n" + full, 2)
            os.kill(os.getpid(), signal.SIGHUP)
            # The added tenant's first cycle starts at once, without waiting for the interval.
            while (await next_cycle()).name != world.tenants[1].name:
                pass
            stop.set()
    assert {s.name for s in states} == {t.name for t in world.tenants}
    assert f"reload: tenant {world.tenants[1].name}: added" in caplog.text


@pytest.mark.anyio
async def test_a_reload_with_a_broken_file_keeps_the_running_config(
    config: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An invalid file on SIGHUP: its problems are logged, nothing is pending, the runtime's settings stay."""
    settings = load_settings(config)
    runtime = SimpleNamespace(settings=settings)
    reloads = Reloads(runtime)  # type: ignore[arg-type]
    edit(config, "[poweroffice]", "interval_seconds = nan\n[poweroffice]")
    with caplog.at_level(logging.INFO, logger="pipeline"):
        reloads.reload()
        reloads.apply()
    assert "reload refused, the running config stays" in caplog.text
    assert "interval_seconds: expected a finite number" in caplog.text
    assert runtime.settings is settings
