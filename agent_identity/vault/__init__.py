"""The token vault: grants per tenant, user and connection, encrypted at rest.

- :class:`TokenVault`: cached, compare-and-swap access to encrypted grants, rollback
  detection, short leases renewed while held (:data:`DEFAULT_LEASE_TTL`) for
  single-flight refresh, key rotation (:mod:`agent_identity.vault.vault`).
- :class:`GrantKey`, :class:`GrantRecord`, :class:`CachedToken`, :class:`VersionedGrant`:
  what is stored (:mod:`agent_identity.vault.records`).
- :class:`KeyProvider`, :class:`Keyring`, :class:`Cipher`: AES-256-GCM at rest
  (:mod:`agent_identity.vault.crypto`).
- :class:`VaultStore`, :class:`MemoryStore`, :class:`SQLiteStore`: where the encrypted rows
  live (:mod:`agent_identity.vault.store`, :mod:`agent_identity.vault.sqlite`).

Security items 25 (refresh tokens confidential at rest, one refresh at a time) and 26
(partitioned by tenant, user and connection) of the project's security requirements.
"""

import importlib as _importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent_identity.vault.crypto import (
        Cipher,
        KeyProvider,
        Keyring,
        default_keyring,
        generate_key,
    )
    from agent_identity.vault.records import (
        CachedToken,
        GrantKey,
        GrantRecord,
        TokenKey,
        VersionedGrant,
        grant_prefix,
    )
    from agent_identity.vault.sqlite import SQLiteStore, default_sqlite_path
    from agent_identity.vault.store import MemoryStore, StoredRow, VaultStore
    from agent_identity.vault.vault import DEFAULT_LEASE_TTL, TokenVault, VersionedBlob

# Imported on first use (PEP 562): using a record type does not load the stores.
_LAZY = {
    "Cipher": "agent_identity.vault.crypto",
    "KeyProvider": "agent_identity.vault.crypto",
    "Keyring": "agent_identity.vault.crypto",
    "default_keyring": "agent_identity.vault.crypto",
    "generate_key": "agent_identity.vault.crypto",
    "CachedToken": "agent_identity.vault.records",
    "GrantKey": "agent_identity.vault.records",
    "GrantRecord": "agent_identity.vault.records",
    "TokenKey": "agent_identity.vault.records",
    "VersionedGrant": "agent_identity.vault.records",
    "grant_prefix": "agent_identity.vault.records",
    "SQLiteStore": "agent_identity.vault.sqlite",
    "default_sqlite_path": "agent_identity.vault.sqlite",
    "MemoryStore": "agent_identity.vault.store",
    "StoredRow": "agent_identity.vault.store",
    "VaultStore": "agent_identity.vault.store",
    "DEFAULT_LEASE_TTL": "agent_identity.vault.vault",
    "TokenVault": "agent_identity.vault.vault",
    "VersionedBlob": "agent_identity.vault.vault",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'agent_identity.vault' has no attribute {name!r}")
    value = getattr(_importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "DEFAULT_LEASE_TTL",
    "CachedToken",
    "Cipher",
    "GrantKey",
    "GrantRecord",
    "KeyProvider",
    "Keyring",
    "MemoryStore",
    "SQLiteStore",
    "StoredRow",
    "TokenKey",
    "TokenVault",
    "VaultStore",
    "VersionedBlob",
    "VersionedGrant",
    "default_keyring",
    "default_sqlite_path",
    "generate_key",
    "grant_prefix",
]
