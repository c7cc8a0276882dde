"""Microsoft Entra ID (the Microsoft identity platform, v2.0 endpoints).

What Microsoft documents, and what these profiles do with it (sources, Microsoft Learn,
identity platform: "Microsoft identity platform and OAuth 2.0 authorization code flow",
"OpenID Connect on the Microsoft identity platform" (Find your app's OpenID configuration
document URI), "Microsoft identity platform access tokens" (Validate the issuer:
Multi-tenant applications), "Secure applications and APIs by validating claims",
"Microsoft identity platform application authentication certificate credentials"):

- **Endpoints** ``https://login.microsoftonline.com/{tenant}/oauth2/v2.0/authorize``,
  ``.../token``, ``.../devicecode``, keys at ``.../{tenant}/discovery/v2.0/keys``; the
  authority (issuer) of a tenant is ``https://login.microsoftonline.com/{tenant}/v2.0``.
  Both profiles use these documented URLs as static metadata, so no discovery request is
  made. (Discovery works for one tenant, but Entra's document lists no
  ``code_challenge_methods_supported``: the profiles' ``metadata_defaults`` supply the
  documented S256, also when you discover with ``dataclasses.replace(profile,
  metadata=None)``.)
- **PKCE**: "The Microsoft identity platform supports both plain and S256" (auth code flow,
  ``code_challenge_method``): declared as S256.
- **Single tenant** (:func:`entra`): the tenant ID (a GUID); ID tokens must carry exactly
  that issuer. A domain name (``contoso.onmicrosoft.com``) is refused: tokens name the
  tenant by GUID, so the issuer could not be matched.
- **Multi-tenant** (:func:`entra_multi_tenant`, ``organizations`` or ``common``): the
  document's issuer "is a template parametrized by the tenantid:
  https://login.microsoftonline.com/{tenantid}/v2.0"; "Validate that the tid claim is a
  GUID and the iss claim is of the form https://login.microsoftonline.com/{tid}/v2.0
  where {tid} is the exact tid claim" (access tokens, Validate the issuer): the
  ``id_token_issuer`` hook does exactly that, optionally restricted to ``tenants``.
- **Scopes** name their resource: ``https://graph.microsoft.com/User.Read``; "The scopes
  must all be from a single resource" per token request; ``{resource}/.default`` asks for
  every permission consented for it. ``token(resource="https://graph.microsoft.com",
  scopes=["User.Read"])`` sends ``https://graph.microsoft.com/User.Read``, and
  ``resource`` alone sends ``.../.default`` (the ``scopes_for`` hook); the response's
  ``scope`` is mapped back to the short names (``granted_scopes``). Fully qualified scopes
  (``api://<app-id>/access``, for App ID URIs that are not https resources) pass through
  unchanged. The v2.0 endpoint takes no ``resource`` parameter: never sent.
- **Refresh tokens** need ``offline_access`` (listed in the tenant's document: requested);
  refresh requests carry the ``scope`` of one resource (narrowed); Entra rotates refresh
  tokens (the SDK stores the new one atomically).
- **Access tokens are opaque to clients** ("Clients must treat access tokens as opaque
  strings"; "The client should not validate access tokens"): never read for scopes or
  audience (``opaque_access_tokens``); the response's ``scope`` labels them.
- **Errors** are RFC 6749 codes plus ``error_codes`` (AADSTS numbers, ignored);
  ``invalid_resource`` is aliased to ``invalid_target``.

Not handled: the per-key ``issuer`` of the multi-tenant JWK Set ("Validate the signing
key issuer") is not checked (the ``tid``/``iss`` binding is); ``private_key_jwt`` needs
``assertion_audience="token_endpoint"`` (the documented ``aud``) and an ``x5t#S256``
certificate thumbprint header that the SDK does not set: use a client secret, or a
certificate-free assertion where Entra accepts one; national clouds need ``authority=``.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from agent_identity.errors import ConfigurationError
from agent_identity.models import ServerMetadata
from agent_identity.oauth.urls import check_endpoint_url
from agent_identity.providers._profile import ProviderProfile

__all__ = [
    "entra",
    "entra_granted_scopes",
    "entra_multi_tenant",
    "entra_scopes_for",
]

AUTHORITY = "https://login.microsoftonline.com"
#: OpenID scopes, sent as they are (never prefixed with a resource).
OIDC_SCOPES = frozenset({"openid", "profile", "email", "offline_access"})
_GUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_MULTI = ("organizations", "common")

DOCUMENTATION = (
    "Microsoft identity platform: OAuth 2.0 authorization code flow; OpenID Connect on the "
    "Microsoft identity platform; access tokens (Validate the issuer, multi-tenant); "
    "Secure applications and APIs by validating claims; certificate credentials"
)

ERROR_ALIASES = {"invalid_resource": "invalid_target"}

#: Documented facts Entra's discovery document leaves out.
METADATA_DEFAULTS: Mapping[str, Any] = {"code_challenge_methods_supported": ["S256"]}


def _qualified(scope: str) -> bool:
    return scope in OIDC_SCOPES or "/" in scope or ":" in scope


def entra_scopes_for(
    resource: str | None, scopes: Sequence[str]
) -> tuple[str | None, tuple[str, ...]]:
    """``(None, scopes)`` with each short scope of ``resource`` named in full
    (``{resource}/{scope}``), ``{resource}/.default`` when none is asked for; OpenID and
    fully qualified scopes unchanged. The v2.0 endpoint takes no ``resource``."""
    if resource is None:
        return None, tuple(scopes)
    base = resource.rstrip("/")
    mapped = [s if _qualified(s) else f"{base}/{s}" for s in scopes]
    if all(s in OIDC_SCOPES for s in mapped):
        mapped.append(f"{base}/.default")
    return None, tuple(mapped)


def entra_granted_scopes(resource: str | None, scope: str) -> str:
    """A response's ``scope`` with ``resource``'s prefix removed (the caller's names)."""
    if resource is None:
        return scope
    prefix = resource.rstrip("/") + "/"
    names = [
        s[len(prefix) :] if s.startswith(prefix) and len(s) > len(prefix) else s
        for s in scope.split()
    ]
    return " ".join(names)


def _metadata(authority: str, tenant: str, issuer: str) -> ServerMetadata:
    base = f"{authority}/{tenant}"
    return ServerMetadata(
        issuer=issuer,
        authorization_endpoint=f"{base}/oauth2/v2.0/authorize",
        token_endpoint=f"{base}/oauth2/v2.0/token",
        device_authorization_endpoint=f"{base}/oauth2/v2.0/devicecode",
        jwks_uri=f"{base}/discovery/v2.0/keys",
        scopes_supported=("openid", "profile", "email", "offline_access"),
        response_types_supported=("code",),
        token_endpoint_auth_methods_supported=(
            "client_secret_post",
            "private_key_jwt",
            "client_secret_basic",
        ),
        id_token_signing_alg_values_supported=("RS256",),
        code_challenge_methods_supported=("S256",),
    )


def _authority(authority: str) -> str:
    check_endpoint_url(authority, allow_insecure_loopback=False, what="Entra authority")
    return authority.rstrip("/")


def entra(tenant: str, *, authority: str = AUTHORITY) -> ProviderProfile:
    """Microsoft Entra ID for the users of one tenant (``tenant``: its tenant ID, a GUID).

    ``authority`` is the cloud's login host (default: the global Azure cloud)."""
    if not isinstance(tenant, str) or not _GUID.fullmatch(tenant.lower()):
        raise ConfigurationError(
            "entra(tenant) takes the tenant ID (a GUID); for 'organizations' or 'common' "
            "use entra_multi_tenant(), for 'consumers' the consumer tenant ID "
            "9188040d-6c67-4c5b-b112-36a304b66dad"
        )
    tenant = tenant.lower()
    base = _authority(authority)
    issuer = f"{base}/{tenant}/v2.0"
    return ProviderProfile(
        name="entra",
        issuer=issuer,
        metadata=_metadata(base, tenant, issuer),
        documentation=DOCUMENTATION,
        resource_indicators=False,
        scopes_for=entra_scopes_for,
        granted_scopes=entra_granted_scopes,
        error_aliases=ERROR_ALIASES,
        metadata_defaults=METADATA_DEFAULTS,
        opaque_access_tokens=True,
    )


def entra_multi_tenant(
    audience: str = "organizations",
    *,
    tenants: Collection[str] | None = None,
    authority: str = AUTHORITY,
) -> ProviderProfile:
    """Microsoft Entra ID for the users of any tenant: ``audience`` is ``organizations``
    (work and school accounts) or ``common`` (also personal Microsoft accounts).

    ``tenants`` restricts the tenant IDs whose users are accepted (ID tokens of other
    tenants are refused); default: every tenant, as a multi-tenant app registration means.
    The SDK's issuer (the vault connection's name) is the authority URL, e.g.
    ``https://login.microsoftonline.com/organizations/v2.0``."""
    if audience not in _MULTI:
        raise ConfigurationError(
            "entra_multi_tenant(audience) is 'organizations' or 'common'; for one tenant "
            "use entra(tenant_id)"
        )
    allowed: frozenset[str] | None = None
    if tenants is not None:
        if isinstance(tenants, str):
            raise ConfigurationError("tenants is a collection of tenant IDs, not one string")
        allowed = frozenset(t.lower() for t in tenants if isinstance(t, str))
        if not allowed or any(not _GUID.fullmatch(t) for t in allowed):
            raise ConfigurationError("tenants must be tenant IDs (GUIDs)")
    base = _authority(authority)

    def id_token_issuer(claims: Mapping[str, Any]) -> str | None:
        # "Validate that the tid claim is a GUID and the iss claim is of the form
        # https://login.microsoftonline.com/{tid}/v2.0 where {tid} is the exact tid claim"
        tid = claims.get("tid")
        if not isinstance(tid, str) or not _GUID.fullmatch(tid):
            return None
        if allowed is not None and tid not in allowed:
            return None
        return f"{base}/{tid}/v2.0"

    issuer = f"{base}/{audience}/v2.0"
    return ProviderProfile(
        name=f"entra-{audience}",
        issuer=issuer,
        metadata=_metadata(base, audience, issuer),
        documentation=DOCUMENTATION,
        resource_indicators=False,
        scopes_for=entra_scopes_for,
        granted_scopes=entra_granted_scopes,
        error_aliases=ERROR_ALIASES,
        id_token_issuer=id_token_issuer,
        metadata_defaults=METADATA_DEFAULTS,
        opaque_access_tokens=True,
    )
