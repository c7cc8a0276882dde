"""The action a human approves, its binding message and its hash (security items 41, 45).

An :class:`Action` is a tool name and the tool's arguments: exactly what will run, never
text written by a model about it. From it come

- :func:`binding_message`: the short text shown on both the agent's side and the user's
  authentication device (CIBA Core 1.0 §7.1 ``binding_message``), built deterministically
  from the tool name and the argument values (sorted by argument name), sanitised
  (printable characters only, whitespace collapsed, Unicode format characters such as
  bidirectional overrides removed), truncated to a phone screen (64 characters by
  default) and ended with a short random code, e.g. ``pay_invoice 120.00 EUR INV-7 · K7Q2``;
- :attr:`Action.digest`: SHA-256 over the canonical JSON of ``{"tool", "arguments"}``
  (sorted keys, no insignificant whitespace, UTF-8), which binds an approval to the exact
  call so that it cannot be replayed for another (security item 45);
- :func:`authorization_details`: an RFC 9396 §2 authorization details object describing
  the call, sent when the authorization server supports its type.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import secrets
import unicodedata
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final

from agent_identity.errors import ConfigurationError

__all__ = [
    "AUTHORIZATION_DETAILS_TYPE",
    "BINDING_MESSAGE_MAX",
    "Action",
    "authorization_details",
    "binding_message",
    "new_binding_code",
]

#: The RFC 9396 ``type`` of the authorization details the SDK sends for an action.
AUTHORIZATION_DETAILS_TYPE: Final = "agent_action"
#: Default length cap of a binding message: a line on a phone screen.
BINDING_MESSAGE_MAX: Final = 64

_CODE_ALPHABET: Final = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I: read aloud easily
_CODE_LENGTH: Final = 4
_SEPARATOR: Final = " · "
_ELLIPSIS: Final = "…"
_MAX_DEPTH: Final = 32
_MAX_TOOL: Final = 128
_MAX_INT_BITS: Final = 10_000
_SURROGATE: Final = re.compile("[\ud800-\udfff]")


def _text(value: str) -> str:
    # A lone surrogate is not Unicode text: it could not be hashed as UTF-8, shown to the
    # user or sent to the authorization server (issue 12 item 11).
    if _SURROGATE.search(value):
        raise ConfigurationError("action arguments must be valid Unicode text")
    return value


def _freeze(value: Any, depth: int = 0) -> Any:
    """A JSON-compatible deep copy (tuples become lists), or ConfigurationError."""
    if depth > _MAX_DEPTH:
        raise ConfigurationError("action arguments are nested too deeply")
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, int):
        if value.bit_length() > _MAX_INT_BITS:  # JSON text of it is refused by ``str``
            raise ConfigurationError("action arguments hold an integer too large for JSON")
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigurationError("action arguments must not hold NaN or infinity")
        return value
    if isinstance(value, list | tuple):
        return [_freeze(item, depth + 1) for item in value]
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ConfigurationError("action argument names must be strings")
            out[_text(key)] = _freeze(item, depth + 1)
        return out
    raise ConfigurationError(
        f"action arguments must be JSON values (got {type(value).__name__}); "
        "convert them first (e.g. str(Decimal))"
    )


def _canonical(value: Any) -> str:
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


class Action:
    """One tool call: ``tool`` and its JSON-compatible ``arguments``.

    Two actions are equal when their canonical forms are (argument order does not
    matter). ``repr`` shows the tool and a digest prefix, never the argument values (they
    may be personal data).
    """

    __slots__ = ("_arguments", "_canonical", "_digest", "tool")

    tool: str
    _arguments: Mapping[str, Any]
    _canonical: bytes
    _digest: str

    def __init__(self, tool: str, arguments: Mapping[str, Any] | None = None) -> None:
        if not isinstance(tool, str) or not tool.strip() or len(tool) > _MAX_TOOL:
            raise ConfigurationError("an action's tool name must be a non-empty string")
        if not _printable(tool):
            raise ConfigurationError("an action's tool name must be printable")
        if arguments is None:
            arguments = {}
        if not isinstance(arguments, Mapping):
            raise ConfigurationError("an action's arguments must be a mapping of names to values")
        frozen = _freeze(arguments)
        canonical = _canonical({"arguments": frozen, "tool": tool}).encode("utf-8")
        object.__setattr__(self, "tool", tool)
        object.__setattr__(self, "_arguments", frozen)
        object.__setattr__(self, "_canonical", canonical)
        object.__setattr__(self, "_digest", hashlib.sha256(canonical).hexdigest())

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Action is immutable")

    @property
    def arguments(self) -> Mapping[str, Any]:
        """A copy of the arguments (changing it does not change the action)."""
        return MappingProxyType(_freeze(self._arguments))

    @property
    def digest(self) -> str:
        """SHA-256 (hex) of :meth:`canonical_json`: the action hash an approval is bound
        to."""
        return self._digest

    def canonical_json(self) -> bytes:
        """``{"arguments": ..., "tool": ...}`` as canonical JSON (sorted keys, compact,
        UTF-8)."""
        return self._canonical

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Action):
            return NotImplemented
        return self._canonical == other._canonical

    def __hash__(self) -> int:
        return hash(self._digest)

    def __repr__(self) -> str:
        return f"Action(tool={self.tool!r}, digest={self._digest[:12]!r})"


def _printable(text: str) -> bool:
    return all(unicodedata.category(c)[0] != "C" for c in text)


def _clean(text: str) -> str:
    """Printable characters only: control and format characters (bidi overrides,
    zero-width joiners) are dropped, any whitespace run becomes one space."""
    kept: list[str] = []
    for char in text:
        category = unicodedata.category(char)
        if char.isspace() or category[0] == "Z":
            kept.append(" ")
        elif category[0] != "C":
            kept.append(char)
    return " ".join("".join(kept).split())


def _value_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return _canonical(value)


def new_binding_code() -> str:
    """A short random code (20 bits, unambiguous characters) that makes each binding
    message unique, so that the user can match the prompt to this request."""
    return "".join(secrets.choice(_CODE_ALPHABET) for _ in range(_CODE_LENGTH))


def binding_message(
    action: Action, code: str | None = None, *, max_length: int = BINDING_MESSAGE_MAX
) -> str:
    """``<tool> <value> <value> ... · <code>``, sanitised and at most ``max_length``
    characters (the values are cut with ``…`` when too long; the code is always kept).

    Deterministic for a given action and code: argument values appear in the order of
    their sorted names. Built from the action only, never from model-generated prose.
    """
    if code is None:
        code = new_binding_code()
    code = _clean(code)
    if not code:
        raise ConfigurationError("the binding code must hold printable characters")
    suffix = f"{_SEPARATOR}{code}"
    if max_length < len(suffix) + 2:
        raise ConfigurationError("max_length leaves no room for the action")
    arguments = action._arguments
    parts = [_clean(action.tool)]
    parts += [_clean(_value_text(arguments[name])) for name in sorted(arguments)]
    body = " ".join(part for part in parts if part)
    room = max_length - len(suffix)
    if len(body) > room:
        body = body[: room - len(_ELLIPSIS)].rstrip() + _ELLIPSIS
    return body + suffix


def authorization_details(
    action: Action,
    *,
    resource: str | None = None,
    detail_type: str = AUTHORIZATION_DETAILS_TYPE,
) -> list[dict[str, Any]]:
    """RFC 9396 §2 ``authorization_details`` describing ``action``: the common fields
    ``actions`` (the tool) and ``locations`` (the resource), plus ``tool``, ``arguments``
    and ``action_hash`` (``sha-256:<hex>``) of the ``agent_action`` type."""
    detail: dict[str, Any] = {
        "type": detail_type,
        "actions": [action.tool],
        "tool": action.tool,
        "arguments": _freeze(action._arguments),
        "action_hash": f"sha-256:{action.digest}",
    }
    if resource is not None:
        detail["locations"] = [resource]
    return [detail]
