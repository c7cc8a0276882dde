"""An agent calling a protected MCP server for a user, headless, on this machine only.

    python examples/mcp_agent.py

It starts the bundled DEV ONLY authorization server and a small MCP server (the official
``mcp`` package, streamable HTTP, on 127.0.0.1) that accepts only that server's JWT access
tokens issued for it (``aud`` = its URL). Then ``alice.mcp_auth(url)``:

1. gets ``401``, reads the server's protected resource metadata (RFC 9728) and the
   authorization server's metadata (RFC 8414);
2. registers itself there (dynamic client registration, RFC 7591; kept in the vault);
3. asks alice to consent (a headless DevBrowser plays her browser) and keeps the tokens
   in the vault, keyed by (tenant, user, MCP server);
4. calls ``whoami``; then ``admin_tool``, which needs one more scope: the server answers
   ``403 insufficient_scope`` and alice is asked for the union of scopes (step-up).

Then the agent calls the same server as itself, with no user: ``identity.mcp_auth(url)``
runs the same discovery, and, as the server names the agent's own authorization server,
gets a token with the agent's own credentials (OAuth client credentials, the MCP
extension SEP-1046; ``aud`` = the MCP server URL). An agent registered elsewhere passes
them with ``clients={url: {"client_id": ..., "private_key": ...}}``.

In a real deployment drop the DevBrowser and the dev server: the consent handler reaches
the real user, and the MCP server names its real authorization server.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import anyio
import httpx2
import uvicorn
from joserfc import jwt
from joserfc.jwk import KeySet
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import MCPServer

from agent_identity import IdentityClient, LoopbackConsent, TokenVault
from agent_identity.devidp import DEV_CLIENT_SECRETS, DevBrowser, DevIdP

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class JwtVerifier:
    """Accepts the authorization server's JWT access tokens issued for ``resource``."""

    def __init__(self, issuer: str, jwks: dict[str, Any], resource: str) -> None:
        self.issuer, self.resource = issuer, resource
        self.keys = KeySet.import_key_set(jwks)  # type: ignore[arg-type]

    def claims(self, token: str) -> dict[str, Any] | None:
        try:
            claims = dict(jwt.decode(token, self.keys).claims)
        except Exception:
            return None
        ok = claims.get("iss") == self.issuer and claims.get("aud") == self.resource
        return claims if ok and float(claims.get("exp", 0)) > time.time() else None

    async def verify_token(self, token: str) -> AccessToken | None:
        claims = self.claims(token)
        if claims is None:
            return None
        return AccessToken(
            token=token,
            client_id=str(claims.get("client_id", "")),
            scopes=str(claims.get("scope", "")).split(),
            expires_at=int(claims["exp"]),
            resource=self.resource,
            subject=str(claims.get("sub")),
        )


def mcp_app(url: str, verifier: JwtVerifier) -> Any:
    """The MCP server, plus a per-tool scope check: ``admin_tool`` needs ``tools.admin``."""
    server = MCPServer(
        "tools",
        token_verifier=verifier,
        auth=AuthSettings(
            issuer_url=verifier.issuer,
            resource_server_url=url,
            required_scopes=["tools.read"],
            validate_token_resource=True,
        ),
    )

    @server.tool()
    def whoami() -> str:
        token = get_access_token()
        return f"you are {token.subject if token else '?'}"

    @server.tool()
    def whoami_client() -> str:
        token = get_access_token()
        return f"called by client {token.client_id if token else '?'}"

    @server.tool()
    def admin_tool() -> str:
        return "admin work done"

    inner = server.streamable_http_app()
    metadata = url.replace("/mcp", "/.well-known/oauth-protected-resource/mcp")

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await inner(scope, receive, send)
            return
        body, more = b"", True
        while more:
            message = await receive()
            body, more = body + message.get("body", b""), message.get("more_body", False)
        headers = dict(scope["headers"])
        token = headers.get(b"authorization", b"").decode().removeprefix("Bearer ")
        claims = verifier.claims(token)
        try:
            call = json.loads(body)
        except ValueError:
            call = {}
        wants_admin = isinstance(call, dict) and call.get("method") == "tools/call"
        wants_admin = wants_admin and (call.get("params") or {}).get("name") == "admin_tool"
        if claims and wants_admin and "tools.admin" not in str(claims.get("scope")).split():
            challenge = (
                f'Bearer error="insufficient_scope", scope="tools.read tools.admin", '
                f'resource_metadata="{metadata}"'
            )
            await send(
                {
                    "type": "http.response.start",
                    "status": 403,
                    "headers": [(b"www-authenticate", challenge.encode())],
                }
            )
            await send({"type": "http.response.body", "body": b""})
            return
        replayed = False

        async def replay() -> MutableMapping[str, Any]:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await inner(scope, replay, send)

    return app


def serve(app: Any, port: int) -> uvicorn.Server:
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.02)
    return server


async def run(idp: DevIdP, url: str) -> None:
    async with httpx2.AsyncClient() as http:
        jwks = (await http.get(f"{idp.issuer}/jwks")).json()
    port = int(url.split(":")[2].split("/")[0])
    server = serve(mcp_app(url, JwtVerifier(idp.issuer, jwks, url)), port)
    try:
        async with IdentityClient(
            idp.issuer,
            client_id="agent-confidential",  # the agent's own identity
            client_secret=DEV_CLIENT_SECRETS["agent-confidential"],  # DEV ONLY secret
            consent=LoopbackConsent(browser=DevBrowser("alice")),
            vault=TokenVault.memory(),
            allow_insecure_loopback=True,  # DEV ONLY: http on 127.0.0.1
            allow_private_addresses=True,  # DEV ONLY: the MCP server is on 127.0.0.1
        ) as identity:
            alice = identity.user("alice")
            async with (
                alice.mcp_auth(url) as auth,
                httpx2.AsyncClient(auth=auth, timeout=30) as http,
                streamable_http_client(url, http_client=http) as (read, write),
                ClientSession(read, write) as session,
            ):
                await session.initialize()
                for tool in ("whoami", "admin_tool"):
                    result = await session.call_tool(tool, {})
                    text = "".join(getattr(c, "text", "") for c in result.content)
                    print(f"{tool}: {text}")
                print(f"authorization server: {auth.issuer}")
            for grant in await alice.connections():
                print(f"grant for {grant.connection}: {' '.join(grant.scopes)}")
            # the agent as itself: client credentials, no user, no consent
            async with (
                identity.mcp_auth(url) as auth,
                httpx2.AsyncClient(auth=auth, timeout=30) as http,
                streamable_http_client(url, http_client=http) as (read, write),
                ClientSession(read, write) as session,
            ):
                await session.initialize()
                result = await session.call_tool("whoami_client", {})
                print(f"as the agent: {''.join(getattr(c, 'text', '') for c in result.content)}")
                print(f"agent registration: {auth.registration}")
    finally:
        server.should_exit = True
    print("Done.")


def main() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/mcp"
    with DevIdP(resources={url: ("tools.read", "tools.admin")}) as idp:
        anyio.run(run, idp, url)


if __name__ == "__main__":
    main()
