"""The identity client against the real local authorization server (oidc-provider).

Every flow of the foundation runs here end to end: discovery, authorization code + PKCE
through each consent handler, PAR, RFC 9207 ``iss``, refresh with rotation, narrowing and
resource binding, client credentials, the device flow, revocation, and the negative
cases (wrong state, wrong or missing ``iss``, metadata issuer mismatch, replayed code,
expired device code, denied consent).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import anyio
import httpx2
import pytest
from _helpers import CALENDAR, MAIL, make_client, record_of
from pydantic import SecretStr

from agent_identity import (
    ConsentDenied,
    ConsentFlow,
    ConsentTimeout,
    ConsoleConsent,
    DeviceAuthorization,
    DeviceCodeConsent,
    IdentityClient,
    InvalidGrant,
    IssuerMismatch,
    LoopbackConsent,
    MetadataError,
    NotebookConsent,
    ReauthorizationRequired,
    StateMismatch,
)
from agent_identity.devidp import DEV_CLIENTS, DevBrowser, DevIdP
from agent_identity.oauth.jwt import peek_claims

pytestmark = [pytest.mark.anyio, pytest.mark.idp]

_client = make_client
_record = record_of


async def _token_requests(idp: DevIdP) -> list[dict[str, Any]]:
    return [r for r in await idp.requests() if r.get("path", "").endswith("/token")]


def _with_query(url: str, **changes: str | None) -> str:
    parts = urlsplit(url)
    params = dict(parse_qsl(parts.query, keep_blank_values=True))
    for key, value in changes.items():
        if value is None:
            params.pop(key, None)
        else:
            params[key] = value
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(params), ""))


class TamperingConsent:
    """Plays the browser, then delivers a modified callback to the flow."""

    def __init__(self, tamper: Callable[[str], str], *, login: str = "alice") -> None:
        self.tamper = tamper
        self.browser = DevBrowser(login, follow_loopback_redirect=False)
        self.callback: str | None = None

    async def obtain_consent(self, flow: ConsentFlow) -> None:
        url = await flow.authorization_url("http://127.0.0.1:49152/callback")
        self.callback = await self.browser.visit(url)
        await flow.complete(self.tamper(self.callback))


@pytest.mark.parametrize(
    "client_id", ["agent-confidential", "agent-post", "agent-public", "agent-jwt"]
)
async def test_authorization_code_pkce_each_client_auth(dev_idp: DevIdP, client_id: str) -> None:
    async with _client(dev_idp, client_id) as identity:
        alice = identity.user("alice", tenant="acme")
        grant = await alice.consent(scopes=["openid", "calendar.read"], resource=CALENDAR)
        assert grant.subject == "alice"
        assert "calendar.read" in grant.scopes
        assert grant.has_refresh_token
        assert grant.resources == (CALENDAR,)
        token = await alice.token(resource=CALENDAR, scopes=["calendar.read"])
        claims = peek_claims(token.value.get_secret_value())
        assert claims["aud"] == CALENDAR
        assert claims["sub"] == "alice"
        assert claims["scope"].split() == ["calendar.read"]


async def test_sec_19_token_narrowed_and_audience_bound_by_refresh(dev_idp: DevIdP) -> None:
    async with _client(dev_idp) as identity:
        alice = identity.user("alice")
        await alice.consent(scopes=["openid", "calendar.read", "calendar.write"], resource=CALENDAR)
        await dev_idp.clear_requests()
        narrow = await alice.token(resource=CALENDAR, scopes=["calendar.read"])
        claims = peek_claims(narrow.value.get_secret_value())
        assert claims["scope"] == "calendar.read"
        assert claims["aud"] == CALENDAR
        refreshes = [
            r for r in await _token_requests(dev_idp) if r["grant_type"] == "refresh_token"
        ]
        assert len(refreshes) == 1
        # served from memory the second time
        again = await alice.token(resource=CALENDAR, scopes=["calendar.read"])
        assert again is narrow
        assert len(await _token_requests(dev_idp)) == 1


async def test_incremental_consent_asks_for_the_union(dev_idp: DevIdP) -> None:
    seen: list[str] = []

    async def browser(url: str) -> str:
        seen.append(url)
        return await DevBrowser("alice").visit(url)

    async with _client(
        dev_idp, use_par=False, consent=LoopbackConsent(browser=browser)
    ) as identity:
        alice = identity.user("alice")
        await alice.consent(scopes=["openid", "calendar.read"], resource=CALENDAR)
        token = await alice.token(resource=CALENDAR, scopes=["calendar.write"])
        assert peek_claims(token.value.get_secret_value())["scope"] == "calendar.write"
        assert len(seen) == 2
        second = dict(parse_qsl(urlsplit(seen[1]).query))
        assert {"openid", "calendar.read", "calendar.write"} <= set(second["scope"].split())
        assert (await alice.grant()) is not None
        assert {"calendar.read", "calendar.write"} <= set((await alice.grant()).scopes)


async def test_par_used_when_offered(dev_idp: DevIdP) -> None:
    urls: list[str] = []

    async def browser(url: str) -> str:
        urls.append(url)
        return await DevBrowser("alice").visit(url)

    async with _client(dev_idp, consent=LoopbackConsent(browser=browser)) as identity:
        await dev_idp.clear_requests()
        await identity.user("alice").consent(scopes=["openid"], resource=CALENDAR)
    query = dict(parse_qsl(urlsplit(urls[0]).query))
    assert set(query) == {"client_id", "request_uri"}
    assert any(r["path"].endswith("/request") for r in await dev_idp.requests())


async def test_sec_25_refresh_rotation_and_reuse_detection(dev_idp_factory: Any) -> None:
    idp = dev_idp_factory(access_token_ttl=2)
    async with _client(idp, refresh_buffer=0) as identity:
        alice = identity.user("alice")
        await alice.consent(scopes=["openid", "calendar.read"], resource=CALENDAR)
        first_rt = (await _record(identity, "alice")).refresh_token
        assert first_rt is not None
        first = await alice.token(resource=CALENDAR, scopes=["calendar.read"])
        await anyio.sleep(2.2)
        second = await alice.token(resource=CALENDAR, scopes=["calendar.read"])
        assert second.value.get_secret_value() != first.value.get_secret_value()
        rotated = (await _record(identity, "alice")).refresh_token
        assert rotated is not None
        assert rotated.get_secret_value() != first_rt.get_secret_value()
        # The old refresh token is dead: the server detects the reuse...
        assert identity.server is not None
        refused = await identity.server.refresh(first_rt, scopes=(), resource=None)
        assert isinstance(refused.error, InvalidGrant)
        # ...and revokes the whole grant, which surfaces as a typed outcome.
        await anyio.sleep(2.2)
        with pytest.raises(ReauthorizationRequired) as info:
            await alice.token(resource=CALENDAR, scopes=["calendar.read"])
        assert "calendar.read" in info.value.scopes


async def test_sec_25_concurrent_callers_cause_one_refresh(dev_idp: DevIdP) -> None:
    async with _client(dev_idp) as identity:
        alice = identity.user("alice")
        await alice.consent(scopes=["openid", "calendar.read", "calendar.write"], resource=CALENDAR)
        await dev_idp.clear_requests()
        results: list[str] = []

        async def call() -> None:
            token = await alice.token(resource=CALENDAR, scopes=["calendar.read"])
            results.append(token.value.get_secret_value())

        async with anyio.create_task_group() as tg:
            for _ in range(50):
                tg.start_soon(call)
        assert len(set(results)) == 1
        assert len(await _token_requests(dev_idp)) == 1


async def test_client_credentials(dev_idp: DevIdP) -> None:
    async with _client(dev_idp) as identity:
        token = await identity.client_credentials(scopes=["calendar.read"], resource=CALENDAR)
        claims = peek_claims(token.value.get_secret_value())
        assert claims["aud"] == CALENDAR
        assert claims["client_id"] == "agent-confidential"
        assert (
            await identity.client_credentials(scopes=["calendar.read"], resource=CALENDAR) is token
        )


async def test_device_code_flow_for_headless_agents(dev_idp: DevIdP) -> None:
    shown: list[DeviceAuthorization] = []

    async with anyio.create_task_group() as tg:

        def prompt(authorization: DeviceAuthorization) -> None:
            shown.append(authorization)
            tg.start_soon(
                DevBrowser("bob").complete_device,
                authorization.verification_uri,
                authorization.user_code,
            )

        async with _client(dev_idp, consent=DeviceCodeConsent(prompt=prompt)) as identity:
            bob = identity.user("bob")
            grant = await bob.consent(scopes=["openid", "mail.read"], resource=MAIL)
            assert grant.subject == "bob"
            token = await bob.token(resource=MAIL, scopes=["mail.read"])
            assert peek_claims(token.value.get_secret_value())["sub"] == "bob"
    assert shown
    assert shown[0].user_code


async def test_device_code_denied(dev_idp: DevIdP) -> None:
    async with anyio.create_task_group() as tg:

        def prompt(authorization: DeviceAuthorization) -> None:
            tg.start_soon(
                DevBrowser("bob", approve=False).complete_device,
                authorization.verification_uri,
                authorization.user_code,
            )

        async with _client(dev_idp, consent=DeviceCodeConsent(prompt=prompt)) as identity:
            with pytest.raises(ConsentDenied):
                await identity.user("bob").consent(scopes=["openid"], resource=MAIL)


async def test_device_code_expired(dev_idp_factory: Any) -> None:
    idp = dev_idp_factory(device_code_ttl=3)
    async with _client(idp, consent=DeviceCodeConsent(prompt=lambda a: None)) as identity:
        with pytest.raises(ConsentTimeout):
            await identity.user("bob").consent(scopes=["openid"], resource=MAIL)


async def test_consent_denied(dev_idp: DevIdP) -> None:
    consent = LoopbackConsent(browser=DevBrowser("alice", approve=False))
    async with _client(dev_idp, consent=consent) as identity:
        await dev_idp.clear_requests()
        with pytest.raises(ConsentDenied):
            await identity.user("alice").consent(scopes=["openid"], resource=CALENDAR)
        assert await _token_requests(dev_idp) == []


async def test_sec_16_wrong_state_sends_no_token_request(dev_idp: DevIdP) -> None:
    consent = TamperingConsent(lambda url: _with_query(url, state="forged-state"))
    async with _client(dev_idp, consent=consent) as identity:
        await dev_idp.clear_requests()
        with pytest.raises(StateMismatch):
            await identity.user("alice").consent(scopes=["openid"], resource=CALENDAR)
        assert await _token_requests(dev_idp) == []


async def test_sec_16_missing_state_sends_no_token_request(dev_idp: DevIdP) -> None:
    consent = TamperingConsent(lambda url: _with_query(url, state=None))
    async with _client(dev_idp, consent=consent) as identity:
        await dev_idp.clear_requests()
        with pytest.raises(StateMismatch):
            await identity.user("alice").consent(scopes=["openid"], resource=CALENDAR)
        assert await _token_requests(dev_idp) == []


async def test_sec_16_replayed_callback_rejected(dev_idp: DevIdP) -> None:
    class ReplayConsent(TamperingConsent):
        async def obtain_consent(self, flow: ConsentFlow) -> None:
            await super().obtain_consent(flow)
            assert self.callback is not None
            with pytest.raises(StateMismatch):
                await flow.complete(self.callback)

    async with _client(dev_idp, consent=ReplayConsent(lambda url: url)) as identity:
        await identity.user("alice").consent(scopes=["openid"], resource=CALENDAR)
        assert len(await _token_requests(dev_idp)) >= 1


async def test_replayed_code_refused_by_the_server(dev_idp: DevIdP) -> None:
    captured: dict[str, Any] = {}

    class CapturingConsent(TamperingConsent):
        async def obtain_consent(self, flow: ConsentFlow) -> None:
            await super().obtain_consent(flow)
            captured["flow"] = flow

    consent = CapturingConsent(lambda url: url)
    async with _client(dev_idp, consent=consent) as identity:
        await identity.user("alice").consent(scopes=["openid"], resource=CALENDAR)
        assert consent.callback is not None
        code = dict(parse_qsl(urlsplit(consent.callback).query))["code"]
        assert identity.server is not None
        replay = {
            "grant_type": "authorization_code",
            "code": SecretStr(code).get_secret_value(),
            "redirect_uri": "http://127.0.0.1:49152/callback",
            "code_verifier": "x" * 43,
        }
        with pytest.raises(InvalidGrant):
            await identity.server.token_call(replay)


@pytest.mark.parametrize(
    "forged_iss",
    ["https://evil.example", "{issuer}/", "{ISSUER}", "{issuer_port}"],
)
async def test_sec_18_iss_mismatch_sends_no_token_request(dev_idp: DevIdP, forged_iss: str) -> None:
    issuer = dev_idp.issuer
    forged = forged_iss.format(
        issuer=issuer,
        ISSUER=issuer.upper(),
        issuer_port=issuer.replace(f":{dev_idp.port}", f":{dev_idp.port + 1}"),
    )
    consent = TamperingConsent(lambda url: _with_query(url, iss=forged))
    async with _client(dev_idp, consent=consent) as identity:
        await dev_idp.clear_requests()
        with pytest.raises(IssuerMismatch):
            await identity.user("alice").consent(scopes=["openid"], resource=CALENDAR)
        assert await _token_requests(dev_idp) == []


async def test_sec_18_iss_missing_sends_no_token_request(dev_idp: DevIdP) -> None:
    consent = TamperingConsent(lambda url: _with_query(url, iss=None))
    async with _client(dev_idp, consent=consent) as identity:
        assert identity.metadata.authorization_response_iss_parameter_supported
        await dev_idp.clear_requests()
        with pytest.raises(IssuerMismatch):
            await identity.user("alice").consent(scopes=["openid"], resource=CALENDAR)
        assert await _token_requests(dev_idp) == []


async def test_sec_09_issuer_mismatch_in_metadata_refused(dev_idp: DevIdP) -> None:
    with pytest.raises(MetadataError):
        async with IdentityClient(
            dev_idp.issuer + "/", client_id="agent-public", allow_insecure_loopback=True
        ):
            pass


async def test_sec_01_http_issuer_refused_without_opt_in(dev_idp: DevIdP) -> None:
    from agent_identity import InsecureURLError

    with pytest.raises(InsecureURLError):
        IdentityClient(dev_idp.issuer, client_id="agent-public")


async def test_console_consent_with_pasted_redirect(dev_idp: DevIdP) -> None:
    out = io.StringIO()
    browser = DevBrowser("alice", follow_loopback_redirect=False)

    async def read_line(prompt: str) -> str:
        printed = out.getvalue()
        url = next(line.strip() for line in printed.splitlines() if line.strip().startswith("http"))
        return await browser.visit(url)

    consent = ConsoleConsent(output=out, read_line=read_line)
    async with _client(dev_idp, consent=consent) as identity:
        grant = await identity.user("alice").consent(scopes=["openid"], resource=CALENDAR)
        assert grant.subject == "alice"


async def test_notebook_consent_shows_link_and_awaits_callback(
    dev_idp: DevIdP, monkeypatch: pytest.MonkeyPatch
) -> None:
    import agent_identity.consent.notebook as notebook

    shown: list[str] = []

    async def show(url: str) -> str:
        shown.append(url)
        return await DevBrowser("alice").visit(url)

    monkeypatch.setattr(notebook, "_show_link", show)
    async with _client(dev_idp, consent=NotebookConsent(timeout=30)) as identity:
        grant = await identity.user("alice").consent(scopes=["openid"], resource=CALENDAR)
        assert grant.subject == "alice"
    assert shown


async def test_sec_28_disconnect_revokes_then_forgets(dev_idp: DevIdP) -> None:
    async with _client(dev_idp) as identity:
        alice = identity.user("alice")
        await alice.consent(scopes=["openid", "calendar.read"], resource=CALENDAR)
        refresh_token = (await _record(identity, "alice")).refresh_token
        assert refresh_token is not None
        await alice.disconnect()
        assert (await alice.grant()) is None
        assert identity.server is not None
        revoked = await identity.server.refresh(refresh_token, scopes=(), resource=None)
        assert isinstance(revoked.error, InvalidGrant)


async def test_sec_22_tokens_never_in_urls_and_40_never_in_logs(
    dev_idp: DevIdP, caplog: pytest.LogCaptureFixture
) -> None:
    urls: list[str] = []

    async def record(request: httpx2.Request) -> None:
        urls.append(str(request.url))

    caplog.set_level(logging.DEBUG)
    async with (
        httpx2.AsyncClient(event_hooks={"request": [record]}) as http,
        _client(dev_idp, http_client=http) as identity,
    ):
        alice = identity.user("alice", tenant="acme")
        await alice.consent(scopes=["openid", "calendar.read", "calendar.write"], resource=CALENDAR)
        token = await alice.token(resource=CALENDAR, scopes=["calendar.read"])
        state = await _record(identity, "alice", "acme")
        secrets_seen = [token.value.get_secret_value()]
        if state.refresh_token is not None:
            secrets_seen.append(state.refresh_token.get_secret_value())
        emitted = "\n".join(
            [
                *urls,
                caplog.text,
                repr(identity),
                repr(alice),
                repr(token),
                repr(await alice.grant()),
                repr(state),
                str(token),
            ]
        )
        for secret in [*secrets_seen, DEV_CLIENTS["agent-confidential"][0] or ""]:
            assert secret not in emitted
        assert token.authorization_header() == f"Bearer {secrets_seen[0]}"


async def test_from_env(dev_idp: DevIdP, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENT_IDENTITY_ISSUER", dev_idp.issuer)
    monkeypatch.setenv("AGENT_IDENTITY_CLIENT_ID", "agent-confidential")
    monkeypatch.setenv("AGENT_IDENTITY_CLIENT_SECRET", DEV_CLIENTS["agent-confidential"][0] or "")
    monkeypatch.setenv("AGENT_IDENTITY_ALLOW_INSECURE_LOOPBACK", "true")
    monkeypatch.setenv("AGENT_IDENTITY_CONSENT", "device")
    identity = IdentityClient.from_env()
    assert isinstance(identity.consent_handler, DeviceCodeConsent)
    async with identity:
        token = await identity.client_credentials(scopes=["calendar.read"], resource=CALENDAR)
        assert token.issuer == dev_idp.issuer


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_consent_and_refresh_on_asyncio_and_trio(dev_idp: DevIdP) -> None:
    async with _client(dev_idp) as identity:
        alice = identity.user("alice")
        await alice.consent(scopes="openid calendar.read calendar.write", resource=CALENDAR)
        token = await alice.token(resource=CALENDAR, scopes="calendar.read")
        assert peek_claims(token.value.get_secret_value())["scope"] == "calendar.read"


async def test_device_flow_honours_slow_down(dev_idp_factory: Any) -> None:
    idp = dev_idp_factory(device_interval=1, device_slow_down_once=True)
    polls: list[float] = []

    async def approve_later(authorization: DeviceAuthorization) -> None:
        await anyio.sleep(1.5)  # after the first poll, which gets slow_down
        await DevBrowser("bob").complete_device(
            authorization.verification_uri, authorization.user_code
        )

    async with anyio.create_task_group() as tg:

        def prompt(authorization: DeviceAuthorization) -> None:
            assert authorization.interval == 1
            tg.start_soon(approve_later, authorization)

        async with _client(idp, consent=DeviceCodeConsent(prompt=prompt)) as identity:
            await idp.clear_requests()
            grant = await identity.user("bob").consent(scopes=["openid"], resource=MAIL)
            assert grant.subject == "bob"
            polls = [
                float(r["at"])
                for r in await idp.token_requests("urn:ietf:params:oauth:grant-type:device_code")
            ]
    # The first poll (after 1 s) got slow_down; the next one waited 1 + 5 = 6 s (RFC 8628
    # §3.5) and succeeded, the user having approved in between.
    assert len(polls) == 2
    assert polls[1] - polls[0] >= 5.9
