"""A scripted fault queue for the fake servers, plus their request log.

A test (or the demo) pushes `Fault`s; each request that matches the head fault of its kind consumes one use of it:

    faults.add(Fault("status", status=503), method="PUT", path="/articles", times=2)
    faults.add(Fault("latency", seconds=0.05))                  # every request, forever
    faults.add(Fault("drop"), path="/orders", times=1)           # connection closed without an answer
    faults.add(Fault("hang", seconds=5), times=1)                # no answer until the client times out
    faults.add(Fault("delay", seconds=0.25), times=None)         # network delay: 0..0.25 s before the server sees it
    faults.add(Fault("echo", status=400), path="/articles")      # an error answer quoting what the client sent

Kinds: `latency` (delay, then serve normally), `delay` (like `latency`, but each request waits a random time in
`[0, seconds]` drawn from the script's seeded random source: network jitter between client and server), `status`
(answer with that status and body, optional Retry-After), `hang` (wait `seconds` and then answer 504; a client
with a shorter timeout sees a timeout), `drop` (close the connection without an answer), `echo` (answer `status`
with an ASP.NET-style `{"Message": …}` that quotes the request's headers, its Basic-auth user and password in
clear, and its body, as careless servers do: for proving that no credential reaches an event, a log or the
console).
"""

from __future__ import annotations

import base64
import binascii
import random
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Literal

import anyio
import orjson
from aiohttp import web

FaultKind = Literal["latency", "delay", "status", "hang", "drop", "echo"]


@dataclass(frozen=True, slots=True)
class Fault:
    kind: FaultKind
    status: int = 500
    body: bytes = b'{"Message":"An error has occurred."}'
    seconds: float = 0.0
    retry_after: str | None = None
    headers: tuple[tuple[str, str], ...] = ()  # more answer headers, exactly as spelled (`("retry-after", "7")`)


@dataclass(slots=True)
class _Rule:
    fault: Fault
    method: str | None
    path: re.Pattern[str] | None
    remaining: int | None  # None = forever


@dataclass(frozen=True, slots=True)
class LoggedRequest:
    """One request as the fake saw it (after faults were applied: `fault` names the one that hit it)."""

    at: float
    method: str
    path: str
    query: str
    status: int
    fault: str | None = None
    key: str | None = None  # which credential made it (subscription key, goods owner ...), for assertions


@dataclass(slots=True)
class FaultScript:
    rules: list[_Rule] = field(default_factory=list)
    # Draws the waits of `delay` faults; seeded, so a run is repeatable.
    rng: random.Random = field(default_factory=lambda: random.Random(0))

    def add(self, fault: Fault, *, method: str | None = None, path: str | None = None, times: int | None = 1) -> None:
        """Queue `fault` for requests matching `method` and the `path` regex (searched, case-insensitive)."""
        self.rules.append(
            _Rule(
                fault,
                method.upper() if method else None,
                re.compile(path, re.IGNORECASE) if path else None,
                times,
            )
        )

    def clear(self) -> None:
        self.rules.clear()

    def take(self, method: str, path: str) -> Fault | None:
        for rule in self.rules:
            if rule.method and rule.method != method:
                continue
            if rule.path and not rule.path.search(path):
                continue
            if rule.remaining is not None:
                rule.remaining -= 1
                if rule.remaining <= 0:
                    self.rules.remove(rule)
            if rule.fault.kind == "delay":
                return replace(rule.fault, seconds=self.rng.uniform(0.0, rule.fault.seconds))
            return rule.fault
        return None


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def apply_fault(fault: Fault | None, request: web.Request, handler: Handler) -> web.StreamResponse:
    """Serve `request` through `fault` (or plainly when None)."""
    if fault is None:
        return await handler(request)
    if fault.kind in ("latency", "delay"):
        await anyio.sleep(fault.seconds)
        return await handler(request)
    if fault.kind == "status":
        headers = {"Content-Type": "application/json"}
        if fault.retry_after is not None:
            headers["Retry-After"] = fault.retry_after
        headers.update(fault.headers)
        return web.Response(status=fault.status, body=fault.body, headers=headers)
    if fault.kind == "echo":
        return web.Response(status=fault.status, body=await _echo(request), content_type="application/json")
    if fault.kind == "hang":
        await anyio.sleep(fault.seconds)
        return web.Response(status=504, body=b'{"Message":"Gateway timeout"}')
    # drop: close the socket under the request, answering nothing.
    transport = request.transport
    if transport is not None:
        transport.close()
    raise ConnectionResetError("fault script dropped the connection")


async def _echo(request: web.Request) -> bytes:
    headers = "; ".join(f"{name}: {value}" for name, value in request.headers.items())
    login = ""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "basic":
        try:
            user, _, password = base64.b64decode(value).decode("latin-1").partition(":")
            login = f" Login {user!r} with password {password!r} refused."
        except (binascii.Error, ValueError):
            pass
    body = (await request.read()).decode("utf-8", "replace")
    message = f"The request is invalid.{login} Headers: {headers}. Body: {body}"
    return orjson.dumps(
        {"Message": message, "Request": {"Headers": {str(k): v for k, v in request.headers.items()}, "Body": body}}
    )
