"""Logging for the command line and the service: levels, text or JSON lines, and the cycle summary lines.

- The pipeline's own loggers (`pipeline.*`) log at INFO in `run` (a service's journal wants one line per cycle)
  and at WARNING in the interactive commands, whose summary is printed anyway; `-v` shows their DEBUG detail.
  Other libraries (aiosqlite logs every statement at DEBUG) stay at WARNING whatever `-v` says.
- `--log-format json` writes one JSON object per line (`time`, `level`, `logger`, `message`, and `tenant`,
  `stage`, `entity` when the call gave them as `extra=`), for journald or Loki.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any

import orjson

# Fields a log call may pass as `extra=` that the JSON lines carry as their own keys.
CONTEXT_FIELDS = ("tenant", "stage", "entity", "method", "path", "attempt", "delay")

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonLines(logging.Formatter):
    """One JSON object per record."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                out[name] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


def configure_logging(*, verbose: bool, json_lines: bool, service: bool, stream: Any = None) -> None:
    """Set up the root handler once per process (called by the CLI)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonLines() if json_lines else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    own = logging.DEBUG if verbose else logging.INFO if service else logging.WARNING
    logging.getLogger("pipeline").setLevel(own)
