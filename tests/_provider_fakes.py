"""Local stand-ins for GitHub, Google, Microsoft Entra, Slack, Atlassian and Notion.

Each fake answers like its provider's DOCUMENTATION says (the section is cited on each
behaviour), not like the live service: the tests built on them prove that a profile
handles the documented formats, not that the provider still behaves so.

A fake is a real HTTP server (uvicorn, ``http://127.0.0.1:<free port>``) started by the
test. The profiles under test are the real ones with only their endpoint URLs rewritten
onto the fake (:func:`local`, ``dataclasses.replace``): every hook (request preparation,
response normalization, error aliases, scope mapping, issuer templates) is the shipped
one, and the transport is the SDK's own, opted into plain http on loopback with
``allow_insecure_loopback=True``. Each fake records the requests it received.

:class:`Browser` is the user's browser for ``LoopbackConsent(browser=...)``: it opens the
authorization URL on the fake (which checks the request like the provider documents and
redirects back with a code, or an error when the user refuses) and follows the redirect
to the SDK's loopback listener.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import http.client
import json
import secrets
import socket
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import anyio.to_thread
import uvicorn
from joserfc import jwt
from joserfc.jwk import RSAKey

from agent_identity.models import ServerMetadata
from agent_identity.oauth.discovery import ENDPOINT_FIELDS
from agent_identity.providers import ProviderProfile

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

CLIENT_ID = "agent-client"
CLIENT_SECRET = "agent-secret-do-not-log"  # DEV ONLY


# -- requests and responses ------------------------------------------------------------------------


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    form: dict[str, str] | None = None  # a form-encoded body
    json: dict[str, Any] | None = None  # a JSON body

    @property
    def params(self) -> dict[str, Any]:
        """The body's members, whichever its encoding."""
        return dict(self.form or self.json or {})

    def basic_auth(self) -> tuple[str, str] | None:
        value = self.headers.get("authorization", "")
        if not value.startswith("Basic "):
            return None
        user, _, password = base64.b64decode(value[6:]).decode().partition(":")
        from urllib.parse import unquote_plus

        return unquote_plus(user), unquote_plus(password)


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, status: int, body: dict[str, Any]) -> Response:
        return cls(status, json.dumps(body).encode())

    @classmethod
    def form(cls, status: int, body: dict[str, Any]) -> Response:
        return cls(
            status,
            urlencode({k: str(v) for k, v in body.items()}).encode(),
            "application/x-www-form-urlencoded; charset=utf-8",
        )

    @classmethod
    def redirect(cls, location: str) -> Response:
        return cls(302, b"", "text/plain", {"location": location})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def with_query(url: str, params: dict[str, str]) -> str:
    parts = urlsplit(url)
    query = (parts.query + "&" if parts.query else "") + urlencode(params)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))


# -- the server ------------------------------------------------------------------------------------


class FakeProvider:
    """An ASGI app served by uvicorn on 127.0.0.1; subclasses implement :meth:`handle`."""

    def __init__(self) -> None:
        self.port = free_port()
        self.requests: list[Request] = []
        self.codes: dict[str, dict[str, Any]] = {}
        self.refresh_tokens: dict[str, dict[str, Any]] = {}  # live refresh tokens
        self.used_refresh_tokens: set[str] = set()
        self.approve = True
        self._uvicorn: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def at(self, path: str) -> list[Request]:
        return [r for r in self.requests if r.path == path]

    # -- ASGI --------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        request = Request(
            method=scope["method"],
            path=scope["path"],
            query=dict(parse_qsl(scope["query_string"].decode(), keep_blank_values=True)),
            headers=headers,
            body=body,
        )
        content_type = headers.get("content-type", "")
        if content_type.startswith("application/x-www-form-urlencoded"):
            request.form = dict(parse_qsl(body.decode(), keep_blank_values=True))
        elif content_type.startswith("application/json") and body:
            request.json = json.loads(body)
        self.requests.append(request)
        response = self.handle(request)
        raw = [(b"content-type", response.content_type.encode())]
        raw += [(k.encode(), v.encode()) for k, v in response.headers.items()]
        await send({"type": "http.response.start", "status": response.status, "headers": raw})
        await send({"type": "http.response.body", "body": response.body})

    def handle(self, request: Request) -> Response:
        raise NotImplementedError

    # -- the authorization endpoint, shared ---------------------------------------------------

    def authorize(
        self,
        request: Request,
        *,
        required: dict[str, str] | None = None,
        pkce: bool = True,
        scope_parameter: str = "scope",
    ) -> Response:
        """Check the authorization request (client, redirect URI, state, the provider's
        required parameters, PKCE S256) and redirect back with a code, or with
        ``access_denied`` when the user refuses."""
        q = request.query
        redirect_uri = q.get("redirect_uri", "")
        if q.get("client_id") != CLIENT_ID or not redirect_uri.startswith("http://127.0.0.1:"):
            return Response.json(400, {"error": "invalid_request"})
        back = {"state": q["state"]} if "state" in q else {}
        for name, value in (required or {}).items():
            if q.get(name) != value:
                return Response.redirect(
                    with_query(redirect_uri, {"error": "invalid_request", **back})
                )
        if pkce and (q.get("code_challenge_method") != "S256" or not q.get("code_challenge")):
            return Response.redirect(with_query(redirect_uri, {"error": "invalid_request", **back}))
        if not self.approve:
            return Response.redirect(with_query(redirect_uri, {"error": "access_denied", **back}))
        code = secrets.token_urlsafe(16)
        self.codes[code] = {
            "redirect_uri": redirect_uri,
            "challenge": q.get("code_challenge"),
            "scope": q.get(scope_parameter, ""),
            "nonce": q.get("nonce"),
            "query": dict(q),
        }
        return Response.redirect(with_query(redirect_uri, {"code": code, **back}))

    def take_code(self, params: dict[str, Any]) -> dict[str, Any] | None:
        """The code's record if ``code``, ``redirect_uri`` and the PKCE verifier match
        (single use), else ``None``."""
        record = self.codes.pop(str(params.get("code")), None)
        if record is None or params.get("redirect_uri") != record["redirect_uri"]:
            return None
        challenge = record["challenge"]
        if challenge is not None and s256(str(params.get("code_verifier", ""))) != challenge:
            return None
        return record

    def new_refresh_token(self, prefix: str, **record: Any) -> str:
        token = f"{prefix}{secrets.token_urlsafe(12)}"
        self.refresh_tokens[token] = record
        return token

    def rotate(self, token: str) -> dict[str, Any] | None:
        """Spend a refresh token (rotation): its record, or ``None`` if unknown or reused."""
        if token in self.used_refresh_tokens:
            return None
        record = self.refresh_tokens.pop(token, None)
        if record is not None:
            self.used_refresh_tokens.add(token)
        return record

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        config = uvicorn.Config(
            self, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on"
        )
        self._uvicorn = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._uvicorn.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._uvicorn.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the fake provider did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        if self._uvicorn is not None and self._thread is not None:
            self._uvicorn.should_exit = True
            self._thread.join(timeout=10)


class Signer:
    """An RS256 key that signs ID tokens (and JWT access tokens) and publishes its JWKS."""

    def __init__(self, kid: str = "fake-key-1") -> None:
        self.key = RSAKey.generate_key(2048, parameters={"kid": kid, "use": "sig"})
        self.kid = kid

    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.key.as_dict(private=False)]}

    def sign(self, claims: dict[str, Any]) -> str:
        return jwt.encode({"alg": "RS256", "kid": self.kid, "typ": "JWT"}, claims, self.key)


def id_token_claims(issuer: str, *, nonce: str | None, **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": issuer,
        "sub": "alice-subject",
        "aud": CLIENT_ID,
        "iat": now,
        "exp": now + 3600,
        **extra,
    }
    if nonce is not None:
        claims["nonce"] = nonce
    return claims


# -- profiles onto the fakes -----------------------------------------------------------------------


def local(profile: ProviderProfile, base: str, *, path_prefix: str = "") -> ProviderProfile:
    """``profile`` with its issuer and every endpoint URL moved onto ``base`` (scheme and
    host replaced, path kept; ``path_prefix`` prepended). A profile without static
    metadata gets ``base`` as its issuer (discovered from the fake)."""
    if profile.metadata is None:
        return dataclasses.replace(profile, issuer=base + path_prefix)

    def move(url: str) -> str:
        return (
            base
            + path_prefix
            + urlsplit(url).path
            + ("?" + urlsplit(url).query if urlsplit(url).query else "")
        )

    members: dict[str, Any] = {"issuer": move(profile.metadata.issuer)}
    for name in ENDPOINT_FIELDS:
        value = getattr(profile.metadata, name)
        if value is not None:
            members[name] = move(value)
    metadata = profile.metadata.model_copy(update=members)
    assert isinstance(metadata, ServerMetadata)
    return dataclasses.replace(profile, issuer=metadata.issuer, metadata=metadata)


# -- the browser -----------------------------------------------------------------------------------


class Browser:
    """The user's browser: opens the authorization URL on the fake, follows its redirect to
    the SDK's loopback listener, and remembers every URL it opened."""

    def __init__(self) -> None:
        self.urls: list[str] = []

    def params(self, index: int = -1) -> dict[str, str]:
        return dict(parse_qsl(urlsplit(self.urls[index]).query, keep_blank_values=True))

    async def __call__(self, url: str) -> None:
        self.urls.append(url)
        status, location = await anyio.to_thread.run_sync(_get, url)
        assert status == 302, status
        assert location, "no redirect"
        await anyio.to_thread.run_sync(_get, location)


def _get(url: str) -> tuple[int, str | None]:
    """A GET without redirects or logging (the browser is not the SDK: nothing it does
    should show in the logs the tests search for secrets)."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    try:
        connection.request("GET", parts.path + ("?" + parts.query if parts.query else ""))
        response = connection.getresponse()
        response.read()
        return response.status, response.getheader("location")
    finally:
        connection.close()


# -- GitHub ----------------------------------------------------------------------------------------


class FakeGitHub(FakeProvider):
    """GitHub's ``/login/oauth/*`` and ``/login/device/code``.

    - "Authorizing OAuth apps" (Web application flow, steps 1-2): ``client_id``,
      ``redirect_uri``, ``scope`` (space-delimited), ``state``; the token endpoint takes
      ``client_id``, ``client_secret``, ``code``, ``redirect_uri`` as body parameters and
      answers form-encoded ``access_token=...&scope=repo%2Cgist&token_type=bearer`` "by
      default", JSON with ``Accept: application/json``;
    - changelog 2025-07-14: PKCE, "Only the S256 code challenge method is accepted";
    - "Troubleshooting OAuth app access token request errors": ``incorrect_client_credentials``,
      ``redirect_uri_mismatch``, ``bad_verification_code`` bodies (answered with HTTP 200,
      as the device flow documents "a 200 status and an error");
    - "Generating a user access token for a GitHub App" / "Refreshing user access tokens":
      ``expires_in`` 28800, ``refresh_token``, ``refresh_token_expires_in`` 15811200,
      ``scope`` "always an empty string"; a used refresh token no longer works
      (answered ``bad_refresh_token``);
    - device flow: ``/login/device/code``, polling answers ``authorization_pending`` (200).
    """

    def __init__(self, *, app: bool = False, json_ignored: bool = False) -> None:
        super().__init__()
        self.app = app  # a GitHub App with expiring user tokens, else an OAuth app
        self.json_ignored = json_ignored  # answer form-encoded even when asked for JSON
        self.pending_polls = 1
        self.device_codes: dict[str, str] = {}  # device code -> requested scope

    def _answer(self, request: Request, status: int, body: dict[str, Any]) -> Response:
        wants_json = request.headers.get("accept") == "application/json"
        if wants_json and not self.json_ignored:
            return Response.json(status, body)
        return Response.form(status, body)

    def _error(self, request: Request, error: str, description: str) -> Response:
        return self._answer(
            request,
            200,
            {
                "error": error,
                "error_description": description,
                "error_uri": "/apps/managing-oauth-apps/troubleshooting-oauth-app-access-token"
                "-request-errors",
            },
        )

    def _tokens(self, request: Request, scope: str) -> Response:
        body: dict[str, Any] = {
            "access_token": ("ghu_" if self.app else "gho_") + secrets.token_urlsafe(12),
            "token_type": "bearer",
            # "scope": the granted scopes, comma-separated; a GitHub App's "always an
            # empty string"
            "scope": "" if self.app else ",".join(scope.split()),
        }
        if self.app:
            body["expires_in"] = 28800
            body["refresh_token"] = self.new_refresh_token("ghr_", scope=scope)
            body["refresh_token_expires_in"] = 15811200
        return self._answer(request, 200, body)

    def handle(self, request: Request) -> Response:
        if request.path == "/login/oauth/authorize":
            return self.authorize(request)
        params = request.params
        if request.path == "/login/device/code":
            device_code = secrets.token_hex(20)
            self.device_codes[device_code] = str(params.get("scope", ""))
            return self._answer(
                request,
                200,
                {
                    "device_code": device_code,
                    "user_code": "WDJB-MJHT",
                    "verification_uri": f"{self.base}/login/device",
                    "expires_in": 900,
                    "interval": 1,
                },
            )
        if request.path != "/login/oauth/access_token":
            return Response.json(404, {"message": "Not Found"})
        grant = params.get("grant_type", "authorization_code")
        if params.get("client_id") != CLIENT_ID:
            return self._error(
                request,
                "incorrect_client_credentials",
                "The client_id and/or client_secret passed are incorrect.",
            )
        if grant == "urn:ietf:params:oauth:grant-type:device_code":
            if params.get("device_code") not in self.device_codes:
                return self._error(request, "incorrect_device_code", "not valid")
            if self.pending_polls > 0:
                self.pending_polls -= 1
                return self._error(request, "authorization_pending", "pending")
            return self._tokens(request, self.device_codes[str(params["device_code"])])
        if params.get("client_secret") != CLIENT_SECRET:
            return self._error(
                request,
                "incorrect_client_credentials",
                "The client_id and/or client_secret passed are incorrect.",
            )
        if grant == "refresh_token":
            spent = self.rotate(str(params.get("refresh_token")))
            if spent is None:
                return self._error(
                    request,
                    "bad_refresh_token",
                    "The refresh token passed is incorrect or expired.",
                )
            return self._tokens(request, spent["scope"])
        record = self.take_code(params)
        if record is None:
            return self._error(
                request, "bad_verification_code", "The code passed is incorrect or expired."
            )
        return self._tokens(request, record["scope"])


# -- Google ----------------------------------------------------------------------------------------


class FakeGoogle(FakeProvider):
    """Google's OpenID provider.

    - OpenID Connect API Reference, Discovery Document: the document at
      ``/.well-known/openid-configuration`` (``code_challenge_methods_supported``
      ``plain``/``S256``, revocation and device endpoints, ``scopes_supported`` openid,
      email, profile); no RFC 8414 document (404);
    - Web server apps, Step 1 (``access_type``, ``prompt``) and Step 5: a refresh token
      only with ``access_type=offline``, and only the first time unless ``prompt=consent``;
      ID token with ``iss`` ``https://accounts.google.com`` (or the legacy form);
    - "Refreshing an access token": a new access token, no new refresh token; a revoked one
      gets ``400 invalid_grant``;
    - "Revoking a token": POST ``token`` to the revocation endpoint, 200.
    """

    def __init__(self, *, iss: str = "https://accounts.google.com") -> None:
        super().__init__()
        self.signer = Signer("google-key")
        self.iss = iss
        self.consented_before = False
        self.revoked: list[str] = []

    def discovery(self) -> dict[str, Any]:
        base = self.base
        return {
            "issuer": base,
            "authorization_endpoint": f"{base}/o/oauth2/v2/auth",
            "device_authorization_endpoint": f"{base}/device/code",
            "token_endpoint": f"{base}/token",
            "userinfo_endpoint": f"{base}/v1/userinfo",
            "revocation_endpoint": f"{base}/revoke",
            "jwks_uri": f"{base}/oauth2/v3/certs",
            "response_types_supported": ["code", "token", "id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "scopes_supported": ["openid", "email", "profile"],
            "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
            "code_challenge_methods_supported": ["plain", "S256"],
            "grant_types_supported": [
                "authorization_code",
                "refresh_token",
                "urn:ietf:params:oauth:grant-type:device_code",
                "urn:ietf:params:oauth:grant-type:jwt-bearer",
            ],
        }

    def _client_ok(self, request: Request) -> bool:
        basic = request.basic_auth()
        if basic is not None:
            return basic == (CLIENT_ID, CLIENT_SECRET)
        params = request.params
        return params.get("client_id") == CLIENT_ID and params.get("client_secret") == CLIENT_SECRET

    def handle(self, request: Request) -> Response:
        path = request.path
        if path == "/.well-known/openid-configuration":
            return Response.json(200, self.discovery())
        if path == "/oauth2/v3/certs":
            return Response.json(200, self.signer.jwks())
        if path == "/o/oauth2/v2/auth":
            return self.authorize(request)
        if path == "/revoke":
            self.revoked.append(str(request.params.get("token")))
            return Response.json(200, {})
        if path != "/token":
            return Response.json(404, {"error": "not_found"})
        if not self._client_ok(request):
            return Response.json(
                401, {"error": "invalid_client", "error_description": "Unauthorized"}
            )
        params = request.params
        if params.get("grant_type") == "refresh_token":
            record = self.refresh_tokens.get(str(params.get("refresh_token")))
            if record is None:
                return Response.json(
                    400,
                    {
                        "error": "invalid_grant",
                        "error_description": "Token has been expired or revoked.",
                    },
                )
            return Response.json(
                200,
                {
                    "access_token": "ya29." + secrets.token_urlsafe(12),
                    "expires_in": 3599,
                    "scope": record["scope"],
                    "token_type": "Bearer",
                },
            )
        record = self.take_code(params)
        if record is None:
            return Response.json(
                400, {"error": "invalid_grant", "error_description": "Bad Request"}
            )
        query = record["query"]
        body: dict[str, Any] = {
            "access_token": "ya29." + secrets.token_urlsafe(12),
            "expires_in": 3599,
            "scope": record["scope"],
            "token_type": "Bearer",
        }
        offline = query.get("access_type") == "offline"
        if offline and (not self.consented_before or query.get("prompt") == "consent"):
            body["refresh_token"] = self.new_refresh_token("1//", scope=record["scope"])
        self.consented_before = True
        if "openid" in record["scope"].split():
            body["id_token"] = self.signer.sign(
                id_token_claims(self.iss, nonce=record["nonce"], email="alice@example.com")
            )
        return Response.json(200, body)


# -- Microsoft Entra -------------------------------------------------------------------------------

GRAPH = "https://graph.microsoft.com"
GRAPH_APP_ID = "00000003-0000-0000-c000-000000000000"


class FakeEntra(FakeProvider):
    """Microsoft Entra ID's v2.0 endpoints under ``/{tenant}/`` (``tenant`` as the
    profile names it: a tenant ID, ``organizations`` or ``common``).

    - auth code flow ("Request an authorization code"): ``scope`` may cover several
      resources, ``code_challenge_method`` S256; "Redeem a code": a ``scope`` of one
      resource (optional); the successful response carries ``scope`` (fully qualified
      names), ``refresh_token`` "Only provided if offline_access scope was requested",
      ``id_token`` "Only provided if openid scope was requested"; errors with
      ``error_codes`` (AADSTS numbers);
    - "Refresh the access token": ``scope`` of one resource, a new refresh token;
    - access tokens "are opaque to clients": here a JWT whose ``aud`` is Graph's app ID
      (as Graph tokens carry), which a client reading it would take for a wrong audience;
    - ID tokens: ``iss`` ``https://login.microsoftonline.com/{tid}/v2.0`` with ``tid`` (the
      user's tenant), the multi-tenant issuer template's substitution;
    - OpenID configuration document of a tenant: no ``code_challenge_methods_supported``
      (recorded Entra documents list none).
    """

    def __init__(self, tenant: str, *, user_tenant: str, id_token_iss: str | None = None) -> None:
        super().__init__()
        self.tenant = tenant
        self.user_tenant = user_tenant
        self.signer = Signer("entra-key")
        self.id_token_iss = id_token_iss or f"https://login.microsoftonline.com/{user_tenant}/v2.0"

    def _resource_of(self, scopes: list[str]) -> str | None:
        resources = {s.rsplit("/", 1)[0] for s in scopes if "/" in s}
        return resources.pop() if len(resources) == 1 else None

    def _access_token(self, scopes: list[str]) -> str:
        now = int(time.time())
        return self.signer.sign(
            {
                "aud": GRAPH_APP_ID,
                "iss": f"https://sts.windows.net/{self.user_tenant}/",
                "scp": " ".join(s.rsplit("/", 1)[-1] for s in scopes),
                "iat": now,
                "exp": now + 3600,
            }
        )

    def _error(self, status: int, error: str, code: int, text: str) -> Response:
        return Response.json(
            status,
            {
                "error": error,
                "error_description": f"AADSTS{code}: {text}\r\nTrace ID: 0000",
                "error_codes": [code],
                "timestamp": "2016-01-09 02:02:12Z",
            },
        )

    def handle(self, request: Request) -> Response:
        prefix = f"/{self.tenant}"
        path = request.path.removeprefix(prefix)
        if path == "/v2.0/.well-known/openid-configuration":
            base = self.base + prefix
            return Response.json(
                200,
                {
                    "token_endpoint": f"{base}/oauth2/v2.0/token",
                    "token_endpoint_auth_methods_supported": [
                        "client_secret_post",
                        "private_key_jwt",
                        "client_secret_basic",
                    ],
                    "jwks_uri": f"{base}/discovery/v2.0/keys",
                    "response_modes_supported": ["query", "fragment", "form_post"],
                    "subject_types_supported": ["pairwise"],
                    "id_token_signing_alg_values_supported": ["RS256"],
                    "response_types_supported": ["code", "id_token", "code id_token"],
                    "scopes_supported": ["openid", "profile", "email", "offline_access"],
                    "issuer": f"{base}/v2.0",
                    "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                    "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
                },
            )
        if path == "/discovery/v2.0/keys":
            return Response.json(200, self.signer.jwks())
        if path == "/oauth2/v2.0/authorize":
            return self.authorize(request)
        if path != "/oauth2/v2.0/token":
            return Response.json(404, {"error": "not_found"})
        params = request.params
        basic = request.basic_auth()
        client = basic or (params.get("client_id"), params.get("client_secret"))
        if client != (CLIENT_ID, CLIENT_SECRET):
            return self._error(401, "invalid_client", 7000215, "Invalid client secret provided.")
        if params.get("grant_type") == "refresh_token":
            record = self.rotate(str(params.get("refresh_token")))
            if record is None:
                return self._error(
                    400,
                    "invalid_grant",
                    70008,
                    "The provided authorization code or refresh "
                    "token has expired due to inactivity.",
                )
            asked = str(params.get("scope", "")).split()
            resource = self._resource_of(asked)
            if resource is None:
                return self._error(400, "invalid_scope", 70011, "scopes of one resource only")
            granted = [s for s in record["scopes"] if s.startswith(resource + "/")]
            if asked and not asked[-1].endswith("/.default"):
                if any(s not in record["scopes"] for s in asked if "/" in s):
                    return self._error(400, "invalid_grant", 65001, "consent required")
                granted = [s for s in asked if "/" in s]
            return Response.json(
                200,
                {
                    "token_type": "Bearer",
                    "scope": " ".join(granted),
                    "expires_in": 3599,
                    "ext_expires_in": 3599,
                    "access_token": self._access_token(granted),
                    "refresh_token": self.new_refresh_token("0.AR", scopes=record["scopes"]),
                },
            )
        record = self.take_code(params)
        if record is None:
            return self._error(
                400, "invalid_grant", 54005, "OAuth2 Authorization code was already redeemed."
            )
        scopes = record["scope"].split()
        resource_scopes = [s for s in scopes if "/" in s]
        first = self._resource_of(resource_scopes[:1]) if resource_scopes else None
        granted = [s for s in resource_scopes if first is not None and s.startswith(first + "/")]
        body: dict[str, Any] = {
            "token_type": "Bearer",
            "scope": " ".join(granted),
            "expires_in": 3599,
            "access_token": self._access_token(granted),
        }
        if "offline_access" in scopes:
            body["refresh_token"] = self.new_refresh_token("0.AR", scopes=resource_scopes)
        if "openid" in scopes:
            body["id_token"] = self.signer.sign(
                id_token_claims(
                    self.id_token_iss, nonce=record["nonce"], tid=self.user_tenant, ver="2.0"
                )
            )
        return Response.json(200, body)


# -- Slack -----------------------------------------------------------------------------------------


class FakeSlack(FakeProvider):
    """Slack's ``/oauth/v2/authorize`` and ``/api/oauth.v2.access``.

    - "Installing with OAuth": ``scope`` (bot) and ``user_scope`` (user), comma-separated;
      the access response "puts bot access tokens first", the user token under
      ``authed_user`` (``token_type`` ``user``);
    - ``oauth.v2.access`` reference: client credentials preferably with HTTP Basic;
      ``code_verifier`` "Used for PKCE"; errors as ``{"ok": false, "error": ...}`` with
      HTTP 200 (``invalid_code``, ``bad_client_secret``, ``invalid_refresh_token``, ...);
    - "Using token rotation": with rotation, ``expires_in`` (12 hours) and a
      ``refresh_token``; refreshing (``grant_type=refresh_token``) returns new ones and
      revokes the old refresh token.
    """

    def __init__(self, *, rotation: bool = True, user_token: bool = True) -> None:
        super().__init__()
        self.rotation = rotation
        self.user_token = user_token

    def _fail(self, error: str) -> Response:
        return Response.json(200, {"ok": False, "error": error})

    def handle(self, request: Request) -> Response:
        if request.path == "/oauth/v2/authorize":
            return self.authorize(request, scope_parameter="user_scope")
        if request.path != "/api/oauth.v2.access":
            return Response.json(404, {"ok": False, "error": "unknown_method"})
        basic = request.basic_auth()
        if basic is None or basic[0] != CLIENT_ID:
            return self._fail("invalid_client_id")
        if basic[1] != CLIENT_SECRET:
            return self._fail("bad_client_secret")
        params = request.params
        if params.get("grant_type") == "refresh_token":
            record = self.rotate(str(params.get("refresh_token")))
            if record is None:
                return self._fail("invalid_refresh_token")
            return Response.json(
                200,
                {
                    "ok": True,
                    "app_id": "A0KRD7HC3",
                    "access_token": "xoxe.xoxp-1-" + secrets.token_urlsafe(8),
                    "token_type": "user",
                    "scope": record["scope"],
                    "refresh_token": self.new_refresh_token("xoxe-1-", scope=record["scope"]),
                    "expires_in": 43200,
                    "team": {"id": "T9TK3CUKW", "name": "Slack Softball Team"},
                },
            )
        record = self.take_code(params)
        if record is None:
            return self._fail("invalid_code")
        body: dict[str, Any] = {
            "ok": True,
            "app_id": "A0KRD7HC3",
            "team": {"id": "T9TK3CUKW", "name": "Slack Softball Team"},
            "authed_user": {"id": "U1234"},
            "enterprise": None,
            "is_enterprise_install": False,
        }
        if not self.user_token:  # a bot-only install: the token is the bot's
            body.update(
                access_token="xoxb-17653672481-" + secrets.token_urlsafe(8),
                token_type="bot",
                scope="commands,incoming-webhook",
                bot_user_id="U0KRQLJ9H",
            )
            return Response.json(200, body)
        user: dict[str, Any] = {
            "id": "U1234",
            "scope": record["scope"],
            "access_token": ("xoxe.xoxp-1-" if self.rotation else "xoxp-1-")
            + secrets.token_urlsafe(8),
            "token_type": "user",
        }
        if self.rotation:
            user["refresh_token"] = self.new_refresh_token("xoxe-1-", scope=record["scope"])
            user["expires_in"] = 43200
        body["authed_user"] = user
        return Response.json(200, body)


# -- Atlassian -------------------------------------------------------------------------------------


class FakeAtlassian(FakeProvider):
    """``auth.atlassian.com``'s token endpoint.

    - "OAuth 2.0 (3LO) apps": JSON request bodies (``grant_type``, ``client_id``,
      ``client_secret``, ...); responses ``{"access_token", "expires_in", "scope"}`` (no
      ``token_type``);
    - "Implementing the Refresh Token Flow": rotating refresh tokens; an unknown or reused
      one is answered ``403`` ``{"error": "invalid_grant", "error_description": "Unknown or
      invalid refresh token."}``.
    """

    def handle(self, request: Request) -> Response:
        if request.path == "/authorize":
            return self.authorize(request, pkce=False)
        if request.path != "/oauth/token":
            return Response.json(404, {})
        if request.json is None:
            return Response.json(415, {"error": "unsupported_media_type"})
        params = request.json
        if (params.get("client_id"), params.get("client_secret")) != (CLIENT_ID, CLIENT_SECRET):
            return Response.json(
                401, {"error": "access_denied", "error_description": "Unauthorized"}
            )
        if params.get("grant_type") != "refresh_token":
            return Response.json(400, {"error": "unsupported_grant_type"})
        record = self.rotate(str(params.get("refresh_token")))
        if record is None:
            return Response.json(
                403,
                {
                    "error": "invalid_grant",
                    "error_description": "Unknown or invalid refresh token.",
                },
            )
        return Response.json(
            200,
            {
                "access_token": "eyJ.atlassian." + secrets.token_urlsafe(8),
                "expires_in": 3600,
                "scope": record["scope"],
                "refresh_token": self.new_refresh_token("atl-", scope=record["scope"]),
            },
        )


# -- Notion ----------------------------------------------------------------------------------------


class FakeNotion(FakeProvider):
    """``api.notion.com``'s token endpoint.

    - "Create a token" / "Refresh a token": HTTP Basic client authentication, a JSON body;
      responses with ``access_token``, ``token_type``, ``refresh_token``, ``bot_id``,
      ``workspace_*``, ``owner``; no ``scope``, no ``expires_in``;
    - "Status codes": errors ``{"object": "error", "status": 400, "code": "invalid_grant",
      "message": ...}``; ``401`` ``unauthorized``.
    """

    def handle(self, request: Request) -> Response:
        if request.path == "/v1/oauth/authorize":
            return self.authorize(request, pkce=False)
        if request.path != "/v1/oauth/token":
            return Response.json(
                404, {"object": "error", "status": 404, "code": "object_not_found"}
            )
        if request.basic_auth() != (CLIENT_ID, CLIENT_SECRET):
            return Response.json(
                401,
                {
                    "object": "error",
                    "status": 401,
                    "code": "unauthorized",
                    "message": "API token is invalid.",
                },
            )
        params = request.json or {}
        if params.get("grant_type") != "refresh_token":
            return Response.json(
                400,
                {"object": "error", "status": 400, "code": "validation_error", "message": "bad"},
            )
        record = self.rotate(str(params.get("refresh_token")))
        if record is None:
            return Response.json(
                400,
                {
                    "object": "error",
                    "status": 400,
                    "code": "invalid_grant",
                    "message": "Invalid code: this code has been revoked.",
                },
            )
        return Response.json(
            200,
            {
                "access_token": "ntn_" + secrets.token_urlsafe(12),
                "token_type": "bearer",
                "refresh_token": self.new_refresh_token("nrt_"),
                "bot_id": "3c90c3cc-0d44-4b50-8888-8dd25736052a",
                "workspace_name": "Alice's Notion",
                "workspace_icon": None,
                "workspace_id": "3c90c3cc-0d44-4b50-8888-8dd25736052b",
                "owner": {"type": "user", "user": {"object": "user", "id": "u1"}},
                "duplicated_template_id": None,
                "request_id": "3c90c3cc-0d44-4b50-8888-8dd25736052c",
            },
        )
