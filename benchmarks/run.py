"""Benchmarks: medians and ratios against baselines measured in the same run.

    .venv/bin/python benchmarks/run.py [--rounds 200] [--only token|import]

1. ``token``: one client_credentials token request against the bundled local
   authorization server, three ways, interleaved round by round so that drift on the
   machine hits all of them alike:
   - ``bare``: a hand-written ``httpx2.AsyncClient`` POST (the baseline, ratio 1.00);
   - ``sdk``: ``IdentityClient.client_credentials(refresh=True)`` (discovery done once,
     cache bypassed so every round is a real request);
   - ``authlib``: authlib's ``AsyncOAuth2Client.fetch_token`` (for reference).
   Goal: sdk/bare <= 1.03 (authlib's figure, about 1.08, for reference).
2. ``import``: ``import agent_identity`` and ``from agent_identity import IdentityClient``
   in a fresh interpreter with bytecode cached (median of N interleaved rounds), next to
   ``import httpx2`` and authlib's httpx client measured in the same rounds.
   Goal: ``IdentityClient`` <= 100 ms and <= authlib's figure.

Nothing here asserts: the figures are printed for humans and CI logs.
The token vault has its own suite: ``.venv/bin/python benchmarks/vault.py``.
The LangChain wrapper and the audit JSONL sink: ``.venv/bin/python benchmarks/langchain.py``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable

import anyio
import httpx2

from agent_identity import IdentityClient
from agent_identity.devidp import DEV_CLIENTS, DevIdP

CLIENT_ID = "agent-confidential"


def _fmt(seconds: float) -> str:
    return f"{seconds * 1000:8.3f} ms"


async def _token_bench(issuer: str, rounds: int) -> None:
    secret = DEV_CLIENTS[CLIENT_ID][0]
    assert secret is not None
    samples: dict[str, list[float]] = {"bare": [], "sdk": [], "authlib": []}
    async with (
        httpx2.AsyncClient() as bare,
        IdentityClient(
            issuer,
            client_id=CLIENT_ID,
            client_secret=secret,
            allow_insecure_loopback=True,
        ) as sdk,
    ):
        token_endpoint = sdk.metadata.token_endpoint
        assert token_endpoint is not None
        from authlib.integrations.httpx_client import AsyncOAuth2Client

        async with AsyncOAuth2Client(
            CLIENT_ID, secret, token_endpoint_auth_method="client_secret_basic"
        ) as authlib_client:

            async def run_bare() -> None:
                response = await bare.post(
                    token_endpoint,
                    data={"grant_type": "client_credentials"},
                    auth=(CLIENT_ID, secret),
                )
                response.raise_for_status()
                assert response.json()["access_token"]

            async def run_sdk() -> None:
                token = await sdk.client_credentials(refresh=True)
                assert token.value.get_secret_value()

            async def run_authlib() -> None:
                token = await authlib_client.fetch_token(
                    token_endpoint, grant_type="client_credentials"
                )
                assert token["access_token"]

            runners: dict[str, Callable[[], Awaitable[None]]] = {
                "bare": run_bare,
                "sdk": run_sdk,
                "authlib": run_authlib,
            }
            for _ in range(20):  # warm up connections and JIT-free caches
                for run in runners.values():
                    await run()
            for i in range(rounds):
                order = list(runners)
                order = order[i % 3 :] + order[: i % 3]  # rotate who goes first
                for name in order:
                    start = time.perf_counter()
                    await runners[name]()
                    samples[name].append(time.perf_counter() - start)
    base = statistics.median(samples["bare"])
    print(f"client_credentials token request, {rounds} interleaved rounds (median):")
    for name in ("bare", "sdk", "authlib"):
        med = statistics.median(samples[name])
        print(f"  {name:8s} {_fmt(med)}   ratio vs bare {med / base:5.2f}")


def _import_time(statement: str, env: dict[str, str]) -> float:
    code = f"import time; t=time.perf_counter(); {statement}; print(time.perf_counter()-t)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    ).stdout
    return float(out.strip())


_IMPORTS = (
    ("import httpx2 (baseline)", "import httpx2"),
    ("import agent_identity", "import agent_identity"),
    ("from agent_identity import IdentityClient", "from agent_identity import IdentityClient"),
    ("authlib httpx client", "import authlib.integrations.httpx_client"),
)


def _import_bench(runs: int) -> None:
    print(f"import time in a fresh interpreter, {runs} interleaved rounds (median):")
    # An editable checkout under PYTHONDONTWRITEBYTECODE would compile every module on every
    # run, which no installed package does: cache the bytecode in a private folder, written
    # by one warm-up run per statement (as installing a wheel does).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = tempfile.mkdtemp(prefix="agent-identity-pycache-")
    samples: dict[str, list[float]] = {label: [] for label, _ in _IMPORTS}
    for round_ in range(runs + 1):
        for label, statement in _IMPORTS:
            elapsed = _import_time(statement, env)
            if round_:
                samples[label].append(elapsed)
    authlib = statistics.median(samples["authlib httpx client"])
    for label, _ in _IMPORTS:
        med = statistics.median(samples[label])
        print(f"  {label:45s} {_fmt(med)}   ratio vs authlib {med / authlib:5.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--import-runs", type=int, default=15)
    parser.add_argument("--only", choices=["token", "import"])
    args = parser.parse_args()
    if args.only in (None, "import"):
        _import_bench(args.import_runs)
    if args.only in (None, "token"):
        with DevIdP() as idp:
            anyio.run(_token_bench, idp.issuer, args.rounds)


if __name__ == "__main__":
    main()
