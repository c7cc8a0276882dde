"""Property tests of every parser of server input with EXTREME values (issue 12): huge
integers, floats past the double range, NaN/Infinity, booleans, Unicode digits, lone
surrogates, control characters, deep nesting, duplicate keys and non-UTF-8 bytes. The
only exceptions allowed are the SDK's own (AgentIdentityError), and whatever a parser
accepts can be used: put in a header, added to a clock, encoded as UTF-8.

``benchmarks/fuzz.py`` runs the same idea over a million inputs; these stay fast.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable
from typing import Any

import httpx2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from agent_identity._http import parse_retry_after
from agent_identity._limits import MAX_EPOCH, MAX_LIFETIME
from agent_identity._resource_auth import require_token_target
from agent_identity.approval import Action
from agent_identity.approval.ping import PingReceiver
from agent_identity.audit import AuditEvent, arguments_hash
from agent_identity.audit.chain import GENESIS, _Broken, _check_line, make_record
from agent_identity.errors import (
    AgentIdentityError,
    ConfigurationError,
    InsecureURLError,
    InvalidTokenError,
)
from agent_identity.models import TokenResponse
from agent_identity.oauth import authorize, ciba, device, registration, revocation, token
from agent_identity.oauth._json import parse_json_object
from agent_identity.oauth._message import HttpResponse
from agent_identity.oauth.discovery import parse_metadata
from agent_identity.oauth.exchange import parse_token_exchange_response
from agent_identity.oauth.jwt import _check_claims, peek_claims
from agent_identity.oauth.resource_metadata import parse_resource_metadata
from agent_identity.oauth.urls import lenient_path
from agent_identity.oauth.www_authenticate import parse_www_authenticate

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

FAST = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)  # fmt: skip

# -- extreme strategies --------------------------------------------------------------------

#: Every code point, lone surrogates (category Cs) and controls (Cc) included.
any_char = st.characters(exclude_categories=())
unicode_digits = st.sampled_from(
    ["\u00b2", "\u0663", "\uff13", "\u07c3", "\U0001d7d8", "\u00b9\u00b2", "\u0660\u0660\u0667"]
)
controls = st.sampled_from(["\r\n", "\n", "\x00", "\x1b[2J", "\x7f", "\x85", "\u2028", "\t"])
extreme_text = st.one_of(
    st.text(any_char, max_size=40),
    st.text(any_char, min_size=1000, max_size=3000),
    unicode_digits,
    st.tuples(st.text(max_size=5), controls, st.text(max_size=5)).map("".join),
    st.sampled_from(["\ud800", "a\udfffb", "\udc80", "9" * 400, "-1", "1e3", " 5", ""]),
)
huge_ints = st.one_of(
    st.integers(),
    st.integers(min_value=10**18, max_value=10**4000),
    st.integers(max_value=-(10**18), min_value=-(10**4000)),
    st.sampled_from([2**31, 2**63, 2**64, MAX_LIFETIME + 1, MAX_EPOCH + 1]),
)
extreme_floats = st.floats(allow_nan=True, allow_infinity=True)
extreme_scalars = st.one_of(
    huge_ints, extreme_floats, st.booleans(), st.none(), extreme_text, unicode_digits
)


class Duplicated(list[tuple[str, Any]]):
    """An object written with its members as given: duplicate names allowed."""


def _dump(value: Any) -> str:
    """JSON text of ``value``; NaN/Infinity spelt out, lone surrogates as \\u escapes,
    :class:`Duplicated` members kept in order (duplicates included)."""
    if isinstance(value, Duplicated):
        return "{" + ",".join(f"{_dump(k)}:{_dump(v)}" for k, v in value) + "}"
    if isinstance(value, dict):
        return "{" + ",".join(f"{_dump(str(k))}:{_dump(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_dump(v) for v in value) + "]"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10**4000:
        return "9" * 4000
    return json.dumps(value, allow_nan=True, ensure_ascii=True)


def deep(depth: int) -> str:
    return "[" * depth + "]" * depth


json_values = st.recursive(
    extreme_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(extreme_text, inner, max_size=4),
    ),
    max_leaves=12,
)


def documents(template: dict[str, Any]) -> st.SearchStrategy[bytes]:
    """Bodies built from ``template``: members replaced by extreme values, dropped,
    duplicated; plus deep nesting, truncation and non-UTF-8 bytes."""
    names = sorted(template)
    mutated = st.fixed_dictionaries(
        {name: st.one_of(st.just(template[name]), json_values) for name in names}
    ).map(lambda doc: _dump(doc).encode("utf-8", "surrogatepass"))
    duplicated = st.tuples(st.sampled_from(names), json_values).map(
        lambda pair: _dump(Duplicated([*template.items(), pair])).encode("utf-8", "surrogatepass")
    )
    nested = st.integers(1, 20_000).map(lambda d: deep(d).encode())
    broken = st.tuples(mutated, st.integers(0, 200)).map(lambda p: p[0][: p[1]])
    return st.one_of(mutated, mutated, duplicated, nested, broken, st.binary(max_size=200))


def responses(template: dict[str, Any], ok: int = 200) -> st.SearchStrategy[HttpResponse]:
    statuses = st.one_of(st.just(ok), st.sampled_from([200, 201, 400, 401, 404, 500, 503]))
    return st.builds(lambda s, b: HttpResponse(s, {}, b), statuses, documents(template))


def typed_only(parse: Callable[[], Any]) -> Any:
    """Run a parser; only the SDK's errors may escape, and their messages print."""
    try:
        return parse()
    except AgentIdentityError as exc:
        str(exc).encode("utf-8")
        repr(exc).encode("utf-8")
        return None


def usable_text(*values: object) -> None:
    for value in values:
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if isinstance(value, str):
            value.encode("utf-8")


def usable_seconds(value: object, maximum: int = MAX_LIFETIME) -> None:
    assert isinstance(value, int)
    assert not isinstance(value, bool)
    assert 0 <= value <= maximum


def usable_token(result: TokenResponse | None) -> None:
    if result is None:
        return
    value = result.access_token.get_secret_value()
    assert value.isascii()
    assert not any(c in value for c in "\r\n\x00 \t\"',;")  # one b64token, nothing else
    httpx2.Headers({"authorization": f"Bearer {value}"})
    if result.expires_in is not None:
        usable_seconds(result.expires_in)
    usable_text(result.token_type, result.refresh_token, result.id_token, result.scope)


TOKEN = {"access_token": "at", "token_type": "Bearer", "expires_in": 60, "refresh_token": "rt",
         "scope": "a b", "id_token": "a.b.c", "issued_token_type":
         "urn:ietf:params:oauth:token-type:access_token"}  # fmt: skip
ERROR = {"error": "invalid_grant", "error_description": "d", "error_uri": "https://e"}


# -- the properties ---------------------------------------------------------------------------


@FAST
@given(documents(TOKEN))
def test_json_boundary(content: bytes) -> None:
    value = typed_only(lambda: parse_json_object(content))
    if value is not None:
        json.dumps(value, ensure_ascii=False).encode("utf-8")  # no lone surrogate anywhere


@FAST
@given(st.one_of(responses(TOKEN), responses(ERROR, ok=400)))
def test_token_and_error_responses(response: HttpResponse) -> None:
    usable_token(typed_only(lambda: token.parse_token_response(response)))
    usable_token(typed_only(lambda: parse_token_exchange_response(response)))
    typed_only(lambda: revocation.parse_revocation_response(response))


@FAST
@given(responses({"device_code": "d", "user_code": "U", "verification_uri": "https://v",
                  "expires_in": 600, "interval": 5}))  # fmt: skip
def test_device_authorization(response: HttpResponse) -> None:
    result = typed_only(lambda: device.parse_device_authorization(response))
    if result is not None:
        usable_seconds(result.expires_in)
        usable_seconds(result.interval, 3600)
        usable_text(result.user_code, result.verification_uri, result.device_code)
        typed_only(lambda: device.DevicePoller.start(result, now=1e9).next_wait(1e9))


@FAST
@given(responses({"auth_req_id": "r", "expires_in": 60, "interval": 5}))
def test_ciba_acknowledgement(response: HttpResponse) -> None:
    result = typed_only(lambda: ciba.parse_backchannel_response(response))
    if result is not None:
        usable_seconds(result.expires_in)
        usable_seconds(result.interval, 3600)
    poller = ciba.CibaPoller(interval=5.0, deadline=1e9 + 60, ready_at=1e9)
    typed_only(lambda: poller.handle(response, now=1e9))


@FAST
@given(responses({"request_uri": "urn:x", "expires_in": 60}, ok=201))
def test_par_response(response: HttpResponse) -> None:
    result = typed_only(lambda: authorize.parse_par_response(response))
    if result is not None:
        usable_text(result[0])
        usable_seconds(result[1])


@FAST
@given(responses({"client_id": "c", "client_secret": "s", "client_secret_expires_at": 0,
                  "redirect_uris": ["http://127.0.0.1:1/cb"]}, ok=201))  # fmt: skip
def test_registration_response(response: HttpResponse) -> None:
    result = typed_only(lambda: registration.parse_registration(response, issuer="https://as"))
    if result is not None:
        usable_seconds(result.client_secret_expires_at, MAX_EPOCH)
        usable_text(result.client_id, result.client_secret)
        assert registration.ClientRegistration.from_bytes(result.to_bytes()) == result


@FAST
@given(
    responses({"issuer": "https://as.example", "token_endpoint": "https://as.example/t",
               "code_challenge_methods_supported": ["S256"], "scopes_supported": ["a"]})
)  # fmt: skip
def test_metadata(response: HttpResponse) -> None:
    result = typed_only(lambda: parse_metadata(response, issuer="https://as.example"))
    if result is not None:
        json.dumps(result.model_dump(mode="json")).encode("utf-8")


@FAST
@given(responses({"resource": "https://api.example/v1", "authorization_servers": ["https://as"]}))
def test_resource_metadata(response: HttpResponse) -> None:
    typed_only(lambda: parse_resource_metadata(response, resource="https://api.example/v1"))


@FAST
@given(st.lists(st.tuples(st.sampled_from(["error", "scope", "max_age", "realm", "x"]),
                          extreme_text, st.booleans()), max_size=4),
       st.sampled_from(["Bearer", "DPoP", "", "Basic"]))  # fmt: skip
def test_www_authenticate(params: list[tuple[str, str, bool]], scheme: str) -> None:
    header = f"{scheme} " + ", ".join(
        f'{name}="{value}"' if quoted else f"{name}={value}" for name, value, quoted in params
    )
    for challenge in parse_www_authenticate(header):  # never raises
        if challenge.max_age is not None:
            usable_seconds(challenge.max_age)
        usable_text(*challenge.params.values(), challenge.token68)


@FAST
@given(st.one_of(extreme_text, st.integers(1, 6000).map(lambda n: "9" * n)))
def test_retry_after(value: str) -> None:
    delay = parse_retry_after(value)
    assert delay is None or (math.isfinite(delay) and 0 <= delay <= MAX_LIFETIME)


@FAST
@given(st.dictionaries(st.sampled_from(["state", "code", "iss", "error", "error_description"]),
                       extreme_text, max_size=5),
       st.sampled_from(["", "?", "http://127.0.0.1:1/cb?", "http://[::1/?"]))  # fmt: skip
def test_callbacks(params: dict[str, str], prefix: str) -> None:
    if "state" in params and len(params) % 2:
        params["state"] = "S"
    text = prefix + "&".join(f"{k}={v}" for k, v in params.items())
    flows = authorize.PendingAuthorizations()
    flows.add(
        authorize.PendingAuthorization(
            issuer="https://as", client_id="c", redirect_uri="http://127.0.0.1:1/cb",
            state="S", nonce=None, code_verifier=SecretStr("v" * 43), scopes=(), resources=(),
            iss_parameter_supported=False, token_endpoint="https://as/t", created_at=0.0,
            expires_at=1e9,
        ),
        now=0.0,
    )  # fmt: skip

    def parse() -> Any:
        return authorize.validate_callback(authorize.parse_callback(text), flows, now=1.0)

    result = typed_only(parse)
    if result is not None:
        usable_text(result[1])


CLAIMS = {"iss": "https://as", "sub": "u", "aud": "c", "exp": 2e9, "iat": 1e9, "nonce": "n"}


@FAST
@given(st.fixed_dictionaries({}, optional={name: extreme_scalars for name in
                                          [*CLAIMS, "nbf", "auth_time", "azp", "amr", "acr"]}),
       st.booleans())  # fmt: skip
def test_id_token_claims(overrides: dict[str, Any], with_max_age: bool) -> None:
    claims = {**CLAIMS, **overrides}
    try:
        result = _check_claims(
            claims, issuer="https://as", client_id="c", nonce="n", now=1.5e9, leeway=60,
            max_age=600 if with_max_age else None,
        )  # fmt: skip
    except InvalidTokenError:
        return
    assert 0 <= result.exp <= MAX_EPOCH
    usable_text(result.sub, result.iss, result.nonce, result.acr, *result.aud)


@FAST
@given(documents({"sub": "x", "act": {"sub": "a"}}), documents({"alg": "RS256"}))
def test_unverified_jwt_peek(payload: bytes, header: bytes) -> None:
    import base64

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    typed_only(lambda: peek_claims(f"{b64(header)}.{b64(payload)}.sig"))


@FAST
@given(st.one_of(json_values, st.integers(1, 20_000).map(deep)), st.binary(max_size=50))
def test_audit_chain_lines(value: Any, noise: bytes) -> None:
    line, _ = make_record({"kind": "x", "v": 1}, seq=0, prev_hash=GENESIS)
    text = value if isinstance(value, str) and value.startswith("[") else _dump(value)
    for raw in (
        line[:-1].replace(b'"v":1}', b'"v":' + text.encode("utf-8", "surrogatepass") + b"}"),
        text.encode("utf-8", "surrogatepass"),
        line[:-1] + noise,
    ):
        with contextlib.suppress(_Broken):
            _check_line(raw, 0, GENESIS, True)


@FAST
@given(st.dictionaries(extreme_text, st.one_of(json_values, st.integers(0, 2000).map(deep)),
                       max_size=3))  # fmt: skip
def test_tool_arguments(arguments: dict[str, Any]) -> None:
    arguments_hash(arguments)
    event = AuditEvent.for_tool_call(
        "tool.succeeded", tool="t", arguments=arguments, include_arguments=True
    )
    json.dumps(event.to_json_dict(), ensure_ascii=False).encode("utf-8")
    with contextlib.suppress(ConfigurationError):
        Action("t", arguments)


SEGMENTS = ["v1", "..", ".", "%2e%2e", "%2E.", "..%2f", "%2f", "%5c", "..;", "%252e", "a",
            "%zz", "%", "%7e", "admin", "v1%2f..", "%2e"]  # fmt: skip


@FAST
@given(st.lists(st.one_of(st.sampled_from(SEGMENTS), st.text(any_char, max_size=3)), max_size=6))
def test_token_target(segments: list[str]) -> None:
    try:
        url = httpx2.URL("https://api.example/" + "/".join(segments))
    except Exception:
        return
    try:
        require_token_target(url, "https://api.example/v1")
    except InsecureURLError:
        return
    # accepted: however a lenient server decodes the path, it stays under /v1
    path = lenient_path(url.raw_path.decode("latin-1").partition("?")[0])
    assert path == "/v1" or path.startswith("/v1/")


@FAST
@given(st.binary(max_size=300), st.binary(max_size=80), st.sampled_from(["POST", "GET", ""]))
@pytest.mark.anyio
async def test_ping_receiver_asgi(body: bytes, authorization: bytes, method: str) -> None:
    app = PingReceiver()
    sent: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            sent.append(message["status"])

    scope = {"type": "http", "method": method, "headers": [(b"authorization", authorization)]}
    with app.expecting("req-1", SecretStr("n" * 43)):
        await app(scope, receive, send)
    assert sent[0] in (204, 400, 401, 405, 413)
