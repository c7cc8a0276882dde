"""Loopback redirect consent for agents running on the user's machine (RFC 8252 §7.3).

Security item 21: the listener binds the IP literal ``127.0.0.1`` (or ``[::1]``), never
the name ``localhost``, on an ephemeral port chosen by the OS; it exists for exactly one
flow and is closed afterwards; it answers only ``GET <callback path>`` and never
redirects anywhere (it is not an open redirector). Security item 3: the authorization URL
is checked (https, or loopback http with the explicit opt-in) and opened with
:mod:`webbrowser`, which starts the browser without a shell.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import webbrowser
from collections.abc import Awaitable, Callable
from html import escape
from typing import Any

import anyio
import anyio.abc

from agent_identity.consent.base import ConsentFlow
from agent_identity.errors import AgentIdentityError, ConfigurationError, ConsentTimeout
from agent_identity.oauth.urls import check_browser_url

__all__ = ["BrowserOpener", "LoopbackConsent", "LoopbackListener"]

logger = logging.getLogger("agent_identity.consent")

#: Something that shows a URL to the user: the system browser by default.
BrowserOpener = Callable[[str], Awaitable[Any] | Any]

_MAX_REQUEST = 16 * 1024
_LOOPBACK_LITERALS = ("127.0.0.1", "::1")


def _check_listener_args(host: str, path: str) -> None:
    # RFC 8252 §8.3: bind the IP literal, never the name ``localhost`` (security item 21).
    if host not in _LOOPBACK_LITERALS:
        raise ConfigurationError("the loopback listener binds 127.0.0.1 or ::1 only")
    if not path.startswith("/"):
        raise ConfigurationError("callback path must start with '/'")


async def _system_browser(url: str) -> None:
    opened = await anyio.to_thread.run_sync(webbrowser.open, url)
    if not opened:
        logger.warning("could not open a browser; open the authorization URL shown above")


class LoopbackListener:
    """A one-shot HTTP listener on a loopback IP literal that captures one callback."""

    def __init__(self, host: str = "127.0.0.1", path: str = "/callback") -> None:
        _check_listener_args(host, path)
        self.host = host
        self.path = path
        self._listener: anyio.abc.Listener[anyio.abc.SocketStream] | None = None
        self.port = 0

    @property
    def redirect_uri(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{self.path}"

    async def __aenter__(self) -> LoopbackListener:
        listener = await anyio.create_tcp_listener(local_host=self.host, local_port=0)
        self._listener = listener
        self.port = int(listener.listeners[0].extra(anyio.abc.SocketAttribute.local_port))  # noqa: S610
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._listener is not None:
            await self._listener.aclose()
            self._listener = None

    async def serve(self, on_callback: Callable[[str], Awaitable[tuple[bool, str]]]) -> None:
        """Serve until one request to the callback path was handled by ``on_callback``
        (which returns ``(ok, message)`` for the page shown to the user)."""
        assert self._listener is not None, "use 'async with LoopbackListener()'"
        done = anyio.Event()
        listener = self._listener
        async with anyio.create_task_group() as tg:

            async def handle(stream: anyio.abc.SocketStream) -> None:
                async with stream:
                    target = await _read_request_target(stream)
                    if target is None:
                        await _respond(stream, 400, "Bad request.")
                        return
                    path, _, _ = target.partition("?")
                    if path != self.path or done.is_set():
                        await _respond(stream, 404, "Not found.")
                        return
                    done.set()
                    ok, message = await on_callback(f"{self.redirect_uri}{target[len(path) :]}")
                    await _respond(stream, 200 if ok else 400, message)
                tg.cancel_scope.cancel()

            await listener.serve(handle, task_group=tg)


async def _read_request_target(stream: anyio.abc.SocketStream) -> str | None:
    data = b""
    with anyio.move_on_after(10):
        while b"\r\n\r\n" not in data and len(data) < _MAX_REQUEST:
            try:
                chunk = await stream.receive(4096)
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                break
            data += chunk
    line = data.split(b"\r\n", 1)[0].decode("latin-1")
    parts = line.split(" ")
    if len(parts) != 3 or parts[0] != "GET" or not parts[1].startswith("/"):
        return None
    return parts[1]


async def _respond(stream: anyio.abc.SocketStream, status: int, message: str) -> None:
    reason = {200: "OK", 400: "Bad Request", 404: "Not Found"}[status]
    body = (
        f"<!doctype html><meta charset=utf-8><title>agent-identity</title><p>{escape(message)}</p>"
    ).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/html; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\n"
        "Referrer-Policy: no-referrer\r\nConnection: close\r\n\r\n"
    ).encode()
    with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
        await stream.send(head + body)


class LoopbackConsent:
    """Open the system browser and receive the redirect on a loopback listener.

    ``browser`` replaces the system browser (for example to print the link, or to drive
    the dev authorization server headlessly in tests). ``timeout`` bounds the whole
    consent (seconds). Once the one callback has been handled the consent is over: a
    ``browser`` call still running then is cancelled.
    """

    def __init__(
        self,
        *,
        browser: BrowserOpener | None = None,
        host: str = "127.0.0.1",
        path: str = "/callback",
        timeout: float = 300.0,
    ) -> None:
        _check_listener_args(host, path)  # refuse ``localhost`` now, not at the first consent
        self._browser: BrowserOpener = browser or _system_browser
        self._host = host
        self._path = path
        self._timeout = timeout

    async def obtain_consent(self, flow: ConsentFlow) -> None:
        failure: list[BaseException] = []

        async def on_callback(url: str) -> tuple[bool, str]:
            try:
                await flow.complete(url)
            except AgentIdentityError as exc:
                failure.append(exc)
                return False, f"Authorization failed: {type(exc).__name__}. Return to the agent."
            return True, "Authorization complete. You can close this window."

        async with LoopbackListener(self._host, self._path) as listener:
            url = await flow.authorization_url(listener.redirect_uri)
            check_browser_url(url, allow_insecure_loopback=flow.allow_insecure_loopback)
            with anyio.move_on_after(self._timeout) as scope:
                async with anyio.create_task_group() as tg:

                    async def serve_one() -> None:
                        await listener.serve(on_callback)
                        # The one callback was handled: the consent is over, so an opener
                        # that is still running (a prompt, a widget) must not hold it open
                        # until the timeout, nor turn its outcome into ConsentTimeout.
                        tg.cancel_scope.cancel()

                    tg.start_soon(serve_one)
                    result = self._browser(url)
                    if inspect.isawaitable(result):
                        await result
            if scope.cancelled_caught:
                raise ConsentTimeout(f"no authorization response arrived within {self._timeout} s")
        if failure:
            raise failure[0]
