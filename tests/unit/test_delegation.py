"""Delegation chains (agent_identity.delegation): RFC 8693 §4.1 ``act``, §4.4 ``may_act``;
security item 33."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from agent_identity.delegation import MAX_DELEGATION_DEPTH, Actor, DelegationChain
from agent_identity.errors import InvalidTokenError

CANARY_TOKEN_CLAIM = "CANARY-CLAIM-VALUE-a41f"

ALICE_CLAIMS: dict[str, Any] = {
    "iss": "https://as.example",
    "sub": "alice",
    "aud": "https://api.example",
    "scope": "mail.read",
    "act": {
        "sub": "agent-b",
        "client_id": "b-client",
        "act": {"sub": "agent-a", "client_id": "a-client", "iss": "https://other.example"},
    },
}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _jwt(claims: dict[str, Any]) -> str:
    header = _b64(json.dumps({"alg": "RS256", "typ": "at+jwt"}).encode())
    return f"{header}.{_b64(json.dumps(claims).encode())}.{_b64(b'not-verified')}"


def _nested(depth: int) -> dict[str, Any]:
    claims: dict[str, Any] = {"sub": "user"}
    inner = claims
    for i in range(depth):
        inner["act"] = {"sub": f"agent-{i}"}
        inner = inner["act"]
    return claims


# --- security item 33 ---------------------------------------------------------------------------


def test_sec_33_nested_act_is_history() -> None:
    chain = DelegationChain.from_claims(ALICE_CLAIMS)
    assert chain.subject == "alice"
    assert chain.is_delegated
    assert [a.subject for a in chain.actors] == ["agent-b", "agent-a"]
    assert chain.current_actor == chain.actors[0]
    assert chain.current_actor is not None
    assert chain.current_actor.subject == "agent-b"
    assert dict(chain.current_actor.claims) == {"client_id": "b-client"}
    assert [a.subject for a in chain.history] == ["agent-a"]
    assert dict(chain.history[0].claims) == {
        "client_id": "a-client",
        "iss": "https://other.example",
    }
    view = chain.authorization_view()
    assert view == {
        "iss": "https://as.example",
        "sub": "alice",
        "aud": "https://api.example",
        "scope": "mail.read",
        "act": {"sub": "agent-b", "client_id": "b-client"},
    }
    assert "agent-a" not in json.dumps(view)
    assert chain.describe() == "alice via agent-b via agent-a"


def test_sec_33_authorization_view_is_a_fresh_plain_copy() -> None:
    claims = {"sub": "alice", "roles": ["r1"], "ctx": {"k": [1, {"x": 2}]}, "act": {"sub": "b"}}
    chain = DelegationChain.from_claims(claims)
    view = chain.authorization_view()
    assert view["roles"] == ["r1"]
    assert view["ctx"] == {"k": [1, {"x": 2}]}
    json.dumps(view)  # plain dicts and lists
    view["roles"].append("admin")
    view["act"]["sub"] = "mallory"
    again = chain.authorization_view()
    assert again["roles"] == ["r1"]
    assert again["act"] == {"sub": "b"}


def test_sec_33_input_mutation_does_not_leak_in() -> None:
    claims: dict[str, Any] = {"sub": "alice", "roles": ["r1"], "act": {"sub": "b", "x": [1]}}
    chain = DelegationChain.from_claims(claims)
    claims["roles"].append("admin")
    claims["act"]["x"].append(2)
    claims["act"]["sub"] = "mallory"
    assert chain.authorization_view()["roles"] == ["r1"]
    assert chain.current_actor is not None
    assert chain.current_actor.subject == "b"
    assert chain.current_actor.claims["x"] == (1,)


def test_sec_33_claims_are_read_only() -> None:
    chain = DelegationChain.from_claims(ALICE_CLAIMS)
    actor = chain.current_actor
    assert actor is not None
    with pytest.raises(TypeError):
        actor.claims["client_id"] = "evil"  # type: ignore[index]
    with pytest.raises(TypeError):
        chain.claims["sub"] = "evil"  # type: ignore[index]
    with pytest.raises(AttributeError):
        chain.subject = "evil"  # type: ignore[misc]
    assert "act" not in chain.claims


def test_not_delegated() -> None:
    chain = DelegationChain.from_claims({"sub": "alice", "scope": "a"})
    assert not chain.is_delegated
    assert chain.current_actor is None
    assert chain.history == ()
    assert chain.actors == ()
    assert chain.authorization_view() == {"sub": "alice", "scope": "a"}
    assert chain.describe() == "alice"


def test_no_subject() -> None:
    chain = DelegationChain.from_claims({"act": {"sub": "agent"}})
    assert chain.subject is None
    assert chain.describe() == "<no sub> via agent"
    assert chain.authorization_view() == {"act": {"sub": "agent"}}


def test_single_actor() -> None:
    chain = DelegationChain.from_claims({"sub": "alice", "act": {"sub": "agent"}})
    assert chain.current_actor == Actor("agent")
    assert chain.history == ()


# --- may_act (RFC 8693 §4.4) -----------------------------------------------------------------


def test_may_act_exposed_read_only_and_separate() -> None:
    chain = DelegationChain.from_claims(
        {"sub": "alice", "may_act": {"sub": "agent-b", "client_id": "b"}}
    )
    assert chain.may_act is not None
    assert dict(chain.may_act) == {"sub": "agent-b", "client_id": "b"}
    assert not chain.is_delegated
    with pytest.raises(TypeError):
        chain.may_act["sub"] = "evil"  # type: ignore[index]


def test_may_act_absent() -> None:
    assert DelegationChain.from_claims({"sub": "alice"}).may_act is None


@pytest.mark.parametrize("value", ["agent-b", ["agent-b"], 1, None])
def test_may_act_must_be_object(value: Any) -> None:
    with pytest.raises(InvalidTokenError, match="may_act"):
        DelegationChain.from_claims({"sub": "alice", "may_act": value})


# --- malformed shapes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "claims",
    [
        {"sub": "alice", "act": "agent"},
        {"sub": "alice", "act": ["agent"]},
        {"sub": "alice", "act": None},
        {"sub": "alice", "act": 1},
        {"sub": "alice", "act": {}},
        {"sub": "alice", "act": {"sub": 5}},
        {"sub": "alice", "act": {"sub": ""}},
        {"sub": "alice", "act": {"sub": None}},
        {"sub": "alice", "act": {"client_id": "x"}},
        {"sub": "alice", "act": {"sub": "b", "act": "a"}},
        {"sub": "alice", "act": {"sub": "b", "act": None}},
        {"sub": "alice", "act": {"sub": "b", "act": {"sub": ["a"]}}},
        {"sub": 5},
        {"sub": ""},
        {"sub": None},
    ],
)
def test_malformed_act_rejected(claims: dict[str, Any]) -> None:
    with pytest.raises(InvalidTokenError):
        DelegationChain.from_claims(claims)


def test_non_mapping_claims_rejected() -> None:
    with pytest.raises(InvalidTokenError):
        DelegationChain.from_claims(["sub"])  # type: ignore[arg-type]


def test_error_messages_do_not_quote_values() -> None:
    for claims in (
        {"sub": "alice", "act": CANARY_TOKEN_CLAIM},
        {"sub": "alice", "act": {"sub": [CANARY_TOKEN_CLAIM]}},
        {"sub": {"x": CANARY_TOKEN_CLAIM}},
        {"sub": "alice", "may_act": CANARY_TOKEN_CLAIM},
    ):
        with pytest.raises(InvalidTokenError) as info:
            DelegationChain.from_claims(claims)
        assert CANARY_TOKEN_CLAIM not in str(info.value)
        assert CANARY_TOKEN_CLAIM not in repr(info.value)


def test_depth_limit() -> None:
    chain = DelegationChain.from_claims(_nested(MAX_DELEGATION_DEPTH))
    assert len(chain.actors) == MAX_DELEGATION_DEPTH
    assert chain.current_actor == Actor("agent-0")
    assert chain.actors[-1] == Actor(f"agent-{MAX_DELEGATION_DEPTH - 1}")
    with pytest.raises(InvalidTokenError, match="deeper"):
        DelegationChain.from_claims(_nested(MAX_DELEGATION_DEPTH + 1))


def test_depth_limit_survives_huge_chains() -> None:
    with pytest.raises(InvalidTokenError, match="deeper"):
        DelegationChain.from_claims(_nested(5000))


def test_deeply_nested_claim_value_rejected_not_crashing() -> None:
    value: Any = "leaf"
    for _ in range(2000):
        value = [value]
    with pytest.raises(InvalidTokenError, match="nested"):
        DelegationChain.from_claims({"sub": "alice", "deep": value})


def test_direct_construction_validates() -> None:
    with pytest.raises(InvalidTokenError):
        Actor("")
    with pytest.raises(InvalidTokenError):
        DelegationChain("alice", tuple(Actor(f"a{i}") for i in range(MAX_DELEGATION_DEPTH + 1)))
    with pytest.raises(InvalidTokenError):
        DelegationChain("alice", ("agent",))  # type: ignore[arg-type]
    chain = DelegationChain("alice", (Actor("b", {"sub": "ignored", "act": {"sub": "x"}}),))
    assert chain.current_actor is not None
    assert dict(chain.current_actor.claims) == {}
    assert chain.authorization_view() == {"sub": "alice", "act": {"sub": "b"}}


def test_equality_and_hash() -> None:
    one = DelegationChain.from_claims(ALICE_CLAIMS)
    two = DelegationChain.from_claims(json.loads(json.dumps(ALICE_CLAIMS)))
    assert one == two
    assert hash(one) == hash(two)
    assert one != DelegationChain.from_claims({**ALICE_CLAIMS, "scope": "other"})


# --- describe / repr --------------------------------------------------------------------------


def test_describe_escapes_control_characters() -> None:
    chain = DelegationChain.from_claims(
        {"sub": "alice\nFAKE LOG LINE", "act": {"sub": "b\x1b[31m"}}
    )
    text = chain.describe()
    assert "\n" not in text
    assert "\x1b" not in text
    assert text == "alice\\u000aFAKE LOG LINE via b\\u001b[31m"


def test_reprs_show_subjects_and_claim_names_only() -> None:
    claims = {
        "sub": "alice",
        "secretish": CANARY_TOKEN_CLAIM,
        "act": {"sub": "agent-b", "cnf": {"jkt": CANARY_TOKEN_CLAIM}},
    }
    chain = DelegationChain.from_claims(claims)
    assert repr(chain) == "DelegationChain(subject='alice', actors=('agent-b',))"
    assert chain.current_actor is not None
    assert repr(chain.current_actor) == "Actor(subject='agent-b', claims=['cnf'])"
    for text in (repr(chain), str(chain), repr(chain.actors), chain.describe()):
        assert CANARY_TOKEN_CLAIM not in text


# --- from_token ---------------------------------------------------------------------------------


def test_from_token() -> None:
    token = _jwt(ALICE_CLAIMS)
    chain = DelegationChain.from_token(token)
    assert chain == DelegationChain.from_claims(ALICE_CLAIMS)
    assert DelegationChain.from_token(SecretStr(token)) == chain
    for text in (repr(chain), chain.describe(), json.dumps(chain.authorization_view())):
        assert token not in text


@pytest.mark.parametrize(
    "token",
    [
        "opaque-token-value",
        "a.b",
        "a.b.c.d.e",
        f"{_b64(b'{}')}.{_b64(b'[]')}.sig",
        f"{_b64(b'{}')}.{_b64(json.dumps({'sub': 'a', 'act': 'b'}).encode())}.sig",
    ],
)
def test_from_token_rejects_bad_tokens_without_echoing(token: str) -> None:
    with pytest.raises(InvalidTokenError) as info:
        DelegationChain.from_token(token)
    assert token not in str(info.value)
    assert token not in repr(info.value)


# --- hypothesis -------------------------------------------------------------------------------

_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=10)
    | st.sampled_from(["alice", "agent-a", "agent-b", ""])
)
_keys = st.sampled_from(["sub", "act", "may_act", "iss", "client_id", "x"]) | st.text(max_size=6)
_json_like = st.recursive(
    _scalars,
    lambda c: st.lists(c, max_size=3) | st.dictionaries(_keys, c, max_size=4),
    max_leaves=20,
)


def _expected_depth(claims: Any) -> int:
    depth = 0
    node = claims
    while isinstance(node, dict) and "act" in node:
        node = node["act"]
        depth += 1
    return depth


@given(st.dictionaries(_keys, _json_like, max_size=6))
@settings(max_examples=400, deadline=None)
def test_from_claims_fuzz(claims: dict[str, Any]) -> None:
    try:
        chain = DelegationChain.from_claims(claims)
    except InvalidTokenError:
        return
    assert chain.subject == claims.get("sub")
    assert len(chain.actors) == _expected_depth(claims)
    node = claims
    for actor in chain.actors:
        node = node["act"]
        assert actor.subject == node["sub"]
        assert set(actor.claims) == set(node) - {"sub", "act"}
    view = chain.authorization_view()
    json.dumps(view, allow_nan=True)
    assert set(view) == set(claims) - ({"act"} if not chain.is_delegated else set())
    if chain.current_actor is not None:
        assert "act" not in view["act"]
        assert view["act"]["sub"] == chain.current_actor.subject
    assert isinstance(chain.describe(), str)
    repr(chain)


@given(st.integers(0, MAX_DELEGATION_DEPTH + 3))
def test_depth_fuzz(depth: int) -> None:
    claims = _nested(depth)
    if depth > MAX_DELEGATION_DEPTH:
        with pytest.raises(InvalidTokenError):
            DelegationChain.from_claims(claims)
    else:
        assert len(DelegationChain.from_claims(claims).actors) == depth
