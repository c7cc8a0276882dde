"""The framework-neutral tool guard: requirement -> token -> approval -> call -> audit.

Every protected tool call goes through :meth:`ToolGuard.run`:

1. the user's narrowest token for the tool's resource and scopes (or, with
   ``delegate=True``, an RFC 8693 exchanged token naming the agent as actor);
2. human approval (CIBA) when the tool's :class:`~agent_identity.ApprovalPolicy` asks for
   it, bound to this exact call (tool and arguments);
3. with a strict audit trail, a ``tool.started`` record, written before the call: if it
   cannot be written the tool does not run and the caller gets
   :class:`~agent_identity.errors.AuditError`;
4. the call itself, which reads its credential with :func:`current_token` (or
   :func:`current_tool_context`): the token never passes through the model, the tool's
   arguments or its schema;
5. exactly one outcome record for the invocation (``tool.succeeded``, ``tool.failed`` or
   ``tool.denied``), whatever happened and whatever the arguments hold (security item
   40; issue 12 item 11): they are hashed even when they are not valid Unicode, nested
   without end or hold values JSON cannot spell.

Guards compose: a protected tool calling another protected tool gets its own context,
and the outer one is restored afterwards (context variables, so concurrent calls in one
agent step never see each other's tokens).
"""

from __future__ import annotations

import contextvars
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeVar

from agent_identity.errors import AuditError, ConfigurationError

if TYPE_CHECKING:
    from agent_identity.approval import Approval, ApprovalPolicy
    from agent_identity.audit import AuditTrail
    from agent_identity.client import IdentityClient
    from agent_identity.models import AccessToken

__all__ = [
    "ToolCall",
    "ToolContext",
    "ToolGuard",
    "ToolRequirement",
    "current_token",
    "current_tool_context",
]

T = TypeVar("T")

logger = logging.getLogger("agent_identity.tools")

_MAX_NAME = 1024  # the audit record's bound for names
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


@dataclass(frozen=True, slots=True)
class ToolRequirement:
    """What a tool needs: a token for ``resource`` with ``scopes``, optionally obtained by
    token exchange (``delegate=True``), and optionally a human approval."""

    resource: str | None = None
    scopes: tuple[str, ...] = ()
    approval: ApprovalPolicy | None = None
    delegate: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.scopes, str):
            object.__setattr__(self, "scopes", tuple(self.scopes.split()))
        if self.scopes and self.resource is None:
            raise ConfigurationError("a tool that needs scopes must name its resource")


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One invocation: which tool, with which arguments, for whom."""

    tool: str
    arguments: Mapping[str, Any]
    user: str
    tenant: str = "default"

    def __post_init__(self) -> None:
        if not self.tool:
            raise ConfigurationError("a tool call needs the tool's name")
        if not self.user or not self.tenant:
            raise ConfigurationError(
                "a protected tool was called without a user: pass the user (and tenant) "
                "of the person the agent acts for"
            )
        for name, value in (("tool", self.tool), ("user", self.user), ("tenant", self.tenant)):
            # named in every audit record: printable, valid Unicode, bounded
            if not isinstance(value, str) or len(value) > _MAX_NAME or _UNSAFE.search(value):
                raise ConfigurationError(
                    f"a tool call's {name} must be printable text of at most {_MAX_NAME} characters"
                )
        if not isinstance(self.arguments, Mapping):
            raise ConfigurationError("a tool call's arguments must be a mapping")
        object.__setattr__(self, "arguments", MappingProxyType(dict(self.arguments)))

    def __repr__(self) -> str:
        return (
            f"ToolCall(tool={self.tool!r}, user={self.user!r}, tenant={self.tenant!r}, "
            f"arguments={sorted(self.arguments)!r})"
        )


@dataclass(frozen=True, slots=True)
class ToolContext:
    """What a protected tool sees while it runs."""

    call: ToolCall
    token: AccessToken | None = None
    approval: Approval | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


_CONTEXT: contextvars.ContextVar[ToolContext | None] = contextvars.ContextVar(
    "agent_identity_tool_context", default=None
)


def current_tool_context() -> ToolContext:
    """The context of the protected tool call running in this task."""
    context = _CONTEXT.get()
    if context is None:
        raise ConfigurationError("no protected tool call is running in this context")
    return context


def current_token() -> AccessToken:
    """The narrow access token of the protected tool call running in this task."""
    token = current_tool_context().token
    if token is None:
        raise ConfigurationError("this tool was protected without a resource: it has no token")
    return token


class ToolGuard:
    """Runs tool calls with their identity requirements (see the module docstring)."""

    def __init__(
        self,
        identity: IdentityClient,
        *,
        audit: AuditTrail | None = None,
        include_arguments: bool = False,
    ) -> None:
        self.identity = identity
        self.audit = audit
        self.include_arguments = include_arguments

    def __repr__(self) -> str:
        return f"ToolGuard(identity={self.identity!r})"

    async def run(
        self,
        call: ToolCall,
        requirement: ToolRequirement,
        func: Callable[[], Awaitable[T]],
    ) -> T:
        """Acquire what ``requirement`` asks for, then run ``func`` with the tool context
        set; one audit record is written for the invocation in every case."""
        started = time.perf_counter()
        token: AccessToken | None = None
        approval: Approval | None = None
        outcome = "error"
        error: BaseException | None = None
        try:
            user = self.identity.user(call.user, tenant=call.tenant)
            if requirement.approval is not None and requirement.approval.requires(
                call.tool, call.arguments
            ):
                from agent_identity.approval import Action

                approval = await user.approve(
                    action=Action(tool=call.tool, arguments=dict(call.arguments)),
                    scopes=requirement.scopes,
                    resource=requirement.resource,
                )
                token = approval.use(Action(tool=call.tool, arguments=dict(call.arguments)))
            elif requirement.resource is not None:
                if requirement.delegate:
                    token = await user.exchange(
                        resource=requirement.resource, scopes=requirement.scopes
                    )
                else:
                    token = await user.token(
                        resource=requirement.resource, scopes=requirement.scopes
                    )
            if self.audit is not None and self.audit.strict:
                # strict: no record, no call (AuditError propagates before the tool runs)
                await self._audit(call, requirement, token, approval, "started", None, started)
            reset = _CONTEXT.set(ToolContext(call=call, token=token, approval=approval))
            try:
                result = await func()
            finally:
                _CONTEXT.reset(reset)
            outcome = "ok"
            return result
        except BaseException as exc:
            error = exc
            outcome = _outcome_of(exc)
            raise
        finally:
            await self._audit(call, requirement, token, approval, outcome, error, started)

    async def _audit(
        self,
        call: ToolCall,
        requirement: ToolRequirement,
        token: AccessToken | None,
        approval: Approval | None,
        outcome: str,
        error: BaseException | None,
        started: float,
    ) -> None:
        if self.audit is None:
            return
        from agent_identity.audit import AuditEvent, fingerprint

        kind = {
            "ok": "tool.succeeded", "denied": "tool.denied", "started": "tool.started"
        }.get(outcome, "tool.failed")  # fmt: skip
        try:
            event = AuditEvent.for_tool_call(
                kind,  # type: ignore[arg-type]
                tool=call.tool,
                arguments=call.arguments,
                include_arguments=self.include_arguments,
                tenant=call.tenant,
                user=call.user,
                agent=self.identity.client_id,
                issuer=self.identity.issuer,
                resource=requirement.resource,
                scopes_requested=requirement.scopes,
                scopes_granted=token.scopes if token is not None else None,
                approval_id=approval.action_digest[:16] if approval is not None else None,
                binding_message=approval.binding_message if approval is not None else None,
                outcome=None if outcome == "started" else outcome,
                error_type=type(error).__name__ if error is not None else None,
                latency_ms=(time.perf_counter() - started) * 1000,
                token_fingerprint=fingerprint(token.value) if token is not None else None,
                actors=_actors(token) if requirement.delegate and token is not None else (),
            )
        except Exception as exc:  # the record cannot be built: say so, never a foreign error
            problem = type(exc).__name__
        else:
            await self.audit.emit(event)
            return
        if self.audit.strict:
            raise AuditError(f"audit record of tool {call.tool!r} could not be built ({problem})")
        logger.warning("audit record of a tool call could not be built (%s)", problem)


def _actors(token: AccessToken) -> tuple[str, ...]:
    """The delegation chain of an exchanged token, current actor first (for the record;
    never for a decision). An opaque token has no readable chain."""
    from agent_identity.delegation import DelegationChain
    from agent_identity.errors import InvalidTokenError

    try:
        chain = DelegationChain.from_token(token.value)
    except InvalidTokenError:
        return ()
    return tuple(actor.subject for actor in chain.actors)


def _outcome_of(exc: BaseException) -> str:
    from agent_identity.errors import ApprovalError, ConsentError, ReauthorizationRequired

    if isinstance(exc, ApprovalError | ConsentError | ReauthorizationRequired):
        return "denied"
    return "error"


def scopes_of(value: str | Sequence[str]) -> tuple[str, ...]:
    return tuple(value.split()) if isinstance(value, str) else tuple(value)
