"""Edges of the I/O layer that the first mutation-testing run found untested
(``benchmarks/mutation.py``; docs/security.md, "Mutation testing"): TLS verification and
environment settings of the client the driver builds, redirects with an injected client,
the exact limits of responses, retries and step-ups, and the connect-time guard when
every address fails."""

from __future__ import annotations

import ssl
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import anyio
import httpcore2
import httpx2
import pytest
from pydantic import SecretStr

from agent_identity._guard import GuardedBackend
from agent_identity._http import HttpDriver, TransportPolicy, parse_retry_after, resolve_host
from agent_identity._netguard import VET_CONNECT
from agent_identity._resource_auth import ResourceAuth, StepUpBudget
from agent_identity.errors import (
    ConfigurationError,
    InvalidResponse,
    RequestTimeout,
    SSRFBlockedError,
    StepUpLimitExceeded,
)
from agent_identity.models import AccessToken
from agent_identity.oauth._message import HttpRequest

pytestmark = pytest.mark.anyio

URL = "https://as.example.com/x"


def _driver(handler: Any, **policy: Any) -> HttpDriver:
    client = httpx2.AsyncClient(transport=httpx2.MockTransport(handler))
    return HttpDriver(TransportPolicy(**policy), client=client)


# -- the client the driver builds ------------------------------------------------------------


async def test_own_client_verifies_tls_ignores_the_environment_and_never_follows_redirects() -> (
    None
):
    driver = HttpDriver()
    try:
        client = driver._client
        assert client.follow_redirects is False
        assert client.trust_env is False
        pool = client._transport._pool  # type: ignore[attr-defined]
        context: ssl.SSLContext = pool._ssl_context
        assert context.verify_mode == ssl.CERT_REQUIRED
        assert context.check_hostname is True
        assert driver.sleep is anyio.sleep
        assert driver._resolve is resolve_host
        assert client.timeout.read == TransportPolicy().timeout
    finally:
        await driver.aclose()


async def test_redirects_are_not_followed_even_by_an_injected_client_that_would() -> None:
    seen: list[str] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(str(request.url))
        return httpx2.Response(302, headers={"location": "https://as.example.com/elsewhere"})

    client = httpx2.AsyncClient(transport=httpx2.MockTransport(handler), follow_redirects=True)
    driver = HttpDriver(TransportPolicy(), client=client)
    with pytest.raises(InvalidResponse, match="redirect"):
        await driver.send(HttpRequest("GET", URL))
    assert seen == [URL]


@pytest.mark.parametrize("code", [300, 301, 399])
async def test_every_3xx_is_refused(code: int) -> None:
    driver = _driver(lambda r: httpx2.Response(code))
    with pytest.raises(InvalidResponse, match="redirect"):
        await driver.send(HttpRequest("GET", URL))


async def test_content_length_limits_are_exact() -> None:
    cap = 64
    body = b"x" * cap
    driver = _driver(lambda r: httpx2.Response(200, content=body), max_response_bytes=cap)
    assert (await driver.send(HttpRequest("GET", URL))).content == body
    padded = _driver(
        lambda r: httpx2.Response(200, headers={"content-length": "0" * 16 + "64"}, content=body),
        max_response_bytes=cap,
    )
    assert len((await padded.send(HttpRequest("GET", URL))).content) == cap


async def test_a_request_body_is_sent_as_given() -> None:
    seen: list[bytes] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(request.read())
        return httpx2.Response(200)

    driver = _driver(handler)
    body = b'{"client_name":"a"}'
    await driver.send(
        HttpRequest("POST", URL, headers={"content-type": "application/json"}, body=body)
    )
    await driver.send(HttpRequest("GET", URL))
    assert seen == [body, b""]


async def test_retry_after_equal_to_the_cap_is_waited_for() -> None:
    answers = [httpx2.Response(503, headers={"retry-after": "5"}), httpx2.Response(200)]
    driver = _driver(lambda r: answers.pop(0), max_retry_wait=5.0)
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    driver.sleep = sleep
    response = await driver.send(HttpRequest("GET", URL, idempotent=True))
    assert response.status_code == 200
    assert waits == [5.0]


async def test_a_hanging_resolver_is_a_timeout() -> None:
    async def hang(host: str, port: int) -> Sequence[str]:
        await anyio.sleep(30)
        return ["1.1.1.1"]

    client = httpx2.AsyncClient(transport=httpx2.MockTransport(lambda r: httpx2.Response(200)))
    driver = HttpDriver(TransportPolicy(timeout=0.2), client=client, resolve=hang)
    with anyio.fail_after(5), pytest.raises(RequestTimeout):
        await driver.send(HttpRequest("GET", "https://tools.example/x", server_supplied=True))


async def test_precheck_resolves_the_request_port() -> None:
    ports: list[int] = []

    async def resolve(host: str, port: int) -> Sequence[str]:
        ports.append(port)
        return ["1.1.1.1"]

    client = httpx2.AsyncClient(transport=httpx2.MockTransport(lambda r: httpx2.Response(200)))
    driver = HttpDriver(TransportPolicy(), client=client, resolve=resolve)
    await driver.send(HttpRequest("GET", "https://tools.example:8443/x", server_supplied=True))
    assert ports == [8443]


def test_trust_is_per_scheme_and_never_for_garbage() -> None:
    driver = HttpDriver(TransportPolicy(allow_insecure_loopback=True), client=httpx2.AsyncClient())
    driver.trust_origin("http://127.0.0.1:8000")
    assert driver.is_trusted("http://127.0.0.1:8000/x")
    assert not driver.is_trusted("https://127.0.0.1:8000/x")
    assert not driver.is_trusted("http://[::1/")


def test_policy_boundaries() -> None:
    assert TransportPolicy(max_retry_wait=0).max_retry_wait == 0
    assert TransportPolicy(max_response_bytes=1).max_response_bytes == 1
    for bad in ({"max_response_bytes": 0}, {"max_retry_wait": -0.1}, {"timeout": 0}):
        with pytest.raises(ConfigurationError):
            TransportPolicy(**bad)


def test_retry_after_dates_without_a_zone_are_utc() -> None:
    aware = datetime.fromisoformat("2026-01-01T12:00:00+00:00")
    naive = datetime.fromisoformat("2026-01-01T12:00:00")
    assert parse_retry_after("Thu, 01 Jan 2026 12:00:30 -0000", now=aware) == 30.0
    assert parse_retry_after("Thu, 01 Jan 2026 12:00:30 GMT", now=naive) == 30.0
    assert parse_retry_after("Thu, 01 Jan 2026 12:00:30 -0000", now=naive) == 30.0


# -- the connect-time guard ----------------------------------------------------------------------


class _Refusing(httpcore2.AsyncNetworkBackend):
    def __init__(self) -> None:
        self.tried: list[tuple[str, Any, Any]] = []

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore2 interface
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        self.tried.append((host, timeout, local_address))
        raise httpcore2.ConnectError(f"refused {host}")

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)


async def test_guard_tries_each_vetted_address_and_reports_a_connect_error() -> None:
    async def resolve(host: str, port: int) -> Sequence[str]:
        return ["1.1.1.1", "8.8.8.8"]

    inner = _Refusing()
    backend = GuardedBackend(resolve, inner=inner)
    token = VET_CONNECT.set(True)
    try:
        with pytest.raises(httpcore2.ConnectError, match=r"refused 8\.8\.8\.8"):
            await backend.connect_tcp("tools.example", 443, timeout=3.0, local_address="0.0.0.0")
    finally:
        VET_CONNECT.reset(token)
    assert inner.tried == [("1.1.1.1", 3.0, "0.0.0.0"), ("8.8.8.8", 3.0, "0.0.0.0")]
    unvetted = _Refusing()
    with pytest.raises(httpcore2.ConnectError):  # not vetting: the name goes through as is
        await GuardedBackend(resolve, inner=unvetted).connect_tcp(
            "tools.example", 443, timeout=2.0, local_address="0.0.0.0"
        )
    assert unvetted.tried == [("tools.example", 2.0, "0.0.0.0")]


# -- ResourceAuth limits -------------------------------------------------------------------------


class _Source:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def _token(self) -> AccessToken:
        return AccessToken(
            value=SecretStr(f"t{len(self.calls)}"), token_type="Bearer", issuer="https://as",
            resource="https://api.example", scopes=(), expires_at=None, received_at=0.0,
        )  # fmt: skip

    async def token(self) -> AccessToken:
        self.calls.append(("token", None))
        return self._token()

    async def after_unauthorized(self, rejected: AccessToken) -> AccessToken:
        self.calls.append(("unauthorized", None))
        return self._token()

    async def after_insufficient_scope(self, scopes: Sequence[str]) -> AccessToken:
        self.calls.append(("scope", tuple(scopes)))
        return self._token()

    async def after_insufficient_authentication(
        self, acr_values: Sequence[str], max_age: int | None
    ) -> AccessToken:
        self.calls.append(("authentication", (tuple(acr_values), max_age)))
        return self._token()


async def _run(answer: httpx2.Response, max_step_ups: int = 2) -> tuple[int, list[Any], int]:
    source = _Source()
    sent: list[int] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        sent.append(1)
        return httpx2.Response(answer.status_code, headers=answer.headers)

    auth = ResourceAuth(source, resource="https://api.example", max_step_ups=max_step_ups)
    async with httpx2.AsyncClient(transport=httpx2.MockTransport(handler), auth=auth) as client:
        response = await client.get("https://api.example/x")
    return response.status_code, source.calls, len(sent)


async def _run_limited(
    answer: httpx2.Response, max_step_ups: int = 2
) -> tuple[StepUpLimitExceeded, list[Any], int]:
    source = _Source()
    sent: list[int] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        sent.append(1)
        return httpx2.Response(answer.status_code, headers=answer.headers)

    auth = ResourceAuth(source, resource="https://api.example", max_step_ups=max_step_ups)
    async with httpx2.AsyncClient(transport=httpx2.MockTransport(handler), auth=auth) as client:
        with pytest.raises(StepUpLimitExceeded) as info:
            await client.get("https://api.example/x?q=1")
    return info.value, source.calls, len(sent)


async def test_sec_29_step_ups_stop_at_the_limit_with_a_typed_error() -> None:
    scope = httpx2.Response(
        403, headers={"www-authenticate": 'Bearer error="insufficient_scope", scope="write"'}
    )
    error, calls, sent = await _run_limited(scope)
    assert calls == [("token", None), ("scope", ("write",)), ("scope", ("write",))]
    assert sent == 3
    assert (error.resource, error.operation) == ("https://api.example", "GET /x")
    assert (error.status_code, error.error, error.scopes, error.step_ups) == (
        403, "insufficient_scope", ("write",), 2
    )  # fmt: skip
    mfa = httpx2.Response(
        401,
        headers={"www-authenticate": 'Bearer error="insufficient_user_authentication", '
                 'acr_values="mfa phr", max_age=30'},
    )  # fmt: skip
    error, calls, sent = await _run_limited(mfa, max_step_ups=1)
    assert sent == 2  # one step-up; the second challenge is not answered with a refresh
    assert calls == [("token", None), ("authentication", (("mfa", "phr"), 30))]
    assert (error.status_code, error.error, error.step_ups) == (
        401, "insufficient_user_authentication", 1
    )  # fmt: skip
    error, calls, sent = await _run_limited(scope, max_step_ups=0)
    assert (calls, sent, error.step_ups) == ([("token", None)], 1, 0)
    for bad in (-1, True, 1.5):
        with pytest.raises(ConfigurationError):
            ResourceAuth(_Source(), resource="https://api.example", max_step_ups=bad)  # type: ignore[arg-type]


async def test_sec_29_the_budget_is_per_operation_across_requests() -> None:
    """A resource that keeps refusing one operation does not get the user asked again on
    the next request; another operation has its own budget; success resets it."""
    source = _Source()
    refusing = {"/admin"}
    seen: list[str] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(f"{request.method} {request.url.path}")
        if request.url.path in refusing:
            return httpx2.Response(
                403, headers={"www-authenticate": 'Bearer error="insufficient_scope", scope="a"'}
            )
        return httpx2.Response(200)

    auth = ResourceAuth(source, resource="https://api.example", max_step_ups=1)
    async with httpx2.AsyncClient(transport=httpx2.MockTransport(handler), auth=auth) as client:
        with pytest.raises(StepUpLimitExceeded):
            await client.get("https://api.example/admin")
        asked = len([c for c in source.calls if c[0] == "scope"])
        assert asked == 1
        with pytest.raises(StepUpLimitExceeded):  # same operation: no new consent at all
            await client.get("https://api.example/admin?again=1")
        assert len([c for c in source.calls if c[0] == "scope"]) == asked
        # another operation (method or path) has its own budget
        with pytest.raises(StepUpLimitExceeded):
            await client.post("https://api.example/admin")
        assert len([c for c in source.calls if c[0] == "scope"]) == asked + 1
        # once the operation is answered otherwise, its budget starts again
        refusing.clear()
        assert (await client.get("https://api.example/admin")).status_code == 200
        refusing.add("/admin")
        with pytest.raises(StepUpLimitExceeded):
            await client.get("https://api.example/admin")
        assert len([c for c in source.calls if c[0] == "scope"]) == asked + 2


async def test_sec_29_the_budget_table_is_bounded() -> None:
    """Counts are kept for MAX_TRACKED_OPERATIONS operations; the oldest is forgotten
    first (then that operation may step up again), the newest are kept."""
    source = _Source()
    step_up = 'Bearer error="insufficient_scope", scope="a"'

    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(403, headers={"www-authenticate": step_up})

    def asked() -> int:
        return len([c for c in source.calls if c[0] == "scope"])

    auth = ResourceAuth(source, resource="https://api.example", max_step_ups=1)
    limit = StepUpBudget.MAX_TRACKED_OPERATIONS
    async with httpx2.AsyncClient(transport=httpx2.MockTransport(handler), auth=auth) as client:
        for i in range(limit + 1):
            with pytest.raises(StepUpLimitExceeded):
                await client.get(f"https://api.example/p{i}")
        assert asked() == limit + 1
        with pytest.raises(StepUpLimitExceeded):  # recent: still exhausted, nobody asked
            await client.get(f"https://api.example/p{limit}")
        assert asked() == limit + 1
        with pytest.raises(StepUpLimitExceeded):  # the oldest was forgotten: asked again
            await client.get("https://api.example/p0")
        assert asked() == limit + 2


def test_sec_29_one_step_up_budget_serves_http_auth_and_mcp() -> None:
    """StepUpBudget, the table ResourceAuth and McpAuth both count in: the limit per
    operation, a reset, the bound (the least recently charged operation is forgotten
    first, so a server naming ever new operations cannot grow it), and limits that are
    not an int >= 0 refused on both paths."""
    from agent_identity import IdentityClient
    from agent_identity.oauth.www_authenticate import Challenge

    challenge = Challenge(scheme="bearer", params={"error": "insufficient_scope", "scope": "a"})
    budget = StepUpBudget()

    def charge(operation: str) -> None:
        budget.charge(operation, challenge, 403, resource="https://api.example", limit=2)

    charge("op")
    charge("op")
    with pytest.raises(StepUpLimitExceeded) as info:
        charge("op")
    assert (info.value.operation, info.value.step_ups) == ("op", 2)
    budget.reset("op")
    charge("op")  # answered otherwise in between: a new budget
    for i in range(StepUpBudget.MAX_TRACKED_OPERATIONS + 50):
        charge(f"tools/call t{i}")
    assert len(budget) == StepUpBudget.MAX_TRACKED_OPERATIONS
    for bad in (-1, True, 1.5):
        with pytest.raises(ConfigurationError, match="max_step_ups"):
            ResourceAuth(_Source(), resource="https://api.example", max_step_ups=bad)  # type: ignore[arg-type]
        with pytest.raises(ConfigurationError, match="max_step_ups"):
            IdentityClient().mcp_auth("https://mcp.example/mcp", max_step_ups=bad)  # type: ignore[arg-type]


async def test_one_refresh_per_request_and_none_for_a_403() -> None:
    status, calls, sent = await _run(httpx2.Response(401))
    assert (status, sent) == (401, 2)
    assert calls == [("token", None), ("unauthorized", None)]
    status, calls, sent = await _run(httpx2.Response(403))
    assert (status, calls, sent) == (403, [("token", None)], 1)
    other = httpx2.Response(403, headers={"www-authenticate": 'Bearer error="invalid_token"'})
    assert (await _run(other))[1] == [("token", None)]
    scope_on_401 = httpx2.Response(
        401, headers={"www-authenticate": 'Bearer error="insufficient_scope", scope="w"'}
    )
    assert (await _run(scope_on_401))[1] == [("token", None), ("unauthorized", None)]


async def test_sec_02_connect_time_guard_also_on_retried_requests() -> None:
    """Idempotent requests go through the retry loop: the guard must be armed there too
    (a server-supplied metadata GET that rebinds to loopback is refused)."""
    from test_http import serve

    answers = [["93.184.216.34"], ["127.0.0.1"]]

    async def rebinding(host: str, port: int) -> Sequence[str]:
        return answers.pop(0) if len(answers) > 1 else answers[0]

    async with serve() as server:
        policy = TransportPolicy(timeout=5, max_retries=2)
        async with HttpDriver(policy, resolve=rebinding) as driver:
            with pytest.raises(SSRFBlockedError, match=r"127\.0\.0\.1"):
                await driver.send(
                    HttpRequest(
                        "GET", f"https://rebind.example:{server.port}/.well-known/x",
                        server_supplied=True, idempotent=True,
                    )
                )  # fmt: skip
        assert server.connections == 0


async def test_step_up_count_with_the_default_limit() -> None:
    mfa = httpx2.Response(
        401, headers={"www-authenticate": 'Bearer error="insufficient_user_authentication"'}
    )
    error, calls, sent = await _run_limited(mfa)  # the default: two step-ups
    assert (error.step_ups, sent) == (2, 3)
    assert [name for name, _ in calls] == ["token", "authentication", "authentication"]
    source = _Source()
    auth = ResourceAuth(source, resource="https://api.example")
    scope = httpx2.Response(
        403, headers={"www-authenticate": 'Bearer error="insufficient_scope", scope="w"'}
    )
    transport = httpx2.MockTransport(lambda r: httpx2.Response(403, headers=scope.headers))
    async with httpx2.AsyncClient(transport=transport, auth=auth) as client:
        with pytest.raises(StepUpLimitExceeded):
            await client.get("https://api.example/x")
    assert [name for name, _ in source.calls] == ["token", "scope", "scope"]
