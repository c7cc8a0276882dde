"""A conformance suite for :class:`agent_identity.vault.store.VaultStore` implementations.

Every store runs the same tests. A test module subclasses :class:`VaultStoreSuite`; the
backends come from :data:`BACKENDS`, so adding a store (PostgreSQL, ...) is one entry there:
a function that takes pytest's ``tmp_path`` and returns a zero-argument factory. Each call
of the factory opens a NEW handle on the SAME storage (for SQLite a new connection to the
same file, i.e. what another process sees); the suite closes every handle it opened. A
backend that needs a server can ``pytest.skip`` inside its function; if the factory has a
``cleanup()`` method, the suite calls it after closing the handles (PostgreSQL drops the
test's schema there).

The factories of the built-in stores are also an attacker with write access to the
storage, below the store's API (:class:`Tamper`): the vault's rollback tests
(``tests/unit/test_vault_rollback.py``) use them through :func:`open_backend`.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, closing, suppress
from pathlib import Path
from typing import Protocol

import anyio
import pytest

from agent_identity.errors import ConfigurationError, VersionConflict
from agent_identity.vault.sqlite import SQLiteStore
from agent_identity.vault.store import MemoryStore, StoredRow, VaultStore

StoreFactory = Callable[[], VaultStore]


class Tamper(Protocol):
    """Writes to a store's storage below its API, as someone with access to the database
    (not to the vault's keys) can: ``raw_write`` puts any version and blob under a key,
    ``raw_counter`` sets the store-wide version counter (the last version issued)."""

    def raw_write(self, key: str, version: int, blob: bytes) -> None: ...

    def raw_counter(self, value: int) -> None: ...


class _MemoryFactory:
    def __init__(self) -> None:
        self.shared = MemoryStore()  # one storage: every "handle" is the same object

    def __call__(self) -> VaultStore:
        return self.shared

    def raw_write(self, key: str, version: int, blob: bytes) -> None:
        self.shared._rows[key] = StoredRow(version, blob)

    def raw_counter(self, value: int) -> None:
        self.shared._seq = value


class _SQLiteFactory:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self) -> VaultStore:
        return SQLiteStore(self.path, busy_timeout=5.0)

    def _execute(self, sql: str, args: tuple[object, ...]) -> None:
        with closing(sqlite3.connect(self.path, timeout=5)) as conn, conn:
            conn.execute(sql, args)

    def raw_write(self, key: str, version: int, blob: bytes) -> None:
        self._execute(
            "INSERT OR REPLACE INTO entries (key, version, blob, updated_at) VALUES (?, ?, ?, 0)",
            (key, version, blob),
        )

    def raw_counter(self, value: int) -> None:
        self._execute("UPDATE meta SET value = ? WHERE name = 'version_seq'", (value,))


def _memory(tmp_path: Path) -> StoreFactory:
    return _MemoryFactory()


def _sqlite(tmp_path: Path) -> StoreFactory:
    return _SQLiteFactory(tmp_path / "vault.sqlite3")


class _PostgresFactory:
    """Handles on one fresh schema of the test server (tests/_postgres.py); each handle
    has its own connection pool, as another process would."""

    def __init__(self) -> None:
        import _postgres

        self._dsn = _postgres.postgres_dsn()  # skips (or fails when CI is set) without one
        self._schema = _postgres.new_schema()

    def __call__(self) -> VaultStore:
        from agent_identity.vault.postgres import PostgresStore

        return PostgresStore(self._dsn, schema=self._schema, max_size=4)

    def raw_write(self, key: str, version: int, blob: bytes) -> None:
        import _postgres

        with _postgres.admin() as conn:
            conn.execute(
                f'INSERT INTO "{self._schema}".entries (key, version, blob) VALUES (%s, %s, %s)'
                " ON CONFLICT (key) DO UPDATE SET version = excluded.version,"
                " blob = excluded.blob",
                (key, version, blob),
            )

    def raw_counter(self, value: int) -> None:
        import _postgres

        with _postgres.admin() as conn:
            conn.execute(
                "SELECT setval(%s, %s, true)", (f'"{self._schema}".version_seq', max(value, 1))
            )

    def cleanup(self) -> None:
        import _postgres

        _postgres.drop_schema(self._schema)


def _postgres(tmp_path: Path) -> StoreFactory:
    return _PostgresFactory()


#: name -> (tmp_path -> factory of handles on one storage). Add a backend here.
BACKENDS: dict[str, Callable[[Path], StoreFactory]] = {
    "memory": _memory,
    "postgres": _postgres,
    "sqlite": _sqlite,
}

# Keys as the vault writes them (security item 26): tenants "a"/"ab", users holding JSON
# punctuation and non-ASCII, equal user ids across tenants, a user id prefixing another.
TRICKY_USERS = ["u", "u2", "u,", 'u"', "u]", 'u","x', "ü", "用户", "u\\", "u\u0000"]


def _grant_key(tenant: str, user: str, connection: str = "https://as.example") -> str:
    from agent_identity.vault.records import GrantKey

    return GrantKey(tenant, user, connection).storage_key


@asynccontextmanager
async def open_backend(name: str, tmp_path: Path) -> AsyncIterator[StoreFactory]:
    """A factory of handles on one storage of backend ``name`` (see the module docstring);
    every handle it opened is closed, and the storage cleaned up, on exit. The built-in
    backends' factories are also a :class:`Tamper`."""
    make = BACKENDS[name](tmp_path)
    opened: list[VaultStore] = []

    def factory() -> VaultStore:
        handle = make()
        opened.append(handle)
        return handle

    for attribute in ("raw_write", "raw_counter"):
        if hasattr(make, attribute):
            setattr(factory, attribute, getattr(make, attribute))
    try:
        yield factory
    finally:
        for handle in {id(h): h for h in opened}.values():
            await handle.aclose()
        cleanup = getattr(make, "cleanup", None)
        if cleanup is not None:
            cleanup()


@pytest.mark.anyio
class VaultStoreSuite:
    """Subclass me (``class TestMyStore(VaultStoreSuite): pass``)."""

    @pytest.fixture(params=sorted(BACKENDS))
    async def store_factory(
        self, request: pytest.FixtureRequest, tmp_path: Path
    ) -> AsyncIterator[StoreFactory]:
        async with open_backend(request.param, tmp_path) as factory:
            yield factory

    @pytest.fixture
    def store(self, store_factory: StoreFactory) -> VaultStore:
        return store_factory()

    # -- shape -------------------------------------------------------------------------------

    async def test_is_a_vault_store(self, store: VaultStore) -> None:
        assert isinstance(store, VaultStore)
        assert await store.get("k") is None
        assert await store.version("k") is None
        assert await store.keys() == []

    # -- compare-and-swap --------------------------------------------------------------------

    async def test_create_with_zero_then_read(self, store: VaultStore) -> None:
        v1 = await store.put("k", b"one", expected_version=0)
        assert v1 >= 1
        assert await store.get("k") == StoredRow(v1, b"one")
        assert await store.version("k") == v1

    async def test_create_twice_conflicts(self, store: VaultStore) -> None:
        await store.put("k", b"one", expected_version=0)
        with pytest.raises(VersionConflict):
            await store.put("k", b"two", expected_version=0)
        assert (await store.get("k")).blob == b"one"  # type: ignore[union-attr]

    async def test_update_requires_current_version(self, store: VaultStore) -> None:
        v1 = await store.put("k", b"one", expected_version=0)
        v2 = await store.put("k", b"two", expected_version=v1)
        assert v2 > v1
        with pytest.raises(VersionConflict):
            await store.put("k", b"stale", expected_version=v1)
        with pytest.raises(VersionConflict):
            await store.put("missing", b"x", expected_version=v2)
        assert await store.get("k") == StoredRow(v2, b"two")
        assert await store.get("missing") is None

    async def test_delete_without_and_with_version(self, store: VaultStore) -> None:
        v1 = await store.put("a", b"1", expected_version=0)
        await store.put("b", b"2", expected_version=0)
        assert await store.delete("a") is True
        assert await store.delete("a") is False
        assert await store.get("a") is None
        vb = await store.version("b")
        assert vb is not None
        with pytest.raises(VersionConflict):
            await store.delete("b", expected_version=vb + 1000)
        assert await store.version("b") == vb
        assert await store.delete("b", expected_version=vb) is True
        assert await store.delete("b", expected_version=vb) is False
        assert v1 != vb

    async def test_versions_never_reused_after_delete(self, store: VaultStore) -> None:
        # A cache that validated "version 1" must never see a recreated row as unchanged.
        seen: set[int] = set()
        for _ in range(3):
            v = await store.put("k", b"x", expected_version=0)
            assert v not in seen
            assert all(v > s for s in seen)
            seen.add(v)
            assert await store.delete("k") is True

    # -- sealing at the new version ---------------------------------------------------------

    async def test_sealer_gets_the_new_version_once_and_its_bytes_are_stored(
        self, store: VaultStore
    ) -> None:
        calls: list[int] = []

        def seal(version: int) -> bytes:
            calls.append(version)
            return f"sealed for {version}".encode()

        v1 = await store.put("k", seal, expected_version=0)
        assert calls == [v1]
        assert await store.get("k") == StoredRow(v1, f"sealed for {v1}".encode())
        v2 = await store.put("k", seal, expected_version=v1)
        assert calls == [v1, v2]
        assert v2 > v1
        assert await store.get("k") == StoredRow(v2, f"sealed for {v2}".encode())
        # bytes still work, and versions stay store-wide after sealed writes
        v3 = await store.put("other", b"plain", expected_version=0)
        assert v3 > v2

    async def test_sealer_not_called_when_the_version_check_fails(self, store: VaultStore) -> None:
        v1 = await store.put("k", b"one", expected_version=0)
        calls: list[int] = []

        def seal(version: int) -> bytes:
            calls.append(version)
            return b"x"

        with pytest.raises(VersionConflict):
            await store.put("k", seal, expected_version=v1 + 1000)
        with pytest.raises(VersionConflict):
            await store.put("k", seal, expected_version=0)
        with pytest.raises(VersionConflict):
            await store.put("missing", seal, expected_version=v1)
        assert calls == []
        assert await store.get("k") == StoredRow(v1, b"one")

    async def test_failing_sealer_writes_nothing(self, store: VaultStore) -> None:
        v1 = await store.put("k", b"one", expected_version=0)

        def seal(version: int) -> bytes:
            raise RuntimeError("no key")

        with pytest.raises(RuntimeError):
            await store.put("k", seal, expected_version=v1)
        with pytest.raises(RuntimeError):
            await store.put("new", seal, expected_version=0)
        assert await store.get("k") == StoredRow(v1, b"one")
        assert await store.get("new") is None
        v2 = await store.put("k", lambda v: b"two", expected_version=v1)
        assert await store.get("k") == StoredRow(v2, b"two")
        with pytest.raises(ConfigurationError):
            await store.put("k", lambda v: "text", expected_version=v2)  # type: ignore[arg-type,return-value]
        assert await store.get("k") == StoredRow(v2, b"two")

    async def test_racing_sealed_writers_one_wins_sealed_for_its_version(
        self, store_factory: StoreFactory
    ) -> None:
        handles = [store_factory() for _ in range(3)]
        version = await handles[0].put("k", b"start", expected_version=0)
        wins: list[int] = []

        async def writer(i: int) -> None:
            with suppress(VersionConflict):
                wins.append(
                    await handles[i % 3].put(
                        "k", lambda v: f"w{i}@{v}".encode(), expected_version=version
                    )
                )

        async with anyio.create_task_group() as tg:
            for i in range(20):
                tg.start_soon(writer, i)
        assert len(wins) == 1
        row = await handles[1].get("k")
        assert row is not None
        assert row.version == wins[0]
        assert row.blob.decode().endswith(f"@{wins[0]}")

    async def test_blob_bytes_exact(self, store: VaultStore) -> None:
        data = bytes(range(256)) * 40
        v = await store.put("k", data, expected_version=0)
        assert await store.get("k") == StoredRow(v, data)
        v2 = await store.put("k", b"", expected_version=v)
        assert await store.get("k") == StoredRow(v2, b"")

    async def test_invalid_arguments(self, store: VaultStore) -> None:
        with pytest.raises(ConfigurationError):
            await store.put("", b"x", expected_version=0)
        with pytest.raises(ConfigurationError):
            await store.put("k", b"x", expected_version=-1)
        with pytest.raises(ConfigurationError):
            await store.put("k", "text", expected_version=0)  # type: ignore[arg-type]
        with pytest.raises(ConfigurationError):
            await store.get("\udc80")
        with pytest.raises(ConfigurationError):
            await store.acquire_lease("n", "h", ttl=0)

    async def test_second_handle_sees_writes_and_conflicts(
        self, store_factory: StoreFactory
    ) -> None:
        one, two = store_factory(), store_factory()
        v1 = await one.put("k", b"one", expected_version=0)
        assert await two.get("k") == StoredRow(v1, b"one")
        v2 = await two.put("k", b"two", expected_version=v1)
        with pytest.raises(VersionConflict):
            await one.put("k", b"stale", expected_version=v1)
        assert await one.version("k") == v2
        assert await two.delete("k") is True
        assert await one.get("k") is None

    # -- concurrency -------------------------------------------------------------------------

    async def test_50_concurrent_creators_exactly_one_wins(self, store: VaultStore) -> None:
        await self._race(store, expected=0, writers=50)

    async def test_50_concurrent_updaters_exactly_one_wins_per_version(
        self, store: VaultStore
    ) -> None:
        version = await store.put("k", b"start", expected_version=0)
        for _round in range(3):
            version = await self._race(store, expected=version, writers=50)

    async def test_concurrent_writers_across_handles(self, store_factory: StoreFactory) -> None:
        handles = [store_factory() for _ in range(4)]
        version = await handles[0].put("k", b"start", expected_version=0)
        wins: list[tuple[int, int]] = []
        conflicts = 0

        async def writer(i: int) -> None:
            nonlocal conflicts
            try:
                new = await handles[i % 4].put("k", f"w{i}".encode(), expected_version=version)
            except VersionConflict:
                conflicts += 1
            else:
                wins.append((i, new))

        async with anyio.create_task_group() as tg:
            for i in range(20):
                tg.start_soon(writer, i)
        assert len(wins) == 1
        assert conflicts == 19
        winner, new = wins[0]
        assert await handles[1].get("k") == StoredRow(new, f"w{winner}".encode())

    async def _race(self, store: VaultStore, *, expected: int, writers: int) -> int:
        wins: list[tuple[int, int]] = []
        conflicts = 0

        async def writer(i: int) -> None:
            nonlocal conflicts
            try:
                new = await store.put("k", f"w{i}".encode(), expected_version=expected)
            except VersionConflict:
                conflicts += 1
            else:
                wins.append((i, new))

        async with anyio.create_task_group() as tg:
            for i in range(writers):
                tg.start_soon(writer, i)
        assert len(wins) == 1, wins
        assert conflicts == writers - 1
        winner, new = wins[0]
        assert new > expected
        assert await store.get("k") == StoredRow(new, f"w{winner}".encode())
        return new

    # -- prefix listing (security item 26) ---------------------------------------------------

    async def test_keys_sorted_and_prefix_exact(self, store: VaultStore) -> None:
        for key in ["b", "a", "ab", "a:b", "a%", "a_", "a\U0010ffff", "b\U0010ffffz", "é"]:
            await store.put(key, b"x", expected_version=0)
        assert await store.keys() == sorted(
            ["b", "a", "ab", "a:b", "a%", "a_", "a\U0010ffff", "b\U0010ffffz", "é"]
        )
        assert await store.keys("a") == sorted(["a", "ab", "a:b", "a%", "a_", "a\U0010ffff"])
        # LIKE wildcards are ordinary characters
        assert await store.keys("a%") == ["a%"]
        assert await store.keys("a_") == ["a_"]
        assert await store.keys("b\U0010ffff") == ["b\U0010ffffz"]
        assert await store.keys("zz") == []

    async def test_sec_26_prefix_listing_isolates_tenants_and_users(
        self, store: VaultStore
    ) -> None:
        from agent_identity.vault.records import grant_prefix

        written: dict[tuple[str, str], list[str]] = {}
        for tenant in ("a", "ab", "a,", "t"):
            for user in TRICKY_USERS:
                for conn in ("https://as.example", "https://as.example/t2"):
                    key = _grant_key(tenant, user, conn)
                    await store.put(key, b"x", expected_version=0)
                    written.setdefault((tenant, user), []).append(key)
        for (tenant, user), keys in written.items():
            assert await store.keys(grant_prefix(tenant, user)) == sorted(keys), (tenant, user)

    async def test_sec_26_equal_user_ids_in_two_tenants_never_collide(
        self, store: VaultStore
    ) -> None:
        from agent_identity.vault.records import grant_prefix

        k1, k2 = _grant_key("tenant-1", "alice"), _grant_key("tenant-2", "alice")
        assert k1 != k2
        await store.put(k1, b"one", expected_version=0)
        await store.put(k2, b"two", expected_version=0)
        assert await store.keys(grant_prefix("tenant-1", "alice")) == [k1]
        assert await store.keys(grant_prefix("tenant-2", "alice")) == [k2]
        assert (await store.get(k1)).blob == b"one"  # type: ignore[union-attr]

    # -- leases ------------------------------------------------------------------------------

    async def test_lease_is_exclusive(self, store: VaultStore) -> None:
        assert await store.acquire_lease("refresh", "h1", ttl=30) is True
        assert await store.acquire_lease("refresh", "h2", ttl=30) is False
        assert await store.acquire_lease("other", "h2", ttl=30) is True

    async def test_lease_reentrant_for_holder_and_extended(self, store: VaultStore) -> None:
        assert await store.acquire_lease("n", "h1", ttl=0.3) is True
        await anyio.sleep(0.2)
        assert await store.acquire_lease("n", "h1", ttl=0.3) is True  # extends to +0.3 s
        await anyio.sleep(0.2)  # past the first expiry, within the extension
        assert await store.acquire_lease("n", "h2", ttl=30) is False

    async def test_lease_expires_after_ttl(self, store: VaultStore) -> None:
        assert await store.acquire_lease("n", "crashed", ttl=0.05) is True
        assert await store.acquire_lease("n", "h2", ttl=30) is False
        deadline = time.monotonic() + 2
        while not await store.acquire_lease("n", "h2", ttl=30):
            assert time.monotonic() < deadline, "lease did not expire"
            await anyio.sleep(0.02)
        assert await store.acquire_lease("n", "crashed", ttl=30) is False

    async def test_lease_released_only_by_holder(self, store: VaultStore) -> None:
        assert await store.acquire_lease("n", "h1", ttl=30) is True
        await store.release_lease("n", "h2")  # not the holder: no effect
        assert await store.acquire_lease("n", "h2", ttl=30) is False
        await store.release_lease("n", "h1")
        assert await store.acquire_lease("n", "h2", ttl=30) is True
        await store.release_lease("missing", "h1")  # no lease: no error

    async def test_lease_exclusive_across_handles(self, store_factory: StoreFactory) -> None:
        one, two = store_factory(), store_factory()
        results = []

        async def take(handle: VaultStore, holder: str) -> None:
            results.append(await handle.acquire_lease("n", holder, ttl=30))

        async with anyio.create_task_group() as tg:
            for i in range(10):
                tg.start_soon(take, one if i % 2 else two, f"h{i}")
        assert sorted(results) == [False] * 9 + [True]
