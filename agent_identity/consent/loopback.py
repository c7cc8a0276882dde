"""Loopback redirect consent for agents running on the user's machine (RFC 8252 §7.3).

Security item 21: the listener binds the IP literal ``127.0.0.1`` (or ``[::1]``), never
the name ``localhost``, on an ephemeral port chosen by the OS; it exists for exactly one
flow and is closed afterwards; it answers only ``GET <callback path>`` and never
redirects anywhere (it is not an open redirector). Security item 3: the authorization URL
is checked (https, or loopback http with the explicit opt-in) and opened with
:mod:`webbrowser`, which starts the browser without a shell.

Headless machines: before listening, :class:`LoopbackConsent` looks at where it runs
(:func:`detect_browser_environment`: a graphical session and a browser, a terminal on
stderr, ``CI``). Whenever no browser opened the URL it shows the URL (on stderr, or through
``show_url``); when no browser can open it and nobody watches the terminal it fails at once
with a :class:`~agent_identity.errors.ConfigurationError` naming the handlers that work
there, instead of waiting for its timeout.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import sys
import webbrowser
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from html import escape
from typing import Any, TextIO

import anyio
import anyio.abc

from agent_identity.consent.base import ConsentFlow
from agent_identity.errors import AgentIdentityError, ConfigurationError, ConsentTimeout
from agent_identity.oauth.urls import check_browser_url

__all__ = [
    "BrowserEnvironment",
    "BrowserOpener",
    "LoopbackConsent",
    "LoopbackListener",
    "UrlPresenter",
    "detect_browser_environment",
]

logger = logging.getLogger("agent_identity.consent")

#: Something that shows a URL to the user: the system browser by default. Returning
#: ``False`` (as :func:`webbrowser.open` does) means "not opened": the URL is then shown.
BrowserOpener = Callable[[str], Awaitable[Any] | Any]

#: Shows the authorization URL when no browser opened it (stderr by default).
UrlPresenter = Callable[[str], Awaitable[Any] | Any]

_MAX_REQUEST = 16 * 1024
_LOOPBACK_LITERALS = ("127.0.0.1", "::1")


def _check_listener_args(host: str, path: str) -> None:
    # RFC 8252 §8.3: bind the IP literal, never the name ``localhost`` (security item 21).
    if host not in _LOOPBACK_LITERALS:
        raise ConfigurationError("the loopback listener binds 127.0.0.1 or ::1 only")
    if not path.startswith("/"):
        raise ConfigurationError("callback path must start with '/'")


_DESKTOP_PLATFORMS = ("darwin", "win32", "cygwin")
_FALSE = ("", "0", "false", "no", "off")


@dataclass(frozen=True)
class BrowserEnvironment:
    """What :class:`LoopbackConsent` can count on where it runs.

    ``browser``: a browser can be started on this machine; ``interactive``: a person
    watches this process's stderr (a terminal), where the URL would be printed;
    ``reason``: why not, for messages (empty when both hold).
    """

    browser: bool
    interactive: bool
    reason: str = ""


def _find_browser() -> None:
    webbrowser.get()  # raises webbrowser.Error when no runnable browser is registered


def detect_browser_environment(
    *,
    environ: Mapping[str, str] | None = None,
    platform: str | None = None,
    stderr: TextIO | None = None,
    find_browser: Callable[[], object] | None = None,
) -> BrowserEnvironment:
    """Look at this process's surroundings (every input is injectable for tests).

    - a browser: on Linux and the BSDs a graphical session (``DISPLAY`` or
      ``WAYLAND_DISPLAY``) or an explicit ``BROWSER``; everywhere, :func:`webbrowser.get`
      must find one (console browsers alone, as on a server with ``lynx``, do not count
      without a graphical session or ``BROWSER``);
    - interactive: stderr is a terminal and ``CI`` is not set.
    """
    env = os.environ if environ is None else environ
    system = sys.platform if platform is None else platform
    stream = sys.stderr if stderr is None else stderr
    reasons: list[str] = []
    browser = True
    graphical = bool(env.get("DISPLAY") or env.get("WAYLAND_DISPLAY"))
    if not system.startswith(_DESKTOP_PLATFORMS) and not graphical and not env.get("BROWSER"):
        browser = False
        reasons.append("no graphical session (DISPLAY and WAYLAND_DISPLAY are unset)")
    if browser:
        try:
            (find_browser or _find_browser)()
        except webbrowser.Error:
            browser = False
            reasons.append("no web browser was found")
    interactive = True
    if env.get("CI", "").strip().lower() not in _FALSE:
        interactive = False
        reasons.append("CI is set")
    else:
        try:
            terminal = stream is not None and stream.isatty()
        except (AttributeError, ValueError, OSError):  # closed or unusual streams
            terminal = False
        if not terminal:
            interactive = False
            reasons.append("stderr is not a terminal")
    return BrowserEnvironment(browser, interactive, "; ".join(reasons))


def _print_url(url: str, port: int) -> None:
    print(
        "\nagent-identity: no browser opened the authorization page. Open this link in a "
        "browser on this machine to let the agent act for you:\n"
        f"\n    {url}\n\n"
        "If your browser runs on another machine, forward the callback port first "
        f"(ssh -L {port}:127.0.0.1:{port} ...), or use DeviceCodeConsent instead.\n",
        file=sys.stderr,
        flush=True,
    )


def _headless_error(environment: BrowserEnvironment) -> ConfigurationError:
    return ConfigurationError(
        "LoopbackConsent cannot reach the user here: no browser can open the authorization "
        f"page and nobody would see its URL ({environment.reason}). On a headless machine "
        "use DeviceCodeConsent() (the user approves on their phone or laptop); for an agent "
        "that serves users through a web app, a server-side web consent handler (WebConsent) "
        "that sends the link and receives the redirect in your app; or "
        "LoopbackConsent(show_url=...) to deliver the link yourself."
    )


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

    ``browser`` replaces the system browser (for example to drive the dev authorization
    server headlessly in tests); it may return ``False`` to say it did not open the URL.
    ``show_url`` shows the URL whenever no browser opened it (default: printed on stderr
    with what to do). ``timeout`` bounds the whole consent (seconds). Once the one
    callback has been handled the consent is over: a ``browser`` call still running then
    is cancelled.

    With the system browser and the default ``show_url``, the consent fails at once with
    :class:`~agent_identity.errors.ConfigurationError` when no browser can be started and
    the session is not interactive (see :func:`detect_browser_environment`; ``environment``
    replaces that detection, for tests): nobody could complete it.
    """

    def __init__(
        self,
        *,
        browser: BrowserOpener | None = None,
        show_url: UrlPresenter | None = None,
        host: str = "127.0.0.1",
        path: str = "/callback",
        timeout: float = 300.0,
        environment: Callable[[], BrowserEnvironment] | None = None,
    ) -> None:
        _check_listener_args(host, path)  # refuse ``localhost`` now, not at the first consent
        self._browser = browser
        self._show_url = show_url
        self._host = host
        self._path = path
        self._timeout = timeout
        self._environment = environment or detect_browser_environment

    async def _open(self, url: str, environment: BrowserEnvironment | None, port: int) -> None:
        """Open ``url`` in the browser; show it when that did not happen."""
        if self._browser is not None:
            result = self._browser(url)
            if inspect.isawaitable(result):
                result = await result
            opened = result is not False
        elif environment is not None and environment.browser:
            opened = await anyio.to_thread.run_sync(webbrowser.open, url)
        else:
            opened = False
        if opened:
            return
        logger.info("no browser opened the authorization URL: showing it")
        if self._show_url is None:
            _print_url(url, port)
            return
        shown = self._show_url(url)
        if inspect.isawaitable(shown):
            await shown

    async def obtain_consent(self, flow: ConsentFlow) -> None:
        failure: list[BaseException] = []

        async def on_callback(url: str) -> tuple[bool, str]:
            try:
                await flow.complete(url)
            except AgentIdentityError as exc:
                failure.append(exc)
                return False, f"Authorization failed: {type(exc).__name__}. Return to the agent."
            return True, "Authorization complete. You can close this window."

        environment: BrowserEnvironment | None = None
        if self._browser is None:
            environment = await anyio.to_thread.run_sync(self._environment)
            if not environment.browser and not environment.interactive and self._show_url is None:
                raise _headless_error(environment)

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
                    await self._open(url, environment, listener.port)
            if scope.cancelled_caught:
                raise ConsentTimeout(f"no authorization response arrived within {self._timeout} s")
        if failure:
            raise failure[0]
