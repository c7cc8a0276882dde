"""Wire models (pydantic) shared by the protocol modules and the client.

Every secret is a :class:`pydantic.SecretStr`, so ``repr``/``str``/``model_dump`` of any
model shows ``'**********'`` instead of the value; read a secret with
``.get_secret_value()`` at the single place that sends it.

Unknown members of server documents are ignored (security item 4). The members that are
used follow the bounded-number and text-sanity rules of
:mod:`agent_identity._limits` (security item 4; issue 12 items 7-8): lifetimes are
whole seconds clamped to one year, access tokens match the RFC 6750 §2.1 ``b64token``
syntax, and no token, code or identifier holds control characters.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Protocol

from pydantic import BaseModel, BeforeValidator, ConfigDict, SecretStr

from agent_identity._limits import (
    MAX_INTERVAL,
    MAX_LIFETIME,
    MAX_TOKEN,
    bounded_int,
    check_access_token,
    sane_text,
)
from agent_identity.errors import ConfigurationError

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
        extra="ignore",
        frozen=True,
        str_strip_whitespace=False,
        hide_input_in_errors=True,
        defer_build=True,
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
    token_endpoint_auth_signing_alg_values_supported: tuple[str, ...] | None = None
    code_challenge_methods_supported: tuple[str, ...] = ()
    authorization_response_iss_parameter_supported: bool = False
    id_token_signing_alg_values_supported: tuple[str, ...] = ()
    dpop_signing_alg_values_supported: tuple[str, ...] = ()
    #: Not in RFC 8414: some servers publish that they bind every access token to a
    #: DPoP key (RFC 9449 §5.2 defines it as client metadata); the SDK then uses DPoP.
    dpop_bound_access_tokens: bool = False
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
    #: RFC 9396 §7.1: what the token was granted, as sent (read with
    #: :func:`agent_identity.oauth.rar.parse_granted`; a malformed value counts as absent).
    authorization_details: Any = None
    #: Whether the access token must not be read (the provider says it is opaque to
    #: clients, e.g. Microsoft Entra): see :meth:`marked_opaque`. Set by the client, never
    #: from the wire (a class attribute, not a member).
    access_token_opaque: ClassVar[bool] = False

    def marked_opaque(self) -> TokenResponse:
        """A copy whose access token is never read for scopes or audience."""
        return _OpaqueTokenResponse.model_construct(self.model_fields_set, **dict(self))

    @property
    def scopes(self) -> tuple[str, ...] | None:
        """The granted scopes, or ``None`` when the server did not say (RFC 6749 §3.3:
        then they equal the requested ones)."""
        if self.scope is None:
            return None
        return tuple(self.scope.split())


class _OpaqueTokenResponse(TokenResponse):
    """A token response whose access token the provider documents as opaque to clients."""

    access_token_opaque: ClassVar[bool] = True


class DeviceAuthorization(_Wire):
    """A device authorization response (RFC 8628 §3.2)."""

    device_code: Annotated[SecretStr, _text("device_code", MAX_TOKEN)]
    user_code: Annotated[str, _text("user_code", 256)]
    verification_uri: Annotated[str, _text("verification_uri", 4096)]
    verification_uri_complete: Annotated[str | None, _text("verification_uri", 4096)] = None
    expires_in: Annotated[int, _lifetime(1)]
    interval: Annotated[int, BeforeValidator(_interval)] = 5


class ProofSigner(Protocol):
    """What signs the DPoP proofs of a bound token (RFC 9449 §4): implemented by
    :class:`agent_identity.oauth.dpop.DPoPSigner`."""

    async def proof(self, method: str, url: str, *, access_token: str | None = None) -> str: ...

    def remember_nonce(self, url: str, value: str | None) -> bool:
        """Keep a ``DPoP-Nonce`` the server at ``url`` sent; ``True`` when it is new."""
        ...


@dataclass(frozen=True, slots=True)
class AccessToken:
    """An access token ready to be sent to ``resource`` in an ``Authorization`` header.

    The client treats the token as opaque (security item 24): expiry comes from
    ``expires_in`` at receipt, measured on a monotonic clock (``expires_at`` is in that
    clock's seconds; ``None`` means the server did not say).

    ``scopes`` are the scopes the token carries as the server reported them (the token
    response's ``scope``, else the ``scope``/``scp`` claim when the token is a readable
    JWT); when the server said nothing they are the requested ones and
    ``scopes_verified`` is ``False``. ``audience`` is the ``aud`` of a readable JWT access
    token, else ``None`` (unknown).

    A DPoP-bound token (``token_type`` ``DPoP``, RFC 9449) carries ``dpop``: the signer of
    the key it is bound to. It is never sent as a bearer token: use it through
    ``http_auth()``, :class:`agent_identity.TokenAuth` or :meth:`request_headers`, which
    add a fresh proof to every request. ``authorization_details`` are the RFC 9396 details
    the server granted with it (checked against those asked for), if any.
    """

    value: SecretStr
    token_type: str
    issuer: str
    resource: str | None
    scopes: tuple[str, ...]
    expires_at: float | None
    received_at: float
    scopes_verified: bool = True
    audience: tuple[str, ...] | None = None
    dpop: ProofSigner | None = field(default=None, compare=False)
    authorization_details: tuple[dict[str, Any], ...] | None = field(default=None, compare=False)

    @property
    def dpop_bound(self) -> bool:
        """Whether the token is bound to a DPoP key (``token_type`` ``DPoP``)."""
        return self.token_type.lower() == "dpop"

    def authorization_header(self) -> str:
        """The ``Authorization`` header value of a bearer token (security item 22: never
        in a URL). A DPoP-bound token needs a proof with every request (security item 36):
        :class:`~agent_identity.errors.ConfigurationError`, use :meth:`request_headers`."""
        if self.dpop_bound:
            raise ConfigurationError(
                "this token is DPoP-bound: it is sent with a proof, never as a bearer token; "
                "use http_auth(), TokenAuth(token) or await token.request_headers(method, url)"
            )
        return f"Bearer {self.value.get_secret_value()}"

    async def request_headers(self, method: str, url: str) -> dict[str, str]:
        """The headers that present this token on one request to ``url``: ``Authorization``
        and, for a DPoP-bound token, a fresh ``DPoP`` proof (with ``ath`` and the nonce
        the resource's origin last gave). A bearer token never gets a DPoP scheme."""
        value = self.value.get_secret_value()
        if not self.dpop_bound:
            return {"Authorization": f"Bearer {value}"}
        if self.dpop is None:
            raise ConfigurationError("this DPoP-bound token has lost its key: get a new token")
        proof = await self.dpop.proof(method, url, access_token=value)
        return {"Authorization": f"DPoP {value}", "DPoP": proof}

    def expires_within(self, seconds: float, now: float) -> bool:
        return self.expires_at is not None and self.expires_at - seconds <= now

    def __repr__(self) -> str:
        return (
            f"AccessToken(issuer={self.issuer!r}, resource={self.resource!r}, "
            f"scopes={self.scopes!r}, scopes_verified={self.scopes_verified!r}, "
            f"token_type={self.token_type!r}, value=**********)"
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
