"""The token vault across processes, against the real local authorization server.

Several OS processes (``_vault_worker.py``) share one SQLite vault file and one grant:
they must refresh it once between them (security item 25), also when the refresh takes
longer than the lease's ttl (the heartbeat keeps a live holder's lease), survive a refresh
holder killed mid-flight without a torn vault and be overtaken within the lease's ttl,
see a revocation made by another process within the vault's ``cache_ttl``, and a
restarted client must use the persisted grant with its persisted expiry (pain point 4).
Every vault here is an explicit SQLite file under ``tmp_path`` with a fixed test key; the
workers get the same file and key.
"""

from __future__ import annotations

import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from _vault_fixtures import (
    FailingConsent,
    grant_key,
    key_b64,
    keys,
    one_refresh_for_all,
    spawned,
    start_gated,
    start_worker,
    vault_client,
)
from _vault_worker import TYPED_ERROR_EXIT, Worker, fingerprint

from agent_identity.devidp import DevIdP
from agent_identity.oauth.jwt import peek_claims
from agent_identity.vault import Keyring, TokenVault

__all__ = ["key_b64", "keys", "spawned"]

pytestmark = [pytest.mark.anyio, pytest.mark.idp]

CALENDAR = "https://calendar.example/api"
READ = ["calendar.read"]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "vault.sqlite3"


async def _consent(idp: DevIdP, db: Path, keys: Keyring, tenant: str, scopes: list[str]) -> None:
    """alice consents once, in the test process, into the SQLite vault ``db``."""
    async with (
        TokenVault.sqlite(db, keys=keys) as vault,
        vault_client(idp, vault) as identity,
    ):
        grant = await identity.user("alice", tenant=tenant).consent(
            scopes=scopes, resource=CALENDAR
        )
        assert grant.has_refresh_token


def _lease_held(db: Path, name: str) -> bool:
    """Whether someone holds the lease ``name`` (read from the file, not taken)."""
    conn = sqlite3.connect(db, timeout=5)
    try:
        row = conn.execute(
            "SELECT 1 FROM leases WHERE name = ? AND expires_at > ?", (name, time.time())
        ).fetchone()
    finally:
        conn.close()
    return row is not None


async def _until_held(db: Path, name: str) -> float:
    """Wait until another process holds the lease ``name``; returns when it was seen."""
    with anyio.fail_after(10):
        while not _lease_held(db, name):  # noqa: ASYNC110 - another process
            await anyio.sleep(0.01)
    return time.monotonic()


async def test_sec_25_eight_processes_one_refresh(
    dev_idp: DevIdP,
    tmp_path: Path,
    db: Path,
    keys: Keyring,
    key_b64: str,
    spawned: list[Worker],
) -> None:
    """Eight processes, released together, ask for the same narrowed token that nobody
    holds yet: one of them refreshes (under the store lease), the seven others wait and
    read its result. A second refresh would reuse a rotated refresh token, which makes
    oidc-provider revoke the whole grant."""
    tenant = "sec25-procs"
    await _consent(dev_idp, db, keys, tenant, ["openid", "calendar.read", "calendar.write"])
    await dev_idp.clear_requests()
    results = await one_refresh_for_all(
        dev_idp,
        spawned,
        tmp_path,
        key_b64,
        8,
        issuer=dev_idp.issuer,
        db=db,
        tenant=tenant,
        user="alice",
        resource=CALENDAR,
        scopes=READ,
    )

    # the token they share is the one in the vault, and it is what was asked for
    async with TokenVault.sqlite(db, keys=keys) as vault:
        current = await vault.load(grant_key(tenant, dev_idp), fresh=True)
        assert current is not None
        stored = current.record.tokens[(CALENDAR, frozenset(READ))]
        value = stored.value.get_secret_value()
        assert fingerprint(value) == results[0]["fingerprint"]
        claims = peek_claims(value)
        assert claims["aud"] == CALENDAR
        assert claims["scope"] == "calendar.read"
        assert claims["exp"] > time.time()


async def test_sec_25_thousand_concurrent_callers_one_refresh(
    dev_idp_factory: Any, db: Path, keys: Keyring
) -> None:
    """1,000 tasks of one process ask for a token that is about to expire (real expiry:
    the server issues 4 s tokens, the client refreshes in the last half of their life):
    exactly one refresh request reaches the server and all get its token."""
    idp: DevIdP = dev_idp_factory(access_token_ttl=4)
    async with (
        TokenVault.sqlite(db, keys=keys) as vault,
        vault_client(idp, vault) as identity,
    ):
        alice = identity.user("alice", tenant="sec25-tasks")
        await alice.consent(scopes=["openid", *READ], resource=CALENDAR)
        old = await alice.token(resource=CALENDAR, scopes=READ)
        assert old.expires_at is not None
        lifetime = old.expires_at - old.received_at
        assert 3 <= lifetime <= 4.5
        # past half the lifetime: expiring (refresh buffer = min(60 s, lifetime / 2))
        await anyio.sleep(
            max(0.0, old.received_at + lifetime / 2 + 0.1 - identity.clock.monotonic())
        )
        await idp.clear_requests()

        tokens: list[str] = []

        async def caller() -> None:
            token = await alice.token(resource=CALENDAR, scopes=READ)
            tokens.append(token.value.get_secret_value())

        with anyio.fail_after(15):
            async with anyio.create_task_group() as tg:
                for _ in range(1000):
                    tg.start_soon(caller)

        refreshes = await idp.token_requests("refresh_token")
        assert len(refreshes) == 1, refreshes
        assert len(tokens) == 1000
        assert len(set(tokens)) == 1
        assert tokens[0] != old.value.get_secret_value()
        assert peek_claims(tokens[0])["exp"] > time.time()


async def test_sigkill_during_refresh_leaves_vault_consistent(
    dev_idp_factory: Any,
    tmp_path: Path,
    db: Path,
    keys: Keyring,
    key_b64: str,
    spawned: list[Worker],
) -> None:
    """A worker is SIGKILLed while its refresh request is in flight.

    The server holds every refresh 6 s (``refresh_delay``) and drops it unprocessed when
    the client has gone away, so the killed refresh never happened. The worker's refresh
    lease has a 2 s ttl: it still holds it 3 s in (its heartbeat renews it every ttl / 3).
    Once it is killed, its lease blocks others at most the ttl; the vault row is intact
    (same version, same refresh token), and the next ``token()`` refreshes once.

    Real-world caveat: had the authorization server processed the killed refresh, it would
    have rotated the refresh token, and the new one died with the worker (nothing is
    written before the response arrives). The next refresh, with the stored predecessor,
    then gets ``invalid_grant`` and the caller a typed ``ReauthorizationRequired`` (the
    user must consent again): never a torn or half-written vault row.
    """
    lease_ttl = 2.0
    tenant = "sigkill"
    idp: DevIdP = dev_idp_factory(refresh_delay=6)
    await _consent(idp, db, keys, tenant, ["openid", "calendar.read", "calendar.write"])
    key = grant_key(tenant, idp)
    async with TokenVault.sqlite(db, keys=keys) as vault:
        before = await vault.load(key, fresh=True)
        assert before is not None
        assert before.record.refresh_token is not None
        assert (CALENDAR, frozenset(READ)) not in before.record.tokens  # a refresh is needed

        await idp.clear_requests()
        start = tmp_path / "go"
        worker = await start_worker(
            spawned,
            tmp_path,
            key_b64,
            issuer=idp.issuer,
            db=db,
            tenant=tenant,
            user="alice",
            resource=CALENDAR,
            scopes=READ,
            start_file=start,
            lease_ttl=lease_ttl,
        )
        await worker.expect("ready")
        start.touch()
        lease = f"refresh:{key.storage_key}"
        taken = await _until_held(db, lease)
        # past its ttl, the worker still holds the lease (renewed while it waits for the
        # server's answer)
        await anyio.sleep(max(0.0, taken + 1.5 * lease_ttl - time.monotonic()))
        assert _lease_held(db, lease)
        assert worker.process.returncode is None
        worker.process.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        assert await worker.wait() == -signal.SIGKILL

        # the row still loads and decrypts, unchanged
        after = await vault.load(key, fresh=True)
        assert after is not None
        assert after.version == before.version
        assert after.record.refresh_token is not None
        assert (
            after.record.refresh_token.get_secret_value()
            == before.record.refresh_token.get_secret_value()
        )
        assert after.record.tokens.keys() == before.record.tokens.keys()

        # the dead holder's lease blocks at most its ttl after its last renewal
        async with vault.lease(lease, ttl=1, wait=lease_ttl + 5):
            waited = time.monotonic() - killed
        assert waited <= lease_ttl + 0.5, waited

    async with (
        TokenVault.sqlite(db, keys=keys) as vault,
        vault_client(idp, vault, consent=FailingConsent()) as identity,
    ):
        alice = identity.user("alice", tenant=tenant)
        with anyio.fail_after(15):
            token = await alice.token(resource=CALENDAR, scopes=READ)
        assert peek_claims(token.value.get_secret_value())["scope"] == "calendar.read"
        refreshed = await vault.load(key, fresh=True)
        assert refreshed is not None
        assert refreshed.version > before.version
        assert refreshed.record.refresh_token is not None
        assert (
            refreshed.record.refresh_token.get_secret_value()
            != before.record.refresh_token.get_secret_value()
        )

    # the server saw two refresh requests: the killed one, dropped unprocessed (400,
    # invalid_request), and ours, processed (200)
    with anyio.fail_after(10):
        while len(refreshes := await idp.token_requests("refresh_token")) < 2:  # noqa: ASYNC110
            await anyio.sleep(0.1)
    statuses = [r["status"] for r in sorted(refreshes, key=lambda r: r["at"])]
    assert statuses == [400, 200], refreshes


async def test_sec_25_refresh_longer_than_the_lease_ttl_still_runs_once(
    dev_idp_factory: Any,
    tmp_path: Path,
    db: Path,
    keys: Keyring,
    key_b64: str,
    spawned: list[Worker],
) -> None:
    """The server takes 4 s to answer a refresh, the refresh lease lives 1.5 s: worker A's
    heartbeat renews it while A waits, so worker B, started once A holds it, waits for A
    instead of overtaking it (B's refresh would reuse A's refresh token, and
    oidc-provider would revoke the grant). One refresh request; both get its token."""
    lease_ttl = 1.5
    tenant = "slow-refresh"
    idp: DevIdP = dev_idp_factory(refresh_delay=4)
    await _consent(idp, db, keys, tenant, ["openid", "calendar.read", "calendar.write"])
    key = grant_key(tenant, idp)
    await idp.clear_requests()
    options: dict[str, Any] = {
        "issuer": idp.issuer,
        "db": db,
        "tenant": tenant,
        "user": "alice",
        "resource": CALENDAR,
        "scopes": READ,
        "lease_ttl": lease_ttl,
    }
    (a, go_a), (b, go_b) = await start_gated(spawned, tmp_path, key_b64, 2, **options)
    go_a.touch()
    await _until_held(db, f"refresh:{key.storage_key}")
    go_b.touch()
    results = [await a.expect("result"), await b.expect("result")]
    assert [await a.wait(), await b.wait()] == [0, 0], [a.stderr_tail(), b.stderr_tail()]
    assert all(r["ok"] for r in results), results
    assert results[0]["fingerprint"] == results[1]["fingerprint"]
    assert results[1]["finished_at"] - results[1]["started_at"] > lease_ttl  # B waited
    refreshes = await idp.token_requests("refresh_token")
    assert [r["status"] for r in refreshes] == [200], refreshes


async def test_revocation_in_one_process_honoured_by_another_within_cache_ttl(
    dev_idp: DevIdP,
    tmp_path: Path,
    db: Path,
    keys: Keyring,
    key_b64: str,
    spawned: list[Worker],
) -> None:
    """A worker holds a warm token (vault ``cache_ttl`` 0.5 s) and asks for it every
    10 ms; the test process disconnects the user (RFC 7009 revocation, then the row is
    deleted). Bound: the worker stops serving the old token at most ``cache_ttl`` after
    the row is gone (plus one poll interval): its cached view of the grant is trusted for
    ``cache_ttl`` only, then the store says the grant is gone and the worker would need a
    new consent, which it cannot run (typed ``ConsentRequired``). The access token already
    handed out stays valid at resources until its own expiry: a self-contained JWT is not
    recalled by revoking the grant."""
    cache_ttl = 0.5
    tenant = "revocation"
    await _consent(dev_idp, db, keys, tenant, ["openid", *READ])
    worker = await start_worker(
        spawned,
        tmp_path,
        key_b64,
        issuer=dev_idp.issuer,
        db=db,
        tenant=tenant,
        user="alice",
        resource=CALENDAR,
        scopes=READ,
        mode="watch",
        cache_ttl=cache_ttl,
        interval=0.01,
        deadline=10,
    )
    await worker.expect("ready")
    warm = await worker.expect("warm")
    assert warm["ok"], warm

    async with (
        TokenVault.sqlite(db, keys=keys) as vault,
        vault_client(dev_idp, vault) as identity,
    ):
        await anyio.sleep(0.3)  # the worker is serving from its hot path now
        before = time.time()
        await identity.user("alice", tenant=tenant).disconnect()
        gone = time.time()
        assert await vault.load(grant_key(tenant, dev_idp), fresh=True) is None

    changed = await worker.expect("changed")
    assert await worker.wait() == TYPED_ERROR_EXIT
    assert changed["error"] == "ConsentRequired"
    assert changed["at"] > before
    assert changed["at"] - gone <= cache_ttl + 0.5, changed["at"] - gone
    revocations = [r for r in await dev_idp.requests() if r["route"] == "revocation"]
    assert revocations
    assert revocations[-1]["status"] == 200


async def test_restart_uses_persisted_grant(dev_idp_factory: Any, db: Path, keys: Keyring) -> None:
    """After a restart the grant and its cached token come from the SQLite file, without
    consent; the token's expiry is recomputed from the persisted epoch, so a token past
    its refresh point is refreshed, not served stale (pain point 4)."""
    idp: DevIdP = dev_idp_factory(access_token_ttl=6)
    tenant = "restart"
    async with (
        TokenVault.sqlite(db, keys=keys) as vault,
        vault_client(idp, vault) as identity,
    ):
        alice = identity.user("alice", tenant=tenant)
        await alice.consent(scopes=["openid", *READ], resource=CALENDAR)
        first = await alice.token(resource=CALENDAR, scopes=READ)
        first_value = first.value.get_secret_value()
        stored = await vault.load(alice.key, fresh=True)
        assert stored is not None
        cached = stored.record.tokens[(CALENDAR, frozenset(READ))]
        assert cached.expires_at is not None
    await idp.clear_requests()

    # restart 1: within the token's first half-life it is served from the vault as is
    handler = FailingConsent()
    async with (
        TokenVault.sqlite(db, keys=keys) as vault,
        vault_client(idp, vault, consent=handler) as identity,
    ):
        again = await identity.user("alice", tenant=tenant).token(resource=CALENDAR, scopes=READ)
        assert again.value.get_secret_value() == first_value
        assert again.expires_at is not None
        remaining = again.expires_at - identity.clock.monotonic()
        assert abs(remaining - (cached.expires_at - time.time())) < 0.25
        assert abs((again.expires_at - again.received_at) - 6) < 0.25
    assert await idp.token_requests() == []

    # restart 2: past the refresh point (half of the 6 s lifetime) it is refreshed
    await anyio.sleep(max(0.0, cached.issued_at + 3.2 - time.time()))
    async with (
        TokenVault.sqlite(db, keys=keys) as vault,
        vault_client(idp, vault, consent=handler) as identity,
    ):
        fresh = await identity.user("alice", tenant=tenant).token(resource=CALENDAR, scopes=READ)
        assert fresh.value.get_secret_value() != first_value
        claims = peek_claims(fresh.value.get_secret_value())
        assert claims["exp"] - time.time() > 4
        assert fresh.expires_at is not None
        assert fresh.expires_at - identity.clock.monotonic() > 4
    assert handler.calls == 0
    requests = await idp.token_requests()
    assert [r["grant_type"] for r in requests] == ["refresh_token"]
    assert requests[0]["status"] == 200
