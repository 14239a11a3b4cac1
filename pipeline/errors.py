"""The project's exceptions. Foreign errors (aiohttp, sqlite3, tomllib) are translated into these at the edge.

```
PipelineError
├── ConfigError                 bad configuration: carries every problem found, exit code 2
├── StoreError                  the event log failed (sqlite error, locked file, I/O)
│   └── SchemaVersionError      the database was written by a newer pipeline
├── CodecError                  an event cannot be encoded or decoded (unknown type, bad payload)
├── MappingError                a record cannot be mapped; names the field (never raised out of a projector)
└── ApiError                    a remote system answered badly or not at all
    ├── TransientApiError       worth retrying: timeouts, connection errors, 5xx, 429
    │   └── RateLimitedError    a 429: carries the server's Retry-After in seconds
    └── PermanentApiError       retrying will not help: other 4xx
        └── AuthError           credentials refused (PowerOffice `invalid_client`, 401 after renewal)
```

Every error carries the context an operator needs (system, method, path, status, a trimmed body) and never a
secret: clients pass paths without query strings that could carry keys, and bodies are trimmed and scrubbed.
"""

from __future__ import annotations

from collections.abc import Sequence

DETAIL_LIMIT = 300


def trim(text: str | None, limit: int = DETAIL_LIMIT) -> str:
    """Collapse whitespace and cut `text` to `limit` characters, marking the cut."""
    if not text:
        return ""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


class PipelineError(Exception):
    """Base of every error the project raises on purpose."""


class ConfigError(PipelineError):
    """The configuration is unusable. `problems` lists every problem, each starting with its key path."""

    exit_code = 2

    def __init__(self, problems: Sequence[str], source: str = "config") -> None:
        self.problems = tuple(problems)
        self.source = source
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{source}: {len(self.problems)} problem(s):\n{lines}")


class StoreError(PipelineError):
    """The event log could not do what was asked."""


class SchemaVersionError(StoreError):
    """The database file has a schema newer than this program understands."""


class CodecError(PipelineError):
    """An event could not be encoded or decoded."""


class MappingError(PipelineError):
    """A source record cannot be mapped. `field` names the offending source field."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")


class ApiError(PipelineError):
    """A call to a remote system failed.

    `status` is None when no HTTP answer arrived (timeout, refused or dropped connection).
    """

    transient = False

    def __init__(
        self,
        system: str,
        method: str,
        path: str,
        status: int | None,
        detail: str = "",
        *,
        tenant: str | None = None,
    ) -> None:
        self.system = system
        self.method = method
        self.path = path
        self.status = status
        self.detail = trim(detail)
        self.tenant = tenant
        where = f"{system} {method} {path}"
        who = f" [tenant {tenant}]" if tenant else ""
        code = f" -> {status}" if status is not None else " -> no response"
        tail = f": {self.detail}" if self.detail else ""
        super().__init__(f"{where}{code}{who}{tail}")


class TransientApiError(ApiError):
    """Timeouts, connection errors, 5xx and 429: retrying may succeed."""

    transient = True

    def __init__(
        self,
        system: str,
        method: str,
        path: str,
        status: int | None,
        detail: str = "",
        *,
        tenant: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(system, method, path, status, detail, tenant=tenant)
        self.retry_after = retry_after


class RateLimitedError(TransientApiError):
    """A 429. `retry_after` is the server's wait in seconds (None when it gave none)."""


class PermanentApiError(ApiError):
    """A 4xx other than 429: the request itself is wrong and will stay wrong."""


class AuthError(PermanentApiError):
    """The credentials were refused. The message names the tenant, never a key."""
