"""The `pipeline` command: parses arguments, loads the config, calls the runtime. Nothing else lives here."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

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
    sub.add_parser("demo", help="run a full sync against built-in fake APIs, then show what happened")
    sub.add_parser("sync", help="one cycle for every tenant: poll, project, send, stock back; then exit")
    sub.add_parser("run", help="the long-running service: a cycle every interval")
    replay = sub.add_parser("replay", help="re-project a time window with the current mapping")
    replay.add_argument("--from", dest="window_from", required=True, metavar="T")
    replay.add_argument("--to", dest="window_to", required=True, metavar="T")
    replay.add_argument("--tenant")
    replay.add_argument("--kind", choices=["products", "orders", "stock"])
    replay.add_argument("--dry-run", action="store_true")
    audit = sub.add_parser("audit", help="history of an entity, failures, stats (read-only)")
    audit.add_argument("--json", action="store_true")
    fakes = sub.add_parser("fakes", help="serve both fake APIs on localhost for manual runs")
    fakes.add_argument("--host", default="127.0.0.1")
    fakes.add_argument("--poweroffice-port", type=int, default=8081)
    fakes.add_argument("--ongoing-port", type=int, default=8082)
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    if not args.config:
        raise ConfigError(["--config FILE is required for this command"], "command line")
    return load_settings(args.config)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.command is None:
        parser.print_help()
        return EXIT_SETUP
    try:
        if args.command in {"sync", "run", "replay", "audit"}:
            _settings(args)
        print(f"pipeline {args.command}: not built yet", file=sys.stderr)
        return EXIT_SETUP
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_SETUP
