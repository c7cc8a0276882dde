"""When a human is needed: CIBA approval of protected tools, the audit record of every
invocation, and LangGraph interrupts for consent."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from _helpers import CALENDAR, PAYMENTS
from _lc_helpers import AsUser, NoHumanHere, blocking_client, client
from langchain_agent_identity import current_token, current_tool_context, protect
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.tools import tool

from agent_identity import ApprovalPolicy, LoopbackConsent
from agent_identity.audit import AuditTrail, MemorySink
from agent_identity.devidp import DevBrowser, DevIdP
from agent_identity.oauth.jwt import peek_claims

pytestmark = [pytest.mark.anyio, pytest.mark.idp]

ALICE = {"configurable": {"user_id": "alice", "tenant_id": "acme"}}


async def _approve_next(idp: DevIdP, *, deny: bool = False) -> dict[str, Any]:
    with anyio.fail_after(10):
        while not (pending := await idp.ciba_pending()):  # noqa: ASYNC110
            await anyio.sleep(0.02)
    (request,) = pending
    if deny:
        await idp.ciba_deny(request["auth_req_id"])
    else:
        await idp.ciba_approve(request["auth_req_id"])
    return request


@tool
def pay_invoice(invoice: str, amount: float) -> str:
    """Pay an invoice."""
    claims = peek_claims(current_token().value.get_secret_value())
    approval = current_tool_context().approval
    return (
        f"paid {invoice} {amount} aud={claims['aud']} scope={claims['scope']} "
        f"sub={claims['sub']} approved={approval is not None}"
    )


@pytest.fixture
async def trail() -> AsyncIterator[tuple[AuditTrail, MemorySink]]:
    sink = MemorySink()
    async with AuditTrail(sink, strict=True) as audit:
        yield audit, sink


async def test_approval_composes_with_the_token_requirement_in_any_order(
    ciba_idp: DevIdP,
) -> None:
    policy = ApprovalPolicy(when={"pay_invoice": ApprovalPolicy.above("amount", 100)})
    async with client(ciba_idp) as identity:
        approval_first = protect(
            protect(pay_invoice, identity=identity, approval=policy),
            resource=PAYMENTS,
            scopes="payments.write",
        )
        token_first = protect(
            protect(pay_invoice, identity=identity, resource=PAYMENTS, scopes="payments.write"),
            approval=policy,
        )
        for n, protected in enumerate((approval_first, token_first)):
            args = {"invoice": f"INV-{n}", "amount": 250.0}
            result: dict[str, Any] = {}

            async def run(
                protected: Any = protected, args: Any = args, result: Any = result
            ) -> None:
                result["out"] = await protected.ainvoke(
                    {"type": "tool_call", "name": "pay_invoice", "args": args, "id": "c1"},
                    config=ALICE,
                )

            async with anyio.create_task_group() as tg:
                tg.start_soon(run)
                request = await _approve_next(ciba_idp)
            # the binding message comes from the call itself (security item 41)
            assert request["binding_message"].startswith(f"pay_invoice 250.0 INV-{n}")
            assert request["login_hint"] == "alice"
            message = result["out"]
            assert isinstance(message, ToolMessage)
            assert message.content == (
                f"paid INV-{n} 250.0 aud={PAYMENTS} scope=payments.write sub=alice approved=True"
            )
        # under the threshold: no approval, the user's own narrow token
        small = await token_first.ainvoke({"invoice": "INV-9", "amount": 5.0}, config=ALICE)
        assert small.endswith("sub=alice approved=False")
        assert await ciba_idp.ciba_pending() == []


async def _denied_payment(idp: DevIdP, protected: Any) -> str:
    result: dict[str, Any] = {}

    async def run() -> None:
        result["out"] = await protected.ainvoke(
            {"invoice": "INV-1", "amount": 1000.0}, config=ALICE
        )

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        await _approve_next(idp, deny=True)
    out: str = result["out"]
    return out


async def test_a_denied_approval_is_a_tool_result(ciba_idp: DevIdP) -> None:
    async with client(ciba_idp) as identity:
        protected = protect(
            pay_invoice,
            identity=identity,
            resource=PAYMENTS,
            scopes="payments.write",
            approval=ApprovalPolicy(always=["pay_invoice"]),
        )
        text = await _denied_payment(ciba_idp, protected)
    assert "rejected this 'pay_invoice' action" in text
    assert "Do not retry" in text


@tool
def boom() -> str:
    """Fails."""
    raise RuntimeError("the tool broke")


async def test_one_audit_record_per_invocation_failures_included(
    ciba_idp: DevIdP, trail: tuple[AuditTrail, MemorySink]
) -> None:
    audit, sink = trail

    @tool
    async def read() -> str:
        """Read."""
        return "read"

    denying = LoopbackConsent(browser=DevBrowser("alice", approve=False))
    async with client(ciba_idp) as identity, client(ciba_idp, consent=denying) as refused:
        ok = protect(
            read, identity=identity, resource=CALENDAR, scopes="calendar.read", audit=audit
        )
        denied = protect(
            read, identity=refused, resource=CALENDAR, scopes="calendar.read", audit=audit
        )
        failing = protect(boom, identity=identity, resource=CALENDAR, audit=audit)
        paying = protect(
            pay_invoice,
            identity=identity,
            resource=PAYMENTS,
            scopes="payments.write",
            approval=ApprovalPolicy(always=["pay_invoice"]),
            audit=audit,
        )
        for _ in range(3):
            assert await ok.ainvoke({}, config=ALICE) == "read"
        assert "declined" in await denied.ainvoke({}, config=ALICE)
        with pytest.raises(RuntimeError):
            await failing.ainvoke({}, config=ALICE)
        assert "rejected" in await _denied_payment(ciba_idp, paying)
        assert "not known which user" in await ok.ainvoke({})  # nobody to act for
    # a strict trail also writes tool.started before each call that reaches its tool
    started = [e.tool for e in sink.events if e.kind == "tool.started"]
    assert started == ["read"] * 3 + ["boom"]
    records = [e for e in sink.events if e.kind != "tool.started"]
    outcomes = [e.outcome for e in records]
    assert outcomes == ["ok", "ok", "ok", "denied", "error", "denied", "denied"]
    assert [e.tool for e in records] == ["read"] * 4 + ["boom", "pay_invoice", "read"]
    assert [e.error_type for e in records[3:]] == [
        "ConsentDenied",
        "RuntimeError",
        "ApprovalDenied",
        "UserUnknown",
    ]
    for event in records[:-1]:
        assert (event.user, event.tenant) == ("alice", "acme")
    assert records[-1].user is None
    for event in sink.events:
        assert event.resource == CALENDAR or event.tool == "pay_invoice"
        assert "Bearer" not in event.model_dump_json()


def test_sync_invoke_audits_and_interrupts_through_the_blocking_client(
    ciba_idp: DevIdP,
) -> None:
    from langgraph.types import Command

    @tool
    def agenda(day: str) -> str:
        """The user's agenda."""
        return f"{day}: {current_token().resource}"

    sink = MemorySink()
    trail = AuditTrail(sink, strict=True)
    nobody = NoHumanHere()
    with (
        blocking_client(ciba_idp, consent=nobody) as identity,
        identity.portal.wrap_async_context_manager(trail),  # the trail lives on the portal
    ):
        protected = protect(
            agenda,
            identity=identity,
            resource=CALENDAR,
            scopes="calendar.read",
            audit=trail,
            interrupt_on_human=True,
        )
        graph = _graph(protected)
        call = {"name": "agenda", "args": {"day": "fri"}, "id": "c1", "type": "tool_call"}
        start = {"messages": [AIMessage(content="", tool_calls=[call])]}
        config: Any = {"configurable": {"thread_id": "s1", "user_id": "alice"}}
        out = graph.invoke(start, config=config)
        assert out["__interrupt__"][0].value["kind"] == "consent"
        identity.user("alice").consent(scopes="calendar.read", resource=CALENDAR, handler=AsUser())
        out = graph.invoke(Command(resume=True), config=config)
        assert out["messages"][-1].content == f"fri: {CALENDAR}"
        assert "not known which user" in protected.invoke({"day": "sat"})
    records = [e for e in sink.events if e.kind != "tool.started"]  # strict: one before the call
    assert [e.kind for e in sink.events].count("tool.started") == 1
    assert [e.outcome for e in records] == ["denied", "ok", "denied"]
    assert [e.error_type for e in records] == ["ConsentRequired", None, "UserUnknown"]


# -- LangGraph: interrupt for the human, resume after they acted ---------------------------


def _graph(protected: Any) -> Any:
    from langgraph.checkpoint.memory import InMemorySaver
    from langgraph.graph import END, START, MessagesState, StateGraph
    from langgraph.prebuilt import ToolNode

    builder = StateGraph(MessagesState)
    builder.add_node("tools", ToolNode([protected]))
    builder.add_edge(START, "tools")
    builder.add_edge("tools", END)
    return builder.compile(checkpointer=InMemorySaver())


async def test_interrupt_on_human_pauses_the_graph_until_consent(dev_idp: DevIdP) -> None:
    from langgraph.types import Command

    @tool
    async def agenda(day: str) -> str:
        """The user's agenda."""
        claims = peek_claims(current_token().value.get_secret_value())
        return f"{day}: aud={claims['aud']} sub={claims['sub']}"

    nobody = NoHumanHere()
    async with client(dev_idp, consent=nobody) as identity:
        protected = protect(
            agenda,
            identity=identity,
            resource=CALENDAR,
            scopes="calendar.read",
            interrupt_on_human=True,
        )
        graph = _graph(protected)
        call = {"name": "agenda", "args": {"day": "monday"}, "id": "call-1", "type": "tool_call"}
        start = {"messages": [AIMessage(content="", tool_calls=[call])]}
        config: Any = {"configurable": {"thread_id": "t1", "user_id": "alice", "tenant_id": "acme"}}

        out = await graph.ainvoke(start, config=config)
        (interrupt,) = out["__interrupt__"]
        payload = interrupt.value
        assert payload["kind"] == "consent"
        assert payload["reason"] == "required"
        assert (payload["user"], payload["tenant"], payload["tool"]) == ("alice", "acme", "agenda")
        assert payload["resource"] == CALENDAR
        assert "calendar.read" in payload["scopes"]
        assert "Ask the user to connect" in payload["message"]

        # the application brings alice in, then resumes the graph
        await identity.user("alice", tenant="acme").consent(
            scopes="calendar.read", resource=CALENDAR, handler=AsUser()
        )
        out = await graph.ainvoke(Command(resume=True), config=config)
        message = out["messages"][-1]
        assert isinstance(message, ToolMessage)
        assert message.content == f"monday: aud={CALENDAR} sub=alice"

        # bob does not act: the model is told, and the graph ends normally
        config = {"configurable": {"thread_id": "t2", "user_id": "bob", "tenant_id": "acme"}}
        out = await graph.ainvoke(start, config=config)
        assert out["__interrupt__"][0].value["user"] == "bob"
        out = await graph.ainvoke(Command(resume=False), config=config)
        message = out["messages"][-1]
        assert isinstance(message, ToolMessage)
        assert message.status == "error"
        assert "did not complete the consent" in message.content
