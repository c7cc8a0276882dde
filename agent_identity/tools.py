"""The framework-neutral tool guard: requirement -> token -> approval -> call -> audit.

Every protected tool call goes through :meth:`ToolGuard.run`:

1. the user's narrowest token for the tool's resource and scopes (or, with
   ``delegate=True``, an RFC 8693 exchanged token naming the agent as actor);
2. human approval (CIBA) when the tool's :class:`~agent_identity.ApprovalPolicy` asks for
   it, bound to this exact call (tool and arguments);
   With ``delegate=True`` too, the approved token is exchanged (RFC 8693) so that it names
   the agent as actor. A call that knows its conversation (``ToolCall.thread`` and
   ``call_id``) asks once: the CIBA request is kept under that key, and running the same
   call again (a resumed graph) continues it instead of prompting the user again; a
   denial stays a denial for that call;
3. with a strict audit trail, a ``tool.started`` record, written before the call: if it
   cannot be written the tool does not run and the caller gets
   :class:`~agent_identity.errors.AuditError`;
4. the call itself, which reads its credential with :func:`current_token` (or
   :func:`current_tool_context`): the token never passes through the model, the tool's
   arguments or its schema;
5. exactly one outcome record for the invocation (``tool.succeeded``, ``tool.failed`` or
   ``tool.denied``), whatever happened and whatever the arguments hold (security item
   40; issue 12 item 11): they are hashed even when they are not valid Unicode, nested
   without end or hold values JSON cannot spell. A call refused before it could start (no
   user known, a configuration error) is recorded and logged with
   :meth:`ToolGuard.refuse`.

Guards compose: a protected tool calling another protected tool gets its own context,
and the outer one is restored afterwards (context variables, so concurrent calls in one
agent step never see each other's tokens).
"""

from __future__ import annotations

import contextvars
import functools
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeVar

from agent_identity.consent.web import reset_resume, set_resume
from agent_identity.errors import AuditError, ConfigurationError

if TYPE_CHECKING:
    import httpx2

    from agent_identity.approval import Approval, ApprovalPolicy, PingReceiver
    from agent_identity.audit import AuditEvent, AuditTrail
    from agent_identity.client import IdentityClient
    from agent_identity.models import AccessToken

__all__ = [
    "ApprovalOptions",
    "ToolCall",
    "ToolContext",
    "ToolGuard",
    "ToolRequirement",
    "current_auth",
    "current_token",
    "current_tool_context",
]

T = TypeVar("T")

logger = logging.getLogger("agent_identity.tools")

_MAX_NAME = 1024  # the audit record's bound for names
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


@dataclass(frozen=True, slots=True)
class ApprovalOptions:
    """How a tool's approvals are asked (OpenID CIBA), per tool.

    :param ping: a :class:`~agent_identity.approval.PingReceiver`: ping mode (the decision
        is pushed to the agent), with polling as a fallback.
    :param requested_expiry: seconds the user has to decide (CIBA ``requested_expiry``).
    :param binding_message: a template of the message shown on the user's device, filled
        with the call's arguments (``"Pay {amount} for {invoice}"``); a random code is
        always appended. Default: the tool name and the argument values.
    :param authorization_details: RFC 9396 ``authorization_details`` sent as given
        (instead of the SDK's ``agent_action`` description of the call).
    :param wait: seconds a tool call waits for the decision before it gives up with
        :class:`~agent_identity.errors.ApprovalPending` (the request stays pending and the
        same call continues it); ``None``: until the request expires.
    """

    ping: PingReceiver | None = None
    requested_expiry: int | None = None
    binding_message: str | None = None
    authorization_details: Sequence[Mapping[str, Any]] | None = None
    wait: float | None = None

    def __post_init__(self) -> None:
        if self.requested_expiry is not None and (
            not isinstance(self.requested_expiry, int) or self.requested_expiry <= 0
        ):
            raise ConfigurationError("requested_expiry must be a positive number of seconds")
        if self.wait is not None and not self.wait >= 0:
            raise ConfigurationError("wait must be a non-negative number of seconds")
        if self.authorization_details is not None:
            details = self.authorization_details
            if isinstance(details, Mapping | str) or not all(
                isinstance(d, Mapping) and isinstance(d.get("type"), str) for d in details
            ):
                raise ConfigurationError(
                    "authorization_details is a list of objects with a 'type' (RFC 9396)"
                )
            object.__setattr__(self, "authorization_details", tuple(dict(d) for d in details))


@dataclass(frozen=True, slots=True)
class ToolRequirement:
    """What a tool needs: a token for ``resource`` with ``scopes``, optionally obtained by
    token exchange (``delegate=True``), and optionally a human approval (asked as
    ``approval_options`` say)."""

    resource: str | None = None
    scopes: tuple[str, ...] = ()
    approval: ApprovalPolicy | None = None
    delegate: bool = False
    approval_options: ApprovalOptions = field(default_factory=ApprovalOptions)

    def __post_init__(self) -> None:
        if isinstance(self.scopes, str):
            object.__setattr__(self, "scopes", tuple(self.scopes.split()))
        elif not isinstance(self.scopes, tuple):
            object.__setattr__(self, "scopes", tuple(self.scopes))
        if self.scopes and self.resource is None:
            raise ConfigurationError("a tool that needs scopes must name its resource")
        if not isinstance(self.approval_options, ApprovalOptions):
            raise ConfigurationError("approval_options must be an ApprovalOptions")


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One invocation: which tool, with which arguments, for whom; ``thread`` and
    ``call_id`` say which conversation and which of the model's tool calls it is (an
    approval asked for it is continued, never asked again, when the same call runs
    again; a web consent it starts carries them back as resume data)."""

    tool: str
    arguments: Mapping[str, Any]
    user: str
    tenant: str = "default"
    call_id: str | None = None
    thread: str | None = None

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
            f"arguments={sorted(self.arguments)!r}, call_id={self.call_id!r})"
        )

    @property
    def key(self) -> str | None:
        """The key of this call's approval (thread and call id), when the call id is
        known."""
        if self.call_id is None:
            return None
        return f"{self.thread or ''}\x1f{self.call_id}"

    def resume_data(self) -> dict[str, Any]:
        """What an application needs to resume this call after a web consent."""
        data: dict[str, Any] = {"tool": self.tool}
        if self.thread is not None:
            data["thread_id"] = self.thread
        if self.call_id is not None:
            data["tool_call_id"] = self.call_id
        return data


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


def current_auth() -> httpx2.Auth:
    """An ``httpx2.Auth`` presenting the current tool call's token: ``Authorization:
    Bearer``, or for a DPoP-bound token (RFC 9449) ``Authorization: DPoP`` with a fresh
    proof on every request (security items 34-37); only to URLs under the token's resource
    (security item 23)::

        async with httpx2.AsyncClient(auth=current_auth()) as http:
            events = await http.get(f"{CALENDAR}/events")
    """
    from agent_identity._resource_auth import TokenAuth

    return TokenAuth(current_token())


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
        if self.audit is not None:
            self.audit.ensure_running()  # refuse before acting, not after, without a trail
        started = time.perf_counter()
        token: AccessToken | None = None
        approval: Approval | None = None
        outcome = "error"
        error: BaseException | None = None
        try:
            if requirement.approval is not None and requirement.approval.requires(
                call.tool, call.arguments
            ):
                approval, token = await self._approved(call, requirement)
            elif requirement.resource is not None:
                user = self.identity.user(call.user, tenant=call.tenant)
                # a web consent started for this call carries the call back to the app
                resume = set_resume(call.resume_data())
                try:
                    if requirement.delegate:
                        token = await user.exchange(
                            resource=requirement.resource, scopes=requirement.scopes
                        )
                    else:
                        token = await user.token(
                            resource=requirement.resource, scopes=requirement.scopes
                        )
                finally:
                    reset_resume(resume)
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
            if self.audit is not None:
                await self._audit(call, requirement, token, approval, outcome, error, started)

    async def _approved(
        self, call: ToolCall, requirement: ToolRequirement
    ) -> tuple[Approval, AccessToken]:
        """The user's approval of this exact call and its token (exchanged, naming the
        agent as actor, when the tool delegates)."""
        from agent_identity.approval import Action

        user = self.identity.user(call.user, tenant=call.tenant)
        options = requirement.approval_options
        action = Action(tool=call.tool, arguments=dict(call.arguments))
        approval = await user.approve(
            action=action,
            scopes=requirement.scopes,
            resource=requirement.resource,
            ping=options.ping,
            requested_expiry=options.requested_expiry,
            binding_message=options.binding_message,
            authorization_details=options.authorization_details,
            key=call.key,
            wait=options.wait,
        )
        token = approval.use(action)
        if requirement.delegate and requirement.resource is not None:
            # Delegation is kept under approval: the approved token becomes the subject of
            # an RFC 8693 exchange whose result names the agent as actor (``act``).
            token = await self.identity.exchange(
                token, resource=requirement.resource, scopes=requirement.scopes, actor=True
            )
        return approval, token

    async def refuse(
        self,
        *,
        tool: str,
        arguments: Mapping[str, Any],
        requirement: ToolRequirement,
        error: BaseException,
        user: str | None = None,
        tenant: str | None = None,
    ) -> None:
        """Record a call refused before it could run (nobody known to act for, a
        configuration error): a warning for the developer on the ``agent_identity.tools``
        logger (the model only sees a tool result) and one ``tool.denied`` audit record,
        as for every invocation (security item 40)."""
        logger.warning(
            "protected tool %r refused before running: %s: %s",
            tool,
            type(error).__name__,
            error,
        )
        if self.audit is None:
            return
        from agent_identity.audit import AuditEvent

        await self._emit(
            tool,
            functools.partial(
                AuditEvent.for_tool_call,
                "tool.denied",
                tool=tool,
                arguments=arguments,
                include_arguments=self.include_arguments,
                tenant=tenant,
                user=user,
                agent=self.identity.client_id or None,
                issuer=self.identity.issuer or None,
                resource=requirement.resource,
                scopes_requested=requirement.scopes,
                outcome="denied",
                error_type=type(error).__name__,
            ),
            strict=False,  # the call is refused anyway: its own error is what the caller gets
        )

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
        assert self.audit is not None
        from agent_identity.audit import AuditEvent, fingerprint

        kind = {
            "ok": "tool.succeeded", "denied": "tool.denied", "started": "tool.started"
        }.get(outcome, "tool.failed")  # fmt: skip
        await self._emit(
            call.tool,
            functools.partial(
                AuditEvent.for_tool_call,
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
            ),
            strict=self.audit.strict,
        )

    async def _emit(self, tool: str, build: Callable[[], AuditEvent], *, strict: bool) -> None:
        """Build a record and emit it. A record that cannot be built (a value the record
        refuses) raises :class:`AuditError` when ``strict`` (no record, no call), else is
        logged by its error's type: never a foreign error, never the value."""
        assert self.audit is not None
        try:
            event = build()
        except Exception as exc:
            problem = type(exc).__name__
            if strict:
                raise AuditError(
                    f"audit record of tool {tool!r} could not be built ({problem})"
                ) from None
            logger.warning("audit record of a tool call could not be built (%s)", problem)
            return
        await self.audit.emit(event)


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
