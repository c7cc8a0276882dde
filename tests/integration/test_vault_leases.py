"""Vault leases across processes: a holder that dies is overtaken within the lease's ttl.

A worker process (``_vault_worker.py --mode hold``) takes a lease on a shared vault (SQLite
file or PostgreSQL schema) and holds it, its heartbeat renewing it every ttl / 3. Past
the ttl it still holds it; then it is SIGKILLed (no release, no cleanup), and the test
process measures how long the lease stays blocked: at most the ttl after the dead holder's
last renewal, so at most the ttl after the kill. No authorization server is needed.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import _postgres
import anyio
import pytest
from _vault_fixtures import key_b64, keys, spawned, start_worker
from _vault_worker import Worker, hold_command

from agent_identity import VaultUnavailable
from agent_identity.vault import Keyring, TokenVault

__all__ = ["key_b64", "keys", "spawned"]

pytestmark = pytest.mark.anyio

TTL = 2.0
LEASE = 'refresh:grant:["t","alice","https://as.example"]'


@pytest.fixture(params=["sqlite", "postgres"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    """The shared vault: ``{"db": path}`` or ``{"url": postgresql://...}``."""
    if request.param == "sqlite":
        yield {"db": str(tmp_path / "vault.sqlite3")}
        return
    schema = _postgres.new_schema()  # skips without a server (fails when CI is set)
    try:
        yield {"url": _postgres.url(schema)}
    finally:
        _postgres.drop_schema(schema)


def _open(where: dict[str, str], keys: Keyring) -> TokenVault:
    if "db" in where:
        return TokenVault.sqlite(where["db"], keys=keys)
    return TokenVault.from_url(where["url"], keys=keys)


async def _held_elsewhere(vault: TokenVault) -> bool:
    try:
        async with vault.lease(LEASE, ttl=1, wait=0):
            return False
    except VaultUnavailable:
        return True


async def test_sigkilled_holder_is_overtaken_within_the_ttl(
    where: dict[str, str],
    tmp_path: Path,
    keys: Keyring,
    key_b64: str,
    spawned: list[Worker],
) -> None:
    worker = await start_worker(
        spawned, tmp_path, key_b64, argv=hold_command(lease=LEASE, lease_ttl=TTL, **where)
    )
    held = await worker.expect("held")
    async with _open(where, keys) as vault:
        # 1.5 ttl after it took the lease, the live holder still has it (renewed)
        await anyio.sleep(max(0.0, held["at"] + 1.5 * TTL - time.time()))
        assert await _held_elsewhere(vault)
        worker.process.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        assert await worker.wait() == -signal.SIGKILL

        async with vault.lease(LEASE, ttl=1, wait=TTL + 5):
            takeover = time.monotonic() - killed
    # the bound: the ttl after the holder's last renewal (polling adds <= 50 ms)
    assert takeover <= TTL + 0.5, takeover
