"""Authorization for MCP servers: an ``httpx2.Auth`` that discovers, registers, consents
and steps up as the MCP authorization specification (revision 2026-07-28) describes.

::

    auth = alice.mcp_auth("https://tools.example.com/mcp")      # as alice (a user)
    auth = identity.mcp_auth("https://tools.example.com/mcp",   # as the agent itself
                             clients={url: {"client_id": ..., "private_key": ...}})
    async with auth, httpx2.AsyncClient(auth=auth) as http, \\
            streamable_http_client(url, http_client=http) as streams:
        ...

Three modes, one discovery:

- **user** (:meth:`UserIdentity.mcp_auth <agent_identity.UserIdentity.mcp_auth>`): the
  authorization code flow with PKCE, the user's consent, tokens in the vault;
- **agent** (:meth:`IdentityClient.mcp_auth <agent_identity.IdentityClient.mcp_auth>`):
  the agent as itself, OAuth client credentials (MCP extension SEP-1046) with
  ``client_secret_basic``/``_post`` or ``private_key_jwt``, no user;
- **cross-app access** (``user.mcp_auth(url, cross_app_access=True)``, MCP extension
  SEP-990, enterprise-managed authorization): the user's ID token from the identity
  client's own authorization server (the enterprise IdP) is exchanged there for an
  Identity Assertion JWT Authorization Grant (ID-JAG, RFC 8693 with
  ``requested_token_type=urn:ietf:params:oauth:token-type:id-jag``), presented at the MCP
  server's authorization server with the JWT bearer grant (RFC 7523 §2.1); no consent
  screen per server.

On the first ``401`` from the MCP server:

1. the ``WWW-Authenticate`` challenge is parsed (``resource_metadata``, ``scope``,
   ``error``); the protected resource metadata (RFC 9728) is fetched from the challenge's
   URL (its ``resource`` must be the server URL exactly), else from
   ``/.well-known/oauth-protected-resource/<path>`` (the server URL), then the root
   well-known URI (the origin, or the server URL), as server-supplied URLs under the SSRF
   policy (security items 2, 5, 6); a later challenge naming another metadata URL makes
   it fetched again (item 7). A server without any (the 2025-03-26 revision) is read at
   its origin: ``/.well-known/oauth-authorization-server`` (an issuer on that origin),
   else the default endpoints ``/authorize``, ``/token`` and ``/register``;
2. the first of its ``authorization_servers`` is discovered (RFC 8414 order, exact
   issuer, S256 required for the code flow; items 8-10) through the same guarded
   transport, once per discovery;
3. a client registration is chosen (item 11): credentials configured for that MCP server
   URL or that issuer (``clients={url_or_issuer: {...}}``; an entry may pin the issuer it
   belongs to, and is then never sent to another), else (user mode) a Client ID Metadata
   Document URL when the server advertises ``client_id_metadata_document_supported``,
   else (user mode) dynamic registration (RFC 7591, items 12-14) kept encrypted in the
   vault under kind ``mcp-registration`` and the issuer, never used with another server,
   else :class:`~agent_identity.errors.ConfigurationError`. In agent mode the identity
   client's own credentials serve when the MCP server names its own issuer;
4. an :class:`~agent_identity.server.AuthorizationServer` for that issuer with the
   registered credentials and redirect URIs, built from the metadata just discovered and
   marked as learned (every request to it is vetted as server-supplied, item 2); then,
   by mode, a :class:`~agent_identity.grant.UserGrant` there with ``connection=<server
   URL>`` (tokens from ``token(resource=<server URL>, scopes=...)``, ``resource`` in the
   authorization, token and refresh requests, item 19), the agent's client credentials
   tokens, or cross-app access tokens (cached in memory until near expiry). Scope: the
   challenge's ``scope``, else ``scopes_supported``, else none; ``offline_access`` only
   when the authorization server lists it (item 20).

Later: ``401`` to a token we sent refreshes once (user mode; a new token otherwise)
before any new consent; ``403 insufficient_scope`` asks for the union of held and
challenged scopes and ``401 insufficient_user_authentication`` re-authenticates with the
challenge's ``acr_values``/``max_age`` (RFC 9470, user modes), at most ``max_step_ups``
times per operation (the JSON-RPC method and tool, prompt or resource; counted across
requests until the operation is answered otherwise), then
:class:`~agent_identity.errors.StepUpLimitExceeded` is raised (item 29). The token is only
ever sent to URLs under the server URL (item 23). No lock is held while a request is in
flight: concurrent first requests may discover twice, and the vault's compare-and-swap
keeps a single registration per issuer.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol

import anyio
import httpx2
from pydantic import SecretStr

from agent_identity._http import HttpDriver, TransportPolicy
from agent_identity._resource_auth import (
    StepUpBudget,
    bearer_challenge,
    check_max_step_ups,
    present_token,
    require_token_target,
    wants_new_nonce,
)
from agent_identity.errors import (
    AgentIdentityError,
    ConfigurationError,
    ConsentRequired,
    InvalidResponse,
    MetadataError,
    ReauthorizationRequired,
    VersionConflict,
)
from agent_identity.grant import AgentTokens, UserGrant, policy_problem
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
    legacy_default_metadata,
    legacy_metadata_url,
    parse_legacy_metadata,
    parse_resource_metadata,
    resource_metadata_candidates,
    resource_metadata_request,
)
from agent_identity.oauth.urls import canonical_resource_uri, check_endpoint_url
from agent_identity.oauth.www_authenticate import Challenge
from agent_identity.server import AuthorizationServer, token_facts

if TYPE_CHECKING:
    from agent_identity.grant import AgentContext
    from agent_identity.oauth.dpop import DPoPSigner

__all__ = ["REGISTRATION_KIND", "IdTokenSource", "McpAuth", "McpMode", "McpUser"]

logger = logging.getLogger("agent_identity")

#: Vault row kind of dynamic registrations (one row per authorization server issuer).
REGISTRATION_KIND = "mcp-registration"

McpMode = Literal["user", "agent", "cross-app"]
#: Where cross-app access gets the user's ID token: a value, or an async callable that
#: returns a current one (called for every new identity assertion grant).
IdTokenSource = SecretStr | str | Callable[[], Awaitable[SecretStr | str]]

_DEFAULT_REDIRECT_URIS = ("http://127.0.0.1/callback",)
_ENTRY_MEMBERS: Final = frozenset(
    {
        "client_id",
        "client_secret",
        "private_key",
        "token_endpoint_auth_method",
        "issuer",
        "redirect_uris",
    }
)


class McpUser(Protocol):
    """Who the MCP requests are for: a :class:`~agent_identity.UserIdentity` (or a grant)."""

    @property
    def tenant(self) -> str: ...

    @property
    def user_id(self) -> str: ...

    @property
    def context(self) -> AgentContext: ...


@dataclass(frozen=True, slots=True)
class _Credentials:
    """A client registration at one authorization server. ``repr`` shows no secret."""

    client_id: str
    client_secret: SecretStr | None = None
    private_key: Any = None
    token_endpoint_auth_method: str | None = None
    #: configured credentials: the issuer they belong to (a pin), when known
    issuer: str | None = None
    #: the redirect URIs registered with them, when known (checked before consent)
    redirect_uris: tuple[str, ...] | None = None
    source: str = "pre-registered"

    def __repr__(self) -> str:
        return (
            f"_Credentials(client_id={self.client_id!r}, source={self.source!r}, "
            f"issuer={self.issuer!r}, has_secret={self.client_secret is not None}, "
            f"has_private_key={self.private_key is not None})"
        )


def _credentials_entry(key: str, entry: Mapping[str, Any]) -> _Credentials:
    """Validate one ``clients`` entry (names the key, never a value, in errors)."""
    if not isinstance(entry, Mapping):
        raise ConfigurationError(f"clients[{key!r}] must be a mapping")
    unknown = sorted(set(entry) - _ENTRY_MEMBERS)
    if unknown:
        raise ConfigurationError(
            f"clients[{key!r}] has unknown members {', '.join(map(repr, unknown))} (known: "
            f"{', '.join(sorted(_ENTRY_MEMBERS))})"
        )
    client_id = entry.get("client_id")
    if not isinstance(client_id, str) or not client_id:
        raise ConfigurationError(f"clients[{key!r}] needs a client_id")
    secret = entry.get("client_secret")
    if secret is not None and not isinstance(secret, str | SecretStr):
        raise ConfigurationError(f"clients[{key!r}]['client_secret'] must be a string")
    if isinstance(secret, str):
        secret = SecretStr(secret)
    if secret is not None and not secret.get_secret_value():
        raise ConfigurationError(f"clients[{key!r}]['client_secret'] is empty")
    private_key = entry.get("private_key")
    if secret is not None and private_key is not None:
        raise ConfigurationError(f"clients[{key!r}]: give client_secret or private_key, not both")
    method = entry.get("token_endpoint_auth_method")
    if method is not None and (not isinstance(method, str) or not method):
        raise ConfigurationError(f"clients[{key!r}]['token_endpoint_auth_method'] is invalid")
    issuer = entry.get("issuer")
    if issuer is not None and (not isinstance(issuer, str) or not issuer):
        raise ConfigurationError(f"clients[{key!r}]['issuer'] must be an issuer URL")
    uris = entry.get("redirect_uris")
    redirect_uris: tuple[str, ...] | None = None
    if uris is not None:
        if isinstance(uris, str) or not all(isinstance(u, str) and u for u in uris):
            raise ConfigurationError(f"clients[{key!r}]['redirect_uris'] must be a list of URIs")
        redirect_uris = tuple(uris)
    return _Credentials(
        client_id,
        secret,
        private_key,
        token_endpoint_auth_method=method,
        issuer=issuer,
        redirect_uris=redirect_uris,
    )


class _Clients:
    """Configured credentials, keyed by MCP server URL or by authorization server issuer
    (issue 11: keyed by issuer only, an unmatched key was silently ignored)."""

    def __init__(self, clients: Mapping[str, Mapping[str, Any]] | None) -> None:
        self.by_url: dict[str, _Credentials] = {}
        self.by_key: dict[str, _Credentials] = {}
        self._canonical: dict[str, str] = {}
        if clients is None:
            return
        if not isinstance(clients, Mapping):
            raise ConfigurationError("clients must be a mapping {server URL or issuer: {...}}")
        for key, entry in clients.items():
            if not isinstance(key, str) or not key:
                raise ConfigurationError("clients keys must be MCP server URLs or issuers")
            try:
                canonical = canonical_resource_uri(key)
            except ConfigurationError:
                raise ConfigurationError(
                    f"clients key {key[:200]!r} is neither an MCP server URL nor an issuer URL"
                ) from None
            credentials = _credentials_entry(key, entry)
            self.by_key[key] = credentials
            self._canonical[key] = canonical
            self.by_url.setdefault(canonical, credentials)

    def __bool__(self) -> bool:
        return bool(self.by_key)

    def for_server(self, server_url: str) -> _Credentials | None:
        return self.by_url.get(server_url)

    def for_issuer(self, issuer: str) -> _Credentials | None:
        found = self.by_key.get(issuer)
        if found is not None and found.issuer not in (None, issuer):
            raise ConfigurationError(
                f"clients[{issuer!r}] pins another issuer ({found.issuer!r}); an entry keyed "
                "by issuer belongs to that issuer"
            )
        return found

    def unmatched(self, server_url: str, issuer: str) -> list[str]:
        """Keys that name neither ``server_url`` nor ``issuer``."""
        return [key for key in self.by_key if key != issuer and self._canonical[key] != server_url]


class _Source(Protocol):
    """Where one mode gets its tokens for the MCP server."""

    can_reauthenticate: bool

    async def token(self, scopes: Sequence[str]) -> AccessToken: ...

    async def after_rejection(
        self, rejected: AccessToken, scopes: Sequence[str]
    ) -> AccessToken: ...

    async def step_up(self, scopes: Sequence[str]) -> AccessToken: ...

    async def reauthenticate(
        self, scopes: Sequence[str], acr_values: tuple[str, ...], max_age: int | None
    ) -> AccessToken: ...


class _UserSource:
    """User mode: a grant at the MCP server's authorization server (code flow + PKCE)."""

    can_reauthenticate = True

    def __init__(self, grant: UserGrant, resource: str) -> None:
        self.grant = grant
        self.resource = resource

    async def token(self, scopes: Sequence[str]) -> AccessToken:
        return await self.grant.token(resource=self.resource, scopes=scopes)

    async def after_rejection(self, rejected: AccessToken, scopes: Sequence[str]) -> AccessToken:
        """A 401 to a token we sent: refresh first, consent only if that cannot work."""
        try:
            return await self.grant.refresh_after_rejection(rejected)
        except ReauthorizationRequired:
            return await self.token(scopes)  # the dead grant was removed: consent
        except ConsentRequired:
            await self.grant.consent(scopes=scopes, resource=self.resource)
            return await self.token(scopes)

    async def _held(self) -> tuple[str, ...]:
        grant = await self.grant.grant()
        return grant.scopes if grant is not None else ()

    async def step_up(self, scopes: Sequence[str]) -> AccessToken:
        """RFC 6750 §3.1 ``insufficient_scope``: consent to held plus challenged scopes."""
        held = await self._held()
        await self.grant.consent(scopes=authz.scopes_union(held, scopes), resource=self.resource)
        return await self.token(scopes)

    async def reauthenticate(
        self, scopes: Sequence[str], acr_values: tuple[str, ...], max_age: int | None
    ) -> AccessToken:
        """RFC 9470: authenticate again with the challenge's ``acr_values``/``max_age``."""
        held = await self._held()
        await self.grant.consent(
            scopes=authz.scopes_union(held, scopes),
            resource=self.resource,
            acr_values=acr_values,
            max_age=max_age,
        )
        return await self.token(scopes)


class _AgentSource:
    """Agent mode: OAuth client credentials (SEP-1046), cached until near expiry."""

    can_reauthenticate = False

    def __init__(self, tokens: AgentTokens, resource: str) -> None:
        self.tokens = tokens
        self.resource = resource

    async def token(self, scopes: Sequence[str]) -> AccessToken:
        return await self.tokens.token(scopes=scopes, resource=self.resource)

    async def after_rejection(self, rejected: AccessToken, scopes: Sequence[str]) -> AccessToken:
        return await self.tokens.token(scopes=scopes, resource=self.resource, refresh=True)

    async def step_up(self, scopes: Sequence[str]) -> AccessToken:
        return await self.tokens.token(scopes=scopes, resource=self.resource, refresh=True)

    async def reauthenticate(
        self, scopes: Sequence[str], acr_values: tuple[str, ...], max_age: int | None
    ) -> AccessToken:  # pragma: no cover - can_reauthenticate is False
        raise ConfigurationError("an agent acting as itself has no user to authenticate")


class _CrossAppSource:
    """Cross-app access (SEP-990): ID token -> ID-JAG at the enterprise IdP (RFC 8693),
    ID-JAG -> access token at the MCP server's authorization server (RFC 7523 §2.1)."""

    can_reauthenticate = False

    def __init__(
        self,
        *,
        main: UserGrant,
        server: AuthorizationServer,
        resource: str,
        id_token: IdTokenSource | None,
    ) -> None:
        self.main = main
        self.server = server
        self.resource = resource
        self._id_token = id_token
        self._context = main.context
        self._tokens: dict[frozenset[str], AccessToken] = {}
        self._lock = anyio.Lock(fast_acquire=True)
        # The DPoP key of the tokens from the MCP server's authorization server (RFC 9449),
        # made on first use when that server binds tokens or the agent asked for DPoP.
        self._dpop: DPoPSigner | None = None

    async def token(self, scopes: Sequence[str]) -> AccessToken:
        return await self._get(scopes, fresh=False)

    async def after_rejection(self, rejected: AccessToken, scopes: Sequence[str]) -> AccessToken:
        return await self._get(scopes, fresh=True)

    async def step_up(self, scopes: Sequence[str]) -> AccessToken:
        return await self._get(scopes, fresh=True)

    async def reauthenticate(
        self, scopes: Sequence[str], acr_values: tuple[str, ...], max_age: int | None
    ) -> AccessToken:  # pragma: no cover - can_reauthenticate is False
        raise ConfigurationError("cross-app access cannot re-authenticate the user here")

    async def _subject(self) -> SecretStr:
        source = self._id_token
        if source is None:
            return await self.main.id_token()
        value = await source() if callable(source) else source
        if isinstance(value, str):
            value = SecretStr(value)
        if not isinstance(value, SecretStr) or not value.get_secret_value():
            raise ConfigurationError("the id_token for cross-app access is empty")
        return value

    async def _get(self, scopes: Sequence[str], *, fresh: bool) -> AccessToken:
        from agent_identity.oauth.exchange import ID_JAG_TOKEN_TYPE, ID_TOKEN_TYPE

        wanted = tuple(scopes)
        key = frozenset(wanted)
        async with self._lock:
            cached = None if fresh else self._tokens.get(key)
            if cached is not None and not self._context.expiring(cached):
                return cached
            idp = self.main.server
            await idp.discover()
            grant = await idp.token_exchange(
                subject_token=await self._subject(),
                subject_token_type=ID_TOKEN_TYPE,
                requested_token_type=ID_JAG_TOKEN_TYPE,
                audience=self.server.issuer,
                resource=self.resource,
                scopes=wanted,
            )
            if grant.issued_token_type != ID_JAG_TOKEN_TYPE:
                raise InvalidResponse(
                    f"{idp.issuer} issued a {str(grant.issued_token_type)[:80]!r} token, not an "
                    "identity assertion grant (urn:ietf:params:oauth:token-type:id-jag)"
                )
            if self._dpop is None and self.server.uses_dpop:
                self._dpop = await self.server.new_dpop_signer()
            response = await self.server.jwt_bearer(
                grant.access_token, scopes=wanted, resource=self.resource, dpop=self._dpop
            )
            facts = token_facts(response, wanted)
            problem = policy_problem(
                self._context, *facts, resource=self.resource, requested=wanted
            )
            if problem is not None:
                raise problem
            token = self.server.describe(
                response, resource=self.resource, requested=wanted, dpop=self._dpop, facts=facts
            )
            self._tokens[key] = token
            await self._context.emit(
                "token.exchanged",
                issuer=self.server.issuer,
                token=token,
                tenant=self.main.tenant,
                user=self.main.user_id,
                scopes_requested=wanted,
                actors=(self.server.client_id,),
            )
            logger.info(
                "cross-app access: %s via %s -> %s (scopes %s)",
                self.resource,
                idp.issuer,
                self.server.issuer,
                " ".join(token.scopes) or "-",
            )
            return token


class _Session:
    """What was learned about one authorization server for this MCP server."""

    def __init__(
        self,
        *,
        metadata_url: str | None,
        resource_metadata: ProtectedResourceMetadata | None,
        server: ServerMetadata,
        client: AuthorizationServer,
        source: _Source,
        scopes: tuple[str, ...],
        registration: str,
    ) -> None:
        self.metadata_url = metadata_url
        self.resource_metadata = resource_metadata
        self.server = server
        self.client = client
        self.source = source
        self.scopes = scopes
        self.registration = registration

    @property
    def issuer(self) -> str:
        return self.server.issuer


class McpAuth(httpx2.Auth):
    """An ``httpx2.Auth`` authorizing requests to one MCP server, as one user or as the
    agent itself.

    Get one with :meth:`UserIdentity.mcp_auth <agent_identity.UserIdentity.mcp_auth>` (a
    user; cross-app access with ``cross_app_access=True``) or
    :meth:`IdentityClient.mcp_auth <agent_identity.IdentityClient.mcp_auth>` (the agent
    as itself, OAuth client credentials).

    :param user: the user, or ``None`` for the agent itself (then ``context`` is needed).
    :param server_url: the MCP endpoint (its canonical form is the RFC 8707 resource).
    :param context: the agent's context when ``user`` is ``None``.
    :param clients: pre-registered credentials, keyed by the MCP server URL or by the
        authorization server's issuer: ``{url_or_issuer: {"client_id": ...,
        "client_secret": ...}}`` (or ``"private_key"`` for ``private_key_jwt``; optional
        ``"token_endpoint_auth_method"``, ``"redirect_uris"`` and, for an entry keyed by
        URL, ``"issuer"``: the authorization server the credentials belong to, never sent
        to another). Credentials keyed by URL without ``issuer`` go to whatever
        authorization server the MCP server names. When no key matches the server URL or
        the issuer it names, :class:`~agent_identity.errors.ConfigurationError` is raised
        rather than registering another client.
    :param shared_clients: the same, shared by every MCP server of the identity client
        (``IdentityClient(mcp={"clients": ...})``): entries for other servers are not an
        error here.
    :param client_id_metadata_url: an https URL serving this client's metadata document
        (see :func:`agent_identity.oauth.registration.client_metadata_document`), used as
        the client id where the authorization server supports it (user modes).
    :param dynamic_registration: allow RFC 7591 registration (default ``True``; user mode).
    :param client_name: the name registered dynamically.
    :param redirect_uris: redirect URIs registered dynamically or listed in the client id
        metadata document (loopback: any port). The consent handler's redirect URI must be
        one of the registered ones before the user is sent anywhere.
    :param max_step_ups: scope or authentication step-ups per operation before
        :class:`~agent_identity.errors.StepUpLimitExceeded`.
    :param legacy_discovery: fall back to the 2025-03-26 revision (authorization server
        metadata at the MCP server's origin, else its default endpoints) when the server
        has no protected resource metadata (default ``True``).
    :param cross_app_access: enterprise-managed authorization (SEP-990) instead of a
        consent: needs a user of an identity client whose own issuer is the enterprise
        IdP, and credentials at the MCP server's authorization server pinned to its issuer
        (keyed by it, or with ``"issuer"``).
    :param id_token: the user's ID token for cross-app access: a value or an async
        callable returning a current one. Default: the one kept from the user's latest
        sign-in at the identity client's issuer (:meth:`UserGrant.id_token
        <agent_identity.grant.UserGrant.id_token>`).
    :param own_server: the identity client's own authorization server (set by
        :meth:`IdentityClient.mcp_auth <agent_identity.IdentityClient.mcp_auth>`): in agent
        mode its credentials serve when the MCP server names it and no entry of
        ``clients`` does.
    """

    requires_request_body = True

    def __init__(
        self,
        user: McpUser | None,
        server_url: str,
        *,
        context: AgentContext | None = None,
        clients: Mapping[str, Mapping[str, Any]] | None = None,
        shared_clients: Mapping[str, Mapping[str, Any]] | None = None,
        client_id_metadata_url: str | None = None,
        dynamic_registration: bool = True,
        client_name: str = "agent-identity MCP client",
        redirect_uris: Sequence[str] = _DEFAULT_REDIRECT_URIS,
        max_step_ups: int = 2,
        legacy_discovery: bool = True,
        cross_app_access: bool = False,
        id_token: IdTokenSource | None = None,
        own_server: AuthorizationServer | None = None,
    ) -> None:
        check_max_step_ups(max_step_ups)
        if user is not None:
            context = user.context
        elif context is None:
            raise ConfigurationError("McpAuth needs a user, or the agent's context")
        self._user = user
        self._context: AgentContext = context
        self.mode: McpMode = "agent" if user is None else "user"
        self._main: UserGrant | None = None
        if cross_app_access:
            if user is None:
                raise ConfigurationError(
                    "cross-app access acts for a user: use user.mcp_auth(url, "
                    "cross_app_access=True)"
                )
            self._main = _main_grant(user)
            self.mode = "cross-app"
        if id_token is not None:
            if not cross_app_access:
                raise ConfigurationError("id_token is only used with cross_app_access=True")
            if not isinstance(id_token, SecretStr | str) and not callable(id_token):
                raise ConfigurationError("id_token must be a SecretStr, a str or an async callable")
        self._id_token = id_token
        policy = self._context.policy or TransportPolicy()
        self.server_url = check_resource_url(server_url)
        check_endpoint_url(
            self.server_url,
            allow_insecure_loopback=policy.allow_insecure_loopback,
            what="MCP server",
        )
        self._clients = _Clients(clients)  # a key that matches nothing is an error
        self._shared = _Clients(shared_clients)  # entries for other servers are expected
        if self.mode == "cross-app" and not (self._clients or self._shared):
            raise ConfigurationError(
                "cross-app access needs credentials at the MCP server's authorization server, "
                "pinned to its issuer: clients={issuer: {'client_id': ..., 'client_secret': "
                "...}} or clients={server_url: {..., 'issuer': issuer}}"
            )
        self._cimd_url = (
            check_client_id_url(client_id_metadata_url) if client_id_metadata_url else None
        )
        self._dcr = dynamic_registration
        self._client_name = client_name
        if isinstance(redirect_uris, str) or not redirect_uris:
            raise ConfigurationError("redirect_uris must be a non-empty sequence of URIs")
        self._redirect_uris = tuple(redirect_uris)
        self._max_step_ups = max_step_ups
        self._legacy = legacy_discovery
        self._own_server = own_server
        self._driver = HttpDriver(policy)
        self._session: _Session | None = None
        self._clients_by_issuer: dict[str, AuthorizationServer] = {}
        self._registration_by_issuer: dict[str, str] = {}
        #: step-ups per operation, until the operation is answered otherwise (item 29)
        self._step_ups = StepUpBudget()

    def __repr__(self) -> str:
        who = self._user.user_id if self._user is not None else None
        return f"McpAuth(server_url={self.server_url!r}, mode={self.mode!r}, user={who!r})"

    @property
    def issuer(self) -> str | None:
        """The authorization server in use (``None`` before the first discovery)."""
        return None if self._session is None else self._session.issuer

    @property
    def registration(self) -> str | None:
        """How the client is registered there: ``"pre-registered"``, ``"own"`` (the
        identity client's own credentials), ``"client-id-metadata-document"`` or
        ``"dynamic"`` (``None`` before the first discovery)."""
        return None if self._session is None else self._session.registration

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
            token = await session.source.token(session.scopes)
            await present_token(request, token)
        response = yield request
        refreshed = False
        discovered = False
        nonce_retried = False
        while True:
            if token is not None and wants_new_nonce(response, token) and not nonce_retried:
                # RFC 9449 §9: the MCP server wants a proof with its nonce: once.
                nonce_retried = True
                await present_token(request, token)
                response = yield request
                continue
            dpop = token is not None and token.dpop_bound
            challenge = bearer_challenge(response, prefer="dpop" if dpop else "bearer")
            error = challenge.error if challenge is not None else None
            if error == "use_dpop_nonce" and nonce_retried:
                return  # a second nonce refusal: the token is fine, no refresh, no rediscovery
            status = response.status_code
            reauthenticate = status == 401 and error == "insufficient_user_authentication"
            more_scope = (
                status == 403
                and error == "insufficient_scope"
                and challenge is not None
                and bool(challenge.scopes)
            )
            if (
                (reauthenticate or more_scope)
                and session is not None
                and challenge is not None
                and (more_scope or session.source.can_reauthenticate)
            ):
                token = await self._step_up(session, challenge, _operation(request), status)
            elif (
                status == 401
                and token is not None
                and session is not None
                and not refreshed
                and not self._names_new_metadata(challenge, session)
            ):
                refreshed = True
                token = await session.source.after_rejection(token, session.scopes)
            elif status == 401 and not discovered:
                discovered = True
                session = await self._discover(challenge)
                token = await session.source.token(session.scopes)
            else:
                if self._step_ups and not (reauthenticate or more_scope):
                    # answered otherwise: a new budget (the body is read only when counting)
                    self._step_ups.reset(_operation(request))
                return
            await present_token(request, token)
            response = yield request

    async def _step_up(
        self, session: _Session, challenge: Challenge, operation: str, status: int
    ) -> AccessToken:
        self._step_ups.charge(
            operation, challenge, status, resource=self.server_url, limit=self._max_step_ups
        )
        if status == 403:
            session.scopes = authz.scopes_union(session.scopes, challenge.scopes)
            logger.info(
                "MCP step-up: server=%s operation=%s scopes=%s",
                self.server_url,
                operation,
                " ".join(session.scopes),
            )
            return await session.source.step_up(session.scopes)
        acr = challenge.get("acr_values")
        logger.info("MCP re-authentication: server=%s operation=%s", self.server_url, operation)
        # max_age by the bounded-number rule (ASCII digits, clamped to a year): "²" or a
        # 400-digit value is not a crash (security items 7, 30)
        return await session.source.reauthenticate(
            session.scopes, tuple(acr.split()) if acr else (), challenge.max_age
        )

    # -- discovery ----------------------------------------------------------------------

    def _names_new_metadata(self, challenge: Challenge | None, session: _Session) -> bool:
        url = challenge.get("resource_metadata") if challenge is not None else None
        return url is not None and url != session.metadata_url

    async def _discover(self, challenge: Challenge | None) -> _Session:
        policy = self._driver.policy
        named = challenge.get("resource_metadata") if challenge is not None else None
        found = await self._resource_metadata(named)
        prm: ProtectedResourceMetadata | None = None
        used: str | None = None
        if found is not None:
            prm, used = found
            issuer = prm.authorization_servers[0]
            check_endpoint_url(
                issuer,
                allow_insecure_loopback=policy.allow_insecure_loopback,
                what="authorization server",
            )
            server = await self._server_metadata(issuer)
        elif self._legacy:
            server = await self._legacy_server_metadata()
        else:
            raise MetadataError(
                f"no protected resource metadata found for {self.server_url} (the 2025-03-26 "
                "fallback is off: legacy_discovery=False)"
            )
        issuer = server.issuer
        if self.mode == "user":
            discovery.require_s256(server)
        client = await self._client_for(server)
        challenged = challenge.scopes if challenge is not None else ()
        scopes = tuple(challenged or (prm.scopes_supported if prm is not None else None) or ())
        source: _Source
        if self.mode == "user":
            assert self._user is not None
            await self._drop_foreign_grant(issuer)
            grant = UserGrant(
                self._context,
                client,
                tenant=self._user.tenant,
                user_id=self._user.user_id,
                connection=self.server_url,
            )
            source = _UserSource(grant, self.server_url)
        elif self.mode == "agent":
            source = _AgentSource(AgentTokens(self._context, client), self.server_url)
        else:
            assert self._main is not None
            source = _CrossAppSource(
                main=self._main, server=client, resource=self.server_url, id_token=self._id_token
            )
        session = _Session(
            metadata_url=used,
            resource_metadata=prm,
            server=server,
            client=client,
            source=source,
            scopes=scopes,
            registration=self._registration_by_issuer.get(issuer, "?"),
        )
        previous = self._session
        if previous is not None and previous.issuer == issuer:
            session.scopes = authz.scopes_union(previous.scopes, session.scopes)
        self._session = session
        logger.info(
            "MCP server %s uses authorization server %s (%s mode, %s client)",
            self.server_url,
            issuer,
            self.mode,
            session.registration,
        )
        return session

    async def _resource_metadata(
        self, named: str | None
    ) -> tuple[ProtectedResourceMetadata, str] | None:
        if named is not None:
            check_endpoint_url(
                named,
                allow_insecure_loopback=self._driver.policy.allow_insecure_loopback,
                what="resource_metadata",
            )
        for url, accepted in resource_metadata_candidates(self.server_url, named=named):
            response = await self._driver.send(resource_metadata_request(url))
            found = parse_resource_metadata(response, resource=accepted)
            if found is not None:
                return found, url
        return None

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

    async def _legacy_server_metadata(self) -> ServerMetadata:
        """The 2025-03-26 revision: metadata at the MCP server's origin, else defaults."""
        policy = self._driver.policy
        url = legacy_metadata_url(self.server_url)
        response = await self._driver.send(
            HttpRequest("GET", url, server_supplied=True, idempotent=True)
        )
        found = parse_legacy_metadata(
            response,
            resource=self.server_url,
            allow_insecure_loopback=policy.allow_insecure_loopback,
        )
        if found is not None:
            logger.info("MCP server %s has no resource metadata: 2025-03-26 discovery", url)
            return found
        logger.info(
            "MCP server %s has no metadata at all: the 2025-03-26 default endpoints",
            self.server_url,
        )
        return legacy_default_metadata(self.server_url)

    # -- registration -------------------------------------------------------------------

    async def _client_for(self, server: ServerMetadata) -> AuthorizationServer:
        issuer = server.issuer
        existing = self._clients_by_issuer.get(issuer)
        if existing is not None:
            return existing
        credentials = await self._credentials(server)
        if credentials is None:
            assert self._own_server is not None
            self._registration_by_issuer[issuer] = "own"
            return self._clients_by_issuer.setdefault(issuer, self._own_server)
        options = self._context.server_options
        client = AuthorizationServer(
            issuer,
            client_id=credentials.client_id,
            client_secret=credentials.client_secret,
            private_key=credentials.private_key,
            token_endpoint_auth_method=credentials.token_endpoint_auth_method,
            metadata=server,  # just discovered and validated: not fetched again
            learned=True,  # named by the MCP server: every request is vetted (item 2)
            http=self._driver,
            clock=self._context.clock,
            leeway=options.get("leeway", 60.0),
            use_par=options.get("use_par"),
            lease_ttl=options.get("lease_ttl"),
            redirect_uris=credentials.redirect_uris,
            # DPoP (RFC 9449) when the agent asks for it, or when this authorization
            # server binds every token: McpAuth presents tokens with proofs either way.
            dpop=options.get("dpop") or server.dpop_bound_access_tokens,
        )
        self._registration_by_issuer[issuer] = credentials.source
        return self._clients_by_issuer.setdefault(issuer, client)

    def _configured(self, issuer: str) -> _Credentials | None:
        """Credentials configured for this MCP server URL or this issuer (item 11)."""
        for clients in (self._clients, self._shared):
            by_url = clients.for_server(self.server_url)
            if by_url is not None:
                if by_url.issuer is not None and by_url.issuer != issuer:
                    raise ConfigurationError(
                        f"{self.server_url} names authorization server {issuer!r}, but its "
                        f"credentials are pinned to {by_url.issuer!r}: they are not sent there"
                    )
                return by_url
            by_issuer = clients.for_issuer(issuer)
            if by_issuer is not None:
                return _pinned(by_issuer, issuer)
        return None

    async def _credentials(self, server: ServerMetadata) -> _Credentials | None:
        """Security item 11: configured, then (user) CIMD, then (user) RFC 7591, else an
        error. ``None``: the identity client's own credentials (agent mode)."""
        issuer = server.issuer
        configured = self._configured(issuer)
        unmatched = self._clients.unmatched(self.server_url, issuer)
        if configured is None and self._clients:
            raise ConfigurationError(
                f"clients= has no entry for MCP server {self.server_url} or its authorization "
                f"server {issuer!r} (keys: {', '.join(map(repr, unmatched))}); key the "
                "credentials by one of them"
            )
        if unmatched:
            logger.warning(
                "clients= entries %s match neither %s nor %s: not used",
                ", ".join(map(repr, unmatched)),
                self.server_url,
                issuer,
            )
        if configured is not None:
            if self.mode == "cross-app" and configured.issuer is None:
                raise ConfigurationError(
                    "cross-app access needs the MCP server's authorization server configured, "
                    "not learned (SEP-990): key the credentials by its issuer or add "
                    "'issuer' to the entry"
                )
            if configured.issuer is None and configured.client_secret is not None:
                logger.info(
                    "sending the client secret configured for %s to %s, the authorization "
                    "server it names (pin it with 'issuer' to refuse any other)",
                    self.server_url,
                    issuer,
                )
            return configured
        if self.mode == "agent":
            own = self._own_server
            if own is not None and own.issuer == issuer:
                return None
            raise ConfigurationError(
                f"no client credentials for authorization server {issuer!r}: an agent acting "
                "as itself needs a pre-registered confidential client there; pass "
                "clients={server_url_or_issuer: {'client_id': ..., 'client_secret' or "
                "'private_key': ...}}"
            )
        if self.mode == "cross-app":
            raise ConfigurationError(
                f"no credentials configured for authorization server {issuer!r}: cross-app "
                "access needs a client pre-registered there"
            )
        if self._cimd_url is not None and server.client_id_metadata_document_supported:
            return _Credentials(
                self._cimd_url,
                token_endpoint_auth_method="none",
                redirect_uris=self._redirect_uris,
                source="client-id-metadata-document",
            )
        if self._dcr and server.registration_endpoint is not None:
            registration = await self._registration(server)
            return _Credentials(
                registration.client_id,
                registration.client_secret,
                token_endpoint_auth_method=registration.token_endpoint_auth_method,
                redirect_uris=registration.redirect_uris or self._redirect_uris,
                source="dynamic",
            )
        raise ConfigurationError(
            f"no client registration for authorization server {issuer!r}: it supports neither "
            "a client id metadata document you configured nor dynamic registration; register "
            "a client there and pass clients={issuer_or_server_url: {'client_id': ...}} to "
            "mcp_auth()"
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
                "registered dynamically at %s: client_id=%s method=%s",
                issuer,
                registration.client_id,
                registration.token_endpoint_auth_method,
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
        response = await self._driver.send(request)
        return parse_registration(response, issuer=server.issuer, requested_method=method)

    async def _drop_foreign_grant(self, issuer: str) -> None:
        """A grant stored for this MCP server by another authorization server is useless
        here and its refresh token must never reach this one (item 12, 23): remove it."""
        assert self._user is not None
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


def _pinned(credentials: _Credentials, issuer: str) -> _Credentials:
    """Credentials keyed by an issuer belong to it: their pin is that issuer."""
    if credentials.issuer == issuer:
        return credentials
    return _Credentials(
        credentials.client_id,
        credentials.client_secret,
        credentials.private_key,
        token_endpoint_auth_method=credentials.token_endpoint_auth_method,
        issuer=issuer,
        redirect_uris=credentials.redirect_uris,
        source=credentials.source,
    )


def _main_grant(user: McpUser) -> UserGrant:
    """The user's grant at the identity client's own server (the enterprise IdP)."""
    if isinstance(user, UserGrant):
        return user
    try:
        main = getattr(user, "main", None)
    except AgentIdentityError as exc:
        raise ConfigurationError(
            "cross-app access needs the enterprise IdP as the identity client's own issuer "
            f"(this one has none): {exc}"
        ) from None
    if not isinstance(main, UserGrant):
        raise ConfigurationError("cross-app access needs a UserIdentity of an identity client")
    return main


def _operation(request: httpx2.Request) -> str:
    """What a request asks of the MCP server, for counting step-ups (item 29): the JSON-RPC
    method, with the tool or prompt name or the resource URI; else the HTTP method and
    path."""
    fallback = f"{request.method} {request.url.path}"
    try:
        message = json.loads(request.content) if request.content else None
    except (ValueError, UnicodeDecodeError):
        return fallback
    if isinstance(message, list):
        return "batch " + " ".join(
            str(m.get("method"))[:64] for m in message[:8] if isinstance(m, dict)
        )
    if not isinstance(message, dict) or not isinstance(message.get("method"), str):
        return fallback
    method = str(message["method"])[:64]
    params = message.get("params")
    if isinstance(params, dict):
        for member in ("name", "uri"):
            value = params.get(member)
            if isinstance(value, str):  # a URI's query stays out of logs and errors
                return f"{method} {value.partition('?')[0][:200]}"
    return method
