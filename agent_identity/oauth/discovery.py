"""Authorization server metadata discovery: RFC 8414 and OpenID Connect Discovery 1.0.

- §3.1 of RFC 8414: the well-known URI is formed by inserting
  ``/.well-known/oauth-authorization-server`` between the host and the issuer's path.
  OpenID Discovery §4 appends ``/.well-known/openid-configuration`` to the issuer; for
  compatibility the path-inserted OpenID form is tried too. The order (security item 8)
  for ``https://as/t1`` is::

      https://as/.well-known/oauth-authorization-server/t1
      https://as/.well-known/openid-configuration/t1
      https://as/t1/.well-known/openid-configuration

  and for an issuer without a path, the first two.
- §3.3: the ``issuer`` in the document must be *identical* to the issuer the URL was built
  from (security item 9): no normalisation, trailing slash and case count.
- Every endpoint the SDK will call must satisfy the transport policy (security item 1)
  before any request is made to it, and ``S256`` must be advertised before the
  authorization code flow runs (security item 10).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

from agent_identity.errors import (
    ConfigurationError,
    InsecureURLError,
    InvalidResponse,
    MetadataError,
)
from agent_identity.models import ServerMetadata
from agent_identity.oauth._json import parse_json_object
from agent_identity.oauth._message import HttpRequest, HttpResponse
from agent_identity.oauth.token import invalid_fields
from agent_identity.oauth.urls import check_endpoint_url

__all__ = [
    "ENDPOINT_FIELDS",
    "metadata_request",
    "metadata_urls",
    "parse_metadata",
    "require_s256",
]

#: Metadata members holding URLs the SDK may call or open; each is checked (security 1).
ENDPOINT_FIELDS = (
    "authorization_endpoint",
    "token_endpoint",
    "jwks_uri",
    "registration_endpoint",
    "userinfo_endpoint",
    "revocation_endpoint",
    "introspection_endpoint",
    "device_authorization_endpoint",
    "pushed_authorization_request_endpoint",
    "backchannel_authentication_endpoint",
)


def metadata_urls(issuer: str) -> list[str]:
    """The discovery URLs to try, in order, for ``issuer`` (security item 8)."""
    parts = urlsplit(issuer)
    if not parts.scheme or not parts.netloc:
        raise ConfigurationError("issuer must be an absolute URL")
    if parts.query or parts.fragment:
        raise ConfigurationError("issuer must not have a query or fragment (RFC 8414 §2)")
    path = parts.path.rstrip("/")

    def at(new_path: str) -> str:
        return urlunsplit((parts.scheme, parts.netloc, new_path, "", ""))

    if not path:
        return [
            at("/.well-known/oauth-authorization-server"),
            at("/.well-known/openid-configuration"),
        ]
    return [
        at(f"/.well-known/oauth-authorization-server{path}"),
        at(f"/.well-known/openid-configuration{path}"),
        at(f"{path}/.well-known/openid-configuration"),
    ]


def metadata_request(url: str) -> HttpRequest:
    """A GET for one discovery URL. Safe to retry."""
    return HttpRequest("GET", url, idempotent=True)


def parse_metadata(
    response: HttpResponse, *, issuer: str, allow_insecure_loopback: bool = False
) -> ServerMetadata | None:
    """Parse a discovery response.

    Returns ``None`` when this URL holds no document (404/400/405/410, so the next URL
    in :func:`metadata_urls` should be tried); raises :class:`MetadataError` for a document
    that must not be used and :class:`InvalidResponse` for a malformed one.
    """
    if response.status_code in (400, 404, 405, 410):
        return None
    if response.status_code != 200:
        raise InvalidResponse(f"metadata request answered HTTP {response.status_code}")
    body: dict[str, Any] = parse_json_object(response.content, what="metadata")
    fields = invalid_fields(ServerMetadata, body)
    if fields is not None:
        raise InvalidResponse(f"metadata has invalid members: {', '.join(fields)}")
    metadata = ServerMetadata.model_validate(body)
    if metadata.issuer != issuer:
        raise MetadataError(
            f"metadata issuer {metadata.issuer!r} is not identical to the expected issuer "
            f"{issuer!r} (RFC 8414 §3.3)"
        )
    for name in ENDPOINT_FIELDS:
        value = getattr(metadata, name)
        if value is not None:
            try:
                check_endpoint_url(
                    value, allow_insecure_loopback=allow_insecure_loopback, what=name
                )
            except InsecureURLError as exc:
                raise MetadataError(f"metadata {name} refused: {exc}") from exc
    return metadata


def require_s256(metadata: ServerMetadata) -> None:
    """Security item 10: refuse the authorization code flow without advertised S256."""
    if "S256" not in metadata.code_challenge_methods_supported:
        raise MetadataError(
            f"authorization server {metadata.issuer!r} does not advertise PKCE S256 in "
            "code_challenge_methods_supported; refusing to run the authorization code flow"
        )
