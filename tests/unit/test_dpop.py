"""DPoP (RFC 9449) without a server: proofs, keys, nonces, the AS choke point, the token
binding check and the resource-side auth flows. Security items 34-37 (the end-to-end proofs
are in ``tests/integration/test_dpop_flows.py``)."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

import httpx2
import pytest
from joserfc import jws
from joserfc.jwk import import_key
from pydantic import SecretStr

from agent_identity import AccessToken, ConfigurationError, TokenAuth, TokenBindingError
from agent_identity._http import HttpDriver, TransportPolicy
from agent_identity._resource_auth import ResourceAuth
from agent_identity.models import TokenResponse
from agent_identity.oauth._message import HttpRequest
from agent_identity.oauth.dpop import (
    DPoPNonces,
    DPoPSigner,
    SoftwareDPoPKeys,
    access_token_hash,
    choose_algorithm,
    htu_of,
    jwk_thumbprint,
)
from agent_identity.server import AuthorizationServer

pytestmark = [pytest.mark.anyio, pytest.mark.filterwarnings("ignore:EdDSA is deprecated")]

NOW = 1_700_000_000.0
ISSUER = "https://as.example"


def signer(alg: str = "ES256", nonces: DPoPNonces | None = None) -> DPoPSigner:
    return DPoPSigner(
        SoftwareDPoPKeys().generate_now(alg), nonces=nonces or DPoPNonces(), time=lambda: NOW
    )


class _Registry(jws.JWSRegistry):
    max_header_length = 8 * 1024  # an RSA public key in the header is bigger than 512


def decode(proof: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Verify ``proof`` with the key in its own header (joserfc, independent of the SDK)."""
    header = json.loads(base64.urlsafe_b64decode(proof.split(".")[0] + "=="))
    key = import_key(header["jwk"])
    registry = _Registry(algorithms=[header["alg"]])
    verified = jws.deserialize_compact(proof, key, registry=registry)
    return header, json.loads(verified.payload)


# -- security 34: the proof ------------------------------------------------------------------


def test_rfc7638_thumbprint_vector() -> None:
    jwk = {
        "kty": "RSA",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6"
        "tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-"
        "65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNL"
        "yrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJ"
        "zKnqDKgw",
        "e": "AQAB",
        "alg": "RS256",
        "kid": "2011-04-29",
    }
    assert jwk_thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


@pytest.mark.parametrize("alg", ["ES256", "ES384", "EdDSA", "RS256", "PS256"])
async def test_sec_34_proof_is_well_formed_and_verifies(alg: str) -> None:
    s = signer(alg)
    proof = await s.proof("post", "https://as.example/token?x=1#frag")
    header, claims = decode(proof)
    assert set(header) == {"typ", "alg", "jwk"}
    assert header["typ"] == "dpop+jwt"
    assert header["alg"] == alg
    assert not {"d", "p", "q", "dp", "dq", "qi", "k"} & set(header["jwk"])  # public only
    assert jwk_thumbprint(header["jwk"]) == s.jkt
    assert claims["htm"] == "POST"
    assert claims["htu"] == "https://as.example/token"  # no query, no fragment
    assert claims["iat"] == int(NOW)
    assert len(base64.urlsafe_b64decode(claims["jti"] + "==")) * 8 >= 96
    assert set(claims) == {"jti", "htm", "htu", "iat"}  # no ath, no nonce here


async def test_sec_34_ath_and_nonce_when_given() -> None:
    nonces = DPoPNonces()
    s = signer(nonces=nonces)
    nonces.remember("https://api.example:443/x", "n-123")
    _, claims = decode(await s.proof("GET", "https://api.example/v1/items?a=b", access_token="tok"))
    expected = base64.urlsafe_b64encode(hashlib.sha256(b"tok").digest()).rstrip(b"=").decode()
    assert claims["ath"] == expected == access_token_hash("tok")
    assert claims["nonce"] == "n-123"
    # another origin (other port, other host, other scheme) never gets that nonce
    for url in ("https://api.example:8443/x", "https://other.example/x", "http://api.example/x"):
        _, other = decode(await s.proof("GET", url))
        assert "nonce" not in other


async def test_sec_35_every_proof_has_a_new_jti() -> None:
    s = signer()
    jtis = {decode(await s.proof("POST", "https://as.example/token"))[1]["jti"] for _ in range(200)}
    assert len(jtis) == 200


def test_htu_drops_query_and_fragment_only() -> None:
    assert htu_of("https://a.example:8443/p/q?x=1#f") == "https://a.example:8443/p/q"
    assert htu_of("https://a.example") == "https://a.example"


class BadKey:
    def __init__(self, alg: str, jwk: Mapping[str, Any]) -> None:
        self.algorithm = alg
        self.public_jwk = jwk

    async def sign(self, signing_input: bytes) -> bytes:
        return b"x"

    def export(self) -> dict[str, Any]:
        return {}


def test_sec_34_keys_that_cannot_make_proofs_are_refused() -> None:
    good = SoftwareDPoPKeys().generate_now("ES256")
    private = dict(good.export()["jwk"])  # with "d"
    public = dict(good.public_jwk)
    for alg, jwk, message in [
        ("ES256", private, "private members"),
        ("HS256", public, "asymmetric"),
        ("none", public, "asymmetric"),
        ("RS256", public, "cannot sign"),
        ("ES384", public, "P-384"),
        ("ES256", {"kty": "oct", "k": "c2VjcmV0"}, "private members"),
    ]:
        with pytest.raises(ConfigurationError, match=message):
            DPoPSigner(BadKey(alg, jwk), nonces=DPoPNonces(), time=lambda: NOW)


# -- keys -------------------------------------------------------------------------------------


def test_algorithm_choice_follows_the_server() -> None:
    preference = ("ES256", "EdDSA", "RS256")
    assert choose_algorithm((), preference) == "ES256"
    assert choose_algorithm(("ES256", "EdDSA"), preference) == "ES256"
    assert choose_algorithm(("EdDSA", "RS256"), preference) == "EdDSA"
    assert choose_algorithm(("Ed25519",), preference) == "Ed25519"
    assert choose_algorithm(("PS256", "RS256"), preference) == "RS256"
    with pytest.raises(ConfigurationError, match="no DPoP algorithm"):
        choose_algorithm(("ES512",), preference)
    with pytest.raises(ConfigurationError):
        SoftwareDPoPKeys(("HS256",))


async def test_software_keys_round_trip_through_their_export() -> None:
    keys = SoftwareDPoPKeys()
    for supported in ((), ("EdDSA",), ("RS256",)):
        key = await keys.generate(supported)
        exported = json.loads(json.dumps(key.export()))  # as stored in the vault
        again = keys.load(exported)
        assert again.algorithm == key.algorithm
        nonces = DPoPNonces()
        one = DPoPSigner(key, nonces=nonces, time=lambda: NOW)
        two = DPoPSigner(again, nonces=nonces, time=lambda: NOW)
        assert one.jkt == two.jkt
        decode(await two.proof("POST", "https://as.example/token"))
    for bad in ({}, {"kind": "kms", "id": "x"}, {"kind": "jwk", "alg": "ES256", "jwk": {}}):
        with pytest.raises(ConfigurationError):
            keys.load(bad)
    assert "jwk" not in repr(key)


class RemoteKey:
    """A KMS-like key: signs asynchronously and returns a DER ECDSA signature."""

    def __init__(self, der: bool = True) -> None:
        self._key = SoftwareDPoPKeys().generate_now("ES256")
        self._der = der

    @property
    def algorithm(self) -> str:
        return "ES256"

    @property
    def public_jwk(self) -> Mapping[str, Any]:
        return self._key.public_jwk

    async def sign(self, signing_input: bytes) -> bytes:
        from cryptography.hazmat.primitives.asymmetric import utils

        raw = await self._key.sign(signing_input)
        if not self._der:
            return b"\x01\x02"
        return bytes(
            utils.encode_dss_signature(
                int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")
            )
        )

    def export(self) -> dict[str, Any]:
        return {"kind": "remote"}


async def test_a_provider_key_signing_der_works_and_garbage_is_refused() -> None:
    good = DPoPSigner(RemoteKey(), nonces=DPoPNonces(), time=lambda: NOW)
    decode(await good.proof("POST", "https://as.example/token"))
    bad = DPoPSigner(RemoteKey(der=False), nonces=DPoPNonces(), time=lambda: NOW)
    with pytest.raises(ConfigurationError, match="malformed ES256 signature"):
        await bad.proof("POST", "https://as.example/token")


# -- security 37: the nonce cache -------------------------------------------------------------


def test_sec_37_nonce_cache_is_per_origin_bounded_and_validated() -> None:
    nonces = DPoPNonces(max_origins=2)
    assert nonces.remember("https://a.example/token", "n1")
    assert nonces.get("https://A.EXAMPLE:443/other?x") == "n1"  # same origin
    assert nonces.get("https://a.example:444/token") is None
    for bad in (None, "", "with space", 'quote"', "x" * 2000, "é"):
        assert not nonces.remember("https://b.example/", bad)
    assert nonces.get("https://b.example/") is None
    nonces.remember("https://b.example/", "n2")
    nonces.remember("https://c.example/", "n3")  # a.example is forgotten (LRU)
    assert nonces.get("https://a.example/") is None
    assert (nonces.get("https://b.example/"), nonces.get("https://c.example/")) == ("n2", "n3")


# -- the authorization server's choke point ---------------------------------------------------


METADATA = {
    "issuer": ISSUER,
    "authorization_endpoint": f"{ISSUER}/authorize",
    "token_endpoint": f"{ISSUER}/token",
    "code_challenge_methods_supported": ["S256"],
    "dpop_signing_alg_values_supported": ["ES256"],
}


def server_with(handler: Any) -> AuthorizationServer:
    driver = HttpDriver(
        TransportPolicy(), client=httpx2.AsyncClient(transport=httpx2.MockTransport(handler))
    )
    return AuthorizationServer(
        client_id="agent", client_secret="canary-secret", metadata=METADATA, http=driver
    )


async def test_sec_35_37_nonce_retry_once_with_a_new_proof_and_a_rebuilt_request() -> None:
    seen: list[dict[str, Any]] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        _, claims = decode(request.headers["dpop"])
        seen.append(claims)
        if claims.get("nonce") != "server-nonce-2":
            return httpx2.Response(
                400, json={"error": "use_dpop_nonce"}, headers={"DPoP-Nonce": "server-nonce-2"}
            )
        return httpx2.Response(200, json={"ok": True}, headers={"DPoP-Nonce": "server-nonce-3"})

    server = server_with(handler)
    builds: list[int] = []

    def build() -> HttpRequest:
        builds.append(1)
        return HttpRequest("POST", f"{ISSUER}/token", form={"n": str(len(builds))})

    s = server.dpop_signer(SoftwareDPoPKeys().generate_now("ES256"))
    response = await server.send_token_request(build, dpop=s)
    assert response.status_code == 200
    assert len(seen) == 2
    assert len(builds) == 2  # built again: a client assertion is never replayed
    assert seen[0]["jti"] != seen[1]["jti"]
    assert "nonce" not in seen[0]
    assert seen[1]["nonce"] == "server-nonce-2"
    assert server.dpop_nonces.get(f"{ISSUER}/token") == "server-nonce-3"  # kept from the 200


async def test_sec_37_a_second_use_dpop_nonce_is_returned_not_retried() -> None:
    calls = 0

    def handler(request: httpx2.Request) -> httpx2.Response:
        nonlocal calls
        calls += 1
        return httpx2.Response(
            400, json={"error": "use_dpop_nonce"}, headers={"DPoP-Nonce": f"n{calls}"}
        )

    server = server_with(handler)
    s = server.dpop_signer(SoftwareDPoPKeys().generate_now("ES256"))
    response = await server.send_token_request(
        lambda: HttpRequest("POST", f"{ISSUER}/token", form={}), dpop=s
    )
    assert (response.status_code, calls) == (400, 2)


def token_response(token_type: str, access_token: str = "opaque-token") -> TokenResponse:
    return TokenResponse(access_token=SecretStr(access_token), token_type=token_type)


def jwt_with(claims: dict[str, Any]) -> str:
    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'RS256', 'typ': 'at+jwt'})}.{part(claims)}.c2ln"


def test_sec_36_binding_checked_both_ways() -> None:
    server = server_with(lambda r: httpx2.Response(500))
    s = server.dpop_signer(SoftwareDPoPKeys().generate_now("ES256"))
    server.check_binding(token_response("Bearer"), None)
    server.check_binding(token_response("DPoP"), s)  # opaque: nothing more to read
    server.check_binding(token_response("dpop", jwt_with({"cnf": {"jkt": s.jkt}})), s)
    cases = [
        (token_response("Bearer"), s, "token_type"),
        (token_response("DPoP"), None, "token_type"),
        (token_response("DPoP", jwt_with({"cnf": {"jkt": "someone-else"}})), s, "cnf"),
        (token_response("DPoP", jwt_with({"sub": "alice"})), s, "cnf"),
    ]
    for response, dpop, reason in cases:
        with pytest.raises(TokenBindingError) as caught:
            server.check_binding(response, dpop)
        assert caught.value.reason == reason


# -- the resource side: ResourceAuth and TokenAuth -------------------------------------------


def access_token(token_type: str, dpop: DPoPSigner | None) -> AccessToken:
    return AccessToken(
        value=SecretStr("the-token"),
        token_type=token_type,
        issuer=ISSUER,
        resource="https://api.example/v1",
        scopes=("read",),
        expires_at=None,
        received_at=0.0,
        dpop=dpop,
    )


class Source:
    def __init__(self, token: AccessToken) -> None:
        self.value = token
        self.refreshed = 0

    async def token(self) -> AccessToken:
        return self.value

    async def after_unauthorized(self, rejected: AccessToken) -> AccessToken:
        self.refreshed += 1
        return self.value

    async def after_insufficient_scope(self, scopes: Sequence[str]) -> AccessToken:
        raise AssertionError("no step-up expected")

    async def after_insufficient_authentication(
        self, acr_values: Sequence[str], max_age: int | None
    ) -> AccessToken:
        raise AssertionError("no step-up expected")


def nonce_resource(seen: list[dict[str, str]], *, rotate: bool = False) -> Any:
    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(dict(request.headers))  # a copy: the auth flow reuses the request
        _, claims = decode(request.headers["dpop"])
        if rotate or claims.get("nonce") != "rs-nonce":  # rotate: never satisfied
            return httpx2.Response(
                401,
                headers={
                    "WWW-Authenticate": 'Bearer realm="x", DPoP error="use_dpop_nonce"',
                    "DPoP-Nonce": f"rs-{len(seen) + 1}" if rotate else "rs-nonce",
                },
            )
        return httpx2.Response(200)

    return handler


@pytest.mark.parametrize("kind", ["resource_auth", "token_auth"])
async def test_sec_37_resource_nonce_retried_once_then_sent_straight(kind: str) -> None:
    s = signer()
    token = access_token("DPoP", s)
    auth: httpx2.Auth
    source = Source(token)
    if kind == "resource_auth":
        auth = ResourceAuth(source, resource="https://api.example/v1")
    else:
        auth = TokenAuth(token)
    seen: list[dict[str, str]] = []
    async with httpx2.AsyncClient(
        transport=httpx2.MockTransport(nonce_resource(seen)), auth=auth
    ) as http:
        assert (await http.get("https://api.example/v1/items?q=1")).status_code == 200
        assert (await http.post("https://api.example/v1/items", json={})).status_code == 200
    assert len(seen) == 3  # one nonce retry, then the nonce straight away
    proofs = [decode(r["dpop"])[1] for r in seen]
    assert [p.get("nonce") for p in proofs] == [None, "rs-nonce", "rs-nonce"]
    assert len({p["jti"] for p in proofs}) == 3
    assert all(r["authorization"] == "DPoP the-token" for r in seen)
    assert all(p["ath"] == access_token_hash("the-token") for p in proofs)
    assert [p["htu"] for p in proofs] == ["https://api.example/v1/items"] * 3
    assert source.refreshed == 0  # a nonce refusal is not a bad token


async def test_sec_37_resource_that_keeps_rotating_gets_one_retry_only() -> None:
    source = Source(access_token("DPoP", signer()))
    seen: list[dict[str, str]] = []
    async with httpx2.AsyncClient(
        transport=httpx2.MockTransport(nonce_resource(seen, rotate=True)),
        auth=ResourceAuth(source, resource="https://api.example/v1"),
    ) as http:
        assert (await http.get("https://api.example/v1/items")).status_code == 401
    assert len(seen) == 2
    assert source.refreshed == 0


async def test_sec_36_bearer_tokens_never_travel_with_a_dpop_scheme_or_proof() -> None:
    seen: list[httpx2.Request] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        return httpx2.Response(200)

    token = access_token("Bearer", None)
    async with httpx2.AsyncClient(
        transport=httpx2.MockTransport(handler), auth=TokenAuth(token)
    ) as http:
        await http.get("https://api.example/v1/x", headers={"DPoP": "planted"})
    assert seen[0].headers["authorization"] == "Bearer the-token"
    assert "dpop" not in seen[0].headers
    assert await token.request_headers("GET", "https://api.example/v1") == {
        "Authorization": "Bearer the-token"
    }
    lost = access_token("DPoP", None)  # a bound token whose key is gone
    with pytest.raises(ConfigurationError, match="lost its key"):
        await lost.request_headers("GET", "https://api.example/v1")
    with pytest.raises(ConfigurationError, match="DPoP-bound"):
        lost.authorization_header()


async def test_sec_23_token_auth_sends_only_under_the_token_resource() -> None:
    from agent_identity import InsecureURLError

    sent: list[httpx2.Request] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        sent.append(request)
        return httpx2.Response(200)

    async with httpx2.AsyncClient(
        transport=httpx2.MockTransport(handler), auth=TokenAuth(access_token("DPoP", signer()))
    ) as http:
        with pytest.raises(InsecureURLError):
            await http.get("https://evil.example/v1")
        assert sent == []  # refused before anything was sent
        resource = access_token("DPoP", signer()).resource
        assert resource is not None
        await http.get(f"{resource}/events")  # under the resource: sent, with the token
    (allowed,) = sent
    assert allowed.headers["authorization"].startswith("DPoP ")


def test_sec_40_no_key_material_in_reprs() -> None:
    s = signer()
    key = s.key
    text = repr(s) + repr(key) + repr(SoftwareDPoPKeys()) + repr(s.nonces)
    assert "d" not in {k for k in key.public_jwk}
    private = key.export()["jwk"]["d"]
    assert private not in text
    assert s.jkt in repr(s)


def test_dpop_switched_on_by_the_metadata_of_configured_servers_only() -> None:
    """A server learned from an MCP server uses DPoP only when its caller asks (the MCP
    layer presents tokens itself)."""
    announced = {**METADATA, "dpop_bound_access_tokens": True}
    driver = HttpDriver(TransportPolicy())
    configured = AuthorizationServer(client_id="a", metadata=announced, http=driver)
    learned = AuthorizationServer(client_id="a", metadata=announced, http=driver, learned=True)
    asked = AuthorizationServer(
        client_id="a", metadata=announced, http=driver, learned=True, dpop=True
    )
    plain = AuthorizationServer(client_id="a", metadata=METADATA, http=driver)
    assert (configured.uses_dpop, learned.uses_dpop, asked.uses_dpop) == (True, False, True)
    assert plain.uses_dpop is False
    with pytest.raises(ConfigurationError):
        AuthorizationServer(client_id="a", metadata=METADATA, http=driver, dpop="yes")  # type: ignore[arg-type]
