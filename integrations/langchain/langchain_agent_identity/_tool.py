"""``protect``: any LangChain tool, run with the user's narrowest token.

The wrapper is a new :class:`~langchain_core.tools.BaseTool` with the wrapped tool's
name, description and argument schema. Each invocation goes through one
:meth:`agent_identity.tools.ToolGuard.run`: the token for the tool's resource and scopes
(or an RFC 8693 exchanged token), the human approval (OpenID CIBA) when the policy asks
for it, the call itself, and exactly one audit record. The wrapped tool reads its
credential with :func:`agent_identity.tools.current_token`; the token never enters the
model's view, the arguments or the schema.

Protecting a protected tool does not stack a second wrapper: the requirements are merged
into one (one resource, the union of the scopes, the approval policy, delegation), so the
order does not matter and nothing is injected twice.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import typing
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from langchain_core.callbacks import AsyncCallbackManagerForToolRun, CallbackManagerForToolRun
from langchain_core.messages import ToolMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool, ToolException
from pydantic import BaseModel, PrivateAttr

from agent_identity import ConfigurationError, StepUpLimitExceeded
from agent_identity.sync import BlockingIdentityClient
from agent_identity.tools import ApprovalOptions, ToolCall, ToolGuard, ToolRequirement

from ._core import MAX_HUMAN_ROUNDS, Runner
from ._errors import HUMAN_ERRORS, IdentityToolError, access_refused_for

if TYPE_CHECKING:
    from agent_identity import IdentityClient
    from agent_identity.approval import ApprovalPolicy
    from agent_identity.audit import AuditTrail

__all__ = ["MAX_HUMAN_ROUNDS", "ProtectedTool", "protect"]

T = TypeVar("T")

#: The keyword that carries the model's tool call id from LangChain's argument parsing
#: to the wrapper's ``_run``/``_arun`` (never passed on to the wrapped tool).
_CALL_ID = "__agent_identity_tool_call_id"


def protect(
    tool: BaseTool | Callable[..., Any],
    *,
    guard: ToolGuard | None = None,
    identity: IdentityClient | BlockingIdentityClient | None = None,
    resource: str | None = None,
    scopes: str | Sequence[str] = (),
    approval: ApprovalPolicy | None = None,
    delegate: bool = False,
    audit: AuditTrail | None = None,
    user_key: str | None = None,
    tenant_key: str | None = None,
    interrupt_on_human: bool | None = None,
    approval_options: ApprovalOptions | None = None,
) -> ProtectedTool:
    """Wrap ``tool`` so that it runs with the user's identity.

    :param tool: any LangChain tool (``BaseTool`` subclass, ``StructuredTool``, a
        ``@tool`` function), or a plain function (made a tool with ``@tool`` first).
        A :class:`ProtectedTool` gets its requirements merged with the new ones.
    :param identity: an :class:`~agent_identity.IdentityClient` (``ainvoke`` only) or a
        :class:`~agent_identity.BlockingIdentityClient` (``invoke`` and ``ainvoke``).
    :param guard: a :class:`~agent_identity.tools.ToolGuard` to use instead (its
        identity and audit trail); give ``identity`` too (its blocking client) for
        ``invoke``.
    :param resource: the resource (RFC 8707) the tool calls; its token is bound to it.
    :param scopes: the scopes the tool needs at ``resource``, and no more.
    :param approval: an :class:`~agent_identity.approval.ApprovalPolicy`: calls it
        selects wait for the user's approval (OpenID CIBA), bound to the exact call.
    :param delegate: obtain the token by RFC 8693 token exchange, naming the agent as
        actor (``act`` claim), instead of from the user's grant directly.
    :param audit: an :class:`~agent_identity.audit.AuditTrail`: one record per
        invocation, failures included.
    :param user_key: the ``config["configurable"]`` key holding the user id
        (default ``"user_id"``).
    :param tenant_key: the key holding the tenant id (default ``"tenant_id"``).
    :param interrupt_on_human: with LangGraph (the ``[langgraph]`` extra), pause the
        graph with ``interrupt()`` when a consent or approval cannot complete (or is still
        pending); resume it with a ``HumanInTheLoopMiddleware`` decision
        (``{"type": "approve"}`` retries: a pending approval is continued, never asked
        again; ``{"type": "reject", "message": ...}`` tells the model; ``{"type":
        "respond", "message": ...}`` answers for the tool). Otherwise (default) the model
        gets a message saying what the user must do, with a structured artifact
        (``ToolMessage.artifact``). A denied approval is always a result.
    :param approval_options: how approvals are asked for this tool
        (:class:`~agent_identity.tools.ApprovalOptions`: ping receiver,
        ``requested_expiry``, binding message template, ``authorization_details``, wait).
    """
    if not isinstance(tool, BaseTool):
        if not callable(tool):
            raise ConfigurationError("protect() needs a LangChain tool or a function")
        from langchain_core.tools import tool as as_tool

        tool = as_tool(tool)
    scopes = tuple(scopes.split()) if isinstance(scopes, str) else tuple(scopes)
    if isinstance(tool, ProtectedTool):
        return tool._merged(
            guard=guard,
            identity=identity,
            resource=resource,
            scopes=scopes,
            approval=approval,
            delegate=delegate,
            audit=audit,
            user_key=user_key,
            tenant_key=tenant_key,
            interrupt_on_human=interrupt_on_human,
            approval_options=approval_options,
        )
    return ProtectedTool._wrap(
        tool,
        requirement=ToolRequirement(
            resource=resource,
            scopes=scopes,
            approval=approval,
            delegate=delegate,
            approval_options=approval_options or ApprovalOptions(),
        ),
        guard=guard,
        identity=identity,
        audit=audit,
        user_key=user_key or "user_id",
        tenant_key=tenant_key or "tenant_id",
        interrupt_on_human=bool(interrupt_on_human),
    )


class ProtectedTool(BaseTool):
    """A LangChain tool that runs with the user's identity (made by :func:`protect`)."""

    _tool: BaseTool = PrivateAttr()
    _requirement: ToolRequirement = PrivateAttr()
    _guard: ToolGuard | None = PrivateAttr(default=None)
    _runner: Runner = PrivateAttr()
    _shape: tuple[list[str], frozenset[str]] | None = PrivateAttr(default=None)

    # -- construction ---------------------------------------------------------------------

    @classmethod
    def _wrap(
        cls,
        tool: BaseTool,
        *,
        requirement: ToolRequirement,
        guard: ToolGuard | None,
        identity: IdentityClient | BlockingIdentityClient | None,
        audit: AuditTrail | None,
        user_key: str,
        tenant_key: str,
        interrupt_on_human: bool,
    ) -> ProtectedTool:
        if guard is None and identity is None:
            raise ConfigurationError("protect() needs an identity (or a ToolGuard)")
        if guard is not None and audit is not None:
            raise ConfigurationError("give the audit trail to the ToolGuard, not to protect()")
        runner = Runner(
            guard=guard,
            identity=identity,
            audit=audit,
            user_key=user_key,
            tenant_key=tenant_key,
            interrupt=interrupt_on_human,
        )
        wrapper = cls(
            name=tool.name,
            description=tool.description,
            args_schema=tool.args_schema,
            return_direct=tool.return_direct,
            verbose=tool.verbose,
            callbacks=tool.callbacks,
            tags=tool.tags,
            metadata=tool.metadata,
            handle_tool_error=_HandleToolError(tool.handle_tool_error),
            handle_validation_error=tool.handle_validation_error,
            response_format=tool.response_format,
            extras=tool.extras,
        )
        wrapper._tool = tool
        wrapper._requirement = requirement
        wrapper._guard = guard
        wrapper._runner = runner
        return wrapper

    def _merged(
        self,
        *,
        guard: ToolGuard | None,
        identity: IdentityClient | BlockingIdentityClient | None,
        resource: str | None,
        scopes: tuple[str, ...],
        approval: ApprovalPolicy | None,
        delegate: bool,
        audit: AuditTrail | None,
        user_key: str | None,
        tenant_key: str | None,
        interrupt_on_human: bool | None,
        approval_options: ApprovalOptions | None,
    ) -> ProtectedTool:
        """One wrapper with both sets of requirements (composition, in any order):
        delegation is kept if any layer asks for it, under approval too."""
        mine = self._requirement
        runner = self._runner
        merged = ToolRequirement(
            resource=_one("resource", mine.resource, resource),
            scopes=tuple(dict.fromkeys((*mine.scopes, *scopes))),
            approval=_one("approval policy", mine.approval, approval),
            delegate=mine.delegate or delegate,
            approval_options=_one(
                "approval options",
                None if mine.approval_options == ApprovalOptions() else mine.approval_options,
                approval_options,
            )
            or ApprovalOptions(),
        )
        return ProtectedTool._wrap(
            self._tool,
            requirement=merged,
            guard=_one("guard", self._guard, guard),
            identity=_one("identity", runner.identity, identity),
            audit=_one("audit trail", runner.audit, audit),
            user_key=user_key or runner.user_key,
            tenant_key=tenant_key or runner.tenant_key,
            interrupt_on_human=runner.interrupt
            if interrupt_on_human is None
            else interrupt_on_human,
        )

    def __repr__(self) -> str:
        req = self._requirement
        return (
            f"ProtectedTool(name={self.name!r}, resource={req.resource!r}, "
            f"scopes={req.scopes!r}, approval={req.approval is not None}, "
            f"delegate={req.delegate})"
        )

    # -- what the wrapper is --------------------------------------------------------------

    @property
    def tool(self) -> BaseTool:
        """The wrapped tool."""
        return self._tool

    @property
    def requirement(self) -> ToolRequirement:
        """What each invocation needs (resource, scopes, approval, delegation)."""
        return self._requirement

    # The wrapped tool's view of its arguments, unchanged (so that injected arguments,
    # single-input tools and JSON-schema tools behave exactly as before).

    @property
    def args(self) -> dict[str, Any]:
        return self._tool.args

    @property
    def tool_call_schema(self) -> Any:
        return self._tool.tool_call_schema

    def get_input_schema(self, config: RunnableConfig | None = None) -> Any:
        return self._tool.get_input_schema(config)

    @property
    def _injected_args_keys(self) -> frozenset[str]:
        keys: frozenset[str] = getattr(self._tool, "_injected_args_keys", frozenset())
        return frozenset(keys)

    def _to_args_and_kwargs(
        self, tool_input: str | dict[str, Any], tool_call_id: str | None
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        args, kwargs = self._tool._to_args_and_kwargs(tool_input, tool_call_id)
        if tool_call_id is not None:
            kwargs[_CALL_ID] = tool_call_id
        return args, kwargs

    # -- running --------------------------------------------------------------------------

    def _run(
        self,
        *args: Any,
        config: RunnableConfig,
        run_manager: CallbackManagerForToolRun | None = None,
        **kwargs: Any,
    ) -> Any:
        runner = self._runner
        runner.require_blocking(self.name)
        call_id = kwargs.pop(_CALL_ID, None)
        arguments = self._model_arguments(args, kwargs)
        call = runner.call_for(self.name, arguments, config, call_id)
        if not isinstance(call, ToolCall):
            runner.refuse_sync(self.name, arguments, self._requirement, call)
            raise _for_call(call, call_id)
        inner = functools.partial(self._call_tool_sync, args, kwargs, config, run_manager)
        for attempt in itertools.count():
            try:
                return runner.run_sync(call, self._requirement, inner)
            except HUMAN_ERRORS as exc:
                self._human(exc, call, attempt)
            except StepUpLimitExceeded as exc:
                raise _for_call(access_refused_for(exc, call), call.call_id) from exc

    async def _arun(
        self,
        *args: Any,
        config: RunnableConfig,
        run_manager: AsyncCallbackManagerForToolRun | None = None,
        **kwargs: Any,
    ) -> Any:
        runner = self._runner
        call_id = kwargs.pop(_CALL_ID, None)
        arguments = self._model_arguments(args, kwargs)
        call = runner.call_for(self.name, arguments, config, call_id)
        if not isinstance(call, ToolCall):
            await runner.refuse(self.name, arguments, self._requirement, call)
            raise _for_call(call, call_id)

        async def body() -> Any:
            return await self._call_tool_async(args, kwargs, config, run_manager)

        for attempt in itertools.count():
            try:
                return await runner.arun(call, self._requirement, body)
            except HUMAN_ERRORS as exc:
                self._human(exc, call, attempt)
            except StepUpLimitExceeded as exc:
                raise _for_call(access_refused_for(exc, call), call.call_id) from exc

    def _human(self, error: BaseException, call: ToolCall, attempt: int) -> None:
        """Turn a consent/approval that cannot complete into the model's tool result, or
        (``interrupt_on_human``) pause the graph until the human acted; returns to retry."""
        action, decision = self._runner.human(error, call, self._requirement, attempt)
        if decision is None:
            raise _for_call(action, call.call_id) from error
        kind, detail = decision
        if kind == "approve":
            return
        message = detail.get("message")
        if kind == "respond":
            raise _Responded(str(message or ""))
        raise _for_call(action.declined(str(message) if message else None), call.call_id) from error

    def _model_arguments(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """The arguments the model chose (injected ones, such as the tool call id, the
        graph state or a runtime, are left out: an approval binds to what the model
        asked for)."""
        shape = self._shape
        if shape is None:  # the wrapped tool's schema does not change: read it once
            shape = self._shape = (
                _visible_names(self._tool.tool_call_schema),
                self._injected_args_keys | {"run_manager", "callbacks", "config"},
            )
        names, hidden = shape
        arguments = {
            k: _plain(v) for k, v in kwargs.items() if (k in names if names else k not in hidden)
        }
        for index, value in enumerate(args):
            name = names[index] if index < len(names) else f"arg{index}"
            arguments[name] = _plain(value)
        return arguments

    def _call_tool_sync(
        self,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        config: RunnableConfig,
        run_manager: CallbackManagerForToolRun | None,
    ) -> Any:
        tool = self._tool
        extra = _runtime_kwargs(tool._run, config, run_manager)
        return tool._run(*args, **kwargs, **extra)

    async def _call_tool_async(
        self,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        config: RunnableConfig,
        run_manager: AsyncCallbackManagerForToolRun | None,
    ) -> Any:
        tool = self._tool
        # As BaseTool.arun does: a tool without its own _arun runs _run in an executor,
        # and it is _run's signature that says what it accepts.
        checked = tool._run if type(tool)._arun is BaseTool._arun else tool._arun
        extra = _runtime_kwargs(checked, config, run_manager)
        return await tool._arun(*args, **kwargs, **extra)


# LangChain reads the type hints of ``_run``/``_arun`` on every call (to find the
# RunnableConfig parameter); this module's postponed annotations would be evaluated from
# their text each time (about 50 us a call). Resolved once here, they are read as they are.
for _method in (ProtectedTool._run, ProtectedTool._arun):
    _method.__annotations__ = typing.get_type_hints(_method)


class _Responded(ToolException):
    """The human answered for the tool (a ``respond`` decision): the result as given."""


E = TypeVar("E", bound=Exception)


def _for_call(error: E, call_id: str | None) -> E:
    if isinstance(error, IdentityToolError):
        error.tool_call_id = call_id
    return error


def _tool_message_out(error: IdentityToolError) -> ToolMessage:
    """The tool result with its structured artifact (returned as is by LangChain)."""
    assert error.tool_call_id is not None
    name: str = getattr(error, "tool", "")  # AccessRefused and HumanActionRequired name it
    return error.tool_message(error.tool_call_id, name)


class _HandleToolError:
    """``handle_tool_error`` of a protected tool: identity problems become the tool's
    result (the model reads what the user must do); the wrapped tool's own
    ``ToolException`` is handled as that tool asked (re-raised if it did not)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __call__(self, error: ToolException) -> Any:
        if isinstance(error, _Responded):
            return error.args[0]
        if isinstance(error, IdentityToolError):
            if error.tool_call_id is not None and error.payload() is not None:
                return _tool_message_out(error)
            return error.args[0]
        flag = self.inner
        if not flag:
            raise error
        if flag is True:
            return error.args[0] if error.args else "Tool execution error"
        if isinstance(flag, str):
            return flag
        return flag(error)


def _one(what: str, mine: Any, theirs: Any) -> Any:
    if mine is None or theirs is None or mine is theirs or mine == theirs:
        return theirs if mine is None else mine
    raise ConfigurationError(
        f"this tool is already protected with another {what}; a protected tool has one "
        f"{what} (protect a separate tool for another one)"
    )


def _visible_names(schema: Any) -> list[str]:
    if isinstance(schema, dict):
        properties = schema.get("properties")
        return list(properties) if isinstance(properties, dict) else []
    fields = getattr(schema, "model_fields", None)
    if fields is None:
        fields = getattr(schema, "__fields__", None)  # pydantic.v1 schemas
    return list(fields) if isinstance(fields, dict) else []


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    return value


@functools.lru_cache(maxsize=512)
def _runtime_parameters(func: Callable[..., Any]) -> tuple[bool, str | None]:
    """Whether ``func`` takes ``run_manager``, and the name of its ``RunnableConfig``
    parameter (how LangChain decides what to pass a tool's ``_run``/``_arun``)."""
    try:
        parameters = inspect.signature(func).parameters
    except (TypeError, ValueError):
        return False, None
    try:
        hints = typing.get_type_hints(func)
    except Exception:
        hints = {}
    config_param = next(
        (
            name
            for name, parameter in parameters.items()
            if hints.get(name) is RunnableConfig
            or parameter.annotation in ("RunnableConfig", RunnableConfig)
        ),
        None,
    )
    return "run_manager" in parameters, config_param


def _runtime_kwargs(
    func: Callable[..., Any], config: RunnableConfig, run_manager: Any
) -> dict[str, Any]:
    wants_manager, config_param = _runtime_parameters(getattr(func, "__func__", func))
    extra: dict[str, Any] = {}
    if wants_manager and run_manager is not None:
        extra["run_manager"] = run_manager
    if config_param is not None:
        extra[config_param] = config
    return extra
