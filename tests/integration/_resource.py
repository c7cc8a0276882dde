"""A small protected resource (an RFC 6750 / RFC 9068 resource server) for the tests.

It validates the local authorization server's JWT access tokens for real (signature with
the server's JWKS, ``iss``, ``aud`` = its resource URI, ``exp``) and answers like a
well-behaved API: ``401 invalid_token``, ``403 insufficient_scope`` with the needed scope,
``401 insufficient_user_authentication`` (RFC 9470) when asked to. Served in-process
through ``httpx2.ASGITransport``; no socket needed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from joserfc import jwt
from joserfc.jwk import KeySet

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


@dataclass
class CalendarAPI:
    """``GET`` needs ``calendar.read``; ``POST`` needs ``calendar.write``."""

    issuer: str
    jwks: dict[str, Any]
    resource: str = "https://calendar.example/api"
    #: answer 401 invalid_token to this many valid requests (a token revoked at the AS)
    reject_next: int = 0
    #: always answer 403 insufficient_scope (a misbehaving resource)
    always_insufficient: bool = False
    #: ask for a fresh authentication once (RFC 9470)
    require_fresh_authentication: bool = False
    seen: list[dict[str, Any]] = field(default_factory=list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        self.seen.append({"method": scope["method"], "path": scope["path"], "headers": headers})
        auth = headers.get("authorization", "")
        if not auth.startswith("Bearer "):
            await self._challenge(send, 401, 'Bearer realm="calendar"')
            return
        try:
            token = jwt.decode(auth[len("Bearer ") :], KeySet.import_key_set(self.jwks))
        except Exception:
            await self._challenge(send, 401, 'Bearer error="invalid_token"')
            return
        claims = token.claims
        if (
            claims.get("iss") != self.issuer
            or claims.get("aud") != self.resource
            or float(claims.get("exp", 0)) < time.time()
        ):
            await self._challenge(send, 401, 'Bearer error="invalid_token"')
            return
        if self.reject_next > 0:
            self.reject_next -= 1
            await self._challenge(send, 401, 'Bearer error="invalid_token"')
            return
        if self.require_fresh_authentication:
            self.require_fresh_authentication = False
            await self._challenge(
                send,
                401,
                'Bearer error="insufficient_user_authentication", '
                'error_description="A fresh authentication is required", '
                'acr_values="urn:example:mfa", max_age="0"',
            )
            return
        needed = (
            "calendar.write" if scope["method"] in ("POST", "PUT", "DELETE") else "calendar.read"
        )
        granted = str(claims.get("scope", "")).split()
        if self.always_insufficient or needed not in granted:
            await self._challenge(send, 403, f'Bearer error="insufficient_scope", scope="{needed}"')
            return
        body = {"sub": claims.get("sub"), "scope": claims.get("scope"), "act": claims.get("act")}
        await self._respond(send, 200, json.dumps(body).encode(), {})

    async def _challenge(self, send: Send, status: int, challenge: str) -> None:
        await self._respond(send, status, b"{}", {"www-authenticate": challenge})

    @staticmethod
    async def _respond(send: Send, status: int, body: bytes, headers: dict[str, str]) -> None:
        raw = [(b"content-type", b"application/json")]
        raw += [(k.encode(), v.encode()) for k, v in headers.items()]
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": body})
