"""Fuzz every parser of server input with extreme values; count untyped exceptions.

    .venv/bin/python benchmarks/fuzz.py [--inputs 1000000] [--seed 1] [--examples 5]
                                         [--only token,jwt,...]

Each generated input goes to one target (round robin over the targets below). A target
calls the SDK's parser the way the SDK does, then uses what it accepted the way the SDK
would (an access token goes into a header, a lifetime is added to a clock, every string
is encoded as UTF-8, every error message is printed). Counted as a failure:

- an exception that is not an :class:`~agent_identity.errors.AgentIdentityError`
  (``OverflowError``, ``ValueError``, ``UnicodeEncodeError``, ``RecursionError``...);
- an accepted value that the SDK could not use (a header value with CR/LF, a lifetime
  that overflows a float, text that cannot be encoded), or an error message that cannot
  be printed.

Targets: JSON bodies, token, error, device authorization, CIBA acknowledgement, PAR,
registration, token exchange, revocation, AS metadata, protected resource metadata
responses; ``WWW-Authenticate``; authorization callbacks (parsed and validated); ID
tokens (HS256-signed so that fuzzed claims reach claim validation) and unverified JWT
peeking; JWK Sets; ``Retry-After``; the CIBA ping receiver's request parsing (the
standalone server's HTTP front end on an in-memory stream, then the ASGI app); audit
chain lines; token-target URLs with encoded paths and client id metadata URLs; tool
arguments (hash, audit record, approval action).

Values: huge integers (hundreds to thousands of digits), floats at and past the double
range, NaN/Infinity, booleans, Unicode digits, lone surrogates (``\\ud800``), control
characters, CR/LF/NUL, very long strings, deep nesting, duplicate keys, non-UTF-8 bytes,
truncation and byte flips of valid documents.

Prints the inputs per target, how many were accepted (parsed without error: the share
of inputs that reached the code after the parser), the count of failures, the rate and
the first examples;
exits 1 if there was any failure. Deterministic for a given ``--seed``. One core; about
a minute per 300,000 inputs on a small machine (see the printed rate).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import hmac
import json
import math
import random
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx2
from pydantic import SecretStr

from agent_identity._http import parse_retry_after
from agent_identity._resource_auth import require_token_target
from agent_identity.approval import Action
from agent_identity.approval import ping as ping_module
from agent_identity.approval.ping import PingReceiver
from agent_identity.audit import AuditEvent, arguments_hash
from agent_identity.audit.chain import GENESIS, _Broken, _check_line, make_record
from agent_identity.errors import AgentIdentityError
from agent_identity.models import AccessToken, TokenResponse
from agent_identity.oauth import authorize, ciba, device, registration, revocation, token
from agent_identity.oauth._json import parse_json_object
from agent_identity.oauth._message import HttpResponse
from agent_identity.oauth.discovery import parse_metadata
from agent_identity.oauth.exchange import parse_token_exchange_response
from agent_identity.oauth.jwt import DEFAULT_ALGORITHMS, parse_jwks, peek_claims, validate_id_token
from agent_identity.oauth.resource_metadata import parse_resource_metadata
from agent_identity.oauth.urls import canonical_resource_uri, check_endpoint_url
from agent_identity.oauth.www_authenticate import parse_www_authenticate

ISSUER = "https://as.example"
CLIENT_ID = "agent"
NONCE = "n-0123456789"
NOW = 1_750_000_000.0
SECRET = "fuzz-client-secret-0123456789-abcdefghijklmnop"
RESOURCE = "https://api.example/v1"
NOTIFY = "n" * 43


class Unusable(Exception):
    """An accepted value the SDK could not use."""


# -- generators ----------------------------------------------------------------------------

_DIGITS = ["\u00b2", "\u0663", "\uff13", "\u07c3", "\U0001d7d8", "\u00b9\u00b2"]
_CONTROL = ["\r\n", "\n", "\r", "\x00", "\x1b[2J", "\x7f", "\x85", "\u2028", "\t", "\x0b"]
_SURROGATES = ["\\ud800", "\\udfff", "\\udc80", "\\uDBFF", "\\ud83d\\ude00", "\\ud83d"]


@dataclass
class Gen:
    """Extreme JSON values, as JSON text (bytes), so that NaN, lone surrogates, huge
    numbers and duplicate keys can all be spelt."""

    rng: random.Random

    def chance(self, p: float) -> bool:
        return self.rng.random() < p

    def huge_int(self) -> bytes:
        digits = self.rng.choice([19, 20, 39, 309, 400, 1000, 4000, 4301, 5000])
        sign = b"-" if self.chance(0.3) else b""
        return sign + b"9" * digits

    def number(self) -> bytes:
        r = self.rng.random()
        if r < 0.25:
            return str(self.rng.choice([0, 1, -1, 5, 60, 3600, 2**31, 2**63, 2**64])).encode()
        if r < 0.45:
            return self.huge_int()
        if r < 0.6:
            return self.rng.choice(
                [b"1e308", b"1e309", b"1e400", b"-1e400", b"5.0", b"5.5", b"-0.0", b"1e-400",
                 b"0.1", b"1E5", b"2.5e3", b"9" * 400 + b".5"]
            )  # fmt: skip
        if r < 0.7:
            return self.rng.choice([b"NaN", b"Infinity", b"-Infinity", b"01", b"+1", b"0x10"])
        if r < 0.85:
            return self.rng.choice([b"true", b"false", b"null"])
        return self.string()

    def raw_text(self) -> str:
        r = self.rng.random()
        if r < 0.2:
            return self.rng.choice(["a", "Bearer", "x" * self.rng.choice([1, 10, 100, 5000])])
        if r < 0.35:
            return self.rng.choice(_DIGITS) + self.rng.choice(["", "0", "12"])
        if r < 0.55:
            return "ab" + self.rng.choice(_CONTROL) + "cd"
        if r < 0.65:
            return self.rng.choice(["3600", "0", "-1", "9" * 400, " 5", "5 ", "1e3"])
        if r < 0.75:
            return "".join(chr(self.rng.randrange(0x20, 0x3000)) for _ in range(12))
        if r < 0.85:
            return self.rng.choice(
                ["https://as.example/x", "https://127.0.0.1/", "javascript:alert(1)",
                 "https://api.example/v1/%2e%2e/admin", "http://[::1]:80/", "urn:x"]
            )  # fmt: skip
        return "".join(self.rng.choice("AZaz09-._~+/= ") for _ in range(20))

    def string(self) -> bytes:
        text = json.dumps(self.raw_text(), ensure_ascii=self.chance(0.5)).encode()
        if self.chance(0.25):  # a lone surrogate (or a pair) as a \u escape
            cut = self.rng.randrange(1, len(text))
            text = text[:cut] + self.rng.choice(_SURROGATES).encode() + text[cut:]
            if text.endswith(b'\\"'):
                text = text[:-2] + b'"'
        return text

    def nested(self) -> bytes:
        depth = self.rng.choice([2, 50, 500, 999, 1001, 5000, 20000])
        if self.chance(0.5):
            return b"[" * depth + b"1" + b"]" * depth
        return b'{"a":' * depth + b"1" + b"}" * depth

    def value(self, depth: int = 0) -> bytes:
        r = self.rng.random()
        if r < 0.35:
            return self.number()
        if r < 0.7 or depth > 3:
            return self.string()
        if r < 0.8:
            return self.nested()
        if r < 0.9:
            items = [self.value(depth + 1) for _ in range(self.rng.randrange(0, 4))]
            return b"[" + b",".join(items) + b"]"
        return self.obj({}, depth + 1)

    def obj(self, template: dict[str, Any], depth: int = 0) -> bytes:
        """A JSON object: ``template`` with members replaced, dropped, duplicated or
        added. Template values are plain JSON (encoded with json.dumps)."""
        members: list[tuple[str, bytes]] = []
        # how hard this object is mutated: from one member now and then to most of them,
        # so that both the refusals and the code after a successful parse are reached
        rate = self.rng.choice([0.0, 0.05, 0.15, 0.3, 0.6])
        for key, val in template.items():
            r = self.rng.random()
            if r < rate / 6:
                continue  # dropped
            encoded = self.value(depth) if r < rate else json.dumps(val).encode()
            members.append((key, encoded))
            if self.chance(rate / 10):
                members.append((key, self.value(depth)))  # duplicate key
        for _ in range(self.rng.choice([0, 0, 0, 1, 3])):
            members.append((self.raw_text()[:20], self.value(depth)))
        parts = [json.dumps(k).encode() + b":" + v for k, v in members]
        return b"{" + b",".join(parts) + b"}"

    def body(self, template: dict[str, Any]) -> bytes:
        """A response body: usually a mutated object, sometimes broken bytes."""
        data = self.obj(template)
        r = self.rng.random()
        if r < 0.05:
            return data[: self.rng.randrange(0, len(data) + 1)]  # truncated
        if r < 0.1:
            data = bytearray(data)
            for _ in range(self.rng.randrange(1, 4)):
                data[self.rng.randrange(len(data))] = self.rng.randrange(256)
            return bytes(data)
        if r < 0.13:
            return self.rng.choice(
                [b"", b"[]", b"null", b"\xff\xfe", b"\xed\xa0\x80", b"<html>", self.nested()]
            )  # fmt: skip
        return data

    def status(self, ok: int = 200) -> int:
        return ok if self.chance(0.75) else self.rng.choice([200, 201, 400, 401, 404, 500, 503])

    def header_text(self) -> str:
        return self.raw_text().encode("utf-8", "surrogatepass").decode("latin-1")


# -- checks of what the SDK accepted ------------------------------------------------------------


def _utf8(*values: object) -> None:
    for value in values:
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise Unusable("accepted text that is not valid Unicode") from None


def _use_token(result: TokenResponse) -> None:
    value = result.access_token.get_secret_value()
    access = AccessToken(
        value=result.access_token,
        token_type=result.token_type,
        issuer=ISSUER,
        resource=None,
        scopes=result.scopes or (),
        expires_at=None if result.expires_in is None else NOW + result.expires_in,
        received_at=NOW,
    )
    header = access.authorization_header()
    if not value or any(c in header for c in "\r\n\x00") or not header.isascii():
        raise Unusable("accepted an access token that cannot go into a header")
    httpx2.Headers({"authorization": header})
    _utf8(result.token_type, result.refresh_token, result.id_token, result.scope)


def _use_seconds(*values: object) -> None:
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise Unusable(f"accepted a non-number of seconds ({type(value).__name__})")
        if not math.isfinite(NOW + float(value)):
            raise Unusable("accepted a lifetime that overflows the clock")


# -- targets --------------------------------------------------------------------------------------

Target = Callable[[Gen], Any]


def _response(gen: Gen, template: dict[str, Any], ok: int = 200) -> HttpResponse:
    return HttpResponse(gen.status(ok), {}, gen.body(template))


TOKEN = {"access_token": "at-1", "token_type": "Bearer", "expires_in": 3600,
         "refresh_token": "rt-1", "scope": "a b", "id_token": "a.b.c"}  # fmt: skip
ERROR = {"error": "invalid_grant", "error_description": "bad", "error_uri": "https://x/e"}


def t_json(gen: Gen) -> Any:
    value = parse_json_object(gen.body(TOKEN))
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise Unusable("accepted a document that is not valid Unicode") from None


def t_token(gen: Gen) -> Any:
    template = TOKEN if gen.chance(0.7) else ERROR
    result = token.parse_token_response(_response(gen, template))
    _use_token(result)
    if result.expires_in is not None:
        _use_seconds(result.expires_in)


def t_exchange(gen: Gen) -> Any:
    template = {**TOKEN, "issued_token_type": "urn:ietf:params:oauth:token-type:access_token"}
    _use_token(parse_token_exchange_response(_response(gen, template)))


def t_device(gen: Gen) -> Any:
    template = {"device_code": "dc", "user_code": "WDJB-MJHT", "expires_in": 600,
                "verification_uri": "https://as.example/device", "interval": 5}  # fmt: skip
    result = device.parse_device_authorization(_response(gen, template))
    _use_seconds(result.expires_in, result.interval)
    _utf8(result.user_code, result.verification_uri, result.device_code)
    poller = device.DevicePoller.start(result, now=NOW)
    poller.next_wait(NOW)


def t_ciba(gen: Gen) -> Any:
    template = {"auth_req_id": "req-1", "expires_in": 120, "interval": 5}
    result = ciba.parse_backchannel_response(_response(gen, template))
    _use_seconds(result.expires_in, result.interval)
    ciba.CibaPoller.start(result, now=NOW).next_wait(NOW)


def t_ciba_poll(gen: Gen) -> Any:
    poller = ciba.CibaPoller(interval=5.0, deadline=NOW + 60, ready_at=NOW)
    template = ERROR if gen.chance(0.6) else TOKEN
    outcome = poller.handle(_response(gen, template, ok=400), now=NOW)
    if outcome != "pending":
        _use_token(outcome)


def t_par(gen: Gen) -> Any:
    uri, expires_in = authorize.parse_par_response(
        _response(
            gen, {"request_uri": "urn:ietf:params:oauth:request_uri:x", "expires_in": 60}, ok=201
        )
    )
    _use_seconds(expires_in)
    _utf8(uri)


def t_registration(gen: Gen) -> Any:
    template = {"client_id": "c1", "client_secret": "s", "client_secret_expires_at": 0,
                "token_endpoint_auth_method": "client_secret_basic",
                "redirect_uris": ["http://127.0.0.1:1/cb"]}  # fmt: skip
    result = registration.parse_registration(_response(gen, template, ok=201), issuer=ISSUER)
    result.expired(NOW)
    registration.ClientRegistration.from_bytes(result.to_bytes())
    _utf8(result.client_id, result.client_secret)


def t_revocation(gen: Gen) -> Any:
    revocation.parse_revocation_response(_response(gen, ERROR, ok=200))


METADATA = {
    "issuer": ISSUER, "authorization_endpoint": f"{ISSUER}/authorize",
    "token_endpoint": f"{ISSUER}/token", "jwks_uri": f"{ISSUER}/jwks",
    "code_challenge_methods_supported": ["S256"], "scopes_supported": ["openid"],
    "authorization_response_iss_parameter_supported": True,
    "backchannel_token_delivery_modes_supported": ["poll", "ping"],
}  # fmt: skip


def t_metadata(gen: Gen) -> Any:
    result = parse_metadata(_response(gen, METADATA), issuer=ISSUER)
    if result is not None:
        json.dumps(result.model_dump(mode="json")).encode("utf-8")


def t_resource_metadata(gen: Gen) -> Any:
    template = {"resource": RESOURCE, "authorization_servers": [ISSUER],
                "scopes_supported": ["read"], "resource_name": "API"}  # fmt: skip
    result = parse_resource_metadata(_response(gen, template), resource=RESOURCE)
    if result is not None:
        _utf8(result.resource, *result.authorization_servers, result.resource_name)


def t_www_authenticate(gen: Gen) -> Any:
    parts = []
    for _ in range(gen.rng.randrange(1, 4)):
        name = gen.rng.choice(["error", "scope", "max_age", "acr_values", "resource_metadata",
                               "realm", gen.header_text()[:8]])  # fmt: skip
        value = gen.header_text()
        parts.append(f'{name}="{value}"' if gen.chance(0.5) else f"{name}={value}")
    header = f"{gen.rng.choice(['Bearer', 'DPoP', 'Basic', ''])} " + ", ".join(parts)
    if gen.chance(0.1):
        header = header[: gen.rng.randrange(len(header) + 1)]
    for challenge in parse_www_authenticate(header):
        max_age = challenge.max_age
        if max_age is not None:
            _use_seconds(max_age)
        _ = challenge.scopes, challenge.error
        _utf8(*challenge.params.values())


def _pending() -> authorize.PendingAuthorizations:
    flows = authorize.PendingAuthorizations()
    flows.add(
        authorize.PendingAuthorization(
            issuer=ISSUER, client_id=CLIENT_ID, redirect_uri="http://127.0.0.1:1/cb",
            state="S", nonce=None, code_verifier=SecretStr("v" * 43), scopes=(),
            resources=(), iss_parameter_supported=True, token_endpoint=f"{ISSUER}/token",
            created_at=0.0, expires_at=1e9,
        ),
        now=0.0,
    )  # fmt: skip
    return flows


def t_callback(gen: Gen) -> Any:
    pairs = {"state": "S", "iss": ISSUER, "code": "c-1"}
    if gen.chance(0.4):
        pairs = {"state": "S", "iss": ISSUER, "error": "access_denied",
                 "error_description": "no"}  # fmt: skip
    text = "&".join(f"{k}={gen.raw_text() if gen.chance(0.4) else v}" for k, v in pairs.items()) + (
        "&state=T" if gen.chance(0.05) else ""
    )
    text = gen.rng.choice(["", "?", "http://127.0.0.1:1/cb?", "/cb?", "http://[::1/?"]) + text
    callback = authorize.parse_callback(text)
    _, code = authorize.validate_callback(callback, _pending(), now=1.0)
    _utf8(code)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


_JWKS = parse_jwks(
    {"keys": [{"kty": "EC", "crv": "P-256", "kid": "k1", "use": "sig",
               "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
               "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}
)  # fmt: skip


def t_id_token(gen: Gen) -> Any:
    header = gen.obj({"alg": "HS256", "typ": "JWT"}) if gen.chance(0.3) else b'{"alg":"HS256"}'
    claims = gen.obj({"iss": ISSUER, "sub": "u1", "aud": CLIENT_ID, "exp": int(NOW) + 300,
                      "iat": int(NOW), "nbf": int(NOW), "auth_time": int(NOW),
                      "nonce": NONCE, "azp": CLIENT_ID, "amr": ["pwd"], "acr": "1"})  # fmt: skip
    signing_input = f"{_b64(header)}.{_b64(claims)}"
    signature = hmac.new(SECRET.encode(), signing_input.encode(), hashlib.sha256).digest()
    jwt = f"{signing_input}.{_b64(signature)}"
    if gen.chance(0.05):
        jwt = jwt[: gen.rng.randrange(len(jwt) + 1)]
    result = validate_id_token(
        jwt, jwks=_JWKS, issuer=ISSUER, client_id=CLIENT_ID, nonce=NONCE, now=NOW,
        algorithms=(*DEFAULT_ALGORITHMS, "HS256"), client_secret=SecretStr(SECRET),
        max_age=600 if gen.chance(0.5) else None,
    )  # fmt: skip
    _use_seconds(result.exp, result.iat)
    _utf8(result.sub, result.iss, result.nonce, result.acr, result.azp, *result.aud)


def t_peek(gen: Gen) -> Any:
    token = (
        f"{_b64(gen.obj({'alg': 'RS256'}))}.{_b64(gen.body({'sub': 'x', 'act': {'sub': 'a'}}))}.x"
    )
    peek_claims(token)


def t_jwks(gen: Gen) -> Any:
    key = {"kty": "EC", "crv": "P-256", "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
           "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0", "kid": "k1"}  # fmt: skip
    body = gen.body({"keys": [key]})
    if gen.chance(0.5):
        body = b'{"keys":[' + gen.obj(key) + b"]}"
    parse_jwks(body)


def t_retry_after(gen: Gen) -> Any:
    value = gen.rng.choice(
        [gen.raw_text(), gen.header_text(), "Thu, 01 Jan 2026 12:00:30 GMT",
         "Thu, 01 Jan 99999 12:00:30 GMT", "Mon, 32 Feb 2026 25:61:61 GMT", "9" * 5000,
         "Thu, 01 Jan 0001 00:00:00 GMT", "Fri, 31 Dec 9999 23:59:59 GMT"]
    )  # fmt: skip
    delay = parse_retry_after(value)
    if delay is not None and not (math.isfinite(delay) and delay >= 0):
        raise Unusable("Retry-After gave a delay that is not a finite number of seconds")


def t_audit_line(gen: Gen) -> Any:
    line, _digest = make_record({"kind": "tool.succeeded", "n": 1}, seq=0, prev_hash=GENESIS)
    raw = line[:-1]
    r = gen.rng.random()
    if r < 0.3:
        raw = raw.replace(b'"n":1', b'"n":' + gen.value())
    elif r < 0.5:
        raw = gen.body({"event": {"kind": "x"}, "hash": "a" * 64, "prev_hash": GENESIS,
                        "seq": 0, "v": 1})  # fmt: skip
    elif r < 0.6:
        raw = gen.nested()
    elif r < 0.8:
        data = bytearray(raw)
        data[gen.rng.randrange(len(data))] = gen.rng.randrange(256)
        raw = bytes(data)
    with contextlib.suppress(_Broken):
        _check_line(raw, 0, GENESIS, True)


def t_token_target(gen: Gen) -> Any:
    segments = ["v1", "..", ".", "%2e%2e", "%2E.", "..%2f", "%2f", "%5c", "..;", "%252e",
                "a", "%zz", "%", "%7e", "~", "admin", "v1%2f..", gen.raw_text()[:6]]  # fmt: skip
    path = "/" + "/".join(gen.rng.choice(segments) for _ in range(gen.rng.randrange(0, 5)))
    try:
        url = httpx2.URL(f"https://api.example{path}")
    except Exception:
        return
    require_token_target(url, RESOURCE)
    registration.check_client_id_url(f"https://app.example{path}")
    canonical_resource_uri(f"https://api.example{path}")
    check_endpoint_url(f"https://api.example{path}")


def _odd_argument(gen: Gen) -> Any:
    r = gen.rng.random()
    if r < 0.2:
        return "\ud800" + gen.raw_text()
    if r < 0.3:
        return 10 ** gen.rng.choice([10, 400, 5000])
    if r < 0.4:
        return gen.rng.choice([float("nan"), float("inf"), 1e308])
    if r < 0.5:
        loop: dict[str, Any] = {}
        loop["loop"] = loop
        return loop
    if r < 0.6:
        value: Any = 1
        for _ in range(gen.rng.choice([10, 100, 2000])):
            value = [value]
        return value
    if r < 0.7:
        return {gen.rng.choice([1, (2, 3), None, "\udc80"]): gen.raw_text()}
    return json.loads(json.dumps(gen.raw_text()))


def t_tool_arguments(gen: Gen) -> Any:
    arguments = {gen.raw_text()[:10]: _odd_argument(gen) for _ in range(gen.rng.randrange(1, 3))}
    arguments_hash(arguments)
    event = AuditEvent.for_tool_call(
        "tool.succeeded", tool="t", arguments=arguments, include_arguments=True, outcome="ok"
    )
    json.dumps(event.to_json_dict(), ensure_ascii=False).encode("utf-8")
    Action("pay", arguments)  # ConfigurationError for arguments JSON cannot hold


@dataclass
class _Stream:
    """An in-memory stand-in for a socket stream (what ``_serve_one`` reads and writes)."""

    data: bytes
    sent: bytearray = field(default_factory=bytearray)

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if not self.data:
            raise anyio.EndOfStream
        chunk, self.data = self.data[:max_bytes], self.data[max_bytes:]
        return chunk

    async def send(self, item: bytes) -> None:
        self.sent += item


def _ping_request(gen: Gen) -> bytes:
    body = gen.body({"auth_req_id": "req-1"})
    headers = [b"Host: 127.0.0.1"]
    length = str(len(body)).encode()
    r = gen.rng.random()
    if r < 0.2:
        length = gen.rng.choice([b"9" * 5000, b"-1", "\u00b2".encode("latin-1"), b"1e3", b" 5",
                                 b"0" * 300 + b"5", gen.huge_int()])  # fmt: skip
    headers.append(b"Content-Length: " + length)
    bearer = NOTIFY if gen.chance(0.6) else gen.header_text()
    headers.append(b"Authorization: Bearer " + bearer.encode("latin-1", "replace"))
    if gen.chance(0.15):
        headers.append(gen.header_text().encode("latin-1", "replace"))
    if gen.chance(0.05):
        headers.append(b"Transfer-Encoding: chunked")
    method = gen.rng.choice([b"POST"] * 8 + [b"GET", b"\x00", b"POST POST"])
    path = gen.rng.choice([b"/ciba/notify"] * 8 + [b"/", b"/ciba/notify?x=\xff", b""])
    head = method + b" " + path + b" HTTP/1.1\r\n" + b"\r\n".join(headers) + b"\r\n\r\n"
    data = head + body
    if gen.chance(0.1):
        data = data[: gen.rng.randrange(len(data) + 1)]
    return data


# -- the run --------------------------------------------------------------------------------------

SYNC_TARGETS: dict[str, Target] = {
    "json": t_json,
    "token": t_token,
    "exchange": t_exchange,
    "device": t_device,
    "ciba": t_ciba,
    "ciba-poll": t_ciba_poll,
    "par": t_par,
    "registration": t_registration,
    "revocation": t_revocation,
    "metadata": t_metadata,
    "resource-metadata": t_resource_metadata,
    "www-authenticate": t_www_authenticate,
    "callback": t_callback,
    "id-token": t_id_token,
    "jwt-peek": t_peek,
    "jwks": t_jwks,
    "retry-after": t_retry_after,
    "audit-line": t_audit_line,
    "token-target": t_token_target,
    "tool-arguments": t_tool_arguments,
}
ASYNC_TARGETS = ("ping-receiver",)
ALL_TARGETS = (*SYNC_TARGETS, *ASYNC_TARGETS)


@dataclass
class Tally:
    inputs: Counter[str] = field(default_factory=Counter)
    accepted: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)
    kinds: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    max_examples: int = 5

    def failed(self, target: str, exc: BaseException, detail: str) -> None:
        self.failures[target] += 1
        self.kinds[f"{target}: {type(exc).__name__}"] += 1
        if len(self.examples) < self.max_examples:
            frame = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
            where = f" at {frame[0].filename.rsplit('/', 2)[-1]}:{frame[0].lineno}" if frame else ""
            message = str(exc).encode("utf-8", "backslashreplace").decode()[:160]
            self.examples.append(
                f"[{target}] {type(exc).__name__}{where}: {message}\n    input: {detail[:300]}"
            )


def _check_typed(exc: AgentIdentityError) -> None:
    str(exc).encode("utf-8")  # a message that cannot be printed is a failure too
    repr(exc).encode("utf-8")


def run_sync(name: str, target: Target, gen: Gen, tally: Tally) -> None:
    state = gen.rng.getstate()
    tally.inputs[name] += 1
    try:
        target(gen)
        tally.accepted[name] += 1
    except AgentIdentityError as exc:
        try:
            _check_typed(exc)
        except Exception as bad:
            tally.failed(name, bad, f"seed state of input #{tally.inputs[name]}")
    except RecursionError as exc:  # never from the fuzzer's own code (it does not recurse)
        tally.failed(name, exc, "(deep nesting)")
    except Exception as exc:
        replay = random.Random()
        replay.setstate(state)
        tally.failed(name, exc, _describe(name, replay))


def _describe(name: str, rng: random.Random) -> str:
    """Re-generate the input (same random state) to show it."""
    captured: list[str] = []

    class Recorder(Gen):
        def body(self, template: dict[str, Any]) -> bytes:
            data = super().body(template)
            captured.append(repr(data[:200]))
            return data

        def header_text(self) -> str:
            text = super().header_text()
            captured.append(repr(text[:100]))
            return text

        def raw_text(self) -> str:
            text = super().raw_text()
            captured.append(repr(text[:100]))
            return text

    with contextlib.suppress(BaseException):
        SYNC_TARGETS[name](Recorder(rng))
    return "; ".join(captured) or "(see the target's generator)"


async def run_ping(gen: Gen, tally: Tally, count: int) -> None:
    receiver = PingReceiver()
    with receiver.expecting("req-1", SecretStr(NOTIFY)):
        for _ in range(count):
            data = _ping_request(gen)
            tally.inputs["ping-receiver"] += 1
            stream = _Stream(data)
            try:
                await ping_module._serve_one(stream, receiver, "/ciba/notify", 4096)  # type: ignore[arg-type]
                if stream.sent and not stream.sent.startswith(b"HTTP/1.1 "):
                    raise Unusable("the receiver answered something that is not HTTP")
                if stream.sent[9:10] == b"3":
                    raise Unusable("the receiver answered with a redirect")
                if stream.sent.startswith(b"HTTP/1.1 204 "):
                    tally.accepted["ping-receiver"] += 1
            except AgentIdentityError:
                pass
            except Exception as exc:
                tally.failed("ping-receiver", exc, repr(data[:300]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--inputs", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--examples", type=int, default=5)
    parser.add_argument("--only", help="comma-separated targets: " + ", ".join(ALL_TARGETS))
    args = parser.parse_args(argv)
    chosen = args.only.split(",") if args.only else list(ALL_TARGETS)
    unknown = sorted(set(chosen) - set(ALL_TARGETS))
    if unknown:
        parser.error(f"unknown targets: {', '.join(unknown)}")
    gen = Gen(random.Random(args.seed))
    tally = Tally(max_examples=args.examples)
    sync = [(name, SYNC_TARGETS[name]) for name in chosen if name in SYNC_TARGETS]
    per_target = args.inputs // len(chosen)
    remainder = args.inputs - per_target * len(chosen)
    ping_count = per_target if "ping-receiver" in chosen else 0
    sync_count = args.inputs - ping_count
    started = time.perf_counter()
    print(f"fuzzing {len(chosen)} targets with {args.inputs:,} inputs (seed {args.seed})")
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 1000))
    for index in range(sync_count):
        name, target = sync[index % len(sync)]
        run_sync(name, target, gen, tally)
        if index and index % 100_000 == 0:
            rate = index / (time.perf_counter() - started)
            print(f"  {index:>9,} inputs, {sum(tally.failures.values())} failures, {rate:,.0f}/s")
    if ping_count:
        anyio.run(run_ping, gen, tally, ping_count)
    elapsed = time.perf_counter() - started
    total = sum(tally.inputs.values())
    failures = sum(tally.failures.values())
    del remainder
    print()
    print(f"{'target':<20}{'inputs':>12}{'accepted':>10}{'untyped':>10}")
    for name in chosen:
        print(
            f"{name:<20}{tally.inputs[name]:>12,}{tally.accepted[name]:>10,}"
            f"{tally.failures[name]:>10,}"
        )
    print()
    print(f"inputs:                 {total:,}")
    print(f"untyped exceptions:     {failures:,} (and accepted values the SDK cannot use)")
    print(f"time:                   {elapsed:,.1f} s ({total / elapsed:,.0f} inputs/s)")
    if failures:
        print()
        for kind, count in tally.kinds.most_common():
            print(f"  {count:>8,}  {kind}")
        print("\nfirst examples:")
        for example in tally.examples:
            print(f"  {example}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
