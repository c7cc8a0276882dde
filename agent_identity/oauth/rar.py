"""Rich Authorization Requests (RFC 9396), sans-IO: typed details, their wire form, and
the check that an issued token carries what was asked for (RFC 9396 §7).

- :class:`AuthorizationDetail`: the common fields of an authorization details object
  (§2: ``type``, ``locations``, ``actions``, ``datatypes``, ``identifier``,
  ``privileges``). A developer declares one small subclass per type, with the type's own
  fields; it is validated when built and again before it is sent (a typed
  :class:`~agent_identity.errors.ConfigurationError`, never a pydantic error)::

      class PaymentInitiation(AuthorizationDetail):
          type: Literal["payment_initiation"] = "payment_initiation"
          instructed_amount: Amount = Field(alias="instructedAmount")
          creditor_name: str = Field(alias="creditorName")

- :func:`details_to_wire` turns a sequence of details (typed, or plain mappings checked
  against §2's common-field rules) into the JSON array sent as ``authorization_details``
  in authorization (front channel and PAR), token, token exchange and CIBA requests.
- :func:`granted_details` reads what a token carries: the token response's
  ``authorization_details`` (§7.1), else the ``authorization_details`` claim of a readable
  JWT access token (§9.1).
- :func:`missing_details` compares them (§7): every requested object must be granted by
  an object of the same ``type`` that holds each requested member with an equal value
  (objects compared member by member, recursively; arrays and scalars exactly). The
  server may enrich an object (add members) but never drop or change one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from agent_identity._limits import has_lone_surrogate
from agent_identity.errors import ConfigurationError

__all__ = [
    "AuthorizationDetail",
    "canonical_details",
    "details_for_resource",
    "details_to_wire",
    "merge_details",
    "missing_details",
]

_ARRAY_FIELDS = ("locations", "actions", "datatypes", "privileges")
_MAX_DEPTH = 32


class AuthorizationDetail(BaseModel):
    """One RFC 9396 §2 authorization details object. Subclass it per ``type``.

    Unknown members are refused (``extra="forbid"``) so a typo is caught before the user
    is asked; fields may use aliases for the wire names (``populate_by_name`` is on).
    """

    model_config = ConfigDict(
        extra="forbid", frozen=True, populate_by_name=True, defer_build=True
    )

    type: str
    locations: tuple[str, ...] | None = None
    actions: tuple[str, ...] | None = None
    datatypes: tuple[str, ...] | None = None
    identifier: str | None = None
    privileges: tuple[str, ...] | None = None

    def __repr__(self) -> str:
        # only the type: the values may be personal data (amounts, names, accounts)
        return f"{type(self).__name__}(type={self.type!r})"

    __str__ = __repr__

    def to_wire(self) -> dict[str, Any]:
        """The JSON object sent on the wire (aliases, ``None`` members left out)."""
        return dict(self.model_dump(mode="json", by_alias=True, exclude_none=True))


def _check_json(value: Any, depth: int = 0) -> Any:
    if depth > _MAX_DEPTH:
        raise ConfigurationError("authorization details are nested too deeply")
    if isinstance(value, str):
        if has_lone_surrogate(value):  # it could not be sent (UTF-8) nor compared
            raise ConfigurationError("authorization details hold invalid Unicode")
        return value
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigurationError("authorization details must not hold NaN or infinity")
        return value
    if isinstance(value, list | tuple):
        return [_check_json(v, depth + 1) for v in value]
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str) or has_lone_surrogate(key):
                raise ConfigurationError(
                    "authorization details member names must be strings of valid Unicode"
                )
            out[key] = _check_json(item, depth + 1)
        return out
    raise ConfigurationError(
        f"authorization details must be JSON values (got {type(value).__name__})"
    )


def _check_common(detail: Mapping[str, Any], index: int) -> None:
    kind = detail.get("type")
    if not isinstance(kind, str) or not kind:
        raise ConfigurationError(
            f"authorization details object {index} needs a non-empty string 'type'"
        )
    for name in _ARRAY_FIELDS:
        if name in detail:
            value = detail[name]
            if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                raise ConfigurationError(
                    f"authorization details object {index} ({kind}): {name!r} must be an "
                    "array of non-empty strings"
                )
    if "identifier" in detail and (
        not isinstance(detail["identifier"], str) or not detail["identifier"]
    ):
        raise ConfigurationError(
            f"authorization details object {index} ({kind}): 'identifier' must be a "
            "non-empty string"
        )


def details_to_wire(
    details: Sequence[AuthorizationDetail | Mapping[str, Any]] | None,
) -> list[dict[str, Any]]:
    """Validate ``details`` and return their JSON form (``[]`` for none).

    A typed detail is validated again by its model (so one built with ``model_construct``
    or changed since cannot slip through); a mapping is checked against §2's common
    fields. Raises :class:`~agent_identity.errors.ConfigurationError` naming the object and
    member, never its value.
    """
    if details is None:
        return []
    if isinstance(details, AuthorizationDetail | Mapping | str):
        raise ConfigurationError("authorization_details must be a sequence of details objects")
    out: list[dict[str, Any]] = []
    for index, detail in enumerate(details):
        if isinstance(detail, AuthorizationDetail):
            problem: list[str] | None = None
            try:
                type(detail).model_validate(detail.model_dump(by_alias=True))
            except ValidationError as exc:
                problem = sorted({".".join(str(p) for p in e["loc"]) for e in exc.errors()})
            if problem is not None:  # raised outside the handler: pydantic quotes values
                raise ConfigurationError(
                    f"authorization details object {index} ({type(detail).__name__}) is "
                    f"invalid: {', '.join(problem) or '(object)'}"
                )
            wire = _check_json(detail.to_wire())
        elif isinstance(detail, Mapping):
            wire = _check_json(detail)
        else:
            raise ConfigurationError(
                f"authorization details object {index} must be an AuthorizationDetail or a mapping"
            )
        _check_common(wire, index)
        out.append(wire)
    return out


def canonical_details(details: Sequence[Mapping[str, Any]]) -> str:
    """The canonical JSON text of a details array (sorted keys, compact): equal arrays
    give equal text (used to compare and to key stored approvals)."""
    return json.dumps(
        list(details), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def merge_details(*groups: Sequence[Mapping[str, Any]]) -> tuple[dict[str, Any], ...]:
    """The union of details arrays, in order, without duplicates (compared canonically)."""
    seen: set[str] = set()
    out: list[dict[str, Any]] = []
    for group in groups:
        for detail in group:
            text = canonical_details([detail])
            if text not in seen:
                seen.add(text)
                out.append(dict(detail))
    return tuple(out)


def _contains(granted: Any, requested: Any) -> bool:
    if isinstance(requested, Mapping):
        return isinstance(granted, Mapping) and all(
            key in granted and _contains(granted[key], value) for key, value in requested.items()
        )
    if isinstance(requested, list):
        return (
            isinstance(granted, list)
            and len(granted) == len(requested)
            and all(_contains(g, r) for g, r in zip(granted, requested, strict=True))
        )
    if isinstance(requested, bool) or isinstance(granted, bool):
        return type(requested) is type(granted) and requested == granted
    return bool(granted == requested)


def missing_details(
    requested: Sequence[Mapping[str, Any]], granted: Sequence[Mapping[str, Any]] | None
) -> list[str]:
    """The ``type`` of each requested object that ``granted`` does not carry (RFC 9396
    §7; see the module docstring). ``granted=None`` (the token says nothing) misses all."""
    missing: list[str] = []
    for detail in requested:
        kind = str(detail.get("type"))
        if granted is None or not any(
            isinstance(g, Mapping) and g.get("type") == detail.get("type") and _contains(g, detail)
            for g in granted
        ):
            missing.append(kind)
    return missing


def details_for_resource(
    details: Sequence[Mapping[str, Any]], resource: str | None, *, same: Any = None
) -> tuple[dict[str, Any], ...]:
    """The details that apply to a token for ``resource``: those without ``locations``
    and those whose ``locations`` name it (``same(a, b)`` compares URIs; default exact)."""
    out: list[dict[str, Any]] = []
    for detail in details:
        locations = detail.get("locations")
        if not locations or resource is None:
            out.append(dict(detail))
            continue
        equal = same if same is not None else (lambda a, b: a == b)
        if any(isinstance(loc, str) and equal(loc, resource) for loc in locations):
            out.append(dict(detail))
    return tuple(out)


def parse_granted(value: Any) -> tuple[dict[str, Any], ...] | None:
    """An ``authorization_details`` member or claim as a tuple of objects, or ``None``
    when it is absent or not an array of objects."""
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        return None
    return tuple(dict(v) for v in value)
