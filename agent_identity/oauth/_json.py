"""Strict JSON object parsing for untrusted response bodies (security item 4).

Rejects non-UTF-8, non-JSON, truncated bodies, duplicate member names (a classic
parser-differential attack), non-object top-level values, NaN/Infinity (also when a number
such as ``1e400`` overflows to it) and absurd nesting. Unknown members are kept so
callers can ignore them.
"""

from __future__ import annotations

import json
import math
from typing import Any

from agent_identity.errors import InvalidResponse

__all__ = ["parse_json_object"]


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise InvalidResponse(f"duplicate JSON member {key!r}")
        obj[key] = value
    return obj


def _no_constants(name: str) -> Any:
    raise InvalidResponse(f"non-standard JSON constant {name}")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # ``1e400`` overflows to infinity without a constant
        raise InvalidResponse("JSON number out of range")
    return value


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
    if problem is not None:
        raise InvalidResponse(
            problem if problem.startswith(("duplicate", "non-")) else f"{what} {problem}"
        )
    if not isinstance(value, dict):
        raise InvalidResponse(f"{what} is not a JSON object")
    return value
