"""Per-tool tokens, elevation, step-up and token exchange against the local authorization
server and a real (in-process) resource server that validates its JWTs."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx2
import pytest
from _helpers import CALENDAR, MAIL, make_client, record_of
from _resource import CalendarAPI

from agent_identity import (
    IdentityClient,
    InsecureURLError,
    InvalidScope,
    LoopbackConsent,
    StepUpLimitExceeded,
)
from agent_identity.delegation import DelegationChain
from agent_identity.devidp import DevBrowser, DevIdP
from agent_identity.oauth.jwt import peek_claims

pytestmark = [pytest.mark.anyio, pytest.mark.idp]


class CountingBrowser:
    """The user's browser (alice approves); remembers every authorization URL."""

    def __init__(self, login: str = "alice") -> None:
        self.urls: list[str] = []
        self._browser = DevBrowser(login)

    async def __call__(self, url: str) -> str:
        self.urls.append(url)
        return await self._browser.visit(url)

    def params(self, index: int = -1) -> dict[str, str]:
        return dict(parse_qsl(urlsplit(self.urls[index]).query))


async def _calendar_api(idp: DevIdP, **kwargs: Any) -> CalendarAPI:
    async with httpx2.AsyncClient() as http:
        jwks = (await http.get(f"{idp.issuer}/jwks")).json()
    return CalendarAPI(issuer=idp.issuer, jwks=jwks, **kwargs)


def _api_client(api: CalendarAPI, auth: httpx2.Auth) -> httpx2.AsyncClient:
    return httpx2.AsyncClient(
        transport=httpx2.ASGITransport(app=api), base_url=CALENDAR + "/", auth=auth
    )


async def test_tool_token_is_narrow_and_accepted_by_the_resource(dev_idp: DevIdP) -> None:
    api = await _calendar_api(dev_idp)
    async with make_client(dev_idp) as identity:
        alice = identity.user("alice")
        await alice.consent(scopes="openid calendar.read calendar.write", resource=CALENDAR)
        async with _api_client(
            api, alice.http_auth(resource=CALENDAR, scopes="calendar.read")
        ) as http:
            response = await http.get("events")
        assert response.status_code == 200
        assert response.json()["scope"] == "calendar.read"
        sent = api.seen[-1]["headers"]["authorization"]
        assert sent.startswith("Bearer ")
        assert "?" not in api.seen[-1]["path"]


async def test_sec_29_403_insufficient_scope_steps_up_with_the_union(dev_idp: DevIdP) -> None:
    api = await _calendar_api(dev_idp)
    browser = CountingBrowser()
    async with make_client(
        dev_idp, use_par=False, consent=LoopbackConsent(browser=browser)
    ) as identity:
        alice = identity.user("alice")
        await alice.consent(scopes="openid calendar.read", resource=CALENDAR)
        auth = alice.http_auth(resource=CALENDAR, scopes="calendar.read")
        async with _api_client(api, auth) as http:
            response = await http.post("events", json={"title": "standup"})
        assert response.status_code == 200
        assert len(browser.urls) == 2  # the first consent and one step-up
        asked = set(browser.params()["scope"].split())
        assert {"openid", "calendar.read", "calendar.write"} <= asked
        grant = await alice.grant()
        assert grant is not None
        assert {"calendar.read", "calendar.write"} <= set(grant.scopes)
        # the retried request carried a token with the union of the tool's scopes
        assert set(response.json()["scope"].split()) == {"calendar.read", "calendar.write"}


async def test_sec_29_step_up_is_bounded(dev_idp: DevIdP) -> None:
    api = await _calendar_api(dev_idp, always_insufficient=True)
    browser = CountingBrowser()
    async with make_client(dev_idp, consent=LoopbackConsent(browser=browser)) as identity:
        alice = identity.user("alice")
        await alice.consent(scopes="openid calendar.read", resource=CALENDAR)
        auth = alice.http_auth(resource=CALENDAR, scopes="calendar.read", max_step_ups=2)
        async with _api_client(api, auth) as http:
            with pytest.raises(StepUpLimitExceeded) as info:
                await http.get("events")
            assert len(browser.urls) == 1 + 2
            assert len(api.seen) == 3
            assert (info.value.status_code, info.value.step_ups) == (403, 2)
            # the same operation again: refused at once, the user is not asked again
            with pytest.raises(StepUpLimitExceeded):
                await http.get("events")
        # the counts belong to the grant and resource, not to one auth object
        fresh = alice.http_auth(resource=CALENDAR, scopes="calendar.read", max_step_ups=2)
        async with _api_client(api, fresh) as http:
            with pytest.raises(StepUpLimitExceeded):
                await http.get("events")
        assert len(browser.urls) == 1 + 2
        assert len(api.seen) == 5


async def test_401_refreshes_once_before_any_consent(dev_idp: DevIdP) -> None:
    api = await _calendar_api(dev_idp, reject_next=1)
    browser = CountingBrowser()
    async with make_client(dev_idp, consent=LoopbackConsent(browser=browser)) as identity:
        alice = identity.user("alice")
        await alice.consent(scopes="openid calendar.read calendar.write", resource=CALENDAR)
        auth = alice.http_auth(resource=CALENDAR, scopes="calendar.read")
        async with _api_client(api, auth) as http:
            await dev_idp.clear_requests()
            response = await http.get("events")
        assert response.status_code == 200
        assert len(browser.urls) == 1  # no new consent
        refreshes = await dev_idp.token_requests("refresh_token")
        assert len(refreshes) == 2  # narrowing, then the refresh after the 401
        first, second = (h["headers"]["authorization"] for h in api.seen)
        assert first != second


async def test_sec_30_insufficient_user_authentication_carries_acr_and_max_age(
    dev_idp: DevIdP,
) -> None:
    api = await _calendar_api(dev_idp, require_fresh_authentication=True)
    browser = CountingBrowser()
    async with make_client(
        dev_idp, use_par=False, consent=LoopbackConsent(browser=browser)
    ) as identity:
        alice = identity.user("alice")
        await alice.consent(scopes="openid calendar.read", resource=CALENDAR)
        async with _api_client(
            api, alice.http_auth(resource=CALENDAR, scopes="calendar.read")
        ) as http:
            response = await http.get("events")
        assert response.status_code == 200
        assert len(browser.urls) == 2
        params = browser.params()
        assert params["acr_values"] == "urn:example:mfa"
        assert params["max_age"] == "0"


async def test_sec_23_token_never_sent_to_another_resource(dev_idp: DevIdP) -> None:
    api = await _calendar_api(dev_idp)
    async with make_client(dev_idp) as identity:
        alice = identity.user("alice")
        await alice.consent(scopes="openid calendar.read", resource=CALENDAR)
        auth = alice.http_auth(resource=CALENDAR, scopes="calendar.read")
        async with _api_client(api, auth) as http:
            for url in (
                "https://mail.example/api/messages",
                "https://calendar.example/apiv2/events",  # a prefix, not a sub-path
                "http://calendar.example/api/events",
                "https://calendar.example:8443/api/events",
            ):
                with pytest.raises(InsecureURLError):
                    await http.get(url)
        assert api.seen == []


async def test_sec_23_token_for_one_resource_never_returned_for_another(dev_idp: DevIdP) -> None:
    browser = CountingBrowser()
    async with make_client(dev_idp, consent=LoopbackConsent(browser=browser)) as identity:
        alice = identity.user("alice")
        await alice.consent(scopes="openid calendar.read mail.read", resource=CALENDAR)
        calendar = await alice.token(resource=CALENDAR, scopes="calendar.read")
        mail = await alice.token(resource=MAIL, scopes="mail.read")  # consents for MAIL
        assert peek_claims(calendar.value.get_secret_value())["aud"] == CALENDAR
        assert peek_claims(mail.value.get_secret_value())["aud"] == MAIL
        assert calendar.resource == CALENDAR
        assert mail.resource == MAIL
        assert len(browser.urls) == 2


async def test_sec_26_same_user_id_in_two_tenants_never_shares_tokens(dev_idp: DevIdP) -> None:
    browser = CountingBrowser()
    async with make_client(dev_idp, consent=LoopbackConsent(browser=browser)) as identity:
        acme = identity.user("alice", tenant="acme")
        globex = identity.user("alice", tenant="globex")
        await acme.consent(scopes="openid calendar.read", resource=CALENDAR)
        first = await acme.token(resource=CALENDAR, scopes="calendar.read")
        assert await globex.grant() is None
        second = await globex.token(resource=CALENDAR, scopes="calendar.read")
        assert len(browser.urls) == 2  # globex's alice had to consent herself
        assert first.value.get_secret_value() != second.value.get_secret_value()
        acme_rt = (await record_of(identity, "alice", "acme")).refresh_token
        globex_rt = (await record_of(identity, "alice", "globex")).refresh_token
        assert acme_rt.get_secret_value() != globex_rt.get_secret_value()
        await globex.disconnect()
        assert await globex.grant() is None
        assert await acme.grant() is not None
        connections = await acme.connections()
        assert [c.tenant for c in connections] == ["acme"]


async def test_sec_33_exchange_with_actor_and_nested_delegation(dev_idp: DevIdP) -> None:
    api = await _calendar_api(dev_idp)
    async with make_client(dev_idp) as agent_a, make_client(dev_idp, "agent-jwt") as agent_b:
        alice = agent_a.user("alice")
        await alice.consent(scopes="openid calendar.read calendar.write", resource=CALENDAR)
        exchanged = await alice.exchange(resource=CALENDAR, scopes="calendar.read")
        chain = DelegationChain.from_token(exchanged.value)
        assert chain.subject == "alice"
        assert chain.current_actor is not None
        assert chain.current_actor.subject == "agent-confidential"
        assert chain.history == ()
        assert peek_claims(exchanged.value.get_secret_value())["scope"] == "calendar.read"

        # agent B receives that token and exchanges it again, as itself
        nested = await agent_b.exchange(exchanged, resource=CALENDAR, scopes="calendar.read")
        chain = DelegationChain.from_token(nested.value)
        assert chain.describe() == "alice via agent-jwt via agent-confidential"
        assert chain.current_actor is not None
        assert chain.current_actor.subject == "agent-jwt"
        assert [a.subject for a in chain.history] == ["agent-confidential"]
        view = chain.authorization_view()
        assert view["act"]["sub"] == "agent-jwt"
        assert "act" not in view["act"]  # history is not an input to decisions

        # the resource accepts it and sees the chain
        async with httpx2.AsyncClient(
            transport=httpx2.ASGITransport(app=api),
            headers={"Authorization": nested.authorization_header()},
        ) as http:
            response = await http.get(f"{CALENDAR}/events")
        assert response.status_code == 200
        assert response.json()["act"]["sub"] == "agent-jwt"


async def test_sec_32_exchange_errors_are_typed(dev_idp: DevIdP) -> None:
    async with make_client(dev_idp) as identity:
        alice = identity.user("alice")
        await alice.consent(scopes="openid calendar.read calendar.write", resource=CALENDAR)
        subject = await alice.token(resource=CALENDAR, scopes="calendar.read")
        with pytest.raises(InvalidScope):  # more than the subject token carries
            await identity.exchange(subject, resource=CALENDAR, scopes="calendar.write")


async def test_exchange_without_actor_keeps_no_act(dev_idp: DevIdP) -> None:
    async with make_client(dev_idp) as identity:
        alice = identity.user("alice")
        await alice.consent(scopes="openid calendar.read", resource=CALENDAR)
        token = await alice.exchange(resource=CALENDAR, scopes="calendar.read", actor=False)
        assert not DelegationChain.from_token(token.value).is_delegated


async def test_grant_persists_in_sqlite_across_clients(dev_idp: DevIdP, tmp_path: Any) -> None:
    from agent_identity.vault import Keyring, TokenVault, generate_key

    keys = Keyring({"k1": generate_key()}, current="k1")
    path = tmp_path / "vault.sqlite3"

    class NoConsent:
        async def obtain_consent(self, flow: Any) -> None:
            raise AssertionError("no consent expected: the grant is in the vault")

    async with (
        TokenVault.sqlite(path, keys=keys) as vault,
        make_client(dev_idp, vault=vault) as identity,
    ):
        await identity.user("alice").consent(scopes="openid calendar.read", resource=CALENDAR)
    identity2: IdentityClient
    async with (
        TokenVault.sqlite(path, keys=keys) as vault,
        make_client(dev_idp, vault=vault, consent=NoConsent()) as identity2,
    ):
        token = await identity2.user("alice").token(resource=CALENDAR, scopes="calendar.read")
        assert peek_claims(token.value.get_secret_value())["sub"] == "alice"
    raw = path.read_bytes()
    assert token.value.get_secret_value().encode() not in raw
