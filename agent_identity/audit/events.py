"""The audit record: one :class:`AuditEvent` per tool call step and per token event.

Records name *who* (tenant, user, agent, the RFC 8693 §4.1 ``act`` chain), *what* (tool,
resource per RFC 8707, scopes per RFC 6749 §3.3) and *how it ended*. They never hold a
secret (security item 40): tokens appear only as a :func:`fingerprint`, tool arguments only
as :func:`arguments_hash` unless the caller opted in, errors only as their class name, and
every free-form value goes through :mod:`agent_identity.audit.redaction` when the event
is built.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import re
from collections.abc import Mapping, Set
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
    field_validator,
    model_validator,
)

from agent_identity.audit.redaction import redact, redact_text
from agent_identity.audit.spans import current_span_ids

__all__ = [
    "AuditEvent",
    "AuditKind",
    "ExtraValue",
    "Outcome",
    "arguments_hash",
    "canonical_json",
    "fingerprint",
    "to_jsonable",
]

AuditKind = Literal[
    "tool.started",
    "tool.succeeded",
    "tool.failed",
    "tool.denied",
    "consent.requested",
    "consent.granted",
    "consent.denied",
    "elevation",
    "token.issued",
    "token.refreshed",
    "token.exchanged",
    "token.broader",
    "token.audience_mismatch",
    "token.details_missing",
    "approval.requested",
    "approval.granted",
    "approval.denied",
    "approval.expired",
    "revocation",
]
AUDIT_KINDS: Final[frozenset[str]] = frozenset(get_args(AuditKind))
Outcome = Literal["ok", "denied", "error"]
ExtraValue = str | int | float | bool | None

#: Bounds: an audit record stays small whatever the caller hands in.
MAX_EXTRA_ITEMS: Final = 32
MAX_EXTRA_STRING: Final = 1024
MAX_ARGUMENTS_BYTES: Final = 16 * 1024

_Text = Annotated[str, StringConstraints(max_length=1024)]
_Url = Annotated[str, StringConstraints(max_length=4096)]
_Scope = Annotated[str, StringConstraints(min_length=1, max_length=256)]
_EXTRA_KEY = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_SURROGATE = re.compile("[\ud800-\udfff]")
#: Identifiers set by the SDK and its caller (who, which tool, which server): few distinct
#: values, so their redaction is memoised.
_IDENTIFIER_FIELDS = ("tenant", "user", "agent", "issuer", "resource", "tool")
#: Text built from call data: redacted afresh every time, never kept in a cache.
_FREE_TEXT_FIELDS = ("approval_id", "binding_message")


@functools.lru_cache(maxsize=1024)
def _redact_identifier_cached(value: str) -> str:
    return redact_text(value)


def _redact_identifier(value: str) -> str:
    return _redact_identifier_cached(value) if len(value) <= 256 else redact_text(value)


#: Nesting kept by :func:`to_jsonable`; deeper values (and cycles) are tagged instead.
MAX_DEPTH: Final = 64
#: Integers wider than this many bits (about 3,000 digits) are tagged in hexadecimal:
#: ``str(int)`` refuses more than 4,300 digits, ``hex`` has no such limit.
_MAX_INT_BITS: Final = 10_000


def to_jsonable(value: Any, _depth: int = 0) -> Any:
    """Convert ``value`` to plain JSON values, deterministically, whatever it holds.

    ``None``, booleans, integers, finite floats and strings stay (strings as they are,
    lone surrogates included: see :func:`arguments_hash`); mappings become objects
    (non-string keys are tagged), lists and tuples arrays, sets sorted arrays; pydantic
    models are dumped in JSON mode (``SecretStr`` stays masked). Anything else becomes
    ``{"$type": "<module.qualname>", "$repr": repr(value)}``, deterministic as long as the
    value's ``repr`` is. Values nested deeper than :data:`MAX_DEPTH` (cycles included)
    become ``{"$type": ..., "$depth": "truncated"}``; integers too wide for decimal text
    become ``{"$type": "int", "$hex": ...}``. Never raises (issue 12 item 11).
    """
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        if value.bit_length() > _MAX_INT_BITS:
            return {"$type": "int", "$hex": hex(value)}
        return int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else {"$type": "float", "$repr": repr(value)}
    if _depth >= MAX_DEPTH:
        return {"$type": _type_name(value), "$depth": "truncated"}
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, member in value.items():
            name = key if isinstance(key, str) else canonical_json(_tag(key))
            out[name] = to_jsonable(member, _depth + 1)
        return out
    if isinstance(value, list | tuple):
        return [to_jsonable(item, _depth + 1) for item in value]
    if isinstance(value, Set):
        items = [to_jsonable(item, _depth + 1) for item in value]
        return {"$type": type(value).__name__, "$items": sorted(items, key=_sort_key)}
    if isinstance(value, BaseModel):
        try:
            dumped = value.model_dump(mode="json")
        except Exception:  # a model that cannot be dumped is described, not dumped
            return _tag(value)
        return to_jsonable(dumped, _depth + 1)
    return _tag(value)


def _type_name(value: Any) -> str:
    cls = type(value)
    return f"{cls.__module__}.{cls.__qualname__}"


def _tag(value: Any) -> dict[str, str]:
    try:
        text = repr(value)
    except Exception as exc:  # a repr that raises must not cost the record
        text = f"<repr failed: {type(exc).__name__}>"
    return {"$type": _type_name(value), "$repr": text}


def _sort_key(value: Any) -> str:
    return canonical_json(value)


#: One encoder for every record (``json.dumps`` with options builds a new one per call).
_CANONICAL: Final = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)


def canonical_json(value: Any) -> str:
    """The canonical JSON text of a JSON value: sorted keys, no whitespace, UTF-8 text
    (in the spirit of RFC 8785; numbers use Python's shortest round-trip form)."""
    return _CANONICAL.encode(value)


def arguments_hash(arguments: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the canonical JSON of ``arguments`` (see :func:`to_jsonable`).

    Independent of member order; equal arguments always give the same hash, so a record
    can be matched with a call without storing the arguments themselves. Any arguments
    hash: a lone surrogate (not valid Unicode) is encoded with ``surrogatepass``, which no
    valid string encodes to, so distinct arguments keep distinct hashes.
    """
    text = canonical_json(to_jsonable(arguments))
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _valid_unicode(value: Any) -> Any:
    """``value`` (plain JSON) with every lone surrogate replaced by U+FFFD, so that the
    record can be encoded as UTF-8 by any sink."""
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {_valid_unicode(k): _valid_unicode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_valid_unicode(item) for item in value]
    return value


def fingerprint(value: str | SecretStr) -> str:
    """A short, non-reversible identifier of a secret: the first 16 hex digits (64 bits)
    of its SHA-256.

    It lets records about the same token be correlated without recording the token. It
    cannot be turned back into the token (SHA-256 is one-way and tokens are high-entropy);
    do not fingerprint low-entropy values such as passwords or short codes, which could be
    found by trying candidates.
    """
    raw = value.get_secret_value() if isinstance(value, SecretStr) else value
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()[:16]


def _now() -> datetime:
    return datetime.now(UTC)


def _new_id() -> str:
    """A random (version 4) UUID as text; what ``str(uuid.uuid4())`` gives, built from
    the same 16 random bytes without the ``UUID`` object (a record is built per call)."""
    h = os.urandom(16).hex()
    variant = "89ab"[int(h[16], 16) & 3]  # RFC 9562 §4.1: variant bits 10
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{variant}{h[17:20]}-{h[20:]}"


class AuditEvent(BaseModel):
    """One audit record. Immutable; unknown members and unknown ``kind`` values are
    rejected; validation errors never quote the input (it could hold a secret).

    ``trace_id``/``span_id`` default to the active OpenTelemetry span (W3C Trace Context
    ids as lowercase hex) when OpenTelemetry is in use, else ``None``. Use
    :meth:`for_tool_call` to build tool records: it hashes the arguments and keeps them
    only when asked to.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    kind: AuditKind
    time: datetime = Field(default_factory=_now)
    event_id: str = Field(default_factory=_new_id, pattern=r"^[0-9a-f-]{36}$")
    trace_id: str | None = Field(default=None, pattern=r"^[0-9a-f]{32}$")
    span_id: str | None = Field(default=None, pattern=r"^[0-9a-f]{16}$")
    tenant: _Text | None = None
    user: _Text | None = None
    agent: _Text | None = None
    actors: tuple[_Text, ...] = ()
    issuer: _Url | None = None
    resource: _Url | None = None
    scopes_requested: tuple[_Scope, ...] | None = None
    scopes_granted: tuple[_Scope, ...] | None = None
    tool: _Text | None = None
    arguments_hash: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    arguments: dict[str, Any] | None = None
    approval_id: _Text | None = None
    binding_message: _Text | None = None
    outcome: Outcome | None = None
    error_type: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_.]{0,127}$")
    latency_ms: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    token_fingerprint: str | None = Field(default=None, pattern=r"^[0-9a-f]{16}$")
    extra: dict[str, ExtraValue] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _trace_context(cls, data: Any) -> Any:
        if isinstance(data, dict) and "trace_id" not in data and "span_id" not in data:
            trace_id, span_id = current_span_ids()
            if trace_id is not None:
                data = {**data, "trace_id": trace_id, "span_id": span_id}
        return data

    @field_validator("time")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("time must be timezone-aware")
        return value.astimezone(UTC)

    @field_validator("scopes_requested", "scopes_granted", mode="before")
    @classmethod
    def _split_scopes(cls, value: Any) -> Any:
        # RFC 6749 §3.3: a scope string is a space-delimited list
        return value.split() if isinstance(value, str) else value

    @field_validator(*_IDENTIFIER_FIELDS)
    @classmethod
    def _scrub_identifier(cls, value: str | None) -> str | None:
        # identifiers repeat on every record: their (pure) redaction is memoised
        return None if value is None else _redact_identifier(value)

    @field_validator(*_FREE_TEXT_FIELDS)
    @classmethod
    def _scrub_text(cls, value: str | None) -> str | None:
        return None if value is None else redact_text(value)

    @field_validator("actors")
    @classmethod
    def _scrub_actors(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(redact_text(actor) for actor in value)

    @field_validator("arguments", mode="before")
    @classmethod
    def _bound_arguments(cls, value: Any) -> Any:
        if value is None:
            return None
        if not isinstance(value, Mapping):
            raise ValueError("arguments must be a mapping")
        cleaned = _valid_unicode(redact(to_jsonable(value)))
        if len(canonical_json(cleaned).encode("utf-8")) > MAX_ARGUMENTS_BYTES:
            return {"$omitted": f"arguments larger than {MAX_ARGUMENTS_BYTES} bytes"}
        return cleaned

    @field_validator("extra")
    @classmethod
    def _bound_extra(cls, value: dict[str, ExtraValue]) -> dict[str, ExtraValue]:
        if len(value) > MAX_EXTRA_ITEMS:
            raise ValueError(f"extra holds more than {MAX_EXTRA_ITEMS} members")
        for key, member in value.items():
            if not _EXTRA_KEY.fullmatch(key):
                raise ValueError("extra member names are 1-64 of [A-Za-z0-9_.:-]")
            if isinstance(member, float) and not math.isfinite(member):
                raise ValueError("extra numbers must be finite")
        out: dict[str, ExtraValue] = redact(value)
        for key, member in out.items():
            if isinstance(member, str):
                if len(member) > MAX_EXTRA_STRING:
                    member = member[: MAX_EXTRA_STRING - 1] + "\u2026"
                # valid Unicode, so that every sink can encode the record (a lone
                # surrogate would make the JSONL sink drop its whole batch)
                out[key] = _SURROGATE.sub("\ufffd", member)
        return out

    @classmethod
    def for_tool_call(
        cls,
        kind: AuditKind,
        *,
        tool: str,
        arguments: Mapping[str, Any] | None = None,
        include_arguments: bool = False,
        **fields: Any,
    ) -> AuditEvent:
        """Build a tool record: ``arguments_hash`` from ``arguments``; the arguments
        themselves (redacted, bounded) only when ``include_arguments`` is true."""
        if arguments is not None:
            fields["arguments_hash"] = arguments_hash(arguments)
            if include_arguments:
                fields["arguments"] = arguments
        return cls(kind=kind, tool=tool, **fields)

    def to_json_dict(self) -> dict[str, Any]:
        """The record as plain JSON values (``None`` members left out)."""
        return self.model_dump(mode="json", exclude_none=True)
