"""The shared HTTP edge: aiohttp failures and error bodies become the project's errors here, once.

Both clients call `send()` for every request. It returns the status and body of a successful answer, or raises:
- `TransientApiError` (timeouts, connection errors, 5xx) / `RateLimitedError` (429, with Retry-After);
- `PermanentApiError` (other 4xx), with the trimmed detail of a ProblemDetails or ASP.NET `{"Message": …}` body.

`retrying()` wraps a call in bounded retries (attempts and total time, exponential backoff with jitter, Retry-After
honoured) using stamina; `stamina.set_testing(True)` removes the waits in tests.

Remote text is data. An error's detail is scrubbed here, before any error exists: of the credentials this very
request carried (its `Authorization` header in every form, subscription and API key headers; they are also
remembered, so that `pipeline.errors.scrub` removes them from any later text) and of anything shaped like a
credential. Response headers are kept case-insensitive (`retry-after` is `Retry-After`), and a `Retry-After`
is capped (`retry_after_cap`): a server asking for an hour never stalls a whole sync.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

import aiohttp
import orjson
import stamina

from pipeline.config import Settings
from pipeline.errors import (
    ApiError,
    PermanentApiError,
    RateLimitedError,
    TransientApiError,
    credential_values,
    remember_secrets,
    trim,
)

T = TypeVar("T")

# The longest Retry-After honoured unless the caller says otherwise (the config's `retry_after_cap_seconds`).
RETRY_AFTER_CAP = 30.0
# Request headers whose values are credentials (besides any whose name says key, secret, token or password).
_CREDENTIAL_HEADERS = {"authorization", "proxy-authorization", "cookie", "ocp-apim-subscription-key"}


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


def retry_after_seconds(
    value: str | None, now: datetime | None = None, *, cap: float = RETRY_AFTER_CAP
) -> float | None:
    """Parse a Retry-After header: delta-seconds or an HTTP date, at most `cap`. None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return min(max(0.0, seconds), max(0.0, cap))


def remember_configured_secrets(settings: Settings) -> None:
    """Have `scrub` remove every secret of the configuration from now on, with the Basic-auth forms each is sent in
    (`application_key:client_key`, `username:password`): also text the log stored before scrubbing existed."""
    po, wms = settings.poweroffice, settings.ongoing
    values = [po.application_key.reveal(), po.subscription_key.reveal(), wms.password.reveal()]
    logins = [(wms.username, wms.password.reveal())]
    for tenant in settings.tenants:
        values.append(tenant.poweroffice_client_key.reveal())
        logins.append((po.application_key.reveal(), tenant.poweroffice_client_key.reveal()))
        if tenant.ongoing_password is not None:
            values.append(tenant.ongoing_password.reveal())
            logins.append((tenant.ongoing_username or wms.username, tenant.ongoing_password.reveal()))
    for user, password in logins:
        if password:
            values.extend(credential_values(aiohttp.encode_basic_auth(user, password)))
    remember_secrets(*values)


def request_secrets(headers: Mapping[str, str] | None) -> list[str]:
    """The credential values among a request's headers (with the parts of an `Authorization` value)."""
    out: list[str] = []
    for name, value in (headers or {}).items():
        lowered = name.lower()
        if lowered in _CREDENTIAL_HEADERS or any(w in lowered for w in ("key", "secret", "token", "password")):
            out.extend(credential_values(str(value)))
    return [v for v in out if v]


def classify(
    system: str,
    method: str,
    path: str,
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    tenant: str | None,
    *,
    secrets: Sequence[str] = (),
    retry_after_cap: float = RETRY_AFTER_CAP,
) -> ApiError:
    """The error for a non-2xx answer. `headers` must be case-insensitive (aiohttp's are); the detail is scrubbed
    of `secrets` (the request's credentials) and of credential-shaped text."""
    detail = trim(error_detail(body), secrets=secrets)
    retry_after = retry_after_seconds(headers.get("Retry-After"), cap=retry_after_cap)
    if status == 429:
        return RateLimitedError(
            system,
            method,
            path,
            status,
            detail,
            tenant=tenant,
            retry_after=retry_after,
        )
    if status >= 500 or status in (408,):
        return TransientApiError(
            system,
            method,
            path,
            status,
            detail,
            tenant=tenant,
            retry_after=retry_after,
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
    retry_after_cap: float = RETRY_AFTER_CAP,
    **kwargs: Any,
) -> Response:
    """One HTTP request; 2xx → Response, anything else → the project's error.

    `path` is what errors show (no host, no query string with keys in it). A Retry-After longer than
    `retry_after_cap` seconds is taken as `retry_after_cap`.
    """
    secrets = request_secrets(kwargs.get("headers"))
    remember_secrets(*secrets, pinned=False)
    started = time.monotonic()
    try:
        async with session.request(method, url, timeout=aiohttp.ClientTimeout(total=timeout), **kwargs) as resp:
            body = await resp.read()
            headers = resp.headers.copy()  # stays case-insensitive: a `retry-after` is a `Retry-After`
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
        raise classify(
            system, method, path, status, headers, body, tenant, secrets=secrets, retry_after_cap=retry_after_cap
        )
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
    if policy.attempts == 1:  # one attempt, nothing to retry: no retry machinery on the path (the sender's
        counter.count += 1  # one-attempt writer makes one such call per write)
        return await call()
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
