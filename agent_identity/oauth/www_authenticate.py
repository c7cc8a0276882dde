"""``WWW-Authenticate`` challenge parsing (RFC 9110 §11.6.1, RFC 6750 §3, RFC 9728 §5.1,
RFC 9470 §3, RFC 9449 §7.1).

The header is untrusted input. The parser accepts several challenges in one value
(``Bearer realm="x", DPoP algs="ES256"``), quoted strings with backslash escapes and
token68 credentials, and never raises for garbage: it returns what it could parse,
dropping malformed parameters (an unquoted value is never truncated at a character a
token may not hold: ``scope=read:all`` is dropped, not read as ``read``). Parameter
names are case-insensitive (lower-cased); a parameter repeated in one challenge is
ambiguous, so the challenge keeps neither. A parameter value holding control characters
or lone surrogates is dropped too (the text-sanity rule of :mod:`._limits`), and
:attr:`Challenge.max_age` applies the bounded-number rule: ASCII digits only (``"²"``
passes ``str.isdigit()`` but is not a number), clamped to one year.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from agent_identity._limits import MAX_LIFETIME, parse_delta_seconds

__all__ = ["Challenge", "parse_www_authenticate"]

_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_TOKEN68 = r"[A-Za-z0-9\-._~+/]+=*"
_RE_TOKEN = re.compile(_TOKEN)
_RE_TOKEN68 = re.compile(_TOKEN68)
_RE_WS = re.compile(r"[ \t]*")
_RE_UNSAFE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f\ud800-\udfff]")


@dataclass(frozen=True, slots=True)
class Challenge:
    """One authentication challenge: a scheme (lower-cased) and its parameters."""

    scheme: str
    params: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    token68: str | None = None

    def get(self, name: str) -> str | None:
        return self.params.get(name.lower())

    @property
    def scopes(self) -> tuple[str, ...]:
        value = self.get("scope")
        return tuple(value.split()) if value else ()

    @property
    def error(self) -> str | None:
        return self.get("error")

    @property
    def max_age(self) -> int | None:
        """RFC 9470 §3 ``max_age``: seconds as ASCII digits, clamped to one year; ``None``
        when absent or not a number."""
        value = self.get("max_age")
        return None if value is None else parse_delta_seconds(value, maximum=MAX_LIFETIME)


class _Scanner:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def ws(self) -> None:
        m = _RE_WS.match(self.text, self.pos)
        if m:
            self.pos = m.end()

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def eat(self, char: str) -> bool:
        if self.peek() == char:
            self.pos += 1
            return True
        return False

    def token(self) -> str | None:
        m = _RE_TOKEN.match(self.text, self.pos)
        if not m:
            return None
        self.pos = m.end()
        return m.group(0)

    def quoted(self) -> str | None:
        if not self.eat('"'):
            return None
        out: list[str] = []
        while self.pos < len(self.text):
            c = self.text[self.pos]
            self.pos += 1
            if c == "\\" and self.pos < len(self.text):
                out.append(self.text[self.pos])
                self.pos += 1
            elif c == '"':
                return "".join(out)
            else:
                out.append(c)
        return None  # unterminated

    def skip_to_comma(self) -> None:
        in_quote = False
        while self.pos < len(self.text):
            c = self.text[self.pos]
            if in_quote and c == "\\":
                self.pos += 2
                continue
            if c == '"':
                in_quote = not in_quote
            elif c == "," and not in_quote:
                return
            self.pos += 1


def parse_www_authenticate(value: str) -> list[Challenge]:
    """Parse a ``WWW-Authenticate`` header value (several headers may be joined by ``,``)."""
    s = _Scanner(value)
    challenges: list[Challenge] = []
    scheme: str | None = None
    params: dict[str, str] = {}
    repeated: set[str] = set()
    token68: str | None = None

    def flush() -> None:
        if scheme is not None:
            clean = {k: v for k, v in params.items() if k not in repeated}
            challenges.append(Challenge(scheme.lower(), MappingProxyType(clean), token68))

    while s.pos < len(s.text):
        s.ws()
        if s.eat(","):
            continue
        start = s.pos
        name = s.token()
        if name is None:
            s.pos += 1
            s.skip_to_comma()
            continue
        s.ws()
        if s.peek() == "=" and scheme is not None:
            # auth-param of the current challenge
            s.eat("=")
            s.ws()
            quoted = s.peek() == '"'
            val = s.quoted() if quoted else s.token()
            if val is None or (not quoted and s.peek() not in ("", ",", " ", "\t")):
                # unterminated quote, or an unquoted value with characters a token may not
                # hold (``scope=read:all``): drop the parameter rather than truncate it
                s.skip_to_comma()
                continue
            key = name.lower()
            if key in params:
                repeated.add(key)
            if _RE_UNSAFE.search(val):
                repeated.add(key)  # a value no caller can use verbatim: dropped
            params[key] = val
            continue
        if s.peek() == "=" and scheme is None:
            s.skip_to_comma()
            continue
        # a new challenge starts with a scheme token
        flush()
        scheme, params, repeated, token68 = name, {}, set(), None
        s.ws()
        m = _RE_TOKEN68.match(s.text, s.pos)
        if m and m.end() > s.pos:
            after = _RE_WS.match(s.text, m.end())
            end = after.end() if after else m.end()
            # token68 only if not followed by "=" of an auth-param and then end or comma
            if (end >= len(s.text) or s.text[end] == ",") and "=" not in m.group(0).rstrip("="):
                candidate = m.group(0)
                # a lone token followed by ',' is a token68 only if it is not a param name
                token68 = candidate
                s.pos = end
        if s.pos == start:
            s.pos += 1
    flush()
    return challenges
