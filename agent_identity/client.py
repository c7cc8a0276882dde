"""The identity client: the facade that wires discovery, consent, tokens and transport.

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

The protocol rules live in :mod:`agent_identity.oauth` (pure); this module only sequences
them and performs the requests through :mod:`agent_identity._http`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
from pydantic import SecretStr, ValidationError

from agent_identity._http import HttpDriver, TransportPolicy
from agent_identity.clock import Clock, SystemClock
from agent_identity.consent.base import ConsentHandler
from agent_identity.errors import (
    AgentIdentityError,
    ConfigurationError,
    ConsentError,
    InvalidResponse,
    MetadataError,
)
from agent_identity.models import AccessToken, DeviceAuthorization, ServerMetadata, TokenResponse
from agent_identity.oauth import authorize as authz
from agent_identity.oauth import discovery
from agent_identity.oauth._message import HttpRequest, HttpResponse
from agent_identity.oauth.client_auth import ClientAuthentication, choose_client_auth
from agent_identity.oauth.device import (
    DevicePoller,
    device_authorization_request,
    parse_device_authorization,
)
from agent_identity.oauth.revocation import parse_revocation_response, revocation_request
from agent_identity.oauth.token import (
    authorization_code_request,
    client_credentials_request,
    device_code_request,
    parse_token_response,
)
from agent_identity.oauth.urls import canonical_resource_uri, check_endpoint_url
from agent_identity.user import UserIdentity, words

if TYPE_CHECKING:
    import httpx2

    from agent_identity.audit import AuditTrail
    from agent_identity.vault import TokenVault

__all__ = ["IdentityClient", "UserIdentity"]

logger = logging.getLogger("agent_identity")


class IdentityClient:
    """An agent's identity at one authorization server.

    :param issuer: the authorization server's issuer identifier; its metadata is discovered
        (RFC 8414, then OpenID Discovery) and must name exactly this issuer.
    :param client_id: the agent's client id.
    :param client_secret: for confidential clients using ``client_secret_basic``/``_post``.
    :param private_key: a private JWK (dict or JSON), PEM, or joserfc key, for
        ``private_key_jwt`` (preferred over a secret, security item 27).
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
        (default: the issuer). Grants are keyed by (tenant, user, connection).
    :param lease_ttl: how long one refresh may hold the cross-process refresh lease before
        others may take over (a crashed holder blocks at most this long).
    :param audit: an :class:`~agent_identity.audit.AuditTrail` receiving one record per
        consent, token acquisition, refresh, exchange, approval and revocation (and, through
        :class:`~agent_identity.tools.ToolGuard`, per tool call). Never a secret: tokens
        appear only as fingerprints.
    """

    def __init__(
        self,
        issuer: str,
        *,
        client_id: str,
        client_secret: str | SecretStr | None = None,
        private_key: Any = None,
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
    ) -> None:
        if not client_id:
            raise ConfigurationError("client_id is required")
        check_endpoint_url(issuer, allow_insecure_loopback=allow_insecure_loopback, what="issuer")
        if client_secret is not None and private_key is not None:
            raise ConfigurationError("give either client_secret or private_key, not both")
        self.issuer = issuer
        self.client_id = client_id
        self._client_secret = (
            SecretStr(client_secret) if isinstance(client_secret, str) else client_secret
        )
        self._private_key = private_key
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
        self._driver.trust_origin(issuer)
        self._timeout = timeout
        self._refresh_buffer = refresh_buffer
        self._leeway = leeway
        self._request_offline_access = request_offline_access
        self._use_par = use_par
        self.clock: Clock = clock or SystemClock()
        self._metadata: ServerMetadata | None = None
        self._client_auth: ClientAuthentication | None = None
        self._jwks: Any = None
        self._discover_lock = anyio.Lock(fast_acquire=True)
        self._pending = authz.PendingAuthorizations()
        self._users: dict[tuple[str, str], UserIdentity] = {}
        self.connection = connection or issuer
        self._owns_vault = vault is None
        self.vault: TokenVault = vault if vault is not None else _default_vault(self.clock)
        # A refresh lease must outlive the slowest refresh (one request, bounded by the
        # transport timeout) so that a live holder is never overtaken.
        self._lease_ttl = lease_ttl if lease_ttl is not None else 2 * timeout + 5
        self._lease_wait = self._lease_ttl + timeout
        self.audit = audit
        self._own_tokens: dict[tuple[str | None, frozenset[str]], AccessToken] = {}
        self._own_lock = anyio.Lock(fast_acquire=True)

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
            await self.discover()
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP client and the vault if the SDK created them."""
        try:
            await self._driver.aclose()
        finally:
            if self._owns_vault:
                await self.vault.aclose()

    def __repr__(self) -> str:
        return f"IdentityClient(issuer={self.issuer!r}, client_id={self.client_id!r})"

    # -- discovery ----------------------------------------------------------------------

    @property
    def metadata(self) -> ServerMetadata:
        """The discovered server metadata (``await client.discover()`` first)."""
        if self._metadata is None:
            raise ConfigurationError("metadata not discovered yet: use 'async with' or discover()")
        return self._metadata

    async def discover(self) -> ServerMetadata:
        """Fetch and validate the authorization server metadata (once)."""
        if self._metadata is not None:
            return self._metadata
        async with self._discover_lock:
            if self._metadata is not None:
                return self._metadata
            with anyio.fail_after(self._timeout * 3):
                for url in discovery.metadata_urls(self.issuer):
                    response = await self._driver.send(discovery.metadata_request(url))
                    metadata = discovery.parse_metadata(
                        response,
                        issuer=self.issuer,
                        allow_insecure_loopback=self._policy.allow_insecure_loopback,
                    )
                    if metadata is not None:
                        break
                else:
                    raise MetadataError(
                        f"no authorization server metadata found for issuer {self.issuer!r}"
                    )
            self._client_auth = choose_client_auth(
                client_id=self.client_id,
                client_secret=self._client_secret,
                private_key=self._private_key,
                supported_methods=metadata.token_endpoint_auth_methods_supported,
            )
            self._metadata = metadata
            logger.debug("discovered metadata for %s", self.issuer)
            return metadata

    @property
    def client_auth(self) -> ClientAuthentication:
        if self._client_auth is None:
            raise ConfigurationError("metadata not discovered yet: use 'async with' or discover()")
        return self._client_auth

    # -- users --------------------------------------------------------------------------

    def user(self, user_id: str, *, tenant: str = "default") -> UserIdentity:
        """The identity of ``user_id`` in ``tenant``, on whose behalf the agent acts."""
        if not user_id or not tenant:
            raise ConfigurationError("user_id and tenant must be non-empty")
        key = (tenant, user_id)
        user = self._users.get(key)
        if user is None:
            user = self._users[key] = UserIdentity(self, tenant=tenant, user_id=user_id)
        return user

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
        scopes = words(scopes, "scopes")
        metadata = await self.discover()
        canonical = canonical_resource_uri(resource) if resource is not None else None
        key = (canonical, frozenset(scopes))
        async with self._own_lock:
            cached = None if refresh else self._own_tokens.get(key)
            if cached is not None and not self._expiring(cached):
                return cached
            request = client_credentials_request(
                _require(metadata.token_endpoint, "token_endpoint"),
                client_auth=self.client_auth,
                issuer=metadata.issuer,
                now=self.clock.time(),
                scopes=list(scopes),
                resource=canonical,
            )
            response = await self._token_call(request)
            token = self._access_token(response, canonical, tuple(scopes))
            self._own_tokens[key] = token
            return token

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
        metadata = await self.discover()
        secret = SecretStr(token) if isinstance(token, str) else token
        hint: Any = token_type_hint
        request = revocation_request(
            metadata.revocation_endpoint,
            token=secret,
            client_auth=self.client_auth,
            issuer=metadata.issuer,
            now=self.clock.time(),
            token_type_hint=hint,
        )
        with anyio.fail_after(self._timeout * 4):
            response = await self._driver.send(request)
        parse_revocation_response(response)

    # -- internals shared with UserIdentity and the consent flow ------------------------

    async def _send(self, request: HttpRequest) -> HttpResponse:
        # The driver bounds every attempt with the policy timeout (and the number of
        # attempts), so each request is bounded without another cancel scope here.
        return await self._driver.send(request)

    async def _token_call(self, request: HttpRequest) -> TokenResponse:
        return parse_token_response(await self._send(request))

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
        :class:`~agent_identity.delegation.DelegationChain`).
        """
        from agent_identity.oauth.exchange import (
            ACCESS_TOKEN_TYPE,
            parse_token_exchange_response,
            token_exchange_request,
        )

        metadata = await self.discover()
        wanted = words(scopes, "scopes")
        canonical = canonical_resource_uri(resource) if resource is not None else None
        subject = subject_token.value if isinstance(subject_token, AccessToken) else subject_token
        actor_token = await self.client_credentials() if actor else None
        request = token_exchange_request(
            _require(metadata.token_endpoint, "token_endpoint"),
            subject_token=subject,
            subject_token_type=subject_token_type or ACCESS_TOKEN_TYPE,
            actor_token=actor_token.value if actor_token is not None else None,
            actor_token_type=ACCESS_TOKEN_TYPE if actor_token is not None else None,
            resource=canonical,
            audience=audience,
            scopes=wanted,
            client_auth=self.client_auth,
            issuer=metadata.issuer,
            now=self.clock.time(),
        )
        response = parse_token_exchange_response(await self._send(request))
        token = self._access_token(response, canonical, wanted)
        await self._emit(
            "token.exchanged",
            token=token,
            scopes_requested=wanted,
            actors=(self.client_id,) if actor else (),
        )
        logger.info(
            "token exchanged: resource=%s scopes=%s actor=%s",
            canonical,
            " ".join(token.scopes),
            self.client_id if actor else None,
        )
        return token

    async def _emit(self, kind: str, *, token: AccessToken | None = None, **fields: Any) -> None:
        """Write one audit record (if an audit trail is configured); ``token`` appears only
        as its fingerprint. Never raises for a failing sink unless the trail is strict
        (then :class:`~agent_identity.errors.AuditError` propagates)."""
        if self.audit is None:
            return
        from agent_identity.audit import AuditEvent, fingerprint

        if token is not None:
            fields["token_fingerprint"] = fingerprint(token.value)
            fields.setdefault("scopes_granted", token.scopes)
            fields.setdefault("resource", token.resource)
        await self.audit.emit(
            AuditEvent(kind=kind, agent=self.client_id, issuer=self.issuer, **fields)
        )

    def _expiring(self, token: AccessToken) -> bool:
        if token.expires_at is None:
            return False
        lifetime = token.expires_at - token.received_at
        buffer = min(self._refresh_buffer, lifetime / 2)
        return token.expires_within(buffer, self.clock.monotonic())

    def _access_token(
        self, response: TokenResponse, resource: str | None, requested: tuple[str, ...]
    ) -> AccessToken:
        received = self.clock.monotonic()
        granted = response.scopes if response.scopes is not None else requested
        return AccessToken(
            value=response.access_token,
            token_type=response.token_type,
            issuer=self.issuer,
            resource=resource,
            scopes=tuple(granted),
            expires_at=None if response.expires_in is None else received + response.expires_in,
            received_at=received,
        )

    async def _validate_id_token(
        self, id_token: SecretStr, *, nonce: str | None, max_age: int | None
    ) -> dict[str, object]:
        from agent_identity.oauth import jwt  # joserfc is loaded on the first ID token

        metadata = self.metadata
        if self._jwks is None:
            jwks_uri = _require(metadata.jwks_uri, "jwks_uri")
            response = await self._send(
                HttpRequest("GET", jwks_uri, server_supplied=True, idempotent=True)
            )
            if response.status_code != 200:
                raise InvalidResponse(f"jwks_uri answered HTTP {response.status_code}")
            self._jwks = jwt.parse_jwks(response.content)
        claims = jwt.validate_id_token(
            id_token.get_secret_value(),
            jwks=self._jwks,
            issuer=metadata.issuer,
            client_id=self.client_id,
            nonce=nonce,
            now=self.clock.time(),
            leeway=self._leeway,
            max_age=max_age,
        )
        return dict(claims.raw)

    def _offline_scope_wanted(self) -> bool:
        supported = self.metadata.scopes_supported
        return (
            self._request_offline_access
            and supported is not None
            and ("offline_access" in supported)
        )

    def _par_wanted(self) -> bool:
        metadata = self.metadata
        if metadata.pushed_authorization_request_endpoint is None:
            if metadata.require_pushed_authorization_requests or self._use_par:
                raise MetadataError("PAR is required but the server has no PAR endpoint")
            return False
        if metadata.require_pushed_authorization_requests:
            return True
        return self._use_par is not False


class _ConsentFlow:
    """The :class:`~agent_identity.consent.ConsentFlow` the client hands to a handler."""

    def __init__(
        self,
        client: IdentityClient,
        user: UserIdentity,
        *,
        scopes: tuple[str, ...],
        resource: str | None,
        prompt: str | None,
        acr_values: tuple[str, ...],
        max_age: int | None,
    ) -> None:
        self._client = client
        self._user = user
        self._scopes = scopes
        self._resource = resource
        self._prompt = prompt
        self._acr_values = acr_values
        self._max_age = max_age
        self._pending: authz.PendingAuthorization | None = None
        self.result: tuple[TokenResponse, dict[str, object]] | None = None

    @property
    def tenant(self) -> str:
        return self._user.tenant

    @property
    def user(self) -> str:
        return self._user.user_id

    @property
    def issuer(self) -> str:
        return self._client.issuer

    @property
    def scopes(self) -> tuple[str, ...]:
        return self._scopes

    @property
    def resource(self) -> str | None:
        return self._resource

    @property
    def allow_insecure_loopback(self) -> bool:
        return self._client._policy.allow_insecure_loopback

    async def authorization_url(self, redirect_uri: str) -> str:
        client = self._client
        metadata = client.metadata
        clock = client.clock
        if self._pending is not None:
            client._pending.discard(self._pending.state)
        pending, params = authz.start_authorization(
            metadata,
            client_id=client.client_id,
            redirect_uri=redirect_uri,
            scopes=self._scopes,
            resources=(self._resource,) if self._resource else (),
            now=clock.monotonic(),
            prompt=self._prompt,
            acr_values=self._acr_values,
            max_age=self._max_age,
        )
        client._pending.add(pending, now=clock.monotonic())
        self._pending = pending
        endpoint = _require(metadata.authorization_endpoint, "authorization_endpoint")
        if client._par_wanted():
            request = authz.par_request(metadata, params, client.client_auth, now=clock.time())
            request_uri, _ = authz.parse_par_response(await client._send(request))
            return authz.authorization_url(
                endpoint, {"client_id": client.client_id, "request_uri": request_uri}
            )
        return authz.authorization_url(endpoint, params)

    async def complete(self, callback_url: str) -> None:
        client = self._client
        if self._pending is None:
            raise ConsentError("complete() called before authorization_url()")
        expected = self._pending
        try:
            pending, code = authz.validate_callback(
                authz.parse_callback(callback_url),
                client._pending,
                now=client.clock.monotonic(),
                expected=expected,
            )
        except AgentIdentityError:
            client._pending.discard(expected.state)
            raise
        request = authorization_code_request(
            pending.token_endpoint,
            code=code,
            redirect_uri=pending.redirect_uri,
            code_verifier=pending.code_verifier,
            client_auth=client.client_auth,
            issuer=pending.issuer,
            now=client.clock.time(),
            resource=self._resource,
        )
        response = await client._token_call(request)
        claims: dict[str, object] = {}
        if response.id_token is not None:
            claims = await client._validate_id_token(
                response.id_token, nonce=pending.nonce, max_age=pending.max_age
            )
        self.result = (response, claims)

    async def start_device_authorization(self) -> DeviceAuthorization:
        client = self._client
        metadata = client.metadata
        request = device_authorization_request(
            metadata.device_authorization_endpoint,
            client_auth=client.client_auth,
            issuer=metadata.issuer,
            now=client.clock.time(),
            scopes=self._scopes,
            resource=self._resource,
        )
        return parse_device_authorization(await client._send(request))

    async def wait_for_device_approval(self, authorization: DeviceAuthorization) -> None:
        client = self._client
        metadata = client.metadata
        token_endpoint = _require(metadata.token_endpoint, "token_endpoint")
        poller = DevicePoller.start(authorization, now=client.clock.monotonic())
        while True:
            await anyio.sleep(poller.next_wait(client.clock.monotonic()))
            request = device_code_request(
                token_endpoint,
                device_code=authorization.device_code,
                client_auth=client.client_auth,
                issuer=metadata.issuer,
                now=client.clock.time(),
            )
            outcome = poller.handle(await client._send(request))
            if outcome != "pending":
                claims: dict[str, object] = {}
                if outcome.id_token is not None:
                    claims = await client._validate_id_token(
                        outcome.id_token, nonce=None, max_age=self._max_age
                    )
                self.result = (outcome, claims)
                return


def _require(value: str | None, name: str) -> str:
    if value is None:
        raise MetadataError(f"the authorization server metadata has no {name}")
    return value


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
