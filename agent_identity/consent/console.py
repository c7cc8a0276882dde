"""Console consent: print the authorization URL, read back the pasted redirect URL.

For terminals where no loopback listener can be reached from the browser (SSH sessions,
a browser on another machine). The user opens the link, approves, and pastes the URL the
browser was sent to (the page itself may fail to load: only its address is needed).
The pasted value is validated exactly like any other callback (state, iss, PKCE).
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from typing import TextIO

import anyio

from agent_identity.consent.base import ConsentFlow
from agent_identity.errors import ConsentTimeout
from agent_identity.oauth.urls import check_browser_url

__all__ = ["ConsoleConsent"]


class ConsoleConsent:
    """Prints the link to ``output`` (stderr by default) and awaits the pasted redirect URL
    from ``read_line`` (``input()`` in a worker thread by default)."""

    def __init__(
        self,
        *,
        redirect_uri: str = "http://127.0.0.1/callback",
        output: TextIO | None = None,
        read_line: Callable[[str], Awaitable[str]] | None = None,
        timeout: float = 600.0,
    ) -> None:
        # https, or http to a loopback IP literal (RFC 8252 §7.3)
        check_browser_url(redirect_uri, allow_insecure_loopback=True)
        self._redirect_uri = redirect_uri
        self._output = output
        self._read_line = read_line or _read_stdin
        self._timeout = timeout

    async def obtain_consent(self, flow: ConsentFlow) -> None:
        url = await flow.authorization_url(self._redirect_uri)
        check_browser_url(url, allow_insecure_loopback=flow.allow_insecure_loopback)
        out = self._output or sys.stderr
        print(
            f"\nTo let the agent act for {flow.user!r}, open this link in a browser and approve:\n"
            f"\n    {url}\n\nThen paste the full address your browser was redirected to.",
            file=out,
            flush=True,
        )
        with anyio.move_on_after(self._timeout) as scope:
            pasted = await self._read_line("Redirect URL: ")
        if scope.cancelled_caught:
            raise ConsentTimeout(f"no redirect URL was pasted within {self._timeout} s")
        await flow.complete(pasted.strip())


async def _read_stdin(prompt: str) -> str:
    return await anyio.to_thread.run_sync(input, prompt, abandon_on_cancel=True)
