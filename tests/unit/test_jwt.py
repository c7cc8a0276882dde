"""ID token validation, JWK Set parsing and unverified peeking (security items 38, 39)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from joserfc import jws
from joserfc import jwt as jose_jwt
from joserfc.errors import SecurityWarning
from joserfc.jwk import ECKey, KeySet, RSAKey

from agent_identity.errors import ConfigurationError, InvalidResponse, InvalidTokenError
from agent_identity.oauth.jwt import (
    DEFAULT_ALGORITHMS,
    IdTokenClaims,
    parse_jwks,
    peek_claims,
    validate_id_token,
)

ISSUER = "https://as.example/tenant"
CLIENT_ID = "agent-client"
NONCE = "nonce-CANARY-5d1f0c9e"
NOW = 1_750_000_000.0
CLIENT_SECRET = "client-secret-CANARY-0123456789abcdef0123456789"


@pytest.fixture(scope="module")
def rsa_key() -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": "rsa-1"})


@pytest.fixture(scope="module")
def rsa_key_2() -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": "rsa-2"})


@pytest.fixture(scope="module")
def ec_key() -> ECKey:
    return ECKey.generate_key("P-256", parameters={"kid": "ec-1"})


@pytest.fixture(scope="module")
def jwks(rsa_key: RSAKey, ec_key: ECKey) -> KeySet:
    return parse_jwks({"keys": [rsa_key.as_dict(private=False), ec_key.as_dict(private=False)]})


def _claims(**overrides: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "sub": "user-1",
        "aud": CLIENT_ID,
        "exp": int(NOW) + 300,
        "iat": int(NOW),
        "nonce": NONCE,
    }
    for name, value in overrides.items():
        if value is _DROP:
            claims.pop(name, None)
        else:
            claims[name] = value
    return claims


_DROP = object()


def _sign(
    key: Any, claims: dict[str, Any] | None = None, *, alg: str = "RS256", **header: Any
) -> str:
    hdr: dict[str, Any] = {"alg": alg}
    if "kid" not in header and key.kid:
        hdr["kid"] = key.kid
    hdr.update({k: v for k, v in header.items() if v is not _DROP})
    return jose_jwt.encode(hdr, claims if claims is not None else _claims(), key, algorithms=[alg])


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _segment(obj: Any) -> str:
    return _b64(json.dumps(obj).encode())


def _validate(token: str, jwks: KeySet, **kwargs: Any) -> IdTokenClaims:
    args: dict[str, Any] = {
        "jwks": jwks,
        "issuer": ISSUER,
        "client_id": CLIENT_ID,
        "nonce": NONCE,
        "now": NOW,
    }
    args.update(kwargs)
    return validate_id_token(token, **args)


def _refused(token: str, jwks: KeySet, **kwargs: Any) -> InvalidTokenError:
    with pytest.raises(InvalidTokenError) as info:
        _validate(token, jwks, **kwargs)
    message = str(info.value)
    # Neither the token nor any of its parts, nor the nonce, ever appears in a message.
    assert token not in message
    for part in token.split("."):
        if len(part) > 8:
            assert part not in message
    assert NONCE not in message
    assert CLIENT_SECRET not in message
    return info.value


# --------------------------------------------------------------------------- happy paths


def test_valid_rs256_id_token_accepted(rsa_key: RSAKey, jwks: KeySet) -> None:
    token = _sign(rsa_key, _claims(auth_time=int(NOW) - 10, acr="urn:acr:1", amr=["pwd", "otp"]))
    claims = _validate(token, jwks, max_age=60)
    assert claims.sub == "user-1"
    assert claims.iss == ISSUER
    assert claims.aud == (CLIENT_ID,)
    assert claims.exp == int(NOW) + 300
    assert claims.iat == int(NOW)
    assert claims.nonce == NONCE
    assert claims.auth_time == int(NOW) - 10
    assert claims.acr == "urn:acr:1"
    assert claims.amr == ("pwd", "otp")
    assert claims.azp is None
    assert claims.raw["sub"] == "user-1"
    with pytest.raises(TypeError):
        claims.raw["sub"] = "x"  # type: ignore[index]


def test_valid_es256_id_token_accepted(ec_key: ECKey, jwks: KeySet) -> None:
    assert _validate(_sign(ec_key, alg="ES256"), jwks).sub == "user-1"


def test_id_token_claims_repr_hides_nonce_and_raw(rsa_key: RSAKey, jwks: KeySet) -> None:
    claims = _validate(_sign(rsa_key, _claims(email="CANARY-EMAIL@example.com")), jwks)
    assert NONCE not in repr(claims)
    assert "CANARY-EMAIL" not in repr(claims)


def test_no_hidden_clock(rsa_key: RSAKey, jwks: KeySet, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom() -> float:
        raise AssertionError("validation must not read the clock")

    monkeypatch.setattr(time, "time", boom)
    monkeypatch.setattr(time, "monotonic", boom)
    assert _validate(_sign(rsa_key), jwks).sub == "user-1"


# --------------------------------------------------------------------------- algorithms


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_sec_38_alg_none_rejected(jwks: KeySet, alg: str) -> None:
    token = f"{_segment({'alg': alg})}.{_segment(_claims())}."
    _refused(token, jwks)
    # Even a caller who lists "none" cannot enable it.
    with pytest.raises(ConfigurationError):
        _validate(token, jwks, algorithms=("RS256", "none"))


def test_sec_38_alg_none_with_signature_part_rejected(jwks: KeySet) -> None:
    token = f"{_segment({'alg': 'none', 'kid': 'rsa-1'})}.{_segment(_claims())}.{_b64(b'x' * 32)}"
    _refused(token, jwks)


def _hs256(header: dict[str, Any], claims: dict[str, Any], secret: bytes) -> str:
    signing_input = f"{_segment(header)}.{_segment(claims)}"
    mac = hmac.new(secret, signing_input.encode("ascii"), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(mac)}"


def test_sec_38_hmac_with_public_key_confusion_rejected(rsa_key: RSAKey, jwks: KeySet) -> None:
    # The classic attack: HMAC-sign with the server's PUBLIC key (as PEM and as JWK JSON)
    # and hope the verifier uses it as the HMAC secret.
    pem = rsa_key.as_pem(private=False)
    jwk_json = json.dumps(rsa_key.as_dict(private=False)).encode()
    for secret in (pem, pem.strip(), jwk_json):
        for header in ({"alg": "HS256", "kid": "rsa-1"}, {"alg": "HS256"}):
            token = _hs256(header, _claims(), secret)
            _refused(token, jwks)
            # Listing HS256 does not help without an explicit client secret.
            _refused(token, jwks, algorithms=(*DEFAULT_ALGORITHMS, "HS256"))


def test_sec_38_hmac_only_with_explicit_client_secret(jwks: KeySet) -> None:
    token = _hs256({"alg": "HS256"}, _claims(), CLIENT_SECRET.encode())
    allowed = (*DEFAULT_ALGORITHMS, "HS256")
    claims = _validate(token, jwks, client_secret=CLIENT_SECRET, algorithms=allowed)
    assert claims.sub == "user-1"
    # Off by default: a secret alone does not allow HS256...
    _refused(token, jwks, client_secret=CLIENT_SECRET)
    # ...and the wrong secret does not verify.
    _refused(token, jwks, client_secret=CLIENT_SECRET + "x", algorithms=allowed)


def test_hmac_client_secret_shorter_than_hash_refused(jwks: KeySet) -> None:
    short = "short-secret"
    token = _hs256({"alg": "HS256"}, _claims(), short.encode())
    _refused(token, jwks, client_secret=short, algorithms=("HS256",))


def test_sec_38_unknown_alg_outside_allow_list_rejected(
    rsa_key: RSAKey, ec_key: ECKey, jwks: KeySet
) -> None:
    _refused(_sign(rsa_key), jwks, algorithms=("ES256",))
    _refused(_sign(rsa_key, alg="RS384"), jwks, algorithms=("RS256",))
    _refused(_sign(ec_key, alg="ES256"), jwks, algorithms=("RS256", "PS256"))
    for alg in ("XYZ", "RSA-OAEP", "dir", "ES256K", ""):
        token = f"{_segment({'alg': alg, 'kid': 'rsa-1'})}.{_segment(_claims())}.{_b64(b'sig')}"
        _refused(token, jwks, algorithms=(*DEFAULT_ALGORITHMS, alg))


def test_missing_or_non_string_alg_rejected(jwks: KeySet) -> None:
    for header in ({}, {"alg": 256}, {"alg": None}):
        _refused(f"{_segment(header)}.{_segment(_claims())}.{_b64(b'sig')}", jwks)


# --------------------------------------------------------------------------- keys


def test_sec_38_kid_mismatch_rejected(rsa_key: RSAKey, jwks: KeySet) -> None:
    # Signed with a valid key, but the header names a kid that is not in the set.
    _refused(_sign(rsa_key, kid="unknown"), jwks)
    # A kid naming a key of the wrong type does not fall back to other keys.
    _refused(_sign(rsa_key, kid="ec-1"), jwks)


def test_kid_selects_only_that_key(rsa_key: RSAKey, rsa_key_2: RSAKey) -> None:
    both = parse_jwks({"keys": [rsa_key.as_dict(private=False), rsa_key_2.as_dict(private=False)]})
    assert _validate(_sign(rsa_key_2), both).sub == "user-1"
    # Signed by key 2 but claiming to be key 1: refused even though key 2 is in the set.
    _refused(_sign(rsa_key_2, kid="rsa-1"), both)


def test_without_kid_each_matching_key_is_tried(rsa_key: RSAKey, rsa_key_2: RSAKey) -> None:
    both = parse_jwks({"keys": [rsa_key.as_dict(private=False), rsa_key_2.as_dict(private=False)]})
    token = _sign(rsa_key_2, kid=_DROP)
    assert "kid" not in json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    assert _validate(token, both).sub == "user-1"


def test_sec_38_tampered_signature_rejected(rsa_key: RSAKey, jwks: KeySet) -> None:
    token = _sign(rsa_key)
    header, payload, signature = token.split(".")
    forged_payload = _segment(_claims(sub="admin"))
    _refused(f"{header}.{forged_payload}.{signature}", jwks)
    raw = bytearray(base64.urlsafe_b64decode(signature + "=="))
    raw[0] ^= 0x01
    _refused(f"{header}.{payload}.{_b64(bytes(raw))}", jwks)
    _refused(f"{header}.{payload}.", jwks)


def test_key_for_encryption_is_not_used_for_verification(rsa_key: RSAKey) -> None:
    enc_only = parse_jwks({"keys": [{**rsa_key.as_dict(private=False), "use": "enc"}]})
    _refused(_sign(rsa_key), enc_only)


# --------------------------------------------------------------------------- header


@pytest.mark.parametrize("typ", ["at+jwt", "application/at+jwt", "dpop+jwt", "logout+jwt"])
def test_other_token_types_rejected(rsa_key: RSAKey, jwks: KeySet, typ: str) -> None:
    # RFC 9068 access tokens (and other typed JWTs) are never accepted as ID tokens.
    _refused(_sign(rsa_key, typ=typ), jwks)


def test_typ_jwt_or_absent_accepted(rsa_key: RSAKey, jwks: KeySet) -> None:
    assert _validate(_sign(rsa_key, typ="JWT"), jwks).sub == "user-1"
    header = {"alg": "RS256", "kid": "rsa-1"}
    token = jose_jwt.encode(header, _claims(), rsa_key, algorithms=["RS256"], default_type=None)
    assert _validate(token, jwks).sub == "user-1"


def test_crit_header_rejected(rsa_key: RSAKey, jwks: KeySet) -> None:
    header = {"alg": "RS256", "kid": "rsa-1", "crit": ["ext"], "ext": "must-understand"}
    payload = json.dumps(_claims()).encode()
    registry = jws.JWSRegistry(algorithms=["RS256"], strict_check_header=False)
    registry.header_registry["ext"] = registry.header_registry["kid"]
    token = jws.serialize_compact(header, payload, rsa_key, registry=registry)
    _refused(token, jwks)


def test_jwe_rejected(jwks: KeySet) -> None:
    token = ".".join([_segment({"alg": "RSA-OAEP", "enc": "A256GCM"}), "a", "b", "c", "d"])
    _refused(token, jwks)


def test_duplicate_claims_rejected(rsa_key: RSAKey, jwks: KeySet) -> None:
    body = json.dumps(_claims())[:-1] + ', "sub": "admin"}'
    token = jws.serialize_compact(
        {"alg": "RS256", "kid": "rsa-1"}, body.encode(), rsa_key, algorithms=["RS256"]
    )
    _refused(token, jwks)
    with pytest.raises(InvalidTokenError):
        peek_claims(token)


# --------------------------------------------------------------------------- claims


@pytest.mark.parametrize(
    "iss",
    [
        ISSUER + "/",
        ISSUER.upper(),
        "https://AS.example/tenant",
        "https://as.example:443/tenant",
        "http://as.example/tenant",
        "https://as.example/tenant/../tenant",
        "https://as.example",
        "",
        None,
        ["https://as.example/tenant"],
    ],
)
def test_sec_38_iss_must_match_exactly(rsa_key: RSAKey, jwks: KeySet, iss: Any) -> None:
    _refused(_sign(rsa_key, _claims(iss=iss)), jwks)


def test_sec_38_iss_missing_rejected(rsa_key: RSAKey, jwks: KeySet) -> None:
    _refused(_sign(rsa_key, _claims(iss=_DROP)), jwks)


@pytest.mark.parametrize(
    "aud", ["other-client", ["other-client"], [], "AGENT-CLIENT", "agent-client ", 42, _DROP]
)
def test_sec_38_aud_must_contain_client_id(rsa_key: RSAKey, jwks: KeySet, aud: Any) -> None:
    _refused(_sign(rsa_key, _claims(aud=aud)), jwks)


def test_aud_as_single_element_list_accepted(rsa_key: RSAKey, jwks: KeySet) -> None:
    assert _validate(_sign(rsa_key, _claims(aud=[CLIENT_ID])), jwks).aud == (CLIENT_ID,)


def test_sec_38_multiple_aud_requires_azp(rsa_key: RSAKey, jwks: KeySet) -> None:
    audiences = [CLIENT_ID, "https://api.example"]
    _refused(_sign(rsa_key, _claims(aud=audiences)), jwks)
    _refused(_sign(rsa_key, _claims(aud=audiences, azp="https://api.example")), jwks)
    claims = _validate(_sign(rsa_key, _claims(aud=audiences, azp=CLIENT_ID)), jwks)
    assert claims.aud == tuple(audiences)
    assert claims.azp == CLIENT_ID


def test_azp_present_must_be_client_id(rsa_key: RSAKey, jwks: KeySet) -> None:
    _refused(_sign(rsa_key, _claims(azp="someone-else")), jwks)


def test_sub_required(rsa_key: RSAKey, jwks: KeySet) -> None:
    _refused(_sign(rsa_key, _claims(sub=_DROP)), jwks)
    _refused(_sign(rsa_key, _claims(sub="")), jwks)
    _refused(_sign(rsa_key, _claims(sub=123)), jwks)


def test_sec_38_expired_rejected(rsa_key: RSAKey, jwks: KeySet) -> None:
    _refused(_sign(rsa_key, _claims(exp=int(NOW) - 3600)), jwks)
    _refused(_sign(rsa_key, _claims(exp=int(NOW) - 60)), jwks)  # exp == now - leeway
    _refused(_sign(rsa_key, _claims(exp=_DROP)), jwks)
    _refused(_sign(rsa_key, _claims(exp="9999999999")), jwks)
    _refused(_sign(rsa_key, _claims(exp=True)), jwks)


def test_sec_38_leeway_honoured(rsa_key: RSAKey, jwks: KeySet) -> None:
    # Expired 30 s ago: inside the default 60 s leeway.
    assert _validate(_sign(rsa_key, _claims(exp=int(NOW) - 30)), jwks).sub == "user-1"


def test_sec_39_leeway_configurable(rsa_key: RSAKey, jwks: KeySet) -> None:
    expired_30s = _sign(rsa_key, _claims(exp=int(NOW) - 30))
    assert _validate(expired_30s, jwks, leeway=31).sub == "user-1"
    _refused(expired_30s, jwks, leeway=0)
    _refused(expired_30s, jwks, leeway=29)
    expired_10min = _sign(rsa_key, _claims(exp=int(NOW) - 600))
    _refused(expired_10min, jwks)
    assert _validate(expired_10min, jwks, leeway=601).sub == "user-1"
    issued_in_30s = _sign(rsa_key, _claims(iat=int(NOW) + 30))
    assert _validate(issued_in_30s, jwks).sub == "user-1"
    _refused(issued_in_30s, jwks, leeway=0)
    with pytest.raises(ConfigurationError):
        _validate(expired_30s, jwks, leeway=-1)
    with pytest.raises(ConfigurationError):
        _validate(expired_30s, jwks, leeway=float("inf"))


def test_sec_38_iat_in_future_rejected(rsa_key: RSAKey, jwks: KeySet) -> None:
    _refused(_sign(rsa_key, _claims(iat=int(NOW) + 3600)), jwks)


def test_sec_38_iat_required(rsa_key: RSAKey, jwks: KeySet) -> None:
    _refused(_sign(rsa_key, _claims(iat=_DROP)), jwks)
    _refused(_sign(rsa_key, _claims(iat="now")), jwks)


def test_nbf_in_future_rejected(rsa_key: RSAKey, jwks: KeySet) -> None:
    _refused(_sign(rsa_key, _claims(nbf=int(NOW) + 3600)), jwks)
    assert _validate(_sign(rsa_key, _claims(nbf=int(NOW) - 5)), jwks).sub == "user-1"


def test_sec_38_nonce_mismatch_rejected(rsa_key: RSAKey, jwks: KeySet) -> None:
    _refused(_sign(rsa_key, _claims(nonce="another-nonce")), jwks)
    _refused(_sign(rsa_key, _claims(nonce=NONCE + "x")), jwks)
    _refused(_sign(rsa_key, _claims(nonce=[NONCE])), jwks)


def test_sec_38_nonce_missing_rejected(rsa_key: RSAKey, jwks: KeySet) -> None:
    _refused(_sign(rsa_key, _claims(nonce=_DROP)), jwks)


def test_sec_38_unexpected_nonce_rejected(rsa_key: RSAKey, jwks: KeySet) -> None:
    token = _sign(rsa_key)
    _refused(token, jwks, nonce=None)
    no_nonce = _sign(rsa_key, _claims(nonce=_DROP))
    assert _validate(no_nonce, jwks, nonce=None).nonce is None


def test_max_age_requires_fresh_auth_time(rsa_key: RSAKey, jwks: KeySet) -> None:
    _refused(_sign(rsa_key), jwks, max_age=300)  # no auth_time
    _refused(_sign(rsa_key, _claims(auth_time=int(NOW) - 1000)), jwks, max_age=300)
    _refused(_sign(rsa_key, _claims(auth_time=int(NOW) + 3600)), jwks, max_age=300)
    fresh = _sign(rsa_key, _claims(auth_time=int(NOW) - 100))
    assert _validate(fresh, jwks, max_age=300).auth_time == int(NOW) - 100
    # max_age=0 (force re-authentication) tolerates only the leeway.
    assert _validate(fresh, jwks, max_age=0, leeway=100).sub == "user-1"
    _refused(fresh, jwks, max_age=0, leeway=60)


def test_mistyped_optional_claims_rejected(rsa_key: RSAKey, jwks: KeySet) -> None:
    _refused(_sign(rsa_key, _claims(amr="pwd")), jwks)
    _refused(_sign(rsa_key, _claims(acr=1)), jwks)
    _refused(_sign(rsa_key, _claims(azp=["agent-client"])), jwks)


def test_configuration_errors(rsa_key: RSAKey, jwks: KeySet) -> None:
    token = _sign(rsa_key)
    with pytest.raises(ConfigurationError):
        _validate(token, jwks, issuer="")
    with pytest.raises(ConfigurationError):
        _validate(token, jwks, client_id="")
    with pytest.raises(ConfigurationError):
        _validate(token, jwks, max_age=-1)
    with pytest.raises(ConfigurationError):
        _validate(token, jwks, algorithms="RS256")


# --------------------------------------------------------------------------- peek


def test_peek_claims_returns_unverified_payload(rsa_key: RSAKey) -> None:
    act = {"sub": "agent", "act": {"sub": "older-agent"}}
    token = _sign(rsa_key, {"sub": "user", "act": act})
    assert peek_claims(token) == {"sub": "user", "act": act}
    # Unverified by design: a forged signature still peeks.
    header, payload, _sig = token.split(".")
    assert peek_claims(f"{header}.{payload}.")["sub"] == "user"


@pytest.mark.parametrize(
    "token",
    [
        "",
        "abc",
        "a.b",
        "a.b.c.d",
        "a.b.c.d.e",
        "!!!.@@@.###",
        f"{_segment({'alg': 'RS256'})}.{_segment([1, 2])}.sig",
        f"{_segment({'alg': 'RS256'})}.{_b64(b'not json')}.sig",
        f"{_segment({'alg': 'RS256'})}.{_b64(bytes([0xFF, 0xFE]))}.sig",
        f"{_segment('header')}.{_segment({})}.sig",
        f"{_segment({'alg': 'RS256'})}.{_segment({})}=.sig",
        f"{_segment({'alg': 'RS256'})}.{_segment({})}.sig" + "A" * 70_000,
    ],
)
def test_peek_claims_garbage_raises_typed_error(token: str) -> None:
    with pytest.raises(InvalidTokenError):
        peek_claims(token)


def test_peek_claims_non_string_raises_typed_error() -> None:
    with pytest.raises(InvalidTokenError):
        peek_claims(b"a.b.c")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- JWKS


def test_parse_jwks_from_bytes(rsa_key: RSAKey, ec_key: ECKey) -> None:
    body = json.dumps(
        {"keys": [rsa_key.as_dict(private=False), ec_key.as_dict(private=False)]}
    ).encode()
    keys = parse_jwks(body)
    assert sorted(k.kid or "" for k in keys) == ["ec-1", "rsa-1"]


@pytest.mark.parametrize("private", ["rsa", "ec", "oct"])
def test_parse_jwks_refuses_private_key_material(
    rsa_key: RSAKey, ec_key: ECKey, private: str
) -> None:
    entry: dict[str, Any]
    if private == "rsa":
        entry = dict(rsa_key.as_dict(private=True))
    elif private == "ec":
        entry = dict(ec_key.as_dict(private=True))
    else:
        entry = {"kty": "oct", "k": _b64(b"k" * 32)}
    with pytest.raises(InvalidResponse) as info:
        parse_jwks({"keys": [rsa_key.as_dict(private=False), entry]})
    for member in ("d", "k"):
        if member in entry:
            assert str(entry[member]) not in str(info.value)


def test_parse_jwks_ignores_unknown_and_malformed_keys(rsa_key: RSAKey) -> None:
    with pytest.warns(SecurityWarning):
        weak = RSAKey.generate_key(1024, parameters={"kid": "weak"}, private=False)
    keys = parse_jwks(
        {
            "keys": [
                {"kty": "AKP", "alg": "ML-DSA-44", "pub": "abc", "kid": "pq"},
                {"kty": "RSA", "n": "###", "e": "AQAB", "kid": "bad"},
                {"kty": "EC", "crv": "P-192", "x": "AA", "y": "AA", "kid": "p192"},
                {"kid": "no-kty"},
                weak.as_dict(private=False),
                rsa_key.as_dict(private=False),
            ]
        }
    )
    assert [k.kid for k in keys] == ["rsa-1"]


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"not json",
        b"[]",
        b'{"keys": {}}',
        b'{"keys": [1]}',
        b'{"keys": []}',
        b'{"keys": [{"kty": "AKP"}]}',
        b'{"keys": [], "keys": []}',
        b"\xff\xfe",
        {"keys": "x"},
        {},
    ],
)
def test_parse_jwks_garbage_raises_typed_error(content: bytes | dict[str, Any]) -> None:
    with pytest.raises(InvalidResponse):
        parse_jwks(content)


# --------------------------------------------------------------------------- fuzzing

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
_jwk_like = st.fixed_dictionaries(
    {"kty": st.sampled_from(["RSA", "EC", "OKP", "oct", "AKP", "x"])},
    optional={
        "kid": _json_values,
        "crv": st.sampled_from(["P-256", "P-384", "Ed25519", "X25519", "bogus"]) | _json_values,
        "n": st.text(max_size=40),
        "e": st.sampled_from(["AQAB", "", "!!"]) | st.text(max_size=8),
        "x": st.text(max_size=60),
        "y": st.text(max_size=60),
        "use": _json_values,
        "key_ops": _json_values,
        "alg": _json_values,
    },
)


def _accepts_only(exc_type: type[Exception], func: Callable[[], object]) -> None:
    """Run ``func``; any exception other than ``exc_type`` propagates and fails the test."""
    with contextlib.suppress(exc_type):
        func()


@settings(max_examples=300, deadline=None)
@given(st.text() | st.binary())
def test_fuzz_validate_id_token_only_typed_errors(token: Any) -> None:
    jwks = _FUZZ_JWKS
    _accepts_only(InvalidTokenError, lambda: _validate(token, jwks))


@settings(max_examples=300, deadline=None)
@given(
    header=st.dictionaries(st.text(max_size=6), _json_values, max_size=5)
    | st.fixed_dictionaries(
        {"alg": st.sampled_from(["RS256", "ES256", "EdDSA", "HS256", "none", "PS256"])},
        optional={"kid": _json_values, "typ": _json_values, "crit": _json_values},
    ),
    payload=_json_values,
    signature=st.binary(max_size=300),
)
def test_fuzz_structured_tokens_only_typed_errors(
    header: Any, payload: Any, signature: bytes
) -> None:
    token = f"{_segment(header)}.{_segment(payload)}.{_b64(signature)}"
    jwks = _FUZZ_JWKS
    _accepts_only(InvalidTokenError, lambda: _validate(token, jwks))
    _accepts_only(
        InvalidTokenError,
        lambda: _validate(token, jwks, client_secret="s" * 64, algorithms=("HS256", "RS256")),
    )
    _accepts_only(InvalidTokenError, lambda: peek_claims(token))


@settings(max_examples=300, deadline=None)
@given(st.text() | st.binary())
def test_fuzz_peek_claims_only_typed_errors(token: Any) -> None:
    _accepts_only(InvalidTokenError, lambda: peek_claims(token))


@settings(max_examples=300, deadline=None)
@given(st.binary() | st.text().map(str.encode))
def test_fuzz_parse_jwks_bytes_only_typed_errors(content: bytes) -> None:
    _accepts_only(InvalidResponse, lambda: parse_jwks(content))


@settings(max_examples=300, deadline=None)
@given(st.lists(_jwk_like | _json_values, max_size=4))
def test_fuzz_parse_jwks_structures_only_typed_errors(keys: list[Any]) -> None:
    _accepts_only(InvalidResponse, lambda: parse_jwks({"keys": keys}))
    _accepts_only(InvalidResponse, lambda: parse_jwks(json.dumps({"keys": keys}).encode()))


_FUZZ_JWKS = parse_jwks(
    {
        "keys": [
            RSAKey.generate_key(2048, parameters={"kid": "fuzz-rsa"}).as_dict(private=False),
            ECKey.generate_key("P-256", parameters={"kid": "fuzz-ec"}).as_dict(private=False),
        ]
    }
)
