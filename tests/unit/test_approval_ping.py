"""The CIBA ping receiver: ASGI app and standalone loopback server (security item 44)."""

from __future__ import annotations

import json
from typing import Any

import anyio
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
