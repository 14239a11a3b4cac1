"""The `pipeline` command: parses arguments, loads the config, calls the runtime. Nothing else lives here."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from datetime import UTC, datetime

import anyio
from rich.console import Console

from pipeline import __version__
from pipeline.config import Settings, load_settings
from pipeline.errors import ConfigError, PipelineError

EXIT_OK, EXIT_FAILED, EXIT_SETUP = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pipeline",
        description="Sync PowerOffice Go and Ongoing WMS through an append-only event log.",
    )
    parser.add_argument("--version", action="version", version=f"pipeline {__version__}")
    parser.add_argument("--config", metavar="FILE", help="TOML configuration (see README)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug detail")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser("demo", help="run a full sync against built-in fake APIs, then show what happened")
    demo.add_argument("--dir", default="demo-data", help="where the demo keeps its database (default: demo-data)")
    sub.add_parser("sync", help="one cycle for every tenant: poll, project, send, stock back; then exit")
    sub.add_parser("run", help="the long-running service: a cycle every interval until SIGINT/SIGTERM")

    replay = sub.add_parser("replay", help="re-project a time window with the current mapping")
    replay.add_argument("--from", dest="window_from", required=True, metavar="T", help="RFC 3339 start (inclusive)")
    replay.add_argument("--to", dest="window_to", required=True, metavar="T", help="RFC 3339 end (exclusive)")
    replay.add_argument("--tenant")
    replay.add_argument("--kind", choices=["products", "orders", "stock"])
    replay.add_argument("--dry-run", action="store_true", help="show the per-field diff, append and send nothing")
    replay.add_argument("--resend-orders", action="store_true", help="send changed orders even if delivered")

    audit = sub.add_parser("audit", help="history of an entity, lineage, failures, stats, read-only SQL")
    audit.add_argument("--json", action="store_true", help="machine-readable output")
    what = audit.add_subparsers(dest="audit", metavar="QUESTION", required=True)
    history = what.add_parser("history", help="what happened to one entity (product:<id>, invoice:<id>, ...)")
    history.add_argument("tenant")
    history.add_argument("entity")
    lineage = what.add_parser("lineage", help="the causation chain through one log position")
    lineage.add_argument("position", type=int)
    failures = what.add_parser("failures", help="quarantined entities and standing mapping failures")
    failures.add_argument("--tenant")
    what.add_parser("stats", help="event counts per tenant and type")
    sql = what.add_parser("sql", help="any read-only SQL against the log")
    sql.add_argument("query")
    what.add_parser("rebuild-heads", help="recompute the derived entity_heads table from the events")

    redrive = sub.add_parser("redrive", help="release a quarantined entity so its latest command is sent again")
    redrive.add_argument("tenant")
    redrive.add_argument("entity")
    redrive.add_argument("--reason", default="operator re-drive")

    migrate_log = sub.add_parser(
        "migrate-log", help="copy a SQLite event log into PostgreSQL (cursors and checkpoints too), then verify it"
    )
    migrate_log.add_argument("--from", dest="source", required=True, metavar="FILE", help="the SQLite log")
    migrate_log.add_argument(
        "--to", dest="target", required=True, metavar="URL", help="postgresql://… (password: PGPASSWORD or .pgpass)"
    )

    fakes = sub.add_parser("fakes", help="serve both fake APIs on localhost for manual runs")
    fakes.add_argument("--host", default="127.0.0.1")
    fakes.add_argument("--poweroffice-port", type=int, default=8081)
    fakes.add_argument("--ongoing-port", type=int, default=8082)
    fakes.add_argument("--tenants", type=int, default=3)
    fakes.add_argument("--write-config", metavar="FILE", help="write a pipeline config pointing at the fakes")
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    if not args.config:
        raise ConfigError(["--config FILE is required for this command"], "command line")
    return load_settings(args.config)


def _time(text: str, name: str) -> datetime:
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError([f"{name}: expected an RFC 3339 date-time, got {text!r}"], "command line") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


async def _rebuild_heads(console: Console, settings: Settings, as_json: bool) -> int:
    import orjson

    from pipeline.audit import rebuild_heads
    from pipeline.eventlog import open_log

    async with await open_log(settings.database) as log:
        done = await rebuild_heads(log)
    if as_json:
        console.print_json(orjson.dumps({"heads": done.heads, "wrong": done.wrong}).decode())
    else:
        console.print(f"entity_heads rebuilt from the log: {done.heads} rows, {done.wrong} were wrong or missing")
    return EXIT_OK


async def _migrate_log(console: Console, source: str, target: str) -> int:
    from pathlib import Path

    from pipeline.eventlog import is_postgres
    from pipeline.eventlog.migrate import migrate_log
    from pipeline.eventlog.postgres import redact

    if not is_postgres(target):
        raise ConfigError([f"--to: expected a postgresql:// URL, got {redact(target)!r}"], "command line")
    done = await migrate_log(Path(source), target)
    console.print(
        f"{redact(target)}: {done.events} events ({done.copied} copied now), {done.cursors} cursors,"
        f" {done.checkpoints} checkpoints; verified, sha256 {done.checksum}"
    )
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.command is None:
        parser.print_help()
        return EXIT_SETUP
    console = Console(soft_wrap=True)
    try:
        return _dispatch(args, console)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_SETUP
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace, console: Console) -> int:
    # Imported here so that `pipeline --help` and config errors stay fast and need no I/O libraries.
    from pipeline import commands

    if args.command == "demo":
        return anyio.run(commands.demo, console, args.dir)
    if args.command == "fakes":
        return anyio.run(
            commands.serve_fakes,
            console,
            args.host,
            args.poweroffice_port,
            args.ongoing_port,
            args.tenants,
            args.write_config,
        )
    if args.command == "migrate-log":
        return anyio.run(_migrate_log, console, args.source, args.target)
    settings = _settings(args)
    if args.command == "sync":
        return anyio.run(commands.sync, console, settings)
    if args.command == "run":
        return anyio.run(commands.run_forever, console, settings, (signal.SIGINT, signal.SIGTERM))
    if args.command == "replay":
        window = (_time(args.window_from, "--from"), _time(args.window_to, "--to"))
        if args.tenant and args.tenant not in {t.name for t in settings.tenants}:
            raise ConfigError([f"--tenant: no tenant named {args.tenant!r}"], "command line")
        return anyio.run(
            lambda: commands.replay(
                console,
                settings,
                window,
                tenant=args.tenant,
                kind=args.kind,
                dry_run=args.dry_run,
                resend_orders=args.resend_orders,
            )
        )
    if args.command == "audit" and args.audit == "rebuild-heads":
        return anyio.run(_rebuild_heads, console, settings, args.json)
    if args.command == "audit":
        return anyio.run(commands.audit, console, settings, args)
    if args.command == "redrive":
        return anyio.run(commands.redrive, console, settings, args.tenant, args.entity, args.reason)
    raise AssertionError(args.command)  # pragma: no cover: argparse rejects unknown commands
