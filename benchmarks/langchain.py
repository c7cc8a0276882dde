"""LangChain integration benchmarks: medians and ratios against baselines measured in the
same run; no timing is asserted (only that the tools ran and the chains verify).

    .venv/bin/python benchmarks/langchain.py [--calls 10000] [--records 50000]

(needs ``pip install -e integrations/langchain``; starts the bundled local authorization
server for the one consent that warms the vault.)

1. ``overhead``: ``await tool.ainvoke(tool_call, config)`` of a LangChain ``@tool``, bare
   (the baseline) and wrapped by ``protect()`` with a warm vault (the token is already
   cached in a memory vault: no network) and an ``AuditTrail(JsonlSink(...))`` (fsync on,
   the default; and fsync off); and the same tool call through
   ``IdentityMiddleware.awrap_tool_call`` (the ``create_agent`` hook) around a handler
   that runs the bare tool, against that handler alone. Median per call over ``--calls``
   calls each, interleaved call by call (the order rotates) so that machine drift hits all
   variants alike. Goal: <= 100 us added per call. And the SDK's share alone:
   ``ToolGuard.run`` (warm token, tool context, one audit record) around the tool's
   coroutine, against the coroutine alone: what remains once LangChain's own per-call work
   is taken out (``protect()`` replaces the wrapped tool's ``arun`` with its own, so its
   figure is the difference a user sees, not the SDK's cost).
2. ``audit``: records per second written by ``AuditTrail(JsonlSink(path))`` for
   ``--records`` records (tool-call records built beforehand; timed from the first
   ``emit`` until the trail is closed, i.e. every record is on disk), with fsync on and
   off, next to a baseline of plain ``json.dumps`` lines written to a file (no chain, no
   trail). Goal: >= 20,000 records/s.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

# Run as a script, this file's folder comes first on sys.path, where this file would
# shadow the ``langchain`` package: take the folder out before importing it.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import anyio  # noqa: E402
from langchain.agents.middleware import ToolCallRequest  # noqa: E402
from langchain_agent_identity import IdentityMiddleware, protect  # noqa: E402
from langchain_core.tools import tool  # noqa: E402

from agent_identity import IdentityClient, LoopbackConsent  # noqa: E402
from agent_identity.audit import AuditEvent, AuditTrail, JsonlSink, verify_chain  # noqa: E402
from agent_identity.devidp import DEV_CLIENTS, DevBrowser, DevIdP  # noqa: E402
from agent_identity.tools import ToolCall, ToolGuard, ToolRequirement  # noqa: E402
from agent_identity.vault import TokenVault  # noqa: E402

CLIENT_ID = "agent-confidential"
CALENDAR = "https://calendar.example/api"
CONFIG: Any = {"configurable": {"user_id": "alice", "tenant_id": "bench"}}
ARGS = {"day": "monday"}
CALL: Any = {"type": "tool_call", "name": "list_events", "args": ARGS, "id": "call-1"}
COMMAND = ".venv/bin/python benchmarks/langchain.py"
BASELINES = (
    "bare",
    "handler alone (middleware baseline)",
    "tool coroutine alone (guard baseline)",
)


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:9.2f} us"


@tool
async def list_events(day: str) -> str:
    """List the user's calendar events on a day."""
    return f"events of {day}"


async def _overhead(issuer: str, calls: int, tmp: Path) -> None:
    async with (
        TokenVault.memory() as vault,
        AuditTrail(JsonlSink(tmp / "overhead-fsync.jsonl")) as synced,
        AuditTrail(JsonlSink(tmp / "overhead-nofsync.jsonl", fsync=False)) as unsynced,
        IdentityClient(
            issuer,
            client_id=CLIENT_ID,
            client_secret=DEV_CLIENTS[CLIENT_ID][0],
            allow_insecure_loopback=True,
            consent=LoopbackConsent(browser=DevBrowser("alice")),
            vault=vault,
        ) as identity,
    ):
        user = identity.user("alice", tenant="bench")
        await user.consent(scopes=["openid", "calendar.read"], resource=CALENDAR)
        await user.token(resource=CALENDAR, scopes=["calendar.read"])  # warm: cached now

        def protected(audit: AuditTrail) -> Any:
            return protect(
                list_events,
                identity=identity,
                resource=CALENDAR,
                scopes="calendar.read",
                audit=audit,
            )

        tools: dict[str, Any] = {
            "bare": list_events,
            "protect(), JSONL fsync on": protected(synced),
            "protect(), JSONL fsync off": protected(unsynced),
        }

        def runner(tool_: Any) -> Callable[[], Awaitable[float]]:
            ainvoke = tool_.ainvoke

            async def run() -> float:
                start = time.perf_counter()
                await ainvoke(CALL, CONFIG)
                return time.perf_counter() - start

            return run

        # The middleware: awrap_tool_call around the handler create_agent would give it
        # (here: the bare tool's ainvoke), against that handler alone.
        request = ToolCallRequest(
            tool_call=CALL,
            tool=list_events,
            state={},
            runtime=_Runtime(CONFIG),  # type: ignore[arg-type]
        )

        async def handler(req: ToolCallRequest) -> Any:
            return await list_events.ainvoke(req.tool_call, CONFIG)

        def middleware_runner(audit: AuditTrail | None) -> Callable[[], Awaitable[float]]:
            if audit is None:
                call: Callable[[], Awaitable[Any]] = lambda: handler(request)  # noqa: E731
            else:
                middleware = IdentityMiddleware(
                    identity,
                    tools={"list_events": {"resource": CALENDAR, "scopes": "calendar.read"}},
                    audit=audit,
                )
                call = lambda: middleware.awrap_tool_call(request, handler)  # noqa: E731

            async def run() -> float:
                start = time.perf_counter()
                await call()
                return time.perf_counter() - start

            return run

        # The SDK's share alone: ToolGuard.run (warm token, context, one audit record)
        # around the tool's coroutine, against that coroutine alone.
        guard = ToolGuard(identity, audit=synced)
        requirement = ToolRequirement(resource=CALENDAR, scopes=("calendar.read",))
        guarded_call = ToolCall(tool="list_events", arguments=ARGS, user="alice", tenant="bench")
        body = functools.partial(list_events.coroutine, **ARGS)

        def guard_runner(guarded: bool) -> Callable[[], Awaitable[float]]:
            async def run() -> float:
                start = time.perf_counter()
                if guarded:
                    await guard.run(guarded_call, requirement, body)
                else:
                    await body()
                return time.perf_counter() - start

            return run

        runners = {name: runner(t) for name, t in tools.items()}
        runners["handler alone (middleware baseline)"] = middleware_runner(None)
        runners["IdentityMiddleware, JSONL fsync on"] = middleware_runner(synced)
        runners["IdentityMiddleware, JSONL fsync off"] = middleware_runner(unsynced)
        runners["tool coroutine alone (guard baseline)"] = guard_runner(False)
        runners["ToolGuard.run, JSONL fsync on"] = guard_runner(True)
        for run in runners.values():  # warm up caches (and check the tools work)
            for _ in range(200):
                await run()
        checked = await tools["protect(), JSONL fsync on"].ainvoke(CALL, CONFIG)
        assert checked.content == "events of monday", checked
        samples: dict[str, list[float]] = {name: [] for name in runners}
        names = list(runners)
        for i in range(calls):
            k = i % len(names)
            for name in names[k:] + names[:k]:
                samples[name].append(await runners[name]())
        await synced.flush()
        await unsynced.flush()
        stats = synced.stats, unsynced.stats
    print(
        f"1. a tool call of a LangChain tool, {calls:,} calls each, interleaved "
        "(median per call; warm memory vault, AuditTrail(JsonlSink)):"
    )
    base = 0.0
    for name in names:
        med = statistics.median(samples[name])
        if name in BASELINES:
            base = med
            label = "bare @tool ainvoke (baseline)" if name == "bare" else name
            print(f"   {label:<38} {_us(med)}   ratio 1.00")
            continue
        print(
            f"   {name:<38} {_us(med)}   ratio {med / base:5.2f}   "
            f"added {_us(med - base).strip()} (goal: <= 100 us)"
        )
    for label, s in zip(("fsync on", "fsync off"), stats, strict=True):
        print(
            f"   audit {label}: emitted {s.emitted:,}, written {s.written:,}, dropped {s.dropped:,}"
        )


class _Runtime:
    """The part of a tool runtime the middleware reads (the run's config)."""

    def __init__(self, config: Any) -> None:
        self.config = config
        self.context = None


def _records(count: int) -> list[AuditEvent]:
    return [
        AuditEvent.for_tool_call(
            "tool.succeeded",
            tool="list_events",
            arguments={"day": f"day-{i}"},
            tenant="bench",
            user="alice",
            agent=CLIENT_ID,
            issuer="https://issuer.example",
            resource=CALENDAR,
            scopes_requested=("calendar.read",),
            scopes_granted=("calendar.read",),
            outcome="ok",
            latency_ms=0.1,
            token_fingerprint="0123456789abcdef",
        )
        for i in range(count)
    ]


async def _trail_rate(events: list[AuditEvent], path: Path, *, fsync: bool) -> tuple[float, int]:
    start = time.perf_counter()
    async with AuditTrail(JsonlSink(path, fsync=fsync), buffer_size=len(events)) as trail:
        for event in events:
            await trail.emit(event)
    elapsed = time.perf_counter() - start
    written = trail.stats.written
    verdict = verify_chain([path])
    assert verdict.ok, verdict
    assert verdict.records == written == len(events), (verdict, trail.stats)
    return written / elapsed, written


def _plain_rate(events: list[AuditEvent], path: Path) -> float:
    start = time.perf_counter()
    with path.open("w", encoding="utf-8") as fh:
        for event in events:
            fh.write(json.dumps(event.to_json_dict(), separators=(",", ":")) + "\n")
    return len(events) / (time.perf_counter() - start)


async def _audit(count: int, tmp: Path) -> None:
    events = _records(count)
    plain = _plain_rate(events, tmp / "plain.jsonl")
    on, written_on = await _trail_rate(events, tmp / "audit-fsync.jsonl", fsync=True)
    off, written_off = await _trail_rate(events, tmp / "audit-nofsync.jsonl", fsync=False)
    print(f"2. audit JSONL throughput, {count:,} records (goal: >= 20,000 records/s):")
    print(f"   {'plain json.dumps lines (baseline)':<46} {plain:12,.0f} records/s   ratio 1.00")
    for label, rate, written in (
        ("AuditTrail(JsonlSink), fsync on (default)", on, written_on),
        ("AuditTrail(JsonlSink), fsync off", off, written_off),
    ):
        print(
            f"   {label:<46} {rate:12,.0f} records/s   ratio {rate / plain:4.2f}   "
            f"({written:,} written, chain verified)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--only", choices=["overhead", "audit"])
    args = parser.parse_args()
    print(f"reproduce: {COMMAND} --calls {args.calls} --records {args.records}")
    print(f"python {sys.version.split()[0]} on {sys.platform}\n")
    with tempfile.TemporaryDirectory(prefix="agent-identity-bench-") as tmp:
        if args.only in (None, "overhead"):
            with DevIdP() as idp:
                anyio.run(_overhead, idp.issuer, args.calls, Path(tmp))
        if args.only in (None, "audit"):
            anyio.run(_audit, args.records, Path(tmp))


if __name__ == "__main__":
    main()
