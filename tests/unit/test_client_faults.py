"""IdentityClient under fault injection: a fake authorization server on httpx2.MockTransport.

Every fault must end in a typed error with nothing lost: the refresh request was sent
exactly once (a rotating refresh token is never replayed, RFC 9700 §4.14.2; security item
25), and the stored grant and refresh token are unchanged, so the next successful refresh
uses the same refresh token. Also covered: refresh token rotation, ``invalid_grant``,
discovery faults (security items 1, 9, 10), revocation (item 28), a wall-clock shift
(item 39) and single-flight refresh under concurrency and cancellation (item 25).

The fake server "issues" authorization codes to a consent handler that builds the
callback itself (``state`` from the authorization URL, ``iss`` because the metadata
advertises RFC 9207), so no browser is involved.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import anyio
import httpx2
import pytest

from agent_identity import IdentityClient, UserIdentity
from agent_identity.consent import ConsentFlow
from agent_identity.errors import (
    ConsentRequired,
    InvalidGrant,
    InvalidResponse,
    MetadataError,
    OAuthError,
    ReauthorizationRequired,
    RequestTimeout,
    TemporarilyUnavailable,
    TransportError,
)
from agent_identity.grant import UserGrant

pytestmark = pytest.mark.anyio

ISSUER = "https://as.example"
CALENDAR = "https://calendar.example/api"
CLIENT_ID = "agent"
REDIRECT_URI = "http://127.0.0.1:53682/callback"
TENANT, USER = "acme", "alice"

#: What the fake server answers instead of its normal response: an exception to raise
#: (as the transport would), a response, or an async function of the request.
Fault = Exception | httpx2.Response | Callable[[httpx2.Request], Awaitable[httpx2.Response]]


def metadata(**overrides: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "issuer": ISSUER,
        "authorization_endpoint": f"{ISSUER}/authorize",
        "token_endpoint": f"{ISSUER}/token",
        "revocation_endpoint": f"{ISSUER}/revoke",
        "jwks_uri": f"{ISSUER}/jwks",
        "response_types_supported": ["code"],
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "code_challenge_methods_supported": ["S256"],
        "authorization_response_iss_parameter_supported": True,
        "scopes_supported": ["openid", "offline_access", "calendar.read", "calendar.write"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic"],
    }
    document.update(overrides)
    return {k: v for k, v in document.items() if v is not None}


def s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


@dataclass
class Seen:
    """One request the fake server received."""

    method: str
    path: str
    form: dict[str, str]
    headers: dict[str, str]


@dataclass
class FakeAS:
    """A scripted authorization server. Refresh tokens rotate unless ``rotate=False``."""

    rotate: bool = True
    expires_in: int = 3600
    document: dict[str, Any] = field(default_factory=metadata)
    discovery_faults: list[Fault] = field(default_factory=list)
    token_faults: list[Fault] = field(default_factory=list)
    refresh_faults: list[Fault] = field(default_factory=list)
    revocation_answers: list[Fault] = field(default_factory=list)
    #: While set, refresh requests wait here (after being recorded) before answering.
    gate: anyio.Event | None = None
    refresh_entered: anyio.Event = field(default_factory=anyio.Event)
    requests: list[Seen] = field(default_factory=list)
    codes: dict[str, dict[str, str]] = field(default_factory=dict)
    live_refresh_tokens: set[str] = field(default_factory=set)
    issued_refresh_tokens: list[str] = field(default_factory=list)
    _serial: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    # -- the "user agent" side: issue a code for an authorization URL -------------------

    def authorize(self, url: str) -> dict[str, str]:
        parts = urlsplit(url)
        params = dict(parse_qsl(parts.query))
        self.requests.append(Seen("GET", parts.path, params, {}))
        assert parts.path == "/authorize"
        assert params["code_challenge_method"] == "S256"
        code = f"code-{next(self._serial)}"
        self.codes[code] = params
        return {"code": code, "state": params["state"], "iss": ISSUER}

    # -- the HTTP side ----------------------------------------------------------------

    async def __call__(self, request: httpx2.Request) -> httpx2.Response:
        form = dict(parse_qsl(request.content.decode("ascii"))) if request.content else {}
        path = request.url.path
        self.requests.append(Seen(request.method, path, form, dict(request.headers)))
        if path == "/.well-known/oauth-authorization-server":
            if self.discovery_faults:
                return await self._fault(self.discovery_faults.pop(0), request)
            return httpx2.Response(200, json=self.document)
        if path == "/token" and request.method == "POST":
            return await self._token(request, form)
        if path == "/revoke" and request.method == "POST":
            if self.revocation_answers:
                answer = self.revocation_answers[0]
                if len(self.revocation_answers) > 1:
                    self.revocation_answers.pop(0)
                return await self._fault(answer, request)
            self.live_refresh_tokens.discard(form.get("token", ""))
            return httpx2.Response(200)
        return httpx2.Response(404, json={"error": "not_found"})

    async def _fault(self, fault: Fault, request: httpx2.Request) -> httpx2.Response:
        if isinstance(fault, Exception):
            raise fault
        if isinstance(fault, httpx2.Response):
            return fault
        return await fault(request)

    async def _token(self, request: httpx2.Request, form: dict[str, str]) -> httpx2.Response:
        grant_type = form.get("grant_type")
        if grant_type == "authorization_code":
            if self.token_faults:
                return await self._fault(self.token_faults.pop(0), request)
            params = self.codes.pop(form.get("code", ""), None)
            if (
                params is None
                or params["redirect_uri"] != form.get("redirect_uri")
                or params["code_challenge"] != s256(form.get("code_verifier", ""))
            ):
                return httpx2.Response(400, json={"error": "invalid_grant"})
            return self._issue(params.get("scope", ""), refresh=True)
        if grant_type == "refresh_token":
            if self.gate is not None:
                self.refresh_entered.set()
                await self.gate.wait()
            if self.refresh_faults:
                return await self._fault(self.refresh_faults.pop(0), request)
            old = form.get("refresh_token", "")
            if old not in self.live_refresh_tokens:
                return httpx2.Response(400, json={"error": "invalid_grant"})
            if self.rotate:
                self.live_refresh_tokens.discard(old)
            return self._issue(form.get("scope", ""), refresh=self.rotate)
        if grant_type == "client_credentials":
            return self._issue(form.get("scope", ""), refresh=False)
        return httpx2.Response(400, json={"error": "unsupported_grant_type"})

    def _issue(self, scope: str, *, refresh: bool) -> httpx2.Response:
        n = next(self._serial)
        body: dict[str, Any] = {
            "access_token": f"AT-{n}",
            "token_type": "Bearer",
            "expires_in": self.expires_in,
        }
        if scope:
            body["scope"] = scope
        if refresh:
            body["refresh_token"] = f"RT-{n}"
            self.live_refresh_tokens.add(f"RT-{n}")
            self.issued_refresh_tokens.append(f"RT-{n}")
        return httpx2.Response(200, json=body)

    # -- what was received ----------------------------------------------------------------

    def to(self, path: str) -> list[Seen]:
        return [seen for seen in self.requests if seen.path == path]

    def refreshes(self) -> list[str]:
        """The refresh tokens sent, in order, one per refresh request."""
        return [
            seen.form["refresh_token"]
            for seen in self.to("/token")
            if seen.form.get("grant_type") == "refresh_token"
        ]

    def sent_anywhere(self, value: str) -> int:
        """How many requests carried ``value`` in a form field or a header."""
        return sum(
            1
            for seen in self.requests
            if value in seen.form.values() or any(value in h for h in seen.headers.values())
        )


@dataclass
class MockBrowserConsent:
    """A consent handler: the fake server issues the code, the callback is built here."""

    server: FakeAS
    opened: list[str] = field(default_factory=list)

    async def obtain_consent(self, flow: ConsentFlow) -> None:
        url = await flow.authorization_url(REDIRECT_URI)
        self.opened.append(url)
        callback = self.server.authorize(url)
        await flow.complete(f"{REDIRECT_URI}?{urlencode(callback)}")


@dataclass
class Sleeps:
    """Replaces the driver's sleep between retries: records, never waits."""

    waits: list[float] = field(default_factory=list)

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


@dataclass
class FakeClock:
    """``monotonic()`` and ``time()`` moved independently by the test."""

    mono: float = 10_000.0
    wall: float = field(default_factory=time.time)

    def monotonic(self) -> float:
        return self.mono

    def time(self) -> float:
        return self.wall


@dataclass
class Setup:
    identity: IdentityClient
    server: FakeAS
    consent: MockBrowserConsent
    sleeps: Sleeps
    clock: FakeClock


@asynccontextmanager
async def connected(server: FakeAS | None = None, **kwargs: Any) -> AsyncIterator[Setup]:
    """An IdentityClient wired to ``server`` through MockTransport (not yet discovered)."""
    server = server if server is not None else FakeAS()
    consent = MockBrowserConsent(server)
    sleeps = Sleeps()
    clock = kwargs.pop("clock", None) or FakeClock()
    kwargs.setdefault("client_secret", "s3cret")
    kwargs.setdefault("use_par", False)
    async with httpx2.AsyncClient(transport=httpx2.MockTransport(server)) as http:
        identity = IdentityClient(
            ISSUER, client_id=CLIENT_ID, consent=consent, http_client=http, clock=clock, **kwargs
        )
        identity._driver.sleep = sleeps
        try:
            yield Setup(identity, server, consent, sleeps, clock)
        finally:
            await identity.aclose()


async def consented(setup: Setup) -> UserIdentity:
    """Alice consents to read and write her calendar (the fake AS issues no ID token)."""
    user = setup.identity.user(USER, tenant=TENANT)
    grant = await user.consent(scopes=["calendar.read", "calendar.write"], resource=CALENDAR)
    assert grant.has_refresh_token
    assert setup.server.issued_refresh_tokens == ["RT-2"]
    return user


async def read_token(user: UserIdentity) -> str:
    """A narrowed token (not the one from the consent, so it needs a refresh)."""
    token = await user.token(resource=CALENDAR, scopes=["calendar.read"])
    return token.value.get_secret_value()


# --- refresh faults: typed error, sent once, nothing lost --------------------------------------


async def _hang(request: httpx2.Request) -> httpx2.Response:
    await anyio.sleep(30)
    raise AssertionError("the client should have given up")


async def _streamed_oversized(request: httpx2.Request) -> httpx2.Response:
    async def body() -> AsyncIterator[bytes]:
        yield b'{"access_token": "'
        for _ in range(20):
            yield b"x" * 65_536
        yield b'", "token_type": "Bearer"}'

    return httpx2.Response(200, content=body())


def _raw(status: int, content: bytes, **headers: str) -> httpx2.Response:
    return httpx2.Response(status, content=content, headers=headers)


#: The exchange fails or the server is unhealthy (security item 25: never retried).
TRANSPORT_FAULTS = [
    pytest.param(lambda: _hang, RequestTimeout, id="hangs-past-timeout"),
    pytest.param(lambda: httpx2.ReadTimeout("read timed out"), RequestTimeout, id="read-timeout"),
    pytest.param(
        lambda: httpx2.ConnectTimeout("connect timed out"), RequestTimeout, id="connect-timeout"
    ),
    pytest.param(
        lambda: httpx2.ReadError("[Errno 104] Connection reset by peer"),
        TransportError,
        id="connection-reset",
    ),
    pytest.param(
        lambda: httpx2.RemoteProtocolError("Server disconnected without sending a response."),
        TransportError,
        id="server-disconnected",
    ),
    pytest.param(
        lambda: _raw(500, b"<html><body>Internal Server Error</body></html>"),
        InvalidResponse,
        id="500-garbage",
    ),
    pytest.param(lambda: _raw(502, b"", **{"retry-after": "0"}), InvalidResponse, id="502-empty"),
    pytest.param(
        lambda: httpx2.Response(503, json={"error": "temporarily_unavailable"}),
        TemporarilyUnavailable,
        id="503-oauth-error",
    ),
]

#: A 200 whose body cannot be accepted (security item 4: typed error, no partial state).
BODY_FAULTS = [
    pytest.param(
        lambda: _raw(200, b'{"access_token": "AT-x", "token_type": "Bea'),
        InvalidResponse,
        id="200-truncated",
    ),
    pytest.param(
        lambda: _raw(
            200,
            b'{"access_token": "AT-x", "token_type": "Bearer", "refresh_token": "RT-a",'
            b' "refresh_token": "RT-b"}',
        ),
        InvalidResponse,
        id="200-duplicate-key",
    ),
    pytest.param(lambda: _raw(200, b"<html>OK</html>"), InvalidResponse, id="200-html"),
    pytest.param(lambda: _raw(200, b'["AT-x"]'), InvalidResponse, id="200-not-an-object"),
    pytest.param(
        lambda: _raw(200, b'{"access_token": "AT-x", "token_type": "Bearer", "expires_in": true}'),
        InvalidResponse,
        id="200-mistyped-member",
    ),
    pytest.param(
        lambda: _raw(200, b'{"token_type": "Bearer", "expires_in": 60}'),
        InvalidResponse,
        id="200-no-access-token",
    ),
    pytest.param(
        lambda: _raw(200, b'{"access_token": "' + b"x" * 1_100_000 + b'", "token_type": "B"}'),
        InvalidResponse,
        id="200-over-size-cap",
    ),
    pytest.param(lambda: _streamed_oversized, InvalidResponse, id="200-streamed-over-size-cap"),
]


async def _refresh_fault_typed_error_sent_once_nothing_lost(
    fault: Fault, expected: type[Exception]
) -> None:
    async with connected(timeout=0.5) as setup:
        user = await consented(setup)
        grant_before = (await user.grant())
        setup.server.refresh_faults.append(fault)

        with anyio.fail_after(5), pytest.raises(expected) as info:
            await read_token(user)
        assert type(info.value) is expected
        # sent exactly once: never retried, whatever the failure
        assert setup.server.refreshes() == ["RT-2"]
        assert setup.sleeps.waits == []
        # nothing lost, nothing half-stored
        assert (await user.grant()) == grant_before
        assert (await user.grant()) is not None
        assert (await user.grant()).has_refresh_token

        # the next refresh goes out with the same refresh token and succeeds
        assert await read_token(user) == "AT-3"
        assert setup.server.refreshes() == ["RT-2", "RT-2"]
        # and it is now served from memory
        assert await read_token(user) == "AT-3"
        assert len(setup.server.refreshes()) == 2


@pytest.mark.parametrize(("make_fault", "expected"), TRANSPORT_FAULTS)
async def test_sec_25_refresh_fault_typed_error_sent_once_nothing_lost(
    make_fault: Callable[[], Fault], expected: type[Exception]
) -> None:
    await _refresh_fault_typed_error_sent_once_nothing_lost(make_fault(), expected)


@pytest.mark.parametrize(("make_fault", "expected"), BODY_FAULTS)
async def test_sec_04_bad_refresh_body_typed_error_no_partial_state(
    make_fault: Callable[[], Fault], expected: type[Exception]
) -> None:
    await _refresh_fault_typed_error_sent_once_nothing_lost(make_fault(), expected)


async def test_code_redemption_fault_stores_no_grant_and_is_not_retried() -> None:
    server = FakeAS(token_faults=[httpx2.ReadError("[Errno 104] Connection reset by peer")])
    async with connected(server) as setup:
        user = setup.identity.user(USER, tenant=TENANT)
        with pytest.raises(TransportError):
            await user.consent(scopes=["calendar.read"], resource=CALENDAR)
        assert len(server.to("/token")) == 1  # an authorization code is never sent twice
        assert (await user.grant()) is None
        # a new consent works
        grant = await user.consent(scopes=["calendar.read"], resource=CALENDAR)
        assert grant.has_refresh_token


# --- refresh token rotation ----------------------------------------------------------------------


async def test_refresh_without_new_refresh_token_keeps_the_old_one() -> None:
    async with connected(FakeAS(rotate=False)) as setup:
        user = await consented(setup)
        assert await read_token(user) == "AT-3"
        write = await user.token(resource=CALENDAR, scopes=["calendar.write"])
        assert write.value.get_secret_value() == "AT-4"
        assert setup.server.refreshes() == ["RT-2", "RT-2"]
        assert (await user.grant()) is not None
        assert (await user.grant()).has_refresh_token


async def test_sec_25_rotated_refresh_token_replaces_old() -> None:
    async with connected() as setup:
        user = await consented(setup)
        assert await read_token(user) == "AT-3"  # RT-2 -> RT-3
        write = await user.token(resource=CALENDAR, scopes=["calendar.write"])  # RT-3 -> RT-4
        assert write.value.get_secret_value() == "AT-4"
        both = await user.token(resource=CALENDAR)  # RT-4 -> RT-5, scope not narrowed
        assert both.value.get_secret_value() == "AT-5"
        assert setup.server.refreshes() == ["RT-2", "RT-3", "RT-4"]
        await user.disconnect()
        assert [seen.form["token"] for seen in setup.server.to("/revoke")] == ["RT-5"]
        # every rotated-away refresh token was sent exactly once, and never again
        for old in ("RT-2", "RT-3", "RT-4"):
            assert setup.server.sent_anywhere(old) == 1, old
        assert (await user.grant()) is None


async def test_sec_25_rotated_refresh_token_persisted_before_access_token_is_built(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """If anything fails after the rotated response arrived, the new refresh token is kept:
    the old one is dead at the server and must not be sent again."""
    async with connected() as setup:
        user = await consented(setup)

        build = UserGrant._remember

        def fail_once(self: UserIdentity, *args: Any, **kwargs: Any) -> Any:
            monkeypatch.setattr(UserGrant, "_remember", build)
            raise RuntimeError("boom while building the access token")

        monkeypatch.setattr(UserGrant, "_remember", fail_once)
        with pytest.raises(RuntimeError, match="boom"):
            await read_token(user)
        stored = await setup.identity.vault.load(user.key, fresh=True)
        assert stored is not None
        assert stored.record.refresh_token is not None
        assert stored.record.refresh_token.get_secret_value() == "RT-3"
        assert setup.server.refreshes() == ["RT-2"]
        # the access token was stored with it, so nothing is lost and nothing is re-sent
        assert await read_token(user) == "AT-3"
        assert setup.server.refreshes() == ["RT-2"]


async def test_invalid_grant_on_refresh_requires_reauthorization() -> None:
    server = FakeAS()
    server.refresh_faults.append(
        httpx2.Response(400, json={"error": "invalid_grant", "error_description": "revoked"})
    )
    async with connected(server) as setup:
        user = await consented(setup)
        with pytest.raises(ReauthorizationRequired) as info:
            await read_token(user)
        assert set(info.value.scopes) == {
            "openid",
            "calendar.read",
            "calendar.write",
            "offline_access",
        }
        assert info.value.resource == CALENDAR
        cause = info.value.__cause__
        assert isinstance(cause, InvalidGrant)
        assert cause.error_description == "revoked"
        assert cause.status_code == 400

        # the dead grant is removed from the vault: no refresh token, no cached token
        assert (await user.grant()) is None
        stored = await setup.identity.vault.load(user.key, fresh=True)
        assert stored is None
        assert server.refreshes() == ["RT-2"]
        assert server.sent_anywhere("RT-2") == 1

        # consenting again restores the grant
        grant = await user.consent(scopes=["calendar.read"], resource=CALENDAR)
        assert grant.has_refresh_token
        # the new consent asked exactly calendar.read: its own token is the narrow one
        assert await read_token(user) == "AT-4"
        assert server.refreshes() == ["RT-2"]


# --- discovery ---------------------------------------------------------------------------------


async def test_discovery_503_with_retry_after_is_retried_then_succeeds() -> None:
    server = FakeAS(
        discovery_faults=[
            _raw(503, b"busy", **{"retry-after": "1"}),
            httpx2.ReadError("[Errno 104] Connection reset by peer"),
        ]
    )
    async with connected(server) as setup:
        found = await setup.identity.discover()
        assert found.issuer == ISSUER
        assert len(server.to("/.well-known/oauth-authorization-server")) == 3
        assert setup.sleeps.waits[0] == 1.0
        assert len(setup.sleeps.waits) == 2
        # discovered once, then kept
        await setup.identity.discover()
        assert len(server.requests) == 3


async def test_discovery_keeps_failing_gives_a_typed_error() -> None:
    server = FakeAS(discovery_faults=[_raw(503, b"busy", **{"retry-after": "1"})] * 3)
    async with connected(server) as setup:
        with pytest.raises(InvalidResponse, match="503"):
            await setup.identity.discover()
        assert len(server.requests) == 3  # one attempt plus two retries, then no more
        assert setup.sleeps.waits == [1.0, 1.0]


@pytest.mark.parametrize(
    "issuer",
    ["https://as.example/", "https://AS.example", "https://as.example:443", "https://evil.example"],
)
async def test_sec_09_metadata_issuer_mismatch_refused(issuer: str) -> None:
    server = FakeAS(document=metadata(issuer=issuer))
    async with connected(server) as setup:
        with pytest.raises(MetadataError, match="not identical"):
            async with setup.identity:
                pass
        with pytest.raises(MetadataError):
            await setup.identity.user(USER).consent(scopes=["calendar.read"])
        assert {seen.path for seen in server.requests} == {
            "/.well-known/oauth-authorization-server"
        }


@pytest.mark.parametrize(
    "member",
    [
        "token_endpoint",
        "authorization_endpoint",
        "revocation_endpoint",
        "jwks_uri",
        "pushed_authorization_request_endpoint",
    ],
)
async def test_sec_01_http_endpoint_in_metadata_refused_before_any_request(member: str) -> None:
    server = FakeAS(document=metadata(**{member: f"http://as.example/{member}"}))
    async with connected(server) as setup:
        with pytest.raises(MetadataError, match=member):
            await setup.identity.discover()
        with pytest.raises(MetadataError):
            await setup.identity.client_credentials(scopes=["calendar.read"])
        with pytest.raises(MetadataError):
            await setup.identity.user(USER).consent(scopes=["calendar.read"])
        assert {seen.path for seen in server.requests} == {
            "/.well-known/oauth-authorization-server"
        }
        assert setup.consent.opened == []


@pytest.mark.parametrize("methods", [["plain"], [], None, ["s256"]])
async def test_sec_10_no_s256_consent_refused_without_requests(methods: list[str] | None) -> None:
    server = FakeAS(
        document=metadata(
            code_challenge_methods_supported=methods,
            pushed_authorization_request_endpoint=f"{ISSUER}/par",
        )
    )
    async with connected(server, use_par=None) as setup:
        user = setup.identity.user(USER, tenant=TENANT)
        with pytest.raises(MetadataError, match="S256"):
            await user.consent(scopes=["calendar.read"], resource=CALENDAR)
        assert setup.consent.opened == []
        for path in ("/authorize", "/par", "/token"):
            assert server.to(path) == [], path
        assert (await user.grant()) is None


# --- revocation ----------------------------------------------------------------------------------


async def test_sec_28_revocation_200_with_garbage_body_forgets_grant() -> None:
    server = FakeAS(revocation_answers=[_raw(200, b"\x00\xff<html>not json")])
    async with connected(server) as setup:
        await setup.identity.revoke("some-access-token", token_type_hint="access_token")
        user = await consented(setup)
        await user.disconnect()
        assert (await user.grant()) is None
        revocations = server.to("/revoke")
        assert [seen.form["token"] for seen in revocations] == ["some-access-token", "RT-2"]
        assert revocations[1].form["token_type_hint"] == "refresh_token"
        assert "authorization" in revocations[1].headers  # client authentication
        assert setup.sleeps.waits == []
        # nothing left to use: the next token needs a new consent, and the revoked
        # refresh token is never sent again
        assert len(server.to("/authorize")) == 1
        await user.token(resource=CALENDAR, scopes=["calendar.read"])
        assert len(server.to("/authorize")) == 2
        assert server.sent_anywhere("RT-2") == 1


async def test_sec_28_disconnect_keeps_grant_on_503() -> None:
    server = FakeAS(revocation_answers=[_raw(503, b"", **{"retry-after": "1"})])
    async with connected(server) as setup:
        user = await consented(setup)
        grant_before = (await user.grant())
        with pytest.raises(TemporarilyUnavailable) as info:
            await user.disconnect()
        assert info.value.status_code == 503
        assert len(server.to("/revoke")) == 3  # retried per Retry-After (idempotent)
        assert setup.sleeps.waits == [1.0, 1.0]
        # the token may still be valid at the server: the grant is KEPT
        assert (await user.grant()) == grant_before
        assert await read_token(user) == "AT-3"
        assert server.refreshes() == ["RT-2"]

        # once the server confirms, the grant is forgotten
        server.revocation_answers[:] = [httpx2.Response(200)]
        await user.disconnect()
        assert (await user.grant()) is None
        assert server.to("/revoke")[-1].form["token"] == "RT-3"


async def test_revocation_error_keeps_grant() -> None:
    server = FakeAS(
        revocation_answers=[httpx2.Response(400, json={"error": "unsupported_token_type"})]
    )
    async with connected(server) as setup:
        user = await consented(setup)
        with pytest.raises(OAuthError) as info:
            await user.disconnect()
        assert info.value.error == "unsupported_token_type"
        assert len(server.to("/revoke")) == 1
        assert (await user.grant()) is not None
        assert (await user.grant()).has_refresh_token


# --- security item 39: the wall clock does not move refresh timing ------------------------------


async def test_sec_39_wall_clock_shift_does_not_change_refresh_timing() -> None:
    clock = FakeClock()
    async with connected(clock=clock, refresh_buffer=60) as setup:
        user = setup.identity.user(USER, tenant=TENANT)
        await user.consent(scopes=["calendar.read"], resource=CALENDAR)
        start = clock.mono
        first = await user.token(resource=CALENDAR, scopes=["calendar.read"])
        assert first.value.get_secret_value() == "AT-2"  # the consent's own token

        for shift in (+600.0, -600.0, +86_400.0, -86_400.0):
            clock.wall = time.time() + shift
            for elapsed in (0.0, 1_000.0, 3_600 - 60 - 1):
                clock.mono = start + elapsed
                assert await user.token(resource=CALENDAR, scopes=["calendar.read"]) is first
        assert setup.server.refreshes() == []

        # past the refresh point on the monotonic clock: exactly one refresh, whatever
        # the wall clock says
        clock.mono = start + 3_600 - 60 + 1
        clock.wall = time.time() - 600
        second = await user.token(resource=CALENDAR, scopes=["calendar.read"])
        assert second.value.get_secret_value() == "AT-3"
        clock.wall = time.time() + 600
        assert await user.token(resource=CALENDAR, scopes=["calendar.read"]) is second
        assert setup.server.refreshes() == ["RT-2"]


# --- security item 25: single-flight refresh ---------------------------------------------------


async def _expired_setup(setup: Setup) -> UserIdentity:
    user = setup.identity.user(USER, tenant=TENANT)
    await user.consent(scopes=["calendar.read"], resource=CALENDAR)
    setup.clock.mono += 3_600  # the consent's token is now expired
    return user


async def test_sec_25_single_flight_refresh() -> None:
    server = FakeAS(gate=anyio.Event())
    async with connected(server) as setup:
        user = await _expired_setup(setup)
        results: list[str] = []

        async def call() -> None:
            token = await user.token(resource=CALENDAR, scopes=["calendar.read"])
            results.append(token.value.get_secret_value())

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for _ in range(100):
                    tg.start_soon(call)
                await server.refresh_entered.wait()
                await anyio.wait_all_tasks_blocked()
                assert server.gate is not None
                server.gate.set()
        assert results == ["AT-3"] * 100
        assert server.refreshes() == ["RT-2"]


async def test_sec_25_cancelled_waiters_do_not_break_the_lock() -> None:
    server = FakeAS(gate=anyio.Event())
    async with connected(server) as setup:
        user = await _expired_setup(setup)
        holder: list[str] = []
        cancelled_results: list[str] = []

        async def hold() -> None:
            token = await user.token(resource=CALENDAR, scopes=["calendar.read"])
            holder.append(token.value.get_secret_value())

        async def wait() -> None:
            token = await user.token(resource=CALENDAR, scopes=["calendar.read"])
            cancelled_results.append(token.value.get_secret_value())

        with anyio.fail_after(10):
            async with anyio.create_task_group() as outer:
                outer.start_soon(hold)
                await server.refresh_entered.wait()
                async with anyio.create_task_group() as waiters:
                    for _ in range(20):
                        waiters.start_soon(wait)
                    await anyio.wait_all_tasks_blocked()
                    waiters.cancel_scope.cancel()
                assert server.gate is not None
                server.gate.set()
        assert cancelled_results == []
        assert holder == ["AT-3"]
        assert server.refreshes() == ["RT-2"]

        # the lock still works: served from memory, then one refresh when expired again
        server.gate = None
        assert await read_token(user) == "AT-3"
        setup.clock.mono += 3_600
        assert await read_token(user) == "AT-4"
        assert server.refreshes() == ["RT-2", "RT-3"]


async def test_sec_25_cancelled_caller_returns_at_once_and_the_refresh_is_still_stored() -> None:
    """Issue 12, finding 1: a caller that gives up (a tool timeout) after the refresh
    request went out must not lose the rotated refresh token for everyone else. The
    caller leaves at once; the request's outcome is stored; the next caller gets the
    new token without a second refresh (which would replay the rotated-away token)."""
    gate = anyio.Event()
    server = FakeAS(gate=gate)
    async with connected(server) as setup:
        user = await _expired_setup(setup)
        with anyio.fail_after(2):  # the caller's cancellation is prompt
            with anyio.move_on_after(30) as impatient:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(read_token, user)
                    await server.refresh_entered.wait()
                    impatient.cancel()  # cancelled while the refresh is in flight
        assert impatient.cancelled_caught
        assert server.refreshes() == ["RT-2"]
        gate.set()  # the server answers now: RT-2 is rotated to RT-3
        with anyio.fail_after(5):
            assert await read_token(user) == "AT-3"
        assert server.refreshes() == ["RT-2"]  # no replay of the rotated-away RT-2
        stored = await setup.identity.vault.load(user.key, fresh=True)
        assert stored is not None
        assert stored.record.refresh_token is not None
        assert stored.record.refresh_token.get_secret_value() == "RT-3"


async def test_sec_25_salvaged_refresh_token_of_a_malformed_success_is_kept() -> None:
    """Issue 12, finding 7: a refresh response that cannot be accepted (here a mistyped
    ``expires_in``) but carries a rotated refresh token: the typed error is raised AND the
    new refresh token is stored, so the grant survives."""
    server = FakeAS()
    async with connected(server) as setup:
        user = await consented(setup)
        server.live_refresh_tokens.add("RT-9")
        server.refresh_faults.append(
            _raw(
                200,
                b'{"access_token": "AT-9", "token_type": "Bearer", "refresh_token": "RT-9",'
                b' "expires_in": true}',
            )
        )
        with pytest.raises(InvalidResponse):
            await read_token(user)
        stored = await setup.identity.vault.load(user.key, fresh=True)
        assert stored is not None
        assert stored.record.refresh_token is not None
        assert stored.record.refresh_token.get_secret_value() == "RT-9"
        assert await read_token(user) == "AT-3"
        assert server.refreshes() == ["RT-2", "RT-9"]


async def test_concurrent_refreshes_of_different_users_are_independent() -> None:
    server = FakeAS()
    async with connected(server) as setup:
        users = []
        for name in ("alice", "bob"):
            user = setup.identity.user(name, tenant=TENANT)
            await user.consent(scopes=["calendar.read"], resource=CALENDAR)
            users.append(user)
        setup.clock.mono += 3_600
        tokens: dict[str, str] = {}

        async def call(user: UserIdentity) -> None:
            tokens[user.user_id] = await read_token(user)

        async with anyio.create_task_group() as tg:
            for user in users * 10:
                tg.start_soon(call, user)
        assert sorted(server.refreshes()) == ["RT-2", "RT-4"]
        assert tokens["alice"] != tokens["bob"]


async def test_refresh_granting_fewer_scopes_keeps_the_rotated_token_and_reports_them() -> None:
    """A refresh answered with fewer scopes than asked: the rotated refresh token is kept
    (nothing lost), the token is cached under the scopes it really has, and the caller gets
    a typed ConsentRequired naming the missing scopes."""
    server = FakeAS()
    server.refresh_faults.append(
        httpx2.Response(
            200,
            json={
                "access_token": "AT-narrow",
                "token_type": "Bearer",
                "expires_in": 300,
                "scope": "calendar.read",
                "refresh_token": "RT-rotated",
            },
        )
    )
    async with connected(server) as setup:
        user = await consented(setup)
        with pytest.raises(ConsentRequired) as info:
            await user.token(resource=CALENDAR, scopes=["calendar.write"])
        assert info.value.scopes == ("calendar.write",)
        assert info.value.resource == CALENDAR
        stored = await setup.identity.vault.load(user.key, fresh=True)
        assert stored is not None
        assert stored.record.refresh_token is not None
        assert stored.record.refresh_token.get_secret_value() == "RT-rotated"
        narrow = await user.token(resource=CALENDAR, scopes=["calendar.read"])
        assert narrow.value.get_secret_value() == "AT-narrow"


@pytest.mark.parametrize(
    ("supported", "expected"),
    [
        (["openid", "offline_access", "calendar.read"], {"openid", "offline_access"}),
        (["calendar.read"], set()),  # no offline_access listed: never asked
        (None, set()),  # no scopes_supported at all: never assumed
    ],
)
async def test_sec_20_offline_access_only_when_listed(
    supported: list[str] | None, expected: set[str]
) -> None:
    server = FakeAS(document=metadata(scopes_supported=supported))
    async with connected(server) as setup:
        user = setup.identity.user(USER, tenant=TENANT)
        await user.consent(scopes=["calendar.read"], resource=CALENDAR)
        query = dict(parse_qsl(urlsplit(setup.consent.opened[-1]).query))
        asked = set(query["scope"].split())
        assert asked - {"calendar.read"} == expected
        # prompt=consent accompanies offline_access at an OpenID provider, and only then
        assert ("prompt" in query) == ("offline_access" in asked)
