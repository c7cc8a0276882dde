"""The embedded default store: one SQLite file, shared safely by several processes.

Design (the contract is in :mod:`agent_identity.vault.store`):

- stdlib :mod:`sqlite3`, run in worker threads (``anyio.to_thread.run_sync``) over ONE
  connection per store, serialised by a :class:`threading.Lock`; opened lazily on first use.
- WAL journal (readers never wait for a writer) and ``synchronous=FULL`` by default: with
  WAL, ``NORMAL`` survives a process crash but may lose the last commits on power loss or
  an OS crash; a lost commit here can be a rotated refresh token, whose predecessor the
  server has already invalidated (security item 25), which would force a new consent. Vault
  writes follow a network round trip anyway, so the extra fsync is cheap. ``NORMAL`` can be
  chosen for throughput.
- ``busy_timeout`` (default 5 s): how long a write waits for another process's write lock;
  past it, :class:`~agent_identity.errors.VaultUnavailable`.
- every write is one ``BEGIN IMMEDIATE`` transaction; compare-and-swap is
  ``UPDATE ... WHERE key = ? AND version = ?`` inside it; versions come from a store-wide
  counter in the same transaction (never reused, see the store contract), and a sealer
  passed as ``blob`` runs inside it too, once the new version is known.
- prefix listing is a range scan (``key >= prefix AND key < successor``), never ``LIKE``
  with user data.
- schema version in ``PRAGMA user_version``, upgraded by :data:`MIGRATIONS` in one
  ``BEGIN IMMEDIATE`` transaction, so processes opening a new file together migrate once.
- the file is created with mode ``0600`` (SQLite gives its ``-wal``/``-shm`` files the
  same mode) and its directory, if created here, ``0700``.
- cancellation: the worker thread is never abandoned; a cancelled caller waits for the
  running statement (bounded by ``busy_timeout``), so a write is committed or rolled back
  as a whole and the connection stays usable.
- errors: ``SQLITE_CORRUPT``/``SQLITE_NOTADB`` become
  :class:`~agent_identity.errors.VaultCorrupted`, every other :class:`sqlite3.Error`
  :class:`~agent_identity.errors.VaultUnavailable`; no raw sqlite3 exception escapes.
"""

from __future__ import annotations

import logging
import math
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final, Literal, TypeVar

import anyio.to_thread

from agent_identity.clock import Clock
from agent_identity.errors import (
    ConfigurationError,
    VaultCorrupted,
    VaultError,
    VaultUnavailable,
    VersionConflict,
)
from agent_identity.vault.crypto import make_private_dir
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

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "SQLiteStore", "default_sqlite_path"]

logger = logging.getLogger("agent_identity.vault")

_T = TypeVar("_T")

MEMORY: Final = ":memory:"

#: Schema upgrades: ``(version, statements)``, applied in order to files below ``version``.
MIGRATIONS: Final[tuple[tuple[int, tuple[str, ...]], ...]] = (
    (
        1,
        (
            # Generic rows: grants now; pending approvals and MCP registrations later.
            "CREATE TABLE entries ("
            " key TEXT PRIMARY KEY,"
            " version INTEGER NOT NULL,"
            " blob BLOB NOT NULL,"
            " updated_at REAL NOT NULL)",
            "CREATE TABLE leases ("
            " name TEXT PRIMARY KEY,"
            " holder TEXT NOT NULL,"
            " expires_at REAL NOT NULL)",
            "CREATE TABLE meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
            "INSERT INTO meta (name, value) VALUES ('version_seq', 0)",
        ),
    ),
    # Rows are sealed for their version (format AIV2, rollback detection): no table
    # changes, but earlier releases cannot read such rows, so they must refuse the file
    # (they do for a user_version above theirs) instead of failing row by row.
    (2, ()),
)
SCHEMA_VERSION: Final = MIGRATIONS[-1][0]

_CORRUPT_CODES: Final = frozenset({11, 26})  # SQLITE_CORRUPT, SQLITE_NOTADB
_BUSY_CODES: Final = frozenset({5, 6})  # SQLITE_BUSY, SQLITE_LOCKED


def default_sqlite_path() -> Path:
    """``<user data dir>/agent-identity/vault.sqlite3`` (platformdirs)."""
    import platformdirs

    return Path(platformdirs.user_data_dir("agent-identity", appauthor=False)) / "vault.sqlite3"


def _map_error(exc: sqlite3.Error) -> VaultError:
    code = getattr(exc, "sqlite_errorcode", None)
    name = getattr(exc, "sqlite_errorname", None) or type(exc).__name__
    primary = code & 0xFF if isinstance(code, int) else None
    if primary in _CORRUPT_CODES:
        return VaultCorrupted(f"the vault database file is damaged or not a database ({name})")
    if primary in _BUSY_CODES:
        return VaultUnavailable(f"the vault database stayed locked past busy_timeout ({name})")
    return VaultUnavailable(f"the vault database cannot be used ({name})")


class SQLiteStore:
    """A :class:`~agent_identity.vault.store.VaultStore` in one SQLite file.

    ``path`` may be ``":memory:"`` (a private, non-persistent database). ``busy_timeout`` is
    in seconds. ``synchronous`` is ``"FULL"`` (default) or ``"NORMAL"`` (see the module
    docstring). ``clock`` supplies lease wall-clock time (``clock.time()``).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        busy_timeout: float = 5.0,
        synchronous: Literal["FULL", "NORMAL"] = "FULL",
        clock: Clock | None = None,
    ) -> None:
        if (
            isinstance(busy_timeout, bool)
            or not isinstance(busy_timeout, int | float)
            or not math.isfinite(busy_timeout)
            or busy_timeout < 0
        ):
            raise ConfigurationError("busy_timeout must be a finite number of seconds >= 0")
        if synchronous not in ("FULL", "NORMAL"):
            raise ConfigurationError("synchronous must be 'FULL' or 'NORMAL'")
        self._memory = os.fspath(path) == MEMORY
        self._path: str | Path = MEMORY if self._memory else Path(path).expanduser()
        self._busy_timeout = float(busy_timeout)
        self._synchronous = synchronous
        self._time = clock.time if clock is not None else time.time
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._closed = False

    @property
    def path(self) -> str | Path:
        return self._path

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self._path)!r})"

    # -- plumbing ----------------------------------------------------------------------------

    async def _run(self, op: Callable[[sqlite3.Connection], _T]) -> _T:
        # Not abandonable on cancel: the statement finishes (commit or rollback) first.
        return await anyio.to_thread.run_sync(self._call, op)

    async def _read(self, op: Callable[[sqlite3.Connection], _T]) -> _T:
        """A point read by primary key. In WAL mode readers never wait for writers and such
        a read takes a few microseconds, less than handing it to a worker thread; so when
        the connection is open and idle, it runs inline. Otherwise (first use, or the
        connection busy with a write) it goes to a worker thread like everything else."""
        conn = self._conn
        if conn is not None and not self._closed and self._lock.acquire(blocking=False):
            try:
                return self._invoke(conn, op)
            finally:
                self._lock.release()
        return await self._run(op)

    def _call(self, op: Callable[[sqlite3.Connection], _T]) -> _T:
        with self._lock:
            return self._invoke(self._connect(), op)

    def _invoke(self, conn: sqlite3.Connection, op: Callable[[sqlite3.Connection], _T]) -> _T:
        try:
            return op(conn)
        except BaseException as exc:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    logger.warning("vault database rollback failed", exc_info=False)
            if isinstance(exc, sqlite3.Error):
                raise _map_error(exc) from exc
            raise

    def _connect(self) -> sqlite3.Connection:
        if self._closed:
            raise VaultUnavailable("the vault store is closed")
        if self._conn is not None:
            return self._conn
        if not self._memory:
            assert isinstance(self._path, Path)
            self._prepare_file(self._path)
        try:
            conn = sqlite3.connect(
                self._path,
                timeout=self._busy_timeout,
                isolation_level=None,  # autocommit; transactions are explicit
                check_same_thread=False,  # guarded by self._lock
            )
        except sqlite3.Error as exc:
            raise _map_error(exc) from exc
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
            self._enable_wal(conn)
            conn.execute(f"PRAGMA synchronous = {self._synchronous}")
            conn.execute("PRAGMA trusted_schema = OFF")
            self._migrate(conn)
        except BaseException as exc:
            conn.close()
            if isinstance(exc, sqlite3.Error):
                raise _map_error(exc) from exc
            raise
        self._conn = conn
        return conn

    def _enable_wal(self, conn: sqlite3.Connection) -> None:
        # Switching a new file to WAL needs an exclusive lock, and SQLite reports
        # SQLITE_BUSY for it at once instead of calling the busy handler: processes that
        # open a new file together retry here, within busy_timeout.
        deadline = time.monotonic() + self._busy_timeout
        delay = 0.002
        while True:
            try:
                conn.execute("PRAGMA journal_mode = WAL").fetchone()
                return
            except sqlite3.OperationalError as exc:
                code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
                if code not in _BUSY_CODES or time.monotonic() + delay > deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    @staticmethod
    def _prepare_file(path: Path) -> None:
        make_private_dir(path.parent)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            if os.name == "posix":
                try:
                    mode = path.stat().st_mode
                except OSError:
                    return
                if mode & (stat.S_IRWXG | stat.S_IRWXO):
                    logger.warning(
                        "the vault database %s is accessible to group or others (mode %o); "
                        "restrict it with chmod 600",
                        path,
                        stat.S_IMODE(mode),
                    )
            return
        except OSError as exc:
            raise VaultUnavailable(
                f"cannot create the vault database {str(path)!r}: {exc.strerror}"
            ) from None
        os.close(fd)

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        current = conn.execute("PRAGMA user_version").fetchone()[0]
        if current == SCHEMA_VERSION:
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            current = conn.execute("PRAGMA user_version").fetchone()[0]
            if current > SCHEMA_VERSION:
                raise VaultUnavailable(
                    f"the vault database has schema version {current}, newer than this "
                    f"agent-identity supports ({SCHEMA_VERSION}); upgrade agent-identity-sdk"
                )
            for version, statements in MIGRATIONS:
                if current < version:
                    for statement in statements:
                        conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    @staticmethod
    def _write(conn: sqlite3.Connection, body: Callable[[], _T]) -> _T:
        conn.execute("BEGIN IMMEDIATE")
        result = body()  # on error, _call rolls back
        conn.execute("COMMIT")
        return result

    # -- VaultStore --------------------------------------------------------------------------

    async def get(self, key: str) -> StoredRow | None:
        check_key(key)

        def op(conn: sqlite3.Connection) -> StoredRow | None:
            row = conn.execute("SELECT version, blob FROM entries WHERE key = ?", (key,)).fetchone()
            return None if row is None else StoredRow(int(row[0]), bytes(row[1]))

        return await self._read(op)

    async def version(self, key: str) -> int | None:
        check_key(key)

        def op(conn: sqlite3.Connection) -> int | None:
            row = conn.execute("SELECT version FROM entries WHERE key = ?", (key,)).fetchone()
            return None if row is None else int(row[0])

        return await self._read(op)

    async def put(self, key: str, blob: bytes | Sealer, *, expected_version: int) -> int:
        check_key(key)
        source = check_put_blob(blob)
        check_expected(expected_version)

        def body(conn: sqlite3.Connection) -> int:
            row = conn.execute("SELECT version FROM entries WHERE key = ?", (key,)).fetchone()
            current = 0 if row is None else int(row[0])
            if current != expected_version:
                raise VersionConflict(
                    f"vault row changed: expected version {expected_version}, found {current}"
                )
            conn.execute("UPDATE meta SET value = value + 1 WHERE name = 'version_seq'")
            new = int(
                conn.execute("SELECT value FROM meta WHERE name = 'version_seq'").fetchone()[0]
            )
            data = blob_for(source, new)  # sealed for its version, inside the transaction
            if row is None:
                conn.execute(
                    "INSERT INTO entries (key, version, blob, updated_at) VALUES (?, ?, ?, ?)",
                    (key, new, data, self._time()),
                )
            else:
                cursor = conn.execute(
                    "UPDATE entries SET version = ?, blob = ?, updated_at = ?"
                    " WHERE key = ? AND version = ?",
                    (new, data, self._time(), key, expected_version),
                )
                if cursor.rowcount != 1:  # cannot happen under BEGIN IMMEDIATE; be sure
                    raise VersionConflict("vault row changed during the write")
            return new

        return await self._run(lambda conn: self._write(conn, lambda: body(conn)))

    async def delete(self, key: str, *, expected_version: int | None = None) -> bool:
        check_key(key)
        check_expected(expected_version, optional=True)

        def body(conn: sqlite3.Connection) -> bool:
            row = conn.execute("SELECT version FROM entries WHERE key = ?", (key,)).fetchone()
            if row is None:
                return False
            if expected_version is not None and int(row[0]) != expected_version:
                raise VersionConflict(
                    f"vault row changed: expected version {expected_version}, found {row[0]}"
                )
            conn.execute("DELETE FROM entries WHERE key = ?", (key,))
            return True

        return await self._run(lambda conn: self._write(conn, lambda: body(conn)))

    async def keys(self, prefix: str = "") -> list[str]:
        check_prefix(prefix)
        upper = prefix_successor(prefix)

        def op(conn: sqlite3.Connection) -> list[str]:
            if upper is None:
                rows = conn.execute(
                    "SELECT key FROM entries WHERE key >= ? ORDER BY key", (prefix,)
                ).fetchall()
            else:
                rows = conn.execute(
                    "SELECT key FROM entries WHERE key >= ? AND key < ? ORDER BY key",
                    (prefix, upper),
                ).fetchall()
            return [str(r[0]) for r in rows]

        return await self._run(op)

    async def acquire_lease(self, name: str, holder: str, ttl: float) -> bool:
        check_key(name, "lease name")
        check_key(holder, "lease holder")
        seconds = check_ttl(ttl)

        def body(conn: sqlite3.Connection) -> bool:
            now = self._time()
            row = conn.execute(
                "SELECT holder, expires_at FROM leases WHERE name = ?", (name,)
            ).fetchone()
            if row is not None and row[0] != holder and float(row[1]) > now:
                return False
            conn.execute(
                "INSERT OR REPLACE INTO leases (name, holder, expires_at) VALUES (?, ?, ?)",
                (name, holder, now + seconds),
            )
            return True

        return await self._run(lambda conn: self._write(conn, lambda: body(conn)))

    async def release_lease(self, name: str, holder: str) -> None:
        check_key(name, "lease name")
        check_key(holder, "lease holder")

        def op(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM leases WHERE name = ? AND holder = ?", (name, holder))

        await self._run(op)

    async def aclose(self) -> None:
        def close() -> None:
            with self._lock:
                self._closed = True
                conn, self._conn = self._conn, None
                if conn is not None:
                    try:
                        conn.close()
                    except sqlite3.Error as exc:
                        raise _map_error(exc) from exc

        await anyio.to_thread.run_sync(close)
