"""The one implementation behind :func:`~langchain_agent_identity.protect` and
:class:`~langchain_agent_identity.IdentityMiddleware`.

Both hand every protected call to :meth:`agent_identity.tools.ToolGuard.run` (token,
approval, the call, one audit record); what is LangChain-specific lives here, once:

- who the agent acts for (the run's config, :func:`acting_for`, the enclosing call) and
  which conversation and tool call this is (``thread_id``, the tool call id): a call's
  approval is asked once and continued on resume;
- a call refused before it runs (nobody to act for, bad configuration) is logged for the
  developer and audited (:meth:`ToolGuard.refuse`), and the model gets a readable result;
- a consent or approval that needs a human becomes a readable tool result with a
  structured artifact (``ToolMessage.artifact``: :meth:`HumanActionRequired.payload`), or,
  with ``interrupt_on_human``, a LangGraph interrupt answered with the decisions of
  ``HumanInTheLoopMiddleware`` (``approve``: the human did it, retry; ``edit``: retry
  with the reviewer's arguments (middleware); ``reject``: the model is told; ``respond``:
  the human's answer is the result). A denied approval is always a result, never an
  interrupt;
- an :class:`~agent_identity.IdentityClient` runs the guard in the caller's event loop; a
  :class:`~agent_identity.BlockingIdentityClient` runs it on its portal (``invoke`` and
  ``ainvoke`` alike).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread

from agent_identity import ApprovalDenied, ApprovalPending, ConfigurationError
from agent_identity.sync import BlockingIdentityClient
from agent_identity.tools import ToolCall, ToolGuard, ToolRequirement

from ._context import resolve_user
from ._errors import HumanActionRequired, IdentityToolError, human_action_for
from ._errors import user_unknown as _user_unknown

if TYPE_CHECKING:
    from agent_identity import IdentityClient
    from agent_identity.audit import AuditTrail

__all__ = ["MAX_HUMAN_ROUNDS", "MAX_PENDING_ROUNDS", "Decision", "Runner", "decision_of"]

T = TypeVar("T")

#: How many times one invocation may interrupt for a human (LangGraph) before giving up.
MAX_HUMAN_ROUNDS = 3
#: The same for an approval still pending (each resume continues the same request; a
#: resumed LangGraph node replays its earlier interrupts, so this bounds the replay).
MAX_PENDING_ROUNDS = 100

#: What a human answered to an interrupt: the HumanInTheLoopMiddleware decision types.
Decision = tuple[Literal["approve", "edit", "reject", "respond"], Mapping[str, Any]]


def decision_of(resumed: Any) -> Decision:
    """Read a resume value: a HumanInTheLoopMiddleware decision (``{"type": "approve"}``,
    ``{"type": "edit", "edited_action": {"name": ..., "args": {...}}}``,
    ``{"type": "reject", "message": ...}``, ``{"type": "respond", "message": ...}``), or a
    plain truthy / falsy value (approve / reject)."""
    if isinstance(resumed, Mapping) and "type" in resumed:
        kind = resumed["type"]
        if kind in ("approve", "edit", "reject", "respond"):
            return kind, resumed
        raise ConfigurationError(f"unknown human decision type {kind!r}")
    return ("approve", {}) if resumed else ("reject", {})


class Runner:
    """Runs protected calls through a :class:`ToolGuard` (see the module docstring)."""

    __slots__ = (
        "_audit",
        "_blocking",
        "_guard",
        "_identity",
        "interrupt",
        "tenant_key",
        "user_key",
    )

    def __init__(
        self,
        *,
        guard: ToolGuard | None,
        identity: IdentityClient | BlockingIdentityClient | None,
        audit: AuditTrail | None,
        user_key: str,
        tenant_key: str,
        interrupt: bool,
    ) -> None:
        if guard is None and identity is None:
            raise ConfigurationError("an identity (or a ToolGuard) is needed")
        if guard is not None and audit is not None:
            raise ConfigurationError("give the audit trail to the ToolGuard")
        if interrupt:
            require_langgraph()
        blocking = identity if isinstance(identity, BlockingIdentityClient) else None
        if guard is not None and blocking is not None and guard.identity is not blocking.client:
            raise ConfigurationError(
                "the ToolGuard's identity is not this BlockingIdentityClient's client"
            )
        if guard is None:
            client = blocking.client if blocking is not None else identity
            assert client is not None
            guard = ToolGuard(client, audit=audit)  # type: ignore[arg-type]
        self._guard = guard
        self._identity = identity
        self._audit = audit
        self._blocking = blocking
        self.user_key = user_key
        self.tenant_key = tenant_key
        self.interrupt = interrupt

    @property
    def guard(self) -> ToolGuard:
        return self._guard

    @property
    def identity(self) -> IdentityClient | BlockingIdentityClient | None:
        return self._identity

    @property
    def audit(self) -> AuditTrail | None:
        return self._audit

    @property
    def blocking(self) -> BlockingIdentityClient | None:
        return self._blocking

    # -- the call --------------------------------------------------------------------------

    def call_for(
        self,
        tool: str,
        arguments: Mapping[str, Any],
        config: Mapping[str, Any] | None,
        call_id: str | None,
    ) -> ToolCall | IdentityToolError | ConfigurationError:
        """The :class:`ToolCall`, or the error to refuse it with: nobody known to act for
        (a result for the model), or configuration values that are not usable (raised
        for the developer)."""
        try:
            who = resolve_user(config, user_key=self.user_key, tenant_key=self.tenant_key)
        except ConfigurationError as exc:
            return exc
        if who is None:
            return _user_unknown(tool, self.user_key)
        user, tenant = who
        configurable = (config or {}).get("configurable") or {}
        thread = configurable.get("thread_id")
        return ToolCall(
            tool=tool,
            arguments=arguments,
            user=user,
            tenant=tenant,
            call_id=call_id or None,
            thread=str(thread) if thread is not None else None,
        )

    async def refuse(
        self,
        tool: str,
        arguments: Mapping[str, Any],
        requirement: ToolRequirement,
        error: BaseException,
    ) -> None:
        """Log and audit a call refused before it ran (on the client's loop)."""
        kwargs: dict[str, Any] = {
            "tool": tool,
            "arguments": arguments,
            "requirement": requirement,
            "error": error,
        }
        if self._blocking is None:
            await self._guard.refuse(**kwargs)
        else:
            await anyio.to_thread.run_sync(
                functools.partial(self._blocking.portal.call, _refuse, self._guard, kwargs)
            )

    def refuse_sync(
        self,
        tool: str,
        arguments: Mapping[str, Any],
        requirement: ToolRequirement,
        error: BaseException,
    ) -> None:
        """Log and audit a call refused before it ran, from sync code (on the portal)."""
        blocking = self.require_blocking(tool)
        kwargs: dict[str, Any] = {
            "tool": tool,
            "arguments": arguments,
            "requirement": requirement,
            "error": error,
        }
        blocking.portal.call(_refuse, self._guard, kwargs)

    def require_blocking(self, tool: str) -> BlockingIdentityClient:
        """The BlockingIdentityClient sync calls run on; a sync call with an async
        IdentityClient is a developer's mistake, raised before anything else (no result
        for the model, no token asked for)."""
        if self._blocking is None:
            raise ConfigurationError(
                f"{tool!r} was invoked synchronously, but it was protected with an async "
                "IdentityClient: use 'await ...ainvoke(...)', or give a BlockingIdentityClient "
                "(agent_identity.BlockingIdentityClient) for invoke()"
            )
        return self._blocking

    async def arun(
        self, call: ToolCall, requirement: ToolRequirement, body: Callable[[], Awaitable[T]]
    ) -> T:
        """One guarded run from async code (the body runs on the caller's loop)."""
        if self._blocking is None:
            return await self._guard.run(call, requirement, body)
        return await _run_on_portal(self._blocking, self._guard, call, requirement, body)

    def run_sync(self, call: ToolCall, requirement: ToolRequirement, body: Callable[[], T]) -> T:
        """One guarded run from sync code (a BlockingIdentityClient is needed): the body
        runs in a worker thread inside the guard's context."""
        blocking = self.require_blocking(call.tool)

        async def on_portal() -> T:
            return await anyio.to_thread.run_sync(body)

        return blocking.portal.call(self._guard.run, call, requirement, on_portal)

    # -- humans -------------------------------------------------------------------------------

    def human(
        self,
        error: BaseException,
        call: ToolCall,
        requirement: ToolRequirement,
        attempt: int,
        *,
        decisions: tuple[str, ...] = ("approve", "reject", "respond"),
    ) -> tuple[HumanActionRequired, Decision | None]:
        """What to do about a consent or approval that needs a human: the result for the
        model, and (``interrupt_on_human``) the human's decision after an interrupt.
        ``None`` as the decision means "return the result". Must run where LangGraph's
        ``interrupt`` works (the graph's own thread or task)."""
        action = human_action_for(error, call, requirement)
        limit = MAX_PENDING_ROUNDS if isinstance(error, ApprovalPending) else MAX_HUMAN_ROUNDS
        if (
            not self.interrupt
            or attempt >= limit
            or isinstance(error, ApprovalDenied)  # a denial is an answer, not a question
        ):
            return action, None
        from langgraph.types import interrupt

        value = {
            **action.payload(),
            "tool_call_id": call.call_id,
            "name": call.tool,
            "args": dict(call.arguments),
            "description": action.message,
            "allowed_decisions": list(decisions),
        }
        decision = decision_of(interrupt(value))
        if decision[0] not in decisions:
            raise ConfigurationError(
                f"decision {decision[0]!r} is not allowed here; allowed: {list(decisions)}"
            )
        return action, decision


async def _refuse(guard: ToolGuard, kwargs: dict[str, Any]) -> None:
    await guard.refuse(**kwargs)


async def _run_on_portal(
    blocking: BlockingIdentityClient,
    guard: ToolGuard,
    call: ToolCall,
    requirement: ToolRequirement,
    body: Callable[[], Awaitable[T]],
) -> T:
    """``ainvoke`` with a blocking client: the guard runs on the portal's loop (where the
    client lives); the tool itself comes back to the caller's loop to run."""
    caller = anyio.lowlevel.current_token()

    async def coroutine() -> T:
        return await body()

    async def on_caller_loop() -> T:
        # Runs on the portal's loop inside the guard's context; the worker thread and
        # the task it starts on the caller's loop inherit that context (and the token).
        return await anyio.to_thread.run_sync(
            functools.partial(anyio.from_thread.run, coroutine, token=caller)
        )

    return await anyio.to_thread.run_sync(
        blocking.portal.call, guard.run, call, requirement, on_caller_loop
    )


def require_langgraph() -> None:
    try:
        import langgraph.types  # noqa: F401
    except ImportError as exc:
        raise ConfigurationError(
            "interrupt_on_human needs LangGraph: pip install 'langchain-agent-identity[langgraph]'"
        ) from exc
