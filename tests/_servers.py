"""Integration tests written once, run against every real authorization server.

``server`` is a fixture parametrized over ``devidp`` (the bundled oidc-provider dev
server) and ``dot`` (django-oauth-toolkit, ``tests/dot_server``). Each parameter is a
:class:`ServerUnderTest`::

    async def test_refresh(server: ServerUnderTest) -> None:
        server.require("refresh_rotation")          # skip, with the reason, where absent
        async with server.client("basic") as identity:
            ...                                      # IdentityClient, LoopbackConsent +
                                                     # the server's headless browser
        facts = await server.token_facts(token.value.get_secret_value())

The protocol:

- ``name``, ``issuer``, ``capabilities`` (a frozenset of :data:`CAPABILITIES`),
  ``reason(capability)`` (why it is missing: the skip reason, and the cell of the
  generated interop matrix), ``notes`` (remarks on supported ones) and
  ``require(capability)`` (``pytest.skip`` with ``"<name>: <reason>"``);
- ``client_kwargs(kind)``: keyword arguments for ``IdentityClient`` (``client_id``, the
  secret or private key, ``allow_insecure_loopback``) for kind ``basic``, ``post``,
  ``public``, ``jwt`` (authorization code clients by token endpoint authentication),
  ``service`` (client credentials) or ``device`` (RFC 8628); ``client(kind, **overrides)``
  builds the ``IdentityClient`` with ``LoopbackConsent(browser=server.browser())``;
- ``browser(login="alice", approve=True)``: an async callable for
  ``LoopbackConsent(browser=...)``; ``device_approver(login="alice", approve=True)``: a
  ``DeviceCodeConsent(prompt=...)`` that completes the server's device pages;
- ``await subject(login)``: the ID token ``sub`` the server issues for a login;
- ``await requests()`` / ``clear_requests()``: the token endpoint, revocation,
  introspection and device authorization requests (each a dict with at least ``route``,
  ``path``, ``grant_type``, ``scope``, ``resource`` (list), ``client_id``, ``client_auth``
  (the method the request used), ``assertion_audience``, ``secret_fields`` (names only)
  and ``status``);
- ``await set_quirk(name, on=True)`` for the names of :data:`QUIRKS`;
  ``await set_assertion_audience("issuer" | "token_endpoint" | "both")`` (capability
  ``assertion_audience_choice``);
- ``await revoke_grant(user)``: the server forgets the user's grant (its refresh tokens
  die), as a user revoking the client's access would;
- ``await token_facts(access_token)``: what the SERVER says the token carries
  (:class:`TokenFacts`: introspection, or the claims of a JWT access token).

Quirks and the assertion audience are reset after every test.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol

import httpx2
import pytest
from _dot import DOT_CLIENTS, DotBrowser, DotServer

from agent_identity import DeviceAuthorization, IdentityClient, LoopbackConsent
from agent_identity.devidp import DEV_CLIENTS, DevBrowser, DevIdP
from agent_identity.oauth.jwt import peek_claims

ClientKind = Literal["basic", "post", "public", "jwt", "service", "device"]
Browser = Callable[[str], Awaitable[str]]
DeviceApprover = Callable[[DeviceAuthorization], Awaitable[None]]

#: The flows and features a server may have (the interop matrix's columns).
CAPABILITIES: Final = frozenset(
    {
        "authorization_code",
        "iss_parameter",
        "id_token",
        "refresh_rotation",
        "refresh_reuse_detection",
        "revocation",
        "introspection",
        "client_credentials",
        "device",
        "ciba",
        "token_exchange",
        "par",
        "resource_indicators",
        "dpop",
        "private_key_jwt",
        "assertion_audience_choice",
        "jwt_access_tokens",
    }
)

#: Quirk toggles both servers implement (see ``dot_server.hooks.QUIRKS``).
QUIRKS: Final = (
    "refresh_invalid_grant_empty_body",
    "client_auth_403",
    "refresh_ignores_scope",
    "omit_scope",
)


@dataclass(frozen=True)
class TokenFacts:
    """What the authorization server says about an access token."""

    active: bool
    scopes: frozenset[str]
    audience: tuple[str, ...]
    user: str | None  # the login it acts for (None: the client itself)
    client_id: str | None


class ServerUnderTest(Protocol):
    name: str
    issuer: str
    capabilities: frozenset[str]
    notes: dict[str, str]

    def reason(self, capability: str) -> str: ...
    def require(self, capability: str) -> None: ...
    def client_kwargs(self, kind: ClientKind) -> dict[str, Any]: ...
    def client(self, kind: ClientKind = "basic", **overrides: Any) -> IdentityClient: ...
    def browser(self, login: str = "alice", *, approve: bool = True) -> Browser: ...
    def device_approver(self, login: str = "alice", *, approve: bool = True) -> DeviceApprover: ...
    async def subject(self, login: str) -> str: ...
    async def requests(self) -> list[dict[str, Any]]: ...
    async def clear_requests(self) -> None: ...
    async def set_quirk(self, name: str, on: bool = True) -> None: ...
    async def set_assertion_audience(self, value: str) -> None: ...
    async def revoke_grant(self, user: str) -> None: ...
    async def token_facts(self, access_token: str) -> TokenFacts: ...
    def reset(self) -> None: ...
    def log_text(self) -> str: ...


class _Base:
    name: str
    issuer: str
    capabilities: frozenset[str]
    #: Remarks on supported capabilities, for the interop matrix.
    notes: dict[str, str] = {}  # noqa: RUF012 - read only
    _reasons: dict[str, str]

    def reason(self, capability: str) -> str:
        if capability not in CAPABILITIES:
            raise ValueError(f"unknown capability {capability!r}")
        if capability in self.capabilities:
            return "supported"
        return self._reasons[capability]

    def require(self, capability: str) -> None:
        if capability not in self.capabilities:
            pytest.skip(f"{self.name}: {self.reason(capability)}")

    def client_kwargs(self, kind: ClientKind) -> dict[str, Any]:
        raise NotImplementedError

    def browser(self, login: str = "alice", *, approve: bool = True) -> Browser:
        raise NotImplementedError

    def client(self, kind: ClientKind = "basic", **overrides: Any) -> IdentityClient:
        kwargs = self.client_kwargs(kind)
        kwargs.setdefault("consent", LoopbackConsent(browser=self.browser()))
        kwargs.update(overrides)
        return IdentityClient(self.issuer, **kwargs)

    def __repr__(self) -> str:
        return f"<{self.name} {self.issuer}>"


def _facts_from_claims(claims: dict[str, Any]) -> TokenFacts:
    aud = claims.get("aud")
    audience = tuple(aud) if isinstance(aud, list) else ((aud,) if isinstance(aud, str) else ())
    exp = claims.get("exp")
    return TokenFacts(
        active=bool(claims.get("active", isinstance(exp, int) and exp > time.time())),
        scopes=frozenset(str(claims.get("scope") or "").split()),
        audience=audience,
        user=claims.get("username") or (claims.get("sub") if claims.get("sub") else None),
        client_id=claims.get("client_id"),
    )


class DevIdPServer(_Base):
    """The bundled oidc-provider dev server (``agent_identity.devidp``)."""

    name = "devidp"
    capabilities = CAPABILITIES - {"assertion_audience_choice"}
    _reasons = {  # noqa: RUF012 - read only
        "assertion_audience_choice": (
            "oidc-provider accepts the issuer and the token endpoint alike as client "
            "assertion audience and has no setting to accept only one"
        ),
    }
    _KINDS: Final = {
        "basic": "agent-confidential",
        "post": "agent-post",
        "public": "agent-public",
        "jwt": "agent-jwt",
        "service": "agent-confidential",
        "device": "agent-public",
    }

    def __init__(self, idp: DevIdP) -> None:
        self.idp = idp
        self.issuer = idp.issuer
        self._introspection: str | None = None

    def client_kwargs(self, kind: ClientKind) -> dict[str, Any]:
        client_id = self._KINDS[kind]
        secret, method = DEV_CLIENTS[client_id]
        kwargs: dict[str, Any] = {"client_id": client_id, "allow_insecure_loopback": True}
        if method == "private_key_jwt":
            kwargs["private_key"] = self.idp.jwt_client_private_jwk
        elif secret is not None:
            kwargs["client_secret"] = secret
        return kwargs

    def browser(self, login: str = "alice", *, approve: bool = True) -> Browser:
        return DevBrowser(login, approve=approve)

    def device_approver(self, login: str = "alice", *, approve: bool = True) -> DeviceApprover:
        async def approve_device(authorization: DeviceAuthorization) -> None:
            await DevBrowser(login, approve=approve).complete_device(
                authorization.verification_uri, authorization.user_code
            )

        return approve_device

    async def subject(self, login: str) -> str:
        return login  # the dev server's accounts use the login as ``sub``

    async def requests(self) -> list[dict[str, Any]]:
        return await self.idp.requests()

    async def clear_requests(self) -> None:
        await self.idp.clear_requests()

    async def set_quirk(self, name: str, on: bool = True) -> None:
        await self.idp.set_quirk(name, on)

    async def set_assertion_audience(self, value: str) -> None:
        self.require("assertion_audience_choice")

    async def revoke_grant(self, user: str) -> None:
        await self.idp.revoke_grants(user)

    async def token_facts(self, access_token: str) -> TokenFacts:
        if access_token.count(".") == 2:  # a JWT access token (RFC 9068): its claims
            return _facts_from_claims(peek_claims(access_token))
        async with httpx2.AsyncClient(trust_env=False, timeout=30.0) as http:
            if self._introspection is None:
                metadata = await http.get(f"{self.issuer}/.well-known/openid-configuration")
                self._introspection = str(metadata.json()["introspection_endpoint"])
            secret = DEV_CLIENTS["agent-confidential"][0]
            assert secret is not None
            response = await http.post(
                self._introspection,
                data={"token": access_token},
                auth=("agent-confidential", secret),
            )
        response.raise_for_status()
        return _facts_from_claims(response.json())

    def reset(self) -> None:
        with httpx2.Client(trust_env=False, timeout=30.0) as http:
            for name in QUIRKS:
                http.post(f"{self.issuer}/dev/quirks", data={"name": name, "on": "false"})

    def log_text(self) -> str:
        return self.idp.log_text()


class DotServerUnderTest(_Base):
    """django-oauth-toolkit 3.x (``tests/dot_server``)."""

    name = "dot"
    capabilities = CAPABILITIES - {"ciba", "token_exchange", "par", "dpop", "jwt_access_tokens"}
    _reasons = {  # noqa: RUF012 - read only
        "ciba": "django-oauth-toolkit has no OpenID CIBA (backchannel authentication) endpoint",
        "token_exchange": "django-oauth-toolkit has no RFC 8693 token exchange grant",
        "par": "django-oauth-toolkit has no RFC 9126 pushed authorization request endpoint",
        "dpop": "django-oauth-toolkit issues no RFC 9449 DPoP-bound tokens",
        "jwt_access_tokens": (
            "django-oauth-toolkit issues opaque access tokens (no RFC 9068 JWTs); "
            "scopes and audience are known only by introspection"
        ),
    }
    notes = {  # noqa: RUF012 - read only
        "private_key_jwt": (
            "not in django-oauth-toolkit: added by the test server's validator "
            "(tests/dot_server/validators.py)"
        ),
        "iss_parameter": "COMPLIANT_BCP_RFC9700_AUTHZ_RESPONSE_ISS enabled",
        "refresh_reuse_detection": "REFRESH_TOKEN_REUSE_PROTECTION enabled",
        "device": "no ID token and no RFC 8707 resource binding in the device grant",
        "resource_indicators": (
            "binds a refresh token to the scope and resources of the token request that "
            "issued it (not of the authorization request): the SDK detects it at the first "
            "invalid_scope/invalid_target for what the grant holds, asks once more, and no "
            "longer narrows token requests there (tokens then cover the whole grant, and "
            "say so)"
        ),
        "refresh_rotation": "revokes the previous access token of the chain at each refresh",
    }
    _KINDS: Final = {
        "basic": "agent-confidential",
        "post": "agent-post",
        "public": "agent-public",
        "jwt": "agent-jwt",
        "service": "agent-service",
        "device": "agent-device",
    }

    def __init__(self, dot: DotServer) -> None:
        self.dot = dot
        self.issuer = dot.issuer

    def client_kwargs(self, kind: ClientKind) -> dict[str, Any]:
        client = DOT_CLIENTS[self._KINDS[kind]]
        kwargs: dict[str, Any] = {"client_id": client.client_id, "allow_insecure_loopback": True}
        if client.method == "private_key_jwt":
            kwargs["private_key"] = self.dot.jwt_client_private_jwk
        elif client.secret is not None:
            kwargs["client_secret"] = client.secret
        return kwargs

    def browser(self, login: str = "alice", *, approve: bool = True) -> Browser:
        return DotBrowser(login, approve=approve)

    def device_approver(self, login: str = "alice", *, approve: bool = True) -> DeviceApprover:
        async def approve_device(authorization: DeviceAuthorization) -> None:
            await DotBrowser(login, approve=approve).complete_device(
                authorization.verification_uri_complete or authorization.verification_uri,
                authorization.user_code,
            )

        return approve_device

    async def subject(self, login: str) -> str:
        return (await self.dot.subjects())[login]

    async def requests(self) -> list[dict[str, Any]]:
        return await self.dot.requests()

    async def clear_requests(self) -> None:
        await self.dot.clear_requests()

    async def set_quirk(self, name: str, on: bool = True) -> None:
        await self.dot.set_quirk(name, on)

    async def set_assertion_audience(self, value: str) -> None:
        await self.dot.set_assertion_audience(value)

    async def revoke_grant(self, user: str) -> None:
        await self.dot.revoke_grants(user)

    async def token_facts(self, access_token: str) -> TokenFacts:
        return _facts_from_claims(await self.dot.introspect(access_token))

    def reset(self) -> None:
        with httpx2.Client(trust_env=False, timeout=30.0) as http:
            for name in QUIRKS:
                http.post(f"{self.dot.origin}/dev/quirks", data={"name": name, "on": ""})
            http.post(f"{self.dot.origin}/dev/assertion-audience", data={"value": "both"})

    def log_text(self) -> str:
        return self.dot.log_text()


@pytest.fixture(
    params=[
        pytest.param("devidp", marks=pytest.mark.idp),
        pytest.param("dot", marks=pytest.mark.dot),
    ]
)
def server(request: pytest.FixtureRequest) -> Iterator[ServerUnderTest]:
    """Each real authorization server in turn (session-wide processes); quirks and the
    assertion audience are reset after the test, and what the server logged meanwhile is
    printed (pytest shows it when the test fails)."""
    sut: ServerUnderTest
    if request.param == "devidp":
        sut = DevIdPServer(request.getfixturevalue("dev_idp"))
    else:
        sut = DotServerUnderTest(request.getfixturevalue("dot_server"))
    sut.reset()
    log_start = len(sut.log_text())
    try:
        yield sut
    finally:
        sut.reset()
        # The server's diagnostics during this test (shown by pytest when it fails).
        if news := sut.log_text()[log_start:].strip():
            print(f"--- {sut.name} server log during the test ---\n{news[-4000:]}")
