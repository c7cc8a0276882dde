"""Vault records: grant keys (security item 26), record serialisation, redaction."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from agent_identity.errors import ConfigurationError, VaultCorrupted
from agent_identity.vault.records import (
    CachedToken,
    GrantKey,
    GrantRecord,
    VersionedGrant,
    grant_prefix,
)

CANARY_RT = "canary-refresh-4f1c9b"
CANARY_AT = "canary-access-8e2d7a"


def make_record(**changes: Any) -> GrantRecord:
    token = CachedToken(
        resource="https://api.example/",
        scopes=frozenset({"read", "write"}),
        value=SecretStr(CANARY_AT),
        token_type="Bearer",
        expires_at=1_900_000_000.5,
        issued_at=1_899_999_000.0,
    )
    base: dict[str, Any] = {
        "issuer": "https://as.example",
        "subject": "user-123",
        "scopes": ("openid", "read", "write"),
        "resources": ("https://api.example/",),
        "refresh_token": SecretStr(CANARY_RT),
        "tokens": {token.key: token},
        "id_token_claims": {"sub": "user-123", "amr": ["pwd"], "auth_time": 1_899_999_000},
        "created_at": 1_899_999_000.0,
        "updated_at": 1_899_999_001.25,
    }
    base.update(changes)
    return GrantRecord(**base)


# -- GrantKey ----------------------------------------------------------------------------------


def test_grant_key_storage_key_format() -> None:
    key = GrantKey("t1", "alice", "https://as.example")
    assert key.storage_key == 'grant:["t1","alice","https://as.example"]'
    assert GrantKey.from_storage_key(key.storage_key) == key


@pytest.mark.parametrize("field", ["tenant", "user", "connection"])
@pytest.mark.parametrize("bad", ["", None, 3])
def test_grant_key_rejects_empty_or_non_string(field: str, bad: object) -> None:
    parts: dict[str, object] = {"tenant": "t", "user": "u", "connection": "c"}
    parts[field] = bad
    with pytest.raises(ConfigurationError):
        GrantKey(**parts)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "text",
    [
        "grant:",
        "grant:[]",
        'grant:["a","b"]',
        'grant:["a","b","c","d","e"]',
        'grant:["a","","c"]',
        'grant:["a","b",3]',
        'grant:[ "a","b","c"]',  # not canonical
        'grant:["a","b","\\u00fc"]x',
        'other:["a","b","c"]',
        "grant:{",
    ],
)
def test_from_storage_key_rejects_non_canonical(text: str) -> None:
    with pytest.raises(VaultCorrupted):
        GrantKey.from_storage_key(text)


_ids = st.text(min_size=1, max_size=6, alphabet=st.sampled_from('ab,"]\\[:ü用\x00 '))


@st.composite
def _key_pairs(draw: st.DrawFn) -> tuple[tuple[str, str, str], tuple[str, str, str]]:
    # Draw from a small pool plus extensions of pool members, so that equal ids and ids
    # that are prefixes of each other (the dangerous cases) are common.
    pool = draw(st.lists(_ids, min_size=1, max_size=3))
    part = st.sampled_from(pool) | st.builds(str.__add__, st.sampled_from(pool), _ids)
    triple = st.tuples(part, part, part)
    return draw(triple), draw(triple)


@given(_key_pairs())
@settings(max_examples=500)
def test_sec_26_storage_keys_and_prefixes_never_collide(
    pair: tuple[tuple[str, str, str], tuple[str, str, str]],
) -> None:
    a, b = pair
    ka, kb = GrantKey(*a), GrantKey(*b)
    assert (ka.storage_key == kb.storage_key) == (a == b)
    # b's grants are listed under a's prefix only if tenant and user are equal
    under = kb.storage_key.startswith(grant_prefix(a[0], a[1]))
    assert under == (a[:2] == b[:2])
    assert ka.storage_key.isascii()


def test_sec_26_user_prefix_of_another_user_not_listed() -> None:
    prefix = grant_prefix("t", "u")
    assert GrantKey("t", "u", "c").storage_key.startswith(prefix)
    assert not GrantKey("t", "u2", "c").storage_key.startswith(prefix)
    assert not GrantKey("t", 'u","c', "c").storage_key.startswith(prefix)
    assert not GrantKey("tt", "u", "c").storage_key.startswith(grant_prefix("t", "u"))
    assert not GrantKey("a", "bc", "x").storage_key.startswith(grant_prefix("ab", "c"))


# -- CachedToken / GrantRecord ------------------------------------------------------------------


def test_record_round_trip_exact() -> None:
    record = make_record()
    data = record.to_bytes()
    assert json.loads(data)["v"] == 2
    assert GrantRecord.from_bytes(data) == record


def test_format_1_records_are_still_read() -> None:
    """Rows written before format 2 (no client id, no reported token scopes) stay
    readable; they are rewritten in format 2 at the next write."""
    record = make_record()
    doc = json.loads(record.to_bytes())
    doc["v"] = 1
    del doc["client_id"]
    for token in doc["tokens"]:
        for name in ("granted", "verified", "audience"):
            del token[name]
    old = GrantRecord.from_bytes(json.dumps(doc).encode())
    assert old.client_id is None
    assert old.tokens.keys() == record.tokens.keys()
    assert json.loads(old.to_bytes())["v"] == 2


CANARY_DPOP_D = "canary-dpop-private-d"
DPOP_KEY = {
    "kind": "jwk",
    "alg": "ES256",
    "jwk": {"kty": "EC", "crv": "P-256", "x": "xx", "y": "yy", "d": CANARY_DPOP_D},
}
DETAILS = ({"type": "payment_initiation", "instructedAmount": {"amount": "1.00"}},)


def dpop_record() -> GrantRecord:
    token = CachedToken(
        resource="https://api.example/",
        scopes=frozenset({"read"}),
        value=SecretStr(CANARY_AT),
        token_type="DPoP",
        expires_at=1_900_000_000.5,
        issued_at=1_899_999_000.0,
        dpop_jkt="thumb",
        authorization_details=DETAILS,
    )
    return make_record(tokens={token.key: token}, dpop_key=DPOP_KEY, authorization_details=DETAILS)


def test_format_3_holds_the_dpop_key_and_details_and_round_trips() -> None:
    """The grant's DPoP key is sealed in the same row as the refresh token (RFC 9449)."""
    record = dpop_record()
    data = record.to_bytes()
    doc = json.loads(data)
    assert doc["v"] == 3
    assert doc["dpop_key"] == DPOP_KEY
    assert doc["refresh_token"] == CANARY_RT  # the same row: losing one loses both
    assert doc["tokens"][0]["dpop_jkt"] == "thumb"
    again = GrantRecord.from_bytes(data)
    assert again == record
    assert dict(again.dpop_key or {}) == DPOP_KEY
    assert again.authorization_details == DETAILS
    (token,) = again.tokens.values()
    assert (token.dpop_jkt, token.authorization_details) == ("thumb", DETAILS)
    # no key material, token or detail value in reprs (security item 40)
    text = repr(again) + repr(token)
    assert CANARY_DPOP_D not in text
    assert "1.00" not in text
    assert "dpop_key=present" in repr(again)


def test_records_without_dpop_or_details_stay_format_2() -> None:
    """Older readers keep reading what does not need format 3."""
    assert json.loads(make_record().to_bytes())["v"] == 2
    assert (
        json.loads(
            dpop_record().replace(dpop_key=None, authorization_details=(), tokens={}).to_bytes()
        )["v"]
        == 2
    )


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d.update(dpop_key="a string"),
        lambda d: d.update(authorization_details=[1]),
        lambda d: d.update(authorization_details={"type": "x"}),
        lambda d: d.pop("dpop_key"),
        lambda d: d["tokens"][0].update(dpop_jkt=""),
        lambda d: d["tokens"][0].update(authorization_details=["x"]),
        lambda d: d["tokens"][0].pop("dpop_jkt"),
        lambda d: d.update(v=2),  # format 2 has no such members
    ],
)
def test_format_3_is_strict(change: Any) -> None:
    doc = json.loads(dpop_record().to_bytes())
    change(doc)
    with pytest.raises(VaultCorrupted):
        GrantRecord.from_bytes(json.dumps(doc).encode())


def test_grant_keys_hold_the_client_id() -> None:
    """Issue 12, finding 2: the client id is part of a grant's identity."""
    a = GrantKey("t", "alice", "https://as.example", "agent-a")
    b = GrantKey("t", "alice", "https://as.example", "agent-b")
    assert a.storage_key != b.storage_key
    assert GrantKey.from_storage_key(a.storage_key) == a
    assert a.legacy() == GrantKey("t", "alice", "https://as.example")
    assert a.storage_key.startswith(grant_prefix("t", "alice"))


def test_record_without_optional_parts_round_trips() -> None:
    record = make_record(subject=None, refresh_token=None, tokens={}, id_token_claims={})
    assert GrantRecord.from_bytes(record.to_bytes()) == record


def test_record_is_copy_on_write() -> None:
    record = make_record()
    with pytest.raises(TypeError):
        record.tokens[(None, frozenset())] = next(iter(record.tokens.values()))  # type: ignore[index]
    token = CachedToken(None, frozenset({"x"}), SecretStr("t2"), "Bearer", None, 1.0)
    newer = record.with_token(token)
    assert len(newer.tokens) == 2
    assert len(record.tokens) == 1
    assert newer.tokens[(None, frozenset({"x"}))] is token
    assert record.replace(subject="other").subject == "other"


def test_record_rejects_token_under_wrong_key() -> None:
    token = CachedToken("https://a/", frozenset({"x"}), SecretStr("t"), "Bearer", None, 1.0)
    with pytest.raises(ConfigurationError):
        make_record(tokens={("https://b/", frozenset({"x"})): token})


@pytest.mark.parametrize(
    "changes",
    [
        {"issuer": ""},
        {"scopes": "read write"},
        {"scopes": (1,)},
        {"refresh_token": CANARY_RT},
        {"created_at": float("nan")},
        {"updated_at": True},
        {"id_token_claims": {1: "x"}},
    ],
)
def test_record_validation(changes: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError) as info:
        make_record(**changes)
    assert CANARY_RT not in str(info.value)


def test_record_with_unserialisable_claims_names_no_secret() -> None:
    record = make_record(id_token_claims={"x": object()})
    with pytest.raises(ConfigurationError) as info:
        record.to_bytes()
    assert CANARY_RT not in str(info.value)
    assert CANARY_AT not in str(info.value)


def test_no_secret_in_repr_or_str() -> None:
    record = make_record()
    versioned = VersionedGrant(record, 7)
    texts = [repr(record), str(record), repr(versioned), str(versioned)]
    texts += [repr(t) for t in record.tokens.values()]
    for text in texts:
        assert CANARY_RT not in text
        assert CANARY_AT not in text
    assert "https://as.example" in repr(record)


# -- from_bytes: strict ---------------------------------------------------------------------------


def _doc() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(make_record().to_bytes())
    return doc


def _mutations() -> list[dict[str, Any]]:
    out = []
    changes: list[dict[str, Any]] = [
        {"v": 3},
        {"v": "1"},
        {"v": True},
        {"issuer": 1},
        {"subject": 5},
        {"scopes": "read"},
        {"scopes": [1]},
        {"resources": None},
        {"refresh_token": 5},
        {"tokens": {}},
        {"tokens": [1]},
        {"id_token_claims": []},
        {"created_at": "1"},
        {"created_at": True},
        {"updated_at": None},
        {"extra": 1},
    ]
    for change in changes:
        doc = _doc()
        doc.update(change)
        out.append(doc)
    doc = _doc()
    del doc["issuer"]
    out.append(doc)
    for token_change in [
        {"value": None},
        {"scopes": ["a", "a"]},
        {"token_type": ""},
        {"expires_at": "soon"},
        {"issued_at": False},
        {"extra": 1},
    ]:
        doc = _doc()
        doc["tokens"][0].update(token_change)
        out.append(doc)
    doc = _doc()
    doc["tokens"].append(doc["tokens"][0])  # the same token twice
    out.append(doc)
    return out


@pytest.mark.parametrize("doc", _mutations())
def test_from_bytes_rejects_invalid_documents(doc: dict[str, Any]) -> None:
    with pytest.raises(VaultCorrupted):
        GrantRecord.from_bytes(json.dumps(doc).encode())


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"[]",
        b"null",
        b"\xff\xfe",
        b'{"v":1,"v":1}',
        b'{"v":NaN}',
        b'{"v":1e400}',
        b"[" * 100_000,
        b'{"v": 1' + b"1" * 5000 + b"}",
    ],
)
def test_from_bytes_rejects_garbage(data: bytes) -> None:
    with pytest.raises(VaultCorrupted):
        GrantRecord.from_bytes(data)


# -- hypothesis ----------------------------------------------------------------------------------

_text = st.text(max_size=20)
_time = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e12, max_value=1e12)
_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | _text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
    max_leaves=12,
)
_tokens = st.lists(
    st.builds(
        CachedToken,
        resource=st.none() | _text,
        scopes=st.frozensets(_text, max_size=4),
        value=_text.map(SecretStr),
        token_type=st.text(min_size=1, max_size=10),
        expires_at=st.none() | _time,
        issued_at=_time,
    ),
    max_size=4,
)
_records = st.builds(
    GrantRecord,
    issuer=st.text(min_size=1, max_size=30),
    subject=st.none() | _text,
    scopes=st.lists(_text, max_size=5).map(tuple),
    resources=st.lists(_text, max_size=3).map(tuple),
    refresh_token=st.none() | _text.map(SecretStr),
    tokens=_tokens.map(lambda ts: {t.key: t for t in ts}),
    id_token_claims=st.dictionaries(_text, _json, max_size=5),
    created_at=_time,
    updated_at=_time,
)


@given(_records)
@settings(max_examples=200)
def test_record_round_trip_hypothesis(record: GrantRecord) -> None:
    assert GrantRecord.from_bytes(record.to_bytes()) == record


@given(st.binary(max_size=300))
@settings(max_examples=300)
def test_from_bytes_arbitrary_bytes_only_vault_corrupted(data: bytes) -> None:
    with contextlib.suppress(VaultCorrupted):
        GrantRecord.from_bytes(data)


@given(_json)
@settings(max_examples=200)
def test_from_bytes_arbitrary_json_only_vault_corrupted(value: Any) -> None:
    doc = _doc()
    doc["tokens" if isinstance(value, list) else "id_token_claims"] = value
    with contextlib.suppress(VaultCorrupted):
        GrantRecord.from_bytes(json.dumps(doc).encode())
