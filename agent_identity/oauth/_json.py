"""Strict JSON object parsing for untrusted response bodies (security item 4).

Rejects non-UTF-8, non-JSON, truncated bodies, duplicate member names (a classic
parser-differential attack), non-object top-level values, NaN/Infinity (also when a number
such as ``1e400`` overflows to it), absurd nesting, and lone surrogates (``"\\ud800"``)
in any string or member name: such a string is not Unicode text, cannot be encoded again
and is forbidden by I-JSON (RFC 7493 §2.1). Unknown members are kept so callers can
ignore them. The bounds of the members callers use are in :mod:`._limits`.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from agent_identity.errors import InvalidResponse

__all__ = ["parse_json_object"]

# A ``\\u`` escape of a surrogate (paired or not): only then can the parsed value hold one.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise InvalidResponse(f"duplicate JSON member {key[:64]!r}")
        obj[key] = value
    return obj


def _no_constants(name: str) -> Any:
    raise InvalidResponse(f"non-standard JSON constant {name}")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # ``1e400`` overflows to infinity without a constant
        raise InvalidResponse("JSON number out of range")
    return value


def _holds_lone_surrogate(value: Any) -> bool:
    from agent_identity._limits import has_lone_surrogate

    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if has_lone_surrogate(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def parse_json_object(content: bytes, *, what: str = "response") -> dict[str, Any]:
    """Parse ``content`` as a JSON object or raise :class:`InvalidResponse`."""
    # Errors are raised outside the ``except`` blocks: the foreign exception (which quotes
    # the body, possibly a token) must not survive as ``__context__`` (security item 40).
    problem: str | None = None
    value: Any = None
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        problem, text = "is not UTF-8", ""
    if problem is None:
        try:
            value = json.loads(
                text,
                object_pairs_hook=_no_duplicates,
                parse_constant=_no_constants,
                parse_float=_finite_float,
            )
        except InvalidResponse as exc:
            problem = str(exc)
        except RecursionError:
            problem = "JSON is nested too deeply"
        except ValueError:
            problem = "is not valid JSON"
    if (
        problem is None
        and _SURROGATE_ESCAPE.search(content) is not None
        and _holds_lone_surrogate(value)
    ):
        problem = "holds a lone surrogate (not Unicode text, RFC 7493 §2.1)"
    if problem is not None:
        raise InvalidResponse(
            problem if problem.startswith(("duplicate", "non-")) else f"{what} {problem}"
        )
    if not isinstance(value, dict):
        raise InvalidResponse(f"{what} is not a JSON object")
    return value
