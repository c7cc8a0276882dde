"""Atlassian Cloud (Jira, Confluence): OAuth 2.0 (3LO) apps.

What Atlassian documents, and what this profile does with it (sources, Atlassian
Developer: "OAuth 2.0 (3LO) apps" (Jira platform / Confluence), "Implementing the Refresh
Token Flow"):

- **Endpoints**: ``https://auth.atlassian.com/authorize`` and
  ``https://auth.atlassian.com/oauth/token`` (static; no discovery, no ID token).
- **Authorization URL**: ``audience=api.atlassian.com`` and ``prompt=consent`` are part of
  every documented authorization URL: sent on every consent (an explicit ``prompt``
  wins). Scopes are space-separated.
- **Token requests** are documented as JSON bodies (``Content-Type: application/json``
  with ``grant_type``, ``client_id``, ``client_secret``, ``code``, ``redirect_uri``):
  the profile sends JSON; the secret travels in the body (``client_secret_post``).
- **Refresh tokens**: "add ``offline_access`` to the scope parameter" (requested; it is
  the only scope listed in the static metadata for that reason); "Refresh tokens are
  implemented using rotating refresh tokens": the SDK stores each new one atomically. The
  refresh request takes no scope (never narrowed). A dead refresh token is answered with
  ``403`` and ``invalid_grant`` ("Unknown or invalid refresh token."): the grant is removed
  and :class:`~agent_identity.errors.ReauthorizationRequired` raised.
- The token response documents ``access_token``, ``expires_in`` and ``scope`` but no
  ``token_type``: ``Bearer`` is supplied (the API takes ``Authorization: Bearer``).
- **PKCE: not documented** for 3LO apps (the authorization URL's documented parameters are
  ``audience``, ``client_id``, ``scope``, ``redirect_uri``, ``state``,
  ``response_type``, ``prompt``). Security item 10 refuses the authorization code flow
  without PKCE S256, and the profile does not pretend otherwise: ``user.consent()`` raises
  :class:`~agent_identity.errors.ConfigurationError` before any request. Consequence: this
  SDK cannot obtain an Atlassian grant; the profile still encodes the token endpoint's
  behaviour (refresh, rotation, errors) for grants obtained elsewhere, and will work for
  consent as soon as Atlassian documents S256 (set
  ``authorization_code_refusal=None`` and ``code_challenge_methods_supported`` then).
- Not handled: the ``cloudid`` indirection (API calls go to
  ``https://api.atlassian.com/ex/jira/{cloudid}/...``, found with
  ``accessible-resources``): that is API use, not authorization. No RFC 8707, no RFC 7009.
"""

from __future__ import annotations

from agent_identity.models import ServerMetadata
from agent_identity.oauth._message import HttpResponse
from agent_identity.providers._profile import ProviderProfile
from agent_identity.providers._wire import json_object, json_request, rewritten

__all__ = ["REFUSAL", "atlassian", "normalize_atlassian_response"]

DOCUMENTATION = (
    "Atlassian Developer: OAuth 2.0 (3LO) apps (authorization URL, exchange, refresh); "
    "Implementing the Refresh Token Flow (rotating refresh tokens)"
)

REFUSAL = (
    "Atlassian documents no PKCE (S256) for OAuth 2.0 (3LO) apps, and the SDK runs the "
    "authorization code flow only with PKCE S256 (security item 10): user consent is not "
    "available with the atlassian() profile"
)


def normalize_atlassian_response(response: HttpResponse) -> HttpResponse:
    """Supply ``token_type: Bearer`` to a successful token response without one."""
    if response.status_code != 200:
        return response
    body = json_object(response)
    if body is None or "token_type" in body or "access_token" not in body:
        return response
    return rewritten(response, 200, {**body, "token_type": "Bearer"})


def atlassian() -> ProviderProfile:
    """The Atlassian (3LO) profile; consent is refused (no documented PKCE, see above)."""
    metadata = ServerMetadata(
        issuer="https://auth.atlassian.com",
        authorization_endpoint="https://auth.atlassian.com/authorize",
        token_endpoint="https://auth.atlassian.com/oauth/token",
        # listed so that the SDK asks for it (refresh tokens); not the whole scope list
        scopes_supported=("offline_access",),
        response_types_supported=("code",),
        grant_types_supported=("authorization_code", "refresh_token"),
        token_endpoint_auth_methods_supported=("client_secret_post",),
    )
    return ProviderProfile(
        name="atlassian",
        issuer="https://auth.atlassian.com",
        metadata=metadata,
        documentation=DOCUMENTATION,
        authorization_params={"audience": "api.atlassian.com", "prompt": "consent"},
        prepare_token_request=json_request,
        normalize_token_response=normalize_atlassian_response,
        resource_indicators=False,
        narrow_refresh=False,
        authorization_code_refusal=REFUSAL,
    )
