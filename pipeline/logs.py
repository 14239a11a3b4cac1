"""Logging for the command line and the service: levels, text or JSON lines, and the cycle summary lines.

- The pipeline's own loggers (`pipeline.*`) log at INFO in `run` (a service's journal wants one line per cycle)
  and at WARNING in the interactive commands, whose summary is printed anyway; `-v` shows their DEBUG detail.
  Other libraries (aiosqlite logs every statement at DEBUG) stay at WARNING whatever `-v` says.
- `--log-format json` writes one JSON object per line (`time`, `level`, `logger`, `message`, and `tenant`,
  `stage`, `entity` when the call gave them as `extra=`), for journald or Loki.
- `log_context(tenant=…, stage=…)` binds those fields for everything logged below it in the same task and the
  tasks it starts (a context variable), so a per-tenant loop binds its tenant once and every line carries it.
- Every scheduled retry is one INFO line naming tenant, method, path, attempt and delay (a stamina hook that
  replaces stamina's own WARNING line, which names none of them; its Prometheus counter is kept).
- After every cycle: one INFO line per tenant and one for the cycle (`log_cycle`).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson

from pipeline.errors import ApiError, ScrubbingFilter

if TYPE_CHECKING:
    from stamina.instrumentation import RetryDetails

    from pipeline.runtime import CycleReport, TenantReport

# Fields a log call may pass as `extra=` that the JSON lines carry as their own keys.
CONTEXT_FIELDS = ("tenant", "stage", "entity", "method", "path", "attempt", "delay")

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_CONTEXT: ContextVar[dict[str, Any]] = ContextVar("pipeline_log_context", default={})  # noqa: B039 - never mutated


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Add `fields` (tenant, stage, entity) to every record logged inside the block, here and in started tasks."""
    token = _CONTEXT.set({**_CONTEXT.get(), **fields})
    try:
        yield
    finally:
        _CONTEXT.reset(token)


class ContextFields(logging.Filter):
    """Copies the bound `log_context` fields onto each record that does not carry them itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in _CONTEXT.get().items():
            if record.__dict__.get(name) is None:
                record.__dict__[name] = value
        return True


retries = logging.getLogger("pipeline.retries")
cycles = logging.getLogger("pipeline.cycle")


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
    handler.addFilter(ContextFields())
    handler.addFilter(ScrubbingFilter())  # no secret in a log line, even one a server echoed
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    own = logging.DEBUG if verbose else logging.INFO if service else logging.WARNING
    logging.getLogger("pipeline").setLevel(own)
    install_retry_log()


def log_retry(details: RetryDetails) -> None:
    """A stamina on-retry hook: one line per scheduled retry, with what was retried and how long it waits."""
    exc = details.caused_by
    if not isinstance(exc, ApiError):
        retries.info("retry %d in %.1f s after %s", details.retry_num, details.wait_for, type(exc).__name__)
        return
    answer = f"HTTP {exc.status}" if exc.status is not None else (exc.detail or "no answer")
    retries.info(
        "%s: %s %s %s -> %s; retry %d in %.1f s",
        exc.tenant or "-",
        exc.system,
        exc.method,
        exc.path,
        answer,
        details.retry_num,
        details.wait_for,
        extra={
            "tenant": exc.tenant,
            "stage": exc.system,
            "method": exc.method,
            "path": exc.path,
            "attempt": details.retry_num,
            "delay": round(details.wait_for, 3),
        },
    )


def install_retry_log() -> None:
    """Log retries our way instead of stamina's own log line; keep every other hook (its Prometheus counter, our
    `/metrics`)."""
    from stamina import instrumentation  # here: `pipeline --help` stays fast

    hooks = [
        hook
        for hook in instrumentation.get_on_retry_hooks()
        # stamina's default logging hook is a closure made by its `init_logging`
        if not getattr(hook, "__qualname__", "").startswith("init_logging.")
    ]
    if log_retry not in hooks:
        hooks.append(log_retry)
    instrumentation.set_on_retry_hooks(hooks)


def _counts(t: TenantReport) -> dict[str, int]:
    return {
        "observed": t.observed,
        "commands": t.commands,
        "delivered": t.delivered,
        "failed": t.failed,
        "quarantined": t.quarantined,
        "waiting": t.waiting,
    }


def log_tenant_cycle(t: TenantReport, seconds: float) -> None:
    """One INFO line for one tenant's cycle."""
    text = " ".join(f"{k}={v}" for k, v in _counts(t).items())
    problem = f" errors={len(t.errors)}" if t.errors else ""
    cycles.info(
        "tenant %s: %s duration=%.1fs%s", t.name, text, seconds, problem, extra={"tenant": t.name, "stage": "cycle"}
    )


def log_cycle(report: CycleReport, ended: datetime) -> None:
    """One INFO line per tenant and one for the whole cycle."""
    seconds = (ended - report.started).total_seconds()
    totals = dict.fromkeys(("observed", "commands", "delivered", "failed", "quarantined", "waiting"), 0)
    for t in report.tenants.values():
        for key, value in _counts(t).items():
            totals[key] += value
        log_tenant_cycle(t, seconds)
    text = " ".join(f"{k}={v}" for k, v in totals.items())
    cycles.info(
        "cycle: tenants=%d %s duration=%.1fs exit=%d",
        len(report.tenants),
        text,
        seconds,
        report.exit_code,
        extra={"stage": "cycle"},
    )
