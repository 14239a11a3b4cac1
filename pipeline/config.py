"""Configuration: one TOML file in, one frozen `Settings` tree out (DESIGN §5).

`load_settings` reads the file, replaces `${NAME}` with environment variables, resolves relative paths against
the file's folder and checks everything, collecting **every** problem before it raises one `ConfigError`.
Secrets are `Secret` values: their `repr` and `str` are masked, so they cannot leak into logs or errors.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Final, Literal

from pipeline.errors import ConfigError

PRODUCTION_POWEROFFICE_API = "https://goapi.poweroffice.net/v2"
PRODUCTION_POWEROFFICE_TOKEN = "https://goapi.poweroffice.net/OAuth/Token"

StockFigure = Literal["numberOfItems", "sellableNumberOfItems"]
OrderTrigger = Literal["paid", "invoiced"]
STOCK_FIGURES: Final = ("numberOfItems", "sellableNumberOfItems")
ORDER_TRIGGERS: Final = ("paid", "invoiced")


class Secret:
    """A string that never shows itself: `repr`/`str` are masked; `reveal()` gives the value."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True, slots=True)
class PowerOfficeSettings:
    api_url: str
    token_url: str
    application_key: Secret = field(repr=False)
    subscription_key: Secret = field(repr=False)
    requests_per_second: float = 10.0
    page_size: int = 5000
    overlap_seconds: float = 300.0
    timeout_seconds: float = 30.0
    retry_after_cap_seconds: float = 30.0  # the longest Retry-After honoured (a longer one waits this long)


@dataclass(frozen=True, slots=True)
class OngoingSettings:
    api_url: str
    username: str
    password: Secret = field(repr=False)
    timeout_seconds: float = 60.0
    parallel_goods_owners: int = 8
    page_size: int = 1000
    full_stock_sweep_hours: float = 24.0
    retry_after_cap_seconds: float = 30.0  # the longest Retry-After honoured (a longer one waits this long)


@dataclass(frozen=True, slots=True)
class TenantSettings:
    name: str
    poweroffice_client_key: Secret = field(repr=False)
    ongoing_goods_owner_id: int = 0
    ongoing_username: str | None = None
    ongoing_password: Secret | None = field(default=None, repr=False)
    orders_since: datetime | None = None
    # Product filters (DESIGN §4): all products unless narrowed.
    product_group_codes: tuple[str, ...] = ()
    stock_items_only: bool = False
    skip_services: bool = False
    # Which invoices become orders: "paid" (Balance == 0, the default) or "invoiced" (every invoice).
    # Credit notes never do.
    order_trigger: OrderTrigger = "paid"
    # Which Ongoing figure is written back to PowerOffice's StockOnHand.
    stock_figure: StockFigure = "numberOfItems"
    # Seconds between this tenant's cycles (and its cycle's deadline); None: the global `interval_seconds`.
    interval_seconds: float | None = None
    # Write stock back even before the warehouse first held the article (it would zero PowerOffice's figure).
    stock_back_before_first_receipt: bool = False


@dataclass(frozen=True, slots=True)
class Settings:
    # The SQLite file, or a `postgresql://…` URL (PostgreSQL event log; see `pipeline.eventlog.open_log`).
    database: Path | str = field(repr=False)  # a URL may hold a password
    poweroffice: PowerOfficeSettings
    ongoing: OngoingSettings
    tenants: tuple[TenantSettings, ...]
    interval_seconds: float = 900.0
    source: Path | None = None
    # `pipeline run` serves /healthz, /metrics and a status page here (port 0: any free port).
    status_host: str = "127.0.0.1"
    status_port: int = 8765
    # `pipeline run` reconciles each tenant this often (0: never), repairing only when `reconcile_repair`.
    reconcile_every_hours: float = 24.0
    reconcile_repair: bool = False
    # PostgreSQL workers (`pipeline.workers`): a tenant's lease lasts this long unless renewed (every third of it);
    # a lease its holder did not release is taken over only `lease_grace_seconds` after it expired (None: twice the
    # longer HTTP timeout, so a write the dead holder still had in flight has ended).
    lease_seconds: float = 30.0
    lease_grace_seconds: float | None = None

    def tenant(self, name: str) -> TenantSettings:
        for t in self.tenants:
            if t.name == name:
                return t
        raise KeyError(name)


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class _Checker:
    """Reads typed values out of a TOML table, recording problems instead of raising."""

    def __init__(self, env: Mapping[str, str], base: Path, secrets: bool = True) -> None:
        self.env = env
        self.base = base
        self.secrets = secrets
        self.problems: list[str] = []

    def problem(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}")

    def expand(self, path: str, value: str) -> str | None:
        missing: list[str] = []

        def sub(m: re.Match[str]) -> str:
            name = m.group(1)
            if name not in self.env:
                missing.append(name)
                return ""
            return self.env[name]

        out = _ENV_REF.sub(sub, value)
        for name in missing:
            self.problem(path, f"environment variable {name} is not set")
        return None if missing else out

    def unknown(self, path: str, table: Mapping[str, Any], known: set[str]) -> None:
        for key in table:
            if key not in known:
                self.problem(f"{path}.{key}" if path else key, "unknown key")

    def table(self, path: str, raw: Mapping[str, Any], key: str) -> Mapping[str, Any]:
        value = raw.get(key)
        if value is None:
            self.problem(_join(path, key), "missing table")
            return {}
        if not isinstance(value, dict):
            self.problem(_join(path, key), f"expected a table, got {_kind(value)}")
            return {}
        return value

    def string(self, path: str, raw: Mapping[str, Any], key: str, default: str | None = None) -> str | None:
        where = _join(path, key)
        if key not in raw:
            if default is None:
                self.problem(where, "missing")
            return default
        value = raw[key]
        if not isinstance(value, str):
            self.problem(where, f"expected a string, got {_kind(value)}")
            return default
        expanded = self.expand(where, value)
        if expanded is not None and not expanded.strip():
            self.problem(where, "must not be empty")
            return None
        return expanded

    def user(self, path: str, raw: Mapping[str, Any], key: str, required: bool = True) -> str | None:
        """A user name: a credential like the secrets (not read when secrets are not wanted)."""
        if not self.secrets:
            return "" if key in raw or required else None
        return self.string(path, raw, key) if required or key in raw else None

    def optional_string(self, path: str, raw: Mapping[str, Any], key: str) -> str | None:
        if key not in raw:
            return None
        return self.string(path, raw, key)

    def secret(self, path: str, raw: Mapping[str, Any], key: str, required: bool = True) -> Secret | None:
        """A secret given inline (`key = "…"`, `${NAME}` allowed) or as a file (`key_file = "/run/credentials/…"`).

        The file's text is the secret, without its trailing newline. Problems name the key, never the value.
        """
        file_key = f"{key}_file"
        if not self.secrets:  # a command that talks to neither system: not read, not required
            return Secret("") if key in raw or file_key in raw or required else None
        if file_key in raw:
            if key in raw:
                self.problem(_join(path, key), f"give either {key} or {file_key}, not both")
                return None
            where = _join(path, file_key)
            file_name = self.string(path, raw, file_key)
            if file_name is None:
                return None
            file = Path(file_name).expanduser()
            file = file if file.is_absolute() else self.base / file
            try:
                text = file.read_text(encoding="utf-8")
            except OSError as exc:
                self.problem(where, f"cannot read {file}: {exc.strerror or type(exc).__name__}")
                return None
            except UnicodeDecodeError:
                self.problem(where, f"{file} is not UTF-8 text")
                return None
            value = text.rstrip("\r\n")
            if not value.strip():
                self.problem(where, f"{file} is empty")
                return None
            return Secret(value)
        if key not in raw:
            if required:
                self.problem(_join(path, key), f"missing (give it inline or as {file_key})")
            return None
        inline = self.string(path, raw, key)
        return Secret(inline) if inline is not None else None

    def number(
        self,
        path: str,
        raw: Mapping[str, Any],
        key: str,
        default: float,
        *,
        minimum: float | None = None,
        maximum: float | None = None,
        integer: bool = False,
    ) -> float:
        where = _join(path, key)
        if key not in raw:
            return default
        value = raw[key]
        ok = isinstance(value, int) if integer else isinstance(value, int | float)
        if isinstance(value, bool) or not ok:
            self.problem(where, f"expected {'an integer' if integer else 'a number'}, got {_kind(value)}")
            return default
        if not math.isfinite(value):  # nan and inf pass every comparison below, so they are refused first
            self.problem(where, f"expected a finite number, got {value}")
            return default
        if minimum is not None and value < minimum:
            self.problem(where, f"must be at least {_show(minimum)}, got {_show(value)}")
            return default
        if maximum is not None and value > maximum:
            self.problem(where, f"must be at most {_show(maximum)}, got {_show(value)}")
            return default
        return float(value) if not integer else value

    def integer(
        self, path: str, raw: Mapping[str, Any], key: str, default: int, minimum: int = 0, maximum: int | None = None
    ) -> int:
        return int(self.number(path, raw, key, default, minimum=minimum, maximum=maximum, integer=True))

    def boolean(self, path: str, raw: Mapping[str, Any], key: str, default: bool) -> bool:
        if key not in raw:
            return default
        value = raw[key]
        if not isinstance(value, bool):
            self.problem(_join(path, key), f"expected true or false, got {_kind(value)}")
            return default
        return value

    def choice(self, path: str, raw: Mapping[str, Any], key: str, choices: tuple[str, ...]) -> str:
        value = self.string(path, raw, key, default=choices[0])
        if value not in choices:
            self.problem(_join(path, key), f"expected one of {', '.join(choices)}, got {value!r}")
            return choices[0]
        return value

    def strings(self, path: str, raw: Mapping[str, Any], key: str) -> tuple[str, ...]:
        if key not in raw:
            return ()
        value = raw[key]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.problem(_join(path, key), "expected a list of strings")
            return ()
        return tuple(value)

    def url(self, path: str, raw: Mapping[str, Any], key: str, default: str | None = None) -> str:
        value = self.string(path, raw, key, default)
        if value is None:
            return ""
        if not value.startswith(("http://", "https://")):
            self.problem(_join(path, key), f"expected an http(s) URL, got {value!r}")
        return value.rstrip("/")

    def timestamp(self, path: str, raw: Mapping[str, Any], key: str) -> datetime | None:
        if key not in raw:
            return None
        value = raw[key]
        where = _join(path, key)
        if isinstance(value, str):
            expanded = self.expand(where, value)
            if expanded is None:
                return None
            try:
                value = datetime.fromisoformat(expanded.replace("Z", "+00:00"))
            except ValueError:
                self.problem(where, f"expected an RFC 3339 date-time, got {expanded!r}")
                return None
        if isinstance(value, datetime):
            if value.tzinfo is None:
                self.problem(where, "needs a UTC offset (e.g. 2026-11-01T00:00:00Z)")
                return None
            return value.astimezone(UTC)
        if isinstance(value, date):
            return datetime(value.year, value.month, value.day, tzinfo=UTC)
        self.problem(where, f"expected an RFC 3339 date-time, got {_kind(value)}")
        return None

    def path(self, path: str, raw: Mapping[str, Any], key: str) -> Path:
        value = self.string(path, raw, key)
        if value is None:
            return self.base / "pipeline.db"
        p = Path(value).expanduser()
        return p if p.is_absolute() else (self.base / p).resolve()


def _show(value: float) -> str:
    """A bound or value as people write it: 300, 0.5, 1e+300."""
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else f"{value:g}"


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _kind(value: object) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a table",
    }.get(type(value), type(value).__name__)


_DAY = 86_400.0  # upper bound of the intervals and overlaps: beyond a day they are typing errors, not choices
_TOP = {"database", "interval_seconds", "status_host", "status_port", "poweroffice", "ongoing", "tenants"}
_TOP |= {"reconcile_every_hours", "reconcile_repair"}
_TOP |= {"lease_seconds", "lease_grace_seconds"}
_PO = {
    "api_url",
    "token_url",
    "application_key",
    "application_key_file",
    "subscription_key",
    "subscription_key_file",
    "requests_per_second",
    "page_size",
    "overlap_seconds",
    "timeout_seconds",
    "retry_after_cap_seconds",
}
_ON = {
    "api_url",
    "username",
    "password",
    "password_file",
    "timeout_seconds",
    "parallel_goods_owners",
    "page_size",
    "full_stock_sweep_hours",
    "retry_after_cap_seconds",
}
_TENANT = {
    "name",
    "poweroffice_client_key",
    "poweroffice_client_key_file",
    "ongoing_goods_owner_id",
    "ongoing_username",
    "ongoing_password",
    "ongoing_password_file",
    "orders_since",
    "product_group_codes",
    "stock_items_only",
    "skip_services",
    "order_trigger",
    "stock_figure",
    "interval_seconds",
    "stock_back_before_first_receipt",
}


def parse_settings(
    raw: Mapping[str, Any], *, base: Path, env: Mapping[str, str], source: str = "config", secrets: bool = True
) -> Settings:
    """Build `Settings` from an already-parsed TOML document. Raises ConfigError listing every problem.

    `secrets=False` (audit, replay, redrive, backup, migrate: commands that call neither system) leaves every
    secret empty, unread and unchecked, so an operator can query the log without the service's credentials.
    """
    c = _Checker(env, base, secrets)
    c.unknown("", raw, _TOP)
    database: Path | str
    if isinstance(raw.get("database"), str) and raw["database"].startswith(("postgresql://", "postgres://")):
        database = c.string("", raw, "database") or ""  # a server's URL, ${ENV} expanded; not a path
    else:
        database = c.path("", raw, "database")
    interval = c.number("", raw, "interval_seconds", 900.0, minimum=1, maximum=_DAY)
    status_host = c.string("", raw, "status_host", "127.0.0.1") or "127.0.0.1"
    status_port = c.integer("", raw, "status_port", 8765, minimum=0, maximum=65535)
    reconcile_every_hours = c.number("", raw, "reconcile_every_hours", 24.0, minimum=0, maximum=24 * 366)
    reconcile_repair = c.boolean("", raw, "reconcile_repair", False)
    lease_seconds = c.number("", raw, "lease_seconds", 30.0, minimum=1, maximum=3600)
    lease_grace: float | None = None  # None: from the HTTP timeouts (`pipeline.workers.Timing`)
    if "lease_grace_seconds" in raw:
        lease_grace = c.number("", raw, "lease_grace_seconds", 0.0, minimum=0, maximum=3600)

    po_raw = c.table("", raw, "poweroffice")
    c.unknown("poweroffice", po_raw, _PO)
    po_secret: Callable[[str], Secret | None] = lambda k: c.secret("poweroffice", po_raw, k)  # noqa: E731
    poweroffice = PowerOfficeSettings(
        api_url=c.url("poweroffice", po_raw, "api_url", PRODUCTION_POWEROFFICE_API),
        token_url=c.url("poweroffice", po_raw, "token_url", PRODUCTION_POWEROFFICE_TOKEN),
        application_key=po_secret("application_key") or Secret(""),
        subscription_key=po_secret("subscription_key") or Secret(""),
        requests_per_second=c.number("poweroffice", po_raw, "requests_per_second", 10.0, minimum=0.1, maximum=1000),
        # PowerOffice allows at most 20000 rows a page.
        page_size=c.integer("poweroffice", po_raw, "page_size", 5000, minimum=1, maximum=20000),
        overlap_seconds=c.number("poweroffice", po_raw, "overlap_seconds", 300.0, minimum=0, maximum=_DAY),
        timeout_seconds=c.number("poweroffice", po_raw, "timeout_seconds", 30.0, minimum=0.1, maximum=3600),
        retry_after_cap_seconds=c.number(
            "poweroffice", po_raw, "retry_after_cap_seconds", 30.0, minimum=0, maximum=3600
        ),
    )

    on_raw = c.table("", raw, "ongoing")
    c.unknown("ongoing", on_raw, _ON)
    ongoing = OngoingSettings(
        api_url=c.url("ongoing", on_raw, "api_url"),
        username=c.user("ongoing", on_raw, "username") or "",
        password=c.secret("ongoing", on_raw, "password") or Secret(""),
        timeout_seconds=c.number("ongoing", on_raw, "timeout_seconds", 60.0, minimum=0.1, maximum=3600),
        parallel_goods_owners=c.integer("ongoing", on_raw, "parallel_goods_owners", 8, minimum=1, maximum=256),
        page_size=c.integer("ongoing", on_raw, "page_size", 1000, minimum=1, maximum=100_000),
        full_stock_sweep_hours=c.number(
            "ongoing", on_raw, "full_stock_sweep_hours", 24.0, minimum=0.01, maximum=24 * 365
        ),
        retry_after_cap_seconds=c.number("ongoing", on_raw, "retry_after_cap_seconds", 30.0, minimum=0, maximum=3600),
    )

    tenants: list[TenantSettings] = []
    raw_tenants = raw.get("tenants", [])
    if not isinstance(raw_tenants, list) or not raw_tenants:
        c.problem("tenants", "expected at least one [[tenants]] table")
        raw_tenants = []
    names: dict[str, int] = {}
    owners: dict[int, int] = {}
    for i, t in enumerate(raw_tenants):
        p = f"tenants[{i}]"
        if not isinstance(t, dict):
            c.problem(p, f"expected a table, got {_kind(t)}")
            continue
        c.unknown(p, t, _TENANT)
        name = c.string(p, t, "name") or ""
        if name and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
            c.problem(f"{p}.name", f"use letters, digits, '.', '_' or '-' only, got {name!r}")
        owner = c.integer(p, t, "ongoing_goods_owner_id", 0, minimum=1, maximum=2**31 - 1)
        if "ongoing_goods_owner_id" not in t:
            c.problem(f"{p}.ongoing_goods_owner_id", "missing")
        if name in names:
            c.problem(f"{p}.name", f"duplicate tenant name {name!r} (also tenants[{names[name]}])")
        elif name:
            names[name] = i
        if owner and owner in owners:
            c.problem(
                f"{p}.ongoing_goods_owner_id",
                f"duplicate goods owner id {owner} (also tenants[{owners[owner]}])",
            )
        elif owner:
            owners[owner] = i
        password = c.secret(p, t, "ongoing_password", required=False)
        username = c.user(p, t, "ongoing_username", required=False)
        if ("ongoing_username" in t) != ("ongoing_password" in t or "ongoing_password_file" in t):
            c.problem(p, "ongoing_username and ongoing_password go together")
        tenants.append(
            TenantSettings(
                name=name,
                poweroffice_client_key=c.secret(p, t, "poweroffice_client_key") or Secret(""),
                ongoing_goods_owner_id=owner,
                ongoing_username=username,
                ongoing_password=password,
                orders_since=c.timestamp(p, t, "orders_since"),
                product_group_codes=c.strings(p, t, "product_group_codes"),
                stock_items_only=c.boolean(p, t, "stock_items_only", False),
                skip_services=c.boolean(p, t, "skip_services", False),
                order_trigger=c.choice(p, t, "order_trigger", ORDER_TRIGGERS),  # type: ignore[arg-type]
                stock_figure=c.choice(p, t, "stock_figure", STOCK_FIGURES),  # type: ignore[arg-type]
                interval_seconds=c.number(p, t, "interval_seconds", interval, minimum=1)
                if "interval_seconds" in t
                else None,
                stock_back_before_first_receipt=c.boolean(p, t, "stock_back_before_first_receipt", False),
            )
        )

    if c.problems:
        raise ConfigError(c.problems, source)
    return Settings(
        database=database,
        interval_seconds=interval,
        poweroffice=poweroffice,
        ongoing=ongoing,
        tenants=tuple(tenants),
        source=None,
        status_host=status_host,
        status_port=status_port,
        reconcile_every_hours=reconcile_every_hours,
        reconcile_repair=reconcile_repair,
        lease_seconds=lease_seconds,
        lease_grace_seconds=lease_grace,
    )


def load_settings(
    path: str | os.PathLike[str], env: Mapping[str, str] | None = None, *, secrets: bool = True
) -> Settings:
    """Read and check the TOML file at `path`. Raises ConfigError (every problem at once)."""
    file = Path(path)
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise ConfigError([f"cannot read the file: {exc.strerror or exc}"], str(file)) from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        problem = f"not UTF-8 text: byte 0x{data[exc.start]:02x} on line {line} (save the file as UTF-8)"
        raise ConfigError([problem], str(file)) from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"not valid TOML: {exc}"], str(file)) from exc
    settings = parse_settings(
        raw, base=file.resolve().parent, env=os.environ if env is None else env, source=str(file), secrets=secrets
    )
    return dataclasses.replace(settings, source=file.resolve())


# What a reload (SIGHUP) can change in a running service: the tenants and the interval. The rest is held by open
# connections, clients and the listening socket, and needs a restart.
RELOADABLE: Final = ("tenants", "interval_seconds")


def reload_settings(current: Settings, env: Mapping[str, str] | None = None) -> tuple[Settings, list[str]]:
    """Read `current.source` again for a running service. Returns (settings to use, notes for the log).

    An invalid file raises ConfigError (keep `current`). A change to anything but the tenants and the interval
    is not applied; each such key is named in the notes ("needs a restart").
    """
    if current.source is None:
        raise ConfigError(["these settings were not read from a file"], "reload")
    fresh = load_settings(current.source, env)
    notes = [
        f"{f.name}: changed; needs a restart (kept as it was)"
        for f in dataclasses.fields(Settings)
        if f.name not in (*RELOADABLE, "source") and getattr(fresh, f.name) != getattr(current, f.name)
    ]
    applied = dataclasses.replace(current, tenants=fresh.tenants, interval_seconds=fresh.interval_seconds)
    before, after = {t.name for t in current.tenants}, {t.name for t in fresh.tenants}
    notes += [f"tenant {name}: added" for name in sorted(after - before)]
    notes += [f"tenant {name}: removed" for name in sorted(before - after)]
    return applied, notes
