"""The bounded-number and text-sanity rules at the parsing boundary (issue 12, items 7-8;
security items 4 and 40): every parser of server input gives a typed error, never
``OverflowError``, ``ValueError`` or ``UnicodeEncodeError``, and an access token that
could not go into an ``Authorization`` header is refused when it is received."""

from __future__ import annotations

import json
from typing import Any

import pytest
from joserfc import jwt as jose_jwt
from joserfc.jwk import ECKey, KeySet

from agent_identity._limits import (
    MAX_EPOCH,
    MAX_INTERVAL,
    MAX_LIFETIME,
    MAX_TOKEN,
    bounded_int,
    check_access_token,
    display_text,
    numeric_date,
    parse_delta_seconds,
    sane_text,
)
from agent_identity.errors import (
    AgentIdentityError,
    AuthorizationResponseError,
    ConsentDenied,
    InvalidGrant,
    InvalidResponse,
    InvalidTokenError,
)
from agent_identity.oauth import authorize, ciba, device, registration
from agent_identity.oauth._json import parse_json_object
from agent_identity.oauth._message import HttpResponse
from agent_identity.oauth.jwt import parse_jwks, validate_id_token
from agent_identity.oauth.token import parse_token_response
from agent_identity.oauth.www_authenticate import parse_www_authenticate

HUGE = 10**400  # an integer of 401 digits: float(HUGE) raises OverflowError
CANARY = "CANARY-ACCESS-b64tok3n"


def _raw(status: int, content: bytes) -> HttpResponse:
    return HttpResponse(status, {"content-type": "application/json"}, content)


def _json(status: int, body: Any) -> HttpResponse:
    return _raw(status, json.dumps(body).encode())


def _token(**members: Any) -> dict[str, Any]:
    return {"access_token": "at", "token_type": "Bearer", **members}


def _typed(error: BaseException) -> None:
    """The error is the SDK's, and its message can be written anywhere (UTF-8)."""
    assert isinstance(error, AgentIdentityError)
    str(error).encode("utf-8")
    repr(error).encode("utf-8")


# -- the rules themselves -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, 0),
        (3600, 3600),
        (5.0, 5),
        (HUGE, MAX_LIFETIME),
        (1e300, MAX_LIFETIME),
        (MAX_LIFETIME + 1, MAX_LIFETIME),
        ("3600", 3600),
        ("0" * 5000 + "42", 42),
        ("9" * 5000, MAX_LIFETIME),
    ],
)
def test_bounded_int_accepts_and_clamps(value: object, expected: int) -> None:
    assert (
        bounded_int(value, "x", minimum=0, maximum=MAX_LIFETIME, over="clamp", strings=True)
        == expected
    )


@pytest.mark.parametrize(
    "value",
    [True, False, None, 1.5, float("nan"), float("inf"), -1, -HUGE, "\u00b2", "\u0663", "1e3",
     " 5", "-5", "", "5\x00", [5], {"n": 5}],
)  # fmt: skip
def test_bounded_int_refuses_what_is_not_a_whole_number(value: object) -> None:
    with pytest.raises(InvalidResponse) as info:
        bounded_int(value, "x", minimum=0, maximum=100, over="clamp", strings=True)
    _typed(info.value)


def test_bounded_int_refuses_above_the_maximum_when_asked_to() -> None:
    for value in (101, HUGE, 1e300, "9" * 5000):
        with pytest.raises(InvalidResponse):
            bounded_int(value, "x", minimum=0, maximum=100, over="refuse", strings=True)
    with pytest.raises(InvalidResponse):  # strings only where the caller allows them
        bounded_int("5", "x", minimum=0, maximum=100, over="clamp")


def test_numeric_date_bounds() -> None:
    assert numeric_date(1_750_000_000.5, "exp") == 1_750_000_000.5
    assert numeric_date(MAX_EPOCH, "exp") == MAX_EPOCH
    for bad in (HUGE, MAX_EPOCH + 1, -1, True, "1750000000", float("nan"), 1e300):
        with pytest.raises(InvalidResponse):
            numeric_date(bad, "exp")


def test_delta_seconds_are_ascii_digits_clamped() -> None:
    assert parse_delta_seconds("120") == 120
    assert parse_delta_seconds("9" * 5000) == MAX_LIFETIME
    for bad in ("\u00b2", "\u0661\u0662", "-1", "1.5", "", " 1"):
        assert parse_delta_seconds(bad) is None


def test_text_rules() -> None:
    assert sane_text("abc", "x") == "abc"
    for bad in ("a\r\nb", "a\x00", "\ud800", "a\x85b", "", 5):
        with pytest.raises(InvalidResponse):
            sane_text(bad, "x")
    assert sane_text("a b\tc", "scope", allow_whitespace=True) == "a b\tc"
    shown = display_text("bad \ud800 \x1b[31m text\n" + "x" * 2000)
    assert shown is not None
    shown.encode("utf-8")
    assert "\x1b" not in shown
    assert len(shown) <= 512


def test_json_boundary_refuses_lone_surrogates_anywhere() -> None:
    for body in (
        b'{"access_token": "\\ud800"}',
        b'{"unknown": ["\\udfff"]}',
        b'{"\\udc80": 1}',
        b'{"a": {"b": "x\\uDBFFy"}}',
    ):
        with pytest.raises(InvalidResponse) as info:
            parse_json_object(body)
        _typed(info.value)
    # a surrogate pair is one character and stays
    assert parse_json_object(b'{"a": "\\ud83d\\ude00"}') == {"a": "\U0001f600"}


# -- token responses ------------------------------------------------------------------------


def test_huge_expires_in_is_clamped_not_a_crash() -> None:
    body = b'{"access_token": "at", "token_type": "Bearer", "refresh_token": "rt", '
    token = parse_token_response(_raw(200, body + b'"expires_in": ' + b"9" * 400 + b"}"))
    assert token.expires_in == MAX_LIFETIME
    assert token.refresh_token is not None  # the rotated refresh token is kept
    assert parse_token_response(_json(200, _token(expires_in=1e300))).expires_in == MAX_LIFETIME
    assert parse_token_response(_json(200, _token(expires_in="3599"))).expires_in == 3599


@pytest.mark.parametrize("value", ["\u00b2", "\u0663\u0666", True, -1, 1.5, "1e3"])
def test_expires_in_that_is_not_a_number_is_refused(value: object) -> None:
    with pytest.raises(InvalidResponse, match="expires_in") as info:
        parse_token_response(_json(200, _token(expires_in=value)))
    _typed(info.value)


@pytest.mark.parametrize(
    "access_token",
    [
        f"{CANARY}\r\nX-Injected: 1",
        f"{CANARY}\n",
        f"{CANARY}\x00",
        f"{CANARY} extra",
        f'{CANARY}"',
        f"{CANARY},",
        f"é{CANARY}",
        f"{CANARY}=x",
        "",
        "x" * (64 * 1024 + 1),
    ],
)
def test_sec_40_access_token_outside_b64token_is_refused_without_echo(access_token: str) -> None:
    with pytest.raises(InvalidResponse, match="access_token") as info:
        parse_token_response(_json(200, _token(access_token=access_token)))
    error: BaseException | None = info.value
    _typed(info.value)
    while error is not None:  # nowhere in the chain of exceptions
        assert CANARY not in str(error)
        assert CANARY not in repr(error)
        error = error.__cause__ or error.__context__


def test_b64token_access_tokens_are_accepted() -> None:
    for value in ("abc", "a-b.c_d~e+f/g==", "eyJ.eyJ.sig", "A" * 4096):
        token = parse_token_response(_json(200, _token(access_token=value)))
        assert token.access_token.get_secret_value() == value


@pytest.mark.parametrize(
    "members",
    [
        {"refresh_token": "rt\r\nx"},
        {"refresh_token": "rt\x00"},
        {"id_token": "a.b.c\x07"},
        {"token_type": "Bearer\r\n"},
        {"scope": "read\x00write"},
    ],
)
def test_other_token_members_follow_the_text_rule(members: dict[str, str]) -> None:
    with pytest.raises(InvalidResponse) as info:
        parse_token_response(_json(200, _token(**members)))
    _typed(info.value)
    assert "rt" not in str(info.value).replace("refresh_token", "")


def test_error_response_with_garbage_text_is_typed_and_printable() -> None:
    body = {"error": "invalid_grant", "error_description": "bad \x1b[2J\u0085 " + "d" * 5000}
    with pytest.raises(InvalidGrant) as info:
        parse_token_response(_json(400, body))
    _typed(info.value)
    assert "\x1b" not in str(info.value)
    assert info.value.error_description is not None
    assert len(info.value.error_description) <= 512
    # a lone surrogate in the error body: not a document (I-JSON), still a typed error
    with pytest.raises(InvalidResponse) as refused:
        parse_token_response(
            _raw(400, b'{"error": "invalid_grant", "error_description": "\\ud800"}')
        )
    _typed(refused.value)
    # an error code with control characters is not an error code
    with pytest.raises(InvalidResponse):
        parse_token_response(_json(400, {"error": "invalid_grant\r\nx"}))


# -- device, CIBA, PAR, registration ----------------------------------------------------------


def _device(**members: Any) -> HttpResponse:
    body = {
        "device_code": "dc",
        "user_code": "WDJB-MJHT",
        "verification_uri": "https://as.example/device",
        "expires_in": 600,
        **members,
    }
    return _json(200, body)


def test_device_authorization_bounds() -> None:
    assert device.parse_device_authorization(_device(expires_in=HUGE)).expires_in == MAX_LIFETIME
    assert device.parse_device_authorization(_device(interval=MAX_INTERVAL)).interval == 3600
    for members in (
        {"interval": HUGE},
        {"interval": MAX_INTERVAL + 1},
        {"expires_in": "\u00b2"},
        {"interval": "\u0663"},
        {"user_code": "WDJB\x1b[2J"},
        {"verification_uri": "https://as.example/\r\n"},
        {"device_code": "dc\n"},
    ):
        with pytest.raises(InvalidResponse) as info:
            device.parse_device_authorization(_device(**members))
        _typed(info.value)


def test_ciba_acknowledgement_bounds() -> None:
    ack = ciba.parse_backchannel_response(_json(200, {"auth_req_id": "r", "expires_in": HUGE}))
    assert ack.expires_in == MAX_LIFETIME
    for members in ({"interval": HUGE}, {"interval": 1e300}, {"expires_in": -HUGE}):
        with pytest.raises(InvalidResponse):
            ciba.parse_backchannel_response(
                _json(200, {"auth_req_id": "r", "expires_in": 60, **members})
            )


def test_par_response_bounds() -> None:
    uri, expires_in = authorize.parse_par_response(
        _json(201, {"request_uri": "urn:x", "expires_in": HUGE})
    )
    assert (uri, expires_in) == ("urn:x", MAX_LIFETIME)
    for members in (
        {"request_uri": "urn:x", "expires_in": True},
        {"request_uri": "urn:x", "expires_in": 0},
        {"request_uri": "urn:x\r\n", "expires_in": 60},
        {"request_uri": "urn:x"},
    ):
        with pytest.raises(InvalidResponse):
            authorize.parse_par_response(_json(201, members))


def test_registration_client_secret_expires_at_bounds() -> None:
    def parse(members: dict[str, Any]) -> registration.ClientRegistration:
        body = {"client_id": "c1", "client_secret": "s", **members}
        return registration.parse_registration(_json(201, body), issuer="https://as.example")

    assert parse({"client_secret_expires_at": HUGE}).client_secret_expires_at == MAX_EPOCH
    assert parse({"client_secret_expires_at": 1e300}).client_secret_expires_at == MAX_EPOCH
    assert parse({"client_secret_expires_at": 1000.7}).client_secret_expires_at == 1000
    assert not parse({"client_secret_expires_at": HUGE}).expired(now=1e9)
    for members in (
        {"client_secret_expires_at": True},
        {"client_secret_expires_at": -1},
        {"client_secret_expires_at": "1000"},
        {"client_secret_expires_at": 0, "client_id": "c1\n"},
        {"client_secret_expires_at": 0, "client_secret": "s\x00"},
    ):
        with pytest.raises(InvalidResponse) as info:
            parse(members)
        _typed(info.value)


# -- JWT claims -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def signing_key() -> ECKey:
    return ECKey.generate_key("P-256", parameters={"kid": "k1"})


NOW = 1_750_000_000


def _id_token(key: ECKey, **claims: Any) -> str:
    body = {"iss": "https://as.example", "sub": "u1", "aud": "agent", "exp": NOW + 300,
            "iat": NOW, **claims}  # fmt: skip
    return jose_jwt.encode({"alg": "ES256", "kid": "k1"}, body, key, algorithms=["ES256"])


@pytest.mark.parametrize(
    "claims",
    [
        {"exp": HUGE},
        {"iat": HUGE},
        {"nbf": HUGE},
        {"auth_time": HUGE},
        {"auth_time": -HUGE},
        {"exp": MAX_EPOCH + 1},
        {"sub": "u1\r\n"},
        {"nonce": "n\x00"},
        {"aud": ["agent", "x\n"]},
    ],
)
def test_id_token_claims_out_of_bounds_are_invalid_tokens(
    signing_key: ECKey, claims: dict[str, Any]
) -> None:
    jwks: KeySet = parse_jwks({"keys": [signing_key.as_dict(private=False)]})
    token = _id_token(signing_key, **{"auth_time": NOW, **claims})
    with pytest.raises(InvalidTokenError) as info:
        validate_id_token(
            token,
            jwks=jwks,
            issuer="https://as.example",
            client_id="agent",
            nonce="n" if "nonce" in claims else None,
            now=NOW,
            max_age=600,
        )
    _typed(info.value)


# -- WWW-Authenticate and the callback --------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [("300", 300), ('"300"', 300), ("\u00b2", None), ("\u0663", None), ("9" * 500, MAX_LIFETIME),
     ("-5", None), ("", None)],
)  # fmt: skip
def test_challenge_max_age_is_bounded(value: str, expected: int | None) -> None:
    (challenge,) = parse_www_authenticate(
        f'Bearer error="insufficient_user_authentication", max_age={value}'
    )
    assert challenge.max_age == expected


def test_challenge_parameters_with_control_characters_are_dropped() -> None:
    (challenge,) = parse_www_authenticate('Bearer scope="a\x00b", error="x\ud800", realm="r"')
    assert challenge.get("scope") is None
    assert challenge.error is None
    assert challenge.get("realm") == "r"


def _pending_flow() -> tuple[authorize.PendingAuthorizations, authorize.PendingAuthorization]:
    from agent_identity.models import ServerMetadata

    metadata = ServerMetadata(
        issuer="https://as.example",
        authorization_endpoint="https://as.example/authorize",
        token_endpoint="https://as.example/token",
        code_challenge_methods_supported=("S256",),
    )
    pending, _ = authorize.start_authorization(
        metadata, client_id="agent", redirect_uri="http://127.0.0.1:1/cb", scopes=(), now=0.0
    )
    flows = authorize.PendingAuthorizations()
    flows.add(pending, now=0.0)
    return flows, pending


@pytest.mark.parametrize("code", ["c\r\nX: 1", "c\x00", "c\ud800"])
def test_callback_code_with_control_characters_is_refused(code: str) -> None:
    flows, pending = _pending_flow()
    callback = authorize.AuthorizationCallback({"state": pending.state, "code": code})
    with pytest.raises(AuthorizationResponseError) as info:
        authorize.validate_callback(callback, flows, now=1.0)
    _typed(info.value)


def test_callback_error_text_is_made_printable() -> None:
    flows, pending = _pending_flow()
    callback = authorize.AuthorizationCallback(
        {"state": pending.state, "error": "access_denied", "error_description": "no\ud800\x1b"}
    )
    with pytest.raises(ConsentDenied) as info:
        authorize.validate_callback(callback, flows, now=1.0)
    _typed(info.value)
    flows, pending = _pending_flow()
    callback = authorize.AuthorizationCallback({"state": pending.state, "error": "bad\r\nx"})
    with pytest.raises(AuthorizationResponseError) as refused:
        authorize.validate_callback(callback, flows, now=1.0)
    _typed(refused.value)


# -- through the public API: a huge lifetime in a refresh response loses nothing -------------


@pytest.mark.anyio
async def test_huge_expires_in_in_a_refresh_response_keeps_the_rotated_grant() -> None:
    """Issue 12 item 7: the rotated refresh token of such a response is stored and used
    (before: OverflowError after the rotation, and the grant was lost)."""
    import httpx2
    from test_client_faults import connected, consented, read_token

    async with connected() as setup:
        user = await consented(setup)

        async def rotated_with_huge_lifetime(request: httpx2.Request) -> httpx2.Response:
            setup.server.live_refresh_tokens.discard("RT-2")
            setup.server.live_refresh_tokens.add("RT-huge")
            body = (
                b'{"access_token": "AT-huge", "token_type": "Bearer", '
                b'"refresh_token": "RT-huge", "expires_in": ' + b"9" * 400 + b"}"
            )
            return httpx2.Response(200, content=body)

        setup.server.refresh_faults.append(rotated_with_huge_lifetime)
        assert await read_token(user) == "AT-huge"
        # another narrowed token needs another refresh: it goes out with the rotated token
        other = await user.token(resource=CALENDAR, scopes=["calendar.write"])
        assert other.value.get_secret_value().startswith("AT-")
        assert setup.server.refreshes() == ["RT-2", "RT-huge"]
        grant = await user.grant()
        assert grant is not None
        assert grant.has_refresh_token


CALENDAR = "https://calendar.example/api"


# -- exact boundaries (mutation testing: docs/security.md) -----------------------------------


def test_boundaries_are_exact() -> None:
    def clamp(value: object) -> int:
        return bounded_int(value, "x", minimum=0, maximum=1000, over="refuse", strings=True)

    assert clamp(1000) == 1000
    assert clamp(1000.0) == 1000
    assert clamp("0" * 30 + "999") == 999
    assert bounded_int("9" * 18, "x", minimum=0, maximum=10**18, over="refuse", strings=True) == (
        10**18 - 1
    )
    assert (
        bounded_int("9" * 19, "x", minimum=0, maximum=10**19, over="clamp", strings=True) == 10**19
    )
    assert parse_delta_seconds("9" * 18, maximum=10**18) == 10**18 - 1
    assert parse_delta_seconds("1" + "0" * 18, maximum=10**19) == 10**19
    assert numeric_date(0, "exp") == 0.0
    assert numeric_date(0.5, "exp") == 0.5
    assert sane_text("x" * 10, "x", max_length=10) == "x" * 10
    with pytest.raises(InvalidResponse):
        sane_text("x" * 11, "x", max_length=10)
    assert check_access_token("a" * MAX_TOKEN) == "a" * MAX_TOKEN
    assert display_text("x" * 512) == "x" * 512
    assert display_text("x" * 513) == "x" * 511 + "\u2026"
    assert display_text("x" * 10_000, max_length=5) == "xxxx\u2026"


def test_json_boundary_messages_say_what_is_wrong() -> None:
    with pytest.raises(InvalidResponse, match="nested too deeply"):
        parse_json_object(b"[" * 100_000 + b"]" * 100_000, what="token response")
    with pytest.raises(InvalidResponse, match=r"^token response is not valid JSON$"):
        parse_json_object(b"{", what="token response")
    with pytest.raises(InvalidResponse, match=r"^duplicate JSON member 'a'$"):
        parse_json_object(b'{"a": 1, "a": 2}', what="token response")
    with pytest.raises(InvalidResponse, match=r"^non-standard JSON constant NaN$"):
        parse_json_object(b'{"a": NaN}', what="token response")
