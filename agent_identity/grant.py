"""One user's grant at one authorization server: consent, narrow tokens, refresh, exchange.

A :class:`UserGrant` reads and writes the user's grant in the vault under a
:class:`~agent_identity.vault.records.GrantKey` (tenant, user, connection, client id;
security item 26) and talks to the server only through an
:class:`~agent_identity.server.AuthorizationServer`. Token acquisition, in order of cost:

1. **hot path**: the vault's in-process view of the grant is fresh (validated within its
   ``cache_ttl``) and holds a token for exactly this resource and scope set that is not
   about to expire: no I/O at all;
2. **load**: the grant is (re)read from the store (another process may have refreshed or
   revoked it);
3. **refresh**: one refresh per grant at a time: an in-process lock, then a lease in the
   store so that other processes and hosts wait instead of racing with a rotating refresh
   token (security item 25). The lease holder re-reads the grant first (someone may have
   refreshed meanwhile), refreshes with ``scope`` and ``resource`` narrowed to the tool's
   needs (RFC 8707, security item 19), persists the rotated refresh token and the new
   access token in one atomic write, and only then returns the token. Once the request is
   sent its outcome is stored even if the caller is cancelled (see
   :mod:`agent_identity._tasks`);
4. **consent**: scopes or a resource not granted yet start an incremental consent for the
   union of held and needed scopes AND resources through the consent handler (security
   item 29). Asking again for every resource the grant holds keeps the new refresh token
   good for all of them on servers that bind a refresh token to the resources of its own
   authorization request (RFC 8707 §2.2).

The user's latest ID token (from a consent or a refresh that returned one, validated) is
kept sealed in the vault next to the grant (blob kind ``id-token``):
:meth:`UserGrant.id_token` hands it out as the subject token of cross-app access (MCP
SEP-990), refreshing the grant when it is about to expire.

A grant is only ever used at the issuer and by the client recorded in it (security items
12, 23): a grant written by another server under the same connection name is never sent
anywhere, and a new consent replaces it.

Tokens are labelled honestly: an access token reports the scopes the server says it
carries and, when readable, its audience; a token broader than asked for, or for another
audience, is handled by the policies ``on_broader_token`` and ``on_audience_mismatch``
of :class:`AgentContext` and always leaves an audit record. A token that does not carry
the RFC 9396 ``authorization_details`` the grant was consented with is always refused.

DPoP (RFC 9449): a grant of a server that uses DPoP has ONE key, made at its first
consent (or, for a grant stored before, at its next refresh) and sealed in the vault in
the same row as the refresh token: losing one loses both, and a new key means a new
grant. Every token request of the grant (code redemption, refresh, device poll, token
exchange) carries a proof of that key; its access tokens carry the key's signer, so that
:meth:`UserGrant.http_auth` sends each request with a fresh proof. A cached token bound
to another key than the grant's, or a bearer token of a DPoP grant, is not used.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import anyio
from anyio.lowlevel import checkpoint

from agent_identity._tasks import Detached, point_of_no_return
from agent_identity.clock import Clock
from agent_identity.consent.base import ConsentHandler
from agent_identity.errors import (
    ConfigurationError,
    ConsentDenied,
    ConsentError,
    ConsentRequired,
    InvalidGrant,
    InvalidScope,
    InvalidTarget,
    ReauthorizationRequired,
    TokenPolicyError,
    VaultCorrupted,
    VersionConflict,
)
from agent_identity.models import AccessToken, DeviceAuthorization, Grant, TokenResponse
from agent_identity.oauth import authorize as authz
from agent_identity.oauth.rar import (
    AuthorizationDetail,
    details_for_resource,
    details_to_wire,
    merge_details,
    missing_details,
)
from agent_identity.oauth.urls import canonical_resource_uri
from agent_identity.server import (
    GRANT_SCOPES,
    AuthorizationServer,
    Refreshed,
    audience_matches,
    granted_details,
    token_facts,
)
from agent_identity.vault.records import CachedToken, GrantKey, GrantRecord, VersionedGrant

if TYPE_CHECKING:
    from collections.abc import Mapping

    import httpx2
    from pydantic import SecretStr

    from agent_identity._http import TransportPolicy
    from agent_identity._resource_auth import StepUpBudget
    from agent_identity.audit import AuditTrail
    from agent_identity.oauth.dpop import DPoPSigner
    from agent_identity.vault import TokenVault

__all__ = [
    "ActionDetails",
    "AgentContext",
    "Details",
    "TokenPolicy",
    "UserGrant",
    "details_problem",
    "scope_key",
    "words",
]

logger = logging.getLogger("agent_identity")

TokenKey = tuple[str | None, frozenset[str]]
#: Vault blob kind of the user's latest ID token at a grant (named by the grant's key).
ID_TOKEN_KIND = "id-token"
TokenPolicy = Literal["use", "refuse"]
LoginHint = Callable[[str, str], "str | None"]
#: RFC 9396 authorization details as callers give them: typed models or JSON objects.
Details = Sequence["AuthorizationDetail | Mapping[str, Any]"]
#: ``action -> details``: the authorization details that describe an approved action.
ActionDetails = Callable[[Any], "AuthorizationDetail | Details | None"]


def scope_key(scopes: Sequence[str]) -> frozenset[str]:
    return frozenset(s for s in scopes if s not in GRANT_SCOPES)


def words(value: str | Sequence[str], name: str) -> tuple[str, ...]:
    """Accept a space-delimited string (the wire form, RFC 6749 §3.3) or a sequence."""
    if isinstance(value, str):
        return tuple(value.split())
    items = tuple(value)
    for item in items:
        if not isinstance(item, str) or not item or any(c.isspace() for c in item):
            raise ConfigurationError(f"{name} must be non-empty strings without spaces")
    return items


def _resources(resource: str | None, resources: Sequence[str]) -> tuple[str, ...]:
    if isinstance(resources, str):
        raise ConfigurationError("resources must be a sequence of URIs, not one string")
    wanted = [*([resource] if resource is not None else []), *resources]
    return tuple(dict.fromkeys(canonical_resource_uri(r) for r in wanted))


@dataclass(kw_only=True)
class AgentContext:
    """What every grant of one agent shares: the vault, how consent is obtained, the audit
    trail, the clock, the token policies and the task group that keeps refreshes alive.

    :param on_broader_token: a token carrying scopes beyond those asked for is ``"use"`` d
        (labelled with its real scopes, with an audit record ``token.broader``) or
        ``"refuse"`` d with :class:`~agent_identity.errors.TokenPolicyError`.
    :param on_audience_mismatch: the same for a readable JWT whose ``aud`` does not name
        the requested resource (default ``"refuse"``: it would be a token for someone
        else).
    :param login_hint: derives the ``login_hint`` of consent requests from
        ``(user_id, tenant)``; default: none is sent.
    :param ciba_login_hint: derives the CIBA ``login_hint`` from ``(user_id, tenant)``
        (servers differ: a user name, an e-mail, JSON such as ``{"username": "alice"}``);
        default: the user id.
    :param action_details: tool name -> a function of the :class:`~agent_identity.Action`
        returning the RFC 9396 authorization details (typed
        :class:`~agent_identity.oauth.rar.AuthorizationDetail` models) that a human
        approval of that action asks for, so that the user approves exactly "pay 120.00 EUR
        to ACME for INV-7" and the token carries it.
    """

    vault: TokenVault
    consent: ConsentHandler
    clock: Clock
    audit: AuditTrail | None = None
    agent: str = ""
    refresh_buffer: float = 60.0
    request_offline_access: bool = True
    on_broader_token: TokenPolicy = "use"
    on_audience_mismatch: TokenPolicy = "refuse"
    login_hint: LoginHint | None = None
    ciba_login_hint: LoginHint | None = None
    #: The transport policy, and the settings of the authorization servers the agent meets
    #: (``leeway``, ``use_par``, ``lease_ttl``, ``lease_wait``), for servers learned at run
    #: time (MCP).
    policy: TransportPolicy | None = None
    server_options: dict[str, Any] = field(default_factory=dict)
    detached: Detached = field(default_factory=Detached)
    action_details: Mapping[str, ActionDetails] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("on_broader_token", "on_audience_mismatch"):
            if getattr(self, name) not in ("use", "refuse"):
                raise ConfigurationError(f"{name} must be 'use' or 'refuse'")
        for name in ("login_hint", "ciba_login_hint"):
            hook = getattr(self, name)
            if hook is not None and not callable(hook):
                raise ConfigurationError(f"{name} must be a callable (user_id, tenant) -> str")
        for tool, factory in self.action_details.items():
            if not isinstance(tool, str) or not callable(factory):
                raise ConfigurationError(
                    "action_details maps tool names to callables (action) -> details"
                )

    def expiring(self, token: AccessToken) -> bool:
        if token.expires_at is None:
            return False
        lifetime = token.expires_at - token.received_at
        buffer = min(self.refresh_buffer, lifetime / 2)
        return token.expires_within(buffer, self.clock.monotonic())

    async def emit(
        self, kind: str, *, issuer: str, token: AccessToken | None = None, **fields: Any
    ) -> None:
        """Write one audit record (if an audit trail is configured); ``token`` appears only
        as its fingerprint. Raises only for a strict trail
        (:class:`~agent_identity.errors.AuditError`)."""
        if self.audit is None:
            return
        from agent_identity.audit import AuditEvent, fingerprint

        if token is not None:
            fields["token_fingerprint"] = fingerprint(token.value)
            fields.setdefault("scopes_granted", token.scopes)
            fields.setdefault("resource", token.resource)
        await self.audit.emit(AuditEvent(kind=kind, agent=self.agent, issuer=issuer, **fields))


class AgentTokens:
    """The agent's own tokens at one server (client credentials, OAuth 2.1 §4.2), cached
    per (resource, scopes) until near expiry."""

    def __init__(self, context: AgentContext, server: AuthorizationServer) -> None:
        self._context = context
        self._server = server
        self._tokens: dict[TokenKey, AccessToken] = {}
        self._lock = anyio.Lock(fast_acquire=True)
        self._dpop: DPoPSigner | None = None  # the agent's own key, in memory only

    async def dpop_signer(self) -> DPoPSigner | None:
        """The agent's own DPoP key (made on first use, kept in memory: the agent's tokens
        are not stored), when the server uses DPoP."""
        if self._dpop is None and self._server.uses_dpop:
            self._dpop = await self._server.new_dpop_signer()
        return self._dpop

    async def token(
        self,
        *,
        scopes: str | Sequence[str] = (),
        resource: str | None = None,
        refresh: bool = False,
    ) -> AccessToken:
        """A token for the agent itself; ``refresh=True`` skips the cache."""
        wanted = words(scopes, "scopes")
        canonical = canonical_resource_uri(resource) if resource is not None else None
        key: TokenKey = (canonical, frozenset(wanted))
        server = self._server
        async with self._lock:
            cached = None if refresh else self._tokens.get(key)
            if cached is not None and not self._context.expiring(cached):
                return cached
            await server.discover()
            await self.dpop_signer()
            response = await server.client_credentials(
                scopes=wanted, resource=canonical, dpop=self._dpop
            )
            facts = token_facts(response, wanted)
            problem = policy_problem(self._context, *facts, resource=canonical, requested=wanted)
            if problem is not None:
                raise problem
            token = server.describe(
                response, resource=canonical, requested=wanted, dpop=self._dpop, facts=facts
            )
            self._tokens[key] = token
            return token


class UserGrant:
    """One user's grant, in one tenant, at one authorization server account (connection).

    Built by :meth:`IdentityClient.user <agent_identity.IdentityClient.user>` (as its
    subclass :class:`~agent_identity.UserIdentity`) and by MCP authorization."""

    def __init__(
        self,
        context: AgentContext,
        server: AuthorizationServer,
        *,
        tenant: str,
        user_id: str,
        connection: str | None = None,
        agent_tokens: AgentTokens | None = None,
    ) -> None:
        if not user_id or not tenant:
            raise ConfigurationError("user_id and tenant must be non-empty")
        self._context = context
        self._server = server
        self._agent_tokens = agent_tokens or AgentTokens(context, server)
        self.tenant = tenant
        self.user_id = user_id
        self.key = GrantKey(tenant, user_id, connection or server.issuer, server.client_id)
        self._consent_lock = anyio.Lock(fast_acquire=True)
        self._refresh_lock = anyio.Lock(fast_acquire=True)
        self._legacy_checked = False
        # Per-process view: (vault version, access token with a monotonic expiry) for each
        # (resource, scopes). Valid only while the vault's cached grant has that version.
        self._hot: dict[TokenKey, tuple[int, AccessToken]] = {}
        # Signers of the grant's DPoP keys, by the stored key's canonical JSON.
        self._signers: dict[str, DPoPSigner] = {}
        # Step-ups per resource and operation (security item 29), shared by the http_auth()
        # objects made for this grant.
        self._step_up_budgets: dict[str, StepUpBudget] = {}

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(tenant={self.tenant!r}, user_id={self.user_id!r}, "
            f"connection={self.key.connection!r})"
        )

    @property
    def server(self) -> AuthorizationServer:
        """The authorization server this grant is used at."""
        return self._server

    @property
    def context(self) -> AgentContext:
        return self._context

    def dpop_signer(self, record: GrantRecord) -> DPoPSigner | None:
        """The signer of the DPoP key stored with ``record`` (``None``: a bearer grant).
        :class:`~agent_identity.errors.ConfigurationError` when the configured key
        provider cannot load it."""
        exported = record.dpop_key
        if exported is None:
            return None
        import json

        name = json.dumps(dict(exported), sort_keys=True, separators=(",", ":"))
        signer = self._signers.get(name)
        if signer is None:
            signer = self._server.load_dpop_signer(exported)
            if len(self._signers) >= 8:
                self._signers.clear()
            self._signers[name] = signer
        return signer

    # -- the grant ------------------------------------------------------------------------

    async def grant(self) -> Grant | None:
        """What this user granted at this connection, or ``None`` (read from the vault)."""
        current = await self._load(fresh=False)
        return None if current is None else grant_view(self.key, current.record)

    async def connections(self) -> list[Grant]:
        """Every grant this user has in the vault, at any connection of this tenant."""
        vault = self._context.vault
        grants: list[Grant] = []
        for key in await vault.grants(self.tenant, self.user_id):
            current = await vault.load(key)
            if current is not None:
                grants.append(grant_view(key, current.record))
        return grants

    async def _load(self, *, fresh: bool) -> VersionedGrant | None:
        """The grant of this client at this server, or ``None``: a row of another issuer
        is never returned (security item 23). Rows written before client ids were part of
        the key are moved under the full key on first use."""
        vault = self._context.vault
        current = await vault.load(self.key, fresh=fresh)
        if current is None and not self._legacy_checked:
            self._legacy_checked = True
            current = await self._adopt_legacy()
        if current is not None and not self._owns(current.record):
            return None
        return current

    def _owns(self, record: GrantRecord) -> bool:
        server = self._server
        if record.issuer != server.issuer or record.client_id not in (None, server.client_id):
            logger.warning(
                "ignoring a grant of another authorization server or client stored under "
                "connection %r (it is never sent to %s)",
                self.key.connection,
                server.issuer,
            )
            return False
        return True

    async def _adopt_legacy(self) -> VersionedGrant | None:
        vault = self._context.vault
        legacy = self.key.legacy()
        old = await vault.load(legacy, fresh=True)
        if old is None or old.record.issuer != self._server.issuer:
            return None
        record = old.record.replace(client_id=self._server.client_id)
        try:
            saved = await vault.save(self.key, record, expected_version=0)
        except VersionConflict:
            return await vault.load(self.key, fresh=True)
        with contextlib.suppress(VersionConflict):
            await vault.delete(legacy, expected_version=old.version)
        logger.info("moved a grant stored without a client id under client %r", record.client_id)
        return saved

    # -- consent --------------------------------------------------------------------------

    async def consent(
        self,
        *,
        scopes: str | Sequence[str],
        resource: str | None = None,
        resources: Sequence[str] = (),
        handler: ConsentHandler | None = None,
        prompt: str | None = None,
        login_hint: str | None = None,
        acr_values: str | Sequence[str] = (),
        max_age: int | None = None,
        extra_params: dict[str, str] | None = None,
        authorization_details: Details | None = None,
    ) -> Grant:
        """Ask the user to consent to ``scopes`` for ``resource`` (and ``resources``,
        RFC 8707).

        Runs the authorization code flow with PKCE (or the device flow, depending on the
        handler). Scopes and resources already granted are kept: the request asks for the
        union (security item 29). ``offline_access`` is added when the server lists it
        (security item 20). ``login_hint`` defaults to what the client's ``login_hint``
        hook derives, else none; ``extra_params`` are added to the authorization request
        (front channel and PAR alike) but can never override what the SDK sets
        (``state``, PKCE, ``redirect_uri``, ``client_id``, ...). ``acr_values`` and
        ``max_age`` ask for a stronger or fresher authentication (RFC 9470 step-up).

        ``authorization_details`` (RFC 9396: typed details, validated before anything is
        sent) are asked for with the held ones, in the front channel or with PAR; the
        grant keeps them, and every token of the grant must carry those that apply to its
        resource (:class:`~agent_identity.errors.TokenPolicyError` otherwise). With DPoP
        the grant's key (a new one for a new grant) is bound to the code (``dpop_jkt``).
        """
        server = self._server
        context = self._context
        new_details = details_to_wire(authorization_details)
        wanted_scopes = words(scopes, "scopes")
        acr = words(acr_values, "acr_values")
        new_resources = _resources(resource, resources)
        for key, value in (extra_params or {}).items():
            authz.check_extra_parameter(key, value)
        if login_hint is None and context.login_hint is not None:
            login_hint = context.login_hint(self.user_id, self.tenant)
        if login_hint is not None and (not isinstance(login_hint, str) or not login_hint):
            raise ConfigurationError("login_hint must be a non-empty string")
        await server.discover()
        async with self._consent_lock:
            current = await self._load(fresh=True)
            held = current.record.scopes if current is not None else ()
            held_resources = current.record.resources if current is not None else ()
            held_details = current.record.authorization_details if current is not None else ()
            wanted = authz.scopes_union(held, wanted_scopes)
            all_resources = tuple(dict.fromkeys((*held_resources, *new_resources)))
            all_details = merge_details(held_details, new_details)
            signer = await self._consent_signer(current)
            if context.request_offline_access and server.offline_access_listed():
                wanted = authz.scopes_union(wanted, ["offline_access"])
                # OpenID Connect Core §11: an OpenID provider honours offline_access only in
                # an OpenID request (openid) with prompt=consent.
                if server.openid_listed():
                    wanted = authz.scopes_union(["openid"], wanted)
                    if prompt is None:
                        prompt = "consent"
            primary = new_resources[0] if new_resources else None
            flow = _AuthorizationFlow(
                self,
                scopes=wanted,
                resources=all_resources,
                primary=primary,
                prompt=prompt,
                login_hint=login_hint,
                acr_values=acr,
                max_age=max_age,
                extra=dict(extra_params or {}),
                authorization_details=all_details,
                dpop=signer,
            )
            await self.audit_event("consent.requested", scopes_requested=wanted, resource=primary)
            try:
                await (handler or context.consent).obtain_consent(flow)
            except ConsentDenied:
                await self.audit_event("consent.denied", scopes_requested=wanted, resource=primary)
                raise
            if flow.stored is None:
                raise ConsentError("the consent handler returned without completing the consent")
            record = flow.stored
            await self.audit_event(
                "consent.granted",
                scopes_requested=wanted,
                scopes_granted=record.scopes,
                resource=primary,
            )
            logger.info(
                "consent granted: tenant=%s user=%s connection=%s scopes=%s resources=%s",
                self.tenant,
                self.user_id,
                self.key.connection,
                " ".join(record.scopes),
                " ".join(record.resources),
            )
            return grant_view(self.key, record)

    async def _consent_signer(self, current: VersionedGrant | None) -> DPoPSigner | None:
        """The DPoP key of a consent: the grant's own (its refresh token may be bound to
        it), else a new one when the server uses DPoP, else none."""
        if current is not None and current.record.dpop_key is not None:
            try:
                return self.dpop_signer(current.record)
            except ConfigurationError:
                logger.warning(
                    "the grant's DPoP key cannot be loaded by the configured key provider; "
                    "the new consent makes a new grant with a new key"
                )
        if self._server.uses_dpop:
            return await self._server.new_dpop_signer()
        return None

    async def store_consent(
        self,
        response: TokenResponse,
        claims: dict[str, object],
        *,
        requested: Sequence[str],
        resources: Sequence[str],
        primary: str | None,
        dpop: DPoPSigner | None = None,
        authorization_details: Sequence[Mapping[str, Any]] = (),
    ) -> GrantRecord:
        """Store the result of a completed authorization: the grant now covers
        ``requested`` scopes (grant-level ones only when evident from the response) and
        exactly ``resources`` and ``authorization_details``, with the new refresh token
        (or the previous one when the server issued none) and the DPoP key the
        authorization was bound to (in the same row)."""
        context = self._context
        server = self._server
        # Grant-level scopes are evident from what was issued (an ID token for openid, a
        # refresh token for offline_access); servers often echo only the resource's.
        evident = [
            scope
            for scope, issued in (
                ("openid", response.id_token is not None),
                ("offline_access", response.refresh_token is not None),
            )
            if issued and scope in requested
        ]
        # ...or reported by the server in the response's scope.
        evident += [s for s in (response.scopes or ()) if s in GRANT_SCOPES]
        resource_scopes = [s for s in requested if s not in GRANT_SCOPES]
        token: CachedToken | None = None
        problem = self._policy_problem(
            response, resource=primary, requested=resource_scopes, details=authorization_details
        )
        jkt = dpop.jkt if dpop is not None else None
        if problem is None:
            token = self._cached_token(
                response, primary, requested=resource_scopes, exact=False, dpop=dpop
            )
        else:  # the grant is stored; the access token that breaks the policy is not
            await self._report_policy(problem, refused_token=True)
        for _ in range(5):
            previous = await context.vault.load(self.key, fresh=True)
            before = previous.record if previous is not None else None
            if before is not None and not self._owns(before):
                before = None  # another server's grant: replaced, never merged
            now = context.clock.time()
            subject = claims.get("sub")
            tokens = dict(before.tokens) if before is not None else {}
            # tokens of another key than the grant's now (or bearer tokens of a DPoP
            # grant) are of no use
            tokens = {k: t for k, t in tokens.items() if t.dpop_jkt == jkt}
            if token is not None:
                tokens[token.key] = token
            record = GrantRecord(
                issuer=server.issuer,
                client_id=server.client_id,
                subject=subject
                if isinstance(subject, str)
                else (before.subject if before is not None else None),
                scopes=authz.scopes_union(
                    before.scopes if before is not None else (), evident, resource_scopes
                ),
                resources=tuple(resources),
                # keep the previous refresh token if the server issued no new one
                refresh_token=response.refresh_token
                or (before.refresh_token if before is not None else None),
                tokens=tokens,
                id_token_claims=claims or (dict(before.id_token_claims) if before else {}),
                created_at=before.created_at if before is not None else now,
                updated_at=now,
                dpop_key=dpop.key.export() if dpop is not None else None,
                authorization_details=tuple(dict(d) for d in authorization_details),
            )
            try:
                saved = await context.vault.save(
                    self.key, record, expected_version=previous.version if previous else 0
                )
            except VersionConflict:
                continue  # another process wrote meanwhile: merge with its version
            if token is not None:
                self._remember(saved, token, dpop)
            if response.id_token is not None and claims:
                await self._keep_id_token(response.id_token, claims)
            return saved.record
        raise VersionConflict("the grant kept changing while the consent was stored")

    # -- tokens ---------------------------------------------------------------------------

    async def token(
        self, *, resource: str | None = None, scopes: str | Sequence[str] = ()
    ) -> AccessToken:
        """The narrowest valid access token for ``resource`` with exactly ``scopes``.

        Served from memory while valid; otherwise obtained with the refresh token,
        narrowed with ``scope`` and audience-bound with ``resource`` (RFC 8707), one
        refresh at a time per grant across tasks, processes and hosts. Scopes or a
        resource not granted yet trigger an incremental consent for the union of held and
        needed scopes and resources through the configured consent handler.
        """
        canonical = canonical_resource_uri(resource) if resource is not None else None
        tk: TokenKey = (canonical, scope_key(words(scopes, "scopes")))
        hot = self._hot_token(tk)
        if hot is not None:
            return hot
        return await self._acquire(tk)

    def _hot_token(self, tk: TokenKey) -> AccessToken | None:
        entry = self._hot.get(tk)
        if entry is None:
            return None
        current = self._context.vault.peek(self.key)
        if current is None or current.version != entry[0]:
            return None
        token = entry[1]
        if self._context.expiring(token):
            return None
        return token

    async def _acquire(
        self, tk: TokenKey, *, rejected: AccessToken | None = None, shrunk: bool = False
    ) -> AccessToken:
        resource, wanted = tk
        current = await self._load(fresh=False)
        if current is not None and rejected is None:
            token = self._usable(current, tk)
            if token is not None:
                return token
        if (
            current is None
            or not wanted <= set(current.record.scopes)
            or (resource is not None and resource not in current.record.resources)
        ):
            if current is not None:
                await self.audit_event(
                    "elevation",
                    scopes_requested=tuple(sorted(wanted)),
                    scopes_granted=current.record.scopes,
                    resource=resource,
                )
            await self.consent(scopes=sorted(wanted), resource=resource)
            current = await self._load(fresh=False)
            if current is not None:
                token = self._usable(current, tk)
                if token is not None:
                    return token
            if current is None:  # pragma: no cover - consent stores the grant or raises
                raise ConsentRequired("consent did not produce a grant", scopes=tuple(wanted))
        try:
            return await self._refresh(tk, rejected=rejected)
        except _GrantShrank:
            if shrunk:
                raise
            # The grant lost scopes it held: ask for them again (incremental consent).
            return await self._acquire(tk, shrunk=True)

    def _usable(self, current: VersionedGrant, tk: TokenKey) -> AccessToken | None:
        cached = current.record.tokens.get(tk)
        if cached is None:
            return None
        signer = self.dpop_signer(current.record)
        bound = cached.token_type.lower() == "dpop"
        if (
            (signer is None) == bound
            or (signer is not None and cached.dpop_jkt not in (None, signer.jkt))
            or (signer is None and self._server.uses_dpop)
        ):
            # a DPoP grant's bearer token, a bound token without (or with another) key, a
            # bearer token once DPoP is on (the refresh makes the grant's key)
            return None
        entry = self._hot.get(tk)
        if (
            entry is not None
            and entry[1].value.get_secret_value() == cached.value.get_secret_value()
        ):
            token = entry[1]  # keep the monotonic expiry computed at receipt
        else:
            token = self._from_cached(cached, signer)
        if self._context.expiring(token):
            return None
        self._hot[tk] = (current.version, token)
        return token

    async def _refresh(self, tk: TokenKey, *, rejected: AccessToken | None) -> AccessToken:
        async with self._refresh_lock:
            if rejected is None:
                hot = self._hot_token(tk)
                if hot is not None:
                    return hot  # another task refreshed while we waited
            # The lease, the request and the write run as one job that survives the
            # caller's cancellation once the request is sent (security item 25).
            return await self._context.detached.run(lambda: self._refresh_under_lease(tk, rejected))

    async def _refresh_under_lease(self, tk: TokenKey, rejected: AccessToken | None) -> AccessToken:
        vault = self._context.vault
        server = self._server
        resource, wanted = tk
        lease = f"refresh:{self.key.storage_key}"
        async with vault.lease(lease, ttl=server.lease_ttl, wait=server.lease_wait):
            current = await self._load(fresh=True)
            if current is None:
                raise ReauthorizationRequired(
                    "the grant was removed (disconnected or revoked elsewhere); "
                    "run user.consent(...) again",
                    scopes=tuple(sorted(wanted)),
                    resource=resource,
                )
            token = self._usable(current, tk)
            if token is not None and (
                rejected is None
                or token.value.get_secret_value() != rejected.value.get_secret_value()
            ):
                return token  # another task, process or host refreshed meanwhile
            return await self._refresh_with(current, tk)

    async def _refresh_with(self, current: VersionedGrant, tk: TokenKey) -> AccessToken:
        server = self._server
        resource, wanted = tk
        record = current.record
        refresh_token = record.refresh_token
        if refresh_token is None:
            raise ConsentRequired(
                "no refresh token is held for this grant; ask the user to consent again",
                scopes=tuple(sorted(wanted)),
                resource=resource,
            )
        await server.discover()
        signer = self.dpop_signer(record)
        if signer is None and server.uses_dpop:
            # A grant stored without a key (before DPoP was on): its key is made now and
            # stored with it BEFORE the refresh that binds the new tokens to it.
            signer = await server.new_dpop_signer()
            current = await self._context.vault.save(
                self.key,
                record.replace(dpop_key=signer.key.export(), updated_at=self._context.clock.time()),
                expected_version=current.version,
            )
            record = current.record
        # A lease lost meanwhile (a stalled heartbeat) cancels us here, before anything is
        # sent. From here on the request's outcome must be stored: shielded (bounded by the
        # transport's timeout for the request plus the vault write).
        await checkpoint()
        # RFC 9396 §6.2: a token for one resource of a grant whose details name several
        # asks for the details of that resource only (none sent when all apply).
        applicable = details_for_resource(
            record.authorization_details, resource, same=_same_resource
        )
        narrowed_details = (
            applicable if 0 < len(applicable) < len(record.authorization_details) else ()
        )
        async with point_of_no_return(server.policy.timeout * 3):
            refreshed = await server.refresh(
                refresh_token,
                scopes=sorted(wanted),
                resource=resource,
                dpop=signer,
                authorization_details=narrowed_details,
            )
            if refreshed.response is None:
                return await self._refresh_failed(current, tk, refreshed)
            return await self._store_refresh(current, tk, refresh_token, refreshed.response, signer)

    async def _refresh_failed(
        self, current: VersionedGrant, tk: TokenKey, refreshed: Refreshed
    ) -> AccessToken:
        resource, _wanted = tk
        record = current.record
        error = refreshed.error
        assert error is not None
        if refreshed.salvaged_refresh_token is not None:
            # The response was malformed but the server rotated the refresh token: keep the
            # new one, or the grant is lost at the next refresh.
            await self._save_refresh_token(current, record.refresh_token, refreshed)
        lost_scopes = isinstance(error, InvalidScope) and tk[1] and tk[1] <= set(record.scopes)
        lost_resource = (
            isinstance(error, InvalidTarget)
            and resource is not None
            and resource in record.resources
        )
        if lost_scopes or lost_resource:
            # The grant held these scopes (this resource), yet its refresh token no longer
            # covers them: the server bound a refresh token to what an earlier token
            # request narrowed to (RFC 6749 §6 and RFC 8707 §2.2 say it must not; servers
            # built on oauthlib, such as django-oauth-toolkit, do). Stop narrowing at this
            # server, record what the grant has lost, and let the caller ask for it again.
            await self._forget(
                current,
                scopes=tk[1] if lost_scopes else frozenset(),
                resource=resource if lost_resource else None,
            )
            if self._server.narrow_refresh:
                self._server.narrow_refresh = False
                logger.warning(
                    "%s narrows the grant itself when a token request is narrowed; "
                    "token requests there now ask for the whole grant",
                    self._server.issuer,
                )
            raise _GrantShrank(
                "the authorization server no longer covers these scopes with this grant",
                scopes=tuple(sorted(tk[1])),
                resource=resource,
            ) from error
        if isinstance(error, InvalidGrant):
            # The grant is gone (revoked, expired, or its refresh token rotated away and
            # reused). We hold the lease, so no other refresh raced with this one.
            await self._forget_dead_grant(current)
            raise ReauthorizationRequired(
                "the authorization server no longer accepts this grant; "
                "run user.consent(...) again",
                scopes=record.scopes,
                resource=resource,
            ) from error
        raise error

    async def _save_refresh_token(
        self, current: VersionedGrant, sent: SecretStr | None, refreshed: Refreshed
    ) -> None:
        vault = self._context.vault
        for _ in range(5):
            base = current.record
            if (
                base.refresh_token is None
                or sent is None
                or (base.refresh_token.get_secret_value() != sent.get_secret_value())
            ):
                return  # someone else stored a newer refresh token meanwhile
            updated = base.replace(
                refresh_token=refreshed.salvaged_refresh_token,
                updated_at=self._context.clock.time(),
            )
            try:
                await vault.save(self.key, updated, expected_version=current.version)
                return
            except VersionConflict:
                latest = await vault.load(self.key, fresh=True)
                if latest is None:
                    return
                current = latest

    async def _store_refresh(
        self,
        current: VersionedGrant,
        tk: TokenKey,
        refresh_token: SecretStr,
        response: TokenResponse,
        signer: DPoPSigner | None = None,
    ) -> AccessToken:
        context = self._context
        vault = context.vault
        resource, wanted = tk
        record = current.record
        granted, verified, _audience = token_facts(response, sorted(wanted))
        short = wanted - set(granted) if verified else set()
        refused = self._policy_problem(
            response,
            resource=resource,
            requested=sorted(wanted),
            details=record.authorization_details,
        )
        # Cache the token under the scopes it was asked for, labelled with those it
        # carries; a narrower grant than asked is cached under what it carries and
        # reported after the (rotated) refresh token is safely stored.
        cached = (
            None
            if refused is not None
            else self._cached_token(
                response,
                resource,
                requested=sorted(wanted if not short else scope_key(granted)),
                dpop=signer,
            )
        )
        rotated = response.refresh_token
        # Persist the rotated refresh token with the new access token, atomically, before
        # the access token is handed out (security item 25).
        for _ in range(5):
            base = current.record
            keep_ours = base.refresh_token is not None and (
                base.refresh_token.get_secret_value() == refresh_token.get_secret_value()
            )
            tokens = dict(base.tokens)
            if cached is not None:
                tokens[cached.key] = cached
            updated = base.replace(
                refresh_token=(rotated or refresh_token) if keep_ours else base.refresh_token,
                tokens=tokens,
                updated_at=context.clock.time(),
            )
            try:
                saved = await vault.save(self.key, updated, expected_version=current.version)
            except VersionConflict:
                latest = await vault.load(self.key, fresh=True)
                if latest is None:
                    raise ReauthorizationRequired(
                        "the grant was removed while it was being refreshed",
                        scopes=record.scopes,
                        resource=resource,
                    ) from None
                current = latest
                continue
            if response.id_token is not None:
                await self._keep_refreshed_id_token(response.id_token, saved.record.subject)
            if refused is not None:
                await self._report_policy(refused, refused_token=True)
                raise refused
            assert cached is not None
            access = self._remember(saved, cached, signer)
            await self.audit_event(
                "token.refreshed", token=access, scopes_requested=tuple(sorted(wanted))
            )
            await self._report_unverified_or_broader(access, wanted, resource)
            if short:
                raise ConsentRequired(
                    "the authorization server granted fewer scopes than requested",
                    scopes=tuple(sorted(short)),
                    resource=resource,
                )
            return access
        raise VersionConflict("the grant kept changing while the refresh was stored")

    def _policy_problem(
        self,
        response: TokenResponse,
        *,
        resource: str | None,
        requested: Sequence[str],
        details: Sequence[Mapping[str, Any]] = (),
    ) -> TokenPolicyError | None:
        """The policy error a token breaks when its policy is ``refuse``, else ``None``;
        a token without the authorization ``details`` that apply to it, always."""
        problem = policy_problem(
            self._context,
            *token_facts(response, requested),
            resource=resource,
            requested=requested,
        )
        if problem is None and details:
            problem = details_problem(response, details, resource=resource, requested=requested)
        return problem

    async def _report_policy(self, error: TokenPolicyError, *, refused_token: bool) -> None:
        kind = {
            "scope": "token.broader",
            "audience": "token.audience_mismatch",
        }.get(error.reason, "token.details_missing")
        await self.audit_event(
            kind,
            scopes_requested=error.requested,
            scopes_granted=error.granted,
            resource=error.resource,
            outcome="denied" if refused_token else "ok",
        )

    async def _report_unverified_or_broader(
        self, token: AccessToken, wanted: frozenset[str], resource: str | None
    ) -> None:
        await report_used_token(self._context, token, wanted, resource, self.audit_event)

    async def _forget(
        self, current: VersionedGrant, *, scopes: frozenset[str], resource: str | None
    ) -> None:
        record = current.record
        updated = record.replace(
            scopes=tuple(s for s in record.scopes if s not in scopes),
            resources=tuple(r for r in record.resources if r != resource),
            updated_at=self._context.clock.time(),
        )
        with contextlib.suppress(VersionConflict):
            await self._context.vault.save(self.key, updated, expected_version=current.version)

    async def _forget_dead_grant(self, current: VersionedGrant) -> None:
        # if it changed meanwhile (a new consent), keep the newer grant (and its ID token)
        try:
            await self._context.vault.delete(self.key, expected_version=current.version)
        except VersionConflict:
            pass
        else:
            await self._forget_id_token()
        self._hot.clear()

    async def refresh_after_rejection(self, rejected: AccessToken) -> AccessToken:
        """The resource answered 401 to ``rejected``: get a new token for the same resource
        and scopes by refreshing (never a new consent first; pain point 4). If another task
        already replaced the token, that one is returned without a request."""
        tk = self._key_of(rejected)
        return await self._acquire(tk, rejected=rejected)

    def _key_of(self, token: AccessToken) -> TokenKey:
        for tk, (_version, held) in self._hot.items():
            if held.value.get_secret_value() == token.value.get_secret_value():
                return tk
        return (token.resource, scope_key(token.scopes))

    # -- audit ----------------------------------------------------------------------------

    async def audit_event(self, kind: str, **fields: Any) -> None:
        """Write one audit record about this grant (tenant, user, connection filled in)."""
        context = self._context
        if context.audit is not None:
            await context.emit(
                kind,
                issuer=self._server.issuer,
                tenant=self.tenant,
                user=self.user_id,
                extra={"connection": self.key.connection},
                **fields,
            )

    # -- conversions ----------------------------------------------------------------------

    def _cached_token(
        self,
        response: TokenResponse,
        resource: str | None,
        *,
        requested: Sequence[str],
        exact: bool = True,
        dpop: DPoPSigner | None = None,
    ) -> CachedToken:
        """The token to cache for ``response``: keyed by ``requested`` (``exact=False``:
        by what it carries when the server said, as after a consent), labelled with what
        it carries, the key it is bound to and the details it carries."""
        now = self._context.clock.time()
        granted, verified, audience = token_facts(response, requested)
        key = scope_key(requested) if exact or not verified else scope_key(granted)
        carried = tuple(granted)
        return CachedToken(
            resource=resource,
            scopes=key,
            value=response.access_token,
            token_type=response.token_type,
            expires_at=None if response.expires_in is None else now + response.expires_in,
            issued_at=now,
            granted=None if set(carried) == set(key) and verified else carried,
            verified=verified,
            audience=audience,
            dpop_jkt=(
                dpop.jkt if dpop is not None and response.token_type.lower() == "dpop" else None
            ),
            authorization_details=granted_details(response),
        )

    def _from_cached(self, cached: CachedToken, signer: DPoPSigner | None = None) -> AccessToken:
        """Convert a stored token (epoch expiry) to the monotonic clock, once, at load."""
        clock = self._context.clock
        mono, wall = clock.monotonic(), clock.time()
        return AccessToken(
            value=cached.value,
            token_type=cached.token_type,
            issuer=self._server.issuer,
            resource=cached.resource,
            scopes=tuple(cached.carried_scopes),
            expires_at=None if cached.expires_at is None else mono + (cached.expires_at - wall),
            received_at=mono - max(0.0, wall - cached.issued_at),
            scopes_verified=cached.verified,
            audience=cached.audience,
            dpop=signer if cached.token_type.lower() == "dpop" else None,
            authorization_details=cached.authorization_details,
        )

    def _remember(
        self, saved: VersionedGrant, cached: CachedToken, signer: DPoPSigner | None = None
    ) -> AccessToken:
        token = self._from_cached(cached, signer)
        self._hot[cached.key] = (saved.version, token)
        return token

    # -- HTTP -----------------------------------------------------------------------------

    def http_auth(
        self,
        *,
        resource: str,
        scopes: str | Sequence[str] = (),
        max_step_ups: int = 2,
    ) -> httpx2.Auth:
        """An ``httpx2.Auth`` for calling ``resource`` as this user.

        Adds ``Authorization`` with the narrow token for ``resource`` and ``scopes``; on
        ``401`` refreshes once and retries; on ``403 insufficient_scope`` asks the user to
        consent to the union of held and challenged scopes and retries; on
        ``insufficient_user_authentication`` re-authenticates with the challenge's
        ``acr_values``/``max_age`` (RFC 9470). At most ``max_step_ups`` elevations per
        operation (method and path) across requests, then
        :class:`~agent_identity.errors.StepUpLimitExceeded` (security item 29). The token
        is only ever sent to URLs under ``resource`` (security item 23). The step-up counts
        belong to this grant and resource: a new auth for them does not reset them.
        """
        from agent_identity._resource_auth import ResourceAuth, StepUpBudget

        canonical = canonical_resource_uri(resource)
        budgets = self._step_up_budgets
        if canonical not in budgets and len(budgets) >= 64:
            del budgets[next(iter(budgets))]
        return ResourceAuth(
            UserTokenSource(self, canonical, words(scopes, "scopes")),
            resource=canonical,
            max_step_ups=max_step_ups,
            step_ups=budgets.setdefault(canonical, StepUpBudget()),
        )

    # -- token exchange -------------------------------------------------------------------

    async def exchange(
        self,
        *,
        resource: str,
        scopes: str | Sequence[str] = (),
        actor: bool = True,
        subject_resource: str | None = None,
        actor_token: AccessToken | None = None,
        authorization_details: Details | None = None,
    ) -> AccessToken:
        """Exchange this user's token for one bound to ``resource`` (RFC 8693).

        The subject token is the user's token for ``subject_resource`` (default:
        ``resource``) with ``scopes``; with ``actor=True`` the agent's own token
        (client credentials, or ``actor_token``) is the actor token, so the issued
        token's ``act`` claim names the agent. See
        :class:`~agent_identity.delegation.DelegationChain`. The issued token is bound to
        the grant's DPoP key, if it has one; ``authorization_details`` (RFC 9396) are asked
        for and must come back with the token.
        """
        from agent_identity.oauth.exchange import ACCESS_TOKEN_TYPE

        details = details_to_wire(authorization_details)
        wanted = words(scopes, "scopes")
        server = self._server
        await server.discover()
        server.require_token_exchange()  # before any token is fetched for it
        subject = await self.token(resource=subject_resource or resource, scopes=wanted)
        canonical = canonical_resource_uri(resource)
        if actor and actor_token is None:
            actor_token = await self._agent_tokens.token()
        current = await self._load(fresh=False)
        signer = self.dpop_signer(current.record) if current is not None else None
        response = await server.token_exchange(
            subject_token=subject.value,
            subject_token_type=ACCESS_TOKEN_TYPE,
            actor_token=actor_token.value if actor and actor_token is not None else None,
            actor_token_type=ACCESS_TOKEN_TYPE if actor and actor_token is not None else None,
            resource=canonical,
            scopes=wanted,
            dpop=signer,
            authorization_details=details,
        )
        problem = self._policy_problem(
            response, resource=canonical, requested=wanted, details=details
        )
        if problem is not None:
            await self._report_policy(problem, refused_token=True)
            raise problem
        token = server.describe(response, resource=canonical, requested=wanted, dpop=signer)
        await self.audit_event(
            "token.exchanged",
            token=token,
            scopes_requested=wanted,
            actors=(server.client_id,) if actor else (),
        )
        await self._report_unverified_or_broader(token, frozenset(wanted), canonical)
        logger.info(
            "token exchanged: resource=%s scopes=%s actor=%s",
            canonical,
            " ".join(token.scopes),
            server.client_id if actor else None,
        )
        return token

    # -- revocation -----------------------------------------------------------------------

    async def disconnect(self, *, revoke: bool = True) -> None:
        """Revoke this user's grant at the authorization server (RFC 7009), then remove it
        from the vault, only after the server confirmed (security item 28). Other
        processes stop using it within the vault's ``cache_ttl``.

        The refresh token is revoked; a grant without one (providers whose tokens do not
        expire) has its cached access tokens revoked instead. A server without a
        revocation endpoint cannot be asked: :class:`~agent_identity.errors.ConfigurationError`
        says so, and ``revoke=False`` forgets the grant here only (revoke the app's access
        at the provider then)."""
        vault = self._context.vault
        async with self._refresh_lock:
            try:
                current = await self._load(fresh=True)
            except VaultCorrupted:
                # An unreadable (tampered, replayed) row cannot be revoked at the server,
                # but the user can still be disconnected here.
                logger.warning("removing an unreadable grant row without revoking it")
                await self._forget_id_token()
                await vault.delete(self.key)
                self._hot.clear()
                return
            if current is None:
                return
            if revoke:
                await self._revoke_all(current.record)
            await self._forget_id_token()  # first: never an ID token without its grant
            await vault.delete(self.key)
            self._hot.clear()
            await self.audit_event("revocation", scopes_granted=current.record.scopes)

    # -- the user's ID token ----------------------------------------------------------------

    async def id_token(self, *, min_ttl: float = 60.0) -> SecretStr:
        """The user's current ID token from this server (OpenID Connect): for example the
        subject token of cross-app access (MCP SEP-990), which the enterprise IdP exchanges
        for an identity assertion grant.

        It is the ID token of the latest consent or refresh that returned one, validated
        when it was received and kept sealed in the vault next to the grant. One that
        expires within ``min_ttl`` seconds (wall clock) is replaced by refreshing the grant
        once (OpenID providers issue a new ID token on refresh, OpenID Connect Core §12.2).
        Only while the grant it came with is held: a grant removed (disconnected, or found
        dead at a refresh) takes its ID token along. Raises
        :class:`~agent_identity.errors.ConsentRequired` (scopes ``openid``) when no usable
        ID token can be had, and :class:`~agent_identity.errors.ReauthorizationRequired`
        when the refresh for a new one finds the grant dead: sign the user in again with
        ``consent(scopes=["openid", ...])``.
        """
        from pydantic import SecretStr as _Secret

        current = await self._load(fresh=True)
        if current is None:
            await self._forget_id_token()  # left by a grant removed without it
        else:
            kept = await self._kept_id_token(min_ttl)
            if kept is not None:
                return _Secret(kept)
        if (
            current is not None
            and current.record.refresh_token is not None
            and "openid" in current.record.scopes
        ):
            tk: TokenKey = (None, frozenset())
            held = self._usable(current, tk)
            with contextlib.suppress(ConsentRequired, TokenPolicyError):
                await self._refresh(tk, rejected=held)  # a new ID token comes with it
            kept = await self._kept_id_token(min_ttl)
            if kept is not None:
                return _Secret(kept)
        raise ConsentRequired(
            f"no valid ID token of this user from {self._server.issuer} is held; sign the "
            "user in again (consent with the openid scope)",
            scopes=("openid",),
        )

    async def _kept_id_token(self, min_ttl: float) -> str | None:
        stored = await self._context.vault.get_blob(ID_TOKEN_KIND, self.key.storage_key)
        if stored is None:
            return None
        try:
            kept = json.loads(stored.data)
            token, exp = kept["id_token"], float(kept["exp"])
        except (ValueError, KeyError, TypeError):
            logger.warning("ignoring an unreadable kept ID token")
            return None
        if not isinstance(token, str) or exp - self._context.clock.time() < min_ttl:
            return None
        return token

    async def _keep_id_token(self, id_token: SecretStr, claims: dict[str, object]) -> None:
        """Keep a validated ID token (sealed in the vault) for :meth:`id_token`."""
        exp = claims.get("exp")
        if not isinstance(exp, int | float) or isinstance(exp, bool):
            return
        data = json.dumps(
            {"id_token": id_token.get_secret_value(), "exp": exp, "sub": claims.get("sub")},
            separators=(",", ":"),
        ).encode()
        vault = self._context.vault
        name = self.key.storage_key
        for _ in range(3):
            stored = await vault.get_blob(ID_TOKEN_KIND, name)
            try:
                await vault.put_blob(
                    ID_TOKEN_KIND,
                    name,
                    data,
                    expected_version=stored.version if stored is not None else 0,
                )
                return
            except VersionConflict:
                continue

    async def _keep_refreshed_id_token(self, id_token: SecretStr, subject: str | None) -> None:
        """An ID token from a refresh response (OpenID Connect Core §12.2): validated (its
        ``nonce``, if any, is not checked: it answers no front-channel request) and kept
        when its ``sub`` is the grant's. A bad one is dropped; the refresh stands."""
        from agent_identity.errors import AgentIdentityError
        from agent_identity.oauth import jwt

        try:
            nonce = jwt.peek_claims(id_token.get_secret_value()).get("nonce")
            claims = await self._server.validate_id_token(
                id_token, nonce=nonce if isinstance(nonce, str) else None, max_age=None
            )
        except AgentIdentityError as exc:
            logger.warning("ignoring the ID token of a refresh response: %s", type(exc).__name__)
            return
        if subject is not None and claims.get("sub") != subject:
            logger.warning("ignoring the ID token of a refresh response: another subject")
            return
        await self._keep_id_token(id_token, claims)

    async def _forget_id_token(self) -> None:
        with contextlib.suppress(VersionConflict):
            await self._context.vault.delete_blob(ID_TOKEN_KIND, self.key.storage_key)

    async def _revoke_all(self, record: GrantRecord) -> None:
        server = self._server
        await server.discover()
        if server.metadata.revocation_endpoint is None:
            raise ConfigurationError(
                f"{server.issuer} has no revocation endpoint (RFC 7009): the grant cannot be "
                "revoked from here; revoke the app's access at the provider and call "
                "disconnect(revoke=False) to forget it here"
            )
        if record.refresh_token is not None:
            await server.revoke(record.refresh_token, token_type_hint="refresh_token")
            return
        # No refresh token: the access tokens are the grant (often without expiry).
        for cached in record.tokens.values():
            await server.revoke(cached.value, token_type_hint="access_token")


class _GrantShrank(ConsentRequired):
    """A refresh found that the grant no longer covers scopes it was recorded with."""


def policy_problem(
    context: AgentContext,
    granted: Sequence[str],
    verified: bool,
    audience: Sequence[str] | None,
    *,
    resource: str | None,
    requested: Sequence[str],
) -> TokenPolicyError | None:
    """A :class:`~agent_identity.errors.TokenPolicyError` when a token breaks a policy set
    to ``refuse``: scopes beyond the requested ones (when the server reported them), or a
    readable audience that does not name the requested resource."""
    wanted = scope_key(requested)
    extra = sorted(scope_key(granted) - wanted) if verified and wanted else []
    if extra and context.on_broader_token == "refuse":
        return TokenPolicyError(
            "the authorization server issued a token broader than requested (it also "
            f"carries {' '.join(extra)}); on_broader_token='refuse'",
            reason="scope",
            requested=tuple(requested),
            granted=tuple(granted),
            resource=resource,
        )
    if (
        resource is not None
        and audience is not None
        and not audience_matches(audience, resource)
        and context.on_audience_mismatch == "refuse"
    ):
        return TokenPolicyError(
            f"the issued token's audience does not name {resource} (RFC 8707); "
            "on_audience_mismatch='refuse'",
            reason="audience",
            requested=tuple(requested),
            granted=tuple(granted),
            resource=resource,
        )
    return None


def details_problem(
    response: TokenResponse,
    details: Sequence[Mapping[str, Any]],
    *,
    resource: str | None,
    requested: Sequence[str] = (),
) -> TokenPolicyError | None:
    """A :class:`~agent_identity.errors.TokenPolicyError` (``reason="authorization_details"``)
    when the token does not carry the RFC 9396 details asked for that apply to
    ``resource`` (those without ``locations``, or naming it), checked as RFC 9396 §7 says:
    the token response's ``authorization_details``, else the readable JWT's claim."""
    wanted = details_for_resource(details, resource, same=_same_resource)
    if not wanted:
        return None
    missing = missing_details(wanted, granted_details(response))
    if not missing:
        return None
    return TokenPolicyError(
        "the issued token does not carry the authorization_details asked for (RFC 9396 §7; "
        f"missing: {', '.join(sorted(set(missing)))}); it is refused",
        reason="authorization_details",
        requested=tuple(requested),
        resource=resource,
        missing_details=tuple(missing),
    )


def _same_resource(a: str, b: str) -> bool:
    return audience_matches((a,), b)


async def report_used_token(
    context: AgentContext,
    token: AccessToken,
    wanted: frozenset[str],
    resource: str | None,
    emit: Callable[..., Any],
) -> None:
    """Audit (and log) a token that is used although it is broader than asked for or names
    another audience (policy ``use``)."""
    extra = sorted(scope_key(token.scopes) - wanted) if token.scopes_verified and wanted else []
    if extra:
        logger.warning(
            "token for %s carries more scopes than requested (%s); using it "
            "(on_broader_token='use')",
            resource,
            " ".join(extra),
        )
        await emit(
            "token.broader",
            token=token,
            scopes_requested=tuple(sorted(wanted)),
            outcome="ok",
        )
    if (
        resource is not None
        and token.audience is not None
        and not audience_matches(token.audience, resource)
    ):
        logger.warning(
            "token for %s names another audience; using it (on_audience_mismatch='use')",
            resource,
        )
        await emit("token.audience_mismatch", token=token, outcome="ok")


class _AuthorizationFlow:
    """The :class:`~agent_identity.consent.ConsentFlow` a grant hands to a handler."""

    def __init__(
        self,
        grant: UserGrant,
        *,
        scopes: tuple[str, ...],
        resources: tuple[str, ...],
        primary: str | None,
        prompt: str | None,
        login_hint: str | None,
        acr_values: tuple[str, ...],
        max_age: int | None,
        extra: dict[str, str],
        authorization_details: Sequence[Mapping[str, Any]] = (),
        dpop: DPoPSigner | None = None,
    ) -> None:
        self._grant = grant
        self._details = tuple(dict(d) for d in authorization_details)
        self._dpop = dpop
        self._scopes = scopes
        self._resources = resources
        self._primary = primary
        self._prompt = prompt
        self._login_hint = login_hint
        self._acr_values = acr_values
        self._max_age = max_age
        self._extra = extra
        self._pending: authz.PendingAuthorization | None = None
        self.stored: GrantRecord | None = None

    @property
    def grant(self) -> UserGrant:
        """The grant this consent is for."""
        return self._grant

    @property
    def tenant(self) -> str:
        return self._grant.tenant

    @property
    def user(self) -> str:
        return self._grant.user_id

    @property
    def issuer(self) -> str:
        return self._grant.server.issuer

    @property
    def scopes(self) -> tuple[str, ...]:
        return self._scopes

    @property
    def resource(self) -> str | None:
        return self._primary

    @property
    def resources(self) -> tuple[str, ...]:
        return self._resources

    @property
    def login_hint(self) -> str | None:
        return self._login_hint

    @property
    def allow_insecure_loopback(self) -> bool:
        return self._grant.server.policy.allow_insecure_loopback

    async def authorization_url(self, redirect_uri: str) -> str:
        server = self._grant.server
        if self._pending is not None:
            server.pending.discard(self._pending.state)
        pending, url = await server.start_authorization(
            redirect_uri=redirect_uri,
            scopes=self._scopes,
            resources=self._resources,
            prompt=self._prompt,
            login_hint=self._login_hint,
            acr_values=self._acr_values,
            max_age=self._max_age,
            extra=self._extra,
            authorization_details=self._details,
            dpop=self._dpop,
        )
        self._pending = pending
        return url

    async def authorization_request(
        self, redirect_uri: str, *, lifetime: float
    ) -> tuple[authz.PendingAuthorization, str]:
        """Start this authorization *without* keeping it in this process: the caller
        seals the returned pending authorization (PKCE verifier, ``state``, ``nonce``,
        issuer) and completes it elsewhere with ``server.redeem`` and
        ``grant.store_consent`` (:class:`~agent_identity.consent.WebConsent`: the redirect
        may reach another worker, after a restart)."""
        pending, url = await self._grant.server.start_authorization(
            redirect_uri=redirect_uri,
            scopes=self._scopes,
            resources=self._resources,
            prompt=self._prompt,
            login_hint=self._login_hint,
            acr_values=self._acr_values,
            max_age=self._max_age,
            extra=self._extra,
            lifetime=lifetime,
            register=False,
            authorization_details=self._details,
            dpop=self._dpop,
        )
        return pending, url

    @property
    def dpop(self) -> DPoPSigner | None:
        """The DPoP key the code of this authorization is bound to (``None``: bearer)."""
        return self._dpop

    @property
    def authorization_details(self) -> tuple[dict[str, Any], ...]:
        """The RFC 9396 details asked for (JSON objects)."""
        return self._details

    async def complete(self, callback_url: str) -> None:
        server = self._grant.server
        if self._pending is None:
            raise ConsentError("complete() called before authorization_url()")
        expected = self._pending
        try:
            pending, code = authz.validate_callback(
                authz.parse_callback(callback_url),
                server.pending,
                now=server.clock.monotonic(),
                expected=expected,
            )
        except BaseException:
            server.pending.discard(expected.state)
            raise
        await self._finish(
            lambda: server.redeem(pending, code, resource=self._primary, dpop=self._dpop)
        )

    async def _finish(self, obtain: Callable[[], Any]) -> None:
        grant = self._grant

        async def redeem_and_store() -> None:
            # The code is single-use: once redeemed, its grant must be stored.
            async with point_of_no_return(grant.server.policy.timeout * 3):
                response, claims = await obtain()
                self.stored = await grant.store_consent(
                    response,
                    claims,
                    requested=self._scopes,
                    resources=self._resources,
                    primary=self._primary,
                    dpop=self._dpop,
                    authorization_details=self._details,
                )

        await grant.context.detached.run(redeem_and_store)

    async def start_device_authorization(self) -> DeviceAuthorization:
        server = self._grant.server
        return await server.device_authorization(
            scopes=self._scopes,
            resources=self._resources,
            authorization_details=self._details,
        )

    async def wait_for_device_approval(self, authorization: DeviceAuthorization) -> None:
        from agent_identity.oauth.device import DevicePoller

        server = self._grant.server
        poller = DevicePoller.start(authorization, now=server.clock.monotonic())
        while True:
            await anyio.sleep(poller.next_wait(server.clock.monotonic()))
            outcome = await server.poll_device(authorization, poller.handle, dpop=self._dpop)
            if outcome != "pending":
                await self._finish(functools.partial(self._validated, outcome))
                return

    async def _validated(self, response: TokenResponse) -> tuple[TokenResponse, dict[str, object]]:
        claims: dict[str, object] = {}
        if response.id_token is not None:
            claims = await self._grant.server.validate_id_token(
                response.id_token, nonce=None, max_age=self._max_age
            )
        return response, claims


class UserTokenSource:
    """What :class:`~agent_identity._resource_auth.ResourceAuth` needs, for a grant."""

    def __init__(self, grant: UserGrant, resource: str, scopes: tuple[str, ...]) -> None:
        self._grant = grant
        self._resource = resource
        self._scopes = scopes

    async def token(self) -> AccessToken:
        return await self._grant.token(resource=self._resource, scopes=self._scopes)

    async def after_unauthorized(self, rejected: AccessToken) -> AccessToken:
        return await self._grant.refresh_after_rejection(rejected)

    async def after_insufficient_scope(self, scopes: Sequence[str]) -> AccessToken:
        current = await self._grant._load(fresh=True)
        held = current.record.scopes if current is not None else ()
        self._scopes = authz.scopes_union(self._scopes, scopes)
        await self._grant.consent(
            scopes=authz.scopes_union(held, self._scopes), resource=self._resource
        )
        return await self.token()

    async def after_insufficient_authentication(
        self, acr_values: Sequence[str], max_age: int | None
    ) -> AccessToken:
        current = await self._grant._load(fresh=True)
        held = current.record.scopes if current is not None else self._scopes
        await self._grant.consent(
            scopes=authz.scopes_union(held, self._scopes),
            resource=self._resource,
            acr_values=acr_values,
            max_age=max_age,
        )
        return await self.token()


def grant_view(key: GrantKey, record: GrantRecord) -> Grant:
    return Grant(
        issuer=record.issuer,
        connection=key.connection,
        tenant=key.tenant,
        user=key.user,
        subject=record.subject,
        scopes=record.scopes,
        resources=record.resources,
        has_refresh_token=record.refresh_token is not None,
        granted_at=record.updated_at,
        id_token_claims=dict(record.id_token_claims),
    )
