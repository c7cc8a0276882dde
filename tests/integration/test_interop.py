"""The same flows against every real authorization server (``server`` fixture).

Each test runs once per server of :mod:`_servers` (oidc-provider and
django-oauth-toolkit), through the public API of ``agent_identity`` only, and checks the
outcome against what the SERVER says (its request log and ``token_facts``: introspection
or the access token's claims), never against the SDK's own view alone.

A flow a server lacks is a skip with the reason (``server.require``). Where the SDK as it
stands fails against a server, the test is a strict ``xfail`` naming the SDK defect: it
flips to a failure (XPASS) as soon as the defect is fixed, and then the mark goes.
Line numbers in the reasons refer to main at 21eb428.
"""

from __future__ import annotations

from typing import Any

import httpx2
import pytest
from _helpers import CALENDAR, MAIL, record_of
from _servers import ServerUnderTest

from agent_identity import (
    AgentIdentityError,
    ConsentDenied,
    DeviceCodeConsent,
    IdentityClient,
    InvalidClient,
    IssuerMismatch,
    LoopbackConsent,
    ReauthorizationRequired,
)

pytestmark = pytest.mark.anyio

#: Scopes about the grant itself, not a resource (servers differ in echoing them).
GRANT_SCOPES = frozenset({"openid", "offline_access"})


def known_defect(
    request: pytest.FixtureRequest,
    server: ServerUnderTest,
    *,
    raises: type[BaseException] | tuple[type[BaseException], ...],
    reason: str,
    on: tuple[str, ...] = ("devidp", "dot"),
) -> None:
    """Mark this run a strict xfail on the servers ``on`` (an SDK defect, see reason)."""
    if server.name in on:
        request.node.add_marker(pytest.mark.xfail(strict=True, raises=raises, reason=reason))


async def token_requests(server: ServerUnderTest, grant_type: str) -> list[dict[str, Any]]:
    return [
        r
        for r in await server.requests()
        if r["route"] == "token" and r["grant_type"] == grant_type
    ]


async def replay_refresh(
    server: ServerUnderTest, identity: IdentityClient, refresh_token: str
) -> httpx2.Response:
    """Present ``refresh_token`` at the token endpoint ourselves (basic client)."""
    kwargs = server.client_kwargs("basic")
    token_endpoint = identity.metadata.token_endpoint
    assert token_endpoint is not None
    async with httpx2.AsyncClient(trust_env=False, timeout=30.0) as http:
        return await http.post(
            token_endpoint,
            data={"grant_type": "refresh_token", "refresh_token": refresh_token},
            auth=(kwargs["client_id"], kwargs["client_secret"]),
        )


# --------------------------------------------------------------------------- discovery


async def test_discovery(server: ServerUnderTest) -> None:
    async with server.client("basic") as identity:
        metadata = identity.metadata
        assert metadata.issuer == server.issuer
        assert "S256" in metadata.code_challenge_methods_supported
        assert metadata.token_endpoint is not None
        assert metadata.authorization_endpoint is not None
        assert metadata.jwks_uri is not None
        assert (metadata.revocation_endpoint is not None) == ("revocation" in server.capabilities)
        assert (metadata.device_authorization_endpoint is not None) == (
            "device" in server.capabilities
        )
        assert {"client_secret_basic", "private_key_jwt", "none"} <= set(
            metadata.token_endpoint_auth_methods_supported or ()
        )
        assert identity.client_auth.method == "client_secret_basic"
        if "iss_parameter" in server.capabilities:
            assert metadata.authorization_response_iss_parameter_supported


# --------------------------------------------------------------------------- consent


@pytest.mark.parametrize(
    ("kind", "method"),
    [
        ("basic", "client_secret_basic"),
        ("post", None),  # the SDK cannot pick client_secret_post: see the test below
        ("public", "none"),
        ("jwt", "private_key_jwt"),
    ],
)
async def test_consent_with_pkce_for_each_client_kind(
    server: ServerUnderTest, kind: Any, method: str | None
) -> None:
    if kind == "jwt":
        server.require("private_key_jwt")
    await server.clear_requests()
    async with server.client(kind) as identity:
        alice = identity.user("alice", tenant="acme")
        grant = await alice.consent(scopes=["openid", "calendar.read"], resource=CALENDAR)
        assert grant.subject == await server.subject("alice")
        assert "calendar.read" in grant.scopes
        assert grant.has_refresh_token
        assert grant.resources == (CALENDAR,)
        token = await alice.token(resource=CALENDAR, scopes=["calendar.read"])
    facts = await server.token_facts(token.value.get_secret_value())
    assert facts.active
    assert "calendar.read" in facts.scopes
    assert facts.client_id == server.client_kwargs(kind)["client_id"]
    if "resource_indicators" in server.capabilities:
        assert CALENDAR in facts.audience
    (code_request,) = await token_requests(server, "authorization_code")
    assert code_request["status"] == 200
    assert "code_verifier" in code_request["secret_fields"]  # PKCE
    assert code_request["resource"] == [CALENDAR]
    if method is not None:
        assert code_request["client_auth"] == method
    else:
        assert code_request["client_auth"] in ("client_secret_basic", "client_secret_post")


async def test_client_secret_post_client_uses_client_secret_post(
    request: pytest.FixtureRequest, server: ServerUnderTest
) -> None:
    await server.clear_requests()
    async with server.client("post", token_endpoint_auth_method="client_secret_post") as identity:
        await identity.user("alice").consent(scopes=["openid", "calendar.read"])
    (code_request,) = await token_requests(server, "authorization_code")
    assert code_request["client_auth"] == "client_secret_post"


async def test_consent_denied(server: ServerUnderTest) -> None:
    expected: type[Exception] = ConsentDenied
    if server.name == "dot":
        # django-oauth-toolkit's error redirect (access_denied) carries no ``iss`` although
        # it advertises RFC 9207 support, which §2 requires in error responses too; the
        # SDK rightly refuses such a response (RFC 9207 §2.4, security item 18).
        expected = IssuerMismatch
    consent = LoopbackConsent(browser=server.browser(approve=False))
    async with server.client("basic", consent=consent) as identity:
        with pytest.raises(expected):
            await identity.user("alice").consent(scopes=["openid", "calendar.read"])
        assert await identity.user("alice").grant() is None


# --------------------------------------------------------------------------- tokens


async def test_token_for_a_resource_and_scopes(server: ServerUnderTest) -> None:
    async with server.client("basic") as identity:
        alice = identity.user("alice")
        await alice.consent(scopes=["openid", "calendar.read", "calendar.write"], resource=CALENDAR)
        token = await alice.token(resource=CALENDAR, scopes=["calendar.read", "calendar.write"])
    assert token.resource == CALENDAR
    assert set(token.scopes) - GRANT_SCOPES == {"calendar.read", "calendar.write"}
    facts = await server.token_facts(token.value.get_secret_value())
    assert facts.active
    assert {"calendar.read", "calendar.write"} <= facts.scopes
    assert facts.user in ("alice", await server.subject("alice"))
    if "resource_indicators" in server.capabilities:
        assert CALENDAR in facts.audience


async def test_refresh_after_rejection_rotates(server: ServerUnderTest) -> None:
    server.require("refresh_rotation")
    async with server.client("basic") as identity:
        alice = identity.user("alice")
        await alice.consent(scopes=["openid", "calendar.read"], resource=CALENDAR)
        first = await alice.token(resource=CALENDAR, scopes=["calendar.read"])
        before = (await record_of(identity, "alice")).refresh_token.get_secret_value()
        await server.clear_requests()
        second = await alice.refresh_after_rejection(first)
        after = (await record_of(identity, "alice")).refresh_token.get_secret_value()
    assert second.value.get_secret_value() != first.value.get_secret_value()
    assert after != before  # rotated, and the new one stored
    (refresh,) = await token_requests(server, "refresh_token")
    assert refresh["status"] == 200
    assert refresh["scope"] == "calendar.read"
    assert refresh["resource"] == [CALENDAR]
    facts = await server.token_facts(second.value.get_secret_value())
    assert facts.active
    assert facts.scopes == {"calendar.read"}


async def test_rotated_refresh_token_reuse_kills_the_grant(server: ServerUnderTest) -> None:
    """RFC 9700 §4.14.2: replaying a rotated refresh token revokes the grant; the SDK
    then reports ReauthorizationRequired and forgets the grant."""
    server.require("refresh_reuse_detection")
    async with server.client("basic") as identity:
        alice = identity.user("alice")
        await alice.consent(scopes=["openid", "calendar.read"], resource=CALENDAR)
        first = await alice.token(resource=CALENDAR, scopes=["calendar.read"])
        old = (await record_of(identity, "alice")).refresh_token.get_secret_value()
        second = await alice.refresh_after_rejection(first)
        replayed = await replay_refresh(server, identity, old)
        assert replayed.status_code == 400
        assert replayed.json()["error"] == "invalid_grant"
        with pytest.raises(ReauthorizationRequired):
            await alice.refresh_after_rejection(second)
        assert await alice.grant() is None


async def test_refresh_narrowing(request: pytest.FixtureRequest, server: ServerUnderTest) -> None:
    """Per-tool tokens: each narrower than the grant, one after the other."""
    async with server.client("basic") as identity:
        alice = identity.user("alice")
        await alice.consent(scopes=["openid", "calendar.read", "calendar.write"], resource=CALENDAR)
        await server.clear_requests()
        read = await alice.token(resource=CALENDAR, scopes=["calendar.read"])
        assert (await server.token_facts(read.value.get_secret_value())).scopes == {"calendar.read"}
        assert read.scopes == ("calendar.read",)
        again = await alice.token(resource=CALENDAR, scopes=["calendar.read"])
        assert again is read  # cached: no second request
        assert len(await token_requests(server, "refresh_token")) == 1
        write = await alice.token(resource=CALENDAR, scopes=["calendar.write"])
    facts = await server.token_facts(write.value.get_secret_value())
    assert "calendar.write" in facts.scopes
    assert set(write.scopes) - GRANT_SCOPES == facts.scopes - GRANT_SCOPES  # honest label
    if server.name == "dot":
        # django-oauth-toolkit bound the rotated refresh token to calendar.read (against
        # RFC 6749 §6): the SDK saw the grant shrink (invalid_scope for a held scope),
        # asked alice again, and stopped narrowing refreshes at this server; the token is
        # then as broad as the grant, and says so.
        assert not identity.server.narrow_refresh
    else:
        assert facts.scopes == {"calendar.write"}


async def test_tokens_for_two_resources_of_one_grant(
    request: pytest.FixtureRequest, server: ServerUnderTest
) -> None:
    server.require("resource_indicators")
    async with server.client("basic") as identity:
        alice = identity.user("alice")
        await alice.consent(scopes=["openid", "calendar.read"], resource=CALENDAR)
        mail = await alice.token(resource=MAIL, scopes=["mail.read"])  # incremental consent
        assert MAIL in (await server.token_facts(mail.value.get_secret_value())).audience
        calendar = await alice.refresh_after_rejection(
            await alice.token(resource=CALENDAR, scopes=["calendar.read"])
        )
        facts = await server.token_facts(calendar.value.get_secret_value())
        assert CALENDAR in facts.audience
        assert "calendar.read" in facts.scopes


async def test_client_credentials(server: ServerUnderTest) -> None:
    server.require("client_credentials")
    await server.clear_requests()
    async with server.client("service") as identity:
        token = await identity.client_credentials(scopes=["calendar.read"], resource=CALENDAR)
        again = await identity.client_credentials(scopes=["calendar.read"], resource=CALENDAR)
    assert again is token
    facts = await server.token_facts(token.value.get_secret_value())
    assert facts.active
    assert facts.client_id == server.client_kwargs("service")["client_id"]
    assert facts.scopes == {"calendar.read"}
    if "resource_indicators" in server.capabilities:
        assert CALENDAR in facts.audience
    (call,) = await token_requests(server, "client_credentials")
    assert call["client_auth"] == "client_secret_basic"


async def test_device_flow(server: ServerUnderTest) -> None:
    server.require("device")
    await server.clear_requests()
    consent = DeviceCodeConsent(prompt=server.device_approver("alice"))
    async with server.client("device", consent=consent) as identity:
        alice = identity.user("alice")
        grant = await alice.consent(scopes=["openid", "calendar.read"], resource=CALENDAR)
        assert grant.has_refresh_token
        token = await alice.token(resource=CALENDAR, scopes=["calendar.read"])
    facts = await server.token_facts(token.value.get_secret_value())
    assert facts.active
    assert "calendar.read" in facts.scopes
    assert facts.user in ("alice", await server.subject("alice"))
    routes = [(r["route"], r["grant_type"]) for r in await server.requests()]
    assert ("device_authorization", None) in routes
    polls = await token_requests(server, "urn:ietf:params:oauth:grant-type:device_code")
    assert polls[-1]["status"] == 200
    assert polls[-1]["client_auth"] == "none"


async def test_id_token_claims(server: ServerUnderTest) -> None:
    server.require("id_token")
    async with server.client("basic") as identity:
        grant = await identity.user("alice").consent(
            scopes=["openid", "email", "profile", "calendar.read"], resource=CALENDAR
        )
    claims = grant.id_token_claims
    assert claims["iss"] == server.issuer
    assert claims["aud"] in ("agent-confidential", ["agent-confidential"])
    assert claims["sub"] == await server.subject("alice") == grant.subject
    assert claims["email"] == "alice@example.test"
    assert claims["name"] == "Alice Example"
    assert claims.get("nonce")


# --------------------------------------------------------------------------- revocation


async def test_disconnect_revokes_the_refresh_token(server: ServerUnderTest) -> None:
    server.require("revocation")
    async with server.client("basic") as identity:
        alice = identity.user("alice")
        await alice.consent(scopes=["openid", "calendar.read"], resource=CALENDAR)
        refresh_token = (await record_of(identity, "alice")).refresh_token.get_secret_value()
        await server.clear_requests()
        await alice.disconnect()
        assert await alice.grant() is None
        (revocation,) = [r for r in await server.requests() if r["route"] == "revocation"]
        assert revocation["status"] == 200
        assert "token" in revocation["secret_fields"]
        replayed = await replay_refresh(server, identity, refresh_token)
    assert replayed.status_code == 400
    assert replayed.json()["error"] == "invalid_grant"


async def test_dead_grant_requires_reauthorization(server: ServerUnderTest) -> None:
    async with server.client("basic") as identity:
        alice = identity.user("alice")
        await alice.consent(scopes=["openid", "calendar.read"], resource=CALENDAR)
        token = await alice.token(resource=CALENDAR, scopes=["calendar.read"])
        await server.revoke_grant("alice")
        with pytest.raises(ReauthorizationRequired):
            await alice.refresh_after_rejection(token)
        assert await alice.grant() is None


# --------------------------------------------------------------------------- quirks


async def test_quirk_dead_grant_with_empty_400(
    request: pytest.FixtureRequest, server: ServerUnderTest
) -> None:
    async with server.client("basic") as identity:
        alice = identity.user("alice")
        await alice.consent(scopes=["openid", "calendar.read"], resource=CALENDAR)
        token = await alice.token(resource=CALENDAR, scopes=["calendar.read"])
        await server.revoke_grant("alice")
        await server.set_quirk("refresh_invalid_grant_empty_body")
        try:
            with pytest.raises(ReauthorizationRequired):
                await alice.refresh_after_rejection(token)
        finally:
            assert (await token_requests(server, "refresh_token"))[-1]["status"] == 400
        assert await alice.grant() is None


@pytest.mark.parametrize("quirk", [False, True], ids=["compliant", "403"])
async def test_wrong_client_secret_is_invalid_client(
    request: pytest.FixtureRequest, server: ServerUnderTest, quirk: bool
) -> None:
    if quirk:
        await server.set_quirk("client_auth_403")
    async with server.client("service", client_secret="not-the-secret") as identity:
        with pytest.raises(InvalidClient):
            await identity.client_credentials(scopes=["calendar.read"], resource=CALENDAR)


async def test_quirk_refresh_ignores_scope(
    request: pytest.FixtureRequest, server: ServerUnderTest
) -> None:
    async with server.client("basic") as identity:
        alice = identity.user("alice")
        await alice.consent(scopes=["openid", "calendar.read", "calendar.write"], resource=CALENDAR)
        await server.set_quirk("refresh_ignores_scope")
        await server.clear_requests()
        try:
            token = await alice.token(resource=CALENDAR, scopes=["calendar.read"])
        except AgentIdentityError:  # a "refuse" policy: never handed out as narrow
            refused = True
        else:
            refused = False
    if refused:
        (refresh,) = await token_requests(server, "refresh_token")
        assert refresh["status"] == 200  # the server did issue a token; the SDK refused it
        return
    facts = await server.token_facts(token.value.get_secret_value())
    if not {"calendar.read", "calendar.write"} <= facts.scopes:
        pytest.fail("the refresh_ignores_scope quirk did not take effect")
    # the SDK says what the token carries (grant-level scopes aside)
    assert set(token.scopes) - GRANT_SCOPES == facts.scopes - GRANT_SCOPES


async def test_quirk_omit_scope(server: ServerUnderTest) -> None:
    """RFC 6749 §5.1: a response without ``scope`` grants the requested scope."""
    await server.set_quirk("omit_scope")
    await server.clear_requests()
    async with server.client("basic") as identity:
        alice = identity.user("alice")
        grant = await alice.consent(
            scopes=["openid", "calendar.read", "calendar.write"], resource=CALENDAR
        )
        assert {"calendar.read", "calendar.write"} <= set(grant.scopes)
        token = await alice.token(resource=CALENDAR, scopes=["calendar.read"])
    assert token.scopes == ("calendar.read",)
    assert (await server.token_facts(token.value.get_secret_value())).scopes == {"calendar.read"}
    assert all(r["status"] == 200 for r in await token_requests(server, "refresh_token"))


# --------------------------------------------------------------------------- private_key_jwt


async def test_private_key_jwt_sends_the_issuer_as_audience(server: ServerUnderTest) -> None:
    """Security item 27: ``aud`` = the issuer, one string; accepted by an issuer-only
    server."""
    server.require("private_key_jwt")
    if "assertion_audience_choice" in server.capabilities:
        await server.set_assertion_audience("issuer")
    await server.clear_requests()
    async with server.client("jwt") as identity:
        await identity.user("alice").consent(scopes=["openid", "calendar.read"])
    (code_request,) = await token_requests(server, "authorization_code")
    assert code_request["client_auth"] == "private_key_jwt"
    assert code_request["assertion_audience"] == server.issuer
    assert code_request["status"] == 200


async def test_private_key_jwt_audience_is_enforced_by_the_server(
    server: ServerUnderTest,
) -> None:
    """The server side of the audience option: an issuer audience is refused by a
    server that accepts only its token endpoint (what proves the option below)."""
    server.require("assertion_audience_choice")
    await server.set_assertion_audience("token_endpoint")
    async with server.client("jwt") as identity:
        with pytest.raises(InvalidClient):
            await identity.user("alice").consent(scopes=["openid", "calendar.read"])


async def test_private_key_jwt_token_endpoint_audience(
    request: pytest.FixtureRequest, server: ServerUnderTest
) -> None:
    server.require("assertion_audience_choice")
    await server.set_assertion_audience("token_endpoint")
    await server.clear_requests()
    async with server.client("jwt", assertion_audience="token_endpoint") as identity:
        await identity.user("alice").consent(scopes=["openid", "calendar.read"])
        token_endpoint = identity.metadata.token_endpoint
    (code_request,) = await token_requests(server, "authorization_code")
    assert code_request["assertion_audience"] == token_endpoint
    assert code_request["status"] == 200


# --------------------------------------------------------------------------- seam features


async def test_static_metadata_instead_of_discovery(server: ServerUnderTest) -> None:
    """``IdentityClient(metadata=...)`` for servers without discovery: the same flows with
    the metadata given statically (here: the server's own document, fetched beforehand)."""
    async with server.client("basic") as discovered:
        document = discovered.metadata.model_dump(exclude_none=True)
    kwargs = server.client_kwargs("basic")
    async with IdentityClient(
        metadata=document, consent=LoopbackConsent(browser=server.browser()), **kwargs
    ) as identity:
        assert identity.issuer == server.issuer
        alice = identity.user("alice")
        await alice.consent(scopes=["openid", "calendar.read"], resource=CALENDAR)
        token = await alice.token(resource=CALENDAR, scopes=["calendar.read"])
    assert (await server.token_facts(token.value.get_secret_value())).active


async def test_consent_parameters_reach_the_server(server: ServerUnderTest) -> None:
    """Several resources, a login hint from the client's hook and extra parameters, in
    the front channel or through PAR alike; the grant covers both resources."""
    server.require("resource_indicators")
    consent = LoopbackConsent(browser=server.browser())
    async with server.client(
        "basic", consent=consent, login_hint=lambda user, tenant: user
    ) as identity:
        alice = identity.user("alice")
        grant = await alice.consent(
            scopes=["openid", "calendar.read", "mail.read"],
            resource=CALENDAR,
            resources=[MAIL],
            extra_params={"ui_locales": "en"},
        )
        assert grant.resources == (CALENDAR, MAIL)
        mail = await alice.token(resource=MAIL, scopes=["mail.read"])
        # (django-oauth-toolkit revokes the previous access token of a refresh token
        # chain at each refresh: look at each token before the next refresh)
        assert MAIL in (await server.token_facts(mail.value.get_secret_value())).audience
        calendar = await alice.token(resource=CALENDAR, scopes=["calendar.read"])
        facts = await server.token_facts(calendar.value.get_secret_value())
        assert CALENDAR in facts.audience
        assert set(calendar.audience or facts.audience) == set(facts.audience)


async def test_pushed_authorization_request(server: ServerUnderTest) -> None:
    server.require("par")
    async with server.client("basic", use_par=True) as identity:
        grant = await identity.user("alice").consent(
            scopes=["openid", "calendar.read"], resource=CALENDAR, resources=[MAIL]
        )
    assert grant.resources == (CALENDAR, MAIL)


async def test_token_exchange_with_the_agent_as_actor(server: ServerUnderTest) -> None:
    server.require("token_exchange")
    async with server.client("basic") as identity:
        alice = identity.user("alice")
        await alice.consent(scopes=["openid", "calendar.read"], resource=CALENDAR)
        exchanged = await alice.exchange(resource=CALENDAR, scopes=["calendar.read"])
    assert exchanged.resource == CALENDAR
    assert (await server.token_facts(exchanged.value.get_secret_value())).active


async def test_token_exchange_refused_without_a_request_where_not_offered(
    server: ServerUnderTest,
) -> None:
    """Issue 10, item 6: no token exchange request to a server whose metadata lists grant
    types without it; ``UnsupportedGrantType`` at once."""
    if "token_exchange" in server.capabilities:
        pytest.skip("offers token exchange (see: token exchange with the agent as actor)")
    from agent_identity import UnsupportedGrantType

    async with server.client("basic") as identity:
        alice = identity.user("alice")
        await alice.consent(scopes=["openid", "calendar.read"], resource=CALENDAR)
        await server.clear_requests()
        with pytest.raises(UnsupportedGrantType):
            await alice.exchange(resource=CALENDAR, scopes=["calendar.read"])
    grant_types = [r["grant_type"] for r in await server.requests() if r["route"] == "token"]
    assert "urn:ietf:params:oauth:grant-type:token-exchange" not in grant_types
