"""The conformance client: an MCP client authorized by agent-identity, for the official
MCP conformance suite (``@modelcontextprotocol/conformance``).

Contract with the suite (read from its source, 0.1.16):

- the suite starts its servers for one scenario and runs ``<command> <server URL>``;
- ``MCP_CONFORMANCE_SCENARIO`` names the scenario, and ``MCP_CONFORMANCE_CONTEXT`` holds
  JSON with what some scenarios pre-provision (client credentials, a private key, an
  enterprise IdP's ID token, ...);
- the client must finish within the suite's timeout (30 s by default) and exit 0 (a few
  scenarios, where refusing is the right outcome, accept a non-zero exit);
- its authorization servers approve at once: ``GET /authorize`` answers ``302`` to the
  ``redirect_uri`` with ``code`` and ``state`` (no login page, no ``iss``).

The client uses ONLY agent-identity's public API, as ``docs/mcp.md`` shows it: an
:class:`~agent_identity.IdentityClient`, a user, ``user.mcp_auth(url, ...)`` on an
``httpx2.AsyncClient`` given to the official ``mcp`` package's streamable HTTP client.
Consent goes through :class:`~agent_identity.LoopbackConsent`, whose ``browser`` is a
headless stand-in (:class:`HeadlessBrowser`) that opens the authorization URL and hands
the redirect to the loopback listener, as a browser would.

How each kind of scenario is expressed (``docs/mcp.md``):

- every user scenario: an MCP-only agent, ``IdentityClient(consent=..., vault=...)``
  without an issuer, entered with ``async with``; ``identity.user(...).mcp_auth(url,
  ...)``. Pre-registered credentials from the suite's context are keyed by the MCP server
  URL (``clients={url: {...}}``): the client cannot know the authorization server before
  discovery;
- client credentials (SEP-1046): ``identity.mcp_auth(url, clients={url: {"client_id": ...,
  "client_secret" or "private_key": ...}})``, the agent as itself;
- cross-app access (SEP-990): the enterprise IdP is the identity client's own issuer;
  ``user.mcp_auth(url, clients={url: {..., "issuer": <MCP AS>}}, cross_app_access=True,
  id_token=...)`` with the ID token the suite provisioned.

Run by the suite (see ``run.py``), or by hand for one scenario::

    MCP_CONFORMANCE_SCENARIO=auth/metadata-default python client.py http://localhost:PORT/mcp
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import traceback
from collections.abc import AsyncIterator, Mapping
from typing import Any, Final
from urllib.parse import urljoin, urlsplit

import anyio
import httpx2
from mcp import types
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from pydantic import SecretStr

from agent_identity import IdentityClient, LoopbackConsent, TokenVault

logger = logging.getLogger("conformance.client")

#: Registered redirect URI (a loopback listener on any port is accepted, RFC 8252 §7.3).
REDIRECT_URI: Final = "http://127.0.0.1/callback"
#: The Client ID Metadata Document URL the suite's ``auth/basic-cimd`` expects.
CIMD_URL: Final = "https://conformance-test.local/client-metadata.json"
CLIENT_NAME: Final = "agent-identity conformance client"
AGENT_NAME: Final = "agent-identity-conformance"
USER: Final = "conformance-user"
#: Finish before the suite's 30 s timeout, so that a hang leaves a traceback.
DEADLINE: Final = 25.0

AGENT_SCENARIOS: Final = frozenset({"auth/client-credentials-basic", "auth/client-credentials-jwt"})
CROSS_APP_SCENARIO: Final = "auth/cross-app-access-complete-flow"


class HeadlessBrowser:
    """Plays the user's browser against the suite's auto-approving authorization server.

    Opens the authorization URL, follows redirects that stay on the authorization
    server's origin, and delivers the redirect to the client's loopback ``redirect_uri``
    (``http://127.0.0.1:<port>/...``) with a GET, as a browser hands it to the agent's
    listener. Anything else (an error page, a redirect elsewhere) is an error.
    """

    def __init__(self, max_steps: int = 10) -> None:
        self.max_steps = max_steps

    async def __call__(self, url: str) -> None:
        origin = _origin(url)
        async with httpx2.AsyncClient(follow_redirects=False, trust_env=False, timeout=10) as http:
            target = url
            for _ in range(self.max_steps):
                response = await http.get(target)
                location = response.headers.get("location")
                if not response.is_redirect or location is None:
                    raise RuntimeError(
                        f"authorization endpoint answered HTTP {response.status_code} "
                        "without a redirect"
                    )
                target = urljoin(target, location)
                if _origin(target) == origin:
                    continue
                parts = urlsplit(target)
                if parts.scheme != "http" or parts.hostname not in ("127.0.0.1", "::1"):
                    raise RuntimeError(f"refusing to follow a redirect to {_origin(target)}")
                logger.info("browser: delivering the authorization response to the listener")
                await http.get(target)
                return
        raise RuntimeError("too many redirects at the authorization server")


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def _context() -> dict[str, Any]:
    raw = os.environ.get("MCP_CONFORMANCE_CONTEXT")
    if not raw:
        return {}
    value = json.loads(raw)
    if not isinstance(value, dict):
        raise RuntimeError("MCP_CONFORMANCE_CONTEXT is not a JSON object")
    return value


def _need(context: Mapping[str, Any], *names: str) -> list[str]:
    missing = [n for n in names if not context.get(n)]
    if missing:
        raise RuntimeError(f"MCP_CONFORMANCE_CONTEXT lacks {', '.join(missing)}")
    return [str(context[n]) for n in names]


def _client_options() -> dict[str, Any]:
    """What every ``IdentityClient`` here shares: an in-memory vault, the headless
    consent, and the dev opt-ins (the suite's servers are ``http://localhost:<port>``)."""
    return {
        "consent": LoopbackConsent(browser=HeadlessBrowser(), timeout=15),
        "vault": TokenVault.memory(),
        "allow_insecure_loopback": True,  # DEV/TEST ONLY: plain http on loopback
        "allow_private_addresses": True,  # DEV/TEST ONLY: server-supplied URLs on loopback
        "timeout": 10.0,
    }


@contextlib.asynccontextmanager
async def mcp_only_identity() -> AsyncIterator[IdentityClient]:
    """An agent that talks only to MCP servers: no authorization server of its own."""
    async with IdentityClient(**_client_options()) as identity:
        yield identity


async def authorization_server_of(server_url: str) -> str:
    """Stand-in for configuration: the authorization server the MCP server names in its
    protected resource metadata (RFC 9728). SEP-990 wants the issuer configured, never
    learned from the resource server; the suite does not put it in the context, so the
    client reads it here, once, the way the official SDK's conformance client does."""
    parts = urlsplit(server_url)
    url = f"{parts.scheme}://{parts.netloc}/.well-known/oauth-protected-resource{parts.path}"
    async with httpx2.AsyncClient(trust_env=False, timeout=10) as http:
        response = await http.get(url)
        response.raise_for_status()
        servers = response.json().get("authorization_servers") or []
    if not servers or not isinstance(servers[0], str):
        raise RuntimeError("the protected resource metadata names no authorization server")
    return servers[0]


async def run_session(server_url: str, auth: httpx2.Auth, scenario: str) -> None:
    """Initialize, list tools and call one (the scenario's own tool where it has one)."""
    async with (
        httpx2.AsyncClient(auth=auth, timeout=20) as http,
        streamable_http_client(server_url, http_client=http) as (read, write),
        ClientSession(read, write, elicitation_callback=_accept_defaults) as session,
    ):
        await session.initialize()
        logger.info("initialized")
        tools = (await session.list_tools()).tools
        logger.info("tools: %s", [tool.name for tool in tools])
        if scenario == "initialize" or not tools:
            return
        name, arguments = tools[0].name, {}
        if scenario == "tools_call":
            name, arguments = "add_numbers", {"a": 5, "b": 3}
        result = await session.call_tool(name, arguments)
        text = " ".join(getattr(c, "text", "") for c in result.content)
        logger.info("tool %s: error=%s %s", name, result.is_error, text[:200])


async def _accept_defaults(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
    """Accept an elicitation with the schema's defaults (SEP-1034)."""
    content: dict[str, Any] = {}
    if isinstance(params, types.ElicitRequestFormParams):
        for name, schema in params.requested_schema.get("properties", {}).items():
            if isinstance(schema, dict) and "default" in schema:
                content[name] = schema["default"]
    return types.ElicitResult(action="accept", content=content)


async def user_flow(server_url: str, scenario: str, context: Mapping[str, Any]) -> None:
    """Authorization code + PKCE for a user: every auth scenario but the extension ones,
    and the non-auth scenarios (whose servers never challenge) with the auth attached."""
    options: dict[str, Any] = {
        "client_id_metadata_url": CIMD_URL,
        "client_name": CLIENT_NAME,
        "redirect_uris": (REDIRECT_URI,),
    }
    if context.get("client_id"):
        # pre-registered credentials, keyed by the MCP server URL (the client cannot know
        # the authorization server before discovery)
        entry = {"client_id": context["client_id"]}
        if context.get("client_secret"):
            entry["client_secret"] = context["client_secret"]
        options["clients"] = {server_url: entry}
    async with mcp_only_identity() as identity:
        user = identity.user(USER)
        async with user.mcp_auth(server_url, **options) as auth:
            await run_session(server_url, auth, scenario)
            logger.info("authorization server used: %s", auth.issuer)


async def agent_flow(server_url: str, scenario: str, context: Mapping[str, Any]) -> None:
    """OAuth client credentials for the agent itself (SEP-1046)."""
    (client_id,) = _need(context, "client_id")
    entry: dict[str, Any] = {"client_id": client_id}
    if scenario == "auth/client-credentials-jwt":
        (entry["private_key"],) = _need(context, "private_key_pem")
    else:
        (entry["client_secret"],) = _need(context, "client_secret")
    async with (
        mcp_only_identity() as identity,
        identity.mcp_auth(server_url, clients={server_url: entry}) as auth,
    ):
        await run_session(server_url, auth, scenario)
        logger.info("authorization server used: %s (%s)", auth.issuer, auth.registration)


async def cross_app_flow(server_url: str, scenario: str, context: Mapping[str, Any]) -> None:
    """SEP-990: the enterprise IdP is the main issuer, where the user signed in; the ID
    token is exchanged there for an ID-JAG, which the MCP server's authorization server
    takes with the jwt-bearer grant (client_secret_basic)."""
    idp_issuer, idp_client_id, id_token, client_id, client_secret = _need(
        context, "idp_issuer", "idp_client_id", "idp_id_token", "client_id", "client_secret"
    )
    entry = {
        "client_id": client_id,
        "client_secret": client_secret,
        # the authorization server these credentials belong to, pinned (SEP-990)
        "issuer": await authorization_server_of(server_url),
    }
    async with IdentityClient(idp_issuer, client_id=idp_client_id, **_client_options()) as idp:
        user = idp.user(USER)
        async with user.mcp_auth(
            server_url,
            clients={server_url: entry},
            cross_app_access=True,
            id_token=SecretStr(id_token),
        ) as auth:
            await run_session(server_url, auth, scenario)


async def main_async(server_url: str, scenario: str) -> None:
    context = _context()
    with anyio.fail_after(DEADLINE):
        if scenario in AGENT_SCENARIOS:
            await agent_flow(server_url, scenario, context)
        elif scenario == CROSS_APP_SCENARIO:
            await cross_app_flow(server_url, scenario, context)
        else:
            await user_flow(server_url, scenario, context)


def _leaf(exc: BaseException) -> BaseException:
    """The first real error inside (nested) exception groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def main(argv: list[str]) -> int:
    logging.basicConfig(
        level=logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    logging.getLogger("agent_identity").setLevel(logging.DEBUG)
    logger.setLevel(logging.DEBUG)
    if len(argv) < 2:
        print(f"usage: {argv[0]} <server URL>", file=sys.stderr)
        return 2
    server_url = argv[-1]
    scenario = os.environ.get("MCP_CONFORMANCE_SCENARIO", "")
    logger.info("scenario %r against %s", scenario, server_url)
    try:
        anyio.run(main_async, server_url, scenario)
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        traceback.print_exc()
        leaf = _leaf(exc)
        print(f"FAILED: {type(leaf).__name__}: {leaf}", file=sys.stderr)
        return 1
    logger.info("done")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
