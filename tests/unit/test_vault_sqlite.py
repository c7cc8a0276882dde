"""SQLite store faults: file modes, locking, corruption, schema, cancellation, SIGKILL."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest
from pydantic import SecretStr

from agent_identity.errors import VaultCorrupted, VaultError, VaultUnavailable, VersionConflict
from agent_identity.vault import (
    CachedToken,
    GrantKey,
    GrantRecord,
    Keyring,
    SQLiteStore,
    TokenVault,
    default_sqlite_path,
)
from agent_identity.vault.sqlite import SCHEMA_VERSION

pytestmark = pytest.mark.anyio
posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX modes and signals")

KEY_BYTES = bytes(range(32))


def _modes(path: Path) -> dict[str, int]:
    found = {}
    for suffix in ("", "-wal", "-shm"):
        file = Path(str(path) + suffix)
        if file.exists():
            found[suffix] = stat.S_IMODE(file.stat().st_mode)
    return found


@posix_only
async def test_file_and_directory_modes(tmp_path: Path) -> None:
    path = tmp_path / "new-dir" / "vault.sqlite3"
    store = SQLiteStore(path)
    try:
        await store.put("k", b"x", expected_version=0)
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert _modes(path) == {"": 0o600, "-wal": 0o600, "-shm": 0o600}
    finally:
        await store.aclose()


async def test_schema_created_with_user_version(tmp_path: Path) -> None:
    for round_ in range(10):  # several connections open a NEW file at once: one migration
        path = tmp_path / f"v{round_}.sqlite3"
        stores = [SQLiteStore(path) for _ in range(8)]

        async def first_use(i: int, store: SQLiteStore) -> None:
            if i % 2:
                await store.put(f"k{i}", b"x", expected_version=0)
            else:
                await store.keys()

        async with anyio.create_task_group() as tg:
            for i, store in enumerate(stores):
                tg.start_soon(first_use, i, store)
        assert len(await stores[0].keys()) == 4
        for store in stores:
            await store.aclose()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"entries", "leases", "meta"} <= tables
    finally:
        conn.close()


async def test_newer_schema_refused(tmp_path: Path) -> None:
    path = tmp_path / "v.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    store = SQLiteStore(path)
    with pytest.raises(VaultUnavailable, match="newer"):
        await store.get("k")
    await store.aclose()


async def test_locked_database_is_unavailable_after_busy_timeout(tmp_path: Path) -> None:
    path = tmp_path / "v.sqlite3"
    store = SQLiteStore(path, busy_timeout=0.2)
    v1 = await store.put("k", b"one", expected_version=0)
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")
        start = time.monotonic()
        with pytest.raises(VaultUnavailable, match="locked"):
            await store.put("k", b"two", expected_version=v1)
        assert time.monotonic() - start >= 0.15
        assert (await store.get("k")) == (v1, b"one")  # WAL: readers are not blocked
        with pytest.raises(VaultUnavailable):
            await store.acquire_lease("n", "h", ttl=1)
        other.execute("ROLLBACK")
        v2 = await store.put("k", b"two", expected_version=v1)  # the connection is fine
        assert await store.get("k") == (v2, b"two")
    finally:
        other.close()
        await store.aclose()


async def test_exclusive_locking_mode_blocks_reads_too(tmp_path: Path) -> None:
    path = tmp_path / "v.sqlite3"
    store = SQLiteStore(path, busy_timeout=0.1)
    await store.put("k", b"one", expected_version=0)
    await store.aclose()
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("PRAGMA locking_mode = EXCLUSIVE")
        other.execute("BEGIN EXCLUSIVE")
        other.execute("UPDATE entries SET updated_at = 0")
        reader = SQLiteStore(path, busy_timeout=0.1)
        with pytest.raises(VaultUnavailable):
            await reader.get("k")
        await reader.aclose()
    finally:
        other.close()


async def test_garbage_file_is_typed_error(tmp_path: Path) -> None:
    path = tmp_path / "v.sqlite3"
    path.write_bytes(b"definitely not a database " * 200)
    path.chmod(0o600)
    store = SQLiteStore(path)
    for call in (store.get("k"), store.keys(), store.put("k", b"x", expected_version=0)):
        with pytest.raises(VaultCorrupted):
            await call
    await store.aclose()


async def test_damaged_pages_only_raise_vault_errors(tmp_path: Path) -> None:
    path = tmp_path / "v.sqlite3"
    keys = Keyring({"k": KEY_BYTES}, "k")
    grant_keys = [GrantKey("t", f"u{i}", "c") for i in range(40)]
    async with TokenVault.sqlite(path, keys=keys) as vault:
        for key in grant_keys:
            await vault.save(key, _record(1, pad=300), expected_version=0)
    # checkpoint the WAL into the main file, then damage the data pages
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    data = bytearray(path.read_bytes())
    rng = random.Random(7)
    for _ in range(400):
        i = rng.randrange(4096, len(data))
        data[i] = rng.randrange(256)
    path.write_bytes(bytes(data))
    async with TokenVault.sqlite(path, keys=keys, cache_ttl=0) as vault:
        outcomes = set()
        for key in grant_keys:
            try:
                grant = await vault.load(key)
            except (VaultCorrupted, VaultUnavailable) as exc:
                outcomes.add(type(exc).__name__)
            else:
                outcomes.add("ok" if grant is not None else "missing")
                if grant is not None:
                    assert grant.record == _record(1, pad=300)
        try:
            await vault.grants("t", "u1")
        except VaultError:
            outcomes.add("list-error")
    assert outcomes & {"VaultCorrupted", "VaultUnavailable", "missing", "list-error"}


async def test_directory_as_path_is_unavailable(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path)
    with pytest.raises(VaultUnavailable):
        await store.get("k")
    await store.aclose()


async def test_closed_store_is_unavailable(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "v.sqlite3")
    await store.put("k", b"x", expected_version=0)
    await store.aclose()
    await store.aclose()  # idempotent
    with pytest.raises(VaultUnavailable):
        await store.get("k")


async def test_conflict_rolls_back_and_connection_stays_usable(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "v.sqlite3")
    try:
        v1 = await store.put("k", b"one", expected_version=0)
        for _ in range(3):
            with pytest.raises(VersionConflict):
                await store.put("k", b"bad", expected_version=v1 + 100)
        assert await store.put("k", b"two", expected_version=v1) > v1
    finally:
        await store.aclose()


async def test_cancelled_write_is_whole_and_connection_usable(tmp_path: Path) -> None:
    path = tmp_path / "v.sqlite3"
    store = SQLiteStore(path, busy_timeout=3)
    v1 = await store.put("k", b"one", expected_version=0)
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN EXCLUSIVE")
    cancelled = False

    async def write() -> None:
        nonlocal cancelled
        with anyio.move_on_after(0.05) as scope:
            await store.put("k", b"two" * 1000, expected_version=v1)
            await anyio.lowlevel.checkpoint()  # where a pending cancellation is delivered
        cancelled = scope.cancel_called and scope.cancelled_caught

    async def unlock() -> None:
        await anyio.sleep(0.3)
        await anyio.to_thread.run_sync(lambda: other.execute("ROLLBACK"))

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(write)
            tg.start_soon(unlock)
        assert cancelled
        row = await store.get("k")
        assert row is not None
        assert row.blob in (b"one", b"two" * 1000)
        v3 = await store.put("k", b"three", expected_version=row.version)
        assert await store.get("k") == (v3, b"three")
    finally:
        other.close()
        await store.aclose()


def test_default_path() -> None:
    path = default_sqlite_path()
    assert path.name == "vault.sqlite3"
    assert "agent-identity" in str(path)


# -- crash safety -------------------------------------------------------------------------------


def _record(i: int, pad: int | None = None) -> GrantRecord:
    token = CachedToken(None, frozenset({"s"}), SecretStr(f"at-{i}"), "Bearer", None, float(i))
    return GrantRecord(
        issuer="https://as.example",
        subject="s",
        scopes=("s",),
        resources=(),
        refresh_token=SecretStr(f"rt-{i}"),
        tokens={token.key: token},
        id_token_claims={"i": i, "pad": "x" * ((i % 7) * 400 if pad is None else pad)},
        created_at=0.0,
        updated_at=float(i),
    )


CHILD = textwrap.dedent(
    """
    import sys, anyio
    sys.path.insert(0, sys.argv[2])
    from test_vault_sqlite import _record
    from agent_identity.vault import GrantKey, Keyring, TokenVault

    async def main():
        keys = Keyring({"k": bytes(range(32))}, "k")
        vault = TokenVault.sqlite(sys.argv[1], keys=keys, cache_ttl=0)
        grant_keys = [GrantKey("t", f"u{n}", "c") for n in range(4)]
        i = 0
        while True:
            i += 1
            for key in grant_keys:
                current = await vault.load(key, fresh=True)
                blob = await vault.get_blob("blob", key.user)
                await vault.put_blob("blob", key.user, b"%d" % i * 50,
                                     expected_version=0 if blob is None else blob.version)
                version = 0 if current is None else current.version
                await vault.save(key, _record(i), expected_version=version)
                print(key.user, i, flush=True)

    anyio.run(main)
    """
)


@posix_only
async def test_sigkill_during_write_leaves_previous_or_new_state(tmp_path: Path) -> None:
    keys = Keyring({"k": KEY_BYTES}, "k")
    here = str(Path(__file__).parent)
    rng = random.Random()
    for round_ in range(4):
        path = tmp_path / f"crash-{round_}.sqlite3"
        proc = subprocess.Popen(  # noqa: ASYNC220 - we need the pid to SIGKILL it
            [sys.executable, "-c", CHILD, str(path), here],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            assert proc.stdout is not None
            first = await anyio.to_thread.run_sync(proc.stdout.readline)
            assert first, proc.stderr.read() if proc.stderr else b""
            await anyio.sleep(rng.uniform(0.02, 0.3))
        finally:
            proc.send_signal(signal.SIGKILL)
            out, err = await anyio.to_thread.run_sync(proc.communicate)
        assert proc.returncode == -signal.SIGKILL, err
        reported: dict[str, int] = {}
        # Only newline-terminated lines are complete: the kill may cut the last one short.
        for line in (first + out).decode().split("\n")[:-1]:
            user, i = line.split()
            reported[user] = int(i)
        assert reported
        conn = sqlite3.connect(path)
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        conn.close()
        async with TokenVault.sqlite(path, keys=keys) as vault:
            for n in range(4):
                key = GrantKey("t", f"u{n}", "c")
                grant = await vault.load(key)
                last = reported.get(key.user, 0)
                if grant is None:
                    assert last == 0
                    continue
                rec = grant.record
                i = rec.id_token_claims["i"]
                assert rec.refresh_token == SecretStr(f"rt-{i}")  # one complete version
                assert rec == _record(i)
                assert last <= i <= last + 1, (i, last)  # committed writes survive
                blob = await vault.get_blob("blob", key.user)
                assert blob is not None
                assert blob.data == b"%d" % int(blob.data[: len(blob.data) // 50]) * 50
