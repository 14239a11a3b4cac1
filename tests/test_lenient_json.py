"""Rule 12: the lenient page parser. Records orjson reads come back exactly as orjson reads them; only the records
holding a value it refuses fail, each with its raw text and the field named."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.clients.lenient_json import loads_array

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
records = st.lists(st.dictionaries(st.text(max_size=8), json_values, max_size=6), max_size=6)
BAD = [b"NaN", b"Infinity", b"-Infinity", b"1e400", b'"\\ud800"', b'"x\\udc00y"', b'"\xed\xa0\x80"', b'"\xff"']


@settings(max_examples=50)
@given(records, st.sampled_from([None, b" ", b"\n  ", b"\t"]))
def test_a_readable_array_parses_as_orjson_does(items: list[dict[str, Any]], space: bytes | None) -> None:
    body = orjson.dumps(items, option=orjson.OPT_INDENT_2 if space else 0)
    assert loads_array(body) == (orjson.loads(body), [])


@settings(max_examples=50)
@given(records, st.data())
def test_rule12_only_records_holding_a_bad_value_fail(items: list[dict[str, Any]], data: st.DataObject) -> None:
    """Put a refused value into some records: those fail with that field named (and their other members read),
    every other record parses as orjson reads it alone."""
    spoiled = data.draw(st.sets(st.integers(min_value=0, max_value=max(0, len(items) - 1))))
    spoiled = {i for i in spoiled if i < len(items)}
    values = {i: data.draw(st.sampled_from(BAD)) for i in spoiled}
    sent = []
    for i, item in enumerate(items):
        record: dict[str, Any] = {"Id": i, **{k: v for k, v in item.items() if k not in ("Id", "bad field")}}
        if i in spoiled:
            record["bad field"] = orjson.Fragment(values[i])
        sent.append(record)
    good, bad = loads_array(orjson.dumps(sent))
    assert [r["Id"] for r in good] == [i for i in range(len(items)) if i not in spoiled]
    assert good == [orjson.loads(orjson.dumps(r)) for i, r in enumerate(sent) if i not in spoiled]
    assert [b.index for b in bad] == sorted(spoiled)
    for failed in bad:
        assert failed.fields == ("bad field",)
        assert failed.readable["Id"] == failed.index
        assert failed.raw.startswith("{")
        orjson.dumps(failed.raw)  # storable: no lone surrogate in the kept text


def test_nested_values_are_named_by_their_path() -> None:
    body = b'[{"Id":1,"Lines":[{"Quantity":1},{"Quantity":NaN}],"MailAddress":{"City":"\\ud800"}},{"Id":2}]'
    good, (bad,) = loads_array(body)
    assert good == [{"Id": 2}]
    assert bad.fields == ("Lines[1].Quantity", "MailAddress.City")
    assert bad.field == "Lines[1].Quantity, MailAddress.City"
    assert bad.readable == {"Id": 1}
    assert bad.reason.startswith("Lines[1].Quantity: ")


def test_a_bad_element_that_is_not_an_object_fails_alone() -> None:
    good, (bad,) = loads_array(b'[{"Id":1}, NaN, {"Id":3}]')
    assert good == [{"Id": 1}, {"Id": 3}]
    assert (bad.index, bad.raw, bad.fields, bad.field) == (1, "NaN", (), "record")


def test_strings_holding_brackets_and_commas_do_not_confuse_the_split() -> None:
    body = b'[{"a":"],}{[\\"","b":NaN},{"c":"\\\\"}]'
    good, (bad,) = loads_array(body)
    assert good == [{"c": "\\"}]
    assert bad.readable == {"a": '],}{["'}
    assert bad.fields == ("b",)


@pytest.mark.parametrize(
    "body",
    [b"", b"{}", b'{"a":1}', b"[1,2", b'[{"a":"open]', b"[1,,2]", b"[1,]", b"[1] x", b"[}", b"[{]"],
)
def test_text_whose_elements_cannot_be_told_apart_is_refused(body: bytes) -> None:
    with pytest.raises(ValueError):
        loads_array(body)
