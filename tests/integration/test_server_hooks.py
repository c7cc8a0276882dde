"""The test servers' hooks do what the interop tests rely on (raw HTTP, no SDK logic).

For each server of the ``server`` fixture: every quirk changes exactly the response it
claims to, ``revoke_grant`` kills the user's refresh tokens, and the request log names
the secret-bearing fields without ever holding their values.
"""

from __future__ import annotations

import json
from typing import Any

import httpx2
import pytest
from _helpers import CALENDAR, record_of
from _servers import ServerUnderTest

pytestmark = pytest.mark.anyio


async def _token_endpoint(server: ServerUnderTest) -> str:
    async with httpx2.AsyncClient(trust_env=False, timeout=30.0) as http:
        response = await http.get(f"{server.issuer}/.well-known/openid-configuration")
    return str(response.json()["token_endpoint"])


async def _token(
    server: ServerUnderTest, kind: Any, form: dict[str, str], *, secret: str | None = None
) -> httpx2.Response:
    kwargs = server.client_kwargs(kind)
    auth = (kwargs["client_id"], secret or kwargs["client_secret"])
    async with httpx2.AsyncClient(trust_env=False, timeout=30.0) as http:
        return await http.post(await _token_endpoint(server), data=form, auth=auth)


_CLIENT_CREDENTIALS = {
    "grant_type": "client_credentials",
    "scope": "calendar.read",
    "resource": CALENDAR,
}


async def test_omit_scope(server: ServerUnderTest) -> None:
    plain = await _token(server, "service", _CLIENT_CREDENTIALS)
    assert plain.json()["scope"] == "calendar.read"
    await server.set_quirk("omit_scope")
    quirky = await _token(server, "service", _CLIENT_CREDENTIALS)
    assert quirky.status_code == 200
    assert "scope" not in quirky.json()
    assert quirky.json()["access_token"]


async def test_client_auth_403(server: ServerUnderTest) -> None:
    plain = await _token(server, "service", _CLIENT_CREDENTIALS, secret="wrong")
    assert plain.status_code == 401
    assert plain.json()["error"] == "invalid_client"
    await server.set_quirk("client_auth_403")
    quirky = await _token(server, "service", _CLIENT_CREDENTIALS, secret="wrong")
    assert quirky.status_code == 403
    assert "error" not in quirky.json()


async def test_refresh_quirks_and_revoke_grant(server: ServerUnderTest) -> None:
    async with server.client("basic") as identity:
        await identity.user("alice").consent(
            scopes=["openid", "calendar.read", "calendar.write"], resource=CALENDAR
        )
        refresh_token = (await record_of(identity, "alice")).refresh_token.get_secret_value()
    secrets = {refresh_token, server.client_kwargs("basic")["client_secret"]}

    async def refresh(scope: str) -> httpx2.Response:
        nonlocal refresh_token
        form = {
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
            "scope": scope,
            "resource": CALENDAR,
        }
        response = await _token(server, "basic", form)
        if response.status_code == 200:
            body = response.json()
            refresh_token = body.get("refresh_token", refresh_token)
            secrets.update({refresh_token, body["access_token"]})
        return response

    await server.clear_requests()
    await server.set_quirk("refresh_ignores_scope")
    broad = await refresh("calendar.write")
    assert {"calendar.read", "calendar.write"} <= set(broad.json()["scope"].split())
    await server.set_quirk("refresh_ignores_scope", False)
    narrow = await refresh("calendar.read")
    assert narrow.json()["scope"].split() == ["calendar.read"]

    await server.revoke_grant("alice")
    dead = await refresh("calendar.read")
    assert dead.status_code == 400
    assert dead.json()["error"] == "invalid_grant"
    await server.set_quirk("refresh_invalid_grant_empty_body")
    empty = await refresh("calendar.read")
    assert empty.status_code == 400
    assert empty.content == b""

    log = await server.requests()
    assert [r["status"] for r in log if r["route"] == "token"] == [200, 200, 400, 400]
    for entry in log:
        assert entry["client_auth"] == "client_secret_basic"
        assert {"authorization_header", "refresh_token"} <= set(entry["secret_fields"])
    dump = json.dumps(log)
    for secret in secrets:
        assert secret not in dump
