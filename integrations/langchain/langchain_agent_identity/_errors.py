"""Tool results the model can read when the agent cannot act alone.

When a consent or an approval cannot complete, the protected tool raises a
:class:`HumanActionRequired` (a LangChain ``ToolException``); the wrapper handles it, so
the agent receives a short message saying what the user must do instead of crashing.
Messages name the tool and the resource and scopes it was configured with, never a secret,
a user id, a server-supplied description or scopes a server asked for (those are in the
payload only).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from langchain_core.messages import ToolMessage
from langchain_core.tools import ToolException

from agent_identity import (
    ApprovalDenied,
    ApprovalExpired,
    ApprovalPending,
    ApprovalUnavailable,
    ConsentDenied,
    ConsentError,
    ConsentRequired,
    ConsentTimeout,
    ReauthorizationRequired,
    StepUpLimitExceeded,
)
from agent_identity.tools import ToolCall, ToolRequirement

__all__ = [
    "HUMAN_ERRORS",
    "AccessRefused",
    "access_refused_for",
    "HumanActionRequired",
    "IdentityToolError",
    "UserUnknown",
    "human_action_for",
]

Kind = Literal["consent", "reauthorization", "approval"]
Reason = Literal["required", "denied", "timeout", "expired", "unavailable", "declined", "pending"]

#: The SDK errors that mean "a human must act" (consent, re-consent, approval).
HUMAN_ERRORS: tuple[type[Exception], ...] = (
    ConsentError,
    ReauthorizationRequired,
    ApprovalDenied,
    ApprovalExpired,
    ApprovalPending,
    ApprovalUnavailable,
)


class IdentityToolError(ToolException):
    """A protected tool could not run for an identity reason; the message is meant for
    the model (and is returned to it as the tool's result)."""

    #: The model's tool call this error answers (set by the wrapper when known).
    tool_call_id: str | None = None

    def payload(self) -> dict[str, Any] | None:
        """The structured artifact of the tool result (``None``: none)."""
        return None

    def tool_message(self, tool_call_id: str, name: str) -> ToolMessage:
        """The tool result: the message for the model, the payload as artifact."""
        return ToolMessage(
            content=self.args[0] if self.args else "",
            artifact=self.payload(),
            tool_call_id=tool_call_id,
            name=name,
            status="error",
        )


class UserUnknown(IdentityToolError):
    """A protected tool was invoked without a user: neither the run's config, nor
    :func:`~langchain_agent_identity.acting_for`, nor an enclosing protected call says
    whom the agent acts for. No token was requested."""


class AccessRefused(IdentityToolError):
    """The service kept refusing the tool's request although the user was asked for the
    access it named, as often as the tool's ``max_step_ups`` allows
    (:class:`~agent_identity.StepUpLimitExceeded`, security item 29). Nobody is asked
    again; the model is told not to retry. :meth:`payload` names the resource, the
    refused operation and the scopes the service asked for, never a token."""

    def __init__(
        self,
        message: str,
        *,
        tool: str,
        resource: str,
        operation: str,
        scopes: Sequence[str],
        step_ups: int,
    ) -> None:
        super().__init__(message)
        self.tool = tool
        self.resource = resource
        self.operation = operation
        self.scopes = tuple(scopes)
        self.step_ups = step_ups

    def __repr__(self) -> str:
        return (
            f"AccessRefused(tool={self.tool!r}, resource={self.resource!r}, "
            f"operation={self.operation!r}, scopes={self.scopes!r})"
        )

    def payload(self) -> dict[str, Any]:
        return {
            "type": "agent_identity.access_refused",
            "tool": self.tool,
            "resource": self.resource,
            "operation": self.operation,
            "scopes": list(self.scopes),
            "step_ups": self.step_ups,
        }


def access_refused_for(error: StepUpLimitExceeded, call: ToolCall) -> AccessRefused:
    """The model-readable result of a :class:`~agent_identity.StepUpLimitExceeded`."""
    method = error.operation.partition(" ")[0]
    # The scopes the service asked for stay in the payload: its words never reach the model.
    message = (
        f"The service at {error.resource} still refuses '{call.tool}' ({method} request) "
        "although the user was asked for the access it requires. The action was not "
        "performed. Do not retry it; tell the user the service does not allow it."
    )
    return AccessRefused(
        message,
        tool=call.tool,
        resource=error.resource,
        operation=error.operation,
        scopes=error.scopes,
        step_ups=error.step_ups,
    )


class HumanActionRequired(IdentityToolError):
    """The user must act (consent, reconnect, approve) before the tool can run.

    ``kind`` is ``"consent"``, ``"reauthorization"`` or ``"approval"``; ``reason`` is
    ``"required"``, ``"denied"``, ``"timeout"``, ``"expired"``, ``"unavailable"``,
    ``"pending"`` (an approval still waiting for the user) or ``"declined"`` (the human
    did not complete it after an interrupt). ``authorization_url`` is the link to show
    (a :class:`~agent_identity.WebConsent` started the consent), ``binding_message`` what
    the user's device shows for an approval, ``expires_at`` (Unix time) when either
    expires. :meth:`payload` is the structured form (``ToolMessage.artifact``).
    """

    def __init__(
        self,
        message: str,
        *,
        kind: Kind,
        reason: Reason,
        tool: str,
        user: str,
        tenant: str,
        resource: str | None,
        scopes: Sequence[str],
        authorization_url: str | None = None,
        binding_message: str | None = None,
        expires_at: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.authorization_url = authorization_url
        self.binding_message = binding_message
        self.expires_at = expires_at
        self.kind: Kind = kind
        self.reason: Reason = reason
        self.tool = tool
        self.user = user
        self.tenant = tenant
        self.resource = resource
        self.scopes = tuple(scopes)

    def __repr__(self) -> str:
        return (
            f"HumanActionRequired(kind={self.kind!r}, reason={self.reason!r}, "
            f"tool={self.tool!r}, resource={self.resource!r}, scopes={self.scopes!r})"
        )

    def payload(self) -> dict[str, Any]:
        """What an application needs to bring the human in (the value of a LangGraph
        interrupt): no secret, only who, what and why."""
        return {
            "type": "agent_identity.human_action",
            "kind": self.kind,
            "reason": self.reason,
            "tool": self.tool,
            "user": self.user,
            "tenant": self.tenant,
            "resource": self.resource,
            "scopes": list(self.scopes),
            "message": self.message,
            "authorization_url": self.authorization_url,
            "binding_message": self.binding_message,
            "expires_at": self.expires_at,
        }

    def declined(self, reason: str | None = None) -> HumanActionRequired:
        """The same situation after the human chose not to act (``reason``: theirs)."""
        why = f" Their reason: {reason}" if reason else ""
        return HumanActionRequired(
            f"The user did not complete the {self.kind} that '{self.tool}' needs, so the "
            f"action was not performed.{why} Tell the user; do not retry unless they ask.",
            kind=self.kind,
            reason="declined",
            tool=self.tool,
            user=self.user,
            tenant=self.tenant,
            resource=self.resource,
            scopes=self.scopes,
        )


def _access(resource: str | None, scopes: Sequence[str]) -> str:
    wanted = " ".join(s for s in scopes if s not in ("openid", "offline_access"))
    if resource and wanted:
        return f"{resource} ({wanted})"
    return resource or wanted or "the user's account"


def human_action_for(
    error: BaseException, call: ToolCall, requirement: ToolRequirement
) -> HumanActionRequired:
    """The model-readable result for one of :data:`HUMAN_ERRORS`."""
    resource: str | None = requirement.resource
    scopes: tuple[str, ...] = requirement.scopes
    authorization_url: str | None = None
    binding: str | None = None
    expires_at: float | None = None
    if isinstance(error, ConsentRequired | ReauthorizationRequired):
        resource = error.resource or resource
        scopes = error.scopes or scopes
    if isinstance(error, ConsentRequired):
        authorization_url = error.authorization_url
        expires_at = error.expires_at
    if isinstance(error, ApprovalPending):
        binding = error.binding_message or None
        expires_at = error.expires_at
    tool = call.tool
    # What the model reads names the access this tool was configured with; the scopes a
    # server asked for (a step-up challenge) stay in the payload, never in the model's text.
    access = _access(requirement.resource, requirement.scopes)
    kind: Kind
    reason: Reason
    if isinstance(error, ConsentDenied):
        kind, reason = "consent", "denied"
        message = (
            f"The user declined to authorize '{tool}' (access to {access}). The action was "
            "not performed. Do not call this tool again unless the user asks you to."
        )
    elif isinstance(error, ConsentTimeout):
        kind, reason = "consent", "timeout"
        message = (
            f"The authorization that '{tool}' needs (access to {access}) was not completed "
            "in time. The action was not performed. Ask the user whether to try again."
        )
    elif isinstance(error, ConsentError) and authorization_url is not None:
        kind, reason = "consent", "required"
        message = (
            f"'{tool}' needs the user's authorization (access to {access}). A link to grant "
            "it is being shown to the user. The action was not performed. Tell the user to "
            "connect their account with that link, then call the tool again."
        )
    elif isinstance(error, ConsentError):
        kind, reason = "consent", "required"
        message = (
            f"'{tool}' needs the user's authorization (access to {access}), which has not "
            "been granted yet. The action was not performed. Ask the user to connect their "
            "account, then call the tool again."
        )
    elif isinstance(error, ReauthorizationRequired):
        kind, reason = "reauthorization", "required"
        message = (
            f"The user's authorization for '{tool}' (access to {access}) is no longer valid: "
            "it was revoked or has expired. The action was not performed. Ask the user to "
            "reconnect their account, then call the tool again."
        )
    elif isinstance(error, ApprovalDenied):
        kind, reason = "approval", "denied"
        message = (
            f"The user rejected this '{tool}' action. It was not performed. Do not retry it; "
            "ask the user how to proceed."
        )
    elif isinstance(error, ApprovalPending):
        kind, reason = "approval", "pending"
        message = (
            f"This '{tool}' action is waiting for the user's approval on their device. It "
            "has not been performed yet. Tell the user to approve or reject it there."
        )
    elif isinstance(error, ApprovalExpired):
        kind, reason = "approval", "expired"
        message = (
            f"The user did not approve this '{tool}' action in time. It was not performed. "
            "Ask the user whether to request the approval again."
        )
    else:
        kind, reason = "approval", "unavailable"
        message = (
            f"This '{tool}' action needs the user's approval, which cannot be requested "
            "right now. It was not performed. Tell the user."
        )
    return HumanActionRequired(
        message,
        kind=kind,
        reason=reason,
        tool=tool,
        user=call.user,
        tenant=call.tenant,
        resource=resource,
        scopes=scopes,
        authorization_url=authorization_url,
        binding_message=binding,
        expires_at=expires_at,
    )


def user_unknown(tool: str, user_key: str) -> UserUnknown:
    return UserUnknown(
        f"'{tool}' cannot run: it is not known which user the agent acts for, so it was "
        "not performed. (Developer: pass config={'configurable': {"
        f"'{user_key}': ...}}}} or wrap the call in acting_for(...).)"
    )
