"""Every code block of the documentation runs here, or says in its first line why not.

Documents: ``README.md``, ``docs/*.md`` and ``integrations/langchain/README.md``.

Marking: a block that is not run starts with ``# illustrative: <reason>`` (``--`` instead
of ``#`` in SQL). Blocks in ``text`` are not code. Any other block must run: a block
without a language, or in a language the runner does not know, fails
``test_every_block_runs_or_says_why``.

How the blocks run (``test_doc_blocks_run[<document>]``, one test per document):

- ``python`` blocks of one document run in order in one namespace, like notebook cells,
  after the document's prelude (``PRELUDES`` below, one documented function per
  document): it provides the placeholders the prose uses (``issuer``, ``secret``,
  ``alice``, ``identity``...). A block with top-level ``await`` or ``async with`` runs in
  the test's event loop; any other block runs as a script in a worker thread (so
  ``anyio.run(main)`` works there).
- They talk to a dedicated local dev authorization server that has, besides its static
  clients, the client ``my-agent`` (secret ``secret``) that the docs use. The user plays
  along: ``LoopbackConsent()``'s "system browser" is alice's headless ``DevBrowser``;
  when ``DeviceCodeConsent()`` prints its code, alice approves it; every CIBA request is
  approved on alice's "phone" (a background task).
- The dev server speaks http on 127.0.0.1, so ``IdentityClient``'s development opt-ins
  ``allow_insecure_loopback`` and ``allow_private_addresses`` default to True while the
  blocks run (a reader's https server needs neither).
- ``REPLACE`` (per prelude) swaps example values that cannot work here for local ones
  (e.g. ``https://idp.example.com`` for the dev server's issuer); each swap is listed in
  the prelude's docstring.
- ``bash`` blocks run with ``bash -euo pipefail`` in the checkout, the test
  environment's ``bin`` first on ``PATH``.

A failure names the document and the line, and the traceback points into the document.
"""

from __future__ import annotations

import ast
import functools
import inspect
import linecache
import os
import re
import socket
import subprocess
import sys
import textwrap
import threading
import traceback
import webbrowser
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import httpx2
import pytest

from agent_identity import IdentityClient, LoopbackConsent
from agent_identity.devidp import DevBrowser, DevIdP

pytestmark = [pytest.mark.anyio, pytest.mark.idp]

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = sorted(
    [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), ROOT / "integrations/langchain/README.md"]
)
RUNNABLE = {"python", "bash"}
NOT_CODE = {"text"}
_FENCE = re.compile(r"^(?P<indent>\s*)```(?P<lang>[^`\s]*)\s*$")
_MARK = re.compile(r"^(?:#|--)\s*illustrative:\s*(?P<reason>.*)$")

CALENDAR = "https://calendar.example/api"
MY_AGENT_SECRET = "dev-secret-my-agent"  # DEV ONLY, the docs' "secret"


# -- extraction ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    doc: str  # path relative to the checkout
    line: int  # line of the block's first code line (1-based)
    lang: str
    code: str

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}"

    @property
    def illustrative(self) -> str | None:
        """The reason given in the block's first line, or None if it must run."""
        first = self.code.split("\n", 1)[0].strip()
        match = _MARK.match(first)
        return match.group("reason").strip() if match else None


def blocks_of(path: Path) -> list[Block]:
    doc = str(path.relative_to(ROOT))
    lines = path.read_text().splitlines()
    found: list[Block] = []
    number = 0
    while number < len(lines):
        opening = _FENCE.match(lines[number])
        number += 1
        if opening is None:
            continue
        indent = opening.group("indent")
        body: list[str] = []
        while number < len(lines) and lines[number].strip() != "```":
            body.append(lines[number])
            number += 1
        if number == len(lines):
            pytest.fail(f"{doc}:{number}: unclosed code block")
        number += 1  # the closing fence
        code = textwrap.dedent("\n".join(body)) if indent else "\n".join(body)
        start = number - len(body)
        found.append(Block(doc, start, opening.group("lang"), code + "\n"))
    return found


ALL_BLOCKS = [block for path in DOCUMENTS for block in blocks_of(path)]


def test_every_block_runs_or_says_why() -> None:
    problems = []
    for block in ALL_BLOCKS:
        reason = block.illustrative
        if block.lang in NOT_CODE:
            continue
        if not block.lang:
            problems.append(f"{block.where}: a code block without a language (```python...)")
        elif reason is not None and len(reason) < 10:
            problems.append(f"{block.where}: say why the block is illustrative")
        elif block.lang not in RUNNABLE and reason is None:
            problems.append(f"{block.where}: {block.lang} blocks cannot run: mark it illustrative")
    assert not problems, "\n".join(problems)
    assert len([b for b in ALL_BLOCKS if b.lang in RUNNABLE and not b.illustrative]) >= 20


# -- the user and the environment ------------------------------------------------------------


@dataclass
class Docs:
    """What a prelude gets: the dev server, a scratch directory, a cleanup stack."""

    idp: DevIdP
    tmp: Path
    stack: AsyncExitStack
    monkeypatch: pytest.MonkeyPatch
    replace: dict[str, str] = field(default_factory=dict)

    async def client(self, **kwargs: Any) -> IdentityClient:
        """An entered IdentityClient of ``my-agent`` (closed after the document)."""
        kwargs.setdefault("client_secret", MY_AGENT_SECRET)
        kwargs.setdefault("consent", LoopbackConsent())
        client = IdentityClient(self.idp.issuer, client_id="my-agent", **kwargs)
        return await self.stack.enter_async_context(client)


def _alices_browser(url: str, *args: Any, **kwargs: Any) -> bool:
    """``webbrowser.open`` on alice's machine: her browser signs in and approves."""
    threading.Thread(target=anyio.run, args=(DevBrowser("alice").visit, url), daemon=True).start()
    return True


def _alice_reads_the_device_code(authorization: Any) -> None:
    """``DeviceCodeConsent``'s prompt: shown as usual; alice enters the code and approves."""
    print(f"visit {authorization.verification_uri} and enter {authorization.user_code}")
    browser = DevBrowser("alice")
    threading.Thread(
        target=anyio.run,
        args=(browser.complete_device, authorization.verification_uri, authorization.user_code),
        daemon=True,
    ).start()


async def _alices_phone(idp: DevIdP) -> None:
    """Approves every CIBA request as soon as it is pending."""
    while True:
        for pending in await idp.ciba_pending():
            await idp.ciba_approve(pending["auth_req_id"])
        await anyio.sleep(0.05)


def _the_user_plays_along(monkeypatch: pytest.MonkeyPatch) -> None:
    from agent_identity.consent import device

    monkeypatch.setenv("DISPLAY", ":0")  # a desktop, as the docs' readers have
    monkeypatch.setattr(webbrowser, "get", lambda *args, **kwargs: object())
    monkeypatch.setattr(webbrowser, "open", _alices_browser)
    monkeypatch.setattr(device, "_print_prompt", _alice_reads_the_device_code)
    defaults = IdentityClient.__init__.__kwdefaults__
    assert defaults is not None
    monkeypatch.setitem(defaults, "allow_insecure_loopback", True)  # http://127.0.0.1
    monkeypatch.setitem(defaults, "allow_private_addresses", True)


def _my_agent_client() -> dict[str, Any]:
    """The docs' client: the dev server's confidential client under the name my-agent."""
    (template,) = [c for c in DevIdP().clients if c["client_id"] == "agent-confidential"]
    return {
        **template,
        "client_id": "my-agent",
        "client_name": "my-agent (dev only)",
        "client_secret": MY_AGENT_SECRET,
    }


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# -- preludes: one per document, documented ----------------------------------------------------

Prelude = Callable[[Docs], Awaitable[dict[str, Any]]]


async def _base(docs: Docs) -> dict[str, Any]:
    """Every document: ``issuer`` (the dev server), ``secret`` (my-agent's secret),
    ``CALENDAR``."""
    return {"issuer": docs.idp.issuer, "secret": MY_AGENT_SECRET, "CALENDAR": CALENDAR}


async def _readme(docs: Docs) -> dict[str, Any]:
    """README.md: after the (illustrative) tour, ``identity`` (an entered client of
    my-agent) and ``list_events`` (a LangChain tool)."""
    from langchain_core.tools import tool

    @tool
    def list_events(day: str) -> str:
        """List the user's calendar events on a day."""
        return day

    return {"identity": await docs.client(), "list_events": list_events}


async def _resources(docs: Docs) -> Callable[..., httpx2.AsyncClient]:
    """``httpx2.AsyncClient(auth=...)`` of the docs becomes an http client whose transport
    plays the calendar and payments APIs of ``tests/integration/_resource.py`` (real JWT
    checks, DPoP proofs verified, payments only as the token's authorization details
    say)."""
    from _resource import CalendarAPI, PaymentsAPI

    async with httpx2.AsyncClient(trust_env=False) as http:
        jwks = (await http.get(f"{docs.idp.issuer}/jwks")).json()
    apps = {
        "calendar.example": CalendarAPI(issuer=docs.idp.issuer, jwks=jwks),
        "payments.example": PaymentsAPI(issuer=docs.idp.issuer, jwks=jwks),
    }

    async def route(scope: Any, receive: Any, send: Any) -> None:
        host = dict(scope["headers"])[b"host"].decode()
        await apps[host](scope, receive, send)

    def resource_client(**kwargs: Any) -> httpx2.AsyncClient:
        return httpx2.AsyncClient(transport=httpx2.ASGITransport(app=route), **kwargs)

    docs.replace["httpx2.AsyncClient(auth="] = "resource_client(auth="
    return resource_client


async def _approval(docs: Docs) -> dict[str, Any]:
    """docs/approval.md: ``alice`` (user alice of tenant acme at my-agent) and
    ``pay_invoice(token, **arguments)``. The ping receiver's port 8765 becomes a free port;
    ``httpx2.AsyncClient(auth=...)`` talks to the test payments API (see ``_resources``).
    """

    async def pay_invoice(token: Any, **arguments: Any) -> None:
        assert token.resource == "https://payments.example/api"

    docs.replace["8765"] = str(_free_port())
    identity = await docs.client()
    return {
        "alice": identity.user("alice", tenant="acme"),
        "pay_invoice": pay_invoice,
        "resource_client": await _resources(docs),
    }


async def _dpop(docs: Docs) -> dict[str, Any]:
    """docs/dpop.md: ``httpx2.AsyncClient(auth=...)`` talks to the test calendar API,
    which verifies DPoP proofs (see ``_resources``)."""
    return {"resource_client": await _resources(docs)}


async def _guide(docs: Docs) -> dict[str, Any]:
    """docs/guide.md: ``alice`` (user alice of tenant acme at my-agent); the issuer
    ``https://idp.example.com`` is the dev server's."""
    docs.replace["https://idp.example.com"] = docs.idp.issuer
    identity = await docs.client()
    return {"alice": identity.user("alice", tenant="acme")}


async def _dev_idp(docs: Docs) -> dict[str, Any]:
    """docs/dev-idp.md: ``uri`` and ``user_code`` of a device authorization just started
    for the public client agent-public."""
    async with httpx2.AsyncClient(trust_env=False) as http:
        metadata = (await http.get(f"{docs.idp.issuer}/.well-known/openid-configuration")).json()
        started = await http.post(
            metadata["device_authorization_endpoint"],
            data={"client_id": "agent-public", "scope": "openid"},
        )
    body = started.json()
    return {"uri": body["verification_uri"], "user_code": body["user_code"]}


async def _langchain(docs: Docs) -> dict[str, Any]:
    """docs/langchain.md: ``httpx2.AsyncClient(auth=...)`` talks to the test calendar API
    (see ``_resources``), ``create_event`` (a tool), ``list_events_sync`` (a synchronous tool),
    ``audit`` (an entered AuditTrail), ``pay_invoice`` (a tool), and the chat models
    ``model`` (calls ``list_events`` for monday, then answers) and ``payments_model``
    (calls ``pay_invoice`` for INV-7, 120.0, then answers): scripted fakes."""
    from langchain_agent_identity import current_token
    from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
    from langchain_core.messages import AIMessage
    from langchain_core.tools import tool

    class Scripted(FakeMessagesListChatModel):
        def bind_tools(self, tools: Any, **kwargs: Any) -> Scripted:
            return self

    def scripted(name: str, args: dict[str, Any]) -> Scripted:
        call = {"name": name, "args": args, "id": f"call-{name}"}
        return Scripted(responses=[AIMessage(content="", tool_calls=[call]), AIMessage("done")])

    @tool
    async def pay_invoice(invoice: str, amount: float) -> str:
        """Pay an invoice."""
        return f"paid {invoice} ({current_token().resource})"

    from agent_identity.audit import AuditTrail, MemorySink

    @tool
    async def create_event(day: str, title: str) -> str:
        """Create an event in the user's calendar."""
        return f"{title} on {day} ({current_token().resource})"

    @tool
    def list_events_sync(day: str) -> str:
        """List the user's calendar events on a day."""
        return f"{day}: {current_token().scopes}"

    audit = await docs.stack.enter_async_context(AuditTrail(MemorySink()))
    return {
        "resource_client": await _resources(docs),
        "create_event": create_event,
        "list_events_sync": list_events_sync,
        "audit": audit,
        "pay_invoice": pay_invoice,
        "model": scripted("list_events", {"day": "monday"}),
        "payments_model": scripted("pay_invoice", {"invoice": "INV-7", "amount": 120.0}),
    }


async def _mcp(docs: Docs) -> dict[str, Any]:
    """docs/mcp.md: ``identity`` (an entered client of my-agent), ``alice`` and ``url`` (an
    MCP server's URL; the blocks that run only build auth objects)."""
    identity = await docs.client()
    return {
        "identity": identity,
        "alice": identity.user("alice", tenant="acme"),
        "url": "https://tools.example.com/mcp",
    }


async def _vault(docs: Docs) -> dict[str, Any]:
    """docs/vault.md: vault keys in ``AGENT_IDENTITY_VAULT_KEYS``; ``/var/lib/my-agent/``
    is a scratch directory."""
    from agent_identity.vault import generate_key

    docs.monkeypatch.setenv("AGENT_IDENTITY_VAULT_KEYS", f"k1:{generate_key()}")
    docs.replace["/var/lib/my-agent/"] = f"{docs.tmp}/"
    return {}


async def _vault_postgres(docs: Docs) -> dict[str, Any]:
    """docs/vault-postgres.md: vault keys in ``AGENT_IDENTITY_VAULT_KEYS``; the database
    ``postgresql://agent@db.internal/agents`` is the test PostgreSQL server, in a schema of
    its own (dropped afterwards)."""
    import _postgres

    from agent_identity.vault import generate_key

    dsn = _postgres.postgres_dsn()  # skips, or fails under CI, without a server
    schema = _postgres.new_schema()
    docs.stack.callback(_postgres.drop_schema, schema)
    docs.monkeypatch.setenv("AGENT_IDENTITY_VAULT_KEYS", f"k1:{generate_key()}")
    docs.replace['from_url("postgresql://agent@db.internal/agents"'] = (
        f"from_url({_postgres.url(schema)!r}"
    )
    docs.replace['"postgresql://agent@db.internal/agents",'] = f"{dsn!r},"
    docs.replace['schema="agent_identity",'] = f"schema={schema!r},"
    return {}


PRELUDES: dict[str, Prelude] = {
    "README.md": _readme,
    "docs/approval.md": _approval,
    "docs/guide.md": _guide,
    "docs/dev-idp.md": _dev_idp,
    "docs/dpop.md": _dpop,
    "docs/langchain.md": _langchain,
    "docs/mcp.md": _mcp,
    "docs/vault.md": _vault,
    "docs/vault-postgres.md": _vault_postgres,
}


# -- running -----------------------------------------------------------------------------------


def _compile(block: Block, source: str) -> Any:
    flags = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    tree = compile(source, block.doc, "exec", flags=flags | ast.PyCF_ONLY_AST, dont_inherit=True)
    ast.increment_lineno(tree, block.line - 1)
    return compile(tree, block.doc, "exec", flags=flags, dont_inherit=True)


async def run_python(block: Block, namespace: dict[str, Any], replace: dict[str, str]) -> None:
    source = block.code
    for old, new in replace.items():
        source = source.replace(old, new)
    code = _compile(block, source)
    if code.co_flags & inspect.CO_COROUTINE:
        await eval(code, namespace)  # the documentation's own code
    else:
        await anyio.to_thread.run_sync(functools.partial(exec, code, namespace))


def run_bash(block: Block) -> None:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block.code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    if result.returncode != 0:
        raise RuntimeError(f"exit {result.returncode}:\n{result.stderr[-2000:]}")


async def start_world(
    dev_idp_factory: Callable[..., DevIdP], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> DevIdP:
    idp = await anyio.to_thread.run_sync(
        lambda: dev_idp_factory(clients=[_my_agent_client()], ciba_interval=1)
    )
    _the_user_plays_along(monkeypatch)
    monkeypatch.chdir(tmp_path)  # files the blocks write (audit.jsonl...) land here
    return idp


async def run_blocks(docs: Docs, doc: str, blocks: list[Block]) -> str | None:
    """Run the document's blocks in order; the first failure's description, or None."""
    namespace: dict[str, Any] = {"__name__": "__docs__"}
    namespace.update(await _base(docs))
    if doc in PRELUDES:
        namespace.update(await PRELUDES[doc](docs))
    for block in blocks:
        try:
            with anyio.fail_after(60):
                if block.lang == "python":
                    await run_python(block, namespace, docs.replace)
                else:
                    await anyio.to_thread.run_sync(run_bash, block)
        except Exception as exc:
            detail = "".join(traceback.format_exception(exc))
            return f"{block.where}: the {block.lang} block failed: {exc!r}\n{detail}"
    return None


def _documents_with_code() -> list[Any]:
    docs = []
    for path in DOCUMENTS:
        doc = str(path.relative_to(ROOT))
        runnable = [b for b in blocks_of(path) if b.lang in RUNNABLE and not b.illustrative]
        if runnable:
            docs.append(pytest.param(doc, id=doc))
    return docs


@pytest.mark.parametrize("doc", _documents_with_code())
async def test_doc_blocks_run(
    doc: str,
    dev_idp_factory: Callable[..., DevIdP],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    text = (ROOT / doc).read_text()
    linecache.cache[doc] = (len(text), None, text.splitlines(keepends=True), doc)
    blocks = [b for b in blocks_of(ROOT / doc) if b.lang in RUNNABLE and not b.illustrative]
    idp = await start_world(dev_idp_factory, tmp_path, monkeypatch)
    async with anyio.create_task_group() as tg:
        tg.start_soon(_alices_phone, idp)
        async with AsyncExitStack() as stack:  # inside: a prelude's task groups close first
            failure = await run_blocks(Docs(idp, tmp_path, stack, monkeypatch), doc, blocks)
        tg.cancel_scope.cancel()
    if failure is not None:
        pytest.fail(failure, pytrace=False)
