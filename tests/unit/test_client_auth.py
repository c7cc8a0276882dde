"""Client authentication at the token endpoint (security items 27 and 40)."""

from __future__ import annotations

import base64
import dataclasses
import json
import warnings
from typing import Any
from urllib.parse import unquote_plus

import pytest
from joserfc import jwt as jose_jwt
from joserfc.errors import SecurityWarning
from joserfc.jwk import ECKey, OctKey, OKPKey, RSAKey, import_key
from pydantic import SecretStr

from agent_identity.errors import ConfigurationError
from agent_identity.oauth.client_auth import (
    CLIENT_ASSERTION_TYPE,
    ClientAuthentication,
    ClientSecretBasic,
    ClientSecretPost,
    NoClientAuth,
    PrivateKeyJWT,
    choose_client_auth,
    generate_private_key,
)
from agent_identity.oauth.jwt import parse_jwks

ISSUER = "https://as.example/tenant-1"
TOKEN_ENDPOINT = "https://as.example/tenant-1/oauth/token"
CLIENT_ID = "agent-client"
NOW = 1_750_000_000.7
SECRET_CANARY = "CANARY-client-secret-7f3a9b"
_PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}


@pytest.fixture(scope="module")
def private_jwks() -> dict[str, dict[str, Any]]:
    return {kind: generate_private_key(kind) for kind in ("EC", "RSA", "OKP")}


def _apply(auth: ClientAuthentication, now: float = NOW) -> tuple[dict[str, str], dict[str, str]]:
    form: dict[str, str] = {"grant_type": "authorization_code"}
    headers: dict[str, str] = {}
    auth.apply(form, headers, issuer=ISSUER, endpoint=TOKEN_ENDPOINT, now=now)
    return form, headers


def _decode(token: str, public_jwk: dict[str, Any], alg: str) -> jose_jwt.Token:
    key = import_key(public_jwk)
    assert not key.is_private
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SecurityWarning)  # joserfc flags "EdDSA" as legacy
        return jose_jwt.decode(token, key, algorithms=[alg])


# --------------------------------------------------------------------------- private_key_jwt


@pytest.mark.parametrize(("kind", "alg"), [("EC", "ES256"), ("RSA", "RS256"), ("OKP", "EdDSA")])
def test_sec_27_client_assertion_aud_is_issuer_string(
    private_jwks: dict[str, dict[str, Any]], kind: str, alg: str
) -> None:
    auth = PrivateKeyJWT(CLIENT_ID, private_jwks[kind], lifetime=90)
    form, headers = _apply(auth)

    assert headers == {}
    assert form["grant_type"] == "authorization_code"
    assert form["client_id"] == CLIENT_ID
    assert form["client_assertion_type"] == CLIENT_ASSERTION_TYPE
    assert "client_secret" not in form

    public = auth.public_jwks()["keys"][0]
    token = _decode(form["client_assertion"], public, alg)
    claims = token.claims
    assert claims["aud"] == ISSUER
    assert isinstance(claims["aud"], str)
    assert claims["aud"] != TOKEN_ENDPOINT
    assert claims["iss"] == CLIENT_ID
    assert claims["sub"] == CLIENT_ID
    assert claims["iat"] == int(NOW)
    assert claims["exp"] - claims["iat"] == 90
    jti = claims["jti"]
    assert isinstance(jti, str)
    assert len(base64.urlsafe_b64decode(jti + "=" * (-len(jti) % 4))) >= 16  # >= 128 bits
    assert token.header["alg"] == alg
    assert token.header["typ"] == "JWT"
    assert token.header["kid"] == private_jwks[kind]["kid"]
    assert auth.method == "private_key_jwt"


def test_client_assertion_is_fresh_each_time(private_jwks: dict[str, dict[str, Any]]) -> None:
    auth = PrivateKeyJWT(CLIENT_ID, private_jwks["EC"])
    first, _ = _apply(auth)
    second, _ = _apply(auth)
    public = auth.public_jwks()["keys"][0]
    jti_1 = _decode(first["client_assertion"], public, "ES256").claims["jti"]
    jti_2 = _decode(second["client_assertion"], public, "ES256").claims["jti"]
    assert jti_1 != jti_2
    assert _decode(first["client_assertion"], public, "ES256").claims["exp"] == int(NOW) + 60


def test_explicit_typ_is_opt_in(private_jwks: dict[str, dict[str, Any]]) -> None:
    auth = PrivateKeyJWT(CLIENT_ID, private_jwks["EC"], explicit_typ=True)
    form, _ = _apply(auth)
    header = _decode(form["client_assertion"], auth.public_jwks()["keys"][0], "ES256").header
    assert header["typ"] == "client-authentication+jwt"


def test_private_key_jwt_accepts_pem_jwk_and_key_objects() -> None:
    rsa = RSAKey.generate_key(2048)
    ec = ECKey.generate_key("P-384")
    ed = OKPKey.generate_key("Ed25519")
    pem_rsa = rsa.as_pem(private=True)
    cases: list[tuple[Any, str]] = [
        (pem_rsa, "RS256"),
        (pem_rsa.decode(), "RS256"),
        (ec.as_pem(private=True), "ES384"),
        (ed.as_pem(private=True), "EdDSA"),
        (rsa, "RS256"),
        (ec, "ES384"),
        (dict(ed.as_dict(private=True)), "EdDSA"),
    ]
    for key, alg in cases:
        auth = PrivateKeyJWT(CLIENT_ID, key)
        assert auth.algorithm == alg
        assert auth.kid is None  # no kid was given and the key has none
        form, _ = _apply(auth)
        public = auth.public_jwks()["keys"][0]
        assert "kid" not in public
        token = _decode(form["client_assertion"], public, alg)
        assert "kid" not in token.header
        assert token.claims["aud"] == ISSUER


def test_private_key_jwt_explicit_kid_and_algorithm(
    private_jwks: dict[str, dict[str, Any]],
) -> None:
    auth = PrivateKeyJWT(CLIENT_ID, private_jwks["RSA"], algorithm="PS256", kid="my-kid")
    form, _ = _apply(auth)
    public = auth.public_jwks()["keys"][0]
    assert public["kid"] == "my-kid"
    assert public["alg"] == "PS256"
    token = _decode(form["client_assertion"], public, "PS256")
    assert token.header["kid"] == "my-kid"
    assert token.header["alg"] == "PS256"


@pytest.mark.parametrize(("kind", "alg"), [("RSA", "ES256"), ("EC", "RS256"), ("OKP", "ES256")])
def test_private_key_jwt_algorithm_must_fit_key(
    private_jwks: dict[str, dict[str, Any]], kind: str, alg: str
) -> None:
    with pytest.raises(ConfigurationError):
        PrivateKeyJWT(CLIENT_ID, private_jwks[kind], algorithm=alg)


def test_private_key_jwt_refuses_symmetric_keys() -> None:
    oct_key = OctKey.generate_key(256)
    with pytest.raises(ConfigurationError):
        PrivateKeyJWT(CLIENT_ID, oct_key)
    with pytest.raises(ConfigurationError):
        PrivateKeyJWT(CLIENT_ID, dict(oct_key.as_dict(private=True)))
    with pytest.raises(ConfigurationError):
        PrivateKeyJWT(CLIENT_ID, {"kty": "oct", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0"})
    with pytest.raises(ConfigurationError):
        choose_client_auth(
            client_id=CLIENT_ID, private_key={"kty": "oct", "k": "AAAA"}, supported_methods=None
        )


def test_private_key_jwt_refuses_public_weak_and_garbage_keys(
    private_jwks: dict[str, dict[str, Any]],
) -> None:
    public_only = {k: v for k, v in private_jwks["EC"].items() if k != "d"}
    with pytest.raises(ConfigurationError):
        PrivateKeyJWT(CLIENT_ID, public_only)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SecurityWarning)
        weak = RSAKey.generate_key(1024)
    with pytest.raises(ConfigurationError):
        PrivateKeyJWT(CLIENT_ID, weak)
    garbage = "-----BEGIN PRIVATE KEY-----\nCANARY-not-a-key\n-----END PRIVATE KEY-----\n"
    with pytest.raises(ConfigurationError) as info:
        PrivateKeyJWT(CLIENT_ID, garbage)
    assert "CANARY" not in str(info.value)
    with pytest.raises(ConfigurationError):
        PrivateKeyJWT(CLIENT_ID, {"kty": "EC", "crv": "P-256", "d": "CANARY"})
    with pytest.raises(ConfigurationError):
        PrivateKeyJWT(CLIENT_ID, 42)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        PrivateKeyJWT(CLIENT_ID, private_jwks["EC"], lifetime=0)
    with pytest.raises(ConfigurationError):
        PrivateKeyJWT("", private_jwks["EC"])


def test_assertion_requires_issuer(private_jwks: dict[str, dict[str, Any]]) -> None:
    auth = PrivateKeyJWT(CLIENT_ID, private_jwks["EC"])
    with pytest.raises(ConfigurationError):
        auth.apply({}, {}, issuer="", endpoint=TOKEN_ENDPOINT, now=NOW)


@pytest.mark.parametrize("kind", ["EC", "RSA", "OKP"])
def test_public_jwks_has_no_private_members(
    private_jwks: dict[str, dict[str, Any]], kind: str
) -> None:
    auth = PrivateKeyJWT(CLIENT_ID, private_jwks[kind])
    jwks = auth.public_jwks()
    assert len(jwks["keys"]) == 1
    public = jwks["keys"][0]
    assert _PRIVATE_MEMBERS.isdisjoint(public)
    assert public["kty"] == kind
    assert public["use"] == "sig"
    assert public["kid"] == private_jwks[kind]["kid"]
    serialized = json.dumps(jwks)
    for member in _PRIVATE_MEMBERS & set(private_jwks[kind]):
        assert private_jwks[kind][member] not in serialized
    # The server-side JWK Set parser (which refuses private material) accepts it.
    assert [k.kid for k in parse_jwks(jwks)] == [public["kid"]]


@pytest.mark.parametrize("kind", ["EC", "RSA", "OKP"])
def test_generate_private_key(kind: str) -> None:
    jwk = generate_private_key(kind)  # type: ignore[arg-type]
    assert jwk["kty"] == kind
    assert "d" in jwk
    key = import_key(jwk)
    assert key.is_private
    assert jwk["kid"] == key.thumbprint()
    assert generate_private_key(kind)["kid"] != jwk["kid"]  # type: ignore[arg-type]


def test_generate_private_key_unknown_kind() -> None:
    with pytest.raises(ConfigurationError):
        generate_private_key("oct")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- client secrets


@pytest.mark.parametrize(
    ("client_id", "secret", "expected_user_pass"),
    [
        ("simple", "s3cret", "simple:s3cret"),
        ("my client:1", "p@ss word+%/ü", "my+client%3A1:p%40ss+word%2B%25%2F%C3%BC"),
        ("urn:client:\u03b1", "a:b:c", "urn%3Aclient%3A%CE%B1:a%3Ab%3Ac"),
        ("id&x=y", "100%=+&?#", "id%26x%3Dy:100%25%3D%2B%26%3F%23"),
    ],
)
def test_client_secret_basic_form_urlencodes_before_base64(
    client_id: str, secret: str, expected_user_pass: str
) -> None:
    auth = ClientSecretBasic(client_id, SecretStr(secret))
    form, headers = _apply(auth)
    assert form == {"grant_type": "authorization_code"}
    scheme, _, value = headers["Authorization"].partition(" ")
    assert scheme == "Basic"
    decoded = base64.b64decode(value, validate=True).decode("ascii")
    assert decoded == expected_user_pass
    user, _, password = decoded.partition(":")  # the first ':' separates: ids are encoded
    assert unquote_plus(user) == client_id
    assert unquote_plus(password) == secret
    assert auth.method == "client_secret_basic"


def test_client_secret_post() -> None:
    auth = ClientSecretPost(CLIENT_ID, SecretStr("p@ss word+%"))
    form, headers = _apply(auth)
    assert headers == {}
    assert form == {
        "grant_type": "authorization_code",
        "client_id": CLIENT_ID,
        "client_secret": "p@ss word+%",
    }
    assert auth.method == "client_secret_post"


def test_no_client_auth() -> None:
    auth = NoClientAuth(CLIENT_ID)
    form, headers = _apply(auth)
    assert headers == {}
    assert form == {"grant_type": "authorization_code", "client_id": CLIENT_ID}
    assert auth.method == "none"


def test_empty_credentials_refused() -> None:
    with pytest.raises(ConfigurationError):
        ClientSecretBasic(CLIENT_ID, SecretStr(""))
    with pytest.raises(ConfigurationError):
        ClientSecretPost("", SecretStr("x"))
    with pytest.raises(ConfigurationError):
        ClientSecretBasic(CLIENT_ID, "plain-str")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        NoClientAuth("")


# --------------------------------------------------------------------------- choose


def test_sec_27_private_key_preferred(private_jwks: dict[str, dict[str, Any]]) -> None:
    all_methods = ["client_secret_basic", "client_secret_post", "private_key_jwt", "none"]
    for methods in (None, all_methods, ["private_key_jwt"]):
        auth = choose_client_auth(
            client_id=CLIENT_ID, private_key=private_jwks["EC"], supported_methods=methods
        )
        assert isinstance(auth, PrivateKeyJWT)
        assert auth.method == "private_key_jwt"


def test_choose_private_key_unsupported_by_as(private_jwks: dict[str, dict[str, Any]]) -> None:
    with pytest.raises(ConfigurationError):
        choose_client_auth(
            client_id=CLIENT_ID,
            private_key=private_jwks["EC"],
            supported_methods=["client_secret_basic"],
        )


def test_choose_signing_algorithm_from_as_metadata(
    private_jwks: dict[str, dict[str, Any]],
) -> None:
    auth = choose_client_auth(
        client_id=CLIENT_ID,
        private_key=private_jwks["RSA"],
        supported_methods=["private_key_jwt"],
        signing_algorithms=["PS256", "ES256"],
    )
    assert isinstance(auth, PrivateKeyJWT)
    assert auth.algorithm == "PS256"
    auth = choose_client_auth(
        client_id=CLIENT_ID,
        private_key=private_jwks["OKP"],
        supported_methods=None,
        signing_algorithms=["Ed25519"],
    )
    assert isinstance(auth, PrivateKeyJWT)
    assert auth.algorithm == "Ed25519"
    with pytest.raises(ConfigurationError):
        choose_client_auth(
            client_id=CLIENT_ID,
            private_key=private_jwks["EC"],
            supported_methods=None,
            signing_algorithms=["RS256"],
        )


def test_choose_client_secret_methods() -> None:
    basic = choose_client_auth(client_id=CLIENT_ID, client_secret="s", supported_methods=None)
    assert isinstance(basic, ClientSecretBasic)
    assert basic.client_secret.get_secret_value() == "s"
    both = ["client_secret_post", "client_secret_basic"]
    assert isinstance(
        choose_client_auth(client_id=CLIENT_ID, client_secret="s", supported_methods=both),
        ClientSecretBasic,
    )
    post = choose_client_auth(
        client_id=CLIENT_ID,
        client_secret=SecretStr("s"),
        supported_methods=["client_secret_post", "private_key_jwt"],
    )
    assert isinstance(post, ClientSecretPost)
    with pytest.raises(ConfigurationError):
        choose_client_auth(
            client_id=CLIENT_ID, client_secret="s", supported_methods=["private_key_jwt", "none"]
        )


def test_choose_public_client() -> None:
    for methods in (None, ["none"], ["client_secret_basic", "none"]):
        auth = choose_client_auth(client_id=CLIENT_ID, supported_methods=methods)
        assert isinstance(auth, NoClientAuth)
    with pytest.raises(ConfigurationError):
        choose_client_auth(client_id=CLIENT_ID, supported_methods=["client_secret_basic"])
    with pytest.raises(ConfigurationError):
        choose_client_auth(client_id=CLIENT_ID, supported_methods="none")


def test_choose_refuses_secret_and_key(private_jwks: dict[str, dict[str, Any]]) -> None:
    with pytest.raises(ConfigurationError) as info:
        choose_client_auth(
            client_id=CLIENT_ID,
            client_secret=SECRET_CANARY,
            private_key=private_jwks["EC"],
            supported_methods=None,
        )
    assert SECRET_CANARY not in str(info.value)


# --------------------------------------------------------------------------- secrecy


def test_repr_never_shows_secrets_or_keys(private_jwks: dict[str, dict[str, Any]]) -> None:
    rsa = RSAKey.generate_key(2048)
    pem = rsa.as_pem(private=True).decode()
    auths: list[ClientAuthentication] = [
        ClientSecretBasic(CLIENT_ID, SecretStr(SECRET_CANARY)),
        ClientSecretPost(CLIENT_ID, SecretStr(SECRET_CANARY)),
        choose_client_auth(
            client_id=CLIENT_ID, client_secret=SECRET_CANARY, supported_methods=None
        ),
        NoClientAuth(CLIENT_ID),
        PrivateKeyJWT(CLIENT_ID, private_jwks["EC"]),
        PrivateKeyJWT(CLIENT_ID, private_jwks["RSA"]),
        PrivateKeyJWT(CLIENT_ID, private_jwks["OKP"]),
        PrivateKeyJWT(CLIENT_ID, pem),
    ]
    private_values = [SECRET_CANARY, *pem.splitlines()[1:-1]]
    for jwk in private_jwks.values():
        private_values += [str(v) for k, v in jwk.items() if k in _PRIVATE_MEMBERS]
    for auth in auths:
        for text in (repr(auth), str(auth), f"{auth!r}", repr([auth])):
            assert CLIENT_ID in text
            for value in private_values:
                assert value not in text


def test_protocol_and_immutability(private_jwks: dict[str, dict[str, Any]]) -> None:
    auths: list[Any] = [
        NoClientAuth(CLIENT_ID),
        ClientSecretBasic(CLIENT_ID, SecretStr("x")),
        ClientSecretPost(CLIENT_ID, SecretStr("x")),
        PrivateKeyJWT(CLIENT_ID, private_jwks["EC"]),
    ]
    for auth in auths:
        assert isinstance(auth, ClientAuthentication)
        assert auth.client_id == CLIENT_ID
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(auth, "client_id", "other")  # noqa: B010
