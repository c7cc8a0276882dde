"""The I/O driver (agent_identity._http): policy before I/O, SSRF, redirects, size caps,
error mapping, retries. Fault injection with httpx2.MockTransport, plus real loopback
servers for the connect-time DNS guard. Security items 1, 2, 4, 25 and 40."""

from __future__ import annotations

import gzip
import ipaddress
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import anyio
import anyio.abc
import httpx2
import pytest
from anyio.streams.tls import TLSListener
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st

from agent_identity import _guard, _netguard
from agent_identity._http import HttpDriver, TransportPolicy, create_client, parse_retry_after
from agent_identity.errors import (
    AgentIdentityError,
    ConfigurationError,
    InsecureURLError,
    InvalidResponse,
    RequestTimeout,
    SSRFBlockedError,
    TransportError,
)
from agent_identity.oauth._message import HttpRequest, HttpResponse

pytestmark = pytest.mark.anyio

TOKEN_URL = "https://as.example.com/token"
JWKS_URL = "https://as.example.com/jwks"
CANARIES = ("CANARY-client-secret-7f3a", "CANARY-refresh-token-91bc", "CANARY-bearer-55de")

Handler = Callable[[httpx2.Request], Awaitable[httpx2.Response]]


@dataclass
class Recorder:
    """A MockTransport handler that records calls and replays scripted answers."""

    answers: list[httpx2.Response | Exception | Callable[[], httpx2.Response]] = field(
        default_factory=list
    )
    requests: list[httpx2.Request] = field(default_factory=list)

    async def __call__(self, request: httpx2.Request) -> httpx2.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        if callable(answer):
            return answer()
        return answer

    @property
    def calls(self) -> int:
        return len(self.requests)


@dataclass
class Sleeps:
    waits: list[float] = field(default_factory=list)

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


@dataclass
class FakeResolver:
    answers: dict[str, list[str]] = field(default_factory=dict)
    queries: list[str] = field(default_factory=list)

    async def __call__(self, host: str, port: int) -> Sequence[str]:
        self.queries.append(host)
        if host not in self.answers:
            raise OSError("name not known")
        return self.answers[host]


def ok(body: bytes = b"{}", **kwargs: object) -> Callable[[], httpx2.Response]:
    return lambda: httpx2.Response(200, content=body, **kwargs)  # type: ignore[arg-type]


def status(code: int, headers: dict[str, str] | None = None) -> Callable[[], httpx2.Response]:
    return lambda: httpx2.Response(code, headers=headers or {}, content=b'{"error":"x"}')


def make(
    recorder: Recorder,
    policy: TransportPolicy | None = None,
    resolver: FakeResolver | None = None,
) -> tuple[HttpDriver, Sleeps]:
    sleeps = Sleeps()
    client = httpx2.AsyncClient(transport=httpx2.MockTransport(recorder))
    driver = HttpDriver(
        policy or TransportPolicy(),
        client,
        resolve=resolver or FakeResolver({"as.example.com": ["93.184.216.34"]}),
        sleep=sleeps,
    )
    return driver, sleeps


def token_request(url: str = TOKEN_URL) -> HttpRequest:
    return HttpRequest(
        "POST",
        url,
        headers={"Authorization": f"Basic {CANARIES[0]}"},
        form={"grant_type": "refresh_token", "refresh_token": CANARIES[1]},
    )


def get(url: str = JWKS_URL, *, server_supplied: bool = False) -> HttpRequest:
    return HttpRequest("GET", url, server_supplied=server_supplied, idempotent=True)


# --- basics ----------------------------------------------------------------------------------


async def test_sends_form_with_headers_and_returns_response() -> None:
    recorder = Recorder(
        [
            lambda: httpx2.Response(
                200,
                headers=[
                    ("Content-Type", "application/json"),
                    ("WWW-Authenticate", 'Bearer error="invalid_token"'),
                    ("WWW-Authenticate", 'DPoP algs="ES256"'),
                    ("X-Thing", "a"),
                    ("x-thing", "b"),
                ],
                content=b'{"access_token":"t"}',
            )
        ]
    )
    driver, _ = make(recorder)
    response = await driver.send(token_request())
    assert isinstance(response, HttpResponse)
    assert response.status_code == 200
    assert response.content == b'{"access_token":"t"}'
    assert response.headers["www-authenticate"] == 'Bearer error="invalid_token", DPoP algs="ES256"'
    assert response.headers["x-thing"] == "a, b"
    assert response.header("Content-Type") == "application/json"
    assert all(name == name.lower() for name in response.headers)

    sent = recorder.requests[0]
    assert sent.method == "POST"
    assert sent.headers["content-type"] == "application/x-www-form-urlencoded"
    assert sent.headers["accept"] == "application/json"
    assert sent.headers["user-agent"].startswith("agent-identity/")
    assert sent.headers["authorization"] == f"Basic {CANARIES[0]}"
    assert sent.content == f"grant_type=refresh_token&refresh_token={CANARIES[1]}".encode()


async def test_form_values_are_percent_encoded() -> None:
    recorder = Recorder([ok()])
    driver, _ = make(recorder)
    await driver.send(HttpRequest("POST", TOKEN_URL, form={"scope": "a b", "x": "&=+é"}))
    assert recorder.requests[0].content == b"scope=a+b&x=%26%3D%2B%C3%A9"


async def test_request_headers_override_defaults() -> None:
    recorder = Recorder([ok()])
    driver, _ = make(recorder)
    await driver.send(HttpRequest("GET", JWKS_URL, headers={"Accept": "application/jwk-set+json"}))
    assert recorder.requests[0].headers.get_list("accept") == ["application/jwk-set+json"]


async def test_error_statuses_are_returned_not_raised() -> None:
    for code in (400, 401, 403, 404, 500):
        recorder = Recorder([status(code)])
        driver, _ = make(recorder)
        response = await driver.send(token_request())
        assert response.status_code == code
        assert response.content == b'{"error":"x"}'


async def test_garbage_body_is_returned_for_the_protocol_layer_to_judge() -> None:
    recorder = Recorder([ok(b"\x00\xff<html>not json")])
    driver, _ = make(recorder)
    assert (await driver.send(get())).content == b"\x00\xff<html>not json"


async def test_undecodable_body_is_invalid_response() -> None:
    recorder = Recorder([ok(b"this is not gzip", headers={"Content-Encoding": "gzip"})])
    driver, _ = make(recorder)
    with pytest.raises(InvalidResponse, match="decoded"):
        await driver.send(get())


async def test_gzip_body_is_decoded() -> None:
    recorder = Recorder([ok(gzip.compress(b'{"a":1}'), headers={"Content-Encoding": "gzip"})])
    driver, _ = make(recorder)
    assert (await driver.send(get())).content == b'{"a":1}'


# --- security item 1: policy before I/O ------------------------------------------------------


async def test_sec_01_insecure_endpoint_refused_before_request() -> None:
    recorder = Recorder([ok()])
    driver, _ = make(recorder)
    for url in (
        "http://as.example.com/token",
        "http://127.0.0.1:8080/token",
        "https://user:pw@as.example.com/token",
        "javascript:alert(1)",
    ):
        with pytest.raises(InsecureURLError):
            await driver.send(token_request(url))
    assert recorder.calls == 0


async def test_sec_01_loopback_http_with_explicit_opt_in() -> None:
    recorder = Recorder([ok()])
    driver, _ = make(recorder, TransportPolicy(allow_insecure_loopback=True))
    response = await driver.send(token_request("http://127.0.0.1:8080/token"))
    assert response.status_code == 200
    with pytest.raises(InsecureURLError):
        await driver.send(token_request("http://as.example.com/token"))
    assert recorder.calls == 1


async def test_sec_01_trusting_an_http_origin_needs_the_opt_in() -> None:
    driver, _ = make(Recorder([ok()]))
    with pytest.raises(InsecureURLError):
        driver.trust_origin("http://127.0.0.1:9000")


# --- security item 2: SSRF --------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://169.254.169.254/latest/meta-data/",
        "https://10.0.0.1/jwks",
        "https://[fc00::1]/jwks",
        "https://[::ffff:169.254.169.254]/",
        "https://2852039166/",
        "https://0xa9fea9fe/",
        "https://[::1]/",
        "https://127.0.0.1/",
        "https://localhost/",
    ],
)
async def test_sec_02_server_supplied_private_literal_refused_without_connection(url: str) -> None:
    recorder = Recorder([ok()])
    resolver = FakeResolver()
    driver, _ = make(recorder, resolver=resolver)
    with pytest.raises(SSRFBlockedError):
        await driver.send(get(url, server_supplied=True))
    assert recorder.calls == 0
    assert resolver.queries == []


async def test_sec_02_metadata_ip_refused() -> None:
    recorder = Recorder([ok()])
    driver, _ = make(recorder)
    with pytest.raises(SSRFBlockedError, match=r"169\.254\.169\.254"):
        await driver.send(get("https://169.254.169.254/", server_supplied=True))
    assert recorder.calls == 0


async def test_sec_02_hostname_resolving_to_private_address_refused() -> None:
    recorder = Recorder([ok()])
    resolver = FakeResolver(
        {
            "internal.example.com": ["10.0.0.7"],
            "mixed.example.com": ["93.184.216.34", "169.254.169.254"],
            "v6.example.com": ["::ffff:127.0.0.1"],
        }
    )
    driver, _ = make(recorder, resolver=resolver)
    for host in ("internal.example.com", "mixed.example.com", "v6.example.com"):
        with pytest.raises(SSRFBlockedError, match="non-public"):
            await driver.send(get(f"https://{host}/jwks", server_supplied=True))
    assert recorder.calls == 0
    assert resolver.queries == ["internal.example.com", "mixed.example.com", "v6.example.com"]


async def test_sec_02_hostname_resolving_to_public_address_allowed() -> None:
    recorder = Recorder([ok()])
    resolver = FakeResolver({"as.example.com": ["93.184.216.34", "2606:2800:220:1::1"]})
    driver, _ = make(recorder, resolver=resolver)
    assert (await driver.send(get(server_supplied=True))).status_code == 200
    assert resolver.queries == ["as.example.com"]


async def test_sec_02_unresolvable_host_is_a_transport_error() -> None:
    recorder = Recorder([ok()])
    driver, _ = make(recorder, resolver=FakeResolver({}))
    with pytest.raises(TransportError, match="resolve"):
        await driver.send(get("https://nowhere.example/", server_supplied=True))
    assert recorder.calls == 0


async def test_sec_02_user_configured_urls_are_not_ssrf_checked() -> None:
    recorder = Recorder([ok()])
    resolver = FakeResolver({"idp.corp.example": ["10.1.2.3"]})
    driver, _ = make(recorder, resolver=resolver)
    await driver.send(get("https://10.0.0.1/jwks"))
    await driver.send(get("https://idp.corp.example/jwks"))
    assert recorder.calls == 2
    assert resolver.queries == []


async def test_sec_02_trusted_origin_allowed() -> None:
    recorder = Recorder([ok()])
    resolver = FakeResolver({"idp.corp.example": ["10.1.2.3"]})
    driver, _ = make(recorder, TransportPolicy(allow_insecure_loopback=True), resolver)
    driver.trust_origin("http://127.0.0.1:9000/realms/test")
    driver.trust_origin("https://IDP.corp.example")
    assert driver.is_trusted("http://127.0.0.1:9000/other")
    await driver.send(get("http://127.0.0.1:9000/jwks", server_supplied=True))
    await driver.send(get("https://idp.corp.example:443/jwks", server_supplied=True))
    assert recorder.calls == 2
    assert resolver.queries == []
    # Another port or scheme is another origin.
    with pytest.raises(SSRFBlockedError):
        await driver.send(get("http://127.0.0.1:9001/jwks", server_supplied=True))
    with pytest.raises(SSRFBlockedError):
        await driver.send(get("https://idp.corp.example:8443/jwks", server_supplied=True))
    assert recorder.calls == 2


async def test_sec_02_allow_private_addresses_opt_in() -> None:
    recorder = Recorder([ok()])
    resolver = FakeResolver({"internal.example.com": ["10.0.0.7"]})
    driver, _ = make(recorder, TransportPolicy(allow_private_addresses=True), resolver)
    await driver.send(get("https://10.0.0.1/jwks", server_supplied=True))
    await driver.send(get("https://internal.example.com/jwks", server_supplied=True))
    assert recorder.calls == 2


async def test_sec_02_redirect_to_loopback_refused_without_connection() -> None:
    recorder = Recorder([status(302, {"Location": "http://127.0.0.1:6379/"}), ok()])
    driver, _ = make(recorder)
    with pytest.raises(InvalidResponse, match="redirect"):
        await driver.send(get(server_supplied=True))
    assert [str(r.url) for r in recorder.requests] == [JWKS_URL]


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
async def test_redirects_are_never_followed_nor_retried(code: int) -> None:
    recorder = Recorder([status(code, {"Location": "https://as.example.com/elsewhere"})])
    driver, sleeps = make(recorder)
    with pytest.raises(InvalidResponse, match=str(code)):
        await driver.send(get())
    assert recorder.calls == 1
    assert sleeps.waits == []


# --- security item 4: size caps ---------------------------------------------------------------

CAP = 1024


def streamed(
    total: int, chunk: int = 256, progress: list[int] | None = None
) -> AsyncIterator[bytes]:
    async def body() -> AsyncIterator[bytes]:
        sent = 0
        while sent < total:
            piece = min(chunk, total - sent)
            sent += piece
            if progress is not None:
                progress.append(sent)
            yield b"x" * piece

    return body()


async def test_sec_04_body_at_the_cap_accepted() -> None:
    recorder = Recorder([lambda: httpx2.Response(200, content=streamed(CAP))])
    driver, _ = make(recorder, TransportPolicy(max_response_bytes=CAP))
    assert len((await driver.send(get())).content) == CAP


async def test_sec_04_oversized_streamed_body_without_content_length() -> None:
    progress: list[int] = []
    recorder = Recorder(
        [lambda: httpx2.Response(200, content=streamed(100 * CAP, progress=progress))]
    )
    driver, _ = make(recorder, TransportPolicy(max_response_bytes=CAP))
    with pytest.raises(InvalidResponse, match="larger than 1024 bytes"):
        await driver.send(get())
    assert "content-length" not in recorder.requests[0].headers
    assert max(progress) <= CAP + 256  # reading stopped right after the cap


async def test_sec_04_oversized_content_length_refused_upfront() -> None:
    progress: list[int] = []
    recorder = Recorder(
        [
            lambda: httpx2.Response(
                200,
                headers={"Content-Length": str(100 * CAP)},
                content=streamed(100 * CAP, progress=progress),
            )
        ]
    )
    driver, _ = make(recorder, TransportPolicy(max_response_bytes=CAP))
    with pytest.raises(InvalidResponse, match="larger than"):
        await driver.send(get())
    assert progress == []  # not one byte of the body was read


async def test_sec_04_lying_content_length_refused() -> None:
    recorder = Recorder(
        [
            lambda: httpx2.Response(
                200, headers={"Content-Length": "10"}, content=streamed(100 * CAP)
            )
        ]
    )
    driver, _ = make(recorder, TransportPolicy(max_response_bytes=CAP))
    with pytest.raises(InvalidResponse, match="larger than"):
        await driver.send(get())


@pytest.mark.parametrize("value", ["-1", "abc", "1e3", "10, 20", "9" * 40])
async def test_sec_04_invalid_or_absurd_content_length_refused(value: str) -> None:
    recorder = Recorder(
        [lambda: httpx2.Response(200, headers={"Content-Length": value}, content=streamed(5))]
    )
    driver, _ = make(recorder, TransportPolicy(max_response_bytes=CAP))
    with pytest.raises(InvalidResponse):
        await driver.send(get())


# --- error mapping ----------------------------------------------------------------------------


async def test_timeout_maps_to_request_timeout() -> None:
    recorder = Recorder([httpx2.ReadTimeout("timed out")])
    driver, _ = make(recorder)
    with pytest.raises(RequestTimeout) as info:
        await driver.send(token_request())
    assert isinstance(info.value.__cause__, httpx2.ReadTimeout)
    assert recorder.calls == 1


async def test_connection_reset_maps_to_transport_error() -> None:
    recorder = Recorder([httpx2.ReadError("[Errno 104] Connection reset by peer")])
    driver, _ = make(recorder)
    with pytest.raises(TransportError) as info:
        await driver.send(token_request())
    assert not isinstance(info.value, RequestTimeout)
    assert isinstance(info.value.__cause__, httpx2.ReadError)
    assert recorder.calls == 1


async def test_whole_request_deadline() -> None:
    async def slow_body() -> AsyncIterator[bytes]:
        yield b"{"
        await anyio.sleep(30)
        yield b"}"

    recorder = Recorder([lambda: httpx2.Response(200, content=slow_body())])
    driver, _ = make(recorder, TransportPolicy(timeout=0.2, max_retries=0))
    with anyio.fail_after(5):
        with pytest.raises(RequestTimeout):
            await driver.send(get())


async def test_cancellation_is_not_swallowed_nor_retried() -> None:
    async def hang(request: httpx2.Request) -> httpx2.Response:
        calls.append(request)
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    calls: list[httpx2.Request] = []
    sleeps = Sleeps()
    client = httpx2.AsyncClient(transport=httpx2.MockTransport(hang))
    driver = HttpDriver(TransportPolicy(), client, sleep=sleeps)
    with anyio.move_on_after(0.1) as scope:
        await driver.send(get())
    assert scope.cancelled_caught
    assert len(calls) == 1
    assert sleeps.waits == []


# --- retries ----------------------------------------------------------------------------------


async def test_503_with_retry_after_retried_on_idempotent_request() -> None:
    recorder = Recorder(
        [status(503, {"Retry-After": "2"}), status(503, {"Retry-After": "1"}), ok()]
    )
    driver, sleeps = make(recorder)
    response = await driver.send(get())
    assert response.status_code == 200
    assert recorder.calls == 3
    assert sleeps.waits == [2.0, 1.0]


async def test_sec_25_503_not_retried_on_token_request() -> None:
    recorder = Recorder([status(503, {"Retry-After": "1"}), ok()])
    driver, sleeps = make(recorder)
    response = await driver.send(token_request())
    assert response.status_code == 503
    assert recorder.calls == 1
    assert sleeps.waits == []


async def test_sec_25_transport_errors_never_repeat_a_refresh() -> None:
    for error in (httpx2.ReadTimeout("t"), httpx2.ConnectError("c"), httpx2.ReadError("r")):
        recorder = Recorder([error, ok()])
        driver, sleeps = make(recorder)
        with pytest.raises(TransportError):
            await driver.send(token_request())
        assert recorder.calls == 1
        assert sleeps.waits == []


async def test_retry_after_beyond_the_cap_is_not_retried() -> None:
    recorder = Recorder([status(503, {"Retry-After": "120"}), ok()])
    driver, sleeps = make(recorder, TransportPolicy(max_retry_wait=30))
    response = await driver.send(get())
    assert response.status_code == 503
    assert response.header("retry-after") == "120"
    assert recorder.calls == 1
    assert sleeps.waits == []


async def test_retry_after_http_date_honoured() -> None:
    when = datetime.now(UTC) + timedelta(seconds=20)
    recorder = Recorder([status(429, {"Retry-After": format_datetime(when, usegmt=True)}), ok()])
    driver, sleeps = make(recorder)
    assert (await driver.send(get())).status_code == 200
    assert len(sleeps.waits) == 1
    assert 15 <= sleeps.waits[0] <= 21


async def test_retries_are_bounded_and_last_response_returned() -> None:
    recorder = Recorder([status(502)])
    driver, sleeps = make(recorder, TransportPolicy(max_retries=3, max_retry_wait=4))
    response = await driver.send(get())
    assert response.status_code == 502
    assert recorder.calls == 4
    assert len(sleeps.waits) == 3
    assert all(0 <= wait <= 4 for wait in sleeps.waits)  # exponential backoff with jitter


@pytest.mark.parametrize("code", [429, 502, 503, 504])
async def test_retryable_statuses(code: int) -> None:
    recorder = Recorder([status(code), ok()])
    driver, sleeps = make(recorder)
    assert (await driver.send(get())).status_code == 200
    assert recorder.calls == 2
    assert len(sleeps.waits) == 1


@pytest.mark.parametrize("code", [400, 401, 404, 500, 501])
async def test_other_statuses_not_retried(code: int) -> None:
    recorder = Recorder([status(code), ok()])
    driver, _ = make(recorder)
    assert (await driver.send(get())).status_code == code
    assert recorder.calls == 1


async def test_idempotent_transport_errors_retried_then_raised() -> None:
    recorder = Recorder([httpx2.ConnectError("refused"), httpx2.ReadTimeout("t"), ok()])
    driver, sleeps = make(recorder)
    assert (await driver.send(get())).status_code == 200
    assert recorder.calls == 3

    recorder = Recorder([httpx2.ReadTimeout("t")])
    driver, sleeps = make(recorder, TransportPolicy(max_retries=1))
    with pytest.raises(RequestTimeout):
        await driver.send(get())
    assert recorder.calls == 2
    assert len(sleeps.waits) == 1


async def test_policy_errors_are_not_retried() -> None:
    recorder = Recorder([httpx2.UnsupportedProtocol("nope"), ok()])
    driver, _ = make(recorder)
    with pytest.raises(TransportError):
        await driver.send(get())
    assert recorder.calls == 1


async def test_max_retries_zero() -> None:
    recorder = Recorder([status(503), ok()])
    driver, _ = make(recorder, TransportPolicy(max_retries=0))
    assert (await driver.send(get())).status_code == 503
    assert recorder.calls == 1


# --- parse_retry_after --------------------------------------------------------------------


def test_parse_retry_after() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after(None) is None
    assert parse_retry_after("") is None
    assert parse_retry_after("  ") is None
    assert parse_retry_after("0") == 0.0
    assert parse_retry_after(" 120 ") == 120.0
    assert parse_retry_after("Thu, 01 Jan 2026 12:00:30 GMT", now=now) == 30.0
    assert parse_retry_after("Thu, 01 Jan 2026 11:00:00 GMT", now=now) == 0.0
    assert parse_retry_after("Thursday, 01-Jan-26 12:01:00 GMT", now=now) == 60.0
    assert parse_retry_after("-5") is None
    assert parse_retry_after("1.5") is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("\u0661\u0662") is None  # Arabic-Indic digits are not delta-seconds
    # the bounded-number rule: clamped to a year, far beyond any max_retry_wait
    assert parse_retry_after("9" * 5000) == 365 * 24 * 3600
    assert parse_retry_after("00000000000000000000000000000042") == 42.0


@given(st.text(max_size=60))
def test_parse_retry_after_never_raises(value: str) -> None:
    result = parse_retry_after(value, now=datetime(2026, 1, 1, tzinfo=UTC))
    assert result is None or result >= 0


# --- security item 40: no secrets in errors or repr --------------------------------------


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


@pytest.mark.parametrize(
    "answer",
    [
        httpx2.ReadTimeout("timed out"),
        httpx2.ConnectError("refused"),
        httpx2.RemoteProtocolError("Server disconnected"),
        httpx2.LocalProtocolError(f"Illegal header value b'Bearer {CANARIES[2]}\\n'"),
        status(302, {"Location": "https://evil.example/"}),
        lambda: httpx2.Response(200, content=streamed(10 * CAP)),
        lambda: httpx2.Response(200, headers={"Content-Encoding": "gzip"}, content=b"zz"),
    ],
)
async def test_sec_40_no_secret_in_any_exception_message_or_repr(
    answer: httpx2.Response | Exception | Callable[[], httpx2.Response],
) -> None:
    recorder = Recorder([answer])
    driver, _ = make(recorder, TransportPolicy(max_response_bytes=CAP))
    request = HttpRequest(
        "POST",
        f"{TOKEN_URL}?hint={CANARIES[2]}",
        headers={"Authorization": f"Bearer {CANARIES[2]}"},
        form={"client_secret": CANARIES[0], "refresh_token": CANARIES[1]},
        idempotent=True,
    )
    with pytest.raises(AgentIdentityError) as info:
        await driver.send(request)
    chain = _chain(info.value)
    for exc in chain:
        for text in (str(exc), repr(exc), *map(str, exc.args)):
            for canary in CANARIES:
                assert canary not in text, (type(exc), text)
    # HttpRequest's repr shows the URL (query included): only form and header values here.
    no_query = HttpRequest(
        "POST", TOKEN_URL, headers=request.headers, form=request.form, idempotent=True
    )
    for text in (repr(no_query), repr(driver)):
        for canary in CANARIES:
            assert canary not in text


async def test_sec_40_unencodable_header_gives_clean_error() -> None:
    recorder = Recorder([ok()])
    driver, _ = make(recorder)
    request = HttpRequest("GET", JWKS_URL, headers={"Authorization": f"Bearer {CANARIES[2]}\u2603"})
    with pytest.raises(ConfigurationError) as info:
        await driver.send(request)
    for exc in _chain(info.value):
        assert CANARIES[2] not in str(exc)
    assert recorder.calls == 0


# --- lifecycle and configuration ------------------------------------------------------------


async def test_injected_client_not_closed_created_client_closed() -> None:
    client = httpx2.AsyncClient(transport=httpx2.MockTransport(Recorder([ok()])))
    async with HttpDriver(client=client) as driver:
        await driver.send(get())
    assert not client.is_closed

    driver = HttpDriver()
    async with driver:
        pass
    assert driver._client.is_closed


def test_transport_policy_validation() -> None:
    assert TransportPolicy().max_response_bytes == 1_048_576
    for bad in (
        {"max_response_bytes": 0},
        {"timeout": 0},
        {"timeout": float("nan")},
        {"max_retries": -1},
        {"max_retry_wait": -1},
    ):
        with pytest.raises(ConfigurationError):
            TransportPolicy(**bad)


async def test_create_client_defaults() -> None:
    async with create_client() as client:
        assert client.follow_redirects is False
        assert client.timeout.connect == 30.0


# --- real loopback servers: the connect-time guard ---------------------------------------


@dataclass
class Server:
    port: int
    connections: int = 0
    heads: list[bytes] = field(default_factory=list)


RESPONSE_200 = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n"
    b'Connection: close\r\n\r\n{"ok":true}'
)


@asynccontextmanager
async def serve(
    response: bytes = RESPONSE_200, tls: ssl.SSLContext | None = None
) -> AsyncIterator[Server]:
    """A minimal one-answer-per-connection HTTP/1.1 (or HTTPS) server on 127.0.0.1."""
    tcp = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    server = Server(port=tcp.extra(anyio.abc.SocketAttribute.local_port))
    listener: anyio.abc.Listener[Any] = tcp
    if tls is not None:
        listener = TLSListener(tcp, tls, standard_compatible=False)

    async def handle(stream: anyio.abc.ByteStream) -> None:
        server.connections += 1
        async with stream:
            head = b""
            with anyio.move_on_after(5):
                while b"\r\n\r\n" not in head:
                    head += await stream.receive()
            server.heads.append(head)
            await stream.send(response)

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        try:
            yield server
        finally:
            tg.cancel_scope.cancel()


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_sec_02_real_server_loopback_issuer_works_when_trusted() -> None:
    async with serve() as server:
        base = f"http://127.0.0.1:{server.port}"
        async with HttpDriver(TransportPolicy(allow_insecure_loopback=True, timeout=5)) as driver:
            # Without trust: a server-supplied loopback URL is refused, nothing connects.
            with pytest.raises(SSRFBlockedError):
                await driver.send(get(f"{base}/jwks", server_supplied=True))
            assert server.connections == 0

            driver.trust_origin(f"{base}/")
            response = await driver.send(get(f"{base}/jwks", server_supplied=True))
            assert response.status_code == 200
            assert response.content == b'{"ok":true}'
            assert server.connections == 1
            assert server.heads[0].startswith(b"GET /jwks HTTP/1.1\r\n")


async def test_sec_02_connect_time_guard_blocks_dns_rebinding() -> None:
    """The name resolves to a public address when vetted, then to 127.0.0.1 when the
    connection is made: the guard in the network backend refuses it, nothing connects."""
    answers = [["93.184.216.34"], ["127.0.0.1"]]
    queries: list[str] = []

    async def rebinding(host: str, port: int) -> Sequence[str]:
        queries.append(host)
        return answers.pop(0) if len(answers) > 1 else answers[0]

    async with serve() as server:
        policy = TransportPolicy(timeout=5, max_retries=0)
        async with HttpDriver(policy, resolve=rebinding) as driver:
            with pytest.raises(SSRFBlockedError, match=r"127\.0\.0\.1"):
                await driver.send(
                    get(f"https://rebind.example:{server.port}/jwks", server_supplied=True)
                )
        assert queries == ["rebind.example", "rebind.example"]
        assert server.connections == 0


async def test_sec_02_real_redirect_to_loopback_refused_without_connection() -> None:
    async with serve() as target:
        redirect = (
            f"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:{target.port}/\r\n"
            "Content-Length: 0\r\nConnection: close\r\n\r\n"
        ).encode()
        async with serve(redirect) as issuer:
            policy = TransportPolicy(allow_insecure_loopback=True, timeout=5)
            async with HttpDriver(policy) as driver:
                with pytest.raises(InvalidResponse, match="redirect"):
                    await driver.send(get(f"http://127.0.0.1:{issuer.port}/.well-known/x"))
            assert issuer.connections == 1
            assert target.connections == 0


async def test_guarded_backend_connects_to_the_vetted_address_and_keeps_the_host_name() -> None:
    async def resolve(host: str, port: int) -> Sequence[str]:
        assert host == "service.test"
        return ["127.0.0.1"]

    def allow_loopback(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return ip.is_loopback

    backend = _guard.GuardedBackend(resolve, allowed=allow_loopback)
    async with serve() as server:
        client = httpx2.AsyncClient(transport=_guard.GuardedTransport(backend))
        token = _netguard.VET_CONNECT.set(True)
        try:
            async with client:
                response = await client.get(f"http://service.test:{server.port}/x")
        finally:
            _netguard.VET_CONNECT.reset(token)
        assert response.status_code == 200
        assert b"\r\nhost: service.test:" in server.heads[0].lower()


async def test_guarded_backend_passes_through_when_not_vetting() -> None:
    async def resolve(host: str, port: int) -> Sequence[str]:
        raise AssertionError("must not resolve")

    backend = _guard.GuardedBackend(resolve)
    async with serve() as server:
        async with httpx2.AsyncClient(transport=_guard.GuardedTransport(backend)) as client:
            response = await client.get(f"http://127.0.0.1:{server.port}/")
        assert response.status_code == 200


def _tls_contexts(tmp: Any, name: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A throwaway CA and a server certificate for ``name``: (server, client) contexts."""
    now = datetime.now(UTC)

    def build(subject: str, key: ec.EllipticCurvePrivateKey) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(hours=1))
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = (
        build("test CA", ca_key)
        .issuer_name(ca_name)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        build(name, key)
        .issuer_name(ca_name)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_file, key_file = tmp / "cert.pem", tmp / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_file, key_file)
    client = ssl.create_default_context(
        cadata=ca.public_bytes(serialization.Encoding.PEM).decode("ascii")
    )
    return server, client


@pytest.mark.parametrize(("cert_name", "accepted"), [("service.test", True), ("other.test", False)])
async def test_guarded_backend_verifies_tls_against_the_host_name(
    tmp_path: Any, cert_name: str, accepted: bool
) -> None:
    """The guard connects to the vetted IP, yet TLS (SNI and certificate check) still
    uses the URL's host name: a certificate for another name is refused."""

    async def resolve(host: str, port: int) -> Sequence[str]:
        return ["127.0.0.1"]

    def allow_loopback(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return ip.is_loopback

    server_tls, client_tls = _tls_contexts(tmp_path, cert_name)
    backend = _guard.GuardedBackend(resolve, allowed=allow_loopback)
    async with serve(tls=server_tls) as server:
        transport = _guard.GuardedTransport(backend, ssl_context=client_tls)
        token = _netguard.VET_CONNECT.set(True)
        try:
            async with httpx2.AsyncClient(transport=transport, timeout=5) as client:
                if accepted:
                    response = await client.get(f"https://service.test:{server.port}/x")
                    assert response.status_code == 200
                    assert b"\r\nhost: service.test:" in server.heads[0].lower()
                else:
                    with pytest.raises(httpx2.ConnectError):
                        await client.get(f"https://service.test:{server.port}/x")
        finally:
            _netguard.VET_CONNECT.reset(token)
