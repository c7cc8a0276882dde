"""The authorization request and response of the authorization code flow.

Implements OAuth 2.1 §4.1.1-4.1.2 (draft), RFC 7636 (PKCE, S256 only), RFC 8707 §2
(``resource``), RFC 9126 (pushed authorization requests), RFC 9207 (``iss`` in the
response), RFC 9470 (``acr_values``/``max_age`` on step-up) and OpenID Connect Core
§3.1.2.1 (``nonce``).

The flow state is a :class:`PendingAuthorization`, recorded *before* the user is sent to
the authorization server (security item 17): it binds the PKCE verifier, ``state``,
``nonce``, the redirect URI and the issuer. :class:`PendingAuthorizations` keeps them
single-use and short-lived (security item 16). :func:`validate_callback` checks a
callback strictly in this order, so that nothing an attacker put in a response is acted
upon before it is known to come from the right server (security item 18):

1. parameters are single-valued (no duplicate ``state``/``code``/``iss``);
2. ``state`` names a pending flow that has not expired (it is consumed either way);
3. RFC 9207: ``iss`` must be present when the server advertises it and, when present,
   equal the flow's issuer by exact string comparison; on mismatch the response's
   ``error`` is *not* trusted or shown;
4. only then an ``error`` is reported (``access_denied`` -> :class:`ConsentDenied`);
5. a ``code`` must be present.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import SecretStr

from agent_identity._limits import MAX_LIFETIME, bounded_int, display_text, sane_text
from agent_identity.errors import (
    AuthorizationResponseError,
    ConfigurationError,
    ConsentDenied,
    InvalidResponse,
    IssuerMismatch,
    StateMismatch,
)
from agent_identity.models import ServerMetadata
from agent_identity.oauth._json import parse_json_object
from agent_identity.oauth._message import HttpRequest, HttpResponse
from agent_identity.oauth.client_auth import ClientAuthentication
from agent_identity.oauth.pkce import generate_pkce
from agent_identity.oauth.token import oauth_error_from_body

__all__ = [
    "RESERVED_PARAMETERS",
    "AuthorizationCallback",
    "PendingAuthorization",
    "PendingAuthorizations",
    "authorization_url",
    "check_extra_parameter",
    "par_request",
    "parse_callback",
    "parse_par_response",
    "start_authorization",
    "validate_callback",
]

#: How long a started authorization may wait for its callback (seconds).
DEFAULT_FLOW_LIFETIME = 600.0

#: A callback given as an absolute URL (``scheme:``) or a path, rather than a bare query.
_URL_START = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:|/")


@dataclass(frozen=True, slots=True)
class PendingAuthorization:
    """Everything needed to finish one authorization code flow, recorded before the
    redirect. ``code_verifier`` is secret; ``state`` and ``nonce`` are unguessable."""

    issuer: str
    client_id: str
    redirect_uri: str
    state: str
    nonce: str | None
    code_verifier: SecretStr
    scopes: tuple[str, ...]
    resources: tuple[str, ...]
    iss_parameter_supported: bool
    token_endpoint: str
    created_at: float
    expires_at: float
    max_age: int | None = None
    #: RFC 9449 §10: the thumbprint of the DPoP key the code is bound to (``dpop_jkt``);
    #: the code must be redeemed with a proof of that key.
    dpop_jkt: str | None = None
    #: RFC 9396: the authorization details asked for (JSON objects).
    authorization_details: tuple[dict[str, Any], ...] = ()

    def __repr__(self) -> str:
        return (
            f"PendingAuthorization(issuer={self.issuer!r}, client_id={self.client_id!r}, "
            f"scopes={self.scopes!r}, resources={self.resources!r})"
        )


def start_authorization(
    metadata: ServerMetadata,
    *,
    client_id: str,
    redirect_uri: str,
    scopes: Sequence[str],
    resources: Sequence[str] = (),
    now: float,
    lifetime: float = DEFAULT_FLOW_LIFETIME,
    prompt: str | None = None,
    login_hint: str | None = None,
    acr_values: Sequence[str] = (),
    max_age: int | None = None,
    extra: Mapping[str, str] | None = None,
    scope_separator: str = " ",
    authorization_details: Sequence[Mapping[str, Any]] = (),
    dpop_jkt: str | None = None,
) -> tuple[PendingAuthorization, dict[str, Any]]:
    """Create the flow record and the authorization request parameters.

    Returns ``(pending, params)``; ``params`` is a list-valued mapping because
    ``resource`` may repeat (RFC 8707 §2). A ``nonce`` is added when ``openid`` is asked.
    ``extra`` parameters (``login_hint``-like provider parameters, ``ui_locales``, ...)
    are validated: they can never set or override a parameter the SDK controls
    (:data:`RESERVED_PARAMETERS`: ``state``, PKCE, ``redirect_uri``, ``client_id``, ...),
    and names and values must be printable text. ``authorization_details`` (RFC 9396 §2,
    already validated JSON objects) and ``dpop_jkt`` (RFC 9449 §10) are added when given.
    """
    if metadata.authorization_endpoint is None or metadata.token_endpoint is None:
        raise ConfigurationError(
            f"authorization server {metadata.issuer!r} has no authorization or token endpoint"
        )
    if isinstance(scopes, str) or isinstance(resources, str) or isinstance(acr_values, str):
        raise ConfigurationError("scopes, resources and acr_values must be sequences, not str")
    from agent_identity.oauth.discovery import require_s256

    require_s256(metadata)
    pkce = generate_pkce()
    state = secrets.token_urlsafe(32)
    nonce = secrets.token_urlsafe(32) if "openid" in scopes else None
    params: dict[str, Any] = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": redirect_uri,
        "state": state,
        "code_challenge": pkce.challenge,
        "code_challenge_method": "S256",
    }
    if scopes:
        params["scope"] = scope_separator.join(scopes)
    if nonce is not None:
        params["nonce"] = nonce
    if resources:
        params["resource"] = list(resources)
    if prompt:
        params["prompt"] = prompt
    if login_hint:
        params["login_hint"] = login_hint
    if acr_values:
        params["acr_values"] = " ".join(acr_values)
    if max_age is not None:
        params["max_age"] = str(max_age)
    if authorization_details:
        params["authorization_details"] = json.dumps(
            [dict(d) for d in authorization_details],
            separators=(",", ":"),
            ensure_ascii=False,
            allow_nan=False,
        )
    if dpop_jkt is not None:
        params["dpop_jkt"] = dpop_jkt
    for key, value in (extra or {}).items():
        check_extra_parameter(key, value)
        if key in params:
            raise ConfigurationError(f"extra authorization parameter {key!r} is set by the SDK")
        params[key] = value
    pending = PendingAuthorization(
        issuer=metadata.issuer,
        client_id=client_id,
        redirect_uri=redirect_uri,
        state=state,
        nonce=nonce,
        code_verifier=pkce.verifier,
        scopes=tuple(scopes),
        resources=tuple(resources),
        iss_parameter_supported=metadata.authorization_response_iss_parameter_supported,
        token_endpoint=metadata.token_endpoint,
        created_at=now,
        expires_at=now + lifetime,
        max_age=max_age,
        dpop_jkt=dpop_jkt,
        authorization_details=tuple(dict(d) for d in authorization_details),
    )
    return pending, params


#: Authorization request parameters only the SDK sets (security items 15-17, 19, 21):
#: ``extra`` parameters can never carry them.
RESERVED_PARAMETERS = frozenset(
    {
        "response_type",
        "client_id",
        "redirect_uri",
        "state",
        "code_challenge",
        "code_challenge_method",
        "nonce",
        "scope",
        "resource",
        "request_uri",
        "request",
        "response_mode",
        "code_verifier",
        "client_secret",
        "client_assertion",
        "client_assertion_type",
        "authorization_details",
        "dpop_jkt",
    }
)
_PARAMETER_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


def check_extra_parameter(name: object, value: object) -> None:
    """Refuse an extra authorization parameter that would override what the SDK controls
    or that is not printable text (raises :class:`ConfigurationError`)."""
    if not isinstance(name, str) or not _PARAMETER_NAME.fullmatch(name):
        raise ConfigurationError("extra authorization parameter names must be short tokens")
    if name in RESERVED_PARAMETERS:
        raise ConfigurationError(
            f"authorization parameter {name!r} is set by the SDK and cannot be overridden"
        )
    if not isinstance(value, str) or len(value) > 2048 or not value.isprintable():
        raise ConfigurationError(
            f"extra authorization parameter {name!r} must be printable text (2048 chars max)"
        )


def _encode(params: Mapping[str, Any]) -> str:
    pairs: list[tuple[str, str]] = []
    for key, value in params.items():
        if isinstance(value, list | tuple):
            pairs.extend((key, str(v)) for v in value)
        else:
            pairs.append((key, str(value)))
    return urlencode(pairs)


def authorization_url(endpoint: str, params: Mapping[str, Any]) -> str:
    """The URL to open for the user: ``endpoint`` with ``params`` added to its query.

    RFC 6749 §3.1: an existing query on the endpoint is kept; a parameter that is both in
    it and in ``params`` raises :class:`ConfigurationError`.
    """
    parts = urlsplit(endpoint)
    existing = {key for key, _ in parse_qsl(parts.query, keep_blank_values=True)}
    clash = sorted(existing.intersection(params))
    if clash:
        # RFC 6749 §3.1: parameters MUST NOT be included more than once
        raise ConfigurationError(f"authorization endpoint query already holds {', '.join(clash)}")
    query = parts.query + ("&" if parts.query else "") + _encode(params)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))


def par_request(
    metadata: ServerMetadata,
    params: Mapping[str, Any],
    client_auth: ClientAuthentication,
    *,
    now: float,
) -> HttpRequest:
    """RFC 9126 §2.1: push the authorization request parameters to the PAR endpoint."""
    endpoint = metadata.pushed_authorization_request_endpoint
    if endpoint is None:
        raise ConfigurationError("the authorization server has no PAR endpoint")
    form: dict[str, str | list[str]] = {}
    headers: dict[str, str] = {}
    client_auth.apply(form, headers, issuer=metadata.issuer, endpoint=endpoint, now=now)
    # ``resource`` may repeat (RFC 8707 §2): a sequence value repeats the parameter.
    for key, value in params.items():
        if key == "client_id" and key in form:
            if form[key] != str(value):
                raise ConfigurationError("client_id differs from the client authentication")
            continue
        if key in form:
            raise ConfigurationError(f"PAR parameter {key!r} is set by the client authentication")
        if isinstance(value, list | tuple):
            form[key] = [str(v) for v in value]
        else:
            form[key] = str(value)
    return HttpRequest("POST", endpoint, headers=headers, form=form)


def parse_par_response(response: HttpResponse) -> tuple[str, int]:
    """RFC 9126 §2.2-2.3: return ``(request_uri, expires_in)`` or raise the OAuth error."""
    body = parse_json_object(response.content, what="PAR response")
    if response.status_code not in (200, 201):
        _raise_oauth_error(body, response.status_code)
    request_uri = sane_text(body.get("request_uri"), "PAR response request_uri", max_length=4096)
    if "expires_in" not in body:
        raise InvalidResponse("PAR response has no expires_in")
    expires_in = bounded_int(
        body["expires_in"],
        "PAR response expires_in",
        minimum=1,
        maximum=MAX_LIFETIME,
        over="clamp",
    )
    return request_uri, expires_in


def _raise_oauth_error(body: Mapping[str, Any], status: int) -> None:
    raise oauth_error_from_body(body, status)


@dataclass(frozen=True, slots=True)
class AuthorizationCallback:
    """The single-valued parameters of a redirect back to the client."""

    params: Mapping[str, str] = field(default_factory=dict)

    def get(self, name: str) -> str | None:
        return self.params.get(name)

    def __repr__(self) -> str:
        return f"AuthorizationCallback(params={sorted(self.params)!r})"


def parse_callback(url_or_query: str) -> AuthorizationCallback:
    """Parse a callback URL (or its query string). Repeated parameters are refused.

    RFC 6749 §3.1: "Request and response parameters MUST NOT be included more than once."
    Only the query is read (``response_mode=query``); a fragment is ignored.
    """
    text = url_or_query.strip()
    query: str | None
    if text.startswith("?"):
        query = text[1:]
    elif _URL_START.match(text):
        # an absolute URL or a path; a bare query may hold "://" or "?" in its values
        # (``iss=https://as``), so only these forms are split as URLs
        try:
            query = urlsplit(text).query
        except ValueError:  # e.g. an unterminated IPv6 literal in the host
            query = None
        if query is None:  # raised outside the handler: the URL holds the code
            raise AuthorizationResponseError("authorization response URL is malformed")
    else:
        query = text
    query = query.partition("#")[0]
    params: dict[str, str] = {}
    try:
        pairs: list[tuple[str, str]] | None = parse_qsl(
            query, keep_blank_values=True, strict_parsing=False, max_num_fields=64
        )
    except ValueError:
        pairs = None
    if pairs is None:
        raise AuthorizationResponseError("authorization response has too many parameters")
    for key, value in pairs:
        if key in params:
            raise AuthorizationResponseError(
                f"authorization response repeats the parameter {key!r}"
            )
        params[key] = value
    return AuthorizationCallback(params)


class PendingAuthorizations:
    """Single-use, short-lived registry of started flows, keyed by ``state``.

    Not thread-safe by itself; the client uses it from one event loop.
    """

    def __init__(self, max_pending: int = 256) -> None:
        self._by_state: dict[str, PendingAuthorization] = {}
        self._max = max_pending

    def add(self, pending: PendingAuthorization, *, now: float) -> None:
        self._expire(now)
        if len(self._by_state) >= self._max:
            oldest = min(self._by_state.values(), key=lambda p: p.created_at)
            del self._by_state[oldest.state]
        self._by_state[pending.state] = pending

    def take(self, state: str | None, *, now: float) -> PendingAuthorization:
        """Remove and return the flow for ``state``; raise :class:`StateMismatch` when it is
        missing, unknown (wrong or replayed) or expired."""
        if not state:
            raise StateMismatch("authorization response has no state")
        pending = self._by_state.pop(state, None)
        if pending is None:
            raise StateMismatch("authorization response state is unknown or was already used")
        if now >= pending.expires_at:
            raise StateMismatch("authorization response arrived after the flow expired")
        return pending

    def discard(self, state: str) -> None:
        self._by_state.pop(state, None)

    def _expire(self, now: float) -> None:
        for state in [s for s, p in self._by_state.items() if now >= p.expires_at]:
            del self._by_state[state]

    def __len__(self) -> int:
        return len(self._by_state)


def validate_callback(
    callback: AuthorizationCallback,
    pending_flows: PendingAuthorizations,
    *,
    now: float,
    expected: PendingAuthorization | None = None,
) -> tuple[PendingAuthorization, SecretStr]:
    """Validate a callback; return the flow it completes and the authorization ``code``.

    ``expected`` (optional) pins the flow this callback must belong to, so a handler that
    started flow A cannot be completed with flow B's response.
    Raises :class:`StateMismatch`, :class:`IssuerMismatch`, :class:`ConsentDenied`,
    an :class:`~agent_identity.errors.OAuthError`, or
    :class:`AuthorizationResponseError`. No token request may follow a raise.
    """
    state = callback.get("state")
    if expected is not None and state != expected.state:
        raise StateMismatch("authorization response state does not belong to this flow")
    pending = pending_flows.take(state, now=now)
    iss = callback.get("iss")
    if iss is None:
        if pending.iss_parameter_supported:
            raise IssuerMismatch(
                "authorization response has no iss although the server advertises "
                "authorization_response_iss_parameter_supported (RFC 9207)"
            )
    elif iss != pending.issuer:
        raise IssuerMismatch(
            "authorization response iss does not match the issuer the flow was started "
            "with (RFC 9207); the response was discarded"
        )
    error = callback.get("error")
    if error is not None:
        description = display_text(callback.get("error_description"))
        if error == "access_denied":
            raise ConsentDenied(
                "the user or the authorization server denied the authorization request"
                + (f": {description}" if description else "")
            )
        failure = oauth_error_from_body(callback.params, None)
        if isinstance(failure, InvalidResponse):  # a malformed error code
            raise AuthorizationResponseError("authorization response has a malformed error")
        raise failure
    code = callback.get("code")
    if not code:
        raise AuthorizationResponseError("authorization response has neither code nor error")
    # RFC 6749 §4.1.2 / Appendix A.11: code = 1*VSCHAR. It is sent back in a form; a
    # control character or a lone surrogate in it is an attack or garbage, not a code.
    sane_text(code, "authorization response code", max_length=4096,
              error=AuthorizationResponseError)  # fmt: skip
    return pending, SecretStr(code)


def scopes_union(*groups: Iterable[str]) -> tuple[str, ...]:
    """Order-preserving union of scope lists (used for incremental consent)."""
    seen: dict[str, None] = {}
    for group in groups:
        for scope in group:
            seen.setdefault(scope, None)
    return tuple(seen)
