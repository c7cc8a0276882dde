"""DPoP (RFC 9449) cost: medians and ratios against a bearer baseline measured in the same run.

    .venv/bin/python benchmarks/dpop.py [--proofs 5000] [--rounds 1000]

1. ``proof``: :meth:`DPoPSigner.proof` alone for a resource request (fresh ``jti``, ``htm``,
   ``htu``, ``iat``, ``ath`` of a 800-byte token, the origin's nonce), ES256 (the
   default; target: median <= 150 us), EdDSA and RS256 for reference.
2. ``request``: one warm ``http_auth`` request (the token is in the grant's memory, no
   vault or token endpoint I/O) to the SAME loopback resource, bearer vs DPoP, interleaved
   round by round so that drift on the machine hits both alike. The resource is a minimal
   ASGI app under uvicorn in a separate process that answers 200 without checking the
   token or the proof: the figures are the client's cost (proof generation, the larger
   header), not a resource server's verification. Target: DPoP / bearer <= 1.15.
   ``--alg EdDSA`` (or RS256) makes the DPoP client's keys of that algorithm.
3. ``client``: what ``http_auth`` adds to one request without any I/O (putting the token
   and, for DPoP, a fresh proof on the request; reading the answer's ``DPoP-Nonce``),
   to separate the SDK's own work from the effect of the signature on the request that
   follows (cold caches after the signing, on a busy machine).

Nothing here asserts: the figures are printed for humans and CI logs.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time

import anyio
import httpx2

from agent_identity import IdentityClient, LoopbackConsent, TokenVault
from agent_identity.devidp import DEV_CLIENTS, DevBrowser, DevIdP
from agent_identity.oauth.dpop import DPoPNonces, DPoPSigner, SoftwareDPoPKeys

CLIENT_ID = "agent-confidential"
SCOPE = "bench.read"

_RESOURCE_APP = """
import sys, uvicorn

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b"{}"})

uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning",
            access_log=False, lifespan="off")
"""


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:8.1f} us"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _proofs(count: int) -> None:
    print(f"1. DPoP proof generation alone (median of {count}):")
    token = "x" * 800
    url = "https://api.example/v1/events"
    nonces = DPoPNonces()
    nonces.remember(url, "a-server-nonce-of-typical-length-0123456789")
    for alg in ("ES256", "EdDSA", "RS256"):
        signer = DPoPSigner(SoftwareDPoPKeys().generate_now(alg), nonces=nonces, time=time.time)
        for _ in range(200):
            await signer.proof("GET", url, access_token=token)
        samples = []
        for _ in range(count):
            started = time.perf_counter()
            await signer.proof("GET", url, access_token=token)
            samples.append(time.perf_counter() - started)
        note = "   (target <= 150 us)" if alg == "ES256" else ""
        print(f"   {alg:<6} median {_us(statistics.median(samples))}{note}")


def _client(idp: DevIdP, **kwargs: object) -> IdentityClient:
    return IdentityClient(
        idp.issuer,
        client_id=CLIENT_ID,
        client_secret=DEV_CLIENTS[CLIENT_ID][0],
        allow_insecure_loopback=True,
        consent=LoopbackConsent(browser=DevBrowser("alice")),
        vault=TokenVault.memory(),
        **kwargs,  # type: ignore[arg-type]
    )


async def _requests(rounds: int, resource: str, alg: str) -> None:
    samples: dict[str, list[float]] = {"bearer": [], "dpop": []}
    with DevIdP(resources={resource: (SCOPE,)}, access_token_ttl=3600) as idp:
        async with httpx2.AsyncClient() as probe:
            for _ in range(100):
                try:
                    await probe.get(f"{resource}/ping")
                    break
                except httpx2.TransportError:
                    await anyio.sleep(0.1)
        async with (
            _client(idp) as bearer,
            _client(idp, dpop=SoftwareDPoPKeys((alg,))) as dpop,
        ):
            clients = {}
            for name, identity in (("bearer", bearer), ("dpop", dpop)):
                user = identity.user("alice")
                await user.consent(scopes=[SCOPE], resource=resource)
                clients[name] = httpx2.AsyncClient(
                    auth=user.http_auth(resource=resource, scopes=SCOPE)
                )
            try:
                url = f"{resource}/events"
                for _ in range(50):  # warm up connections and caches
                    for http in clients.values():
                        (await http.get(url)).raise_for_status()
                for index in range(rounds):
                    order = ("bearer", "dpop") if index % 2 == 0 else ("dpop", "bearer")
                    for name in order:
                        started = time.perf_counter()
                        response = await clients[name].get(url)
                        samples[name].append(time.perf_counter() - started)
                        response.raise_for_status()
            finally:
                for http in clients.values():
                    await http.aclose()
    base = statistics.median(samples["bearer"])
    dpop_median = statistics.median(samples["dpop"])
    print(f"2. warm http_auth request over loopback (median of {rounds}, interleaved):")
    print(f"   bearer     {_us(base)}   ratio 1.00")
    print(
        f"   DPoP {alg:<5} {_us(dpop_median)}   ratio {dpop_median / base:.2f}   "
        f"(+{(dpop_median - base) * 1e6:.0f} us; target <= 1.15)"
    )


async def _client_side(count: int) -> None:
    from pydantic import SecretStr

    from agent_identity import AccessToken
    from agent_identity._resource_auth import present_token, wants_new_nonce

    print(f"3. http_auth's own work per request, no I/O (median of {count}):")
    signer = DPoPSigner(
        SoftwareDPoPKeys().generate_now("ES256"), nonces=DPoPNonces(), time=time.time
    )
    url = "http://127.0.0.1:1/api/events"
    medians = {}
    for token_type in ("Bearer", "DPoP"):
        token = AccessToken(
            SecretStr("x" * 800),
            token_type,
            "issuer",
            "http://127.0.0.1:1/api",
            (),
            None,
            0.0,
            dpop=signer if token_type == "DPoP" else None,
        )
        samples = []
        for _ in range(count):
            request = httpx2.Request("GET", url)
            answer = httpx2.Response(200, request=request, headers={"DPoP-Nonce": "n-1"})
            started = time.perf_counter()
            await present_token(request, token)
            wants_new_nonce(answer, token)
            samples.append(time.perf_counter() - started)
        medians[token_type] = statistics.median(samples)
        print(f"   {token_type:<6} {_us(medians[token_type])}")


async def _main(proofs: int, rounds: int, only: str | None, resource: str, alg: str) -> None:
    if only in (None, "proof"):
        await _proofs(proofs)
    if only in (None, "request"):
        await _requests(rounds, resource, alg)
    if only in (None, "client"):
        await _client_side(proofs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--proofs", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=1000)
    parser.add_argument("--only", choices=["proof", "request", "client"])
    parser.add_argument("--alg", default="ES256", choices=["ES256", "EdDSA", "RS256"])
    args = parser.parse_args()
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-c", _RESOURCE_APP, str(port)],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        resource = f"http://127.0.0.1:{port}/api"
        anyio.run(_main, args.proofs, args.rounds, args.only, resource, args.alg)
    finally:
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    main()
