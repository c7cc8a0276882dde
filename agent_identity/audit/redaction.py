"""Defensive secret scrubbing for audit records and log output (security item 40).

Audit records and log lines must never hold a secret: access, refresh or ID tokens
(RFC 6749 §1.4-1.5, OpenID Connect Core §2), authorization codes (RFC 6749 §4.1.2), PKCE
verifiers (RFC 7636 §4.1), client secrets and assertions (RFC 6749 §2.3.1, RFC 7523 §2.2),
CIBA notification tokens (CIBA Core §7.1) or private key material (RFC 7517 §4, RFC 7518
§6.2.2, §6.3.2 and §6.4.1).

The SDK never puts a secret into a record on purpose; this module is the second line of
defence for values that come from elsewhere (tool arguments, ``extra`` members, log
arguments). It replaces, with :data:`REDACTED`:

- the value of any member whose *name* looks secret (:func:`is_secret_key`): names
  containing ``token``, ``secret``, ``password``, ``verifier`` or ``assertion``, and
  ``authorization``, ``code``, ``cookie``, ``api_key``, ``private_key``, ``auth_req_id``...
  A few harmless names (``token_type``, ``max_tokens``...) are exempt;
- members named like private JWK members (``d``, ``p``, ``q``, ``dp``, ``dq``, ``qi``,
  ``k``, ``oth``; RFC 7518 §6) inside a JWK (a mapping with ``kty``), and anywhere when
  the value looks like key material (16+ base64url characters): a ``q`` holding a search
  query or a ``k`` of "top k" stays;
- inside any string: JWT-shaped values (JWS/JWE compact serialization, RFC 7515 §7.1 and
  RFC 7516 §7.1), credentials after an HTTP authentication scheme (``Bearer``, ``DPoP``,
  ``Basic``; RFC 6750 §2.1, RFC 9449 §7.1, RFC 7617 §2), and ``name=value`` or
  ``"name": "value"`` pairs whose name looks secret.

It is a heuristic: an opaque random secret under an innocent name inside free text cannot
be recognised. Callers must still never hand secrets to the audit trail.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

__all__ = [
    "REDACTED",
    "RedactingFilter",
    "install_redacting_filter",
    "is_secret_key",
    "redact",
    "redact_text",
]

REDACTED = "[redacted]"

_SECRET_PARTS = ("token", "secret", "password", "passwd", "verifier", "assertion", "private")
_SECRET_NAMES = frozenset(
    {
        "authorization",
        "proxy_authorization",
        "code",
        "auth_code",
        "authorization_code",
        "device_code",
        "auth_req_id",
        "cookie",
        "set_cookie",
        "api_key",
        "apikey",
        "x_api_key",
        "credential",
        "credentials",
        "dpop",
        "jwk_private",
        "session_key",
        "signing_key",
        "encryption_key",
    }
)
#: Names that contain a secret-looking part but hold harmless values. Their values are
#: still scanned as text.
_HARMLESS_NAMES = frozenset(
    {
        "token_type",
        "token_type_hint",
        "token_fingerprint",
        "token_endpoint",
        "token_endpoint_auth_method",
        "token_count",
        "max_tokens",
        "max_output_tokens",
        "max_completion_tokens",
        "num_tokens",
        "input_tokens",
        "output_tokens",
        "total_tokens",
        "private",
        "is_private",
    }
)
#: Private members of a JWK (RFC 7518 §6.2.2, §6.3.2, §6.4.1).
_JWK_PRIVATE = frozenset({"d", "p", "q", "dp", "dq", "qi", "k", "oth"})

_B64URL = r"[A-Za-z0-9_-]"
_JWT = re.compile(
    # a JOSE header always starts with '{"' -> base64url 'eyJ'; 3 parts (JWS) or 5 (JWE)
    rf"eyJ{_B64URL}*(?:\.{_B64URL}*){{2,4}}"
    # or any three long base64url segments (not a host name or a dotted scope)
    rf"|(?<![A-Za-z0-9_-]){_B64URL}{{16,}}\.{_B64URL}{{16,}}\.{_B64URL}{{16,}}"
)
_AUTH_SCHEME = re.compile(r"(?i)\b(bearer|dpop|basic)(\s+)[A-Za-z0-9._~+/=-]+")
_NAME = r"[A-Za-z0-9_-]*(?:token|secret|password|passwd|verifier|assertion)[A-Za-z0-9_-]*"
_PAIR_NAMES = rf"{_NAME}|code|device_code|auth_req_id|api_key|apikey|authorization|cookie"
_QUERY_PAIR = re.compile(rf"(?i)(?<![A-Za-z0-9_-])({_PAIR_NAMES})=([^&\s\"',;]+)")
_JSON_PAIR = re.compile(rf"(?i)([\"']({_PAIR_NAMES})[\"']\s*:\s*)([\"'])(?:\\.|(?!\3).)*\3")
_HEADER_PAIR = re.compile(r"(?i)\b(authorization|cookie|x-api-key|dpop)(:\s*)[^\r\n]+")


def _normalise(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def is_secret_key(name: str) -> bool:
    """Whether a member named ``name`` must not have its value recorded."""
    norm = _normalise(name)
    if norm in _HARMLESS_NAMES:
        return False
    return norm in _SECRET_NAMES or any(part in norm for part in _SECRET_PARTS)


def redact_text(text: str) -> str:
    """Replace secret-looking parts of ``text`` (JWTs, ``Bearer x``, ``code=x``...)."""
    text = _JWT.sub(REDACTED, text)
    text = _AUTH_SCHEME.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
    text = _HEADER_PAIR.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
    text = _QUERY_PAIR.sub(_query_pair, text)
    return _JSON_PAIR.sub(_json_pair, text)


def _query_pair(match: re.Match[str]) -> str:
    if not is_secret_key(match.group(1)):
        return match.group(0)
    return f"{match.group(1)}={REDACTED}"


def _json_pair(match: re.Match[str]) -> str:
    if not is_secret_key(match.group(2)):
        return match.group(0)
    return f"{match.group(1)}{match.group(3)}{REDACTED}{match.group(3)}"


_KEY_MATERIAL = re.compile(rf"{_B64URL}{{16,}}={{0,2}}")


def _redact_member(name: str, value: Any, *, in_jwk: bool) -> Any:
    if is_secret_key(name):
        return REDACTED if value is not None else None
    if _normalise(name) in _JWK_PRIVATE and (
        (in_jwk and value is not None)
        or (isinstance(value, str) and _KEY_MATERIAL.fullmatch(value) is not None)
    ):
        return REDACTED
    return redact(value)


def redact(value: Any) -> Any:
    """Return a scrubbed copy of a JSON-like value (mappings, lists, scalars).

    Mapping members are judged by name (:func:`is_secret_key`, private JWK members) and
    every string (keys included) by content (:func:`redact_text`). Other objects are
    returned unchanged: convert them to JSON-like values first.
    """
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        out: dict[Any, Any] = {}
        in_jwk = "kty" in value
        for key, member in value.items():
            if isinstance(key, str):
                out[redact_text(key)] = _redact_member(key, member, in_jwk=in_jwk)
            else:
                out[key] = redact(member)
        return out
    if isinstance(value, list | tuple):
        return [redact(item) for item in value]
    return value


def _redact_arg(arg: Any) -> Any:
    if isinstance(arg, str | Mapping | list | tuple):
        return redact(arg)
    if arg is None or isinstance(arg, bool | int | float):
        return arg
    try:
        text = str(arg)
    except Exception:  # a broken __str__ must not break logging
        return arg
    cleaned = redact_text(text)
    return arg if cleaned == text else cleaned


class RedactingFilter(logging.Filter):
    """A :class:`logging.Filter` that scrubs secrets from log records.

    It redacts the message arguments (structurally for mappings and lists, by content for
    strings and other objects), then the formatted message, the formatted exception and
    the stack. The record is rewritten in place (``msg`` becomes the scrubbed message and
    ``args`` is emptied), so every handler after it sees the scrubbed text. It never drops a
    record.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            args = record.args
            if isinstance(args, Mapping):
                record.args = redact(args)
            elif isinstance(args, tuple):
                record.args = tuple(_redact_arg(a) for a in args)
            message = record.getMessage()
        except Exception:  # leave malformed records to logging's own error handling
            return True
        record.msg = redact_text(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info)
        return True


def install_redacting_filter(logger: logging.Logger | str = "agent_identity") -> RedactingFilter:
    """Add one :class:`RedactingFilter` to ``logger`` and to each of its handlers.

    Idempotent. A filter on a logger only sees records logged on that very logger; a
    filter on a handler also sees records propagated from child loggers, hence both.
    Handlers added later (or on the root logger) are not covered: add the returned filter to
    them yourself (``handler.addFilter(f)``).
    """
    target = logging.getLogger(logger) if isinstance(logger, str) else logger
    existing = next((f for f in target.filters if isinstance(f, RedactingFilter)), None)
    flt = existing or RedactingFilter()
    if existing is None:
        target.addFilter(flt)
    for handler in target.handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(flt)
    return flt
