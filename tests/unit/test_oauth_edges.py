"""Edges of the protocol modules that the first mutation-testing run found untested
(``benchmarks/mutation.py``; docs/security.md, "Mutation testing"): exact boundaries,
arguments passed through to client authentication, legacy IPv4 spellings, JWK usage
rules, and refusals whose exact type matters."""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest
from joserfc import jwt as jose_jwt
from joserfc.jwk import ECKey, RSAKey
from pydantic import SecretStr

from agent_identity.errors import (
    AuthorizationResponseError,
    ConfigurationError,
    ConsentDenied,
    InsecureURLError,
    InvalidResponse,
    InvalidTokenError,
    MetadataError,
    OAuthError,
    SSRFBlockedError,
)
from agent_identity.oauth import authorize, ciba, device, exchange, registration, token
from agent_identity.oauth._message import HttpResponse
from agent_identity.oauth.client_auth import NoClientAuth
from agent_identity.oauth.jwt import (
    _check_claims,
    _check_header,
    _usable_for,
    parse_jwks,
    validate_id_token,
)
from agent_identity.oauth.private_key_jwt import PrivateKeyJWT, generate_private_key
from agent_identity.oauth.resource_metadata import parse_resource_metadata
from agent_identity.oauth.urls import check_endpoint_url, check_ssrf_literal

ISSUER = "https://as.example"
ENDPOINT = "https://as.example/token"
NOW = 1_750_000_000.0


def _json(status: int, body: Any) -> HttpResponse:
    return HttpResponse(status, {}, json.dumps(body).encode())


# -- every builder hands issuer and now to the client authentication (security item 27) -----


@pytest.fixture(scope="module")
def key_auth() -> PrivateKeyJWT:
    return PrivateKeyJWT("agent", generate_private_key("EC"))


def _assertion_claims(form: dict[str, str]) -> dict[str, Any]:
    payload = form["client_assertion"].split(".")[1]
    return json.loads(__import__("base64").urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def _builders(auth: PrivateKeyJWT) -> dict[str, Any]:
    common: dict[str, Any] = {"client_auth": auth, "issuer": ISSUER, "now": NOW}
    return {
        "code": token.authorization_code_request(
            ENDPOINT, code=SecretStr("c"), redirect_uri="http://127.0.0.1:1/cb",
            code_verifier=SecretStr("v" * 43), **common,
        ),
        "refresh": token.refresh_request(ENDPOINT, refresh_token=SecretStr("r"), **common),
        "client_credentials": token.client_credentials_request(ENDPOINT, **common),
        "device_code": token.device_code_request(ENDPOINT, device_code=SecretStr("d"), **common),
        "device_authorization": device.device_authorization_request(ENDPOINT, **common),
        "ciba": ciba.backchannel_authentication_request(ENDPOINT, login_hint="alice", **common),
        "ciba_token": ciba.ciba_token_request(ENDPOINT, auth_req_id="r", **common),
        "exchange": exchange.token_exchange_request(
            ENDPOINT, subject_token=SecretStr("s"),
            subject_token_type=exchange.ACCESS_TOKEN_TYPE, **common,
        ),
    }  # fmt: skip


def test_sec_27_every_request_builder_signs_for_the_issuer_at_now(key_auth: PrivateKeyJWT) -> None:
    for name, request in _builders(key_auth).items():
        assert request.url == ENDPOINT, name
        assert request.method == "POST", name
        assert request.idempotent is False, name
        assert request.form is not None
        claims = _assertion_claims(dict(request.form))
        assert claims["aud"] == ISSUER, name
        assert claims["iat"] == int(NOW), name


def test_authorization_details_that_are_not_json_are_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError):
        ciba.backchannel_authentication_request(
            ENDPOINT, login_hint="alice", client_auth=PrivateKeyJWT("a", generate_private_key()),
            issuer=ISSUER, now=NOW, authorization_details=[{"amount": float("nan")}],
        )  # fmt: skip


# -- token and error responses: exact messages and bounds -------------------------------------


def test_invalid_members_are_named_with_their_reason() -> None:
    with pytest.raises(InvalidResponse) as info:
        token.parse_token_response(
            _json(200, {"access_token": "a\nb", "token_type": "Bearer", "expires_in": True})
        )
    assert str(info.value) == (
        "token response is missing or has invalid members: access_token (holds characters "
        "outside the RFC 6750 b64token syntax), expires_in (is a boolean, not a number)"
    )
    with pytest.raises(InvalidResponse) as missing:
        token.parse_token_response(_json(200, {"token_type": "Bearer"}))
    assert str(missing.value) == "token response is missing or has invalid members: access_token"


def test_error_code_bounds_and_messages() -> None:
    ok = token.parse_oauth_error(_json(400, {"error": "x" * 128}))
    assert isinstance(ok, OAuthError)
    assert isinstance(token.parse_oauth_error(_json(400, {"error": "x" * 129})), InvalidResponse)
    for error in (5, "", None):
        refused = token.parse_oauth_error(_json(400, {"error": error}))
        assert str(refused) == "HTTP 400 response without an error code"
    uri = "https://e/" + "u" * 2038
    described = token.parse_oauth_error(_json(400, {"error": "x", "error_uri": uri}))
    assert isinstance(described, OAuthError)
    assert described.error_uri == uri
    longer = token.parse_oauth_error(_json(400, {"error": "x", "error_uri": uri + "u"}))
    assert isinstance(longer, OAuthError)
    assert longer.error_uri is not None
    assert len(longer.error_uri) == 2048
    garbage = token.parse_oauth_error(HttpResponse(502, {}, b"<html>"))
    assert str(garbage) == "token endpoint answered HTTP 502 without a JSON error"


# -- callbacks ------------------------------------------------------------------------------------


def _flow(**kwargs: Any) -> tuple[authorize.PendingAuthorizations, str]:
    flows = authorize.PendingAuthorizations()
    pending = authorize.PendingAuthorization(
        issuer=ISSUER, client_id="agent", redirect_uri="http://127.0.0.1:1/cb", state="S",
        nonce=None, code_verifier=SecretStr("v" * 43), scopes=(), resources=(),
        iss_parameter_supported=False, token_endpoint=ENDPOINT, created_at=0.0, expires_at=9e9,
    )  # fmt: skip
    flows.add(pending, now=0.0)
    return flows, pending.state


def test_callback_code_length_boundary_and_bare_parameters() -> None:
    flows, state = _flow()
    callback = authorize.parse_callback(f"state={state}&code={'c' * 4096}&flag")
    assert callback.get("flag") == ""
    _, code = authorize.validate_callback(callback, flows, now=1.0)
    assert code.get_secret_value() == "c" * 4096
    flows, state = _flow()
    with pytest.raises(AuthorizationResponseError):
        authorize.validate_callback(
            authorize.AuthorizationCallback({"state": state, "code": "c" * 4097}), flows, now=1.0
        )


def test_callback_parameter_count_boundary() -> None:
    many = "&".join(f"p{i}=v" for i in range(63))
    assert len(authorize.parse_callback(f"state=S&{many}").params) == 64
    with pytest.raises(AuthorizationResponseError, match="too many"):
        authorize.parse_callback(f"state=S&x=1&{many}")


def test_callback_errors_carry_their_printable_description() -> None:
    flows, state = _flow()
    callback = authorize.AuthorizationCallback(
        {"state": state, "error": "access_denied", "error_description": "no thanks"}
    )
    with pytest.raises(ConsentDenied) as denied:
        authorize.validate_callback(callback, flows, now=1.0)
    assert str(denied.value).endswith(": no thanks")
    flows, state = _flow()
    with pytest.raises(ConsentDenied) as bare:
        authorize.validate_callback(
            authorize.AuthorizationCallback({"state": state, "error": "access_denied"}),
            flows, now=1.0,
        )  # fmt: skip
    assert str(bare.value) == (
        "the user or the authorization server denied the authorization request"
    )
    flows, state = _flow()
    with pytest.raises(OAuthError) as other:
        authorize.validate_callback(
            authorize.AuthorizationCallback({"state": state, "error": "server_error"}),
            flows, now=1.0,
        )  # fmt: skip
    assert str(other.value) == "server_error"


def test_state_and_nonce_are_256_bits() -> None:
    from agent_identity.models import ServerMetadata

    metadata = ServerMetadata(
        issuer=ISSUER, authorization_endpoint=f"{ISSUER}/a", token_endpoint=ENDPOINT,
        code_challenge_methods_supported=("S256",),
    )  # fmt: skip
    pending, _params = authorize.start_authorization(
        metadata, client_id="agent", redirect_uri="http://127.0.0.1:1/cb", scopes=("openid",),
        now=0.0,
    )  # fmt: skip
    assert len(pending.state) == 43  # 32 random octets, base64url
    assert pending.nonce is not None
    assert len(pending.nonce) == 43


def test_par_bounds() -> None:
    assert authorize.parse_par_response(_json(201, {"request_uri": "u", "expires_in": 1}))[1] == 1
    uri = "u" * 4096
    assert authorize.parse_par_response(_json(201, {"request_uri": uri, "expires_in": 9}))[0] == uri
    with pytest.raises(InvalidResponse):
        authorize.parse_par_response(_json(201, {"request_uri": uri + "u", "expires_in": 9}))


def test_authorization_url_refuses_a_blank_parameter_clash() -> None:
    with pytest.raises(ConfigurationError):
        authorize.authorization_url("https://as.example/a?state=", {"state": "S"})


# -- CIBA ---------------------------------------------------------------------------------------


def test_ciba_bounds() -> None:
    ack = ciba.parse_backchannel_response(
        _json(200, {"auth_req_id": "r" * 1024, "expires_in": 1, "interval": 1})
    )
    assert (ack.expires_in, ack.interval) == (1, 1)
    with pytest.raises(InvalidResponse):
        ciba.parse_backchannel_response(_json(200, {"auth_req_id": "r" * 1025, "expires_in": 1}))
    assert ciba.parse_ping_notification(b'{"auth_req_id": "r"}') == "r"
    assert ciba.parse_ping_notification(json.dumps({"auth_req_id": "r" * 1024}).encode())
    for bad in ("\u00e9", "r" * 1025, "a\tb"):
        with pytest.raises(InvalidResponse):
            ciba.parse_ping_notification(json.dumps({"auth_req_id": bad}).encode())
    auth = PrivateKeyJWT("a", generate_private_key())
    for length in (22, 1024):
        ciba.backchannel_authentication_request(
            ENDPOINT, login_hint="u", client_auth=auth, issuer=ISSUER, now=NOW,
            client_notification_token=SecretStr("t" * length),
        )  # fmt: skip
    for requested in (1, 365 * 24 * 3600):
        ciba.backchannel_authentication_request(
            ENDPOINT, login_hint="u", client_auth=auth, issuer=ISSUER, now=NOW,
            requested_expiry=requested,
        )  # fmt: skip
    for scopes in (["a b"], [""], ["ok", " "]):
        with pytest.raises(ConfigurationError):
            ciba.backchannel_authentication_request(
                ENDPOINT, login_hint="u", client_auth=auth, issuer=ISSUER, now=NOW, scopes=scopes
            )


# -- registration --------------------------------------------------------------------------------


def test_registration_parsing_is_exact() -> None:
    parsed = registration.parse_registration(
        _json(200, {"client_id": "c", "token_endpoint_auth_method": "none",
                    "redirect_uris": ["http://127.0.0.1:1/cb", 5]}),
        issuer=ISSUER,
    )  # fmt: skip
    assert parsed == registration.ClientRegistration(
        issuer=ISSUER, client_id="c", client_secret=None, client_secret_expires_at=0,
        token_endpoint_auth_method="none", redirect_uris=("http://127.0.0.1:1/cb",),
    )  # fmt: skip
    half = registration.parse_registration(
        _json(201, {"client_id": "c", "client_secret": "s", "client_secret_expires_at": 0.5}),
        issuer=ISSUER,
    )
    assert half.client_secret_expires_at == 0
    assert registration.ClientRegistration.from_bytes(half.to_bytes()) == half


def test_registration_secret_expiry_boundary() -> None:
    entry = registration.ClientRegistration(
        issuer=ISSUER, client_id="c", client_secret=SecretStr("s"), client_secret_expires_at=1060
    )
    assert entry.expired(1000.0)  # exactly at now + the default 60 s skew
    assert not entry.expired(999.0)


def test_registration_endpoint_over_http_needs_the_opt_in() -> None:
    with pytest.raises(InsecureURLError):
        registration.registration_request(
            "http://127.0.0.1:9/register", redirect_uris=["http://127.0.0.1:1/cb"], client_name="a"
        )
    request = registration.registration_request(
        "http://127.0.0.1:9/register", redirect_uris=["http://127.0.0.1:1/cb"], client_name="a",
        scope=["a", "b"], software_id="sid", software_version="1.0",
        allow_insecure_loopback=True,
    )  # fmt: skip
    assert request.method == "POST"
    assert request.url == "http://127.0.0.1:9/register"
    assert request.body is not None
    body = json.loads(request.body)
    assert (body["scope"], body["software_id"], body["software_version"]) == ("a b", "sid", "1.0")
    assert b'", "' not in request.body  # compact JSON
    assert b'": ' not in request.body
    bare = registration.registration_request(
        "https://as.example/r", redirect_uris=["https://app/cb"], client_name="a"
    )
    assert bare.body is not None
    assert {"scope", "software_id", "software_version"}.isdisjoint(json.loads(bare.body))


def test_client_id_url_errors_are_configuration_errors() -> None:
    with pytest.raises(ConfigurationError):
        registration.check_client_id_url("http://app.example/client.json")


def test_client_metadata_document_members() -> None:
    url = "https://app.example/client.json"
    document = registration.client_metadata_document(
        url, client_name="A", redirect_uris=["https://app.example/cb"],
        jwks_uri="https://app.example/jwks", client_uri="https://app.example/",
    )  # fmt: skip
    assert document["application_type"] == "web"
    assert document["jwks_uri"] == "https://app.example/jwks"
    assert document["client_uri"] == "https://app.example/"
    plain = registration.client_metadata_document(
        url, client_name="A", redirect_uris=["http://127.0.0.1:1/cb"]
    )
    assert plain["application_type"] == "native"
    assert "jwks_uri" not in plain
    assert "client_uri" not in plain


# -- resource metadata ---------------------------------------------------------------------------


def test_resource_metadata_is_read_exactly() -> None:
    resource = "https://api.example/v1"
    parsed = parse_resource_metadata(
        _json(200, {"resource": resource, "authorization_servers": [ISSUER],
                    "bearer_methods_supported": ["header"], "resource_name": "API"}),
        resource=resource,
    )  # fmt: skip
    assert parsed is not None
    assert parsed.resource == resource
    assert parsed.bearer_methods_supported == ("header",)
    assert parsed.resource_name == "API"
    for declared in (5, "", None):
        with pytest.raises(InvalidResponse):
            parse_resource_metadata(
                _json(200, {"resource": declared, "authorization_servers": [ISSUER]}),
                resource=resource,
            )
    with pytest.raises(MetadataError):
        parse_resource_metadata(
            _json(200, {"resource": "https://api.example/v2", "authorization_servers": [ISSUER]}),
            resource=resource,
        )


# -- JWT ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ec() -> ECKey:
    return ECKey.generate_key("P-256", parameters={"kid": "k1"})


def test_key_usage_rules(ec: ECKey) -> None:
    public = ec.as_dict(private=False)

    def usable(**members: Any) -> bool:
        keys = list(parse_jwks({"keys": [{**public, **members}]}))
        return _usable_for(keys[0], "ES256")

    assert usable()
    assert usable(use="sig", alg="ES256", key_ops=["verify"])
    assert not usable(use="enc")
    assert not usable(alg="ES384")
    assert not usable(key_ops=["encrypt"])
    assert not _usable_for(next(iter(parse_jwks({"keys": [public]}))), "ES384")  # P-256, not P-384
    rsa = RSAKey.generate_key(2048).as_dict(private=False)
    assert not _usable_for(next(iter(parse_jwks({"keys": [rsa]}))), "ES256")


def test_jwk_with_a_non_string_kid_is_ignored(ec: ECKey) -> None:
    with pytest.raises(InvalidResponse, match="no usable public key"):
        parse_jwks({"keys": [{**ec.as_dict(private=False), "kid": 5}]})


def _sign(ec: ECKey, header: dict[str, Any], claims: dict[str, Any]) -> str:
    header = {"alg": "ES256", "kid": "k1", **header}
    return jose_jwt.encode(header, claims, ec, algorithms=["ES256"])


CLAIMS = {"iss": ISSUER, "sub": "u", "aud": "agent", "exp": NOW + 300, "iat": NOW}


def _validate(ec: ECKey, token: str, **kwargs: Any) -> Any:
    jwks = parse_jwks({"keys": [ec.as_dict(private=False)]})
    args: dict[str, Any] = {"jwks": jwks, "issuer": ISSUER, "client_id": "agent", "nonce": None,
                            "now": NOW, "leeway": 60}  # fmt: skip
    return validate_id_token(token, **{**args, **kwargs})


def test_header_extensions_and_nested_tokens_are_refused(ec: ECKey) -> None:
    for header in ({"crit": ["x"]}, {"b64": False}, {"cty": "JWT"}, {"cty": "jwt"}, {"cty": 5}):
        with pytest.raises(InvalidTokenError, match=r"extensions|nested"):
            _check_header({"alg": "ES256", **header})
    assert _check_header({"alg": "ES256", "cty": "other"}) == "ES256"
    assert _validate(ec, _sign(ec, {"cty": "other"}, CLAIMS)).sub == "u"


def test_time_claims_at_the_leeway_boundary_are_accepted(ec: ECKey) -> None:
    edge = NOW + 60
    token = _sign(ec, {}, {**CLAIMS, "iat": edge, "nbf": edge, "auth_time": edge})
    assert _validate(ec, token, max_age=600).iat == edge
    with pytest.raises(InvalidTokenError):
        _validate(ec, _sign(ec, {}, {**CLAIMS, "iat": edge + 1}))


def test_max_age_argument_is_checked(ec: ECKey) -> None:
    token = _sign(ec, {}, {**CLAIMS, "auth_time": NOW})
    for bad in (True, -1, 1.5):
        with pytest.raises(ConfigurationError):
            _validate(ec, token, max_age=bad)
    assert _validate(ec, token, max_age=253_402_300_799).sub == "u"


def test_signature_failure_says_so(ec: ECKey) -> None:
    other = ECKey.generate_key("P-256", parameters={"kid": "k1"})
    with pytest.raises(InvalidTokenError, match=r"^ID token signature verification failed$"):
        _validate(ec, _sign(other, {}, CLAIMS))


def test_hmac_secret_exactly_as_long_as_the_hash_is_enough() -> None:
    import base64
    import hashlib
    import hmac as hmac_module

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    secret = "s" * 32
    header = b64(b'{"alg":"HS256"}')
    signing = f"{header}.{b64(json.dumps(CLAIMS).encode())}"
    mac = hmac_module.new(secret.encode(), signing.encode(), hashlib.sha256).digest()
    claims = validate_id_token(
        f"{signing}.{b64(mac)}", jwks=parse_jwks({"keys": [RSAKey.generate_key(2048).as_dict(
            private=False)]}), issuer=ISSUER, client_id="agent", nonce=None, now=NOW,
        algorithms=("HS256",), client_secret=SecretStr(secret),
    )  # fmt: skip
    assert claims.sub == "u"


def test_amr_and_aud_shapes() -> None:
    base = {**CLAIMS}
    with pytest.raises(InvalidTokenError):
        _check_claims({**base, "amr": "pwd"}, issuer=ISSUER, client_id="agent", nonce=None,
                      now=NOW, leeway=60, max_age=None)  # fmt: skip
    claims = _check_claims(
        {**base, "amr": ["pwd"], "aud": "agent"}, issuer=ISSUER, client_id="agent", nonce=None,
        now=NOW, leeway=60, max_age=None,
    )  # fmt: skip
    assert (claims.amr, claims.aud) == (("pwd",), ("agent",))


# -- URLs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1.", "127.1", "127.1.", "0x7f.1", "0x7f000001", "017700000001", "2130706433",
        "2130706433.", "0x7f.0x0.0x0.0x1", "0x7f.0.0.0x1", "0177.0.0.01", "0", "00", "0x",
        "0x0", "0.0.0.0", "10.0x1", "169.254.169.254", "0xa9fea9fe", "0251.0376.0251.0376",
        "1.2.3.4.5", "256.1", "1.256.1", "0x100.1", "1.2.3.0400", "4294967296", "0x1.0x2.0x3",
    ],
)  # fmt: skip
def test_sec_02_legacy_ipv4_spellings_agree_with_the_c_library(host: str) -> None:
    """Every numeric host that the C library (inet_aton, what resolvers use) reads as an
    address is judged by that address (the standard library's ``is_global``, an oracle
    independent of the code under test); any other numeric host is refused."""
    try:
        packed = socket.inet_aton(host.rstrip("."))
    except OSError:
        packed = None
    url = f"https://{host}/"
    import ipaddress

    if packed is None or host.endswith(".."):
        with pytest.raises(SSRFBlockedError):
            check_ssrf_literal(url, allow_private=False)
        return
    address = ipaddress.IPv4Address(packed)
    if address.is_global:
        check_ssrf_literal(url, allow_private=False)
    else:
        with pytest.raises(SSRFBlockedError):
            check_ssrf_literal(url, allow_private=False)


def test_sec_02_loopback_names_with_a_trailing_dot() -> None:
    for url in ("https://localhost./", "https://a.localhost./", "https://LOCALHOST/"):
        with pytest.raises(SSRFBlockedError):
            check_ssrf_literal(url, allow_private=False)


@pytest.mark.parametrize(
    ("url", "accepted"),
    [
        ("https://a.example/!$&'()*+,;=", True),
        ("https://a.example/\x7f", False),
        ("https://a.example/a\\b", False),
        ("https://a.example/\x80", False),
        ("https://a.example:65535/", True),
        ("https://a.example:65536/", False),
        ("https://a.example:000443/", False),
        ("https://[::1]:443/", True),
        ("https://[::1]]:443/", False),
    ],
)
def test_sec_01_endpoint_characters_and_ports(url: str, accepted: bool) -> None:
    if accepted:
        assert check_endpoint_url(url) == url
    else:
        with pytest.raises(InsecureURLError):
            check_endpoint_url(url)


def test_public_client_request_form_names_the_client() -> None:
    request = token.refresh_request(
        ENDPOINT, refresh_token=SecretStr("r"), client_auth=NoClientAuth("agent"), issuer=ISSUER,
        now=NOW,
    )  # fmt: skip
    expected = {"grant_type": "refresh_token", "refresh_token": "r", "client_id": "agent"}
    assert request.form == expected


# -- client authentication -------------------------------------------------------------------


def test_private_key_jwt_arguments() -> None:
    from agent_identity.oauth.client_auth import choose_client_auth

    key = generate_private_key("EC")
    assert PrivateKeyJWT("a", key, lifetime=1).lifetime == 1
    for lifetime in (True, 0, -1, 1.5):
        with pytest.raises(ConfigurationError):
            PrivateKeyJWT("a", key, lifetime=lifetime)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        PrivateKeyJWT("a", key, kid="")
    with pytest.raises(ConfigurationError):
        choose_client_auth(client_id="a", supported_methods="private_key_jwt", private_key=key)
    with pytest.raises(ConfigurationError):
        choose_client_auth(
            client_id="a", supported_methods=None, signing_algorithms="ES256", private_key=key
        )
    jwks = PrivateKeyJWT("a", key).public_jwks()
    assert "d" not in jwks["keys"][0]


# -- second mutation run ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [  # RFC 3986 §5.4 results, as absolute paths
        ("/a/b/c/./../../g", "/a/g"),
        ("/a/b/c/../..", "/a/"),
        ("/a/b/c/..", "/a/b/"),
        ("/a/b/c/.", "/a/b/c/"),
        ("/./a", "/a"),
        ("/../a", "/a"),
        ("/a/../../..", "/"),
        ("/..", "/"),
        ("/.", "/"),
        ("/", "/"),
        ("", ""),
        ("/a//b/../c", "/a//c"),
        ("/a/.b/..c/c.", "/a/.b/..c/c."),
    ],
)
def test_remove_dot_segments(path: str, expected: str) -> None:
    from agent_identity.oauth.urls import remove_dot_segments

    assert remove_dot_segments(path) == expected


def test_normalized_and_lenient_paths() -> None:
    from agent_identity.oauth.urls import lenient_path, normalized_path, path_is_ambiguous

    assert normalized_path("/%7e%41%2f%2E%2e/x%zz") is None
    # RFC 3986 §6.2.2: "." is unreserved, so %2E decodes before dot segments go
    assert normalized_path("/%7e%41%2f%2e%2E/%c3%a4") == "/~A%2F../%C3%A4"
    assert normalized_path("/a/%2e%2E/b") == "/b"
    assert lenient_path("/a/%2e%2E/b") == "/b"
    assert lenient_path("/a/%25%32%65%25%32%65/b") == "/b"
    assert lenient_path("/a\\..\\b;x/c") == "/b/c"
    assert not path_is_ambiguous("/a%20b/c")
    assert path_is_ambiguous("/a%2fb")


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("64:ff9b::8.8.8.8", True),
        ("64:ff9b::127.0.0.1", False),
        ("::8.8.8.8", True),
        ("::127.0.0.1", False),
        ("::2", False),
        ("::1", False),
        ("::", False),
        ("2002:0808:0808::1", True),
        ("2002:7f00:0001::1", False),
        ("2606:4700::1111", True),
        ("2606:4700::1111%eth0", False),  # a zone: not a globally routable destination
    ],
)
def test_sec_02_ipv6_forms(address: str, public: bool) -> None:
    import ipaddress

    from agent_identity.oauth.urls import is_public_ip

    assert is_public_ip(ipaddress.IPv6Address(address)) is public


@pytest.mark.parametrize(
    "host", ["1.2.3.4.0", "8.8.8.8.", "134744072.", "1.255.1", "0x.0x.0x.0x", "1a.1", "a.1"]
)
def test_sec_02_more_legacy_spellings(host: str) -> None:
    test_sec_02_legacy_ipv4_spellings_agree_with_the_c_library(host)


def test_is_loopback_host_odd_inputs() -> None:
    from agent_identity.oauth.urls import is_loopback_host

    assert not is_loopback_host(5)  # type: ignore[arg-type]
    assert not is_loopback_host("::1]")
    assert not is_loopback_host("[::1")
    assert is_loopback_host("[::1]")


def test_notification_bearer_with_invalid_unicode_is_refused_not_raised() -> None:
    assert not ciba.check_notification_bearer("Bearer \ud800" + "x" * 42, SecretStr("x" * 43))


def test_ciba_poller_never_polls_at_or_after_expiry() -> None:
    from agent_identity.errors import ApprovalExpired

    poller = ciba.CibaPoller(interval=5.0, deadline=100.0, ready_at=100.0)
    with pytest.raises(ApprovalExpired):
        poller.next_wait(90.0)
    ready = ciba.CibaPoller(interval=5.0, deadline=100.0, ready_at=50.0)
    assert ready.next_wait(60.0) == 0.0
    assert ready.next_wait(45.0) == 5.0


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ('Bearer scope=read:all "x\\",y", realm="r"', [("bearer", {"realm": "r"}, None)]),
        ('@, Bearer error="x"', [("bearer", {"error": "x"}, None)]),
        ('@ Bearer error="x"', []),
        ('=x, Bearer error="y"', [("bearer", {"error": "y"}, None)]),
        ('Bearer a="1\\\\", b=2', [("bearer", {"a": "1\\", "b": "2"}, None)]),
        ('Bearer a=b:c, c="x,y", d=e', [("bearer", {"c": "x,y", "d": "e"}, None)]),
        ('Bearer realm="abc\\', [("bearer", {}, None)]),
        ("Bearer", [("bearer", {}, None)]),
        ("Basic YWxhZGRpbjpvcGVuc2VzYW1l", [("basic", {}, "YWxhZGRpbjpvcGVuc2VzYW1l")]),
        ('Bearer realm="a", DPoP algs="ES256"', [("bearer", {"realm": "a"}, None),
                                                 ("dpop", {"algs": "ES256"}, None)]),
    ],
)  # fmt: skip
def test_www_authenticate_recovery_is_exact(header: str, expected: list[Any]) -> None:
    from agent_identity.oauth.www_authenticate import parse_www_authenticate

    parsed = [(c.scheme, dict(c.params), c.token68) for c in parse_www_authenticate(header)]
    assert parsed == expected


def test_pending_flows_capacity_and_discard() -> None:
    flows = authorize.PendingAuthorizations()
    for index in range(257):
        pending = authorize.PendingAuthorization(
            issuer=ISSUER, client_id="a", redirect_uri="http://127.0.0.1:1/cb",
            state=f"s{index}", nonce=None, code_verifier=SecretStr("v" * 43), scopes=(),
            resources=(), iss_parameter_supported=False, token_endpoint=ENDPOINT,
            created_at=float(index), expires_at=1e9,
        )  # fmt: skip
        flows.add(pending, now=float(index))
    assert len(flows) == 256  # the oldest was dropped
    flows.discard("s256")
    assert len(flows) == 255


def test_registration_round_trip_keeps_every_member() -> None:
    entry = registration.ClientRegistration(
        issuer=ISSUER, client_id="c", client_secret=SecretStr("s"), client_secret_expires_at=99,
        token_endpoint_auth_method="client_secret_post", redirect_uris=("https://a/cb",),
    )  # fmt: skip
    assert registration.ClientRegistration.from_bytes(entry.to_bytes()) == entry
    # how the server wants the client to authenticate cannot be read: refused, not guessed
    with pytest.raises(InvalidResponse, match="token_endpoint_auth_method"):
        registration.parse_registration(
            _json(201, {"client_id": "c", "token_endpoint_auth_method": 5}), issuer=ISSUER
        )


def test_private_key_jwt_is_re_exported_lazily_from_client_auth() -> None:
    from agent_identity.oauth import client_auth, private_key_jwt

    assert client_auth.PrivateKeyJWT is private_key_jwt.PrivateKeyJWT
    assert client_auth.generate_private_key is private_key_jwt.generate_private_key
    with pytest.raises(AttributeError):
        _ = client_auth.NotAThing  # type: ignore[attr-defined]


# -- values that would carry a secret into an exception, or escape untyped ------------------


def test_sec_40_a_client_secret_of_invalid_unicode_is_refused_without_quoting_it() -> None:
    """A lone surrogate in a client secret: a typed ConfigurationError that does not hold
    the secret (percent-encoding it would raise UnicodeEncodeError carrying all of it)."""
    from agent_identity.oauth.client_auth import ClientSecretBasic, ClientSecretPost

    for kind in (ClientSecretBasic, ClientSecretPost):
        with pytest.raises(ConfigurationError) as info:
            kind("agent", SecretStr("s3cr3t-CANARY\ud800"))
        assert "CANARY" not in repr(info.value)
        assert "CANARY" not in repr(info.value.args)


def test_sec_40_ath_of_a_non_ascii_token_is_refused_without_quoting_it() -> None:
    from agent_identity.oauth.dpop import access_token_hash

    with pytest.raises(ConfigurationError) as info:
        access_token_hash("tok\u00e9-CANARY")
    assert "CANARY" not in repr(info.value)
    assert info.value.__context__ is None  # no encoding error holding the token either


def test_authorization_details_of_invalid_unicode_are_a_typed_error() -> None:
    from agent_identity.oauth.rar import details_to_wire

    for details in (
        {"type": "x", "n": "a\ud800"},
        {"type": "x", "\udc00": 1},
        {"type": "x", "l": ["\ud800"]},
    ):
        with pytest.raises(ConfigurationError, match="Unicode"):
            details_to_wire([details])


def test_the_servers_dpop_algorithms_are_shown_safely() -> None:
    from agent_identity.oauth.dpop import choose_algorithm

    with pytest.raises(ConfigurationError) as info:
        choose_algorithm(["HS256\r\x1b[31m"], ["ES256"])
    assert "\r" not in str(info.value)
    assert "\x1b" not in str(info.value)
