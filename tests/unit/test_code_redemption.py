"""Security item 17, driven end to end: a real consent flow (authorization URL, callback,
code redemption) against a scripted authorization server on httpx2.MockTransport. The
code is redeemed once, only at the token endpoint recorded when the flow started, with
the verifier, redirect URI and issuer recorded with it; a callback that does not belong
to the flow causes no token request at all."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx2
import pytest
from test_client_faults import CALENDAR, CLIENT_ID, ISSUER, REDIRECT_URI, FakeAS, FakeClock, s256

from agent_identity import IdentityClient
from agent_identity.consent import ConsentFlow
from agent_identity.errors import IssuerMismatch, StateMismatch

pytestmark = pytest.mark.anyio

MOVED = f"{ISSUER}/moved/token"


@dataclass
class Browser:
    """Plays the user's browser: opens the URL, lets ``between`` run, then delivers the
    callback the server produced (possibly tampered with by ``tamper``)."""

    server: FakeAS
    between: list[object] = field(default_factory=list)
    tamper: dict[str, str | None] = field(default_factory=dict)
    opened: list[str] = field(default_factory=list)

    async def obtain_consent(self, flow: ConsentFlow) -> None:
        url = await flow.authorization_url(REDIRECT_URI)
        self.opened.append(url)
        callback = self.server.authorize(url)
        for step in self.between:
            step()  # type: ignore[operator]
        for name, value in self.tamper.items():
            if value is None:
                callback.pop(name, None)
            else:
                callback[name] = value
        await flow.complete(f"{REDIRECT_URI}?{urlencode(callback)}")


@asynccontextmanager
async def connected(server: FakeAS, consent: Browser) -> AsyncIterator[IdentityClient]:
    async with httpx2.AsyncClient(transport=httpx2.MockTransport(server)) as http:
        identity = IdentityClient(
            ISSUER, client_id=CLIENT_ID, client_secret="s3cret", consent=consent,
            http_client=http, clock=FakeClock(), use_par=False,
        )  # fmt: skip
        try:
            yield identity
        finally:
            await identity.aclose()


def _code_requests(server: FakeAS) -> list[tuple[str, dict[str, str]]]:
    return [
        (seen.path, seen.form)
        for seen in server.requests
        if seen.method == "POST" and seen.form.get("grant_type") == "authorization_code"
    ]


async def test_sec_17_code_redeemed_once_at_the_recorded_endpoint_with_the_recorded_verifier() -> (
    None
):
    server = FakeAS()
    browser = Browser(server)
    async with connected(server, browser) as identity:
        grant = await identity.user("alice", tenant="acme").consent(
            scopes=["calendar.read"], resource=CALENDAR
        )
    assert grant.has_refresh_token
    (path, form), = _code_requests(server)  # fmt: skip
    assert path == "/token"
    params = dict(parse_qsl(urlsplit(browser.opened[0]).query))
    assert s256(form["code_verifier"]) == params["code_challenge"]
    assert form["redirect_uri"] == params["redirect_uri"] == REDIRECT_URI
    assert form["code"] == "code-1"
    assert server.sent_anywhere("code-1") == 1  # the code went nowhere else
    assert server.sent_anywhere(form["code_verifier"]) == 1


async def test_sec_17_code_goes_to_the_endpoint_recorded_at_start_not_to_newer_metadata() -> None:
    """If the client's view of the server changes while the user is away (new metadata:
    another token endpoint), the code is still redeemed where the flow began."""
    server = FakeAS()
    server.document["token_endpoint"] = f"{ISSUER}/token"
    browser = Browser(server)
    async with connected(server, browser) as identity:
        await identity.discover()
        assert identity.metadata.token_endpoint == f"{ISSUER}/token"

        def metadata_moves() -> None:
            # what a metadata refresh would bring (the server's metadata is replaced)
            server_object = identity.server
            assert server_object is not None
            server_object._set_metadata(  # simulating a metadata refresh
                identity.metadata.model_copy(update={"token_endpoint": MOVED})
            )

        browser.between.append(metadata_moves)
        await identity.user("alice", tenant="acme").consent(
            scopes=["calendar.read"], resource=CALENDAR
        )
    assert [path for path, _ in _code_requests(server)] == ["/token"]
    assert all(seen.path != "/moved/token" for seen in server.requests)


@pytest.mark.parametrize(
    ("tamper", "error"),
    [
        ({"iss": "https://evil.example"}, IssuerMismatch),
        ({"iss": None}, IssuerMismatch),
        ({"state": "forged-state"}, StateMismatch),
    ],
)
async def test_sec_17_18_callback_of_another_flow_or_issuer_redeems_nothing(
    tamper: dict[str, str | None], error: type[Exception]
) -> None:
    server = FakeAS()
    browser = Browser(server, tamper=tamper)
    async with connected(server, browser) as identity:
        with pytest.raises(error):
            await identity.user("alice", tenant="acme").consent(
                scopes=["calendar.read"], resource=CALENDAR
            )
    assert _code_requests(server) == []
    assert server.sent_anywhere("code-1") == 0
