"""The DEV ONLY local authorization server and its launcher, proven with plain HTTP.

Nothing here uses the SDK's OAuth layer: requests are built by hand with the httpx2 client
from ``agent_identity._http.create_client()``, so these tests pin the server's behaviour
that the SDK's own integration tests rely on.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import secrets
import socket
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet

from agent_identity._http import create_client
from agent_identity.devidp import (
    CIBA_GRANT_TYPE,
    DEV_CLIENTS,
    DEVICE_CODE_GRANT_TYPE,
    TOKEN_EXCHANGE_GRANT_TYPE,
    DevBrowser,
    DevIdP,
    DevIdPError,
    ensure_installed,
)

pytestmark = [pytest.mark.idp, pytest.mark.anyio]

CAL = "https://calendar.example/api"
MAIL = "https://mail.example/api"
PAY = "https://payments.example/api"
AT_TYPE = "urn:ietf:params:oauth:token-type:access_token"


# --------------------------------------------------------------------------- helpers


def basic(client_id: str) -> tuple[str, str]:
    secret = DEV_CLIENTS[client_id][0]
    assert secret is not None
    return (client_id, secret)


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(32)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    return verifier, challenge.rstrip(b"=").decode()


def claims_of(token: str) -> dict[str, Any]:
    """The unverified payload of a JWT (signature checks are in test_jwt_signature...)."""
    payload = token.split(".")[1]
    payload += "=" * (-len(payload) % 4)
    return dict(json.loads(base64.urlsafe_b64decode(payload)))


def query_of(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


async def token(idp: DevIdP, client_id: str, **form: str) -> Any:
    """POST to the token endpoint; returns the httpx2 response."""
    async with create_client(trust_env=False) as http:
        if DEV_CLIENTS[client_id][1] == "client_secret_post":
            secret = DEV_CLIENTS[client_id][0]
            assert secret is not None
            form = {**form, "client_id": client_id, "client_secret": secret}
            return await http.post(f"{idp.issuer}/token", data=form)
        if DEV_CLIENTS[client_id][1] == "none":
            return await http.post(f"{idp.issuer}/token", data={**form, "client_id": client_id})
        return await http.post(f"{idp.issuer}/token", data=form, auth=basic(client_id))


def authorize_url(
    idp: DevIdP,
    *,
    client_id: str = "agent-confidential",
    redirect_uri: str = "http://127.0.0.1:51234/callback",
    scope: str,
    resource: str | None = None,
    challenge: str,
    state: str,
    consent: bool = True,
) -> str:
    params: dict[str, str] = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": redirect_uri,
        "scope": scope,
        "state": state,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    if resource:
        params["resource"] = resource
    if consent:
        params["prompt"] = "consent"
    return f"{idp.issuer}/auth?{urlencode(params)}"


async def code_flow(
    idp: DevIdP,
    *,
    scope: str,
    resource: str | None,
    client_id: str = "agent-confidential",
    login: str = "alice",
    token_resource: str | None = None,
) -> dict[str, Any]:
    """Run authorization code + PKCE headlessly (no listener) and redeem the code."""
    verifier, challenge = pkce_pair()
    state = secrets.token_urlsafe(16)
    redirect_uri = "http://127.0.0.1:51234/callback"
    browser = DevBrowser(login, follow_loopback_redirect=False)
    final = await browser.visit(
        authorize_url(
            idp,
            client_id=client_id,
            redirect_uri=redirect_uri,
            scope=scope,
            resource=resource,
            challenge=challenge,
            state=state,
        )
    )
    params = query_of(final)
    assert params["state"] == state
    assert params["iss"] == idp.issuer
    form = {
        "grant_type": "authorization_code",
        "code": params["code"],
        "code_verifier": verifier,
        "redirect_uri": redirect_uri,
    }
    if token_resource:
        form["resource"] = token_resource
    response = await token(idp, client_id, **form)
    assert response.status_code == 200, response.text
    return dict(response.json())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@asynccontextmanager
async def loopback_receiver(
    status: int = 204,
) -> AsyncIterator[tuple[int, asyncio.Queue[dict[str, Any]]]]:
    """A one-purpose HTTP/1.1 receiver on 127.0.0.1: records method, target, headers, body."""
    received: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers = {
            k.strip().lower(): v.strip()
            for k, v in (line.split(":", 1) for line in lines[1:] if line)
        }
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        await received.put({"method": method, "target": target, "headers": headers, "body": body})
        writer.write(
            f"HTTP/1.1 {status} OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".encode()
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = int(server.sockets[0].getsockname()[1])
    try:
        yield port, received
    finally:
        server.close()
        await server.wait_closed()


async def ciba_request(idp: DevIdP, client_id: str, **form: str) -> dict[str, Any]:
    async with create_client(trust_env=False) as http:
        response = await http.post(f"{idp.issuer}/backchannel", data=form, auth=basic(client_id))
    assert response.status_code == 200, response.text
    return dict(response.json())


async def ciba_user_token(idp: DevIdP, scope: str, resource: str) -> dict[str, Any]:
    """A user (alice) token for ``resource`` via CIBA poll, approved through the hook."""
    started = await ciba_request(
        idp, "agent-confidential", scope=f"openid {scope}", login_hint="alice", resource=resource
    )
    await idp.ciba_approve(started["auth_req_id"])
    response = await token(
        idp, "agent-confidential", grant_type=CIBA_GRANT_TYPE, auth_req_id=started["auth_req_id"]
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


def assert_oauth_error(response: Any, error: str, status: int = 400) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"] == error, response.text


# --------------------------------------------------------------------------- discovery


async def test_discovery_document(dev_idp: DevIdP) -> None:
    async with create_client(trust_env=False) as http:
        oidc = (await http.get(f"{dev_idp.issuer}/.well-known/openid-configuration")).json()
        oauth = (await http.get(f"{dev_idp.issuer}/.well-known/oauth-authorization-server")).json()
    assert oidc == oauth
    assert oidc["issuer"] == dev_idp.issuer == f"http://127.0.0.1:{dev_idp.port}"
    assert oidc["code_challenge_methods_supported"] == ["S256"]
    assert oidc["authorization_response_iss_parameter_supported"] is True
    for endpoint in (
        "authorization_endpoint",
        "token_endpoint",
        "jwks_uri",
        "registration_endpoint",
        "revocation_endpoint",
        "introspection_endpoint",
        "device_authorization_endpoint",
        "backchannel_authentication_endpoint",
        "pushed_authorization_request_endpoint",
    ):
        assert oidc[endpoint].startswith(dev_idp.issuer + "/"), endpoint
    assert set(oidc["grant_types_supported"]) >= {
        "authorization_code",
        "refresh_token",
        "client_credentials",
        DEVICE_CODE_GRANT_TYPE,
        CIBA_GRANT_TYPE,
        TOKEN_EXCHANGE_GRANT_TYPE,
    }
    assert set(oidc["backchannel_token_delivery_modes_supported"]) == {"poll", "ping"}
    assert "ES256" in oidc["dpop_signing_alg_values_supported"]
    assert oidc.get("require_pushed_authorization_requests", False) is False
    assert set(oidc["scopes_supported"]) >= {
        "openid",
        "profile",
        "email",
        "offline_access",
        "calendar.read",
        "calendar.write",
        "mail.read",
        "mail.send",
        "payments.read",
        "payments.write",
    }
    assert {"client_secret_basic", "client_secret_post", "private_key_jwt", "none"} <= set(
        oidc["token_endpoint_auth_methods_supported"]
    )


# --------------------------------------------------------------------------- authorization code


async def test_authorization_code_pkce_delivered_to_loopback_listener(dev_idp: DevIdP) -> None:
    verifier, challenge = pkce_pair()
    state = secrets.token_urlsafe(16)
    async with loopback_receiver(status=200) as (port, received):
        redirect_uri = f"http://127.0.0.1:{port}/callback"  # registered without a port
        url = authorize_url(
            dev_idp,
            redirect_uri=redirect_uri,
            scope="openid offline_access calendar.read",
            resource=CAL,
            challenge=challenge,
            state=state,
        )
        final = await DevBrowser("alice").visit(url)
        hit = await asyncio.wait_for(received.get(), 5)
    assert final.startswith(redirect_uri + "?")
    assert hit["method"] == "GET"
    assert hit["target"] == final[len(f"http://127.0.0.1:{port}") :]
    params = query_of(final)
    assert params["state"] == state
    assert params["iss"] == dev_idp.issuer
    assert "code" in params

    response = await token(
        dev_idp,
        "agent-confidential",
        grant_type="authorization_code",
        code=params["code"],
        code_verifier=verifier,
        redirect_uri=redirect_uri,
        resource=CAL,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert body["refresh_token"]
    assert body["id_token"]
    access = claims_of(body["access_token"])
    assert access["aud"] == CAL
    assert access["sub"] == "alice"
    assert access["scope"] == "calendar.read"
    assert access["iss"] == dev_idp.issuer
    id_token = claims_of(body["id_token"])
    assert id_token["aud"] == "agent-confidential"
    assert id_token["sub"] == "alice"

    # the code is single use
    again = await token(
        dev_idp,
        "agent-confidential",
        grant_type="authorization_code",
        code=params["code"],
        code_verifier=verifier,
        redirect_uri=redirect_uri,
    )
    assert_oauth_error(again, "invalid_grant")


async def test_jwt_access_token_signature_verifies_with_jwks(dev_idp: DevIdP) -> None:
    body = await code_flow(dev_idp, scope="mail.read", resource=MAIL)
    async with create_client(trust_env=False) as http:
        jwks = (await http.get(f"{dev_idp.issuer}/jwks")).json()
    decoded = jwt.decode(body["access_token"], KeySet.import_key_set(jwks), algorithms=["RS256"])
    assert decoded.header["typ"] == "at+jwt"
    assert decoded.claims["aud"] == MAIL
    assert decoded.claims["scope"] == "mail.read"
    assert decoded.claims["exp"] - decoded.claims["iat"] == 300


async def test_pkce_is_required_and_checked(dev_idp: DevIdP) -> None:
    async with create_client(trust_env=False) as http:
        response = await http.get(
            f"{dev_idp.issuer}/auth",
            params={
                "response_type": "code",
                "client_id": "agent-confidential",
                "redirect_uri": "http://127.0.0.1:5000/callback",
                "scope": "openid",
                "state": "s1",
            },
        )
    assert response.is_redirect
    location = query_of(response.headers["location"])
    assert location["error"] == "invalid_request"
    assert location["iss"] == dev_idp.issuer

    verifier, challenge = pkce_pair()
    final = await DevBrowser("bob", follow_loopback_redirect=False).visit(
        authorize_url(dev_idp, scope="openid", challenge=challenge, state="s2")
    )
    wrong = await token(
        dev_idp,
        "agent-confidential",
        grant_type="authorization_code",
        code=query_of(final)["code"],
        code_verifier=pkce_pair()[0],
        redirect_uri="http://127.0.0.1:51234/callback",
    )
    assert_oauth_error(wrong, "invalid_grant")
    assert verifier  # the right one was never sent


async def test_unregistered_redirect_path_is_refused(dev_idp: DevIdP) -> None:
    _, challenge = pkce_pair()
    url = authorize_url(
        dev_idp,
        redirect_uri="http://127.0.0.1:5000/elsewhere",
        scope="openid",
        challenge=challenge,
        state="s",
    )
    with pytest.raises(DevIdPError, match="redirect_uri"):
        await DevBrowser("alice").visit(url)


async def test_consent_denied_redirects_access_denied(dev_idp: DevIdP) -> None:
    _, challenge = pkce_pair()
    final = await DevBrowser("alice", approve=False, follow_loopback_redirect=False).visit(
        authorize_url(
            dev_idp, scope="openid calendar.read", resource=CAL, challenge=challenge, state="st"
        )
    )
    params = query_of(final)
    assert params["error"] == "access_denied"
    assert params["state"] == "st"
    assert params["iss"] == dev_idp.issuer
    assert "code" not in params


async def test_unknown_login_is_rejected(dev_idp: DevIdP) -> None:
    _, challenge = pkce_pair()
    with pytest.raises(DevIdPError, match="rejected"):
        await DevBrowser("mallory", follow_loopback_redirect=False).visit(
            authorize_url(dev_idp, scope="openid", challenge=challenge, state="s")
        )


async def test_public_client_and_private_key_jwt_client(dev_idp: DevIdP) -> None:
    public = await code_flow(
        dev_idp, client_id="agent-public", scope="openid offline_access mail.read", resource=MAIL
    )
    assert claims_of(public["access_token"])["client_id"] == "agent-public"
    assert public["refresh_token"]

    key = ECKey.import_key(dev_idp.jwt_client_private_jwk)
    now = int(time.time())
    assertion = jwt.encode(
        {"alg": "ES256", "kid": key.kid},
        {
            "iss": "agent-jwt",
            "sub": "agent-jwt",
            "aud": dev_idp.issuer,
            "jti": secrets.token_urlsafe(16),
            "iat": now,
            "exp": now + 60,
        },
        key,
    )
    async with create_client(trust_env=False) as http:
        response = await http.post(
            f"{dev_idp.issuer}/token",
            data={
                "grant_type": "client_credentials",
                "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                "client_assertion": assertion,
                "resource": PAY,
                "scope": "payments.read",
            },
        )
    assert response.status_code == 200, response.text
    access = claims_of(response.json()["access_token"])
    assert access["sub"] == "agent-jwt"
    assert access["aud"] == PAY


# --------------------------------------------------------------------------- refresh


async def test_refresh_rotates_and_reuse_revokes_the_grant(dev_idp: DevIdP) -> None:
    first = await code_flow(dev_idp, scope="openid offline_access calendar.read", resource=CAL)
    old_rt = first["refresh_token"]
    rotated = await token(
        dev_idp, "agent-confidential", grant_type="refresh_token", refresh_token=old_rt
    )
    assert rotated.status_code == 200, rotated.text
    new_rt = rotated.json()["refresh_token"]
    assert new_rt
    assert new_rt != old_rt
    assert claims_of(rotated.json()["access_token"])["aud"] == CAL  # granted resource reused

    reuse = await token(
        dev_idp, "agent-confidential", grant_type="refresh_token", refresh_token=old_rt
    )
    assert_oauth_error(reuse, "invalid_grant")
    # reuse of a rotated token revokes the whole grant, the newest refresh token included
    after = await token(
        dev_idp, "agent-confidential", grant_type="refresh_token", refresh_token=new_rt
    )
    assert_oauth_error(after, "invalid_grant")


async def test_no_refresh_token_without_offline_access(dev_idp: DevIdP) -> None:
    body = await code_flow(dev_idp, scope="openid calendar.read", resource=CAL)
    assert "refresh_token" not in body


async def test_refresh_with_resource_and_narrower_scope(dev_idp: DevIdP) -> None:
    body = await code_flow(
        dev_idp, scope="openid offline_access calendar.read calendar.write", resource=CAL
    )
    assert set(claims_of(body["access_token"])["scope"].split()) == {
        "calendar.read",
        "calendar.write",
    }
    narrowed = await token(
        dev_idp,
        "agent-confidential",
        grant_type="refresh_token",
        refresh_token=body["refresh_token"],
        resource=CAL,
        scope="calendar.read",
    )
    assert narrowed.status_code == 200, narrowed.text
    access = claims_of(narrowed.json()["access_token"])
    assert access["aud"] == CAL
    assert access["scope"] == "calendar.read"
    assert narrowed.json()["scope"] == "calendar.read"

    wider = await token(
        dev_idp,
        "agent-confidential",
        grant_type="refresh_token",
        refresh_token=narrowed.json()["refresh_token"],
        resource=CAL,
        scope="calendar.read mail.read",
    )
    assert_oauth_error(wider, "invalid_scope")
    other = await token(
        dev_idp,
        "agent-confidential",
        grant_type="refresh_token",
        refresh_token=narrowed.json()["refresh_token"],
        resource=MAIL,
    )
    assert_oauth_error(other, "invalid_target")


async def test_short_access_token_ttl(dev_idp_factory: Any) -> None:
    idp = dev_idp_factory(access_token_ttl=2)
    body = await code_flow(idp, scope="openid offline_access mail.read", resource=MAIL)
    assert body["expires_in"] == 2
    access = claims_of(body["access_token"])
    assert access["exp"] - access["iat"] == 2


# --------------------------------------------------------------------------- client credentials


async def test_client_credentials(dev_idp: DevIdP) -> None:
    response = await token(
        dev_idp,
        "agent-confidential",
        grant_type="client_credentials",
        resource=MAIL,
        scope="mail.read",
    )
    assert response.status_code == 200, response.text
    access = claims_of(response.json()["access_token"])
    assert access["sub"] == "agent-confidential"
    assert access["aud"] == MAIL
    assert access["scope"] == "mail.read"

    post = await token(
        dev_idp, "agent-post", grant_type="client_credentials", resource=CAL, scope="calendar.read"
    )
    assert post.status_code == 200, post.text
    assert claims_of(post.json()["access_token"])["client_id"] == "agent-post"

    async with create_client(trust_env=False) as http:
        bad = await http.post(
            f"{dev_idp.issuer}/token",
            data={"grant_type": "client_credentials"},
            auth=("agent-confidential", "wrong"),
        )
    assert_oauth_error(bad, "invalid_client", 401)
    unknown = await token(
        dev_idp,
        "agent-confidential",
        grant_type="client_credentials",
        resource="https://unknown.example/",
    )
    assert_oauth_error(unknown, "invalid_target")


async def test_dpop_bound_client_credentials_token(dev_idp: DevIdP) -> None:
    key = ECKey.generate_key("P-256", private=True)
    public = {k: v for k, v in key.as_dict(private=False).items() if k in ("kty", "crv", "x", "y")}
    proof = jwt.encode(
        {"typ": "dpop+jwt", "alg": "ES256", "jwk": public},
        {
            "jti": secrets.token_urlsafe(16),
            "htm": "POST",
            "htu": f"{dev_idp.issuer}/token",
            "iat": int(time.time()),
        },
        key,
    )
    async with create_client(trust_env=False) as http:
        response = await http.post(
            f"{dev_idp.issuer}/token",
            data={"grant_type": "client_credentials", "resource": CAL, "scope": "calendar.read"},
            auth=basic("agent-confidential"),
            headers={"DPoP": proof},
        )
    assert response.status_code == 200, response.text
    assert response.json()["token_type"] == "DPoP"
    assert claims_of(response.json()["access_token"])["cnf"]["jkt"]


# --------------------------------------------------------------------------- device flow


async def test_device_flow_through_the_device_pages(dev_idp: DevIdP) -> None:
    async with create_client(trust_env=False) as http:
        started = (
            await http.post(
                f"{dev_idp.issuer}/device/auth",
                data={
                    "client_id": "agent-public",
                    "scope": "openid calendar.read",
                    "resource": CAL,
                },
            )
        ).json()
    assert started["verification_uri"] == f"{dev_idp.issuer}/device"
    poll = {"grant_type": DEVICE_CODE_GRANT_TYPE, "device_code": started["device_code"]}
    assert_oauth_error(await token(dev_idp, "agent-public", **poll), "authorization_pending")

    final = await DevBrowser("bob").complete_device(started["verification_uri_complete"])
    assert final.startswith(dev_idp.issuer)

    done = await token(dev_idp, "agent-public", **poll)
    assert done.status_code == 200, done.text
    access = claims_of(done.json()["access_token"])
    assert access["sub"] == "bob"
    assert access["aud"] == CAL


async def test_device_flow_typed_code_abort_and_hook(dev_idp: DevIdP) -> None:
    async with create_client(trust_env=False) as http:
        first = (
            await http.post(
                f"{dev_idp.issuer}/device/auth",
                data={
                    "client_id": "agent-confidential",
                    "scope": "openid mail.read",
                    "resource": MAIL,
                },
                auth=basic("agent-confidential"),
            )
        ).json()
        second = (
            await http.post(
                f"{dev_idp.issuer}/device/auth",
                data={"client_id": "agent-public", "scope": "openid"},
            )
        ).json()
    await DevBrowser("alice", approve=False).complete_device(
        first["verification_uri"], first["user_code"]
    )
    denied = await token(
        dev_idp,
        "agent-confidential",
        grant_type=DEVICE_CODE_GRANT_TYPE,
        device_code=first["device_code"],
    )
    assert_oauth_error(denied, "access_denied")

    await dev_idp.device_approve(second["user_code"], login="bob")
    ok = await token(
        dev_idp,
        "agent-public",
        grant_type=DEVICE_CODE_GRANT_TYPE,
        device_code=second["device_code"],
    )
    assert ok.status_code == 200, ok.text
    assert claims_of(ok.json()["id_token"])["sub"] == "bob"


# --------------------------------------------------------------------------- CIBA


async def test_ciba_poll_approve_and_deny(dev_idp: DevIdP) -> None:
    message = "Pay 25.00 EUR to Bob - code 4821"
    started = await ciba_request(
        dev_idp,
        "agent-confidential",
        scope="openid payments.write",
        login_hint="alice",
        binding_message=message,
        resource=PAY,
    )
    assert started["expires_in"] > 0
    assert "interval" not in started  # oidc-provider never sends one unless configured
    poll = {"grant_type": CIBA_GRANT_TYPE, "auth_req_id": started["auth_req_id"]}
    assert_oauth_error(await token(dev_idp, "agent-confidential", **poll), "authorization_pending")

    pending = {p["auth_req_id"]: p for p in await dev_idp.ciba_pending()}
    entry = pending[started["auth_req_id"]]
    assert entry["binding_message"] == message
    assert entry["account"] == "alice"
    assert entry["scope"] == "openid payments.write"

    await dev_idp.ciba_approve(started["auth_req_id"])
    assert started["auth_req_id"] not in {p["auth_req_id"] for p in await dev_idp.ciba_pending()}
    done = await token(dev_idp, "agent-confidential", **poll)
    assert done.status_code == 200, done.text
    access = claims_of(done.json()["access_token"])
    assert (access["sub"], access["aud"], access["scope"]) == ("alice", PAY, "payments.write")

    denied = await ciba_request(dev_idp, "agent-confidential", scope="openid", login_hint="bob")
    await dev_idp.ciba_deny(denied["auth_req_id"])
    result = await token(
        dev_idp, "agent-confidential", grant_type=CIBA_GRANT_TYPE, auth_req_id=denied["auth_req_id"]
    )
    assert_oauth_error(result, "access_denied")

    async with create_client(trust_env=False) as http:
        unknown = await http.post(
            f"{dev_idp.issuer}/backchannel",
            data={"scope": "openid", "login_hint": "mallory"},
            auth=basic("agent-confidential"),
        )
    assert_oauth_error(unknown, "unknown_user_id")


async def test_ciba_interval_and_slow_down_knobs(dev_idp_factory: Any) -> None:
    idp = dev_idp_factory(ciba_interval=2, ciba_slow_down_once=True)
    started = await ciba_request(idp, "agent-confidential", scope="openid", login_hint="alice")
    assert started["interval"] == 2
    poll = {"grant_type": CIBA_GRANT_TYPE, "auth_req_id": started["auth_req_id"]}
    assert_oauth_error(await token(idp, "agent-confidential", **poll), "slow_down")
    assert_oauth_error(await token(idp, "agent-confidential", **poll), "authorization_pending")
    await idp.ciba_approve(started["auth_req_id"])
    assert (await token(idp, "agent-confidential", **poll)).status_code == 200


async def test_ciba_ping_delivery_to_loopback_receiver(dev_idp_factory: Any) -> None:
    async with loopback_receiver() as (port, received):
        idp = dev_idp_factory(ping_notification_endpoint=f"http://127.0.0.1:{port}/ciba/notify")
        notification_token = secrets.token_urlsafe(32)
        started = await ciba_request(
            idp,
            "agent-ping",
            scope="openid calendar.read",
            login_hint="alice",
            resource=CAL,
            client_notification_token=notification_token,
        )
        await idp.ciba_approve(started["auth_req_id"])
        hit = await asyncio.wait_for(received.get(), 5)
    assert hit["method"] == "POST"
    assert hit["target"] == "/ciba/notify"
    assert hit["headers"]["authorization"] == f"Bearer {notification_token}"
    assert json.loads(hit["body"]) == {"auth_req_id": started["auth_req_id"]}
    done = await token(
        idp, "agent-ping", grant_type=CIBA_GRANT_TYPE, auth_req_id=started["auth_req_id"]
    )
    assert done.status_code == 200, done.text
    assert claims_of(done.json()["access_token"])["aud"] == CAL


# --------------------------------------------------------------------------- token exchange


async def test_token_exchange_with_act_and_nested_act(dev_idp: DevIdP) -> None:
    user = await ciba_user_token(dev_idp, "calendar.read calendar.write", CAL)
    agent = (await token(dev_idp, "agent-confidential", grant_type="client_credentials")).json()[
        "access_token"
    ]  # opaque: no resource asked

    first = await token(
        dev_idp,
        "agent-confidential",
        grant_type=TOKEN_EXCHANGE_GRANT_TYPE,
        subject_token=user["access_token"],
        subject_token_type=AT_TYPE,
        actor_token=agent,
        actor_token_type=AT_TYPE,
        resource=CAL,
        scope="calendar.read",
    )
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["issued_token_type"] == AT_TYPE
    assert body["token_type"] == "Bearer"
    assert body["scope"] == "calendar.read"
    assert 0 < body["expires_in"] <= 300
    claims = claims_of(body["access_token"])
    assert claims["sub"] == "alice"
    assert claims["aud"] == CAL
    assert claims["scope"] == "calendar.read"
    assert claims["act"] == {"sub": "agent-confidential"}

    second_actor = (
        await token(
            dev_idp, "agent-post", grant_type="client_credentials", resource=MAIL, scope="mail.read"
        )
    ).json()["access_token"]  # a JWT actor token
    nested = await token(
        dev_idp,
        "agent-post",
        grant_type=TOKEN_EXCHANGE_GRANT_TYPE,
        subject_token=body["access_token"],
        subject_token_type=AT_TYPE,
        actor_token=second_actor,
        actor_token_type=AT_TYPE,
        audience=CAL,
    )
    assert nested.status_code == 200, nested.text
    nested_claims = claims_of(nested.json()["access_token"])
    assert nested_claims["sub"] == "alice"
    assert nested_claims["act"] == {"sub": "agent-post", "act": {"sub": "agent-confidential"}}
    assert nested_claims["scope"] == "calendar.read"


async def test_token_exchange_errors(dev_idp: DevIdP) -> None:
    user = await ciba_user_token(dev_idp, "calendar.read", CAL)
    base = {
        "grant_type": TOKEN_EXCHANGE_GRANT_TYPE,
        "subject_token": user["access_token"],
        "subject_token_type": AT_TYPE,
    }
    other_agent = (await token(dev_idp, "agent-post", grant_type="client_credentials")).json()[
        "access_token"
    ]
    cases: list[tuple[Mapping[str, str], str]] = [
        ({**base, "scope": "calendar.write"}, "invalid_scope"),
        ({**base, "resource": "https://unknown.example/api"}, "invalid_target"),
        ({**base, "audience": "nobody"}, "invalid_target"),
        ({**base, "resource": MAIL}, "invalid_scope"),
        ({**base, "subject_token": "not-a-token"}, "invalid_grant"),
        ({k: v for k, v in base.items() if k != "subject_token_type"}, "invalid_request"),
        ({k: v for k, v in base.items() if k != "subject_token"}, "invalid_request"),
        ({**base, "subject_token_type": "urn:x"}, "invalid_request"),
        ({**base, "actor_token": other_agent}, "invalid_request"),
        ({**base, "actor_token_type": AT_TYPE}, "invalid_request"),
        ({**base, "actor_token": other_agent, "actor_token_type": AT_TYPE}, "invalid_grant"),
    ]
    for form, error in cases:
        response = await token(dev_idp, "agent-confidential", **form)
        assert_oauth_error(response, error)
    ok = await token(dev_idp, "agent-confidential", **base)  # target defaults to the subject's aud
    assert ok.status_code == 200, ok.text
    assert "act" not in claims_of(ok.json()["access_token"])
    assert claims_of(ok.json()["access_token"])["aud"] == CAL


# --------------------------------------------------------------------------- PAR, DCR, revocation


async def test_pushed_authorization_request(dev_idp: DevIdP) -> None:
    verifier, challenge = pkce_pair()
    redirect_uri = "http://127.0.0.1:40123/callback"
    async with create_client(trust_env=False) as http:
        pushed = await http.post(
            f"{dev_idp.issuer}/request",
            data={
                "response_type": "code",
                "client_id": "agent-confidential",
                "redirect_uri": redirect_uri,
                "scope": "openid mail.read",
                "resource": MAIL,
                "state": "par-state",
                "code_challenge": challenge,
                "code_challenge_method": "S256",
            },
            auth=basic("agent-confidential"),
        )
    assert pushed.status_code == 201, pushed.text
    request_uri = pushed.json()["request_uri"]
    assert request_uri.startswith("urn:ietf:params:oauth:request_uri:")
    final = await DevBrowser("alice", follow_loopback_redirect=False).visit(
        f"{dev_idp.issuer}/auth?"
        + urlencode({"client_id": "agent-confidential", "request_uri": request_uri})
    )
    params = query_of(final)
    assert params["state"] == "par-state"
    done = await token(
        dev_idp,
        "agent-confidential",
        grant_type="authorization_code",
        code=params["code"],
        code_verifier=verifier,
        redirect_uri=redirect_uri,
    )
    assert done.status_code == 200, done.text
    assert claims_of(done.json()["access_token"])["aud"] == MAIL


async def test_dynamic_client_registration(dev_idp: DevIdP) -> None:
    async with create_client(trust_env=False) as http:
        registered = await http.post(
            f"{dev_idp.issuer}/reg",
            json={
                "client_name": "dcr test agent",
                "application_type": "native",
                "redirect_uris": ["http://127.0.0.1/callback"],
                "token_endpoint_auth_method": "none",
                "grant_types": ["authorization_code", "refresh_token"],
                "response_types": ["code"],
            },
        )
        assert registered.status_code == 201, registered.text
        client = registered.json()
        assert client["client_id"]
        assert "client_secret" not in client
        assert client["registration_access_token"]
        ping = await http.post(
            f"{dev_idp.issuer}/reg",
            json={
                "application_type": "web",
                "redirect_uris": ["https://agent.example/cb"],
                "grant_types": [CIBA_GRANT_TYPE, TOKEN_EXCHANGE_GRANT_TYPE],
                "response_types": [],
                "backchannel_token_delivery_mode": "ping",
                "backchannel_client_notification_endpoint": "http://127.0.0.1:45678/ciba",
            },
        )
        assert ping.status_code == 201, ping.text
        assert ping.json()["client_secret"]
    body = await code_flow_public(dev_idp, client["client_id"])
    assert claims_of(body["access_token"])["client_id"] == client["client_id"]


async def code_flow_public(idp: DevIdP, client_id: str) -> dict[str, Any]:
    verifier, challenge = pkce_pair()
    redirect_uri = "http://127.0.0.1:40999/callback"
    final = await DevBrowser("alice", follow_loopback_redirect=False).visit(
        authorize_url(
            idp,
            client_id=client_id,
            redirect_uri=redirect_uri,
            scope="calendar.read",
            resource=CAL,
            challenge=challenge,
            state="x",
        )
    )
    async with create_client(trust_env=False) as http:
        response = await http.post(
            f"{idp.issuer}/token",
            data={
                "grant_type": "authorization_code",
                "client_id": client_id,
                "code": query_of(final)["code"],
                "code_verifier": verifier,
                "redirect_uri": redirect_uri,
            },
        )
    assert response.status_code == 200, response.text
    return dict(response.json())


async def test_revocation_and_introspection_of_refresh_token(dev_idp: DevIdP) -> None:
    body = await code_flow(dev_idp, scope="openid offline_access calendar.read", resource=CAL)
    rt = body["refresh_token"]
    async with create_client(trust_env=False) as http:
        auth = basic("agent-confidential")
        active = await http.post(
            f"{dev_idp.issuer}/token/introspection", data={"token": rt}, auth=auth
        )
        assert active.json()["active"] is True
        revoked = await http.post(
            f"{dev_idp.issuer}/token/revocation",
            data={"token": rt, "token_type_hint": "refresh_token"},
            auth=auth,
        )
        assert revoked.status_code == 200
        inactive = await http.post(
            f"{dev_idp.issuer}/token/introspection", data={"token": rt}, auth=auth
        )
        assert inactive.json() == {"active": False}
    refreshed = await token(
        dev_idp, "agent-confidential", grant_type="refresh_token", refresh_token=rt
    )
    assert_oauth_error(refreshed, "invalid_grant")


# --------------------------------------------------------------------------- hooks & launcher


async def test_request_log_counts_token_requests(dev_idp_factory: Any) -> None:
    idp = dev_idp_factory()
    await idp.clear_requests()
    assert await idp.requests() == []
    await token(idp, "agent-confidential", grant_type="client_credentials")
    await token(idp, "agent-post", grant_type="client_credentials")
    await token(idp, "agent-confidential", grant_type="refresh_token", refresh_token="nope")
    log = await idp.requests()
    assert [(r["method"], r["path"], r["grant_type"]) for r in log] == [
        ("POST", "/token", "client_credentials"),
        ("POST", "/token", "client_credentials"),
        ("POST", "/token", "refresh_token"),
    ]
    assert [r["status"] for r in log] == [200, 200, 400]
    assert len(await idp.token_requests("refresh_token")) == 1
    await idp.clear_requests()
    assert await idp.requests() == []
    async with create_client(trust_env=False) as http:
        health = (await http.get(f"{idp.issuer}/dev/health")).json()
    assert health["ok"] is True


def test_launcher_lifecycle_and_install_cache() -> None:
    try:
        first = ensure_installed()
    except DevIdPError as exc:  # pragma: no cover - depends on the machine
        pytest.skip(str(exc))
    assert ensure_installed() == first
    assert (first / "server.mjs").is_file()
    assert (first / "node_modules" / "oidc-provider").is_dir()

    port = free_port()
    idp = DevIdP(port=port)
    with idp:
        assert idp.issuer == f"http://127.0.0.1:{port}"
        assert idp.running
        assert "dev only" in repr(idp)
        private = idp.jwt_client_private_jwk
        assert private["kty"] == "EC"
        assert "d" in private
        published = next(c for c in idp.clients if c["client_id"] == "agent-jwt")["jwks"]["keys"][0]
        assert "d" not in published
        assert secrets.compare_digest(published["x"], private["x"])
    assert not idp.running
    with pytest.raises(DevIdPError):
        _ = idp.issuer
    with socket.socket() as sock:  # the port is free again
        sock.bind(("127.0.0.1", port))


def test_extra_clients_through_the_launcher(dev_idp_factory: Any) -> None:
    idp = dev_idp_factory(
        clients=[
            {
                "client_id": "extra-agent",
                "client_secret": "dev-secret-extra",
                "grant_types": ["client_credentials"],
                "response_types": [],
                "redirect_uris": [],
            }
        ]
    )
    assert "extra-agent" in {c["client_id"] for c in idp.clients}

    async def check() -> int:
        async with create_client(trust_env=False) as http:
            response = await http.post(
                f"{idp.issuer}/token",
                data={
                    "grant_type": "client_credentials",
                    "resource": CAL,
                    "scope": "calendar.read",
                },
                auth=("extra-agent", "dev-secret-extra"),
            )
        return int(response.status_code)

    assert asyncio.run(check()) == 200


def test_bad_ping_endpoint_is_refused() -> None:
    with pytest.raises(ValueError, match="loopback"):
        DevIdP(ping_notification_endpoint="http://10.0.0.1/notify")
