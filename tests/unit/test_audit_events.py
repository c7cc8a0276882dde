"""Audit records: hashing, fingerprints, validation, arguments opt-in."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr, ValidationError

from agent_identity.audit import AuditEvent, AuditTrail, MemorySink, arguments_hash, fingerprint

json_scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=20)
json_values = st.recursive(
    json_scalars | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


@given(st.dictionaries(st.text(max_size=10), json_values, max_size=6))
def test_arguments_hash_is_order_independent_and_deterministic(args: dict[str, Any]) -> None:
    reversed_args = dict(reversed(list(args.items())))
    digest = arguments_hash(args)
    assert digest == arguments_hash(reversed_args)
    assert len(digest) == 64
    assert int(digest, 16) >= 0


def test_arguments_hash_distinguishes_values_and_tags_non_json() -> None:
    assert arguments_hash({"a": 1}) != arguments_hash({"a": 2})
    assert arguments_hash({"a": 1}) != arguments_hash({"a": "1"})
    assert arguments_hash({"a": {"x": 1, "y": [1, 2]}}) == arguments_hash(
        {"a": {"y": [1, 2], "x": 1}}
    )
    # non-JSON values are tagged by type and repr: deterministic, and distinct from strings
    assert arguments_hash({"d": Decimal("1.5")}) == arguments_hash({"d": Decimal("1.5")})
    assert arguments_hash({"d": Decimal("1.5")}) != arguments_hash({"d": "1.5"})
    assert arguments_hash({"s": {3, 1, 2}}) == arguments_hash({"s": {2, 3, 1}})
    assert arguments_hash({"t": (1, 2)}) == arguments_hash({"t": [1, 2]})
    expected = hashlib.sha256(b'{"a":1,"b":"x"}').hexdigest()
    assert arguments_hash({"b": "x", "a": 1}) == expected


def test_fingerprint_is_stable_short_and_not_the_secret() -> None:
    secret = "CANARY-RT-" + "q" * 40
    fp = fingerprint(secret)
    assert fp == fingerprint(SecretStr(secret)) == fingerprint(secret)
    assert len(fp) == 16
    assert all(c in "0123456789abcdef" for c in fp)
    assert fp == hashlib.sha256(secret.encode()).hexdigest()[:16]
    assert secret not in fp
    assert fp not in secret
    assert fingerprint(secret + "x") != fp


def test_unknown_kind_and_unknown_members_are_rejected() -> None:
    with pytest.raises(ValidationError):
        AuditEvent(kind="tool.exploded")
    with pytest.raises(ValidationError):
        AuditEvent(kind="tool.started", token="x")  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        AuditEvent(kind="tool.failed", outcome="maybe")


def test_validation_errors_do_not_quote_the_input() -> None:
    canary = "CANARY-VALIDATION-SECRET"
    with pytest.raises(ValidationError) as info:
        AuditEvent(kind="tool.failed", token_fingerprint=canary)
    assert canary not in str(info.value)
    assert canary not in repr(info.value)


def test_defaults_time_and_ids() -> None:
    event = AuditEvent(kind="token.issued")
    assert event.time.tzinfo is not None
    assert event.time.utcoffset() == timedelta(0)
    assert len(event.event_id) == 36
    assert event.event_id != AuditEvent(kind="revocation").event_id
    for _ in range(200):  # a random (version 4, RFC 9562 variant) UUID, as str(uuid4())
        ident = AuditEvent(kind="revocation").event_id
        parsed = uuid.UUID(ident)
        assert (parsed.version, parsed.variant, str(parsed)) == (4, uuid.RFC_4122, ident)
    assert event.trace_id is None
    assert event.span_id is None
    local = datetime(2025, 1, 1, 12, tzinfo=timezone(timedelta(hours=2)))
    assert AuditEvent(kind="revocation", time=local).time == datetime(2025, 1, 1, 10, tzinfo=UTC)
    with pytest.raises(ValidationError):
        AuditEvent(kind="revocation", time=datetime(2025, 1, 1))  # naive


def test_event_is_frozen_and_scopes_split() -> None:
    event = AuditEvent(kind="consent.granted", scopes_granted="openid  calendar.read")
    assert event.scopes_granted == ("openid", "calendar.read")
    with pytest.raises(ValidationError):
        event.tool = "x"  # type: ignore[misc]


def test_extra_is_bounded() -> None:
    with pytest.raises(ValidationError):
        AuditEvent(kind="elevation", extra={f"k{i}": i for i in range(33)})
    with pytest.raises(ValidationError):
        AuditEvent(kind="elevation", extra={"bad key": 1})
    with pytest.raises(ValidationError):
        AuditEvent(kind="elevation", extra={"nested": {"a": 1}})
    long = AuditEvent(kind="elevation", extra={"note": "x" * 5000})
    assert isinstance(long.extra["note"], str)
    assert len(long.extra["note"]) == 1024


def test_arguments_absent_unless_opted_in() -> None:
    args = {"to": "bob@example.com", "body": "hi"}
    plain = AuditEvent.for_tool_call("tool.started", tool="send_mail", arguments=args)
    assert plain.arguments is None
    assert plain.arguments_hash == arguments_hash(args)
    assert "bob@example.com" not in plain.model_dump_json()
    kept = AuditEvent.for_tool_call(
        "tool.started", tool="send_mail", arguments=args, include_arguments=True
    )
    assert kept.arguments == args
    big = AuditEvent.for_tool_call(
        "tool.started", tool="t", arguments={"blob": "x" * 20_000}, include_arguments=True
    )
    assert big.arguments is not None
    assert "$omitted" in big.arguments


@pytest.mark.anyio
async def test_trail_strips_arguments_unless_it_includes_them() -> None:
    event = AuditEvent.for_tool_call(
        "tool.started", tool="t", arguments={"q": "private"}, include_arguments=True
    )
    sink = MemorySink()
    async with AuditTrail(sink) as trail:
        await trail.emit(event)
    assert sink.events[0].arguments is None
    assert sink.events[0].arguments_hash == event.arguments_hash
    sink2 = MemorySink()
    async with AuditTrail(sink2, include_arguments=True) as trail:
        await trail.emit(event)
    assert sink2.events[0].arguments == {"q": "private"}


def test_extra_text_is_valid_unicode_so_any_sink_can_write_the_record() -> None:
    """A lone surrogate in an extra value is replaced: the chained JSONL line can be
    encoded (else the sink would fail and drop the whole batch the record is in)."""
    from agent_identity.audit.chain import GENESIS, make_record

    event = AuditEvent(kind="revocation", extra={"note": "a\ud800b"})
    assert event.extra["note"] == "a\ufffdb"
    make_record(event.to_json_dict(), seq=0, prev_hash=GENESIS)
