"""The PostgreSQL store of the token vault: one schema shared by a fleet of processes and hosts.

Install with ``pip install 'agent-identity-sdk[postgres]'`` (psycopg 3 with its pool); select it
with ``TokenVault.from_url("postgresql://...")`` or ``AGENT_IDENTITY_VAULT_URL``. Nothing
imports this module (or the driver) until then. The contract is the one of every store
(:mod:`agent_identity.vault.store`); the vault encrypts before it writes (AES-256-GCM,
:mod:`agent_identity.vault.crypto`), so the database only ever holds sealed blobs.

Design:

- **Driver.** psycopg 3, *synchronous* connections from a ``psycopg_pool.ConnectionPool``
  (lazily opened, ``min_size=1``, ``max_size=5`` by default), each call run in a worker
  thread (``anyio.to_thread.run_sync``) as :class:`~agent_identity.vault.sqlite.SQLiteStore`
  does. That keeps the store usable on both anyio backends (asyncio and trio); the async
  drivers (asyncpg, psycopg's ``AsyncConnection``) run on asyncio only. A worker thread is
  never abandoned: a cancelled caller waits for the running statement, which
  ``statement_timeout`` bounds, so a write is committed or rolled back as a whole.
- **Statements.** Connections are in autocommit mode and every operation is ONE statement,
  atomic on its own: compare-and-swap is ``UPDATE ... WHERE key = $1 AND version = $2``
  (``INSERT ... ON CONFLICT DO NOTHING`` for ``expected_version=0``). A row the vault seals
  for its version (a sealer as ``blob``) takes two: ``nextval`` first (with the row's
  current version, so a lost race stops there), then the compare-and-swap with that
  version. Under READ COMMITTED
  a concurrent updater waits for the row lock and re-checks the ``WHERE`` clause on the new
  row, so exactly one of N racing writers wins (RFC 6749 §10.4: a rotated refresh token
  must replace its predecessor exactly once; security item 25).
- **Versions** come from a store-wide ``SEQUENCE`` (``nextval`` is never rolled back and
  never repeats), so a deleted and recreated row never gets back a version someone cached.
- **Keys** are ``text COLLATE "C"``: byte order of UTF-8 is code-point order, which is what
  ``keys()`` sorts by and what the prefix range scan (``key >= prefix AND key < successor``,
  never ``LIKE`` with user data) needs, whatever the database's default collation
  (security item 26). PostgreSQL text cannot hold NUL: writes with a NUL in a key, lease name
  or holder raise :class:`~agent_identity.errors.ConfigurationError`; reads report "absent".
- **Leases** are rows (``leases``: name, holder, expiry) taken by one upsert whose
  ``WHERE`` lets the same holder extend and anyone take an expired lease. Expiry is the
  database server's ``clock_timestamp()``: the one clock every host shares (host clocks
  drift). Advisory locks were not used: they belong to a session, i.e. to one pooled
  connection that would have to stay checked out for the whole refresh, they have no
  expiry (a hung holder blocks everyone until its TCP connection dies) and no holder
  identity to make re-entry and "release only by the holder" explicit.
- **Schema** lives in its own PostgreSQL schema (default ``agent_identity``; ``?schema=``
  in the URL), every statement names it explicitly (no reliance on ``search_path``).
  Versioned migrations (:data:`MIGRATIONS`) are recorded in ``schema_migrations`` and
  applied in one transaction under a transaction-level advisory lock, so processes that
  start together migrate once. The first call of a store checks the schema version (one
  read); if it is behind, the store migrates (``auto_migrate=True``) or raises
  :class:`~agent_identity.errors.VaultUnavailable` asking for ``agent-identity vault
  migrate``. A schema newer than this code is used as is unless one of the newer
  migrations is marked ``breaking``.
- **Errors.** Data or index corruption (SQLSTATE ``XX001``/``XX002``) becomes
  :class:`~agent_identity.errors.VaultCorrupted`; values PostgreSQL cannot hold (classes
  ``22``/``54``) :class:`~agent_identity.errors.ConfigurationError`; everything else
  (connection refused or lost, ``statement_timeout``, pool exhausted, permissions, missing
  schema) :class:`~agent_identity.errors.VaultUnavailable`. No psycopg exception escapes.
  After a lost connection the pool's idle connections are checked (dead ones replaced), and
  the operations that are safe to repeat (reads, lease acquire/release: re-acquiring as the
  same holder only extends) are retried once; writes are not, since whether they committed
  is unknown: the caller re-reads (``load(fresh=True)``) as after a ``VersionConflict``.
- **Secrets.** Neither the DSN's password nor any blob appears in a ``repr``, log line or
  exception message; the ``repr`` names host, database and schema only.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import re
import threading
from collections.abc import Callable, Mapping
from typing import Any, Final, NamedTuple, TypeVar
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import anyio.to_thread
import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool, PoolTimeout

from agent_identity.errors import (
    AgentIdentityError,
    ConfigurationError,
    VaultCorrupted,
    VaultUnavailable,
    VersionConflict,
)
from agent_identity.vault.store import (
    Sealer,
    StoredRow,
    blob_for,
    check_expected,
    check_key,
    check_prefix,
    check_put_blob,
    check_ttl,
    prefix_successor,
)

__all__ = [
    "DEFAULT_SCHEMA",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "Migration",
    "PostgresStore",
]

logger = logging.getLogger("agent_identity.vault")

_T = TypeVar("_T")

#: The PostgreSQL schema the vault's tables live in unless ``schema=`` says otherwise.
DEFAULT_SCHEMA: Final = "agent_identity"
#: URL schemes that select this store.
SCHEMES: Final = ("postgresql", "postgres")

_SCHEMA_NAME: Final = re.compile(r"[a-z_][a-z0-9_]{0,62}")


class Migration(NamedTuple):
    """One schema upgrade. ``{s}`` in a statement is the quoted schema name and ``{seq}``
    the qualified name of the version sequence (a string literal). ``breaking`` means code
    that only knows earlier versions must not use the upgraded schema."""

    version: int
    description: str
    breaking: bool
    statements: tuple[str, ...]


#: Schema upgrades, applied in order, each recorded in ``schema_migrations``.
MIGRATIONS: Final[tuple[Migration, ...]] = (
    Migration(
        1,
        "entries (grants and blobs), leases, store-wide version sequence",
        False,
        (
            "CREATE SEQUENCE {s}.version_seq AS bigint MINVALUE 1 NO CYCLE",
            # Generic rows: grants, pending approvals, MCP registrations. fillfactor leaves
            # room on each page so that rewriting a row (every refresh) stays a HOT update.
            "CREATE TABLE {s}.entries ("
            ' key text COLLATE "C" PRIMARY KEY,'
            " version bigint NOT NULL CHECK (version > 0),"
            " blob bytea NOT NULL,"
            " updated_at timestamptz NOT NULL DEFAULT now())"
            " WITH (fillfactor = 80)",
            "CREATE TABLE {s}.leases ("
            ' name text COLLATE "C" PRIMARY KEY,'
            " holder text NOT NULL,"
            " expires_at timestamptz NOT NULL)"
            " WITH (fillfactor = 80)",
        ),
    ),
    Migration(
        2,
        "rows sealed for their version (AIV2 blobs, rollback detection); earlier releases "
        "cannot read them",
        True,
        (),
    ),
)
#: The schema version this code writes and reads.
SCHEMA_VERSION: Final = MIGRATIONS[-1].version

_MIGRATIONS_TABLE: Final = (
    "CREATE TABLE {s}.schema_migrations ("
    " version integer PRIMARY KEY,"
    " description text NOT NULL,"
    " breaking boolean NOT NULL DEFAULT false,"
    " applied_at timestamptz NOT NULL DEFAULT now())"
)

_QUERIES: Final = {
    "state": "SELECT coalesce(max(version), 0),"
    " coalesce(bool_or(breaking) FILTER (WHERE version > %s), false)"
    " FROM {s}.schema_migrations",
    "record": "INSERT INTO {s}.schema_migrations (version, description, breaking)"
    " VALUES (%s, %s, %s)",
    "create_schema": "CREATE SCHEMA {s}",
    "migrations_table": _MIGRATIONS_TABLE,
    "get": "SELECT version, blob FROM {s}.entries WHERE key = %s",
    "version": "SELECT version FROM {s}.entries WHERE key = %s",
    "insert": "INSERT INTO {s}.entries (key, version, blob) VALUES (%s, nextval({seq}), %s)"
    " ON CONFLICT (key) DO NOTHING RETURNING version",
    "update": "UPDATE {s}.entries SET version = nextval({seq}), blob = %s, updated_at = now()"
    " WHERE key = %s AND version = %s RETURNING version",
    "reserve": "SELECT nextval({seq}), (SELECT version FROM {s}.entries WHERE key = %s)",
    "insert_at": "INSERT INTO {s}.entries (key, version, blob) VALUES (%s, %s, %s)"
    " ON CONFLICT (key) DO NOTHING RETURNING version",
    "update_at": "UPDATE {s}.entries SET version = %s, blob = %s, updated_at = now()"
    " WHERE key = %s AND version = %s RETURNING version",
    "delete": "DELETE FROM {s}.entries WHERE key = %s RETURNING version",
    "delete_at": "DELETE FROM {s}.entries WHERE key = %s AND version = %s RETURNING version",
    "keys_from": "SELECT key FROM {s}.entries WHERE key >= %s ORDER BY key",
    "keys_range": "SELECT key FROM {s}.entries WHERE key >= %s AND key < %s ORDER BY key",
    "acquire": "INSERT INTO {s}.leases AS held (name, holder, expires_at)"
    " VALUES (%s, %s, clock_timestamp() + make_interval(secs => %s))"
    " ON CONFLICT (name) DO UPDATE"
    " SET holder = excluded.holder, expires_at = excluded.expires_at"
    " WHERE held.holder = excluded.holder OR held.expires_at <= clock_timestamp()"
    " RETURNING 1",
    "release": "DELETE FROM {s}.leases WHERE name = %s AND holder = %s",
}

_CORRUPT_STATES: Final = frozenset({"XX001", "XX002"})  # data_corrupted, index_corrupted


def _render(template: str, schema: str) -> str:
    """``template`` with ``{s}`` the quoted schema and ``{seq}`` the version sequence."""
    ident = sql.Identifier(schema)
    seq = sql.Literal(f"{ident.as_string(None)}.version_seq")
    return sql.SQL(template).format(s=ident, seq=seq).as_string(None)


def _lock_id(schema: str) -> int:
    """The advisory lock key that serialises migrations of ``schema``."""
    digest = hashlib.sha256(f"agent-identity vault migrate {schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _map_error(exc: psycopg.Error) -> AgentIdentityError:
    state = exc.sqlstate
    name = type(exc).__name__
    if isinstance(exc, PoolTimeout):
        return VaultUnavailable(
            "no vault database connection became available within pool_timeout (PoolTimeout)"
        )
    if state in _CORRUPT_STATES:
        return VaultCorrupted(f"the vault database reports damaged data ({name}, {state})")
    if state == "57014":
        return VaultUnavailable(f"a vault database statement ran past statement_timeout ({name})")
    if state is not None and state[:2] in ("22", "54"):
        return ConfigurationError(f"a value cannot be stored in PostgreSQL ({name}, {state})")
    if state in ("42P01", "3F000"):
        return VaultUnavailable(
            f"the vault schema or its tables are missing ({name}); "
            "run `agent-identity vault migrate`"
        )
    if state == "42501":
        return VaultUnavailable(f"the vault database refused the operation ({name}, {state})")
    if state is None and isinstance(exc, psycopg.OperationalError):
        return VaultUnavailable(f"the vault database connection failed or was lost ({name})")
    suffix = f", {state}" if state else ""
    return VaultUnavailable(f"the vault database cannot be used ({name}{suffix})")


def _conflict(expected: int, found: int | None = None) -> VersionConflict:
    if expected == 0:
        return VersionConflict("vault row changed: expected no row, found one")
    what = "another version or no row" if found is None else str(found)
    return VersionConflict(f"vault row changed: expected version {expected}, found {what}")


def _storable(text: str) -> bool:
    return "\x00" not in text


def _require_storable(text: str, what: str) -> None:
    if not _storable(text):
        raise ConfigurationError(f"a PostgreSQL vault {what} cannot contain NUL characters")


def _positive(value: float, what: str) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConfigurationError(f"{what} must be a finite number of seconds > 0")
    return float(value)


def split_url(url: str) -> tuple[str, str]:
    """Split a vault URL ``postgresql://...[?schema=NAME&libpq-params]`` into the libpq
    connection URI (without ``schema``) and the schema name (default
    :data:`DEFAULT_SCHEMA`). Raises :class:`~agent_identity.errors.ConfigurationError`;
    the message never quotes the URL (it may hold a password)."""
    if not isinstance(url, str):
        raise ConfigurationError("vault URL must be a string")
    try:
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError:
        raise ConfigurationError("the PostgreSQL vault URL is not a valid URL") from None
    if parts.scheme.lower() not in SCHEMES:
        raise ConfigurationError("a PostgreSQL vault URL starts with postgresql:// or postgres://")
    if parts.fragment:
        raise ConfigurationError("a PostgreSQL vault URL takes no fragment")
    schemas = [value for name, value in query if name == "schema"]
    if len(schemas) > 1:
        raise ConfigurationError("the PostgreSQL vault URL names schema= more than once")
    if not schemas:
        return url, DEFAULT_SCHEMA
    rest = [(name, value) for name, value in query if name != "schema"]
    # libpq percent-decodes URI parameters but does not read "+" as a space
    encoded = urlencode(rest, quote_via=quote)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, encoded, "")), schemas[0]


class PostgresStore:
    """A :class:`~agent_identity.vault.store.VaultStore` in a PostgreSQL schema.

    ``dsn`` is a libpq connection string or URI (``postgresql://user@host:5432/db``,
    ``host=... dbname=...``); libpq environment variables (``PGHOST``, ``PGPASSWORD``,
    ``PGSSLMODE``...) and ``~/.pgpass`` apply as usual. ``schema`` names the PostgreSQL
    schema (``[a-z_][a-z0-9_]{0,62}``). Pool: ``min_size``/``max_size`` connections per
    store; a call waits at most ``pool_timeout`` seconds for one. ``statement_timeout``
    bounds every statement (including waits for row locks) and ``connect_timeout`` every
    connection attempt; both in seconds. ``auto_migrate=False`` never changes the schema
    (run ``agent-identity vault migrate`` or :meth:`migrate` instead).

    Nothing connects until the first call.
    """

    def __init__(
        self,
        dsn: str,
        *,
        schema: str = DEFAULT_SCHEMA,
        min_size: int = 1,
        max_size: int = 5,
        pool_timeout: float = 5.0,
        statement_timeout: float = 5.0,
        connect_timeout: float = 5.0,
        auto_migrate: bool = True,
    ) -> None:
        if not isinstance(dsn, str):
            raise ConfigurationError("the PostgreSQL DSN must be a string")
        try:
            params = conninfo_to_dict(dsn)
        except psycopg.Error:
            raise ConfigurationError("the PostgreSQL DSN is not a valid libpq conninfo") from None
        if not isinstance(schema, str) or _SCHEMA_NAME.fullmatch(schema) is None:
            raise ConfigurationError("the vault schema name must match [a-z_][a-z0-9_]{0,62}")
        for value, what in ((min_size, "min_size"), (max_size, "max_size")):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigurationError(f"{what} must be an integer >= 0")
        if max_size < max(min_size, 1):
            raise ConfigurationError("max_size must be >= min_size and >= 1")
        self._dsn = dsn
        self._schema = schema
        self._min_size = min_size
        self._max_size = max_size
        self._pool_timeout = _positive(pool_timeout, "pool_timeout")
        self._statement_ms = int(_positive(statement_timeout, "statement_timeout") * 1000) or 1
        connect = _positive(connect_timeout, "connect_timeout")
        self._kwargs: dict[str, Any] = {"autocommit": True}
        if "connect_timeout" not in params and "PGCONNECT_TIMEOUT" not in os.environ:
            self._kwargs["connect_timeout"] = max(2, math.ceil(connect))  # libpq's minimum
        if "application_name" not in params and "PGAPPNAME" not in os.environ:
            self._kwargs["application_name"] = "agent-identity-vault"
        self._where = self._describe(params, schema)
        self._auto_migrate = bool(auto_migrate)
        self._q = {name: _render(text, schema) for name, text in _QUERIES.items()}
        self._migrations_name = f"{sql.Identifier(schema).as_string(None)}.schema_migrations"
        self._lock = threading.Lock()
        self._prepare_lock = threading.Lock()
        self._pool: ConnectionPool | None = None
        self._ready = False
        self._closed = False

    @classmethod
    def from_url(cls, url: str, **options: Any) -> PostgresStore:
        """A store from a vault URL (see :func:`split_url`); ``options`` are passed to the
        constructor."""
        dsn, schema = split_url(url)
        return cls(dsn, schema=schema, **options)

    @staticmethod
    def _describe(params: Mapping[str, Any], schema: str) -> str:
        host = params.get("host") or os.environ.get("PGHOST") or "local socket"
        port = params.get("port") or os.environ.get("PGPORT")
        dbname = params.get("dbname") or os.environ.get("PGDATABASE") or "(default)"
        where = f"{host}:{port}" if port else str(host)
        return f"host={where!r}, dbname={dbname!r}, schema={schema!r}"

    @property
    def schema(self) -> str:
        return self._schema

    def __repr__(self) -> str:
        return f"PostgresStore({self._where})"

    # -- plumbing ----------------------------------------------------------------------------

    def _configure(self, conn: psycopg.Connection[Any]) -> None:
        conn.execute(
            "SELECT set_config('statement_timeout', %s, false),"
            " set_config('idle_in_transaction_session_timeout', %s, false)",
            (f"{self._statement_ms}ms", f"{max(self._statement_ms * 2, 10_000)}ms"),
        )

    def _pool_or_open(self) -> ConnectionPool:
        with self._lock:
            if self._closed:
                raise VaultUnavailable("the vault store is closed")
            if self._pool is None:
                pool: ConnectionPool = ConnectionPool(
                    self._dsn,
                    kwargs=self._kwargs,
                    min_size=self._min_size,
                    max_size=self._max_size,
                    open=False,
                    configure=self._configure,
                    timeout=self._pool_timeout,
                    name="agent-identity-vault",
                )
                try:
                    pool.open(wait=False)
                except psycopg.Error as exc:
                    raise _map_error(exc) from exc
                self._pool = pool
            return self._pool

    async def _run(
        self, op: Callable[[psycopg.Connection[Any]], _T], *, safe: bool, prepare: bool = True
    ) -> _T:
        # Not abandonable on cancel: the statement finishes (commit or rollback) first.
        return await anyio.to_thread.run_sync(self._call, op, safe, prepare)

    def _call(self, op: Callable[[psycopg.Connection[Any]], _T], safe: bool, prepare: bool) -> _T:
        pool = self._pool_or_open()
        attempt = 0
        while True:
            attempt += 1
            conn: psycopg.Connection[Any] | None = None
            try:
                with pool.connection(timeout=self._pool_timeout) as conn:
                    if prepare and not self._ready:
                        self._prepare(conn)
                    return op(conn)
            except psycopg.Error as exc:
                if conn is None or not conn.broken:
                    raise _map_error(exc) from exc
                # The connection died (server restart, failover, pg_terminate_backend, a
                # network cut): its idle siblings may be dead too. Replace those now so the
                # next call recovers, and repeat this call once if it is safe to repeat.
                logger.warning("vault database connection lost (%s)", type(exc).__name__)
                with contextlib.suppress(psycopg.Error):
                    pool.check()
                if not safe or attempt > 1:
                    raise _map_error(exc) from exc

    def _prepare(self, conn: psycopg.Connection[Any]) -> None:
        with self._prepare_lock:
            if self._ready:
                return
            if conn.info.parameter_status("server_encoding") != "UTF8":
                raise ConfigurationError("the vault database must use the UTF8 encoding")
            current, breaking = self._schema_state(conn)
            if current < SCHEMA_VERSION:
                if not self._auto_migrate:
                    raise VaultUnavailable(
                        f"the vault schema {self._schema!r} is at version {current}, this "
                        f"agent-identity needs {SCHEMA_VERSION}: run `agent-identity vault "
                        "migrate`"
                    )
                try:
                    self._migrate(conn)
                except psycopg.errors.InsufficientPrivilege as exc:
                    raise VaultUnavailable(
                        f"this database role may not create or upgrade the vault schema "
                        f"{self._schema!r}: run `agent-identity vault migrate` as its owner"
                    ) from exc
            elif breaking:
                raise self._too_new(current)
            self._ready = True

    def _too_new(self, current: int) -> VaultUnavailable:
        return VaultUnavailable(
            f"the vault schema {self._schema!r} is at version {current}, which this "
            f"agent-identity (schema version {SCHEMA_VERSION}) cannot use; "
            "upgrade agent-identity-sdk"
        )

    def _schema_state(self, conn: psycopg.Connection[Any]) -> tuple[int, bool]:
        """(current schema version or 0, whether a newer applied migration is breaking)."""
        try:
            row = conn.execute(self._q["state"], (SCHEMA_VERSION,)).fetchone()
        except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName):
            return 0, False
        assert row is not None
        return int(row[0]), bool(row[1])

    def _migrate(self, conn: psycopg.Connection[Any]) -> tuple[int, int]:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_id(self._schema),))
            found = conn.execute(
                "SELECT 1 FROM pg_namespace WHERE nspname = %s", (self._schema,)
            ).fetchone()
            if found is None:
                conn.execute(self._q["create_schema"])
            table = conn.execute("SELECT to_regclass(%s)", (self._migrations_name,)).fetchone()
            if table is None or table[0] is None:
                conn.execute(self._q["migrations_table"])
            before, breaking = self._schema_state(conn)
            if before > SCHEMA_VERSION:
                if breaking:
                    raise self._too_new(before)
                return before, before
            for migration in MIGRATIONS:
                if migration.version <= before:
                    continue
                for statement in migration.statements:
                    conn.execute(_render(statement, self._schema))
                conn.execute(
                    self._q["record"],
                    (migration.version, migration.description, migration.breaking),
                )
        if before < SCHEMA_VERSION:
            logger.info(
                "vault schema %r migrated from version %d to %d",
                self._schema,
                before,
                SCHEMA_VERSION,
            )
        return before, SCHEMA_VERSION

    # -- maintenance -------------------------------------------------------------------------

    async def migrate(self) -> tuple[int, int]:
        """Create the schema or bring it to :data:`SCHEMA_VERSION` (whatever
        ``auto_migrate`` says); returns ``(version before, version after)``. Safe to run
        from several processes at once and to repeat."""

        def op(conn: psycopg.Connection[Any]) -> tuple[int, int]:
            with self._prepare_lock:
                result = self._migrate(conn)
                self._ready = True
                return result

        return await self._run(op, safe=False, prepare=False)

    # -- VaultStore --------------------------------------------------------------------------

    async def get(self, key: str) -> StoredRow | None:
        check_key(key)
        if not _storable(key):
            return None

        def op(conn: psycopg.Connection[Any]) -> StoredRow | None:
            row = conn.execute(self._q["get"], (key,)).fetchone()
            return None if row is None else StoredRow(int(row[0]), bytes(row[1]))

        return await self._run(op, safe=True)

    async def version(self, key: str) -> int | None:
        check_key(key)
        if not _storable(key):
            return None

        def op(conn: psycopg.Connection[Any]) -> int | None:
            row = conn.execute(self._q["version"], (key,)).fetchone()
            return None if row is None else int(row[0])

        return await self._run(op, safe=True)

    async def put(self, key: str, blob: bytes | Sealer, *, expected_version: int) -> int:
        check_key(key)
        source = check_put_blob(blob)
        check_expected(expected_version)
        _require_storable(key, "key")

        def op(conn: psycopg.Connection[Any]) -> int:
            if callable(source):
                return sealed(conn, source)
            if expected_version == 0:
                row = conn.execute(self._q["insert"], (key, source)).fetchone()
            else:
                row = conn.execute(self._q["update"], (source, key, expected_version)).fetchone()
            if row is None:
                raise _conflict(expected_version)
            return int(row[0])

        def sealed(conn: psycopg.Connection[Any], seal: Sealer) -> int:
            # The blob depends on the new version: take it from the sequence first (one
            # round trip that also reads the current version, so a lost race ends here),
            # then compare-and-swap with it. nextval() is issued after the caller learned
            # expected_version, so the new version is greater; an unused one is a gap.
            reserved = conn.execute(self._q["reserve"], (key,)).fetchone()
            assert reserved is not None
            new, current = int(reserved[0]), reserved[1]
            if (current or 0) != expected_version:
                raise _conflict(expected_version, current or 0)
            data = blob_for(seal, new)
            if expected_version == 0:
                row = conn.execute(self._q["insert_at"], (key, new, data)).fetchone()
            else:
                row = conn.execute(
                    self._q["update_at"], (new, data, key, expected_version)
                ).fetchone()
            if row is None:
                raise _conflict(expected_version)
            return int(row[0])

        return await self._run(op, safe=False)

    async def delete(self, key: str, *, expected_version: int | None = None) -> bool:
        check_key(key)
        check_expected(expected_version, optional=True)
        if not _storable(key):
            return False

        def op(conn: psycopg.Connection[Any]) -> bool:
            if expected_version is None:
                return conn.execute(self._q["delete"], (key,)).fetchone() is not None
            if conn.execute(self._q["delete_at"], (key, expected_version)).fetchone():
                return True
            row = conn.execute(self._q["version"], (key,)).fetchone()
            if row is None:
                return False  # gone either way
            raise VersionConflict(
                f"vault row changed: expected version {expected_version}, found {row[0]}"
            )

        return await self._run(op, safe=False)

    async def keys(self, prefix: str = "") -> list[str]:
        check_prefix(prefix)
        if not _storable(prefix):
            return []
        upper = prefix_successor(prefix)

        def op(conn: psycopg.Connection[Any]) -> list[str]:
            if upper is None:
                rows = conn.execute(self._q["keys_from"], (prefix,)).fetchall()
            else:
                rows = conn.execute(self._q["keys_range"], (prefix, upper)).fetchall()
            return [str(r[0]) for r in rows]

        return await self._run(op, safe=True)

    async def acquire_lease(self, name: str, holder: str, ttl: float) -> bool:
        check_key(name, "lease name")
        check_key(holder, "lease holder")
        seconds = check_ttl(ttl)
        _require_storable(name, "lease name")
        _require_storable(holder, "lease holder")

        def op(conn: psycopg.Connection[Any]) -> bool:
            return conn.execute(self._q["acquire"], (name, holder, seconds)).fetchone() is not None

        # Safe to repeat: a holder that re-acquires its own lease only extends it.
        return await self._run(op, safe=True)

    async def release_lease(self, name: str, holder: str) -> None:
        check_key(name, "lease name")
        check_key(holder, "lease holder")
        if not (_storable(name) and _storable(holder)):
            return

        def op(conn: psycopg.Connection[Any]) -> None:
            conn.execute(self._q["release"], (name, holder))

        await self._run(op, safe=True)

    async def aclose(self) -> None:
        def close() -> None:
            with self._lock:
                self._closed = True
                pool, self._pool = self._pool, None
            if pool is not None:
                pool.close(timeout=self._pool_timeout)

        await anyio.to_thread.run_sync(close)
