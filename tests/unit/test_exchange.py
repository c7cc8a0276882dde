"""RFC 8693 token exchange (agent_identity.oauth.exchange): §2.1 request, §2.2 response,
§3 token types; security items 19, 31 and 32."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from agent_identity.errors import (
    AgentIdentityError,
    ConfigurationError,
    InvalidGrant,
    InvalidRequest,
    InvalidResponse,
    InvalidScope,
    InvalidTarget,
    OAuthError,
    UnauthorizedClient,
)
from agent_identity.models import TokenResponse
from agent_identity.oauth._message import HttpRequest, HttpResponse
from agent_identity.oauth.client_auth import ClientSecretBasic, ClientSecretPost, NoClientAuth
from agent_identity.oauth.exchange import (
    ACCESS_TOKEN_TYPE,
    ID_TOKEN_TYPE,
    JWT_TOKEN_TYPE,
    REFRESH_TOKEN_TYPE,
    TOKEN_EXCHANGE_GRANT,
    parse_token_exchange_response,
    token_exchange_request,
)

ISSUER = "https://as.example"
TOKEN_ENDPOINT = "https://as.example/token"
PUBLIC = NoClientAuth("agent")
CANARY_SUBJECT = "CANARY-SUBJECT-TOKEN-7d1e"
CANARY_ACTOR = "CANARY-ACTOR-TOKEN-c02b"
CANARY_ISSUED = "CANARY-ISSUED-TOKEN-55aa"
CANARY_SECRET = "CANARY-CLIENT-SECRET-0e9f"


def _json(status: int, body: Any) -> HttpResponse:
    return HttpResponse(status, {"content-type": "application/json"}, json.dumps(body).encode())


def _form(request: HttpRequest) -> dict[str, str]:
    assert request.form is not None
    return dict(request.form)


def _request(**kwargs: Any) -> HttpRequest:
    args: dict[str, Any] = {
        "subject_token": SecretStr(CANARY_SUBJECT),
        "subject_token_type": ACCESS_TOKEN_TYPE,
        "client_auth": PUBLIC,
        "issuer": ISSUER,
        "now": 1_700_000_000.0,
    }
    args.update(kwargs)
    return token_exchange_request(TOKEN_ENDPOINT, **args)


def _ok(**members: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "access_token": CANARY_ISSUED,
        "issued_token_type": ACCESS_TOKEN_TYPE,
        "token_type": "Bearer",
        "expires_in": 60,
    }
    body.update(members)
    return {k: v for k, v in body.items() if v is not None}


# --- constants --------------------------------------------------------------------------------


def test_rfc8693_identifiers() -> None:
    assert TOKEN_EXCHANGE_GRANT == "urn:ietf:params:oauth:grant-type:token-exchange"
    assert ACCESS_TOKEN_TYPE == "urn:ietf:params:oauth:token-type:access_token"
    assert REFRESH_TOKEN_TYPE == "urn:ietf:params:oauth:token-type:refresh_token"
    assert ID_TOKEN_TYPE == "urn:ietf:params:oauth:token-type:id_token"
    assert JWT_TOKEN_TYPE == "urn:ietf:params:oauth:token-type:jwt"


# --- security item 31: the request ------------------------------------------------------------


def test_sec_31_minimal_request() -> None:
    request = _request()
    assert request.method == "POST"
    assert request.url == TOKEN_ENDPOINT
    assert request.idempotent is False
    assert _form(request) == {
        "grant_type": TOKEN_EXCHANGE_GRANT,
        "subject_token": CANARY_SUBJECT,
        "subject_token_type": ACCESS_TOKEN_TYPE,
        "client_id": "agent",
    }


@pytest.mark.parametrize("token", [None, SecretStr(""), CANARY_SUBJECT])
def test_sec_31_subject_token_required(token: Any) -> None:
    with pytest.raises(ConfigurationError, match="subject_token") as info:
        _request(subject_token=token)
    assert CANARY_SUBJECT not in str(info.value)


@pytest.mark.parametrize("token_type", [None, "", "has space", 5])
def test_sec_31_subject_token_type_required(token_type: Any) -> None:
    with pytest.raises(ConfigurationError, match="subject_token_type"):
        _request(subject_token_type=token_type)


def test_sec_31_actor_token_and_type_sent_together() -> None:
    form = _form(_request(actor_token=SecretStr(CANARY_ACTOR), actor_token_type=JWT_TOKEN_TYPE))
    assert form["actor_token"] == CANARY_ACTOR
    assert form["actor_token_type"] == JWT_TOKEN_TYPE


def test_sec_31_no_actor_means_no_actor_type() -> None:
    form = _form(_request())
    assert "actor_token" not in form
    assert "actor_token_type" not in form


def test_sec_31_actor_type_without_actor_token_rejected() -> None:
    with pytest.raises(ConfigurationError, match="actor_token_type"):
        _request(actor_token_type=ACCESS_TOKEN_TYPE)


def test_sec_31_actor_token_without_type_rejected() -> None:
    with pytest.raises(ConfigurationError, match="actor_token_type") as info:
        _request(actor_token=SecretStr(CANARY_ACTOR))
    assert CANARY_ACTOR not in str(info.value)


@pytest.mark.parametrize("token", [SecretStr(""), CANARY_ACTOR])
def test_sec_31_actor_token_must_be_non_empty_secret(token: Any) -> None:
    with pytest.raises(ConfigurationError, match="actor_token"):
        _request(actor_token=token, actor_token_type=ACCESS_TOKEN_TYPE)


def test_sec_31_narrowing_parameters_carried() -> None:
    form = _form(
        _request(
            resource="HTTPS://API.Example:443/mail",
            audience="mail-service",
            scopes=["mail.read", "mail.send", "mail.read"],
            requested_token_type=JWT_TOKEN_TYPE,
        )
    )
    assert form["resource"] == "https://api.example/mail"  # canonical (security item 19)
    assert form["audience"] == "mail-service"
    assert form["scope"] == "mail.read mail.send"
    assert form["requested_token_type"] == JWT_TOKEN_TYPE


def test_sec_31_narrowing_parameters_absent_when_not_given() -> None:
    form = _form(_request())
    for name in ("resource", "audience", "scope", "requested_token_type"):
        assert name not in form


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"resource": "https://api.example/#frag"}, "fragment"),
        ({"resource": "urn:example:api"}, "scheme"),
        ({"resource": "/relative"}, "resource"),
        ({"audience": ""}, "audience"),
        ({"scopes": "mail.read mail.send"}, "not a str"),
        ({"scopes": ["mail read"]}, "scope-token"),
        ({"scopes": [""]}, "scope-token"),
        ({"scopes": ['a"b']}, "scope-token"),
        ({"requested_token_type": ""}, "requested_token_type"),
    ],
)
def test_sec_31_bad_narrowing_parameters_rejected(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        _request(**kwargs)


def test_sec_31_client_auth_basic_applied() -> None:
    request = _request(client_auth=ClientSecretBasic("agent", SecretStr(CANARY_SECRET)))
    expected = base64.b64encode(f"agent:{CANARY_SECRET}".encode()).decode()
    assert request.headers["Authorization"] == f"Basic {expected}"
    form = _form(request)
    assert "client_id" not in form
    assert "client_secret" not in form


def test_sec_31_client_auth_post_applied() -> None:
    form = _form(_request(client_auth=ClientSecretPost("agent", SecretStr(CANARY_SECRET))))
    assert form["client_id"] == "agent"
    assert form["client_secret"] == CANARY_SECRET
    assert form["grant_type"] == TOKEN_EXCHANGE_GRANT


def test_request_repr_hides_tokens() -> None:
    request = _request(
        actor_token=SecretStr(CANARY_ACTOR),
        actor_token_type=ACCESS_TOKEN_TYPE,
        client_auth=ClientSecretBasic("agent", SecretStr(CANARY_SECRET)),
    )
    for text in (repr(request), str(request)):
        for canary in (CANARY_SUBJECT, CANARY_ACTOR, CANARY_SECRET):
            assert canary not in text


# --- security item 32: the response -----------------------------------------------------------


def test_parse_success() -> None:
    token = parse_token_exchange_response(_json(200, _ok(scope="mail.read", refresh_token="r")))
    assert isinstance(token, TokenResponse)
    assert token.access_token.get_secret_value() == CANARY_ISSUED
    assert token.issued_token_type == ACCESS_TOKEN_TYPE
    assert token.token_type == "Bearer"
    assert token.expires_in == 60
    assert token.scopes == ("mail.read",)


@pytest.mark.parametrize("token_type", ["Bearer", "bearer", "DPoP", "dpop", "N_A", "n_a"])
def test_token_type_values_accepted(token_type: str) -> None:
    issued = JWT_TOKEN_TYPE if token_type.lower() == "n_a" else ACCESS_TOKEN_TYPE
    token = parse_token_exchange_response(
        _json(200, _ok(token_type=token_type, issued_token_type=issued))
    )
    assert token.token_type == token_type


def test_n_a_for_non_access_token() -> None:
    token = parse_token_exchange_response(
        _json(200, _ok(token_type="N_A", issued_token_type=ID_TOKEN_TYPE))
    )
    assert token.issued_token_type == ID_TOKEN_TYPE


def test_n_a_for_access_token_rejected() -> None:
    with pytest.raises(InvalidResponse, match="N_A"):
        parse_token_exchange_response(_json(200, _ok(token_type="N_A")))


@pytest.mark.parametrize("token_type", ["mac", "", "Bearer2", 1, None])
def test_unsupported_token_type_rejected(token_type: Any) -> None:
    body = _ok(token_type=token_type)
    with pytest.raises(InvalidResponse) as info:
        parse_token_exchange_response(_json(200, body))
    assert CANARY_ISSUED not in str(info.value)


@pytest.mark.parametrize("issued", [None, "", " ", 7, [ACCESS_TOKEN_TYPE]])
def test_sec_32_missing_issued_token_type_rejected(issued: Any) -> None:
    with pytest.raises(InvalidResponse, match="issued_token_type") as info:
        parse_token_exchange_response(_json(200, _ok(issued_token_type=issued)))
    for text in (str(info.value), repr(info.value)):
        assert CANARY_ISSUED not in text


@pytest.mark.parametrize("access_token", [None, "", 5])
def test_sec_32_missing_access_token_rejected(access_token: Any) -> None:
    with pytest.raises(InvalidResponse, match="access_token"):
        parse_token_exchange_response(_json(200, _ok(access_token=access_token)))


def test_sec_32_invalid_request_typed() -> None:
    body = {"error": "invalid_request", "error_description": "subject_token_type unknown"}
    with pytest.raises(InvalidRequest) as info:
        parse_token_exchange_response(_json(400, body))
    assert info.value.error == "invalid_request"
    assert info.value.error_description == "subject_token_type unknown"
    assert info.value.status_code == 400


def test_sec_32_invalid_target_typed() -> None:
    body = {"error": "invalid_target", "error_uri": "https://as.example/doc"}
    with pytest.raises(InvalidTarget) as info:
        parse_token_exchange_response(_json(400, body))
    assert isinstance(info.value, OAuthError)
    assert info.value.error_uri == "https://as.example/doc"


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        ("invalid_grant", InvalidGrant),
        ("invalid_scope", InvalidScope),
        ("unauthorized_client", UnauthorizedClient),
    ],
)
def test_other_errors_typed(code: str, cls: type[OAuthError]) -> None:
    with pytest.raises(cls):
        parse_token_exchange_response(_json(400, {"error": code}))


def test_unknown_error_is_plain_oauth_error() -> None:
    with pytest.raises(OAuthError) as info:
        parse_token_exchange_response(_json(400, {"error": "exchange_refused"}))
    assert type(info.value) is OAuthError


@pytest.mark.parametrize(
    "response",
    [
        HttpResponse(200, {}, b"<html>"),
        HttpResponse(200, {}, b"[]"),
        HttpResponse(
            200, {}, b'{"access_token": "a", "access_token": "b", "token_type": "Bearer"}'
        ),
        HttpResponse(500, {}, b"oops"),
        HttpResponse(400, {}, b"{}"),
    ],
)
def test_garbage_rejected(response: HttpResponse) -> None:
    with pytest.raises(InvalidResponse):
        parse_token_exchange_response(response)


def test_error_on_200_is_not_success() -> None:
    # A 200 with only an error member lacks access_token: refused, never a token.
    with pytest.raises(InvalidResponse):
        parse_token_exchange_response(_json(200, {"error": "invalid_target"}))


# --- hypothesis -------------------------------------------------------------------------------

_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
_json_values = st.recursive(
    _scalars,
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3),
    max_leaves=8,
)
_members = st.sampled_from(
    [
        "access_token",
        "token_type",
        "expires_in",
        "refresh_token",
        "scope",
        "issued_token_type",
        "error",
        "error_description",
        "error_uri",
        "x",
    ]
)
_plausible = st.fixed_dictionaries(
    {
        "access_token": st.text(min_size=1, max_size=10),
        "token_type": st.sampled_from(["Bearer", "DPoP", "N_A", "dpop", "mac", ""]),
        "issued_token_type": st.sampled_from(
            [ACCESS_TOKEN_TYPE, JWT_TOKEN_TYPE, REFRESH_TOKEN_TYPE, "", "a b"]
        ),
    },
    optional={"expires_in": st.integers(-5, 10**6), "scope": st.text(max_size=10)},
)


def _check(status: int, body: dict[str, Any]) -> None:
    failure: AgentIdentityError | None = None
    try:
        token = parse_token_exchange_response(_json(status, body))
    except AgentIdentityError as exc:
        failure = exc
    if isinstance(failure, OAuthError):
        assert status != 200
        assert failure.status_code == status
        assert failure.error == body["error"]
    if failure is not None:
        return
    assert status == 200
    assert token.access_token.get_secret_value() == body["access_token"]
    assert token.access_token.get_secret_value()
    assert isinstance(token.issued_token_type, str)
    assert token.issued_token_type.strip() == token.issued_token_type != ""
    assert token.token_type.lower() in {"bearer", "dpop", "n_a"}
    assert not (token.token_type.lower() == "n_a" and token.issued_token_type == ACCESS_TOKEN_TYPE)


@given(st.integers(100, 599), st.dictionaries(_members, _json_values, max_size=7))
@settings(max_examples=200, deadline=None)
def test_parse_fuzz_objects(status: int, body: dict[str, Any]) -> None:
    _check(status, body)


@given(st.sampled_from([200, 200, 400, 401]), _plausible)
@settings(max_examples=200, deadline=None)
def test_parse_fuzz_plausible(status: int, body: dict[str, Any]) -> None:
    _check(status, body)


@given(st.integers(100, 599), st.binary(max_size=200))
@settings(max_examples=200, deadline=None)
def test_parse_fuzz_bytes(status: int, content: bytes) -> None:
    try:
        parse_token_exchange_response(HttpResponse(status, {}, content))
    except AgentIdentityError:
        return
    assert status == 200
