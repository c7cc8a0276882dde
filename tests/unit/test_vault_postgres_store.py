"""The PostgreSQL vault store beyond the conformance suite: URLs and configuration,
versioned migrations, and faults (a connection killed mid-statement, idle connections
killed, statement timeouts, an unreachable server, cancellation, a lease holder's
connection lost). The contract tests themselves run in tests/vault_store_suite.py.

Tests that need the server use ``tests/_postgres.py`` (skip without one, fail when ``CI``
is set); each gets a schema of its own.
"""

from __future__ import annotations

import base64
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import _postgres
import anyio
import pytest
from _postgres import pg_schema

from agent_identity.errors import ConfigurationError, VaultUnavailable, VersionConflict
from agent_identity.vault import Keyring, StoredRow, TokenVault, VaultStore

__all__ = ["pg_schema"]

PASSWORD = "pw-canary-7c1e0f"


def _pg() -> Any:
    from agent_identity.vault import postgres

    return postgres


# --------------------------------------------------------------------------- configuration


def test_split_url_takes_schema_and_keeps_libpq_parameters() -> None:
    split = _pg().split_url
    assert split("postgresql://u@h:5433/db") == ("postgresql://u@h:5433/db", "agent_identity")
    dsn, schema = split("postgres://u@h/db?schema=fleet_a&sslmode=require&application_name=x")
    assert schema == "fleet_a"
    assert dsn == "postgres://u@h/db?sslmode=require&application_name=x"
    dsn, _ = split("postgresql://h1:5432,h2:5432/db?target_session_attrs=read-write")
    assert dsn == "postgresql://h1:5432,h2:5432/db?target_session_attrs=read-write"
    dsn, schema = split("postgresql://h/db?options=-c%20search_path%3Dx&schema=s")
    assert (dsn, schema) == ("postgresql://h/db?options=-c%20search_path%3Dx", "s")
    from psycopg.conninfo import conninfo_to_dict

    assert conninfo_to_dict(dsn)["options"] == "-c search_path=x"


@pytest.mark.parametrize(
    "url",
    [
        "mysql://h/db",
        "postgresql://h/db?schema=a&schema=b",
        "postgresql://h/db#frag",
        "postgresql://h/db?schema=Bad-Name",
        "postgresql://h/db?schema=",
        "postgresql://h/db?schema=a;drop",
        "postgresql://h/db?no_such_libpq_option=1",
    ],
)
def test_bad_urls_are_configuration_errors(url: str) -> None:
    with pytest.raises(ConfigurationError):
        _pg().PostgresStore.from_url(url)


def test_password_never_in_repr_or_errors() -> None:
    store = _pg().PostgresStore.from_url(f"postgresql://alice:{PASSWORD}@db.internal:6543/vault")
    assert PASSWORD not in repr(store)
    assert "db.internal:6543" in repr(store)
    assert "vault" in repr(store)
    for bad in (
        f"postgresql://alice:{PASSWORD}@h/db?schema=X",
        f"postgresql://alice:{PASSWORD}@h/db?bogus=1",
    ):
        with pytest.raises(ConfigurationError) as info:
            _pg().PostgresStore.from_url(bad)
        assert PASSWORD not in str(info.value)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_size": -1},
        {"max_size": 0},
        {"min_size": 3, "max_size": 2},
        {"statement_timeout": 0},
        {"pool_timeout": float("nan")},
        {"connect_timeout": True},
        {"schema": "pg_" * 30},
    ],
)
def test_bad_options_are_configuration_errors(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        _pg().PostgresStore("postgresql://h/db", **kwargs)


def test_from_url_selects_postgres_and_requires_shared_keys(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("AGENT_IDENTITY_VAULT_KEYS", raising=False)
    with pytest.raises(ConfigurationError, match="AGENT_IDENTITY_VAULT_KEYS"):
        TokenVault.from_url("postgresql://h/db")
    keys = Keyring.ephemeral()
    for scheme in ("postgresql", "postgres", "PostgreSQL"):
        vault = TokenVault.from_url(f"{scheme}://h/db?schema=s1", keys=keys)
        assert isinstance(vault.store, _pg().PostgresStore)
        assert vault.store.schema == "s1"  # type: ignore[attr-defined]
    material = base64.b64encode(secrets.token_bytes(32)).decode()
    monkeypatch.setenv("AGENT_IDENTITY_VAULT_KEYS", f"k1:{material}")
    vault = TokenVault.from_url("postgres://h/db")
    assert isinstance(vault.store, VaultStore)


def test_importing_the_vault_does_not_import_the_driver() -> None:
    code = (
        "import sys, agent_identity.vault, agent_identity.vault.vault\n"
        "from agent_identity.vault import TokenVault\n"
        "TokenVault.from_url('sqlite:///:memory:')\n"
        "print(','.join(m for m in sys.modules if m.split('.')[0] in "
        "('psycopg', 'psycopg_pool', 'asyncpg')))\n"
        "import agent_identity.vault.postgres\n"
        "print('psycopg' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == ["", "True"]


# --------------------------------------------------------------------------- with a server


def _store(schema: str, app: str | None = None, **options: Any) -> Any:
    params = {"application_name": app} if app else {}
    return _pg().PostgresStore.from_url(_postgres.url(schema, **params), **options)


def _backends(app: str) -> list[tuple[int, str, str | None]]:
    """(pid, state, wait_event_type) of the sessions with ``application_name = app``."""
    with _postgres.admin() as conn:
        rows = conn.execute(
            "SELECT pid, state, wait_event_type FROM pg_stat_activity WHERE application_name = %s",
            (app,),
        ).fetchall()
    return [(int(r[0]), str(r[1]), r[2]) for r in rows]


def _terminate(pids: list[int]) -> None:
    with _postgres.admin() as conn:
        for pid in pids:
            conn.execute("SELECT pg_terminate_backend(%s)", (pid,))


async def _blocked_on_lock(app: str, within: float = 5.0) -> int:
    """The pid of ``app``'s session once it waits for a lock."""
    with anyio.fail_after(within):
        while True:
            waiting = [pid for pid, _, wait in _backends(app) if wait == "Lock"]
            if waiting:
                return waiting[0]
            await anyio.sleep(0.02)


class _RowLock:
    """Another session holding the row lock of ``key`` in an open transaction."""

    def __init__(self, schema: str, key: str) -> None:
        self.conn = _postgres.admin()
        self.conn.autocommit = False
        from psycopg import sql

        self.conn.execute(
            sql.SQL("SELECT 1 FROM {}.entries WHERE key = %s FOR UPDATE").format(
                sql.Identifier(schema)
            ),
            (key,),
        )

    def release(self) -> None:
        self.conn.rollback()
        self.conn.close()


@pytest.fixture
def app_name() -> str:
    """A unique ``application_name``: finds the test store's server sessions."""
    return f"ai-test-{secrets.token_hex(4)}"


@pytest.mark.anyio
async def test_migrate_is_versioned_idempotent_and_concurrent(pg_schema: str) -> None:
    stores = [_store(pg_schema, auto_migrate=False) for _ in range(4)]
    results: list[tuple[int, int]] = []

    async def run(store: Any) -> None:
        results.append(await store.migrate())

    try:
        async with anyio.create_task_group() as tg:
            for store in stores:
                tg.start_soon(run, store)
        version = _pg().SCHEMA_VERSION
        assert sorted(results) == [(0, version)] + [(version, version)] * 3
        assert await stores[0].migrate() == (version, version)
        with _postgres.admin() as conn:
            rows = conn.execute(
                f'SELECT version, breaking FROM "{pg_schema}".schema_migrations ORDER BY version'
            ).fetchall()
        assert rows == [(m.version, m.breaking) for m in _pg().MIGRATIONS]
    finally:
        for store in stores:
            await store.aclose()


@pytest.mark.anyio
async def test_without_auto_migrate_an_old_schema_is_refused(pg_schema: str) -> None:
    store = _store(pg_schema, auto_migrate=False)
    try:
        with pytest.raises(VaultUnavailable, match="vault migrate"):
            await store.get("k")
        assert await store.migrate() == (0, _pg().SCHEMA_VERSION)
        assert await store.put("k", b"v", expected_version=0) >= 1
    finally:
        await store.aclose()


@pytest.mark.anyio
async def test_newer_schema_used_unless_a_newer_migration_is_breaking(pg_schema: str) -> None:
    store = _store(pg_schema)
    await store.put("k", b"v", expected_version=0)
    await store.aclose()
    newer = _pg().SCHEMA_VERSION + 1
    with _postgres.admin() as conn:
        conn.execute(
            f'INSERT INTO "{pg_schema}".schema_migrations (version, description, breaking)'
            " VALUES (%s, 'from the future', false)",
            (newer,),
        )
    store = _store(pg_schema)
    try:
        assert (await store.get("k")).blob == b"v"
        assert await store.migrate() == (newer, newer)
    finally:
        await store.aclose()
    with _postgres.admin() as conn:
        conn.execute(f'UPDATE "{pg_schema}".schema_migrations SET breaking = true')
    store = _store(pg_schema)
    try:
        with pytest.raises(VaultUnavailable, match="upgrade agent-identity"):
            await store.get("k")
    finally:
        await store.aclose()


@pytest.mark.anyio
async def test_nul_characters_cannot_be_stored(pg_schema: str) -> None:
    store = _store(pg_schema)
    try:
        with pytest.raises(ConfigurationError):
            await store.put("a\x00b", b"x", expected_version=0)
        with pytest.raises(ConfigurationError):
            await store.acquire_lease("n\x00", "h", ttl=1)
        assert await store.get("a\x00b") is None
        assert await store.version("a\x00b") is None
        assert await store.delete("a\x00b") is False
        assert await store.keys("a\x00") == []
        await store.release_lease("n\x00", "h")
    finally:
        await store.aclose()


@pytest.mark.anyio
async def test_connection_killed_mid_write_is_vault_unavailable_and_pool_recovers(
    pg_schema: str, app_name: str
) -> None:
    store = _store(pg_schema, app_name, max_size=2)
    try:
        v1 = await store.put("k", b"original", expected_version=0)
        lock = _RowLock(pg_schema, "k")
        outcome: list[BaseException | int] = []

        async def write() -> None:
            try:
                outcome.append(await store.put("k", b"lost?", expected_version=v1))
            except VaultUnavailable as exc:
                outcome.append(exc)

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(write)
                pid = await _blocked_on_lock(app_name)
                _terminate([pid])  # the write's connection dies while it waits
        finally:
            lock.release()
        assert len(outcome) == 1
        assert isinstance(outcome[0], VaultUnavailable), outcome
        # nothing lost, nothing half-written; the pool serves the next calls
        assert await store.get("k") == StoredRow(v1, b"original")
        v2 = await store.put("k", b"next", expected_version=v1)
        assert await store.get("k") == StoredRow(v2, b"next")
    finally:
        await store.aclose()


@pytest.mark.anyio
async def test_idle_connections_killed_reads_recover_without_error(
    pg_schema: str, app_name: str
) -> None:
    store = _store(pg_schema, app_name, min_size=2, max_size=3)
    try:
        v1 = await store.put("k", b"one", expected_version=0)
        with anyio.fail_after(5):
            while len(_backends(app_name)) < 2:  # noqa: ASYNC110 - another process's state
                await anyio.sleep(0.02)
        _terminate([pid for pid, _, _ in _backends(app_name)])  # e.g. a server restart
        assert await store.get("k") == StoredRow(v1, b"one")  # retried on a new connection
        assert await store.acquire_lease("n", "h1", ttl=30) is True
        assert await store.put("k", b"two", expected_version=v1) > v1
    finally:
        await store.aclose()


@pytest.mark.anyio
async def test_statement_timeout_is_vault_unavailable_and_rows_intact(
    pg_schema: str, app_name: str
) -> None:
    store = _store(pg_schema, app_name, statement_timeout=0.3)
    try:
        v1 = await store.put("k", b"original", expected_version=0)
        lock = _RowLock(pg_schema, "k")
        try:
            started = time.monotonic()
            with pytest.raises(VaultUnavailable, match="statement_timeout"):
                await store.put("k", b"late", expected_version=v1)
            assert 0.25 <= time.monotonic() - started < 3
        finally:
            lock.release()
        assert await store.get("k") == StoredRow(v1, b"original")
        assert await store.put("k", b"now", expected_version=v1) > v1
    finally:
        await store.aclose()


@pytest.mark.anyio
async def test_cancelled_write_finishes_as_a_whole(pg_schema: str, app_name: str) -> None:
    """The worker thread is never abandoned: a cancelled caller waits for its statement
    (bounded by statement_timeout), and the store stays usable."""
    store = _store(pg_schema, app_name, statement_timeout=0.5)
    try:
        v1 = await store.put("k", b"original", expected_version=0)
        lock = _RowLock(pg_schema, "k")
        try:
            started = time.monotonic()
            with anyio.move_on_after(0.1), pytest.raises(VaultUnavailable):
                # cancelled at 0.1 s, the caller still waits for the statement and gets
                # its real outcome: statement_timeout, nothing written
                await store.put("k", b"cancelled", expected_version=v1)
            assert time.monotonic() - started >= 0.4
        finally:
            lock.release()
        assert await store.get("k") == StoredRow(v1, b"original")
        assert await store.put("k", b"next", expected_version=v1) > v1
    finally:
        await store.aclose()


@pytest.mark.anyio
async def test_lease_survives_its_holders_connection(pg_schema: str, app_name: str) -> None:
    one, two = _store(pg_schema, app_name), _store(pg_schema)
    try:
        assert await one.acquire_lease("refresh:x", "holder-1", ttl=30) is True
        _terminate([pid for pid, _, _ in _backends(app_name)])
        assert await two.acquire_lease("refresh:x", "holder-2", ttl=30) is False
        assert await one.acquire_lease("refresh:x", "holder-1", ttl=30) is True
        await one.release_lease("refresh:x", "holder-1")
        assert await two.acquire_lease("refresh:x", "holder-2", ttl=30) is True
    finally:
        await one.aclose()
        await two.aclose()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.anyio
async def test_unreachable_server_is_vault_unavailable() -> None:
    store = _pg().PostgresStore(
        f"postgresql://postgres@127.0.0.1:{_closed_port()}/test", pool_timeout=0.5
    )
    try:
        started = time.monotonic()
        with pytest.raises(VaultUnavailable):
            await store.get("k")
        assert time.monotonic() - started < 3
    finally:
        await store.aclose()
    with pytest.raises(VaultUnavailable, match="closed"):
        await store.get("k")


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_works_on_asyncio_and_trio(pg_schema: str) -> None:
    store = _store(pg_schema)
    try:
        v = await store.put("k", b"x", expected_version=0)
        with pytest.raises(VersionConflict):
            await store.put("k", b"y", expected_version=0)
        assert await store.get("k") == StoredRow(v, b"x")
    finally:
        await store.aclose()


@pytest.mark.anyio
async def test_vault_round_trip_and_rotation(pg_schema: str) -> None:
    """TokenVault over the store: blobs (approvals, MCP registrations) and key rotation."""
    old = Keyring({"old": base64.b64encode(secrets.token_bytes(32)).decode()}, "old")
    async with TokenVault.from_url(_postgres.url(pg_schema), keys=old) as vault:
        await vault.put_blob("ciba", "req-1", b"pending", expected_version=0)
        await vault.put_blob("mcp", "https://mcp.example", b"registration", expected_version=0)
    new_material = base64.b64encode(secrets.token_bytes(32)).decode()
    both = Keyring({"new": new_material, "old": old.get("old") or b""}, "new")
    async with TokenVault.from_url(_postgres.url(pg_schema), keys=both) as vault:
        assert await vault.rotate_keys() == 2
        assert await vault.rotate_keys() == 0
    only_new = Keyring({"new": new_material}, "new")
    async with TokenVault.from_url(_postgres.url(pg_schema), keys=only_new) as vault:
        assert (await vault.get_blob("ciba", "req-1")).data == b"pending"  # type: ignore[union-attr]
        assert await vault.blob_names("mcp") == ["https://mcp.example"]
    with _postgres.admin() as conn:
        blobs = conn.execute(f'SELECT blob FROM "{pg_schema}".entries').fetchall()
    assert blobs
    assert all(b"pending" not in bytes(b[0]) for b in blobs)  # encrypted at rest


def test_cli_migrate(pg_schema: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from agent_identity.cli import main

    url = _postgres.url(pg_schema)
    assert main(["vault", "migrate", "--url", url]) == 0
    first = capsys.readouterr().out
    assert f"from version 0 to {_pg().SCHEMA_VERSION}" in first
    assert main(["vault", "migrate", "--url", url]) == 0
    assert "already at version" in capsys.readouterr().out
    sqlite = f"sqlite:///{tmp_path / 'v.sqlite3'}"
    assert main(["vault", "migrate", "--url", sqlite]) == 0
    assert "SQLite" in capsys.readouterr().out
    assert (tmp_path / "v.sqlite3").exists()
    assert main(["vault", "migrate", "--url", "postgresql://h/db?schema=Bad"]) == 1
    assert "ConfigurationError" in capsys.readouterr().err


@pytest.mark.anyio
async def test_role_without_ddl_rights_is_told_to_run_migrate(pg_schema: str) -> None:
    role = f"ai_test_role_{secrets.token_hex(4)}"
    with _postgres.admin() as conn:
        conn.execute(f'CREATE ROLE "{role}" LOGIN')
    try:
        from psycopg.conninfo import make_conninfo

        dsn = make_conninfo(_postgres.postgres_dsn(), user=role)
        store = _pg().PostgresStore(dsn, schema=pg_schema, pool_timeout=2)
        try:
            with pytest.raises(VaultUnavailable, match="vault migrate` as its owner"):
                await store.get("k")
        finally:
            await store.aclose()
    finally:
        with _postgres.admin() as conn:
            conn.execute(f'DROP ROLE IF EXISTS "{role}"')
