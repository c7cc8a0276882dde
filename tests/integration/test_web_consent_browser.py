"""WebConsent end to end in a real headless browser, across two workers and a restart.

Chromium from Debian's packages (``/usr/bin/chromium``), driven by Playwright (its Python
package only: no browser is ever downloaded), goes through the dev authorization
server's real sign-in and consent pages. Two workers serve a Starlette app each with
uvicorn, each with its own IdentityClient and its own vault object over one SQLite file:

1. the user opens worker A's page; the agent's tool call there needs consent, so
   WebConsent starts it (sealed in the vault, nothing kept in A's memory) and the page
   shows the link;
2. worker B, which the redirect URI points at (as a load balancer would route it), is
   restarted: stopped, and started again with a new client and vault object;
3. the browser follows the link, signs in as alice and allows; the redirect reaches the
   restarted B, whose callback completes the consent and hands the resume data (thread
   and tool call id) to the application's ``on_complete``;
4. worker A resumes the waiting tool call with that data: it runs with alice's token.

Skipped with a reason where Chromium or Playwright is missing on a developer machine;
under CI (``CI`` set) it fails instead: .ci/run installs Chromium.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from html import escape
from pathlib import Path
from typing import Any

import anyio
import pytest
import uvicorn
from _helpers import CALENDAR, make_client
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

from agent_identity import ConsentRequired, IdentityClient, WebConsent, WebConsentResult
from agent_identity.consent.web import PENDING_KIND
from agent_identity.devidp import DevIdP
from agent_identity.tools import ToolCall, ToolGuard, ToolRequirement, current_token
from agent_identity.vault import TokenVault

pytestmark = [pytest.mark.anyio, pytest.mark.idp]

CHROMIUM = "/usr/bin/chromium"
#: The flags of the machine's documented headless setup (no network beyond loopback).
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _playwright_or_skip() -> Any:
    problem = None
    if not os.path.exists(CHROMIUM):
        problem = f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)"
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        problem = problem or "the playwright Python package is not installed"
        async_playwright = None
    if problem is not None:
        if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
            pytest.fail(f"the browser test must run under CI: {problem}")
        pytest.skip(problem)
    return async_playwright


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@asynccontextmanager
async def serve(app: Starlette, port: int) -> AsyncIterator[str]:
    """Serve ``app`` with uvicorn on 127.0.0.1:``port`` in this event loop."""
    config = uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="warning")
    server = uvicorn.Server(config)
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve)
        with anyio.fail_after(10):
            while not server.started:  # noqa: ASYNC110
                await anyio.sleep(0.01)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True


class Worker:
    """One worker process's share of the app: an identity client, its own vault object
    over the shared file, a guard for tool calls, and the routes."""

    def __init__(self, idp: DevIdP, vault_path: Path, consent: WebConsent) -> None:
        self.vault = TokenVault.sqlite(vault_path)
        self.identity: IdentityClient = make_client(idp, consent=consent, vault=self.vault)
        self.guard = ToolGuard(self.identity)
        self.consent = consent
        self.completed: list[WebConsentResult] = []

    async def list_events(self, thread_id: str, tool_call_id: str) -> str:
        """The agent's protected tool call (it needs alice's calendar token)."""
        call = ToolCall(
            tool="list_events",
            arguments={"day": "monday"},
            user="alice",
            thread=thread_id,
            call_id=tool_call_id,
        )

        async def body() -> str:
            return f"events with a token for {current_token().resource}"

        return await self.guard.run(
            call, ToolRequirement(resource=CALENDAR, scopes=("calendar.read",)), body
        )

    async def page(self, request: Request) -> HTMLResponse:
        """The chat page: runs the tool call; when it needs consent, WebConsent started
        one (sealed with the call's resume data) and the page shows the link."""
        thread, call_id = request.query_params["thread"], request.query_params["call"]
        try:
            result = await self.list_events(thread, call_id)
        except ConsentRequired as needed:
            url = needed.authorization_url
            assert url is not None
            return HTMLResponse(
                f'<p>The agent needs your calendar.</p><a id="connect" href="{escape(url)}">'
                "Connect your account</a>"
            )
        return HTMLResponse(f"<p id=result>{escape(result)}</p>")

    def app(self) -> Starlette:
        app = Starlette(routes=[Route("/chat", self.page)])
        app.add_route(
            "/callback",
            self.consent.callback(self.identity, on_complete=self.completed.append),
            methods=["GET"],
        )
        return app

    async def __aenter__(self) -> Worker:
        await self.identity.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self.identity.aclose()
        finally:
            await self.vault.aclose()


async def test_web_consent_in_chromium_across_two_workers_and_a_restart(
    dev_idp: DevIdP, tmp_path: Path
) -> None:
    async_playwright = _playwright_or_skip()
    started = time.perf_counter()
    vault_path = tmp_path / "shared-vault.db"
    port_a, port_b = _free_port(), _free_port()
    # One public callback URL for the app, routed to worker B (as a load balancer might).
    redirect_uri = f"http://127.0.0.1:{port_b}/callback"

    async with (
        Worker(dev_idp, vault_path, WebConsent(redirect_uri)) as a,
        serve(a.app(), port_a) as base_a,
        async_playwright() as playwright,
    ):
        context = await playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),  # a fresh, empty user data dir
            executable_path=CHROMIUM,
            headless=True,
            chromium_sandbox=False,
            args=CHROMIUM_FLAGS,
        )
        try:
            page = await context.new_page()
            async with (
                Worker(dev_idp, vault_path, WebConsent(redirect_uri)) as b_first,
                serve(b_first.app(), port_b),
            ):
                # 1. The user opens the chat on worker A: the tool call needs consent.
                await page.goto(f"{base_a}/chat?thread=thread-1&call=call-42")
                link = page.locator("#connect")
                await link.wait_for()
                authorization_url = await link.get_attribute("href")
                assert authorization_url is not None
                assert authorization_url.startswith(dev_idp.issuer)
                assert a.identity.server is not None
                assert len(a.identity.server.pending) == 0
                assert len(await a.vault.blob_names(PENDING_KIND)) == 1  # sealed, shared

            # 2. Worker B restarts: a new client and vault object, on the same port.
            async with (
                Worker(dev_idp, vault_path, WebConsent(redirect_uri)) as b,
                serve(b.app(), port_b),
            ):
                # 3. The real sign-in and consent pages of the dev authorization server.
                await dev_idp.clear_requests()
                await link.click()
                await page.locator("#login input[name=login]").fill("alice")
                await page.locator("#login button[type=submit]").click()
                await page.locator("#confirm button[type=submit]").click()
                await page.wait_for_url(f"{redirect_uri}?*")
                outcome = await page.locator("#outcome").inner_text()
                assert "Authorization complete" in outcome, outcome

                assert b_first.completed == []
                (result,) = b.completed  # completed by the restarted worker B
                assert result.user == "alice"
                assert result.resource == CALENDAR
                assert "calendar.read" in result.scopes
                assert await b.vault.blob_names(PENDING_KIND) == []  # consumed
                codes = await dev_idp.token_requests("authorization_code")
                assert [r["status"] for r in codes] == [200]  # one redemption

                # 4. Worker A resumes the waiting tool call with the resume data.
                assert result.resume == {
                    "tool": "list_events",
                    "thread_id": "thread-1",
                    "tool_call_id": "call-42",
                }
                resumed = await a.list_events(
                    result.resume["thread_id"], result.resume["tool_call_id"]
                )
                assert resumed == f"events with a token for {CALENDAR}"

                # The page now shows the result; the callback cannot be replayed.
                await page.goto(f"{base_a}/chat?thread=thread-1&call=call-42")
                assert await page.locator("#result").inner_text() == resumed
                replay = await page.goto(
                    f"{redirect_uri}?state=replayed&code=x&iss={dev_idp.issuer}"
                )
                assert replay is not None
                assert replay.status == 400
        finally:
            await context.close()
    print(f"\nweb consent browser test: {time.perf_counter() - started:.1f} s")


def test_the_browser_is_not_downloaded() -> None:
    """No Playwright browser download: the test uses Debian's Chromium only."""
    cache = Path.home() / ".cache" / "ms-playwright"
    if cache.exists():
        assert not any(p.name.startswith("chromium") for p in cache.iterdir()), cache
    assert shutil.which("chromium") in (None, CHROMIUM)
