"""McpAuth end to end in a fake world (``_mcp_world``): the three modes (user, agent as
itself, cross-app access), pre-registered credentials by server URL or issuer, the
2025-03-26 fallback, the root metadata location, step-up limits per operation, RFC 9470
re-authentication, a new metadata URL in a challenge, the consent redirect URI check,
MCP-only agents, and SSRF refusals of endpoints learned from metadata (security items 2,
5-7, 11-14, 29, 30)."""

from __future__ import annotations

import json
from typing import Any

import httpx2
import pytest
from _mcp_world import (
    AS,
    AS2,
    IDP,
    MCP,
    ORIGIN,
    PRM_PATH,
    PRM_ROOT,
    SECRET,
    ConsentBrowser,
    World,
    mcp_only,
    rpc,
    wire,
)
from pydantic import SecretStr

from agent_identity import (
    ConfigurationError,
    ConsentRequired,
    IdentityClient,
    InsecureURLError,
    InvalidResponse,
    MetadataError,
    ReauthorizationRequired,
    SSRFBlockedError,
    StepUpLimitExceeded,
    TokenVault,
)
from agent_identity.audit import AuditTrail, MemorySink
from agent_identity.oauth.client_auth import generate_private_key

pytestmark = pytest.mark.anyio


def _world(**as_options: Any) -> World:
    world = World()
    world.add_as(AS, **as_options)
    world.publish_prm(AS, scopes_supported=["tools.read"])
    world.required = ("tools.read",)
    return world


async def _call(
    http: httpx2.AsyncClient, method: str = "tools/list", name: str | None = None
) -> httpx2.Response:
    return await http.post(MCP, json=rpc(method, name))


# -- user mode: discovery, registration (A, B), the redirect URI, metadata fetched once ----


async def test_sec_14_registration_without_expiry_and_with_a_secret_for_none() -> None:
    """A server that lists only ``none``, issues a secret anyway and omits
    ``client_secret_expires_at`` (the conformance suite's servers): registered as a public
    client, the secret never sent (issue 11, A and B)."""
    world = _world(overrides={"token_endpoint_auth_methods_supported": ["none"]})
    async with mcp_only(world) as identity:
        auth = identity.user("alice").mcp_auth(MCP)
        async with auth, wire(auth, world) as http:
            assert (await _call(http)).status_code == 200
    (registration,) = world.to(f"{AS}/register")
    assert registration.json["token_endpoint_auth_method"] == "none"
    assert registration.json["application_type"] == "native"  # loopback redirect URIs
    (redeem,) = world.token_requests(AS, "authorization_code")
    assert redeem.basic is None
    assert "client_secret" not in redeem.form
    assert redeem.form["client_id"] == "dcr-1"
    assert all(SECRET not in str(r.headers) + str(r.form) for r in world.requests)


async def test_sec_14_registered_method_comes_from_the_response() -> None:
    world = _world(registration={"token_endpoint_auth_method": "client_secret_post"})
    async with mcp_only(world) as identity:
        auth = identity.user("alice").mcp_auth(MCP)
        async with auth, wire(auth, world) as http:
            assert (await _call(http)).status_code == 200
    (registration,) = world.to(f"{AS}/register")
    assert registration.json["token_endpoint_auth_method"] == "client_secret_basic"
    (redeem,) = world.token_requests(AS, "authorization_code")
    assert redeem.basic is None
    assert redeem.form["client_secret"] == SECRET  # as registered: client_secret_post


async def test_authorization_server_metadata_is_fetched_once_per_discovery() -> None:
    world = _world()
    async with mcp_only(world) as identity:
        auth = identity.user("alice").mcp_auth(MCP)
        async with auth, wire(auth, world) as http:
            for _ in range(3):
                assert (await _call(http)).status_code == 200
    assert world.servers[AS].metadata_fetches == 1
    assert len(world.to(PRM_PATH)) == 1


async def test_consent_redirect_uri_must_be_registered_before_the_user_is_sent() -> None:
    world = _world()
    browser = ConsentBrowser(world, redirect_uri="https://app.example.com/oauth/callback")
    async with mcp_only(world, consent=browser) as identity:
        auth = identity.user("alice").mcp_auth(MCP)  # registers http://127.0.0.1/callback
        async with auth, wire(auth, world) as http:
            with pytest.raises(ConfigurationError, match="redirect URI"):
                await _call(http)
    assert browser.urls == []  # the user was sent nowhere
    assert world.token_requests(AS) == []


async def test_loopback_redirect_uri_matches_on_any_port() -> None:
    world = _world()
    browser = ConsentBrowser(world, redirect_uri="http://127.0.0.1:61234/callback")
    async with mcp_only(world, consent=browser) as identity:
        auth = identity.user("alice").mcp_auth(MCP)
        async with auth, wire(auth, world) as http:
            assert (await _call(http)).status_code == 200
    assert browser.params()["redirect_uri"] == "http://127.0.0.1:61234/callback"


async def test_mcp_only_agent_enters_and_uses_mcp_auth() -> None:
    world = _world()
    identity = mcp_only(world)
    assert repr(identity) == "IdentityClient(mcp_only=True)"
    async with identity:
        alice = identity.user("alice")
        with pytest.raises(ConfigurationError, match="no authorization server of its own"):
            await alice.consent(scopes=["x"])
        auth = alice.mcp_auth(MCP)
        async with auth, wire(auth, world) as http:
            assert (await _call(http)).status_code == 200
        assert auth.issuer == AS
        assert auth.registration == "dynamic"
        grants = await alice.connections()
        assert [(g.issuer, g.connection) for g in grants] == [(AS, MCP)]


# -- protected resource metadata (C; items 5, 6) --------------------------------------------


async def test_sec_05_metadata_urls_are_tried_in_order() -> None:
    world = _world()
    world.prm.clear()
    world.challenge = {}  # no resource_metadata in the challenge
    world.publish_prm(AS, url=PRM_ROOT, resource=ORIGIN, scopes_supported=["tools.read"])
    async with mcp_only(world) as identity:
        auth = identity.user("alice").mcp_auth(MCP)
        async with auth, wire(auth, world) as http:
            assert (await _call(http)).status_code == 200
    gets = [r.url for r in world.requests if r.method == "GET"]
    assert gets[:2] == [PRM_PATH, PRM_ROOT]
    # a URL named in the challenge comes first
    world = _world()
    named = f"{ORIGIN}/custom/metadata.json"
    world.prm.clear()
    world.publish_prm(AS, url=named)
    world.challenge = {"resource_metadata": named}
    async with mcp_only(world) as identity:
        auth = identity.user("alice").mcp_auth(MCP)
        async with auth, wire(auth, world) as http:
            assert (await _call(http)).status_code == 200
    assert next(r.url for r in world.requests if r.method == "GET") == named


async def test_sec_06_root_metadata_may_name_the_origin() -> None:
    """RFC 9728 §3.3: the root document names the identifier the suffix was inserted
    into, the origin (the conformance suite's metadata-var2)."""
    world = _world()
    world.prm.clear()
    world.challenge = {}
    world.publish_prm(AS, url=PRM_ROOT, resource=ORIGIN, scopes_supported=["tools.read"])
    async with mcp_only(world) as identity:
        auth = identity.user("alice").mcp_auth(MCP)
        async with auth, wire(auth, world) as http:
            assert (await _call(http)).status_code == 200
    (redeem,) = world.token_requests(AS, "authorization_code")
    assert redeem.form["resource"] == MCP  # the RFC 8707 resource stays the server URL


@pytest.mark.parametrize(
    ("url", "resource"),
    [
        (PRM_PATH, ORIGIN),  # the path-inserted location names the server URL
        (f"{ORIGIN}/custom/metadata.json", ORIGIN),  # a named URL: the server URL exactly
        (PRM_ROOT, f"{ORIGIN}/other"),  # the root: the origin or the server URL
        (PRM_PATH, "https://evil.example.com/mcp"),
    ],
)
async def test_sec_06_metadata_for_another_resource_is_refused(url: str, resource: str) -> None:
    world = _world()
    world.prm.clear()
    world.publish_prm(AS, url=url, resource=resource)
    world.challenge = {"resource_metadata": url} if url not in (PRM_PATH, PRM_ROOT) else {}
    async with mcp_only(world) as identity:
        auth = identity.user("alice").mcp_auth(MCP)
        async with auth, wire(auth, world) as http:
            with pytest.raises(MetadataError, match="9728"):
                await _call(http)
    assert world.to(AS) == []  # the authorization server was never contacted


# -- client id metadata documents (item 13) ------------------------------------------------


async def test_sec_13_client_id_metadata_document_rules_on_the_mcp_path() -> None:
    world = _world(overrides={"client_id_metadata_document_supported": True})
    async with mcp_only(world) as identity:
        alice = identity.user("alice")
        for bad in (
            "http://agent.example.com/client.json",
            "https://agent.example.com/",
            "https://agent.example.com/a/../client.json",
            "https://agent.example.com/client.json#x",
            "https://user@agent.example.com/client.json",
        ):
            with pytest.raises((ConfigurationError, InsecureURLError)):
                alice.mcp_auth(MCP, client_id_metadata_url=bad)
        cimd = "https://agent.example.com/oauth/client.json"
        auth = alice.mcp_auth(MCP, client_id_metadata_url=cimd)
        async with auth, wire(auth, world) as http:
            assert (await _call(http)).status_code == 200
        assert auth.registration == "client-id-metadata-document"
    (redeem,) = world.token_requests(AS, "authorization_code")
    assert redeem.form["client_id"] == cimd  # a public client: the URL is the client id
    assert redeem.basic is None
    assert world.to(f"{AS}/register") == []


# -- a later challenge naming another metadata URL (item 7) -----------------------------------


async def test_sec_07_a_new_metadata_url_in_a_challenge_is_read_again() -> None:
    world = _world()
    world.add_as(AS2)
    prm2 = f"{ORIGIN}/.well-known/oauth-protected-resource/mcp-v2"
    async with mcp_only(world) as identity:
        auth = identity.user("alice").mcp_auth(MCP)
        async with auth, wire(auth, world) as http:
            assert (await _call(http)).status_code == 200
            assert auth.issuer == AS
            # the server moves: AS tokens are refused with a challenge naming new metadata
            world.publish_prm(AS2, url=prm2, scopes_supported=["tools.read"])
            world.challenge = {"resource_metadata": prm2}
            world.accepted_issuers = {AS2}
            refreshes_before = len(world.token_requests(AS, "refresh_token"))
            assert (await _call(http)).status_code == 200
            assert auth.issuer == AS2
    assert len(world.to(prm2)) == 1
    # no refresh at the old server: the new challenge sent the client to discovery
    assert len(world.token_requests(AS, "refresh_token")) == refreshes_before
    assert len(world.token_requests(AS2, "authorization_code")) == 1


# -- pre-registered credentials (D; items 11, 12) ----------------------------------------------


async def test_sec_11_credentials_keyed_by_the_server_url_are_used() -> None:
    world = _world(overrides={"registration_endpoint": None})
    clients = {MCP: {"client_id": "pre", "client_secret": SECRET}}
    async with mcp_only(world) as identity:
        auth = identity.user("alice").mcp_auth(MCP, clients=clients)
        async with auth, wire(auth, world) as http:
            assert (await _call(http)).status_code == 200
        assert auth.registration == "pre-registered"
    (redeem,) = world.token_requests(AS, "authorization_code")
    assert redeem.basic == ("pre", SECRET)
    assert world.to(f"{AS}/register") == []


async def test_sec_12_pinned_credentials_are_never_sent_to_another_issuer() -> None:
    world = _world()
    clients = {MCP: {"client_id": "pre", "client_secret": SECRET, "issuer": AS2}}
    async with mcp_only(world) as identity:
        auth = identity.user("alice").mcp_auth(MCP, clients=clients)
        async with auth, wire(auth, world) as http:
            with pytest.raises(ConfigurationError, match="pinned"):
                await _call(http)
    assert [r.url for r in world.to(AS, "POST")] == []  # no registration, no token request


async def test_sec_11_a_clients_key_that_matches_nothing_is_an_error() -> None:
    world = _world()
    async with mcp_only(world) as identity:
        auth = identity.user("alice").mcp_auth(
            MCP, clients={"https://as.example.com/": {"client_id": "typo"}}
        )
        async with auth, wire(auth, world) as http:
            with pytest.raises(ConfigurationError, match="no entry for MCP server"):
                await _call(http)
    assert world.to(AS, "POST") == []  # not silently replaced by a dynamic registration


async def test_sec_11_shared_clients_for_other_servers_are_not_an_error() -> None:
    world = _world()
    shared = {"clients": {"https://elsewhere.example.com/mcp": {"client_id": "other"}}}
    async with mcp_only(world, mcp=shared) as identity:
        auth = identity.user("alice").mcp_auth(MCP)
        async with auth, wire(auth, world) as http:
            assert (await _call(http)).status_code == 200
        assert auth.registration == "dynamic"
    # ...but shared credentials for this server are used
    world = _world()
    shared = {"clients": {AS: {"client_id": "shared-pre"}}}
    async with mcp_only(world, mcp=shared) as identity:
        auth = identity.user("alice").mcp_auth(MCP)
        async with auth, wire(auth, world) as http:
            assert (await _call(http)).status_code == 200
    assert world.token_requests(AS)[0].form["client_id"] == "shared-pre"


@pytest.mark.parametrize(
    ("clients", "message"),
    [
        ({MCP: {"client_id": ""}}, "needs a client_id"),
        ({MCP: {"client_id": "a", "secret": "x"}}, "unknown members"),
        ({MCP: {"client_id": "a", "client_secret": "x", "private_key": {}}}, "not both"),
        ({"not a url": {"client_id": "a"}}, "neither an MCP server URL"),
        ({MCP: {"client_id": "a", "redirect_uris": "http://127.0.0.1/cb"}}, "redirect_uris"),
        ({AS: {"client_id": "a", "issuer": AS2}}, None),
    ],
)
async def test_invalid_clients_entries_are_refused_up_front(
    clients: dict[str, Any], message: str | None
) -> None:
    world = _world()
    async with mcp_only(world) as identity:
        alice = identity.user("alice")
        if message is not None:
            with pytest.raises(ConfigurationError, match=message):
                alice.mcp_auth(MCP, clients=clients)
            return
        auth = alice.mcp_auth(MCP, clients=clients)  # keyed by AS, pinned to AS2: contradictory
        async with auth, wire(auth, world) as http:
            with pytest.raises(ConfigurationError, match="pins another issuer"):
                await _call(http)


async def test_sec_40_pre_registered_credentials_hide_their_secret() -> None:
    world = _world()
    key = generate_private_key("EC")
    async with mcp_only(world) as identity:
        clients = {
            MCP: {"client_id": "pre", "client_secret": SECRET},
            AS: {"client_id": "k", "private_key": key},
        }
        auth = identity.user("alice").mcp_auth(MCP, clients=clients)
        for credentials in auth._clients.by_key.values():
            text = repr(credentials)
            assert SECRET not in text
            assert key["d"] not in text
            assert "has_secret" in text
        assert SECRET not in repr(auth)
        assert SECRET not in repr(auth._clients.by_key)


# -- the 2025-03-26 revision (E) ----------------------------------------------------------------


async def test_2025_03_26_metadata_at_the_origin() -> None:
    world = World()
    server = world.add_as(f"{ORIGIN}/oauth")
    world.challenge = {}
    world.legacy_metadata = server.metadata()
    async with mcp_only(world) as identity:
        auth = identity.user("alice").mcp_auth(MCP)
        async with auth, wire(auth, world) as http:
            assert (await _call(http)).status_code == 200
        assert auth.issuer == f"{ORIGIN}/oauth"
    assert len(world.to(f"{ORIGIN}/.well-known/oauth-authorization-server")) == 1
    assert len(world.token_requests(f"{ORIGIN}/oauth", "authorization_code")) == 1


async def test_2025_03_26_metadata_naming_another_origin_is_refused() -> None:
    world = World()
    server = world.add_as(AS)
    world.challenge = {}
    world.legacy_metadata = server.metadata()
    async with mcp_only(world) as identity:
        auth = identity.user("alice").mcp_auth(MCP)
        async with auth, wire(auth, world) as http:
            with pytest.raises(MetadataError, match="another origin"):
                await _call(http)
    assert world.to(AS) == []


async def test_2025_03_26_default_endpoints() -> None:
    world = World()
    world.add_as(ORIGIN)
    world.challenge = {}
    browser = ConsentBrowser(world)
    async with mcp_only(world, consent=browser) as identity:
        auth = identity.user("alice").mcp_auth(MCP)
        async with auth, wire(auth, world) as http:
            assert (await _call(http)).status_code == 200
        assert auth.issuer == ORIGIN
    assert len(world.to(f"{ORIGIN}/register")) == 1
    assert browser.urls[0].startswith(f"{ORIGIN}/authorize?")
    assert browser.params()["code_challenge_method"] == "S256"
    (redeem,) = world.token_requests(ORIGIN, "authorization_code")
    assert redeem.form["code_verifier"]


async def test_2025_03_26_fallback_can_be_turned_off() -> None:
    world = World()
    world.add_as(ORIGIN)
    world.challenge = {}
    async with mcp_only(world) as identity:
        auth = identity.user("alice").mcp_auth(MCP, legacy_discovery=False)
        async with auth, wire(auth, world) as http:
            with pytest.raises(MetadataError, match="legacy_discovery"):
                await _call(http)
    assert world.to(f"{ORIGIN}/register") == []


# -- step-up (items 29, 30) -----------------------------------------------------------------------


async def test_sec_29_step_up_limit_is_per_operation_and_raises_a_typed_error() -> None:
    world = _world()
    world.per_operation = {"tools/call admin": ("tools.read", "tools.admin")}
    browser = ConsentBrowser(world)
    async with mcp_only(world, consent=browser) as identity:
        auth = identity.user("alice").mcp_auth(MCP, max_step_ups=2)
        async with auth, wire(auth, world) as http:
            assert (await _call(http, "tools/call", "whoami")).status_code == 200
            assert len(browser.urls) == 1
            # whatever the user consents to, the server keeps answering insufficient_scope
            world.refuse["tools/call admin"] = ("tools.read", "tools.root")
            with pytest.raises(StepUpLimitExceeded) as caught:
                await _call(http, "tools/call", "admin")
            error = caught.value
            assert error.operation == "tools/call admin"
            assert error.resource == MCP
            assert error.status_code == 403
            assert error.error == "insufficient_scope"
            assert set(error.scopes) == {"tools.read", "tools.root"}
            assert error.step_ups == 2
            assert len(browser.urls) == 3  # two step-ups, then no more
            # the same operation again: the budget is spent, the user is not asked again
            with pytest.raises(StepUpLimitExceeded):
                await _call(http, "tools/call", "admin")
            assert len(browser.urls) == 3
            # another operation has its own budget, and is answered
            assert (await _call(http, "tools/call", "whoami")).status_code == 200
            # once the operation succeeds, its budget is renewed
            del world.refuse["tools/call admin"]
            world.per_operation["tools/call admin"] = ("tools.read",)
            assert (await _call(http, "tools/call", "admin")).status_code == 200
            world.refuse["tools/call admin"] = ("tools.read", "tools.root")
            with pytest.raises(StepUpLimitExceeded):
                await _call(http, "tools/call", "admin")
            assert len(browser.urls) == 5


async def test_sec_29_step_up_asks_for_the_union_of_scopes() -> None:
    world = _world()
    world.per_operation = {"tools/call admin": ("tools.admin",)}
    browser = ConsentBrowser(world)
    async with mcp_only(world, consent=browser) as identity:
        auth = identity.user("alice").mcp_auth(MCP)
        async with auth, wire(auth, world) as http:
            assert (await _call(http, "tools/call", "whoami")).status_code == 200
            assert (await _call(http, "tools/call", "admin")).status_code == 200
    assert set(browser.params(1)["scope"].split()) >= {"tools.read", "tools.admin"}


async def test_sec_30_insufficient_user_authentication_carries_acr_and_max_age() -> None:
    world = _world()
    world.require_acr = {"tools/call transfer": ("urn:example:mfa", "0")}
    browser = ConsentBrowser(world)
    async with mcp_only(world, consent=browser) as identity:
        auth = identity.user("alice").mcp_auth(MCP)
        async with auth, wire(auth, world) as http:
            assert (await _call(http, "tools/call", "whoami")).status_code == 200
            assert "acr_values" not in browser.params()
            assert (await _call(http, "tools/call", "transfer")).status_code == 200
    params = browser.params()
    assert params["acr_values"] == "urn:example:mfa"
    assert params["max_age"] == "0"
    assert len(browser.urls) == 2


@pytest.mark.parametrize(
    ("sent", "expected"),
    [("9" * 400, "31536000"), ("-5", None), ("12x", None), ("", None)],
)
async def test_sec_07_30_a_strange_max_age_is_read_by_the_bounded_number_rule(
    sent: str, expected: str | None
) -> None:
    """A 400-digit value, a sign, trailing junk, nothing: a huge value is clamped to a
    year (it used to be sent on as is), the others are not numbers and no max_age is sent.
    (Non-ASCII digits: test_resource_auth, through the same Challenge.max_age.)"""
    world = _world()
    world.require_acr = {"tools/call transfer": ("urn:example:mfa", sent)}
    browser = ConsentBrowser(world)
    async with mcp_only(world, consent=browser) as identity:
        auth = identity.user("alice").mcp_auth(MCP)
        async with auth, wire(auth, world) as http:
            assert (await _call(http, "tools/call", "transfer")).status_code == 200
    params = browser.params()
    assert params["acr_values"] == "urn:example:mfa"
    assert params.get("max_age") == expected


# -- the agent as itself: client credentials (F) ---------------------------------------------------


async def test_agent_client_credentials_with_client_secret_basic() -> None:
    world = _world()
    world.servers[AS].overrides["grant_types_supported"] = ["client_credentials"]
    clients = {MCP: {"client_id": "agent", "client_secret": SECRET}}
    async with mcp_only(world) as identity:
        auth = identity.mcp_auth(MCP, clients=clients)
        assert auth.mode == "agent"
        async with auth, wire(auth, world) as http:
            assert (await _call(http)).status_code == 200
            assert (await _call(http)).status_code == 200  # the token is cached
            world.tokens.clear()  # revoked: a 401 gets a new one
            assert (await _call(http)).status_code == 200
    requests = world.token_requests(AS)
    assert [r.form["grant_type"] for r in requests] == ["client_credentials"] * 2
    assert requests[0].basic == ("agent", SECRET)
    assert requests[0].form["resource"] == MCP
    assert requests[0].form["scope"] == "tools.read"
    assert world.to(f"{AS}/register") == []


async def test_agent_client_credentials_with_private_key_jwt() -> None:
    from joserfc import jwt as jose_jwt
    from joserfc.jwk import import_key

    world = _world(overrides={"token_endpoint_auth_methods_supported": ["private_key_jwt"]})
    key = generate_private_key("EC")
    async with mcp_only(world) as identity:
        auth = identity.mcp_auth(MCP, clients={AS: {"client_id": "agent", "private_key": key}})
        async with auth, wire(auth, world) as http:
            assert (await _call(http)).status_code == 200
    (request,) = world.token_requests(AS, "client_credentials")
    assert request.basic is None
    assert "client_secret" not in request.form
    public = import_key({k: v for k, v in key.items() if k != "d"})
    claims = jose_jwt.decode(request.form["client_assertion"], public).claims
    assert claims["iss"] == claims["sub"] == "agent"
    assert claims["aud"] == AS


async def test_agent_uses_its_own_credentials_at_its_own_issuer() -> None:
    world = _world()
    world.add_as(AS)  # reset
    world.servers[AS].secrets["agent"] = SECRET
    transport = httpx2.AsyncClient(transport=httpx2.MockTransport(world))
    async with IdentityClient(
        AS,
        client_id="agent",
        client_secret=SECRET,
        vault=TokenVault.memory(),
        http_client=transport,
    ) as identity:
        auth = identity.mcp_auth(MCP)
        async with auth, wire(auth, world) as http:
            assert (await _call(http)).status_code == 200
        assert auth.registration == "own"
    assert world.token_requests(AS, "client_credentials")[0].basic == ("agent", SECRET)


async def test_agent_without_credentials_never_registers() -> None:
    world = _world()
    async with mcp_only(world) as identity:
        auth = identity.mcp_auth(MCP)
        async with auth, wire(auth, world) as http:
            with pytest.raises(ConfigurationError, match="pre-registered confidential client"):
                await _call(http)
    assert world.to(AS, "POST") == []


async def test_sec_29_agent_step_up_gets_a_token_with_the_union_and_is_bounded() -> None:
    world = _world()
    world.per_operation = {"tools/call admin": ("tools.read", "tools.admin")}
    clients = {MCP: {"client_id": "agent", "client_secret": SECRET}}
    async with mcp_only(world) as identity:
        auth = identity.mcp_auth(MCP, clients=clients, max_step_ups=1)
        async with auth, wire(auth, world) as http:
            assert (await _call(http, "tools/call", "admin")).status_code == 200
            world.refuse["tools/call admin"] = ("tools.root",)
            with pytest.raises(StepUpLimitExceeded):
                await _call(http, "tools/call", "admin")
    scopes = [r.form.get("scope") for r in world.token_requests(AS, "client_credentials")]
    assert scopes == ["tools.read", "tools.read tools.admin", "tools.read tools.admin tools.root"]


# -- cross-app access (G, SEP-990) -----------------------------------------------------------------


def _enterprise(world: World, **options: Any) -> IdentityClient:
    """The enterprise IdP as the identity client's own issuer (its ID tokens are signed)."""
    idp = world.add_as(
        IDP,
        overrides={
            "jwks_uri": f"{IDP}/jwks",
            "scopes_supported": ["openid", "offline_access"],
            "grant_types_supported": [
                "authorization_code",
                "refresh_token",
                "urn:ietf:params:oauth:grant-type:token-exchange",
            ],
        },
    )
    idp.secrets["agent"] = "idp-secret"
    transport = httpx2.AsyncClient(transport=httpx2.MockTransport(_with_jwks(world)))
    options.setdefault("consent", ConsentBrowser(world))
    return IdentityClient(
        IDP,
        client_id="agent",
        client_secret="idp-secret",
        vault=TokenVault.memory(),
        http_client=transport,
        **options,
    )


def _with_jwks(world: World) -> Any:
    def handler(request: httpx2.Request) -> httpx2.Response:
        if str(request.url) == f"{IDP}/jwks":
            return httpx2.Response(200, json=world.jwks())
        return world(request)

    return handler


def _xaa_world() -> World:
    world = _world()
    world.servers[AS].overrides.update(
        {
            "grant_types_supported": ["urn:ietf:params:oauth:grant-type:jwt-bearer"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic"],
        }
    )
    world.servers[AS].secrets["xaa-client"] = SECRET
    return world


async def test_cross_app_access_with_an_id_token_passed_in() -> None:
    world = _xaa_world()
    clients = {AS: {"client_id": "xaa-client", "client_secret": SECRET}}
    browser = ConsentBrowser(world)
    sink = MemorySink()
    async with (
        AuditTrail(sink) as audit,
        _enterprise(world, consent=browser, audit=audit) as identity,
    ):
        auth = identity.user("alice").mcp_auth(
            MCP, clients=clients, cross_app_access=True, id_token=SecretStr("id-token-1")
        )
        assert auth.mode == "cross-app"
        async with auth, wire(auth, world) as http:
            assert (await _call(http)).status_code == 200
            assert (await _call(http)).status_code == 200  # cached: no second exchange
    (exchange,) = world.token_requests(IDP)
    assert exchange.form["grant_type"] == "urn:ietf:params:oauth:grant-type:token-exchange"
    assert exchange.form["subject_token"] == "id-token-1"
    assert exchange.form["subject_token_type"] == "urn:ietf:params:oauth:token-type:id_token"
    assert exchange.form["requested_token_type"] == "urn:ietf:params:oauth:token-type:id-jag"
    assert exchange.form["audience"] == AS
    assert exchange.form["resource"] == MCP
    assert exchange.basic == ("agent", "idp-secret")
    (bearer,) = world.token_requests(AS)
    assert bearer.form["grant_type"] == "urn:ietf:params:oauth:grant-type:jwt-bearer"
    assert bearer.form["assertion"].startswith("jag-")
    assert bearer.basic == ("xaa-client", SECRET)
    assert bearer.form["resource"] == MCP
    assert browser.urls == []  # no consent screen
    (event,) = [e for e in sink.events if e.kind == "token.exchanged"]
    assert (event.issuer, event.resource, event.user) == (AS, MCP, "alice")
    assert event.token_fingerprint is not None


async def test_cross_app_access_uses_the_id_token_kept_from_the_sign_in() -> None:
    """No id_token passed: the one kept (sealed in the vault) from alice's sign-in at the
    IdP; when it is about to expire, the IdP grant is refreshed for a new one."""
    world = _xaa_world()
    clients = {MCP: {"client_id": "xaa-client", "client_secret": SECRET, "issuer": AS}}
    async with _enterprise(world) as identity:
        alice = identity.user("alice")
        with pytest.raises(ConsentRequired):
            await alice.main.id_token()
        await alice.consent(scopes=["openid"])  # alice signs in at the IdP
        kept = await alice.main.id_token()
        auth = alice.mcp_auth(MCP, clients=clients, cross_app_access=True)
        async with auth, wire(auth, world) as http:
            assert (await _call(http)).status_code == 200
            (exchange,) = world.token_requests(
                IDP, "urn:ietf:params:oauth:grant-type:token-exchange"
            )
            assert exchange.form["subject_token"] == kept.get_secret_value()
            # the kept ID token nears its expiry: a refresh at the IdP brings a new one
            world.id_token_ttl = 4 * 3600
            fresh = await alice.main.id_token(min_ttl=7200)
            assert fresh.get_secret_value() != kept.get_secret_value()
            assert len(world.token_requests(IDP, "refresh_token")) == 1
        stored = await identity.vault.store.get(f"id-token:{alice.main.key.storage_key}")
        assert stored is not None
        assert kept.get_secret_value().encode() not in stored.blob


@pytest.mark.parametrize("fault", ["another subject", "forged signature"])
async def test_an_unacceptable_id_token_from_a_refresh_is_not_kept(fault: str) -> None:
    """OpenID Connect Core §12.2: a refreshed ID token is validated and must name the same
    subject; one that does not is dropped (the refresh itself stands)."""
    world = _xaa_world()
    async with _enterprise(world) as identity:
        alice = identity.user("alice")
        await alice.consent(scopes=["openid"])
        kept = await alice.main.id_token()
        if fault == "another subject":
            world.refresh_id_token_sub = "mallory"
        else:
            world.refresh_id_token_forged = True
        world.id_token_ttl = 4 * 3600
        with pytest.raises(ConsentRequired, match="sign the user in again"):
            await alice.main.id_token(min_ttl=7200)  # refreshed, but the new one is refused
        assert len(world.token_requests(IDP, "refresh_token")) == 1
        assert (await alice.main.id_token()).get_secret_value() == kept.get_secret_value()


async def test_the_kept_id_token_goes_with_its_grant() -> None:
    """A grant found dead at a refresh (invalid_grant: revoked at the IdP) takes its kept
    ID token along, and so does a grant row removed without it: id_token() no longer
    hands out the user's ID token as a cross-app subject token."""
    world = _xaa_world()
    async with _enterprise(world) as identity:
        alice = identity.user("alice")
        await alice.consent(scopes=["openid"])
        await alice.main.id_token()
        world.refresh_tokens.clear()  # revoked at the IdP
        world.id_token_ttl = 4 * 3600
        with pytest.raises(ReauthorizationRequired):
            await alice.main.id_token(min_ttl=7200)  # the refresh finds the grant dead
        assert await identity.vault.load(alice.main.key) is None
        with pytest.raises(ConsentRequired):
            await alice.main.id_token()  # not the one kept before
        stored = await identity.vault.store.get(f"id-token:{alice.main.key.storage_key}")
        assert stored is None

        await alice.consent(scopes=["openid"])
        await alice.main.id_token()
        await identity.vault.delete(alice.main.key)  # removed elsewhere, ID token left
        with pytest.raises(ConsentRequired):
            await alice.main.id_token()
        assert await identity.vault.store.get(f"id-token:{alice.main.key.storage_key}") is None


async def test_the_kept_id_token_is_forgotten_on_disconnect() -> None:
    world = _xaa_world()
    identity = _enterprise(world)
    world.servers[IDP].overrides["revocation_endpoint"] = f"{IDP}/revoke"
    async with identity:
        alice = identity.user("alice")
        await alice.consent(scopes=["openid"])
        await alice.main.id_token()
        await alice.disconnect()
        with pytest.raises(ConsentRequired):
            await alice.main.id_token()


async def test_cross_app_access_needs_the_mcp_authorization_server_pinned() -> None:
    world = _xaa_world()
    clients = {MCP: {"client_id": "xaa-client", "client_secret": SECRET}}  # no issuer
    async with _enterprise(world) as identity:
        auth = identity.user("alice").mcp_auth(
            MCP, clients=clients, cross_app_access=True, id_token="id-token-1"
        )
        async with auth, wire(auth, world) as http:
            with pytest.raises(ConfigurationError, match="configured, not learned"):
                await _call(http)
    assert world.token_requests(IDP) == []
    assert world.token_requests(AS) == []


async def test_cross_app_access_refuses_a_token_that_is_no_id_jag() -> None:
    world = _xaa_world()
    async with _enterprise(world) as identity:
        world.servers[IDP].exchange_type = "urn:ietf:params:oauth:token-type:jwt"
        auth = identity.user("alice").mcp_auth(
            MCP,
            clients={AS: {"client_id": "xaa-client", "client_secret": SECRET}},
            cross_app_access=True,
            id_token="id-token-1",
        )
        async with auth, wire(auth, world) as http:
            with pytest.raises(InvalidResponse, match="id-jag"):
                await _call(http)
    assert world.token_requests(AS) == []


async def test_cross_app_access_takes_an_id_token_callable() -> None:
    world = _xaa_world()
    calls = 0

    async def current_id_token() -> str:
        nonlocal calls
        calls += 1
        return f"id-token-{calls}"

    async with _enterprise(world) as identity:
        auth = identity.user("alice").mcp_auth(
            MCP,
            clients={AS: {"client_id": "xaa-client", "client_secret": SECRET}},
            cross_app_access=True,
            id_token=current_id_token,
        )
        async with auth, wire(auth, world) as http:
            assert (await _call(http)).status_code == 200
            world.tokens.clear()
            assert (await _call(http)).status_code == 200
    subjects = [r.form["subject_token"] for r in world.token_requests(IDP)]
    assert subjects == ["id-token-1", "id-token-2"]


def test_cross_app_access_options_are_checked() -> None:
    identity = IdentityClient(vault=TokenVault.memory())
    with pytest.raises(ConfigurationError, match="own issuer"):
        identity.user("alice").mcp_auth(
            MCP, clients={AS: {"client_id": "x"}}, cross_app_access=True
        )
    with pytest.raises(ConfigurationError, match="acts for a user"):
        identity.mcp_auth(MCP, cross_app_access=True)
    with pytest.raises(ConfigurationError, match="only used with cross_app_access"):
        identity.user("alice").mcp_auth(MCP, id_token="x")


# -- security item 2: endpoints learned from metadata ---------------------------------------------


@pytest.mark.parametrize(
    "token_endpoint",
    [
        "https://169.254.169.254/latest/token",
        "https://127.0.0.1:6379/token",
        "https://[::ffff:10.0.0.1]/token",
        "https://tokens.internal.example.com/token",
    ],
)
async def test_sec_02_learned_token_endpoint_at_a_private_address_is_refused(
    token_endpoint: str,
) -> None:
    """The MCP server names an authorization server whose metadata points the token
    endpoint at a private address: the client secret is never sent there, no connection
    is made (``allow_private_addresses=False``)."""
    world = _world(overrides={"token_endpoint": token_endpoint})
    world.addresses["tokens.internal.example.com"] = ("10.0.0.5",)
    clients = {MCP: {"client_id": "agent", "client_secret": SECRET}}
    async with mcp_only(world) as identity:
        auth = identity.mcp_auth(MCP, clients=clients)
        async with auth, wire(auth, world) as http:
            with pytest.raises(SSRFBlockedError):
                await _call(http)
    assert world.hosts() <= {"tools.example.com", "as.example.com"}
    assert all(SECRET not in str(r.headers) + str(r.form) for r in world.requests)


async def test_sec_02_learned_token_endpoint_is_refused_before_the_code_is_redeemed() -> None:
    world = _world(overrides={"token_endpoint": "https://169.254.169.254/token"})
    browser = ConsentBrowser(world)
    async with mcp_only(world, consent=browser) as identity:
        auth = identity.user("alice").mcp_auth(MCP, clients={MCP: {"client_id": "pre"}})
        async with auth, wire(auth, world) as http:
            with pytest.raises(SSRFBlockedError):
                await _call(http)
    assert len(browser.urls) == 1
    assert "169.254.169.254" not in world.hosts()  # neither the code nor the verifier left


async def test_sec_02_learned_registration_endpoint_at_a_private_address_is_refused() -> None:
    world = _world(overrides={"registration_endpoint": "https://10.1.2.3/register"})
    async with mcp_only(world) as identity:
        auth = identity.user("alice").mcp_auth(MCP)
        async with auth, wire(auth, world) as http:
            with pytest.raises(SSRFBlockedError):
                await _call(http)
    assert "10.1.2.3" not in world.hosts()


async def test_sec_02_learned_issuer_origin_is_vetted_on_every_request() -> None:
    """DNS rebinding: the authorization server's host resolves to a public address for
    its metadata, then to a private one. A learned server's origin is never trusted, so
    the token request is vetted again and refused."""
    world = _world()
    answers = iter([("93.184.216.34",)])
    world.addresses["as.example.com"] = lambda: next(answers, ("10.0.0.7",))
    clients = {MCP: {"client_id": "agent", "client_secret": SECRET}}
    async with mcp_only(world) as identity:
        auth = identity.mcp_auth(MCP, clients=clients)
        async with auth, wire(auth, world) as http:
            with pytest.raises(SSRFBlockedError):
                await _call(http)
    assert world.token_requests(AS) == []
    assert world.servers[AS].metadata_fetches == 1


async def test_sec_02_configured_issuer_metadata_pointing_elsewhere_is_vetted() -> None:
    """The same for the identity client's own (configured) issuer: an endpoint its
    metadata names on another origin is server-supplied and vetted (here the enterprise
    IdP's token endpoint, used for cross-app access)."""
    world = _xaa_world()
    identity = _enterprise(world)
    world.servers[IDP].overrides["token_endpoint"] = "https://169.254.169.254/token"
    async with identity:
        auth = identity.user("alice").mcp_auth(
            MCP,
            clients={AS: {"client_id": "xaa-client", "client_secret": SECRET}},
            cross_app_access=True,
            id_token="id-token-1",
        )
        async with auth, wire(auth, world) as http:
            with pytest.raises(SSRFBlockedError):
                await _call(http)
    assert "169.254.169.254" not in world.hosts()


def _dpop_xaa_world() -> World:
    """Cross-app access whose MCP authorization server binds tokens (DPoP, ES256)."""
    world = _xaa_world()
    world.servers[AS].overrides.update(
        {"dpop_signing_alg_values_supported": ["ES256"], "dpop_bound_access_tokens": True}
    )
    return world


def _xaa_auth(identity: IdentityClient) -> Any:
    clients = {AS: {"client_id": "xaa-client", "client_secret": SECRET}}
    return identity.user("alice").mcp_auth(
        MCP, clients=clients, cross_app_access=True, id_token=SecretStr("id-token-1")
    )


async def test_sec_34_36_cross_app_access_tokens_are_dpop_bound_when_the_server_binds() -> None:
    """The MCP server's authorization server announces DPoP-bound tokens: the ID-JAG is
    redeemed with a proof (RFC 7523 grant + RFC 9449), the token comes back bound
    (``token_type`` DPoP) and every MCP request presents it with a fresh proof by the same
    key (``ath`` of the token, ``htm``); a bearer presentation would be refused."""
    world = _dpop_xaa_world()
    async with _enterprise(world) as identity:
        auth = _xaa_auth(identity)
        async with auth, wire(auth, world) as http:
            assert (await _call(http)).status_code == 200
            assert (await _call(http)).status_code == 200
    (bearer,) = world.token_requests(AS)
    assert "dpop" in bearer.headers
    (issued,) = [t for t in world.tokens.values() if t.issuer == AS]
    assert issued.jkt is not None
    calls = world.to(MCP, "POST")
    assert [c.headers["authorization"].split()[0] for c in calls[-2:]] == ["DPoP", "DPoP"]
    proofs = {c.headers["dpop"] for c in calls[-2:]}
    assert len(proofs) == 2  # a fresh proof per request


async def test_sec_37_a_second_nonce_refusal_ends_the_mcp_request() -> None:
    """An MCP server that wants a new DPoP nonce on every answer (its Bearer challenge
    listed first): one retry with its nonce, then its answer is returned. The DPoP
    challenge is the one read (not the Bearer one), and the token is fine: no refresh, no
    new discovery, no new token."""
    world = _dpop_xaa_world()
    async with _enterprise(world) as identity:
        auth = _xaa_auth(identity)
        async with auth, wire(auth, world) as http:
            assert (await _call(http)).status_code == 200
            before = len(world.requests)
            world.always_new_nonce = True
            assert (await _call(http)).status_code == 401
            after = world.requests[before:]
    assert [(s.method, s.url) for s in after] == [("POST", MCP), ("POST", MCP)]
    first, retry = after
    assert first.headers["dpop"] != retry.headers["dpop"]  # a fresh proof with the nonce


async def test_sec_22_mcp_tokens_only_in_the_authorization_header() -> None:
    """Every request to the MCP server carries the token in ``Authorization`` and nowhere
    else (not in the URL, the body or another header), also after a refresh and a step-up."""
    world = _world()
    world.per_operation = {"tools/call admin": ("tools.read", "tools.admin")}
    async with mcp_only(world) as identity:
        auth = identity.user("alice").mcp_auth(MCP)
        async with auth, wire(auth, world) as http:
            assert (await _call(http, "tools/call", "whoami")).status_code == 200
            world.tokens.clear()  # revoked: a 401, a refresh
            assert (await _call(http, "tools/call", "whoami")).status_code == 200
            assert (await _call(http, "tools/call", "admin")).status_code == 200  # step-up
    calls = world.to(MCP)
    tokens = [
        r.headers["authorization"].partition(" ")[2]
        for r in calls
        if r.headers.get("authorization")
    ]
    assert len(set(tokens)) >= 3  # first, refreshed, stepped up
    for request in calls:
        for token in tokens:
            assert token not in request.url
            assert token not in json.dumps(request.json)
            assert token not in json.dumps(request.form)
            others = {k: v for k, v in request.headers.items() if k != "authorization"}
            assert token not in json.dumps(others)


def test_the_step_up_operation_of_a_resource_read_leaves_its_query_out() -> None:
    """The operation names the resource URI for counting step-ups; it is logged and put
    in StepUpLimitExceeded, so a query (which may carry anything) stays out."""
    from agent_identity.mcp import _operation

    body = {"jsonrpc": "2.0", "method": "resources/read", "params": {"uri": "file:///a?k=SECRET"}}
    request = httpx2.Request("POST", MCP, json=body)
    assert _operation(request) == "resources/read file:///a"
