"""PowerOffice Go API v2 client (DESIGN §2; reference/poweroffice/NOTES.md).

One `PowerOfficeClient` per process (one aiohttp session, one limiter per subscription key); one
`TenantPowerOffice` per goods owner, made with `for_tenant`. Every HTTP request, token calls included:
- waits its turn at the subscription key's `RateLimiter` under the tenant's name;
- goes through `pipeline.clients.http.send`, so failures arrive as the project's errors
  (`TransientApiError`, `RateLimitedError`, `PermanentApiError`) with status, method, path and trimmed detail;
- is retried by `pipeline.clients.http.retrying` when transient (bounded attempts and time, jittered backoff);
  a 429 first pauses the whole key for `Retry-After` (at least `RetryPolicy.rate_limit_wait`).

Auth: OAuth2 client credentials. One token per client key, cached and renewed ahead of `expires_in`. A 401 on an
API call renews the token once and retries once; a second 401 is an `AuthError`. A token request refused with
400/401/403 (`invalid_client`: wrong client key) is an `AuthError` naming the tenant, never the key.

Lists: `PageNumber`/`PageSize`, bare JSON arrays, 204 = empty. Pages are numbered by us and read until a short
page or a 204, whatever `X-Pagination` says: the header can only make us read one more page (a `nextPageLink` on
a short page), never end paging early. A server that answers the same full page twice fails the read instead of
looping. Each page is a `Page`: its records, the ones the lenient parser could not read (`rejected`, see
`pipeline.clients.lenient_json`) and the server's `Date` (`server_time`). Lists are streamed page by page
(except the small batched look-ups).

Refused credentials are an `AuthError`: a token request refused with 400/401/403, a 401 again after a renewal,
or a 403 on any call (a missing privilege or module subscription is the company's setup, not the record's).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
import anyio
import orjson

from pipeline.clients.http import Attempts, Response, RetryPolicy, retrying, send
from pipeline.clients.lenient_json import Page as Page  # re-exported: the pages this client yields
from pipeline.clients.lenient_json import parse_page
from pipeline.clients.ratelimit import Grant, RateLimiter
from pipeline.config import PowerOfficeSettings, TenantSettings
from pipeline.errors import AuthError, PermanentApiError, RateLimitedError, remember_secrets

log = logging.getLogger(__name__)

SYSTEM = "poweroffice"
SUBSCRIPTION_HEADER = "Ocp-Apim-Subscription-Key"
MAX_PAGE_SIZE = 20_000
# PowerOffice answers URLs longer than about 2000 characters with a misleading 404: stay well below.
MAX_URL_LENGTH = 1800
# Renew a token this long before it expires (at most; a quarter of a short lifetime otherwise).
RENEW_AHEAD = 60.0

JsonObject = dict[str, Any]


def server_time(headers: Mapping[str, str]) -> datetime | None:
    """The `Date` header as an aware UTC datetime; None when absent or unreadable."""
    raw = next((v for k, v in headers.items() if k.lower() == "date"), None)
    if not raw:
        return None
    try:
        value = parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def parse_timestamp(text: str) -> datetime:
    """A PowerOffice date-time (`2023-07-03T10:53:00.1234567Z`, any ISO 8601 form) as an aware UTC datetime.

    Fractions beyond microseconds are truncated (downwards, so a `>` filter built from it never skips the
    record itself). A value without an offset is taken as UTC. Raises ValueError for unreadable text.
    """
    value = datetime.fromisoformat(text.strip())
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def format_filter_time(when: datetime) -> str:
    """A change-filter value: UTC with a `Z`, so no `+` needs URL-encoding."""
    if when.tzinfo is None:
        raise ValueError("naive datetime: change filters need an aware time")
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def number_ranges(numbers: Iterable[int]) -> list[str]:
    """Sorted, de-duplicated numbers compressed into PowerOffice range tokens: [1, 2, 3, 7] → ["1-3", "7"]."""
    out: list[str] = []
    ordered = sorted(set(numbers))
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        out.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return out


def _batches(tokens: list[str], budget: int) -> list[str]:
    """Join tokens with commas into values whose URL-encoded length stays within `budget` characters."""
    batches: list[str] = []
    current: list[str] = []
    size = 0
    for token in tokens:
        cost = len(quote(token, safe="")) + (3 if current else 0)  # "," may travel as %2C
        if current and size + cost > budget:
            batches.append(",".join(current))
            current, size = [], 0
            cost -= 3
        current.append(token)
        size += cost
    if current:
        batches.append(",".join(current))
    return batches


@dataclass(slots=True)
class _Token:
    value: str
    renew_at: float


class PowerOfficeClient:
    """The PowerOffice Go v2 API for every tenant of one application/subscription key pair.

    `session` is owned by the caller (one per process). `limiter` is the subscription key's shared limiter.
    `clock` (monotonic seconds) decides when cached tokens are renewed.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        settings: PowerOfficeSettings,
        limiter: RateLimiter,
        *,
        policy: RetryPolicy = RetryPolicy(),  # noqa: B008 - frozen dataclass, safe as a default
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 1 <= settings.page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be 1..{MAX_PAGE_SIZE}, got {settings.page_size}")
        self.session = session
        self.settings = settings
        self.limiter = limiter
        self.policy = policy
        self.clock = clock
        self.api_url = settings.api_url.rstrip("/")
        self._api_path = urlsplit(self.api_url).path.rstrip("/")
        self._token_path = urlsplit(settings.token_url).path or "/"
        self._tokens: dict[str, _Token] = {}
        self._token_locks: dict[str, anyio.Lock] = {}
        # Scrubbed from every error text from now on, should a server echo them.
        remember_secrets(settings.application_key.reveal(), settings.subscription_key.reveal())

    def __repr__(self) -> str:
        return f"PowerOfficeClient({self.api_url!r})"

    def for_tenant(self, tenant: TenantSettings) -> TenantPowerOffice:
        """The API as seen by one tenant (its client key, its name at the limiter and in errors)."""
        return TenantPowerOffice(self, tenant)

    # -------------------------------------------------------------------------------------------- token cache

    async def _token(
        self, handle: TenantPowerOffice, grant: Grant, *, stale: str | None = None
    ) -> tuple[str, Grant | None]:
        """A valid access token for the handle's client key, read once the caller holds `grant` (its place at the
        limiter, so the token is as fresh as the moment its request may start: waiting for a place can outlast the
        renewal margin when many tenants share the key). A renewal is sent with that grant; the grant is given back
        when none was needed, else None (the caller waits for another). `stale` is one the server just refused."""
        slot = handle.key_id
        lock = self._token_locks.setdefault(slot, anyio.Lock())
        try:
            async with lock:  # one token request per client key at a time; the others reuse its answer
                cached = self._tokens.get(slot)
                if cached is not None and cached.value != stale and self.clock() < cached.renew_at:
                    return cached.value, grant
                self._tokens.pop(slot, None)
                token = await self._fetch_token(handle, grant)
                self._tokens[slot] = token
                return token.value, None
        except BaseException:
            self.limiter.release(grant)  # (a no-op once the token request has released it)
            raise

    async def _fetch_token(self, handle: TenantPowerOffice, grant: Grant) -> _Token:
        tenant = handle.tenant
        pair = f"{self.settings.application_key.reveal()}:{tenant.poweroffice_client_key.reveal()}"
        headers = {
            "Authorization": "Basic " + base64.b64encode(pair.encode()).decode(),
            SUBSCRIPTION_HEADER: self.settings.subscription_key.reveal(),
            "Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
            "Accept": "application/json",
        }
        try:
            response = await handle._send(
                "POST",
                self.settings.token_url,
                self._token_path,
                grant=grant,
                headers=headers,
                data=b"grant_type=client_credentials",
            )
        except PermanentApiError as exc:
            if exc.status in (400, 401, 403):
                raise AuthError(
                    SYSTEM,
                    "POST",
                    self._token_path,
                    exc.status,
                    f"PowerOffice refused the client credentials of tenant {tenant.name!r}: {exc.detail}",
                    tenant=tenant.name,
                ) from exc
            raise
        body = _json(response, "POST", self._token_path, tenant.name)
        value = body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(value, str) or not value:
            raise PermanentApiError(
                SYSTEM,
                "POST",
                self._token_path,
                response.status,
                "token response without access_token",
                tenant=tenant.name,
            )
        try:
            lifetime = float(body.get("expires_in", 600))
        except (TypeError, ValueError):
            lifetime = 600.0
        ahead = min(RENEW_AHEAD, lifetime / 4)
        return _Token(value, self.clock() + lifetime - ahead)


class TenantPowerOffice:
    """PowerOffice Go v2 for one tenant. Every method may raise the project's `ApiError`s (after retries).

    `requests` counts the HTTP requests this handle sent (token calls and retries included).
    """

    def __init__(self, client: PowerOfficeClient, tenant: TenantSettings) -> None:
        self.client = client
        self.tenant = tenant
        self.requests = 0
        # Identifies the client key in the token cache without holding it in clear.
        self.key_id = hashlib.sha256(tenant.poweroffice_client_key.reveal().encode()).hexdigest()
        remember_secrets(tenant.poweroffice_client_key.reveal())

    def __repr__(self) -> str:
        return f"TenantPowerOffice({self.tenant.name!r})"

    # ------------------------------------------------------------------------------------------- the edge

    async def _send(self, method: str, url: str, path: str, *, grant: Grant | None = None, **kwargs: Any) -> Response:
        """One HTTP request after the key's limiter lets it start (or with `grant`, a place already held, which
        this releases); a 429 pauses the whole key and slows it."""
        client = self.client
        if grant is None:
            grant = await client.limiter.acquire(self.tenant.name)
        self.requests += 1
        try:
            return await send(
                client.session,
                SYSTEM,
                method,
                url,
                path,
                tenant=self.tenant.name,
                timeout=client.settings.timeout_seconds,
                retry_after_cap=client.settings.retry_after_cap_seconds,
                **kwargs,
            )
        except RateLimitedError as exc:
            client.limiter.throttled(grant, max(exc.retry_after or 0.0, client.policy.rate_limit_wait))
            raise
        finally:
            client.limiter.release(grant)  # the answer is here: the request's place frees a window from now

    async def _call(
        self,
        method: str,
        url: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: bytes | None = None,
        content_type: str | None = None,
        attempts: Attempts | None = None,
    ) -> Response:
        """An authorised API request, retried while transient; one token renewal on a 401."""
        client = self.client

        async def authorised(stale: str | None, used: list[str]) -> Response:
            # The token is read once the request holds its place: see `PowerOfficeClient._token`.
            grant = await client.limiter.acquire(self.tenant.name)
            token, left = await client._token(self, grant, stale=stale)
            used.append(token)
            args = self._request_args(token, params, body, content_type)
            return await self._send(method, url, path, grant=left, **args)

        async def once() -> Response:
            used: list[str] = []
            try:
                return await authorised(None, used)
            except PermanentApiError as exc:
                if exc.status == 403 and not isinstance(exc, AuthError):
                    raise self._refused(method, path, exc) from exc
                if exc.status != 401 or not used:  # (a refused token request is an AuthError already)
                    raise
            # The server refused a token we held for valid (expired early, revoked): renew once, retry once.
            try:
                return await authorised(used[-1], used)
            except PermanentApiError as exc:
                if exc.status == 403 and not isinstance(exc, AuthError):
                    raise self._refused(method, path, exc) from exc
                if exc.status != 401:
                    raise
                raise AuthError(
                    SYSTEM,
                    method,
                    path,
                    401,
                    f"PowerOffice refused a freshly issued token of tenant {self.tenant.name!r}: {exc.detail}",
                    tenant=self.tenant.name,
                ) from exc

        return await retrying(client.policy, once, attempts)

    def _refused(self, method: str, path: str, exc: PermanentApiError) -> AuthError:
        return AuthError(
            SYSTEM,
            method,
            path,
            exc.status,
            f"PowerOffice refused access for tenant {self.tenant.name!r} (privileges or subscription): {exc.detail}",
            tenant=self.tenant.name,
        )

    def _request_args(
        self, token: str, params: Mapping[str, str] | None, body: bytes | None, content_type: str | None
    ) -> dict[str, Any]:
        headers = {
            "Authorization": f"Bearer {token}",
            SUBSCRIPTION_HEADER: self.client.settings.subscription_key.reveal(),
            "Accept": "application/json",
        }
        args: dict[str, Any] = {"headers": headers}
        if params is not None:
            args["params"] = dict(params)
        if body is not None:
            headers["Content-Type"] = content_type or "application/json"
            args["data"] = body
        return args

    def _url(self, path: str) -> tuple[str, str]:
        """(absolute URL, path shown in errors) for an API path such as `/Products`."""
        return self.client.api_url + path, self.client._api_path + path

    async def _pages(
        self,
        path: str,
        params: Mapping[str, str],
        *,
        page_size: int | None = None,
        attempts: Attempts | None = None,
    ) -> AsyncIterator[Page]:
        """Stream the pages of a list endpoint; an empty list yields nothing.

        Pages are numbered by us and read until a short page (fewer elements than `PageSize`) or a 204, whatever
        `X-Pagination` says: only a `nextPageLink` on a short page makes us read one more. Raises
        PermanentApiError when the server answers the same full page again (it ignores `PageNumber`).
        """
        size = page_size or self.client.settings.page_size
        if not 1 <= size <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be 1..{MAX_PAGE_SIZE}, got {size}")
        url, shown = self._url(path)
        number = 1
        previous: bytes | None = None
        while True:
            query = {**params, "PageNumber": str(number), "PageSize": str(size)}
            response = await self._call("GET", url, shown, params=query, attempts=attempts)
            if response.status == 204 or not response.body.strip():
                return
            page = self._page(response, shown)
            if page.size == 0:
                return
            if response.body == previous:
                raise PermanentApiError(
                    SYSTEM, "GET", shown, response.status, "paging did not advance", tenant=self.tenant.name
                )
            previous = response.body
            yield page
            if page.size < size and not _next_page_link(response.headers):
                return
            number += 1

    def _page(self, response: Response, shown: str) -> Page:
        """A list answer as a Page; a body orjson refuses is parsed element by element (see `lenient_json`)."""
        try:
            page = parse_page(response.body, server_time(response.headers))
        except ValueError as exc:
            raise PermanentApiError(SYSTEM, "GET", shown, response.status, str(exc), tenant=self.tenant.name) from exc
        if page.rejected:
            log.warning(
                "tenant %s: %d record(s) of a %s page could not be read; the rest of the page goes on",
                self.tenant.name,
                len(page.rejected),
                shown,
            )
        return page

    async def _collect(self, path: str, params: Mapping[str, str], attempts: Attempts | None) -> Page:
        out = Page()
        async for page in self._pages(path, params, attempts=attempts):
            _merge(out, page)
        return out

    def _value_budget(self, path: str, name: str) -> int:
        """How many characters a list filter's value may take so the URL stays below MAX_URL_LENGTH."""
        url, _ = self._url(path)
        fixed = len(url) + len(f"?{name}=&PageNumber=99999&PageSize=20000")
        return max(32, MAX_URL_LENGTH - fixed)

    # ---------------------------------------------------------------------------------------------- reads

    def products(
        self,
        *,
        changed_after: datetime | None = None,
        page_size: int | None = None,
        attempts: Attempts | None = None,
    ) -> AsyncIterator[Page]:
        """`GET /Products`, page by page; with `changed_after`, only `LastChangedDateTimeOffset > changed_after`.

        Stock changes do not move `LastChangedDateTimeOffset`: this never reports them.
        """
        params = {}
        if changed_after is not None:
            params["lastChangedDateTimeOffsetGreaterThan"] = format_filter_time(changed_after)
        return self._pages("/Products", params, page_size=page_size, attempts=attempts)

    def product_groups(self, *, attempts: Attempts | None = None) -> AsyncIterator[Page]:
        """`GET /ProductGroups`, page by page."""
        return self._pages("/ProductGroups", {}, attempts=attempts)

    async def customers_by_numbers(self, numbers: Iterable[int], *, attempts: Attempts | None = None) -> Page:
        """The customers with these customer numbers (`Number`), in as few requests as the URL length allows.

        Numbers are sent as ranges (`10000-10005,10010`); unknown numbers are simply absent from the result.
        """
        tokens = number_ranges(int(n) for n in numbers)
        out = Page()
        for batch in _batches(tokens, self._value_budget("/Customers", "customerNos")):
            _merge(out, await self._collect("/Customers", {"customerNos": batch}, attempts))
        return out

    async def delivery_addresses(self, contact_ids: Iterable[int], *, attempts: Attempts | None = None) -> Page:
        """`GET /ContactDeliveryAddresses?contactIds=…` for these contact (customer) ids, batched."""
        tokens = [str(i) for i in sorted({int(c) for c in contact_ids})]
        path = "/ContactDeliveryAddresses"
        out = Page()
        for batch in _batches(tokens, self._value_budget(path, "contactIds")):
            _merge(out, await self._collect(path, {"contactIds": batch}, attempts))
        return out

    def outgoing_invoices(
        self,
        *,
        balance_changed_after: datetime | None = None,
        page_size: int | None = None,
        attempts: Attempts | None = None,
    ) -> AsyncIterator[Page]:
        """`GET /OutgoingInvoices`, page by page; with `balance_changed_after`, only invoices whose
        `BalanceLastChangedDateTimeOffset` is later (new invoices and payment changes)."""
        params = {}
        if balance_changed_after is not None:
            params["balanceLastChangedDateTimeOffsetGreaterThan"] = format_filter_time(balance_changed_after)
        return self._pages("/OutgoingInvoices", params, page_size=page_size, attempts=attempts)

    async def outgoing_invoices_by_ids(self, invoice_ids: Iterable[str], *, attempts: Attempts | None = None) -> Page:
        """`GET /OutgoingInvoices?invoiceIds=…`: these invoices (those that exist), in as few requests as the URL
        length allows."""
        tokens = sorted(set(invoice_ids))
        out = Page()
        for batch in _batches(tokens, self._value_budget("/OutgoingInvoices", "invoiceIds")):
            _merge(out, await self._collect("/OutgoingInvoices", {"invoiceIds": batch}, attempts))
        return out

    async def invoice_lines(self, invoice_id: str, *, attempts: Attempts | None = None) -> Page:
        """`GET /OutgoingInvoices/{id}/Lines`: every line of one invoice (empty for an invoice without lines).

        Raises PermanentApiError (404) when the invoice does not exist.
        """
        return await self._collect(f"/OutgoingInvoices/{quote(str(invoice_id), safe='')}/Lines", {}, attempts)

    # --------------------------------------------------------------------------------------------- writes

    async def patch_stock_on_hand(
        self, product_id: int, value: float, *, attempts: Attempts | None = None
    ) -> JsonObject:
        """Set a product's `StockOnHand` (JSON-Patch `replace`); returns the product as PowerOffice now has it.

        Setting an absolute value is idempotent, so transient failures are retried. PowerOffice refuses the
        patch (PermanentApiError, 400) for a product that is not a stock item.
        """
        amount: float | int = int(value) if float(value).is_integer() else float(value)
        body = orjson.dumps([{"op": "replace", "path": "/StockOnHand", "value": amount}])
        url, shown = self._url(f"/Products/{int(product_id)}")
        response = await self._call(
            "PATCH", url, shown, body=body, content_type="application/json-patch+json", attempts=attempts
        )
        product = _json(response, "PATCH", shown, self.tenant.name)
        if not isinstance(product, dict):
            raise PermanentApiError(
                SYSTEM,
                "PATCH",
                shown,
                response.status,
                "expected the product in the answer",
                tenant=self.tenant.name,
            )
        return product


def _json(response: Response, method: str, path: str, tenant: str) -> Any:
    try:
        return response.json()
    except orjson.JSONDecodeError as exc:
        # A 2xx whose body is not JSON (a proxy's page, a cut-off answer): retrying the same call won't help.
        raise PermanentApiError(
            SYSTEM, method, path, response.status, f"answer is not JSON: {exc}", tenant=tenant
        ) from exc


def _merge(into: Page, page: Page) -> None:
    into.extend(page)
    into.rejected.extend(page.rejected)
    if into.server_time is None:
        into.server_time = page.server_time


def _next_page_link(headers: Mapping[str, str]) -> str | None:
    """`nextPageLink` from `X-Pagination`: None when the header is absent or unreadable, "" when it has none."""
    raw = next((v for k, v in headers.items() if k.lower() == "x-pagination"), None)
    if raw is None:
        return None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    folded = {str(k).lower(): v for k, v in data.items()}
    link = folded.get("nextpagelink")
    return link if isinstance(link, str) else ""
