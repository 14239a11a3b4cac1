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

**Scrubbing.** A server may echo what we sent it (an `Authorization` header, a password) in an error body, and
error text ends up in events, which can never be deleted. `scrub()` removes from any text
- every secret value the process knows: the configured keys and passwords (the clients `remember_secrets` them
  when they are made) and the credentials the HTTP edge sends (bearer tokens, Basic pairs and their base64),
  each also in its URL- and JSON-escaped form;
- anything shaped like a credential: `Authorization: Basic …`/`Bearer …` anywhere, and the value after a key
  named like `password`, `secret`, `token`, `api_key`, `subscription-key`, `authorization`, `cookie`
  (as `key=value`, `key: value`, JSON `"key": "value"` or `<key>value</key>`).
`trim()` scrubs before it cuts, so every `ApiError.detail` and every message the senders store is scrubbed.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from urllib.parse import quote, quote_plus

DETAIL_LIMIT = 300
REDACTED = "***"
# Shorter values are not scrubbed as known secrets: they would blot out ordinary words and numbers. (The shapes
# below still catch them next to a credential-like key.)
MIN_SECRET_LENGTH = 4
# Credentials seen on the wire (tokens rotate) are remembered up to this many; configured secrets always are.
RECENT_SECRETS = 256
# trim() scrubs this much beyond its limit, so a secret or a credential pair across the cut is removed whole.
TRIM_MARGIN = 1000

_KEY = (
    r"(?<![\w.-])[\w.-]*(?:password|passwd|passphrase|pwd|secret|token|authorization|api[_-]?key|apikey|"
    r"subscription[_-]?key|application[_-]?key|client[_-]?key|cookie)[\w.-]*"
)
_SCHEME_VALUE = r"(?:basic|bearer|digest|negotiate)\s+[A-Za-z0-9._~+/=-]+"
# key, its closing quote, a separator, then a quoted value (to its closing quote, or to the end of a cut text) or
# a bare one (which may be "Scheme token").
_PAIR = re.compile(
    rf"(?P<key>{_KEY})(?P<sep>[\"']?\s*[:=]\s*)"
    rf"(?:(?P<q>[\"'])(?:\\.|(?!(?P=q)).)*(?P<end>(?P=q)|$)|(?:{_SCHEME_VALUE}|[^\s,;&}}\]\)\"'<]+))",
    re.IGNORECASE | re.DOTALL,
)
_XML = re.compile(rf"<(?P<tag>{_KEY})>[^<]*(?:</(?P=tag)>|$)", re.IGNORECASE)
# Bare schemes as clients write them (an echo repeats what we sent); "basic" and "bearer" in prose stay.
_BEARER = re.compile(r"\b(?P<scheme>Bearer|BEARER|bearer)\s+[A-Za-z0-9._~+/=-]{6,}")
_BASIC = re.compile(r"\b(?P<scheme>Basic|BASIC|basic)\s+(?P<value>[A-Za-z0-9+/]{4,}={0,2})(?![A-Za-z0-9+/=])")


class _KnownSecrets:
    """The secret values this process holds: configured ones (pinned) and the most recent credentials seen.

    With a thousand tenants there are thousands of them, and every log line is scrubbed: `in_text` finds the ones
    a text holds through an index by their first `MIN_SECRET_LENGTH` characters (one look-up per position of the
    text) instead of a substring search per secret. The index is kept as secrets come and go (a new token each
    request of a tenant whose token was renewed), never rebuilt."""

    def __init__(self) -> None:
        self._pinned: set[str] = set()
        self._pinned_values: set[str] = set()  # as given: adding one again costs nothing
        self._recent: OrderedDict[str, None] = OrderedDict()
        self._by_start: dict[str, set[str]] = {}

    def add(self, values: Iterable[str], *, pinned: bool) -> None:
        for value in values:
            if value in self._pinned_values:
                continue
            if pinned:
                self._pinned_values.add(value)
            for form in _forms(value):
                if form in self._pinned:
                    continue
                if pinned:
                    self._pinned.add(form)
                    self._recent.pop(form, None)
                    self._index(form)
                elif form in self._recent:
                    self._recent.move_to_end(form)
                else:
                    self._recent[form] = None
                    self._index(form)
                    while len(self._recent) > RECENT_SECRETS:
                        old, _ = self._recent.popitem(last=False)
                        self._unindex(old)

    def _index(self, form: str) -> None:
        self._by_start.setdefault(form[:MIN_SECRET_LENGTH], set()).add(form)

    def _unindex(self, form: str) -> None:
        start = form[:MIN_SECRET_LENGTH]
        forms = self._by_start.get(start)
        if forms is not None:
            forms.discard(form)
            if not forms:
                del self._by_start[start]

    def in_text(self, text: str) -> list[str]:
        """The known secrets that occur in `text`, longest first (so a value inside a longer one goes with it)."""
        by_start = self._by_start
        found: set[str] = set()
        for i in range(len(text) - MIN_SECRET_LENGTH + 1):
            forms = by_start.get(text[i : i + MIN_SECRET_LENGTH])
            if forms is not None:
                found.update(form for form in forms if text.startswith(form, i))
        return sorted(found, key=len, reverse=True)


_known = _KnownSecrets()


def _forms(value: str) -> set[str]:
    """A secret as it may come back: as is, URL-encoded, JSON-escaped, with its whitespace collapsed (as trim())."""
    if len(value) < MIN_SECRET_LENGTH:
        return set()
    forms = {
        value,
        " ".join(value.split()),
        quote(value, safe=""),
        quote_plus(value),
        json.dumps(value)[1:-1],
        json.dumps(value, ensure_ascii=False)[1:-1],
    }
    return {f for f in forms if len(f) >= MIN_SECRET_LENGTH}


def remember_secrets(*values: str, pinned: bool = True) -> None:
    """Scrub these values from every text from now on. `pinned=False` for short-lived ones (tokens): only the
    most recent `RECENT_SECRETS` of those are kept."""
    _known.add(values, pinned=pinned)


def forget_secrets() -> None:
    """Forget every remembered secret (a process that loads another config, and tests, start afresh)."""
    global _known
    _known = _KnownSecrets()


def credential_values(header_value: str) -> list[str]:
    """The secret parts of an `Authorization`-style header value: the whole value, its token, and for Basic the
    decoded `user:password` pair and the password."""
    value = header_value.strip()
    scheme, _, token = value.partition(" ")
    token = token.strip()
    if not token:
        return [value]
    out = [value, token]
    if scheme.lower() == "basic":
        try:
            pair = base64.b64decode(token, validate=True).decode("latin-1")
        except (binascii.Error, ValueError):
            return out
        _user, colon, password = pair.partition(":")
        out.append(pair)
        if colon:
            out.append(password)
    return out


def scrub(text: str, extra: Iterable[str] = ()) -> str:
    """`text` without any known secret (see the module docstring), nor the `extra` values (any length)."""
    if not text:
        return text
    for value in sorted({f for v in extra if v for f in (v, " ".join(v.split())) if f}, key=len, reverse=True):
        text = text.replace(value, REDACTED)
    for value in _known.in_text(text):
        if value in text:  # (gone when a longer one held it)
            text = text.replace(value, REDACTED)
    text = _XML.sub(lambda m: f"<{m['tag']}>{REDACTED}</{m['tag']}>", text)
    text = _PAIR.sub(_redact_pair, text)
    text = _BEARER.sub(lambda m: f"{m['scheme']} {REDACTED}", text)
    return _BASIC.sub(_redact_basic, text)


def _redact_pair(match: re.Match[str]) -> str:
    return f"{match['key']}{match['sep']}{match['q'] or ''}{REDACTED}{match['end'] or ''}"


def _redact_basic(match: re.Match[str]) -> str:
    try:
        pair = base64.b64decode(match["value"], validate=True)
    except (binascii.Error, ValueError):
        return match[0]
    if b":" not in pair:  # a Basic credential is always user:password; anything else is a word after "basic"
        return match[0]
    return f"{match['scheme']} {REDACTED}"


class ScrubbingFilter(logging.Filter):
    """A log filter that scrubs each record's message and traceback (see `scrub`) before any handler writes it.

    Installed on the process's log handlers by the CLI, so a log line is clean even on a path that forgot to scrub.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = scrub(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub(record.exc_text)
        return True


def trim(text: str | None, limit: int = DETAIL_LIMIT, *, secrets: Iterable[str] = ()) -> str:
    """Scrub `text` (see `scrub`; `secrets` as its `extra`), collapse whitespace and cut it to `limit` characters,
    marking the cut.

    Only the part that can be kept is scrubbed (plus a margin, so a secret across the cut goes too): linear in
    the length of `text`, whatever a server sends.
    """
    if not text:
        return ""
    flat = " ".join(text.split())
    flat = scrub(flat[: limit + TRIM_MARGIN], secrets)
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
