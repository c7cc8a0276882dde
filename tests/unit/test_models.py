"""Wire models (agent_identity.models): secrets never rendered (security item 40),
unknown members ignored (item 4), RFC 8414 §2 defaults."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from pydantic import SecretStr, ValidationError

from agent_identity.errors import ConfigurationError
from agent_identity.models import (
    AccessToken,
    DeviceAuthorization,
    Grant,
    ServerMetadata,
    TokenResponse,
)

CANARIES = {
    "access_token": "CANARY-AT-51ab",
    "refresh_token": "CANARY-RT-8c2f",
    "id_token": "CANARY-ID-77de",
}


def _renderings(obj: Any) -> list[str]:
    out = [repr(obj), str(obj), f"{obj}", f"{obj!r}"]
    if hasattr(obj, "model_dump_json"):
        out += [
            obj.model_dump_json(),
            repr(obj.model_dump()),
            json.dumps(obj.model_dump(mode="json")),
        ]
    return out


def _secret_fields(model: type[Any]) -> set[str]:
    return {
        name for name, info in model.model_fields.items() if "SecretStr" in repr(info.annotation)
    }


def test_sec_40_secret_fields_are_secretstr() -> None:
    assert _secret_fields(TokenResponse) == {"access_token", "refresh_token", "id_token"}
    assert _secret_fields(DeviceAuthorization) == {"device_code"}


def test_sec_40_token_response_secrets_never_rendered() -> None:
    token = TokenResponse.model_validate({**CANARIES, "token_type": "Bearer"})
    for text in _renderings(token):
        for canary in CANARIES.values():
            assert canary not in text
    assert token.access_token.get_secret_value() == CANARIES["access_token"]


def test_sec_40_device_code_never_rendered() -> None:
    auth = DeviceAuthorization.model_validate(
        {
            "device_code": "CANARY-DC-1",
            "user_code": "ABCD-EFGH",
            "verification_uri": "https://as/device",
            "expires_in": 60,
        }
    )
    for text in _renderings(auth):
        assert "CANARY-DC-1" not in text
    assert "ABCD-EFGH" in repr(auth)  # the user code is shown to the user on purpose


def test_sec_40_access_token_repr() -> None:
    token = AccessToken(
        value=SecretStr("CANARY-AT-2"),
        token_type="Bearer",
        issuer="https://as",
        resource="https://api",
        scopes=("a",),
        expires_at=100.0,
        received_at=40.0,
    )
    for text in _renderings(token):
        assert "CANARY-AT-2" not in text
    assert "https://api" in repr(token)
    # the value is only released into the header (security item 22)
    assert token.authorization_header() == "Bearer CANARY-AT-2"
    dumped = dataclasses.asdict(token)
    assert "CANARY-AT-2" not in repr(dumped)


def test_access_token_header_scheme() -> None:
    def make(token_type: str) -> AccessToken:
        return AccessToken(SecretStr("t"), token_type, "https://as", None, (), None, 0.0)

    assert make("bearer").authorization_header() == "Bearer t"
    assert make("N_A").authorization_header() == "Bearer t"
    # security item 36: a DPoP-bound token is never sent without its proof
    for kind in ("DPoP", "dpop"):
        with pytest.raises(ConfigurationError, match="DPoP-bound"):
            make(kind).authorization_header()


def test_sec_24_access_token_expiry() -> None:
    token = AccessToken(SecretStr("t"), "Bearer", "https://as", None, (), 100.0, 40.0)
    assert not token.expires_within(10, now=80.0)
    assert token.expires_within(10, now=90.0)
    assert token.expires_within(0, now=100.0)
    never = AccessToken(SecretStr("t"), "Bearer", "https://as", None, (), None, 40.0)
    assert not never.expires_within(10**9, now=10**9)


def test_token_response_scopes() -> None:
    def make(scope: str | None) -> TokenResponse:
        return TokenResponse(access_token=SecretStr("a"), token_type="Bearer", scope=scope)

    assert make(None).scopes is None
    assert make("").scopes == ()
    assert make(" a  b\tc ").scopes == ("a", "b", "c")


def test_models_are_frozen() -> None:
    token = TokenResponse(access_token=SecretStr("a"), token_type="Bearer")
    with pytest.raises(ValidationError):
        token.token_type = "DPoP"  # type: ignore[misc]
    metadata = ServerMetadata(issuer="https://as")
    with pytest.raises(ValidationError):
        metadata.issuer = "https://evil"  # type: ignore[misc]


def test_sec_04_unknown_members_ignored() -> None:
    metadata = ServerMetadata.model_validate({"issuer": "https://as", "x": 1, "y": {"z": []}})
    assert "x" not in metadata.model_dump()
    token = TokenResponse.model_validate({"access_token": "a", "token_type": "b", "x": 1})
    assert "x" not in token.model_dump()


def test_supports_grant_default_per_rfc8414() -> None:
    # RFC 8414 §2: omitted grant_types_supported means ["authorization_code", "implicit"]
    metadata = ServerMetadata(issuer="https://as")
    assert metadata.grant_types_supported is None
    assert metadata.supports_grant("authorization_code")
    assert metadata.supports_grant("implicit")
    assert not metadata.supports_grant("refresh_token")
    assert not metadata.supports_grant("client_credentials")
    assert not metadata.supports_grant("urn:ietf:params:oauth:grant-type:device_code")


def test_supports_grant_explicit_list() -> None:
    metadata = ServerMetadata(issuer="https://as", grant_types_supported=("refresh_token",))
    assert metadata.supports_grant("refresh_token")
    assert not metadata.supports_grant("authorization_code")
    empty = ServerMetadata(issuer="https://as", grant_types_supported=())
    assert not empty.supports_grant("authorization_code")


def test_server_metadata_defaults() -> None:
    metadata = ServerMetadata(issuer="https://as")
    assert metadata.code_challenge_methods_supported == ()
    assert metadata.authorization_response_iss_parameter_supported is False
    assert metadata.require_pushed_authorization_requests is False
    assert metadata.token_endpoint_auth_methods_supported is None
    assert metadata.scopes_supported is None
    assert metadata.client_id_metadata_document_supported is False


@pytest.mark.parametrize(
    ("field", "value"),
    [("expires_in", True), ("expires_in", -1), ("expires_in", 1.5), ("expires_in", "x")],
)
def test_token_response_expires_in_validated(field: str, value: object) -> None:
    with pytest.raises(ValidationError):
        TokenResponse.model_validate({"access_token": "a", "token_type": "b", field: value})


def test_token_response_expires_in_numeric_string_accepted() -> None:
    # Some servers send "3600"; lax integer parsing keeps them working.
    token = TokenResponse.model_validate(
        {"access_token": "a", "token_type": "b", "expires_in": "3600"}
    )
    assert token.expires_in == 3600


def test_device_authorization_interval_default_and_bounds() -> None:
    base = {"device_code": "d", "user_code": "u", "verification_uri": "https://as/d"}
    assert DeviceAuthorization.model_validate({**base, "expires_in": 5}).interval == 5
    for bad in ({"expires_in": 0}, {"expires_in": 5, "interval": 0}, {"expires_in": False}):
        with pytest.raises(ValidationError):
            DeviceAuthorization.model_validate({**base, **bad})


def test_grant_holds_no_secret_fields() -> None:
    names = {f.name for f in dataclasses.fields(Grant)}
    assert not names & {"refresh_token", "access_token", "id_token", "code_verifier"}
    grant = Grant("https://as", "https://as", "t", "u", None, ("a",), (), True, 0.0, {"sub": "x"})
    assert grant == Grant("https://as", "https://as", "t", "u", None, ("a",), (), True, 0.0)
