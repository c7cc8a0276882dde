"""Human approval (OpenID CIBA, poll and ping) against the real local authorization server.

Security items 41-45: the request (openid, one hint, binding message from the action,
client authentication), the acknowledgement, polling (pending, slow_down, denial, expiry),
the ping receiver (constant-time bearer, 401 without a token request, 204 then the token),
approvals bound to one action and used once, and pending approvals that survive a restart.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.to_thread
import httpx2
import pytest
from _helpers import PAYMENTS, make_client

from agent_identity import (
    Action,
    Approval,
    ApprovalDenied,
    ApprovalExpired,
    ApprovalMismatch,
    ApprovalUnavailable,
    IdentityClient,
    TokenVault,
    UserIdentity,
)
from agent_identity.approval import PingReceiver
from agent_identity.approval.flow import PENDING_KIND
from agent_identity.devidp import CIBA_GRANT_TYPE, DevIdP
from agent_identity.oauth.jwt import peek_claims

pytestmark = [pytest.mark.anyio, pytest.mark.idp]

PAY = Action("pay_invoice", {"invoice": "INV-7", "amount": "120.00 EUR"})


async def ciba_polls(idp: DevIdP) -> list[dict[str, Any]]:
    return await idp.token_requests(CIBA_GRANT_TYPE)


async def backchannel_requests(idp: DevIdP) -> list[dict[str, Any]]:
    return [r for r in await idp.requests() if r.get("route") == "backchannel_authentication"]


async def wait_pending(idp: DevIdP, count: int = 1) -> list[dict[str, Any]]:
    with anyio.fail_after(10):
        while len(pending := await idp.ciba_pending()) < count:  # noqa: ASYNC110
            await anyio.sleep(0.02)
    return pending


@asynccontextmanager
async def approving(
    user: UserIdentity, action: Action = PAY, **kwargs: Any
) -> AsyncIterator[dict[str, Any]]:
    """Run ``user.approve`` in the background; the dict gets ``approval`` or ``error``."""
    kwargs.setdefault("scopes", ["payments.write"])
    kwargs.setdefault("resource", PAYMENTS)
    result: dict[str, Any] = {}

    async def run() -> None:
        try:
            result["approval"] = await user.approve(action=action, **kwargs)
        except Exception as exc:
            result["error"] = exc
        result["done_at"] = anyio.current_time()

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        yield result


# -- security 41/42/43: poll mode ------------------------------------------------------------


async def test_sec_41_43_poll_approve(dev_idp_factory: Callable[..., DevIdP]) -> None:
    idp = dev_idp_factory(ciba_interval=1)
    async with make_client(idp) as identity:
        async with approving(identity.user("alice")) as result:
            (pending,) = await wait_pending(idp)
            # security 41: openid added, the user as login_hint, the message from the action
            assert pending["scope"] == "openid payments.write"
            assert pending["login_hint"] == "alice"
            assert pending["client_id"] == "agent-confidential"
            assert pending["delivery_mode"] == "poll"
            assert pending["binding_message"].startswith("pay_invoice 120.00 EUR INV-7 · ")
            assert len(pending["binding_message"]) <= 64
            await idp.ciba_approve(pending["auth_req_id"])
        approval: Approval = result["approval"]
        assert approval.binding_message == pending["binding_message"]
        assert approval.subject == "alice"
        token = approval.use(PAY)
        claims = peek_claims(token.value.get_secret_value())
        assert (claims["sub"], claims["aud"], claims["scope"]) == (
            "alice",
            PAYMENTS,
            "payments.write",
        )
        polls = await ciba_polls(idp)
        assert polls[-1]["status"] == 200
        assert all(p["client_id"] == "agent-confidential" for p in polls)
        assert await identity.vault.blob_names(PENDING_KIND) == []


async def test_sec_43_poll_deny(dev_idp_factory: Callable[..., DevIdP]) -> None:
    idp = dev_idp_factory(ciba_interval=1)
    async with make_client(idp) as identity:
        async with approving(identity.user("alice")) as result:
            (pending,) = await wait_pending(idp)
            await idp.ciba_deny(pending["auth_req_id"])
        assert isinstance(result["error"], ApprovalDenied)
        polls = await ciba_polls(idp)
        assert polls[-1]["status"] == 400
        assert await identity.vault.blob_names(PENDING_KIND) == []


async def test_sec_43_slow_down_adds_five_seconds(dev_idp_factory: Callable[..., DevIdP]) -> None:
    idp = dev_idp_factory(ciba_interval=1, ciba_slow_down_once=True)
    async with make_client(idp) as identity:
        async with approving(identity.user("alice")) as result:
            (pending,) = await wait_pending(idp)
            with anyio.fail_after(15):
                while len(await ciba_polls(idp)) < 2:  # noqa: ASYNC110
                    await anyio.sleep(0.05)
            await idp.ciba_approve(pending["auth_req_id"])
        assert "approval" in result
    started = (await backchannel_requests(idp))[0]["at"]
    polls = await ciba_polls(idp)
    assert len(polls) == 3  # slow_down, pending (at the new interval), token
    first, second, third = (p["at"] for p in polls)
    assert first - started >= 0.95  # the announced interval of 1 s
    assert second - first >= 5.95  # 1 s + 5 s after slow_down
    assert third - second >= 5.95  # and for every later poll too


async def test_sec_43_expiry_no_poll_after_expires_in(
    dev_idp_factory: Callable[..., DevIdP],
) -> None:
    idp = dev_idp_factory(ciba_interval=1, ciba_ttl=3)
    async with make_client(idp) as identity:
        with anyio.fail_after(15):
            with pytest.raises(ApprovalExpired):
                await identity.user("alice").approve(
                    action=PAY, scopes=["payments.write"], resource=PAYMENTS
                )
        assert await identity.vault.blob_names(PENDING_KIND) == []
    started = (await backchannel_requests(idp))[0]["at"]
    polls = await ciba_polls(idp)
    assert 1 <= len(polls) <= 2
    assert all(p["at"] < started + 3 for p in polls)  # never after expires_in
    assert all(p["status"] == 400 for p in polls)  # authorization_pending, not expired_token


async def test_sec_41_unknown_user_is_unavailable(dev_idp: DevIdP) -> None:
    async with make_client(dev_idp) as identity:
        with pytest.raises(ApprovalUnavailable) as info:
            await identity.user("mallory").approve(action=PAY, scopes=["payments.write"])
    assert info.value.error == "unknown_user_id"


async def test_sec_41_public_client_is_refused_before_any_request(
    dev_idp_factory: Callable[..., DevIdP],
) -> None:
    idp = dev_idp_factory()
    async with make_client(idp, "agent-public") as identity:
        with pytest.raises(ApprovalUnavailable, match="client authentication"):
            await identity.user("alice").approve(action=PAY, scopes=["payments.write"])
    assert await backchannel_requests(idp) == []


# -- security 44: ping mode ------------------------------------------------------------------


@asynccontextmanager
async def ping_setup(
    dev_idp_factory: Callable[..., DevIdP], **idp_kwargs: Any
) -> AsyncIterator[tuple[DevIdP, PingReceiver, str, IdentityClient]]:
    receiver = PingReceiver()
    async with receiver.serve() as url:
        idp = await anyio.to_thread.run_sync(
            lambda: dev_idp_factory(ping_notification_endpoint=url, **idp_kwargs)
        )
        async with make_client(idp, "agent-ping") as identity:
            yield idp, receiver, url, identity


async def test_sec_44_ping_delivered_to_the_sdk_receiver(
    dev_idp_factory: Callable[..., DevIdP],
) -> None:
    async with ping_setup(dev_idp_factory) as (idp, receiver, _url, identity):
        async with approving(identity.user("alice"), ping=receiver) as result:
            (pending,) = await wait_pending(idp)
            assert pending["delivery_mode"] == "ping"
            await idp.ciba_approve(pending["auth_req_id"])
        approval: Approval = result["approval"]
        assert approval.use(PAY).resource == PAYMENTS
        assert receiver.accepted == 1
        polls = await ciba_polls(idp)
        assert [p["status"] for p in polls] == [200]  # fetched after the ping, no polling


async def test_sec_44_wrong_bearer_gets_401_and_no_token_request(
    dev_idp_factory: Callable[..., DevIdP],
) -> None:
    async with ping_setup(dev_idp_factory) as (idp, receiver, url, identity):
        async with approving(identity.user("alice"), ping=receiver) as result:
            (pending,) = await wait_pending(idp)
            body = json.dumps({"auth_req_id": pending["auth_req_id"]})
            async with httpx2.AsyncClient(trust_env=False) as http:
                forged = await http.post(
                    url,
                    content=body,
                    headers={
                        "Authorization": "Bearer " + "A" * 43,
                        "Content-Type": "application/json",
                    },
                )
                missing = await http.post(url, content=body)
            assert forged.status_code == 401
            assert missing.status_code == 401
            await anyio.sleep(0.3)
            assert await ciba_polls(idp) == []  # no token request after a refused ping
            assert receiver.rejected == 2
            await idp.ciba_approve(pending["auth_req_id"])
        assert "approval" in result
        assert [p["status"] for p in await ciba_polls(idp)] == [200]


async def test_sec_44_ping_deny(dev_idp_factory: Callable[..., DevIdP]) -> None:
    async with ping_setup(dev_idp_factory) as (idp, receiver, _url, identity):
        async with approving(identity.user("alice"), ping=receiver) as result:
            (pending,) = await wait_pending(idp)
            await idp.ciba_deny(pending["auth_req_id"])
        assert isinstance(result["error"], ApprovalDenied)
        assert receiver.accepted == 1


# -- security 45: bound to the action, single use, durable -----------------------------------


async def test_sec_45_approval_refused_for_another_action_and_replay(
    dev_idp_factory: Callable[..., DevIdP],
) -> None:
    idp = dev_idp_factory(ciba_interval=1)
    async with make_client(idp) as identity:
        async with approving(identity.user("alice")) as result:
            (pending,) = await wait_pending(idp)
            await idp.ciba_approve(pending["auth_req_id"])
        approval: Approval = result["approval"]
        bigger = Action("pay_invoice", {"invoice": "INV-7", "amount": "12000.00 EUR"})
        with pytest.raises(ApprovalMismatch):
            approval.use(bigger)
        with pytest.raises(ApprovalMismatch):
            approval.use(Action("pay_invoice", {"invoice": "INV-8", "amount": "120.00 EUR"}))
        assert approval.use(PAY)
        with pytest.raises(ApprovalMismatch):
            approval.use(PAY)  # replay


async def test_sec_45_pending_approval_resumes_after_restart(
    dev_idp_factory: Callable[..., DevIdP],
) -> None:
    idp = dev_idp_factory(ciba_interval=1)
    vault = TokenVault.memory()
    first = make_client(idp, vault=vault)
    async with first:
        with anyio.move_on_after(30) as scope:
            async with anyio.create_task_group() as tg:

                async def ask() -> None:
                    await first.user("alice").approve(
                        action=PAY, scopes=["payments.write"], resource=PAYMENTS
                    )

                tg.start_soon(ask)
                (pending,) = await wait_pending(idp)
                with anyio.fail_after(10):
                    while not await ciba_polls(idp):  # noqa: ASYNC110
                        await anyio.sleep(0.05)
                tg.cancel_scope.cancel()  # the agent goes away while waiting
        assert not scope.cancelled_caught
    assert len(await vault.blob_names(PENDING_KIND)) == 1

    second = make_client(idp, vault=vault)  # a new process, the same vault
    async with second:
        async with approving(second.user("alice")) as result:
            await anyio.sleep(0.3)
            await idp.ciba_approve(pending["auth_req_id"])
        assert result["approval"].use(PAY).resource == PAYMENTS
    assert len(await backchannel_requests(idp)) == 1  # the user was asked once
    assert await vault.blob_names(PENDING_KIND) == []
    await vault.aclose()
