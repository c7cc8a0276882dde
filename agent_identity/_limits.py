"""Bounds and text rules for values read from servers: the parsing boundary.

Every parser of server input applies the two rules of this module to the members it
uses, so that nothing downstream (arithmetic on a monotonic clock, ``datetime``, an
HTTP header, ``str.encode``, a log line, an audit record) can meet a value it cannot
handle. A value that breaks a rule gives the parser's typed error
(:class:`~agent_identity.errors.InvalidResponse` unless the caller names another), never
``OverflowError``, ``ValueError`` or ``UnicodeEncodeError``.

**The bounded-number rule** (:func:`bounded_int`, :func:`numeric_date`):

- a JSON integer, or a float with an integral value (``5.0``; RFC 8259 §6 does not tell
  ``5`` from ``5.0``). Refused: booleans (JSON ``true`` is not 1), NaN and infinities,
  fractions, and anything else; a string only where the caller allows it (some servers
  send ``"expires_in": "3600"``), and then only ASCII digits: Unicode digits such
  as ``"²"`` or ``"٣"`` pass ``str.isdigit()`` but are not numbers on the wire;
- the range is checked on the exact integer *before* any conversion, so an integer of
  hundreds of digits never reaches ``float()``;
- above the maximum a value is either refused or clamped, as the caller says.

Bounds (the reason for each):

- :data:`MAX_LIFETIME`, one year: an ``expires_in`` of a token (RFC 6749 §5.1), a device
  code (RFC 8628 §3.2), a CIBA request (CIBA Core §7.3) or a pushed request (RFC 9126
  §2.2), and a ``max_age`` (OpenID Connect Core §3.1.2.1, RFC 9470 §3). Longer values are
  *clamped*: the SDK then believes a credential expires sooner than the server says and
  refreshes or asks again earlier, never later. Clamping, not refusing, keeps a refresh
  response whose rotated refresh token has already been issued (RFC 9700 §4.14.2): a
  refused response would lose the grant.
- :data:`MAX_INTERVAL`, one hour: a polling ``interval`` (RFC 8628 §3.2, CIBA Core §7.3).
  Longer values are *refused*: polling faster than the server asked would only earn
  ``slow_down`` errors.
- :data:`MAX_EPOCH`, 9999-12-31T23:59:59Z (the largest time ``datetime`` holds): JWT
  NumericDate claims ``exp``, ``iat``, ``nbf``, ``auth_time`` (RFC 7519 §2, §4.1) are
  *refused* outside ``0..MAX_EPOCH`` (fractions allowed, as RFC 7519 §2 allows);
  ``client_secret_expires_at`` (RFC 7591 §3.2.1, ``0`` = never) is *clamped* to it (a
  secret that expires after year 9999 never expires for us).
- ``Retry-After`` delta-seconds (RFC 9110 §10.2.3) are clamped to :data:`MAX_LIFETIME`
  by the HTTP layer, which waits at most its own ``max_retry_wait`` anyway.

**The text-sanity rule** (:func:`sane_text`, :func:`display_text`):

- lone surrogates (``"\\ud800"``, from a JSON ``\\u`` escape or a Python caller) are not
  Unicode text and cannot be encoded as UTF-8 (RFC 3629 §3); :func:`~agent_identity.
  oauth._json.parse_json_object` refuses them anywhere in a server document (I-JSON,
  RFC 7493 §2.1), and :func:`sane_text` refuses them in any other input;
- control characters (C0, DEL, C1) are refused in values that are used verbatim: tokens,
  codes, identifiers, nonces, ``user_code``, URIs (an access token with CR/LF would
  otherwise become a header injection; RFC 9110 §5.5);
- a length bound (:data:`MAX_TEXT` unless the caller gives another);
- free text meant for humans (``error_description``, RFC 6749 §5.2) is not refused but
  made displayable by :func:`display_text`: unsafe characters become ``U+FFFD`` and the
  text is cut to :data:`MAX_DISPLAY` characters.

**Access tokens** (:func:`check_access_token`) must match the ``b64token`` syntax of RFC
6750 §2.1 (also the syntax of DPoP tokens, RFC 9449 §7.1): they go into an
``Authorization`` header, where anything else is either invalid or an injection.

Messages name the member that was refused, never its value.
"""

from __future__ import annotations

import math
import re
from typing import Final, Literal

from agent_identity.errors import InvalidResponse

__all__ = [
    "MAX_DISPLAY",
    "MAX_EPOCH",
    "MAX_INTERVAL",
    "MAX_LIFETIME",
    "MAX_TEXT",
    "MAX_TOKEN",
    "bounded_int",
    "check_access_token",
    "display_text",
    "has_lone_surrogate",
    "numeric_date",
    "parse_delta_seconds",
    "sane_text",
]

#: One year, in seconds: the longest lifetime the SDK believes (longer ones are clamped).
MAX_LIFETIME: Final = 365 * 24 * 3600
#: One hour, in seconds: the longest polling interval accepted.
MAX_INTERVAL: Final = 3600
#: 9999-12-31T23:59:59Z in epoch seconds: the latest NumericDate accepted.
MAX_EPOCH: Final = 253_402_300_799
#: Default length bound of a text member (characters).
MAX_TEXT: Final = 8 * 1024
#: Length bound of a token (characters): far above any real JWT, far below the body cap.
MAX_TOKEN: Final = 64 * 1024
#: Length of human-readable text kept for messages (characters).
MAX_DISPLAY: Final = 512

_ASCII_DIGITS: Final = re.compile(r"[0-9]+")
# RFC 6750 §2.1: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
_B64TOKEN: Final = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
# C0 controls, DEL and C1 controls.
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CONTROL_BUT_WHITESPACE: Final = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_SURROGATE: Final = re.compile(r"[\ud800-\udfff]")
_UNSAFE_FOR_DISPLAY: Final = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")

Over = Literal["clamp", "refuse"]


def bounded_int(
    value: object,
    name: str,
    *,
    minimum: int,
    maximum: int,
    over: Over,
    strings: bool = False,
    error: type[Exception] = InvalidResponse,
) -> int:
    """The bounded-number rule for a whole number of seconds (see the module docstring).

    ``name`` is used in the message (``"token response expires_in"``). Below ``minimum``
    is always refused; above ``maximum`` is clamped or refused as ``over`` says.
    """
    number: int
    if isinstance(value, bool):
        raise error(f"{name} is a boolean, not a number")
    if isinstance(value, int):
        number = value
    elif isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            raise error(f"{name} is not a whole number")
        if value > maximum:  # compared as a float: never converted while huge
            if over == "refuse":
                raise error(f"{name} is out of range")
            return maximum
        number = int(value)
    elif strings and isinstance(value, str):
        if not _ASCII_DIGITS.fullmatch(value):
            raise error(f"{name} is not a number")
        digits = value.lstrip("0") or "0"
        if len(digits) > 18:  # beyond any maximum: never converted
            if over == "refuse":
                raise error(f"{name} is out of range")
            return maximum
        number = int(digits)
    else:
        raise error(f"{name} is not a number")
    if number < minimum:
        raise error(f"{name} is out of range")
    if number > maximum:
        if over == "refuse":
            raise error(f"{name} is out of range")
        return maximum
    return number


def numeric_date(value: object, name: str, *, error: type[Exception] = InvalidResponse) -> float:
    """A JWT NumericDate (RFC 7519 §2): a JSON number of seconds since the epoch within
    ``0..MAX_EPOCH``, fractions allowed. Booleans, strings, NaN/infinity and values out of
    range are refused."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise error(f"{name} is not a NumericDate")
    if isinstance(value, float) and not math.isfinite(value):
        raise error(f"{name} is not a NumericDate")
    if not 0 <= value <= MAX_EPOCH:  # exact comparison: a huge int is never converted
        raise error(f"{name} is out of range")
    return float(value)


def parse_delta_seconds(text: str, *, maximum: int = MAX_LIFETIME) -> int | None:
    """ASCII delta-seconds (RFC 9110 §10.2.3, §5.6.1 ``1*DIGIT``) clamped to ``maximum``,
    or ``None`` when ``text`` is not 1*DIGIT. Unicode digits are not digits here."""
    if not text or not text.isascii() or not text.isdigit():
        return None
    digits = text.lstrip("0") or "0"
    if len(digits) > 18:  # far beyond any maximum: never converted
        return maximum
    return min(int(digits), maximum)


def has_lone_surrogate(text: str) -> bool:
    """Whether ``text`` holds a surrogate code point (never valid Unicode text)."""
    return _SURROGATE.search(text) is not None


def sane_text(
    value: object,
    name: str,
    *,
    max_length: int = MAX_TEXT,
    allow_empty: bool = False,
    allow_whitespace: bool = False,
    error: type[Exception] = InvalidResponse,
) -> str:
    """The text-sanity rule for a value used verbatim: a string, not empty (unless
    allowed), at most ``max_length`` characters, without lone surrogates or control
    characters (tab, CR and LF are tolerated with ``allow_whitespace``, for
    whitespace-separated lists such as ``scope``). Returns ``value``; raises ``error``
    naming ``name``, never the value."""
    if not isinstance(value, str):
        raise error(f"{name} is not a string")
    if not value and not allow_empty:
        raise error(f"{name} is empty")
    if len(value) > max_length:
        raise error(f"{name} is too long")
    control = _CONTROL_BUT_WHITESPACE if allow_whitespace else _CONTROL
    if control.search(value) or _SURROGATE.search(value):
        raise error(f"{name} holds control characters or invalid Unicode")
    return value


def display_text(value: object, *, max_length: int = MAX_DISPLAY) -> str | None:
    """Free text from a server made safe to show, log and encode: ``None`` for a
    non-string, control characters (except tab and newline) and lone surrogates replaced
    by ``U+FFFD``, cut to ``max_length`` characters."""
    if not isinstance(value, str):
        return None
    text = value[: max_length + 1]
    text = _UNSAFE_FOR_DISPLAY.sub("\ufffd", text)
    if len(text) > max_length:
        text = text[: max_length - 1] + "\u2026"
    return text


def check_access_token(
    value: object, name: str = "access_token", *, error: type[Exception] = InvalidResponse
) -> str:
    """RFC 6750 §2.1 ``b64token`` (RFC 9449 §7.1 for DPoP), at most :data:`MAX_TOKEN`
    characters. Raises ``error`` without quoting the token."""
    if not isinstance(value, str):
        raise error(f"{name} is not a string")
    if not value:
        raise error(f"{name} is empty")
    if len(value) > MAX_TOKEN:
        raise error(f"{name} is too long")
    if not _B64TOKEN.fullmatch(value):
        raise error(f"{name} holds characters outside the RFC 6750 b64token syntax")
    return value
