"""The audit trail over real flows: one record per tool invocation (failures included),
records for consent, elevation, refresh, exchange, approval and revocation, and never a
secret in any record (security item 40)."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from _helpers import CALENDAR, PAYMENTS, make_client

from agent_identity import ApprovalPolicy, IdentityClient
from agent_identity.audit import AuditTrail, JsonlSink, MemorySink, verify_chain
from agent_identity.devidp import DEV_CLIENT_SECRETS, DevIdP
from agent_identity.tools import ToolCall, ToolGuard, ToolRequirement, current_token

pytestmark = [pytest.mark.anyio, pytest.mark.idp]


def _secrets_of(identity: IdentityClient, *tokens: Any) -> list[str]:
    values = [t.value.get_secret_value() for t in tokens]
    secret = DEV_CLIENT_SECRETS.get(identity.client_id)
    if secret is not None:
        values.append(secret)
    return values


async def test_sec_40_every_tool_invocation_yields_exactly_one_record(dev_idp: DevIdP) -> None:
    sink = MemorySink()
    async with AuditTrail(sink) as trail, make_client(dev_idp, audit=trail) as identity:
        guard = ToolGuard(identity, audit=trail)
        read = ToolRequirement(resource=CALENDAR, scopes=("calendar.read",))
        seen: list[str] = []

        async def list_events() -> str:
            token = current_token()
            seen.append(token.value.get_secret_value())
            return "3 events"

        async def broken() -> str:
            raise RuntimeError("the calendar API is down")

        call = ToolCall("list_events", {"day": "monday"}, user="alice", tenant="acme")
        assert await guard.run(call, read, list_events) == "3 events"
        assert await guard.run(call, read, list_events) == "3 events"
        with pytest.raises(RuntimeError):
            await guard.run(ToolCall("broken", {}, user="alice", tenant="acme"), read, broken)
        with pytest.raises(Exception):  # noqa: B017, PT011 - no user: refused, and audited
            await guard.run(ToolCall("list_events", {}, user="", tenant="acme"), read, list_events)
        await trail.flush()

    tool_records = [e for e in sink.events if e.kind.startswith("tool.")]
    assert [e.kind for e in tool_records] == ["tool.succeeded", "tool.succeeded", "tool.failed"]
    assert tool_records[0].tool == "list_events"
    assert tool_records[0].arguments is None  # only a hash unless opted in
    assert tool_records[0].arguments_hash is not None
    assert tool_records[2].error_type == "RuntimeError"
    kinds = [e.kind for e in sink.events]
    assert "consent.granted" in kinds
    assert "token.refreshed" in kinds or "consent.granted" in kinds
    dump = "\n".join(e.model_dump_json() for e in sink.events)
    for secret in seen:
        assert secret not in dump


async def test_flow_records_and_a_verifiable_jsonl_chain(dev_idp: DevIdP, tmp_path: Any) -> None:
    path = tmp_path / "audit.jsonl"
    async with (
        AuditTrail(JsonlSink(path)) as trail,
        make_client(dev_idp, audit=trail) as identity,
    ):
        alice = identity.user("alice", tenant="acme")
        await alice.consent(scopes="openid calendar.read", resource=CALENDAR)
        narrow = await alice.token(resource=CALENDAR, scopes="calendar.read")
        wider = await alice.token(resource=CALENDAR, scopes="calendar.write")  # elevation
        exchanged = await alice.exchange(resource=CALENDAR, scopes="calendar.read")
        await alice.disconnect()
        await trail.flush()
        secrets = _secrets_of(identity, narrow, wider, exchanged)
    text = path.read_text()
    kinds = [line.split('"kind":"', 1)[1].split('"', 1)[0] for line in text.splitlines()]
    for expected in ("consent.granted", "elevation", "token.exchanged", "revocation"):
        assert expected in kinds
    for secret in secrets:
        assert secret not in text
    result = verify_chain([path])
    assert result.ok, result.reason
    assert result.records == len(kinds)


async def test_approval_through_the_guard_is_audited(dev_idp: DevIdP) -> None:
    sink = MemorySink()
    policy = ApprovalPolicy(when={"pay_invoice": ApprovalPolicy.above("amount", 100)})
    async with AuditTrail(sink) as trail, make_client(dev_idp, audit=trail) as identity:
        guard = ToolGuard(identity, audit=trail)
        need = ToolRequirement(resource=PAYMENTS, scopes=("payments.write",), approval=policy)
        paid: list[str] = []

        async def pay() -> str:
            paid.append(current_token().value.get_secret_value())
            return "paid"

        async def approve_when_asked() -> None:
            with anyio.fail_after(10):
                while not (pending := await dev_idp.ciba_pending()):  # noqa: ASYNC110
                    await anyio.sleep(0.05)
            await dev_idp.ciba_approve(pending[0]["auth_req_id"])

        call = ToolCall("pay_invoice", {"invoice": "INV-7", "amount": "120.00 EUR"}, user="alice")
        async with anyio.create_task_group() as tg:
            tg.start_soon(approve_when_asked)
            assert await guard.run(call, need, pay) == "paid"
        await trail.flush()
    kinds = [e.kind for e in sink.events]
    assert kinds.count("approval.requested") == 1
    assert kinds.count("approval.granted") == 1
    assert kinds.count("tool.succeeded") == 1
    record = next(e for e in sink.events if e.kind == "tool.succeeded")
    assert record.binding_message is not None
    assert "INV-7" in record.binding_message
    dump = "\n".join(e.model_dump_json() for e in sink.events)
    assert paid[0] not in dump
