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
  client used; otherwise the document must not be used (security item 6). Both sides are
  compared in the RFC 8707 canonical form of
  :func:`~agent_identity.oauth.urls.canonical_resource_uri` (scheme and host case and a
  default port do not make a difference; path, trailing slash and query do).

Every URL here is learned from a server, so requests are marked ``server_supplied`` and
the I/O layer applies the SSRF policy (security item 2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from agent_identity.errors import (
    AgentIdentityError,
    ConfigurationError,
    InvalidResponse,
    MetadataError,
)
from agent_identity.oauth._json import parse_json_object
from agent_identity.oauth._message import HttpRequest, HttpResponse
from agent_identity.oauth.urls import canonical_resource_uri

__all__ = [
    "WELL_KNOWN",
    "ProtectedResourceMetadata",
    "parse_resource_metadata",
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
    response: HttpResponse, *, resource: str
) -> ProtectedResourceMetadata | None:
    """Parse a metadata response for ``resource``.

    Returns ``None`` when the URL holds no document (HTTP 404, 400, 405, 410: try the next
    URL). Raises :class:`InvalidResponse` for a malformed document and
    :class:`MetadataError` when its ``resource`` is not the expected one (RFC 9728 §3.3,
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
    expected = canonical_resource_uri(resource)
    try:
        same = canonical_resource_uri(declared) == expected
    except AgentIdentityError:
        same = False
    if not same:
        raise MetadataError(
            f"protected resource metadata names resource {declared[:200]!r}, not {expected!r} "
            "(RFC 9728 §3.3); refusing to use it"
        )
    servers = _strings(body, "authorization_servers") or ()
    if not servers:
        raise MetadataError("protected resource metadata names no authorization_servers")
    name = body.get("resource_name")
    return ProtectedResourceMetadata(
        resource=expected,
        authorization_servers=servers,
        scopes_supported=_strings(body, "scopes_supported"),
        bearer_methods_supported=_strings(body, "bearer_methods_supported"),
        resource_name=name if isinstance(name, str) else None,
    )


def check_resource_url(resource: str) -> str:
    """The canonical form of an MCP server URL used as a resource (RFC 8707 §2);
    raises :class:`ConfigurationError` with a clear message otherwise."""
    try:
        return canonical_resource_uri(resource)
    except ConfigurationError as exc:
        raise ConfigurationError(f"invalid MCP server URL: {exc}") from None
