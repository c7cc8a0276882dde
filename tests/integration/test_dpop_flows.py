"""DPoP (RFC 9449) end to end: the SDK against the real local authorization server with DPoP
and a resource server that verifies proofs (``_resource.py``).

Security items 34-37: well-formed proofs on every token-endpoint-like request (code, PAR
with ``dpop_jkt``, refresh, client credentials, token exchange, device, CIBA) and on
resource requests (``ath``); a fresh proof for every request, retries included; DPoP-bound
tokens only ever sent with a proof, bearer tokens never with the DPoP scheme, a stolen
token useless alone; nonces at the authorization server (400) and at resources (401)
retried once and cached per origin, never shared. Also: one key per grant sealed with it in
the vault (a restart keeps both; losing the key loses the grant), DPoP switched on by the
server's metadata, EdDSA/RS256 when the server lists only those, and a key provider whose
keys never leave their "HSM".
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import _postgres
import anyio
import anyio.lowlevel
import httpx2
import pytest
from _helpers import CALENDAR, MAIL, PAYMENTS, make_client, record_of
from _idp import _install_or_skip
from _postgres import pg_schema
from _resource import CalendarAPI

from agent_identity import (
    Action,
    DeviceAuthorization,
    DeviceCodeConsent,
    DPoPKey,
    ReauthorizationRequired,
    SoftwareDPoPKeys,
    TokenBindingError,
    TokenVault,
)
from agent_identity.devidp import (
    CIBA_GRANT_TYPE,
    DEVICE_CODE_GRANT_TYPE,
    TOKEN_EXCHANGE_GRANT_TYPE,
    DevIdP,
)
from agent_identity.errors import ConfigurationError
from agent_identity.oauth.dpop import DPoPNonces, DPoPSigner
from agent_identity.oauth.jwt import peek_claims
from agent_identity.vault import Keyring

__all__ = ["pg_schema"]

pytestmark = [pytest.mark.anyio, pytest.mark.idp]

PAY = Action("pay_invoice", {"invoice": "INV-7", "amount": "120.00 EUR"})
TOKEN_ROUTES = ("token", "pushed_authorization_request")


@pytest.fixture(scope="module")
def idp() -> Iterator[DevIdP]:
    """One dev server for this module (DPoP is always on; nonces switched per test)."""
    _install_or_skip()
    server = DevIdP(ciba_interval=1)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def fresh(idp: DevIdP) -> AsyncIterator[DevIdP]:
    """The module's server with an empty request log, nonces off, no quirks."""
    await idp.set_dpop_nonce(False)
    await idp.clear_requests()
    yield idp
    await idp.set_dpop_nonce(False)
    for name in ("dpop_token_type_bearer",):
        await idp.set_quirk(name, False)


async def calendar_api(idp: DevIdP, **kwargs: Any) -> CalendarAPI:
    async with httpx2.AsyncClient() as http:
        jwks = (await http.get(f"{idp.issuer}/jwks")).json()
    return CalendarAPI(issuer=idp.issuer, jwks=jwks, **kwargs)


def api_client(api: Any, auth: httpx2.Auth | None, base: str = CALENDAR) -> httpx2.AsyncClient:
    return httpx2.AsyncClient(
        transport=httpx2.ASGITransport(app=api), base_url=base + "/", auth=auth
    )


async def proofs_to_the_server(idp: DevIdP) -> list[dict[str, Any]]:
    return [r for r in await idp.requests() if r["route"] in TOKEN_ROUTES]


@asynccontextmanager
async def approving(idp: DevIdP, result: dict[str, Any]) -> AsyncIterator[None]:
    """Approve every CIBA request that shows up while the block runs (alice's phone)."""
    async with anyio.create_task_group() as tg:

        async def phone() -> None:
            while True:
                for pending in await idp.ciba_pending():
                    result.setdefault("pending", []).append(pending)
                    await idp.ciba_approve(pending["auth_req_id"])
                await anyio.sleep(0.05)

        tg.start_soon(phone)
        try:
            yield
        finally:
            tg.cancel_scope.cancel()


def assert_well_formed(proof: Mapping[str, Any] | None, *, htu: str, ath: bool = False) -> None:
    """Security item 34, as the dev server's request log decoded it."""
    assert proof is not None, "no DPoP proof"
    assert proof["typ"] == "dpop+jwt"
    assert proof["alg"] == "ES256"
    assert proof["header_members"] == ["alg", "jwk", "typ"]
    assert proof["jwk_kty"] == "EC"
    assert proof["jwk_private"] is False
    claims = proof["claims"]
    assert set(claims) <= {"jti", "htm", "htu", "iat", "nonce", "ath"}
    assert len(claims["jti"]) * 6 >= 96  # base64url characters carry 6 bits each
    assert claims["htm"] == "POST"
    assert claims["htu"] == htu
    assert abs(claims["iat"] - time.time()) < 60
    assert ("ath" in claims) is ath


# -- security 34: proofs -----------------------------------------------------------------


async def test_sec_34_every_token_request_and_resource_request_carries_a_proof(
    fresh: DevIdP,
) -> None:
    idp = fresh
    api = await calendar_api(idp)
    async with make_client(idp, dpop=True) as identity:
        alice = identity.user("alice")
        await alice.consent(scopes=["calendar.read"], resource=CALENDAR)  # PAR + code
        token = await alice.token(resource=CALENDAR, scopes=["calendar.read"])
        await alice.refresh_after_rejection(token)  # refresh
        await identity.client_credentials(scopes=["calendar.read"], resource=CALENDAR)
        await alice.exchange(resource=CALENDAR, scopes=["calendar.read"], actor=False)
        result: dict[str, Any] = {}
        async with approving(idp, result):
            approval = await alice.approve(action=PAY, scopes=["payments.write"], resource=PAYMENTS)
        async with api_client(api, alice.http_auth(resource=CALENDAR, scopes="calendar.read")) as c:
            assert (await c.get("events", params={"day": "monday"})).status_code == 200
        grant = await record_of(identity, "alice")
    async with anyio.create_task_group() as tg:

        def prompt(authorization: DeviceAuthorization) -> None:
            tg.start_soon(idp.device_approve, authorization.user_code, "bob")

        async with make_client(
            idp, "agent-public", dpop=True, consent=DeviceCodeConsent(prompt=prompt)
        ) as public:
            await public.user("bob").consent(scopes=["mail.read"], resource=MAIL)  # device

    logged = await proofs_to_the_server(idp)
    grant_types = {r["grant_type"] for r in logged if r["route"] == "token"}
    assert grant_types >= {
        "authorization_code",
        "refresh_token",
        "client_credentials",
        TOKEN_EXCHANGE_GRANT_TYPE,
        CIBA_GRANT_TYPE,
        DEVICE_CODE_GRANT_TYPE,
    }
    for request in logged:
        endpoint = "/request" if request["route"] == "pushed_authorization_request" else "/token"
        assert_well_formed(request["dpop"], htu=f"{idp.issuer}{endpoint}")
    # PAR: the code is bound to the grant's key (dpop_jkt, RFC 9449 §10)
    (par,) = [r for r in logged if r["route"] == "pushed_authorization_request"]
    signer = identity.server.load_dpop_signer(grant.dpop_key)  # type: ignore[union-attr]
    assert par["dpop_jkt"] == signer.jkt
    assert peek_claims(token.value.get_secret_value())["cnf"] == {"jkt": signer.jkt}
    assert approval.use(PAY).token_type == "DPoP"
    # the resource request: ath, and htu without the query
    assert api.check is not None
    (proof,) = api.check.proofs
    assert proof["claims"]["htu"] == f"{CALENDAR}/events"
    assert proof["claims"]["htm"] == "GET"
    assert proof["claims"]["ath"]
    assert set(proof["header"]) == {"typ", "alg", "jwk"}
    assert "d" not in proof["header"]["jwk"]


# -- security 35: a fresh proof every time -------------------------------------------------


async def test_sec_35_a_fresh_proof_for_every_request_retries_included(fresh: DevIdP) -> None:
    idp = fresh
    await idp.set_dpop_nonce(True)
    api = await calendar_api(idp, require_nonce=True)
    # agent-jwt: private_key_jwt, so a retry also needs a fresh client assertion
    async with make_client(idp, "agent-jwt", dpop=True) as identity:
        alice = identity.user("alice")
        await alice.consent(scopes=["calendar.read"], resource=CALENDAR)
        token = await alice.token(resource=CALENDAR, scopes=["calendar.read"])
        await alice.refresh_after_rejection(token)
        async with api_client(api, alice.http_auth(resource=CALENDAR, scopes="calendar.read")) as c:
            for _ in range(3):
                assert (await c.get("events")).status_code == 200
    logged = await proofs_to_the_server(idp)
    retried = [r for r in logged if r["status"] == 400]
    assert retried, "the server asked for a nonce"
    jtis = [r["dpop"]["claims"]["jti"] for r in logged]
    assert len(jtis) == len(set(jtis)) == len(logged)  # never the same proof twice
    assert all(r["status"] in (200, 201) for r in logged if r not in retried)
    assert api.check is not None
    resource_jtis = [p["claims"]["jti"] for p in api.check.proofs]
    assert len(api.check.proofs) == 4  # 3 calls + 1 nonce retry
    assert len(set(resource_jtis)) == 4


# -- security 36: the token type is checked both ways ------------------------------------


async def test_sec_36_dpop_tokens_only_with_proofs_and_a_stolen_token_is_useless(
    fresh: DevIdP,
) -> None:
    idp = fresh
    api = await calendar_api(idp)
    async with make_client(idp, dpop=True) as identity:
        alice = identity.user("alice")
        await alice.consent(scopes=["calendar.read"], resource=CALENDAR)
        token = await alice.token(resource=CALENDAR, scopes=["calendar.read"])
        assert token.token_type == "DPoP"
        assert token.dpop is not None
        with pytest.raises(ConfigurationError, match="DPoP-bound"):
            token.authorization_header()  # never as a bearer token
        async with api_client(api, alice.http_auth(resource=CALENDAR, scopes="calendar.read")) as c:
            assert (await c.get("events")).status_code == 200
        sent = api.seen[-1]["headers"]
        assert sent["authorization"].startswith("DPoP ")
        assert sent["dpop"]
        stolen = token.value.get_secret_value()
        legit_proof = sent["dpop"]
        attacker = DPoPSigner(
            SoftwareDPoPKeys().generate_now("ES256"), nonces=DPoPNonces(), time=time.time
        )
        url = f"{CALENDAR}/events"
        async with api_client(api, None) as thief:
            attempts = [
                {"Authorization": f"Bearer {stolen}"},
                {"Authorization": f"DPoP {stolen}"},
                {"Authorization": f"DPoP {stolen}", "DPoP": legit_proof},  # replayed proof
                {
                    "Authorization": f"DPoP {stolen}",
                    "DPoP": await attacker.proof("GET", url, access_token=stolen),
                },
            ]
            for headers in attempts:
                assert (await thief.get("events", headers=headers)).status_code == 401

        # a server that answers a DPoP request with a bearer token is refused, and the
        # refresh token that came with it is kept
        await idp.set_quirk("dpop_token_type_bearer", True)
        with pytest.raises(TokenBindingError) as caught:
            await alice.refresh_after_rejection(token)
        assert caught.value.reason == "token_type"
        await idp.set_quirk("dpop_token_type_bearer", False)
        again = await alice.refresh_after_rejection(token)  # the salvaged refresh token
        assert again.token_type == "DPoP"

    # a bearer client: bearer tokens, never with the DPoP scheme or a proof
    async with make_client(idp, consent=_browser("bob")) as bearer:
        bob = bearer.user("bob")
        await bob.consent(scopes=["calendar.read"], resource=CALENDAR)
        plain = await bob.token(resource=CALENDAR, scopes=["calendar.read"])
        assert plain.token_type == "Bearer"
        async with api_client(api, bob.http_auth(resource=CALENDAR, scopes="calendar.read")) as c:
            assert (await c.get("events", headers={"DPoP": "stale"})).status_code == 200
        sent = api.seen[-1]["headers"]
        assert sent["authorization"].startswith("Bearer ")
        assert "dpop" not in sent


def _browser(login: str) -> Any:
    from agent_identity import LoopbackConsent
    from agent_identity.devidp import DevBrowser

    return LoopbackConsent(browser=DevBrowser(login))


# -- security 37: nonces ------------------------------------------------------------------


async def test_sec_37_nonces_retried_once_and_kept_per_origin(fresh: DevIdP) -> None:
    idp = fresh
    await idp.set_dpop_nonce(True)
    calendar = await calendar_api(idp, require_nonce=True)
    mail = CalendarAPI(
        issuer=idp.issuer, jwks=calendar.jwks, resource=MAIL, require_nonce=True, scope="mail"
    )
    async with make_client(idp, dpop=True) as identity:
        alice = identity.user("alice")
        await alice.consent(scopes=["calendar.read"], resource=CALENDAR)
        await alice.consent(scopes=["mail.read"], resource=MAIL)
        token = await alice.token(resource=CALENDAR, scopes=["calendar.read"])
        await alice.refresh_after_rejection(token)
        for api, base, scope in ((calendar, CALENDAR, "calendar.read"), (mail, MAIL, "mail.read")):
            auth = alice.http_auth(resource=base, scopes=scope)
            async with api_client(api, auth, base) as c:
                for _ in range(2):
                    assert (await c.get("events")).status_code == 200

    # at the authorization server: ONE use_dpop_nonce (the first request), then the nonce
    # is sent straight away (it is kept for the origin)
    logged = await proofs_to_the_server(idp)
    assert [r["status"] for r in logged].count(400) == 1
    assert logged[0]["status"] == 400
    assert "nonce" not in logged[0]["dpop"]["claims"]
    as_nonces = {r["dpop"]["claims"].get("nonce") for r in logged[1:]}
    assert None not in as_nonces
    # at each resource: one 401 use_dpop_nonce, one retry, then the nonce straight away
    for api in (calendar, mail):
        assert api.check is not None
        sent = [p["claims"].get("nonce") for p in api.check.proofs]
        assert sent == [None, api.check.nonce, api.check.nonce]
    # never shared across servers
    assert calendar.check is not None
    assert mail.check is not None
    assert calendar.check.nonce not in as_nonces
    assert mail.check.nonce not in as_nonces
    assert set(sent) & as_nonces == set()


async def test_sec_37_a_second_nonce_refusal_is_not_retried(fresh: DevIdP) -> None:
    """One retry only: a resource that keeps asking for a new nonce gets its 401 back."""
    idp = fresh
    api = await calendar_api(idp, require_nonce=True)
    async with make_client(idp, dpop=True) as identity:
        alice = identity.user("alice")
        await alice.consent(scopes=["calendar.read"], resource=CALENDAR)
        assert api.check is not None
        check = api.check

        class Rotating:
            async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
                check.nonce = f"n{len(check.proofs)}xxxxxxxxxxxx"  # a new nonce every time
                await api(scope, receive, send)

        async with api_client(
            Rotating(), alice.http_auth(resource=CALENDAR, scopes="calendar.read")
        ) as c:
            response = await c.get("events")
        assert response.status_code == 401
        assert len(check.proofs) == 2  # the request and ONE retry


# -- one key per grant, in the vault -------------------------------------------------------


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
async def test_dpop_grant_survives_a_restart_and_losing_the_key_loses_the_grant(
    fresh: DevIdP, store: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    idp = fresh
    keys = Keyring.ephemeral()

    def vault() -> TokenVault:
        if store == "sqlite":
            return TokenVault.sqlite(tmp_path / "vault.sqlite3", keys=keys)
        schema = request.getfixturevalue("pg_schema")
        return TokenVault.from_url(_postgres.url(schema), keys=keys)

    # agent-public: the server binds a public client's refresh token to the DPoP key
    first = vault()
    async with make_client(idp, "agent-public", dpop=True, vault=first) as identity:
        await identity.user("alice").consent(scopes=["calendar.read"], resource=CALENDAR)
        stored = await record_of(identity, "alice")
    await first.aclose()
    assert stored.dpop_key is not None
    assert stored.refresh_token is not None
    assert json.loads(stored.to_bytes())["v"] == 3
    jkt = DPoPSigner(
        SoftwareDPoPKeys().load(stored.dpop_key), nonces=DPoPNonces(), time=time.time
    ).jkt

    second = vault()  # a new process: key and refresh token come back together
    async with make_client(idp, "agent-public", dpop=True, vault=second) as identity:
        alice = identity.user("alice")
        cached = await alice.token(resource=CALENDAR, scopes=["calendar.read"])
        refreshed = await alice.refresh_after_rejection(cached)
        assert peek_claims(refreshed.value.get_secret_value())["cnf"] == {"jkt": jkt}
        # losing the key loses the grant: the refresh token is bound to the lost key
        current = await second.load(alice.key, fresh=True)
        assert current is not None
        await second.save(
            alice.key, current.record.replace(dpop_key=None), expected_version=current.version
        )
        with pytest.raises(ReauthorizationRequired):
            await alice.refresh_after_rejection(refreshed)
        assert await second.load(alice.key, fresh=True) is None
    await second.aclose()


# -- when the server asks for DPoP, and which algorithm ------------------------------------


async def test_dpop_used_when_the_server_binds_every_token(
    dev_idp_factory: Callable[..., DevIdP],
) -> None:
    idp = dev_idp_factory(dpop_bound=True)
    async with make_client(idp) as identity:  # no dpop= here
        assert identity.metadata.dpop_bound_access_tokens
        alice = identity.user("alice")
        await alice.consent(scopes=["calendar.read"], resource=CALENDAR)
        token = await alice.token(resource=CALENDAR, scopes=["calendar.read"])
        assert token.token_type == "DPoP"
        assert "jkt" in peek_claims(token.value.get_secret_value())["cnf"]
        cc = await identity.client_credentials(scopes=["calendar.read"], resource=CALENDAR)
        assert cc.token_type == "DPoP"


@pytest.mark.parametrize(("offered", "used"), [(["EdDSA"], "EdDSA"), (["RS256"], "RS256")])
async def test_dpop_algorithm_follows_what_the_server_lists(
    dev_idp_factory: Callable[..., DevIdP], offered: list[str], used: str
) -> None:
    idp = dev_idp_factory(dpop_algorithms=offered)
    async with make_client(idp, dpop=True) as identity:
        alice = identity.user("alice")
        await alice.consent(scopes=["calendar.read"], resource=CALENDAR)
        token = await alice.token(resource=CALENDAR, scopes=["calendar.read"])
        assert token.dpop is not None
        assert token.dpop.algorithm == used
    assert {r["dpop"]["alg"] for r in await proofs_to_the_server(idp)} == {used}


# -- keys that never leave a KMS or HSM ----------------------------------------------------


class FakeHSM:
    """Stands in for a KMS: keys live here; callers get a reference and signatures."""

    def __init__(self) -> None:
        self.keys: dict[str, Any] = {}
        self.signatures = 0

    def create(self) -> str:
        from cryptography.hazmat.primitives.asymmetric import ec

        key_id = f"hsm-key-{len(self.keys) + 1}"
        self.keys[key_id] = ec.generate_private_key(ec.SECP256R1())
        return key_id

    def sign_der(self, key_id: str, data: bytes) -> bytes:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec

        self.signatures += 1
        return bytes(self.keys[key_id].sign(data, ec.ECDSA(hashes.SHA256())))  # DER, as KMSs do

    def public_jwk(self, key_id: str) -> dict[str, Any]:
        from joserfc.jwk import ECKey

        return dict(ECKey.import_key(self.keys[key_id].public_key()).as_dict(private=False))


class HSMKey:
    def __init__(self, hsm: FakeHSM, key_id: str) -> None:
        self._hsm = hsm
        self.key_id = key_id

    @property
    def algorithm(self) -> str:
        return "ES256"

    @property
    def public_jwk(self) -> Mapping[str, Any]:
        return self._hsm.public_jwk(self.key_id)

    async def sign(self, signing_input: bytes) -> bytes:
        await anyio.lowlevel.checkpoint()  # a network call in real life
        return self._hsm.sign_der(self.key_id, signing_input)

    def export(self) -> dict[str, Any]:
        return {"kind": "fake-hsm", "key_id": self.key_id}


class HSMKeys:
    def __init__(self, hsm: FakeHSM) -> None:
        self.hsm = hsm

    async def generate(self, algorithms: Sequence[str]) -> DPoPKey:
        assert not algorithms or "ES256" in algorithms
        return HSMKey(self.hsm, self.hsm.create())

    def load(self, exported: Mapping[str, Any]) -> DPoPKey:
        if exported.get("kind") != "fake-hsm" or exported.get("key_id") not in self.hsm.keys:
            raise ConfigurationError("not a key of this HSM")
        return HSMKey(self.hsm, str(exported["key_id"]))


async def test_dpop_key_provider_keeps_the_private_key_out_of_the_vault(fresh: DevIdP) -> None:
    idp = fresh
    hsm = FakeHSM()
    api = await calendar_api(idp)
    vault = TokenVault.memory()
    async with make_client(idp, dpop=HSMKeys(hsm), vault=vault) as identity:
        alice = identity.user("alice")
        await alice.consent(scopes=["calendar.read"], resource=CALENDAR)
        async with api_client(api, alice.http_auth(resource=CALENDAR, scopes="calendar.read")) as c:
            assert (await c.get("events")).status_code == 200
        token = await alice.token(resource=CALENDAR, scopes=["calendar.read"])
        await alice.refresh_after_rejection(token)
        record = await record_of(identity, "alice")
    assert dict(record.dpop_key) == {"kind": "fake-hsm", "key_id": "hsm-key-1"}
    assert '"d"' not in record.to_bytes().decode()  # no private key material in the row
    assert hsm.signatures >= 4  # PAR, code, resource request, refresh
    # a software-key client cannot use the HSM's grant (the key is not its to load)
    async with make_client(idp, dpop=True, vault=vault) as other:
        with pytest.raises(ConfigurationError):
            await other.user("alice").refresh_after_rejection(token)


async def test_a_bearer_grant_gets_its_key_at_the_next_refresh_when_dpop_is_switched_on(
    fresh: DevIdP,
) -> None:
    """A grant stored before DPoP was on: its cached bearer token is not used by a DPoP
    client; the key is made and stored with the grant before the refresh that binds the
    new tokens to it."""
    idp = fresh
    vault = TokenVault.memory()
    async with make_client(idp, vault=vault) as before:
        await before.user("alice").consent(scopes=["calendar.read"], resource=CALENDAR)
        bearer = await before.user("alice").token(resource=CALENDAR, scopes=["calendar.read"])
        assert bearer.token_type == "Bearer"
        assert (await record_of(before, "alice")).dpop_key is None
    await idp.clear_requests()
    async with make_client(idp, vault=vault, dpop=True) as after:
        alice = after.user("alice")
        token = await alice.token(resource=CALENDAR, scopes=["calendar.read"])
        assert token.token_type == "DPoP"
        assert token.value.get_secret_value() != bearer.value.get_secret_value()
        record = await record_of(after, "alice")
        assert record.dpop_key is not None
        jkt = after.server.load_dpop_signer(record.dpop_key).jkt  # type: ignore[union-attr]
        assert peek_claims(token.value.get_secret_value())["cnf"] == {"jkt": jkt}
    (refresh,) = await idp.token_requests("refresh_token")
    assert refresh["dpop"] is not None
