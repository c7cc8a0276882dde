"""A LangChain agent whose tools act for the user, against the bundled local authorization
server. No LLM and no network: a fake chat model from langchain-core plays the model and
emits the tool calls an LLM would.

    python examples/langchain_agent.py                 # starts the dev server itself
    python examples/langchain_agent.py --issuer URL    # or use a running one

What it shows (needs ``pip install -e integrations/langchain``):

1. ``protect()`` turns ordinary ``@tool`` functions into tools that get the user's
   narrowest token (``current_token()``): the model never sees it, and the calendar
   reader's token is read-only and bound to the calendar API;
2. requirements compose: the event writer is protected twice (token, then approval),
   and alice approves the exact call on her phone (OpenID CIBA);
3. two users in one agent step, concurrently: each tool call gets its own user's token;
4. bob declines consent: the model gets a readable tool result, the agent goes on;
5. one audit record per tool call, failures included;
6. the same tools in a synchronous program, through ``BlockingIdentityClient``.

In a real deployment drop the DevBrowser (the consent handler reaches the real user) and
the simulated phone (the user approves on their own device).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import anyio
from langchain_agent_identity import current_token, protect
from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.tools import BaseTool, tool

from agent_identity import (
    AccessToken,
    ApprovalPolicy,
    BlockingIdentityClient,
    ConsentFlow,
    IdentityClient,
    LoopbackConsent,
)
from agent_identity.audit import AuditTrail, MemorySink
from agent_identity.devidp import DEV_CLIENTS, DevBrowser, DevIdP
from agent_identity.oauth.jwt import peek_claims

CALENDAR = "https://calendar.example/api"
CLIENT_ID = "agent-confidential"


def show(step: str, detail: str = "") -> None:
    print(f"  \u2713 {step}" + (f"\n      {detail}" if detail else ""), flush=True)


def calendar_backend(token: AccessToken, action: str) -> str:
    """Stands in for the calendar API: it would verify the JWT; here we only peek at the
    claims to show what it receives. Never decide on unverified claims."""
    claims = peek_claims(token.value.get_secret_value())
    if claims.get("aud") != CALENDAR:
        return "401 wrong audience"
    return f"{action} for {claims.get('sub')} (token scope={claims.get('scope')!r})"


# -- the tools: plain LangChain tools that read their token from the context --------------


@tool
def list_events(day: str) -> str:
    """List the user's calendar events on a day."""
    return calendar_backend(current_token(), f"events of {day}")


@tool
def create_event(title: str, day: str) -> str:
    """Create an event in the user's calendar."""
    return calendar_backend(current_token(), f"created {title!r} on {day}")


# -- the humans (simulated) ----------------------------------------------------------------


class DevUsers:
    """Consent as whoever the flow is for: alice approves, bob declines."""

    async def obtain_consent(self, flow: ConsentFlow) -> None:
        browser = DevBrowser(flow.user, approve=flow.user == "alice")
        await LoopbackConsent(browser=browser).obtain_consent(flow)


async def alices_phone(issuer: str, done: anyio.Event) -> None:
    """Approves the CIBA requests shown on alice's phone (the dev server's test hook)."""
    hook = _DevHooks(issuer)
    while not done.is_set():
        for request in await hook.ciba_pending():
            print(f"      alice's phone shows {request['binding_message']!r}: approve")
            await hook.ciba_approve(request["auth_req_id"])
        await anyio.sleep(0.05)


class _DevHooks:
    """The dev server's test endpoints (``/dev/ciba``), for a server started elsewhere."""

    def __init__(self, issuer: str) -> None:
        self.issuer = issuer

    async def _call(self, method: str, path: str) -> Any:
        import httpx2

        async with httpx2.AsyncClient(base_url=self.issuer) as http:
            response = await http.request(method, path)
            response.raise_for_status()
            return response.json()

    async def ciba_pending(self) -> list[dict[str, Any]]:
        return list(await self._call("GET", "/dev/ciba"))

    async def ciba_approve(self, auth_req_id: str) -> None:
        await self._call("POST", f"/dev/ciba/{auth_req_id}/approve")


# -- a minimal agent loop (what an agent framework does) -----------------------------------


async def run_agent(
    who: str, model: FakeMessagesListChatModel, tools: dict[str, BaseTool], config: Any
) -> list[BaseMessage]:
    """One conversation: the user comes from the run's config, never from the model."""
    messages: list[BaseMessage] = [HumanMessage("What is on my calendar?")]
    while True:
        reply = await model.ainvoke(messages)
        messages.append(reply)
        calls = reply.tool_calls if isinstance(reply, AIMessage) else []
        if not calls:
            return messages
        results: list[Any] = [None] * len(calls)
        async with anyio.create_task_group() as tg:  # one agent step: calls run concurrently
            for i, call in enumerate(calls):
                tg.start_soon(run_tool, tools[call["name"]], call, config, results, i)
        for result in results:
            assert isinstance(result, ToolMessage)
            print(f"      [{who}] {result.name} -> {result.status}: {result.content}")
        messages.extend(results)


async def run_tool(tool: BaseTool, call: Any, config: Any, results: list[Any], index: int) -> None:
    results[index] = await tool.ainvoke({**call, "type": "tool_call"}, config)


def tool_call(name: str, call_id: str, **args: Any) -> dict[str, Any]:
    return {"name": name, "args": args, "id": call_id, "type": "tool_call"}


def config_for(user: str) -> dict[str, Any]:
    return {"configurable": {"user_id": user, "tenant_id": "acme"}}


async def run(issuer: str) -> None:
    secret = DEV_CLIENTS[CLIENT_ID][0]
    print(f"LangChain agent with agent-identity against {issuer}\n")
    sink = MemorySink()
    async with (
        AuditTrail(sink, strict=True) as audit,
        IdentityClient(
            issuer,
            client_id=CLIENT_ID,
            client_secret=secret,
            consent=DevUsers(),
            allow_insecure_loopback=True,  # the dev server runs on http://127.0.0.1
        ) as identity,
    ):
        reader = protect(
            list_events, identity=identity, resource=CALENDAR, scopes="calendar.read", audit=audit
        )
        # composed: a token requirement, then an approval requirement on top
        writer = protect(
            protect(create_event, identity=identity, resource=CALENDAR, scopes="calendar.write"),
            approval=ApprovalPolicy(always=["create_event"]),
            audit=audit,
        )
        show(
            "protected two LangChain tools; the model sees the same schemas, no token",
            f"list_events{sorted(reader.args)} create_event{sorted(writer.args)}",
        )
        alice_model = FakeMessagesListChatModel(
            responses=[
                AIMessage(
                    "",
                    tool_calls=[
                        tool_call("list_events", "a1", day="monday"),
                        tool_call("create_event", "a2", title="standup", day="tuesday"),
                    ],
                ),
                AIMessage("Monday is free; the standup is on Tuesday."),
            ]
        )
        bob_model = FakeMessagesListChatModel(
            responses=[
                AIMessage("", tool_calls=[tool_call("list_events", "b1", day="monday")]),
                AIMessage("You have not shared your calendar with me."),
            ]
        )
        tools: dict[str, BaseTool] = {"list_events": reader, "create_event": writer}
        finals: dict[str, str] = {}
        done = anyio.Event()

        async def conversation(who: str, model: FakeMessagesListChatModel) -> None:
            messages = await run_agent(who, model, tools, config_for(who))
            finals[who] = str(messages[-1].content)

        async with anyio.create_task_group() as tg:
            tg.start_soon(alices_phone, issuer, done)
            async with anyio.create_task_group() as conversations:  # two users at once
                conversations.start_soon(conversation, "alice", alice_model)
                conversations.start_soon(conversation, "bob", bob_model)
            done.set()
        show("alice's agent finished", f"model: {finals['alice']}")
        show("bob's agent finished (bob declined consent)", f"model: {finals['bob']}")
        # the trail is strict: a tool.started record precedes each call that runs
        records = [e for e in sink.events if e.kind != "tool.started"]
        outcomes = [f"{e.tool}/{e.user}/{e.outcome}" for e in records]
        show(f"{len(records)} audit records, one per tool call", " ".join(sorted(outcomes)))
        await identity.user("alice", tenant="acme").disconnect()
    sync_part(issuer)
    print("\nDone.")


def sync_part(issuer: str) -> None:
    """The same tool in a synchronous program: the blocking facade runs the SDK on a
    background event loop (an anyio blocking portal)."""
    secret = DEV_CLIENTS[CLIENT_ID][0]
    with BlockingIdentityClient(
        issuer,
        client_id=CLIENT_ID,
        client_secret=secret,
        consent=DevUsers(),
        allow_insecure_loopback=True,
    ) as identity:
        reader = protect(list_events, identity=identity, resource=CALENDAR, scopes="calendar.read")
        result = reader.invoke(
            {"day": "friday"}, config={"configurable": {"user_id": "alice", "tenant_id": "acme"}}
        )
        show("synchronous invoke through BlockingIdentityClient", str(result))
        identity.user("alice", tenant="acme").disconnect()


def main() -> int:
    parser = argparse.ArgumentParser(description="LangChain agent with agent-identity")
    parser.add_argument("--issuer", help="use a running dev server instead of starting one")
    args = parser.parse_args()
    if args.issuer:
        anyio.run(run, args.issuer)
        return 0
    print("starting the local authorization server (dev only)...", file=sys.stderr, flush=True)
    with DevIdP(ciba_interval=1) as idp:
        anyio.run(run, idp.issuer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
