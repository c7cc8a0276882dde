"""Authorization request and response (agent_identity.oauth.authorize): security items
15-19 and 30, RFC 9126 (PAR) and RFC 6749 §3.1 / §4.1.2."""

from __future__ import annotations

import base64
import json
import math
from collections import Counter
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from agent_identity.errors import (
    AccessDenied,
    AgentIdentityError,
    AuthorizationResponseError,
    ConfigurationError,
    ConsentDenied,
    InvalidRequest,
    InvalidResponse,
    InvalidScope,
    IssuerMismatch,
    MetadataError,
    OAuthError,
    ServerError,
    StateMismatch,
)
from agent_identity.models import ServerMetadata
from agent_identity.oauth._message import HttpResponse
from agent_identity.oauth.authorize import (
    DEFAULT_FLOW_LIFETIME,
    AuthorizationCallback,
    PendingAuthorization,
    PendingAuthorizations,
    authorization_url,
    par_request,
    parse_callback,
    parse_par_response,
    start_authorization,
    validate_callback,
)
from agent_identity.oauth.client_auth import (
    ClientSecretBasic,
    NoClientAuth,
    PrivateKeyJWT,
    generate_private_key,
)
from agent_identity.oauth.pkce import s256_challenge

ISSUER = "https://as.example/t1"
REDIRECT = "http://127.0.0.1:8765/callback"


def _metadata(**extra: Any) -> ServerMetadata:
    doc: dict[str, Any] = {
        "issuer": ISSUER,
        "authorization_endpoint": f"{ISSUER}/authorize",
        "token_endpoint": f"{ISSUER}/token",
        "pushed_authorization_request_endpoint": f"{ISSUER}/par",
        "code_challenge_methods_supported": ["S256"],
        "authorization_response_iss_parameter_supported": True,
    }
    doc.update(extra)
    return ServerMetadata.model_validate(doc)


def _start(
    metadata: ServerMetadata | None = None, *, now: float = 1000.0, **kwargs: Any
) -> tuple[PendingAuthorization, dict[str, Any]]:
    kwargs.setdefault("scopes", ("openid", "profile"))
    return start_authorization(
        metadata or _metadata(), client_id="agent", redirect_uri=REDIRECT, now=now, **kwargs
    )


def _flows(*pending: PendingAuthorization, now: float = 1000.0) -> PendingAuthorizations:
    flows = PendingAuthorizations()
    for p in pending:
        flows.add(p, now=now)
    return flows


def _callback(**params: str) -> AuthorizationCallback:
    return parse_callback(f"{REDIRECT}?{urlencode(params)}")


# --- start_authorization ----------------------------------------------------------------------


def test_start_authorization_parameters() -> None:
    pending, params = _start()
    assert params["response_type"] == "code"
    assert params["client_id"] == "agent"
    assert params["redirect_uri"] == REDIRECT
    assert params["scope"] == "openid profile"
    assert params["code_challenge_method"] == "S256"
    assert params["state"] == pending.state
    assert "code_verifier" not in params
    assert pending.code_verifier.get_secret_value() not in json.dumps(params)


def test_sec_16_state_is_long_and_unique() -> None:
    states = [_start(scopes=())[0].state for _ in range(300)]
    assert len(set(states)) == len(states)
    for state in states:
        assert len(state) >= 43  # >= 256 bits, base64url
        raw = base64.urlsafe_b64decode(state + "=" * (-len(state) % 4))
        assert len(raw) >= 32
    # crude entropy check: characters of all states spread over the base64url alphabet
    counts = Counter("".join(states))
    assert len(counts) >= 60
    total = sum(counts.values())
    entropy = -sum(c / total * math.log2(c / total) for c in counts.values())
    assert entropy > 5.8  # ideal is log2(64) = 6


def test_nonce_only_with_openid() -> None:
    pending, params = _start(scopes=("openid",))
    assert pending.nonce is not None
    assert params["nonce"] == pending.nonce
    assert len(pending.nonce) >= 43
    pending, params = _start(scopes=("profile", "email"))
    assert pending.nonce is None
    assert "nonce" not in params


def test_no_scope_parameter_without_scopes() -> None:
    _, params = _start(scopes=())
    assert "scope" not in params


def test_sec_19_resource_repeated_in_authorization_request() -> None:
    resources = ("https://api.example/a", "https://api.example/b")
    pending, params = _start(resources=resources)
    assert params["resource"] == list(resources)
    assert pending.resources == resources
    url = authorization_url(f"{ISSUER}/authorize", params)
    query = parse_qsl(urlsplit(url).query)
    assert [v for k, v in query if k == "resource"] == list(resources)


def test_sec_30_acr_values_and_max_age_carried() -> None:
    pending, params = _start(acr_values=("urn:mace:incommon:iap:silver", "phr"), max_age=0)
    assert params["acr_values"] == "urn:mace:incommon:iap:silver phr"
    assert params["max_age"] == "0"  # zero is a real value, not "absent"
    assert pending.max_age == 0
    query = dict(parse_qsl(urlsplit(authorization_url(f"{ISSUER}/authorize", params)).query))
    assert query["acr_values"] == "urn:mace:incommon:iap:silver phr"
    assert query["max_age"] == "0"


def test_acr_values_and_max_age_absent_by_default() -> None:
    pending, params = _start()
    assert "acr_values" not in params
    assert "max_age" not in params
    assert pending.max_age is None


def test_prompt_login_hint_and_extra() -> None:
    _, params = _start(prompt="consent", login_hint="alice", extra={"ui_locales": "fr"})
    assert params["prompt"] == "consent"
    assert params["login_hint"] == "alice"
    assert params["ui_locales"] == "fr"


@pytest.mark.parametrize("key", ["state", "code_challenge", "redirect_uri", "client_id", "scope"])
def test_extra_cannot_override_sdk_parameters(key: str) -> None:
    with pytest.raises(ConfigurationError, match=key):
        _start(extra={key: "attacker"})


def test_string_scopes_refused() -> None:
    # a str is a Sequence[str]: "openid profile" would become "o p e n i d ..."
    with pytest.raises(ConfigurationError):
        _start(scopes="openid profile")
    with pytest.raises(ConfigurationError):
        _start(resources="https://api.example/")


def test_sec_10_start_refused_without_s256() -> None:
    with pytest.raises(MetadataError):
        _start(_metadata(code_challenge_methods_supported=["plain"]))


def test_start_refused_without_endpoints() -> None:
    with pytest.raises(ConfigurationError):
        _start(_metadata(token_endpoint=None))
    with pytest.raises(ConfigurationError):
        _start(_metadata(authorization_endpoint=None))


def test_sec_17_issuer_and_verifier_recorded_before_redirect() -> None:
    metadata = _metadata()
    pending, params = _start(metadata, now=50.0, scopes=("openid",), resources=("https://r/",))
    assert pending.issuer == ISSUER
    assert pending.token_endpoint == metadata.token_endpoint
    assert pending.redirect_uri == REDIRECT
    assert pending.client_id == "agent"
    assert pending.state == params["state"]
    assert pending.nonce == params["nonce"]
    assert s256_challenge(pending.code_verifier.get_secret_value()) == params["code_challenge"]
    assert pending.iss_parameter_supported is True
    assert pending.created_at == 50.0
    assert pending.expires_at == 50.0 + DEFAULT_FLOW_LIFETIME
    assert pending.scopes == ("openid",)
    assert pending.resources == ("https://r/",)


def test_sec_40_pending_repr_has_no_secrets() -> None:
    pending, _ = _start()
    text = repr(pending) + str(pending)
    assert pending.code_verifier.get_secret_value() not in text
    assert pending.state not in text
    assert pending.nonce is not None
    assert pending.nonce not in text


def test_sec_15_fresh_verifier_and_state_per_flow() -> None:
    a, pa = _start()
    b, pb = _start()
    assert a.code_verifier.get_secret_value() != b.code_verifier.get_secret_value()
    assert pa["code_challenge"] != pb["code_challenge"]
    assert a.state != b.state
    assert a.nonce != b.nonce


# --- authorization_url ------------------------------------------------------------------------


def test_authorization_url_keeps_existing_query() -> None:
    url = authorization_url("https://as.example/authorize?p=B2C_1_signin&x=", {"state": "s"})
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.path) == ("https", "as.example", "/authorize")
    assert parse_qsl(parts.query, keep_blank_values=True) == [
        ("p", "B2C_1_signin"),
        ("x", ""),
        ("state", "s"),
    ]


def test_authorization_url_encodes_values() -> None:
    url = authorization_url("https://as/authorize", {"redirect_uri": "http://127.0.0.1:1/a?b&c"})
    assert dict(parse_qsl(urlsplit(url).query)) == {"redirect_uri": "http://127.0.0.1:1/a?b&c"}
    assert "&c" not in urlsplit(url).query.replace("%26c", "")


def test_authorization_url_without_existing_query() -> None:
    assert authorization_url("https://as/authorize", {"a": "1"}) == "https://as/authorize?a=1"


def test_authorization_url_refuses_duplicated_parameter() -> None:
    # RFC 6749 §3.1: parameters MUST NOT be included more than once
    with pytest.raises(ConfigurationError, match="response_type"):
        authorization_url("https://as/authorize?response_type=token", {"response_type": "code"})


# --- PAR (RFC 9126) ---------------------------------------------------------------------------


def test_par_request_public_client_carries_all_params_once() -> None:
    _, params = _start(resources=("https://api.example/",), acr_values=("x",), max_age=60)
    request = par_request(_metadata(), params, NoClientAuth("agent"), now=0.0)
    assert request.method == "POST"
    assert request.url == f"{ISSUER}/par"
    assert request.idempotent is False
    assert request.form is not None
    form = dict(request.form)
    assert form["client_id"] == "agent"
    assert form["resource"] == ["https://api.example/"]
    for key, value in params.items():
        assert form[key] == value, key
    assert set(form) == set(params)
    pairs = request.form_pairs()
    assert [name for name, _ in pairs].count("client_id") == 1


def test_par_request_applies_client_secret_basic() -> None:
    _, params = _start()
    auth = ClientSecretBasic("agent", SecretStr("s3cr3t"))
    request = par_request(_metadata(), params, auth, now=0.0)
    assert request.headers["Authorization"].startswith("Basic ")
    decoded = base64.b64decode(request.headers["Authorization"][6:]).decode()
    assert decoded == "agent:s3cr3t"
    assert request.form is not None
    assert request.form["client_id"] == "agent"  # from params, exactly once (a dict)
    assert "client_secret" not in request.form
    assert "s3cr3t" not in repr(request)


def test_par_request_applies_private_key_jwt() -> None:
    _, params = _start()
    auth = PrivateKeyJWT("agent", generate_private_key("EC"))
    request = par_request(_metadata(), params, auth, now=1_700_000_000.0)
    assert request.form is not None
    assert request.form["client_id"] == "agent"
    assert request.form["client_assertion_type"].endswith("jwt-bearer")
    payload = request.form["client_assertion"].split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert claims["aud"] == ISSUER  # security 27: the issuer, not the PAR endpoint
    assert request.form["state"] == params["state"]


def test_par_request_client_id_conflict_refused() -> None:
    _, params = _start()
    with pytest.raises(ConfigurationError, match="client_id"):
        par_request(_metadata(), params, NoClientAuth("somebody-else"), now=0.0)


def test_par_request_without_endpoint_refused() -> None:
    _, params = _start()
    metadata = _metadata(pushed_authorization_request_endpoint=None)
    with pytest.raises(ConfigurationError):
        par_request(metadata, params, NoClientAuth("agent"), now=0.0)


def test_sec_19_par_request_repeats_resource_for_several_resources() -> None:
    """RFC 8707 §2: several resources are several ``resource`` parameters, also when the
    request is pushed (RFC 9126 §2.1 sends the authorization request's parameters)."""
    _, params = _start(resources=("https://a/", "https://b/"))
    request = par_request(_metadata(), params, NoClientAuth("agent"), now=0.0)
    pairs = request.form_pairs()
    assert [value for name, value in pairs if name == "resource"] == ["https://a/", "https://b/"]


@pytest.mark.parametrize("status", [200, 201])
def test_parse_par_response_success(status: int) -> None:
    body = {"request_uri": "urn:ietf:params:oauth:request_uri:abc", "expires_in": 60, "x": 1}
    response = HttpResponse(status, {}, json.dumps(body).encode())
    assert parse_par_response(response) == ("urn:ietf:params:oauth:request_uri:abc", 60)


@pytest.mark.parametrize(
    ("status", "error", "cls"),
    [
        (400, "invalid_request", InvalidRequest),
        (400, "invalid_scope", InvalidScope),
        (500, "server_error", ServerError),
        (400, "invalid_request_object", OAuthError),
    ],
)
def test_parse_par_response_errors_typed(status: int, error: str, cls: type[OAuthError]) -> None:
    body = {"error": error, "error_description": "nope"}
    with pytest.raises(cls) as info:
        parse_par_response(HttpResponse(status, {}, json.dumps(body).encode()))
    assert type(info.value) is cls
    assert info.value.error == error
    assert info.value.status_code == status
    assert info.value.error_description == "nope"


@pytest.mark.parametrize(
    ("status", "content"),
    [
        (201, b"<html>"),
        (201, b"{}"),
        (201, b'{"request_uri": "", "expires_in": 60}'),
        (201, b'{"request_uri": 5, "expires_in": 60}'),
        (201, b'{"request_uri": "urn:x"}'),
        (201, b'{"request_uri": "urn:x", "expires_in": "60"}'),
        (201, b'{"request_uri": "urn:x", "expires_in": 0}'),
        (201, b'{"request_uri": "urn:x", "expires_in": true}'),
        (201, b'{"request_uri": "urn:x", "request_uri": "urn:y", "expires_in": 60}'),
        (500, b"Internal Server Error"),
        (400, b'{"error_description": "no error code"}'),
        (302, b""),
    ],
)
def test_parse_par_response_garbage_typed(status: int, content: bytes) -> None:
    with pytest.raises(InvalidResponse):
        parse_par_response(HttpResponse(status, {}, content))


@given(st.integers(100, 599), st.binary(max_size=120))
@settings(max_examples=200, deadline=None)
def test_parse_par_response_fuzz_only_typed_errors(status: int, content: bytes) -> None:
    try:
        request_uri, expires_in = parse_par_response(HttpResponse(status, {}, content))
    except AgentIdentityError:
        return
    assert request_uri
    assert expires_in > 0


# --- parse_callback ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        f"{REDIRECT}?code=c1&state=s1&iss=https%3A%2F%2Fas.example%2Ft1",
        "?code=c1&state=s1&iss=https%3A%2F%2Fas.example%2Ft1",
        "code=c1&state=s1&iss=https%3A%2F%2Fas.example%2Ft1",
        "code=c1&state=s1&iss=https://as.example/t1",  # ':' and '/' are legal in a query
        "/callback?code=c1&state=s1&iss=https://as.example/t1",
        f"  {REDIRECT}?code=c1&state=s1&iss=https://as.example/t1#frag  ",
    ],
)
def test_parse_callback_forms(text: str) -> None:
    callback = parse_callback(text)
    assert dict(callback.params) == {"code": "c1", "state": "s1", "iss": ISSUER}


def test_parse_callback_fragment_ignored() -> None:
    assert dict(parse_callback(f"{REDIRECT}#code=c&state=s").params) == {}


@pytest.mark.parametrize("name", ["state", "code", "iss", "error"])
def test_duplicate_parameters_refused(name: str) -> None:
    params = {"code": "c", "state": "s", "iss": ISSUER, "error": "x"}
    query = urlencode(params) + f"&{name}=again"
    with pytest.raises(AuthorizationResponseError, match=name):
        parse_callback(f"{REDIRECT}?{query}")


def test_duplicate_parameter_with_same_value_refused() -> None:
    with pytest.raises(AuthorizationResponseError):
        parse_callback("state=s&state=s&code=c")


def test_too_many_parameters_refused() -> None:
    with pytest.raises(AuthorizationResponseError):
        parse_callback("&".join(f"p{i}=v" for i in range(200)))


def test_malformed_callback_url_typed() -> None:
    with pytest.raises(AuthorizationResponseError):
        parse_callback("http://[::1/callback?code=c&state=s")


def test_callback_repr_has_no_values() -> None:
    callback = parse_callback("code=the-secret-code&state=the-state")
    assert "the-secret-code" not in repr(callback)
    assert "the-state" not in repr(callback)


# --- validate_callback: state (security item 16) ----------------------------------------------


def _good(pending: PendingAuthorization, **extra: str) -> AuthorizationCallback:
    params = {"code": "the-code", "state": pending.state, "iss": pending.issuer}
    params.update(extra)
    return _callback(**params)


def test_valid_callback_returns_flow_and_code() -> None:
    pending, _ = _start()
    flows = _flows(pending)
    got, code = validate_callback(_good(pending), flows, now=1001.0)
    assert got is pending
    assert isinstance(code, SecretStr)
    assert code.get_secret_value() == "the-code"
    assert len(flows) == 0


def test_sec_16_wrong_state_rejected() -> None:
    pending, _ = _start()
    flows = _flows(pending)
    with pytest.raises(StateMismatch):
        validate_callback(_good(pending, state=pending.state + "x"), flows, now=1001.0)
    with pytest.raises(StateMismatch):
        validate_callback(_good(pending, state=pending.state.upper()), flows, now=1001.0)


@pytest.mark.parametrize("state", [None, ""])
def test_sec_16_missing_state_rejected(state: str | None) -> None:
    pending, _ = _start()
    flows = _flows(pending)
    params = {"code": "the-code", "iss": ISSUER}
    if state is not None:
        params["state"] = state
    with pytest.raises(StateMismatch):
        validate_callback(_callback(**params), flows, now=1001.0)
    # the real flow is still pending and can complete
    validate_callback(_good(pending), flows, now=1001.0)


def test_sec_16_replayed_state_rejected() -> None:
    pending, _ = _start()
    flows = _flows(pending)
    callback = _good(pending)
    validate_callback(callback, flows, now=1001.0)
    with pytest.raises(StateMismatch):
        validate_callback(callback, flows, now=1002.0)


def test_sec_16_state_consumed_by_a_failed_callback() -> None:
    pending, _ = _start()
    flows = _flows(pending)
    with pytest.raises(ConsentDenied):
        validate_callback(_good(pending, error="access_denied"), flows, now=1001.0)
    with pytest.raises(StateMismatch):
        validate_callback(_good(pending), flows, now=1002.0)


def test_sec_16_expired_state_rejected() -> None:
    pending, _ = _start(now=1000.0, lifetime=60.0)
    flows = _flows(pending)
    with pytest.raises(StateMismatch, match="expired"):
        validate_callback(_good(pending), flows, now=1060.0)
    # and it is gone: a later retry is "unknown", not accepted
    with pytest.raises(StateMismatch):
        validate_callback(_good(pending), flows, now=1000.5)


def test_sec_16_state_valid_just_before_expiry() -> None:
    pending, _ = _start(now=1000.0, lifetime=60.0)
    validate_callback(_good(pending), _flows(pending), now=1059.9)


def test_sec_16_state_of_another_flow_not_accepted_for_expected() -> None:
    a, _ = _start()
    b, _ = _start()
    flows = _flows(a, b)
    with pytest.raises(StateMismatch):
        validate_callback(_good(b), flows, now=1001.0, expected=a)
    got, _ = validate_callback(_good(a), flows, now=1001.0, expected=a)
    assert got is a


def test_sec_16_expired_flows_evicted_on_add() -> None:
    old, _ = _start(now=0.0, lifetime=10.0)
    flows = _flows(old, now=0.0)
    new, _ = _start(now=100.0)
    flows.add(new, now=100.0)
    assert len(flows) == 1


def test_pending_registry_is_bounded() -> None:
    flows = PendingAuthorizations(max_pending=3)
    started = [_start(now=float(i))[0] for i in range(5)]
    for p in started:
        flows.add(p, now=p.created_at)
    assert len(flows) == 3
    with pytest.raises(StateMismatch):  # the oldest were evicted
        flows.take(started[0].state, now=5.0)
    assert flows.take(started[4].state, now=5.0) is started[4]


# --- validate_callback: iss (security item 18) ------------------------------------------------


def test_sec_18_iss_missing_when_advertised_rejected() -> None:
    pending, _ = _start(_metadata(authorization_response_iss_parameter_supported=True))
    callback = _callback(code="the-code", state=pending.state)
    with pytest.raises(IssuerMismatch):
        validate_callback(callback, _flows(pending), now=1001.0)


def test_sec_18_iss_missing_when_not_advertised_accepted() -> None:
    pending, _ = _start(_metadata(authorization_response_iss_parameter_supported=False))
    callback = _callback(code="the-code", state=pending.state)
    got, _ = validate_callback(callback, _flows(pending), now=1001.0)
    assert got is pending


@pytest.mark.parametrize("advertised", [True, False])
@pytest.mark.parametrize(
    "iss",
    [
        "https://AS.example/t1",  # case
        "https://as.example/T1",
        "https://as.example:443/t1",  # port
        "https://as.example:8443/t1",
        "https://as.example/t1/",  # trailing slash
        "https://as.example",
        "http://as.example/t1",
        "https://evil.example/t1",
        "",
        " https://as.example/t1",
    ],
)
def test_sec_18_iss_mismatch_rejected(iss: str, advertised: bool) -> None:
    metadata = _metadata(authorization_response_iss_parameter_supported=advertised)
    pending, _ = _start(metadata)
    flows = _flows(pending)
    with pytest.raises(IssuerMismatch):
        validate_callback(_good(pending, iss=iss), flows, now=1001.0)
    assert len(flows) == 0  # consumed: the code can never be redeemed


@pytest.mark.parametrize("error", ["access_denied", "invalid_scope", "server_error"])
def test_sec_18_error_not_trusted_on_iss_mismatch(error: str) -> None:
    pending, _ = _start()
    description = "Call +1-555-SCAM to restore access"
    callback = _callback(
        state=pending.state,
        iss="https://evil.example/t1",
        error=error,
        error_description=description,
        error_uri="https://evil.example/help",
    )
    with pytest.raises(IssuerMismatch) as info:
        validate_callback(callback, _flows(pending), now=1001.0)
    assert not isinstance(info.value, ConsentDenied | OAuthError)
    for text in (str(info.value), repr(info.value), *map(str, info.value.args)):
        assert description not in text
        assert "SCAM" not in text
        assert "evil.example/help" not in text


def test_sec_18_error_not_trusted_when_iss_missing_but_advertised() -> None:
    pending, _ = _start()
    callback = _callback(state=pending.state, error="access_denied", error_description="boo")
    with pytest.raises(IssuerMismatch) as info:
        validate_callback(callback, _flows(pending), now=1001.0)
    assert "boo" not in str(info.value)


# --- validate_callback: errors and code -------------------------------------------------------


def test_access_denied_is_consent_denied() -> None:
    pending, _ = _start()
    with pytest.raises(ConsentDenied) as info:
        validate_callback(_good(pending, error="access_denied"), _flows(pending), now=1001.0)
    assert info.value.error == "access_denied"
    assert not isinstance(info.value, AccessDenied)


@pytest.mark.parametrize(
    ("error", "cls"),
    [
        ("invalid_request", InvalidRequest),
        ("invalid_scope", InvalidScope),
        ("server_error", ServerError),
        ("login_required", OAuthError),
        ("consent_required", OAuthError),
    ],
)
def test_other_errors_typed(error: str, cls: type[OAuthError]) -> None:
    pending, _ = _start()
    callback = _good(pending, error=error, error_description="d", error_uri="https://as/e")
    with pytest.raises(cls) as info:
        validate_callback(callback, _flows(pending), now=1001.0)
    assert type(info.value) is cls
    assert info.value.error == error
    assert info.value.error_description == "d"
    assert info.value.error_uri == "https://as/e"
    assert info.value.status_code is None


def test_error_wins_over_code() -> None:
    pending, _ = _start()
    with pytest.raises(ServerError):
        validate_callback(_good(pending, error="server_error"), _flows(pending), now=1001.0)


@pytest.mark.parametrize("code", [None, ""])
def test_missing_code_rejected(code: str | None) -> None:
    pending, _ = _start()
    params = {"state": pending.state, "iss": ISSUER}
    if code is not None:
        params["code"] = code
    with pytest.raises(AuthorizationResponseError):
        validate_callback(_callback(**params), _flows(pending), now=1001.0)


def test_sec_40_code_not_in_errors() -> None:
    pending, _ = _start()
    callback = _callback(code="CANARY-CODE-123", state=pending.state, iss="https://x/")
    with pytest.raises(IssuerMismatch) as info:
        validate_callback(callback, _flows(pending), now=1001.0)
    assert "CANARY-CODE-123" not in str(info.value) + repr(info.value)


# --- hypothesis: untrusted callbacks ----------------------------------------------------------


@given(st.text(max_size=200))
@settings(max_examples=200, deadline=None)
def test_parse_callback_arbitrary_text_only_typed_errors(text: str) -> None:
    try:
        callback = parse_callback(text)
    except AgentIdentityError:
        return
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in callback.params.items())


_names = st.sampled_from(["code", "state", "iss", "error", "error_description", "x"])
_values = st.text(max_size=30)


@given(st.lists(st.tuples(_names, _values), max_size=8), st.booleans())
@settings(max_examples=200, deadline=None)
def test_validate_callback_arbitrary_params_only_typed_errors(
    pairs: list[tuple[str, str]], use_real_state: bool
) -> None:
    pending, _ = _start()
    flows = _flows(pending)
    if use_real_state:
        pairs = [*pairs, ("state", pending.state)]
    try:
        callback = parse_callback(urlencode(pairs))
        got, code = validate_callback(callback, flows, now=1001.0)
    except AgentIdentityError:
        return
    # success only for the right state, the exact issuer and a code, without an error
    params = dict(pairs)
    assert got is pending
    assert params["state"] == pending.state
    assert params["iss"] == ISSUER
    assert "error" not in params
    assert code.get_secret_value() == params["code"]
