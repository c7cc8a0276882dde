"""WebConsent: a consent started on one worker and completed on another, through the
vault they share (the real browser version is test_web_consent_browser.py).

Every test has two identity clients with separate vault objects over one SQLite file
(two workers); the redirect is captured by the dev browser without being delivered, then
handed to the other worker's callback, as a load balancer would.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx2
import pytest
from _helpers import CALENDAR, MAIL, make_client
from starlette.applications import Starlette
from starlette.routing import Mount, Route

from agent_identity import (
    ConsentDenied,
    ConsentRequired,
    IdentityClient,
    IssuerMismatch,
    StateMismatch,
    WebConsent,
    WebConsentResult,
)
from agent_identity.audit import AuditTrail, MemorySink
from agent_identity.consent.web import PENDING_KIND
from agent_identity.devidp import DevBrowser, DevIdP
from agent_identity.vault import TokenVault

pytestmark = [pytest.mark.anyio, pytest.mark.idp]

REDIRECT = "http://127.0.0.1:8765/callback"  # any port: the dev server's loopback rule


@asynccontextmanager
async def worker(
    idp: DevIdP, path: Path, consent: WebConsent, **kwargs: Any
) -> AsyncIterator[IdentityClient]:
    """One worker: its own identity client and vault object over the shared file."""
    vault = TokenVault.sqlite(path / "vault.db")
    try:
        async with make_client(idp, consent=consent, vault=vault, **kwargs) as identity:
            yield identity
    finally:
        await vault.aclose()


async def visit(url: str, *, login: str = "alice", approve: bool = True) -> str:
    """The user's browser: sign in, decide, and return the redirect (not delivered)."""
    return await DevBrowser(login, approve=approve, follow_loopback_redirect=False).visit(url)


def with_query(url: str, **changes: str | None) -> str:
    parts = urlsplit(url)
    params = dict(parse_qsl(parts.query, keep_blank_values=True))
    for key, value in changes.items():
        if value is None:
            params.pop(key, None)
        else:
            params[key] = value
    return urlunsplit(parts._replace(query=urlencode(params)))


async def token_requests(idp: DevIdP) -> list[dict[str, Any]]:
    return await idp.token_requests("authorization_code")


async def test_started_on_one_worker_completed_on_another(dev_idp: DevIdP, tmp_path: Path) -> None:
    consent = WebConsent(REDIRECT)
    async with worker(dev_idp, tmp_path, consent) as a:
        url = await consent.start(
            a.user("alice"),
            scopes=["calendar.read"],
            resource=CALENDAR,
            resume={"thread_id": "t-1", "tool_call_id": "call-7"},
        )
        assert a.server is not None
        assert len(a.server.pending) == 0
    callback = await visit(url)
    # another worker, started after the first one stopped (a restart in between)
    async with worker(dev_idp, tmp_path, WebConsent(REDIRECT)) as b:
        result = await b_consent(b).complete(b, callback)
        assert result == WebConsentResult(
            tenant="default",
            user="alice",
            issuer=dev_idp.issuer,
            scopes=result.scopes,
            resource=CALENDAR,
            resources=(CALENDAR,),
            resume={"thread_id": "t-1", "tool_call_id": "call-7"},
        )
        assert "calendar.read" in result.scopes
        token = await b.user("alice").token(resource=CALENDAR, scopes=["calendar.read"])
        assert token.resource == CALENDAR
        assert await b.vault.blob_names(PENDING_KIND) == []  # consumed


def b_consent(identity: IdentityClient) -> WebConsent:
    handler = identity.consent_handler
    assert isinstance(handler, WebConsent)
    return handler


async def test_a_tool_call_needing_consent_gets_the_link(dev_idp: DevIdP, tmp_path: Path) -> None:
    consent = WebConsent(REDIRECT)
    async with worker(dev_idp, tmp_path, consent) as a:
        with pytest.raises(ConsentRequired) as caught:
            await a.user("alice").token(resource=MAIL, scopes=["mail.read"])
        url = caught.value.authorization_url
        assert url is not None
        assert url.startswith(dev_idp.issuer)
        assert caught.value.resource == MAIL
        assert "mail.read" in caught.value.scopes
        assert caught.value.expires_at is not None
        callback = await visit(url)
        async with worker(dev_idp, tmp_path, WebConsent(REDIRECT)) as b:
            await b_consent(b).complete(b, callback)
        # the first worker now finds the grant in the shared vault
        token = await a.user("alice").token(resource=MAIL, scopes=["mail.read"])
        assert token.resource == MAIL


async def test_sec_16_a_callback_is_single_use_across_workers(
    dev_idp: DevIdP, tmp_path: Path
) -> None:
    consent = WebConsent(REDIRECT)
    async with worker(dev_idp, tmp_path, consent) as a, worker(dev_idp, tmp_path, consent) as b:
        url = await consent.start(a.user("alice"), scopes=["calendar.read"], resource=CALENDAR)
        callback = await visit(url)
        await consent.complete(b, callback)
        await dev_idp.clear_requests()
        with pytest.raises(StateMismatch):
            await consent.complete(a, callback)
        assert await token_requests(dev_idp) == []


@pytest.mark.parametrize("state", ["forged-state", None])
async def test_sec_16_wrong_or_missing_state_sends_no_token_request(
    dev_idp: DevIdP, tmp_path: Path, state: str | None
) -> None:
    consent = WebConsent(REDIRECT)
    async with worker(dev_idp, tmp_path, consent) as a:
        url = await consent.start(a.user("alice"), scopes=["calendar.read"], resource=CALENDAR)
        callback = await visit(url)
        await dev_idp.clear_requests()
        with pytest.raises(StateMismatch):
            await consent.complete(a, with_query(callback, state=state))
        assert await token_requests(dev_idp) == []


async def test_sec_16_an_expired_consent_is_refused(dev_idp: DevIdP, tmp_path: Path) -> None:
    class LaterClock:
        offset = 0.0

        def time(self) -> float:
            import time

            return time.time() + self.offset

        def monotonic(self) -> float:
            import time

            return time.monotonic() + self.offset

    clock = LaterClock()
    consent = WebConsent(REDIRECT, lifetime=60)
    async with worker(dev_idp, tmp_path, consent, clock=clock) as a:
        url = await consent.start(a.user("alice"), scopes=["calendar.read"], resource=CALENDAR)
        callback = await visit(url)
        clock.offset = 61
        await dev_idp.clear_requests()
        with pytest.raises(StateMismatch, match="expired"):
            await consent.complete(a, callback)
        assert await token_requests(dev_idp) == []


@pytest.mark.parametrize("iss", ["{issuer}/", "{ISSUER}", None])
async def test_sec_18_iss_checked_before_anything_else(
    dev_idp: DevIdP, tmp_path: Path, iss: str | None
) -> None:
    consent = WebConsent(REDIRECT)
    async with worker(dev_idp, tmp_path, consent) as a:
        url = await consent.start(a.user("alice"), scopes=["calendar.read"], resource=CALENDAR)
        callback = await visit(url)
        forged = (
            None
            if iss is None
            else iss.format(issuer=dev_idp.issuer, ISSUER=dev_idp.issuer.upper())
        )
        await dev_idp.clear_requests()
        with pytest.raises(IssuerMismatch):
            await consent.complete(a, with_query(callback, iss=forged))
        assert await token_requests(dev_idp) == []


async def test_sec_18_an_error_from_a_forged_issuer_is_not_trusted(
    dev_idp: DevIdP, tmp_path: Path
) -> None:
    consent = WebConsent(REDIRECT)
    async with worker(dev_idp, tmp_path, consent) as a:
        url = await consent.start(a.user("alice"), scopes=["calendar.read"], resource=CALENDAR)
        callback = await visit(url)
        forged = with_query(callback, code=None, error="access_denied", iss="https://evil.example")
        with pytest.raises(IssuerMismatch):  # not ConsentDenied: the error was not trusted
            await consent.complete(a, forged)


async def test_denial_is_audited_and_raised(dev_idp: DevIdP, tmp_path: Path) -> None:
    sink = MemorySink()
    consent = WebConsent(REDIRECT)
    async with AuditTrail(sink) as trail, worker(dev_idp, tmp_path, consent, audit=trail) as a:
        url = await consent.start(a.user("alice"), scopes=["calendar.read"], resource=CALENDAR)
        callback = await visit(url, approve=False)
        await dev_idp.clear_requests()
        with pytest.raises(ConsentDenied):
            await consent.complete(a, callback)
        assert await token_requests(dev_idp) == []
    kinds = [event.kind for event in sink.events]
    assert kinds == ["consent.requested", "consent.denied"]


async def test_sec_17_redeemed_only_at_the_recorded_issuer(
    dev_idp: DevIdP, dev_idp_factory: Any, tmp_path: Path
) -> None:
    """A flow started at server A cannot be completed by a worker configured for B."""
    other = dev_idp_factory()
    consent = WebConsent(REDIRECT)
    async with worker(dev_idp, tmp_path, consent) as a:
        url = await consent.start(a.user("alice"), scopes=["calendar.read"], resource=CALENDAR)
        callback = await visit(url)
    async with worker(other, tmp_path, consent) as b:
        await other.clear_requests()
        with pytest.raises(StateMismatch, match="another server"):
            await consent.complete(b, callback)
        assert await other.token_requests() == []


async def test_the_pending_authorization_is_sealed(dev_idp: DevIdP, tmp_path: Path) -> None:
    """The vault file holds no PKCE verifier or state in the clear."""
    consent = WebConsent(REDIRECT)
    async with worker(dev_idp, tmp_path, consent) as a:
        url = await consent.start(a.user("alice"), scopes=["calendar.read"], resource=CALENDAR)
        (name,) = await a.vault.blob_names(PENDING_KIND)
        row = await a.vault.get_blob(PENDING_KIND, name)
        assert row is not None
    import json

    sealed = json.loads(row.data)
    raw = (tmp_path / "vault.db").read_bytes()
    for secret in (sealed["code_verifier"], sealed["state"]):
        assert secret.encode() not in raw
    assert url.startswith(dev_idp.issuer)


@pytest.mark.parametrize("layout", ["route", "mount"])
async def test_the_callback_app_in_starlette_never_redirects(
    dev_idp: DevIdP, tmp_path: Path, layout: str
) -> None:
    consent = WebConsent(REDIRECT)
    results: list[WebConsentResult] = []
    async with worker(dev_idp, tmp_path, consent) as a:
        app_callback = consent.callback(a, on_complete=results.append)
        if layout == "route":
            app = Starlette(routes=[Route("/callback", app_callback, methods=["GET"])])
            path = "/callback"
        else:
            app = Starlette(routes=[Mount("/oauth", app=app_callback)])
            path = "/oauth/callback"
        url = await consent.start(a.user("alice"), scopes=["calendar.read"], resource=CALENDAR)
        callback = urlsplit(await visit(url))
        async with httpx2.AsyncClient(
            transport=httpx2.ASGITransport(app=app), base_url="http://worker"
        ) as http:
            head = await http.head(f"{path}?{callback.query}")  # a prefetcher: spends nothing
            response = await http.get(f"{path}?{callback.query}")
            replay = await http.get(f"{path}?{callback.query}")
            post = await http.post(path)
    assert response.status_code == 200, response.text
    assert "Authorization complete" in response.text
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["cache-control"] == "no-store"
    assert replay.status_code == 400
    assert "StateMismatch" in replay.text
    assert post.status_code == 405
    assert head.status_code == 405
    assert len(results) == 1
    assert results[0].user == "alice"


async def test_sec_36_a_dpop_client_completes_on_another_worker_with_the_flows_key(
    dev_idp: DevIdP, tmp_path: Path
) -> None:
    """DPoP (RFC 9449 §10): the code is bound to the flow's key (``dpop_jkt``), so the key
    is sealed with the pending consent; the worker that completes it redeems the code with
    a proof of that key and keeps the key with the grant: the tokens it then gets are
    DPoP-bound and usable after another restart."""
    consent = WebConsent(REDIRECT)
    async with worker(dev_idp, tmp_path, consent, dpop=True) as a:
        url = await consent.start(a.user("alice"), scopes=["calendar.read"], resource=CALENDAR)
    assert "dpop_jkt=" in url or "request_uri=" in url
    callback = await visit(url)
    async with worker(dev_idp, tmp_path, WebConsent(REDIRECT), dpop=True) as b:
        await b_consent(b).complete(b, callback)
        token = await b.user("alice").token(resource=CALENDAR, scopes=["calendar.read"])
        assert token.dpop_bound
        assert token.dpop is not None
        redeemed = (await token_requests(dev_idp))[-1]
        assert redeemed["status"] == 200
    async with worker(dev_idp, tmp_path, WebConsent(REDIRECT), dpop=True) as c:
        again = await c.user("alice").refresh_after_rejection(token)
        assert again.dpop_bound
        assert again.dpop is not None
        assert again.dpop.jkt == token.dpop.jkt  # the grant's key, restored from the vault
