"""Notion: public connections (OAuth integrations).

What Notion documents, and what this profile does with it (sources, Notion Developers:
"Authorization" guide (public connection auth flow), API reference "Create a token",
"Refresh a token", "Status codes"):

- **Endpoints**: ``https://api.notion.com/v1/oauth/authorize`` (with ``owner=user``,
  sent on every consent) and ``https://api.notion.com/v1/oauth/token`` (static; no
  discovery, no ID token).
- **Token requests**: "Basic authentication header" with the client ID and secret
  (``client_secret_basic``), a JSON body (``grant_type``, ``code``, ``redirect_uri``;
  ``grant_type=refresh_token`` with ``refresh_token`` to refresh): the profile sends JSON.
- **Token responses** carry ``access_token``, ``token_type``, ``refresh_token``,
  ``bot_id``, ``workspace_*``, ``owner``; **no** ``scope`` and **no** ``expires_in``: a
  token is labelled with the requested scopes, unverified, and never expires by itself
  (the SDK refreshes it after the resource answers 401). Notion has no OAuth scopes: ask
  for none.
- **Errors** are Notion's API errors, ``{"object": "error", "status": 400, "code":
  "invalid_grant", "message": ...}`` ("Status codes"): turned into RFC 6749 errors
  (``code``, ``message``); ``unauthorized`` is aliased to ``invalid_client``,
  ``validation_error`` to ``invalid_request``, ``rate_limited`` to
  ``temporarily_unavailable``, the raw code kept.
- **PKCE: not documented** (the authorization URL's documented parameters are
  ``client_id``, ``redirect_uri``, ``response_type``, ``owner``, ``state``). Security item 10
  refuses the authorization code flow without PKCE S256: ``user.consent()`` raises
  :class:`~agent_identity.errors.ConfigurationError` before any request. Consequence: this
  SDK cannot obtain a Notion grant; the profile encodes the token endpoint's behaviour
  (refresh, errors) for grants obtained elsewhere.
- Not used: RFC 8707, RFC 7009 (Notion's revocation endpoint is not handled here),
  ``offline_access``.
"""

from __future__ import annotations

from agent_identity.models import ServerMetadata
from agent_identity.oauth._message import HttpResponse
from agent_identity.providers._profile import ProviderProfile
from agent_identity.providers._wire import error_response, json_object, json_request

__all__ = ["REFUSAL", "normalize_notion_response", "notion"]

DOCUMENTATION = (
    "Notion Developers: Authorization (public connection auth flow); API reference: "
    "Create a token, Refresh a token, Status codes"
)

ERROR_ALIASES = {
    "unauthorized": "invalid_client",
    "validation_error": "invalid_request",
    "invalid_json": "invalid_request",
    "rate_limited": "temporarily_unavailable",
}

REFUSAL = (
    "Notion documents no PKCE (S256) for public connections, and the SDK runs the "
    "authorization code flow only with PKCE S256 (security item 10): user consent is not "
    "available with the notion() profile"
)


def normalize_notion_response(response: HttpResponse) -> HttpResponse:
    """A Notion API error (``object: error``, ``code``, ``message``) as an RFC 6749 error
    response; anything else unchanged."""
    if response.status_code == 200:
        return response
    body = json_object(response)
    if body is None or "error" in body:
        return response
    code = body.get("code")
    if body.get("object") != "error" or not isinstance(code, str) or not code:
        return response
    message = body.get("message")
    error = {"error": code}
    if isinstance(message, str):
        error["error_description"] = message
    return error_response(response, error)


def notion() -> ProviderProfile:
    """The Notion profile; consent is refused (no documented PKCE, see above)."""
    metadata = ServerMetadata(
        issuer="https://api.notion.com",
        authorization_endpoint="https://api.notion.com/v1/oauth/authorize",
        token_endpoint="https://api.notion.com/v1/oauth/token",
        response_types_supported=("code",),
        grant_types_supported=("authorization_code", "refresh_token"),
        token_endpoint_auth_methods_supported=("client_secret_basic",),
    )
    return ProviderProfile(
        name="notion",
        issuer="https://api.notion.com",
        metadata=metadata,
        documentation=DOCUMENTATION,
        authorization_params={"owner": "user"},
        prepare_token_request=json_request,
        normalize_token_response=normalize_notion_response,
        resource_indicators=False,
        error_aliases=ERROR_ALIASES,
        offline_access_scope=False,
        narrow_refresh=False,
        authorization_code_refusal=REFUSAL,
    )
