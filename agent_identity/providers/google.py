"""Google (Google APIs and Sign in with Google) as an OpenID provider.

What Google documents, and what this profile does with it (sources: "Using OAuth 2.0 for
Web Server Applications", "OAuth 2.0 for Desktop apps" (native-app), "Google OpenID
Connect API Reference" (Discovery Document), developers.google.com/identity):

- **Discovery** at ``https://accounts.google.com/.well-known/openid-configuration``;
  issuer ``https://accounts.google.com`` ("The modern value is
  https://accounts.google.com; however, accounts.google.com is also returned for legacy
  implementations", OpenID Connect API Reference, Discovery Document). The document lists
  ``code_challenge_methods_supported`` (``plain``, ``S256``), the token, device
  authorization and revocation endpoints. Everything else comes from it.
- **ID tokens** whose ``iss`` is ``https://accounts.google.com`` or the legacy
  ``accounts.google.com`` are both accepted (signature, audience, nonce and expiry are
  still checked against Google's JWK Set); any other ``iss`` is refused.
- **Refresh tokens**: only with ``access_type=offline`` ("This value instructs the
  Google authorization server to return a refresh token and an access token the first
  time that your application exchanges an authorization code for tokens"); Google has no
  ``offline_access`` scope (not in ``scopes_supported``, so never sent). Because a refresh
  token comes only the first time, every consent also sends ``prompt=consent`` (an
  explicit ``prompt`` argument wins).
- **Refresh** requests carry ``client_id``, ``client_secret``, ``grant_type`` and
  ``refresh_token`` only (no ``scope``): refreshes are not narrowed, tokens are labelled
  with the ``scope`` Google returns. Google does not rotate refresh tokens: a refresh
  response without ``refresh_token`` keeps the stored one (the SDK's standard behaviour).
- **Revocation** (``revocation_endpoint`` from discovery) is RFC 7009-shaped: POST
  ``token``; ``user.disconnect()`` uses it.
- **RFC 8707 ``resource``**: not documented by Google; the profile never sends it (a
  Google API is named by its scopes, ``https://www.googleapis.com/auth/...``).
- Scopes are space-separated both ways (standard).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agent_identity.providers._profile import ProviderProfile

__all__ = ["google", "google_id_token_issuer"]

ISSUER = "https://accounts.google.com"
#: "accounts.google.com is also returned for legacy implementations"
LEGACY_ISSUER = "accounts.google.com"

DOCUMENTATION = (
    "Google Identity: Using OAuth 2.0 for Web Server Applications (access_type, prompt, "
    "Refreshing an access token, Revoking a token); OAuth 2.0 for Desktop apps (PKCE); "
    "Google OpenID Connect API Reference (Discovery Document)"
)


def google_id_token_issuer(claims: Mapping[str, Any]) -> str | None:
    """The ``iss`` an ID token of Google must carry: the modern or the legacy form, as
    the token says, and nothing else (``None`` refuses the token)."""
    iss = claims.get("iss")
    return iss if iss in (ISSUER, LEGACY_ISSUER) else None


def google() -> ProviderProfile:
    """The Google profile (discovered metadata; ``access_type=offline`` and
    ``prompt=consent`` on every consent)."""
    return ProviderProfile(
        name="google",
        issuer=ISSUER,
        documentation=DOCUMENTATION,
        authorization_params={"access_type": "offline", "prompt": "consent"},
        resource_indicators=False,
        offline_access_scope=False,
        narrow_refresh=False,
        id_token_issuer=google_id_token_issuer,
    )
