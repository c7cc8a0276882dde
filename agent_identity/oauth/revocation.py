"""Token revocation (RFC 7009), security item 28.

§2.1: the client POSTs ``token`` (and optionally ``token_type_hint``) with its client
authentication. §2.2: HTTP 200 means the token is revoked *or was already invalid*; the
body is ignored. §2.2.1: ``unsupported_token_type`` is an error; HTTP 503 means the token
may still be valid: keep it and retry later (the I/O layer honours ``Retry-After``).
The caller deletes its local copy only after :func:`parse_revocation_response` returned.
"""

from __future__ import annotations

from typing import Literal

from pydantic import SecretStr

from agent_identity.errors import ConfigurationError, TemporarilyUnavailable
from agent_identity.oauth._message import HttpRequest, HttpResponse
from agent_identity.oauth.client_auth import ClientAuthentication
from agent_identity.oauth.token import parse_oauth_error

__all__ = ["parse_revocation_response", "revocation_request"]


def revocation_request(
    endpoint: str | None,
    *,
    token: SecretStr,
    client_auth: ClientAuthentication,
    issuer: str,
    now: float,
    token_type_hint: Literal["refresh_token", "access_token"] | None = None,
) -> HttpRequest:
    """RFC 7009 §2.1. Revocation is idempotent, so the I/O layer may retry it."""
    if endpoint is None:
        raise ConfigurationError(f"authorization server {issuer!r} has no revocation_endpoint")
    form = {"token": token.get_secret_value()}
    if token_type_hint is not None:
        form["token_type_hint"] = token_type_hint
    headers: dict[str, str] = {}
    client_auth.apply(form, headers, issuer=issuer, endpoint=endpoint, now=now)
    return HttpRequest("POST", endpoint, headers=headers, form=form, idempotent=True)


def parse_revocation_response(response: HttpResponse) -> None:
    """Return when the token is revoked; raise otherwise (keep the token then)."""
    if response.status_code == 200:
        return  # the body is ignored (RFC 7009 §2.2)
    if response.status_code == 503:
        raise TemporarilyUnavailable(
            "temporarily_unavailable",
            "the authorization server could not revoke the token now; it may still be valid",
            None,
            503,
        )
    raise parse_oauth_error(response)
