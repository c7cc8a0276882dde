"""The storage protocol under the token vault, and the in-memory store.

A :class:`VaultStore` keeps opaque ``bytes`` under string keys with a version per row; the
vault encrypts before it writes, so a store never sees a token. Contract (every store
passes ``tests/vault_store_suite.py``):

- **Versions.** ``put`` is an atomic compare-and-swap: ``expected_version=0`` means "the
  row must not exist", any other value must equal the row's current version, else
  :class:`~agent_identity.errors.VersionConflict`. It returns the row's new version, a
  positive integer strictly greater than ``expected_version`` and never issued before *for
  any row of this store* (a store-wide counter). So a row that is deleted and created again
  never gets back a version someone cached: "same version" always means "same content",
  which is what lets the vault revalidate its cache with :meth:`VaultStore.version` alone.
- **Sealing at the new version.** ``put``'s ``blob`` is either the bytes to store or a
  function of the new version that returns them (:data:`Sealer`). The store calls it once
  per attempt that passed the version check, inside the write, with the version it is
  about to give the row, and stores what it returns; if it raises, nothing is written and
  the exception propagates. The vault seals each row *for* its version this way
  (rollback detection, see :mod:`agent_identity.vault.crypto`).
- **Delete.** ``delete(key)`` removes the row if present and says whether it did;
  ``delete(key, expected_version=v)`` also raises ``VersionConflict`` when the row exists at
  another version (a missing row returns ``False``: it is gone either way).
- **Listing.** ``keys(prefix)`` returns the keys that start with ``prefix`` exactly (no
  pattern matching), sorted by code point.
- **Leases.** ``acquire_lease(name, holder, ttl)`` takes a named lease if it is free,
  expired, or already held by ``holder`` (then it is extended) and says whether it did.
  Expiry uses wall-clock time (``time.time``), because leases coordinate processes and
  hosts, which share no monotonic clock. ``release_lease`` releases only the holder's lease.

Errors a store may raise: ``VersionConflict``, ``VaultUnavailable`` (cannot reach or lock
the storage), ``VaultCorrupted`` (the storage itself is damaged) and
``ConfigurationError`` for invalid arguments. No foreign exception escapes.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import NamedTuple, Protocol, TypeAlias, runtime_checkable

from anyio.lowlevel import checkpoint

from agent_identity.clock import Clock
from agent_identity.errors import ConfigurationError, VaultUnavailable, VersionConflict

__all__ = ["MemoryStore", "Sealer", "StoredRow", "VaultStore"]

#: ``put``'s ``blob`` as a function of the version the row is about to get.
Sealer: TypeAlias = Callable[[int], bytes]


class StoredRow(NamedTuple):
    """A row as stored: its version and its (encrypted) bytes."""

    version: int
    blob: bytes


@runtime_checkable
class VaultStore(Protocol):
    """Versioned bytes under string keys, plus named leases (see the module docstring)."""

    async def get(self, key: str) -> StoredRow | None: ...

    async def version(self, key: str) -> int | None: ...

    async def put(self, key: str, blob: bytes | Sealer, *, expected_version: int) -> int: ...

    async def delete(self, key: str, *, expected_version: int | None = None) -> bool: ...

    async def keys(self, prefix: str = "") -> list[str]: ...

    async def acquire_lease(self, name: str, holder: str, ttl: float) -> bool: ...

    async def release_lease(self, name: str, holder: str) -> None: ...

    async def aclose(self) -> None: ...


# -- argument checks shared by the stores ---------------------------------------------------


def check_key(key: str, what: str = "key") -> str:
    """A store key: a non-empty string that is valid Unicode (storable as UTF-8)."""
    if not isinstance(key, str) or not key:
        raise ConfigurationError(f"vault {what} must be a non-empty string")
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigurationError(f"vault {what} must be valid Unicode") from None
    return key


def check_prefix(prefix: str) -> str:
    if not isinstance(prefix, str):
        raise ConfigurationError("vault key prefix must be a string")
    return check_key(prefix, "key prefix") if prefix else prefix


def check_blob(blob: bytes) -> bytes:
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise ConfigurationError("vault rows hold bytes")
    return bytes(blob)


def check_put_blob(blob: bytes | Sealer) -> bytes | Sealer:
    """``put``'s ``blob``: bytes (copied) or a :data:`Sealer`."""
    return blob if callable(blob) else check_blob(blob)


def blob_for(blob: bytes | Sealer, version: int) -> bytes:
    """The bytes to store at ``version``: ``blob`` itself, or what the sealer returns."""
    return check_blob(blob(version)) if callable(blob) else blob


def check_expected(expected_version: int | None, *, optional: bool = False) -> None:
    if expected_version is None and optional:
        return
    if (
        isinstance(expected_version, bool)
        or not isinstance(expected_version, int)
        or expected_version < 0
    ):
        raise ConfigurationError("expected_version must be an integer >= 0")


def check_ttl(ttl: float) -> float:
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not math.isfinite(ttl):
        raise ConfigurationError("lease ttl must be a finite number of seconds")
    if ttl <= 0:
        raise ConfigurationError("lease ttl must be positive")
    return float(ttl)


def prefix_successor(prefix: str) -> str | None:
    """The smallest string greater than every string that starts with ``prefix`` (by code
    point, which is also the byte order of UTF-8), or ``None`` when there is none. Used for
    range scans ``prefix <= key < successor`` instead of pattern matching on user data."""
    chars = list(prefix)
    while chars:
        last = ord(chars.pop())
        nxt = last + 1
        if 0xD800 <= nxt <= 0xDFFF:  # skip surrogates, which are not valid Unicode text
            nxt = 0xE000
        if nxt <= 0x10FFFF:
            return "".join(chars) + chr(nxt)
    return None


class MemoryStore:
    """A :class:`VaultStore` in a dict: for tests and single-process use. Nothing survives
    the process. Thread-safe (one lock, never held across an ``await``)."""

    def __init__(self, *, clock: Clock | None = None) -> None:
        self._rows: dict[str, StoredRow] = {}
        self._leases: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()
        self._seq = 0
        self._time = clock.time if clock is not None else time.time
        self._closed = False

    def __repr__(self) -> str:
        return f"MemoryStore(rows={len(self._rows)})"

    def _check_open(self) -> None:
        if self._closed:
            raise VaultUnavailable("the vault store is closed")

    async def get(self, key: str) -> StoredRow | None:
        check_key(key)
        await checkpoint()
        with self._lock:
            self._check_open()
            return self._rows.get(key)

    async def version(self, key: str) -> int | None:
        check_key(key)
        await checkpoint()
        with self._lock:
            self._check_open()
            row = self._rows.get(key)
            return None if row is None else row.version

    async def put(self, key: str, blob: bytes | Sealer, *, expected_version: int) -> int:
        check_key(key)
        data = check_put_blob(blob)
        check_expected(expected_version)
        await checkpoint()
        with self._lock:
            self._check_open()
            row = self._rows.get(key)
            current = 0 if row is None else row.version
            if current != expected_version:
                raise VersionConflict(
                    f"vault row changed: expected version {expected_version}, found {current}"
                )
            self._seq += 1  # consumed even if the sealer fails: never issued twice
            self._rows[key] = StoredRow(self._seq, blob_for(data, self._seq))
            return self._seq

    async def delete(self, key: str, *, expected_version: int | None = None) -> bool:
        check_key(key)
        check_expected(expected_version, optional=True)
        await checkpoint()
        with self._lock:
            self._check_open()
            row = self._rows.get(key)
            if row is None:
                return False
            if expected_version is not None and row.version != expected_version:
                raise VersionConflict(
                    f"vault row changed: expected version {expected_version}, found {row.version}"
                )
            del self._rows[key]
            return True

    async def keys(self, prefix: str = "") -> list[str]:
        check_prefix(prefix)
        await checkpoint()
        with self._lock:
            self._check_open()
            return sorted(k for k in self._rows if k.startswith(prefix))

    async def acquire_lease(self, name: str, holder: str, ttl: float) -> bool:
        check_key(name, "lease name")
        check_key(holder, "lease holder")
        seconds = check_ttl(ttl)
        await checkpoint()
        with self._lock:
            self._check_open()
            now = self._time()
            held = self._leases.get(name)
            if held is not None and held[0] != holder and held[1] > now:
                return False
            self._leases[name] = (holder, now + seconds)
            return True

    async def release_lease(self, name: str, holder: str) -> None:
        check_key(name, "lease name")
        check_key(holder, "lease holder")
        await checkpoint()
        with self._lock:
            self._check_open()
            held = self._leases.get(name)
            if held is not None and held[0] == holder:
                del self._leases[name]

    async def aclose(self) -> None:
        with self._lock:
            self._closed = True
