"""The `pipeline` command: parses arguments, loads the config, calls the runtime. Nothing else lives here."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from datetime import UTC, datetime

import anyio
from rich.console import Console

from pipeline import __version__
from pipeline.config import Settings, load_settings
from pipeline.errors import ConfigError, PipelineError, scrub
from pipeline.logs import configure_logging

EXIT_OK, EXIT_FAILED, EXIT_SETUP = 0, 1, 2


def _shared_options() -> argparse.ArgumentParser:
    """Options that work before or after the command (`pipeline --config F sync` = `pipeline sync --config F`).

    Their defaults are set once on the top parser; here they are SUPPRESSed, so a subcommand that is not given
    one leaves the top-level value alone.
    """
    shared = argparse.ArgumentParser(add_help=False)
    shared.add_argument(
        "--config",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help="TOML configuration (see README); default: $PIPELINE_CONFIG",
    )
    shared.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log the pipeline's debug detail"
    )
    shared.add_argument(
        "--log-format",
        choices=["text", "json"],
        default=argparse.SUPPRESS,
        help="log lines as text (default) or one JSON object per line (journald, Loki)",
    )
    return shared


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pipeline",
        description="Sync PowerOffice Go and Ongoing WMS through an append-only event log.",
        parents=[_shared_options()],  # its own copy: set_defaults below changes these actions' defaults
    )
    parser.set_defaults(config=None, verbose=False, log_format="text")
    shared = _shared_options()
    parser.add_argument("--version", action="version", version=f"pipeline {__version__}", help="print the version")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=text, description=text, parents=[shared])

    demo = command("demo", "run a full sync against built-in fake APIs, then show what happened")
    demo.add_argument("--dir", default="demo-data", help="where the demo keeps its database (default: demo-data)")
    command("sync", "one cycle for every tenant: poll, project, send, stock back; then exit (creates the log)")
    command("run", "the long-running service: a cycle every interval until SIGINT/SIGTERM (creates the log)")
    command("migrate", "upgrade the event log's schema to this release's, keeping a backup copy first")
    backup = command("backup", "write a consistent copy of the event log (safe while `run` is running)")
    backup.add_argument("file", metavar="FILE", help="where to write the copy (must not exist yet)")
    command("check", "check the config and each tenant's credentials against both systems; reads only")

    replay = command("replay", "re-project a time window with the current mapping")
    replay.add_argument("--from", dest="window_from", required=True, metavar="T", help="RFC 3339 start (inclusive)")
    replay.add_argument("--to", dest="window_to", required=True, metavar="T", help="RFC 3339 end (exclusive)")
    replay.add_argument("--tenant", metavar="NAME", help="only this tenant (default: every tenant)")
    replay.add_argument(
        "--kind", choices=["products", "orders", "stock"], help="only this kind of observation (default: all)"
    )
    replay.add_argument(
        "--dry-run",
        action="store_true",
        help="show the per-field diff and the failures; append no commands and send nothing"
        " (a replay.recorded audit event is still written)",
    )
    replay.add_argument(
        "--resend-orders",
        action="store_true",
        help="mark the replayed order commands that differ from their last command as forced, so the next sync"
        " sends them even if the order was delivered before (never once the warehouse has started on it)",
    )

    audit = command("audit", "history of an entity, lineage, failures, stats, read-only SQL")
    json_help = "machine-readable output (JSON)"
    audit.add_argument("--json", action="store_true", help=json_help)
    what = audit.add_subparsers(dest="audit", metavar="QUESTION", required=True)

    def question(name: str, text: str) -> argparse.ArgumentParser:
        q = what.add_parser(name, help=text, description=text, parents=[shared])
        q.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help=json_help)
        return q

    history = question("history", "what happened to one entity, with everything it caused")
    history.add_argument("tenant", help="tenant name, as in the config")
    history.add_argument(
        "entity",
        help="an entity key (product:<id>, invoice:<id>, article:<sku>, order:<id>, stock:<sku>, ...),"
        " or a SKU (P-00001), an order number or an invoice number",
    )
    lineage = question("lineage", "the whole causation chain through one log position")
    lineage.add_argument("position", type=int, help="a log position (the #number audit prints)")
    failures = question("failures", "quarantined entities and standing mapping failures (exit 1 if any)")
    failures.add_argument("--tenant", metavar="NAME", help="only this tenant")
    stats = question("stats", "event counts per tenant and type; delivery freshness")
    stats.add_argument("--since", metavar="T", help="freshness of deliveries since T, RFC 3339 (default: all)")
    sql = question("sql", "read-only SQL against the log (columns named by the query's aliases)")
    sql.add_argument("query", help='one SQL statement, e.g. "SELECT type, count(*) AS n FROM events GROUP BY 1"')
    sql.add_argument(
        "--timeout", type=float, default=30.0, metavar="S", help="stop the query after S seconds (default: 30)"
    )
    question("rebuild-heads", "recompute the derived heads and flags tables from the events (repairs, never loses)")

    redrive = command("redrive", "release a quarantined entity so its latest command is sent again")
    redrive.add_argument("tenant", help="tenant name, as in the config")
    redrive.add_argument("entity", help="the quarantined entity's key, as `audit failures` shows it")
    redrive.add_argument("--reason", default="operator re-drive", help="recorded with the re-drive, for audit")

    reconcile = command("reconcile", "compare PowerOffice with Ongoing; exit 1 when they differ")
    reconcile.add_argument("--tenant", metavar="NAME", help="only this tenant")
    reconcile.add_argument("--kind", choices=["products", "orders", "stock"], help="one kind (default: all)")
    reconcile.add_argument("--since", metavar="T", help="orders: invoices since T (default: orders_since)")
    reconcile.add_argument("--repair", action="store_true", help="append the commands that fix what may be fixed")
    reconcile.add_argument("--json", action="store_true", help="machine-readable output")

    migrate_log = command(
        "migrate-log", "copy a SQLite event log into PostgreSQL (cursors and checkpoints too), then verify it"
    )
    migrate_log.add_argument("--from", dest="source", required=True, metavar="FILE", help="the SQLite log")
    migrate_log.add_argument(
        "--to", dest="target", required=True, metavar="URL", help="postgresql://… (password: PGPASSWORD or .pgpass)"
    )

    fakes = command("fakes", "serve both fake APIs on localhost for manual runs")
    fakes.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    fakes.add_argument("--poweroffice-port", type=int, default=8081, help="PowerOffice port (0: any free port)")
    fakes.add_argument("--ongoing-port", type=int, default=8082, help="Ongoing port (0: any free port)")
    fakes.add_argument("--tenants", type=int, default=3, help="how many goods owners to generate (default: 3)")
    fakes.add_argument("--write-config", metavar="FILE", help="write a pipeline config pointing at the fakes")
    fakes.add_argument(
        "--activity",
        action="store_true",
        help="keep the world moving: every few seconds a price, a payment, a stock movement or a malformed record",
    )
    fakes.add_argument("--seed", type=int, default=2026, help="seed of --activity's changes (default: 2026)")
    fakes.add_argument("--every", type=float, default=3.0, metavar="SECONDS", help="seconds between changes")
    return parser


# The commands that call PowerOffice or Ongoing; the others work on the log alone and need no secrets.
NEEDS_SECRETS = {"sync", "run", "check"}


def _settings(args: argparse.Namespace) -> Settings:
    path = args.config or os.environ.get("PIPELINE_CONFIG")
    if not path:
        raise ConfigError(["--config FILE (or PIPELINE_CONFIG) is required for this command"], "command line")
    settings = load_settings(path, secrets=args.command in NEEDS_SECRETS)
    from pipeline.clients.http import remember_configured_secrets  # imports aiohttp: not for --help

    remember_configured_secrets(settings)  # so no output shows one, even from events stored long ago
    return settings


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

    async with await open_log(settings.database, mode="existing") as log:
        done = await rebuild_heads(log)
    if as_json:
        console.print_json(orjson.dumps({"heads": done.heads, "wrong": done.wrong, "flags": done.flags}).decode())
    else:
        console.print(
            f"entity_heads rebuilt from the log: {done.heads} rows, {done.wrong} were wrong or missing"
            f" (entity_flags too: {done.flags} entities flagged)"
        )
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
    configure_logging(verbose=args.verbose, json_lines=args.log_format == "json", service=args.command == "run")
    if args.command is None:
        parser.print_help()
        return EXIT_SETUP
    console = Console(soft_wrap=True)
    try:
        return _dispatch(args, console)
    except ConfigError as exc:  # names key paths, never values: printed as it is
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except PipelineError as exc:
        print(f"error: {scrub(str(exc))}", file=sys.stderr)
        return EXIT_SETUP
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace, console: Console) -> int:
    # Imported here so that `pipeline --help` and config errors stay fast and need no I/O libraries.
    from pipeline import commands, operate

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
            args.every if args.activity else None,
            args.seed,
        )
    if args.command == "migrate-log":
        return anyio.run(_migrate_log, console, args.source, args.target)
    settings = _settings(args)
    if args.command == "sync":
        return anyio.run(commands.sync, console, settings)
    if args.command == "run":
        return anyio.run(
            lambda: commands.run_forever(console, settings, (signal.SIGINT, signal.SIGTERM), hangup=signal.SIGHUP)
        )
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
    if args.command == "migrate":
        return anyio.run(operate.migrate, console, settings)
    if args.command == "backup":
        return anyio.run(operate.backup, console, settings, args.file)
    if args.command == "check":
        return anyio.run(operate.check, console, settings)
    if args.command == "audit" and args.audit == "rebuild-heads":
        return anyio.run(_rebuild_heads, console, settings, args.json)
    if args.command == "audit":
        if getattr(args, "since", None):
            args.since = _time(args.since, "--since")
        return anyio.run(commands.audit, console, settings, args)
    if args.command == "redrive":
        return anyio.run(commands.redrive, console, settings, args.tenant, args.entity, args.reason)
    if args.command == "reconcile":
        from pipeline import reconcile

        if args.tenant and args.tenant not in {t.name for t in settings.tenants}:
            raise ConfigError([f"--tenant: no tenant named {args.tenant!r}"], "command line")
        since = _time(args.since, "--since") if args.since else None
        return anyio.run(
            lambda: reconcile.command(
                console,
                settings,
                tenant=args.tenant,
                kinds=[args.kind] if args.kind else reconcile.KINDS,
                since=since,
                repair=args.repair,
                as_json=args.json,
            )
        )
    raise AssertionError(args.command)  # pragma: no cover: argparse rejects unknown commands
