"""Lenient parsing of a JSON array page: one unreadable record must not cost the whole page.

orjson refuses a whole document for one bad value: a literal `NaN`, a number beyond a double (`1e400`), a lone
surrogate (`"\\ud800"`) or bytes that are not UTF-8. A list page holds thousands of records; refusing the page
every cycle would stop a goods owner for one record. `loads_array` is the fallback for a page orjson refused:

- it splits the array into its elements without parsing them (a scanner over strings and brackets), then parses
  each element alone, so every other record comes back exactly as orjson would have read it;
- an element that will not parse comes back as an `Unreadable`: its raw text (invalid UTF-8 shown as `\\xNN`),
  the members that did parse (usually its `Id`) and the paths of the members that did not
  (`Lines[2].Quantity`), with orjson's reason;
- text whose elements cannot even be told apart (not an array, cut off, an unterminated string) raises
  `ValueError`: that page is broken as a whole.

Only the fallback is slow (a regular expression walks the text); a page orjson reads is never sent here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

# A whole JSON string (escapes included), a quote that opens a string never closed, or one structural character.
_TOKEN = re.compile(rb'"(?:[^"\\]++|\\.)*+"|"|[\[\]{},:]', re.DOTALL)
_OPEN = frozenset(b"[{")
_CLOSE = frozenset(b"]}")
_SPACE = frozenset(b" \t\r\n")
# How much raw text one Unreadable keeps of a value in its reason (the raw record itself is kept whole).
_SHOWN = 60


@dataclass(frozen=True, slots=True)
class Unreadable:
    """One element of a page that would not parse.

    `index` is its place in the page, `raw` its text as received, `readable` the members of the object that did
    parse (empty when the element is not an object), `fields` the paths of those that did not (empty when the
    element as a whole is broken) and `reason` what the parser said about the first of them.
    """

    index: int
    raw: str
    reason: str
    fields: tuple[str, ...] = ()
    readable: dict[str, Any] = field(default_factory=dict)

    @property
    def field(self) -> str:
        """The field(s) at fault, as one text for an event: `"Balance"`, `"Lines[0].Quantity, Name"`, `"record"`."""
        return ", ".join(self.fields) if self.fields else "record"


JsonObject = dict[str, Any]


class Page(list[JsonObject]):
    """One page of a list: its records (JSON objects), plus `rejected`, the elements that could not be read
    (each an `Unreadable` with its raw text and the fields at fault), and `server_time`, the server's `Date`
    when the page was served (None when unknown)."""

    __slots__ = ("rejected", "server_time")

    def __init__(
        self,
        records: Iterable[JsonObject] = (),
        rejected: Iterable[Unreadable] = (),
        server_time: datetime | None = None,
    ) -> None:
        super().__init__(records)
        self.rejected: list[Unreadable] = list(rejected)
        self.server_time = server_time

    @property
    def size(self) -> int:
        """How many elements the server sent (readable or not): what decides a short page."""
        return len(self) + len(self.rejected)


def parse_page(body: bytes, server_time: datetime | None = None) -> Page:
    """A list answer as a Page: parsed strictly, else element by element; an element that is not a JSON object
    is rejected too. An empty body or `null` is an empty page. Raises ValueError when the body is not a JSON
    array whose elements can be told apart (the message says why)."""
    if not body.strip():
        return Page(server_time=server_time)
    try:
        items = orjson.loads(body)
        rejected: list[Unreadable] = []
    except orjson.JSONDecodeError as exc:
        try:
            items, rejected = loads_array(body)
        except ValueError:
            raise ValueError(f"answer is not JSON: {exc}") from None
    if items is None:
        return Page(server_time=server_time)
    if not isinstance(items, list):
        raise ValueError("expected a JSON array")
    records: list[JsonObject] = []
    for index, item in enumerate(items):
        if isinstance(item, dict):
            records.append(item)
        else:
            raw = orjson.dumps(item).decode()
            rejected.append(Unreadable(index, raw, f"expected a JSON object, got {raw[:40]}"))
    rejected.sort(key=lambda u: u.index)
    return Page(records, rejected, server_time)


def loads_array(body: bytes) -> tuple[list[Any], list[Unreadable]]:
    """Parse a JSON array element by element: (the elements that parse, in order; those that do not).

    Raises ValueError when `body` is not a JSON array whose elements can be told apart.
    """
    elements = _split(body, 0, len(body), b"[", b"]")
    good: list[Any] = []
    bad: list[Unreadable] = []
    for index, (start, end) in enumerate(elements):
        chunk = body[start:end]
        try:
            good.append(orjson.loads(chunk))
        except orjson.JSONDecodeError as exc:
            bad.append(_unreadable(index, body, start, end, str(exc)))
    return good, bad


def _text(chunk: bytes) -> str:
    return chunk.decode("utf-8", "backslashreplace")


def _unreadable(index: int, body: bytes, start: int, end: int, reason: str) -> Unreadable:
    while start < end and body[start] in _SPACE:
        start += 1
    while end > start and body[end - 1] in _SPACE:
        end -= 1
    raw = _text(body[start:end])
    if body[start : start + 1] != b"{":
        return Unreadable(index, raw, f"unreadable record: {reason}")
    try:
        readable, fields, why = _members(body, start, end, "")
    except ValueError:
        return Unreadable(index, raw, f"unreadable record: {reason}")
    return Unreadable(index, raw, why or reason, tuple(fields), readable)


def _members(body: bytes, start: int, end: int, prefix: str) -> tuple[dict[str, Any], list[str], str]:
    """An object's members that parse, the paths of those that do not, and the first failure's reason."""
    readable: dict[str, Any] = {}
    fields: list[str] = []
    reason = ""
    for m_start, m_end in _split(body, start, end, b"{", b"}"):
        key_end, value_start = _colon(body, m_start, m_end)
        raw_key = body[m_start:key_end].strip()
        try:
            key = orjson.loads(raw_key)
        except orjson.JSONDecodeError as exc:
            fields.append(prefix + _text(raw_key))
            reason = reason or f"member name {_text(raw_key)[:_SHOWN]}: {exc}"
            continue
        if not isinstance(key, str):
            raise ValueError("a member name is not a string")
        try:
            readable[key] = orjson.loads(body[value_start:m_end])
        except orjson.JSONDecodeError as exc:
            path = prefix + key
            nested = _nested(body, value_start, m_end, path) or [path]
            fields.extend(nested)
            shown = _text(body[value_start:m_end].strip())
            shown = shown if len(shown) <= _SHOWN else shown[: _SHOWN - 1] + "…"
            reason = reason or f"{nested[0]}: {exc} (in {shown})"
    return readable, fields, reason


def _nested(body: bytes, start: int, end: int, path: str) -> list[str]:
    """Paths of the unreadable parts inside a composite value, or [] when it is a scalar or itself broken."""
    while start < end and body[start] in _SPACE:
        start += 1
    opener = body[start : start + 1]
    try:
        if opener == b"{":
            return _members(body, start, end, path + ".")[1]
        if opener == b"[":
            out: list[str] = []
            for i, (e_start, e_end) in enumerate(_split(body, start, end, b"[", b"]")):
                try:
                    orjson.loads(body[e_start:e_end])
                except orjson.JSONDecodeError:
                    out.extend(_nested(body, e_start, e_end, f"{path}[{i}]") or [f"{path}[{i}]"])
            return out
    except ValueError:
        return []
    return []


def _colon(body: bytes, start: int, end: int) -> tuple[int, int]:
    """(end of the member name, start of its value) for the member `body[start:end]`."""
    for match in _TOKEN.finditer(body, start, end):
        token = match.group()
        if token == b":":
            return match.start(), match.end()
        if len(token) > 1 and token[:1] == b'"':
            continue  # the name itself
        raise ValueError("a member without a name")
    raise ValueError("a member without a colon")


def _split(body: bytes, start: int, end: int, opener: bytes, closer: bytes) -> list[tuple[int, int]]:
    """The (start, end) spans of the elements of the array (or members of the object) that `body[start:end]`
    holds, surrounding whitespace included. Raises ValueError when the structure cannot be followed."""
    tokens = _TOKEN.finditer(body, start, end)
    first = next(tokens, None)
    if first is None or first.group() != opener or body[start : first.start()].strip():
        raise ValueError(f"expected {opener.decode()}")
    spans: list[tuple[int, int]] = []
    depth = 0
    item_start = first.end()
    for match in tokens:
        token = match.group()
        if token == b'"':
            raise ValueError("a string is never closed")
        if token[:1] == b'"' or token == b":":
            continue
        if token[0] in _OPEN:
            depth += 1
        elif token[0] in _CLOSE:
            if depth == 0:
                if token != closer:
                    raise ValueError("brackets do not match")
                if body[item_start : match.start()].strip():
                    spans.append((item_start, match.start()))
                elif spans:
                    raise ValueError("a trailing comma")
                if body[match.end() : end].strip():
                    raise ValueError("text after the end")
                return spans
            depth -= 1
        elif token == b"," and depth == 0:
            if not body[item_start : match.start()].strip():
                raise ValueError("an empty element")
            spans.append((item_start, match.start()))
            item_start = match.end()
    raise ValueError(f"{closer.decode()} is missing: the text is cut off")
