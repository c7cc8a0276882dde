"""OpenID Client-Initiated Backchannel Authentication (CIBA Core 1.0), sans-IO.

- §7.1 the backchannel authentication request: ``scope`` always contains ``openid``;
  exactly one of ``login_hint``, ``id_token_hint``, ``login_hint_token``; optional
  ``binding_message`` (§7.1, shown on both devices), ``user_code``, ``requested_expiry``,
  ``acr_values``, RFC 9396 ``authorization_details`` and RFC 8707 ``resource``; a
  ``client_notification_token`` (a bearer token of at least 128 bits) in ping mode.
  §7.1 requires client authentication: public clients are refused (security item 41);
- §7.3 the acknowledgement: ``auth_req_id`` and ``expires_in`` are required, ``interval``
  defaults to 5 seconds (security item 42); §13 its error responses;
- §10.1 / §11 polling the token endpoint with ``grant_type=urn:openid:params:grant-type:ciba``:
  ``authorization_pending`` keeps polling, ``slow_down`` adds 5 seconds to this and every
  later interval, ``expired_token`` ends the request, ``access_denied`` and
  ``invalid_grant`` end it at once; no poll is sent after ``expires_in`` (security item 43);
- §10.2 the ping callback: ``Authorization: Bearer <client_notification_token>`` compared in
  constant time, body ``{"auth_req_id": ...}`` (security item 44).

:class:`CibaPoller` is the pure polling state machine; the I/O driver
(:mod:`agent_identity.approval.flow`) asks it how long to wait, sends the request built by
:func:`ciba_token_request` and feeds the response back, as with
:class:`~agent_identity.oauth.device.DevicePoller`.
"""

from __future__ import annotations

import hmac
import json
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from pydantic import SecretStr

from agent_identity._limits import MAX_INTERVAL, MAX_LIFETIME, bounded_int
from agent_identity.errors import (
    AccessDenied,
    ApprovalDenied,
    ApprovalExpired,
    ConfigurationError,
    ExpiredToken,
    InvalidGrant,
    InvalidResponse,
    OAuthError,
)
from agent_identity.models import TokenResponse
from agent_identity.oauth._json import parse_json_object
from agent_identity.oauth._message import HttpRequest, HttpResponse
from agent_identity.oauth.client_auth import ClientAuthentication
from agent_identity.oauth.token import parse_oauth_error, parse_token_response, token_request

__all__ = [
    "CIBA_GRANT_TYPE",
    "DEFAULT_INTERVAL",
    "SLOW_DOWN_INCREMENT",
    "BackchannelAuthentication",
    "CibaPoller",
    "backchannel_authentication_request",
    "check_notification_bearer",
    "ciba_token_request",
    "new_notification_token",
    "parse_backchannel_response",
    "parse_ping_notification",
]

CIBA_GRANT_TYPE: Final = "urn:openid:params:grant-type:ciba"
#: §7.3: "If no value is provided, clients MUST use 5 as the default value."
DEFAULT_INTERVAL: Final = 5
#: §11 (RFC 8628 §3.5 semantics): ``slow_down`` adds 5 s to this and all later intervals.
SLOW_DOWN_INCREMENT: Final = 5

# RFC 6750 §2.1 b64token; §7.1 caps the notification token at 1024 characters. 22
# base64url characters carry 132 bits, the least that satisfies the >= 128 bits rule.
_B64TOKEN: Final = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_MIN_NOTIFICATION_TOKEN: Final = 22
_MAX_NOTIFICATION_TOKEN: Final = 1024
_MAX_AUTH_REQ_ID: Final = 1024
_MAX_EXPIRES_IN: Final = MAX_LIFETIME
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def new_notification_token() -> SecretStr:
    """A fresh ``client_notification_token``: 256 random bits, base64url (§7.1 asks for
    at least 128)."""
    return SecretStr(secrets.token_urlsafe(32))


def _check_notification_token(token: SecretStr) -> str:
    value = token.get_secret_value()
    if not (
        _MIN_NOTIFICATION_TOKEN <= len(value) <= _MAX_NOTIFICATION_TOKEN
        and _B64TOKEN.fullmatch(value)
    ):
        raise ConfigurationError(
            "client_notification_token must be a bearer token of 22-1024 base64url "
            "characters (>= 128 bits of entropy)"
        )
    return value


def backchannel_authentication_request(
    endpoint: str | None,
    *,
    client_auth: ClientAuthentication,
    issuer: str,
    now: float,
    scopes: Sequence[str] = (),
    login_hint: str | None = None,
    id_token_hint: SecretStr | None = None,
    login_hint_token: SecretStr | None = None,
    binding_message: str | None = None,
    user_code: SecretStr | None = None,
    requested_expiry: int | None = None,
    acr_values: Sequence[str] = (),
    authorization_details: Sequence[Mapping[str, Any]] | None = None,
    resource: str | None = None,
    client_notification_token: SecretStr | None = None,
) -> HttpRequest:
    """The §7.1 authentication request, authenticated as the client (§7.1: "the Client
    MUST authenticate to the Backchannel Authentication Endpoint").

    Raises :class:`ConfigurationError` when the server has no endpoint, the client is
    public, not exactly one hint is given, or a parameter is malformed; nothing is sent.
    """
    if endpoint is None:
        raise ConfigurationError(
            f"authorization server {issuer!r} has no backchannel_authentication_endpoint"
        )
    if client_auth.method == "none":
        raise ConfigurationError(
            "CIBA requires client authentication: configure a client secret or private key"
        )
    hints = {
        "login_hint": login_hint,
        "id_token_hint": id_token_hint.get_secret_value() if id_token_hint else None,
        "login_hint_token": login_hint_token.get_secret_value() if login_hint_token else None,
    }
    given = {name: value for name, value in hints.items() if value is not None}
    if len(given) != 1 or not next(iter(given.values())):
        raise ConfigurationError(
            "give exactly one non-empty hint: login_hint, id_token_hint or login_hint_token"
        )
    wanted = [s for s in scopes if s != "openid"]
    for scope in wanted:
        if not isinstance(scope, str) or not scope or any(c.isspace() for c in scope):
            raise ConfigurationError("scopes must be non-empty strings without spaces")
    form: dict[str, str] = {"scope": " ".join(["openid", *wanted]), **given}
    if binding_message is not None:
        if not binding_message or _CONTROL.search(binding_message):
            raise ConfigurationError("binding_message must be non-empty printable text")
        form["binding_message"] = binding_message
    if user_code is not None:
        form["user_code"] = user_code.get_secret_value()
    if requested_expiry is not None:
        if isinstance(requested_expiry, bool) or not isinstance(requested_expiry, int):
            raise ConfigurationError("requested_expiry must be a whole number of seconds")
        if not 0 < requested_expiry <= _MAX_EXPIRES_IN:
            raise ConfigurationError("requested_expiry must be positive (seconds)")
        form["requested_expiry"] = str(requested_expiry)
    if acr_values:
        form["acr_values"] = " ".join(acr_values)
    if authorization_details:
        details: str | None = None
        try:
            details = json.dumps(
                [dict(detail) for detail in authorization_details],
                separators=(",", ":"),
                ensure_ascii=False,
                allow_nan=False,
            )
        except (ValueError, TypeError, RecursionError):
            details = None
        if details is None:  # raised outside the handler: no chained values
            raise ConfigurationError("authorization_details must be JSON objects (no NaN)")
        form["authorization_details"] = details
    if resource is not None:
        form["resource"] = resource
    if client_notification_token is not None:
        form["client_notification_token"] = _check_notification_token(client_notification_token)
    return token_request(endpoint, form, client_auth, issuer=issuer, now=now)


@dataclass(frozen=True, slots=True)
class BackchannelAuthentication:
    """A §7.3 acknowledgement. ``auth_req_id`` is not a credential (the token request
    also needs client authentication) but is kept out of ``repr`` and logs anyway."""

    auth_req_id: str
    expires_in: int
    interval: int = DEFAULT_INTERVAL

    def __repr__(self) -> str:
        return f"BackchannelAuthentication(expires_in={self.expires_in}, interval={self.interval})"


def parse_backchannel_response(response: HttpResponse) -> BackchannelAuthentication:
    """Parse a §7.3 response, or raise the §13 error as a typed
    :class:`~agent_identity.errors.OAuthError` (``unknown_user_id``,
    ``unauthorized_client``, ``access_denied``, ...). Unknown members are ignored."""
    if response.status_code != 200:
        raise parse_oauth_error(response)
    data = parse_json_object(response.content, what="backchannel authentication response")
    auth_req_id = data.get("auth_req_id")
    if (
        not isinstance(auth_req_id, str)
        or not 0 < len(auth_req_id) <= _MAX_AUTH_REQ_ID
        or not auth_req_id.isascii()
        or not auth_req_id.isprintable()
    ):
        raise InvalidResponse("backchannel authentication response: invalid auth_req_id")
    if "expires_in" not in data:
        raise InvalidResponse("backchannel authentication response: missing expires_in")
    # The bounded-number rule (:mod:`._limits`): JSON ``true`` is not a number of seconds;
    # 5.0 is accepted, 5.5 is not; a lifetime beyond a year is read as a year.
    expires_in = bounded_int(
        data["expires_in"],
        "backchannel authentication response: expires_in",
        minimum=1,
        maximum=MAX_LIFETIME,
        over="clamp",
    )
    interval = DEFAULT_INTERVAL
    if data.get("interval") is not None:
        interval = bounded_int(
            data["interval"],
            "backchannel authentication response: interval",
            minimum=1,
            maximum=MAX_INTERVAL,
            over="refuse",
        )
    return BackchannelAuthentication(auth_req_id, expires_in, interval)


def ciba_token_request(
    endpoint: str,
    *,
    auth_req_id: str,
    client_auth: ClientAuthentication,
    issuer: str,
    now: float,
) -> HttpRequest:
    """§10.1 token request (poll, and ping after the notification)."""
    form = {"grant_type": CIBA_GRANT_TYPE, "auth_req_id": auth_req_id}
    return token_request(endpoint, form, client_auth, issuer=issuer, now=now)


@dataclass
class CibaPoller:
    """Polling state of one CIBA request, in seconds of a monotonic clock.

    ``ready_at`` is the earliest moment of the next poll (the previous answer plus
    ``interval``); ``deadline`` is when the request expires. In ping mode the driver may
    ask for the token as soon as a valid notification arrived (§10.2), and polls at
    ``interval`` only as a fallback.
    """

    interval: float
    deadline: float
    ready_at: float

    @classmethod
    def start(cls, acknowledgement: BackchannelAuthentication, *, now: float) -> CibaPoller:
        interval = float(acknowledgement.interval)
        return cls(
            interval=interval, deadline=now + acknowledgement.expires_in, ready_at=now + interval
        )

    @classmethod
    def resume(cls, *, interval: float, remaining: float, now: float) -> CibaPoller:
        """Continue a request persisted earlier: ``remaining`` seconds until it expires."""
        return cls(interval=interval, deadline=now + remaining, ready_at=now + interval)

    def expired(self, now: float) -> bool:
        return now >= self.deadline

    def next_wait(self, now: float) -> float:
        """Seconds to wait before the next poll; raises :class:`ApprovalExpired` when the
        next poll would fall at or after the expiry (no poll after ``expires_in``)."""
        if self.ready_at >= self.deadline or self.expired(now):
            raise ApprovalExpired("nobody approved the request before it expired")
        return max(0.0, self.ready_at - now)

    def check_can_poll(self, now: float) -> None:
        """Raise :class:`ApprovalExpired` if the request has expired (used before a token
        request that follows a ping, which is not bound to ``interval``)."""
        if self.expired(now):
            raise ApprovalExpired("nobody approved the request before it expired")

    def handle(self, response: HttpResponse, *, now: float) -> TokenResponse | Literal["pending"]:
        """Interpret one token endpoint answer (§11, §13)."""
        if response.status_code == 200:
            return parse_token_response(response)
        error = parse_oauth_error(response)
        if not isinstance(error, OAuthError):
            raise error
        if error.error == "authorization_pending":
            self.ready_at = now + self.interval
            return "pending"
        if error.error == "slow_down":
            self.interval += SLOW_DOWN_INCREMENT
            self.ready_at = now + self.interval
            return "pending"
        if isinstance(error, AccessDenied):
            raise ApprovalDenied("the user denied the approval request") from error
        if isinstance(error, ExpiredToken):
            raise ApprovalExpired("the approval request expired before it was approved") from error
        if isinstance(error, InvalidGrant):
            raise ApprovalExpired(
                "the authorization server no longer accepts this approval request "
                "(invalid_grant); ask again"
            ) from error
        raise error


def parse_ping_notification(content: bytes) -> str:
    """The ``auth_req_id`` of a §10.2 ping callback body, or :class:`InvalidResponse`."""
    data = parse_json_object(content, what="ping notification")
    auth_req_id = data.get("auth_req_id")
    if (
        not isinstance(auth_req_id, str)
        or not 0 < len(auth_req_id) <= _MAX_AUTH_REQ_ID
        or not auth_req_id.isascii()
        or not auth_req_id.isprintable()
    ):
        raise InvalidResponse("ping notification: invalid auth_req_id")
    return auth_req_id


def check_notification_bearer(authorization: str | None, expected: SecretStr) -> bool:
    """Whether an ``Authorization`` header carries ``Bearer <expected>`` (§10.2), compared
    in constant time (security item 44). The scheme is case-insensitive (RFC 7235 §2.1)."""
    if authorization is None:
        return False
    scheme, _, presented = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    # ``surrogatepass``: any str (even one holding a lone surrogate) has bytes to compare.
    presented_bytes = presented.strip().encode("utf-8", "surrogatepass")
    expected_bytes = expected.get_secret_value().encode("utf-8")
    return hmac.compare_digest(presented_bytes, expected_bytes)
