"""Which tool calls need a human approval (CIBA) before they run.

::

    policy = ApprovalPolicy(
        always=["delete_repository"],
        never=["read_calendar"],
        when={"pay_invoice": ApprovalPolicy.above("amount", 100)},
    )
    if policy.requires(action):
        approval = await alice.approve(action=action, scopes=[...], resource=...)

A tool named nowhere gets ``default`` (``"always"`` unless changed: fail closed). A
predicate that raises counts as "approval needed" (fail closed too); the error is logged
by type only, never with the arguments.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from agent_identity.approval.action import Action
from agent_identity.errors import ConfigurationError

__all__ = ["ApprovalPolicy", "Predicate"]

logger = logging.getLogger("agent_identity.approval")

#: A test over an action's arguments: ``True`` means the call needs approval.
Predicate = Callable[[Mapping[str, Any]], bool]

# ASCII digits only: ``\d`` would read Arabic-Indic or fullwidth digits, which a tool may
# read differently (or not at all). A number must end where the text does or at a
# separator: ``1e9``, ``0x10`` or ``1.2.3`` are unreadable, so they fail closed.
_NUMBER = re.compile(r"[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?![\w.])")


class ApprovalPolicy:
    """Declares, per tool, whether a call needs approval: ``always``, ``never``, or
    ``when`` a predicate over the arguments is true. A tool may appear in one of the
    three only (:class:`ConfigurationError` otherwise)."""

    def __init__(
        self,
        *,
        always: Iterable[str] = (),
        never: Iterable[str] = (),
        when: Mapping[str, Predicate] | None = None,
        default: Literal["always", "never"] = "always",
    ) -> None:
        if default not in ("always", "never"):
            raise ConfigurationError("default must be 'always' or 'never'")
        self._always = frozenset(_names(always))
        self._never = frozenset(_names(never))
        self._when: dict[str, Predicate] = dict(when or {})
        for name, predicate in self._when.items():
            if not isinstance(name, str) or not name or not callable(predicate):
                raise ConfigurationError("'when' maps tool names to callables")
        overlap = (
            (self._always & self._never)
            | (self._always & self._when.keys())
            | (self._never & self._when.keys())
        )
        if overlap:
            raise ConfigurationError(
                f"tools listed more than once in the approval policy: {sorted(overlap)}"
            )
        self.default = default

    def __repr__(self) -> str:
        return (
            f"ApprovalPolicy(always={sorted(self._always)!r}, never={sorted(self._never)!r}, "
            f"when={sorted(self._when)!r}, default={self.default!r})"
        )

    def requires(self, action: Action | str, arguments: Mapping[str, Any] | None = None) -> bool:
        """Whether a call needs a human approval before it runs: give the
        :class:`~agent_identity.approval.action.Action`, or the tool name and its
        arguments."""
        if isinstance(action, Action):
            if arguments is not None:
                raise ConfigurationError("give an Action, or a tool name and arguments")
            tool, args = action.tool, action.arguments
        elif isinstance(action, str):
            tool, args = action, dict(arguments or {})
        else:
            raise ConfigurationError("requires() takes an Action or a tool name")
        if tool in self._always:
            return True
        if tool in self._never:
            return False
        predicate = self._when.get(tool)
        if predicate is None:
            return self.default == "always"
        try:
            return bool(predicate(args))
        except Exception as exc:  # fail closed: a broken predicate asks the human
            logger.warning(
                "approval predicate for tool %r raised %s; asking for approval",
                tool,
                type(exc).__name__,
            )
            return True

    @staticmethod
    def above(argument: str, limit: int | float | str | Decimal) -> Predicate:
        """A predicate: the number at the start of ``argument`` exceeds ``limit``.

        Reads ``120``, ``"120.00"`` and ``"120.00 EUR"`` alike (exact decimal arithmetic).
        A missing or unreadable value counts as above the limit (fail closed): also text
        whose number does not end at a space or the end (``"1e9"``, ``"0x10"``), and
        digits other than ASCII ones.
        """
        bound = Decimal(str(limit))

        def predicate(arguments: Mapping[str, Any]) -> bool:
            value = arguments.get(argument)
            amount = _leading_number(value)
            return amount is None or amount > bound

        predicate.__name__ = f"above_{argument}"
        return predicate


def _names(values: Iterable[str]) -> list[str]:
    if isinstance(values, str):
        raise ConfigurationError("give tool names as a list, not a single string")
    names = list(values)
    for name in names:
        if not isinstance(name, str) or not name:
            raise ConfigurationError("tool names must be non-empty strings")
    return names


def _leading_number(value: object) -> Decimal | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return Decimal(value)  # exact, however large (``repr`` refuses 4,300+ digits)
    if isinstance(value, float):
        text = repr(value)
    elif isinstance(value, str):
        match = _NUMBER.match(value.strip().replace(",", ""))
        if match is None:
            return None
        text = match.group(0)
    else:
        return None
    try:
        number = Decimal(text)
    except InvalidOperation:
        return None
    return number if number.is_finite() else None
