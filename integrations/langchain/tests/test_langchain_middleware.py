"""IdentityMiddleware in LangChain v1 agents (``create_agent``), against the local
authorization server, with a scripted fake chat model and LangGraph's checkpointer.

Also here: approvals that do not block and never repeat (one CIBA request per tool call
however often the graph is resumed; a denial is a readable result), delegation kept
under approval, and no silent failure (a missing user is logged and audited; every
refusal is audited; human-needed results carry a structured artifact)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

import anyio
import httpx2
import pytest
from _helpers import CALENDAR, PAYMENTS, make_client
from _lc_helpers import AsUser, NoHumanHere, blocking_client, client
from langchain.agents import create_agent
from langchain_agent_identity import (
    ApprovalOptions,
    IdentityMiddleware,
    ToolRequirement,
    current_token,
    protect,
)
from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command

from agent_identity import ApprovalPolicy, ConfigurationError, WebConsent
from agent_identity.audit import AuditTrail, MemorySink
from agent_identity.devidp import DevIdP
from agent_identity.oauth.jwt import peek_claims

pytestmark = [pytest.mark.anyio, pytest.mark.idp]


class ScriptedModel(FakeMessagesListChatModel):
    """A fake chat model that agents can bind tools to."""

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> ScriptedModel:
        return self


def calling(name: str, args: dict[str, Any], call_id: str = "call-1") -> ScriptedModel:
    """A model that calls one tool, then answers."""
    return ScriptedModel(
        responses=[
            AIMessage(content="", tool_calls=[{"name": name, "args": args, "id": call_id}]),
            AIMessage(content="done"),
        ]
    )


@tool
def list_events(day: str) -> str:
    """List the user's calendar events on a day."""
    claims = peek_claims(current_token().value.get_secret_value())
    return f"events of {day}: aud={claims['aud']} scope={claims['scope']} sub={claims['sub']}"


@tool
def pay_invoice(invoice: str, amount: float) -> str:
    """Pay an invoice."""
    claims = peek_claims(current_token().value.get_secret_value())
    act = claims.get("act")
    return f"paid {invoice} {amount} sub={claims['sub']} act={act['sub'] if act else None}"


@tool
def echo(text: str) -> str:
    """Echo (not protected)."""
    return text


@pytest.fixture
async def trail() -> AsyncIterator[tuple[AuditTrail, MemorySink]]:
    sink = MemorySink()
    async with AuditTrail(sink, strict=True) as audit:
        yield audit, sink


def tool_messages(state: dict[str, Any]) -> list[ToolMessage]:
    return [m for m in state["messages"] if isinstance(m, ToolMessage)]


async def pending_for(idp: DevIdP, invoice: str) -> dict[str, Any]:
    """The one CIBA request pending at the (session-wide) server for ``invoice``."""
    (request,) = [r for r in await idp.ciba_pending() if invoice in r["binding_message"]]
    return request


async def backchannel_requests(idp: DevIdP) -> list[dict[str, Any]]:
    return [r for r in await idp.requests() if r.get("route") == "backchannel_authentication"]


CONFIG: Any = {"configurable": {"thread_id": "thread-1", "user_id": "alice"}}


async def test_create_agent_tools_get_the_users_narrow_token(
    dev_idp: DevIdP, trail: tuple[AuditTrail, MemorySink]
) -> None:
    audit, sink = trail
    async with client(dev_idp) as identity:
        middleware = IdentityMiddleware(
            identity,
            tools={"list_events": {"resource": CALENDAR, "scopes": "calendar.read"}},
            audit=audit,
        )
        agent = create_agent(
            ScriptedModel(
                responses=[
                    AIMessage(
                        content="",
                        tool_calls=[
                            {"name": "list_events", "args": {"day": "monday"}, "id": "c1"},
                            {"name": "echo", "args": {"text": "hi"}, "id": "c2"},
                        ],
                    ),
                    AIMessage(content="done"),
                ]
            ),
            tools=[list_events, echo],
            middleware=[middleware],
        )
        state = await agent.ainvoke(
            {"messages": [HumanMessage("what is on monday?")]},
            config={"configurable": {"user_id": "alice"}},
        )
    events, echoed = tool_messages(state)
    assert events.content == f"events of monday: aud={CALENDAR} scope=calendar.read sub=alice"
    assert echoed.content == "hi"  # not named: untouched
    records = [e for e in sink.events if e.kind.startswith("tool.")]
    assert [(e.kind, e.tool, e.user) for e in records] == [
        ("tool.started", "list_events", "alice"),  # strict: written before the tool runs
        ("tool.succeeded", "list_events", "alice"),
    ]


async def test_the_user_can_come_from_the_runtime_context(dev_idp: DevIdP) -> None:
    async with client(dev_idp) as identity:
        agent = create_agent(
            calling("list_events", {"day": "friday"}),
            tools=[list_events],
            middleware=[
                IdentityMiddleware(
                    identity, tools={"list_events": ToolRequirement(CALENDAR, ("calendar.read",))}
                )
            ],
            context_schema=dict,
        )
        state = await agent.ainvoke(
            {"messages": [HumanMessage("friday?")]}, context={"user_id": "alice"}
        )
    (message,) = tool_messages(state)
    assert message.content.endswith("sub=alice")


def test_sync_invoke_with_a_blocking_client(dev_idp: DevIdP) -> None:
    with blocking_client(dev_idp) as identity:
        agent = create_agent(
            calling("list_events", {"day": "tuesday"}),
            tools=[list_events],
            middleware=[
                IdentityMiddleware(
                    identity,
                    tools={"list_events": {"resource": CALENDAR, "scopes": ["calendar.read"]}},
                )
            ],
        )
        state = agent.invoke(
            {"messages": [HumanMessage("tuesday?")]}, config={"configurable": {"user_id": "alice"}}
        )
    (message,) = tool_messages(state)
    assert message.content == f"events of tuesday: aud={CALENDAR} scope=calendar.read sub=alice"


# -- approvals that do not block and never repeat ------------------------------------------


def _payments(policy: ApprovalPolicy, **options: Any) -> dict[str, Any]:
    return {
        "resource": PAYMENTS,
        "scopes": "payments.write",
        "approval": policy,
        "approval_options": ApprovalOptions(wait=0, **options),
    }


async def test_one_ciba_request_per_tool_call_however_often_it_is_resumed(
    ciba_idp: DevIdP, trail: tuple[AuditTrail, MemorySink]
) -> None:
    audit, sink = trail
    policy = ApprovalPolicy(always=["pay_invoice"])
    async with client(ciba_idp) as identity:
        agent = create_agent(
            calling("pay_invoice", {"invoice": "INV-7", "amount": 120.0}),
            tools=[pay_invoice],
            middleware=[
                IdentityMiddleware(
                    identity,
                    tools={
                        "pay_invoice": _payments(
                            policy,
                            binding_message="Pay {amount} for {invoice}",
                            requested_expiry=120,
                        )
                    },
                    audit=audit,
                    interrupt_on_human=True,
                )
            ],
            checkpointer=InMemorySaver(),
        )
        await ciba_idp.clear_requests()
        state = await agent.ainvoke({"messages": [HumanMessage("pay INV-7")]}, config=CONFIG)
        # not blocked: the graph is paused with the request pending on alice's phone
        (paused,) = state["__interrupt__"]
        value = paused.value
        assert (value["kind"], value["reason"]) == ("approval", "pending")
        assert value["tool_call_id"] == "call-1"
        assert value["name"] == "pay_invoice"
        assert value["allowed_decisions"] == ["approve", "edit", "reject", "respond"]
        assert value["binding_message"].startswith("Pay 120.0 for INV-7 · ")
        pending = await pending_for(ciba_idp, "INV-7")
        assert pending["binding_message"] == value["binding_message"]
        # resumed twice before alice decided: the same request, no new prompt
        for _ in range(2):
            state = await agent.ainvoke(Command(resume={"type": "approve"}), config=CONFIG)
            assert state["__interrupt__"][0].value["reason"] == "pending"
        assert len(await backchannel_requests(ciba_idp)) == 1
        await ciba_idp.ciba_approve(pending["auth_req_id"])
        await anyio.sleep(1.1)  # the request's polling interval (wait=0 never waits for it)
        state = await agent.ainvoke(Command(resume={"type": "approve"}), config=CONFIG)
    assert "__interrupt__" not in state, state["__interrupt__"][0].value
    (message,) = tool_messages(state)
    assert message.content == "paid INV-7 120.0 sub=alice act=None"
    assert len(await backchannel_requests(ciba_idp)) == 1  # one prompt for the action
    kinds = [e.kind for e in sink.events if e.kind.startswith(("tool.", "approval."))]
    assert kinds.count("tool.succeeded") == 1
    # every check of the pending approval is on record, as a refusal to run yet
    pending_checks = [e for e in sink.events if e.error_type == "ApprovalPending"]
    assert pending_checks
    assert all(e.kind == "tool.denied" for e in pending_checks)


async def test_a_denial_is_a_readable_result_and_is_never_asked_again(
    ciba_idp: DevIdP,
) -> None:
    policy = ApprovalPolicy(always=["pay_invoice"])
    async with client(ciba_idp) as identity:
        middleware = IdentityMiddleware(
            identity, tools={"pay_invoice": _payments(policy)}, interrupt_on_human=True
        )
        agent = create_agent(
            calling("pay_invoice", {"invoice": "INV-8", "amount": 900.0}, "call-9"),
            tools=[pay_invoice],
            middleware=[middleware],
            checkpointer=InMemorySaver(),
        )
        await ciba_idp.clear_requests()
        state = await agent.ainvoke({"messages": [HumanMessage("pay")]}, config=CONFIG)
        assert state["__interrupt__"][0].value["reason"] == "pending"
        pending = await pending_for(ciba_idp, "INV-8")
        await ciba_idp.ciba_deny(pending["auth_req_id"])
        await anyio.sleep(1.1)
        state = await agent.ainvoke(Command(resume={"type": "approve"}), config=CONFIG)
        assert "__interrupt__" not in state  # a denial does not interrupt the graph
        (message,) = tool_messages(state)
        assert message.status == "error"
        assert "rejected" in str(message.content)
        assert message.artifact["reason"] == "denied"
        # the same tool call again (a replayed resume): the remembered answer, no prompt
        from langchain.agents.middleware import ToolCallRequest

        def same_call(call_id: str) -> ToolCallRequest:
            return ToolCallRequest(
                tool_call={
                    "name": "pay_invoice",
                    "args": {"invoice": "INV-8", "amount": 900.0},
                    "id": call_id,
                },
                tool=pay_invoice,
                state={},
                runtime=_Runtime(CONFIG),  # type: ignore[arg-type]
            )

        again = await middleware.awrap_tool_call(same_call("call-9"), _never_called)
        assert isinstance(again, ToolMessage)
        assert again.artifact["reason"] == "denied"
        assert len(await backchannel_requests(ciba_idp)) == 1
        # another tool call with the same arguments is another action: asked anew (here
        # outside a graph, without interrupts: the pending result comes back)
        direct = IdentityMiddleware(identity, tools={"pay_invoice": _payments(policy)})
        other = await direct.awrap_tool_call(same_call("call-10"), _never_called)
    assert isinstance(other, ToolMessage)
    assert other.artifact["reason"] == "pending"
    assert len(await backchannel_requests(ciba_idp)) == 2
    # leave the session-wide server with nothing pending
    await ciba_idp.ciba_deny((await pending_for(ciba_idp, "INV-8"))["auth_req_id"])


class _Runtime:
    def __init__(self, config: Any) -> None:
        self.config = config
        self.context = None


async def _never_called(request: Any) -> ToolMessage:
    raise AssertionError("the tool must not run")


async def test_delegation_is_kept_under_approval(ciba_idp: DevIdP) -> None:
    """protect(protect(tool, delegate=True), approval=...) yields a token with ``act``."""
    policy = ApprovalPolicy(always=["pay_invoice"])
    async with client(ciba_idp) as identity:
        protected = protect(
            protect(
                pay_invoice,
                identity=identity,
                resource=PAYMENTS,
                scopes="payments.write",
                delegate=True,
            ),
            approval=policy,
            approval_options=ApprovalOptions(wait=0),
        )
        call = {
            "type": "tool_call",
            "name": "pay_invoice",
            "id": "c-5",
            "args": {"invoice": "INV-5", "amount": 50.0},
        }
        first = await protected.ainvoke(call, config=CONFIG)
        assert first.artifact["reason"] == "pending"  # a result, not blocking
        pending = await pending_for(ciba_idp, "INV-5")
        await ciba_idp.ciba_approve(pending["auth_req_id"])
        await anyio.sleep(1.1)
        second = await protected.ainvoke(call, config=CONFIG)  # the same call, resumed
    assert second.content == "paid INV-5 50.0 sub=alice act=agent-confidential"


# -- no silent failures ----------------------------------------------------------------------


async def test_a_missing_user_is_logged_audited_and_told_to_the_model(
    dev_idp: DevIdP,
    trail: tuple[AuditTrail, MemorySink],
    caplog: pytest.LogCaptureFixture,
) -> None:
    audit, sink = trail
    async with client(dev_idp) as identity:
        agent = create_agent(
            calling("list_events", {"day": "monday"}),
            tools=[list_events],
            middleware=[
                IdentityMiddleware(
                    identity,
                    tools={"list_events": {"resource": CALENDAR, "scopes": "calendar.read"}},
                    audit=audit,
                )
            ],
        )
        with caplog.at_level(logging.WARNING, logger="agent_identity.tools"):
            state = await agent.ainvoke({"messages": [HumanMessage("monday?")]})
    (message,) = tool_messages(state)
    assert message.status == "error"
    assert "not known which user" in str(message.content)
    assert any("UserUnknown" in r.getMessage() for r in caplog.records)  # for the developer
    (record,) = [e for e in sink.events if e.kind.startswith("tool.")]
    assert (record.kind, record.error_type, record.tool) == (
        "tool.denied",
        "UserUnknown",
        "list_events",
    )


async def test_a_configuration_error_is_audited_and_raised(
    dev_idp: DevIdP, trail: tuple[AuditTrail, MemorySink]
) -> None:
    audit, sink = trail
    async with client(dev_idp) as identity:
        protected = protect(list_events, identity=identity, resource=CALENDAR, audit=audit)
        with pytest.raises(ConfigurationError, match="non-empty strings"):
            await protected.ainvoke({"day": "x"}, config={"configurable": {"user_id": ""}})
    (record,) = sink.events
    assert (record.kind, record.error_type) == ("tool.denied", "ConfigurationError")


async def test_a_consent_to_give_carries_its_link_as_artifact(dev_idp: DevIdP) -> None:
    """With WebConsent, the result says what to do and the artifact holds the link, for a
    "connect your account" button (no text parsing)."""
    consent = WebConsent("http://127.0.0.1:8765/callback")
    async with client(dev_idp, consent=consent) as identity:
        agent = create_agent(
            calling("list_events", {"day": "monday"}),
            tools=[list_events],
            middleware=[
                IdentityMiddleware(
                    identity,
                    tools={"list_events": {"resource": CALENDAR, "scopes": "calendar.read"}},
                )
            ],
        )
        state = await agent.ainvoke(
            {"messages": [HumanMessage("monday?")]},
            config={"configurable": {"user_id": "bob", "thread_id": "t-9"}},
        )
    (message,) = tool_messages(state)
    artifact = message.artifact
    assert artifact["type"] == "agent_identity.human_action"
    assert (artifact["kind"], artifact["reason"]) == ("consent", "required")
    assert artifact["authorization_url"].startswith(dev_idp.issuer)
    assert artifact["resource"] == CALENDAR
    assert "calendar.read" in artifact["scopes"]
    assert artifact["authorization_url"] not in str(message.content)  # not for the model


async def test_protect_results_carry_the_artifact_too(dev_idp: DevIdP) -> None:
    async with client(dev_idp, consent=NoHumanHere()) as identity:
        protected = protect(
            list_events, identity=identity, resource=CALENDAR, scopes="calendar.read"
        )
        message = await protected.ainvoke(
            {"type": "tool_call", "name": "list_events", "id": "c-1", "args": {"day": "x"}},
            config={"configurable": {"user_id": "carol"}},
        )
    assert isinstance(message, ToolMessage)
    assert message.status == "error"
    assert (message.artifact["kind"], message.artifact["reason"]) == ("consent", "required")
    assert message.artifact["user"] == "carol"


async def test_hitl_decisions_reject_and_respond(dev_idp: DevIdP) -> None:
    async with client(dev_idp, consent=NoHumanHere()) as identity:
        agent = create_agent(
            calling("list_events", {"day": "monday"}),
            tools=[list_events],
            middleware=[
                IdentityMiddleware(
                    identity,
                    tools={"list_events": {"resource": CALENDAR, "scopes": "calendar.read"}},
                    interrupt_on_human=True,
                )
            ],
            checkpointer=InMemorySaver(),
        )
        config: Any = {"configurable": {"thread_id": "t-r", "user_id": "dave"}}
        state = await agent.ainvoke({"messages": [HumanMessage("monday?")]}, config=config)
        assert state["__interrupt__"][0].value["kind"] == "consent"
        state = await agent.ainvoke(
            Command(resume={"type": "reject", "message": "not now"}), config=config
        )
        (message,) = tool_messages(state)
        assert "not now" in str(message.content)
        assert message.artifact["reason"] == "declined"

        config = {"configurable": {"thread_id": "t-s", "user_id": "dave"}}
        agent = create_agent(
            calling("list_events", {"day": "monday"}),
            tools=[list_events],
            middleware=[
                IdentityMiddleware(
                    identity,
                    tools={"list_events": {"resource": CALENDAR, "scopes": "calendar.read"}},
                    interrupt_on_human=True,
                )
            ],
            checkpointer=InMemorySaver(),
        )
        await agent.ainvoke({"messages": [HumanMessage("monday?")]}, config=config)
        state = await agent.ainvoke(
            Command(resume={"type": "respond", "message": "nothing on monday"}), config=config
        )
    (message,) = tool_messages(state)
    assert message.content == "nothing on monday"
    assert message.status == "success"


# -- ping mode through protect() and the middleware --------------------------------------------


@pytest.mark.parametrize("style", ["middleware", "protect"])
async def test_ping_mode_through_both_styles(dev_idp_factory: Any, style: str) -> None:
    """ApprovalOptions(ping=receiver): the server's ping wakes the call; it never polls
    (the server's interval is 30 s, longer than the test may take)."""
    from agent_identity.approval import PingReceiver
    from agent_identity.devidp import CIBA_GRANT_TYPE

    receiver = PingReceiver()
    async with receiver.serve() as endpoint:
        idp = await anyio.to_thread.run_sync(
            lambda: dev_idp_factory(ping_notification_endpoint=endpoint, ciba_interval=30)
        )
        policy = ApprovalPolicy(always=["pay_invoice"])
        options = ApprovalOptions(ping=receiver, requested_expiry=60)
        async with make_client(idp, "agent-ping", consent=AsUser()) as identity:
            if style == "middleware":
                agent: Any = create_agent(
                    calling("pay_invoice", {"invoice": "INV-P", "amount": 10.0}),
                    tools=[pay_invoice],
                    middleware=[
                        IdentityMiddleware(
                            identity,
                            tools={
                                "pay_invoice": {
                                    "resource": PAYMENTS,
                                    "scopes": "payments.write",
                                    "approval": policy,
                                    "approval_options": options,
                                }
                            },
                        )
                    ],
                )
            else:
                tool_ = protect(
                    pay_invoice,
                    identity=identity,
                    resource=PAYMENTS,
                    scopes="payments.write",
                    approval=policy,
                    approval_options=options,
                )
            result: dict[str, Any] = {}

            async def run() -> None:
                if style == "middleware":
                    state = await agent.ainvoke({"messages": [HumanMessage("pay")]}, config=CONFIG)
                    (message,) = tool_messages(state)
                    result["out"] = message.content
                else:
                    result["out"] = await tool_.ainvoke(
                        {"invoice": "INV-P", "amount": 10.0}, config=CONFIG
                    )

            with anyio.fail_after(20):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(run)
                    while not await idp.ciba_pending():  # noqa: ASYNC110
                        await anyio.sleep(0.02)
                    await ciba_idp_approve_first(idp)
    assert result["out"] == "paid INV-P 10.0 sub=alice act=None"
    assert receiver.accepted == 1
    polls = await idp.token_requests(CIBA_GRANT_TYPE)
    assert [p["status"] for p in polls] == [200]  # fetched after the ping, never polled


async def ciba_idp_approve_first(idp: DevIdP) -> None:
    (pending,) = await idp.ciba_pending()
    await idp.ciba_approve(pending["auth_req_id"])


async def test_sec_29_a_resource_that_keeps_refusing_is_a_readable_result(
    dev_idp: DevIdP, trail: tuple[AuditTrail, MemorySink]
) -> None:
    """The middleware's side of ``AccessRefused``: a tool whose API keeps answering
    ``403 insufficient_scope`` after the allowed step-up returns a readable error result
    with its artifact, and the agent run goes on."""
    from _lc_helpers import calendar_api
    from _resource import CalendarAPI

    base = await calendar_api(dev_idp)
    api = CalendarAPI(issuer=base.issuer, jwks=base.jwks, always_insufficient=True)
    audit, _ = trail
    consent = AsUser()
    async with client(dev_idp, consent=consent) as identity:

        @tool
        async def agenda(day: str) -> str:
            """The user's agenda for a day."""
            alice = identity.user("alice")
            auth = alice.http_auth(resource=CALENDAR, scopes="calendar.read", max_step_ups=1)
            async with httpx2.AsyncClient(
                auth=auth, transport=httpx2.ASGITransport(app=api)
            ) as http:
                return str((await http.get(f"{CALENDAR}/events")).status_code)

        middleware = IdentityMiddleware(
            identity,
            tools={"agenda": {"resource": CALENDAR, "scopes": "calendar.read"}},
            audit=audit,
        )
        agent = create_agent(
            ScriptedModel(
                responses=[
                    AIMessage(
                        content="",
                        tool_calls=[{"name": "agenda", "args": {"day": "monday"}, "id": "c1"}],
                    ),
                    AIMessage(content="the calendar service refuses"),
                ]
            ),
            tools=[agenda],
            middleware=[middleware],
        )
        state = await agent.ainvoke(
            {"messages": [HumanMessage("what is on monday?")]},
            config={"configurable": {"user_id": "alice"}},
        )
    (message,) = tool_messages(state)
    assert message.status == "error"
    assert "still refuses 'agenda'" in str(message.content)
    assert message.artifact["type"] == "agent_identity.access_refused"
    assert message.artifact["operation"] == "GET /api/events"
    assert state["messages"][-1].content == "the calendar service refuses"
    assert len(consent.flows) == 2  # the tool's consent and one step-up, no more
