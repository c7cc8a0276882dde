"""Who the agent acts for: from the run's config, an explicit context, or the enclosing
protected call."""

from __future__ import annotations

import contextvars
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from agent_identity import ConfigurationError
from agent_identity.tools import current_tool_context

__all__ = ["acting_for", "resolve_user"]

_ACTING_FOR: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar(
    "langchain_agent_identity_acting_for", default=None
)


@contextmanager
def acting_for(user: str, *, tenant: str = "default") -> Iterator[None]:
    """Run the protected tools invoked inside this block for ``user`` in ``tenant``.

    A context variable: it follows the code into tasks started inside the block and
    never leaks into concurrent tasks. A user in the run's config
    (``config["configurable"]["user_id"]``) takes precedence.
    """
    if not isinstance(user, str) or not user or not isinstance(tenant, str) or not tenant:
        raise ConfigurationError("acting_for needs a non-empty user and tenant")
    token = _ACTING_FOR.set((user, tenant))
    try:
        yield
    finally:
        _ACTING_FOR.reset(token)


def resolve_user(
    config: Mapping[str, Any] | None, *, user_key: str, tenant_key: str
) -> tuple[str, str] | None:
    """``(user, tenant)`` for a tool call, or ``None`` when nobody is known.

    In order: ``config["configurable"][user_key]`` (with ``[tenant_key]``, default
    ``"default"``); the innermost :func:`acting_for`; the user of the protected tool call
    this one runs inside (a protected tool calling another one acts for the same user).
    """
    configurable = (config or {}).get("configurable") or {}
    user = configurable.get(user_key)
    if user is not None:
        tenant = configurable.get(tenant_key, "default")
        if not isinstance(user, str) or not user or not isinstance(tenant, str) or not tenant:
            raise ConfigurationError(
                f"config['configurable'][{user_key!r}] and [{tenant_key!r}] must be "
                "non-empty strings"
            )
        return user, tenant
    acting = _ACTING_FOR.get()
    if acting is not None:
        return acting
    try:
        enclosing = current_tool_context().call
    except ConfigurationError:
        return None
    return enclosing.user, enclosing.tenant
