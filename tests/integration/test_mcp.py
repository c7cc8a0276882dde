"""MCP client authorization end to end: a real MCP server (the official ``mcp`` package,
streamable HTTP, served by uvicorn on 127.0.0.1) whose token verifier validates the local
authorization server's JWT access tokens (JWKS signature, ``iss``, ``aud`` = the MCP
server URL, ``exp``), reached with the official MCP client and ``alice.mcp_auth(...)``."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx2
import pytest
import uvicorn
from _helpers import make_client
from _resource import Refused, TokenCheck
from joserfc import jwt
from joserfc.jwk import KeySet
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.server.auth.provider import AccessToken as McpAccessToken
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import MCPServer

from agent_identity import IdentityClient, LoopbackConsent, MetadataError, StepUpLimitExceeded
from agent_identity.devidp import DEV_CLIENT_SECRETS, DEV_RESOURCES, DevBrowser, DevIdP
from agent_identity.mcp import REGISTRATION_KIND, McpAuth
from agent_identity.oauth.registration import ClientRegistration

pytestmark = [pytest.mark.anyio, pytest.mark.idp]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

PRM_PATH = "/.well-known/oauth-protected-resource/mcp"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ToolServer:
    """An MCP server protected by one authorization server (switchable at run time).

    ``whoami`` needs ``tools.read`` (every request does); ``admin_tool`` also needs
    ``tools.admin``: its ``tools/call`` is answered ``403 insufficient_scope`` otherwise.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}/mcp"
        self.issuer = ""
        self.jwks: dict[str, Any] = {}
        self.prm_overrides: dict[str, Any] = {}
        self.always_insufficient = False
        self.reject_next = 0
        self.seen: list[dict[str, Any]] = []
        #: When set, tokens must be DPoP-bound and come with valid proofs (RFC 9449).
        self.dpop: TokenCheck | None = None
        server = MCPServer(
            "tools",
            token_verifier=self,
            auth=AuthSettings(
                issuer_url="http://127.0.0.1:1",  # the metadata is served by __call__
                resource_server_url=self.url,
                required_scopes=["tools.read"],
                validate_token_resource=False,  # verify_token checks aud itself
            ),
        )

        @server.tool()
        def whoami() -> str:
            from mcp.server.auth.middleware.auth_context import get_access_token

            token = get_access_token()
            return token.subject or "" if token is not None else ""

        @server.tool()
        def admin_tool() -> str:
            return "admin done"

        self._app = server.streamable_http_app()
        self._uvicorn: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def use(self, issuer: str, jwks: dict[str, Any]) -> None:
        self.issuer, self.jwks = issuer, jwks

    # -- token verification (RFC 9068 JWT access tokens) ---------------------------------

    def _claims(self, token: str) -> dict[str, Any] | None:
        try:
            claims = dict(jwt.decode(token, KeySet.import_key_set(self.jwks)).claims)
        except Exception:
            return None
        if (
            claims.get("iss") != self.issuer
            or claims.get("aud") != self.url
            or float(claims.get("exp", 0)) < time.time()
        ):
            return None
        return claims

    async def verify_token(self, token: str) -> McpAccessToken | None:
        claims = self._claims(token)
        if claims is None:
            return None
        if self.reject_next > 0:
            self.reject_next -= 1
            return None
        return McpAccessToken(
            token=token,
            client_id=str(claims.get("client_id", "")),
            scopes=str(claims.get("scope", "")).split(),
            expires_at=int(claims["exp"]),
            resource=self.url,
            subject=str(claims.get("sub")),
        )

    # -- ASGI ----------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        self.seen.append(
            {"method": scope["method"], "path": scope["path"], "auth": headers.get("authorization")}
        )
        if scope["path"].startswith("/.well-known/oauth-protected-resource"):
            if scope["path"] != PRM_PATH:
                await _respond(send, 404, {"error": "not_found"})
                return
            document = {
                "resource": self.url,
                "authorization_servers": [self.issuer],
                "scopes_supported": ["tools.read"],
                "bearer_methods_supported": ["header"],
            }
            document.update(self.prm_overrides)
            await _respond(send, 200, document)
            return
        if self.dpop is not None:
            url = f"http://127.0.0.1:{self.port}{scope['path']}"
            try:
                self.dpop.authenticate(scope["method"], url, headers)
            except Refused as refused:
                extra = {"www-authenticate": refused.challenge}
                if refused.nonce is not None:
                    extra["dpop-nonce"] = refused.nonce
                await _respond(send, refused.status, {"error": "invalid_token"}, extra)
                return
            # the MCP library's middleware reads bearer tokens: hand the checked one on
            token = headers["authorization"].partition(" ")[2]
            kept = [
                (k, v) for k, v in scope["headers"] if k.lower() not in (b"authorization", b"dpop")
            ]
            scope = {**scope, "headers": [*kept, (b"authorization", f"Bearer {token}".encode())]}
            headers["authorization"] = f"Bearer {token}"
        body = b""
        if scope["method"] == "POST":
            more = True
            while more:
                message = await receive()
                body += message.get("body", b"")
                more = message.get("more_body", False)
            if self._needs_admin(body, headers.get("authorization", "")):
                await _respond(
                    send,
                    403,
                    {"error": "insufficient_scope"},
                    {
                        "www-authenticate": 'Bearer error="insufficient_scope", '
                        f'scope="tools.read tools.admin", resource_metadata="{self.prm_url}"'
                    },
                )
                return
            sent = False

            async def replay() -> MutableMapping[str, Any]:
                nonlocal sent
                if not sent:
                    sent = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            await self._app(scope, replay, send)
            return
        await self._app(scope, receive, send)

    @property
    def prm_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{PRM_PATH}"

    def _needs_admin(self, body: bytes, authorization: str) -> bool:
        try:
            message = json.loads(body)
        except ValueError:
            return False
        if not (
            isinstance(message, dict)
            and message.get("method") == "tools/call"
            and (message.get("params") or {}).get("name") == "admin_tool"
        ):
            return False
        claims = self._claims(authorization.removeprefix("Bearer "))
        if claims is None:
            return False  # the auth middleware answers 401
        return self.always_insufficient or "tools.admin" not in str(claims.get("scope")).split()

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        config = uvicorn.Config(
            self, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on"
        )
        self._uvicorn = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._uvicorn.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._uvicorn.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the MCP test server did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        if self._uvicorn is not None and self._thread is not None:
            self._uvicorn.should_exit = True
            self._thread.join(timeout=10)


async def _respond(
    send: Send, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> None:
    raw = [(b"content-type", b"application/json")]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": json.dumps(body).encode()})


class CountingBrowser:
    """alice's browser: approves, and remembers every authorization URL."""

    def __init__(self) -> None:
        self.urls: list[str] = []
        self._browser = DevBrowser("alice")

    async def __call__(self, url: str) -> str:
        self.urls.append(url)
        return await self._browser.visit(url)

    def params(self, index: int = -1) -> dict[str, str]:
        return dict(parse_qsl(urlsplit(self.urls[index]).query))


async def _jwks(idp: DevIdP) -> dict[str, Any]:
    async with httpx2.AsyncClient() as http:
        document: dict[str, Any] = (await http.get(f"{idp.issuer}/jwks")).json()
        return document


@pytest.fixture
def tool_port() -> int:
    return _free_port()


@pytest.fixture
def tools(tool_port: int) -> Iterator[ToolServer]:
    server = ToolServer(tool_port)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _idp_for(factory: Callable[..., DevIdP], tools: ToolServer, **kwargs: Any) -> DevIdP:
    return factory(resources={**DEV_RESOURCES, tools.url: ("tools.read", "tools.admin")}, **kwargs)


def _parent(idp: DevIdP, browser: CountingBrowser) -> IdentityClient:
    # no PAR, so that the authorization URL shows its parameters
    return make_client(
        idp, consent=LoopbackConsent(browser=browser), allow_private_addresses=True, use_par=False
    )


@asynccontextmanager
async def _mcp(url: str, auth: httpx2.Auth) -> AsyncIterator[ClientSession]:
    async with (
        httpx2.AsyncClient(auth=auth, timeout=30) as http,
        streamable_http_client(url, http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session


def _text(result: Any) -> str:
    assert not result.is_error, result
    return "".join(getattr(c, "text", "") for c in result.content)


# -- discovery, registration, consent, tool call ------------------------------------------


async def test_sec_05_6_11_14_19_20_dynamic_registration_consent_and_tool_call(
    dev_idp_factory: Callable[..., DevIdP], tools: ToolServer
) -> None:
    idp = _idp_for(dev_idp_factory, tools)
    tools.use(idp.issuer, await _jwks(idp))
    browser = CountingBrowser()
    async with _parent(idp, browser) as identity:
        alice = identity.user("alice")
        async with alice.mcp_auth(tools.url) as auth:
            async with _mcp(tools.url, auth) as session:
                assert _text(await session.call_tool("whoami", {})) == "alice"
                assert _text(await session.call_tool("whoami", {})) == "alice"
            assert auth.issuer == idp.issuer
        # item 5: the challenge's resource_metadata URL was fetched
        assert any(s["path"] == PRM_PATH for s in tools.seen)
        # one consent, for the resource's scope (scopes_supported) + offline_access (item 20)
        assert len(browser.urls) == 1
        params = browser.params()
        assert params["resource"] == tools.url  # item 19
        assert set(params["scope"].split()) >= {"tools.read", "offline_access"}
        assert "tools.admin" not in params["scope"].split()
        logged = await idp.requests()
        registrations = [r for r in logged if r.get("route") == "registration"]
        assert len(registrations) == 1  # item 11: dynamic registration
        # the token request's resource made the AS issue aud=<server URL>, which the MCP
        # server's verifier requires (item 19)
        assert len(await idp.token_requests("authorization_code")) == 1
        # item 12: the registration is kept (encrypted) in the vault under the issuer
        stored = await identity.vault.get_blob(REGISTRATION_KIND, idp.issuer)
        assert stored is not None
        registration = ClientRegistration.from_bytes(stored.data)
        assert registration.issuer == idp.issuer
        assert "secret" not in repr(registration).replace("has_secret", "")
        # the grant is keyed by (tenant, user, MCP server)
        grants = await alice.connections()
        assert [g.connection for g in grants if g.issuer == idp.issuer] == [tools.url]
        # every request after the first carried a token
        assert all(s["auth"] for s in tools.seen[1:] if s["path"] == "/mcp")


async def test_sec_11_pre_registered_client_is_used_first(
    dev_idp_factory: Callable[..., DevIdP], tools: ToolServer
) -> None:
    idp = _idp_for(dev_idp_factory, tools)
    tools.use(idp.issuer, await _jwks(idp))
    browser = CountingBrowser()
    clients = {
        idp.issuer: {
            "client_id": "agent-post",
            "client_secret": DEV_CLIENT_SECRETS["agent-post"],
        }
    }
    async with _parent(idp, browser) as identity:
        auth = identity.user("alice").mcp_auth(tools.url, clients=clients)
        async with auth, _mcp(tools.url, auth) as session:
            assert _text(await session.call_tool("whoami", {})) == "alice"
        logged = await idp.requests()
        assert not [r for r in logged if r.get("route") == "registration"]
        assert browser.params()["client_id"] == "agent-post"
        assert await identity.vault.get_blob(REGISTRATION_KIND, idp.issuer) is None


# -- tokens: expiry and refresh ------------------------------------------------------------


async def test_sec_25_expired_token_is_refreshed_without_new_consent(
    dev_idp_factory: Callable[..., DevIdP], tools: ToolServer
) -> None:
    idp = _idp_for(dev_idp_factory, tools, access_token_ttl=4)
    tools.use(idp.issuer, await _jwks(idp))
    browser = CountingBrowser()
    async with _parent(idp, browser) as identity:
        auth = identity.user("alice").mcp_auth(tools.url)
        async with auth, _mcp(tools.url, auth) as session:
            assert _text(await session.call_tool("whoami", {})) == "alice"
            await idp.clear_requests()
            time.sleep(4.2)  # noqa: ASYNC251 - let the access token expire
            assert _text(await session.call_tool("whoami", {})) == "alice"
        refreshes = await idp.token_requests("refresh_token")
        assert len(refreshes) >= 1  # and its token has aud=<server URL> (item 19)
        assert len(browser.urls) == 1  # no second consent


async def test_sec_25_unauthorized_refreshes_before_any_consent(
    dev_idp_factory: Callable[..., DevIdP], tools: ToolServer
) -> None:
    idp = _idp_for(dev_idp_factory, tools)
    tools.use(idp.issuer, await _jwks(idp))
    browser = CountingBrowser()
    async with _parent(idp, browser) as identity:
        auth = identity.user("alice").mcp_auth(tools.url)
        async with auth, _mcp(tools.url, auth) as session:
            assert _text(await session.call_tool("whoami", {})) == "alice"
            await idp.clear_requests()
            tools.reject_next = 1  # a still valid token is refused once (revoked, say)
            assert _text(await session.call_tool("whoami", {})) == "alice"
        assert len(await idp.token_requests("refresh_token")) == 1
        assert len(browser.urls) == 1


# -- step-up ---------------------------------------------------------------------------------


async def test_sec_29_insufficient_scope_steps_up_to_the_union(
    dev_idp_factory: Callable[..., DevIdP], tools: ToolServer
) -> None:
    idp = _idp_for(dev_idp_factory, tools)
    tools.use(idp.issuer, await _jwks(idp))
    browser = CountingBrowser()
    async with _parent(idp, browser) as identity:
        auth = identity.user("alice").mcp_auth(tools.url)
        async with auth, _mcp(tools.url, auth) as session:
            assert _text(await session.call_tool("whoami", {})) == "alice"
            assert _text(await session.call_tool("admin_tool", {})) == "admin done"
            assert _text(await session.call_tool("whoami", {})) == "alice"
        assert len(browser.urls) == 2
        assert set(browser.params(1)["scope"].split()) >= {"tools.read", "tools.admin"}
        assert browser.params(1)["resource"] == tools.url


async def test_sec_29_step_up_is_bounded(
    dev_idp_factory: Callable[..., DevIdP], tools: ToolServer
) -> None:
    idp = _idp_for(dev_idp_factory, tools)
    tools.use(idp.issuer, await _jwks(idp))
    browser = CountingBrowser()
    tools.always_insufficient = True
    async with _parent(idp, browser) as identity:
        auth = identity.user("alice").mcp_auth(tools.url, max_step_ups=2)
        async with auth, httpx2.AsyncClient(auth=auth) as http:
            request = {"jsonrpc": "2.0", "id": 1, "method": "tools/call"}
            request["params"] = {"name": "admin_tool", "arguments": {}}
            headers = {"accept": "application/json, text/event-stream"}
            with pytest.raises(StepUpLimitExceeded) as caught:
                await http.post(tools.url, json=request, headers=headers)
            assert caught.value.operation == "tools/call admin_tool"
            assert caught.value.status_code == 403
            # one consent on the first 401, then exactly two step-ups
            assert len(browser.urls) == 3
            # the same operation again: no new consent, the typed error at once
            with pytest.raises(StepUpLimitExceeded):
                await http.post(tools.url, json=request, headers=headers)
            assert len(browser.urls) == 3


# -- refusals --------------------------------------------------------------------------------


async def test_sec_06_resource_metadata_mismatch_is_refused(
    dev_idp_factory: Callable[..., DevIdP], tools: ToolServer
) -> None:
    idp = _idp_for(dev_idp_factory, tools)
    tools.use(idp.issuer, await _jwks(idp))
    tools.prm_overrides = {"resource": f"http://127.0.0.1:{tools.port}/other"}
    browser = CountingBrowser()
    async with _parent(idp, browser) as identity:
        auth = identity.user("alice").mcp_auth(tools.url)
        async with auth, httpx2.AsyncClient(auth=auth) as http:
            with pytest.raises(MetadataError, match="9728"):
                await http.post(tools.url, json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
        assert browser.urls == []
        assert not await idp.requests()


# -- the server moves to another authorization server ----------------------------------------


async def test_sec_07_12_23_server_moved_to_another_authorization_server(
    dev_idp_factory: Callable[..., DevIdP], tools: ToolServer
) -> None:
    first = _idp_for(dev_idp_factory, tools)
    second = _idp_for(dev_idp_factory, tools)
    tools.use(first.issuer, await _jwks(first))
    browser = CountingBrowser()
    async with _parent(first, browser) as identity:
        auth = identity.user("alice").mcp_auth(tools.url)
        async with auth:
            async with _mcp(tools.url, auth) as session:
                assert _text(await session.call_tool("whoami", {})) == "alice"
            old = ClientRegistration.from_bytes(
                (await identity.vault.get_blob(REGISTRATION_KIND, first.issuer)).data  # type: ignore[union-attr]
            )
            tools.use(second.issuer, await _jwks(second))
            async with _mcp(tools.url, auth) as session:
                assert _text(await session.call_tool("whoami", {})) == "alice"
            assert auth.issuer == second.issuer
            # item 7: state is kept per authorization server
            assert auth._clients_by_issuer[first.issuer].client_id == old.client_id
            assert auth._clients_by_issuer[second.issuer].client_id != old.client_id
        new_blob = await identity.vault.get_blob(REGISTRATION_KIND, second.issuer)
        assert new_blob is not None
        new = ClientRegistration.from_bytes(new_blob.data)
        assert new.issuer == second.issuer
        # the second server got its own registration and never saw the first's credentials
        logged = await second.requests()
        assert [r for r in logged if r.get("route") == "registration"]
        assert old.client_id != new.client_id
        for entry in logged:  # every request there came from the new client, and succeeded
            assert entry.get("client_id") in (None, new.client_id)
            assert int(entry.get("status") or 200) < 400
        # the grant now belongs to the second server
        grants = await identity.user("alice").connections()
        assert [g.issuer for g in grants if g.connection == tools.url] == [second.issuer]
        assert len(browser.urls) == 2


async def test_sec_23_token_never_sent_to_another_url(
    dev_idp_factory: Callable[..., DevIdP], tools: ToolServer
) -> None:
    idp = _idp_for(dev_idp_factory, tools)
    tools.use(idp.issuer, await _jwks(idp))
    async with _parent(idp, CountingBrowser()) as identity:
        auth: McpAuth = identity.user("alice").mcp_auth(tools.url)
        async with auth, httpx2.AsyncClient(auth=auth) as http:
            from agent_identity import InsecureURLError

            with pytest.raises(InsecureURLError, match="passthrough"):
                await http.get(f"http://127.0.0.1:{tools.port}/elsewhere")


def test_example_mcp_agent_runs_headless() -> None:
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "examples/mcp_agent.py"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=root,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "whoami: you are alice" in result.stdout
    assert "admin_tool: admin work done" in result.stdout
    assert "tools.read tools.admin" in result.stdout
    # the agent as itself: client credentials with its own registration, no consent
    assert "as the agent: called by client agent-confidential" in result.stdout
    assert "agent registration: own" in result.stdout
    assert result.stdout.rstrip().endswith("Done.")


async def test_sec_34_36_37_mcp_auth_presents_dpop_bound_tokens_with_proofs(
    dev_idp_factory: Callable[..., DevIdP], tools: ToolServer
) -> None:
    """Issue 13: DPoP through ``mcp_auth()`` too. With ``IdentityClient(dpop=True)`` the
    MCP server's authorization server issues DPoP-bound tokens (``cnf.jkt``), and every
    request to the MCP server carries ``Authorization: DPoP`` with a fresh proof (``ath``,
    ``htm``, ``htu``), retried once with the server's nonce (security items 34, 36, 37)."""
    idp = _idp_for(dev_idp_factory, tools)
    jwks = await _jwks(idp)
    tools.use(idp.issuer, jwks)
    check = TokenCheck(issuer=idp.issuer, jwks=jwks, resource=tools.url, require_nonce=True)
    tools.dpop = check
    identity = make_client(
        idp,
        consent=LoopbackConsent(browser=CountingBrowser()),
        allow_private_addresses=True,
        use_par=False,
        dpop=True,
    )
    async with (
        identity,
        identity.user("alice").mcp_auth(tools.url) as auth,
        _mcp(tools.url, auth) as session,
    ):
        assert _text(await session.call_tool("whoami", {})) == "alice"
    assert check.proofs, "no DPoP proof reached the MCP server"
    assert all(p["header"]["typ"] == "dpop+jwt" for p in check.proofs)
    assert any(p["claims"].get("nonce") == check.nonce for p in check.proofs)
    assert len({p["claims"]["jti"] for p in check.proofs}) == len(check.proofs)
    authorizations = [s["auth"] for s in tools.seen if s["auth"]]
    assert authorizations
    assert all(a.startswith("DPoP ") for a in authorizations)
