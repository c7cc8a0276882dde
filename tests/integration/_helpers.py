"""Shared helpers of the integration tests (the local authorization server's clients)."""

from __future__ import annotations

from typing import Any

from agent_identity import IdentityClient, LoopbackConsent
from agent_identity.devidp import DEV_CLIENTS, DevBrowser, DevIdP

CALENDAR = "https://calendar.example/api"
MAIL = "https://mail.example/api"
PAYMENTS = "https://payments.example/api"


def make_client(
    idp: DevIdP, client_id: str = "agent-confidential", **kwargs: Any
) -> IdentityClient:
    """An IdentityClient for one of the dev server's static clients; alice approves."""
    secret, method = DEV_CLIENTS[client_id]
    if method == "private_key_jwt":
        kwargs.setdefault("private_key", idp.jwt_client_private_jwk)
    elif secret is not None:
        kwargs.setdefault("client_secret", secret)
    kwargs.setdefault("consent", LoopbackConsent(browser=DevBrowser("alice")))
    return IdentityClient(idp.issuer, client_id=client_id, allow_insecure_loopback=True, **kwargs)


async def record_of(identity: IdentityClient, user: str, tenant: str = "default") -> Any:
    """The stored grant record (fresh from the vault)."""
    current = await identity.vault.load(identity.user(user, tenant=tenant).key, fresh=True)
    assert current is not None
    return current.record
