"""Slack (OAuth v2, "Sign in with Slack" excluded): user tokens, for an agent acting as a user.

What Slack documents, and what this profile does with it (sources, docs.slack.dev:
"Installing with OAuth", the ``oauth.v2.access`` method reference (arguments and errors),
"Using token rotation"):

- **Whose token**: Slack's v2 flow yields a bot token (``scope``) and/or a user token
  (``user_scope``), "the shape of the OAuth access response now puts bot access tokens
  first" and the user token is under ``authed_user``. An agent acts *for a user*, so this
  profile asks for **user scopes** (``user_scope``, comma-separated) and returns the
  ``authed_user`` token; a response without a user token is an error
  (:class:`~agent_identity.errors.InvalidResponse`), never a silent bot token. (For a bot
  token, an app-level credential, use Slack's own SDK.)
- **Endpoints**: ``https://slack.com/oauth/v2/authorize`` and
  ``https://slack.com/api/oauth.v2.access`` (static; no discovery). Client credentials
  "using the HTTP Basic authentication scheme" are preferred by Slack
  (``client_secret_basic``).
- **Errors** come as HTTP 200 ``{"ok": false, "error": "invalid_code"}``: turned into
  RFC 6749 errors; Slack's codes are aliased (``invalid_code``, ``invalid_refresh_token``
  and ``bad_redirect_uri`` to ``invalid_grant``, ``bad_client_secret`` and
  ``invalid_client_id`` to ``invalid_client``, ``invalid_grant_type`` to
  ``unsupported_grant_type``), the raw code kept.
- **Scopes** are comma-separated both ways.
- **Token rotation** (optional, per app): with it, tokens "expire every 12 hours"
  (``expires_in``) and come with a ``refresh_token`` (refreshed with
  ``grant_type=refresh_token`` at ``oauth.v2.access``; the old refresh token is revoked):
  the SDK refreshes and stores the rotated one. Without rotation, tokens never expire and
  there is no refresh token. Refreshes take no scope (never narrowed).
- **PKCE**: the ``oauth.v2.access`` reference lists ``code_verifier``, "Used for PKCE";
  the challenge method is not spelled out there, and S256 is the method RFC 7636 §4.2
  makes mandatory for servers: the profile declares S256. If Slack refused it for your
  app, consent would fail with Slack's error, never fall back to ``plain``.
- Not available at Slack, never used: discovery, ID tokens (this is not "Sign in with
  Slack"), RFC 8707, RFC 7009 revocation (Slack's ``auth.revoke`` is a Web API method
  called with the token itself; not done here), ``offline_access``.
"""

from __future__ import annotations

from typing import Any

from agent_identity.errors import InvalidResponse
from agent_identity.models import ServerMetadata
from agent_identity.oauth._message import HttpResponse
from agent_identity.providers._profile import ProviderProfile
from agent_identity.providers._wire import (
    error_response,
    json_object,
    rewritten,
    space_separated,
)

__all__ = ["normalize_slack_response", "slack"]

DOCUMENTATION = (
    "Slack: Installing with OAuth; oauth.v2.access method reference (arguments, errors); "
    "Using token rotation"
)

ERROR_ALIASES = {
    "invalid_code": "invalid_grant",
    "invalid_refresh_token": "invalid_grant",
    "bad_redirect_uri": "invalid_grant",
    "bad_client_secret": "invalid_client",
    "invalid_client_id": "invalid_client",
    "invalid_grant_type": "unsupported_grant_type",
}


def _user_token(body: dict[str, Any]) -> dict[str, Any] | None:
    """The user token's members: ``authed_user`` (code exchange) or the top level when it
    is a user token (a refresh of a user token)."""
    authed = body.get("authed_user")
    if isinstance(authed, dict) and isinstance(authed.get("access_token"), str):
        return authed
    if body.get("token_type") == "user" and isinstance(body.get("access_token"), str):
        return body
    return None


def normalize_slack_response(response: HttpResponse) -> HttpResponse:
    """A Slack ``oauth.v2.access`` answer as RFC 6749 §5 says it: ``ok: false`` becomes an
    error response (HTTP 400, 401 for a bad client), ``ok: true`` the user token with a
    space-separated ``scope`` and ``token_type`` ``Bearer``. Raises
    :class:`InvalidResponse` for a successful answer without a user token."""
    body = json_object(response)
    if body is None:
        return response
    ok = body.get("ok")
    error = body.get("error")
    if ok is not True:
        if not isinstance(error, str) or not error:
            return response  # not Slack's shape: the standard parser reports it
        client = ERROR_ALIASES.get(error) == "invalid_client"
        return error_response(response, body, status=401 if client else 400)
    if response.status_code != 200:
        return response
    token = _user_token(body)
    if token is None:
        raise InvalidResponse(
            "Slack issued no user token (no authed_user.access_token): ask for user scopes"
        )
    out: dict[str, Any] = {"access_token": token.get("access_token"), "token_type": "Bearer"}
    for name in ("refresh_token", "expires_in"):
        if name in token:
            out[name] = token[name]
    scope = space_separated(token.get("scope"))
    if scope is not None:
        out["scope"] = scope
    return rewritten(response, 200, out)


def slack() -> ProviderProfile:
    """The Slack profile: user tokens (``user_scope``), errors in ``ok: false`` bodies,
    comma-separated scopes, optional token rotation."""
    metadata = ServerMetadata(
        issuer="https://slack.com",
        authorization_endpoint="https://slack.com/oauth/v2/authorize",
        token_endpoint="https://slack.com/api/oauth.v2.access",
        response_types_supported=("code",),
        grant_types_supported=("authorization_code", "refresh_token"),
        token_endpoint_auth_methods_supported=("client_secret_basic", "client_secret_post"),
        code_challenge_methods_supported=("S256",),
    )
    return ProviderProfile(
        name="slack",
        issuer="https://slack.com",
        metadata=metadata,
        documentation=DOCUMENTATION,
        normalize_token_response=normalize_slack_response,
        scope_parameter="user_scope",
        scope_separator=",",
        resource_indicators=False,
        error_aliases=ERROR_ALIASES,
        offline_access_scope=False,
        narrow_refresh=False,
    )
