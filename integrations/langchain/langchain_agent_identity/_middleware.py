"""``IdentityMiddleware``: the user's identity for a ``create_agent`` agent's tools.

LangChain v1 agents (``langchain.agents.create_agent``) are extended with middleware; this
one wraps every tool call (``wrap_tool_call`` / ``awrap_tool_call``) of the tools it names::

    agent = create_agent(
        model,
        tools=[list_events, pay_invoice],
        middleware=[
            IdentityMiddleware(
                identity,
                tools={
                    "list_events": ToolRequirement(resource=CALENDAR, scopes=("calendar.read",)),
                    "pay_invoice": {"resource": PAYMENTS, "scopes": "payments.write",
                                    "approval": ApprovalPolicy(always=["pay_invoice"])},
                },
                audit=trail,
            )
        ],
        checkpointer=InMemorySaver(),
    )

Each named call runs through the same implementation as :func:`protect`
(:mod:`langchain_agent_identity._core`, then :class:`agent_identity.tools.ToolGuard`):
the token for the tool's resource and scopes (read in the tool with
:func:`~agent_identity.tools.current_token`), an approval bound to the exact call when
the policy asks (asked once per tool call and continued when the graph resumes), one
audit record. Tools not named run untouched. Protect a tool either here or with
:func:`protect`, not both.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from langchain.agents.middleware import AgentMiddleware
from langchain_core.messages import ToolMessage

from agent_identity import ConfigurationError, StepUpLimitExceeded
from agent_identity.tools import ApprovalOptions, ToolCall, ToolGuard, ToolRequirement

from ._core import Runner
from ._errors import HUMAN_ERRORS, IdentityToolError, access_refused_for

if TYPE_CHECKING:
    from langchain.agents.middleware import ToolCallRequest
    from langgraph.types import Command

    from agent_identity import IdentityClient
    from agent_identity.audit import AuditTrail
    from agent_identity.sync import BlockingIdentityClient

__all__ = ["IdentityMiddleware"]

_FIELDS = frozenset({"resource", "scopes", "approval", "delegate", "approval_options"})


def _requirement(name: str, value: ToolRequirement | Mapping[str, Any]) -> ToolRequirement:
    if isinstance(value, ToolRequirement):
        return value
    if not isinstance(value, Mapping):
        raise ConfigurationError(
            f"tools[{name!r}] must be a ToolRequirement or a mapping of its fields"
        )
    unknown = set(value) - _FIELDS
    if unknown:
        raise ConfigurationError(f"tools[{name!r}] has unknown fields: {sorted(unknown)}")
    fields = dict(value)
    options = fields.get("approval_options")
    if isinstance(options, Mapping):
        fields["approval_options"] = ApprovalOptions(**options)
    return ToolRequirement(**fields)


class IdentityMiddleware(AgentMiddleware):
    """Gives the tools it names the user's identity (see the module docstring).

    :param identity: an :class:`~agent_identity.IdentityClient` (``ainvoke``/``astream``)
        or a :class:`~agent_identity.BlockingIdentityClient` (``invoke`` too).
    :param tools: tool name -> :class:`~agent_identity.tools.ToolRequirement` (or a
        mapping of its fields: ``resource``, ``scopes``, ``approval``, ``delegate``,
        ``approval_options``).
    :param guard: a :class:`~agent_identity.tools.ToolGuard` to use instead (its identity
        and audit trail).
    :param audit: an :class:`~agent_identity.audit.AuditTrail`: one record per call,
        refusals included.
    :param user_key: / :param tenant_key: where the run's config names the user
        (``config["configurable"]``, default ``user_id``/``tenant_id``); the agent's
        runtime context (``context={"user_id": ...}``) is read too.
    :param interrupt_on_human: pause the graph (``interrupt``) when a consent or approval
        needs the human, with a ``HumanInTheLoopMiddleware``-style request; resume with a
        decision: ``approve`` (retry; a pending approval is continued, not asked again),
        ``edit`` (retry with ``edited_action["args"]``), ``reject`` (the model is told),
        ``respond`` (the human's answer is the result). Default: the model gets a result
        saying what the user must do, with the details in ``ToolMessage.artifact``.
    """

    def __init__(
        self,
        identity: IdentityClient | BlockingIdentityClient | None = None,
        *,
        tools: Mapping[str, ToolRequirement | Mapping[str, Any]],
        guard: ToolGuard | None = None,
        audit: AuditTrail | None = None,
        user_key: str = "user_id",
        tenant_key: str = "tenant_id",
        interrupt_on_human: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(tools, Mapping) or not tools:
            raise ConfigurationError("tools maps tool names to what each needs")
        self._requirements = {name: _requirement(name, value) for name, value in tools.items()}
        self._runner = Runner(
            guard=guard,
            identity=identity,
            audit=audit,
            user_key=user_key,
            tenant_key=tenant_key,
            interrupt=interrupt_on_human,
        )

    def __repr__(self) -> str:
        return f"IdentityMiddleware(tools={sorted(self._requirements)!r})"

    @property
    def requirements(self) -> Mapping[str, ToolRequirement]:
        return dict(self._requirements)

    # -- LangChain's hooks ---------------------------------------------------------------------

    def wrap_tool_call(
        self,
        request: ToolCallRequest,
        handler: Callable[[ToolCallRequest], ToolMessage | Command[Any]],
    ) -> ToolMessage | Command[Any]:
        requirement = self._requirements.get(request.tool_call["name"])
        if requirement is None:
            return handler(request)
        runner = self._runner
        runner.require_blocking(call_name(request))
        for attempt in itertools.count():
            call = self._call(request)
            if not isinstance(call, ToolCall):
                runner.refuse_sync(call_name(request), _args(request), requirement, call)
                return self._refused(call, request)
            try:
                return runner.run_sync(call, requirement, functools.partial(handler, request))
            except HUMAN_ERRORS as exc:
                outcome = self._human(exc, call, requirement, attempt, request)
            except StepUpLimitExceeded as exc:
                refused = access_refused_for(exc, call)
                return refused.tool_message(request.tool_call.get("id") or "", call_name(request))
            if isinstance(outcome, ToolMessage):
                return outcome
            request = outcome
        raise AssertionError("unreachable")  # pragma: no cover

    async def awrap_tool_call(
        self,
        request: ToolCallRequest,
        handler: Callable[[ToolCallRequest], Awaitable[ToolMessage | Command[Any]]],
    ) -> ToolMessage | Command[Any]:
        requirement = self._requirements.get(request.tool_call["name"])
        if requirement is None:
            return await handler(request)
        runner = self._runner
        for attempt in itertools.count():
            call = self._call(request)
            if not isinstance(call, ToolCall):
                await runner.refuse(call_name(request), _args(request), requirement, call)
                return self._refused(call, request)
            try:
                return await runner.arun(call, requirement, functools.partial(handler, request))
            except HUMAN_ERRORS as exc:
                outcome = self._human(exc, call, requirement, attempt, request)
            except StepUpLimitExceeded as exc:
                refused = access_refused_for(exc, call)
                return refused.tool_message(request.tool_call.get("id") or "", call_name(request))
            if isinstance(outcome, ToolMessage):
                return outcome
            request = outcome
        raise AssertionError("unreachable")  # pragma: no cover

    # -- helpers ---------------------------------------------------------------------------

    def _call(self, request: ToolCallRequest) -> ToolCall | IdentityToolError | ConfigurationError:
        runtime = request.runtime
        config: Mapping[str, Any] = getattr(runtime, "config", None) or {}
        context = getattr(runtime, "context", None)
        configurable = dict(config.get("configurable") or {})
        runner = self._runner
        for key in (runner.user_key, runner.tenant_key):
            if key not in configurable:
                value = (
                    context.get(key)
                    if isinstance(context, Mapping)
                    else getattr(context, key, None)
                )
                if value is not None:
                    configurable[key] = value
        return runner.call_for(
            call_name(request),
            _args(request),
            {**config, "configurable": configurable},
            request.tool_call.get("id"),
        )

    def _refused(
        self, error: IdentityToolError | ConfigurationError, request: ToolCallRequest
    ) -> ToolMessage:
        if isinstance(error, ConfigurationError):
            raise error  # a developer's mistake: loud (it was logged and audited)
        return error.tool_message(request.tool_call.get("id") or "", call_name(request))

    def _human(
        self,
        error: BaseException,
        call: ToolCall,
        requirement: ToolRequirement,
        attempt: int,
        request: ToolCallRequest,
    ) -> ToolMessage | ToolCallRequest:
        """The result for the model, or the request to retry (as the human decided)."""
        action, decision = self._runner.human(
            error, call, requirement, attempt, decisions=("approve", "edit", "reject", "respond")
        )
        call_id = request.tool_call.get("id") or ""
        name = call_name(request)
        if decision is None:
            return action.tool_message(call_id, name)
        kind, detail = decision
        if kind == "approve":
            return request
        if kind == "edit":
            edited = detail.get("edited_action")
            if not isinstance(edited, Mapping) or not isinstance(edited.get("args"), Mapping):
                raise ConfigurationError("an edit decision needs edited_action with args")
            if edited.get("name", name) != name:
                raise ConfigurationError("an edit decision cannot switch tools")
            return request.override(tool_call={**request.tool_call, "args": dict(edited["args"])})
        message = detail.get("message")
        if kind == "respond":
            return ToolMessage(
                content=str(message or ""), tool_call_id=call_id, name=name, status="success"
            )
        return action.declined(str(message) if message else None).tool_message(call_id, name)


def call_name(request: ToolCallRequest) -> str:
    name: str = request.tool_call["name"]
    return name


def _args(request: ToolCallRequest) -> dict[str, Any]:
    args = request.tool_call.get("args") or {}
    return dict(args)
