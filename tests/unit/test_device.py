"""Device Authorization Grant (agent_identity.oauth.device, RFC 8628): §3.1-3.5 and
security item 39 (monotonic time only)."""

from __future__ import annotations

import contextlib
import json
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from agent_identity.errors import (
    AgentIdentityError,
    ConfigurationError,
    ConsentDenied,
    ConsentTimeout,
    InvalidClient,
    InvalidGrant,
    InvalidResponse,
    InvalidScope,
    OAuthError,
)
from agent_identity.models import DeviceAuthorization, TokenResponse
from agent_identity.oauth._message import HttpResponse
from agent_identity.oauth.client_auth import ClientSecretBasic, NoClientAuth
from agent_identity.oauth.device import (
    SLOW_DOWN_INCREMENT,
    DevicePoller,
    device_authorization_request,
    parse_device_authorization,
)

ISSUER = "https://as.example"
ENDPOINT = "https://as.example/device"


def _json(status: int, body: Any) -> HttpResponse:
    return HttpResponse(status, {"content-type": "application/json"}, json.dumps(body).encode())


def _authorization(**extra: Any) -> DeviceAuthorization:
    body: dict[str, Any] = {
        "device_code": "CANARY-DEVICE-CODE",
        "user_code": "WDJB-MJHT",
        "verification_uri": "https://as.example/device",
        "expires_in": 1800,
    }
    body.update(extra)
    return parse_device_authorization(_json(200, body))


def _error(error: str, status: int = 400) -> HttpResponse:
    return _json(status, {"error": error})


_TOKEN = _json(200, {"access_token": "at", "token_type": "Bearer", "expires_in": 60})


# --- device authorization request / response ------------------------------------------------


def test_device_authorization_request() -> None:
    request = device_authorization_request(
        ENDPOINT,
        client_auth=NoClientAuth("agent"),
        issuer=ISSUER,
        now=0.0,
        scopes=("openid", "offline_access"),
        resource="https://api.example/",
    )
    assert request.method == "POST"
    assert request.url == ENDPOINT
    assert dict(request.form or {}) == {
        "scope": "openid offline_access",
        "resource": "https://api.example/",
        "client_id": "agent",
    }
    assert request.idempotent is False


def test_device_authorization_request_with_secret_and_no_scope() -> None:
    request = device_authorization_request(
        ENDPOINT, client_auth=ClientSecretBasic("agent", SecretStr("pw")), issuer=ISSUER, now=0.0
    )
    assert dict(request.form or {}) == {}
    assert request.headers["Authorization"].startswith("Basic ")


def test_device_authorization_request_without_endpoint() -> None:
    with pytest.raises(ConfigurationError):
        device_authorization_request(None, client_auth=NoClientAuth("a"), issuer=ISSUER, now=0)


def test_parse_device_authorization() -> None:
    auth = _authorization(
        verification_uri_complete="https://as.example/device?user_code=WDJB-MJHT",
        interval=7,
        unknown_member={"x": 1},
    )
    assert auth.device_code.get_secret_value() == "CANARY-DEVICE-CODE"
    assert auth.user_code == "WDJB-MJHT"
    assert auth.verification_uri == "https://as.example/device"
    assert auth.verification_uri_complete == "https://as.example/device?user_code=WDJB-MJHT"
    assert auth.expires_in == 1800
    assert auth.interval == 7


def test_interval_defaults_to_5() -> None:
    assert _authorization().interval == 5


def test_sec_40_device_code_not_in_repr() -> None:
    auth = _authorization()
    for text in (repr(auth), str(auth), auth.model_dump_json()):
        assert "CANARY-DEVICE-CODE" not in text


@pytest.mark.parametrize("missing", ["device_code", "user_code", "verification_uri", "expires_in"])
def test_missing_members_typed(missing: str) -> None:
    body: dict[str, Any] = {
        "device_code": "d",
        "user_code": "u",
        "verification_uri": "https://as.example/device",
        "expires_in": 600,
    }
    del body[missing]
    with pytest.raises(InvalidResponse, match=missing):
        parse_device_authorization(_json(200, body))


@pytest.mark.parametrize(
    "extra",
    [
        {"expires_in": 0},
        {"expires_in": -5},
        {"expires_in": "soon"},
        {"expires_in": True},
        {"interval": 0},
        {"interval": True},
        {"interval": 2.5},
        {"device_code": 5},
        {"user_code": None},
    ],
)
def test_mistyped_members_typed(extra: dict[str, Any]) -> None:
    with pytest.raises(InvalidResponse):
        _authorization(**extra)


@pytest.mark.parametrize(
    ("status", "error", "cls"),
    [(400, "invalid_client", InvalidClient), (400, "invalid_scope", InvalidScope)],
)
def test_device_authorization_errors_typed(status: int, error: str, cls: type[OAuthError]) -> None:
    with pytest.raises(cls) as info:
        parse_device_authorization(_error(error, status))
    assert info.value.status_code == status


@pytest.mark.parametrize(
    ("status", "content"),
    [(500, b"<html>"), (200, b"not json"), (200, b"[]"), (200, b'{"a":1,"a":2}'), (400, b"{}")],
)
def test_device_authorization_garbage_typed(status: int, content: bytes) -> None:
    with pytest.raises(InvalidResponse):
        parse_device_authorization(HttpResponse(status, {}, content))


# --- DevicePoller ----------------------------------------------------------------------------


def test_poller_start_uses_interval_and_expiry() -> None:
    poller = DevicePoller.start(_authorization(interval=3, expires_in=100), now=500.0)
    assert poller.interval == 3.0
    assert poller.deadline == 600.0
    assert poller.next_wait(500.0) == 3.0


def test_pending_keeps_polling() -> None:
    poller = DevicePoller.start(_authorization(), now=0.0)
    for i in range(20):
        assert poller.handle(_error("authorization_pending")) == "pending"
        assert poller.next_wait(float(i * 5)) == 5.0


def test_success_returns_token() -> None:
    poller = DevicePoller.start(_authorization(), now=0.0)
    assert poller.handle(_error("authorization_pending")) == "pending"
    token = poller.handle(_TOKEN)
    assert isinstance(token, TokenResponse)
    assert token.access_token.get_secret_value() == "at"


def test_slow_down_adds_5_seconds_to_this_and_later_intervals() -> None:
    assert SLOW_DOWN_INCREMENT == 5.0
    poller = DevicePoller.start(_authorization(interval=5), now=0.0)
    assert poller.handle(_error("slow_down")) == "pending"
    assert poller.next_wait(0.0) == 10.0
    assert poller.handle(_error("authorization_pending")) == "pending"
    assert poller.next_wait(10.0) == 10.0  # later intervals keep the increase
    assert poller.handle(_error("slow_down")) == "pending"
    assert poller.next_wait(20.0) == 15.0  # twice: +10


def test_slow_down_with_http_429_or_401_body() -> None:
    poller = DevicePoller.start(_authorization(interval=2), now=0.0)
    assert poller.handle(_error("slow_down", 429)) == "pending"
    assert poller.next_wait(0.0) == 7.0


def test_access_denied_is_consent_denied() -> None:
    poller = DevicePoller.start(_authorization(), now=0.0)
    with pytest.raises(ConsentDenied):
        poller.handle(_error("access_denied"))


def test_expired_token_is_consent_timeout() -> None:
    poller = DevicePoller.start(_authorization(), now=0.0)
    with pytest.raises(ConsentTimeout):
        poller.handle(_error("expired_token"))


@pytest.mark.parametrize(
    ("error", "cls"), [("invalid_grant", InvalidGrant), ("invalid_client", InvalidClient)]
)
def test_other_errors_end_polling_typed(error: str, cls: type[OAuthError]) -> None:
    poller = DevicePoller.start(_authorization(), now=0.0)
    with pytest.raises(cls):
        poller.handle(_error(error))


@pytest.mark.parametrize("content", [b"<html>", b"", b'{"error": 5}', b'{"e":1,"e":2}'])
def test_garbage_poll_response_typed(content: bytes) -> None:
    poller = DevicePoller.start(_authorization(), now=0.0)
    with pytest.raises(InvalidResponse):
        poller.handle(HttpResponse(400, {}, content))


def test_no_poll_scheduled_after_expiry() -> None:
    poller = DevicePoller.start(_authorization(interval=5, expires_in=30), now=100.0)
    assert poller.next_wait(100.0) == 5.0
    assert poller.next_wait(124.0) == 5.0  # next poll at 129 < 130
    with pytest.raises(ConsentTimeout):
        poller.next_wait(125.0)  # next poll would be at the deadline
    with pytest.raises(ConsentTimeout):
        poller.next_wait(131.0)  # already past


def test_slow_down_can_push_next_poll_past_expiry() -> None:
    poller = DevicePoller.start(_authorization(interval=5, expires_in=30), now=0.0)
    assert poller.next_wait(20.0) == 5.0
    poller.handle(_error("slow_down"))
    with pytest.raises(ConsentTimeout):
        poller.next_wait(20.0)  # 20 + 10 >= 30


def _drive(poller: DevicePoller, start: float, responses: list[HttpResponse]) -> list[float]:
    """Run the poll loop the way the I/O driver does, on a simulated monotonic clock."""
    now = start
    waits: list[float] = []
    for response in responses:
        wait = poller.next_wait(now)
        waits.append(wait)
        now += wait
        if poller.handle(response) != "pending":
            break
    return waits


def test_sec_39_poller_only_uses_the_now_it_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden() -> float:
        raise AssertionError("the poller must not read a clock by itself")

    monkeypatch.setattr(time, "time", forbidden)
    monkeypatch.setattr(time, "monotonic", forbidden)
    monkeypatch.setattr(time, "perf_counter", forbidden)
    script = [
        _error("authorization_pending"),
        _error("slow_down"),
        _error("authorization_pending"),
        _TOKEN,
    ]
    waits = _drive(DevicePoller.start(_authorization(), now=12.5), 12.5, script)
    assert waits == [5.0, 5.0, 10.0, 10.0]


@pytest.mark.parametrize("wall_shift", [-600.0, 0.0, 600.0])
def test_sec_39_wall_clock_shift_changes_nothing(
    monkeypatch: pytest.MonkeyPatch, wall_shift: float
) -> None:
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + wall_shift)
    poller = DevicePoller.start(_authorization(interval=5, expires_in=20), now=1000.0)
    waits = _drive(poller, 1000.0, [_error("authorization_pending")] * 3)
    assert waits == [5.0, 5.0, 5.0]
    with pytest.raises(ConsentTimeout):
        poller.next_wait(1015.0)


def test_sec_39_monotonic_origin_irrelevant() -> None:
    # a monotonic clock may start anywhere (even negative); only differences matter
    for origin in (-1e6, 0.0, 3.7e9):
        poller = DevicePoller.start(_authorization(interval=5, expires_in=12), now=origin)
        assert poller.next_wait(origin) == 5.0
        assert poller.next_wait(origin + 6.0) == 5.0
        with pytest.raises(ConsentTimeout):
            poller.next_wait(origin + 7.0)


# --- hypothesis --------------------------------------------------------------------------

_values = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30)
_members = st.sampled_from(
    [
        "device_code",
        "user_code",
        "verification_uri",
        "verification_uri_complete",
        "expires_in",
        "interval",
        "error",
        "x",
    ]
)


@given(st.sampled_from([200, 400, 401, 500]), st.dictionaries(_members, _values, max_size=7))
@settings(max_examples=200, deadline=None)
def test_parse_device_authorization_fuzz_objects(status: int, body: dict[str, Any]) -> None:
    try:
        auth = parse_device_authorization(_json(status, body))
    except AgentIdentityError:
        return
    assert status == 200
    assert auth.expires_in > 0
    assert auth.interval >= 1
    assert auth.device_code.get_secret_value() == body["device_code"]


@given(st.binary(max_size=200))
@settings(max_examples=200, deadline=None)
def test_parse_device_authorization_fuzz_bytes(content: bytes) -> None:
    with contextlib.suppress(AgentIdentityError):
        parse_device_authorization(HttpResponse(200, {}, content))


@given(
    st.lists(st.sampled_from(["authorization_pending", "slow_down"]), min_size=1, max_size=30),
    st.integers(1, 30),
)
@settings(max_examples=200, deadline=None)
def test_poller_interval_never_decreases(errors: list[str], interval: int) -> None:
    poller = DevicePoller.start(_authorization(interval=interval, expires_in=10**6), now=0.0)
    previous = poller.interval
    for error in errors:
        assert poller.handle(_error(error)) == "pending"
        assert poller.interval >= previous
        previous = poller.interval
    assert poller.interval == interval + SLOW_DOWN_INCREMENT * errors.count("slow_down")
