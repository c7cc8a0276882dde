"""The DOT test server's own additions behave like a careful deployment.

``private_key_jwt`` is not in django-oauth-toolkit; ``tests/dot_server/validators.py``
adds it. These tests present hand-made client assertions (RFC 7523 §3) at the revocation
endpoint, which answers 200 for an authenticated client and 401 ``invalid_client``
otherwise, so every check of the validator is seen to hold on its own.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest
from _dot import DotServer
from joserfc import jwt
from joserfc.jwk import ECKey

pytestmark = [pytest.mark.anyio, pytest.mark.dot]

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


@pytest.fixture
def dot(dot_server: DotServer) -> Iterator[DotServer]:
    try:
        yield dot_server
    finally:
        with httpx2.Client(trust_env=False, timeout=30.0) as http:
            http.post(f"{dot_server.origin}/dev/assertion-audience", data={"value": "both"})


def assertion(
    dot: DotServer,
    *,
    aud: Any = None,
    iss: str = "agent-jwt",
    sub: str = "agent-jwt",
    lifetime: int = 60,
    key: dict[str, Any] | None = None,
    jti: str | None = None,
) -> str:
    private = key or dot.jwt_client_private_jwk
    now = int(time.time())
    claims = {
        "iss": iss,
        "sub": sub,
        "aud": dot.issuer if aud is None else aud,
        "jti": jti or secrets.token_urlsafe(16),
        "iat": now,
        "exp": now + lifetime,
    }
    header = {"alg": "ES256", "kid": private.get("kid", "k")}
    return jwt.encode(header, claims, ECKey.import_key(private))


async def revoke_with(dot: DotServer, client_assertion: str, client_id: str = "agent-jwt") -> int:
    form = {
        "token": "not-a-token",
        "client_id": client_id,
        "client_assertion_type": JWT_BEARER,
        "client_assertion": client_assertion,
    }
    async with httpx2.AsyncClient(trust_env=False, timeout=30.0) as http:
        response = await http.post(f"{dot.issuer}/revoke_token/", data=form)
    return response.status_code


async def test_valid_assertion_accepted_once(dot: DotServer) -> None:
    signed = assertion(dot)
    assert await revoke_with(dot, signed) == 200
    assert await revoke_with(dot, signed) == 401  # jti single use


@pytest.mark.parametrize(
    ("mode", "audience", "accepted"),
    [
        ("issuer", "issuer", True),
        ("issuer", "token_endpoint", False),
        ("token_endpoint", "token_endpoint", True),
        ("token_endpoint", "issuer", False),
        ("both", "issuer", True),
        ("both", "token_endpoint", True),
        ("both", "elsewhere", False),
    ],
)
async def test_audience_modes(dot: DotServer, mode: str, audience: str, accepted: bool) -> None:
    await dot.set_assertion_audience(mode)
    aud = {
        "issuer": dot.issuer,
        "token_endpoint": f"{dot.issuer}/token/",
        "elsewhere": "https://as.example/",
    }[audience]
    assert await revoke_with(dot, assertion(dot, aud=aud)) == (200 if accepted else 401)
    # an array holding an accepted audience is accepted too (RFC 7519 §4.1.3)
    assert await revoke_with(dot, assertion(dot, aud=[aud])) == (200 if accepted else 401)


async def test_bad_assertions_refused(dot: DotServer) -> None:
    other_key = ECKey.generate_key("P-256", private=True).as_dict(private=True)
    assert await revoke_with(dot, assertion(dot, lifetime=-120)) == 401  # expired
    assert await revoke_with(dot, assertion(dot, key=other_key)) == 401  # not its key
    assert await revoke_with(dot, assertion(dot, sub="someone")) == 401  # iss != sub
    assert await revoke_with(dot, assertion(dot), client_id="agent-public") == 401
    assert await revoke_with(dot, assertion(dot, iss="agent-public", sub="agent-public")) == 401
    assert await revoke_with(dot, "not.a.jwt") == 401
    assert await revoke_with(dot, assertion(dot)) == 200  # and a good one still works
