"""Security item 40: no secret in logs, exception messages or ``repr``.

Every flow of the identity client runs against a fake authorization server (httpx2
MockTransport) that issues CANARY values: access tokens ``CANARY-AT-...``, refresh tokens
``CANARY-RT-...``, authorization codes ``CANARY-CODE-...``, device codes ``CANARY-DC-...``
and real signed ID tokens (each JWT string is a canary as a whole). The client holds a
client secret ``CANARY-CS-...`` or a private key whose ``d`` is ``CANARY-PK-...``. Secrets
the client makes itself (the PKCE verifier, client assertions, the Basic credentials) are
captured from the requests the fake server receives and searched for too.

Failure paths are included: ``invalid_grant`` with an ``error_description``, state and
``iss`` mismatches, denied consent, timeouts, resets, garbage and truncated bodies that
themselves carry canaries, bad ID tokens, revocation failures.

Searched: every log record of every logger at DEBUG (message, arguments, attached
exceptions), stdout/stderr and any console output, the pages the loopback listener shows,
``str``/``repr``/``args`` of every exception raised and of its chained causes and
contexts (plus the attributes of the SDK's own errors), and ``str``/``repr`` of every
object handed back (IdentityClient, UserIdentity, Grant, AccessToken, TokenResponse,
DeviceAuthorization, the consent flow object, metadata, client authentication).
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import secrets
import time
import traceback
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import anyio
import httpx2
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from joserfc import jwt
from joserfc.jwk import ECKey
from pydantic import BaseModel

from agent_identity import IdentityClient, UserIdentity
from agent_identity.consent import (
    ConsentFlow,
    ConsoleConsent,
    DeviceCodeConsent,
    LoopbackConsent,
)
from agent_identity.errors import (
    AgentIdentityError,
    AuthorizationResponseError,
    ConfigurationError,
    ConsentDenied,
    ConsentTimeout,
    InvalidClient,
    InvalidGrant,
    InvalidRequest,
    InvalidResponse,
    InvalidTokenError,
    IssuerMismatch,
    ReauthorizationRequired,
    RequestTimeout,
    StateMismatch,
    TemporarilyUnavailable,
    TransportError,
)
from agent_identity.models import DeviceAuthorization

pytestmark = pytest.mark.anyio

ISSUER = "https://as.example"
CLIENT_ID = "agent-canary"
CALENDAR = "https://calendar.example/api"
REDIRECT_URI = "http://127.0.0.1:53682/callback"

#: Request members that carry a secret, by the kind of secret.
_SECRET_FIELDS = {
    "code": "code",
    "code_verifier": "verifier",
    "refresh_token": "refresh-token",
    "device_code": "device-code",
    "client_secret": "client-secret",
    "client_assertion": "client-assertion",
    "token": "revoked-token",
}

Fault = Exception | httpx2.Response | Callable[[httpx2.Request], Awaitable[httpx2.Response]]


def metadata(**overrides: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "issuer": ISSUER,
        "authorization_endpoint": f"{ISSUER}/authorize",
        "token_endpoint": f"{ISSUER}/token",
        "revocation_endpoint": f"{ISSUER}/revoke",
        "device_authorization_endpoint": f"{ISSUER}/device",
        "jwks_uri": f"{ISSUER}/jwks",
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
        "authorization_response_iss_parameter_supported": True,
        "scopes_supported": ["openid", "offline_access", "calendar.read", "calendar.write"],
        "token_endpoint_auth_methods_supported": [
            "client_secret_basic",
            "client_secret_post",
            "private_key_jwt",
        ],
        "id_token_signing_alg_values_supported": ["ES256"],
    }
    document.update(overrides)
    return document


def _b64(number: int) -> str:
    return base64.urlsafe_b64encode(number.to_bytes(32, "big")).rstrip(b"=").decode("ascii")


def canary_private_jwk() -> dict[str, str]:
    """A P-256 private JWK whose ``d`` member reads ``CANARY-PK-...``."""
    order = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
    while True:
        # 43 base64url characters; the last one ("A") keeps the encoding canonical
        d_text = "CANARY-PK-" + secrets.token_urlsafe(32)[:32] + "A"
        d = int.from_bytes(base64.urlsafe_b64decode(d_text + "="), "big")
        if 0 < d < order:
            break
    public = ec.derive_private_key(d, ec.SECP256R1()).public_key().public_numbers()
    assert _b64(d) == d_text
    return {
        "kty": "EC",
        "crv": "P-256",
        "x": _b64(public.x),
        "y": _b64(public.y),
        "d": d_text,
        "kid": "canary-client-key",
    }


def s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


@dataclass
class Seen:
    method: str
    path: str
    form: dict[str, str]


@dataclass
class CanaryAS:
    """A fake authorization server that only ever issues canaries."""

    document: dict[str, Any] = field(default_factory=metadata)
    signing_key: ECKey = field(default_factory=lambda: ECKey.generate_key("P-256"))
    #: ``(kind, value)`` of every secret in play.
    secrets: list[tuple[str, str]] = field(default_factory=list)
    kinds_on_wire: set[str] = field(default_factory=set)
    requests: list[Seen] = field(default_factory=list)
    codes: dict[str, dict[str, str]] = field(default_factory=dict)
    pushed: dict[str, dict[str, str]] = field(default_factory=dict)
    devices: dict[str, str] = field(default_factory=dict)  # device code -> scope
    device_script: list[str] = field(default_factory=lambda: ["ok"])
    code_answers: list[Fault] = field(default_factory=list)
    refresh_answers: list[Fault] = field(default_factory=list)
    client_credentials_answers: list[Fault] = field(default_factory=list)
    revocation_answers: list[Fault] = field(default_factory=list)
    id_token_overrides: dict[str, Any] = field(default_factory=dict)
    foreign_key: ECKey | None = None
    live_refresh_tokens: set[str] = field(default_factory=set)
    #: DPoP (RFC 9449): tokens asked for with a proof are DPoP-bound; the calendar API
    #: asks for a nonce once.
    resource_nonce_sent: bool = False

    def new(self, kind: str) -> str:
        value = f"CANARY-{kind}-{secrets.token_hex(12)}"
        self.secrets.append((kind, value))
        return value

    def remember(self, kind: str, value: str) -> None:
        if value and (kind, value) not in self.secrets:
            self.secrets.append((kind, value))

    # -- the browser side --------------------------------------------------------------

    def authorize(self, url: str) -> dict[str, str]:
        """Issue a code for an authorization URL; return the callback parameters."""
        params = dict(parse_qsl(urlsplit(url).query))
        self.requests.append(Seen("GET", "/authorize", params))
        if "request_uri" in params:
            params = self.pushed.pop(params["request_uri"])
        code = self.new("CODE")
        self.codes[code] = params
        return {"code": code, "state": params["state"], "iss": ISSUER}

    # -- the HTTP side ----------------------------------------------------------------

    async def __call__(self, request: httpx2.Request) -> httpx2.Response:
        form = dict(parse_qsl(request.content.decode("ascii"))) if request.content else {}
        self._observe(request, form)
        path = request.url.path
        if request.url.host == "calendar.example":
            return self._calendar(request)
        if path == "/token" and "dpop" in request.headers:
            answer = await self._token(request, form)
            body = answer.json() if answer.status_code == 200 else None
            if body is not None and "access_token" in body:
                return httpx2.Response(200, json={**body, "token_type": "DPoP"})
            return answer
        self.requests.append(Seen(request.method, path, form))
        if path == "/.well-known/oauth-authorization-server":
            return httpx2.Response(200, json=self.document)
        if path == "/jwks":
            public = dict(self.signing_key.as_dict(private=False))
            return httpx2.Response(200, json={"keys": [{**public, "kid": "as-key", "use": "sig"}]})
        if path == "/par":
            request_uri = f"urn:ietf:params:oauth:request_uri:{secrets.token_urlsafe(16)}"
            self.pushed[request_uri] = form
            return httpx2.Response(201, json={"request_uri": request_uri, "expires_in": 60})
        if path == "/device":
            device_code = self.new("DC")
            self.devices[device_code] = form.get("scope", "")
            return httpx2.Response(
                200,
                json={
                    "device_code": device_code,
                    "user_code": "WDJB-MJHT",
                    "verification_uri": f"{ISSUER}/activate",
                    "verification_uri_complete": f"{ISSUER}/activate?user_code=WDJB-MJHT",
                    "expires_in": 600,
                    "interval": 1,
                },
            )
        if path == "/token":
            return await self._token(request, form)
        if path == "/revoke":
            if self.revocation_answers:
                return await self._fault(self.revocation_answers.pop(0), request)
            return httpx2.Response(200, content=b"revoked")
        return httpx2.Response(404)

    def _observe(self, request: httpx2.Request, form: dict[str, str]) -> None:
        for name, kind in _SECRET_FIELDS.items():
            if name in form:
                self.remember(kind, form[name])
                self.kinds_on_wire.add(kind)
        authorization = request.headers.get("authorization")
        if authorization is not None:
            scheme, _, credentials = authorization.partition(" ")
            self.remember(f"{scheme.lower()}-credentials", credentials)
            if scheme.lower() == "basic":
                decoded = base64.b64decode(credentials).decode()
                assert decoded.startswith(f"{CLIENT_ID}:CANARY-CS-")
                self.kinds_on_wire.add("client-secret")

    def _calendar(self, request: httpx2.Request) -> httpx2.Response:
        """The calendar API: asks once for a DPoP nonce (RFC 9449 §9), then answers 200."""
        self.requests.append(Seen(request.method, request.url.path, {}))
        if "dpop" in request.headers and not self.resource_nonce_sent:
            self.resource_nonce_sent = True
            return httpx2.Response(
                401,
                headers={
                    "WWW-Authenticate": 'DPoP error="use_dpop_nonce"',
                    "DPoP-Nonce": "resource-nonce-1",
                },
            )
        return httpx2.Response(200, json={"events": []})

    async def _fault(self, fault: Fault, request: httpx2.Request) -> httpx2.Response:
        if isinstance(fault, Exception):
            raise fault
        if isinstance(fault, httpx2.Response):
            return fault
        return await fault(request)

    async def _token(self, request: httpx2.Request, form: dict[str, str]) -> httpx2.Response:
        grant_type = form.get("grant_type", "")
        if grant_type == "authorization_code":
            if self.code_answers:
                return await self._fault(self.code_answers.pop(0), request)
            params = self.codes.pop(form.get("code", ""), None)
            if params is None or params["code_challenge"] != s256(form["code_verifier"]):
                return httpx2.Response(400, json={"error": "invalid_grant"})
            return self._issue(params.get("scope", ""), nonce=params.get("nonce"), refresh=True)
        if grant_type == "refresh_token":
            if self.refresh_answers:
                return await self._fault(self.refresh_answers.pop(0), request)
            if form.get("refresh_token") not in self.live_refresh_tokens:
                return httpx2.Response(400, json={"error": "invalid_grant"})
            self.live_refresh_tokens.discard(form["refresh_token"])
            return self._issue(form.get("scope", ""), nonce=None, refresh=True, id_token=False)
        if grant_type == "client_credentials":
            if self.client_credentials_answers:
                return await self._fault(self.client_credentials_answers.pop(0), request)
            return self._issue(form.get("scope", ""), nonce=None, refresh=False)
        if grant_type == "urn:ietf:params:oauth:grant-type:device_code":
            scope = self.devices[form["device_code"]]
            step = self.device_script.pop(0)
            if step != "ok":
                return httpx2.Response(400, json={"error": step})
            return self._issue(scope, nonce=None, refresh=True)
        return httpx2.Response(400, json={"error": "unsupported_grant_type"})

    def id_token(self, *, nonce: str | None) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "sub": "alice",
            "aud": CLIENT_ID,
            "iat": now,
            "exp": now + 300,
            "auth_time": now,
        }
        if nonce is not None:
            claims["nonce"] = nonce
        claims.update(self.id_token_overrides)
        key = self.foreign_key or self.signing_key
        token = jwt.encode({"alg": "ES256", "kid": "as-key"}, claims, key)
        self.remember("id-token", token)
        self.remember("id-token-signature", token.rsplit(".", 1)[1])
        return token

    def _issue(
        self, scope: str, *, nonce: str | None, refresh: bool, id_token: bool = True
    ) -> httpx2.Response:
        body: dict[str, Any] = {
            "access_token": self.new("AT"),
            "token_type": "Bearer",
            "expires_in": 3600,
        }
        if scope:
            body["scope"] = scope
        if refresh:
            body["refresh_token"] = self.new("RT")
            self.live_refresh_tokens.add(body["refresh_token"])
        if id_token and "openid" in scope.split():
            body["id_token"] = self.id_token(nonce=nonce)
        return httpx2.Response(200, json=body)

    def to(self, path: str) -> list[Seen]:
        return [seen for seen in self.requests if seen.path == path]


# --- faults that carry canaries of their own ---------------------------------------------------


async def _hang(request: httpx2.Request) -> httpx2.Response:
    await anyio.sleep(30)
    raise AssertionError("the client should have given up")


async def _echo_request_as_html(request: httpx2.Request) -> httpx2.Response:
    """A broken server that echoes the request (with its secrets) in an error page."""
    page = b"<html><pre>" + request.content + b"\n" + str(request.headers).encode() + b"</pre>"
    return httpx2.Response(500, content=page)


def garbage_answers(server: CanaryAS) -> list[tuple[Fault, type[Exception]]]:
    """Bodies that must be refused without echoing the secrets inside them."""
    at, rt = server.new("AT"), server.new("RT")
    id_token = server.id_token(nonce=None)
    return [
        (httpx2.ReadTimeout("read timed out"), RequestTimeout),
        (httpx2.ReadError("[Errno 104] Connection reset by peer"), TransportError),
        (_hang, RequestTimeout),
        (
            httpx2.Response(
                200, content=f'{{"access_token": "{at}", "refresh_token": "{rt}'.encode()
            ),
            InvalidResponse,
        ),
        (
            httpx2.Response(
                200,
                content=(
                    f'{{"access_token": "{at}", "access_token": "{at}x", '
                    f'"token_type": "Bearer", "refresh_token": "{rt}"}}'
                ).encode(),
            ),
            InvalidResponse,
        ),
        (
            httpx2.Response(
                200,
                json={
                    "access_token": at,
                    "token_type": ["Bearer", rt],
                    "refresh_token": {"value": rt},
                    "expires_in": rt,
                    "id_token": [id_token],
                },
            ),
            InvalidResponse,
        ),
        (httpx2.Response(200, json={"access_token": "", "token_type": at}), InvalidResponse),
        (httpx2.Response(200, content=f"[{at!r}, {rt!r}]".encode()), InvalidResponse),
        (httpx2.Response(200, content=b"\xff\xfe" + at.encode()), InvalidResponse),
        (_echo_request_as_html, InvalidResponse),
    ]


# --- the environment a flow runs in ----------------------------------------------------------


@dataclass
class CanaryConsent:
    """Plays the browser; ``tamper`` rewrites the callback query."""

    server: CanaryAS = field(repr=False)
    tamper: Callable[[dict[str, str]], str] | None = None
    flows: list[ConsentFlow] = field(default_factory=list)

    async def obtain_consent(self, flow: ConsentFlow) -> None:
        self.flows.append(flow)
        url = await flow.authorization_url(REDIRECT_URI)
        self.capture_verifier(flow)
        callback = self.server.authorize(url)
        query = self.tamper(callback) if self.tamper is not None else urlencode(callback)
        await flow.complete(f"{REDIRECT_URI}?{query}")

    def capture_verifier(self, flow: ConsentFlow) -> None:
        # The verifier of a flow rejected before the token request never reaches the
        # server; read it from the flow's private state so it is searched for too.
        pending = getattr(flow, "_pending", None)
        if pending is not None:
            self.server.remember("verifier", pending.code_verifier.get_secret_value())


@dataclass
class Env:
    server: CanaryAS
    identity: IdentityClient
    consent: CanaryConsent
    monkeypatch: pytest.MonkeyPatch
    objects: list[object] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)

    def keep(self, *objects: object) -> None:
        self.objects.extend(objects)

    async def expect(self, expected: type[BaseException], call: Awaitable[object]) -> None:
        with pytest.raises(expected) as info:
            await call
        assert type(info.value) is expected, repr(info.value)
        self.errors.append(info.value)

    def user(self) -> UserIdentity:
        user = self.identity.user("alice", tenant="acme")
        self.keep(user)
        return user

    def keep_client_state(self) -> None:
        identity = self.identity
        self.keep(
            identity,
            identity.metadata,
            identity.client_auth,
            identity._driver,
            identity.vault,
            *(identity.vault.peek(u.key) for u in identity._users.values()),
            identity.consent_handler,
        )
        for flow in self.consent.flows:
            self.keep(flow, getattr(flow, "result", None), getattr(flow, "_pending", None))

    def no_device_waits(self) -> None:
        real_sleep = anyio.sleep

        async def no_wait(seconds: float) -> None:
            await real_sleep(0)

        self.monkeypatch.setattr(anyio, "sleep", no_wait)


# --- the flows ----------------------------------------------------------------------------------


async def authorization_code_flow(env: Env) -> None:
    """Consent with PKCE + ID token, two narrowed refreshes with rotation, client
    credentials, revocation of an access token, disconnect."""
    identity = env.identity
    user = env.user()
    grant = await user.consent(
        scopes=["openid", "calendar.read", "calendar.write"], resource=CALENDAR
    )
    assert grant.subject == "alice"  # the ID token was validated
    read = await user.token(resource=CALENDAR, scopes=["calendar.read"])
    write = await user.token(resource=CALENDAR, scopes=["calendar.write"])
    own = await identity.client_credentials(scopes=["calendar.read"], resource=CALENDAR)
    again = await identity.client_credentials(
        scopes=["calendar.read"], resource=CALENDAR, refresh=True
    )
    env.keep(grant, read, write, own, again, (await user.grant()), read.authorization_header)
    env.keep_client_state()
    await identity.revoke(read.value, token_type_hint="access_token")
    await user.disconnect()
    assert (await user.grant()) is None


async def dpop_flow(env: Env) -> None:
    """DPoP (RFC 9449): consent with PAR and dpop_jkt, a resource request with a proof
    and a nonce retry, a refresh, client credentials, a refused bearer use of a bound
    token. The grant's private key is a secret too."""
    identity = env.identity
    user = env.user()
    grant = await user.consent(scopes=["openid", "calendar.read"], resource=CALENDAR)
    current = await identity.vault.load(user.key, fresh=True)
    assert current is not None
    assert current.record.dpop_key is not None
    env.server.remember("dpop-private-key", current.record.dpop_key["jwk"]["d"])
    token = await user.token(resource=CALENDAR, scopes=["calendar.read"])
    assert token.token_type == "DPoP"
    auth = user.http_auth(resource=CALENDAR, scopes="calendar.read")
    async with httpx2.AsyncClient(transport=httpx2.MockTransport(env.server), auth=auth) as http:
        assert (await http.get(f"{CALENDAR}/events")).status_code == 200
    refreshed = await user.refresh_after_rejection(token)
    own = await identity.client_credentials(scopes=["calendar.read"], resource=CALENDAR)
    with pytest.raises(ConfigurationError) as refused:
        token.authorization_header()
    env.errors.append(refused.value)
    headers = await refreshed.request_headers("GET", f"{CALENDAR}/events")
    env.keep(grant, token, refreshed, own, token.dpop, token.dpop.key if token.dpop else None)
    env.keep(current.record, auth)
    env.texts.append(repr(sorted(headers)))
    env.keep_client_state()
    await user.disconnect()


async def device_flow(env: Env) -> None:
    env.no_device_waits()
    env.server.device_script = ["authorization_pending", "slow_down", "ok"]
    shown: list[DeviceAuthorization] = []
    user = env.user()
    grant = await user.consent(
        scopes=["openid", "calendar.read"],
        resource=CALENDAR,
        handler=DeviceCodeConsent(prompt=shown.append),
    )
    assert grant.subject == "alice"
    token = await user.token(resource=CALENDAR, scopes=["calendar.read"])
    unnarrowed = await user.token(resource=CALENDAR)  # a refresh
    env.keep(grant, token, unnarrowed, *shown)
    env.keep_client_state()
    await user.disconnect()


async def device_flow_failures(env: Env) -> None:
    env.no_device_waits()
    user = env.user()
    for script, expected in (
        (["authorization_pending", "access_denied"], ConsentDenied),
        (["slow_down", "expired_token"], ConsentTimeout),
        (["authorization_pending", "invalid_client"], InvalidClient),
    ):
        env.server.device_script = list(script)
        await env.expect(
            expected,
            user.consent(
                scopes=["openid", "calendar.read"],
                handler=DeviceCodeConsent(prompt=env.keep),
            ),
        )
    env.keep_client_state()


async def loopback_flow(env: Env) -> None:
    server = env.server
    opened: list[str] = []
    ready = anyio.Event()

    def open_browser(url: str) -> None:
        opened.append(url)
        ready.set()

    async def browser() -> None:  # a separate program: not part of the consent's tasks
        await ready.wait()
        callback = server.authorize(opened[0])
        redirect = urlsplit(server.to("/authorize")[-1].form["redirect_uri"])
        assert redirect.port is not None
        request = f"GET {redirect.path}?{urlencode(callback)} HTTP/1.1\r\n\r\n"
        async with await anyio.connect_tcp("127.0.0.1", redirect.port) as stream:
            await stream.send(request.encode())
            page = b""
            try:
                while True:
                    page += await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                pass
        assert page.startswith(b"HTTP/1.1 200 ")
        env.texts.append(page.decode("latin-1"))

    user = env.user()
    async with anyio.create_task_group() as tg:
        tg.start_soon(browser)
        grant = await user.consent(
            scopes=["openid", "calendar.read"],
            resource=CALENDAR,
            handler=LoopbackConsent(browser=open_browser, timeout=5),
        )
    assert grant.has_refresh_token
    assert len(env.texts) == 1
    env.keep(grant)
    env.keep_client_state()


async def console_flow(env: Env) -> None:
    output = io.StringIO()
    server = env.server

    async def read_line(prompt: str) -> str:
        [url] = [line.strip() for line in output.getvalue().splitlines() if "/authorize?" in line]
        return f"{REDIRECT_URI}?{urlencode(server.authorize(url))}"

    user = env.user()
    grant = await user.consent(
        scopes=["openid", "calendar.read"],
        handler=ConsoleConsent(redirect_uri=REDIRECT_URI, output=output, read_line=read_line),
    )
    assert grant.subject == "alice"
    env.texts.append(output.getvalue())
    env.keep(grant)
    env.keep_client_state()


def _query(params: dict[str, str]) -> str:
    return urlencode(params)


async def callback_rejections(env: Env) -> None:
    """Tampered or refused authorization responses: no token request may follow."""
    user = env.user()
    cases: list[tuple[Callable[[dict[str, str]], str], type[Exception]]] = [
        (lambda cb: _query({**cb, "state": "not-the-state"}), StateMismatch),
        (lambda cb: _query({"code": cb["code"], "iss": cb["iss"]}), StateMismatch),
        (
            lambda cb: _query(
                {
                    **cb,
                    "iss": "https://evil.example",
                    "error": "access_denied",
                    "error_description": "evil says no",
                }
            ),
            IssuerMismatch,
        ),
        (lambda cb: _query({**cb, "iss": f"{ISSUER}/"}), IssuerMismatch),
        (lambda cb: _query({k: v for k, v in cb.items() if k != "iss"}), IssuerMismatch),
        (
            lambda cb: _query(
                {
                    "state": cb["state"],
                    "iss": cb["iss"],
                    "error": "access_denied",
                    "error_description": "the user declined",
                }
            ),
            ConsentDenied,
        ),
        (lambda cb: f"{_query(cb)}&code={cb['code']}x", AuthorizationResponseError),
        (lambda cb: _query({"state": cb["state"], "iss": cb["iss"]}), AuthorizationResponseError),
    ]
    for tamper, expected in cases:
        env.consent.tamper = tamper
        await env.expect(
            expected, user.consent(scopes=["openid", "calendar.read"], resource=CALENDAR)
        )
    assert env.server.to("/token") == []
    env.consent.tamper = None
    env.keep_client_state()


async def code_redemption_failures(env: Env) -> None:
    user = env.user()
    answers: list[tuple[Fault, type[Exception]]] = [
        (
            httpx2.Response(
                400, json={"error": "invalid_grant", "error_description": "code already used"}
            ),
            InvalidGrant,
        ),
        (httpx2.Response(401, json={"error": "invalid_client"}), InvalidClient),
        *garbage_answers(env.server),
    ]
    for answer, expected in answers:
        env.server.code_answers.append(answer)
        await env.expect(
            expected, user.consent(scopes=["openid", "calendar.read"], resource=CALENDAR)
        )
    assert (await user.grant()) is None
    env.keep_client_state()


async def bad_id_tokens(env: Env) -> None:
    user = env.user()
    for overrides in (
        {"nonce": "not-the-nonce"},
        {"exp": int(time.time()) - 3600},
        {"aud": "someone-else"},
        {"iss": "https://evil.example"},
    ):
        env.server.id_token_overrides = overrides
        await env.expect(InvalidTokenError, user.consent(scopes=["openid", "calendar.read"]))
    env.server.id_token_overrides = {}
    env.server.foreign_key = ECKey.generate_key("P-256")
    await env.expect(InvalidTokenError, user.consent(scopes=["openid", "calendar.read"]))
    assert (await user.grant()) is None
    env.keep_client_state()


async def refresh_failures(env: Env) -> None:
    user = env.user()
    await user.consent(scopes=["openid", "calendar.read", "calendar.write"], resource=CALENDAR)
    for answer, expected in garbage_answers(env.server):
        env.server.refresh_answers.append(answer)
        await env.expect(expected, user.token(resource=CALENDAR, scopes=["calendar.read"]))
    token = await user.token(resource=CALENDAR, scopes=["calendar.read"])
    env.keep(token, (await user.grant()))
    env.server.refresh_answers.append(
        httpx2.Response(
            400,
            json={"error": "invalid_grant", "error_description": "the user revoked the grant"},
        )
    )
    await env.expect(
        ReauthorizationRequired, user.token(resource=CALENDAR, scopes=["calendar.write"])
    )
    assert (await user.grant()) is None  # the dead grant was removed from the vault
    env.keep(await user.grant())
    env.keep_client_state()


async def revocation_and_client_credentials_failures(env: Env) -> None:
    identity = env.identity
    user = env.user()
    await user.consent(scopes=["openid", "calendar.read"], resource=CALENDAR)
    env.server.revocation_answers.extend([httpx2.Response(503)] * 3)  # retried twice
    await env.expect(TemporarilyUnavailable, user.disconnect())
    env.server.revocation_answers.append(_echo_request_as_html)  # 500: not retried
    await env.expect(InvalidResponse, user.disconnect())
    token = await user.token(resource=CALENDAR, scopes=["calendar.read"])
    env.server.revocation_answers.append(httpx2.Response(400, json={"error": "invalid_request"}))
    await env.expect(InvalidRequest, identity.revoke(token.value))
    env.keep(token, (await user.grant()))
    env.server.client_credentials_answers.append(
        httpx2.Response(401, json={"error": "invalid_client", "error_description": "bad secret"})
    )
    await env.expect(InvalidClient, identity.client_credentials(scopes=["calendar.read"]))
    for answer, expected in garbage_answers(env.server):
        env.server.client_credentials_answers.append(answer)
        await env.expect(expected, identity.client_credentials(scopes=["calendar.read"]))
    env.keep_client_state()


@dataclass(frozen=True)
class Flow:
    run: Callable[[Env], Awaitable[None]]
    auth: str = "secret"  # "secret" | "key"
    document: dict[str, Any] = field(default_factory=dict)
    use_par: bool | None = None
    timeout: float = 5.0
    #: Secrets that must have been on the wire (so the search is not vacuous).
    on_wire: tuple[str, ...] = ()
    #: More IdentityClient arguments.
    options: dict[str, Any] = field(default_factory=dict)


_CODE = ("code", "verifier", "refresh-token")
_POST_ONLY = {"token_endpoint_auth_methods_supported": ["client_secret_post"]}
_KEY_ONLY = {"token_endpoint_auth_methods_supported": ["private_key_jwt"]}

FLOWS = {
    "code-client-secret-basic": Flow(
        authorization_code_flow, on_wire=(*_CODE, "client-secret", "revoked-token")
    ),
    "code-client-secret-post": Flow(
        authorization_code_flow, document=_POST_ONLY, on_wire=(*_CODE, "client-secret")
    ),
    "code-private-key-jwt": Flow(
        authorization_code_flow,
        auth="key",
        document=_KEY_ONLY,
        on_wire=(*_CODE, "client-assertion"),
    ),
    "code-par": Flow(
        authorization_code_flow,
        document={"pushed_authorization_request_endpoint": f"{ISSUER}/par"},
        use_par=True,
        on_wire=(*_CODE, "client-secret"),
    ),
    "device": Flow(device_flow, on_wire=("device-code", "refresh-token", "client-secret")),
    "dpop": Flow(
        dpop_flow,
        document={"pushed_authorization_request_endpoint": f"{ISSUER}/par"},
        use_par=True,
        options={"dpop": True},
        on_wire=("code", "verifier", "refresh-token", "client-secret"),
    ),
    "device-failures": Flow(device_flow_failures, on_wire=("device-code",)),
    "loopback": Flow(loopback_flow, on_wire=("code", "verifier")),
    "console": Flow(console_flow, on_wire=("code", "verifier")),
    "callback-rejections": Flow(callback_rejections),
    "code-redemption-failures": Flow(
        code_redemption_failures, timeout=0.3, on_wire=("code", "verifier", "client-secret")
    ),
    "code-redemption-failures-post": Flow(
        code_redemption_failures, document=_POST_ONLY, timeout=0.3, on_wire=("code", "verifier")
    ),
    "bad-id-tokens": Flow(bad_id_tokens, on_wire=("code", "verifier")),
    "refresh-failures": Flow(refresh_failures, timeout=0.3, on_wire=("refresh-token",)),
    "refresh-failures-private-key-jwt": Flow(
        refresh_failures,
        auth="key",
        document=_KEY_ONLY,
        timeout=0.3,
        on_wire=("refresh-token", "client-assertion"),
    ),
    "revocation-and-client-credentials-failures": Flow(
        revocation_and_client_credentials_failures,
        timeout=0.3,
        on_wire=("revoked-token", "client-secret"),
    ),
}


# --- collecting everything that was emitted ------------------------------------------------------


def _chain(error: BaseException, *, suppressed: bool = False) -> Iterator[BaseException]:
    """The exception and the causes and contexts chained to it, as Python shows them
    (``raise ... from None`` hides the context), plus exception group members. With
    ``suppressed=True`` hidden contexts are followed too."""
    seen: set[int] = set()
    stack = [error]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        if current.__cause__ is not None:
            stack.append(current.__cause__)
        if current.__context__ is not None and (suppressed or not current.__suppress_context__):
            stack.append(current.__context__)
        if isinstance(current, BaseExceptionGroup):
            stack.extend(current.exceptions)


def exception_texts(error: BaseException, *, suppressed: bool = False) -> list[str]:
    texts = ["".join(traceback.format_exception(error))]
    for linked in _chain(error, suppressed=suppressed):
        texts += [str(linked), repr(linked), repr(linked.args)]
        if isinstance(linked, AgentIdentityError):
            texts.append(repr(vars(linked)))  # the SDK's own error attributes are public
    return texts


def object_texts(obj: object) -> list[str]:
    texts = [repr(obj), str(obj), f"{obj}"]
    if isinstance(obj, BaseModel):
        texts += [obj.model_dump_json(), repr(obj.model_dump())]
    if isinstance(obj, tuple | list):
        for item in obj:
            texts += object_texts(item)
    return texts


def record_texts(record: logging.LogRecord) -> list[str]:
    texts = [record.getMessage(), repr(record.msg), repr(record.args), repr(vars(record))]
    if record.exc_info and record.exc_info[1] is not None:
        texts += exception_texts(record.exc_info[1])
    if record.exc_text:
        texts.append(record.exc_text)
    return texts


def find_leaks(haystack: str, secrets_in_play: list[tuple[str, str]]) -> list[str]:
    leaks = []
    for kind, value in secrets_in_play:
        where = haystack.find(value)
        if where >= 0:
            before = haystack[max(0, where - 160) : where]
            leaks.append(f"{kind} found after: ...{before!r}")
    where = haystack.find("CANARY")
    if where >= 0 and not leaks:
        leaks.append(f"a CANARY value found after: ...{haystack[max(0, where - 160) : where]!r}")
    return leaks


# --- the tests ----------------------------------------------------------------------------------


async def run_flow(
    flow: Flow, server: CanaryAS, monkeypatch: pytest.MonkeyPatch, **kwargs: Any
) -> Env:
    async def no_retry_wait(seconds: float) -> None:
        pass

    consent = CanaryConsent(server)
    async with httpx2.AsyncClient(transport=httpx2.MockTransport(server)) as http:
        identity = IdentityClient(
            ISSUER,
            client_id=CLIENT_ID,
            consent=consent,
            http_client=http,
            use_par=flow.use_par,
            timeout=flow.timeout,
            **kwargs,
        )
        identity._driver.sleep = no_retry_wait
        env = Env(server, identity, consent, monkeypatch)
        with anyio.fail_after(10):
            async with identity:
                await flow.run(env)
    unused = [
        server.code_answers,
        server.refresh_answers,
        server.client_credentials_answers,
        server.revocation_answers,
    ]
    assert not any(unused), f"scripted answers never used: {unused}"
    return env


@pytest.mark.parametrize("name", list(FLOWS))
async def test_sec_40_no_secret_in_logs_errors_or_reprs(
    name: str,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.DEBUG)
    flow = FLOWS[name]
    server = CanaryAS(document=metadata(**flow.document))
    kwargs: dict[str, Any] = {}
    if flow.auth == "secret":
        kwargs["client_secret"] = server.new("CS")
    else:
        key = canary_private_jwk()
        server.remember("private-key-d", key["d"])
        kwargs["private_key"] = key

    env = await run_flow(flow, server, monkeypatch, **kwargs, **flow.options)

    # the search is not vacuous: the secrets really were used on the wire
    missing = set(flow.on_wire) - server.kinds_on_wire
    assert not missing, f"secrets never sent, the flow did not run as intended: {missing}"
    assert caplog.records, "nothing was logged at all: is the capture working?"

    captured = capsys.readouterr()
    texts = [caplog.text, captured.out, captured.err, *env.texts]
    for record in caplog.records:
        texts += record_texts(record)
    for error in env.errors:
        texts += exception_texts(error)
    for obj in env.objects:
        texts += object_texts(obj)
    leaks = find_leaks("\n".join(texts), server.secrets)
    assert not leaks, "\n".join(leaks)


async def test_sec_40_detector_finds_planted_leaks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The search above can fail: plant canaries where it looks and it finds each one."""
    caplog.set_level(logging.DEBUG)
    server = CanaryAS()
    logged, caused, hidden, shown = (server.new(kind) for kind in ("AT", "RT", "DC", "CS"))
    jwt_text = server.id_token(nonce=None)
    logging.getLogger("some.library").debug("sending %s", logged)
    try:
        raise InvalidResponse("looks harmless") from KeyError(caused)
    except InvalidResponse as exc:
        with_cause = exc
    try:
        try:
            raise ValueError(hidden)
        except ValueError:
            raise InvalidResponse("looks harmless too") from None
    except InvalidResponse as exc:
        with_hidden_context = exc

    class Leaky:
        def __repr__(self) -> str:
            return f"Leaky(secret={shown!r}, jwt={jwt_text!r})"

    texts = [text for record in caplog.records for text in record_texts(record)]
    texts += exception_texts(with_cause) + exception_texts(with_hidden_context)
    texts += object_texts([Leaky()])
    leaks = find_leaks("\n".join(texts), server.secrets)
    assert sorted(leak.split(" ")[0] for leak in leaks) == [
        "AT",
        "CS",
        "RT",
        "id-token",
        "id-token-signature",
    ]
    # a context hidden with ``from None`` is found only when asked for
    assert find_leaks(
        "\n".join(exception_texts(with_hidden_context, suppressed=True)), [("DC", hidden)]
    )
    assert find_leaks("nothing to see", server.secrets) == []
    assert find_leaks("a CANARY-XX-1 of unknown kind", []) != []


async def test_sec_40_hidden_exception_contexts_hold_no_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Defence in depth: even contexts hidden by ``from None`` (not printed by Python,
    logging, or most error reporters, but reachable as ``__context__``) hold no secret."""
    flow = FLOWS["refresh-failures"]
    server = CanaryAS(document=metadata(**flow.document))
    env = await run_flow(flow, server, monkeypatch, client_secret=server.new("CS"))
    texts = [text for error in env.errors for text in exception_texts(error, suppressed=True)]
    leaks = find_leaks("\n".join(texts), server.secrets)
    assert not leaks, "\n".join(leaks)
