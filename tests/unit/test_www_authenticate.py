"""WWW-Authenticate parsing (agent_identity.oauth.www_authenticate): RFC 9110 §11.6.1,
RFC 6750 §3, RFC 9728 §5.1, RFC 9470 §3, RFC 9449 §7.1; security items 5, 29 and 30."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_identity.oauth.www_authenticate import Challenge, parse_www_authenticate


def _one(value: str) -> Challenge:
    challenges = parse_www_authenticate(value)
    assert len(challenges) == 1, challenges
    return challenges[0]


def test_rfc6750_bare_bearer() -> None:
    challenge = _one('Bearer realm="example"')
    assert challenge.scheme == "bearer"
    assert dict(challenge.params) == {"realm": "example"}
    assert challenge.error is None
    assert challenge.token68 is None


def test_rfc6750_invalid_token_example() -> None:
    challenge = _one(
        'Bearer realm="example", error="invalid_token", '
        'error_description="The access token expired"'
    )
    assert challenge.scheme == "bearer"
    assert dict(challenge.params) == {
        "realm": "example",
        "error": "invalid_token",
        "error_description": "The access token expired",
    }
    assert challenge.error == "invalid_token"


def test_sec_29_insufficient_scope_with_scope() -> None:
    challenge = _one('Bearer error="insufficient_scope", scope="files.read files.write"')
    assert challenge.error == "insufficient_scope"
    assert challenge.scopes == ("files.read", "files.write")


def test_scopes_empty_when_absent() -> None:
    assert _one('Bearer realm="x"').scopes == ()
    assert _one('Bearer scope=""').scopes == ()


def test_sec_05_rfc9728_resource_metadata() -> None:
    challenge = _one(
        'Bearer resource_metadata="https://resource.example.com/.well-known/'
        'oauth-protected-resource", scope="mcp:tools"'
    )
    assert (
        challenge.get("resource_metadata")
        == "https://resource.example.com/.well-known/oauth-protected-resource"
    )
    assert challenge.scopes == ("mcp:tools",)


def test_sec_30_rfc9470_step_up_challenge() -> None:
    challenge = _one(
        'Bearer error="insufficient_user_authentication", '
        'error_description="A different authentication level is required", '
        'acr_values="phr phrh", max_age="5"'
    )
    assert challenge.error == "insufficient_user_authentication"
    assert challenge.get("acr_values") == "phr phrh"
    assert challenge.get("max_age") == "5"


def test_multiple_challenges_in_one_value() -> None:
    challenges = parse_www_authenticate(
        'Bearer realm="api", error="invalid_token", DPoP algs="ES256 PS256", Basic realm="b"'
    )
    assert [c.scheme for c in challenges] == ["bearer", "dpop", "basic"]
    assert dict(challenges[0].params) == {"realm": "api", "error": "invalid_token"}
    assert dict(challenges[1].params) == {"algs": "ES256 PS256"}
    assert dict(challenges[2].params) == {"realm": "b"}


def test_scheme_without_params_then_another() -> None:
    challenges = parse_www_authenticate('Bearer, DPoP algs="ES256"')
    assert [(c.scheme, dict(c.params)) for c in challenges] == [
        ("bearer", {}),
        ("dpop", {"algs": "ES256"}),
    ]


def test_rfc9110_example_with_escapes() -> None:
    challenges = parse_www_authenticate(
        'Newauth realm="apps", type=1, title="Login to \\"apps\\"", Basic realm="simple"'
    )
    assert [c.scheme for c in challenges] == ["newauth", "basic"]
    assert dict(challenges[0].params) == {
        "realm": "apps",
        "type": "1",
        "title": 'Login to "apps"',
    }


@pytest.mark.parametrize(
    ("quoted", "expected"),
    [
        ('"a\\\\b"', "a\\b"),
        ('"a\\"b"', 'a"b'),
        ('"\\a\\b"', "ab"),
        ('"a, b=c"', "a, b=c"),
        ('""', ""),
        ('"\\""', '"'),
    ],
)
def test_quoted_string_escapes(quoted: str, expected: str) -> None:
    challenge = _one(f"Bearer error_description={quoted}, error=x")
    assert challenge.get("error_description") == expected
    assert challenge.error == "x"


@pytest.mark.parametrize(
    ("value", "scheme", "token68"),
    [
        ("Basic dXNlcjpwYXNz", "basic", "dXNlcjpwYXNz"),
        ("Basic dXNlcjpwYXNzMQ==", "basic", "dXNlcjpwYXNzMQ=="),
        ("Negotiate a87421000492aa874209af8bc028", "negotiate", "a87421000492aa874209af8bc028"),
        ("Foo abc-._~+/=  ", "foo", "abc-._~+/="),
    ],
)
def test_token68(value: str, scheme: str, token68: str) -> None:
    challenge = _one(value)
    assert challenge.scheme == scheme
    assert challenge.token68 == token68
    assert dict(challenge.params) == {}


def test_token68_then_another_challenge() -> None:
    challenges = parse_www_authenticate('Basic dXNlcjpwYXNz, Bearer realm="x"')
    assert [(c.scheme, c.token68) for c in challenges] == [
        ("basic", "dXNlcjpwYXNz"),
        ("bearer", None),
    ]
    assert challenges[1].get("realm") == "x"


def test_case_insensitive_scheme_and_param_names() -> None:
    challenge = _one('BEARER Error="invalid_token", SCOPE="A b", Resource_Metadata="https://r/"')
    assert challenge.scheme == "bearer"
    assert challenge.error == "invalid_token"
    assert challenge.get("scope") == "A b"  # values keep their case
    assert challenge.get("SCOPE") == "A b"
    assert challenge.get("resource_metadata") == "https://r/"


def test_repeated_param_dropped() -> None:
    challenge = _one('Bearer error="invalid_token", scope="a", Error="insufficient_scope"')
    assert challenge.error is None
    assert "error" not in challenge.params
    assert challenge.scopes == ("a",)


def test_repeated_param_in_different_challenges_is_fine() -> None:
    challenges = parse_www_authenticate('Bearer realm="a", DPoP realm="b"')
    assert [c.get("realm") for c in challenges] == ["a", "b"]


def test_whitespace_tolerated() -> None:
    challenge = _one('  Bearer   realm = "x" ,  , error=invalid_token  ,')
    assert dict(challenge.params) == {"realm": "x", "error": "invalid_token"}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        # unquoted values with characters a token cannot hold are dropped, never truncated
        ("Bearer scope=read:all, error=insufficient_scope", {"error": "insufficient_scope"}),
        ("Bearer resource_metadata=https://r.example/x", {}),
        ('Bearer error="unterminated', {}),
        ('Bearer realm="r", =x', {"realm": "r"}),
        ('Bearer realm="r", "quoted-name"="x"', {"realm": "r"}),
        ("Bearer realm=, error=e", {"error": "e"}),
    ],
)
def test_malformed_params_dropped_not_guessed(value: str, expected: dict[str, str]) -> None:
    challenge = _one(value)
    assert challenge.scheme == "bearer"
    assert dict(challenge.params) == expected


@pytest.mark.parametrize("value", ["", "   ", ",", ", ,, ,", '="x"', 'realm="x"', '"Bearer"'])
def test_no_challenge(value: str) -> None:
    assert parse_www_authenticate(value) == []


def test_params_are_read_only() -> None:
    challenge = _one('Bearer realm="x"')
    with pytest.raises(TypeError):
        challenge.params["realm"] = "y"  # type: ignore[index]


# --- hypothesis -----------------------------------------------------------------------------

_pieces = st.sampled_from(
    ["Bearer", "DPoP", "Basic", " ", ",", "=", '"', "\\", "realm", "error", "scope", "a b", "\t",
     "==", "dXNl", ":", "/", "é", "\x00"]
)  # fmt: skip


def _check(challenges: object) -> None:
    assert isinstance(challenges, list)
    for challenge in challenges:
        assert isinstance(challenge, Challenge)
        assert challenge.scheme == challenge.scheme.lower()
        assert challenge.scheme
        for key, val in challenge.params.items():
            assert key == key.lower()
            assert isinstance(val, str)


@given(st.text(max_size=300))
@settings(max_examples=200, deadline=None)
def test_any_text_never_raises(value: str) -> None:
    _check(parse_www_authenticate(value))


@given(st.lists(_pieces, max_size=40).map("".join))
@settings(max_examples=300, deadline=None)
def test_header_like_text_never_raises(value: str) -> None:
    _check(parse_www_authenticate(value))


_token = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=10)
_qvalue = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=20)


@given(st.dictionaries(_token, _qvalue, min_size=1, max_size=5))
@settings(max_examples=200, deadline=None)
def test_quoted_params_round_trip(params: dict[str, str]) -> None:
    def quote(v: str) -> str:
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'

    value = "Bearer " + ", ".join(f"{k}={quote(v)}" for k, v in params.items())
    challenge = _one(value)
    assert dict(challenge.params) == params
