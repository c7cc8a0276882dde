"""``ResourceAuth``, the httpx2.Auth that calls a protected resource with the user's narrow
token: the token goes only in the ``Authorization`` header (security item 22) and only to
URLs under the resource, however the path is encoded (security item 23; issue 12 item
12: RFC 3986 §6 normalisation, dot segments removed per §5.2.4, ambiguous encodings
refused); challenges are read with the bounded-number rule (issue 12 item 7)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import unquote

import httpx2
import pytest
from pydantic import SecretStr

from agent_identity._limits import MAX_LIFETIME
from agent_identity._resource_auth import ResourceAuth, require_token_target
from agent_identity.errors import InsecureURLError
from agent_identity.models import AccessToken

pytestmark = pytest.mark.anyio

RESOURCE = "https://api.example/v1"
SECRETS = ("CANARY-TOKEN-ONE", "CANARY-TOKEN-TWO", "CANARY-TOKEN-THREE", "CANARY-TOKEN-FOUR")


def _token(n: int, token_type: str = "Bearer") -> AccessToken:
    signer = None
    if token_type.lower() == "dpop":  # a DPoP-bound token travels with its key's signer
        import time

        from agent_identity.oauth.dpop import DPoPNonces, DPoPSigner, SoftwareDPoPKeys

        key = SoftwareDPoPKeys().generate_now("ES256")
        signer = DPoPSigner(key, nonces=DPoPNonces(), time=time.time)
    return AccessToken(
        value=SecretStr(SECRETS[n]),
        token_type=token_type,
        issuer="https://as.example",
        resource=RESOURCE,
        scopes=("read",),
        expires_at=None,
        received_at=0.0,
        dpop=signer,
    )


@dataclass
class Source:
    """A TokenSource that records what ResourceAuth asked for."""

    token_type: str = "Bearer"
    calls: list[tuple[str, object]] = field(default_factory=list)
    issued: int = 0

    def _next(self) -> AccessToken:
        token = _token(self.issued, self.token_type)
        self.issued += 1
        return token

    async def token(self) -> AccessToken:
        self.calls.append(("token", None))
        return self._next()

    async def after_unauthorized(self, rejected: AccessToken) -> AccessToken:
        self.calls.append(("unauthorized", rejected.value.get_secret_value()))
        return self._next()

    async def after_insufficient_scope(self, scopes: Sequence[str]) -> AccessToken:
        self.calls.append(("scope", tuple(scopes)))
        return self._next()

    async def after_insufficient_authentication(
        self, acr_values: Sequence[str], max_age: int | None
    ) -> AccessToken:
        self.calls.append(("authentication", (tuple(acr_values), max_age)))
        return self._next()


@dataclass
class Resource:
    """The protected resource: answers from a script, records every request as sent."""

    answers: list[httpx2.Response] = field(default_factory=list)
    seen: list[httpx2.Request] = field(default_factory=list)

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        # a snapshot: ResourceAuth re-sends the same request object with new headers
        self.seen.append(
            httpx2.Request(
                request.method, request.url, headers=request.headers.raw, content=request.read()
            )
        )
        return self.answers.pop(0) if self.answers else httpx2.Response(200, json={"ok": True})


def _where_tokens_went(request: httpx2.Request) -> list[str]:
    """Every place of ``request`` that holds one of the canary tokens."""
    places: list[str] = []
    url = str(request.url)
    body = request.content.decode("latin-1")
    for secret in SECRETS:
        if secret in url or secret in unquote(url):
            places.append("url")
        if secret in body or secret in unquote(body):
            places.append("body")
        for name, value in request.headers.multi_items():
            if secret in value:
                places.append(f"header:{name.lower()}")
    return places


async def _client(source: Source, resource: Resource) -> httpx2.AsyncClient:
    return httpx2.AsyncClient(
        transport=httpx2.MockTransport(resource), auth=ResourceAuth(source, resource=RESOURCE)
    )


# -- security item 22: only in the Authorization header -------------------------------------


@pytest.mark.parametrize("token_type", ["Bearer", "DPoP", "bearer"])
async def test_sec_22_token_only_in_the_authorization_header(token_type: str) -> None:
    source = Source(token_type=token_type)
    resource = Resource(
        answers=[
            httpx2.Response(401, headers={"www-authenticate": 'Bearer error="invalid_token"'}),
            httpx2.Response(
                403,
                headers={"www-authenticate": 'Bearer error="insufficient_scope", scope="write"'},
            ),
            httpx2.Response(
                401,
                headers={
                    "www-authenticate": 'Bearer error="insufficient_user_authentication", '
                    'acr_values="mfa", max_age=60'
                },
            ),
        ]
    )
    async with await _client(source, resource) as client:
        response = await client.post(
            f"{RESOURCE}/items?q=1", json={"name": "x"}, headers={"X-Trace": "t"}
        )
    assert response.status_code == 200
    assert [call[0] for call in source.calls] == [
        "token", "unauthorized", "scope", "authentication"
    ]  # fmt: skip
    assert len(resource.seen) == 4
    scheme = "DPoP" if token_type == "DPoP" else "Bearer"
    for sent, secret in zip(resource.seen, SECRETS, strict=True):
        assert _where_tokens_went(sent) == ["header:authorization"]
        assert sent.headers["authorization"] == f"{scheme} {secret}"
        assert sent.url.query == b"q=1"
        assert sent.content == b'{"name":"x"}'


async def test_sec_23_no_token_request_for_a_url_outside_the_resource() -> None:
    source = Source()
    resource = Resource()
    async with await _client(source, resource) as client:
        with pytest.raises(InsecureURLError):
            await client.get("https://api.example/v2/items")
    assert source.calls == []  # not even fetched: refused before anything else
    assert resource.seen == []


# -- issue 12 item 12: encoded paths -------------------------------------------------------------


REFUSED = [
    "https://api.example/v1/%2e%2e/admin",
    "https://api.example/v1/%2E%2E/admin",
    "https://api.example/v1/..%2fadmin",
    "https://api.example/v1/..%2Fadmin",
    "https://api.example/v1%2f..%2fadmin",
    "https://api.example/v1%2F..%2Fadmin",
    "https://api.example/v1/.%2e/admin",
    "https://api.example/v1/%2e./admin",
    "https://api.example/v1%5c..%5cadmin",
    "https://api.example/v1/..;/admin",
    "https://api.example/v1/%252e%252e/admin",
    "https://api.example/v1/%2e%2e",
    "https://api.example/v1/%zz",
    "https://api.example/v1x",
    "https://api.example/v1%2fx/../../admin",
    "https://api.example/admin",
    "http://api.example/v1",
    "https://api.example:8443/v1",
    "https://evil.example/v1",
]
ALLOWED = [
    "https://api.example/v1",
    "https://api.example/v1/",
    "https://api.example/v1/items?q=%2e%2e",
    "https://API.EXAMPLE:443/v1/items",
    "https://api.example/v1/a/%2e%2e/b",
    "https://api.example/v1/projects/group%2Fname",
    "https://api.example/v1/%7Euser",
    "https://api.example/%76%31/items",
    "https://api.example/v1/file%2ejson",
]


@pytest.mark.parametrize("url", REFUSED)
async def test_sec_23_no_token_through_encoded_paths(url: str) -> None:
    with pytest.raises(InsecureURLError):
        require_token_target(httpx2.URL(url), RESOURCE)
    source = Source()
    resource = Resource()
    async with await _client(source, resource) as client:
        with pytest.raises(InsecureURLError) as info:
            await client.get(url)
    assert resource.seen == []
    assert source.calls == []
    assert "CANARY" not in str(info.value)


@pytest.mark.parametrize("url", ALLOWED)
async def test_sec_23_paths_under_the_resource_still_get_the_token(url: str) -> None:
    require_token_target(httpx2.URL(url), RESOURCE)
    resource = Resource()
    async with await _client(Source(), resource) as client:
        assert (await client.get(url)).status_code == 200
    assert _where_tokens_went(resource.seen[0]) == ["header:authorization"]


def test_sec_23_resource_with_a_trailing_slash_or_at_the_root() -> None:
    require_token_target(httpx2.URL("https://api.example/v1/x"), "https://api.example/v1/")
    require_token_target(httpx2.URL("https://api.example/anything/%2e%2e/x"), "https://api.example")
    with pytest.raises(InsecureURLError):
        require_token_target(httpx2.URL("https://api.example/v1/../x"), "https://api.example/v1/")
    with pytest.raises(InsecureURLError):  # a resource URL that cannot be read at all
        require_token_target(httpx2.URL("https://api.example/v1"), "https://api.example:x/")


# -- issue 12 item 7: max_age of a challenge ------------------------------------------------------


@pytest.mark.parametrize(
    ("max_age", "expected"),
    [("60", 60), ("\u00b2", None), ("\u0663", None), ("9" * 400, MAX_LIFETIME), ("6 0", None)],
)
async def test_step_up_max_age_follows_the_bounded_number_rule(
    max_age: str, expected: int | None
) -> None:
    source = Source()
    header = f'Bearer error="insufficient_user_authentication", max_age="{max_age}"'
    resource = Resource(
        answers=[httpx2.Response(401, headers={"www-authenticate": header.encode("utf-8")})]
    )
    async with await _client(source, resource) as client:
        assert (await client.get(f"{RESOURCE}/x")).status_code == 200
    assert source.calls[1] == ("authentication", ((), expected))
