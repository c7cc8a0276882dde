"""OAuth 2.0 Token Exchange (RFC 8693), sans-IO.

- :func:`token_exchange_request` builds the request of RFC 8693 §2.1 (security item 31):
  ``subject_token`` and ``subject_token_type`` are required; ``actor_token_type`` is sent
  if and only if ``actor_token`` is; ``resource`` (RFC 8707 §2, canonical form, security
  item 19), ``audience`` and ``scope`` narrow what the issued token is good for. The
  client's authentication is applied as for any token request (RFC 8693 §2.1, "the client
  authentication ... of RFC 6749 §2.3"). Token requests are never idempotent.
- :func:`parse_token_exchange_response` parses the response of RFC 8693 §2.2
  (security item 32): a success must carry ``access_token`` (the issued token, whatever its
  type, RFC 8693 §2.2.1) and ``issued_token_type``; ``token_type`` is ``Bearer``, ``DPoP``
  or, for a token that is not usable as an access token, ``N_A`` (compared
  case-insensitively). Errors (RFC 8693 §2.2.2, RFC 6749 §5.2) become typed
  :class:`~agent_identity.errors.OAuthError` subclasses, notably
  :class:`~agent_identity.errors.InvalidRequest` and
  :class:`~agent_identity.errors.InvalidTarget`.
- The token type identifiers of RFC 8693 §3 are the ``*_TOKEN_TYPE`` constants.

The ``act`` claim (RFC 8693 §4.1) of an issued JWT is read by
:mod:`agent_identity.delegation`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final

from pydantic import SecretStr

from agent_identity.errors import ConfigurationError, InvalidResponse
from agent_identity.models import TokenResponse
from agent_identity.oauth._message import HttpRequest, HttpResponse
from agent_identity.oauth.client_auth import ClientAuthentication
from agent_identity.oauth.token import parse_token_response, token_request
from agent_identity.oauth.urls import canonical_resource_uri

__all__ = [
    "ACCESS_TOKEN_TYPE",
    "ID_JAG_TOKEN_TYPE",
    "ID_TOKEN_TYPE",
    "JWT_TOKEN_TYPE",
    "REFRESH_TOKEN_TYPE",
    "TOKEN_EXCHANGE_GRANT",
    "parse_token_exchange_response",
    "token_exchange_request",
]

#: RFC 8693 §2.1 ``grant_type``.
TOKEN_EXCHANGE_GRANT: Final = "urn:ietf:params:oauth:grant-type:token-exchange"
#: RFC 8693 §3: an OAuth 2.0 access token.
ACCESS_TOKEN_TYPE: Final = "urn:ietf:params:oauth:token-type:access_token"
#: RFC 8693 §3: an OAuth 2.0 refresh token.
REFRESH_TOKEN_TYPE: Final = "urn:ietf:params:oauth:token-type:refresh_token"
#: RFC 8693 §3: an OpenID Connect ID token.
ID_TOKEN_TYPE: Final = "urn:ietf:params:oauth:token-type:id_token"
#: An Identity Assertion JWT Authorization Grant (draft-ietf-oauth-identity-assertion-
#: authz-grant): what an enterprise IdP issues for cross-app access (MCP SEP-990).
ID_JAG_TOKEN_TYPE: Final = "urn:ietf:params:oauth:token-type:id-jag"
#: RFC 8693 §3: a JWT (RFC 7519).
JWT_TOKEN_TYPE: Final = "urn:ietf:params:oauth:token-type:jwt"

# RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")
# Token type identifiers are URIs (RFC 8693 §3): visible ASCII, no whitespace.
_TOKEN_TYPE = re.compile(r"[\x21-\x7e]+")
_TOKEN_TYPES_ON_THE_WIRE: Final = frozenset({"bearer", "dpop", "n_a"})


def _require_token(value: object, name: str) -> str:
    if not isinstance(value, SecretStr):
        raise ConfigurationError(f"{name} must be a SecretStr")
    secret = value.get_secret_value()
    if not secret:
        raise ConfigurationError(f"{name} must not be empty")
    return secret


def _require_token_type(value: object, name: str) -> str:
    if not isinstance(value, str) or not _TOKEN_TYPE.fullmatch(value):
        raise ConfigurationError(f"{name} must be a token type identifier URI (RFC 8693 §3)")
    return value


def token_exchange_request(
    endpoint: str,
    *,
    subject_token: SecretStr,
    subject_token_type: str,
    client_auth: ClientAuthentication,
    issuer: str,
    now: float,
    actor_token: SecretStr | None = None,
    actor_token_type: str | None = None,
    resource: str | None = None,
    audience: str | None = None,
    scopes: Sequence[str] = (),
    requested_token_type: str | None = None,
) -> HttpRequest:
    """Build an RFC 8693 §2.1 token exchange request to the token ``endpoint``.

    :param subject_token: the token representing the party on whose behalf the request is
        made (for an agent: the user's access token).
    :param subject_token_type: its RFC 8693 §3 type identifier, e.g. :data:`ACCESS_TOKEN_TYPE`.
    :param actor_token: the token of the acting party (for an agent: its own token); the
        issued token then names that party in ``act`` (RFC 8693 §4.1).
    :param actor_token_type: required if and only if ``actor_token`` is given.
    :param resource: an absolute http(s) URI the token is for; sent in canonical form
        (RFC 8707 §2, RFC 8693 §2.1).
    :param audience: the logical name of the target service (RFC 8693 §2.1).
    :param scopes: the scopes wanted, narrowing the grant (RFC 8693 §2.1, RFC 6749 §3.3).
    :param requested_token_type: the RFC 8693 §3 type wanted for the issued token.
    :raises ConfigurationError: a required parameter is missing or empty, an actor token
        type is given without an actor token (or the reverse), a scope is not an RFC 6749
        §3.3 scope-token, or ``resource`` is not an absolute http(s) URI without fragment.
        Messages name the parameter, never a token value.
    """
    form: dict[str, str] = {
        "grant_type": TOKEN_EXCHANGE_GRANT,
        "subject_token": _require_token(subject_token, "subject_token"),
        "subject_token_type": _require_token_type(subject_token_type, "subject_token_type"),
    }
    # Security item 31: actor_token_type iff actor_token (RFC 8693 §2.1).
    if actor_token is None and actor_token_type is not None:
        raise ConfigurationError("actor_token_type must not be given without actor_token")
    if actor_token is not None:
        if actor_token_type is None:
            raise ConfigurationError("actor_token requires actor_token_type (RFC 8693 §2.1)")
        form["actor_token"] = _require_token(actor_token, "actor_token")
        form["actor_token_type"] = _require_token_type(actor_token_type, "actor_token_type")
    if resource is not None:
        form["resource"] = canonical_resource_uri(resource)
    if audience is not None:
        if not isinstance(audience, str) or not audience:
            raise ConfigurationError("audience must be a non-empty string")
        form["audience"] = audience
    if isinstance(scopes, str):
        raise ConfigurationError("scopes must be a sequence of scope tokens, not a str")
    for scope in scopes:
        if not isinstance(scope, str) or not _SCOPE_TOKEN.fullmatch(scope):
            raise ConfigurationError("each scope must be an RFC 6749 §3.3 scope-token")
    if scopes:
        form["scope"] = " ".join(dict.fromkeys(scopes))
    if requested_token_type is not None:
        form["requested_token_type"] = _require_token_type(
            requested_token_type, "requested_token_type"
        )
    return token_request(endpoint, form, client_auth, issuer=issuer, now=now)


def parse_token_exchange_response(response: HttpResponse) -> TokenResponse:
    """Parse an RFC 8693 §2.2 token exchange response, or raise its typed error.

    On success (§2.2.1) the issued token is in ``access_token`` whatever its type, and
    ``issued_token_type`` says which type it is. ``token_type`` must be ``Bearer``,
    ``DPoP`` or ``N_A`` (case-insensitive); ``N_A`` is refused when the issued token is
    an access token (it would then be unusable as one).

    :raises InvalidResponse: not JSON, ``access_token``, ``token_type`` or
        ``issued_token_type`` missing, empty or mistyped, an unknown ``token_type``, or a
        non-200 response without an OAuth error body.
    :raises OAuthError: the typed subclass for an error response (§2.2.2), e.g.
        :class:`~agent_identity.errors.InvalidRequest`,
        :class:`~agent_identity.errors.InvalidTarget`,
        :class:`~agent_identity.errors.InvalidGrant`,
        :class:`~agent_identity.errors.InvalidScope`.
    """
    token = parse_token_response(response)
    issued = token.issued_token_type
    if issued is None or not _TOKEN_TYPE.fullmatch(issued):
        raise InvalidResponse(
            "token exchange response has no valid issued_token_type (RFC 8693 §2.2.1)"
        )
    token_type = token.token_type.lower()
    if token_type not in _TOKEN_TYPES_ON_THE_WIRE:
        raise InvalidResponse(
            "token exchange response has an unsupported token_type (expected Bearer, DPoP or N_A)"
        )
    if token_type == "n_a" and issued == ACCESS_TOKEN_TYPE:
        raise InvalidResponse("token exchange response issued an access token with token_type N_A")
    return token
