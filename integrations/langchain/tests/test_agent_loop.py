"""A whole agent loop: a scripted chat model calls protected tools against the local
authorization server, and the hash-chained JSONL audit file accounts for every call.

The model (a deterministic fake from langchain-core) emits tool calls; the loop runs each
one with ``ainvoke(tool_call, config)`` and hands the ``ToolMessage`` back, as an agent
framework does. Along the way: a read tool gets a narrow read-only token, a write tool
triggers incremental consent (elevation) through the client's consent handler, and a
payment tool waits for the user's OpenID CIBA approval, once approved and once denied
(the model reads the denial as a tool result; nothing crashes).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest
from _helpers import CALENDAR, PAYMENTS, make_client
from langchain_agent_identity import current_token, protect
from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.tools import BaseTool, tool
from langchain_core.utils.function_calling import convert_to_openai_tool

from agent_identity import ApprovalPolicy, ConsentFlow, LoopbackConsent
from agent_identity.audit import AuditTrail, JsonlSink, verify_chain
from agent_identity.devidp import DevBrowser, DevIdP
from agent_identity.oauth.jwt import peek_claims

pytestmark = [pytest.mark.anyio, pytest.mark.idp]

ALICE: Any = {"configurable": {"user_id": "alice", "tenant_id": "acme"}}

#: Every access token a tool received (the audit file must hold none of them).
SEEN: list[str] = []


def _claims() -> dict[str, Any]:
    value = current_token().value.get_secret_value()
    SEEN.append(value)
    return peek_claims(value)


@tool
def list_events(day: str) -> str:
    """List the user's calendar events on a day."""
    c = _claims()
    return f"events of {day}: aud={c['aud']} scope={c['scope']} sub={c['sub']}"


@tool
def create_event(title: str, day: str) -> str:
    """Create an event in the user's calendar."""
    c = _claims()
    return f"created {title} on {day}: aud={c['aud']} scope={c['scope']} sub={c['sub']}"


@tool
async def pay_invoice(invoice: str, amount: float) -> str:
    """Pay an invoice."""
    c = _claims()
    return f"paid {invoice} {amount}: aud={c['aud']} scope={c['scope']} sub={c['sub']}"


class ScriptedModel(FakeMessagesListChatModel):
    """The fake chat model, plus ``bind_tools`` (it keeps the schemas the model sees)."""

    seen_tools: list[dict[str, Any]] = []  # noqa: RUF012 - a pydantic field

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> ScriptedModel:
        self.seen_tools = [convert_to_openai_tool(t) for t in tools]
        return self


class RecordingConsent:
    """The client's consent handler: alice's (dev) browser, recording each flow."""

    def __init__(self) -> None:
        self.flows: list[tuple[str, ...]] = []
        self.inner = LoopbackConsent(browser=DevBrowser("alice"))

    async def obtain_consent(self, flow: ConsentFlow) -> None:
        self.flows.append(flow.scopes)
        await self.inner.obtain_consent(flow)


async def alices_phone(idp: DevIdP, decisions: list[str]) -> None:
    """Alice's phone: approves the payment of INV-1, rejects anything else."""
    while True:
        for request in await idp.ciba_pending():
            binding = request["binding_message"]
            if "INV-1" in binding:
                decisions.append(f"approve {binding}")
                await idp.ciba_approve(request["auth_req_id"])
            else:
                decisions.append(f"deny {binding}")
                await idp.ciba_deny(request["auth_req_id"])
        await anyio.sleep(0.02)


async def agent_loop(model: Any, tools: dict[str, BaseTool], config: Any) -> list[BaseMessage]:
    """Model -> tool calls -> ToolMessages -> model, until the model answers in text."""
    messages: list[BaseMessage] = [HumanMessage("Plan my week and pay my invoices.")]
    for _ in range(10):
        reply = await model.ainvoke(messages)
        messages.append(reply)
        if not reply.tool_calls:
            return messages
        for call in reply.tool_calls:
            result = await tools[call["name"]].ainvoke({**call, "type": "tool_call"}, config)
            assert isinstance(result, ToolMessage)
            messages.append(result)
    raise AssertionError("the agent did not finish")


def _call(name: str, call_id: str, **args: Any) -> AIMessage:
    return AIMessage("", tool_calls=[{"name": name, "args": args, "id": call_id}])


async def test_agent_loop_tokens_elevation_approval_and_audit(
    ciba_idp: DevIdP, tmp_path: Path
) -> None:
    SEEN.clear()
    audit_file = tmp_path / "audit.jsonl"
    consent = RecordingConsent()
    policy = ApprovalPolicy(always=["pay_invoice"])
    decisions: list[str] = []
    script = [
        _call("list_events", "c1", day="monday"),
        _call("create_event", "c2", title="standup", day="tuesday"),
        _call("pay_invoice", "c3", invoice="INV-1", amount=250.0),
        _call("pay_invoice", "c4", invoice="INV-2", amount=900.0),
        AIMessage("Done: one event created, INV-1 paid, INV-2 rejected by you."),
    ]
    with anyio.fail_after(30):
        async with (
            AuditTrail(JsonlSink(audit_file)) as trail,
            make_client(ciba_idp, consent=consent, audit=trail) as identity,
        ):
            reader = protect(
                list_events,
                identity=identity,
                resource=CALENDAR,
                scopes="calendar.read",
                audit=trail,
            )
            writer = protect(
                create_event,
                identity=identity,
                resource=CALENDAR,
                scopes="calendar.write",
                audit=trail,
            )
            payer = protect(
                pay_invoice,
                identity=identity,
                resource=PAYMENTS,
                scopes="payments.write",
                approval=policy,
                audit=trail,
            )
            tools: dict[str, BaseTool] = {t.name: t for t in (reader, writer, payer)}
            model = ScriptedModel(responses=script)
            bound = model.bind_tools(list(tools.values()))
            async with anyio.create_task_group() as tg:
                tg.start_soon(alices_phone, ciba_idp, decisions)
                messages = await agent_loop(bound, tools, ALICE)
                tg.cancel_scope.cancel()

    # the model saw the tools' own schemas, nothing about tokens
    assert {
        t["function"]["name"]: sorted(t["function"]["parameters"]["properties"])
        for t in model.seen_tools
    } == {
        "list_events": ["day"],
        "create_event": ["day", "title"],
        "pay_invoice": ["amount", "invoice"],
    }

    results = {m.tool_call_id: m for m in messages if isinstance(m, ToolMessage)}
    assert list(results) == ["c1", "c2", "c3", "c4"]
    # (a) the read tool: a read-only token bound to the calendar
    assert results["c1"].status == "success"
    assert results["c1"].content == (
        f"events of monday: aud={CALENDAR} scope=calendar.read sub=alice"
    )
    # (b) the write tool: elevation by incremental consent for the union of the scopes,
    # then a write token (still bound to the calendar and to nothing else)
    assert results["c2"].status == "success"
    assert results["c2"].content == (
        f"created standup on tuesday: aud={CALENDAR} scope=calendar.write sub=alice"
    )
    assert len(consent.flows) == 2, consent.flows
    first, second = (set(flow) for flow in consent.flows)
    assert "calendar.read" in first
    assert "calendar.write" not in first
    assert {"calendar.read", "calendar.write"} <= second
    # (c) the payment: approved once on alice's phone, rejected once; the rejection is a
    # readable tool result and the loop went on to the model's final answer
    assert [d.split(" ", 1)[0] for d in decisions] == ["approve", "deny"]
    assert "pay_invoice" in decisions[0]
    assert "INV-1" in decisions[0]
    assert "INV-2" in decisions[1]
    assert results["c3"].status == "success"
    assert (
        results["c3"].content == f"paid INV-1 250.0: aud={PAYMENTS} scope=payments.write sub=alice"
    )
    assert results["c4"].status == "error"
    assert isinstance(results["c4"].content, str)
    assert "rejected this 'pay_invoice' action" in results["c4"].content
    assert "Do not retry" in results["c4"].content
    assert isinstance(messages[-1], AIMessage)
    assert messages[-1].content == script[-1].content
    assert len(SEEN) == 3  # the rejected payment never ran

    # (d) the audit file: an intact chain, one tool record per invocation, no token
    verdict = verify_chain([audit_file])
    assert verdict.ok, verdict
    text = audit_file.read_text("utf-8")
    records = [json.loads(line) for line in text.splitlines()]
    assert verdict.records == len(records)
    events = [record["event"] for record in records]
    tool_records = [e for e in events if str(e["kind"]).startswith("tool.")]
    assert len(tool_records) == 4  # four tool invocations
    assert [(e["tool"], e["kind"], e["outcome"]) for e in tool_records] == [
        ("list_events", "tool.succeeded", "ok"),
        ("create_event", "tool.succeeded", "ok"),
        ("pay_invoice", "tool.succeeded", "ok"),
        ("pay_invoice", "tool.denied", "denied"),
    ]
    assert tool_records[3]["error_type"] == "ApprovalDenied"
    for e in tool_records:
        assert (e["user"], e["tenant"]) == ("alice", "acme")
    kinds = [e["kind"] for e in events]
    assert "elevation" in kinds
    assert kinds.count("approval.granted") == 1
    assert kinds.count("approval.denied") == 1
    assert len(set(SEEN)) == 3
    for value in SEEN:
        assert value not in text
        assert value.split(".")[2] not in text  # not even the signature
    assert "eyJ" not in text  # no JWT at all (header, claims or any token)
    assert "Bearer" not in text
