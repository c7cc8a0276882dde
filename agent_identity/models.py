"""Wire models (pydantic) shared by the protocol modules and the client.

Every secret is a :class:`pydantic.SecretStr`, so ``repr``/``str``/``model_dump`` of any
model shows ``'**********'`` instead of the value; read a secret with
``.get_secret_value()`` at the single place that sends it.

Unknown members of server documents are ignored (security item 4). The members that are
used follow the bounded-number and text-sanity rules of
:mod:`agent_identity.oauth._limits` (security item 4; issue 12 items 7-8): lifetimes are
whole seconds clamped to one year, access tokens match the RFC 6750 §2.1 ``b64token``
syntax, and no token, code or identifier holds control characters.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, SecretStr

from agent_identity.oauth._limits import (
    MAX_INTERVAL,
    MAX_LIFETIME,
    MAX_TOKEN,
    bounded_int,
    check_access_token,
    sane_text,
)

__all__ = [
    "AccessToken",
    "DeviceAuthorization",
    "Grant",
    "ServerMetadata",
    "TokenResponse",
]


def _lifetime(minimum: int) -> BeforeValidator:
    """``expires_in``: whole seconds (a numeric string is tolerated), clamped to a year."""

    def check(value: object) -> int | None:
        if value is None:
            return None
        return bounded_int(
            value,
            "expires_in",
            minimum=minimum,
            maximum=MAX_LIFETIME,
            over="clamp",
            strings=True,
            error=ValueError,
        )

    return BeforeValidator(check)


def _interval(value: object) -> int:
    return bounded_int(
        value, "interval", minimum=1, maximum=MAX_INTERVAL, over="refuse", strings=True,
        error=ValueError,
    )  # fmt: skip


def _text(name: str, max_length: int = 8 * 1024, *, spaces: bool = False) -> BeforeValidator:
    """A member used verbatim: no control characters, no lone surrogates, bounded."""

    def check(value: object) -> object:
        text = value.get_secret_value() if isinstance(value, SecretStr) else value
        if isinstance(text, str):
            sane_text(
                text, name, max_length=max_length, allow_empty=True, allow_whitespace=spaces,
                error=ValueError,
            )  # fmt: skip
        return value

    return BeforeValidator(check)


def _access_token(value: object) -> object:
    text = value.get_secret_value() if isinstance(value, SecretStr) else value
    if isinstance(text, str):
        check_access_token(text, error=ValueError)
    return value


class _Wire(BaseModel):
    # ``hide_input_in_errors``: a validation error never quotes a member (a token).
    model_config = ConfigDict(
        extra="ignore", frozen=True, str_strip_whitespace=False, hide_input_in_errors=True
    )


class ServerMetadata(_Wire):
    """Authorization server metadata (RFC 8414 §2, OpenID Discovery §3, RFC 9126, 9207,
    8628, CIBA, RFC 9449). Only the members the SDK uses are modelled."""

    issuer: str
    authorization_endpoint: str | None = None
    token_endpoint: str | None = None
    jwks_uri: str | None = None
    registration_endpoint: str | None = None
    userinfo_endpoint: str | None = None
    revocation_endpoint: str | None = None
    introspection_endpoint: str | None = None
    device_authorization_endpoint: str | None = None
    pushed_authorization_request_endpoint: str | None = None
    require_pushed_authorization_requests: bool = False
    backchannel_authentication_endpoint: str | None = None
    backchannel_token_delivery_modes_supported: tuple[str, ...] = ()
    backchannel_user_code_parameter_supported: bool = False
    scopes_supported: tuple[str, ...] | None = None
    response_types_supported: tuple[str, ...] = ()
    grant_types_supported: tuple[str, ...] | None = None
    token_endpoint_auth_methods_supported: tuple[str, ...] | None = None
    code_challenge_methods_supported: tuple[str, ...] = ()
    authorization_response_iss_parameter_supported: bool = False
    id_token_signing_alg_values_supported: tuple[str, ...] = ()
    dpop_signing_alg_values_supported: tuple[str, ...] = ()
    authorization_details_types_supported: tuple[str, ...] = ()
    client_id_metadata_document_supported: bool = False

    def supports_grant(self, grant_type: str) -> bool:
        """RFC 8414 §2: absent ``grant_types_supported`` means authorization_code + implicit."""
        if self.grant_types_supported is None:
            return grant_type in ("authorization_code", "implicit")
        return grant_type in self.grant_types_supported


class TokenResponse(_Wire):
    """A successful token endpoint response (RFC 6749 §5.1, RFC 8693 §2.2.1)."""

    access_token: Annotated[SecretStr, BeforeValidator(_access_token)]
    token_type: Annotated[str, _text("token_type", 64)]
    expires_in: Annotated[int | None, _lifetime(0)] = None
    refresh_token: Annotated[SecretStr | None, _text("refresh_token", MAX_TOKEN)] = None
    scope: Annotated[str | None, _text("scope", spaces=True)] = None
    id_token: Annotated[SecretStr | None, _text("id_token", MAX_TOKEN)] = None
    issued_token_type: Annotated[str | None, _text("issued_token_type", 1024)] = None

    @property
    def scopes(self) -> tuple[str, ...] | None:
        """The granted scopes, or ``None`` when the server did not say (RFC 6749 §3.3:
        then they equal the requested ones)."""
        if self.scope is None:
            return None
        return tuple(self.scope.split())


class DeviceAuthorization(_Wire):
    """A device authorization response (RFC 8628 §3.2)."""

    device_code: Annotated[SecretStr, _text("device_code", MAX_TOKEN)]
    user_code: Annotated[str, _text("user_code", 256)]
    verification_uri: Annotated[str, _text("verification_uri", 4096)]
    verification_uri_complete: Annotated[str | None, _text("verification_uri", 4096)] = None
    expires_in: Annotated[int, _lifetime(1)]
    interval: Annotated[int, BeforeValidator(_interval)] = 5


@dataclass(frozen=True, slots=True)
class AccessToken:
    """An access token ready to be sent to ``resource`` in an ``Authorization`` header.

    The client treats the token as opaque (security item 24): expiry comes from
    ``expires_in`` at receipt, measured on a monotonic clock (``expires_at`` is in that
    clock's seconds; ``None`` means the server did not say).
    """

    value: SecretStr
    token_type: str
    issuer: str
    resource: str | None
    scopes: tuple[str, ...]
    expires_at: float | None
    received_at: float

    def authorization_header(self) -> str:
        """The ``Authorization`` header value (security item 22: never in a URL)."""
        scheme = "DPoP" if self.token_type.lower() == "dpop" else "Bearer"
        return f"{scheme} {self.value.get_secret_value()}"

    def expires_within(self, seconds: float, now: float) -> bool:
        return self.expires_at is not None and self.expires_at - seconds <= now

    def __repr__(self) -> str:
        return (
            f"AccessToken(issuer={self.issuer!r}, resource={self.resource!r}, "
            f"scopes={self.scopes!r}, token_type={self.token_type!r}, value=**********)"
        )


@dataclass(frozen=True, slots=True)
class Grant:
    """What a user consented to at one connection (an authorization server account): the
    granted scopes, the resources the grant may be used for, and whether a refresh token
    is held. ``granted_at`` is the Unix time of the last change."""

    issuer: str
    connection: str
    tenant: str
    user: str
    subject: str | None
    scopes: tuple[str, ...]
    resources: tuple[str, ...]
    has_refresh_token: bool
    granted_at: float
    id_token_claims: dict[str, object] = field(default_factory=dict, compare=False)
