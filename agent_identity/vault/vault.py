"""The token vault: encrypted grants per tenant, user and connection (security 25, 26).

:class:`TokenVault` puts :class:`~agent_identity.vault.records.GrantRecord` s into a
:class:`~agent_identity.vault.store.VaultStore`, sealed with AES-256-GCM
(:mod:`agent_identity.vault.crypto`) with their storage key and the store version they are
written at as associated data.

Consistency model:

- Writes are compare-and-swap on the row version (``expected_version``); a lost race raises
  :class:`~agent_identity.errors.VersionConflict`: re-read with ``load(fresh=True)`` and
  decide again.
- Reads are served from an in-process cache while the entry was validated less than
  ``cache_ttl`` seconds ago (monotonic clock, security item 39); after that ``load`` asks the
  store for the row's version only and re-reads and decrypts only if it changed. A
  revocation or disconnect in another process is therefore seen within ``cache_ttl``.
  ``peek`` is the synchronous, I/O-free hot path over the same cache.
- Rollback: every row is sealed for the version the store gives it, and a vault remembers
  the newest version it has read or written of each row (also after a delete). A row at
  an older version than that, or at another version than it was sealed for, raises
  :class:`~agent_identity.errors.VaultRollback` and is never returned. Reads and writes
  compare with what was known when they *started*, so a read that raced with a newer
  write of this process is not a rollback. What this does and does not detect (a replay
  seen only by a process that never saw the newer row, a restarted process, a whole
  database restore) is in ``docs/vault.md``.
- Anything that must not run twice at once (a refresh with a rotating refresh token,
  security item 25) runs under :meth:`TokenVault.lease`, a named lease in the store that
  works across processes and hosts; inside it, read with ``load(fresh=True)``. The lease
  is short (``ttl``, default :data:`DEFAULT_LEASE_TTL`) and renewed by a heartbeat every
  ``ttl / 3`` while the body runs, so a crashed holder is overtaken within ``ttl``.
- Keys rotate without downtime: make a new key current, keep the old one for decryption,
  run :meth:`TokenVault.rotate_keys`, then remove the old key.
"""

from __future__ import annotations

import logging
import math
import random
import re
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final, NamedTuple
from urllib.parse import unquote

import anyio

from agent_identity.clock import Clock, SystemClock
from agent_identity.errors import (
    ConfigurationError,
    VaultCorrupted,
    VaultError,
    VaultRollback,
    VaultUnavailable,
    VersionConflict,
)
from agent_identity.vault.crypto import Cipher, KeyProvider, Keyring, default_keyring
from agent_identity.vault.records import (
    GRANT_KIND,
    GrantKey,
    GrantRecord,
    VersionedGrant,
    grant_prefix,
)
from agent_identity.vault.store import (
    MemoryStore,
    StoredRow,
    VaultStore,
    check_key,
    check_ttl,
)

__all__ = ["DEFAULT_LEASE_TTL", "TokenVault", "VersionedBlob"]

logger = logging.getLogger("agent_identity.vault")

_KIND: Final = re.compile(r"[a-z][a-z0-9_-]{0,31}")
_ROTATE_ATTEMPTS: Final = 10
_POLL_MIN: Final = 0.01
_POLL_MAX: Final = 0.05
#: The default time to live of a lease, in seconds: the heartbeat renews it every third of
#: that while the body runs, and a holder that died is overtaken at most this long after
#: its last renewal.
DEFAULT_LEASE_TTL: Final = 10.0
_RENEW_EVERY: Final = 1 / 3  # of the ttl
_RETRY_EVERY: Final = 1 / 10  # of the ttl, after a renewal that failed


class VersionedBlob(NamedTuple):
    """Decrypted bytes of a generic row with the version to pass back as
    ``expected_version``."""

    version: int
    data: bytes


@dataclass(slots=True)
class _Entry:
    grant: VersionedGrant
    validated_at: float


class _Seen(NamedTuple):
    """What a vault knows of one row: the newest version it has read, written or deleted,
    and whether it has seen the row deleted or absent since (then that version is gone
    for good: only a newer one may appear)."""

    version: int
    gone: bool

    @property
    def floor(self) -> int:
        """The oldest version a row read now may have."""
        return self.version + 1 if self.gone else self.version


_UNSEEN: Final = _Seen(0, False)


@dataclass(slots=True)
class _Hold:
    """A lease held by one task of this vault: nesting depth, and whether it was lost."""

    depth: int
    lost: bool = False


def _check_grant_key(key: GrantKey) -> str:
    if not isinstance(key, GrantKey):
        raise ConfigurationError("a vault grant key must be a GrantKey")
    return key.storage_key


class TokenVault:
    """Encrypted, versioned grants in a :class:`VaultStore` with a short read cache.

    ``cache_ttl`` (seconds, ``>= 0``) bounds how long a cached grant is served without
    asking the store whether it changed. ``clock`` supplies the monotonic clock of the cache.
    Use :meth:`memory`, :meth:`sqlite` or :meth:`from_url` for the built-in stores.
    """

    def __init__(
        self,
        store: VaultStore,
        keys: KeyProvider,
        *,
        cache_ttl: float = 1.0,
        clock: Clock | None = None,
    ) -> None:
        if (
            isinstance(cache_ttl, bool)
            or not isinstance(cache_ttl, int | float)
            or not math.isfinite(cache_ttl)
            or cache_ttl < 0
        ):
            raise ConfigurationError("cache_ttl must be a finite number of seconds >= 0")
        if not isinstance(keys, KeyProvider):
            raise ConfigurationError("keys must be a KeyProvider (current() and get())")
        self._store = store
        self._cipher = Cipher(keys)
        self._ttl = float(cache_ttl)
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._cache: dict[GrantKey, _Entry] = {}
        self._epoch = 0  # bumped by every invalidation; stale reads do not re-enter the cache
        self._instance = secrets.token_hex(8)
        self._held: dict[tuple[str, str], _Hold] = {}
        # storage key -> what this vault knows of the row's versions (rollback detection)
        self._seen: dict[str, _Seen] = {}

    def __repr__(self) -> str:
        return f"TokenVault(store={self._store!r}, cache_ttl={self._ttl!r})"

    # -- construction ------------------------------------------------------------------------

    @classmethod
    def memory(cls, keys: KeyProvider | None = None, *, cache_ttl: float = 1.0) -> TokenVault:
        """A vault in process memory, under a random ephemeral key unless ``keys`` is given."""
        return cls(MemoryStore(), keys or Keyring.ephemeral(), cache_ttl=cache_ttl)

    @classmethod
    def sqlite(
        cls,
        path: str | Path | None = None,
        *,
        keys: KeyProvider | None = None,
        busy_timeout: float = 5.0,
        cache_ttl: float = 1.0,
        clock: Clock | None = None,
    ) -> TokenVault:
        """A vault in the SQLite file ``path`` (default: the user data directory, see
        :func:`~agent_identity.vault.sqlite.default_sqlite_path`).

        Without ``keys``: ``AGENT_IDENTITY_VAULT_KEYS`` if set, else the key file next to the
        database (:func:`~agent_identity.vault.crypto.default_keyring`), created only for a
        new vault: if the database exists and its key file does not, this raises
        :class:`~agent_identity.errors.ConfigurationError` instead of making up a key that
        cannot open its rows. For ``":memory:"`` a random ephemeral key.
        """
        from agent_identity.vault.sqlite import MEMORY, SQLiteStore, default_sqlite_path

        location: str | Path = default_sqlite_path() if path is None else path
        if keys is None:
            if str(location) == MEMORY:
                keys = Keyring.ephemeral()
            else:
                database = Path(location).expanduser()
                keys = default_keyring(database.parent, database=database)
        # Leases coordinate processes: the store keeps real wall-clock time, not ``clock``.
        store = SQLiteStore(location, busy_timeout=busy_timeout)
        return cls(store, keys, cache_ttl=cache_ttl, clock=clock)

    @classmethod
    def from_url(
        cls, url: str, *, keys: KeyProvider | None = None, cache_ttl: float = 1.0
    ) -> TokenVault:
        """A vault from a URL: ``memory://``, ``sqlite:///absolute/path`` (percent-decoded),
        ``sqlite:///:memory:``, ``sqlite://`` for the default path, or
        ``postgresql://user@host:5432/db[?schema=NAME&libpq-params]`` (also ``postgres://``;
        needs the ``[postgres]`` extra, see :mod:`agent_identity.vault.postgres`). Other
        schemes raise :class:`~agent_identity.errors.ConfigurationError`.

        A PostgreSQL vault is shared by hosts, so its keys are never made up locally: pass
        ``keys`` or set ``AGENT_IDENTITY_VAULT_KEYS`` (the same keys on every host)."""
        if not isinstance(url, str):
            raise ConfigurationError("vault URL must be a string")
        scheme, sep, rest = url.partition("://")
        scheme = scheme.lower()
        if not sep:
            raise ConfigurationError("vault URL must look like scheme://...")
        if scheme == "memory":
            if rest not in ("", "/"):
                raise ConfigurationError("a memory:// vault URL takes no path")
            return cls.memory(keys, cache_ttl=cache_ttl)
        if scheme == "sqlite":
            if "?" in rest or "#" in rest:
                raise ConfigurationError("sqlite:// vault URLs take no query or fragment")
            if rest == "":
                return cls.sqlite(keys=keys, cache_ttl=cache_ttl)
            if not rest.startswith("/"):
                raise ConfigurationError(
                    "use sqlite:///absolute/path/to/vault.sqlite3 (three slashes, then an "
                    "absolute path)"
                )
            path = unquote(rest)
            if path == "/:memory:":
                return cls.sqlite(":memory:", keys=keys, cache_ttl=cache_ttl)
            return cls.sqlite(path, keys=keys, cache_ttl=cache_ttl)
        if scheme in ("postgresql", "postgres"):
            return cls._postgres(url, keys, cache_ttl)
        raise ConfigurationError(f"unsupported vault URL scheme {scheme!r}")

    @classmethod
    def _postgres(cls, url: str, keys: KeyProvider | None, cache_ttl: float) -> TokenVault:
        import os

        from agent_identity.vault.crypto import ENV_VAR

        try:  # the driver is the optional [postgres] extra: imported only here
            from agent_identity.vault.postgres import PostgresStore
        except ImportError as exc:
            raise ConfigurationError(
                "a postgresql:// vault needs the PostgreSQL driver: "
                "pip install 'agent-identity-sdk[postgres]'"
            ) from exc
        store = PostgresStore.from_url(url)  # validates; connects on first use only
        if keys is None:
            if not os.environ.get(ENV_VAR, "").strip():
                raise ConfigurationError(
                    f"a PostgreSQL vault is shared by hosts: pass keys= or set {ENV_VAR} "
                    "(the same keys on every host)"
                )
            keys = Keyring.from_env()
        return cls(store, keys, cache_ttl=cache_ttl)

    @property
    def store(self) -> VaultStore:
        return self._store

    # -- grants ------------------------------------------------------------------------------

    def peek(self, key: GrantKey) -> VersionedGrant | None:
        """The cached grant if it was validated less than ``cache_ttl`` ago, else ``None``.
        Synchronous, no I/O: the warm path of a token lookup."""
        entry = self._cache.get(key)
        if entry is not None and self._clock.monotonic() - entry.validated_at < self._ttl:
            return entry.grant
        return None

    async def load(self, key: GrantKey, *, fresh: bool = False) -> VersionedGrant | None:
        """The grant under ``key``, or ``None``. See the module docstring for caching;
        ``fresh=True`` always reads and decrypts the row.

        Raises :class:`~agent_identity.errors.VaultCorrupted` (or ``VaultKeyError``) if
        the row does not decrypt or parse, :class:`~agent_identity.errors.VaultRollback` if
        it is an older copy (see the module docstring); the row is left in place.
        """
        storage_key = _check_grant_key(key)
        entry = self._cache.get(key)
        started = self._clock.monotonic()
        if entry is not None and not fresh and started - entry.validated_at < self._ttl:
            return entry.grant
        epoch = self._epoch
        before = self._seen.get(storage_key, _UNSEEN)
        if entry is not None and not fresh:
            version = await self._store.version(storage_key)
            if version == entry.grant.version:
                if self._cache.get(key) is entry and self._epoch == epoch:
                    entry.validated_at = started
                return entry.grant
            if version is None:
                self._forget(key, entry)
                self._absent(storage_key, before)
                return None
        row = await self._store.get(storage_key)
        if row is None:
            if entry is not None:
                self._forget(key, entry)
            self._absent(storage_key, before)
            return None
        record = GrantRecord.from_bytes(self._unseal(storage_key, row, before))
        grant = VersionedGrant(record, row.version)
        self._remember(key, grant, epoch, started)
        return grant

    async def save(
        self, key: GrantKey, record: GrantRecord, *, expected_version: int
    ) -> VersionedGrant:
        """Encrypt and write ``record`` if the row is still at ``expected_version`` (``0``:
        it must not exist yet). Returns the grant with its new version. Raises
        :class:`~agent_identity.errors.VersionConflict` if another writer came first."""
        storage_key = _check_grant_key(key)
        if not isinstance(record, GrantRecord):
            raise ConfigurationError("the vault stores GrantRecord values")
        plaintext = record.to_bytes()
        self.invalidate(key)  # a failed or cancelled write leaves no stale entry behind
        started = self._clock.monotonic()
        epoch = self._epoch
        try:
            version = await self._put(storage_key, plaintext, expected_version)
        except BaseException:
            self.invalidate(key)
            raise
        grant = VersionedGrant(record, version)
        self._remember(key, grant, epoch, started)
        return grant

    async def delete(self, key: GrantKey, *, expected_version: int | None = None) -> bool:
        """Delete the grant (only at ``expected_version`` if given); ``True`` if a row was
        deleted. Raises ``VersionConflict`` if the row exists at another version."""
        storage_key = _check_grant_key(key)
        self.invalidate(key)
        try:
            return await self._delete(storage_key, expected_version)
        finally:
            self.invalidate(key)

    async def grants(self, tenant: str, user: str) -> list[GrantKey]:
        """Every grant key of ``user`` in ``tenant`` (and of nobody else), sorted."""
        result: list[GrantKey] = []
        for storage_key in await self._store.keys(grant_prefix(tenant, user)):
            try:
                key = GrantKey.from_storage_key(storage_key)
            except VaultCorrupted:
                logger.warning("ignoring a non-canonical vault key %r", storage_key)
                continue
            if key.tenant == tenant and key.user == user:
                result.append(key)
        return result

    def invalidate(self, key: GrantKey | None = None) -> None:
        """Drop ``key`` (or everything) from the cache; the next ``load`` reads the store."""
        self._epoch += 1
        if key is None:
            self._cache.clear()
        else:
            self._cache.pop(key, None)

    def _remember(self, key: GrantKey, grant: VersionedGrant, epoch: int, at: float) -> None:
        if self._epoch != epoch:  # invalidated while we were reading: do not resurrect
            return
        current = self._cache.get(key)
        if current is not None and current.grant.version > grant.version:
            return
        self._cache[key] = _Entry(grant, at)

    def _forget(self, key: GrantKey, entry: _Entry) -> None:
        if self._cache.get(key) is entry:
            del self._cache[key]

    # -- sealing and rollback ------------------------------------------------------------------

    async def _put(self, storage_key: str, plaintext: bytes, expected_version: int) -> int:
        """Seal ``plaintext`` for the version the store gives the write, and write it."""
        before = self._seen.get(storage_key, _UNSEEN)
        cipher = self._cipher

        def seal(version: int) -> bytes:
            return cipher.seal(plaintext, storage_key, version)

        version = await self._store.put(storage_key, seal, expected_version=expected_version)
        if version <= before.version:
            # Versions are never reissued: every version seen before this write started is
            # older than the one it got, unless the store's counter went back.
            raise VaultRollback(
                f"the vault store gave row {storage_key!r} version {version}, not newer than "
                f"version {before.version} already seen: its version counter went back (a "
                "restored backup or tampering); restart the processes after a deliberate "
                "restore"
            )
        self._saw(storage_key, version)
        return version

    async def _delete(self, storage_key: str, expected_version: int | None) -> bool:
        before = self._seen.get(storage_key, _UNSEEN)
        deleted = await self._store.delete(storage_key, expected_version=expected_version)
        if deleted and expected_version is not None:
            # the row at expected_version is gone: only a newer version may appear
            current = self._seen.get(storage_key, _UNSEEN)
            if expected_version >= current.version:
                self._seen[storage_key] = _Seen(expected_version, True)
        else:
            self._absent(storage_key, before)
        return deleted

    def _unseal(self, storage_key: str, row: StoredRow, before: _Seen) -> bytes:
        """Decrypt ``row`` of ``storage_key``, read by a call that started when ``before``
        was what this vault knew of the row; refuse a replayed copy (VaultRollback). A row
        older than what was known *before* the read started cannot come from a store that
        keeps its contract; one older than what was learnt *during* the read can (a
        concurrent newer write of this process), so that is not checked."""
        plaintext, sealed = self._cipher.unseal(row.blob, storage_key)
        if sealed is not None and sealed != row.version:
            raise VaultRollback(
                f"vault row {storage_key!r} is stored at version {row.version} but was sealed "
                f"for version {sealed}: a copy was written back or its version was edited"
            )
        if row.version < before.floor:
            what = "deleted" if row.version == before.version else "already seen"
            raise VaultRollback(
                f"vault row {storage_key!r} is at version {row.version}, not newer than "
                f"version {before.version} {what}: an older copy was written back"
            )
        self._saw(storage_key, row.version)
        return plaintext

    def _saw(self, storage_key: str, version: int) -> None:
        if version > self._seen.get(storage_key, _UNSEEN).version:
            self._seen[storage_key] = _Seen(version, False)

    def _absent(self, storage_key: str, before: _Seen) -> None:
        """The row was absent at a moment after ``before`` was what this vault knew of it:
        the versions known then are gone (a row that appears later is newer). Not if a
        newer version was learnt meanwhile (that row may have come after the absence)."""
        current = self._seen.get(storage_key)
        if current is not None and current.version == before.version and not current.gone:
            self._seen[storage_key] = _Seen(current.version, True)

    # -- generic encrypted rows ---------------------------------------------------------------

    @staticmethod
    def _blob_key(kind: str, name: str) -> str:
        if not isinstance(kind, str) or _KIND.fullmatch(kind) is None or kind == GRANT_KIND:
            raise ConfigurationError(
                "a vault row kind must match [a-z][a-z0-9_-]{0,31} and not be 'grant'"
            )
        check_key(name, "row name")
        return f"{kind}:{name}"

    async def get_blob(self, kind: str, name: str) -> VersionedBlob | None:
        """Decrypt the ``kind`` row ``name`` (e.g. ``"ciba"``, an ``auth_req_id``).
        Not cached."""
        storage_key = self._blob_key(kind, name)
        before = self._seen.get(storage_key, _UNSEEN)
        row = await self._store.get(storage_key)
        if row is None:
            self._absent(storage_key, before)
            return None
        return VersionedBlob(row.version, self._unseal(storage_key, row, before))

    async def put_blob(self, kind: str, name: str, data: bytes, *, expected_version: int) -> int:
        """Encrypt and compare-and-swap ``data`` into the ``kind`` row ``name``; returns the
        new version."""
        storage_key = self._blob_key(kind, name)
        if not isinstance(data, bytes | bytearray | memoryview):
            raise ConfigurationError("put_blob stores bytes")
        return await self._put(storage_key, bytes(data), expected_version)

    async def delete_blob(
        self, kind: str, name: str, *, expected_version: int | None = None
    ) -> bool:
        """Delete the ``kind`` row ``name``; ``True`` if a row was deleted."""
        storage_key = self._blob_key(kind, name)
        return await self._delete(storage_key, expected_version)

    async def blob_names(self, kind: str, prefix: str = "") -> list[str]:
        """Names of the ``kind`` rows that start with ``prefix``, sorted."""
        head = self._blob_key(kind, "-")[:-1]
        if not isinstance(prefix, str):
            raise ConfigurationError("prefix must be a string")
        return [k[len(head) :] for k in await self._store.keys(head + prefix)]

    # -- leases ------------------------------------------------------------------------------

    @asynccontextmanager
    async def lease(
        self, name: str, *, wait: float, ttl: float = DEFAULT_LEASE_TTL
    ) -> AsyncIterator[None]:
        """Hold the named lease for the ``async with`` body, across tasks, processes and hosts
        that share the store::

            async with vault.lease(f"refresh:{key.storage_key}", wait=45):
                grant = await vault.load(key, fresh=True)
                ...

        **Waiting.** Polls every 10-50 ms until ``wait`` seconds have passed, then raises
        :class:`~agent_identity.errors.VaultUnavailable`.

        **Holding.** The lease is taken for ``ttl`` seconds (default
        :data:`DEFAULT_LEASE_TTL`) and renewed by a heartbeat task every ``ttl / 3`` while
        the body runs, so the body may take as long as it needs, and a holder that died
        (crash, SIGKILL, lost host) is overtaken at most ``ttl`` after its last renewal. The
        heartbeat is shielded from the caller's cancellation: a body that finishes a
        shielded section after its caller was cancelled keeps the lease until it exits.
        A failed renewal (store unreachable) is retried every ``ttl / 10``.

        **Losing it.** If a renewal finds the lease taken by another holder, or no renewal
        succeeded for ``ttl`` seconds (so another holder may have taken it), the body is
        cancelled (at its next checkpoint; shielded sections finish first) and
        ``async with`` raises ``VaultUnavailable``. Work the body finished before that
        stands; writes are compare-and-swap, so an overtaking holder's writes are never
        silently overwritten.

        Released on exit, also on error and cancellation, once the heartbeat has stopped.
        Re-entrant within one task (the holder is this vault instance and the current task;
        the outer hold's ``ttl`` and heartbeat apply); not shared with child tasks.
        """
        check_key(name, "lease name")
        seconds = check_ttl(ttl)
        if isinstance(wait, bool) or not isinstance(wait, int | float) or not wait >= 0:
            raise ConfigurationError("lease wait must be a number of seconds >= 0")
        holder = f"{self._instance}:{anyio.get_current_task().id}"
        slot = (name, holder)
        hold = self._held.get(slot)
        if hold is not None:  # re-entry: the outer hold's heartbeat keeps the lease
            if hold.lost:
                raise VaultUnavailable(f"the vault lease {name!r} was lost while held")
            hold.depth += 1
            try:
                yield
            finally:
                hold.depth -= 1
            return
        taken_at = await self._acquire(name, holder, seconds, float(wait))
        hold = self._held[slot] = _Hold(1)
        try:
            # The body runs in ``body``, whose deadline the heartbeat moves on with every
            # renewal: when renewals stop succeeding, the body is cancelled when the lease
            # may lapse, even if a renewal call is stuck.
            body = anyio.CancelScope(deadline=taken_at + seconds)
            beat = anyio.CancelScope(shield=True)
            error: BaseException | None = None
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._heartbeat, name, holder, seconds, hold, body, beat)
                try:
                    with body:
                        yield
                except BaseException as exc:
                    # Re-raised outside the task group, which would wrap it in a group.
                    error = exc
                finally:
                    overdue = anyio.current_time() >= body.deadline
                    beat.cancel()
            if body.cancel_called or overdue:
                hold.lost = True
            if error is not None:
                raise error
            if hold.lost:
                raise VaultUnavailable(
                    f"the vault lease {name!r} was lost while held (taken by another holder, "
                    "or not renewed for its ttl): the body was cancelled"
                )
        finally:
            del self._held[slot]
            await self._release(name, holder)

    async def _heartbeat(
        self,
        name: str,
        holder: str,
        ttl: float,
        hold: _Hold,
        body: anyio.CancelScope,
        beat: anyio.CancelScope,
    ) -> None:
        """Renew the lease every ``ttl / 3`` until ``beat`` is cancelled (the body ended)."""
        with beat:
            renewed = body.deadline - ttl  # when the last successful acquire call started
            next_at = renewed + ttl * _RENEW_EVERY
            while True:
                await anyio.sleep(max(0.0, next_at - anyio.current_time()))
                started = anyio.current_time()
                if started >= body.deadline:
                    return  # the lease may have lapsed: the body's deadline cancels it
                try:
                    held = await self._store.acquire_lease(name, holder, ttl)
                except VaultError as exc:
                    logger.warning("could not renew the vault lease %r (%s); retrying", name, exc)
                    next_at = started + ttl * _RETRY_EVERY
                    continue
                if not held:
                    hold.lost = True
                    logger.warning(
                        "the vault lease %r was taken by another holder; cancelling its body",
                        name,
                    )
                    body.cancel()
                    return
                if anyio.current_time() >= body.deadline:
                    return  # renewed too late: another holder may have come and gone
                body.deadline = started + ttl
                next_at = started + ttl * _RENEW_EVERY

    async def _acquire(self, name: str, holder: str, ttl: float, wait: float) -> float:
        """Take the lease (waiting up to ``wait`` s); returns when the successful attempt
        started (``anyio.current_time()``): the lease lasts at least ``ttl`` from then."""
        deadline = anyio.current_time() + wait
        delay = _POLL_MIN
        try:
            while True:
                attempt = anyio.current_time()
                if await self._store.acquire_lease(name, holder, ttl):
                    return attempt
                remaining = deadline - anyio.current_time()
                if remaining <= 0:
                    raise VaultUnavailable(
                        f"the vault lease {name!r} stayed held elsewhere for {wait:g} s"
                    )
                jitter = 0.5 + random.random()  # noqa: S311 - spreading polls, not security
                await anyio.sleep(min(remaining, delay * jitter))
                delay = min(delay * 2, _POLL_MAX)
        except VaultUnavailable:
            raise
        except BaseException:
            # Cancelled (or failed) while an attempt may have taken the lease: give it back.
            await self._release(name, holder)
            raise

    async def _release(self, name: str, holder: str) -> None:
        with anyio.CancelScope(shield=True):
            try:
                await self._store.release_lease(name, holder)
            except VaultError:
                logger.warning(
                    "could not release the vault lease %r; it expires after its ttl", name
                )

    # -- maintenance -------------------------------------------------------------------------

    async def rotate_keys(self) -> int:
        """Re-encrypt every row not sealed under the current key, or not sealed for its
        version (rows written before rollback detection); returns how many were.

        Each row is rewritten by compare-and-swap; a row written meanwhile is re-read and
        retried (a concurrent writer seals under the current key anyway), so nothing written
        concurrently is lost. Old keys must stay in the key provider until this returns.
        Raises :class:`~agent_identity.errors.VaultCorrupted` after the pass if some rows
        could not be decrypted or are replayed copies (they are left as they are, and named
        in the log: re-sealing would launder a rollback), or ``VersionConflict`` if a row
        kept changing.
        """
        current = self._cipher.current_key_id
        rotated = 0
        corrupted: list[str] = []
        contended: list[str] = []
        for storage_key in await self._store.keys():
            for _attempt in range(_ROTATE_ATTEMPTS):
                before = self._seen.get(storage_key, _UNSEEN)
                row = await self._store.get(storage_key)
                if row is None:
                    break
                try:
                    if (
                        Cipher.key_id_of(row.blob) == current
                        and Cipher.sealed_version_of(row.blob) == row.version
                    ):
                        break
                    plaintext = self._unseal(storage_key, row, before)
                except VaultCorrupted as exc:
                    logger.warning("vault row %r cannot be re-encrypted: %s", storage_key, exc)
                    corrupted.append(storage_key)
                    break
                try:
                    version = await self._put(storage_key, plaintext, row.version)
                except VersionConflict:
                    continue
                rotated += 1
                self._rotated(storage_key, row.version, version)
                break
            else:
                contended.append(storage_key)
        if corrupted:
            raise VaultCorrupted(
                f"{len(corrupted)} vault rows could not be re-encrypted ({rotated} were); "
                "keep the old keys until they are repaired or deleted"
            )
        if contended:
            raise VersionConflict(
                f"{len(contended)} vault rows kept changing during key rotation; run it again"
            )
        return rotated

    def _rotated(self, storage_key: str, old: int, new: int) -> None:
        # Same plaintext under a new version: keep a warm cache entry warm.
        if not storage_key.startswith(f"{GRANT_KIND}:"):
            return
        try:
            key = GrantKey.from_storage_key(storage_key)
        except VaultCorrupted:
            return
        entry = self._cache.get(key)
        if entry is not None and entry.grant.version == old:
            entry.grant = VersionedGrant(entry.grant.record, new)

    # -- lifecycle ---------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the store and forget the cache."""
        self.invalidate()
        await self._store.aclose()

    async def __aenter__(self) -> TokenVault:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
