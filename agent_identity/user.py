"""The agent acting for one user: consent, narrow per-tool tokens, elevation, exchange.

A :class:`UserIdentity` reads and writes the user's grant in the client's
:class:`~agent_identity.vault.TokenVault`, keyed by (tenant, user, connection) (security
item 26). Token acquisition, in order of cost:

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
   access token in one atomic write, and only then returns the token;
4. **consent**: scopes or a resource not granted yet start an incremental consent for the
   union of held and needed scopes through the consent handler (security item 29).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import anyio

from agent_identity.errors import (
    ConsentDenied,
    ConsentError,
    ConsentRequired,
    InvalidGrant,
    ReauthorizationRequired,
    VersionConflict,
)
from agent_identity.models import AccessToken, Grant, TokenResponse
from agent_identity.oauth import authorize as authz
from agent_identity.oauth.token import refresh_request
from agent_identity.oauth.urls import canonical_resource_uri
from agent_identity.vault.records import CachedToken, GrantKey, GrantRecord, VersionedGrant

if TYPE_CHECKING:
    import httpx2
    from pydantic import SecretStr

    from agent_identity.approval import Action, Approval, PingReceiver
    from agent_identity.client import IdentityClient
    from agent_identity.consent.base import ConsentHandler
    from agent_identity.mcp import McpAuth

__all__ = ["UserIdentity"]

logger = logging.getLogger("agent_identity")

#: Scopes that govern the grant itself rather than a resource's API.
GRANT_SCOPES = frozenset({"openid", "offline_access"})

TokenKey = tuple[str | None, frozenset[str]]


def scope_key(scopes: Sequence[str]) -> frozenset[str]:
    return frozenset(s for s in scopes if s not in GRANT_SCOPES)


def words(value: str | Sequence[str], name: str) -> tuple[str, ...]:
    """Accept a space-delimited string (the wire form, RFC 6749 §3.3) or a sequence."""
    from agent_identity.errors import ConfigurationError

    if isinstance(value, str):
        return tuple(value.split())
    items = tuple(value)
    for item in items:
        if not isinstance(item, str) or not item or any(c.isspace() for c in item):
            raise ConfigurationError(f"{name} must be non-empty strings without spaces")
    return items


class UserIdentity:
    """The agent acting for one user in one tenant, at one connection (authorization
    server account). Get one with :meth:`IdentityClient.user`."""

    def __init__(self, client: IdentityClient, *, tenant: str, user_id: str) -> None:
        self._client = client
        self.tenant = tenant
        self.user_id = user_id
        self.key = GrantKey(tenant, user_id, client.connection)
        self._consent_lock = anyio.Lock(fast_acquire=True)
        self._refresh_lock = anyio.Lock(fast_acquire=True)
        # Per-process view: (vault version, access token with a monotonic expiry) for each
        # (resource, scopes). Valid only while the vault's cached grant has that version.
        self._hot: dict[TokenKey, tuple[int, AccessToken]] = {}

    def __repr__(self) -> str:
        return (
            f"UserIdentity(tenant={self.tenant!r}, user_id={self.user_id!r}, "
            f"connection={self.key.connection!r})"
        )

    # -- the grant ------------------------------------------------------------------------

    async def grant(self) -> Grant | None:
        """What this user granted at this connection, or ``None`` (read from the vault)."""
        current = await self._client.vault.load(self.key)
        return None if current is None else self._grant_view(current.record)

    async def connections(self) -> list[Grant]:
        """Every grant this user has in the vault, at any connection of this tenant."""
        vault = self._client.vault
        grants: list[Grant] = []
        for key in await vault.grants(self.tenant, self.user_id):
            current = await vault.load(key)
            if current is not None:
                grants.append(_grant_view(key, current.record))
        return grants

    def _grant_view(self, record: GrantRecord) -> Grant:
        return _grant_view(self.key, record)

    # -- consent --------------------------------------------------------------------------

    async def consent(
        self,
        *,
        scopes: str | Sequence[str],
        resource: str | None = None,
        handler: ConsentHandler | None = None,
        prompt: str | None = None,
        acr_values: str | Sequence[str] = (),
        max_age: int | None = None,
    ) -> Grant:
        """Ask the user to consent to ``scopes`` for ``resource`` (RFC 8707).

        Runs the authorization code flow with PKCE (or the device flow, depending on the
        handler). Scopes already granted are kept: the request asks for the union (security
        item 29). ``offline_access`` is added when the server lists it (security item 20).
        ``acr_values`` and ``max_age`` ask for a stronger or fresher authentication
        (RFC 9470 step-up).
        """
        from agent_identity.client import _ConsentFlow

        client = self._client
        wanted_scopes = words(scopes, "scopes")
        acr = words(acr_values, "acr_values")
        await client.discover()
        canonical = canonical_resource_uri(resource) if resource is not None else None
        async with self._consent_lock:
            current = await client.vault.load(self.key, fresh=True)
            held = current.record.scopes if current is not None else ()
            wanted = authz.scopes_union(held, wanted_scopes)
            if client._offline_scope_wanted():
                wanted = authz.scopes_union(wanted, ["offline_access"])
                # OpenID Connect Core §11: an OpenID provider honours offline_access only in
                # an OpenID request (openid) with prompt=consent.
                supported = client.metadata.scopes_supported or ()
                if "openid" in supported:
                    wanted = authz.scopes_union(["openid"], wanted)
                    if prompt is None:
                        prompt = "consent"
            flow = _ConsentFlow(
                client,
                self,
                scopes=wanted,
                resource=canonical,
                prompt=prompt,
                acr_values=acr,
                max_age=max_age,
            )
            await self._emit("consent.requested", scopes_requested=wanted, resource=canonical)
            try:
                await (handler or client.consent_handler).obtain_consent(flow)
            except ConsentDenied:
                await self._emit("consent.denied", scopes_requested=wanted, resource=canonical)
                raise
            if flow.result is None:
                raise ConsentError("the consent handler returned without completing the consent")
            response, claims = flow.result
            record = await self._store_consent(response, claims, wanted, canonical)
            await self._emit(
                "consent.granted",
                scopes_requested=wanted,
                scopes_granted=record.scopes,
                resource=canonical,
            )
            logger.info(
                "consent granted: tenant=%s user=%s connection=%s scopes=%s",
                self.tenant,
                self.user_id,
                self.key.connection,
                " ".join(record.scopes),
            )
            return self._grant_view(record)

    async def _store_consent(
        self,
        response: TokenResponse,
        claims: dict[str, object],
        requested: tuple[str, ...],
        resource: str | None,
    ) -> GrantRecord:
        client = self._client
        granted = response.scopes if response.scopes is not None else requested
        # Servers often echo only the resource's scopes; the grant-level scopes are evident
        # from what was issued (an ID token for openid, a refresh token for offline_access).
        evident = [
            scope
            for scope, issued in (
                ("openid", response.id_token is not None),
                ("offline_access", response.refresh_token is not None),
            )
            if issued and scope in requested
        ]
        token = self._cached_token(response, resource, scope_key(granted))
        for _ in range(5):
            previous = await client.vault.load(self.key, fresh=True)
            before = previous.record if previous is not None else None
            resources = before.resources if before is not None else ()
            if resource is not None and resource not in resources:
                resources = (*resources, resource)
            subject = claims.get("sub")
            now = client.clock.time()
            record = GrantRecord(
                issuer=client.issuer,
                subject=subject
                if isinstance(subject, str)
                else (before.subject if before is not None else None),
                scopes=authz.scopes_union(before.scopes if before else (), evident, granted),
                resources=resources,
                # keep the previous refresh token if the server issued no new one
                refresh_token=response.refresh_token
                or (before.refresh_token if before is not None else None),
                tokens={**(before.tokens if before is not None else {}), token.key: token},
                id_token_claims=claims or (dict(before.id_token_claims) if before else {}),
                created_at=before.created_at if before is not None else now,
                updated_at=now,
            )
            try:
                saved = await client.vault.save(
                    self.key, record, expected_version=previous.version if previous else 0
                )
            except VersionConflict:
                continue  # another process wrote meanwhile: merge with its version
            self._remember(saved, token)
            return saved.record
        raise VersionConflict("the grant kept changing while the consent was stored")

    # -- tokens ---------------------------------------------------------------------------

    async def token(
        self, *, resource: str | None = None, scopes: str | Sequence[str] = ()
    ) -> AccessToken:
        """The narrowest valid access token for ``resource`` with exactly ``scopes``.

        Served from memory while valid; otherwise obtained with the refresh token,
        narrowed with ``scope`` and audience-bound with ``resource`` (RFC 8707), one
        refresh at a time per grant across tasks, processes and hosts. Scopes not granted
        yet trigger an incremental consent for the union of held and needed scopes
        through the configured consent handler.
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
        current = self._client.vault.peek(self.key)
        if current is None or current.version != entry[0]:
            return None
        token = entry[1]
        if self._client._expiring(token):
            return None
        return token

    async def _acquire(self, tk: TokenKey, *, rejected: AccessToken | None = None) -> AccessToken:
        client = self._client
        resource, wanted = tk
        current = await client.vault.load(self.key)
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
                await self._emit(
                    "elevation",
                    scopes_requested=tuple(sorted(wanted)),
                    scopes_granted=current.record.scopes,
                    resource=resource,
                )
            await self.consent(scopes=sorted(wanted), resource=resource)
            current = await client.vault.load(self.key)
            if current is not None:
                token = self._usable(current, tk)
                if token is not None:
                    return token
            if current is None:  # pragma: no cover - consent stores the grant or raises
                raise ConsentRequired("consent did not produce a grant", scopes=tuple(wanted))
        return await self._refresh(tk, rejected=rejected)

    def _usable(self, current: VersionedGrant, tk: TokenKey) -> AccessToken | None:
        cached = current.record.tokens.get(tk)
        if cached is None:
            return None
        entry = self._hot.get(tk)
        if (
            entry is not None
            and entry[1].value.get_secret_value() == cached.value.get_secret_value()
        ):
            token = entry[1]  # keep the monotonic expiry computed at receipt
        else:
            token = self._from_cached(cached)
        if self._client._expiring(token):
            return None
        self._hot[tk] = (current.version, token)
        return token

    async def _refresh(self, tk: TokenKey, *, rejected: AccessToken | None) -> AccessToken:
        client = self._client
        vault = client.vault
        resource, wanted = tk
        async with self._refresh_lock:
            if rejected is None:
                hot = self._hot_token(tk)
                if hot is not None:
                    return hot  # another task refreshed while we waited
            lease = f"refresh:{self.key.storage_key}"
            async with vault.lease(lease, ttl=client._lease_ttl, wait=client._lease_wait):
                current = await vault.load(self.key, fresh=True)
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
        client = self._client
        vault = client.vault
        resource, wanted = tk
        record = current.record
        refresh_token = record.refresh_token
        if refresh_token is None:
            raise ConsentRequired(
                "no refresh token is held for this grant; ask the user to consent again",
                scopes=tuple(sorted(wanted)),
                resource=resource,
            )
        metadata = client.metadata
        request = refresh_request(
            _require(metadata.token_endpoint),
            refresh_token=refresh_token,
            client_auth=client.client_auth,
            issuer=metadata.issuer,
            now=client.clock.time(),
            scopes=sorted(wanted),
            resource=resource,
        )
        try:
            response = await client._token_call(request)
        except InvalidGrant as exc:
            # The grant is gone (revoked, expired, or its refresh token rotated away and
            # reused). We hold the lease, so no other refresh raced with this one.
            await self._forget_dead_grant(current)
            raise ReauthorizationRequired(
                "the authorization server no longer accepts this grant; "
                "run user.consent(...) again",
                scopes=record.scopes,
                resource=resource,
            ) from exc
        granted = set(response.scopes) if response.scopes is not None else set(wanted)
        short = wanted - granted
        # Cache the token under the scopes it really carries; a narrower grant than asked is
        # reported after the (rotated) refresh token is safely stored.
        key_scopes = wanted if not short else scope_key(sorted(granted))
        token = self._cached_token(response, resource, key_scopes)
        rotated = response.refresh_token
        # Persist the rotated refresh token with the new access token, atomically, before
        # the access token is handed out (security item 25).
        for _ in range(5):
            base = current.record
            keep_ours = base.refresh_token is not None and (
                base.refresh_token.get_secret_value() == refresh_token.get_secret_value()
            )
            updated = base.replace(
                refresh_token=(rotated or refresh_token) if keep_ours else base.refresh_token,
                tokens={**base.tokens, token.key: token},
                updated_at=client.clock.time(),
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
            access = self._remember(saved, token)
            await self._emit(
                "token.refreshed", token=access, scopes_requested=tuple(sorted(wanted))
            )
            if short:
                raise ConsentRequired(
                    "the authorization server granted fewer scopes than requested",
                    scopes=tuple(sorted(short)),
                    resource=resource,
                )
            return access
        raise VersionConflict("the grant kept changing while the refresh was stored")

    async def _forget_dead_grant(self, current: VersionedGrant) -> None:
        # if it changed meanwhile (a new consent), keep the newer grant
        with contextlib.suppress(VersionConflict):
            await self._client.vault.delete(self.key, expected_version=current.version)
        self._hot.clear()

    async def refresh_after_rejection(self, rejected: AccessToken) -> AccessToken:
        """The resource answered 401 to ``rejected``: get a new token for the same resource
        and scopes by refreshing (never a new consent first; pain point 4). If another task
        already replaced the token, that one is returned without a request."""
        tk: TokenKey = (rejected.resource, frozenset(rejected.scopes))
        return await self._acquire(tk, rejected=rejected)

    # -- audit ----------------------------------------------------------------------------

    async def _emit(self, kind: str, **fields: Any) -> None:
        if self._client.audit is not None:
            await self._client._emit(
                kind,
                tenant=self.tenant,
                user=self.user_id,
                extra={"connection": self.key.connection},
                **fields,
            )

    # -- conversions ----------------------------------------------------------------------

    def _cached_token(
        self, response: TokenResponse, resource: str | None, scopes: frozenset[str]
    ) -> CachedToken:
        now = self._client.clock.time()
        return CachedToken(
            resource=resource,
            scopes=scopes,
            value=response.access_token,
            token_type=response.token_type,
            expires_at=None if response.expires_in is None else now + response.expires_in,
            issued_at=now,
        )

    def _from_cached(self, cached: CachedToken) -> AccessToken:
        """Convert a stored token (epoch expiry) to the monotonic clock, once, at load."""
        clock = self._client.clock
        mono, wall = clock.monotonic(), clock.time()
        return AccessToken(
            value=cached.value,
            token_type=cached.token_type,
            issuer=self._client.issuer,
            resource=cached.resource,
            scopes=tuple(sorted(cached.scopes)),
            expires_at=None if cached.expires_at is None else mono + (cached.expires_at - wall),
            received_at=mono - max(0.0, wall - cached.issued_at),
        )

    def _remember(self, saved: VersionedGrant, cached: CachedToken) -> AccessToken:
        token = self._from_cached(cached)
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
        request, then the last response is returned. The token is only ever sent to URLs
        under ``resource`` (security item 23).
        """
        from agent_identity._http import ResourceAuth

        canonical = canonical_resource_uri(resource)
        return ResourceAuth(
            _UserTokenSource(self, canonical, words(scopes, "scopes")),
            resource=canonical,
            max_step_ups=max_step_ups,
        )

    # -- token exchange -------------------------------------------------------------------

    async def exchange(
        self,
        *,
        resource: str,
        scopes: str | Sequence[str] = (),
        actor: bool = True,
        subject_resource: str | None = None,
    ) -> AccessToken:
        """Exchange this user's token for one bound to ``resource`` (RFC 8693).

        The subject token is the user's token for ``subject_resource`` (default:
        ``resource``) with ``scopes``; with ``actor=True`` the agent's own token
        (client credentials) is the actor token, so the issued token's ``act`` claim
        names the agent. See :class:`~agent_identity.delegation.DelegationChain`.
        """
        wanted = words(scopes, "scopes")
        subject = await self.token(resource=subject_resource or resource, scopes=wanted)
        return await self._client.exchange(subject, resource=resource, scopes=wanted, actor=actor)

    # -- revocation -----------------------------------------------------------------------

    async def disconnect(self) -> None:
        """Revoke this user's refresh token at the authorization server (RFC 7009), then
        remove the grant from the vault, only after the server confirmed (security item
        28). Other processes stop using it within the vault's ``cache_ttl``."""
        client = self._client
        async with self._refresh_lock:
            current = await client.vault.load(self.key, fresh=True)
            if current is None:
                return
            if current.record.refresh_token is not None:
                await client.revoke(current.record.refresh_token, token_type_hint="refresh_token")
            await client.vault.delete(self.key)
            self._hot.clear()
            await self._emit("revocation", scopes_granted=current.record.scopes)

    # -- human approval (CIBA) ---------------------------------------------------------------

    async def approve(
        self,
        *,
        action: Action,
        scopes: str | Sequence[str],
        resource: str | None = None,
        ping: PingReceiver | None = None,
        login_hint: str | None = None,
        id_token_hint: str | SecretStr | None = None,
        login_hint_token: str | SecretStr | None = None,
        user_code: str | SecretStr | None = None,
        requested_expiry: int | None = None,
        acr_values: str | Sequence[str] = (),
    ) -> Approval:
        """Ask this user to approve ``action`` on their authentication device (OpenID CIBA)
        and wait for the decision; returns an :class:`~agent_identity.approval.Approval`
        whose single-use token for ``resource`` and ``scopes`` only ``approval.use(action)``
        releases, for that exact action (security items 41-45).

        Poll mode by default; with ``ping`` (a
        :class:`~agent_identity.approval.PingReceiver` serving the client's notification
        endpoint) ping mode with a poll fallback. ``login_hint`` defaults to the user id.
        A pending request survives restarts (kept in the vault): asking again for the same
        action resumes it. Raises :class:`~agent_identity.errors.ApprovalDenied`,
        :class:`~agent_identity.errors.ApprovalExpired` or
        :class:`~agent_identity.errors.ApprovalUnavailable`. See ``docs/approval.md``.
        """
        from agent_identity.approval.flow import request_approval
        from agent_identity.errors import ApprovalDenied, ApprovalExpired

        wanted = words(scopes, "scopes")
        audit = {"tool": action.tool, "resource": resource, "scopes_requested": wanted}
        await self._emit("approval.requested", approval_id=action.digest[:16], **audit)
        try:
            approval = await request_approval(
                self,
                action,
                scopes=wanted,
                resource=resource,
                ping=ping,
                login_hint=login_hint,
                id_token_hint=id_token_hint,
                login_hint_token=login_hint_token,
                user_code=user_code,
                requested_expiry=requested_expiry,
                acr_values=words(acr_values, "acr_values"),
            )
        except ApprovalDenied:
            await self._emit("approval.denied", approval_id=action.digest[:16], **audit)
            raise
        except ApprovalExpired:
            await self._emit("approval.expired", approval_id=action.digest[:16], **audit)
            raise
        await self._emit(
            "approval.granted",
            approval_id=action.digest[:16],
            binding_message=approval.binding_message,
            **audit,
        )
        return approval

    # -- MCP servers ------------------------------------------------------------------------

    def mcp_auth(self, server_url: str, **options: Any) -> McpAuth:
        """An ``httpx2.Auth`` for the MCP server at ``server_url`` as this user: discovery
        (RFC 9728, RFC 8414), registration (pre-registered, client id metadata document or
        RFC 7591), consent, tokens in the vault, refresh and step-up. ``options`` are those
        of :class:`~agent_identity.mcp.McpAuth`. See ``docs/mcp.md``."""
        from agent_identity.mcp import McpAuth

        return McpAuth(self, server_url, **options)


class _UserTokenSource:
    """What :class:`~agent_identity._http.ResourceAuth` asks for, implemented for a user."""

    def __init__(self, user: UserIdentity, resource: str, scopes: tuple[str, ...]) -> None:
        self._user = user
        self._resource = resource
        self._scopes = scopes

    async def token(self) -> AccessToken:
        return await self._user.token(resource=self._resource, scopes=self._scopes)

    async def after_unauthorized(self, rejected: AccessToken) -> AccessToken:
        return await self._user.refresh_after_rejection(rejected)

    async def after_insufficient_scope(self, scopes: Sequence[str]) -> AccessToken:
        current = await self._user._client.vault.load(self._user.key, fresh=True)
        held = current.record.scopes if current is not None else ()
        self._scopes = authz.scopes_union(self._scopes, scopes)
        await self._user.consent(
            scopes=authz.scopes_union(held, self._scopes), resource=self._resource
        )
        return await self.token()

    async def after_insufficient_authentication(
        self, acr_values: Sequence[str], max_age: int | None
    ) -> AccessToken:
        current = await self._user._client.vault.load(self._user.key, fresh=True)
        held = current.record.scopes if current is not None else self._scopes
        await self._user.consent(
            scopes=authz.scopes_union(held, self._scopes),
            resource=self._resource,
            acr_values=acr_values,
            max_age=max_age,
        )
        return await self.token()


def _grant_view(key: GrantKey, record: GrantRecord) -> Grant:
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


def _require(value: str | None) -> str:
    from agent_identity.errors import MetadataError

    if value is None:
        raise MetadataError("the authorization server metadata has no token_endpoint")
    return value
