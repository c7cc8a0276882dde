"""McpAuth without a server: SSRF refusals through metadata, registration priority and
storage (security items 2, 5, 11-14), with httpx2.MockTransport."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import httpx2
import pytest

from agent_identity import IdentityClient, TokenVault
from agent_identity._http import HttpDriver
from agent_identity.errors import ConfigurationError, InsecureURLError, SSRFBlockedError
from agent_identity.mcp import REGISTRATION_KIND, McpAuth
from agent_identity.models import ServerMetadata
from agent_identity.oauth.registration import ClientRegistration

pytestmark = pytest.mark.anyio

MCP = "https://tools.example.com/mcp"
PRM = "https://tools.example.com/.well-known/oauth-protected-resource/mcp"
AS = "https://as.example.com"
CANARY = "canary-dcr-secret-0123456789"


class FakeNet:
    """The MCP server, its metadata and an authorization server's registration endpoint."""

    def __init__(self, *, servers: Sequence[str] = (AS,), challenge: str | None = None) -> None:
        self.servers = list(servers)
        self.challenge = challenge or f'Bearer resource_metadata="{PRM}"'
        self.requests: list[httpx2.Request] = []
        self.registrations = 0
        self.expires_at = 0

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        self.requests.append(request)
        url = str(request.url)
        if url == MCP:
            return httpx2.Response(401, headers={"www-authenticate": self.challenge})
        if url == PRM:
            return httpx2.Response(
                200, json={"resource": MCP, "authorization_servers": self.servers}
            )
        if url == f"{AS}/reg":
            self.registrations += 1
            body = json.loads(request.content)
            assert body["application_type"] == "native"
            return httpx2.Response(
                201,
                json={
                    "client_id": f"dcr-{self.registrations}",
                    "client_secret": CANARY,
                    "client_secret_expires_at": self.expires_at,
                    "token_endpoint_auth_method": body["token_endpoint_auth_method"],
                },
            )
        return httpx2.Response(404)

    def hosts(self) -> set[str]:
        return {r.url.host for r in self.requests}


async def _resolve(host: str, port: int) -> list[str]:
    return {"internal.example.com": ["10.0.0.5"]}.get(host, ["93.184.216.34"])


def _auth(net: FakeNet, **options: Any) -> tuple[McpAuth, httpx2.AsyncClient]:
    parent = IdentityClient(
        "https://parent.example.com", client_id="agent", vault=TokenVault.memory()
    )
    auth = parent.user("alice").mcp_auth(MCP, **options)
    mock = httpx2.AsyncClient(transport=httpx2.MockTransport(net))
    auth._driver = HttpDriver(parent._policy, client=mock, resolve=_resolve)
    return auth, httpx2.AsyncClient(transport=httpx2.MockTransport(net), auth=auth)


@pytest.mark.parametrize(
    ("server", "error"),
    [
        ("http://169.254.169.254", InsecureURLError),
        ("https://169.254.169.254", SSRFBlockedError),
        ("https://[::ffff:169.254.169.254]", SSRFBlockedError),
        ("https://[fc00::1]", SSRFBlockedError),
        ("https://2852039166", SSRFBlockedError),
        ("https://internal.example.com", SSRFBlockedError),
    ],
)
async def test_sec_02_authorization_server_at_a_private_address_is_refused(
    server: str, error: type[Exception]
) -> None:
    net = FakeNet(servers=[server])
    _auth_obj, http = _auth(net)
    async with http:
        with pytest.raises(error):
            await http.post(MCP, json={})
    assert net.hosts() == {"tools.example.com"}  # no connection anywhere else


async def test_sec_02_resource_metadata_url_at_a_private_address_is_refused() -> None:
    net = FakeNet(challenge='Bearer resource_metadata="https://10.0.0.1/.well-known/x"')
    _auth_obj, http = _auth(net)
    async with http:
        with pytest.raises(SSRFBlockedError):
            await http.post(MCP, json={})
    assert net.hosts() == {"tools.example.com"}
    assert [str(r.url) for r in net.requests] == [MCP]


async def test_sec_23_no_token_is_sent_to_another_url() -> None:
    net = FakeNet()
    _auth_obj, http = _auth(net)
    async with http:
        with pytest.raises(InsecureURLError, match="passthrough"):
            await http.get("https://tools.example.com/other")
        with pytest.raises(InsecureURLError):
            await http.get("https://evil.example.com/mcp")
    assert net.requests == []


def _metadata(**overrides: Any) -> ServerMetadata:
    base: dict[str, Any] = {
        "issuer": AS,
        "authorization_endpoint": f"{AS}/auth",
        "token_endpoint": f"{AS}/token",
        "registration_endpoint": f"{AS}/reg",
        "code_challenge_methods_supported": ["S256"],
        "client_id_metadata_document_supported": True,
    }
    base.update(overrides)
    return ServerMetadata.model_validate(base)


async def test_sec_11_registration_priority() -> None:
    cimd = "https://agent.example.com/oauth/client.json"
    net = FakeNet()
    # 1. credentials configured for this issuer, or for this MCP server URL, win
    for key in (AS, MCP):
        auth, _ = _auth(net, clients={key: {"client_id": "pre"}}, client_id_metadata_url=cimd)
        credentials = await auth._credentials(_metadata())
        assert credentials is not None
        assert credentials.client_id == "pre"
    # ...and a key that matches neither is an error, not a silent fallback
    auth, _ = _auth(net, clients={"https://other.example.com": {"client_id": "x"}},
                    client_id_metadata_url=cimd)  # fmt: skip
    with pytest.raises(ConfigurationError, match="no entry"):
        await auth._credentials(_metadata())
    # 2. then the client id metadata document, when the AS supports it
    auth, _ = _auth(net, client_id_metadata_url=cimd)
    credentials = await auth._credentials(_metadata())
    assert credentials is not None
    assert credentials.client_id == cimd
    assert credentials.client_secret is None
    # 3. then dynamic registration
    credentials = await auth._credentials(_metadata(client_id_metadata_document_supported=False))
    assert credentials is not None
    assert credentials.client_id == "dcr-1"
    # 4. then a clear error
    auth, _ = _auth(net)
    with pytest.raises(ConfigurationError, match="clients="):
        await auth._credentials(
            _metadata(registration_endpoint=None, client_id_metadata_document_supported=False)
        )
    assert net.registrations == 1


async def test_sec_12_14_dynamic_registration_is_stored_per_issuer_and_renewed() -> None:
    net = FakeNet()
    net.expires_at = 2_000_000_000
    auth, _ = _auth(net)
    first = await auth._credentials(_metadata())
    again = await auth._credentials(_metadata())
    assert first is not None
    assert again is not None
    assert first.client_id == again.client_id == "dcr-1"
    assert net.registrations == 1
    vault = auth._context.vault
    stored = await vault.get_blob(REGISTRATION_KIND, AS)
    assert stored is not None
    assert ClientRegistration.from_bytes(stored.data).issuer == AS
    row = await vault.store.get(f"{REGISTRATION_KIND}:{AS}")
    assert row is not None
    assert CANARY.encode() not in row.blob
    # another issuer never gets this registration
    assert await vault.get_blob(REGISTRATION_KIND, "https://other.example.com") is None
    # an expired secret is registered again (RFC 7591 §3.2.1 client_secret_expires_at)
    expired = ClientRegistration(
        issuer=AS, client_id="old", client_secret=first.client_secret, client_secret_expires_at=1
    )
    await vault.put_blob(REGISTRATION_KIND, AS, expired.to_bytes(), expected_version=stored.version)
    renewed = await auth._credentials(_metadata())
    assert renewed is not None
    assert renewed.client_id == "dcr-2"
    assert net.registrations == 2
