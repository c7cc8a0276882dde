"""The CIBA ping callback receiver (CIBA Core 1.0 §10.2, security item 44).

In ping mode the authorization server POSTs ``{"auth_req_id": "..."}`` to the client's
``backchannel_client_notification_endpoint`` with ``Authorization: Bearer
<client_notification_token>`` once the user decided; the client then fetches the result at
the token endpoint. :class:`PingReceiver` is that endpoint:

- an ASGI application (``await receiver(scope, receive, send)``): route to it in Starlette
  or FastAPI with ``app.add_route("/ciba/notify", receiver, methods=["POST"])`` (not
  ``app.mount``: a mount answers the exact path with a 307 redirect, which authorization
  servers do not follow); it has no framework dependency and answers any path;
- :meth:`PingReceiver.serve`: a small standalone HTTP/1.1 server on ``127.0.0.1`` (or
  ``::1``) for local use, or behind a TLS-terminating proxy (authorization servers
  require ``https`` notification endpoints except on loopback).

Rules: the bearer token is compared in constant time (:func:`hmac.compare_digest`) with
the one stored for that ``auth_req_id``; a missing or wrong one gets ``401`` and nothing
else happens (no token request); a good one gets ``204`` and only then wakes the waiting
approval, which fetches the token. It never answers with a redirect. The receiver must
run in the event loop of the agent that waits for the approvals (one process).

The standalone server survives any request (issue 12 item 9): ``Content-Length`` is
1*DIGIT in ASCII (RFC 9110 §8.6) and bounded before conversion, the head is capped at
8 KiB, the body at ``max_body``, each connection at :data:`_CONNECTION_DEADLINE` seconds
in all and :data:`_MAX_CONNECTIONS` connections at a time (more are closed at once); a
connection that fails in any way is closed and logged, and the failure never reaches the
task group of the application that runs the server.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterator,
    MutableMapping,
    Sequence,
)
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any, Final

import anyio
import anyio.abc
from pydantic import SecretStr

from agent_identity.errors import ConfigurationError, InvalidResponse
from agent_identity.oauth.ciba import check_notification_bearer, parse_ping_notification

__all__ = ["PingReceiver"]

logger = logging.getLogger("agent_identity.approval")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_MAX_HEAD: Final = 8 * 1024
_READ_TIMEOUT: Final = 10.0
#: The longest a connection may take from accept to reply (slow clients are cut off).
_CONNECTION_DEADLINE: Final = 15.0
#: Connections served at a time; more are closed without an answer.
_MAX_CONNECTIONS: Final = 64
_ASCII_DIGITS: Final = re.compile(rb"[0-9]+")
_LOOPBACK_LITERALS: Final = ("127.0.0.1", "::1")
_REASONS: Final = {
    204: "No Content",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    411: "Length Required",
    413: "Content Too Large",
}


@dataclass(eq=False)
class _Expectation:
    token: SecretStr
    event: anyio.Event = field(default_factory=anyio.Event)

    def __repr__(self) -> str:
        return f"_Expectation(notified={self.event.is_set()})"


class Notification:
    """What the approval flow waits on for one ``auth_req_id``."""

    __slots__ = ("_expectation",)

    def __init__(self, expectation: _Expectation) -> None:
        self._expectation = expectation

    async def wait(self, seconds: float) -> bool:
        """Wait up to ``seconds`` for an authenticated ping; ``True`` if one came
        (the notification is then consumed: a later :meth:`wait` waits for another)."""
        with anyio.move_on_after(max(0.0, seconds)):
            await self._expectation.event.wait()
        if self._expectation.event.is_set():
            self._expectation.event = anyio.Event()
            return True
        return False


class PingReceiver:
    """Receives CIBA ping notifications for the approvals waiting in this process.

    ``max_body`` caps the notification body (bytes). ``accepted`` and ``rejected`` count
    authenticated and refused notifications (for monitoring; no secrets are kept).
    """

    def __init__(self, *, max_body: int = 4096) -> None:
        if max_body < 64:
            raise ConfigurationError("max_body must be at least 64 bytes")
        self._max_body = max_body
        self._expected: dict[str, _Expectation] = {}
        self.accepted = 0
        self.rejected = 0
        self.url: str | None = None

    def __repr__(self) -> str:
        return f"PingReceiver(url={self.url!r}, waiting={len(self._expected)})"

    # -- the approval side ------------------------------------------------------------

    @contextmanager
    def expecting(self, auth_req_id: str, token: SecretStr) -> Iterator[Notification]:
        """Accept pings for ``auth_req_id`` bearing ``token`` while the block runs."""
        if auth_req_id in self._expected:
            raise ConfigurationError("this CIBA request is already being waited for")
        expectation = _Expectation(token)
        self._expected[auth_req_id] = expectation
        try:
            yield Notification(expectation)
        finally:
            if self._expected.get(auth_req_id) is expectation:
                del self._expected[auth_req_id]

    # -- ASGI -------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope.get("type")
        if kind == "lifespan":
            await _lifespan(receive, send)
            return
        if kind != "http":
            return
        expectation: _Expectation | None = None
        try:
            try:
                status, expectation = await self._check(scope, receive)
            except Exception as exc:  # a malformed request from the server or client
                logger.warning("CIBA ping refused: malformed request (%s)", type(exc).__name__)
                self.rejected += 1
                status, expectation = 400, None
            headers: list[tuple[bytes, bytes]] = [(b"cache-control", b"no-store")]
            if status == 401:
                headers.append((b"www-authenticate", b"Bearer"))
            if status == 405:
                headers.append((b"allow", b"POST"))
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
        finally:
            # 204 first, then the token request (§10.2): the waiter wakes only now.
            if expectation is not None:
                expectation.event.set()

    async def _check(self, scope: Scope, receive: Receive) -> tuple[int, _Expectation | None]:
        if scope.get("method") != "POST":
            return 405, None
        authorization = _header(scope, b"authorization")
        if authorization is None or not authorization.lower().startswith("bearer "):
            self.rejected += 1
            logger.warning("CIBA ping refused: no bearer token")
            return 401, None
        body = await _read_body(receive, self._max_body)
        if body is None:
            return 413, None
        problem: str | None = None
        auth_req_id = ""
        try:
            auth_req_id = parse_ping_notification(body)
        except InvalidResponse as exc:
            problem = str(exc)
        if problem is not None:
            self.rejected += 1
            logger.warning("CIBA ping refused: %s", problem)
            return 400, None
        expectation = self._expected.get(auth_req_id)
        # Compare even for an unknown id, so that timing does not tell ids apart.
        expected = expectation.token if expectation is not None else _NOBODY
        if not check_notification_bearer(authorization, expected) or expectation is None:
            self.rejected += 1
            logger.warning("CIBA ping refused: wrong bearer token or no such pending request")
            return 401, None
        self.accepted += 1
        logger.debug("CIBA ping accepted")
        return 204, expectation

    # -- standalone server ----------------------------------------------------------------

    @asynccontextmanager
    async def serve(
        self, *, host: str = "127.0.0.1", port: int = 0, path: str = "/ciba/notify"
    ) -> AsyncIterator[str]:
        """Serve this receiver over HTTP/1.1 on a loopback address while the block runs;
        yields the notification endpoint URL (``port=0``: an ephemeral port). Register
        that URL as the client's ``backchannel_client_notification_endpoint``."""
        if host not in _LOOPBACK_LITERALS:
            raise ConfigurationError("the standalone ping receiver binds 127.0.0.1 or ::1 only")
        if not path.startswith("/") or any(c in path for c in "?# "):
            raise ConfigurationError("path must be an absolute path without query or fragment")
        listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
        bound = int(listener.listeners[0].extra(anyio.abc.SocketAttribute.local_port))  # noqa: S610
        literal = f"[{host}]" if ":" in host else host
        url = f"http://{literal}:{bound}{path}"
        self.url = url

        limiter = anyio.CapacityLimiter(_MAX_CONNECTIONS)

        async def handle(stream: anyio.abc.SocketStream) -> None:
            async with stream:
                try:
                    limiter.acquire_nowait()
                except anyio.WouldBlock:
                    logger.warning("CIBA ping refused: too many connections")
                    return
                try:
                    with anyio.move_on_after(_CONNECTION_DEADLINE):
                        await _serve_one(stream, self, path, self._max_body)
                except Exception as exc:  # one bad connection never stops the server
                    logger.warning("CIBA ping connection failed (%s)", type(exc).__name__)
                finally:
                    limiter.release()

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(listener.serve, handle)
                try:
                    yield url
                finally:
                    tg.cancel_scope.cancel()
        finally:
            self.url = None
            await listener.aclose()


_NOBODY: Final = SecretStr("\x00" * 43)  # never equal to a presented token (no NUL in headers)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers") or ():
        if bytes(key).lower() == name:
            return bytes(value).decode("latin-1")
    return None


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    body = bytearray()
    while True:
        message = await receive()
        if message.get("type") == "http.disconnect":
            return bytes(body)
        body += message.get("body", b"")
        if len(body) > limit:
            return None
        if not message.get("more_body", False):
            return bytes(body)


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message.get("type") == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message.get("type") == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


# -- a minimal HTTP/1.1 front end for the standalone server ----------------------------


async def _serve_one(
    stream: anyio.abc.SocketStream, app: PingReceiver, path: str, max_body: int
) -> None:
    data = b""
    with anyio.move_on_after(_READ_TIMEOUT) as scope:
        while b"\r\n\r\n" not in data and len(data) <= _MAX_HEAD:
            try:
                chunk = await stream.receive(4096)
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                return
            data += chunk
    if scope.cancelled_caught:
        return
    head, sep, rest = data.partition(b"\r\n\r\n")
    if not sep:
        await _reply(stream, 400)
        return
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        await _reply(stream, 400)
        return
    method, target, _ = parts
    headers: list[tuple[bytes, bytes]] = []
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            await _reply(stream, 400)
            return
        headers.append((name.lower().encode("latin-1"), value.strip().encode("latin-1")))
    if target.partition("?")[0] != path:
        await _reply(stream, 404)
        return
    names = [name for name, _ in headers]
    if b"transfer-encoding" in names:
        await _reply(stream, 411)
        return
    lengths = [value for name, value in headers if name == b"content-length"]
    length = 0
    if lengths:
        # RFC 9110 §8.6: 1*DIGIT, ASCII only ("²" passes str.isdigit()); compared as text
        # first so that a 5,000-digit value is never converted.
        if len(set(lengths)) != 1 or not _ASCII_DIGITS.fullmatch(lengths[0]):
            await _reply(stream, 400)
            return
        digits = lengths[0].lstrip(b"0") or b"0"
        if len(digits) > len(str(max_body)):
            await _reply(stream, 413)
            return
        length = int(digits)
    if length > max_body:
        await _reply(stream, 413)
        return
    body = rest[:length]
    with anyio.move_on_after(_READ_TIMEOUT) as scope:
        while len(body) < length:
            try:
                body += await stream.receive(length - len(body))
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                return
    if scope.cancelled_caught:
        return
    sent: list[int] = []
    delivered = False

    async def receive() -> Message:
        nonlocal delivered
        if delivered:
            await anyio.sleep_forever()
        delivered = True
        return {"type": "http.request", "body": body, "more_body": False}

    extra: list[tuple[bytes, bytes]] = []

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            sent.append(int(message["status"]))
            extra.extend((bytes(k), bytes(v)) for k, v in message.get("headers", ()))
        elif message["type"] == "http.response.body" and not message.get("more_body"):
            await _reply(stream, sent[0], extra)

    http_scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": target.partition("?")[0],
        "raw_path": target.encode("latin-1"),
        "query_string": target.partition("?")[2].encode("latin-1"),
        "root_path": "",
        "headers": headers,
        "client": None,
        "server": None,
    }
    await app(http_scope, receive, send)


async def _reply(
    stream: anyio.abc.SocketStream, status: int, headers: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}"]
    lines += [f"{k.decode('latin-1')}: {v.decode('latin-1')}" for k, v in headers]
    if not any(k == b"cache-control" for k, _ in headers):
        lines.append("Cache-Control: no-store")
    lines += ["Content-Length: 0", "Connection: close", "", ""]
    with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
        await stream.send("\r\n".join(lines).encode("latin-1"))
