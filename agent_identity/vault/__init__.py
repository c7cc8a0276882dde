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
