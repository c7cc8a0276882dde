"""OAuth 2.0 Protected Resource Metadata (RFC 9728), client side. Pure: no I/O.

- §3.1: the metadata URL is formed by inserting ``/.well-known/oauth-protected-resource``
  between the host and the resource's path. MCP (authorization spec, "Protected Resource
  Metadata Discovery") then falls back to the root well-known URI. Order for
  ``https://tools.example/mcp`` (security item 5)::

      https://tools.example/.well-known/oauth-protected-resource/mcp
      https://tools.example/.well-known/oauth-protected-resource

- §5.1: a ``WWW-Authenticate`` challenge may name the metadata URL (``resource_metadata``);
  it is used first.
- §3.3: the document's ``resource`` must be identical to the resource identifier the
  well-known suffix was inserted into; otherwise the document must not be used (security
  item 6). :func:`resource_metadata_candidates` pairs each URL with the identifiers it may
  name: the server URL for the path-inserted location and for a URL named in a challenge
  (exactly: that is the resource the challenge protects), the origin for the root location
  (the identifier the suffix was inserted into; the server URL itself is accepted there
  too, as MCP servers that serve one document at the root name it). Both sides are
  compared in the RFC 8707 canonical form of
  :func:`~agent_identity.oauth.urls.canonical_resource_uri` (scheme and host case and a
  default port do not make a difference; path, trailing slash and query do). The RFC 8707
  ``resource`` parameter stays the server URL whichever document was used.
- The 2025-03-26 revision of the MCP authorization specification had no protected
  resource metadata: the authorization server metadata lived at the MCP server's origin
  (:func:`legacy_metadata_url`), else default endpoints ``/authorize``, ``/token`` and
  ``/register`` there (:func:`legacy_default_metadata`).

Every URL here is learned from a server, so requests are marked ``server_supplied`` and
the I/O layer applies the SSRF policy (security item 2).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from agent_identity.errors import (
    AgentIdentityError,
    ConfigurationError,
    InvalidResponse,
    MetadataError,
)
from agent_identity.models import ServerMetadata
from agent_identity.oauth._json import parse_json_object
from agent_identity.oauth._message import HttpRequest, HttpResponse
from agent_identity.oauth.urls import canonical_resource_uri

__all__ = [
    "WELL_KNOWN",
    "ProtectedResourceMetadata",
    "legacy_default_metadata",
    "legacy_metadata_url",
    "parse_legacy_metadata",
    "parse_resource_metadata",
    "resource_metadata_candidates",
    "resource_metadata_request",
    "resource_metadata_urls",
]

WELL_KNOWN = "/.well-known/oauth-protected-resource"


@dataclass(frozen=True, slots=True)
class ProtectedResourceMetadata:
    """The members of an RFC 9728 §2 document the SDK uses (others are ignored)."""

    resource: str
    authorization_servers: tuple[str, ...] = ()
    scopes_supported: tuple[str, ...] | None = None
    bearer_methods_supported: tuple[str, ...] | None = None
    resource_name: str | None = None


def resource_metadata_urls(resource: str) -> list[str]:
    """The well-known metadata URLs to try for ``resource``, in order (RFC 9728 §3.1,
    then the root well-known URI). Raises :class:`ConfigurationError` for a resource that
    is not an absolute http(s) URI."""
    canonical = canonical_resource_uri(resource)
    parts = urlsplit(canonical)
    path = parts.path.rstrip("/")

    def at(new_path: str) -> str:
        return urlunsplit((parts.scheme, parts.netloc, new_path, "", ""))

    urls = [at(f"{WELL_KNOWN}{path}")] if path else []
    urls.append(at(WELL_KNOWN))
    return urls


def resource_metadata_candidates(
    resource: str, *, named: str | None = None
) -> list[tuple[str, tuple[str, ...]]]:
    """``(url, accepted resource identifiers)`` to try for ``resource``, in order: the URL
    ``named`` in a ``WWW-Authenticate`` challenge (the server URL exactly), the
    path-inserted location (the server URL), then the root location (the origin, or the
    server URL). Identifiers are in canonical form (security items 5, 6)."""
    canonical = canonical_resource_uri(resource)
    parts = urlsplit(canonical)
    origin = urlunsplit((parts.scheme, parts.netloc, "", "", ""))
    root = urlunsplit((parts.scheme, parts.netloc, WELL_KNOWN, "", ""))
    found: list[tuple[str, tuple[str, ...]]] = []
    if named is not None:
        found.append((named, (canonical,)))
    for url in resource_metadata_urls(canonical):
        if url == named:
            continue
        if url == root:
            found.append((url, tuple(dict.fromkeys((origin, f"{origin}/", canonical)))))
        else:
            found.append((url, (canonical,)))
    return found


def resource_metadata_request(url: str) -> HttpRequest:
    """A GET of one metadata URL: server-supplied (SSRF guard), safe to retry."""
    return HttpRequest("GET", url, server_supplied=True, idempotent=True)


def _strings(body: dict[str, Any], name: str) -> tuple[str, ...] | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise InvalidResponse(f"resource metadata member {name} must be an array of strings")
    return tuple(value)


def parse_resource_metadata(
    response: HttpResponse, *, resource: str | Sequence[str]
) -> ProtectedResourceMetadata | None:
    """Parse a metadata response whose ``resource`` must be ``resource`` (or one of them).

    Returns ``None`` when the URL holds no document (HTTP 404, 400, 405, 410: try the next
    URL). Raises :class:`InvalidResponse` for a malformed document and
    :class:`MetadataError` when its ``resource`` is not an expected one (RFC 9728 §3.3,
    security item 6) or it names no authorization server.
    """
    if response.status_code in (400, 404, 405, 410):
        return None
    if response.status_code != 200:
        raise InvalidResponse(f"resource metadata request answered HTTP {response.status_code}")
    body = parse_json_object(response.content, what="resource metadata")
    declared = body.get("resource")
    if not isinstance(declared, str) or not declared:
        raise InvalidResponse("resource metadata has no resource member")
    wanted = [resource] if isinstance(resource, str) else list(resource)
    if not wanted:
        raise ConfigurationError("no expected resource identifier given")
    expected = [canonical_resource_uri(r) for r in wanted]
    try:
        found = canonical_resource_uri(declared)
    except AgentIdentityError:
        found = None
    if found not in expected:
        names = " or ".join(repr(e) for e in expected)
        raise MetadataError(
            f"protected resource metadata names resource {declared[:200]!r}, not {names} "
            "(RFC 9728 §3.3); refusing to use it"
        )
    assert found is not None
    servers = _strings(body, "authorization_servers") or ()
    if not servers:
        raise MetadataError("protected resource metadata names no authorization_servers")
    name = body.get("resource_name")
    return ProtectedResourceMetadata(
        resource=found,
        authorization_servers=servers,
        scopes_supported=_strings(body, "scopes_supported"),
        bearer_methods_supported=_strings(body, "bearer_methods_supported"),
        resource_name=name if isinstance(name, str) else None,
    )


# -- the 2025-03-26 revision: no protected resource metadata -------------------------------


def _origin(resource: str) -> str:
    parts = urlsplit(canonical_resource_uri(resource))
    return urlunsplit((parts.scheme, parts.netloc, "", "", ""))


def legacy_metadata_url(resource: str) -> str:
    """Where the 2025-03-26 revision reads the authorization server metadata: RFC 8414's
    well-known URI at the MCP server's origin (the path is discarded)."""
    return f"{_origin(resource)}/.well-known/oauth-authorization-server"


def parse_legacy_metadata(
    response: HttpResponse, *, resource: str, allow_insecure_loopback: bool = False
) -> ServerMetadata | None:
    """The authorization server metadata found at :func:`legacy_metadata_url`, or ``None``
    when there is none (404, 400, 405, 410).

    Its ``issuer`` may carry a path (an authorization server mounted under the MCP
    server), but must be on the MCP server's origin: the document is the MCP server's own
    statement, and nothing else vouches for it. Endpoints are checked as for any metadata
    (security item 1). Raises :class:`MetadataError` or :class:`InvalidResponse`."""
    from agent_identity.oauth import discovery

    if response.status_code in (400, 404, 405, 410):
        return None
    if response.status_code != 200:
        raise InvalidResponse(f"metadata request answered HTTP {response.status_code}")
    body = parse_json_object(response.content, what="metadata")
    issuer = body.get("issuer")
    if not isinstance(issuer, str) or not issuer:
        raise InvalidResponse("metadata has no issuer")
    try:
        same_origin = _origin(issuer) == _origin(resource)
    except AgentIdentityError:
        same_origin = False
    if not same_origin:
        raise MetadataError(
            f"the metadata at the MCP server's origin names issuer {issuer[:200]!r} on "
            "another origin; refusing to use it"
        )
    return discovery.parse_metadata(
        response, issuer=issuer, allow_insecure_loopback=allow_insecure_loopback
    )


def legacy_default_metadata(resource: str) -> ServerMetadata:
    """The 2025-03-26 default endpoints for an MCP server without any metadata:
    ``/authorize``, ``/token`` and ``/register`` at its origin, which is taken as the
    issuer. That revision makes PKCE mandatory, so ``S256`` is what the client uses."""
    origin = _origin(resource)
    return ServerMetadata(
        issuer=origin,
        authorization_endpoint=f"{origin}/authorize",
        token_endpoint=f"{origin}/token",
        registration_endpoint=f"{origin}/register",
        response_types_supported=("code",),
        code_challenge_methods_supported=("S256",),
    )


def check_resource_url(resource: str) -> str:
    """The canonical form of an MCP server URL used as a resource (RFC 8707 §2);
    raises :class:`ConfigurationError` with a clear message otherwise."""
    try:
        return canonical_resource_uri(resource)
    except ConfigurationError as exc:
        raise ConfigurationError(f"invalid MCP server URL: {exc}") from None
