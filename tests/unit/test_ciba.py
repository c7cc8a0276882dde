"""OpenID CIBA Core 1.0, sans-IO (agent_identity.oauth.ciba): security items 41-44."""

from __future__ import annotations

import base64
import contextlib
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr

from agent_identity.errors import (
    ApprovalDenied,
    ApprovalExpired,
    ConfigurationError,
    InvalidClient,
    InvalidResponse,
    OAuthError,
)
from agent_identity.oauth import ciba
from agent_identity.oauth._message import HttpResponse
from agent_identity.oauth.client_auth import ClientSecretBasic, NoClientAuth

ENDPOINT = "https://as.example/bc-authorize"
ISSUER = "https://as.example"
AUTH = ClientSecretBasic("agent", SecretStr("s3cret-client"))


def request(**kwargs: Any) -> Any:
    kwargs.setdefault("client_auth", AUTH)
    kwargs.setdefault("issuer", ISSUER)
    kwargs.setdefault("now", 1_700_000_000.0)
    if not {"login_hint", "id_token_hint", "login_hint_token"} & kwargs.keys():
        kwargs["login_hint"] = "alice"
    return ciba.backchannel_authentication_request(ENDPOINT, **kwargs)


def json_response(status: int, body: dict[str, Any]) -> HttpResponse:
    return HttpResponse(status, {"content-type": "application/json"}, json.dumps(body).encode())


# -- security 41: the request ----------------------------------------------------------------


def test_sec_41_scope_always_contains_openid_once() -> None:
    assert request(scopes=["payments.write"]).form["scope"] == "openid payments.write"
    assert request(scopes=["payments.write", "openid"]).form["scope"] == "openid payments.write"
    assert request().form["scope"] == "openid"


@pytest.mark.parametrize(
    "hints",
    [
        {},
        {"login_hint": "alice", "id_token_hint": SecretStr("eyJ.x.y")},
        {"login_hint": "alice", "login_hint_token": SecretStr("t")},
        {"id_token_hint": SecretStr("eyJ.x.y"), "login_hint_token": SecretStr("t")},
        {"login_hint": ""},
    ],
)
def test_sec_41_exactly_one_hint(hints: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError, match="exactly one"):
        ciba.backchannel_authentication_request(
            ENDPOINT, client_auth=AUTH, issuer=ISSUER, now=0.0, **hints
        )


@pytest.mark.parametrize("hint", ["login_hint", "id_token_hint", "login_hint_token"])
def test_sec_41_each_hint_alone_is_sent(hint: str) -> None:
    value: Any = "alice" if hint == "login_hint" else SecretStr("opaque-hint")
    built = ciba.backchannel_authentication_request(
        ENDPOINT, client_auth=AUTH, issuer=ISSUER, now=0.0, **{hint: value}
    )
    assert built.form[hint] in ("alice", "opaque-hint")
    assert {"login_hint", "id_token_hint", "login_hint_token"} & set(built.form) == {hint}


def test_sec_41_client_authentication_required() -> None:
    with pytest.raises(ConfigurationError, match="client authentication"):
        request(client_auth=NoClientAuth("agent"))
    built = request()
    expected = base64.b64encode(b"agent:s3cret-client").decode()
    assert built.headers["Authorization"] == f"Basic {expected}"
    assert built.method == "POST"
    assert built.idempotent is False


def test_sec_41_optional_parameters() -> None:
    details = [{"type": "agent_action", "tool": "pay", "arguments": {"amount": "1 €"}}]
    built = request(
        binding_message="pay 1 € · K7Q2",
        user_code=SecretStr("1234"),
        requested_expiry=120,
        acr_values=["urn:mfa", "phr"],
        authorization_details=details,
        resource="https://payments.example/api",
    )
    form = built.form
    assert form["binding_message"] == "pay 1 € · K7Q2"
    assert form["user_code"] == "1234"
    assert form["requested_expiry"] == "120"
    assert form["acr_values"] == "urn:mfa phr"
    assert json.loads(form["authorization_details"]) == details
    assert form["resource"] == "https://payments.example/api"
    assert "client_notification_token" not in form
    assert "1234" not in repr(built)


@pytest.mark.parametrize("message", ["", "pay\nnow", "a\x1b[31mb", "x\x85y"])
def test_sec_41_binding_message_must_be_printable(message: str) -> None:
    with pytest.raises(ConfigurationError):
        request(binding_message=message)


@pytest.mark.parametrize("expiry", [0, -1, True, 1.5])
def test_sec_41_requested_expiry_is_positive_whole_seconds(expiry: Any) -> None:
    with pytest.raises(ConfigurationError):
        request(requested_expiry=expiry)


def test_sec_41_notification_token_has_128_bits_at_least() -> None:
    token = ciba.new_notification_token()
    assert len(token.get_secret_value()) >= 43  # 32 random bytes, base64url
    assert token.get_secret_value() != ciba.new_notification_token().get_secret_value()
    built = request(client_notification_token=token)
    assert built.form["client_notification_token"] == token.get_secret_value()
    assert token.get_secret_value() not in repr(built)
    for weak in ("short", "x" * 21, "has space" * 4, "é" * 30):
        with pytest.raises(ConfigurationError):
            request(client_notification_token=SecretStr(weak))


def test_no_endpoint_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="backchannel_authentication_endpoint"):
        ciba.backchannel_authentication_request(
            None, client_auth=AUTH, issuer=ISSUER, now=0.0, login_hint="alice"
        )


# -- security 42: the acknowledgement --------------------------------------------------------


def test_sec_42_auth_req_id_and_expires_in_required_interval_defaults_to_5() -> None:
    ack = ciba.parse_backchannel_response(
        json_response(200, {"auth_req_id": "abc", "expires_in": 120, "extra": [1]})
    )
    assert (ack.auth_req_id, ack.expires_in, ack.interval) == ("abc", 120, 5)
    assert "abc" not in repr(ack)
    ack = ciba.parse_backchannel_response(
        json_response(200, {"auth_req_id": "abc", "expires_in": 120, "interval": 2})
    )
    assert ack.interval == 2


@pytest.mark.parametrize(
    "body",
    [
        {"expires_in": 120},
        {"auth_req_id": "abc"},
        {"auth_req_id": "", "expires_in": 120},
        {"auth_req_id": 7, "expires_in": 120},
        {"auth_req_id": "abc", "expires_in": 0},
        {"auth_req_id": "abc", "expires_in": True},
        {"auth_req_id": "abc", "expires_in": "120"},
        {"auth_req_id": "abc", "expires_in": 1.5},
        {"auth_req_id": "abc", "expires_in": 120, "interval": 0},
        {"auth_req_id": "abc", "expires_in": 120, "interval": False},
        {"auth_req_id": "a\nb", "expires_in": 120},
    ],
)
def test_sec_42_invalid_acknowledgements_are_refused(body: dict[str, Any]) -> None:
    with pytest.raises(InvalidResponse):
        ciba.parse_backchannel_response(json_response(200, body))


def test_sec_42_error_responses_are_typed() -> None:
    with pytest.raises(OAuthError) as info:
        ciba.parse_backchannel_response(json_response(400, {"error": "unknown_user_id"}))
    assert info.value.error == "unknown_user_id"
    with pytest.raises(InvalidClient):
        ciba.parse_backchannel_response(json_response(401, {"error": "invalid_client"}))


@given(st.binary(max_size=300))
def test_acknowledgement_parser_never_crashes(content: bytes) -> None:
    with contextlib.suppress(InvalidResponse):
        ciba.parse_backchannel_response(HttpResponse(200, {}, content))


@given(
    st.dictionaries(
        st.sampled_from(["auth_req_id", "expires_in", "interval", "x"]),
        st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20)),
    )
)
def test_acknowledgement_parser_on_arbitrary_members(body: dict[str, Any]) -> None:
    try:
        ack = ciba.parse_backchannel_response(HttpResponse(200, {}, json.dumps(body).encode()))
    except InvalidResponse:
        return
    assert ack.expires_in > 0
    assert ack.interval >= 1
    assert ack.auth_req_id


# -- security 43: polling --------------------------------------------------------------------


def ack(expires_in: int = 60, interval: int = 5) -> ciba.BackchannelAuthentication:
    return ciba.BackchannelAuthentication("req-1", expires_in, interval)


def error(code: str, status: int = 400) -> HttpResponse:
    return json_response(status, {"error": code})


def test_sec_43_pending_keeps_polling_at_interval() -> None:
    poller = ciba.CibaPoller.start(ack(interval=5), now=100.0)
    assert poller.next_wait(100.0) == 5.0
    assert poller.handle(error("authorization_pending"), now=105.0) == "pending"
    assert poller.next_wait(105.0) == 5.0
    assert poller.next_wait(107.0) == 3.0


def test_sec_43_slow_down_adds_5_seconds_to_this_and_later_intervals() -> None:
    poller = ciba.CibaPoller.start(ack(expires_in=600, interval=2), now=0.0)
    assert poller.handle(error("slow_down"), now=2.0) == "pending"
    assert poller.next_wait(2.0) == 7.0
    assert poller.handle(error("authorization_pending"), now=9.0) == "pending"
    assert poller.next_wait(9.0) == 7.0  # for good
    assert poller.handle(error("slow_down"), now=16.0) == "pending"
    assert poller.next_wait(16.0) == 12.0


@pytest.mark.parametrize(
    ("code", "raised"),
    [
        ("access_denied", ApprovalDenied),
        ("expired_token", ApprovalExpired),
        ("invalid_grant", ApprovalExpired),
    ],
)
def test_sec_43_final_errors_end_at_once(code: str, raised: type[Exception]) -> None:
    poller = ciba.CibaPoller.start(ack(), now=0.0)
    with pytest.raises(raised):
        poller.handle(error(code), now=5.0)


def test_sec_43_other_errors_propagate() -> None:
    poller = ciba.CibaPoller.start(ack(), now=0.0)
    with pytest.raises(InvalidClient):
        poller.handle(error("invalid_client", 401), now=5.0)
    with pytest.raises(InvalidResponse):
        poller.handle(HttpResponse(500, {}, b"<html>"), now=5.0)


def test_sec_43_no_poll_after_expiry() -> None:
    poller = ciba.CibaPoller.start(ack(expires_in=12, interval=5), now=0.0)
    assert poller.next_wait(0.0) == 5.0
    poller.handle(error("authorization_pending"), now=5.0)
    assert poller.next_wait(5.0) == 5.0  # poll at 10 < 12
    poller.handle(error("authorization_pending"), now=10.0)
    with pytest.raises(ApprovalExpired):
        poller.next_wait(10.0)  # a poll at 15 would be after the expiry
    with pytest.raises(ApprovalExpired):
        poller.check_can_poll(12.0)
    poller.check_can_poll(11.9)


def test_sec_43_success_returns_the_token_response() -> None:
    poller = ciba.CibaPoller.start(ack(), now=0.0)
    outcome = poller.handle(
        json_response(200, {"access_token": "at-1", "token_type": "Bearer", "expires_in": 60}),
        now=5.0,
    )
    assert outcome != "pending"
    assert outcome.access_token.get_secret_value() == "at-1"


def test_token_request_form() -> None:
    built = ciba.ciba_token_request(
        "https://as.example/token", auth_req_id="req-1", client_auth=AUTH, issuer=ISSUER, now=0.0
    )
    assert built.form == {"grant_type": ciba.CIBA_GRANT_TYPE, "auth_req_id": "req-1"}
    assert "Authorization" in built.headers


# -- security 44: the ping callback ----------------------------------------------------------


def test_sec_44_ping_body() -> None:
    assert ciba.parse_ping_notification(b'{"auth_req_id": "req-1"}') == "req-1"
    for bad in (b"", b"[]", b'{"auth_req_id": 1}', b'{"auth_req_id": ""}', b"{", b"\xff"):
        with pytest.raises(InvalidResponse):
            ciba.parse_ping_notification(bad)


@given(st.binary(max_size=200))
def test_ping_body_parser_never_crashes(content: bytes) -> None:
    with contextlib.suppress(InvalidResponse):
        assert ciba.parse_ping_notification(content)


def test_sec_44_bearer_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = ciba.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(ciba.hmac, "compare_digest", spy)
    token = SecretStr("T" * 43)
    assert ciba.check_notification_bearer("Bearer " + "T" * 43, token)
    assert ciba.check_notification_bearer("bearer " + "T" * 43, token)
    assert not ciba.check_notification_bearer("Bearer " + "T" * 42 + "U", token)
    assert not ciba.check_notification_bearer("Bearer", token)
    assert len(calls) == 4
    assert not ciba.check_notification_bearer(None, token)
    assert not ciba.check_notification_bearer("Basic " + "T" * 43, token)


@given(st.text(max_size=80))
def test_bearer_check_never_crashes(header: str) -> None:
    token = SecretStr("k" * 43)
    scheme, _, rest = header.strip().partition(" ")
    expected = scheme.lower() == "bearer" and rest.strip() == "k" * 43
    assert ciba.check_notification_bearer(header, token) == expected
