"""The CIBA ping receiver mounted as docs/approval.md shows, in a real Starlette app.

``app.mount("/ciba/notify", receiver)`` looks right but Starlette answers the
authorization server's ``POST /ciba/notify`` with ``307`` to ``/ciba/notify/``; the
server does not follow it, the ping is lost, and the SDK silently falls back to polling.
The documented ways (a ``Route``, or ``app.add_route``) are served here by uvicorn in the
test's own event loop (the receiver must run in the loop of the waiting approval), and the
bundled dev authorization server delivers a real ping to them: the approval returns after
exactly one token request, with no polling.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import httpx2
import pytest
import uvicorn
from _helpers import PAYMENTS, make_client
from starlette.applications import Starlette
from starlette.routing import Mount, Route

from agent_identity import Action
from agent_identity.approval import PingReceiver
from agent_identity.devidp import CIBA_GRANT_TYPE, DevIdP

pytestmark = pytest.mark.anyio

DOC = Path(__file__).resolve().parents[2] / "docs" / "approval.md"
PAY = Action("pay_invoice", {"invoice": "INV-7", "amount": "120.00 EUR"})


def route_app(receiver: PingReceiver) -> Starlette:
    """The first documented way: a Route in the app's routes."""
    return Starlette(routes=[Route("/ciba/notify", receiver, methods=["POST"])])


def add_route_app(receiver: PingReceiver) -> Starlette:
    """The second documented way: ``add_route`` on an existing (Starlette or FastAPI) app."""
    app = Starlette()
    app.add_route("/ciba/notify", receiver, methods=["POST"])
    return app


def mount_app(receiver: PingReceiver) -> Starlette:
    """What the docs used to show (and must not)."""
    return Starlette(routes=[Mount("/ciba/notify", app=receiver)])


@asynccontextmanager
async def serve(app: Starlette) -> AsyncIterator[str]:
    """Serve ``app`` with uvicorn on 127.0.0.1 in this event loop; yields its base URL."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="off", log_level="warning")
    server = uvicorn.Server(config)
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve)
        with anyio.fail_after(10):
            while not server.started:  # noqa: ASYNC110
                await anyio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True


def test_the_docs_show_the_documented_ways_and_not_mount() -> None:
    text = DOC.read_text()
    assert 'Route("/ciba/notify", receiver, methods=["POST"])' in text
    assert 'app.add_route("/ciba/notify", receiver, methods=["POST"])' in text
    code = "".join(re.findall(r"^```python\n(.*?)^```", text, re.MULTILINE | re.DOTALL))
    assert "add_route" in code
    assert "app.mount(" not in code


async def test_a_mount_redirects_the_ping_away() -> None:
    """Why the docs do not use ``app.mount``: Starlette redirects the exact path."""
    receiver = PingReceiver()
    async with serve(mount_app(receiver)) as base, httpx2.AsyncClient(trust_env=False) as http:
        response = await http.post(f"{base}/ciba/notify", content=b"{}")
    assert response.status_code == 307
    assert receiver.rejected == receiver.accepted == 0  # it never reached the receiver


@pytest.mark.idp
@pytest.mark.parametrize("make_app", [route_app, add_route_app])
async def test_ping_delivered_through_the_documented_starlette_route(
    make_app: Callable[[PingReceiver], Starlette],
    dev_idp_factory: Callable[..., DevIdP],
) -> None:
    receiver = PingReceiver()
    async with serve(make_app(receiver)) as base:
        endpoint = f"{base}/ciba/notify"
        idp = await anyio.to_thread.run_sync(
            lambda: dev_idp_factory(ping_notification_endpoint=endpoint, ciba_interval=30)
        )
        async with make_client(idp, "agent-ping") as identity:
            result: dict[str, Any] = {}

            async def approve() -> None:
                result["approval"] = await identity.user("alice").approve(
                    action=PAY, scopes=["payments.write"], resource=PAYMENTS, ping=receiver
                )

            with anyio.fail_after(20):  # polling every 30 s would not make it
                async with anyio.create_task_group() as tg:
                    tg.start_soon(approve)
                    while not (pending := await idp.ciba_pending()):  # noqa: ASYNC110
                        await anyio.sleep(0.02)
                    await idp.ciba_approve(pending[0]["auth_req_id"])
    assert result["approval"].use(PAY).resource == PAYMENTS
    assert receiver.accepted == 1
    polls = await idp.token_requests(CIBA_GRANT_TYPE)
    assert [p["status"] for p in polls] == [200]  # fetched after the ping, never polled


@pytest.mark.parametrize("path", ["/ciba/notify", "/ciba/notify/", "/", "/other", "/a/../b"])
@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "HEAD"])
async def test_the_receiver_itself_never_redirects(path: str, method: str) -> None:
    """Wherever it is mounted and whatever arrives, the receiver answers without a 3xx."""
    receiver = PingReceiver()
    sent: list[dict[str, Any]] = []
    body = json.dumps({"auth_req_id": "x"}).encode()
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"authorization", b"Bearer " + b"A" * 43)],
    }
    await receiver(scope, receive, send)
    (start,) = [m for m in sent if m["type"] == "http.response.start"]
    assert not 300 <= start["status"] < 400
    assert all(name != b"location" for name, _ in start.get("headers", []))
