"""TokenVault: encrypted grants, cache and revalidation, leases, rotation (items 25, 26)."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from pydantic import SecretStr

from agent_identity.errors import (
    ConfigurationError,
    VaultCorrupted,
    VaultKeyError,
    VaultUnavailable,
    VersionConflict,
)
from agent_identity.vault import (
    DEFAULT_LEASE_TTL,
    CachedToken,
    Cipher,
    GrantKey,
    GrantRecord,
    Keyring,
    MemoryStore,
    SQLiteStore,
    StoredRow,
    TokenVault,
    VersionedGrant,
)
from agent_identity.vault.crypto import ENV_VAR, KEY_FILE_NAME

pytestmark = pytest.mark.anyio

K_OLD = bytes(range(32))
K_NEW = bytes(range(100, 132))
KEY = GrantKey("tenant-1", "alice", "https://as.example")
CANARY_RT = "canary-rt-7c1e5a0d"
CANARY_AT = "canary-at-92bb14f3"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return 1_700_000_000.0 + self.now


class CountingStore(MemoryStore):
    """A MemoryStore that counts reads, to prove what the cache saves."""

    def __init__(self) -> None:
        super().__init__()
        self.gets = 0
        self.versions = 0

    async def get(self, key: str) -> StoredRow | None:
        self.gets += 1
        return await super().get(key)

    async def version(self, key: str) -> int | None:
        self.versions += 1
        return await super().version(key)


def record(rt: str = CANARY_RT, at: str = CANARY_AT, n: int = 0) -> GrantRecord:
    token = CachedToken(
        "https://api.example/", frozenset({"read"}), SecretStr(at), "Bearer", 2e9, 1.7e9
    )
    return GrantRecord(
        issuer="https://as.example",
        subject="sub-1",
        scopes=("openid", "read"),
        resources=("https://api.example/",),
        refresh_token=SecretStr(rt),
        tokens={token.key: token},
        id_token_claims={"sub": "sub-1", "n": n},
        created_at=1.7e9,
        updated_at=1.7e9 + n,
    )


def old_keys() -> Keyring:
    return Keyring({"old": K_OLD}, "old")


def rotated_keys() -> Keyring:
    return Keyring({"new": K_NEW, "old": K_OLD}, "new")


VaultMaker = Callable[..., TokenVault]


@pytest.fixture(params=["memory", "sqlite"])
async def make_vault(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[VaultMaker]:
    """Opens vaults that share one storage (one MemoryStore, or one SQLite file)."""
    shared = MemoryStore()
    opened: list[TokenVault] = []

    def make(keys: Keyring | None = None, **kw: Any) -> TokenVault:
        keys = keys or old_keys()
        if request.param == "memory":
            vault = TokenVault(shared, keys, **kw)
        else:
            vault = TokenVault(SQLiteStore(tmp_path / "v.sqlite3"), keys, **kw)
        opened.append(vault)
        return vault

    yield make
    for vault in opened:
        await vault.aclose()


# -- basic -----------------------------------------------------------------------------------


async def test_save_load_round_trip(make_vault: VaultMaker) -> None:
    vault = make_vault()
    assert await vault.load(KEY) is None
    saved = await vault.save(KEY, record(), expected_version=0)
    assert saved.record == record()
    assert saved.version >= 1
    assert await vault.load(KEY) == saved
    assert await vault.load(KEY, fresh=True) == saved
    other = make_vault()  # no cache: reads and decrypts the row
    assert await other.load(KEY) == saved


async def test_save_conflict_propagates_and_invalidates(make_vault: VaultMaker) -> None:
    one, two = make_vault(), make_vault()
    v1 = await one.save(KEY, record(n=1), expected_version=0)
    assert one.peek(KEY) == v1
    v2 = await two.save(KEY, record(n=2), expected_version=v1.version)
    with pytest.raises(VersionConflict):
        await one.save(KEY, record(n=3), expected_version=v1.version)
    assert one.peek(KEY) is None  # the stale entry is gone
    assert await one.load(KEY) == v2
    with pytest.raises(VersionConflict):
        await one.save(KEY, record(), expected_version=0)


async def test_delete(make_vault: VaultMaker) -> None:
    vault = make_vault()
    saved = await vault.save(KEY, record(), expected_version=0)
    with pytest.raises(VersionConflict):
        await vault.delete(KEY, expected_version=saved.version + 99)
    assert await vault.delete(KEY, expected_version=saved.version) is True
    assert vault.peek(KEY) is None
    assert await vault.load(KEY) is None
    assert await vault.delete(KEY) is False


async def test_invalid_arguments() -> None:
    vault = TokenVault.memory()
    with pytest.raises(ConfigurationError):
        await vault.load(("t", "u", "c"))  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        await vault.save(KEY, {"issuer": "x"}, expected_version=0)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        TokenVault(MemoryStore(), old_keys(), cache_ttl=-1)
    with pytest.raises(ConfigurationError):
        TokenVault(MemoryStore(), object())  # type: ignore[arg-type]


# -- cache: peek / load / revalidation ---------------------------------------------------------


async def test_peek_serves_only_within_cache_ttl() -> None:
    clock = FakeClock()
    vault = TokenVault(MemoryStore(), old_keys(), cache_ttl=1.0, clock=clock)
    assert vault.peek(KEY) is None
    saved = await vault.save(KEY, record(), expected_version=0)
    assert vault.peek(KEY) == saved
    clock.now += 0.99
    assert vault.peek(KEY) == saved
    clock.now += 0.02
    assert vault.peek(KEY) is None
    assert await vault.load(KEY) == saved  # revalidated: warm again
    assert vault.peek(KEY) == saved
    vault.invalidate(KEY)
    assert vault.peek(KEY) is None


async def test_load_revalidates_by_version_and_rereads_only_on_change() -> None:
    clock = FakeClock()
    store = CountingStore()
    vault = TokenVault(store, old_keys(), cache_ttl=1.0, clock=clock)
    writer = TokenVault(store, old_keys())
    v1 = await writer.save(KEY, record(n=1), expected_version=0)
    assert await vault.load(KEY) == v1
    assert (store.gets, store.versions) == (1, 0)
    assert await vault.load(KEY) == v1  # within ttl: no I/O
    assert (store.gets, store.versions) == (1, 0)
    clock.now += 2
    assert await vault.load(KEY) == v1  # unchanged: one version query, no read
    assert (store.gets, store.versions) == (1, 1)
    v2 = await writer.save(KEY, record(n=2), expected_version=v1.version)
    assert await vault.load(KEY) == v1  # still within ttl of the last validation
    clock.now += 2
    assert await vault.load(KEY) == v2  # changed: re-read
    assert (store.gets, store.versions) == (2, 2)
    await vault.load(KEY, fresh=True)
    assert store.gets == 3


async def test_cross_instance_revocation_seen_within_cache_ttl(tmp_path: Path) -> None:
    # Two vaults on one SQLite file are two processes' views (separate connections).
    path = tmp_path / "shared.sqlite3"
    clock = FakeClock()
    reader = TokenVault.sqlite(path, keys=old_keys(), cache_ttl=0.5, clock=clock)
    revoker = TokenVault.sqlite(path, keys=old_keys())
    try:
        saved = await revoker.save(KEY, record(), expected_version=0)
        assert await reader.load(KEY) == saved
        assert await revoker.delete(KEY) is True
        clock.now += 0.6
        assert reader.peek(KEY) is None
        assert await reader.load(KEY) is None
        # and a re-created grant is never mistaken for the revoked one
        again = await revoker.save(KEY, record(rt="new-rt"), expected_version=0)
        assert again.version != saved.version
        clock.now += 0.6
        loaded = await reader.load(KEY)
        assert loaded is not None
        assert loaded.record.refresh_token == SecretStr("new-rt")
    finally:
        await reader.aclose()
        await revoker.aclose()


async def test_cross_instance_revocation_real_clock(tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite3"
    async with (
        TokenVault.sqlite(path, keys=old_keys(), cache_ttl=0.05) as reader,
        TokenVault.sqlite(path, keys=old_keys()) as revoker,
    ):
        await revoker.save(KEY, record(), expected_version=0)
        assert await reader.load(KEY) is not None
        await revoker.delete(KEY)
        await anyio.sleep(0.06)
        assert await reader.load(KEY) is None


async def test_cancelled_save_leaves_no_stale_cache() -> None:
    vault = TokenVault(MemoryStore(), old_keys(), cache_ttl=60)
    saved = await vault.save(KEY, record(n=1), expected_version=0)
    with anyio.CancelScope() as scope:
        scope.cancel()
        await vault.save(KEY, record(n=2), expected_version=saved.version)
    assert vault.peek(KEY) is None
    assert (await vault.load(KEY)) is not None


# -- security items 25, 26 --------------------------------------------------------------------


async def test_sec_26_row_swapped_between_users_refused(make_vault: VaultMaker) -> None:
    vault = make_vault()
    alice = GrantKey("t1", "alice", "https://as.example")
    mallory = GrantKey("t1", "mallory", "https://as.example")
    other_tenant = GrantKey("t2", "alice", "https://as.example")
    other_conn = GrantKey("t1", "alice", "https://other-as.example")
    await vault.save(alice, record(), expected_version=0)
    row = await vault.store.get(alice.storage_key)
    assert row is not None
    for target in (mallory, other_tenant, other_conn):
        await vault.store.put(target.storage_key, row.blob, expected_version=0)
        with pytest.raises(VaultCorrupted) as info:
            await vault.load(target)
        assert not isinstance(info.value, VaultKeyError)
        assert CANARY_RT not in str(info.value)
    assert (await vault.load(alice)) is not None


async def test_sec_26_grants_listing_is_partitioned(make_vault: VaultMaker) -> None:
    vault = make_vault()
    keys = [
        GrantKey(t, u, c)
        for t in ("a", "ab", "a,")
        for u in ("u", "u2", 'u"', "u,", "ü")
        for c in ("https://as1.example", "https://as2.example")
    ]
    for key in keys:
        await vault.save(key, record(), expected_version=0)
    for t in ("a", "ab", "a,"):
        for u in ("u", "u2", 'u"', "u,", "ü"):
            listed = await vault.grants(t, u)
            assert listed == [k for k in keys if (k.tenant, k.user) == (t, u)]
    assert await vault.grants("a", "nobody") == []


async def test_sec_26_equal_user_ids_get_their_own_tokens(make_vault: VaultMaker) -> None:
    vault = make_vault()
    one = GrantKey("tenant-1", "alice", "https://as.example")
    two = GrantKey("tenant-2", "alice", "https://as.example")
    await vault.save(one, record(rt="rt-tenant-1"), expected_version=0)
    await vault.save(two, record(rt="rt-tenant-2"), expected_version=0)
    fresh = make_vault()
    got1, got2 = await fresh.load(one), await fresh.load(two)
    assert got1 is not None
    assert got2 is not None
    assert got1.record.refresh_token == SecretStr("rt-tenant-1")
    assert got2.record.refresh_token == SecretStr("rt-tenant-2")


def _raw_files(directory: Path) -> tuple[list[str], bytes]:
    """The database, its WAL and shared-memory files, concatenated."""
    files = sorted(p for p in directory.iterdir() if p.name.startswith("vault.sqlite3"))
    return [p.name for p in files], b"".join(p.read_bytes() for p in files)


async def test_sec_25_sqlite_file_contains_no_plaintext_token(tmp_path: Path) -> None:
    path = tmp_path / "vault.sqlite3"
    canaries = [f"{CANARY_RT}-{i}" for i in range(20)] + [f"{CANARY_AT}-{i}" for i in range(20)]
    vault = TokenVault.sqlite(path, keys=old_keys())
    try:
        for i in range(20):
            key = GrantKey("t", f"user-{i}", "https://as.example")
            saved = await vault.save(
                key, record(rt=canaries[i], at=canaries[20 + i]), expected_version=0
            )
            assert canaries[i].encode() in saved.record.to_bytes()  # the canary is real
            await vault.put_blob("ciba", f"req-{i}", canaries[i].encode(), expected_version=0)
        names, raw = _raw_files(tmp_path)
        assert any(name.endswith("-wal") for name in names)  # WAL not yet checkpointed
        assert len(raw) > 0
        for canary in canaries:
            assert canary.encode() not in raw
            assert canary.encode("utf-16-le") not in raw
    finally:
        await vault.aclose()
    _, raw = _raw_files(tmp_path)
    assert not any(c.encode() in raw for c in canaries)


async def test_no_secret_in_repr_of_vault_objects(make_vault: VaultMaker) -> None:
    vault = make_vault()
    saved = await vault.save(KEY, record(), expected_version=0)
    row = await vault.store.get(KEY.storage_key)
    texts = [repr(vault), repr(vault.store), repr(saved), str(saved), repr(row)]
    for text in texts:
        assert CANARY_RT not in text
        assert CANARY_AT not in text
        assert repr(K_OLD) not in text


# -- generic encrypted rows --------------------------------------------------------------------


async def test_blobs(make_vault: VaultMaker) -> None:
    vault = make_vault()
    assert await vault.get_blob("ciba", "req-1") is None
    v1 = await vault.put_blob("ciba", "req-1", b"secret-payload", expected_version=0)
    await vault.put_blob("ciba", "req-2", b"two", expected_version=0)
    await vault.put_blob("mcp", "req-1", b"other kind", expected_version=0)
    got = await vault.get_blob("ciba", "req-1")
    assert got is not None
    assert got == (v1, b"secret-payload")
    with pytest.raises(VersionConflict):
        await vault.put_blob("ciba", "req-1", b"x", expected_version=0)
    assert await vault.blob_names("ciba") == ["req-1", "req-2"]
    assert await vault.blob_names("ciba", "req-2") == ["req-2"]
    assert await vault.grants("t", "u") == []
    raw = await vault.store.get("ciba:req-1")
    assert raw is not None
    assert b"secret-payload" not in raw.blob
    # a row moved to another name does not decrypt
    await vault.store.put("ciba:req-3", raw.blob, expected_version=0)
    with pytest.raises(VaultCorrupted):
        await vault.get_blob("ciba", "req-3")
    assert await vault.delete_blob("ciba", "req-1", expected_version=v1) is True
    assert await vault.get_blob("ciba", "req-1") is None
    for kind in ("grant", "", "Bad", "x:y"):
        with pytest.raises(ConfigurationError):
            await vault.get_blob(kind, "n")
    with pytest.raises(ConfigurationError):
        await vault.get_blob("ciba", "")


# -- leases ------------------------------------------------------------------------------------


async def test_lease_single_flight_across_vaults(make_vault: VaultMaker) -> None:
    vaults = [make_vault() for _ in range(3)]
    await vaults[0].save(KEY, record(n=0), expected_version=0)
    refreshes = 0
    inside = 0

    async def caller(i: int) -> None:
        nonlocal refreshes, inside
        vault = vaults[i % 3]
        async with vault.lease("refresh:" + KEY.storage_key, ttl=10, wait=10):
            inside += 1
            assert inside == 1
            current = await vault.load(KEY, fresh=True)
            assert current is not None
            if current.record.id_token_claims["n"] == 0:  # "expired": refresh once
                refreshes += 1
                await anyio.sleep(0.01)
                await vault.save(KEY, record(n=1), expected_version=current.version)
            inside -= 1

    async with anyio.create_task_group() as tg:
        for i in range(12):
            tg.start_soon(caller, i)
    assert refreshes == 1


async def test_lease_wait_timeout_raises_vault_unavailable(make_vault: VaultMaker) -> None:
    one, two = make_vault(), make_vault()
    async with one.lease("n", ttl=10, wait=1):
        start = anyio.current_time()
        with pytest.raises(VaultUnavailable):
            async with two.lease("n", ttl=10, wait=0.15):
                pytest.fail("lease must not be granted")
        assert 0.14 <= anyio.current_time() - start < 2
    async with two.lease("n", ttl=10, wait=0):  # released on exit
        pass


async def test_lease_released_on_error_and_cancellation(make_vault: VaultMaker) -> None:
    one, two = make_vault(), make_vault()
    with pytest.raises(RuntimeError):
        async with one.lease("n", ttl=10, wait=1):
            raise RuntimeError("boom")
    async with two.lease("n", ttl=10, wait=0):
        pass
    with anyio.move_on_after(0.05):
        async with one.lease("n", ttl=10, wait=1):
            await anyio.sleep(5)
    async with two.lease("n", ttl=10, wait=0):
        pass


async def test_lease_cancelled_while_waiting_does_not_leak(make_vault: VaultMaker) -> None:
    one, two = make_vault(), make_vault()
    async with one.lease("n", ttl=10, wait=1):
        with anyio.move_on_after(0.1):
            async with two.lease("n", ttl=10, wait=5):
                pytest.fail("lease must not be granted")
    async with make_vault().lease("n", ttl=10, wait=0):
        pass


async def test_lease_reentrant_in_same_task(make_vault: VaultMaker) -> None:
    vault, other = make_vault(), make_vault()
    async with vault.lease("n", ttl=10, wait=0):
        async with vault.lease("n", ttl=10, wait=0):
            pass
        # still held after the inner exit
        with pytest.raises(VaultUnavailable):
            async with other.lease("n", ttl=10, wait=0):
                pass
    async with other.lease("n", ttl=10, wait=0):
        pass


async def test_lease_of_crashed_holder_expires(make_vault: VaultMaker) -> None:
    vault = make_vault()
    assert await vault.store.acquire_lease("n", "crashed-process", ttl=0.1)
    start = anyio.current_time()
    async with vault.lease("n", ttl=10, wait=3):
        assert anyio.current_time() - start >= 0.05


async def test_lease_default_ttl_is_short() -> None:
    store = MemoryStore()
    vault = TokenVault(store, old_keys())
    async with vault.lease("n", wait=0):
        _holder, expires = store._leases["n"]
        assert abs(expires - time.time() - DEFAULT_LEASE_TTL) < 1
    assert DEFAULT_LEASE_TTL <= 10


async def test_lease_heartbeat_keeps_a_body_longer_than_the_ttl_exclusive(
    make_vault: VaultMaker,
) -> None:
    holder, other = make_vault(), make_vault()
    attempts: list[bool] = []

    async def contender() -> None:
        for at in (0.5, 0.9):  # past the 0.3 s ttl, twice
            await anyio.sleep(at - (anyio.current_time() - start))
            try:
                async with other.lease("n", ttl=0.3, wait=0):
                    attempts.append(True)
            except VaultUnavailable:
                attempts.append(False)

    start = anyio.current_time()
    async with anyio.create_task_group() as tg, holder.lease("n", ttl=0.3, wait=0):
        tg.start_soon(contender)
        await anyio.sleep(1.2)
    assert attempts == [False, False]
    async with other.lease("n", ttl=0.3, wait=0):  # released on exit
        pass


async def test_lease_taken_by_another_holder_cancels_the_body() -> None:
    store = MemoryStore()
    vault = TokenVault(store, old_keys())
    reached: list[bool] = []

    async def body() -> None:
        async with vault.lease("n", ttl=0.3, wait=0):
            # another holder has it now (as after an expiry this holder did not notice)
            store._leases["n"] = ("intruder", time.time() + 60)
            await anyio.sleep(5)
            reached.append(True)

    start = anyio.current_time()
    with pytest.raises(VaultUnavailable, match="lost"):
        await body()
    assert not reached
    assert anyio.current_time() - start < 0.3 + 0.2  # at the next renewal (every ttl / 3)
    assert store._leases["n"][0] == "intruder"  # ours was not released over theirs


class FlakyLeaseStore(MemoryStore):
    """Renewals (acquire by the current holder) fail with VaultUnavailable while
    ``failing`` is positive (each failure decrements it)."""

    def __init__(self) -> None:
        super().__init__()
        self.failing = 0
        self.failures = 0

    async def acquire_lease(self, name: str, holder: str, ttl: float) -> bool:
        held = self._leases.get(name)
        if self.failing and held is not None and held[0] == holder:
            self.failing -= 1
            self.failures += 1
            raise VaultUnavailable("store down")
        return await super().acquire_lease(name, holder, ttl)


async def test_lease_not_renewed_for_its_ttl_cancels_the_body() -> None:
    store = FlakyLeaseStore()
    vault = TokenVault(store, old_keys())
    store.failing = 1000
    start = anyio.current_time()
    with pytest.raises(VaultUnavailable, match="lost"):
        async with vault.lease("n", ttl=0.4, wait=0):
            await anyio.sleep(5)
    elapsed = anyio.current_time() - start
    assert 0.35 <= elapsed < 0.8, elapsed  # when the lease may lapse, not later
    assert store.failures >= 2  # retried every ttl / 10 meanwhile


async def test_lease_survives_a_failed_renewal() -> None:
    store = FlakyLeaseStore()
    vault, other = TokenVault(store, old_keys()), TokenVault(store, old_keys())
    store.failing = 1
    async with vault.lease("n", ttl=0.3, wait=0):
        await anyio.sleep(0.5)
        with pytest.raises(VaultUnavailable):
            async with other.lease("n", ttl=0.3, wait=0):
                pass
        await anyio.sleep(0.3)
    assert store.failures == 1


async def test_lease_heartbeat_outlives_the_callers_cancellation_in_a_shielded_body(
    make_vault: VaultMaker,
) -> None:
    """A caller is cancelled while its body finishes a shielded section (a refresh whose
    result must be stored): the lease stays held, renewed, until the body exits."""
    holder, other = make_vault(), make_vault()
    seen: list[bool] = []

    async def contender() -> None:
        await anyio.sleep(0.7)  # > 2 ttl after the caller's cancellation
        try:
            async with other.lease("n", ttl=0.3, wait=0):
                seen.append(False)
        except VaultUnavailable:
            seen.append(True)

    async with anyio.create_task_group() as tg:
        tg.start_soon(contender)
        with anyio.move_on_after(0.05) as scope:
            async with holder.lease("n", ttl=0.3, wait=0):
                with anyio.CancelScope(shield=True):
                    await anyio.sleep(1.0)
                pytest.fail("cancelled at the end of the shielded section")
        assert scope.cancelled_caught
    assert seen == [True]


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_lease_errors_are_not_wrapped_in_exception_groups() -> None:
    vault = TokenVault.memory()
    with pytest.raises(KeyError):
        async with vault.lease("n", ttl=1, wait=0):
            raise KeyError("body error")
    with anyio.move_on_after(0.05) as scope:
        async with vault.lease("n", ttl=1, wait=0):
            await anyio.sleep(1)
    assert scope.cancelled_caught
    async with vault.lease("n", ttl=1, wait=0):  # released each time
        pass


async def test_lease_arguments() -> None:
    vault = TokenVault.memory()
    for kw in ({"ttl": 0, "wait": 1}, {"ttl": 1, "wait": -1}, {"ttl": float("inf"), "wait": 1}):
        with pytest.raises(ConfigurationError):
            async with vault.lease("n", **kw):
                pass


# -- key rotation ------------------------------------------------------------------------------


async def _kids(vault: TokenVault) -> set[str]:
    kids = set()
    for key in await vault.store.keys():
        row = await vault.store.get(key)
        assert row is not None
        kids.add(Cipher.key_id_of(row.blob))
    return kids


async def test_rotate_keys(make_vault: VaultMaker) -> None:
    before = make_vault(old_keys())
    keys = [GrantKey("t", f"u{i}", "https://as.example") for i in range(10)]
    for i, key in enumerate(keys):
        await before.save(key, record(n=i), expected_version=0)
    await before.put_blob("ciba", "r", b"payload", expected_version=0)
    assert await _kids(before) == {"old"}

    during = make_vault(rotated_keys())
    assert (await during.load(keys[3])) is not None  # old rows readable before rotation
    warm = await during.load(keys[0])
    assert await during.rotate_keys() == 11
    assert await _kids(during) == {"new"}
    assert await during.rotate_keys() == 0
    # the warm cache entry follows the new version, so a save with it succeeds
    cached = during.peek(keys[0])
    assert cached is not None
    assert warm is not None
    assert cached.version > warm.version
    await during.save(keys[0], record(n=100), expected_version=cached.version)

    after = make_vault(Keyring({"new": K_NEW}, "new"))  # old key removed
    for i, key in enumerate(keys[1:], start=1):
        got = await after.load(key)
        assert got is not None
        assert got.record == record(n=i)
    assert await after.get_blob("ciba", "r") == (
        (await after.store.version("ciba:r")),
        b"payload",
    )
    with pytest.raises(VaultKeyError):
        await make_vault(old_keys()).load(keys[1], fresh=True)


async def test_rotate_keys_concurrent_with_writes_loses_nothing(make_vault: VaultMaker) -> None:
    seed = make_vault(old_keys())
    keys = [GrantKey("t", f"u{i}", "https://as.example") for i in range(15)]
    for key in keys:
        await seed.save(key, record(n=0), expected_version=0)
    rotator, writer = make_vault(rotated_keys()), make_vault(rotated_keys())
    increments = 4

    async def bump(key: GrantKey) -> None:
        for _ in range(increments):
            while True:
                current = await writer.load(key, fresh=True)
                assert current is not None
                n = current.record.id_token_claims["n"]
                try:
                    await writer.save(key, record(n=n + 1), expected_version=current.version)
                except VersionConflict:
                    continue
                break
            await anyio.lowlevel.checkpoint()

    rotated = []

    async def rotate() -> None:
        rotated.append(await rotator.rotate_keys())

    async with anyio.create_task_group() as tg:
        tg.start_soon(rotate)
        for key in keys:
            tg.start_soon(bump, key)
    assert await _kids(rotator) == {"new"}
    check = make_vault(Keyring({"new": K_NEW}, "new"))
    for key in keys:
        got = await check.load(key)
        assert got is not None
        assert got.record.id_token_claims["n"] == increments


async def test_rotate_keys_reports_undecryptable_rows(make_vault: VaultMaker) -> None:
    vault = make_vault(rotated_keys())
    await make_vault(old_keys()).save(KEY, record(), expected_version=0)
    await vault.store.put("grant:garbage", b"AIV1\x03old" + b"\x00" * 40, expected_version=0)
    with pytest.raises(VaultCorrupted):
        await vault.rotate_keys()
    row = await vault.store.get(KEY.storage_key)
    assert row is not None
    assert Cipher.key_id_of(row.blob) == "new"


# -- construction ------------------------------------------------------------------------------


async def test_memory_vault_ephemeral_key() -> None:
    one, two = TokenVault.memory(), TokenVault.memory()
    await one.save(KEY, record(), expected_version=0)
    row = await one.store.get(KEY.storage_key)
    assert row is not None
    await two.store.put(KEY.storage_key, row.blob, expected_version=0)
    with pytest.raises(VaultCorrupted):
        await two.load(KEY)


async def test_from_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AGENT_IDENTITY_VAULT_KEYS", raising=False)
    mem = TokenVault.from_url("memory://")
    assert isinstance(mem.store, MemoryStore)
    db = tmp_path / "dir with space" / "v.sqlite3"
    url = "sqlite://" + str(db).replace(" ", "%20")
    vault = TokenVault.from_url(url, keys=old_keys())
    assert isinstance(vault.store, SQLiteStore)
    assert vault.store.path == db
    await vault.save(KEY, record(), expected_version=0)
    await vault.aclose()
    assert db.exists()
    default_keys = TokenVault.from_url("sqlite://" + str(tmp_path / "auto" / "v.sqlite3"))
    await default_keys.save(KEY, record(), expected_version=0)
    await default_keys.aclose()
    assert (tmp_path / "auto" / "vault-keys.json").exists()
    in_memory = TokenVault.from_url("sqlite:///:memory:")
    assert isinstance(in_memory.store, SQLiteStore)
    await in_memory.save(KEY, record(), expected_version=0)
    assert await in_memory.load(KEY, fresh=True) is not None
    await in_memory.aclose()
    for bad in [
        "postgresql://db/vault",
        "redis://x",
        "sqlite://relative/path",
        "sqlite:///x?mode=ro",
        "memory://x",
        "/plain/path",
    ]:
        with pytest.raises(ConfigurationError):
            TokenVault.from_url(bad)


async def test_closed_vault_is_unavailable(make_vault: VaultMaker) -> None:
    vault = make_vault()
    await vault.save(KEY, record(), expected_version=0)
    await vault.aclose()
    with pytest.raises(VaultUnavailable):
        await vault.load(KEY)


async def test_versioned_grant_is_frozen() -> None:
    grant = VersionedGrant(record(), 1)
    with pytest.raises(AttributeError):
        grant.version = 2  # type: ignore[misc]


# -- keys of an embedded vault (issue 12, item 6) ------------------------------------------


async def test_sqlite_vault_without_keys_refuses_an_existing_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    database = tmp_path / "vault.sqlite3"
    async with TokenVault.sqlite(database, keys=old_keys()) as vault:  # keys given in code
        await vault.save(KEY, record(), expected_version=0)
    with pytest.raises(ConfigurationError, match=ENV_VAR):
        TokenVault.sqlite(database)
    with pytest.raises(ConfigurationError, match="keys="):
        TokenVault.from_url(f"sqlite://{database}")
    assert not (tmp_path / KEY_FILE_NAME).exists()  # no stray key for later processes
    async with TokenVault.sqlite(database, keys=old_keys()) as vault:
        assert await vault.load(KEY) is not None

    # a new vault still makes its key file (once), and opens with it again
    fresh = tmp_path / "new" / "vault.sqlite3"
    async with TokenVault.sqlite(fresh) as vault:
        await vault.save(KEY, record(), expected_version=0)
    async with TokenVault.sqlite(fresh) as vault:
        assert await vault.load(KEY) is not None


_NEW_VAULT = """
import sys, time
import anyio
from agent_identity.vault import TokenVault

async def main() -> None:
    async with TokenVault.sqlite(sys.argv[1]) as vault:
        await vault.put_blob("race", sys.argv[2], sys.argv[2].encode(), expected_version=0)

time.sleep(max(0.0, float(sys.argv[3]) - time.time()))
anyio.run(main)
"""


async def test_processes_creating_a_new_sqlite_vault_together_agree_on_one_key(
    tmp_path: Path,
) -> None:
    """Six processes without configured keys open the same NEW vault at the same moment:
    none is refused, they make one key file between them, and every row opens with it."""
    database = tmp_path / "data" / "vault.sqlite3"
    env = {k: v for k, v in os.environ.items() if k != ENV_VAR}
    start_at = time.time() + 2.0  # all imported by then
    names = [f"p{i}" for i in range(6)]

    async def run(name: str) -> None:
        await anyio.run_process(
            [sys.executable, "-c", _NEW_VAULT, str(database), name, str(start_at)],
            env=env,
            check=True,
        )

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            for name in names:
                tg.start_soon(run, name)
    assert sorted(p.name for p in database.parent.glob("vault-keys*")) == [KEY_FILE_NAME]
    ring = Keyring.from_file(database.parent / KEY_FILE_NAME)
    async with TokenVault.sqlite(database, keys=ring) as vault:
        for name in names:
            row = await vault.get_blob("race", name)
            assert row is not None
            assert row.data == name.encode()
