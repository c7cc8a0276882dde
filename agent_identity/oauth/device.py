"""OAuth 2.0 Device Authorization Grant (RFC 8628) for headless agents.

- §3.1/§3.2: the device authorization request and response (``interval`` defaults to 5 s);
- §3.4/§3.5: polling the token endpoint: ``authorization_pending`` keeps polling,
  ``slow_down`` adds 5 seconds to this and every later interval, ``access_denied`` and
  ``expired_token`` end the flow; no poll is sent after ``expires_in``.

:class:`DevicePoller` is the pure polling state machine: the I/O driver asks it how long
to wait, sends the request it builds and feeds the response back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from agent_identity.errors import (
    AccessDenied,
    ConfigurationError,
    ConsentDenied,
    ConsentTimeout,
    ExpiredToken,
    InvalidResponse,
    OAuthError,
)
from agent_identity.models import DeviceAuthorization, TokenResponse
from agent_identity.oauth._json import parse_json_object
from agent_identity.oauth._message import HttpRequest, HttpResponse
from agent_identity.oauth.client_auth import ClientAuthentication
from agent_identity.oauth.token import (
    invalid_fields,
    parse_oauth_error,
    parse_token_response,
    token_request,
)

__all__ = [
    "SLOW_DOWN_INCREMENT",
    "DevicePoller",
    "device_authorization_request",
    "parse_device_authorization",
]

SLOW_DOWN_INCREMENT = 5.0


def device_authorization_request(
    endpoint: str | None,
    *,
    client_auth: ClientAuthentication,
    issuer: str,
    now: float,
    scopes: Sequence[str] = (),
    resource: str | None = None,
    resources: Sequence[str] = (),
    client_id: str | None = None,
) -> HttpRequest:
    """RFC 8628 §3.1 device authorization request (``resource`` repeats for several
    resources, RFC 8707 §2). ``client_id`` is sent in the form also when the client
    authenticates otherwise (allowed, and some servers require it there)."""
    if endpoint is None:
        raise ConfigurationError(
            f"authorization server {issuer!r} has no device_authorization_endpoint"
        )
    form: dict[str, str | list[str]] = {}
    if client_id is not None:
        form["client_id"] = client_id
    if scopes:
        form["scope"] = " ".join(scopes)
    wanted = [*([resource] if resource is not None else []), *resources]
    if wanted:
        form["resource"] = wanted[0] if len(wanted) == 1 else wanted
    return token_request(endpoint, form, client_auth, issuer=issuer, now=now)


def parse_device_authorization(response: HttpResponse) -> DeviceAuthorization:
    """RFC 8628 §3.2; raises the typed OAuth error for §3.2 error responses."""
    if response.status_code != 200:
        raise parse_oauth_error(response)
    data = parse_json_object(response.content, what="device authorization response")
    fields = invalid_fields(DeviceAuthorization, data)
    if fields is None:
        return DeviceAuthorization.model_validate(data)
    raise InvalidResponse(
        f"device authorization response is missing or has invalid members: {', '.join(fields)}"
    )


@dataclass
class DevicePoller:
    """Polling state for one device authorization (monotonic clock seconds)."""

    interval: float
    deadline: float

    @classmethod
    def start(cls, authorization: DeviceAuthorization, *, now: float) -> DevicePoller:
        return cls(interval=float(authorization.interval), deadline=now + authorization.expires_in)

    def next_wait(self, now: float) -> float:
        """Seconds to wait before the next poll; raises :class:`ConsentTimeout` when the next
        poll would fall after the device code expired."""
        if now + self.interval >= self.deadline:
            raise ConsentTimeout("the device code expired before the user approved it")
        return self.interval

    def handle(self, response: HttpResponse) -> TokenResponse | Literal["pending"]:
        """Interpret one poll response."""
        if response.status_code == 200:
            return parse_token_response(response)
        error = parse_oauth_error(response)
        if not isinstance(error, OAuthError):
            raise error
        if error.error == "authorization_pending":
            return "pending"
        if error.error == "slow_down":
            self.interval += SLOW_DOWN_INCREMENT
            return "pending"
        if isinstance(error, AccessDenied):
            raise ConsentDenied("the user denied the device authorization request") from error
        if isinstance(error, ExpiredToken):
            raise ConsentTimeout("the device code expired before the user approved it") from error
        raise error
