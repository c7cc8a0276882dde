"""The token vault on PostgreSQL across processes, against the real local authorization server.

Worker processes (``_vault_worker.py --url postgresql://...``), each with its own
connection pool, share one PostgreSQL vault (a schema of this test's own, see
``tests/_postgres.py``) and one grant: they refresh it once between them through the
store's lease (security item 25), and a worker SIGKILLed while it holds the refresh lease
(past the lease's ttl: its heartbeat renewed it) blocks the others only until the ttl
after its last renewal, leaving the row intact.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import _postgres
import anyio
import pytest
from _postgres import pg_schema
from _vault_fixtures import (
    grant_key,
    key_b64,
    keys,
    one_refresh_for_all,
    spawned,
    start_gated,
    vault_client,
)
from _vault_worker import Worker, expire_token, fingerprint

from agent_identity import VaultUnavailable
from agent_identity.devidp import DevIdP
from agent_identity.oauth.jwt import peek_claims
from agent_identity.vault import Keyring, TokenVault

__all__ = ["key_b64", "keys", "pg_schema", "spawned"]

pytestmark = [pytest.mark.anyio, pytest.mark.idp]

CALENDAR = "https://calendar.example/api"
READ = ["calendar.read"]
TOKEN_KEY = (CALENDAR, frozenset(READ))


@pytest.fixture
def url(pg_schema: str) -> str:
    return _postgres.url(pg_schema)


def _lease_held(schema: str, name: str) -> bool:
    """Whether someone holds the lease ``name`` (read from the table, not taken)."""
    with _postgres.admin() as conn:
        row = conn.execute(
            f'SELECT 1 FROM "{schema}".leases WHERE name = %s AND expires_at > clock_timestamp()',
            (name,),
        ).fetchone()
    return row is not None


async def test_sec_25_eight_processes_one_refresh_on_postgres(
    dev_idp: DevIdP,
    tmp_path: Path,
    url: str,
    keys: Keyring,
    key_b64: str,
    spawned: list[Worker],
) -> None:
    """Eight processes, each with its own pool, released together on an expired token:
    exactly one refresh request reaches the authorization server (a second would reuse a
    rotated refresh token and make oidc-provider revoke the grant), and all eight get the
    same valid token, the one now in the vault."""
    tenant = "pg-sec25"
    key = grant_key(tenant, dev_idp)
    async with (
        TokenVault.from_url(url, keys=keys) as vault,
        vault_client(dev_idp, vault) as identity,
    ):
        alice = identity.user("alice", tenant=tenant)
        await alice.consent(scopes=["openid", *READ], resource=CALENDAR)
        old = await alice.token(resource=CALENDAR, scopes=READ)
        await expire_token(vault, key, TOKEN_KEY)
        before = await vault.load(key, fresh=True)
        assert before is not None
    await dev_idp.clear_requests()

    results = await one_refresh_for_all(
        dev_idp,
        spawned,
        tmp_path,
        key_b64,
        8,
        issuer=dev_idp.issuer,
        url=url,
        tenant=tenant,
        user="alice",
        resource=CALENDAR,
        scopes=READ,
    )
    assert results[0]["fingerprint"] != fingerprint(old.value.get_secret_value())

    async with TokenVault.from_url(url, keys=keys) as vault:
        current = await vault.load(key, fresh=True)
        assert current is not None
        assert current.version > before.version
        value = current.record.tokens[TOKEN_KEY].value.get_secret_value()
        assert fingerprint(value) == results[0]["fingerprint"]
        claims = peek_claims(value)
        assert claims["aud"] == CALENDAR
        assert claims["scope"] == "calendar.read"
        assert claims["exp"] > time.time()


async def test_sigkilled_lease_holder_is_taken_over_after_the_lease_ttl(
    dev_idp_factory: Any,
    tmp_path: Path,
    pg_schema: str,
    url: str,
    keys: Keyring,
    key_b64: str,
    spawned: list[Worker],
) -> None:
    """Worker A takes the refresh lease (ttl 2 s) and sends its refresh (the server holds
    every refresh 5 s); 3 s in, A still holds the lease (its heartbeat renews it) and is
    SIGKILLed. The lease is free again at most its ttl after A's last renewal; then worker
    B refreshes with the stored refresh token, which A's dropped request never rotated.
    The row was never torn: same version and refresh token until B wrote."""
    lease_ttl = 2.0
    tenant = "pg-sigkill"
    idp: DevIdP = dev_idp_factory(refresh_delay=5)
    key = grant_key(tenant, idp)
    async with TokenVault.from_url(url, keys=keys) as vault, vault_client(idp, vault) as identity:
        alice = identity.user("alice", tenant=tenant)
        await alice.consent(scopes=["openid", "calendar.read", "calendar.write"], resource=CALENDAR)
    await idp.clear_requests()

    options = {
        "issuer": idp.issuer,
        "url": url,
        "tenant": tenant,
        "user": "alice",
        "resource": CALENDAR,
        "scopes": READ,
        "lease_ttl": lease_ttl,
    }
    (a, go_a), (b, go_b) = await start_gated(spawned, tmp_path, key_b64, 2, **options)

    async with TokenVault.from_url(url, keys=keys) as vault:
        before = await vault.load(key, fresh=True)
        assert before is not None
        assert before.record.refresh_token is not None
        assert TOKEN_KEY not in before.record.tokens  # a (narrowing) refresh is needed

        go_a.touch()
        lease = f"refresh:{key.storage_key}"
        with anyio.fail_after(10):
            while not _lease_held(pg_schema, lease):  # noqa: ASYNC110 - another process
                await anyio.sleep(0.01)
        taken = time.monotonic()
        # past its ttl, A still holds the lease: its refresh request is in flight
        await anyio.sleep(max(0.0, taken + 1.5 * lease_ttl - time.monotonic()))
        with pytest.raises(VaultUnavailable):
            async with vault.lease(lease, ttl=1, wait=0):
                pass
        a.process.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        assert await a.wait() == -signal.SIGKILL

        after = await vault.load(key, fresh=True)  # nothing written, nothing torn
        assert after is not None
        assert after.version == before.version
        assert after.record.refresh_token is not None
        assert (
            after.record.refresh_token.get_secret_value()
            == before.record.refresh_token.get_secret_value()
        )

        # the dead holder's lease blocks at most its ttl after its last renewal
        async with vault.lease(lease, ttl=1, wait=lease_ttl + 5):
            waited = time.monotonic() - killed
        assert waited <= lease_ttl + 0.5, waited

        go_b.touch()
        result = await b.expect("result", within=20)
        assert await b.wait() == 0, b.stderr_tail()
        assert result["ok"], result

        current = await vault.load(key, fresh=True)
        assert current is not None
        assert current.version > before.version
        assert current.record.refresh_token is not None
        assert (
            current.record.refresh_token.get_secret_value()
            != before.record.refresh_token.get_secret_value()
        )
        value = current.record.tokens[TOKEN_KEY].value.get_secret_value()
        assert fingerprint(value) == result["fingerprint"]
        assert peek_claims(value)["scope"] == "calendar.read"

    # A's refresh was dropped unprocessed when it died (400); B's was processed (200)
    with anyio.fail_after(10):
        while len(refreshes := await idp.token_requests("refresh_token")) < 2:  # noqa: ASYNC110
            await anyio.sleep(0.1)
    statuses = [r["status"] for r in sorted(refreshes, key=lambda r: r["at"])]
    assert statuses == [400, 200], refreshes
