"""Strict JSON object parsing (agent_identity.oauth._json): security item 4."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_identity.errors import InvalidResponse
from agent_identity.oauth._json import parse_json_object


def test_object_parsed() -> None:
    assert parse_json_object(b'{"a": 1, "b": [true, null, "x", 1.5], "c": {"d": {}}}') == {
        "a": 1,
        "b": [True, None, "x", 1.5],
        "c": {"d": {}},
    }


def test_whitespace_and_unicode() -> None:
    assert parse_json_object(' \n{"k": "\\u00e9\u00e8"}\t'.encode()) == {"k": "éè"}


@pytest.mark.parametrize(
    "content",
    [
        b'{"a": 1, "a": 1}',
        b'{"a": 1, "a": 2}',
        b'{"x": {"a": 1, "a": 2}}',  # nested
        b'{"x": [{"a": 1, "a": 2}]}',  # inside an array
        b'{"a": 1, "\\u0061": 2}',  # the same name, escaped
    ],
)
def test_duplicate_keys_refused(content: bytes) -> None:
    with pytest.raises(InvalidResponse, match="duplicate"):
        parse_json_object(content)


@pytest.mark.parametrize(
    "content",
    [
        b'{"a": NaN}',
        b'{"a": Infinity}',
        b'{"a": -Infinity}',
        b'{"a": [NaN]}',
        b'{"a": 1e400}',  # overflows to infinity
        b'{"a": -1e400}',
    ],
)
def test_non_finite_numbers_refused(content: bytes) -> None:
    with pytest.raises(InvalidResponse):
        parse_json_object(content)


@pytest.mark.parametrize(
    "content",
    [b"[]", b"[{}]", b'"x"', b"1", b"null", b"true", b'"{}"'],
)
def test_non_object_refused(content: bytes) -> None:
    with pytest.raises(InvalidResponse, match="not a JSON object"):
        parse_json_object(content)


@pytest.mark.parametrize(
    "content",
    [
        b"\xff\xfe{}",
        b'{"a": "\xc3"}',
        b'{"a": "\xed\xa0\x80"}',  # an encoded surrogate is not UTF-8
        '{"a": 1}'.encode("utf-16"),
        b'{"a": "\xe9"}',  # latin-1
    ],
)
def test_invalid_utf8_refused(content: bytes) -> None:
    with pytest.raises(InvalidResponse, match="UTF-8"):
        parse_json_object(content)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"   ",
        b"{",
        b'{"a": 1',
        b'{"a": "unterminated}',
        b'{"a": 1,}',
        b"{'a': 1}",
        b'{"a": 1} {"b": 2}',
        b'{"a": 1} x',
        b"\xef\xbb\xbf{}",  # a byte order mark
        b'{"a": 01}',
        b'{"a": undefined}',
        b"<html></html>",
    ],
)
def test_truncated_or_invalid_json_refused(content: bytes) -> None:
    with pytest.raises(InvalidResponse):
        parse_json_object(content)


@pytest.mark.parametrize("depth", [5_000, 100_000])
def test_deep_nesting_refused(depth: int) -> None:
    with pytest.raises(InvalidResponse):
        parse_json_object(b'{"a":' + b"[" * depth + b"]" * depth + b"}")
    with pytest.raises(InvalidResponse):
        parse_json_object(b'{"a":' * depth + b"1" + b"}" * depth)


def test_huge_integer_refused() -> None:
    with pytest.raises(InvalidResponse):
        parse_json_object(b'{"a": ' + b"9" * 5000 + b"}")


def test_error_message_names_what_but_no_content() -> None:
    with pytest.raises(InvalidResponse, match="token response") as info:
        parse_json_object(b'{"access_token": "CANARY-SECRET"', what="token response")
    assert "CANARY" not in str(info.value)


_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
    max_leaves=20,
)
_objects = st.dictionaries(st.text(max_size=10), _json_values, max_size=6)


@given(_objects, st.booleans())
@settings(max_examples=200, deadline=None)
def test_round_trip(obj: dict[str, Any], ascii_only: bool) -> None:
    content = json.dumps(obj, ensure_ascii=ascii_only).encode("utf-8")
    assert parse_json_object(content) == obj


@given(st.binary(max_size=200))
@settings(max_examples=200, deadline=None)
def test_arbitrary_bytes_only_invalid_response(content: bytes) -> None:
    try:
        value = parse_json_object(content)
    except InvalidResponse:
        return
    assert isinstance(value, dict)


@given(_objects.map(json.dumps), st.integers(min_value=1))
@settings(max_examples=200, deadline=None)
def test_any_truncation_refused(text: str, cut: int) -> None:
    content = text.encode()
    prefix = content[: (cut % len(content))]
    with pytest.raises(InvalidResponse):
        parse_json_object(prefix)
