"""The loopback redirect listener and LoopbackConsent, over real sockets on 127.0.0.1.

Security item 21 (RFC 8252 §7.3, §8.3): the listener binds an IP literal (never the name
``localhost``) on an ephemeral port, serves exactly one flow, is closed afterwards and is
never an open redirector. Security item 3: the URL handed to the browser is checked
(``javascript:``, ``data:``, ``file:``, plain ``http`` ... are never opened).

The consent flow is a fake implementing :class:`agent_identity.consent.ConsentFlow`; the
"browser" is a raw HTTP/1.1 client on :func:`anyio.connect_tcp`.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import anyio
import pytest

from agent_identity.consent import ConsentFlow, LoopbackConsent
from agent_identity.consent.loopback import LoopbackListener
from agent_identity.errors import (
    ConfigurationError,
    ConsentTimeout,
    InsecureURLError,
    StateMismatch,
)
from agent_identity.models import DeviceAuthorization
from agent_identity.oauth.urls import check_loopback_redirect_uri

pytestmark = pytest.mark.anyio

AUTHORIZATION_URL = "https://as.example/authorize?client_id=agent&state=s1"
CALLBACK_QUERY = "code=c0de&state=s1&iss=https%3A%2F%2Fas.example"


# --- helpers ----------------------------------------------------------------------------------


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes


async def http_request(port: int, data: bytes, *, host: str = "127.0.0.1") -> RawResponse:
    """Send raw bytes to the listener and read the whole response (it closes the stream)."""
    with anyio.fail_after(5):
        async with await anyio.connect_tcp(host, port) as stream:
            await stream.send(data)
            received = b""
            while True:
                try:
                    received += await stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    break
    head, _, body = received.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    version, status, _reason = lines[0].split(" ", 2)
    assert version == "HTTP/1.1"
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return RawResponse(int(status), headers, body)


async def http_get(port: int, target: str) -> RawResponse:
    request = f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    return await http_request(port, request.encode("latin-1"))


def assert_not_a_redirect(response: RawResponse) -> None:
    assert not 300 <= response.status < 400
    assert "location" not in response.headers
    assert "refresh" not in response.headers
    assert b"http-equiv" not in response.body.lower()


async def assert_refused(port: int, host: str = "127.0.0.1") -> None:
    """Connecting must be refused (not time out: TimeoutError is an OSError too)."""
    try:
        with anyio.fail_after(5):
            stream = await anyio.connect_tcp(host, port)
    except TimeoutError:
        pytest.fail(f"connecting to {host}:{port} hung instead of being refused")
    except OSError:
        return
    await stream.aclose()
    pytest.fail(f"{host}:{port} still accepts connections")


async def assert_port_closed(port: int) -> None:
    await assert_refused(port)


def port_of(redirect_uri: str) -> int:
    port = urlsplit(redirect_uri).port
    assert port is not None
    return port


@dataclass
class FakeFlow:
    """A ConsentFlow that records what the handler does and hands out a fixed URL."""

    url: str = AUTHORIZATION_URL
    allow_insecure_loopback: bool = False
    error: Exception | None = None
    tenant: str = "acme"
    user: str = "alice"
    issuer: str = "https://as.example"
    scopes: tuple[str, ...] = ("openid", "calendar.read")
    resource: str | None = None
    redirect_uris: list[str] = field(default_factory=list)
    completed: list[str] = field(default_factory=list)
    redirect_known: anyio.Event = field(default_factory=anyio.Event)

    async def authorization_url(self, redirect_uri: str) -> str:
        self.redirect_uris.append(redirect_uri)
        self.redirect_known.set()
        return self.url

    async def complete(self, callback_url: str) -> None:
        self.completed.append(callback_url)
        if self.error is not None:
            raise self.error

    async def start_device_authorization(self) -> DeviceAuthorization:
        raise AssertionError("the loopback handler never starts a device flow")

    async def wait_for_device_approval(self, authorization: DeviceAuthorization) -> None:
        raise AssertionError("the loopback handler never polls a device flow")

    @property
    def port(self) -> int:
        assert self.redirect_uris, "authorization_url() was not called"
        return port_of(self.redirect_uris[-1])


@dataclass
class User:
    """The person at the browser. ``open`` is the BrowserOpener handed to LoopbackConsent;
    the redirect back is followed by an independent task, as a real browser is a separate
    program that the SDK neither awaits nor cancels."""

    flow: FakeFlow
    query: str = CALLBACK_QUERY
    opened: list[str] = field(default_factory=list)
    pages: list[RawResponse] = field(default_factory=list)
    _opened: anyio.Event = field(default_factory=anyio.Event)

    def open(self, url: str) -> None:
        self.opened.append(url)
        self._opened.set()

    async def follow_redirect(self) -> None:
        await self._opened.wait()
        path = urlsplit(self.flow.redirect_uris[-1]).path
        self.pages.append(await http_get(self.flow.port, f"{path}?{self.query}"))


async def run_consent(flow: FakeFlow, user: User) -> None:
    """Run LoopbackConsent while ``user`` approves in their browser."""
    error: Exception | None = None
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(user.follow_redirect)
            try:
                await LoopbackConsent(browser=user.open, timeout=5).obtain_consent(flow)
            except Exception as exc:
                error = exc
                tg.cancel_scope.cancel()
    if error is not None:
        raise error


def test_fake_flow_implements_the_protocol() -> None:
    assert isinstance(FakeFlow(), ConsentFlow)


# --- security item 21: binding --------------------------------------------------------------


async def test_sec_21_listener_binds_ip_literal_and_ephemeral_port() -> None:
    async with LoopbackListener() as first, LoopbackListener() as second:
        for listener in (first, second):
            parts = urlsplit(listener.redirect_uri)
            assert parts.scheme == "http"
            assert parts.hostname == "127.0.0.1"
            assert parts.port == listener.port
            assert listener.port != 0
            assert parts.path == "/callback"
            assert check_loopback_redirect_uri(listener.redirect_uri) == listener.redirect_uri
        # chosen by the OS, so two live listeners never share a port
        assert first.port != second.port
        # bound to the literal 127.0.0.1 only, not to every address: another loopback
        # address (routed to lo on Linux) is not served
        await assert_refused(first.port, "127.0.0.2")


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST", "0.0.0.0", "::", "", "127.0.0.2"])
def test_sec_21_listener_refuses_names_and_wildcards(host: str) -> None:
    with pytest.raises(ValueError, match=r"127\.0\.0\.1 or ::1"):
        LoopbackListener(host)
    with pytest.raises(ConfigurationError, match=r"127\.0\.0\.1 or ::1"):
        LoopbackConsent(host=host)


@pytest.mark.parametrize("path", ["callback", "", "http://evil.example/cb"])
def test_callback_path_must_be_absolute(path: str) -> None:
    with pytest.raises(ValueError, match="must start with '/'"):
        LoopbackListener(path=path)
    with pytest.raises(ConfigurationError, match="must start with '/'"):
        LoopbackConsent(path=path)


async def test_sec_21_listener_on_ipv6_loopback_literal() -> None:
    try:
        probe = socket.socket(socket.AF_INET6)
        probe.bind(("::1", 0))
        probe.close()
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    async with LoopbackListener("::1") as listener:
        assert listener.redirect_uri == f"http://[::1]:{listener.port}/callback"
        assert listener.port != 0
        check_loopback_redirect_uri(listener.redirect_uri)


# --- security item 21: one flow only ----------------------------------------------------------


async def test_sec_21_listener_closed_after_one_flow() -> None:
    flow = FakeFlow()
    user = User(flow)
    await run_consent(flow, user)

    assert user.opened == [AUTHORIZATION_URL]
    assert flow.completed == [f"{flow.redirect_uris[0]}?{CALLBACK_QUERY}"]
    [page] = user.pages
    assert page.status == 200
    assert b"Authorization complete" in page.body
    assert page.headers["cache-control"] == "no-store"
    assert page.headers["referrer-policy"] == "no-referrer"
    assert_not_a_redirect(page)
    await assert_port_closed(flow.port)


async def test_each_flow_gets_a_new_listener() -> None:
    flows = [FakeFlow(), FakeFlow()]
    for flow in flows:
        await run_consent(flow, User(flow))
    first, second = (flow.port for flow in flows)
    assert first != 0
    assert second != 0
    await assert_port_closed(first)
    await assert_port_closed(second)


async def test_failed_callback_is_raised_page_shows_no_details_listener_closed() -> None:
    error = StateMismatch("authorization response state is unknown or was already used")
    flow = FakeFlow(error=error)
    user = User(flow)
    with pytest.raises(StateMismatch) as info:
        await run_consent(flow, user)
    assert info.value is error
    [page] = user.pages
    assert page.status == 400
    assert b"StateMismatch" in page.body
    assert b"already used" not in page.body  # only the error type reaches the page
    assert_not_a_redirect(page)
    assert len(flow.completed) == 1
    await assert_port_closed(flow.port)


async def test_consent_timeout_when_no_callback_arrives() -> None:
    flow = FakeFlow()
    opened: list[str] = []

    def browser(url: str) -> None:
        opened.append(url)

    with anyio.fail_after(5):
        with pytest.raises(ConsentTimeout):
            await LoopbackConsent(browser=browser, timeout=0.3).obtain_consent(flow)
    assert opened == [AUTHORIZATION_URL]
    assert flow.completed == []
    await assert_port_closed(flow.port)


async def test_completed_callback_is_not_turned_into_a_timeout_by_a_lingering_browser() -> None:
    """A browser opener that never returns (a prompt, a notebook widget) must not hold the
    consent open once the callback has been handled, nor turn its success into a timeout."""
    flow = FakeFlow()
    pages: list[RawResponse] = []

    async def lingering_browser(url: str) -> None:
        await anyio.sleep_forever()

    async def user_approves() -> None:
        await flow.redirect_known.wait()
        path = urlsplit(flow.redirect_uris[-1]).path
        pages.append(await http_get(flow.port, f"{path}?{CALLBACK_QUERY}"))

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(user_approves)
            await LoopbackConsent(browser=lingering_browser, timeout=4).obtain_consent(flow)
    assert len(flow.completed) == 1
    assert [page.status for page in pages] == [200]
    await assert_port_closed(flow.port)


# --- security item 21: not an open redirector; one callback; malformed requests --------------


Handler = Callable[[str], Awaitable[tuple[bool, str]]]


@dataclass
class Recorder:
    ok: bool = True
    message: str = "Authorization complete. You can close this window."
    urls: list[str] = field(default_factory=list)
    entered: anyio.Event = field(default_factory=anyio.Event)
    release: anyio.Event = field(default_factory=anyio.Event)
    block: bool = False

    async def __call__(self, url: str) -> tuple[bool, str]:
        self.urls.append(url)
        self.entered.set()
        if self.block:
            await self.release.wait()
        return self.ok, self.message


@pytest.mark.parametrize(
    "target",
    [
        "/",
        "/favicon.ico",
        "/redirect?url=https://evil.example/",
        "/callback/../redirect?to=https://evil.example/",
        "/callback/extra?code=c&state=s",
        "/CALLBACK?code=c&state=s",
        "//evil.example/callback",
        "/callbackx?code=c",
    ],
)
async def test_sec_21_not_an_open_redirector(target: str) -> None:
    on_callback = Recorder()
    async with LoopbackListener() as listener:
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(listener.serve, on_callback)
                other = await http_get(listener.port, target)
                assert other.status == 404
                assert_not_a_redirect(other)
                assert on_callback.urls == []
                # the callback itself, even when it asks to be sent elsewhere, is answered
                # with a page and never with a redirect
                page = await http_get(
                    listener.port, f"/callback?{CALLBACK_QUERY}&redirect=https://evil.example/"
                )
    assert page.status == 200
    assert_not_a_redirect(page)
    assert b"evil.example" not in page.body
    assert on_callback.urls == [
        f"{listener.redirect_uri}?{CALLBACK_QUERY}&redirect=https://evil.example/"
    ]


async def test_sec_21_rejected_callback_page_is_not_a_redirect_and_is_escaped() -> None:
    on_callback = Recorder(ok=False, message="Authorization failed: <script>x</script>")
    async with LoopbackListener() as listener:
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(listener.serve, on_callback)
                page = await http_get(listener.port, "/callback?error=x&redirect_uri=//evil")
    assert page.status == 400
    assert_not_a_redirect(page)
    assert b"<script>" not in page.body
    assert b"&lt;script&gt;" in page.body


async def test_sec_21_second_callback_gets_404() -> None:
    on_callback = Recorder(block=True)
    async with LoopbackListener() as listener:
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(listener.serve, on_callback)
                first: list[RawResponse] = []

                async def deliver_first() -> None:
                    first.append(await http_get(listener.port, "/callback?code=one&state=s1"))

                tg.start_soon(deliver_first)
                await on_callback.entered.wait()
                # while the first callback is being redeemed, a second one (a replay, or an
                # attacker racing the user) is refused without reaching the flow
                second = await http_get(listener.port, "/callback?code=two&state=s2")
                assert second.status == 404
                assert_not_a_redirect(second)
                on_callback.release.set()
        # the serve loop ended by itself after the one callback
    assert [response.status for response in first] == [200]
    assert on_callback.urls == [f"{listener.redirect_uri}?code=one&state=s1"]


async def test_sec_21_no_request_served_after_the_callback() -> None:
    on_callback = Recorder()
    async with LoopbackListener() as listener:
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(listener.serve, on_callback)
                assert (await http_get(listener.port, "/callback?code=c&state=s")).status == 200
        port = listener.port
    await assert_port_closed(port)
    assert len(on_callback.urls) == 1


@pytest.mark.parametrize(
    "raw",
    [
        b"BLAH\r\n\r\n",
        b"\r\n\r\n",
        b"POST /callback?code=c&state=s HTTP/1.1\r\nHost: x\r\n\r\n",
        b"HEAD /callback?code=c&state=s HTTP/1.1\r\n\r\n",
        b"GET http://evil.example/callback?code=c HTTP/1.1\r\n\r\n",
        b"GET /callback?code=c&state=s\r\n\r\n",
        b"GET /callback?code=c HTTP/1.1 extra\r\n\r\n",
        b"GET  /callback?code=c HTTP/1.1\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",  # a TLS ClientHello
    ],
)
async def test_malformed_request_gets_400(raw: bytes) -> None:
    on_callback = Recorder()
    async with LoopbackListener() as listener:
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(listener.serve, on_callback)
                bad = await http_request(listener.port, raw)
                assert bad.status == 400
                assert_not_a_redirect(bad)
                assert on_callback.urls == []
                # the listener still serves the real callback afterwards
                good = await http_get(listener.port, "/callback?code=c&state=s")
                assert good.status == 200
    assert on_callback.urls == [f"{listener.redirect_uri}?code=c&state=s"]


async def test_oversized_request_does_not_reach_the_flow() -> None:
    on_callback = Recorder()
    # a request line that never ends: the listener stops reading at its cap
    raw = b"GET /callback?code=" + b"a" * (64 * 1024)
    async with LoopbackListener() as listener:
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(listener.serve, on_callback)
                async with await anyio.connect_tcp("127.0.0.1", listener.port) as stream:
                    received = b""
                    try:
                        await stream.send(raw)
                        while True:
                            received += await stream.receive()
                    except (anyio.EndOfStream, anyio.BrokenResourceError):
                        pass  # the listener may reset a connection it did not read fully
                assert not received.startswith(b"HTTP/1.1 200")
                assert on_callback.urls == []
                assert (await http_get(listener.port, "/callback?code=c&state=s")).status == 200
    assert on_callback.urls == [f"{listener.redirect_uri}?code=c&state=s"]


# --- security item 3: the URL handed to the browser --------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "javascript:alert(document.cookie)",
        "JavaScript:alert(1)",
        " javascript:alert(1)",
        "data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==",
        "file:///etc/passwd",
        "vbscript:msgbox(1)",
        "ftp://as.example/authorize",
        "http://as.example/authorize?state=s1",
        "http://127.0.0.1:9/authorize",
        "https://user:pw@as.example/authorize",
        "https://as.example/authorize?x=1\n--new-window",
        "https://as.example/authorize?x=1 --flag",
        "/authorize?state=s1",
    ],
)
async def test_sec_03_browser_url_checked(url: str) -> None:
    flow = FakeFlow(url=url)
    opened: list[str] = []

    def browser(opened_url: str) -> None:
        opened.append(opened_url)

    with anyio.fail_after(5):
        with pytest.raises(InsecureURLError):
            await LoopbackConsent(browser=browser, timeout=5).obtain_consent(flow)
    assert opened == []
    assert flow.completed == []
    await assert_port_closed(flow.port)


async def test_sec_03_loopback_http_authorization_url_needs_the_opt_in() -> None:
    url = "http://127.0.0.1:9/authorize?state=s1"
    flow = FakeFlow(url=url, allow_insecure_loopback=True)
    user = User(flow)
    await run_consent(flow, user)
    assert user.opened == [url]
    assert len(flow.completed) == 1
