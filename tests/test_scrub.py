"""Rule 13: no secret is ever stored, even when a server echoes it (scrubbing at the edge, in events, logs, console)."""

from __future__ import annotations

import base64
import io
import logging
import re
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest
from rich.console import Console

from pipeline.audit import Row
from pipeline.clients.http import RetryPolicy, remember_configured_secrets
from pipeline.clients.ongoing import OngoingClient
from pipeline.clients.poweroffice import PowerOfficeClient
from pipeline.clients.ratelimit import RateLimiter
from pipeline.config import OngoingSettings, PowerOfficeSettings, Secret, Settings, TenantSettings
from pipeline.console import print_cycle, print_rows
from pipeline.errors import (
    REDACTED,
    ApiError,
    AuthError,
    PermanentApiError,
    ScrubbingFilter,
    remember_secrets,
    scrub,
    trim,
)
from pipeline.fakes.faults import Fault
from pipeline.fakes.generate import generate_company
from pipeline.fakes.ongoing import FakeOngoing, serve_ongoing
from pipeline.fakes.poweroffice import FakePowerOffice, serve_poweroffice
from pipeline.fakes.world import APPLICATION_KEY, ONGOING_PASSWORD, ONGOING_USER, SUBSCRIPTION_KEY, World, fake_world
from pipeline.runtime import Runtime
from tests.ongoing_schema import article_body

NOW = datetime.now(UTC)
# A credential shape left in clear: a scheme followed by anything but the redaction mark.
CLEAR_CREDENTIAL = re.compile(r"\b(?:Bearer|Basic)\s+(?!\*\*\*)[A-Za-z0-9+/=._~-]{6,}", re.IGNORECASE)


def b64(pair: str) -> str:
    return base64.b64encode(pair.encode()).decode()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            '{"Authorization": "Basic dXNlcjpodW50ZXIy", "x": 1}', '{"Authorization": "***", "x": 1}', id="json-header"
        ),
        pytest.param("Authorization: Basic dXNlcjpodW50ZXIy; Host: x", "Authorization: ***; Host: x", id="header"),
        pytest.param("{'Authorization': 'Bearer abcdefghijk'}", "{'Authorization': '***'}", id="python-repr"),
        pytest.param("password=hunter2&grant_type=client_credentials", "password=***&grant_type=client_credentials"),
        pytest.param('{"access_token":"eyJabc.def","expires_in":1200}', '{"access_token":"***","expires_in":1200}'),
        pytest.param("client_secret=abc123; next", "client_secret=***; next", id="client-secret"),
        pytest.param('"Ocp-Apim-Subscription-Key":"abc-def"', '"Ocp-Apim-Subscription-Key":"***"', id="sub-key"),
        pytest.param("<Password>x y</Password> ok", "<Password>***</Password> ok", id="xml"),
        pytest.param('{"password": "with \\" quote", "a": 2}', '{"password": "***", "a": 2}', id="escaped-quote"),
        pytest.param('{"password": "cut off he', '{"password": "***', id="cut-before-closing-quote"),
        pytest.param("sent Bearer abcdefghijklmnop here", "sent Bearer *** here", id="bare-bearer"),
        pytest.param("sent Basic dXNlcjpodW50ZXIy here", "sent Basic *** here", id="bare-basic"),
        pytest.param("The Password field is required.", "The Password field is required.", id="prose-untouched"),
        pytest.param("Basic information is missing", "Basic information is missing", id="basic-word-untouched"),
        pytest.param("Basic shipping is free", "Basic shipping is free", id="basic-base64-shaped-word-untouched"),
        pytest.param("a bearer bond", "a bearer bond", id="bearer-word-untouched"),
        pytest.param("token response without access_token", "token response without access_token", id="words"),
        pytest.param(
            "Rate limit is exceeded. Try again in 1 seconds.", "Rate limit is exceeded. Try again in 1 seconds."
        ),
    ],
)
def test_rule13_credential_shapes_are_scrubbed(text: str, expected: str) -> None:
    """Headers, form fields, JSON, XML and bare auth schemes lose their values; ordinary prose stays as it was."""
    assert scrub(text) == expected


def test_rule13_known_secrets_are_scrubbed_in_every_form() -> None:
    """A remembered secret goes as is, URL-encoded and JSON-escaped; short values are left to the shapes."""
    secret = 'p@ss w"rd-rule13'
    remember_secrets(secret)
    text = f'said {secret} / p%40ss%20w%22rd-rule13 / p%40ss+w%22rd-rule13 / "p@ss w\\"rd-rule13"'
    assert scrub(text) == f'said {REDACTED} / {REDACTED} / {REDACTED} / "{REDACTED}"'
    remember_secrets("abc")  # below MIN_SECRET_LENGTH: "abc" in ordinary words survives
    assert scrub("abcde") == "abcde"
    assert scrub("fabc", extra=["abc"]) == f"f{REDACTED}"  # the edge passes a request's own, any length


def test_rule13_each_of_thousands_of_known_secrets_goes_wherever_it_sits() -> None:
    """A thousand tenants' keys and tokens: each goes at the start, the end or inside a word of a text; one inside a
    longer one goes with it; a tail shorter than the index's key and a near miss stay."""
    keys = [f"tenant-key-{i}" for i in range(1000)]
    remember_secrets(*keys)
    tokens = [f"tok{i:04d}xyz" for i in range(300)]  # more than the recent ones kept: the newest stay
    remember_secrets(*tokens, pinned=False)
    assert scrub(f"{keys[7]} and {keys[77]}x and x{keys[777]}") == f"{REDACTED} and {REDACTED}x and x{REDACTED}"
    assert scrub(f"{keys[70]}{keys[7]}") == REDACTED * 2
    assert scrub(f"a {tokens[-1]} b {tokens[0]}") == f"a {REDACTED} b {tokens[0]}"
    assert scrub("tenant-key-") == "tenant-key-"
    assert scrub("ten") == "ten"


def test_rule13_trim_scrubs_a_secret_across_the_cut_and_stays_linear() -> None:
    """trim() scrubs before cutting: a secret that starts just before the limit leaves no prefix behind; a huge
    body costs no more than its first part."""
    secret = "rule13-across-the-cut-secret"
    remember_secrets(secret)
    text = "x" * 290 + secret + "y" * 2_000_000
    out = trim(text)
    assert len(out) == 300
    assert "rule13" not in out
    assert out.startswith("x" * 290 + REDACTED)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.mark.anyio
async def test_rule13_ongoing_error_echoing_the_password_is_scrubbed(http: aiohttp.ClientSession) -> None:
    """An Ongoing 400 that quotes the Authorization header, the decoded login and password: none of it stays."""
    password = "rule13-ongoing-pw"
    fake = FakeOngoing(username="wms-user", password=password)
    fake.faults.add(Fault("echo", status=400), method="PUT", path="/articles", times=1)
    async with serve_ongoing(fake) as url:
        client = OngoingClient(http, OngoingSettings(api_url=url, username="wms-user", password=Secret(password)))
        owner = client.for_tenant(
            TenantSettings(name="acme", poweroffice_client_key=Secret("k"), ongoing_goods_owner_id=7)
        )
        with pytest.raises(PermanentApiError) as caught:
            await owner.put_article(article_body(7, "A1"))
    shown = str(caught.value)
    assert "The request is invalid" in shown  # the echo did arrive ...
    assert REDACTED in shown  # ... scrubbed
    for secret in (password, b64(f"wms-user:{password}"), f"wms-user:{password}"):
        assert secret not in shown
    assert not CLEAR_CREDENTIAL.search(shown)


@pytest.mark.anyio
async def test_rule13_poweroffice_errors_echoing_keys_and_tokens_are_scrubbed(http: aiohttp.ClientSession) -> None:
    """A token call and an API call whose 400s quote the Basic pair, the subscription key and the bearer token."""
    app, sub, client_key = "rule13-app-key", "rule13-sub-key", "rule13-client-key"
    fake = FakePowerOffice(application_key=app, subscription_keys=[sub], requests_per_second=1000)
    fake.add_company(client_key, generate_company(3, products=3, customers=1, invoices=1, now=NOW))
    fake.faults.add(Fault("echo", status=400), path="/OAuth/Token", times=1)
    fake.faults.add(Fault("echo", status=400), path="/Products", times=1)
    async with serve_poweroffice(fake) as origin:
        settings = PowerOfficeSettings(
            api_url=f"{origin}/v2",
            token_url=f"{origin}/OAuth/Token",
            application_key=Secret(app),
            subscription_key=Secret(sub),
        )
        client = PowerOfficeClient(http, settings, RateLimiter(1000), policy=RetryPolicy())
        handle = client.for_tenant(TenantSettings(name="acme", poweroffice_client_key=Secret(client_key)))
        errors: list[ApiError] = []
        for _ in range(2):  # first the token call's echo, then the product list's
            try:
                [p async for page in handle.products() for p in page]
            except ApiError as exc:
                errors.append(exc)
    assert isinstance(errors[0], AuthError)
    assert isinstance(errors[1], PermanentApiError)
    for error in errors:
        shown = str(error)
        assert REDACTED in shown
        for secret in (app, sub, client_key, b64(f"{app}:{client_key}")):
            assert secret not in shown
        assert not CLEAR_CREDENTIAL.search(shown), shown


@pytest.fixture
async def world() -> AsyncIterator[World]:
    async with fake_world(3, products=12, customers=5, invoices=12, now=NOW, requests_per_second=500) as w:
        yield w


@pytest.mark.anyio
async def test_rule13_echoing_servers_leave_no_secret_in_events_logs_or_console(
    world: World, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A full sync against fakes that echo the request in their 400s (token call, invoice lines, article and
    order writes, stock patches): every event payload, log record and console line is free of every key,
    password, Basic pair and bearer token, while the echoes themselves did reach the log, scrubbed."""
    caplog.set_level(logging.DEBUG)
    world.poweroffice.faults.add(Fault("echo", status=400), path="/OAuth/Token", times=1)
    world.poweroffice.faults.add(Fault("echo", status=400), path="/Lines", times=1)
    world.poweroffice.faults.add(Fault("echo", status=400), method="PATCH", times=2)
    world.ongoing.faults.add(Fault("echo", status=400), method="PUT", path="/articles", times=3)
    world.ongoing.faults.add(Fault("echo", status=400), method="PUT", path="/orders", times=1)
    settings = world.settings(tmp_path / "pipeline.db", requests_per_second=500)
    async with Runtime(settings, clock=lambda: NOW) as runtime:
        report = await runtime.cycle()
    console_out = io.StringIO()
    print_cycle(Console(file=console_out, width=400), report)

    echoes = [r for r in [*world.poweroffice.requests, *world.ongoing.requests] if r.fault == "echo"]
    assert len(echoes) >= 4
    with sqlite3.connect(settings.database) as db:
        rows = db.execute("SELECT tenant, entity, type, payload, dedupe_key FROM events").fetchall()
        failed = [r[3] for r in rows if r[2] == "command.failed"]
    assert any(REDACTED in payload for payload in failed), failed  # an echo was stored, scrubbed
    texts = {
        "events": "\n".join(" ".join(str(c) for c in row) for row in rows),
        "logs": "\n".join(
            f"{r.getMessage()} {r.exc_text or ''} {' '.join(str(v) for v in vars(r).values())}" for r in caplog.records
        )
        + caplog.text,
        "console": console_out.getvalue(),
        "report": "\n".join(e for t in report.tenants.values() for e in t.errors),
    }
    assert REDACTED in texts["console"]
    secrets = {APPLICATION_KEY, SUBSCRIPTION_KEY, ONGOING_PASSWORD, f"{ONGOING_USER}:{ONGOING_PASSWORD}"}
    secrets.add(b64(f"{ONGOING_USER}:{ONGOING_PASSWORD}"))
    for t in world.tenants:
        secrets |= {t.client_key, b64(f"{APPLICATION_KEY}:{t.client_key}")}
    for where, text in texts.items():
        for secret in secrets:
            assert secret not in text, f"{where} holds a secret"
        assert not CLEAR_CREDENTIAL.search(text), f"{where}: {CLEAR_CREDENTIAL.search(text)}"


def test_rule13_log_filter_scrubs_messages_arguments_and_tracebacks() -> None:
    """The CLI's log filter cleans a record whose arguments or exception carry a secret, whatever path made it."""
    secret = "rule13-log-filter-secret"
    remember_secrets(secret)
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(ScrubbingFilter())
    logger = logging.getLogger("tests.rule13")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.error("server said %s and %d", f"Authorization: Bearer abcdefgh123 and {secret}", 5)
        try:
            raise ValueError(f"password={secret}")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    written = out.getvalue()
    assert "server said Authorization: *** and *** and 5" in written
    assert "ValueError: password=***" in written
    assert secret not in written
    assert "abcdefgh123" not in written


def test_rule13_a_secret_with_whitespace_goes_even_after_trim_collapses_it() -> None:
    """A password with a tab or double space is still found once trim() has collapsed the whitespace."""
    remember_secrets("rule13  tab\tpass")
    assert "rule13" not in trim("echo: rule13  tab\tpass!")
    assert "word" not in trim("echo: pass  word!", secrets=["pass  word"])


def test_rule13_configured_secrets_are_scrubbed_from_old_events_on_the_console() -> None:
    """Loading a config remembers every secret in it and their Basic forms: an audit row stored before scrubbing
    existed, quoting a bare password or a bare base64 pair, prints without them."""
    settings = Settings(
        database=Path("unused.db"),
        interval_seconds=900,
        poweroffice=PowerOfficeSettings(
            api_url="https://po.example/v2",
            token_url="https://po.example/OAuth/Token",
            application_key=Secret("rule13-cfg-app"),
            subscription_key=Secret("rule13-cfg-sub"),
        ),
        ongoing=OngoingSettings(api_url="https://wms.example/api/v1", username="wms", password=Secret("rule13-cfg-pw")),
        tenants=(
            TenantSettings(
                name="acme",
                poweroffice_client_key=Secret("rule13-cfg-client"),
                ongoing_username="own",
                ongoing_password=Secret("rule13-cfg-own-pw"),
            ),
        ),
        source=None,
    )
    remember_configured_secrets(settings)
    stored = (
        f"refused rule13-cfg-own-pw / {b64('wms:rule13-cfg-pw')} / {b64('rule13-cfg-app:rule13-cfg-client')} "
        f"/ {b64('own:rule13-cfg-own-pw')} / rule13-cfg-sub"
    )
    shown = io.StringIO()
    row = Row(1, "2026-01-01T00:00:00Z", "acme", "article:A1", "command.failed", None, None, stored, {})
    print_rows(Console(file=shown, width=400), [row], as_json=False)
    assert "rule13-cfg" not in shown.getvalue()
    for pair in ("wms:rule13-cfg-pw", "rule13-cfg-app:rule13-cfg-client", "own:rule13-cfg-own-pw"):
        assert b64(pair) not in shown.getvalue()
