"""Human approval (CIBA) latency against the bundled local authorization server.

    .venv/bin/python benchmarks/approval.py [--runs 20]

Measures, per mode, the time from the moment the user approves (the dev server's
``ciba_approve`` hook call returns) to the moment ``user.approve(...)`` returns, median
over ``--runs`` approvals (after one warm-up approval that also fetches the JWKS):

- ``ping``: client ``agent-ping``, notifications to the SDK's standalone
  :class:`~agent_identity.approval.PingReceiver` on 127.0.0.1; goal <= 100 ms;
- ``poll``: client ``agent-confidential`` with ``ciba_interval=1`` (the baseline: expect
  about half the interval on average).

Also printed: the same latency measured from the start of the hook call (the dev server
delivers the ping before its hook answers, so in ping mode ``approve()`` can return before
the hook call does: a latency from the hook's return can then be negative). Nothing
asserts: the figures are printed for humans and CI logs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from agent_identity import Action, IdentityClient
from agent_identity.approval import PingReceiver
from agent_identity.devidp import DEV_CLIENTS, DevIdP
from agent_identity.vault import TokenVault

ROOT = Path(__file__).resolve().parent.parent
PAYMENTS = "https://payments.example/api"


def _client(idp: DevIdP, client_id: str) -> IdentityClient:
    secret, _ = DEV_CLIENTS[client_id]
    return IdentityClient(
        idp.issuer,
        client_id=client_id,
        client_secret=secret,
        allow_insecure_loopback=True,
        vault=TokenVault.memory(),
    )


async def _one(
    idp: DevIdP, identity: IdentityClient, run: int, ping: PingReceiver | None
) -> tuple[float, float]:
    """One approval; returns (latency from hook return, latency from hook start)."""
    action = Action("pay_invoice", {"invoice": f"INV-{run}", "amount": "120.00 EUR"})
    done: dict[str, float] = {}

    async def ask() -> None:
        approval = await identity.user("alice").approve(
            action=action, scopes=["payments.write"], resource=PAYMENTS, ping=ping
        )
        done["at"] = time.perf_counter()
        approval.use(action)

    async with anyio.create_task_group() as tg:
        tg.start_soon(ask)
        with anyio.fail_after(30):
            while not (pending := await idp.ciba_pending()):  # noqa: ASYNC110
                await anyio.sleep(0.01)
        # let any poll scheduled right now happen: start the clock at a random phase
        await anyio.sleep(0.05 + (run % 10) * 0.09)
        hook_start = time.perf_counter()
        await idp.ciba_approve(pending[0]["auth_req_id"])
        hook_end = time.perf_counter()
    return done["at"] - hook_end, done["at"] - hook_start


async def _measure(
    idp: DevIdP, client_id: str, runs: int, ping: PingReceiver | None
) -> tuple[list[float], list[float]]:
    after_hook: list[float] = []
    from_start: list[float] = []
    async with _client(idp, client_id) as identity:
        await _one(idp, identity, -1, ping)  # warm-up: JWKS, connections
        for run in range(runs):
            a, b = await _one(idp, identity, run, ping)
            after_hook.append(a)
            from_start.append(b)
    return after_hook, from_start


def _ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:8.1f} ms"


async def main(runs: int) -> None:
    receiver = PingReceiver()
    async with receiver.serve() as url:
        ping_idp = await anyio.to_thread.run_sync(
            lambda: DevIdP(ping_notification_endpoint=url).start()
        )
        try:
            ping_after, ping_from = await _measure(ping_idp, "agent-ping", runs, receiver)
        finally:
            ping_idp.stop()
    poll_idp = await anyio.to_thread.run_sync(lambda: DevIdP(ciba_interval=1).start())
    try:
        poll_after, poll_from = await _measure(poll_idp, "agent-confidential", runs, None)
    finally:
        poll_idp.stop()

    print(f"CIBA approval latency, median of {runs} runs (local dev server)")
    print("                     from hook return   from hook start")
    print(f"  ping             {_ms(ping_after)}        {_ms(ping_from)}   goal <= 100 ms")
    print(f"  poll (1 s)       {_ms(poll_after)}        {_ms(poll_from)}   baseline")
    ratio = statistics.median(poll_from) / max(statistics.median(ping_from), 1e-9)
    print(f"  ping is {ratio:.0f}x faster than polling at a 1 s interval (from hook start)")
    print(f"  ping max {max(ping_from) * 1000:.1f} ms, poll max {max(poll_from) * 1000:.1f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    args: Any = parser.parse_args()
    sys.exit(anyio.run(main, args.runs))
