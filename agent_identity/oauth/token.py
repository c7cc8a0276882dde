"""Token endpoint requests and responses.

- authorization_code: OAuth 2.1 §4.1.3 with the PKCE ``code_verifier`` (RFC 7636 §4.5);
- refresh_token: OAuth 2.1 §4.3, narrowed with ``scope`` (RFC 6749 §6) and audience-bound
  with ``resource`` (RFC 8707 §2.2, security item 19);
- client_credentials: OAuth 2.1 §4.2;
- device_code: RFC 8628 §3.4 (polling semantics in :mod:`agent_identity.oauth.device`);
- responses: RFC 6749 §5.1/§5.2. Unknown members are ignored; a missing ``access_token``
  or ``token_type`` is an :class:`InvalidResponse`; error responses become typed
  :class:`~agent_identity.errors.OAuthError` subclasses.

Every builder is pure: it returns an :class:`HttpRequest` and never retries by itself
(token requests are not idempotent; a refresh with a rotating refresh token must never be
repeated blindly).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, SecretStr, ValidationError

from agent_identity._limits import display_text, sane_text
from agent_identity.errors import InvalidResponse, oauth_error_from_response
from agent_identity.models import TokenResponse
from agent_identity.oauth._json import parse_json_object
from agent_identity.oauth._message import HttpRequest, HttpResponse
from agent_identity.oauth.client_auth import ClientAuthentication

__all__ = [
    "DEVICE_CODE_GRANT",
    "authorization_code_request",
    "client_credentials_request",
    "device_code_request",
    "oauth_error_from_body",
    "parse_oauth_error",
    "parse_token_response",
    "refresh_request",
    "token_request",
]

DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"

_M = TypeVar("_M", bound=BaseModel)


def token_request(
    endpoint: str,
    form: Mapping[str, str | Sequence[str]],
    client_auth: ClientAuthentication,
    *,
    issuer: str,
    now: float,
    headers: Mapping[str, str] | None = None,
) -> HttpRequest:
    """A POST to ``endpoint`` with ``form`` and the client's authentication applied."""
    body: dict[str, Any] = dict(form)
    hdrs = dict(headers or {})
    client_auth.apply(body, hdrs, issuer=issuer, endpoint=endpoint, now=now)
    return HttpRequest("POST", endpoint, headers=hdrs, form=body, idempotent=False)


def _scope_and_resource(
    form: dict[str, str], scopes: Sequence[str] | None, resource: str | None
) -> None:
    if scopes:
        form["scope"] = " ".join(scopes)
    if resource is not None:
        form["resource"] = resource


def authorization_code_request(
    endpoint: str,
    *,
    code: SecretStr,
    redirect_uri: str,
    code_verifier: SecretStr,
    client_auth: ClientAuthentication,
    issuer: str,
    now: float,
    resource: str | None = None,
) -> HttpRequest:
    form = {
        "grant_type": "authorization_code",
        "code": code.get_secret_value(),
        "redirect_uri": redirect_uri,
        "code_verifier": code_verifier.get_secret_value(),
    }
    _scope_and_resource(form, None, resource)
    return token_request(endpoint, form, client_auth, issuer=issuer, now=now)


def refresh_request(
    endpoint: str,
    *,
    refresh_token: SecretStr,
    client_auth: ClientAuthentication,
    issuer: str,
    now: float,
    scopes: Sequence[str] | None = None,
    resource: str | None = None,
) -> HttpRequest:
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token.get_secret_value()}
    _scope_and_resource(form, scopes, resource)
    return token_request(endpoint, form, client_auth, issuer=issuer, now=now)


def client_credentials_request(
    endpoint: str,
    *,
    client_auth: ClientAuthentication,
    issuer: str,
    now: float,
    scopes: Sequence[str] | None = None,
    resource: str | None = None,
) -> HttpRequest:
    form = {"grant_type": "client_credentials"}
    _scope_and_resource(form, scopes, resource)
    return token_request(endpoint, form, client_auth, issuer=issuer, now=now)


def device_code_request(
    endpoint: str,
    *,
    device_code: SecretStr,
    client_auth: ClientAuthentication,
    issuer: str,
    now: float,
) -> HttpRequest:
    form = {"grant_type": DEVICE_CODE_GRANT, "device_code": device_code.get_secret_value()}
    return token_request(endpoint, form, client_auth, issuer=issuer, now=now)


def invalid_fields(model: type[BaseModel], data: Mapping[str, Any]) -> list[str] | None:
    """The names of the members of ``data`` that ``model`` refuses, or ``None`` if valid.

    A member refused by one of the SDK's own rules (:mod:`._limits`, whose messages never
    quote a value) carries the reason: ``access_token (holds characters outside ...)``.
    The caller raises *outside* any ``except`` block, so pydantic's error (which may quote
    the input values, tokens included) never becomes an exception's ``__context__``.
    """
    return validated(model, data)[1]


def validated(model: type[_M], data: Mapping[str, Any]) -> tuple[_M, None] | tuple[None, list[str]]:
    """``(instance, None)`` for valid ``data``, else ``(None, refused member names)`` as
    :func:`invalid_fields` reports them: one validation, and no pydantic error escapes."""
    try:
        return model.model_validate(data), None
    except ValidationError as exc:
        found: dict[str, str] = {}
        for error in exc.errors(include_input=False, include_url=False):
            if not error["loc"]:
                continue
            name = str(error["loc"][0])
            reason = ""
            if error["type"] == "value_error" and isinstance(error.get("ctx"), dict):
                cause = error["ctx"].get("error")
                text = str(cause) if cause is not None else ""
                if text.startswith(name):  # our own rule: "<member> is ..." (no value)
                    reason = f" ({text[len(name) :].strip()})"
            found.setdefault(name, f"{name}{reason}")
        return None, [found[k] for k in sorted(found)] or ["(document)"]


def parse_oauth_error(response: HttpResponse, body: Mapping[str, Any] | None = None) -> Exception:
    """Return (not raise) the typed error for an error response (RFC 6749 §5.2)."""
    if body is None:
        try:
            body = parse_json_object(response.content, what="error response")
        except InvalidResponse:
            return InvalidResponse(
                f"token endpoint answered HTTP {response.status_code} without a JSON error"
            )
    return oauth_error_from_body(body, response.status_code)


def oauth_error_from_body(body: Mapping[str, Any], status_code: int | None) -> Exception:
    """The typed error for an RFC 6749 §5.2 error object. The text-sanity rule applies:
    ``error`` must be a short printable code; ``error_description`` and ``error_uri`` are
    free text, made displayable (control characters and lone surrogates replaced, cut to
    a few hundred characters) so that messages and logs can always be written."""
    error = body.get("error")
    status = f"HTTP {status_code}" if status_code is not None else "the"
    if not isinstance(error, str) or not error:
        return InvalidResponse(f"{status} response without an error code")
    try:
        code = sane_text(error, "error", max_length=128)
    except InvalidResponse:
        code = None
    if code is None:
        return InvalidResponse(f"{status} response has a malformed error code")
    return oauth_error_from_response(
        code,
        display_text(body.get("error_description")),
        display_text(body.get("error_uri"), max_length=2048),
        status_code,
    )


def parse_token_response(response: HttpResponse) -> TokenResponse:
    """Parse a token endpoint response (RFC 6749 §5.1), or raise its typed error."""
    if response.status_code != 200:
        body: Mapping[str, Any] | None
        try:
            body = parse_json_object(response.content, what="token error response")
        except InvalidResponse:
            body = None
        raise parse_oauth_error(response, body if body is not None else {})
    data = parse_json_object(response.content, what="token response")
    token, fields = validated(TokenResponse, data)
    if token is None:
        raise InvalidResponse(
            f"token response is missing or has invalid members: {', '.join(fields or ())}"
        )
    if not token.token_type:
        raise InvalidResponse("token response has an empty token_type")
    return token
