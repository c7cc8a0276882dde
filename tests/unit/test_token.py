"""Token endpoint requests and responses (agent_identity.oauth.token): RFC 6749 §5,
OAuth 2.1 §4.1.3/§4.3, RFC 8707; security items 4, 19, 24, 25 and 40."""

from __future__ import annotations

import base64
import json
import secrets
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from agent_identity.errors import (
    AccessDenied,
    AgentIdentityError,
    ExpiredToken,
    InvalidClient,
    InvalidGrant,
    InvalidRequest,
    InvalidResponse,
    InvalidScope,
    InvalidTarget,
    OAuthError,
    ServerError,
    TemporarilyUnavailable,
    UnauthorizedClient,
    UnsupportedGrantType,
)
from agent_identity.models import TokenResponse
from agent_identity.oauth._message import HttpRequest, HttpResponse
from agent_identity.oauth.client_auth import ClientSecretBasic, NoClientAuth
from agent_identity.oauth.token import (
    DEVICE_CODE_GRANT,
    authorization_code_request,
    client_credentials_request,
    device_code_request,
    parse_oauth_error,
    parse_token_response,
    refresh_request,
    token_request,
)

ISSUER = "https://as.example"
TOKEN_ENDPOINT = "https://as.example/token"
PUBLIC = NoClientAuth("agent")
CANARY_ACCESS = "CANARY-ACCESS-4f0c1e"
CANARY_REFRESH = "CANARY-REFRESH-9b77aa"
CANARY_ID = "CANARY-IDTOKEN-31d2e0"


def _json(status: int, body: Any) -> HttpResponse:
    return HttpResponse(status, {"content-type": "application/json"}, json.dumps(body).encode())


def _form(request: HttpRequest) -> dict[str, str]:
    assert request.form is not None
    return dict(request.form)


# --- request builders ------------------------------------------------------------------------


def test_authorization_code_request() -> None:
    request = authorization_code_request(
        TOKEN_ENDPOINT,
        code=SecretStr("the-code"),
        redirect_uri="http://127.0.0.1:1/cb",
        code_verifier=SecretStr("v" * 43),
        client_auth=PUBLIC,
        issuer=ISSUER,
        now=0.0,
        resource="https://api.example/",
    )
    assert request.method == "POST"
    assert request.url == TOKEN_ENDPOINT
    assert _form(request) == {
        "grant_type": "authorization_code",
        "code": "the-code",
        "redirect_uri": "http://127.0.0.1:1/cb",
        "code_verifier": "v" * 43,
        "resource": "https://api.example/",
        "client_id": "agent",
    }
    assert "the-code" not in repr(request)
    assert "v" * 43 not in repr(request)


def test_authorization_code_request_without_resource() -> None:
    request = authorization_code_request(
        TOKEN_ENDPOINT,
        code=SecretStr("c"),
        redirect_uri="http://127.0.0.1:1/cb",
        code_verifier=SecretStr("v" * 43),
        client_auth=PUBLIC,
        issuer=ISSUER,
        now=0.0,
    )
    assert "resource" not in _form(request)
    assert "scope" not in _form(request)


def test_sec_19_resource_in_token_and_refresh_requests() -> None:
    resource = "https://api.example/v1"
    code = authorization_code_request(
        TOKEN_ENDPOINT,
        code=SecretStr("c"),
        redirect_uri="http://127.0.0.1:1/cb",
        code_verifier=SecretStr("v" * 43),
        client_auth=PUBLIC,
        issuer=ISSUER,
        now=0.0,
        resource=resource,
    )
    refresh = refresh_request(
        TOKEN_ENDPOINT,
        refresh_token=SecretStr("rt"),
        client_auth=PUBLIC,
        issuer=ISSUER,
        now=0.0,
        scopes=("read",),
        resource=resource,
    )
    assert _form(code)["resource"] == resource
    assert _form(refresh)["resource"] == resource


def test_refresh_request_narrows_scope() -> None:
    request = refresh_request(
        TOKEN_ENDPOINT,
        refresh_token=SecretStr(CANARY_REFRESH),
        client_auth=PUBLIC,
        issuer=ISSUER,
        now=0.0,
        scopes=("files.read", "mail.read"),
    )
    form = _form(request)
    assert form["grant_type"] == "refresh_token"
    assert form["refresh_token"] == CANARY_REFRESH
    assert form["scope"] == "files.read mail.read"
    assert "resource" not in form
    assert CANARY_REFRESH not in repr(request)


def test_refresh_request_without_scope_keeps_original_grant() -> None:
    form = _form(
        refresh_request(
            TOKEN_ENDPOINT, refresh_token=SecretStr("rt"), client_auth=PUBLIC, issuer=ISSUER, now=0
        )
    )
    assert "scope" not in form


def test_client_credentials_request() -> None:
    auth = ClientSecretBasic("agent", SecretStr("pw"))
    request = client_credentials_request(
        TOKEN_ENDPOINT, client_auth=auth, issuer=ISSUER, now=0.0, scopes=("a", "b"), resource="r"
    )
    assert _form(request) == {"grant_type": "client_credentials", "scope": "a b", "resource": "r"}
    assert base64.b64decode(request.headers["Authorization"][6:]) == b"agent:pw"


def test_device_code_request() -> None:
    form = _form(
        device_code_request(
            TOKEN_ENDPOINT, device_code=SecretStr("dc"), client_auth=PUBLIC, issuer=ISSUER, now=0
        )
    )
    assert form == {"grant_type": DEVICE_CODE_GRANT, "device_code": "dc", "client_id": "agent"}
    assert DEVICE_CODE_GRANT == "urn:ietf:params:oauth:grant-type:device_code"


def test_sec_25_token_requests_never_idempotent() -> None:
    requests = [
        authorization_code_request(
            TOKEN_ENDPOINT,
            code=SecretStr("c"),
            redirect_uri="http://127.0.0.1:1/cb",
            code_verifier=SecretStr("v" * 43),
            client_auth=PUBLIC,
            issuer=ISSUER,
            now=0.0,
        ),
        refresh_request(
            TOKEN_ENDPOINT, refresh_token=SecretStr("r"), client_auth=PUBLIC, issuer=ISSUER, now=0
        ),
        client_credentials_request(TOKEN_ENDPOINT, client_auth=PUBLIC, issuer=ISSUER, now=0),
        device_code_request(
            TOKEN_ENDPOINT, device_code=SecretStr("d"), client_auth=PUBLIC, issuer=ISSUER, now=0
        ),
        token_request(TOKEN_ENDPOINT, {"grant_type": "x"}, PUBLIC, issuer=ISSUER, now=0),
    ]
    for request in requests:
        assert request.idempotent is False
        assert request.method == "POST"
        # The pure builders do not know where the endpoint came from: AuthorizationServer
        # sends every request as server-supplied unless its origin is the configured
        # issuer's (test_server_seam: test_sec_02_endpoints_learned_from_discovery_...).
        assert request.server_supplied is False


def test_token_request_merges_headers_and_does_not_mutate_inputs() -> None:
    form = {"grant_type": "x"}
    headers = {"DPoP": "proof"}
    auth = ClientSecretBasic("agent", SecretStr("pw"))
    request = token_request(TOKEN_ENDPOINT, form, auth, issuer=ISSUER, now=0.0, headers=headers)
    assert request.headers["DPoP"] == "proof"
    assert request.headers["Authorization"].startswith("Basic ")
    assert form == {"grant_type": "x"}
    assert headers == {"DPoP": "proof"}


# --- parse_token_response: success ----------------------------------------------------------


def test_parse_token_response_success() -> None:
    token = parse_token_response(
        _json(
            200,
            {
                "access_token": "at",
                "token_type": "Bearer",
                "expires_in": 3600,
                "refresh_token": "rt",
                "scope": "openid  files.read",
                "id_token": "a.b.c",
            },
        )
    )
    assert token.access_token.get_secret_value() == "at"
    assert token.token_type == "Bearer"
    assert token.expires_in == 3600
    assert token.refresh_token is not None
    assert token.refresh_token.get_secret_value() == "rt"
    assert token.id_token is not None
    assert token.scopes == ("openid", "files.read")


def test_parse_token_response_minimal() -> None:
    token = parse_token_response(_json(200, {"access_token": "at", "token_type": "bearer"}))
    assert token.expires_in is None
    assert token.refresh_token is None  # never assume a refresh token will come (item 20)
    assert token.scopes is None


def test_sec_04_unknown_members_ignored() -> None:
    body = {
        "access_token": "at",
        "token_type": "Bearer",
        "x_vendor": {"nested": [1, 2]},
        "refresh_token_expires_in": 99,
        "not-before-policy": 0,
    }
    token = parse_token_response(_json(200, body))
    assert token.access_token.get_secret_value() == "at"
    assert "x_vendor" not in token.model_dump()


def test_sec_24_opaque_access_token_accepted() -> None:
    opaque = secrets.token_urlsafe(24) + "~.-_+/="
    token = parse_token_response(
        _json(200, {"access_token": opaque, "token_type": "Bearer", "expires_in": 120})
    )
    assert token.access_token.get_secret_value() == opaque
    assert token.expires_in == 120


def test_sec_24_opacity_is_the_clients_mark_never_the_servers() -> None:
    # Only the provider profile marks tokens opaque; a member of that name is ignored, and
    # the marked copy keeps every member.
    token = parse_token_response(
        _json(
            200,
            {
                "access_token": "a.b.c",
                "token_type": "Bearer",
                "scope": "read",
                "access_token_opaque": True,
            },
        )
    )
    assert token.access_token_opaque is False
    marked = token.marked_opaque()
    assert marked.access_token_opaque is True
    assert marked.scope == "read"
    assert marked.access_token.get_secret_value() == "a.b.c"
    assert token.access_token_opaque is False


def test_sec_24_expiry_only_from_expires_in() -> None:
    # A JWT-looking access token whose exp says "one year": the client does not look inside.
    header = base64.urlsafe_b64encode(b'{"alg":"none"}').rstrip(b"=").decode()
    payload = base64.urlsafe_b64encode(b'{"exp":4102444800}').rstrip(b"=").decode()
    jwt_like = f"{header}.{payload}."
    token = parse_token_response(
        _json(200, {"access_token": jwt_like, "token_type": "Bearer", "expires_in": 5})
    )
    assert token.expires_in == 5
    token = parse_token_response(_json(200, {"access_token": jwt_like, "token_type": "Bearer"}))
    assert token.expires_in is None


@pytest.mark.parametrize(
    "body",
    [
        {"token_type": "Bearer"},
        {"access_token": "at"},
        {"access_token": "", "token_type": "Bearer"},
        {"access_token": "at", "token_type": ""},
        {"access_token": 42, "token_type": "Bearer"},
        {"access_token": None, "token_type": "Bearer"},
        {"access_token": "at", "token_type": ["Bearer"]},
        {"access_token": "at", "token_type": "Bearer", "expires_in": -1},
        {"access_token": "at", "token_type": "Bearer", "expires_in": "soon"},
        {"access_token": "at", "token_type": "Bearer", "expires_in": 1.5},
        {"access_token": "at", "token_type": "Bearer", "expires_in": True},
        {"access_token": "at", "token_type": "Bearer", "refresh_token": 7},
        {"error": "invalid_grant"},  # an error body with HTTP 200 is not a token
        {},
    ],
)
def test_missing_or_mistyped_members_invalid_response(body: dict[str, Any]) -> None:
    with pytest.raises(InvalidResponse):
        parse_token_response(_json(200, body))


def test_invalid_member_names_in_message_but_not_values() -> None:
    body = {"access_token": ["CANARY-ACCESS-IN-LIST"], "token_type": "Bearer"}
    with pytest.raises(InvalidResponse, match="access_token") as info:
        parse_token_response(_json(200, body))
    assert "CANARY-ACCESS-IN-LIST" not in str(info.value)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"<html>OK</html>",
        b'{"access_token": "at", "token_type": "Bearer"',
        b'{"access_token": "at", "token_type": "Bearer", "access_token": "other"}',
        b'["access_token"]',
        b'{"access_token": "at", "token_type": "Bearer", "expires_in": NaN}',
        b'{"access_token": "at", "token_type": "Bearer", "expires_in": 1e400}',
        b"\x80\x81",
    ],
)
def test_sec_04_malformed_success_body_invalid_response(content: bytes) -> None:
    with pytest.raises(InvalidResponse):
        parse_token_response(HttpResponse(200, {}, content))


# --- parse_token_response: errors ------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error", "cls"),
    [
        (400, "invalid_request", InvalidRequest),
        (401, "invalid_client", InvalidClient),
        (400, "invalid_grant", InvalidGrant),
        (400, "unauthorized_client", UnauthorizedClient),
        (400, "unsupported_grant_type", UnsupportedGrantType),
        (400, "invalid_scope", InvalidScope),
        (400, "invalid_target", InvalidTarget),
        (403, "access_denied", AccessDenied),
        (400, "expired_token", ExpiredToken),
        (500, "server_error", ServerError),
        (503, "temporarily_unavailable", TemporarilyUnavailable),
        (400, "authorization_pending", OAuthError),
        (400, "use_dpop_nonce", OAuthError),
        (400, "something_new", OAuthError),
    ],
)
def test_error_responses_typed(status: int, error: str, cls: type[OAuthError]) -> None:
    body = {"error": error, "error_description": "desc", "error_uri": "https://as/e", "x": 1}
    with pytest.raises(OAuthError) as info:
        parse_token_response(_json(status, body))
    assert type(info.value) is cls
    assert info.value.error == error
    assert info.value.error_description == "desc"
    assert info.value.error_uri == "https://as/e"
    assert info.value.status_code == status


def test_error_response_with_mistyped_description_keeps_code() -> None:
    body = {"error": "invalid_grant", "error_description": ["x"], "error_uri": 3}
    with pytest.raises(InvalidGrant) as info:
        parse_token_response(_json(400, body))
    assert info.value.error_description is None
    assert info.value.error_uri is None


@pytest.mark.parametrize(
    ("status", "content"),
    [
        (500, b"<html>Internal Server Error</html>"),
        (502, b""),
        (400, b'{"error": 7}'),
        (400, b'{"error": ""}'),
        (400, b'{"error_description": "no code"}'),
        (400, b'{"error": "invalid_grant", "error": "invalid_client"}'),
        (400, b'["invalid_grant"]'),
        (201, b'{"access_token": "at", "token_type": "Bearer"}'),
        (302, b""),
    ],
)
def test_non_json_or_codeless_errors_invalid_response(status: int, content: bytes) -> None:
    with pytest.raises(InvalidResponse, match=str(status)):
        parse_token_response(HttpResponse(status, {}, content))


def test_parse_oauth_error_returns_not_raises() -> None:
    error = parse_oauth_error(_json(400, {"error": "invalid_grant"}))
    assert isinstance(error, InvalidGrant)
    error = parse_oauth_error(HttpResponse(500, {}, b"oops"))
    assert isinstance(error, InvalidResponse)
    error = parse_oauth_error(HttpResponse(400, {}, b"ignored"), {"error": "invalid_scope"})
    assert isinstance(error, InvalidScope)


# --- security item 40: no secret in repr ------------------------------------------------------


def test_sec_40_token_values_not_in_repr() -> None:
    token = parse_token_response(
        _json(
            200,
            {
                "access_token": CANARY_ACCESS,
                "token_type": "Bearer",
                "refresh_token": CANARY_REFRESH,
                "id_token": CANARY_ID,
                "expires_in": 60,
            },
        )
    )
    rendered = [
        repr(token),
        str(token),
        token.model_dump_json(),
        json.dumps(token.model_dump(mode="json")),
        repr(token.model_dump()),
        f"{token}",
        f"{token!r}",
    ]
    for text in rendered:
        for canary in (CANARY_ACCESS, CANARY_REFRESH, CANARY_ID):
            assert canary not in text
    assert token.access_token.get_secret_value() == CANARY_ACCESS


def test_sec_40_error_messages_have_no_token_values() -> None:
    body = {"access_token": CANARY_ACCESS, "token_type": 5, "refresh_token": CANARY_REFRESH}
    with pytest.raises(InvalidResponse) as info:
        parse_token_response(_json(200, body))
    for text in (str(info.value), repr(info.value)):
        assert CANARY_ACCESS not in text
        assert CANARY_REFRESH not in text


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
        "id_token",
        "issued_token_type",
        "error",
        "error_description",
        "error_uri",
        "x",
    ]
)


@given(st.integers(100, 599), st.dictionaries(_members, _json_values, max_size=7))
@settings(max_examples=200, deadline=None)
def test_parse_token_response_fuzz_objects(status: int, body: dict[str, Any]) -> None:
    response = HttpResponse(status, {}, json.dumps(body).encode())
    failure: AgentIdentityError | None = None
    try:
        token = parse_token_response(response)
    except AgentIdentityError as exc:
        failure = exc
    if isinstance(failure, OAuthError):
        assert status != 200
        assert failure.status_code == status
        assert failure.error == body["error"]
    if failure is not None:
        return
    assert status == 200
    assert isinstance(token, TokenResponse)
    assert token.access_token.get_secret_value() == body["access_token"]
    assert token.token_type
    assert token.expires_in is None or token.expires_in >= 0


@given(st.integers(100, 599), st.binary(max_size=200))
@settings(max_examples=200, deadline=None)
def test_parse_token_response_fuzz_bytes(status: int, content: bytes) -> None:
    try:
        parse_token_response(HttpResponse(status, {}, content))
    except AgentIdentityError:
        return
    assert status == 200
