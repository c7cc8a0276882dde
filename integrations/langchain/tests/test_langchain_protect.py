"""protect() against the local authorization server and a resource server that validates
its JWTs: narrow tokens, users, composition, nesting, concurrency, sync and async."""

from __future__ import annotations

import threading
from typing import Annotated, Any

import anyio
import httpx2
import pytest
from _helpers import CALENDAR, MAIL
from _lc_helpers import AsUser, NoHumanHere, blocking_client, calendar_api, call_calendar, client
from _resource import CalendarAPI
from langchain_agent_identity import (
    ProtectedTool,
    acting_for,
    current_token,
    current_tool_context,
    protect,
)
from langchain_core.messages import ToolMessage
from langchain_core.tools import BaseTool, InjectedToolCallId, StructuredTool, tool
from pydantic import BaseModel

from agent_identity import ConfigurationError, LoopbackConsent
from agent_identity.devidp import DevBrowser, DevIdP
from agent_identity.oauth.jwt import peek_claims

pytestmark = [pytest.mark.anyio, pytest.mark.idp]

ALICE = {"configurable": {"user_id": "alice", "tenant_id": "acme"}}


def _call(args: dict[str, Any], name: str, call_id: str = "call-1") -> dict[str, Any]:
    return {"type": "tool_call", "name": name, "args": args, "id": call_id}


def _claims() -> dict[str, Any]:
    return dict(peek_claims(current_token().value.get_secret_value()))


# -- wrapping every kind of tool -----------------------------------------------------------


async def test_a_decorated_tool_gets_a_narrow_token_the_resource_accepts(dev_idp: DevIdP) -> None:
    api = await calendar_api(dev_idp)

    @tool
    async def list_events(day: str) -> str:
        """List the user's calendar events on a day."""
        answer = await call_calendar(api, current_token())
        return f"{day}: {answer['status']} sub={answer['sub']} scope={answer['scope']}"

    async with client(dev_idp) as identity:
        protected = protect(
            list_events, identity=identity, resource=CALENDAR, scopes="calendar.read"
        )
        assert isinstance(protected, ProtectedTool)
        assert (protected.name, protected.description) == (
            list_events.name,
            list_events.description,
        )
        assert protected.args == list_events.args
        assert protected.tool_call_schema.model_json_schema() == (
            list_events.tool_call_schema.model_json_schema()
        )
        result = await protected.ainvoke({"day": "monday"}, config=ALICE)
    assert result == "monday: 200 sub=alice scope=calendar.read"
    sent = api.seen[-1]["headers"]["authorization"]
    assert sent.split()[0] == "Bearer"
    # the token is nowhere in what the model sees
    schema = str(protected.tool_call_schema.model_json_schema())
    assert "token" not in schema
    assert sent.split()[1] not in result


async def test_a_structured_tool_and_a_base_tool_subclass(dev_idp: DevIdP) -> None:
    class Query(BaseModel):
        mailbox: str
        limit: int = 10

    def read_mail(mailbox: str, limit: int = 10) -> str:
        """Read mail."""
        claims = _claims()
        return f"{mailbox}/{limit} aud={claims['aud']} scope={claims['scope']}"

    structured = StructuredTool.from_function(
        read_mail, name="read_mail", description="Read mail.", args_schema=Query
    )

    class Calendar(BaseTool):
        name: str = "calendar"
        description: str = "Look at the calendar."

        def _run(self, day: str) -> str:
            return f"sync {day}"

        async def _arun(self, day: str) -> str:
            claims = _claims()
            return f"{day} aud={claims['aud']} sub={claims['sub']}"

    async with client(dev_idp) as identity:
        mail = protect(structured, identity=identity, resource=MAIL, scopes=["mail.read"])
        assert mail.args_schema is Query
        assert await mail.ainvoke({"mailbox": "inbox"}, config=ALICE) == (
            f"inbox/10 aud={MAIL} scope=mail.read"
        )
        calendar = protect(Calendar(), identity=identity, resource=CALENDAR, scopes="calendar.read")
        assert calendar.args == Calendar().args
        assert await calendar.ainvoke({"day": "friday"}, config=ALICE) == (
            f"friday aud={CALENDAR} sub=alice"
        )
        # a plain function is made a tool first
        plain = protect(read_mail, identity=identity, resource=MAIL, scopes="mail.read")
        assert plain.name == "read_mail"
        assert (await plain.ainvoke({"mailbox": "x"}, config=ALICE)).startswith("x/10 aud=")


async def test_a_tool_call_gets_a_tool_message_and_the_id_is_injected_once(
    dev_idp: DevIdP,
) -> None:
    """Pain point 1: the incumbent's stacked wrappers crash on an injected tool-call id."""

    @tool
    def reply(text: str, tool_call_id: Annotated[str, InjectedToolCallId]) -> str:
        """Reply."""
        return f"{text} ({tool_call_id}) {current_token().resource}"

    async with client(dev_idp) as identity:
        once = protect(reply, identity=identity, resource=CALENDAR, scopes="calendar.read")
        twice = protect(
            protect(reply, identity=identity, resource=CALENDAR), scopes="calendar.read"
        )
        assert "tool_call_id" not in once.tool_call_schema.model_json_schema()["properties"]
        for protected in (once, twice):
            message = await protected.ainvoke(_call({"text": "hi"}, "reply", "c-7"), config=ALICE)
            assert isinstance(message, ToolMessage)
            assert message.tool_call_id == "c-7"
            assert message.status == "success"
            assert message.content == f"hi (c-7) {CALENDAR}"


# -- who the user is -----------------------------------------------------------------------


async def test_user_from_config_from_acting_for_and_custom_keys(dev_idp: DevIdP) -> None:
    @tool
    async def whoami() -> str:
        """Who am I acting for."""
        call = current_tool_context().call
        return f"{call.tenant}/{call.user}/{_claims()['sub']}"

    handler = AsUser()
    async with client(dev_idp, consent=handler) as identity:
        protected = protect(whoami, identity=identity, resource=CALENDAR, scopes="calendar.read")
        assert await protected.ainvoke({}, config=ALICE) == "acme/alice/alice"
        with acting_for("bob", tenant="acme"):
            assert await protected.ainvoke({}) == "acme/bob/bob"
            # the run's config wins over the ambient context
            assert await protected.ainvoke({}, config=ALICE) == "acme/alice/alice"
        keyed = protect(
            whoami,
            identity=identity,
            resource=CALENDAR,
            scopes="calendar.read",
            user_key="uid",
            tenant_key="org",
        )
        config = {"configurable": {"uid": "alice", "org": "acme", "user_id": "bob"}}
        assert await keyed.ainvoke({}, config=config) == "acme/alice/alice"
    assert [(t, u) for t, u, _ in handler.flows] == [("acme", "alice"), ("acme", "bob")]


async def test_no_user_is_a_clear_tool_result_and_asks_for_no_token(dev_idp: DevIdP) -> None:
    ran = []

    @tool
    def secret_tool(x: int) -> str:
        """Do something."""
        ran.append(x)
        return "ran"

    handler = AsUser()
    async with client(dev_idp, consent=handler) as identity:
        protected = protect(
            secret_tool, identity=identity, resource=CALENDAR, scopes="calendar.read"
        )
        await dev_idp.clear_requests()
        message = await protected.ainvoke(_call({"x": 1}, "secret_tool"))
        text = await protected.ainvoke({"x": 2}, config={"configurable": {"tenant_id": "acme"}})
        assert await dev_idp.token_requests() == []
    assert isinstance(message, ToolMessage)
    assert message.status == "error"
    assert "not known which user" in message.content
    assert "acting_for" in message.content
    assert text == message.content
    assert ran == []
    assert handler.flows == []


# -- composition ---------------------------------------------------------------------------


async def test_requirements_compose_in_any_order(dev_idp: DevIdP) -> None:
    @tool
    def token_info() -> str:
        """Token info."""
        claims = _claims()
        actor = (claims.get("act") or {}).get("sub")
        return f"aud={claims['aud']} scope={claims['scope']} act={actor}"

    async with client(dev_idp) as identity:
        a = protect(
            protect(token_info, identity=identity, resource=CALENDAR, scopes="calendar.read"),
            delegate=True,
        )
        b = protect(
            protect(token_info, identity=identity, delegate=True),
            resource=CALENDAR,
            scopes="calendar.read",
        )
        c = protect(
            protect(token_info, identity=identity, resource=CALENDAR), scopes="calendar.read"
        )
        for protected in (a, b):
            assert protected.tool is token_info
            assert protected.requirement.delegate
            assert await protected.ainvoke({}, config=ALICE) == (
                f"aud={CALENDAR} scope=calendar.read act=agent-confidential"
            )
        assert await c.ainvoke({}, config=ALICE) == f"aud={CALENDAR} scope=calendar.read act=None"
        # the scopes of every layer, once each
        d = protect(c, scopes=["calendar.write", "calendar.read"])
        assert d.requirement.scopes == ("calendar.read", "calendar.write")
        # one resource per tool, one identity per tool
        with pytest.raises(ConfigurationError, match="another resource"):
            protect(c, resource=MAIL)
        async with client(dev_idp) as other:
            with pytest.raises(ConfigurationError, match="another identity"):
                protect(c, identity=other)
    with pytest.raises(ConfigurationError, match="identity"):
        protect(token_info, resource=CALENDAR)
    with pytest.raises(ConfigurationError, match="resource"):
        protect(token_info, identity=identity, scopes="calendar.read")


async def test_a_protected_tool_calling_another_gets_its_own_token_then_its_own_back(
    dev_idp: DevIdP,
) -> None:
    @tool
    async def read_mail() -> str:
        """Read mail."""
        claims = _claims()
        return f"{claims['aud']}:{claims['scope']}:{claims['sub']}"

    async with client(dev_idp) as identity:
        mail = protect(read_mail, identity=identity, resource=MAIL, scopes="mail.read")

        @tool
        async def summarize() -> str:
            """Summarize the calendar and the mail."""
            before = _claims()["aud"]
            inner = await mail.ainvoke({})  # no config: same user, inherited
            after = _claims()["aud"]
            return f"{before} | {inner} | {after}"

        calendar = protect(summarize, identity=identity, resource=CALENDAR, scopes="calendar.read")
        assert await calendar.ainvoke({}, config=ALICE) == (
            f"{CALENDAR} | {MAIL}:mail.read:alice | {CALENDAR}"
        )
        # outside any protected call, no token leaks
        with pytest.raises(ConfigurationError):
            current_token()


async def test_concurrent_users_never_see_each_others_tokens(dev_idp: DevIdP) -> None:
    api = await calendar_api(dev_idp)

    @tool
    async def my_calendar(n: int) -> str:
        """The calendar of the user the agent acts for."""
        expected = current_tool_context().call.user
        await anyio.sleep(0.01 * (n % 3))  # interleave with the other calls
        answer = await call_calendar(api, current_token())
        assert current_tool_context().call.user == expected
        return f"{expected}={answer['sub']}"

    users = ["alice", "bob"] * 6
    async with client(dev_idp) as identity:
        protected = protect(
            my_calendar, identity=identity, resource=CALENDAR, scopes="calendar.read"
        )
        results: list[str] = [""] * len(users)

        async def one(i: int, user: str) -> None:
            results[i] = await protected.ainvoke(
                {"n": i}, config={"configurable": {"user_id": user, "tenant_id": "acme"}}
            )

        async with anyio.create_task_group() as tg:
            for i, user in enumerate(users):
                tg.start_soon(one, i, user)
    assert results == [f"{u}={u}" for u in users]


# -- sync and async ------------------------------------------------------------------------


def test_sync_invoke_through_the_blocking_client(dev_idp: DevIdP) -> None:
    @tool
    def next_meeting() -> str:
        """The next meeting."""
        claims = _claims()
        return f"{claims['aud']} {claims['scope']} {claims['sub']}"

    @tool
    def outer() -> str:
        """Calls the nested protected tool synchronously."""
        return f"{_claims()['aud']} > {mail.invoke({})} > {_claims()['aud']}"

    with blocking_client(dev_idp) as identity:
        protected = protect(
            next_meeting, identity=identity, resource=CALENDAR, scopes="calendar.read"
        )
        mail = protect(next_meeting, identity=identity, resource=MAIL, scopes="mail.read")
        assert protected.invoke({}, config=ALICE) == f"{CALENDAR} calendar.read alice"
        with acting_for("bob"):
            assert protected.invoke({}) == f"{CALENDAR} calendar.read bob"
        nested = protect(outer, identity=identity, resource=CALENDAR, scopes="calendar.read")
        assert nested.invoke({}, config=ALICE) == (
            f"{CALENDAR} > {MAIL} mail.read alice > {CALENDAR}"
        )
        message = protected.invoke(_call({}, "next_meeting"), config=ALICE)
        assert isinstance(message, ToolMessage)
        assert message.content == f"{CALENDAR} calendar.read alice"
        # the blocking facade itself
        alice = identity.user("alice", tenant="acme")
        grant = alice.grant()
        assert grant is not None
        assert {"calendar.read", "mail.read"} <= set(grant.scopes)
        token = alice.token(resource=CALENDAR, scopes="calendar.read")
        assert token.resource == CALENDAR
        exchanged = alice.exchange(resource=CALENDAR, scopes="calendar.read")
        assert peek_claims(exchanged.value.get_secret_value())["act"]["sub"] == (
            "agent-confidential"
        )
        alice.disconnect()
        assert alice.grant() is None


async def test_ainvoke_with_the_blocking_client_runs_the_tool_on_the_callers_loop(
    dev_idp: DevIdP,
) -> None:
    api = await calendar_api(dev_idp)
    caller = threading.get_ident()

    @tool
    async def events() -> str:
        """Events."""
        assert threading.get_ident() == caller
        answer = await call_calendar(api, current_token())  # a client of this loop
        return f"{answer['status']} {answer['sub']} {answer['scope']}"

    identity = await anyio.to_thread.run_sync(blocking_client(dev_idp).open)
    try:
        protected = protect(events, identity=identity, resource=CALENDAR, scopes="calendar.read")
        results = await _gather(
            protected.ainvoke({}, config=ALICE),
            protected.ainvoke({}, config={"configurable": {"user_id": "bob"}}),
        )
        assert results == ["200 alice calendar.read", "200 bob calendar.read"]
    finally:
        await anyio.to_thread.run_sync(identity.close)


async def test_sync_invoke_with_an_async_client_says_what_to_do(dev_idp: DevIdP) -> None:
    @tool
    def anything() -> str:
        """Anything."""
        return "ran"

    async with client(dev_idp) as identity:
        protected = protect(anything, identity=identity, resource=CALENDAR, scopes="calendar.read")
        with pytest.raises(ConfigurationError, match="BlockingIdentityClient"):
            await anyio.to_thread.run_sync(lambda: protected.invoke({}, config=ALICE))
        # with nobody to act for too: the developer's mistake is raised, not a result for
        # the model that says "unknown user" (and that no trail would have recorded)
        with pytest.raises(ConfigurationError, match="BlockingIdentityClient"):
            await anyio.to_thread.run_sync(lambda: protected.invoke({}))


# -- when a human is needed ----------------------------------------------------------------


async def test_denied_consent_is_a_tool_result_the_model_can_read(dev_idp: DevIdP) -> None:
    ran = []

    @tool
    def book(room: str) -> str:
        """Book a room."""
        ran.append(room)
        return "booked"

    denying = LoopbackConsent(browser=DevBrowser("alice", approve=False))
    async with client(dev_idp, consent=denying) as identity:
        protected = protect(book, identity=identity, resource=CALENDAR, scopes="calendar.write")
        message = await protected.ainvoke(_call({"room": "A"}, "book"), config=ALICE)
        plain = await protected.ainvoke({"room": "B"}, config=ALICE)
    assert isinstance(message, ToolMessage)
    assert message.status == "error"
    assert "declined to authorize 'book'" in message.content
    assert CALENDAR in message.content
    assert "calendar.write" in message.content
    assert "alice" not in message.content  # no user id for the model
    assert plain == message.content
    assert ran == []


async def test_consent_required_and_reauthorization_say_what_the_user_must_do(
    dev_idp: DevIdP,
) -> None:
    @tool
    def read() -> str:
        """Read."""
        return "read"

    nobody = NoHumanHere()
    async with client(dev_idp, consent=nobody) as identity:
        protected = protect(read, identity=identity, resource=CALENDAR, scopes="calendar.read")
        text = await protected.ainvoke({}, config=ALICE)
        assert nobody.asked == 1
        assert "connect their account" in text
        assert "calendar.read" in text
        # the application gets the consent done, the tool works
        alice = identity.user("alice", tenant="acme")
        await alice.consent(
            scopes="calendar.read",
            resource=CALENDAR,
            handler=LoopbackConsent(browser=DevBrowser("alice")),
        )
        assert await protected.ainvoke({}, config=ALICE) == "read"
        # revoked elsewhere: the model is told to have the user reconnect
        await alice.disconnect()
        text = await protected.ainvoke({}, config=ALICE)
        assert "connect their account" in text


async def test_the_wrapped_tools_own_tool_errors_keep_its_policy(dev_idp: DevIdP) -> None:
    from langchain_core.tools import ToolException

    def fail() -> str:
        raise ToolException("tool says no")

    strict = StructuredTool.from_function(fail, name="strict", description="Fails.")
    lenient = StructuredTool.from_function(
        fail, name="lenient", description="Fails.", handle_tool_error=True
    )
    async with client(dev_idp) as identity:
        with pytest.raises(ToolException, match="tool says no"):
            await protect(strict, identity=identity, resource=CALENDAR).ainvoke({}, config=ALICE)
        result = await protect(lenient, identity=identity, resource=CALENDAR).ainvoke(
            {}, config=ALICE
        )
        assert result == "tool says no"


async def _gather(*awaitables: Any) -> list[Any]:
    results: list[Any] = [None] * len(awaitables)

    async def one(i: int, awaitable: Any) -> None:
        results[i] = await awaitable

    async with anyio.create_task_group() as tg:
        for i, awaitable in enumerate(awaitables):
            tg.start_soon(one, i, awaitable)
    return results


async def test_sec_34_36_a_protected_tool_presents_a_dpop_bound_token_with_proofs(
    dev_idp: DevIdP,
) -> None:
    """Issue 13: DPoP through the LangChain wrappers. With ``IdentityClient(dpop=True)``
    the tool's narrow token is DPoP-bound; ``current_auth()`` presents it with a fresh
    proof on every request (and the resource's nonce), which the calendar API verifies
    (``ath``, ``htm``, ``htu``, key thumbprint)."""
    from langchain_agent_identity import current_auth

    async with httpx2.AsyncClient() as http:
        jwks = (await http.get(f"{dev_idp.issuer}/jwks")).json()
    api = CalendarAPI(issuer=dev_idp.issuer, jwks=jwks, require_nonce=True)

    @tool
    async def list_events(day: str) -> str:
        """List the user's calendar events on a day."""
        async with httpx2.AsyncClient(
            auth=current_auth(), transport=httpx2.ASGITransport(app=api)
        ) as http:
            first = await http.get(f"{CALENDAR}/events", params={"day": day})
            second = await http.get(f"{CALENDAR}/events", params={"day": day})
        return f"{first.status_code} {second.status_code}"

    async with client(dev_idp, dpop=True) as identity:
        protected = protect(
            list_events, identity=identity, resource=CALENDAR, scopes="calendar.read"
        )
        assert await protected.ainvoke({"day": "monday"}, config=ALICE) == "200 200"
    schemes = [seen["headers"]["authorization"].split()[0] for seen in api.seen]
    assert set(schemes) == {"DPoP"}
    assert api.check is not None
    jtis = [proof["claims"]["jti"] for proof in api.check.proofs]
    assert len(jtis) == len(set(jtis)) >= 2  # a fresh proof per request, retries included


async def test_sec_29_a_resource_that_keeps_refusing_is_a_readable_result(
    dev_idp: DevIdP,
) -> None:
    """A tool that calls its API through ``user.http_auth()``: the API keeps answering
    ``403 insufficient_scope`` after the step-ups, so the tool's result tells the model not
    to retry (``AccessRefused``, with its artifact), and calling the tool again does not
    ask the user again: the step-up counts belong to the user's grant and resource."""
    base = await calendar_api(dev_idp)
    api = CalendarAPI(issuer=base.issuer, jwks=base.jwks, always_insufficient=True)
    consent = AsUser()

    async with client(dev_idp, consent=consent) as identity:

        @tool
        async def list_events(day: str) -> str:
            """List the user's calendar events on a day."""
            alice = identity.user("alice", tenant="acme")
            auth = alice.http_auth(resource=CALENDAR, scopes="calendar.read", max_step_ups=1)
            async with httpx2.AsyncClient(
                auth=auth, transport=httpx2.ASGITransport(app=api)
            ) as http:
                response = await http.get(f"{CALENDAR}/events", params={"day": day})
            return str(response.status_code)

        protected = protect(
            list_events, identity=identity, resource=CALENDAR, scopes="calendar.read"
        )
        message = await protected.ainvoke(_call({"day": "monday"}, "list_events"), config=ALICE)
        asked = len(consent.flows)
        assert asked == 2  # the tool's consent, then one step-up
        again = await protected.ainvoke({"day": "tuesday"}, config=ALICE)
    assert isinstance(message, ToolMessage)
    assert message.status == "error"
    assert message.name == "list_events"
    assert "still refuses 'list_events'" in message.content
    assert "Do not retry" in message.content
    assert "alice" not in message.content
    assert message.artifact == {
        "type": "agent_identity.access_refused",
        "tool": "list_events",
        "resource": CALENDAR,
        "operation": "GET /api/events",
        "scopes": ["calendar.read"],
        "step_ups": 1,
    }
    assert again == message.content
    assert len(consent.flows) == asked  # nobody asked again
