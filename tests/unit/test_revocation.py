"""Token revocation (agent_identity.oauth.revocation, RFC 7009): security item 28."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from agent_identity.errors import (
    AgentIdentityError,
    ConfigurationError,
    InvalidClient,
    InvalidRequest,
    InvalidResponse,
    OAuthError,
    ServerError,
    TemporarilyUnavailable,
)
from agent_identity.oauth._message import HttpResponse
from agent_identity.oauth.client_auth import (
    ClientSecretBasic,
    NoClientAuth,
    PrivateKeyJWT,
    generate_private_key,
)
from agent_identity.oauth.revocation import parse_revocation_response, revocation_request

ISSUER = "https://as.example"
ENDPOINT = "https://as.example/revoke"
CANARY = "CANARY-REFRESH-TOKEN-0d9e"


def test_revocation_request_carries_token_hint_and_client_auth() -> None:
    request = revocation_request(
        ENDPOINT,
        token=SecretStr(CANARY),
        client_auth=ClientSecretBasic("agent", SecretStr("pw")),
        issuer=ISSUER,
        now=0.0,
        token_type_hint="refresh_token",
    )
    assert request.method == "POST"
    assert request.url == ENDPOINT
    assert dict(request.form or {}) == {"token": CANARY, "token_type_hint": "refresh_token"}
    assert base64.b64decode(request.headers["Authorization"][6:]) == b"agent:pw"
    assert CANARY not in repr(request)


def test_revocation_request_is_idempotent() -> None:
    request = revocation_request(
        ENDPOINT, token=SecretStr("t"), client_auth=NoClientAuth("agent"), issuer=ISSUER, now=0
    )
    assert request.idempotent is True
    assert dict(request.form or {}) == {"token": "t", "client_id": "agent"}  # no hint


def test_revocation_request_private_key_jwt_audience_is_issuer() -> None:
    auth = PrivateKeyJWT("agent", generate_private_key("EC"))
    request = revocation_request(
        ENDPOINT,
        token=SecretStr("t"),
        client_auth=auth,
        issuer=ISSUER,
        now=1_700_000_000.0,
        token_type_hint="access_token",
    )
    form = dict(request.form or {})
    assert form["token_type_hint"] == "access_token"
    payload = form["client_assertion"].split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert claims["aud"] == ISSUER


def test_revocation_request_without_endpoint() -> None:
    with pytest.raises(ConfigurationError):
        revocation_request(
            None, token=SecretStr("t"), client_auth=NoClientAuth("a"), issuer=ISSUER, now=0
        )


@pytest.mark.parametrize(
    "content", [b"", b"{}", b"<html>ok</html>", b'{"a":1,"a":2}', b"\xff\xfe", b"null"]
)
def test_sec_28_revocation_200_means_revoked_body_ignored(content: bytes) -> None:
    assert parse_revocation_response(HttpResponse(200, {}, content)) is None


@pytest.mark.parametrize("content", [b"", b"<html>busy</html>", b'{"error":"server_error"}'])
def test_sec_28_revocation_503_keeps_token(content: bytes) -> None:
    response = HttpResponse(503, {"retry-after": "30"}, content)
    with pytest.raises(TemporarilyUnavailable) as info:
        parse_revocation_response(response)
    assert info.value.status_code == 503
    assert info.value.error == "temporarily_unavailable"


@pytest.mark.parametrize(
    ("status", "error", "cls"),
    [
        (400, "unsupported_token_type", OAuthError),
        (400, "invalid_request", InvalidRequest),
        (401, "invalid_client", InvalidClient),
        (500, "server_error", ServerError),
    ],
)
def test_sec_28_other_errors_typed(status: int, error: str, cls: type[OAuthError]) -> None:
    response = HttpResponse(status, {}, json.dumps({"error": error}).encode())
    with pytest.raises(cls) as info:
        parse_revocation_response(response)
    assert type(info.value) is cls
    assert info.value.error == error
    assert info.value.status_code == status


@pytest.mark.parametrize(
    ("status", "content"), [(500, b"<html>"), (400, b"{}"), (204, b""), (302, b""), (429, b"")]
)
def test_sec_28_unexpected_answers_keep_token(status: int, content: bytes) -> None:
    with pytest.raises(InvalidResponse):
        parse_revocation_response(HttpResponse(status, {}, content))


@given(st.integers(100, 599), st.binary(max_size=100))
@settings(max_examples=200, deadline=None)
def test_sec_28_only_200_counts_as_revoked(status: int, content: bytes) -> None:
    try:
        parse_revocation_response(HttpResponse(status, {}, content))
    except AgentIdentityError:
        assert status != 200
        return
    assert status == 200
