"""The identity client: the facade that wires a server, a vault, consent and users.

::

    async with IdentityClient(
        "https://idp.example.com",
        client_id="my-agent",
        client_secret="...",            # or private_key=..., or neither for a public client
        consent=LoopbackConsent(),      # or ConsoleConsent(), DeviceCodeConsent(), ...
    ) as identity:
        alice = identity.user("alice", tenant="acme")
        await alice.consent(scopes=["openid", "calendar.read"],
                            resource="https://calendar.example/api")
        token = await alice.token(resource="https://calendar.example/api",
                                  scopes=["calendar.read"])

It owns nothing but the wiring: the authorization server
(:class:`~agent_identity.server.AuthorizationServer`: metadata, client authentication,
endpoint calls), the vault, the consent handler, the audit trail and the users
(:class:`~agent_identity.user.UserIdentity`). The protocol rules live in
:mod:`agent_identity.oauth` (pure) and every request goes through
:mod:`agent_identity._http`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr, ValidationError

from agent_identity._http import HttpDriver, TransportPolicy
from agent_identity.clock import Clock, SystemClock
from agent_identity.consent.base import ConsentHandler
from agent_identity.errors import ConfigurationError
from agent_identity.grant import (
    ActionDetails,
    AgentContext,
    AgentTokens,
    LoginHint,
    TokenPolicy,
    UserGrant,
    policy_problem,
    words,
)
from agent_identity.models import AccessToken, ServerMetadata
from agent_identity.oauth.urls import canonical_resource_uri
from agent_identity.providers._profile import ProviderProfile
from agent_identity.server import AssertionAudience, AuthorizationServer, token_facts
from agent_identity.user import UserIdentity

if TYPE_CHECKING:
    import httpx2

    from agent_identity.audit import AuditTrail
    from agent_identity.mcp import McpAuth
    from agent_identity.oauth.client_auth import ClientAuthentication
    from agent_identity.oauth.dpop import DPoPKeyProvider
    from agent_identity.vault import TokenVault

__all__ = ["IdentityClient", "UserIdentity"]

logger = logging.getLogger("agent_identity")


class IdentityClient:
    """An agent's identity: at one authorization server, and at the MCP servers it meets.

    :param issuer: the authorization server's issuer identifier (its metadata is
        discovered: RFC 8414, then OpenID Discovery, and must name exactly this issuer), or
        a :class:`~agent_identity.providers.ProviderProfile` (GitHub, Google, Microsoft
        Entra, Slack, Atlassian, Notion, ...), or ``None`` with ``metadata``, or ``None``
        alone for an agent that only talks to MCP servers (each names its own server).
    :param client_id: the agent's client id (required with a server).
    :param client_secret: for confidential clients using ``client_secret_basic``/``_post``.
    :param private_key: a private JWK (dict or JSON), PEM, or joserfc key, for
        ``private_key_jwt`` (preferred over a secret, security item 27).
    :param metadata: static authorization server metadata (a
        :class:`~agent_identity.models.ServerMetadata` or a mapping) for a server without
        discovery; no discovery request is made.
    :param assertion_audience: the ``aud`` of ``private_key_jwt`` assertions: ``"issuer"``
        (default) or ``"token_endpoint"`` for servers that accept only their token endpoint
        URL (RFC 7523 §3).
    :param token_endpoint_auth_method: the client authentication method the client is
        registered with (RFC 7591 §2: ``client_secret_basic``, ``client_secret_post``,
        ``private_key_jwt`` or ``none``); default: chosen from the credential and what the
        server lists (``private_key_jwt`` for a key, else ``client_secret_basic``).
    :param consent: how users are asked for consent (:class:`~agent_identity.LoopbackConsent`
        by default).
    :param http_client: an ``httpx2.AsyncClient`` to use (the SDK makes its own otherwise).
    :param allow_insecure_loopback: allow ``http://127.0.0.1``/``[::1]`` issuers and
        endpoints. For local development and tests only (security item 1).
    :param allow_private_addresses: let URLs learned from servers reach private or
        loopback addresses (security item 2). Off by default.
    :param timeout: per-request timeout in seconds.
    :param refresh_buffer: refresh access tokens this many seconds before they expire
        (at most half their lifetime).
    :param leeway: clock leeway for ID token validation, seconds.
    :param request_offline_access: ask for ``offline_access`` (a refresh token) when the
        server lists it in ``scopes_supported`` (security item 20).
    :param use_par: push authorization requests (RFC 9126): ``None`` (default) when the
        server offers PAR, ``True`` always, ``False`` never (unless the server requires it).
    :param clock: time source (tests inject a fake one).
    :param vault: where grants and tokens are kept
        (:class:`~agent_identity.vault.TokenVault`). Default: the embedded SQLite vault in
        the user data directory (``AGENT_IDENTITY_VAULT_URL`` selects another,
        ``AGENT_IDENTITY_VAULT_KEYS`` holds its keys). A vault passed in is not closed by
        the client.
    :param connection: the name of this authorization server account in the vault
        (default: the issuer). Grants are keyed by (tenant, user, connection, client id).
    :param lease_ttl: the cross-process refresh lease: renewed by a heartbeat every third of
        it while a refresh runs, so a crashed holder blocks others at most this long
        (default 10 s).
    :param audit: an :class:`~agent_identity.audit.AuditTrail` receiving one record per
        consent, token acquisition, refresh, exchange, approval and revocation (and, through
        :class:`~agent_identity.tools.ToolGuard`, per tool call). Never a secret: tokens
        appear only as fingerprints.
    :param on_broader_token: what to do with a token that carries more scopes than asked
        for (servers may ignore ``scope`` on refresh, RFC 6749 §3.3): ``"use"`` it, labelled
        with its real scopes and with an audit record (default), or ``"refuse"`` it
        (:class:`~agent_identity.errors.TokenPolicyError`).
    :param on_audience_mismatch: the same for a readable JWT access token whose ``aud``
        does not name the requested resource (default ``"refuse"``).
    :param login_hint: ``(user_id, tenant) -> str | None``: the ``login_hint`` of consent
        requests (default: none).
    :param ciba_login_hint: ``(user_id, tenant) -> str``: the CIBA ``login_hint`` (default:
        the user id; some servers want JSON such as ``{"username": "alice"}``).
    :param mcp: default options of every :meth:`mcp_auth` and :meth:`UserIdentity.mcp_auth
        <agent_identity.UserIdentity.mcp_auth>` (e.g. ``clients=...``, shared by every MCP
        server: an entry for another server is not an error).
    :param dpop: bind every token to a DPoP key (RFC 9449): ``True`` (one key per grant,
        made in the process and sealed in the vault with the grant), or a
        :class:`~agent_identity.DPoPKeyProvider` whose keys stay in a KMS or HSM. DPoP is
        used anyway when the server's metadata says it binds every token
        (``dpop_bound_access_tokens``). It applies to the authorization servers of MCP
        servers too (``mcp_auth`` presents tokens with proofs). See ``docs/dpop.md``.
    :param action_details: ``{tool name: function(action) -> authorization details}``:
        the RFC 9396 details that a human approval of that tool's actions asks for (typed
        :class:`~agent_identity.AuthorizationDetail` models), so that the user approves
        exactly the payment, recipient and invoice and the token carries them. See
        ``docs/approval.md``.
    """

    def __init__(
        self,
        issuer: str | ProviderProfile | None = None,
        *,
        client_id: str | None = None,
        client_secret: str | SecretStr | None = None,
        private_key: Any = None,
        metadata: ServerMetadata | Mapping[str, Any] | None = None,
        assertion_audience: AssertionAudience | None = None,
        token_endpoint_auth_method: str | None = None,
        consent: ConsentHandler | None = None,
        http_client: httpx2.AsyncClient | None = None,
        allow_insecure_loopback: bool = False,
        allow_private_addresses: bool = False,
        timeout: float = 30.0,
        refresh_buffer: float = 60.0,
        leeway: float = 60.0,
        request_offline_access: bool = True,
        use_par: bool | None = None,
        clock: Clock | None = None,
        vault: TokenVault | None = None,
        connection: str | None = None,
        lease_ttl: float | None = None,
        audit: AuditTrail | None = None,
        on_broader_token: TokenPolicy = "use",
        on_audience_mismatch: TokenPolicy = "refuse",
        login_hint: LoginHint | None = None,
        ciba_login_hint: LoginHint | None = None,
        mcp: Mapping[str, Any] | None = None,
        dpop: bool | DPoPKeyProvider = False,
        action_details: Mapping[str, ActionDetails] | None = None,
    ) -> None:
        profile: ProviderProfile | None = None
        if isinstance(issuer, ProviderProfile):
            profile, issuer = issuer, None
        has_server = issuer is not None or metadata is not None or profile is not None
        if has_server and not client_id:
            raise ConfigurationError("client_id is required")
        if not has_server and (client_id or client_secret is not None or private_key is not None):
            raise ConfigurationError(
                "a client_id or credentials without an issuer: pass the issuer (or "
                "metadata=..., or a provider profile); an MCP-only agent takes its "
                "credentials per server in mcp={'clients': ...}"
            )
        if client_secret is not None and private_key is not None:
            raise ConfigurationError("give either client_secret or private_key, not both")
        if consent is None:
            from agent_identity.consent.loopback import LoopbackConsent

            consent = LoopbackConsent()
        self.consent_handler: ConsentHandler = consent
        self._policy = TransportPolicy(
            allow_insecure_loopback=allow_insecure_loopback,
            allow_private_addresses=allow_private_addresses,
            timeout=timeout,
        )
        self._driver = HttpDriver(self._policy, client=http_client)
        self.clock: Clock = clock or SystemClock()
        self._owns_vault = vault is None
        self.vault: TokenVault = vault if vault is not None else _default_vault(self.clock)
        self.audit = audit
        self.server: AuthorizationServer | None = None
        if has_server:
            assert client_id is not None
            self.server = AuthorizationServer(
                issuer if isinstance(issuer, str) else None,
                client_id=client_id,
                client_secret=client_secret,
                private_key=private_key,
                metadata=metadata,
                profile=profile,
                assertion_audience=assertion_audience,
                token_endpoint_auth_method=token_endpoint_auth_method,
                http=self._driver,
                clock=self.clock,
                leeway=leeway,
                use_par=use_par,
                lease_ttl=lease_ttl,
                dpop=dpop,
            )
        self.client_id: str = client_id or ""
        self.issuer: str = self.server.issuer if self.server is not None else ""
        self.connection = connection or self.issuer
        self.context = AgentContext(
            vault=self.vault,
            consent=consent,
            clock=self.clock,
            audit=audit,
            agent=self.client_id,
            refresh_buffer=refresh_buffer,
            request_offline_access=request_offline_access,
            on_broader_token=on_broader_token,
            on_audience_mismatch=on_audience_mismatch,
            login_hint=login_hint,
            ciba_login_hint=ciba_login_hint,
            policy=self._policy,
            server_options={
                "leeway": leeway,
                "use_par": use_par,
                "lease_ttl": lease_ttl,
                "dpop": dpop,
            },
            action_details=dict(action_details or {}),
        )
        self._mcp_defaults = dict(mcp or {})
        self._agent_tokens = (
            AgentTokens(self.context, self.server) if self.server is not None else None
        )
        self._users: dict[tuple[str, str], UserIdentity] = {}

    # -- construction -----------------------------------------------------------------

    @classmethod
    def from_env(cls, **overrides: Any) -> IdentityClient:
        """Build a client from ``AGENT_IDENTITY_*`` variables (see
        :mod:`agent_identity.settings`); keyword arguments override them."""
        from agent_identity.settings import IdentitySettings

        setting_names = set(IdentitySettings.model_fields)
        names: list[str] = []
        try:
            settings = IdentitySettings(
                **{k: v for k, v in overrides.items() if k in setting_names}
            )
        except ValidationError as exc:
            names = sorted({str(e["loc"][0]) for e in exc.errors() if e["loc"]}) or ["?"]
        if names:  # raised outside the handler: pydantic's error quotes the secret values
            raise ConfigurationError(
                "invalid or missing AGENT_IDENTITY_* settings: "
                + ", ".join(f"AGENT_IDENTITY_{n.upper()}" for n in names)
            )
        rest = {k: v for k, v in overrides.items() if k not in setting_names}
        private_key: Any = None
        if settings.private_key is not None:
            private_key = _load_key_text(settings.private_key.get_secret_value())
        elif settings.private_key_file is not None:
            private_key = _load_key_text(Path(settings.private_key_file).read_text())
        if "consent" not in rest:
            rest["consent"] = _handler_named(settings.consent)
        return cls(
            settings.issuer,
            client_id=settings.client_id,
            client_secret=settings.client_secret,
            private_key=private_key,
            allow_insecure_loopback=settings.allow_insecure_loopback,
            timeout=settings.timeout,
            **rest,
        )

    async def __aenter__(self) -> IdentityClient:
        try:
            if self.server is not None:
                await self.server.discover()
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Wait for running refreshes (bounded), then close the HTTP client and the vault
        if the SDK created them."""
        try:
            # A refresh whose caller left is still storing its outcome: let it finish.
            await self.context.detached.drain(self._policy.timeout * 3)
        finally:
            try:
                await self._driver.aclose()
            finally:
                if self._owns_vault:
                    await self.vault.aclose()

    def __repr__(self) -> str:
        if self.server is None:
            return "IdentityClient(mcp_only=True)"
        return f"IdentityClient(issuer={self.issuer!r}, client_id={self.client_id!r})"

    # -- the authorization server ---------------------------------------------------------

    def _server(self) -> AuthorizationServer:
        if self.server is None:
            raise ConfigurationError(
                "this IdentityClient has no authorization server of its own (MCP only): "
                "pass an issuer, metadata=... or a provider profile"
            )
        return self.server

    @property
    def metadata(self) -> ServerMetadata:
        """The server metadata (``await client.discover()`` first)."""
        return self._server().metadata

    async def discover(self) -> ServerMetadata:
        """Fetch and validate the authorization server metadata (once)."""
        return await self._server().discover()

    @property
    def client_auth(self) -> ClientAuthentication:
        return self._server().client_auth

    # -- users --------------------------------------------------------------------------

    def user(self, user_id: str, *, tenant: str = "default") -> UserIdentity:
        """The identity of ``user_id`` in ``tenant``, on whose behalf the agent acts."""
        if not user_id or not tenant:
            raise ConfigurationError("user_id and tenant must be non-empty")
        key = (tenant, user_id)
        user = self._users.get(key)
        if user is None:
            grant = None
            if self.server is not None:
                grant = UserGrant(
                    self.context,
                    self.server,
                    tenant=tenant,
                    user_id=user_id,
                    connection=self.connection,
                    agent_tokens=self._agent_tokens,
                )
            user = self._users[key] = UserIdentity(
                self.context,
                tenant=tenant,
                user_id=user_id,
                grant=grant,
                mcp_defaults=self._mcp_defaults,
            )
        return user

    def mcp_auth(self, server_url: str, **options: Any) -> McpAuth:
        """An ``httpx2.Auth`` for the MCP server at ``server_url`` as the agent itself:
        OAuth client credentials (the MCP extension SEP-1046), no user and no consent.

        Discovery is the same as for a user (RFC 9728, RFC 8414, or the 2025-03-26
        fallback); the client must be pre-registered at the authorization server the MCP
        server names: ``clients={server_url_or_issuer: {"client_id": ..., "client_secret":
        ...}}`` (``client_secret_basic``, or ``client_secret_post`` where that is the only
        method listed) or ``{"client_id": ..., "private_key": ...}`` (``private_key_jwt``).
        When the MCP server names this client's own issuer, its own credentials serve.
        Tokens are cached in memory per scope set until near expiry; a ``401`` gets a new
        one, ``403 insufficient_scope`` one with the union of scopes, at most
        ``max_step_ups`` times per operation. ``options`` are those of
        :class:`~agent_identity.mcp.McpAuth`. See ``docs/mcp.md``."""
        from agent_identity.mcp import McpAuth
        from agent_identity.user import mcp_options

        if options.get("cross_app_access"):
            raise ConfigurationError(
                "cross-app access acts for a user: use identity.user(...).mcp_auth(url, "
                "cross_app_access=True)"
            )
        return McpAuth(
            None,
            server_url,
            context=self.context,
            own_server=self.server,
            **mcp_options(self._mcp_defaults, options),
        )

    # -- the agent's own tokens ----------------------------------------------------------

    async def client_credentials(
        self,
        *,
        scopes: str | Sequence[str] = (),
        resource: str | None = None,
        refresh: bool = False,
    ) -> AccessToken:
        """A token for the agent itself (OAuth 2.1 §4.2), cached until near expiry.

        ``refresh=True`` skips the cache and requests a new token (for example after the
        resource rejected the cached one)."""
        self._server()
        assert self._agent_tokens is not None
        return await self._agent_tokens.token(scopes=scopes, resource=resource, refresh=refresh)

    async def revoke(
        self,
        token: SecretStr | str,
        *,
        token_type_hint: str | None = None,
    ) -> None:
        """Revoke a token at the authorization server (RFC 7009). Returns only once the
        server confirmed; on HTTP 503 (after the transport's retries honouring
        ``Retry-After``) :class:`~agent_identity.errors.TemporarilyUnavailable` is raised
        and the caller should keep the token (security item 28)."""
        server = self._server()
        await server.discover()
        secret = SecretStr(token) if isinstance(token, str) else token
        await server.revoke(secret, token_type_hint=token_type_hint)

    async def exchange(
        self,
        subject_token: AccessToken | SecretStr,
        *,
        resource: str | None = None,
        audience: str | None = None,
        scopes: str | Sequence[str] = (),
        actor: bool = True,
        subject_token_type: str | None = None,
    ) -> AccessToken:
        """RFC 8693 token exchange: trade ``subject_token`` for a token bound to
        ``resource`` (or ``audience``) with ``scopes`` (security items 31-32).

        With ``actor=True`` the agent's own client-credentials token is the actor token,
        so the result's ``act`` claim names this agent; exchanging an exchanged token again
        nests the previous ``act`` (a delegation chain; see
        :class:`~agent_identity.delegation.DelegationChain`). Refused with
        :class:`~agent_identity.errors.UnsupportedGrantType` before any request when the
        server lists grant types without token exchange.
        """
        from agent_identity.oauth.exchange import ACCESS_TOKEN_TYPE

        server = self._server()
        await server.discover()
        server.require_token_exchange()
        wanted = words(scopes, "scopes")
        canonical = canonical_resource_uri(resource) if resource is not None else None
        subject = subject_token.value if isinstance(subject_token, AccessToken) else subject_token
        actor_token = await self.client_credentials() if actor else None
        assert self._agent_tokens is not None
        dpop = await self._agent_tokens.dpop_signer()
        response = await server.token_exchange(
            subject_token=subject,
            subject_token_type=subject_token_type or ACCESS_TOKEN_TYPE,
            actor_token=actor_token.value if actor_token is not None else None,
            actor_token_type=ACCESS_TOKEN_TYPE if actor_token is not None else None,
            resource=canonical,
            audience=audience,
            scopes=wanted,
            dpop=dpop,
        )
        facts = token_facts(response, wanted)
        problem = policy_problem(self.context, *facts, resource=canonical, requested=wanted)
        if problem is not None:
            raise problem
        token = server.describe(
            response, resource=canonical, requested=wanted, dpop=dpop, facts=facts
        )
        await self.context.emit(
            "token.exchanged",
            issuer=server.issuer,
            token=token,
            scopes_requested=wanted,
            actors=(server.client_id,) if actor else (),
        )
        logger.info(
            "token exchanged: resource=%s scopes=%s actor=%s",
            canonical,
            " ".join(token.scopes),
            server.client_id if actor else None,
        )
        return token


def _default_vault(clock: Clock) -> TokenVault:
    import os

    from agent_identity.vault import TokenVault

    url = os.environ.get("AGENT_IDENTITY_VAULT_URL")
    if url:
        return TokenVault.from_url(url)
    return TokenVault.sqlite()


def _load_key_text(text: str) -> Any:
    stripped = text.strip()
    if stripped.startswith("{"):
        key: Mapping[str, Any] | None
        try:
            key = json.loads(stripped)
        except ValueError:
            key = None
        if not isinstance(key, Mapping):  # raised outside the handler: it quotes the key
            raise ConfigurationError("private key is neither a JWK (JSON) nor PEM")
        return dict(key)
    return stripped


def _handler_named(name: str) -> ConsentHandler:
    from agent_identity.consent import (
        ConsoleConsent,
        DeviceCodeConsent,
        LoopbackConsent,
        NotebookConsent,
    )

    handlers: dict[str, type[Any]] = {
        "loopback": LoopbackConsent,
        "console": ConsoleConsent,
        "device": DeviceCodeConsent,
        "notebook": NotebookConsent,
    }
    handler: ConsentHandler = handlers[name]()
    return handler
