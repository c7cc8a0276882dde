"""The one error tree of agent-identity.

Every exception the SDK raises on purpose derives from :class:`AgentIdentityError`, so
``except AgentIdentityError`` catches all of them. Foreign exceptions (httpx2, joserfc,
json, ssl) are mapped to this tree at one boundary (``agent_identity._http`` for the
network, ``agent_identity.oauth`` parsers for wire data) and chained with ``from``.

No message, ``repr`` or attribute of an error ever holds a secret (token, code, code
verifier, client secret, private key): messages name *which* value was wrong, never the
value itself.

::

    AgentIdentityError
    ├── ConfigurationError              bad arguments or settings, found before any request
    ├── InsecureURLError                a URL that breaks the transport policy (security 1-3)
    │   └── SSRFBlockedError            a server-supplied URL that resolves to a private,
    │                                   link-local or loopback address (security 2)
    ├── TransportError                  the request did not complete
    │   └── RequestTimeout              a connect/read/write/pool or flow timeout
    ├── ProtocolViolation               the server broke the protocol; nothing was stored
    │   ├── InvalidResponse             non-JSON, oversized, truncated, duplicate keys,
    │   │                               missing or mistyped members, unexpected status
    │   ├── MetadataError               discovery document unusable (issuer mismatch,
    │   │                               no S256, missing endpoint)
    │   ├── InvalidTokenError           a JWT (ID token) failed validation
    │   └── TokenBindingError           a token not bound as asked (RFC 9449): a bearer
    │                                   token to a DPoP request, a DPoP token without one,
    │                                   a ``cnf.jkt`` naming another key
    ├── AuthorizationResponseError      the redirect back to us is not acceptable
    │   ├── StateMismatch               wrong, missing, expired or replayed ``state``
    │   └── IssuerMismatch              RFC 9207 ``iss`` absent when required, or different
    ├── OAuthError                      the server answered with an OAuth error response
    │   │                               (``error``, ``error_description``, ``error_uri``,
    │   │                               ``status_code``)
    │   ├── InvalidRequest, InvalidClient, InvalidGrant, UnauthorizedClient,
    │   │   UnsupportedGrantType, InvalidScope, InvalidTarget, AccessDenied,
    │   │   ExpiredToken, ServerError, TemporarilyUnavailable
    │   └── (device/CIBA polling states are not errors to users: they are handled inside)
    ├── ConsentError                    the user's consent could not be obtained
    │   ├── ConsentRequired             consent is needed and no handler can get it here
    │   ├── ConsentDenied               the user (or the AS) refused: ``access_denied``
    │   └── ConsentTimeout              nobody completed the consent in time
    ├── ReauthorizationRequired         the stored grant is gone (revoked, expired,
    │                                   rotated away): run ``user.consent(...)`` again
    ├── TokenPolicyError                an issued token is broader than asked for or names
    │                                   another audience, and the policy says ``refuse``;
    │                                   or it lacks the RFC 9396 details asked for (always)
    ├── StepUpLimitExceeded             a resource kept answering ``insufficient_scope`` (or
    │                                   ``insufficient_user_authentication``) to one
    │                                   operation after ``max_step_ups`` step-ups
    ├── AuditError                      a strict audit trail could not write a record, or
    │                                   the trail is not running (never entered, closed):
    │                                   do not proceed with the audited action
    ├── ApprovalError                   a human approval (CIBA) was not obtained or not usable
    │   ├── ApprovalDenied              the user (or the AS) refused: ``access_denied``
    │   ├── ApprovalExpired             nobody approved before ``expires_in`` (or the
    │   │                               request became invalid): ask again
    │   ├── ApprovalUnavailable         no CIBA here: no endpoint, no client credentials,
    │   │                               ``unknown_user_id``, ``unauthorized_client``
    │   ├── ApprovalPending             no decision yet and the caller would not wait: ask
    │   │                               again with the same key to continue the request
    │   └── ApprovalMismatch            an approval used for another action, or twice
    └── VaultError                      the token vault cannot serve the request
        ├── VaultUnavailable            the store cannot be reached or stays locked
        ├── VaultCorrupted              a row fails to decode or authenticate (tampered,
        │   │                           swapped between users, truncated); it is kept
        │   ├── VaultKeyError           no key for the row's key id, or the wrong key
        │   └── VaultRollback           a row is older than one already seen, or not at
        │                               the version it was sealed for (a replay)
        └── VersionConflict             a compare-and-swap write lost a race
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "AccessDenied",
    "AgentIdentityError",
    "ApprovalDenied",
    "ApprovalError",
    "ApprovalExpired",
    "ApprovalMismatch",
    "ApprovalPending",
    "ApprovalUnavailable",
    "AuditError",
    "AuthorizationResponseError",
    "ConfigurationError",
    "ConsentDenied",
    "ConsentError",
    "ConsentRequired",
    "ConsentTimeout",
    "ExpiredToken",
    "InsecureURLError",
    "InvalidClient",
    "InvalidGrant",
    "InvalidRequest",
    "InvalidResponse",
    "InvalidScope",
    "InvalidTarget",
    "InvalidTokenError",
    "IssuerMismatch",
    "MetadataError",
    "OAuthError",
    "ProtocolViolation",
    "ReauthorizationRequired",
    "RequestTimeout",
    "SSRFBlockedError",
    "ServerError",
    "StateMismatch",
    "StepUpLimitExceeded",
    "TemporarilyUnavailable",
    "TokenBindingError",
    "TokenPolicyError",
    "TransportError",
    "UnauthorizedClient",
    "UnsupportedGrantType",
    "VaultCorrupted",
    "VaultError",
    "VaultKeyError",
    "VaultRollback",
    "VaultUnavailable",
    "VersionConflict",
    "oauth_error_from_response",
]


class AgentIdentityError(Exception):
    """Root of every error raised by agent-identity."""


class ConfigurationError(AgentIdentityError, ValueError):
    """An argument or setting is invalid; raised before any request is sent."""


class InsecureURLError(AgentIdentityError, ValueError):
    """A URL breaks the transport policy: not https (and not an allowed loopback URL),
    a scheme that must never be opened (``javascript:``, ``data:``, ``file:``), userinfo,
    or a fragment where none is allowed."""


class SSRFBlockedError(InsecureURLError):
    """A URL learned from a server points at a private, link-local, loopback or otherwise
    non-public address, and such addresses were not explicitly allowed."""


class TransportError(AgentIdentityError):
    """The HTTP exchange failed before a complete response was received."""


class RequestTimeout(TransportError, TimeoutError):
    """A network operation or a whole flow ran past its deadline."""


class ProtocolViolation(AgentIdentityError):
    """The server's answer breaks the protocol. Nothing from that answer was stored."""


class InvalidResponse(ProtocolViolation):
    """A response body or status that cannot be accepted (not JSON, too large, truncated,
    duplicate keys, missing or mistyped members, unexpected status or redirect)."""


class MetadataError(ProtocolViolation):
    """A discovery document cannot be used (issuer mismatch, S256 not advertised,
    a required endpoint missing or insecure)."""


class InvalidTokenError(ProtocolViolation):
    """A JWT failed validation (signature, algorithm, issuer, audience, expiry, nonce)."""


class TokenBindingError(ProtocolViolation):
    """The authorization server issued a token that is not bound as the request asked
    (RFC 9449, security item 36): ``reason="token_type"`` (a ``Bearer`` token to a request
    with a DPoP proof, or a ``DPoP`` token to one without) or ``reason="cnf"`` (a readable
    JWT whose ``cnf.jkt`` does not name the client's key). The token was not used; a
    rotated refresh token that came with it was kept."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class AuthorizationResponseError(AgentIdentityError):
    """The authorization response (the redirect back to the client) is not acceptable.
    No token request was sent."""


class StateMismatch(AuthorizationResponseError):
    """``state`` is missing, unknown, expired or was already used."""


class IssuerMismatch(AuthorizationResponseError):
    """RFC 9207: ``iss`` is missing although the server advertises it, or differs from the
    issuer the flow was started with. Any ``error`` the response carries is not trusted."""


class OAuthError(AgentIdentityError):
    """An OAuth 2.0 error response (RFC 6749 §5.2 and extensions).

    Attributes mirror the wire format: ``error``, ``error_description``, ``error_uri``, plus
    the HTTP ``status_code`` (``None`` for errors delivered in a redirect).
    """

    error_code: ClassVar[str | None] = None

    def __init__(
        self,
        error: str,
        error_description: str | None = None,
        error_uri: str | None = None,
        status_code: int | None = None,
    ) -> None:
        self.error = error
        self.error_description = error_description
        self.error_uri = error_uri
        self.status_code = status_code
        message = error if not error_description else f"{error}: {error_description}"
        if status_code is not None:
            message = f"{message} (HTTP {status_code})"
        super().__init__(message)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(error={self.error!r}, "
            f"error_description={self.error_description!r}, status_code={self.status_code!r})"
        )


class InvalidRequest(OAuthError):
    """The request is missing a parameter or is malformed (RFC 6749 §5.2)."""

    error_code = "invalid_request"


class InvalidClient(OAuthError):
    """Client authentication failed (RFC 6749 §5.2)."""

    error_code = "invalid_client"


class InvalidGrant(OAuthError):
    """The code, refresh token or other grant is invalid, expired, revoked or was issued
    to another client (RFC 6749 §5.2)."""

    error_code = "invalid_grant"


class UnauthorizedClient(OAuthError):
    """The client may not use this grant type (RFC 6749 §5.2)."""

    error_code = "unauthorized_client"


class UnsupportedGrantType(OAuthError):
    """The server does not support this grant type (RFC 6749 §5.2)."""

    error_code = "unsupported_grant_type"


class InvalidScope(OAuthError):
    """A requested scope is invalid, unknown or exceeds what was granted (RFC 6749
    §5.2)."""

    error_code = "invalid_scope"


class InvalidTarget(OAuthError):
    """The requested resource or audience is invalid or not allowed (RFC 8707 §2, RFC
    8693 §2.2.2)."""

    error_code = "invalid_target"


class AccessDenied(OAuthError):
    """The resource owner or the server denied the request (RFC 6749 §4.1.2.1)."""

    error_code = "access_denied"


class ExpiredToken(OAuthError):
    """A device code or CIBA request expired (RFC 8628 §3.5)."""

    error_code = "expired_token"


class ServerError(OAuthError):
    """The server met an unexpected condition (RFC 6749 §4.1.2.1)."""

    error_code = "server_error"


class TemporarilyUnavailable(OAuthError):
    """The server cannot handle the request now; retry later (RFC 6749 §4.1.2.1, RFC
    7009 §2.2.1)."""

    error_code = "temporarily_unavailable"


_BY_CODE: dict[str, type[OAuthError]] = {
    cls.error_code: cls
    for cls in (
        InvalidRequest,
        InvalidClient,
        InvalidGrant,
        UnauthorizedClient,
        UnsupportedGrantType,
        InvalidScope,
        InvalidTarget,
        AccessDenied,
        ExpiredToken,
        ServerError,
        TemporarilyUnavailable,
    )
    if cls.error_code is not None
}


def oauth_error_from_response(
    error: str,
    error_description: str | None = None,
    error_uri: str | None = None,
    status_code: int | None = None,
) -> OAuthError:
    """Build the most specific :class:`OAuthError` subclass for an ``error`` code."""
    cls = _BY_CODE.get(error, OAuthError)
    return cls(error, error_description, error_uri, status_code)


class ConsentError(AgentIdentityError):
    """The user's consent could not be obtained."""


class ConsentRequired(ConsentError):
    """Consent (or more consent) is needed and cannot be obtained here.

    ``scopes`` and ``resource`` say what must be consented to; pass them to
    ``user.consent(...)`` from a context where a human can act.

    ``authorization_url`` is set when the consent was started and only waits for the user
    (a :class:`~agent_identity.consent.WebConsent` link to show, for example as a
    "connect your account" button); ``expires_at`` (Unix time) is when that link stops
    working.
    """

    def __init__(
        self,
        message: str,
        *,
        scopes: tuple[str, ...] = (),
        resource: str | None = None,
        authorization_url: str | None = None,
        expires_at: float | None = None,
    ) -> None:
        super().__init__(message)
        self.scopes = scopes
        self.resource = resource
        self.authorization_url = authorization_url
        self.expires_at = expires_at


class ConsentDenied(ConsentError):
    """The user or the authorization server refused (``access_denied``)."""

    def __init__(self, message: str, *, error: str = "access_denied") -> None:
        super().__init__(message)
        self.error = error


class ConsentTimeout(ConsentError, TimeoutError):
    """Nobody completed the consent before its deadline."""


class ReauthorizationRequired(AgentIdentityError):
    """The stored grant can no longer be used (revoked, expired or rotated away).

    Run ``user.consent(scopes=..., resource=...)`` again with the values carried here.
    """

    def __init__(
        self, message: str, *, scopes: tuple[str, ...] = (), resource: str | None = None
    ) -> None:
        super().__init__(message)
        self.scopes = scopes
        self.resource = resource


class TokenPolicyError(AgentIdentityError):
    """The authorization server issued a token that breaks the client's token policy:
    scopes beyond those requested (``reason="scope"``, policy ``on_broader_token``) or,
    for a readable JWT, an audience that does not name the requested resource
    (``reason="audience"``, policy ``on_audience_mismatch``), or a token that does not
    carry the RFC 9396 ``authorization_details`` asked for (``reason="authorization_details"``,
    always refused; ``missing_details`` names the types). The token was not cached or
    returned; a rotated refresh token that came with it was stored."""

    def __init__(
        self,
        message: str,
        *,
        reason: str,
        requested: tuple[str, ...] = (),
        granted: tuple[str, ...] = (),
        resource: str | None = None,
        missing_details: tuple[str, ...] = (),
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.requested = requested
        self.granted = granted
        self.resource = resource
        self.missing_details = missing_details


class StepUpLimitExceeded(AgentIdentityError):
    """A protected resource kept refusing one operation for lack of scope (``403
    insufficient_scope``) or of authentication (``401 insufficient_user_authentication``,
    RFC 9470) after ``max_step_ups`` step-ups for that resource and operation (security
    item 29). Nothing more is asked of the user for it; the last response was discarded.

    ``resource`` is the protected resource, ``operation`` what was refused (for MCP the
    JSON-RPC method and tool, prompt or resource name, e.g. ``"tools/call admin_tool"``),
    ``scopes`` the scopes the last challenge asked for, ``error`` its error code,
    ``status_code`` its HTTP status and ``step_ups`` how many step-ups were made.
    """

    def __init__(
        self,
        message: str,
        *,
        resource: str,
        operation: str,
        scopes: tuple[str, ...] = (),
        error: str | None = None,
        status_code: int | None = None,
        step_ups: int = 0,
    ) -> None:
        super().__init__(message)
        self.resource = resource
        self.operation = operation
        self.scopes = scopes
        self.error = error
        self.status_code = status_code
        self.step_ups = step_ups


class ApprovalError(AgentIdentityError):
    """A human approval of an action (OpenID CIBA) was not obtained or cannot be used."""


class ApprovalDenied(ApprovalError):
    """The user refused the action, or the authorization server denied the request
    (``access_denied``, CIBA Core §11 and §13)."""

    def __init__(self, message: str, *, error: str = "access_denied") -> None:
        super().__init__(message)
        self.error = error


class ApprovalExpired(ApprovalError, TimeoutError):
    """Nobody approved before the request expired (``expired_token`` or ``expires_in``
    passed), or the authorization server no longer knows the request (``invalid_grant``).
    A new approval request is needed."""


class ApprovalUnavailable(ApprovalError):
    """Approval cannot be asked for here: the authorization server has no CIBA endpoint
    or delivery mode, the client has no credentials (CIBA requires client
    authentication), or the server refused the user or client (``unknown_user_id``,
    ``unauthorized_client``). ``error`` holds the OAuth error code, if any."""

    def __init__(self, message: str, *, error: str | None = None) -> None:
        super().__init__(message)
        self.error = error


class ApprovalPending(ApprovalError):
    """The user has not decided yet and the caller asked not to wait any longer
    (``wait=``): the request stays pending at the authorization server and in the vault,
    and asking again with the same ``key`` continues it (no second prompt).
    ``binding_message`` is what the user sees on their device; ``expires_at`` (Unix time)
    is when the request expires."""

    def __init__(
        self, message: str, *, binding_message: str = "", expires_at: float | None = None
    ) -> None:
        super().__init__(message)
        self.binding_message = binding_message
        self.expires_at = expires_at


class ApprovalMismatch(ApprovalError):
    """An approval was presented for another action than the one the user approved, or a
    second time (approvals are single-use, security item 45)."""


class AuditError(AgentIdentityError):
    """A strict :class:`~agent_identity.audit.AuditTrail` could not write an audit record
    (the sink failed or timed out), or a trail that is not running (never entered with
    ``async with``, or closed) was given a record. The action being audited should not
    proceed. The message names the sink and the exception type, never record contents."""


class VaultError(AgentIdentityError):
    """The token vault cannot serve the request. Nothing stored was changed."""


class VaultUnavailable(VaultError):
    """The vault's store cannot be reached, or stayed locked past its timeout."""


class VaultCorrupted(VaultError):
    """A vault row does not decode or authenticate: tampered with, moved to another key
    (AES-GCM associated data binds each row to its tenant, user and connection),
    truncated, or written by an incompatible version. The row is left in place."""


class VaultKeyError(VaultCorrupted):
    """The vault has no key for a row's key id, or the configured key is wrong."""


class VaultRollback(VaultCorrupted):
    """A vault row authenticates but is not current: an older ciphertext of the row was
    written back (a replay by someone with write access to the store, or a restored
    backup). Raised when the row's version is lower than one this vault has already read
    or written for the same key (also after the row was deleted), or differs from the
    version the row was sealed at. Nothing from the row is returned; the row is left in
    place. Delete it (``vault.delete(key)``) and ask the user to consent again, or
    restart the processes after a deliberate restore. See ``docs/vault.md`` for what is
    and is not detected."""


class VersionConflict(VaultError):
    """A compare-and-swap write found a newer version: another task or process wrote
    first. Re-read and decide again."""
