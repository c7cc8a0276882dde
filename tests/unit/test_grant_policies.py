"""A grant's identity and honesty (issues 10 and 12): tokens labelled with what they carry,
the broader-token and audience policies, grants that belong to one client at one issuer,
rows written before client ids were part of the key, and consent parameters.

The scripted server of ``test_client_faults`` plays the authorization server."""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx2
import pytest
from pydantic import SecretStr
from test_client_faults import (
    CALENDAR,
    CLIENT_ID,
    ISSUER,
    TENANT,
    USER,
    FakeAS,
    MockBrowserConsent,
    _raw,
    connected,
    consented,
    read_token,
)

from agent_identity import IdentityClient, TokenPolicyError, TokenVault
from agent_identity.audit import AuditTrail, MemorySink
from agent_identity.vault.records import GrantKey, GrantRecord

pytestmark = pytest.mark.anyio

MAIL = "https://mail.example/api"


def _broad_refresh(server: FakeAS, scope: str, access_token: str = "AT-broad") -> None:
    """The next refresh answers with ``scope`` (more than asked) and rotates to RT-b."""
    server.live_refresh_tokens.add("RT-b")
    body = {
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_in": 3600,
        "refresh_token": "RT-b",
        "scope": scope,
    }
    server.refresh_faults.append(httpx2.Response(200, json=body))


def _jwt(claims: dict[str, Any]) -> str:
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'RS256', 'typ': 'at+jwt'})}.{part(claims)}.c2ln"


# --------------------------------------------------------------------------- honest scopes


async def test_a_broader_refresh_is_labelled_with_what_it_carries_and_audited() -> None:
    """Issue 10, item 5: a server ignoring ``scope`` on refresh (RFC 6749 §3.3) returns a
    broad token; it is never labelled narrow, and the use is audited."""
    sink = MemorySink()
    async with AuditTrail(sink) as trail, connected(audit=trail) as setup:
        user = await consented(setup)
        _broad_refresh(setup.server, "calendar.read calendar.write")
        token = await user.token(resource=CALENDAR, scopes=["calendar.read"])
        await trail.flush()
    assert token.value.get_secret_value() == "AT-broad"
    assert set(token.scopes) == {"calendar.read", "calendar.write"}
    assert token.scopes_verified
    broader = [e for e in sink.events if e.kind == "token.broader"]
    assert len(broader) == 1
    assert set(broader[0].scopes_granted) == {"calendar.read", "calendar.write"}
    assert broader[0].scopes_requested == ("calendar.read",)


async def test_refuse_policy_keeps_the_rotated_refresh_token_and_caches_nothing() -> None:
    sink = MemorySink()
    async with (
        AuditTrail(sink) as trail,
        connected(audit=trail, on_broader_token="refuse") as setup,
    ):
        user = await consented(setup)
        _broad_refresh(setup.server, "calendar.read calendar.write")
        with pytest.raises(TokenPolicyError) as info:
            await user.token(resource=CALENDAR, scopes=["calendar.read"])
        assert info.value.reason == "scope"
        stored = await setup.identity.vault.load(user.key, fresh=True)
        assert stored is not None
        assert stored.record.refresh_token is not None
        assert stored.record.refresh_token.get_secret_value() == "RT-b"  # not lost
        assert (CALENDAR, frozenset({"calendar.read"})) not in stored.record.tokens
        await trail.flush()
    assert [e.outcome for e in sink.events if e.kind == "token.broader"] == ["denied"]


async def test_scopes_the_server_did_not_report_are_marked_unverified() -> None:
    async with connected() as setup:
        user = await consented(setup)
        setup.server.live_refresh_tokens.add("RT-q")
        setup.server.refresh_faults.append(
            httpx2.Response(
                200,
                json={"access_token": "AT-q", "token_type": "Bearer", "refresh_token": "RT-q"},
            )
        )
        token = await user.token(resource=CALENDAR, scopes=["calendar.read"])
    assert token.scopes == ("calendar.read",)
    assert not token.scopes_verified


async def test_a_readable_token_for_another_audience_is_refused_by_default() -> None:
    async with connected() as setup:
        user = await consented(setup)
        value = _jwt({"aud": "https://evil.example/api", "scope": "calendar.read"})
        _broad_refresh(setup.server, "calendar.read", access_token=value)
        with pytest.raises(TokenPolicyError) as info:
            await user.token(resource=CALENDAR, scopes=["calendar.read"])
        assert info.value.reason == "audience"
        assert info.value.resource == CALENDAR


async def test_the_audience_policy_can_use_and_audit_it() -> None:
    sink = MemorySink()
    async with (
        AuditTrail(sink) as trail,
        connected(audit=trail, on_audience_mismatch="use") as setup,
    ):
        user = await consented(setup)
        value = _jwt({"aud": ["client-a"], "scope": "calendar.read"})
        _broad_refresh(setup.server, "calendar.read", access_token=value)
        token = await user.token(resource=CALENDAR, scopes=["calendar.read"])
        await trail.flush()
    assert token.audience == ("client-a",)
    assert [e.kind for e in sink.events].count("token.audience_mismatch") == 1


async def test_a_readable_token_for_the_resource_is_fine() -> None:
    async with connected() as setup:
        user = await consented(setup)
        value = _jwt({"aud": [CALENDAR, "other"], "scope": "calendar.read"})
        _broad_refresh(setup.server, "calendar.read", access_token=value)
        token = await user.token(resource=CALENDAR, scopes=["calendar.read"])
    assert token.audience == (CALENDAR, "other")


# --------------------------------------------------------------------------- grant identity


async def test_sec_26_two_client_ids_sharing_a_vault_never_share_a_grant() -> None:
    """Issue 12, finding 2: agent B is never handed agent A's token, and B's failed
    refresh never deletes A's grant."""
    vault = TokenVault.memory()
    server = FakeAS()
    async with connected(server, vault=vault) as a_setup:
        alice_a = await consented(a_setup)
        a_token = await read_token(alice_a)
        async with httpx2.AsyncClient(transport=httpx2.MockTransport(server)) as http:
            b = IdentityClient(
                ISSUER,
                client_id="agent-b",
                client_secret="other",
                consent=MockBrowserConsent(server),
                http_client=http,
                vault=vault,
                use_par=False,
            )
            alice_b = b.user(USER, tenant=TENANT)
            assert await alice_b.grant() is None  # not A's grant
            assert alice_b.key != alice_a.key
            b_token = await read_token(alice_b)  # B consents for itself
            assert b_token != a_token
            server.refresh_faults.append(
                httpx2.Response(400, json={"error": "invalid_grant"})
            )
            stored_b = await vault.load(alice_b.key, fresh=True)
            assert stored_b is not None
            await b.aclose()
        # A's grant is untouched whatever happened to B's
        assert await alice_a.grant() is not None
        assert await read_token(alice_a) == a_token


async def test_sec_23_a_grant_of_another_issuer_is_never_sent_here() -> None:
    """Issue 12, finding 3: a grant stored under this connection by another issuer's
    client (same client id, same connection name) is ignored: its refresh token never
    reaches this server, and a new consent replaces it."""
    vault = TokenVault.memory()
    key = GrantKey(TENANT, USER, "shared", CLIENT_ID)
    foreign = GrantRecord(
        issuer="https://other-as.example",
        client_id=CLIENT_ID,
        subject="alice",
        scopes=("calendar.read",),
        resources=(CALENDAR,),
        refresh_token=SecretStr("RT-FOREIGN"),
    )
    await vault.save(key, foreign, expected_version=0)
    async with connected(vault=vault, connection="shared") as setup:
        user = setup.identity.user(USER, tenant=TENANT)
        assert user.key == key
        assert await user.grant() is None
        token = await read_token(user)  # consent here, then a token
        assert token
        assert setup.server.sent_anywhere("RT-FOREIGN") == 0
        stored = await vault.load(key, fresh=True)
        assert stored is not None
        assert stored.record.issuer == ISSUER


async def test_a_row_written_without_a_client_id_is_moved_under_the_full_key() -> None:
    vault = TokenVault.memory()
    async with connected(vault=vault) as setup:
        user = await consented(setup)
        current = await vault.load(user.key, fresh=True)
        assert current is not None
    legacy = user.key.legacy()
    await vault.delete(user.key)
    await vault.save(legacy, current.record.replace(client_id=None), expected_version=0)
    async with connected(setup.server, vault=vault) as later:
        again = later.identity.user(USER, tenant=TENANT)
        grant = await again.grant()
        assert grant is not None
        assert await vault.load(legacy, fresh=True) is None
        moved = await vault.load(again.key, fresh=True)
        assert moved is not None
        assert moved.record.client_id == CLIENT_ID


# --------------------------------------------------------------------------- consent


async def test_consent_for_a_new_resource_asks_for_every_resource_of_the_grant() -> None:
    """Issue 10, item 4: RFC 8707 §2.2 binds a refresh token to the resources of its own
    authorization request, so the incremental consent asks for all of them."""
    async with connected(login_hint=lambda user, tenant: f"{user}@{tenant}.example") as setup:
        user = await consented(setup)
        await user.consent(
            scopes=["mail.read"], resource=MAIL, extra_params={"ui_locales": "de"}
        )
        grant = await user.grant()
    assert grant is not None
    assert grant.resources == (CALENDAR, MAIL)
    last = setup.consent.opened[-1]
    query = parse_qsl(urlsplit(last).query)
    assert [v for k, v in query if k == "resource"] == [CALENDAR, MAIL]
    assert ("login_hint", "alice@acme.example") in query
    assert ("ui_locales", "de") in query
    scope = dict(query)["scope"].split()
    assert {"calendar.read", "calendar.write", "mail.read"} <= set(scope)


async def test_an_invalid_extra_parameter_is_refused_before_the_user_is_asked() -> None:
    async with connected() as setup:
        user = setup.identity.user(USER, tenant=TENANT)
        with pytest.raises(Exception, match="state"):
            await user.consent(scopes=["calendar.read"], extra_params={"state": "x"})
        assert setup.consent.opened == []


async def test_a_refresh_after_a_failed_refresh_does_not_touch_broken_raw() -> None:
    """A 400 with an HTML body to a refresh is the dead-grant case too (issue 10, item 6)."""
    async with connected() as setup:
        user = await consented(setup)
        setup.server.refresh_faults.append(_raw(400, b"<html>no</html>"))
        with pytest.raises(Exception, match="no longer accepts"):
            await read_token(user)
        assert await user.grant() is None


async def test_disconnect_revokes_the_access_tokens_of_a_grant_without_refresh_token() -> None:
    """Providers whose tokens do not expire issue no refresh token: the access tokens are
    the grant, so they are what disconnect() revokes (RFC 7009 §2.1)."""
    server = FakeAS(rotate=False)
    async with connected(server) as setup:
        user = setup.identity.user(USER, tenant=TENANT)
        await user.consent(scopes=["calendar.read"], resource=CALENDAR)
        stored = await setup.identity.vault.load(user.key, fresh=True)
        assert stored is not None
        without_rt = stored.record.replace(refresh_token=None)
        await setup.identity.vault.save(user.key, without_rt, expected_version=stored.version)
        await user.disconnect()
        revoked = [seen.form for seen in server.to("/revoke")]
        assert await user.grant() is None
    assert [form["token_type_hint"] for form in revoked] == ["access_token"]
