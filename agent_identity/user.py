"""The agent acting for one user: a grant at the client's authorization server, human
approval (CIBA) and MCP servers.

A :class:`UserIdentity` is what :meth:`IdentityClient.user
<agent_identity.IdentityClient.user>` returns. With an authorization server configured, it
offers that server's grant (consent, narrow per-tool tokens, elevation, exchange,
revocation; implemented by :class:`~agent_identity.grant.UserGrant`) and human approval
(:meth:`UserIdentity.approve`, OpenID CIBA). Whatever the configuration it authorizes
requests to MCP servers as this user (:meth:`UserIdentity.mcp_auth`), at whatever
authorization server each MCP server names; an identity client configured for MCP servers
only has no server of its own, and the grant methods then raise
:class:`~agent_identity.errors.ConfigurationError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from agent_identity.errors import (
    ApprovalDenied,
    ApprovalExpired,
    ApprovalPending,
    ConfigurationError,
)
from agent_identity.grant import AgentContext, UserGrant, words
from agent_identity.models import AccessToken, Grant

if TYPE_CHECKING:
    import httpx2
    from pydantic import SecretStr

    from agent_identity.approval import Action, Approval, PingReceiver
    from agent_identity.consent.base import ConsentHandler
    from agent_identity.grant import Details
    from agent_identity.mcp import McpAuth
    from agent_identity.vault.records import GrantKey

__all__ = ["UserIdentity"]


class UserIdentity:
    """The agent acting for one user in one tenant. Get one with
    :meth:`IdentityClient.user <agent_identity.IdentityClient.user>`."""

    def __init__(
        self,
        context: AgentContext,
        *,
        tenant: str,
        user_id: str,
        grant: UserGrant | None,
        mcp_defaults: dict[str, Any] | None = None,
    ) -> None:
        if not user_id or not tenant:
            raise ConfigurationError("user_id and tenant must be non-empty")
        self._context = context
        self.tenant = tenant
        self.user_id = user_id
        self._grant = grant
        self._mcp_defaults = dict(mcp_defaults or {})

    def __repr__(self) -> str:
        connection = self._grant.key.connection if self._grant is not None else None
        return (
            f"UserIdentity(tenant={self.tenant!r}, user_id={self.user_id!r}, "
            f"connection={connection!r})"
        )

    @property
    def context(self) -> AgentContext:
        return self._context

    @property
    def main(self) -> UserGrant:
        """The grant at the identity client's own authorization server."""
        if self._grant is None:
            raise ConfigurationError(
                "this IdentityClient has no authorization server of its own (it was built "
                "for MCP servers only): pass an issuer, static metadata or a provider "
                "profile to use consent(), token(), exchange(), approve() or disconnect()"
            )
        return self._grant

    @property
    def key(self) -> GrantKey:
        """Where the grant at the client's own server lives in the vault."""
        return self.main.key

    # -- the grant at the client's own server (see agent_identity.grant.UserGrant) ---------

    async def grant(self) -> Grant | None:
        """What this user granted at the client's server, or ``None``."""
        return await self.main.grant()

    async def connections(self) -> list[Grant]:
        """Every grant this user has in the vault, at any connection of this tenant
        (the client's server, MCP servers, other clients sharing the vault)."""
        from agent_identity.grant import grant_view

        vault = self._context.vault
        grants: list[Grant] = []
        for key in await vault.grants(self.tenant, self.user_id):
            current = await vault.load(key)
            if current is not None:
                grants.append(grant_view(key, current.record))
        return grants

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
        """Ask the user to consent; see :meth:`UserGrant.consent
        <agent_identity.grant.UserGrant.consent>`."""
        return await self.main.consent(
            scopes=scopes,
            resource=resource,
            resources=resources,
            handler=handler,
            prompt=prompt,
            login_hint=login_hint,
            acr_values=acr_values,
            max_age=max_age,
            extra_params=extra_params,
            authorization_details=authorization_details,
        )

    async def token(
        self, *, resource: str | None = None, scopes: str | Sequence[str] = ()
    ) -> AccessToken:
        """The narrowest valid access token for ``resource`` with ``scopes``; see
        :meth:`UserGrant.token <agent_identity.grant.UserGrant.token>`."""
        return await self.main.token(resource=resource, scopes=scopes)

    async def refresh_after_rejection(self, rejected: AccessToken) -> AccessToken:
        """A new token after a resource answered 401 to ``rejected`` (refresh first)."""
        return await self.main.refresh_after_rejection(rejected)

    def http_auth(
        self,
        *,
        resource: str,
        scopes: str | Sequence[str] = (),
        max_step_ups: int = 2,
    ) -> httpx2.Auth:
        """An ``httpx2.Auth`` for ``resource``; see :meth:`UserGrant.http_auth
        <agent_identity.grant.UserGrant.http_auth>`."""
        return self.main.http_auth(resource=resource, scopes=scopes, max_step_ups=max_step_ups)

    async def exchange(
        self,
        *,
        resource: str,
        scopes: str | Sequence[str] = (),
        actor: bool = True,
        subject_resource: str | None = None,
        authorization_details: Details | None = None,
    ) -> AccessToken:
        """RFC 8693 token exchange with the agent as actor; see :meth:`UserGrant.exchange
        <agent_identity.grant.UserGrant.exchange>`."""
        return await self.main.exchange(
            resource=resource,
            scopes=scopes,
            actor=actor,
            subject_resource=subject_resource,
            authorization_details=authorization_details,
        )

    async def disconnect(self, *, revoke: bool = True) -> None:
        """Revoke the grant at the client's server (RFC 7009), then forget it; see
        :meth:`UserGrant.disconnect <agent_identity.grant.UserGrant.disconnect>`."""
        await self.main.disconnect(revoke=revoke)

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
        binding_message: str | None = None,
        authorization_details: Details | None = None,
        key: str | None = None,
        wait: float | None = None,
    ) -> Approval:
        """Ask this user to approve ``action`` on their authentication device (OpenID CIBA)
        and wait for the decision; returns an :class:`~agent_identity.approval.Approval`
        whose single-use token for ``resource`` and ``scopes`` only ``approval.use(action)``
        releases, for that exact action (security items 41-45).

        Poll mode by default; with ``ping`` (a
        :class:`~agent_identity.approval.PingReceiver` serving the client's notification
        endpoint) ping mode with a poll fallback. ``login_hint`` defaults to the client's
        ``ciba_login_hint`` hook, else the user id. ``authorization_details`` (RFC 9396,
        default: what the client's ``action_details`` map the tool to) are shown to the
        user by the server and must come back with the token. A pending request survives restarts
        (kept in the vault): asking again for the same action resumes it. Raises
        :class:`~agent_identity.errors.ApprovalDenied`,
        :class:`~agent_identity.errors.ApprovalExpired` or
        :class:`~agent_identity.errors.ApprovalUnavailable`. See ``docs/approval.md``.

        ``binding_message``: a template of the message on the user's device
        (``"Pay {amount} for {invoice}"``, filled from the action's arguments; a random code
        is appended). ``authorization_details``: RFC 9396 details sent as given. ``key``
        (e.g. thread and tool call id) makes the request resumable: asking again with the
        same key continues the same request, and a denial or expiry is remembered for it;
        ``wait`` (seconds) bounds the wait, after which
        :class:`~agent_identity.errors.ApprovalPending` is raised and the request stays
        pending.
        """
        from agent_identity.approval.flow import request_approval

        grant = self.main
        wanted = words(scopes, "scopes")
        audit = {"tool": action.tool, "resource": resource, "scopes_requested": wanted}
        async def requested() -> None:  # once per prompt on the user's device
            await grant.audit_event(
                "approval.requested", approval_id=action.digest[:16], **audit
            )

        try:
            approval = await request_approval(
                grant,
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
                binding_message_template=binding_message,
                authorization_details=authorization_details,
                key=key,
                wait=wait,
                on_requested=requested,
            )
        except ApprovalPending:
            raise  # still pending: the decision is audited when it comes
        except ApprovalDenied:
            await grant.audit_event("approval.denied", approval_id=action.digest[:16], **audit)
            raise
        except ApprovalExpired:
            await grant.audit_event("approval.expired", approval_id=action.digest[:16], **audit)
            raise
        await grant.audit_event(
            "approval.granted",
            approval_id=action.digest[:16],
            binding_message=approval.binding_message,
            **audit,
        )
        return approval

    # -- MCP servers ------------------------------------------------------------------------

    def mcp_auth(self, server_url: str, **options: Any) -> McpAuth:
        """An ``httpx2.Auth`` for the MCP server at ``server_url`` as this user: discovery
        (RFC 9728, RFC 8414, or the 2025-03-26 fallback), registration (pre-registered,
        client id metadata document or RFC 7591), consent, tokens in the vault, refresh and
        step-up. With ``cross_app_access=True``: enterprise-managed authorization (SEP-990),
        the user's ID token from this client's issuer exchanged for an identity assertion
        grant, no consent. ``options`` are those of :class:`~agent_identity.mcp.McpAuth`
        (defaults come from the identity client's ``mcp=`` settings; its ``clients`` are
        shared by every MCP server). See ``docs/mcp.md``."""
        from agent_identity.mcp import McpAuth

        return McpAuth(self, server_url, **mcp_options(self._mcp_defaults, options))


def mcp_options(defaults: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    """``mcp_auth`` options over the identity client's ``mcp=`` defaults, whose ``clients``
    become ``shared_clients`` (entries for other MCP servers are expected there)."""
    merged = {**defaults, **options}
    if "clients" in defaults:
        merged.setdefault("shared_clients", defaults["clients"])
        if "clients" not in options:
            del merged["clients"]
    return merged
