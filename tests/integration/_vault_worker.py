"""A worker process for the cross-process token vault tests and benchmarks.

Run as a script (``python tests/integration/_vault_worker.py --help``): it builds an
:class:`~agent_identity.IdentityClient` on an explicit vault (never the default one): a
SQLite file (``--db PATH``) or any vault URL (``--url``, e.g. ``postgresql://...``),
discovers the server, prints a ``ready`` line, waits at a start barrier, then asks for
``user.token(resource, scopes)`` and prints the outcome. Every output line is one JSON
object with an ``event`` member; a token is only ever shown as a fingerprint (a SHA-256
prefix), never itself.

Modes:

- ``token``: one ``token()`` call; ``{"event": "result", "ok", "fingerprint",
  "elapsed_us", "started_at", "finished_at", "error"}``. Exit 0 on success, 3 on a typed
  SDK error (its class name is in ``error``).
- ``watch``: one ``token()`` call (``{"event": "warm", ...}``), then one every
  ``--interval`` seconds until a call fails or returns another token:
  ``{"event": "changed", "at", "fingerprint", "error"}`` (exit 3 on an error, 0 on a new
  token), or ``{"event": "unchanged"}`` after ``--deadline`` seconds (exit 4).
- ``hold``: no authorization server: take the vault lease ``--lease`` (``--lease-ttl``,
  default the vault's), print ``{"event": "held", "at"}`` and hold it (heartbeat running)
  until killed; ``--deadline`` seconds at most.

The vault key comes from ``--key`` (base64, 32 bytes) or, better (it keeps the key out of
the process list), from ``AGENT_IDENTITY_VAULT_KEYS`` (``kid:BASE64``). Consent is never
possible here: the worker's consent handler raises
:class:`~agent_identity.errors.ConsentRequired` at once.

The parent side (:func:`worker_command`, :class:`Worker`) is importable by tests and
benchmarks.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

WORKER = Path(__file__).resolve()
TYPED_ERROR_EXIT = 3
UNCHANGED_EXIT = 4


def fingerprint(value: str) -> str:
    """A short, non-reversible name of a token for comparisons across processes."""
    return hashlib.sha256(value.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- parent side


def worker_command(
    *,
    issuer: str,
    db: Path | str | None = None,
    url: str | None = None,
    tenant: str,
    user: str,
    resource: str,
    scopes: Sequence[str],
    mode: str = "token",
    start_file: Path | str | None = None,
    start_at: float | None = None,
    lease_ttl: float | None = None,
    cache_ttl: float | None = None,
    interval: float | None = None,
    deadline: float | None = None,
    warm_plumbing: bool = False,
    python: str | None = None,
) -> list[str]:
    """The argv of a worker (the key goes in the environment, see the module docstring).
    Exactly one of ``db`` (a SQLite file) and ``url`` (a vault URL) names the vault."""
    if (db is None) == (url is None):
        raise ValueError("pass exactly one of db= and url=")
    argv = [
        python or sys.executable,
        str(WORKER),
        "--issuer",
        issuer,
        *(["--db", str(db)] if db is not None else ["--url", str(url)]),
        "--tenant",
        tenant,
        "--user",
        user,
        "--resource",
        resource,
        "--scopes",
        " ".join(scopes),
        "--mode",
        mode,
    ]
    options: dict[str, object | None] = {
        "--start-file": start_file,
        "--start-at": start_at,
        "--lease-ttl": lease_ttl,
        "--cache-ttl": cache_ttl,
        "--interval": interval,
        "--deadline": deadline,
    }
    for flag, value in options.items():
        if value is not None:
            argv += [flag, str(value)]
    if warm_plumbing:
        argv.append("--warm-plumbing")
    return argv


def hold_command(
    *,
    lease: str,
    db: Path | str | None = None,
    url: str | None = None,
    lease_ttl: float | None = None,
    deadline: float = 60.0,
    python: str | None = None,
) -> list[str]:
    """The argv of a worker that takes the vault lease ``lease`` and holds it until
    killed (mode ``hold``)."""
    if (db is None) == (url is None):
        raise ValueError("pass exactly one of db= and url=")
    argv = [
        python or sys.executable,
        str(WORKER),
        *(["--db", str(db)] if db is not None else ["--url", str(url)]),
        "--mode",
        "hold",
        "--lease",
        lease,
        "--deadline",
        str(deadline),
    ]
    if lease_ttl is not None:
        argv += ["--lease-ttl", str(lease_ttl)]
    return argv


def worker_env(key_id: str, key_b64: str) -> dict[str, str]:
    """The environment of a worker: this one plus the vault key."""
    return {**os.environ, "AGENT_IDENTITY_VAULT_KEYS": f"{key_id}:{key_b64}"}


async def expire_token(vault: Any, key: Any, token_key: Any) -> None:
    """Make the stored token ``token_key`` (resource, scopes) of the grant ``key`` in
    ``vault`` expired, as if issued 10 minutes ago, so that the next ``token()`` refreshes."""
    from agent_identity.vault import CachedToken

    current = await vault.load(key, fresh=True)
    assert current is not None
    old = current.record.tokens[token_key]
    now = time.time()
    expired = CachedToken(
        resource=old.resource,
        scopes=old.scopes,
        value=old.value,
        token_type=old.token_type,
        expires_at=now - 300,
        issued_at=now - 600,
    )
    await vault.save(key, current.record.with_token(expired), expected_version=current.version)


class Worker:
    """A running worker: read its JSON events, wait for it, kill it."""

    def __init__(self, process: Process, stderr_path: Path) -> None:
        self.process = process
        self.stderr_path = stderr_path
        assert process.stdout is not None
        self._stdout = BufferedByteReceiveStream(process.stdout)

    @classmethod
    async def start(cls, argv: list[str], env: dict[str, str], stderr_path: Path) -> Worker:
        with stderr_path.open("wb") as stderr:
            process = await anyio.open_process(argv, env=env, stderr=stderr)
        return cls(process, stderr_path)

    @property
    def pid(self) -> int:
        return self.process.pid

    def stderr_tail(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    async def event(self, within: float = 20.0) -> dict[str, Any]:
        """The next JSON line (fails with the worker's stderr if none comes ``within``
        seconds)."""
        try:
            with anyio.fail_after(within):
                line = await self._stdout.receive_until(b"\n", 1 << 16)
        except (TimeoutError, anyio.EndOfStream, anyio.IncompleteRead) as exc:
            raise AssertionError(
                f"worker {self.pid} sent no event ({type(exc).__name__}); "
                f"stderr:\n{self.stderr_tail()}"
            ) from None
        event: dict[str, Any] = json.loads(line)
        return event

    async def expect(self, name: str, within: float = 20.0) -> dict[str, Any]:
        event = await self.event(within)
        assert event.get("event") == name, (event, self.stderr_tail())
        return event

    async def wait(self, within: float = 20.0) -> int:
        with anyio.fail_after(within):
            return await self.process.wait()

    async def kill(self) -> None:
        """SIGKILL (if still running) and reap."""
        if self.process.returncode is None:
            self.process.kill()
        with anyio.move_on_after(5):
            await self.process.wait()
        await self.process.aclose()


# --------------------------------------------------------------------------- worker side


def _emit(**event: object) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


class _NoConsent:
    """A consent handler that fails fast: nobody can consent inside a worker."""

    async def obtain_consent(self, flow: Any) -> None:
        from agent_identity import ConsentRequired

        raise ConsentRequired(
            "consent is not possible in a vault worker",
            scopes=tuple(flow.scopes),
            resource=flow.resource,
        )


async def _barrier(args: argparse.Namespace) -> None:
    if args.start_file is not None:
        start = Path(args.start_file)
        # An anyio.Event cannot cross processes: poll a local file (one stat() per ms).
        while not start.exists():  # noqa: ASYNC110, ASYNC240
            await anyio.sleep(0.001)
    if args.start_at is not None:
        delay = args.start_at - time.time()
        if delay > 0:
            await anyio.sleep(delay)


def _vault(args: argparse.Namespace) -> Any:
    from agent_identity.vault import Keyring, TokenVault

    keys = Keyring({"k1": args.key}, "k1") if args.key is not None else Keyring.from_env()
    if args.url is not None:
        return TokenVault.from_url(args.url, keys=keys, cache_ttl=args.cache_ttl)
    return TokenVault.sqlite(args.db, keys=keys, cache_ttl=args.cache_ttl)


async def _hold(args: argparse.Namespace) -> int:
    if args.lease is None:
        raise SystemExit("--lease is required in hold mode")
    options = {} if args.lease_ttl is None else {"ttl": args.lease_ttl}
    async with _vault(args) as vault, vault.lease(args.lease, wait=30, **options):
        _emit(event="held", at=time.time(), pid=os.getpid())
        await anyio.sleep(args.deadline)
    return UNCHANGED_EXIT


async def _run(args: argparse.Namespace) -> int:
    from agent_identity import AgentIdentityError, IdentityClient
    from agent_identity.devidp import DEV_CLIENTS

    if args.mode == "hold":
        return await _hold(args)
    if args.issuer is None or args.resource is None:
        raise SystemExit("--issuer and --resource are required in this mode")
    vault = _vault(args)
    secret = DEV_CLIENTS[args.client_id][0]
    scopes = args.scopes.split()
    try:
        async with IdentityClient(
            args.issuer,
            client_id=args.client_id,
            client_secret=secret,
            allow_insecure_loopback=True,
            consent=_NoConsent(),
            vault=vault,
            lease_ttl=args.lease_ttl,
        ) as identity:
            user = identity.user(args.user, tenant=args.tenant)
            if args.warm_plumbing:
                # Open the SQLite connection and load the AES-GCM code without touching
                # the grant, so that the timed call measures only the lookup itself.
                await vault.get_blob("bench", "warmup")
            _emit(event="ready", pid=os.getpid())
            await _barrier(args)
            started = time.time()
            t0 = time.perf_counter()
            try:
                token = await user.token(resource=args.resource, scopes=scopes)
            except AgentIdentityError as exc:
                _emit(
                    event="result" if args.mode == "token" else "warm",
                    ok=False,
                    error=type(exc).__name__,
                    started_at=started,
                    finished_at=time.time(),
                )
                return TYPED_ERROR_EXIT
            elapsed = time.perf_counter() - t0
            first = fingerprint(token.value.get_secret_value())
            _emit(
                event="result" if args.mode == "token" else "warm",
                ok=True,
                fingerprint=first,
                elapsed_us=elapsed * 1e6,
                started_at=started,
                finished_at=time.time(),
                error=None,
            )
            if args.mode == "token":
                return 0
            end = time.monotonic() + args.deadline
            while time.monotonic() < end:
                await anyio.sleep(args.interval)
                try:
                    token = await user.token(resource=args.resource, scopes=scopes)
                except AgentIdentityError as exc:
                    _emit(
                        event="changed", at=time.time(), fingerprint=None, error=type(exc).__name__
                    )
                    return TYPED_ERROR_EXIT
                current = fingerprint(token.value.get_secret_value())
                if current != first:
                    _emit(event="changed", at=time.time(), fingerprint=current, error=None)
                    return 0
            _emit(event="unchanged")
            return UNCHANGED_EXIT
    finally:
        await vault.aclose()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="token vault worker (tests and benchmarks)")
    parser.add_argument("--issuer", default=None, help="required unless --mode hold")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--db", help="the SQLite vault file")
    where.add_argument("--url", help="a vault URL (postgresql://..., sqlite:///...)")
    parser.add_argument("--key", default=None, help="base64 vault key (default: env)")
    parser.add_argument("--client-id", default="agent-confidential")
    parser.add_argument("--tenant", default="default")
    parser.add_argument("--user", default="alice")
    parser.add_argument("--resource", default=None, help="required unless --mode hold")
    parser.add_argument("--scopes", default="", help="space-separated")
    parser.add_argument("--mode", choices=["token", "watch", "hold"], default="token")
    parser.add_argument("--lease", default=None, help="hold: the lease name")
    parser.add_argument("--start-file", default=None, help="start once this file exists")
    parser.add_argument("--start-at", type=float, default=None, help="start at this epoch")
    parser.add_argument("--lease-ttl", type=float, default=None)
    parser.add_argument("--cache-ttl", type=float, default=1.0)
    parser.add_argument("--interval", type=float, default=0.01, help="watch: poll interval")
    parser.add_argument("--deadline", type=float, default=10.0, help="watch: give up after")
    parser.add_argument("--warm-plumbing", action="store_true")
    args = parser.parse_args(argv)
    return anyio.run(_run, args)


if __name__ == "__main__":
    sys.exit(main())
