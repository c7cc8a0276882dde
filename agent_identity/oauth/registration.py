"""Client registration without a human in the loop. Pure: no I/O.

- **Dynamic Client Registration** (RFC 7591): :func:`registration_request` builds the
  §3.1 request (a JSON document POSTed to the ``registration_endpoint``) with an
  ``application_type`` (OpenID Connect Dynamic Client Registration §2: ``native`` for
  loopback/CLI redirect URIs, else ``web``; security item 14); :func:`parse_registration`
  reads the §3.2.1 response into a :class:`ClientRegistration` that honours
  ``client_secret_expires_at`` (``0`` means it never expires; a registration whose secret
  expired is registered again). Tolerance without weakness: a secret without
  ``client_secret_expires_at`` (required by §3.2.1, omitted by many servers) does not
  expire, as every other client reads it; a malformed value is still refused. The
  registration records the ``token_endpoint_auth_method`` it was made with (the
  response's, else the one requested: §3.2.1 makes the server return what it
  registered); a secret issued to a ``none`` registration is dropped, never sent.
- :func:`redirect_uri_registered`: whether a consent handler's redirect URI is one of the
  registered ``redirect_uris`` (RFC 8252 §7.3: a loopback redirect URI matches on any
  port), checked before the user is sent to the authorization server.
- **Client ID Metadata Documents** (the MCP authorization spec, draft
  ``draft-ietf-oauth-client-id-metadata-document``): the client id is an ``https`` URL
  serving the client's metadata. :func:`check_client_id_url`,
  :func:`client_metadata_document` and :func:`validate_client_metadata_document` enforce
  security item 13: an https URL with a path, no dot segments, fragment or userinfo; the
  document's ``client_id`` equals the URL; it has ``client_name`` and ``redirect_uris``; no
  ``client_secret`` or shared-secret authentication methods.

Registrations belong to one authorization server: a :class:`ClientRegistration` records
its ``issuer`` and is never used with another (security item 12).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import SecretStr

from agent_identity._limits import MAX_EPOCH, MAX_TOKEN, bounded_int, sane_text
from agent_identity.errors import ConfigurationError, InvalidResponse, VaultCorrupted
from agent_identity.oauth._json import parse_json_object
from agent_identity.oauth._message import HttpRequest, HttpResponse
from agent_identity.oauth.token import parse_oauth_error
from agent_identity.oauth.urls import check_endpoint_url, is_loopback_host, path_is_ambiguous

__all__ = [
    "SHARED_SECRET_METHODS",
    "ClientRegistration",
    "application_type_for",
    "check_client_id_url",
    "client_metadata_document",
    "parse_registration",
    "redirect_uri_registered",
    "registration_request",
    "validate_client_metadata_document",
]

ApplicationType = Literal["native", "web"]

#: Token endpoint authentication methods that rest on a shared secret (refused for CIMD).
SHARED_SECRET_METHODS = frozenset(
    {"client_secret_basic", "client_secret_post", "client_secret_jwt"}
)
#: The methods a dynamically registered client can use (it has no private key).
_USABLE_REGISTERED_METHODS = frozenset({"none", "client_secret_basic", "client_secret_post"})


@dataclass(frozen=True, slots=True)
class ClientRegistration:
    """Client credentials issued by (or configured for) one authorization server.

    ``client_secret_expires_at`` is seconds since the epoch, ``0`` for never (RFC 7591
    §3.2.1). ``repr`` never shows the secret.
    """

    issuer: str
    client_id: str
    client_secret: SecretStr | None = None
    client_secret_expires_at: int = 0
    token_endpoint_auth_method: str | None = None
    redirect_uris: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return (
            f"ClientRegistration(issuer={self.issuer!r}, client_id={self.client_id!r}, "
            f"has_secret={self.client_secret is not None})"
        )

    def expired(self, now: float, *, skew: float = 60.0) -> bool:
        """Whether the secret expires within ``skew`` seconds of ``now`` (epoch)."""
        if self.client_secret is None or self.client_secret_expires_at == 0:
            return False
        return self.client_secret_expires_at <= now + skew

    def to_bytes(self) -> bytes:
        """Serialise for the (encrypted) vault."""
        return json.dumps(
            {
                "issuer": self.issuer,
                "client_id": self.client_id,
                "client_secret": None
                if self.client_secret is None
                else self.client_secret.get_secret_value(),
                "client_secret_expires_at": self.client_secret_expires_at,
                "token_endpoint_auth_method": self.token_endpoint_auth_method,
                "redirect_uris": list(self.redirect_uris),
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> ClientRegistration:
        try:
            body = parse_json_object(data, what="stored registration")
            secret = body.get("client_secret")
            return cls(
                issuer=str(body["issuer"]),
                client_id=str(body["client_id"]),
                client_secret=SecretStr(secret) if isinstance(secret, str) else None,
                client_secret_expires_at=int(body.get("client_secret_expires_at") or 0),
                token_endpoint_auth_method=body.get("token_endpoint_auth_method"),
                redirect_uris=tuple(body.get("redirect_uris") or ()),
            )
        except (InvalidResponse, KeyError, TypeError, ValueError):
            pass
        raise VaultCorrupted("a stored client registration cannot be decoded")


def application_type_for(redirect_uris: Sequence[str]) -> ApplicationType:
    """``native`` when every redirect URI is loopback ``http`` or a private-use scheme
    (RFC 8252 §7.1, §7.3: a CLI or desktop agent), else ``web``."""
    if not redirect_uris:
        return "native"
    for uri in redirect_uris:
        parts = urlsplit(uri)
        if parts.scheme == "https":
            return "web"
        if parts.scheme == "http" and not is_loopback_host(parts.hostname or ""):
            return "web"
    return "native"


def registration_request(
    endpoint: str,
    *,
    redirect_uris: Sequence[str],
    client_name: str,
    token_endpoint_auth_method: str = "none",
    grant_types: Sequence[str] = ("authorization_code", "refresh_token"),
    scope: Sequence[str] = (),
    application_type: ApplicationType | None = None,
    software_id: str | None = None,
    software_version: str | None = None,
    allow_insecure_loopback: bool = False,
) -> HttpRequest:
    """The RFC 7591 §3.1 registration request (server-supplied endpoint, not retried:
    a repeated registration would create a second client)."""
    check_endpoint_url(
        endpoint, allow_insecure_loopback=allow_insecure_loopback, what="registration_endpoint"
    )
    if not redirect_uris:
        raise ConfigurationError("dynamic registration needs at least one redirect URI")
    body: dict[str, Any] = {
        "client_name": client_name,
        "redirect_uris": list(redirect_uris),
        "grant_types": list(grant_types),
        "response_types": ["code"],
        "token_endpoint_auth_method": token_endpoint_auth_method,
        "application_type": application_type or application_type_for(redirect_uris),
    }
    if scope:
        body["scope"] = " ".join(scope)
    if software_id is not None:
        body["software_id"] = software_id
    if software_version is not None:
        body["software_version"] = software_version
    return HttpRequest(
        "POST",
        endpoint,
        headers={"content-type": "application/json"},
        server_supplied=True,
        body=json.dumps(body, separators=(",", ":")).encode(),
    )


def parse_registration(
    response: HttpResponse, *, issuer: str, requested_method: str | None = None
) -> ClientRegistration:
    """Parse the RFC 7591 §3.2.1 response (HTTP 201, or 200 from lenient servers).

    Raises the :class:`~agent_identity.errors.OAuthError` subclass of a §3.2.2 error
    response and :class:`InvalidResponse` for a malformed one.

    - ``client_secret_expires_at`` absent with a ``client_secret``: the secret does not
      expire (``0``). §3.2.1 requires the member, but servers omit it and every other
      client reads it so; a member that is present must be a non-negative number.
    - ``token_endpoint_auth_method``: the response's value, else ``requested_method`` (the
      one the request asked for). A ``none`` registration is a public client: a secret the
      server issued anyway is dropped, so that it is never sent. A method this client
      cannot use (it has no private key) raises :class:`InvalidResponse`.
    """
    if response.status_code not in (200, 201):
        raise parse_oauth_error(response)
    body = parse_json_object(response.content, what="registration response")
    if not body.get("client_id"):
        raise InvalidResponse("registration response has no client_id")
    client_id = sane_text(body["client_id"], "registration response client_id", max_length=4096)
    secret = body.get("client_secret")
    if secret is not None and (not isinstance(secret, str) or not secret):
        raise InvalidResponse("registration response has an invalid client_secret")
    if secret is not None:
        sane_text(secret, "registration response client_secret", max_length=MAX_TOKEN)
    raw = body.get("client_secret_expires_at")
    if raw is None and "client_secret_expires_at" in body and secret is not None:
        raise InvalidResponse("registration response has an invalid client_secret_expires_at")
    if raw is None:
        # RFC 7591 §3.2.1 wants it with a secret, but servers omit it and every other
        # client reads that as "does not expire" (0); null beside no secret: nothing expires
        expires = 0
    else:
        # seconds since the epoch, 0 = never. The bounded-number rule; a time after year
        # 9999 is read as 9999 (never, for us). Fractions are cut.
        if isinstance(raw, float) and math.isfinite(raw) and raw >= 0:
            raw = math.floor(min(raw, float(MAX_EPOCH)))
        expires = bounded_int(
            raw,
            "registration response client_secret_expires_at",
            minimum=0,
            maximum=MAX_EPOCH,
            over="clamp",
        )
    method = body.get("token_endpoint_auth_method", requested_method)
    if method is not None and (not isinstance(method, str) or not method):
        raise InvalidResponse("registration response has an invalid token_endpoint_auth_method")
    if method is not None and method not in _USABLE_REGISTERED_METHODS:
        raise InvalidResponse(
            f"the authorization server registered this client with token_endpoint_auth_method "
            f"{method[:60]!r}, which a dynamically registered client cannot use"
        )
    if method in ("client_secret_basic", "client_secret_post") and secret is None:
        raise InvalidResponse(
            f"the authorization server registered this client with {method!r} but issued no "
            "client_secret"
        )
    if method == "none":
        secret, expires = None, 0  # a public client: a secret issued anyway is never used
    uris = body.get("redirect_uris")
    return ClientRegistration(
        issuer=issuer,
        client_id=client_id,
        client_secret=SecretStr(secret) if secret is not None else None,
        client_secret_expires_at=expires,
        token_endpoint_auth_method=method,
        redirect_uris=tuple(u for u in uris if isinstance(u, str))
        if isinstance(uris, list)
        else (),
    )


def redirect_uri_registered(redirect_uri: str, registered: Sequence[str]) -> bool:
    """Whether ``redirect_uri`` is one of ``registered``: equal (scheme and host compared
    case-insensitively, path and query exactly), except that a loopback ``http`` redirect
    URI matches on any port (RFC 8252 §7.3: native clients take an ephemeral port)."""
    try:
        wanted = urlsplit(redirect_uri)
        wanted_port = wanted.port
    except ValueError:
        return False
    for entry in registered:
        try:
            candidate = urlsplit(entry)
            candidate_port = candidate.port
        except ValueError:
            continue
        if (
            wanted.scheme.lower() != candidate.scheme.lower()
            or (wanted.hostname or "") != (candidate.hostname or "")
            or wanted.path != candidate.path
            or wanted.query != candidate.query
            or wanted.fragment
            or wanted.username is not None
            or wanted.password is not None
        ):
            continue
        loopback = wanted.scheme.lower() == "http" and is_loopback_host(wanted.hostname or "")
        if loopback or wanted_port == candidate_port:
            return True
    return False


# -- Client ID Metadata Documents ------------------------------------------------------


def check_client_id_url(url: str) -> str:
    """A CIMD client id: ``https``, with a host and a path other than ``/``, no dot
    segments, query-free, no fragment or userinfo (security item 13). Returns it."""
    if not isinstance(url, str) or not url.startswith("https://"):
        raise ConfigurationError("a client id metadata URL must be an https URL")
    check_endpoint_url(url, what="client id metadata URL")
    parts = urlsplit(url)
    if parts.path in ("", "/"):
        raise ConfigurationError("a client id metadata URL must have a path")
    if path_is_ambiguous(parts.path):
        # RFC 3986 §6, §5.2.4: ``..``, ``%2e%2e``, ``..%2f``, ``%5c``, ``..;`` or a stray
        # ``%`` could make a server fetch another document than the one this URL names.
        raise ConfigurationError(
            "a client id metadata URL must not contain dot segments or encoded dots, "
            "slashes or backslashes"
        )
    if parts.query:
        raise ConfigurationError("a client id metadata URL should not have a query")
    return url


def client_metadata_document(
    client_id: str,
    *,
    client_name: str,
    redirect_uris: Sequence[str],
    grant_types: Sequence[str] = ("authorization_code", "refresh_token"),
    token_endpoint_auth_method: str = "none",
    jwks_uri: str | None = None,
    client_uri: str | None = None,
) -> dict[str, Any]:
    """Build the JSON document to serve at ``client_id`` (validated before return)."""
    document: dict[str, Any] = {
        "client_id": client_id,
        "client_name": client_name,
        "redirect_uris": list(redirect_uris),
        "grant_types": list(grant_types),
        "response_types": ["code"],
        "token_endpoint_auth_method": token_endpoint_auth_method,
        "application_type": application_type_for(redirect_uris),
    }
    if jwks_uri is not None:
        document["jwks_uri"] = jwks_uri
    if client_uri is not None:
        document["client_uri"] = client_uri
    return validate_client_metadata_document(document, client_id=client_id)


def validate_client_metadata_document(
    document: Mapping[str, Any], *, client_id: str
) -> dict[str, Any]:
    """Check a client id metadata document against security item 13; returns a copy.
    Raises :class:`ConfigurationError`."""
    check_client_id_url(client_id)
    if document.get("client_id") != client_id:
        raise ConfigurationError("the document's client_id must equal its URL")
    name = document.get("client_name")
    if not isinstance(name, str) or not name:
        raise ConfigurationError("a client id metadata document needs a client_name")
    uris = document.get("redirect_uris")
    if not isinstance(uris, list) or not uris or not all(isinstance(u, str) for u in uris):
        raise ConfigurationError("a client id metadata document needs redirect_uris")
    if "client_secret" in document or "client_secret_expires_at" in document:
        raise ConfigurationError("a client id metadata document must not carry a client_secret")
    method = document.get("token_endpoint_auth_method", "none")
    if method in SHARED_SECRET_METHODS:
        raise ConfigurationError(
            f"token_endpoint_auth_method {method!r} needs a shared secret, which a client id "
            "metadata document cannot have"
        )
    return dict(document)
