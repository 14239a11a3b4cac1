"""The shared HTTP edge: aiohttp failures and error bodies become the project's errors here, once.

Both clients call `send()` for every request. It returns the status and body of a successful answer, or raises:
- `TransientApiError` (timeouts, connection errors, 5xx) / `RateLimitedError` (429, with Retry-After);
- `PermanentApiError` (other 4xx), with the trimmed detail of a ProblemDetails or ASP.NET `{"Message": …}` body.

`retrying()` wraps a call in bounded retries (attempts and total time, exponential backoff with jitter, Retry-After
honoured) using stamina; `stamina.set_testing(True)` removes the waits in tests.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

import aiohttp
import orjson
import stamina

from pipeline.errors import ApiError, PermanentApiError, RateLimitedError, TransientApiError

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body) if self.body else None


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How hard to retry transient failures. Bounded in attempts *and* total time."""

    attempts: int = 6
    timeout: float = 120.0
    wait_initial: float = 0.2
    wait_max: float = 15.0
    wait_jitter: float = 0.5
    # A 429 with no Retry-After waits at least this long (PowerOffice asks for >= 1 s).
    rate_limit_wait: float = 1.0


def error_detail(body: bytes) -> str:
    """The human part of an error body: ProblemDetails (either key case), `{"Message": …}`, OAuth errors, text."""
    if not body:
        return ""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body.decode("utf-8", "replace")
    if isinstance(data, dict):
        folded = {str(k).lower(): v for k, v in data.items()}
        parts = [
            str(folded[k])
            for k in ("title", "detail", "message", "error", "error_description")
            if folded.get(k) not in (None, "")
        ]
        if parts:
            return " - ".join(parts)
    return body.decode("utf-8", "replace")


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """Parse a Retry-After header: delta-seconds or an HTTP date. None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def classify(
    system: str,
    method: str,
    path: str,
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    tenant: str | None,
) -> ApiError:
    """The error for a non-2xx answer."""
    detail = error_detail(body)
    if status == 429:
        return RateLimitedError(
            system,
            method,
            path,
            status,
            detail,
            tenant=tenant,
            retry_after=retry_after_seconds(headers.get("Retry-After")),
        )
    if status >= 500 or status in (408,):
        return TransientApiError(
            system,
            method,
            path,
            status,
            detail,
            tenant=tenant,
            retry_after=retry_after_seconds(headers.get("Retry-After")),
        )
    return PermanentApiError(system, method, path, status, detail, tenant=tenant)


# --- Metrics hook: `pipeline.metrics` listens here. The edge only reports each answer; it keeps no counts. ---
# A listener gets (system, method, status or None when no answer came, seconds, tenant) and must not raise.
RequestListener = Callable[[str, str, int | None, float, str | None], None]
request_listeners: list[RequestListener] = []


def _report(system: str, method: str, status: int | None, started: float, tenant: str | None) -> None:
    for listener in request_listeners:
        listener(system, method, status, time.monotonic() - started, tenant)


async def send(
    session: aiohttp.ClientSession,
    system: str,
    method: str,
    url: str,
    path: str,
    *,
    tenant: str | None = None,
    timeout: float = 30.0,
    **kwargs: Any,
) -> Response:
    """One HTTP request; 2xx → Response, anything else → the project's error.

    `path` is what errors show (no host, no query string with keys in it).
    """
    started = time.monotonic()
    try:
        async with session.request(method, url, timeout=aiohttp.ClientTimeout(total=timeout), **kwargs) as resp:
            body = await resp.read()
            headers = {k: v for k, v in resp.headers.items()}
            status = resp.status
    except TimeoutError as exc:
        _report(system, method, None, started, tenant)
        raise TransientApiError(system, method, path, None, "timed out", tenant=tenant) from exc
    except aiohttp.ClientError as exc:
        _report(system, method, None, started, tenant)
        raise TransientApiError(
            system, method, path, None, f"connection failed: {type(exc).__name__}", tenant=tenant
        ) from exc
    _report(system, method, status, started, tenant)
    if status >= 400:
        raise classify(system, method, path, status, headers, body, tenant)
    return Response(status, headers, body)


def _hook(policy: RetryPolicy) -> Callable[[Exception], bool | float]:
    def hook(exc: Exception) -> bool | float:
        if isinstance(exc, TransientApiError):
            if exc.retry_after is not None:
                return max(exc.retry_after, policy.rate_limit_wait if exc.status == 429 else 0.0)
            if isinstance(exc, RateLimitedError):
                return policy.rate_limit_wait
            return True
        return False

    return hook


@dataclass(slots=True)
class Attempts:
    """Counts the attempts a `retrying` call made (for outcome events)."""

    count: int = 0


async def retrying(
    policy: RetryPolicy,
    call: Callable[[], Awaitable[T]],
    attempts: Attempts | None = None,
) -> T:
    """Run `call` until it succeeds, raises a non-transient error, or the policy's bounds are reached.

    Raises the last error when the bounds are reached.
    """
    counter = attempts if attempts is not None else Attempts()
    async for attempt in stamina.retry_context(
        on=_hook(policy),
        attempts=policy.attempts,
        timeout=policy.timeout,
        wait_initial=policy.wait_initial,
        wait_max=policy.wait_max,
        wait_jitter=policy.wait_jitter,
    ):
        with attempt:
            counter.count += 1
            return await call()
    raise AssertionError("unreachable: stamina re-raises the last error")  # pragma: no cover
