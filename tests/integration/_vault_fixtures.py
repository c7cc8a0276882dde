"""What the multi-process vault tests share: a test key, worker bookkeeping, clients.

Import the fixtures into a test module and name them in its ``__all__`` (as with
``pg_schema``)::

    from _vault_fixtures import key_b64, keys, spawned

    __all__ = ["key_b64", "keys", "spawned"]

The workers are ``_vault_worker.py`` processes; they get the key through the environment.
"""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _helpers import make_client
from _vault_worker import Worker, worker_command, worker_env

from agent_identity import ConsentRequired, IdentityClient
from agent_identity.consent.base import ConsentFlow
from agent_identity.devidp import DevIdP
from agent_identity.vault import GrantKey, Keyring, TokenVault

__all__ = [
    "KEY_ID",
    "FailingConsent",
    "key_b64",
    "keys",
    "spawned",
    "one_refresh_for_all",
    "start_gated",
    "start_worker",
    "vault_client",
]

KEY_ID = "test-k1"


@pytest.fixture
def key_b64() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


@pytest.fixture
def keys(key_b64: str) -> Keyring:
    return Keyring({KEY_ID: key_b64}, KEY_ID)


@pytest.fixture
def spawned() -> Iterator[list[Worker]]:
    """Workers started by a test; any still running at the end is killed (by its pid)."""
    workers: list[Worker] = []
    yield workers
    for worker in workers:
        if worker.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, signal.SIGKILL)


def grant_key(tenant: str, idp: DevIdP, client_id: str = "agent-confidential") -> GrantKey:
    """Where alice's grant of a dev client lives (tenant, user, connection, client id)."""
    return GrantKey(tenant, "alice", idp.issuer, client_id)


class FailingConsent:
    """A consent handler that must not be called: it counts calls and refuses."""

    def __init__(self) -> None:
        self.calls = 0

    async def obtain_consent(self, flow: ConsentFlow) -> None:
        self.calls += 1
        raise ConsentRequired("no consent expected here", scopes=flow.scopes)


def vault_client(idp: DevIdP, vault: TokenVault, **kwargs: Any) -> IdentityClient:
    """The confidential dev client on ``vault``; alice consents unless ``consent=`` says
    otherwise."""
    return make_client(idp, vault=vault, **kwargs)


async def start_worker(
    spawned: list[Worker],
    tmp_path: Path,
    key_b64: str,
    argv: list[str] | None = None,
    **options: Any,
) -> Worker:
    """Start a worker (``argv``, or :func:`worker_command` of ``options``) with the test key;
    its stderr goes to ``tmp_path``."""
    worker = await Worker.start(
        argv if argv is not None else worker_command(**options),
        worker_env(KEY_ID, key_b64),
        tmp_path / f"worker-{len(spawned)}.stderr",
    )
    spawned.append(worker)
    return worker


async def start_gated(
    spawned: list[Worker], tmp_path: Path, key_b64: str, count: int, **options: Any
) -> list[tuple[Worker, Path]]:
    """Start ``count`` workers of :func:`worker_command` ``options``, each waiting for a
    start file of its own; returns ``(worker, start file)`` pairs once all are ready."""
    gated = []
    for i in range(count):
        go = tmp_path / f"go-{len(spawned)}-{i}"
        gated.append((await start_worker(spawned, tmp_path, key_b64, start_file=go, **options), go))
    for worker, _go in gated:
        await worker.expect("ready")
    return gated


async def one_refresh_for_all(
    idp: DevIdP, spawned: list[Worker], tmp_path: Path, key_b64: str, count: int, **options: Any
) -> list[dict[str, Any]]:
    """Start ``count`` workers of :func:`worker_command` ``options`` (mode ``token``),
    release them together once all are ready, and check that they all succeeded with the
    same token while the authorization server saw exactly one refresh (security item 25).
    Returns their results."""
    start = tmp_path / f"go-{len(spawned)}"
    workers = [
        await start_worker(spawned, tmp_path, key_b64, start_file=start, **options)
        for _ in range(count)
    ]
    for worker in workers:
        await worker.expect("ready")
    start.touch()  # the barrier: all are past discovery (and their stores are open)
    results = [await worker.expect("result") for worker in workers]
    codes = [await worker.wait() for worker in workers]
    assert codes == [0] * count, [w.stderr_tail() for w in workers]
    assert all(r["ok"] for r in results), results
    refreshes = await idp.token_requests("refresh_token")
    assert [r["status"] for r in refreshes] == [200], refreshes
    assert len({r["fingerprint"] for r in results}) == 1
    return results
