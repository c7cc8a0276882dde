"""A fake MCP world for McpAuth tests, in process (httpx2.MockTransport): an MCP server
with its protected resource metadata, authorization servers (metadata, registration,
token endpoint for the code, refresh, client credentials, token exchange and JWT bearer
grants), an enterprise IdP issuing signed ID tokens, a DNS resolver and a consent handler
that plays the user's browser by calling the authorization server directly.

Every request is recorded (``world.requests``) so that tests can prove what was, and
what was never, sent where.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx2
from joserfc import jws
from joserfc import jwt as jose_jwt
from joserfc.jwk import RSAKey, import_key

from agent_identity import IdentityClient, TokenVault
from agent_identity._http import HttpDriver
from agent_identity.mcp import McpAuth
from agent_identity.oauth.jwt import peek_claims

MCP = "https://tools.example.com/mcp"
ORIGIN = "https://tools.example.com"
PRM_PATH = f"{ORIGIN}/.well-known/oauth-protected-resource/mcp"
PRM_ROOT = f"{ORIGIN}/.well-known/oauth-protected-resource"
AS = "https://as.example.com"
AS2 = "https://as2.example.com"
IDP = "https://idp.example.com"
REDIRECT = "http://127.0.0.1:49152/callback"
ID_JAG = "urn:ietf:params:oauth:token-type:id-jag"
ID_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:id_token"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
PUBLIC_IP = "93.184.216.34"
#: Canaries: values that must never reach a server they are not meant for.
SECRET = "canary-client-secret-0123456789"


@dataclass
class Issued:
    """An access token the fake world issued."""

    issuer: str
    client_id: str
    scopes: tuple[str, ...]
    acr: str | None = None
    #: the RFC 7638 thumbprint of the DPoP key the token is bound to (RFC 9449)
    jkt: str | None = None


@dataclass
class Seen:
    """One request, decoded."""

    method: str
    url: str
    form: dict[str, str]
    headers: dict[str, str]
    json: Any = None

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def basic(self) -> tuple[str, str] | None:
        value = self.headers.get("authorization", "")
        if not value.startswith("Basic "):
            return None
        user, _, password = base64.b64decode(value[6:]).decode().partition(":")
        return user, password


@dataclass
class FakeAS:
    """An authorization server. ``overrides`` change its metadata document."""

    issuer: str
    overrides: dict[str, Any] = field(default_factory=dict)
    #: registration response members (``None`` value: member omitted)
    registration: dict[str, Any] = field(default_factory=dict)
    #: client_id -> secret of confidential clients (checked when given)
    secrets: dict[str, str] = field(default_factory=dict)
    metadata_fetches: int = 0
    registrations: int = 0
    exchange_type: str = ID_JAG

    @property
    def origin(self) -> str:
        parts = urlsplit(self.issuer)
        return f"{parts.scheme}://{parts.netloc}"

    def metadata_url(self) -> str:
        path = urlsplit(self.issuer).path.rstrip("/")
        return f"{self.origin}/.well-known/oauth-authorization-server{path}"

    def metadata(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "issuer": self.issuer,
            "authorization_endpoint": f"{self.issuer}/authorize",
            "token_endpoint": f"{self.issuer}/token",
            "registration_endpoint": f"{self.issuer}/register",
            "code_challenge_methods_supported": ["S256"],
            "response_types_supported": ["code"],
        }
        document.update(self.overrides)
        return {k: v for k, v in document.items() if v is not None}


class ConsentBrowser:
    """The user's consent, played in process: opens the authorization URL (a direct call
    into the world instead of HTTP) and completes the flow with the code it returns."""

    def __init__(self, world: World, redirect_uri: str = REDIRECT) -> None:
        self.world = world
        self.redirect_uri = redirect_uri
        self.urls: list[str] = []

    async def obtain_consent(self, flow: Any) -> None:
        url = await flow.authorization_url(self.redirect_uri)
        self.urls.append(url)
        params = dict(parse_qsl(urlsplit(url).query))
        code = self.world.authorize(url, params)
        await flow.complete(f"{self.redirect_uri}?code={code}&state={params['state']}")

    def params(self, index: int = -1) -> dict[str, str]:
        return dict(parse_qsl(urlsplit(self.urls[index]).query))


class World:
    """The MCP server at :data:`MCP`, its metadata, authorization servers and an IdP."""

    def __init__(self) -> None:
        self.servers: dict[str, FakeAS] = {}
        self.requests: list[Seen] = []
        self._n = itertools.count(1)
        self.codes: dict[str, dict[str, Any]] = {}
        self.tokens: dict[str, Issued] = {}
        self.refresh_tokens: dict[str, dict[str, Any]] = {}
        self.jags: dict[str, dict[str, str]] = {}
        # the MCP server
        self.prm: dict[str, dict[str, Any]] = {}  # URL -> document
        self.challenge: dict[str, str] = {"resource_metadata": PRM_PATH}
        self.required: tuple[str, ...] = ()
        self.per_operation: dict[str, tuple[str, ...]] = {}
        #: operation -> scopes: always answered 403 insufficient_scope with them
        self.refuse: dict[str, tuple[str, ...]] = {}
        self.require_acr: dict[str, tuple[str, str | None]] = {}  # op -> (acr, max_age)
        self.accepted_issuers: set[str] | None = None
        #: answer every DPoP-bound request 401 use_dpop_nonce with a new nonce (a Bearer
        #: challenge first in the header, as servers that offer both schemes do)
        self.always_new_nonce = False
        self.legacy_metadata: dict[str, Any] | None = None
        # DNS
        self.addresses: dict[str, Sequence[str] | Callable[[], Sequence[str]]] = {}
        # the IdP's signing key
        self.idp_key = RSAKey.generate_key(2048, parameters={"kid": "idp-1"})
        self.id_token_ttl = 3600
        #: ID tokens of refresh responses: another subject, or signed by another key
        self.refresh_id_token_sub = "alice"
        self.refresh_id_token_forged = False

    # -- setup ------------------------------------------------------------------------

    def add_as(self, issuer: str = AS, **kwargs: Any) -> FakeAS:
        server = FakeAS(issuer, **kwargs)
        self.servers[issuer] = server
        return server

    def publish_prm(
        self, issuer: str = AS, *, url: str = PRM_PATH, resource: str = MCP, **members: Any
    ) -> None:
        self.prm[url] = {"resource": resource, "authorization_servers": [issuer], **members}

    # -- the user's browser at an authorization server -----------------------------------

    def authorize(self, url: str, params: dict[str, str]) -> str:
        issuer = next(i for i, s in self.servers.items() if url.startswith(f"{i}/authorize"))
        code = f"code-{next(self._n)}"
        self.codes[code] = {"issuer": issuer, **params}
        return code

    # -- tokens ---------------------------------------------------------------------------

    def issue(
        self, issuer: str, client_id: str, scopes: Sequence[str], acr: str | None = None
    ) -> str:
        token = f"at-{next(self._n)}"
        self.tokens[token] = Issued(issuer, client_id, tuple(scopes), acr)
        return token

    def id_token(
        self, client_id: str, *, sub: str = "alice", nonce: str | None = None, forged: bool = False
    ) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": IDP,
            "sub": sub,
            "aud": client_id,
            "iat": now,
            "exp": now + self.id_token_ttl,
        }
        if nonce is not None:
            claims["nonce"] = nonce
        key = RSAKey.generate_key(2048) if forged else self.idp_key
        return jose_jwt.encode({"alg": "RS256", "kid": "idp-1"}, claims, key)

    def resolve_host(self, host: str) -> list[str]:
        found = self.addresses.get(host, (PUBLIC_IP,))
        return list(found() if callable(found) else found)

    async def resolve(self, host: str, port: int) -> list[str]:
        return self.resolve_host(host)

    # -- HTTP -----------------------------------------------------------------------------

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        body = request.content.decode() if request.content else ""
        content_type = request.headers.get("content-type", "")
        seen = Seen(
            request.method,
            str(request.url.copy_with(query=None))
            if request.method == "POST"
            else str(request.url),
            dict(parse_qsl(body)) if "form" in content_type else {},
            {k.lower(): v for k, v in request.headers.items()},
            json.loads(body) if "json" in content_type and body else None,
        )
        self.requests.append(seen)
        url = seen.url
        if url.startswith(ORIGIN):
            return self._mcp_host(seen, url)
        for server in self.servers.values():
            if url.startswith(server.origin):
                return self._as(server, seen, url)
        return httpx2.Response(404)

    def _mcp_host(self, seen: Seen, url: str) -> httpx2.Response:
        if url in self.prm:
            return httpx2.Response(200, json=self.prm[url])
        if url == f"{ORIGIN}/.well-known/oauth-authorization-server":
            if self.legacy_metadata is None:
                return httpx2.Response(404)
            return httpx2.Response(200, json=self.legacy_metadata)
        if url.startswith(f"{ORIGIN}/.well-known/"):
            return httpx2.Response(404)
        for server in self.servers.values():  # authorization servers on the MCP origin
            if server.origin == ORIGIN and (
                url == server.metadata_url()
                or url
                in (
                    server.metadata().get("token_endpoint"),
                    server.metadata().get("registration_endpoint"),
                )
            ):
                return self._as(server, seen, url)
        if url != MCP:
            return httpx2.Response(404)
        return self._mcp(seen)

    def _mcp(self, seen: Seen) -> httpx2.Response:
        authorization = seen.headers.get("authorization", "")
        scheme, _, value = authorization.partition(" ")
        issued = self.tokens.get(value)
        if issued is not None and issued.jkt is not None:
            # RFC 9449 §7: a bound token needs the DPoP scheme and a proof by its key
            claims, jkt = _dpop_proof(seen.headers.get("dpop", ""))
            ath = base64.urlsafe_b64encode(hashlib.sha256(value.encode()).digest())
            if (
                scheme != "DPoP"
                or claims is None
                or jkt != issued.jkt
                or claims.get("ath") != ath.rstrip(b"=").decode()
                or claims.get("htm") != seen.method
            ):
                issued = None
        elif scheme != "Bearer":
            issued = None
        if issued is not None and issued.jkt is not None and self.always_new_nonce:
            return httpx2.Response(
                401,
                headers={
                    "www-authenticate": 'Bearer realm="mcp", DPoP error="use_dpop_nonce"',
                    "dpop-nonce": f"n-{len(self.requests)}",
                },
            )
        if issued is not None and (
            self.accepted_issuers is not None and issued.issuer not in self.accepted_issuers
        ):
            issued = None
        if issued is None:
            return httpx2.Response(401, headers={"www-authenticate": _challenge(self.challenge)})
        operation = _operation(seen.json)
        if operation in self.require_acr:
            acr, max_age = self.require_acr[operation]
            if issued.acr != acr:
                params = {"error": "insufficient_user_authentication", "acr_values": acr}
                if max_age is not None:
                    params["max_age"] = max_age
                return httpx2.Response(401, headers={"www-authenticate": _challenge(params)})
        needed = self.per_operation.get(operation, self.required)
        if operation in self.refuse:
            needed = self.refuse[operation]
        if operation in self.refuse or not set(needed) <= set(issued.scopes):
            params = {"error": "insufficient_scope", "scope": " ".join(needed)}
            if "resource_metadata" in self.challenge:
                params["resource_metadata"] = self.challenge["resource_metadata"]
            return httpx2.Response(403, headers={"www-authenticate": _challenge(params)})
        return httpx2.Response(200, json={"jsonrpc": "2.0", "id": 1, "result": {}})

    def _as(self, server: FakeAS, seen: Seen, url: str) -> httpx2.Response:
        if seen.method == "GET" and url == server.metadata_url():
            server.metadata_fetches += 1
            return httpx2.Response(200, json=server.metadata())
        metadata = server.metadata()
        if seen.method == "POST" and url == metadata.get("registration_endpoint"):
            server.registrations += 1
            requested = seen.json or {}
            response: dict[str, Any] = {
                "client_id": f"dcr-{server.registrations}",
                "client_secret": SECRET,
                "redirect_uris": requested.get("redirect_uris", []),
            }
            response.update(server.registration)
            return httpx2.Response(201, json={k: v for k, v in response.items() if v is not None})
        if seen.method == "POST" and url == metadata.get("token_endpoint"):
            return self._token(server, seen)
        if seen.method == "POST" and url == metadata.get("revocation_endpoint"):
            self.refresh_tokens.pop(seen.form.get("token", ""), None)
            return httpx2.Response(200)
        return httpx2.Response(404)

    def _client_of(self, server: FakeAS, seen: Seen) -> str | None:
        basic = seen.basic
        if basic is not None:
            client_id, secret = basic
            expected = server.secrets.get(client_id)
            if expected is not None and expected != secret:
                return None
            return client_id
        if "client_secret" in seen.form:
            client_id = seen.form.get("client_id", "")
            expected = server.secrets.get(client_id)
            if expected is not None and expected != seen.form["client_secret"]:
                return None
            return client_id
        if "client_assertion" in seen.form:
            # the signature is verified by the test that cares (and by test_client_auth)
            return str(peek_claims(seen.form["client_assertion"])["iss"])
        return seen.form.get("client_id")

    def _token(self, server: FakeAS, seen: Seen) -> httpx2.Response:
        form = seen.form
        client_id = self._client_of(server, seen)
        if client_id is None:
            return httpx2.Response(401, json={"error": "invalid_client"})
        grant = form.get("grant_type")
        scopes: tuple[str, ...] = tuple(form.get("scope", "").split())
        body: dict[str, Any] = {"token_type": "Bearer", "expires_in": 3600}
        acr = None
        if grant == "authorization_code":
            code = self.codes.pop(form.get("code", ""), None)
            if code is None or code["issuer"] != server.issuer:
                return httpx2.Response(400, json={"error": "invalid_grant"})
            scopes = tuple(code.get("scope", "").split())
            acr = code.get("acr_values")
            refresh = f"rt-{next(self._n)}"
            self.refresh_tokens[refresh] = {"issuer": server.issuer, "scopes": scopes}
            body["refresh_token"] = refresh
            if "openid" in scopes:
                body["id_token"] = self.id_token(client_id, nonce=code.get("nonce"))
        elif grant == "refresh_token":
            held = self.refresh_tokens.pop(form.get("refresh_token", ""), None)
            if held is None or held["issuer"] != server.issuer:
                return httpx2.Response(400, json={"error": "invalid_grant"})
            scopes = scopes or held["scopes"]
            refresh = f"rt-{next(self._n)}"
            self.refresh_tokens[refresh] = held
            body["refresh_token"] = refresh
            if "openid" in held["scopes"]:
                body["id_token"] = self.id_token(
                    client_id, sub=self.refresh_id_token_sub, forged=self.refresh_id_token_forged
                )
        elif grant == "client_credentials":
            pass
        elif grant == TOKEN_EXCHANGE:
            jag = f"jag-{next(self._n)}"
            self.jags[jag] = {
                "audience": form.get("audience", ""),
                "resource": form.get("resource", ""),
                "client_id": client_id,
            }
            return httpx2.Response(
                200,
                json={
                    "access_token": jag,
                    "issued_token_type": server.exchange_type,
                    "token_type": "N_A",
                },
            )
        elif grant == JWT_BEARER:
            jag = self.jags.get(form.get("assertion", ""))
            if jag is None or jag["audience"] != server.issuer:
                return httpx2.Response(400, json={"error": "invalid_grant"})
        else:
            return httpx2.Response(400, json={"error": "unsupported_grant_type"})
        body["access_token"] = self.issue(server.issuer, client_id, scopes, acr)
        proof = seen.headers.get("dpop")
        if proof is not None and "dpop_signing_alg_values_supported" in server.overrides:
            claims, jkt = _dpop_proof(proof)
            if claims is None or claims.get("htu") != f"{server.issuer}/token":
                return httpx2.Response(400, json={"error": "invalid_dpop_proof"})
            self.tokens[body["access_token"]].jkt = jkt
            body["token_type"] = "DPoP"
        if scopes:
            body["scope"] = " ".join(scopes)
        return httpx2.Response(200, json=body)

    # -- queries ----------------------------------------------------------------------------

    def to(self, url_prefix: str, method: str | None = None) -> list[Seen]:
        return [
            r
            for r in self.requests
            if r.url.startswith(url_prefix) and (method is None or r.method == method)
        ]

    def token_requests(self, issuer: str, grant_type: str | None = None) -> list[Seen]:
        return [
            r
            for r in self.to(issuer, "POST")
            if r.form.get("grant_type")
            and (grant_type is None or r.form["grant_type"] == grant_type)
        ]

    def hosts(self) -> set[str]:
        return {r.host for r in self.requests}

    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.idp_key.as_dict(private=False)]}


def _dpop_proof(proof: str) -> tuple[dict[str, Any] | None, str | None]:
    """The verified claims of a DPoP proof and its key's thumbprint, or ``(None, None)``."""
    try:
        header = json.loads(base64.urlsafe_b64decode(proof.split(".")[0] + "=="))
        key = import_key(header["jwk"])
        if header.get("typ") != "dpop+jwt":
            return None, None
        verified = jws.deserialize_compact(
            proof, key, registry=jws.JWSRegistry(algorithms=[header["alg"]])
        )
        return json.loads(verified.payload), key.thumbprint()
    except Exception:
        return None, None


def _challenge(params: Mapping[str, str]) -> str:
    parts = [f'{name}="{value}"' for name, value in params.items()]
    return "Bearer " + ", ".join(parts) if parts else "Bearer"


def _operation(message: Any) -> str:
    if not isinstance(message, dict):
        return ""
    method = str(message.get("method", ""))
    params = message.get("params") or {}
    name = params.get("name") if isinstance(params, dict) else None
    return f"{method} {name}" if name else method


def rpc(method: str, name: str | None = None) -> dict[str, Any]:
    """A JSON-RPC request body."""
    message: dict[str, Any] = {"jsonrpc": "2.0", "id": 1, "method": method}
    if name is not None:
        message["params"] = {"name": name, "arguments": {}}
    return message


def wire(auth: McpAuth, world: World) -> httpx2.AsyncClient:
    """Route ``auth``'s own requests (discovery, registration, tokens) through the world,
    with the world's DNS; returns an MCP client whose requests go there too."""
    policy = auth._context.policy
    assert policy is not None
    mock = httpx2.AsyncClient(transport=httpx2.MockTransport(world))
    auth._driver = HttpDriver(policy, client=mock, resolve=world.resolve)
    return httpx2.AsyncClient(transport=httpx2.MockTransport(world), auth=auth)


def mcp_only(world: World, **options: Any) -> IdentityClient:
    """An MCP-only agent whose consent is the world's browser."""
    options.setdefault("consent", ConsentBrowser(world))
    return IdentityClient(vault=TokenVault.memory(), **options)
