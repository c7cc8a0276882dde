"""Rollback detection (issue 12, item 4): an older ciphertext of a row, written back by
someone with write access to the store, is refused with ``VaultRollback``.

Every test runs on the three stores (memory, SQLite, PostgreSQL), with the attacker
writing below the store's API (``tests/vault_store_suite.py``: ``raw_write`` sets any
version and blob under a key, ``raw_counter`` sets the store-wide version counter).
What is deliberately out of reach (a vault that never saw the newer row) is documented in
``docs/vault.md``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from pydantic import SecretStr
from vault_store_suite import BACKENDS, open_backend

from agent_identity.errors import VaultCorrupted, VaultRollback, VersionConflict
from agent_identity.vault import Cipher, GrantKey, GrantRecord, Keyring, TokenVault
from agent_identity.vault.crypto import MAGIC, MAGIC_BOUND

pytestmark = pytest.mark.anyio

KEYS = Keyring({"k1": bytes(range(32))}, "k1")
KEY = GrantKey("tenant-1", "alice", "https://as.example")
OTHER = GrantKey("tenant-1", "bob", "https://as.example")


@pytest.fixture(params=sorted(BACKENDS))
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    """A factory of store handles on one storage, with ``raw_write``/``raw_counter``."""
    async with open_backend(request.param, tmp_path) as factory:
        yield factory


def vault_on(backend: Any, **kwargs: Any) -> TokenVault:
    """A vault on a new handle of the shared storage: another process, in effect. (Its
    store is closed by the fixture.)"""
    return TokenVault(backend(), KEYS, **kwargs)


def record(rt: str) -> GrantRecord:
    return GrantRecord(
        issuer="https://as.example",
        subject="sub-1",
        scopes=("openid",),
        resources=(),
        refresh_token=SecretStr(rt),
    )


def rt_of(grant: Any) -> str:
    assert grant is not None
    return str(grant.record.refresh_token.get_secret_value())


async def test_replayed_older_row_is_refused_by_every_vault_that_saw_a_newer_one(
    backend: Any,
) -> None:
    writer, reader = vault_on(backend), vault_on(backend, cache_ttl=0)
    first = await writer.save(KEY, record("rt-1-rotated-away"), expected_version=0)
    old = await writer.store.get(KEY.storage_key)
    assert old is not None
    assert rt_of(await reader.load(KEY)) == "rt-1-rotated-away"
    second = await writer.save(KEY, record("rt-2-current"), expected_version=first.version)
    assert rt_of(await reader.load(KEY)) == "rt-2-current"

    backend.raw_write(KEY.storage_key, old.version, old.blob)  # the replay, version and all

    with pytest.raises(VaultRollback) as info:
        await writer.load(KEY, fresh=True)
    assert "rt-1" not in str(info.value)
    with pytest.raises(VaultRollback):
        await reader.load(KEY)  # revalidation of its cached view (cache_ttl=0)
    with pytest.raises(VaultRollback):
        await reader.load(KEY, fresh=True)
    assert reader.peek(KEY) is None  # nothing from the replayed row was cached
    # the row is left in place for inspection
    assert await writer.store.get(KEY.storage_key) == old
    assert second.version > old.version


async def test_old_ciphertext_under_a_forged_version_is_refused_even_by_a_new_vault(
    backend: Any,
) -> None:
    vault = vault_on(backend)
    first = await vault.save(KEY, record("rt-1-rotated-away"), expected_version=0)
    old = await vault.store.get(KEY.storage_key)
    assert old is not None
    second = await vault.save(KEY, record("rt-2-current"), expected_version=first.version)
    for forged in (second.version, second.version + 1000):
        backend.raw_write(KEY.storage_key, forged, old.blob)
        fresh = vault_on(backend)  # a new process: it has seen nothing of this row
        with pytest.raises(VaultRollback):
            await fresh.load(KEY)
        with pytest.raises(VaultRollback):
            await vault.load(KEY, fresh=True)
        # the version sealed in the blob is authenticated: rewriting it does not help
        stamp = old.version.to_bytes(8, "big")
        restamped = old.blob.replace(stamp, forged.to_bytes(8, "big"), 1)
        assert Cipher.sealed_version_of(restamped) == forged
        backend.raw_write(KEY.storage_key, forged, restamped)
        with pytest.raises(VaultCorrupted):
            await vault_on(backend).load(KEY)


async def test_a_deleted_grant_written_back_is_refused(backend: Any) -> None:
    """A disconnect deletes the row; writing the deleted row back (same version) must not
    resurrect the grant for the vault that deleted it, nor for one that saw it gone."""
    vault, observer = vault_on(backend), vault_on(backend)
    saved = await vault.save(KEY, record("rt-revoked"), expected_version=0)
    old = await vault.store.get(KEY.storage_key)
    assert old is not None
    assert rt_of(await observer.load(KEY)) == "rt-revoked"
    assert await vault.delete(KEY, expected_version=saved.version)
    assert await observer.load(KEY, fresh=True) is None  # it sees the row gone

    backend.raw_write(KEY.storage_key, old.version, old.blob)

    for who in (vault, observer):
        with pytest.raises(VaultRollback):
            await who.load(KEY, fresh=True)
    # a legitimate new consent gets a newer version and reads fine everywhere
    await vault.store.delete(KEY.storage_key)
    again = await vault.save(KEY, record("rt-new-consent"), expected_version=0)
    assert again.version > old.version
    assert rt_of(await observer.load(KEY, fresh=True)) == "rt-new-consent"


async def test_a_delete_without_version_also_raises_the_floor(backend: Any) -> None:
    vault = vault_on(backend)
    await vault.save(KEY, record("rt-revoked"), expected_version=0)
    old = await vault.store.get(KEY.storage_key)
    assert old is not None
    assert await vault.delete(KEY)
    backend.raw_write(KEY.storage_key, old.version, old.blob)
    with pytest.raises(VaultRollback):
        await vault.load(KEY)


async def test_a_version_counter_that_went_back_is_refused_on_write(backend: Any) -> None:
    """A restored backup (or tampering) resets the store's version counter: the store then
    gives a new write a version this vault has already seen."""
    vault, other = vault_on(backend), vault_on(backend)
    first = await vault.save(KEY, record("rt-1"), expected_version=0)
    await vault.save(KEY, record("rt-2"), expected_version=first.version)
    assert await other.delete(KEY)  # another process disconnects the user
    backend.raw_counter(0)
    assert await vault.load(KEY, fresh=True) is None
    with pytest.raises(VaultRollback):
        await vault.save(KEY, record("rt-3"), expected_version=0)


async def test_blob_rows_are_protected_too(backend: Any) -> None:
    vault = vault_on(backend)
    v1 = await vault.put_blob("ciba", "req-1", b"pending: not yet approved", expected_version=0)
    old = await vault.store.get("ciba:req-1")
    assert old is not None
    v2 = await vault.put_blob("ciba", "req-1", b"approved and used", expected_version=v1)
    assert (await vault.get_blob("ciba", "req-1")).version == v2  # type: ignore[union-attr]
    backend.raw_write("ciba:req-1", old.version, old.blob)
    with pytest.raises(VaultRollback):
        await vault.get_blob("ciba", "req-1")
    backend.raw_write("ciba:req-1", v2 + 50, old.blob)
    with pytest.raises(VaultRollback):
        await vault_on(backend).get_blob("ciba", "req-1")


async def test_rows_of_earlier_releases_still_open_and_are_upgraded(backend: Any) -> None:
    store = backend()
    legacy = Cipher(KEYS).encrypt(record("rt-legacy").to_bytes(), KEY.storage_key.encode())
    assert legacy.startswith(MAGIC)
    v1 = await store.put(KEY.storage_key, legacy, expected_version=0)
    other = Cipher(KEYS).encrypt(record("rt-other").to_bytes(), OTHER.storage_key.encode())
    await store.put(OTHER.storage_key, other, expected_version=0)

    vault = vault_on(backend)
    assert rt_of(await vault.load(KEY)) == "rt-legacy"
    saved = await vault.save(KEY, record("rt-next"), expected_version=v1)  # next write
    row = await store.get(KEY.storage_key)
    assert row is not None
    assert row.blob.startswith(MAGIC_BOUND)
    assert Cipher.sealed_version_of(row.blob) == row.version == saved.version
    # rotate_keys upgrades the rest, even under the current key
    assert await vault.rotate_keys() == 1
    row = await store.get(OTHER.storage_key)
    assert row is not None
    assert Cipher.sealed_version_of(row.blob) == row.version
    assert rt_of(await vault_on(backend).load(OTHER)) == "rt-other"
    assert await vault.rotate_keys() == 0


async def test_an_unbound_row_older_than_one_seen_is_refused(backend: Any) -> None:
    store = backend()
    legacy = Cipher(KEYS).encrypt(record("rt-legacy").to_bytes(), KEY.storage_key.encode())
    v1 = await store.put(KEY.storage_key, legacy, expected_version=0)
    vault = vault_on(backend)
    await vault.load(KEY)
    await vault.save(KEY, record("rt-next"), expected_version=v1)
    backend.raw_write(KEY.storage_key, v1, legacy)
    with pytest.raises(VaultRollback):
        await vault.load(KEY, fresh=True)


async def test_rotate_keys_does_not_launder_a_replayed_row(backend: Any) -> None:
    vault = vault_on(backend)
    first = await vault.save(KEY, record("rt-1-rotated-away"), expected_version=0)
    old = await vault.store.get(KEY.storage_key)
    assert old is not None
    second = await vault.save(KEY, record("rt-2"), expected_version=first.version)
    backend.raw_write(KEY.storage_key, second.version + 7, old.blob)
    rotated_keys = Keyring({"k1": bytes(range(32)), "k2": bytes(range(1, 33))}, "k2")
    rotating = TokenVault(backend(), rotated_keys)
    with pytest.raises(VaultCorrupted):
        await rotating.rotate_keys()
    row = await vault.store.get(KEY.storage_key)
    assert row is not None
    assert row.blob == old.blob  # not re-sealed under a fresh version
    with pytest.raises(VaultRollback):
        await vault_on(backend).load(KEY)


async def test_concurrent_readers_and_writers_never_see_a_false_rollback(backend: Any) -> None:
    """Reads that race with newer writes of the same vault (or another) return the older
    row they read: that is not a rollback. Many tasks, two vaults, one grant and one blob."""
    vaults = [vault_on(backend, cache_ttl=0), vault_on(backend, cache_ttl=0)]
    await vaults[0].save(KEY, record("rt-0"), expected_version=0)
    await vaults[0].put_blob("ciba", "r", b"0", expected_version=0)
    writes = 0

    async def worker(i: int) -> None:
        nonlocal writes
        vault = vaults[i % 2]
        for n in range(8):
            current = await vault.load(KEY, fresh=bool(n % 2))
            assert current is not None
            blob = await vault.get_blob("ciba", "r")
            assert blob is not None
            try:
                await vault.save(KEY, record(f"rt-{i}-{n}"), expected_version=current.version)
                await vault.put_blob(
                    "ciba", "r", f"{i}-{n}".encode(), expected_version=blob.version
                )
                writes += 1
            except VersionConflict:
                pass

    async with anyio.create_task_group() as tg:
        for i in range(12):
            tg.start_soon(worker, i)
    assert writes > 0
