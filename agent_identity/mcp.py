"""Authorization for MCP servers: an ``httpx2.Auth`` that discovers, registers, consents
and steps up as the MCP authorization specification (revision 2026-07-28) describes.

::

    auth = alice.mcp_auth("https://tools.example.com/mcp")
    async with httpx2.AsyncClient(auth=auth) as http, \\
            streamable_http_client(url, http_client=http) as streams:
        ...
    await auth.aclose()

On the first ``401`` from the MCP server:

1. the ``WWW-Authenticate`` challenge is parsed (``resource_metadata``, ``scope``,
   ``error``); the protected resource metadata (RFC 9728) is fetched from the challenge's
   URL, else from ``/.well-known/oauth-protected-resource/<path>``, then the root
   well-known URI, as server-supplied URLs under the SSRF policy (security items 2, 5);
   its ``resource`` must equal the server URL (item 6); a later challenge naming another
   metadata URL makes it fetched again (item 7);
2. the first of its ``authorization_servers`` is discovered (RFC 8414 order, exact
   issuer, S256 required; items 8-10) through the same guarded transport;
3. a client registration is chosen (item 11): credentials configured for that issuer
   (``clients={issuer: {...}}``), else a Client ID Metadata Document URL when the server
   advertises ``client_id_metadata_document_supported``, else dynamic registration
   (RFC 7591, items 12 and 14) kept encrypted in the vault under kind
   ``mcp-registration`` and the issuer, never used with another server, else
   :class:`~agent_identity.errors.ConfigurationError`;
4. an :class:`~agent_identity.server.AuthorizationServer` for that issuer with the
   registered credentials, built from the metadata just discovered and marked as learned
   (every request to it is vetted as server-supplied, item 2), and a
   :class:`~agent_identity.grant.UserGrant` there with the agent's vault, consent handler,
   clock and audit trail and ``connection=<server URL>``, so the grant is keyed by (tenant,
   user, MCP server, client id); tokens come from its ``token(resource=<server URL>,
   scopes=...)`` with ``resource`` in the authorization, token and refresh requests
   (item 19). Scope: the challenge's ``scope``, else ``scopes_supported``, else none;
   ``offline_access`` only when the authorization server lists it (item 20).

Later: ``401`` refreshes once before any new consent; ``403 insufficient_scope`` asks for
the union of held and challenged scopes, at most ``max_step_ups`` times per request, then
the ``403`` is returned to the caller (item 29); ``401 insufficient_user_authentication``
re-authenticates with the challenge's ``acr_values``/``max_age`` (RFC 9470). The token is
only ever sent to URLs under the server URL (item 23). No lock is held while a request is
in flight: concurrent first requests may discover twice, and the vault's compare-and-swap
keeps a single registration per issuer.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator, Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import httpx2

from agent_identity._http import HttpDriver, TransportPolicy, bearer_challenge, require_token_target
from agent_identity.errors import (
    ConfigurationError,
    ConsentRequired,
    MetadataError,
    ReauthorizationRequired,
    VersionConflict,
)
from agent_identity.grant import UserGrant
from agent_identity.models import AccessToken, ServerMetadata
from agent_identity.oauth import authorize as authz
from agent_identity.oauth import discovery
from agent_identity.oauth._message import HttpRequest
from agent_identity.oauth.registration import (
    ClientRegistration,
    check_client_id_url,
    parse_registration,
    registration_request,
)
from agent_identity.oauth.resource_metadata import (
    ProtectedResourceMetadata,
    check_resource_url,
    parse_resource_metadata,
    resource_metadata_request,
    resource_metadata_urls,
)
from agent_identity.oauth.urls import check_endpoint_url
from agent_identity.oauth.www_authenticate import Challenge
from agent_identity.server import AuthorizationServer

if TYPE_CHECKING:
    from agent_identity.grant import AgentContext


class McpUser(Protocol):
    """Who the MCP requests are for: a :class:`~agent_identity.UserIdentity` (or a grant)."""

    @property
    def tenant(self) -> str: ...

    @property
    def user_id(self) -> str: ...

    @property
    def context(self) -> AgentContext: ...

__all__ = ["REGISTRATION_KIND", "McpAuth"]

logger = logging.getLogger("agent_identity")

#: Vault row kind of dynamic registrations (one row per authorization server issuer).
REGISTRATION_KIND = "mcp-registration"

_DEFAULT_REDIRECT_URIS = ("http://127.0.0.1/callback",)


@dataclass(frozen=True, slots=True)
class _Credentials:
    client_id: str
    client_secret: Any = None
    private_key: Any = None
    source: str = "pre-registered"


class _Session:
    """What was learned about one authorization server for this MCP server."""

    def __init__(
        self,
        *,
        metadata_url: str | None,
        resource_metadata: ProtectedResourceMetadata,
        server: ServerMetadata,
        client: AuthorizationServer,
        user: UserGrant,
        scopes: tuple[str, ...],
        source: str,
    ) -> None:
        self.metadata_url = metadata_url
        self.resource_metadata = resource_metadata
        self.server = server
        self.client = client
        self.user = user
        self.scopes = scopes
        self.source = source

    @property
    def issuer(self) -> str:
        return self.server.issuer


class McpAuth(httpx2.Auth):
    """An ``httpx2.Auth`` authorizing requests to one MCP server as one user.

    Get one with :meth:`UserIdentity.mcp_auth <agent_identity.UserIdentity.mcp_auth>`.

    :param server_url: the MCP endpoint (its canonical form is the RFC 8707 resource).
    :param clients: pre-registered credentials per authorization server issuer:
        ``{issuer: {"client_id": ..., "client_secret": ...}}`` (or ``"private_key"``).
    :param client_id_metadata_url: an https URL serving this client's metadata document
        (see :func:`agent_identity.oauth.registration.client_metadata_document`), used as
        the client id where the authorization server supports it.
    :param dynamic_registration: allow RFC 7591 registration (default ``True``).
    :param client_name: the name registered dynamically.
    :param redirect_uris: redirect URIs registered dynamically (loopback: any port).
    :param max_step_ups: scope or authentication step-ups per request.
    """

    requires_request_body = True

    def __init__(
        self,
        user: McpUser,
        server_url: str,
        *,
        clients: Mapping[str, Mapping[str, Any]] | None = None,
        client_id_metadata_url: str | None = None,
        dynamic_registration: bool = True,
        client_name: str = "agent-identity MCP client",
        redirect_uris: Sequence[str] = _DEFAULT_REDIRECT_URIS,
        max_step_ups: int = 2,
    ) -> None:
        if max_step_ups < 0:
            raise ConfigurationError("max_step_ups must be >= 0")
        self._user = user
        self._context = user.context
        policy = self._context.policy or TransportPolicy()
        self.server_url = check_resource_url(server_url)
        check_endpoint_url(
            self.server_url,
            allow_insecure_loopback=policy.allow_insecure_loopback,
            what="MCP server",
        )
        self._clients: dict[str, _Credentials] = {}
        for issuer, entry in (clients or {}).items():
            client_id = entry.get("client_id")
            if not isinstance(client_id, str) or not client_id:
                raise ConfigurationError(f"clients[{issuer!r}] needs a client_id")
            self._clients[issuer] = _Credentials(
                client_id, entry.get("client_secret"), entry.get("private_key")
            )
        self._cimd_url = (
            check_client_id_url(client_id_metadata_url) if client_id_metadata_url else None
        )
        self._dcr = dynamic_registration
        self._client_name = client_name
        self._redirect_uris = tuple(redirect_uris)
        self._max_step_ups = max_step_ups
        self._driver = HttpDriver(policy)
        self._session: _Session | None = None
        self._clients_by_issuer: dict[str, AuthorizationServer] = {}
        self._source_by_issuer: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"McpAuth(server_url={self.server_url!r}, user={self._user.user_id!r})"

    @property
    def issuer(self) -> str | None:
        """The authorization server in use (``None`` before the first discovery)."""
        return None if self._session is None else self._session.issuer

    async def aclose(self) -> None:
        """Close the HTTP connections of this object."""
        self._clients_by_issuer = {}
        await self._driver.aclose()

    async def __aenter__(self) -> McpAuth:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- httpx2.Auth --------------------------------------------------------------------

    def sync_auth_flow(
        self, request: httpx2.Request
    ) -> Generator[httpx2.Request, httpx2.Response, None]:
        raise ConfigurationError("McpAuth is async: use it with an httpx2.AsyncClient")
        yield request  # pragma: no cover - makes this a generator

    async def async_auth_flow(
        self, request: httpx2.Request
    ) -> AsyncGenerator[httpx2.Request, httpx2.Response]:
        require_token_target(request.url, self.server_url)
        session = self._session
        token: AccessToken | None = None
        if session is not None:
            token = await self._token(session)
            request.headers["Authorization"] = token.authorization_header()
        response = yield request
        refreshed = False
        discovered = False
        step_ups = 0
        while True:
            challenge = bearer_challenge(response)
            error = challenge.error if challenge is not None else None
            status = response.status_code
            if (
                status == 401
                and error == "insufficient_user_authentication"
                and session is not None
                and challenge is not None
                and step_ups < self._max_step_ups
            ):
                step_ups += 1
                token = await self._reauthenticate(session, challenge)
            elif (
                status == 401
                and token is not None
                and session is not None
                and not refreshed
                and not self._names_new_metadata(challenge, session)
            ):
                refreshed = True
                token = await self._refresh(session, token)
            elif status == 401 and not discovered:
                discovered = True
                session = await self._discover(challenge)
                token = await self._token(session)
            elif (
                status == 403
                and error == "insufficient_scope"
                and session is not None
                and challenge is not None
                and challenge.scopes
                and step_ups < self._max_step_ups
            ):
                step_ups += 1
                token = await self._step_up(session, challenge.scopes)
            else:
                return
            request.headers["Authorization"] = token.authorization_header()
            response = yield request

    # -- tokens -------------------------------------------------------------------------

    async def _token(self, session: _Session) -> AccessToken:
        return await session.user.token(resource=self.server_url, scopes=session.scopes)

    async def _refresh(self, session: _Session, rejected: AccessToken) -> AccessToken:
        """A 401 to a token we sent: refresh first, consent only if that cannot work."""
        try:
            return await session.user.refresh_after_rejection(rejected)
        except ReauthorizationRequired:
            return await self._token(session)  # the dead grant was removed: consent
        except ConsentRequired:
            await session.user.consent(scopes=session.scopes, resource=self.server_url)
            return await self._token(session)

    async def _step_up(self, session: _Session, challenged: Sequence[str]) -> AccessToken:
        """RFC 6750 §3.1 ``insufficient_scope``: consent to held plus challenged scopes."""
        session.scopes = authz.scopes_union(session.scopes, challenged)
        grant = await session.user.grant()
        held = grant.scopes if grant is not None else ()
        logger.info("MCP step-up: server=%s scopes=%s", self.server_url, " ".join(session.scopes))
        await session.user.consent(
            scopes=authz.scopes_union(held, session.scopes), resource=self.server_url
        )
        return await self._token(session)

    async def _reauthenticate(self, session: _Session, challenge: Challenge) -> AccessToken:
        acr = challenge.get("acr_values")
        max_age = challenge.get("max_age")
        grant = await session.user.grant()
        held = grant.scopes if grant is not None else ()
        await session.user.consent(
            scopes=authz.scopes_union(held, session.scopes),
            resource=self.server_url,
            acr_values=tuple(acr.split()) if acr else (),
            max_age=int(max_age) if max_age and max_age.isdigit() else None,
        )
        return await self._token(session)

    # -- discovery ----------------------------------------------------------------------

    def _names_new_metadata(self, challenge: Challenge | None, session: _Session) -> bool:
        url = challenge.get("resource_metadata") if challenge is not None else None
        return url is not None and url != session.metadata_url

    async def _discover(self, challenge: Challenge | None) -> _Session:
        named = challenge.get("resource_metadata") if challenge is not None else None
        prm, used = await self._resource_metadata(named)
        issuer = prm.authorization_servers[0]
        policy = self._driver.policy
        check_endpoint_url(
            issuer,
            allow_insecure_loopback=policy.allow_insecure_loopback,
            what="authorization server",
        )
        server = await self._server_metadata(issuer)
        discovery.require_s256(server)
        client = await self._client_for(server)
        await self._drop_foreign_grant(issuer)
        challenged = challenge.scopes if challenge is not None else ()
        scopes = challenged or prm.scopes_supported or ()
        session = _Session(
            metadata_url=used,
            resource_metadata=prm,
            server=server,
            client=client,
            user=UserGrant(
                self._context,
                client,
                tenant=self._user.tenant,
                user_id=self._user.user_id,
                connection=self.server_url,
            ),
            scopes=tuple(scopes),
            source=self._source_by_issuer.get(issuer, "?"),
        )
        previous = self._session
        if previous is not None and previous.issuer == issuer:
            session.scopes = authz.scopes_union(previous.scopes, session.scopes)
        self._session = session
        logger.info(
            "MCP server %s uses authorization server %s (%s client)",
            self.server_url,
            issuer,
            session.source,
        )
        return session

    async def _resource_metadata(self, named: str | None) -> tuple[ProtectedResourceMetadata, str]:
        urls: list[str] = []
        if named is not None:
            check_endpoint_url(
                named,
                allow_insecure_loopback=self._driver.policy.allow_insecure_loopback,
                what="resource_metadata",
            )
            urls.append(named)
        urls += [u for u in resource_metadata_urls(self.server_url) if u not in urls]
        for url in urls:
            response = await self._driver.send(resource_metadata_request(url))
            found = parse_resource_metadata(response, resource=self.server_url)
            if found is not None:
                return found, url
        raise MetadataError(f"no protected resource metadata found for {self.server_url}")

    async def _server_metadata(self, issuer: str) -> ServerMetadata:
        policy = self._driver.policy
        for url in discovery.metadata_urls(issuer):
            response = await self._driver.send(
                HttpRequest("GET", url, server_supplied=True, idempotent=True)
            )
            found = discovery.parse_metadata(
                response, issuer=issuer, allow_insecure_loopback=policy.allow_insecure_loopback
            )
            if found is not None:
                return found
        raise MetadataError(f"no authorization server metadata found for issuer {issuer!r}")

    # -- registration -------------------------------------------------------------------

    async def _client_for(self, server: ServerMetadata) -> AuthorizationServer:
        issuer = server.issuer
        existing = self._clients_by_issuer.get(issuer)
        if existing is not None:
            return existing
        credentials = await self._credentials(server)
        options = self._context.server_options
        client = AuthorizationServer(
            issuer,
            client_id=credentials.client_id,
            client_secret=credentials.client_secret,
            private_key=credentials.private_key,
            metadata=server,  # just discovered and validated: not fetched again
            learned=True,  # named by the MCP server: every request is vetted (item 2)
            http=self._driver,
            clock=self._context.clock,
            leeway=options.get("leeway", 60.0),
            use_par=options.get("use_par"),
            lease_ttl=options.get("lease_ttl"),
        )
        self._source_by_issuer[issuer] = credentials.source
        return self._clients_by_issuer.setdefault(issuer, client)

    async def _credentials(self, server: ServerMetadata) -> _Credentials:
        """Security item 11: pre-registered, then CIMD, then RFC 7591, then an error."""
        issuer = server.issuer
        configured = self._clients.get(issuer)
        if configured is not None:
            return configured
        if self._cimd_url is not None and server.client_id_metadata_document_supported:
            return _Credentials(self._cimd_url, source="client-id-metadata-document")
        if self._dcr and server.registration_endpoint is not None:
            registration = await self._registration(server)
            return _Credentials(
                registration.client_id, registration.client_secret, source="dynamic"
            )
        raise ConfigurationError(
            f"no client registration for authorization server {issuer!r}: it supports neither "
            "a client id metadata document you configured nor dynamic registration; register "
            "a client there and pass clients={issuer: {'client_id': ...}} to mcp_auth()"
        )

    async def _registration(self, server: ServerMetadata) -> ClientRegistration:
        """The stored RFC 7591 registration for this issuer, or a new one (items 12, 14)."""
        vault = self._context.vault
        issuer = server.issuer
        now = self._context.clock.time()
        for _ in range(3):
            stored = await vault.get_blob(REGISTRATION_KIND, issuer)
            if stored is not None:
                registration = ClientRegistration.from_bytes(stored.data)
                if registration.issuer == issuer and not registration.expired(now):
                    return registration
            registration = await self._register(server)
            try:
                await vault.put_blob(
                    REGISTRATION_KIND,
                    issuer,
                    registration.to_bytes(),
                    expected_version=stored.version if stored is not None else 0,
                )
            except VersionConflict:
                continue  # another task or process registered meanwhile: use theirs
            logger.info(
                "registered dynamically at %s: client_id=%s", issuer, registration.client_id
            )
            return registration
        raise VersionConflict("the stored registration kept changing")

    async def _register(self, server: ServerMetadata) -> ClientRegistration:
        assert server.registration_endpoint is not None
        supported = server.token_endpoint_auth_methods_supported
        method = "none"
        for candidate in ("client_secret_basic", "client_secret_post"):
            if supported is None or candidate in supported:
                method = candidate
                break
        request = registration_request(
            server.registration_endpoint,
            redirect_uris=self._redirect_uris,
            client_name=self._client_name,
            token_endpoint_auth_method=method,
            allow_insecure_loopback=self._driver.policy.allow_insecure_loopback,
        )
        return parse_registration(await self._driver.send(request), issuer=server.issuer)

    async def _drop_foreign_grant(self, issuer: str) -> None:
        """A grant stored for this MCP server by another authorization server is useless
        here and its refresh token must never reach this one (item 12, 23): remove it."""
        vault = self._context.vault
        for key in await vault.grants(self._user.tenant, self._user.user_id):
            if key.connection != self.server_url:
                continue
            current = await vault.load(key, fresh=True)
            if current is not None and current.record.issuer != issuer:
                logger.info(
                    "MCP server %s moved from %s to %s: dropping the old grant",
                    self.server_url,
                    current.record.issuer,
                    issuer,
                )
                with contextlib.suppress(VersionConflict):
                    await vault.delete(key, expected_version=current.version)
