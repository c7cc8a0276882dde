"""The CIBA ping receiver: ASGI app and standalone loopback server (security item 44)."""

from __future__ import annotations

import json
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import pytest
from pydantic import SecretStr

from agent_identity.approval import ping as ping_module
from agent_identity.approval.ping import PingReceiver
from agent_identity.errors import ConfigurationError

pytestmark = pytest.mark.anyio

TOKEN = SecretStr("n" * 43)


async def call(
    app: PingReceiver,
    *,
    method: str = "POST",
    body: bytes = b'{"auth_req_id": "req-1"}',
    authorization: str | None = "Bearer " + "n" * 43,
    chunks: int = 1,
) -> tuple[int, dict[bytes, bytes], list[str]]:
    """Run one ASGI request; returns status, headers and the order of events."""
    headers = [(b"content-type", b"application/json")]
    if authorization is not None:
        headers.append((b"authorization", authorization.encode()))
    scope = {"type": "http", "method": method, "path": "/", "headers": headers}
    size = max(1, len(body) // chunks + 1)
    parts = [body[i : i + size] for i in range(0, len(body), size)] or [b""]
    messages = [
        {"type": "http.request", "body": part, "more_body": i < len(parts) - 1}
        for i, part in enumerate(parts)
    ]
    events: list[str] = []
    out: dict[str, Any] = {}

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        events.append(message["type"])
        if message["type"] == "http.response.start":
            out["status"] = message["status"]
            out["headers"] = dict(message["headers"])

    await app(scope, receive, send)
    return out["status"], out["headers"], events


async def test_sec_44_good_bearer_gets_204_then_wakes_the_waiter() -> None:
    app = PingReceiver()
    with app.expecting("req-1", TOKEN) as notification:
        order: list[str] = []

        async def waiter() -> None:
            assert await notification.wait(5)
            order.append("woken")

        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await anyio.lowlevel.checkpoint()
            status, headers, events = await call(app)
            order.extend(events)
    assert status == 204
    assert order == ["http.response.start", "http.response.body", "woken"]
    assert headers[b"cache-control"] == b"no-store"
    assert (app.accepted, app.rejected) == (1, 0)


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Bearer " + "n" * 42 + "m",
        "Bearer " + "n" * 44,
        "Basic " + "n" * 43,
        "Bearer " + "m" * 43,
    ],
)
async def test_sec_44_wrong_or_missing_bearer_gets_401_and_no_wakeup(
    authorization: str | None,
) -> None:
    app = PingReceiver()
    with app.expecting("req-1", TOKEN) as notification:
        status, headers, _ = await call(app, authorization=authorization)
        assert status == 401
        assert headers[b"www-authenticate"] == b"Bearer"
        assert not await notification.wait(0.05)  # nobody is told to fetch the token
    assert app.accepted == 0
    assert app.rejected == 1


async def test_sec_44_bearer_of_another_request_is_refused() -> None:
    app = PingReceiver()
    other = SecretStr("o" * 43)
    with app.expecting("req-1", TOKEN) as first, app.expecting("req-2", other) as second:
        status, _, _ = await call(
            app, body=b'{"auth_req_id": "req-2"}', authorization="Bearer " + "n" * 43
        )
        assert status == 401
        assert not await first.wait(0.01)
        assert not await second.wait(0.01)
        status, _, _ = await call(
            app, body=b'{"auth_req_id": "req-2"}', authorization="Bearer " + "o" * 43
        )
        assert status == 204
        assert await second.wait(1)
        assert not await first.wait(0.01)


async def test_sec_44_unknown_or_finished_request_gets_401() -> None:
    app = PingReceiver()
    assert (await call(app))[0] == 401
    with app.expecting("req-1", TOKEN):
        pass
    assert (await call(app))[0] == 401  # no longer waited for


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"", 400),
        (b"not json", 400),
        (b'{"auth_req_id": 5}', 400),
        (b'{"auth_req_id": "a", "auth_req_id": "b"}', 400),
        (b'{"auth_req_id": "' + b"x" * 5000 + b'"}', 413),
    ],
)
async def test_sec_44_malformed_notifications_are_refused(body: bytes, status: int) -> None:
    app = PingReceiver()
    with app.expecting("req-1", TOKEN) as notification:
        assert (await call(app, body=body, chunks=3))[0] == status
        assert not await notification.wait(0.01)


async def test_sec_44_only_post_and_never_a_redirect() -> None:
    app = PingReceiver()
    with app.expecting("req-1", TOKEN):
        status, headers, _ = await call(app, method="GET")
    assert status == 405
    assert headers[b"allow"] == b"POST"


async def test_lifespan_is_acknowledged() -> None:
    app = PingReceiver()
    incoming = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[str] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message["type"])

    await app({"type": "lifespan"}, receive, send)
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


async def test_expecting_twice_is_refused() -> None:
    app = PingReceiver()
    with app.expecting("req-1", TOKEN), pytest.raises(ConfigurationError):  # noqa: SIM117
        with app.expecting("req-1", TOKEN):
            pass


# -- the standalone server -------------------------------------------------------------------


async def raw_http(port: int, data: bytes) -> bytes:
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        await stream.send(data)
        chunks = b""
        with anyio.fail_after(5):
            while True:
                try:
                    chunks += await stream.receive()
                except anyio.EndOfStream:
                    break
    return chunks


def post(path: str, body: bytes, bearer: str) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {bearer}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def test_sec_44_standalone_server_on_loopback() -> None:
    app = PingReceiver()
    async with app.serve() as url:
        assert url.startswith("http://127.0.0.1:")
        assert url.endswith("/ciba/notify")
        assert app.url == url
        port = int(url.split(":")[2].split("/")[0])
        body = json.dumps({"auth_req_id": "req-1"}).encode()
        with app.expecting("req-1", TOKEN) as notification:
            wrong = await raw_http(port, post("/ciba/notify", body, "x" * 43))
            assert wrong.startswith(b"HTTP/1.1 401 ")
            assert not await notification.wait(0.05)
            elsewhere = await raw_http(port, post("/other", body, "n" * 43))
            assert elsewhere.startswith(b"HTTP/1.1 404 ")
            assert not await notification.wait(0.01)
            chunked = await raw_http(
                port,
                b"POST /ciba/notify HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            )
            assert chunked.startswith(b"HTTP/1.1 411 ")
            garbage = await raw_http(port, b"\x16\x03\x01 hello\r\n\r\n")
            assert garbage.startswith(b"HTTP/1.1 400 ")
            good = await raw_http(port, post("/ciba/notify", body, "n" * 43))
            assert good.startswith(b"HTTP/1.1 204 ")
            assert await notification.wait(1)
            for answer in (wrong, elsewhere, chunked, garbage, good):
                assert answer[9:10] != b"3"  # never a redirect
                assert b"Location" not in answer
    assert app.url is None
    assert (app.accepted, app.rejected) == (1, 1)


async def test_standalone_server_binds_loopback_literals_only() -> None:
    app = PingReceiver()
    for host in ("0.0.0.0", "localhost", "example.com"):
        with pytest.raises(ConfigurationError):
            async with app.serve(host=host):
                pass
    with pytest.raises(ConfigurationError):
        async with app.serve(path="no-slash"):
            pass


def test_repr_shows_no_tokens() -> None:
    app = PingReceiver()
    with app.expecting("req-secret-id", TOKEN):
        assert "n" * 43 not in repr(app)
        assert "req-secret-id" not in repr(app)
        assert "n" * 43 not in repr(ping_module._Expectation(TOKEN))


# -- issue 12 item 9: the standalone server survives any request ------------------------------


def _head(extra: bytes, body: bytes = b"") -> bytes:
    return b"POST /ciba/notify HTTP/1.1\r\nHost: 127.0.0.1\r\n" + extra + b"\r\n" + body


HOSTILE = [
    pytest.param(_head(b"Content-Length: " + b"9" * 5000 + b"\r\n"), b"413", id="5000-digits"),
    pytest.param(_head(b"Content-Length: -1\r\n"), b"400", id="negative"),
    pytest.param(_head(b"Content-Length: \xb2\r\n"), b"400", id="superscript-two"),
    pytest.param(_head(b"Content-Length: \xd9\xa3\r\n"), b"400", id="arabic-indic-three"),
    pytest.param(_head(b"Content-Length: 1e3\r\n"), b"400", id="exponent"),
    pytest.param(_head(b"Content-Length: 5\r\nContent-Length: 6\r\n"), b"400", id="two-lengths"),
    pytest.param(_head(b"Content-Length: 0" + b"0" * 5000 + b"\r\n"), b"401", id="zeros"),
    pytest.param(_head(b"Bad Header\r\n"), b"400", id="header-without-colon"),
    pytest.param(_head(b" X: folded\r\n"), b"400", id="obs-fold"),
    pytest.param(_head(b"X: " + b"\xff\xfe\x00" * 100 + b"\r\n"), b"401", id="binary-header"),
    pytest.param(b"GET\r\n\r\n", b"400", id="short-request-line"),
    pytest.param(b"\x00" * 9000, b"400", id="head-too-large"),
    pytest.param(
        _head(
            b"Authorization: Bearer " + b"n" * 43 + b"\r\nContent-Length: 26\r\n",
            b'{"auth_req_id": "\\ud800"}\n',
        ),
        b"400",
        id="lone-surrogate-escape",
    ),
    pytest.param(
        _head(
            b"Authorization: Bearer " + b"n" * 43 + b"\r\nContent-Length: 22\r\n",
            b'{"auth_req_id": "\xed\xa0\x80"}',
        ),
        b"400",
        id="encoded-surrogate",
    ),
    pytest.param(
        _head(
            b"Authorization: Bearer \xed\xa0\x80\r\nContent-Length: 24\r\n",
            b'{"auth_req_id": "req-1"}',
        ),
        b"401",
        id="surrogate-bearer",
    ),
    pytest.param(
        _head(b"Authorization: Bearer x\r\nContent-Length: 100000\r\n", b"x" * 100_000),
        b"413",
        id="huge-body",
    ),
]


@pytest.mark.parametrize(("request_bytes", "status"), HOSTILE)
async def test_standalone_server_survives_hostile_requests(
    request_bytes: bytes, status: bytes
) -> None:
    app = PingReceiver()
    async with app.serve() as url:
        port = int(url.split(":")[2].split("/")[0])
        with app.expecting("req-1", TOKEN) as notification:
            answer = await raw_http(port, request_bytes)
            assert answer.startswith(b"HTTP/1.1 " + status + b" ")
            assert not await notification.wait(0.01)
            # the server is still up and still serves a good ping
            body = json.dumps({"auth_req_id": "req-1"}).encode()
            good = await raw_http(port, post("/ciba/notify", body, "n" * 43))
            assert good.startswith(b"HTTP/1.1 204 ")
            assert await notification.wait(1)
    # leaving the block raised nothing: no exception reached this task group


async def test_standalone_server_survives_a_crashing_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Whatever goes wrong inside one connection stays inside it."""
    app = PingReceiver()
    real = ping_module._serve_one
    calls = 0

    async def sometimes_crashes(*args: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("bug in one connection")
        await real(*args)

    monkeypatch.setattr(ping_module, "_serve_one", sometimes_crashes)
    async with app.serve() as url:
        port = int(url.split(":")[2].split("/")[0])
        assert await raw_http(port, b"POST / HTTP/1.1\r\n\r\n") == b""
        with app.expecting("req-1", TOKEN) as notification:
            body = json.dumps({"auth_req_id": "req-1"}).encode()
            good = await raw_http(port, post("/ciba/notify", body, "n" * 43))
            assert good.startswith(b"HTTP/1.1 204 ")
            assert await notification.wait(1)


async def _hung_up_while_trickling(stream: anyio.abc.SocketStream, data: bytes) -> bool:
    """Send ``data`` a byte at a time; ``True`` once the server has hung up."""
    try:
        for byte in data:
            await stream.send(bytes([byte]))
            with anyio.move_on_after(0.01):
                await stream.receive()
    except (anyio.EndOfStream, anyio.BrokenResourceError):
        return True
    return False


@pytest.mark.parametrize(("read_timeout", "deadline"), [(0.2, 30.0), (30.0, 0.5)])
async def test_standalone_server_cuts_off_slow_clients(
    monkeypatch: pytest.MonkeyPatch, read_timeout: float, deadline: float
) -> None:
    """Each limit alone cuts off slow clients: the read timeout per phase (head, body)
    and the deadline of the whole connection."""
    monkeypatch.setattr(ping_module, "_READ_TIMEOUT", read_timeout)
    monkeypatch.setattr(ping_module, "_CONNECTION_DEADLINE", deadline)
    app = PingReceiver()
    async with app.serve() as url:
        port = int(url.split(":")[2].split("/")[0])
        slow_head = await anyio.connect_tcp("127.0.0.1", port)
        slow_body = await anyio.connect_tcp("127.0.0.1", port)
        trickle = await anyio.connect_tcp("127.0.0.1", port)
        async with slow_head, slow_body, trickle:
            await slow_head.send(b"POST /ciba/notify HTTP/1.1\r\n")
            await slow_body.send(_head(b"Content-Length: 100\r\n", b"{"))
            with anyio.fail_after(5):
                for stream in (slow_head, slow_body):  # closed by the server, no answer
                    with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                        await stream.receive()
                if deadline < read_timeout:  # one byte at a time: only the deadline helps
                    assert await _hung_up_while_trickling(trickle, _head(b"X: " + b"y" * 2000))
        with app.expecting("req-1", TOKEN) as notification:
            body = json.dumps({"auth_req_id": "req-1"}).encode()
            good = await raw_http(port, post("/ciba/notify", body, "n" * 43))
            assert good.startswith(b"HTTP/1.1 204 ")
            assert await notification.wait(1)


async def test_standalone_server_caps_concurrent_connections(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ping_module, "_MAX_CONNECTIONS", 2)
    app = PingReceiver()
    async with app.serve() as url:
        port = int(url.split(":")[2].split("/")[0])
        idle = [await anyio.connect_tcp("127.0.0.1", port) for _ in range(2)]
        await anyio.sleep(0.1)  # both are being served (waiting for their heads)
        refused = await raw_http(port, b"POST /ciba/notify HTTP/1.1\r\n\r\n")
        assert refused == b""  # closed without an answer
        for stream in idle:
            await stream.aclose()
        await anyio.sleep(0.1)
        with app.expecting("req-1", TOKEN) as notification:
            body = json.dumps({"auth_req_id": "req-1"}).encode()
            good = await raw_http(port, post("/ciba/notify", body, "n" * 43))
            assert good.startswith(b"HTTP/1.1 204 ")
            assert await notification.wait(1)


async def test_asgi_app_answers_400_to_a_malformed_server_message() -> None:
    app = PingReceiver()
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": "not bytes", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "headers": [(b"authorization", b"Bearer x")]}
    with app.expecting("req-1", TOKEN) as notification:
        await app(scope, receive, send)
        assert not await notification.wait(0.01)
    assert sent[0]["status"] == 400


# -- security item 44 on the receiver's own request path --------------------------------------


async def test_sec_44_receiver_compares_the_bearer_in_constant_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every bearer the receiver checks goes through hmac.compare_digest, over a real
    socket: a wrong token, the right one, and one for an unknown request (compared with
    a dummy, so that timing does not tell known ids apart)."""
    import hmac

    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((bytes(a), bytes(b)))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    app = PingReceiver()
    async with app.serve() as url:
        port = int(url.split(":")[2].split("/")[0])
        known = json.dumps({"auth_req_id": "req-1"}).encode()
        unknown = json.dumps({"auth_req_id": "req-2"}).encode()
        with app.expecting("req-1", TOKEN) as notification:
            wrong = await raw_http(port, post("/ciba/notify", known, "n" * 42 + "m"))
            assert wrong.startswith(b"HTTP/1.1 401 ")
            assert calls == [(b"n" * 42 + b"m", b"n" * 43)]
            stranger = await raw_http(port, post("/ciba/notify", unknown, "n" * 43))
            assert stranger.startswith(b"HTTP/1.1 401 ")
            assert len(calls) == 2
            assert calls[1][0] == b"n" * 43
            assert calls[1][1] != b"n" * 43  # the dummy, never another request's token
            good = await raw_http(port, post("/ciba/notify", known, "n" * 43))
            assert good.startswith(b"HTTP/1.1 204 ")
            assert calls[2] == (b"n" * 43, b"n" * 43)
            assert await notification.wait(1)
    assert len(calls) == 3


# -- exact behaviour asked for by mutation testing (docs/security.md) --------------------------


async def test_standalone_answers_carry_the_apps_headers_and_counters_are_exact() -> None:
    app = PingReceiver()
    assert app.url is None
    async with app.serve() as url:
        port = int(url.split(":")[2].split("/")[0])
        body = json.dumps({"auth_req_id": "req-1"}).encode()
        with app.expecting("req-1", TOKEN) as notification:
            wrong = await raw_http(port, post("/ciba/notify", body, "x" * 43))
            assert b"\r\nwww-authenticate: Bearer\r\n" in wrong
            assert wrong.count(b"no-store") == 1
            get = await raw_http(port, b"GET /ciba/notify HTTP/1.1\r\nHost: 127.0.0.1:1\r\n\r\n")
            assert get.startswith(b"HTTP/1.1 405 ")
            assert b"\r\nallow: POST\r\n" in get
            bad = await raw_http(port, post("/ciba/notify", b"{", "n" * 43))
            assert bad.startswith(b"HTTP/1.1 400 ")
            no_length = await raw_http(
                port, b"POST /ciba/notify HTTP/1.1\r\nAuthorization: Bearer x\r\n\r\n"
            )
            assert no_length.startswith(b"HTTP/1.1 400 ")
            # the body in two packets, and exactly max_body long
            padded = body[:-1] + b" " * (4096 - len(body)) + b"}"
            assert len(padded) == 4096
            async with await anyio.connect_tcp("127.0.0.1", port) as stream:
                whole = post("/ciba/notify", padded, "n" * 43)
                await stream.send(whole[:-2000])
                await anyio.sleep(0.05)
                await stream.send(whole[-2000:])
                with anyio.fail_after(5):
                    first = await stream.receive()
            assert first.startswith(b"HTTP/1.1 204 ")
            assert await notification.wait(1)
            assert not await notification.wait(0.01)  # consumed: the next wait waits anew
            too_big = await raw_http(port, post("/ciba/notify", padded + b" ", "n" * 43))
            assert too_big.startswith(b"HTTP/1.1 413 ")
    assert (app.accepted, app.rejected) == (1, 3)


async def test_asgi_body_in_parts_without_optional_keys() -> None:
    app = PingReceiver()
    messages: list[dict[str, Any]] = [
        {"type": "http.request", "more_body": True},
        {"type": "http.request", "body": b'{"auth_req_id": '},
    ]
    tail = {"type": "http.request", "body": b'"req-1"}'}

    async def receive() -> dict[str, Any]:
        if messages:
            message = messages.pop(0)
            if message.get("body", b"").startswith(b'{"auth'):
                message["more_body"] = True
                messages.append(tail)
            return message
        return {"type": "http.disconnect"}

    statuses: list[int] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    scope = {"type": "http", "method": "POST",
             "headers": [(b"authorization", ("Bearer " + "n" * 43).encode())]}  # fmt: skip
    with app.expecting("req-1", TOKEN) as notification:
        await app(scope, receive, send)
        assert await notification.wait(1)
    assert statuses == [204]
    assert (app.accepted, app.rejected) == (1, 0)


def test_max_body_bounds() -> None:
    assert repr(PingReceiver(max_body=64))
    with pytest.raises(ConfigurationError):
        PingReceiver(max_body=63)
