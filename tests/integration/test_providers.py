"""The provider profiles against local servers that answer as each provider DOCUMENTS.

Every test drives the public API (``IdentityClient(profile, ...)``, ``user.consent``,
``user.token``, refresh, ``disconnect``) against a fake of ``tests/_provider_fakes.py``
started on ``127.0.0.1`` by the test; the docstring names the documentation section whose
behaviour the fake reproduces. These tests prove that the profiles handle the documented
formats; they say nothing about the live services (see docs/providers.md).

Why the endpoints are rewritten (``local(profile, fake.base)``) rather than served under
the real host names: the shipped profile is used unchanged except for where its requests
go, so the request preparation, response normalization, aliases and scope mapping under
test are the real ones; the SDK's transport talks plain http to loopback only because
the test opts in with ``allow_insecure_loopback=True``.
"""

# The fake outlives the client: nested ``async with`` blocks say so.
# ruff: noqa: SIM117

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypeVar
from urllib.parse import parse_qsl

import anyio
import pytest
from _provider_fakes import (
    CLIENT_ID,
    CLIENT_SECRET,
    GRAPH,
    Browser,
    FakeAtlassian,
    FakeEntra,
    FakeGitHub,
    FakeGoogle,
    FakeNotion,
    FakeProvider,
    FakeSlack,
    local,
)
from pydantic import SecretStr

from agent_identity import (
    ConfigurationError,
    DeviceAuthorization,
    DeviceCodeConsent,
    IdentityClient,
    InvalidClient,
    InvalidGrant,
    InvalidResponse,
    InvalidTokenError,
    LoopbackConsent,
    MetadataError,
    OAuthError,
    ReauthorizationRequired,
    TemporarilyUnavailable,
)
from agent_identity.providers import (
    ProviderProfile,
    atlassian,
    entra,
    entra_multi_tenant,
    github,
    google,
    notion,
    slack,
)
from agent_identity.vault import TokenVault
from agent_identity.vault.records import GrantRecord

pytestmark = pytest.mark.anyio

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
OTHER_TENANT = "9122040d-6c67-4c5b-b112-36a304b66dad"
CALENDAR = "https://www.googleapis.com/auth/calendar.readonly"

F = TypeVar("F", bound=FakeProvider)


class Clock:
    """Wall and monotonic time that tests move forward (real time + an offset, so that ID
    tokens minted with real ``iat``/``exp`` validate)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def monotonic(self) -> float:
        return time.monotonic() + self.offset

    def time(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


@asynccontextmanager
async def running(fake: F) -> AsyncIterator[F]:
    await anyio.to_thread.run_sync(fake.start)
    try:
        yield fake
    finally:
        await anyio.to_thread.run_sync(fake.stop)


def client(
    profile: ProviderProfile,
    *,
    browser: Browser | None = None,
    clock: Clock | None = None,
    secret: str | None = CLIENT_SECRET,
    **kwargs: Any,
) -> IdentityClient:
    return IdentityClient(
        profile,
        client_id=CLIENT_ID,
        client_secret=secret,
        consent=kwargs.pop("consent", None) or LoopbackConsent(browser=browser or Browser()),
        allow_insecure_loopback=True,
        vault=TokenVault.memory(),
        clock=clock,
        **kwargs,
    )


def query(url: str) -> dict[str, str]:
    return dict(parse_qsl(url.split("?", 1)[1], keep_blank_values=True))


# -- GitHub ----------------------------------------------------------------------------------------


@pytest.mark.interop(target="github", flow="consent (authorization code + PKCE)", table="providers")
async def test_github_oauth_app_consent_json_and_comma_scopes() -> None:
    """GitHub Docs, "Authorizing OAuth apps", Web application flow: scopes requested
    space-delimited, the code exchanged with ``client_id``/``client_secret`` in the body,
    ``Accept: application/json`` giving JSON with ``"scope":"repo,gist"``; PKCE S256 (GitHub
    changelog 2025-07-14). An OAuth app's token has no ``expires_in`` and no refresh token."""
    browser = Browser()
    async with running(FakeGitHub()) as fake:
        async with client(local(github(), fake.base), browser=browser) as gh:
            alice = gh.user("alice")
            await alice.consent(scopes=["repo", "gist"])
            token = await alice.token(scopes=["repo", "gist"])
            grant = await alice.grant()
    params = browser.params()
    assert params["scope"] == "repo gist"
    assert params["code_challenge_method"] == "S256"
    assert params["code_challenge"]
    assert "resource" not in params
    assert "offline_access" not in params["scope"]
    (exchange,) = fake.at("/login/oauth/access_token")
    assert exchange.headers["accept"] == "application/json"
    assert exchange.params["client_secret"] == CLIENT_SECRET
    assert "authorization" not in exchange.headers
    assert exchange.params["code_verifier"]
    assert sorted(token.scopes) == ["gist", "repo"]
    assert token.scopes_verified
    assert token.expires_at is None
    assert grant is not None
    assert not grant.has_refresh_token


async def test_github_form_encoded_default_response() -> None:
    """GitHub Docs, "Authorizing OAuth apps" step 2: "By default, the response takes the
    following form: access_token=...&scope=repo%2Cgist&token_type=bearer" — read even when
    the server ignores the request for JSON."""
    async with running(FakeGitHub(json_ignored=True)) as fake:
        async with client(local(github(), fake.base)) as gh:
            alice = gh.user("alice")
            await alice.consent(scopes=["repo", "gist"])
            token = await alice.token(scopes=["repo", "gist"])
    assert fake.at("/login/oauth/access_token")[0].headers["accept"] == "application/json"
    assert sorted(token.scopes) == ["gist", "repo"]
    assert token.token_type == "bearer"


@pytest.mark.interop(
    target="github",
    flow="refresh (rotation where the provider rotates)",
    table="providers",
)
async def test_github_app_expiring_tokens_rotate_on_refresh() -> None:
    """GitHub Docs, "Refreshing user access tokens": expiring user tokens come with
    ``expires_in`` 28800, ``refresh_token`` and ``refresh_token_expires_in``; "Once you use
    a refresh token, that refresh token and the old user access token will no longer work";
    the refresh request has no scope. ``scope`` is "always an empty string" ("Generating a
    user access token for a GitHub App"): the token is labelled with the requested scopes,
    unverified, instead of carrying none."""
    clock = Clock()
    async with running(FakeGitHub(app=True)) as fake:
        async with client(local(github(), fake.base), clock=clock) as gh:
            alice = gh.user("alice")
            await alice.consent(scopes=["repo"])
            first = await alice.token(scopes=["repo"])
            assert first.scopes == ("repo",)
            assert not first.scopes_verified
            for _ in range(2):  # two refreshes: the second uses the rotated refresh token
                clock.advance(28800)
                again = await alice.token(scopes=["repo"])
                assert again.value.get_secret_value() != first.value.get_secret_value()
                first = again
    refreshes = [
        r
        for r in fake.at("/login/oauth/access_token")
        if r.params.get("grant_type") == "refresh_token"
    ]
    assert len(refreshes) == 2
    assert refreshes[0].params["refresh_token"] != refreshes[1].params["refresh_token"]
    assert all("scope" not in r.params for r in refreshes)


@pytest.mark.interop(
    target="github",
    flow="errors mapped to typed errors, raw code kept",
    table="providers",
)
async def test_github_errors_in_http_200_are_typed_errors() -> None:
    """GitHub Docs, "Troubleshooting OAuth app access token request errors": bodies with
    ``incorrect_client_credentials`` and ``bad_verification_code``, answered (here) with
    HTTP 200 like the device flow documents: typed errors with the raw code kept."""
    async with running(FakeGitHub()) as fake:
        async with client(local(github(), fake.base), secret="wrong") as gh:
            with pytest.raises(InvalidClient) as bad_client:
                await gh.user("alice").consent(scopes=["repo"])
        fake.codes.clear()
        original = fake.take_code
        fake.take_code = lambda params: None  # type: ignore[method-assign]  # every code expired
        async with client(local(github(), fake.base)) as gh:
            with pytest.raises(InvalidGrant) as bad_code:
                await gh.user("alice").consent(scopes=["repo"])
        fake.take_code = original  # type: ignore[method-assign]
    assert bad_client.value.error == "incorrect_client_credentials"
    assert bad_client.value.status_code == 401
    assert bad_code.value.error == "bad_verification_code"


@pytest.mark.interop(target="github", flow="dead grant detected and removed", table="providers")
async def test_github_dead_refresh_token_removes_the_grant() -> None:
    """A refresh token GitHub no longer accepts is answered ``bad_refresh_token`` (GitHub
    community discussion #24745; "Refreshing user access tokens": a used refresh token "will
    no longer work"): the grant is dead, removed, ReauthorizationRequired raised."""
    clock = Clock()
    async with running(FakeGitHub(app=True)) as fake:
        async with client(local(github(), fake.base), clock=clock) as gh:
            alice = gh.user("alice")
            await alice.consent(scopes=["repo"])
            await alice.token(scopes=["repo"])
            fake.refresh_tokens.clear()  # the user revoked the app
            clock.advance(28800)
            with pytest.raises(ReauthorizationRequired) as dead:
                await alice.token(scopes=["repo"])
            assert await alice.grant() is None
    cause = dead.value.__cause__
    assert isinstance(cause, InvalidGrant)
    assert cause.error == "bad_refresh_token"


@pytest.mark.parametrize("json_ignored", [False, True], ids=["json", "form-encoded"])
@pytest.mark.interop(target="github", flow="device flow (RFC 8628)", table="providers")
async def test_github_device_flow_pending_in_200(json_ignored: bool) -> None:
    """GitHub Docs, "Authorizing OAuth apps", Device flow: ``POST /login/device/code`` with
    ``client_id`` answers ``device_code=...&expires_in=900&interval=5&...`` "by default"
    (JSON when asked); polling ``/login/oauth/access_token`` with the device
    ``grant_type``, "GitHub will respond with a 200 status and an error"
    (``authorization_pending``) until the user enters the code. No client secret."""
    shown: list[DeviceAuthorization] = []
    async with running(FakeGitHub(json_ignored=json_ignored)) as fake:
        consent = DeviceCodeConsent(prompt=shown.append)
        async with client(local(github(), fake.base), secret=None, consent=consent) as gh:
            alice = gh.user("alice")
            await alice.consent(scopes=["repo"])
            token = await alice.token(scopes=["repo"])
    assert shown
    assert shown[0].user_code == "WDJB-MJHT"
    (device,) = fake.at("/login/device/code")
    assert device.headers["accept"] == "application/json"
    assert device.params["client_id"] == CLIENT_ID
    polls = fake.at("/login/oauth/access_token")
    assert len(polls) == 2
    assert "client_secret" not in polls[0].params
    assert token.value.get_secret_value().startswith("gho_")


@pytest.mark.interop(
    target="github",
    flow="revocation (RFC 7009)",
    table="providers",
    na="GitHub has no RFC 7009 revocation endpoint (none is invented)",
)
async def test_github_has_no_revocation_endpoint() -> None:
    """GitHub documents no RFC 7009 endpoint (revocation is a REST API call, "Authorizing
    OAuth apps" / REST "OAuth authorizations"): the profile invents none, so disconnecting a
    grant with a refresh token refuses clearly and sends nothing."""
    async with running(FakeGitHub(app=True)) as fake, client(local(github(), fake.base)) as gh:
        alice = gh.user("alice")
        await alice.consent(scopes=["repo"])
        count = len(fake.requests)
        with pytest.raises(ConfigurationError, match="no revocation endpoint"):
            await alice.disconnect()
        assert await alice.grant() is not None  # nothing forgotten by a refused disconnect
        await alice.disconnect(revoke=False)  # forget it here, knowingly
        assert await alice.grant() is None
    assert len(fake.requests) == count


# -- Google ----------------------------------------------------------------------------------------


@pytest.mark.interop(target="google", flow="consent (authorization code + PKCE)", table="providers")
async def test_google_consent_offline_access_type_and_id_token() -> None:
    """Google, "Using OAuth 2.0 for Web Server Applications", Step 1: ``access_type=offline``
    for a refresh token, ``prompt=consent`` to get it again; no ``offline_access`` scope and
    no ``resource``. "Google OpenID Connect API Reference": discovery at
    ``/.well-known/openid-configuration``; the ID token is validated with the published keys."""
    browser = Browser()
    async with running(FakeGoogle()) as fake:
        async with client(local(google(), fake.base), browser=browser) as g:
            alice = g.user("alice")
            grant = await alice.consent(
                scopes=["openid", "email", CALENDAR], resource="https://www.googleapis.com"
            )
            token = await alice.token(scopes=[CALENDAR], resource="https://www.googleapis.com")
    params = browser.params()
    assert params["access_type"] == "offline"
    assert params["prompt"] == "consent"
    assert "offline_access" not in params["scope"].split()
    assert "resource" not in params
    assert params["code_challenge_method"] == "S256"
    assert "resource" not in fake.at("/token")[0].params
    assert grant.has_refresh_token
    assert grant.id_token_claims["email"] == "alice@example.com"
    assert token.scopes_verified
    assert CALENDAR in token.scopes
    assert fake.requests[0].path == "/.well-known/oauth-authorization-server"


@pytest.mark.interop(
    target="google",
    flow="refresh (rotation where the provider rotates)",
    table="providers",
)
async def test_google_refresh_keeps_the_unrotated_refresh_token() -> None:
    """Google, "Refreshing an access token (offline access)": the request carries
    ``client_id``, ``client_secret``, ``grant_type`` and ``refresh_token``; the answer has a
    new access token and no new refresh token: the stored one keeps working."""
    clock = Clock()
    async with running(FakeGoogle()) as fake:
        async with client(local(google(), fake.base), clock=clock) as g:
            alice = g.user("alice")
            await alice.consent(scopes=["openid", CALENDAR])
            for _ in range(2):
                clock.advance(3600)
                await alice.token(scopes=[CALENDAR])
            grant = await alice.grant()
    refreshes = [r for r in fake.at("/token") if r.params.get("grant_type") == "refresh_token"]
    assert len(refreshes) == 2
    assert refreshes[0].params["refresh_token"] == refreshes[1].params["refresh_token"]
    assert all("scope" not in r.params for r in refreshes)
    assert grant is not None
    assert grant.has_refresh_token


@pytest.mark.parametrize(
    ("iss", "accepted"),
    [
        ("https://accounts.google.com", True),
        ("accounts.google.com", True),  # "also returned for legacy implementations"
        ("https://accounts.google.com.evil.example", False),
        ("https://login.microsoftonline.com/x/v2.0", False),
    ],
)
@pytest.mark.interop(target="google", flow="ID token validation", table="providers")
async def test_google_id_token_issuer_modern_or_legacy_only(iss: str, accepted: bool) -> None:
    """Google OpenID Connect API Reference, Discovery Document, ``issuer``: "The modern
    value is https://accounts.google.com; however, accounts.google.com is also returned for
    legacy implementations." Any other ``iss`` is refused."""
    async with running(FakeGoogle(iss=iss)) as fake, client(local(google(), fake.base)) as g:
        alice = g.user("alice")
        if accepted:
            grant = await alice.consent(scopes=["openid", CALENDAR])
            assert grant.id_token_claims["iss"] == iss
        else:
            with pytest.raises(InvalidTokenError):
                await alice.consent(scopes=["openid", CALENDAR])


@pytest.mark.interop(target="google", flow="revocation (RFC 7009)", table="providers")
async def test_google_revoked_grant_and_disconnect() -> None:
    """Google, "Refreshing an access token": a revoked refresh token gets ``400
    invalid_grant`` (the grant is removed); "Revoking a token": ``disconnect`` POSTs the
    refresh token to the discovered revocation endpoint."""
    clock = Clock()
    async with running(FakeGoogle()) as fake:
        async with client(local(google(), fake.base), clock=clock) as g:
            bob = g.user("bob")
            await bob.consent(scopes=[CALENDAR])
            refresh = next(iter(fake.refresh_tokens))
            await bob.disconnect()
            assert fake.revoked == [refresh]
            assert await bob.grant() is None

            alice = g.user("alice")
            await alice.consent(scopes=[CALENDAR])
            fake.refresh_tokens.clear()
            clock.advance(3600)
            with pytest.raises(ReauthorizationRequired):
                await alice.token(scopes=[CALENDAR])
            assert await alice.grant() is None


# -- Microsoft Entra -------------------------------------------------------------------------------


def _entra_local(profile: ProviderProfile, fake: FakeEntra) -> ProviderProfile:
    moved = local(profile, fake.base)
    if profile.id_token_issuer is None:  # one tenant: ID tokens carry its exact issuer
        fake.id_token_iss = moved.issuer
    return moved


@pytest.mark.interop(target="entra", flow="consent (authorization code + PKCE)", table="providers")
async def test_entra_single_tenant_scopes_for_a_resource_and_opaque_tokens() -> None:
    """Microsoft identity platform, "OAuth 2.0 authorization code flow": ``scope`` names
    the resource (``https://graph.microsoft.com/User.Read``), ``offline_access`` for a
    refresh token, PKCE S256, no ``resource`` in v2.0; the response's ``scope`` is fully
    qualified. "Access tokens": "Clients must treat access tokens as opaque strings" — the
    Graph token's ``aud`` (Graph's app ID) is not read, so the default
    ``on_audience_mismatch='refuse'`` does not reject it."""
    browser = Browser()
    async with running(FakeEntra(TENANT, user_tenant=TENANT)) as fake:
        async with client(_entra_local(entra(TENANT), fake), browser=browser) as ms:
            alice = ms.user("alice")
            grant = await alice.consent(scopes=["User.Read"], resource=GRAPH)
            token = await alice.token(scopes=["User.Read"], resource=GRAPH)
    params = browser.params()
    assert params["scope"].split() == [
        "openid",
        "https://graph.microsoft.com/User.Read",
        "offline_access",
    ]
    assert params["code_challenge_method"] == "S256"
    assert "resource" not in params
    assert "resource" not in fake.at(f"/{TENANT}/oauth2/v2.0/token")[0].params
    assert grant.scopes == ("openid", "offline_access", "User.Read")
    assert grant.id_token_claims["tid"] == TENANT
    assert token.scopes == ("User.Read",)
    assert token.scopes_verified
    assert token.audience is None  # never read from the (readable) JWT


@pytest.mark.interop(
    target="entra",
    flow="refresh (rotation where the provider rotates)",
    table="providers",
)
async def test_entra_refresh_names_one_resource_and_rotates() -> None:
    """ "Refresh the access token": ``scope`` of one resource; a new refresh token each
    time. ``{resource}/.default`` asks for every consented permission of the resource."""
    clock = Clock()
    async with running(FakeEntra(TENANT, user_tenant=TENANT)) as fake:
        async with client(_entra_local(entra(TENANT), fake), clock=clock) as ms:
            alice = ms.user("alice")
            await alice.consent(scopes=["User.Read", "Mail.Read"], resource=GRAPH)
            clock.advance(3600)
            narrow = await alice.token(scopes=["Mail.Read"], resource=GRAPH)
            everything = await alice.token(resource=GRAPH)
    refreshes = [
        r
        for r in fake.at(f"/{TENANT}/oauth2/v2.0/token")
        if r.params["grant_type"] == "refresh_token"
    ]
    assert [r.params["scope"] for r in refreshes] == [
        "https://graph.microsoft.com/Mail.Read",
        "https://graph.microsoft.com/.default",
    ]
    assert refreshes[0].params["refresh_token"] != refreshes[1].params["refresh_token"]
    assert narrow.scopes == ("Mail.Read",)
    assert set(everything.scopes) == {"User.Read", "Mail.Read"}


@pytest.mark.interop(target="entra", flow="ID token validation", table="providers")
async def test_entra_single_tenant_refuses_another_issuer() -> None:
    """OpenID Connect Core, as "Access tokens", Validate the issuer, Single tenant
    applications, quotes it: the issuer "MUST exactly match the value of the iss claim"."""
    fake = FakeEntra(TENANT, user_tenant=OTHER_TENANT)
    async with running(fake):
        profile = _entra_local(entra(TENANT), fake)
        fake.id_token_iss = f"{fake.base}/{OTHER_TENANT}/v2.0"  # another tenant's issuer
        async with client(profile) as ms:
            with pytest.raises(InvalidTokenError):
                await ms.user("alice").consent(scopes=["User.Read"], resource=GRAPH)


async def test_entra_discovered_document_gets_the_documented_s256() -> None:
    """ "OpenID Connect on the Microsoft identity platform": the tenant's document at
    ``{authority}/v2.0/.well-known/openid-configuration``, which lists no
    ``code_challenge_methods_supported``; the auth code flow page documents S256, which
    the profile's ``metadata_defaults`` supply, so discovery works with security item 10."""
    async with running(FakeEntra(TENANT, user_tenant=TENANT)) as fake:
        profile = dataclasses.replace(
            entra(TENANT), metadata=None, issuer=f"{fake.base}/{TENANT}/v2.0"
        )
        fake.id_token_iss = profile.issuer
        async with client(profile) as ms:
            assert ms.metadata.code_challenge_methods_supported == ("S256",)
            grant = await ms.user("alice").consent(scopes=["User.Read"], resource=GRAPH)
        without = dataclasses.replace(profile, metadata_defaults={})
        async with client(without) as ms:
            with pytest.raises(MetadataError, match="S256"):
                await ms.user("alice").consent(scopes=["User.Read"], resource=GRAPH)
    assert grant.has_refresh_token


@pytest.mark.interop(
    target="entra",
    flow="errors mapped to typed errors, raw code kept",
    table="providers",
)
async def test_entra_errors_keep_the_aadsts_description() -> None:
    """ "OAuth 2.0 authorization code flow", Error response: RFC 6749 codes with an AADSTS
    ``error_description`` and ``error_codes``; a bad secret is ``invalid_client``."""
    async with running(FakeEntra(TENANT, user_tenant=TENANT)) as fake:
        async with client(_entra_local(entra(TENANT), fake), secret="wrong") as ms:
            with pytest.raises(InvalidClient) as error:
                await ms.user("alice").consent(scopes=["User.Read"], resource=GRAPH)
    assert error.value.error == "invalid_client"
    assert "AADSTS7000215" in str(error.value.error_description)


@pytest.mark.parametrize(
    ("tenants", "user_tenant", "iss", "accepted"),
    [
        (None, TENANT, None, True),
        (None, OTHER_TENANT, None, True),
        ([TENANT], OTHER_TENANT, None, False),  # not an allowed tenant
        (None, TENANT, f"https://login.microsoftonline.com/{OTHER_TENANT}/v2.0", False),
        (None, "not-a-guid", "https://login.microsoftonline.com/not-a-guid/v2.0", False),
    ],
)
@pytest.mark.interop(target="entra-multitenant", flow="ID token validation", table="providers")
async def test_entra_multi_tenant_issuer_template(
    tenants: list[str] | None, user_tenant: str, iss: str | None, accepted: bool
) -> None:
    """ "Microsoft identity platform access tokens", Validate the issuer, Multi-tenant
    applications: the ``organizations`` document's issuer "is a template parametrized by the
    tenantid"; "Validate that the tid claim is a GUID and the iss claim is of the form
    https://login.microsoftonline.com/{tid}/v2.0 where {tid} is the exact tid claim"."""
    async with running(
        FakeEntra("organizations", user_tenant=user_tenant, id_token_iss=iss)
    ) as fake:
        profile = _entra_local(entra_multi_tenant(tenants=tenants), fake)
        async with client(profile) as ms:
            alice = ms.user("alice")
            if accepted:
                grant = await alice.consent(scopes=["User.Read"], resource=GRAPH)
                assert grant.id_token_claims["tid"] == user_tenant
            else:
                with pytest.raises(InvalidTokenError):
                    await alice.consent(scopes=["User.Read"], resource=GRAPH)


def test_entra_factories_refuse_what_they_cannot_validate() -> None:
    """ "OpenID Connect on the Microsoft identity platform": ``{tenant}`` is a GUID, a
    domain, ``common``, ``organizations`` or ``consumers``; a single-tenant profile needs the
    GUID (the issuer names the tenant by it), a multi-tenant one ``organizations``/``common``."""
    for bad in ("common", "organizations", "contoso.onmicrosoft.com", ""):
        with pytest.raises(ConfigurationError):
            entra(bad)
    with pytest.raises(ConfigurationError):
        entra_multi_tenant("consumers")
    with pytest.raises(ConfigurationError):
        entra_multi_tenant(tenants=["contoso.onmicrosoft.com"])


# -- Slack -----------------------------------------------------------------------------------------


@pytest.mark.interop(target="slack", flow="consent (authorization code + PKCE)", table="providers")
async def test_slack_user_token_from_authed_user() -> None:
    """Slack, "Installing with OAuth": ``user_scope`` (comma-separated) asks for a user
    token, returned under ``authed_user`` by ``oauth.v2.access``; HTTP Basic client
    authentication (``oauth.v2.access`` reference); ``code_verifier`` for PKCE."""
    browser = Browser()
    async with running(FakeSlack(rotation=False)) as fake:
        async with client(local(slack(), fake.base), browser=browser) as sl:
            alice = sl.user("alice")
            grant = await alice.consent(scopes=["search:read", "chat:write"])
            token = await alice.token(scopes=["search:read", "chat:write"])
    params = browser.params()
    assert params["user_scope"] == "search:read,chat:write"
    assert "scope" not in params
    assert params["code_challenge_method"] == "S256"
    (exchange,) = fake.at("/api/oauth.v2.access")
    assert exchange.basic_auth() == (CLIENT_ID, CLIENT_SECRET)
    assert exchange.params["code_verifier"]
    assert token.value.get_secret_value().startswith("xoxp-")
    assert token.token_type == "Bearer"
    assert sorted(token.scopes) == ["chat:write", "search:read"]
    assert token.scopes_verified
    assert token.expires_at is None
    assert not grant.has_refresh_token


@pytest.mark.interop(
    target="slack",
    flow="refresh (rotation where the provider rotates)",
    table="providers",
)
async def test_slack_token_rotation() -> None:
    """Slack, "Using token rotation": tokens expire after 12 hours (``expires_in`` 43200)
    and come with a ``refresh_token``; ``oauth.v2.access`` with ``grant_type=refresh_token``
    returns a new pair and revokes the old refresh token (``invalid_refresh_token``)."""
    clock = Clock()
    async with running(FakeSlack()) as fake:
        async with client(local(slack(), fake.base), clock=clock) as sl:
            alice = sl.user("alice")
            await alice.consent(scopes=["search:read"])
            first = await alice.token(scopes=["search:read"])
            clock.advance(43200)
            second = await alice.token(scopes=["search:read"])
            clock.advance(43200)
            third = await alice.token(scopes=["search:read"])
            assert len({t.value.get_secret_value() for t in (first, second, third)}) == 3
            assert third.scopes == ("search:read",)
            fake.refresh_tokens.clear()  # the old refresh tokens are spent
            clock.advance(43200)
            with pytest.raises(ReauthorizationRequired) as dead:
                await alice.token(scopes=["search:read"])
    refreshes = [
        r for r in fake.at("/api/oauth.v2.access") if r.params.get("grant_type") == "refresh_token"
    ]
    assert refreshes[0].params["refresh_token"] != refreshes[1].params["refresh_token"]
    assert all("user_scope" not in r.params and "scope" not in r.params for r in refreshes)
    cause = dead.value.__cause__
    assert isinstance(cause, InvalidGrant)
    assert cause.error == "invalid_refresh_token"


@pytest.mark.interop(
    target="slack",
    flow="errors mapped to typed errors, raw code kept",
    table="providers",
)
async def test_slack_ok_false_errors_and_bot_only_answers() -> None:
    """``oauth.v2.access`` reference, Errors: ``{"ok": false, "error": "bad_client_secret"}``
    with HTTP 200 is a typed ``InvalidClient`` (raw code kept); an answer with only a bot
    token ("puts bot access tokens first", no ``authed_user.access_token``) is refused: the
    profile never hands a bot token out as the user's."""
    async with running(FakeSlack()) as fake:
        async with client(local(slack(), fake.base), secret="wrong") as sl:
            with pytest.raises(InvalidClient) as bad:
                await sl.user("alice").consent(scopes=["search:read"])
        fake.user_token = False
        async with client(local(slack(), fake.base)) as sl:
            with pytest.raises(InvalidResponse, match="no user token"):
                await sl.user("alice").consent(scopes=["search:read"])
            assert await sl.user("alice").grant() is None
    assert bad.value.error == "bad_client_secret"


async def test_slack_refusal_during_refresh_is_returned_not_raised() -> None:
    """A refresh answered with no user token ("Installing with OAuth": bot tokens first) is
    refused by the profile; the server returns it as the refresh's error (its contract: a
    rotated refresh token could otherwise be lost), and the caller gets InvalidResponse."""

    class BotRefresh(FakeSlack):
        def handle(self, request: Any) -> Any:
            from _provider_fakes import Response

            if request.params.get("grant_type") == "refresh_token":
                return Response.json(
                    200, {"ok": True, "access_token": "xoxb-bot", "token_type": "bot"}
                )
            return super().handle(request)

    async with running(BotRefresh()) as fake:
        async with client(local(slack(), fake.base)) as sl:
            await sl.discover()
            assert sl.server is not None
            refreshed = await sl.server.refresh(SecretStr("xoxe-1-x"), scopes=[], resource=None)
    assert refreshed.response is None
    assert isinstance(refreshed.error, InvalidResponse)
    assert refreshed.salvaged_refresh_token is None


# -- Atlassian -------------------------------------------------------------------------------------


async def _seed(
    identity: IdentityClient, user: str, refresh_token: str, scopes: tuple[str, ...]
) -> None:
    """Put a grant obtained elsewhere in the vault (these profiles cannot run consent)."""
    who = identity.user(user)
    record = GrantRecord(
        issuer=identity.issuer,
        client_id=CLIENT_ID,
        subject=None,
        scopes=scopes,
        resources=(),
        refresh_token=SecretStr(refresh_token),
    )
    await identity.vault.save(who.key, record, expected_version=0)


@pytest.mark.interop(
    target="atlassian",
    flow="consent (authorization code + PKCE)",
    table="providers",
    na="Atlassian documents no PKCE: consent is refused before any request (security item 10)",
)
async def test_atlassian_consent_refused_without_documented_pkce() -> None:
    """Atlassian, "OAuth 2.0 (3LO) apps": the authorization URL's documented parameters
    include no ``code_challenge``; security item 10 refuses the flow without S256, with a
    clear ConfigurationError and no request at all."""
    async with running(FakeAtlassian()) as fake, client(local(atlassian(), fake.base)) as at:
        with pytest.raises(ConfigurationError, match="PKCE"):
            await at.user("alice").consent(scopes=["read:jira-work"])
    assert fake.requests == []


@pytest.mark.interop(
    target="atlassian",
    flow="refresh (rotation where the provider rotates)",
    table="providers",
)
async def test_atlassian_json_refresh_rotation_and_403_invalid_grant() -> None:
    """Atlassian, "Implementing the Refresh Token Flow": a JSON body with ``grant_type``,
    ``client_id``, ``client_secret``, ``refresh_token``; rotating refresh tokens; the
    response has no ``token_type`` ("OAuth 2.0 (3LO) apps" example); a dead refresh token
    gets ``403 invalid_grant`` "Unknown or invalid refresh token." (grant removed)."""
    async with running(FakeAtlassian()) as fake:
        seeded = fake.new_refresh_token("atl-", scope="read:jira-work offline_access")
        async with client(local(atlassian(), fake.base)) as at:
            await _seed(at, "alice", seeded, ("read:jira-work", "offline_access"))
            alice = at.user("alice")
            first = await alice.token(scopes=["read:jira-work"])
            second = await alice.refresh_after_rejection(first)
            assert first.token_type == "Bearer"
            assert first.scopes_verified
            assert second.value.get_secret_value() != first.value.get_secret_value()
            fake.refresh_tokens.clear()
            with pytest.raises(ReauthorizationRequired) as dead:
                await alice.refresh_after_rejection(second)
            assert await alice.grant() is None
    requests = fake.at("/oauth/token")
    assert all(r.json is not None and r.form is None for r in requests)
    assert requests[0].json is not None
    assert requests[0].json["refresh_token"] == seeded
    assert requests[1].json is not None
    assert requests[1].json["refresh_token"] != seeded
    cause = dead.value.__cause__
    assert isinstance(cause, InvalidGrant)
    assert cause.status_code == 403


# -- Notion ----------------------------------------------------------------------------------------


@pytest.mark.interop(
    target="notion",
    flow="consent (authorization code + PKCE)",
    table="providers",
    na="Notion documents no PKCE: consent is refused before any request (security item 10)",
)
async def test_notion_consent_refused_without_documented_pkce() -> None:
    """Notion, "Authorization" (public connection auth flow): the authorization URL takes
    ``client_id``, ``redirect_uri``, ``response_type``, ``owner``, ``state`` — no PKCE; the
    flow is refused before any request (security item 10)."""
    async with running(FakeNotion()) as fake, client(local(notion(), fake.base)) as no:
        with pytest.raises(ConfigurationError, match="PKCE"):
            await no.user("alice").consent(scopes=[])
    assert fake.requests == []


@pytest.mark.interop(
    target="notion",
    flow="refresh (rotation where the provider rotates)",
    table="providers",
)
async def test_notion_basic_json_refresh_no_expiry_and_api_errors() -> None:
    """Notion, "Refresh a token": HTTP Basic client authentication and a JSON body; the
    response has no ``scope`` and no ``expires_in`` (the token never expires by itself).
    "Status codes": ``{"object": "error", "code": "invalid_grant", "message": ...}`` is a
    dead grant; ``401 unauthorized`` a bad client."""
    async with running(FakeNotion()) as fake:
        seeded = fake.new_refresh_token("nrt_")
        async with client(local(notion(), fake.base)) as no:
            await _seed(no, "alice", seeded, ())
            alice = no.user("alice")
            token = await alice.token()
            assert token.expires_at is None
            assert token.scopes == ()
            assert not token.scopes_verified
            fake.refresh_tokens.clear()
            with pytest.raises(ReauthorizationRequired) as dead:
                await alice.refresh_after_rejection(token)
        seeded = fake.new_refresh_token("nrt_")
        async with client(local(notion(), fake.base), secret="wrong") as no:
            await _seed(no, "bob", seeded, ())
            with pytest.raises(OAuthError) as bad:
                await no.user("bob").token()
    (first, *_rest) = fake.at("/v1/oauth/token")
    assert first.basic_auth() == (CLIENT_ID, CLIENT_SECRET)
    assert first.json is not None
    cause = dead.value.__cause__
    assert isinstance(cause, InvalidGrant)
    assert "revoked" in str(cause.error_description)
    assert isinstance(bad.value, InvalidClient)
    assert bad.value.error == "unauthorized"


@pytest.mark.interop(
    target="notion",
    flow="errors mapped to typed errors, raw code kept",
    table="providers",
)
async def test_notion_rate_limit_is_temporarily_unavailable() -> None:
    """Notion, "Status codes": ``429 rate_limited`` is answered as
    ``temporarily_unavailable`` (the grant is kept)."""

    class Limited(FakeNotion):
        def handle(self, request: Any) -> Any:
            from _provider_fakes import Response

            if request.path == "/v1/oauth/token":
                return Response.json(
                    429,
                    {"object": "error", "status": 429, "code": "rate_limited", "message": "slow"},
                )
            return super().handle(request)

    async with running(Limited()) as fake, client(local(notion(), fake.base)) as no:
        await _seed(no, "alice", "nrt_x", ())
        with pytest.raises(TemporarilyUnavailable):
            await no.user("alice").token()
        assert await no.user("alice").grant() is not None


# -- security item 40 ---------------------------------------------------------------------------


def _sent_secrets(fake: FakeProvider) -> set[str]:
    """Every secret the client sent the fake: codes, PKCE verifiers, refresh tokens, the
    client secret, Authorization header values."""
    found = {CLIENT_SECRET}
    for request in fake.requests:
        for name in ("code", "code_verifier", "refresh_token", "client_secret", "device_code"):
            value = request.params.get(name) or request.query.get(name)
            if isinstance(value, str) and len(value) > 6:
                found.add(value)
        if "authorization" in request.headers:
            found.add(request.headers["authorization"])
            found.add(request.headers["authorization"].split(" ", 1)[-1])
    return found


def _exception_texts(error: BaseException) -> list[str]:
    texts: list[str] = []
    seen: BaseException | None = error
    while seen is not None and len(texts) < 20:
        texts += [str(seen), repr(seen), *map(str, seen.args)]
        seen = seen.__cause__ or seen.__context__
    return texts


async def test_sec_40_no_secret_in_logs_errors_or_reprs_of_profile_flows(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Security item 40 for the profiles' rewritten responses and requests: GitHub (form
    bodies, errors in 200), Slack (``ok: false``, ``authed_user``), Atlassian (JSON
    bodies): no secret the client sent or received shows in any log record (DEBUG),
    exception or ``repr``."""
    caplog.set_level(logging.DEBUG)
    emitted: list[str] = []
    clock = Clock()
    fakes: list[FakeProvider] = []
    received: set[str] = set()
    async with running(FakeGitHub(app=True, json_ignored=True)) as gh_fake:
        fakes.append(gh_fake)
        async with client(local(github(), gh_fake.base), clock=clock) as gh:
            alice = gh.user("alice")
            grant = await alice.consent(scopes=["repo"])
            token = await alice.token(scopes=["repo"])
            clock.advance(28800)
            token2 = await alice.token(scopes=["repo"])
            received |= {t.value.get_secret_value() for t in (token, token2)}
            emitted += [repr(gh), repr(alice), repr(grant), repr(token), str(token)]
            gh_fake.refresh_tokens.clear()
            clock.advance(28800)
            with pytest.raises(ReauthorizationRequired) as dead:
                await alice.token(scopes=["repo"])
            emitted += _exception_texts(dead.value)
    async with running(FakeSlack()) as sl_fake:
        fakes.append(sl_fake)
        async with client(local(slack(), sl_fake.base), secret="wrong-slack-secret") as sl:
            with pytest.raises(InvalidClient) as bad:
                await sl.user("alice").consent(scopes=["search:read"])
            emitted += _exception_texts(bad.value)
    async with running(FakeAtlassian()) as at_fake:
        fakes.append(at_fake)
        seeded = at_fake.new_refresh_token("atl-", scope="read:jira-work")
        async with client(local(atlassian(), at_fake.base)) as at:
            await _seed(at, "alice", seeded, ("read:jira-work",))
            first = await at.user("alice").token(scopes=["read:jira-work"])
            received.add(first.value.get_secret_value())
            emitted += [repr(first), repr(at.server)]
            at_fake.refresh_tokens.clear()
            with pytest.raises(ReauthorizationRequired) as gone:
                await at.user("alice").refresh_after_rejection(first)
            emitted += _exception_texts(gone.value)
    for record in caplog.records:
        emitted.append(record.getMessage())
        if record.exc_info and record.exc_info[1] is not None:
            emitted += _exception_texts(record.exc_info[1])
    # the log half searched something: the SDK's own records were captured
    assert any(r.name.startswith("agent_identity") for r in caplog.records)
    canaries = set(received) | {"wrong-slack-secret"}
    for fake in fakes:
        canaries |= _sent_secrets(fake)
    assert len(canaries) > 10
    text = "\n".join(emitted)
    leaked = sorted(c for c in canaries if c in text)
    where = [line for line in text.splitlines() if any(c in line for c in leaked)]
    assert leaked == [], where[:5]
