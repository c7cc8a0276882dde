"""Encryption at rest for the token vault: AES-256-GCM with key ids (security item 25).

Every row is sealed with AES-256-GCM (NIST SP 800-38D) under a 32-byte key, with a fresh
random 96-bit nonce per write (SP 800-38D §8.2.2; with random nonces one key should seal
fewer than 2**32 rows, far more than a token vault writes between rotations) and the row's
storage key as associated data, so a row copied under another tenant, user or connection
fails to authenticate (security item 26).

Blob formats::

    AIV2 (rows the vault writes, :meth:`Cipher.seal`):
    b"AIV2" | key-id length (1 byte, 1..64) | key id (ASCII) | version (8, big-endian)
            | nonce (12) | ciphertext+tag (>=16)
    associated data: b"AIV2" | storage-key length (4, big-endian) | storage key (UTF-8)
            | version (8, big-endian)

    AIV1 (rows written before AIV2, and :meth:`Cipher.encrypt` with caller-chosen data):
    b"AIV1" | key-id length (1 byte, 1..64) | key id (ASCII) | nonce (12) | ciphertext+tag (>=16)
    associated data: the storage key (UTF-8)

An AIV2 row is bound to its storage key *and* to the store version it was written at
(the version the store assigns to that write, see :mod:`agent_identity.vault.store`): the
vault compares that sealed version with the row's version column and with the newest
version it has seen of the row, which detects a replayed older ciphertext (rollback; see
:class:`~agent_identity.vault.vault.TokenVault` and ``docs/vault.md``). AIV1 rows still
open (:meth:`Cipher.unseal` reports them as unbound) and are rewritten as AIV2 on their next
write or by :meth:`TokenVault.rotate_keys`.

Errors: a blob that is not in one of these formats, or whose tag does not verify (tampered,
truncated, swapped to another row, or sealed under a *different* key that carries the same
key id), raises :class:`~agent_identity.errors.VaultCorrupted`; a blob whose key id the
:class:`KeyProvider` does not know raises :class:`~agent_identity.errors.VaultKeyError`
(a subclass, so ``except VaultCorrupted`` catches both). AES-GCM cannot tell a wrong key
from tampering, hence the first case is ``VaultCorrupted``.

Keys come from a :class:`KeyProvider`. :class:`Keyring` is the built-in one (from explicit
keys, the ``AGENT_IDENTITY_VAULT_KEYS`` environment variable or a ``0600`` JSON file);
:func:`default_keyring` is what the embedded SQLite vault uses when nothing is configured.
No key material and no plaintext ever appears in a ``repr``, log line or exception.

``cryptography`` is imported on first use, so ``import agent_identity.vault`` stays light.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import os
import re
import secrets
import stat
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Final, Protocol, runtime_checkable

from agent_identity.errors import ConfigurationError, VaultCorrupted, VaultKeyError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "ENV_VAR",
    "Cipher",
    "KeyProvider",
    "Keyring",
    "default_keyring",
    "generate_key",
]

logger = logging.getLogger("agent_identity.vault")

#: The environment variable :meth:`Keyring.from_env` and :func:`default_keyring` read.
ENV_VAR: Final = "AGENT_IDENTITY_VAULT_KEYS"
KEY_FILE_NAME: Final = "vault-keys.json"

#: Blobs bound to their storage key only (:meth:`Cipher.encrypt`, rows of earlier releases).
MAGIC: Final = b"AIV1"
#: Blobs bound to their storage key and store version (:meth:`Cipher.seal`).
MAGIC_BOUND: Final = b"AIV2"
VERSION_SIZE: Final = 8
MAX_VERSION: Final = (1 << 63) - 1  # the stores keep versions in signed 64-bit integers
NONCE_SIZE: Final = 12
TAG_SIZE: Final = 16
KEY_SIZE: Final = 32
_KEY_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


@runtime_checkable
class KeyProvider(Protocol):
    """Where the vault's data keys come from. Both calls are synchronous and must be fast
    (they run on every read and write): a KMS-backed provider unwraps its data keys when it
    is constructed, or caches them, and never calls the KMS from these methods.

    - ``current()`` returns ``(key_id, key)``: the 32-byte key new rows are sealed with.
    - ``get(key_id)`` returns the key for ``key_id`` (current or retired), or ``None``.
    """

    def current(self) -> tuple[str, bytes]: ...

    def get(self, key_id: str) -> bytes | None: ...


def generate_key() -> str:
    """A new random 256-bit key, base64-encoded (for ``AGENT_IDENTITY_VAULT_KEYS``)."""
    return base64.b64encode(secrets.token_bytes(KEY_SIZE)).decode("ascii")


def _check_key_id(key_id: object) -> str:
    if not isinstance(key_id, str) or _KEY_ID.fullmatch(key_id) is None:
        raise ConfigurationError("vault key ids must match [A-Za-z0-9._-]{1,64}")
    return key_id


def _decode_key(key_id: str, material: bytes | str) -> bytes:
    if isinstance(material, str):
        text = material.strip().replace("-", "+").replace("_", "/")
        try:
            raw = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise ConfigurationError(f"vault key {key_id!r} is not valid base64") from None
    elif isinstance(material, bytes | bytearray):
        raw = bytes(material)
    else:
        raise ConfigurationError(f"vault key {key_id!r} must be bytes or base64 text")
    if len(raw) != KEY_SIZE:
        raise ConfigurationError(f"vault key {key_id!r} must be exactly 32 bytes (AES-256)")
    return raw


class Keyring:
    """A fixed set of AES-256 keys by key id; ``current`` seals new rows, every key opens.

    Rotation: add a new key and make it current (older keys keep decrypting), run
    :meth:`TokenVault.rotate_keys`, then drop the old key.
    """

    __slots__ = ("_current", "_keys")

    def __init__(self, keys: Mapping[str, bytes | str], current: str) -> None:
        if not keys:
            raise ConfigurationError("a vault keyring needs at least one key")
        self._keys = {_check_key_id(kid): _decode_key(kid, k) for kid, k in keys.items()}
        if current not in self._keys:
            raise ConfigurationError(f"the current vault key id {current!r} has no key")
        self._current = current

    def current(self) -> tuple[str, bytes]:
        return self._current, self._keys[self._current]

    def get(self, key_id: str) -> bytes | None:
        return self._keys.get(key_id)

    @property
    def key_ids(self) -> tuple[str, ...]:
        """Every key id, current first."""
        return (self._current, *sorted(k for k in self._keys if k != self._current))

    def __repr__(self) -> str:
        return f"Keyring(current={self._current!r}, key_ids={list(self.key_ids)!r})"

    @classmethod
    def ephemeral(cls) -> Keyring:
        """A random key that lives as long as this process (for in-memory vaults)."""
        return cls({"ephemeral": secrets.token_bytes(KEY_SIZE)}, "ephemeral")

    @classmethod
    def from_env(cls, var: str = ENV_VAR, *, environ: Mapping[str, str] | None = None) -> Keyring:
        """Parse ``kid1:BASE64,kid2:BASE64`` from ``var``; the FIRST key is current, the
        others only decrypt (rows sealed before a rotation)."""
        env = os.environ if environ is None else environ
        value = env.get(var)
        if not value or not value.strip():
            raise ConfigurationError(f"{var} is not set")
        keys: dict[str, str] = {}
        for entry in value.split(","):
            kid, sep, material = entry.strip().partition(":")
            if not sep:
                raise ConfigurationError(f"{var} must be a comma-separated list of kid:BASE64")
            kid = _check_key_id(kid.strip())
            if kid in keys:
                raise ConfigurationError(f"{var} names vault key id {kid!r} twice")
            keys[kid] = material
        return cls(keys, next(iter(keys)))

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Keyring:
        """Read ``{"current": "kid", "keys": {"kid": "BASE64", ...}}`` from ``path``.

        On POSIX the file must not be accessible to group or others (``chmod 600``).
        """
        path = Path(path)
        try:
            with path.open("rb") as fh:
                if os.name == "posix":
                    mode = os.fstat(fh.fileno()).st_mode
                    if mode & (stat.S_IRWXG | stat.S_IRWXO):
                        raise ConfigurationError(
                            f"vault key file {str(path)!r} is accessible to group or others "
                            f"(mode {stat.S_IMODE(mode):o}); restrict it with "
                            f"`chmod 600 {path}`"
                        )
                content = fh.read()
        except OSError as exc:
            raise ConfigurationError(
                f"cannot read vault key file {str(path)!r}: {exc.strerror}"
            ) from None
        try:
            doc = json.loads(content.decode("utf-8"))
        except ValueError:
            raise ConfigurationError(f"vault key file {str(path)!r} is not JSON") from None
        if (
            not isinstance(doc, dict)
            or not isinstance(doc.get("current"), str)
            or not isinstance(doc.get("keys"), dict)
            or not all(isinstance(v, str) for v in doc["keys"].values())
        ):
            raise ConfigurationError(
                f'vault key file {str(path)!r} must be {{"current": "kid", '
                '"keys": {"kid": "BASE64"}}'
            )
        return cls(doc["keys"], doc["current"])


def default_keyring(
    data_dir: str | os.PathLike[str],
    *,
    environ: Mapping[str, str] | None = None,
    database: str | os.PathLike[str] | None = None,
) -> Keyring:
    """The keyring of the embedded vault when none is configured.

    ``AGENT_IDENTITY_VAULT_KEYS`` if set; else ``<data_dir>/vault-keys.json``, created with
    mode ``0600`` (its directory ``0700``) when missing. Creation is atomic and exclusive: the
    file is written in full under a temporary name and hard-linked into place, which fails
    if another process got there first, so processes starting together agree on one key.
    A key file next to the database only protects against leaked database copies and
    backups; production should set ``AGENT_IDENTITY_VAULT_KEYS`` or pass a KMS provider.

    ``database`` names the vault file these keys are for. If it already exists, the vault
    was created with other keys (a vault that made its key file here made it before its
    database), so a missing key file raises :class:`ConfigurationError` saying how to
    configure the keys, instead of creating a key that cannot open its rows. The database
    is looked at before the key file: a process that sees the database of a vault being
    created next to it also sees that vault's key file.
    """
    env = os.environ if environ is None else environ
    if env.get(ENV_VAR, "").strip():
        return Keyring.from_env(environ=env)
    directory = Path(data_dir)
    path = directory / KEY_FILE_NAME
    existing = database is not None and os.path.lexists(database)
    if not path.exists():
        if existing:
            assert database is not None
            raise ConfigurationError(_no_keys_message(Path(database), path))
        _create_key_file(directory, path)
    # A concurrent creator on a platform without hard links may still be writing: retry.
    deadline = time.monotonic() + 2.0
    while True:
        try:
            return Keyring.from_file(path)
        except ConfigurationError:
            if time.monotonic() >= deadline or not _maybe_partial(path):
                raise
            time.sleep(0.01)


def _no_keys_message(database: Path, key_file: Path) -> str:
    return (
        f"the vault database {str(database)!r} exists but no vault keys are configured and "
        f"there is no key file at {str(key_file)!r}: a new key could not open its rows. "
        f"Configure the keys it was created with: set {ENV_VAR}=kid:BASE64[,kid:BASE64...] "
        "(the first key is current), pass keys= (for example "
        "TokenVault.sqlite(path, keys=Keyring.from_file(...))), or put its key file back at "
        f"{str(key_file)!r}. For a new vault, choose a new database path; "
        "`agent-identity vault generate-key` prints a new key."
    )


def _maybe_partial(path: Path) -> bool:
    try:
        return path.stat().st_size < 40
    except OSError:
        return False


def make_private_dir(directory: Path) -> None:
    """Create ``directory`` (and parents) if missing; the leaf created here gets ``0700``."""
    if directory.is_dir():
        return
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=False)
    except FileExistsError:
        return
    except OSError as exc:
        raise ConfigurationError(
            f"cannot create vault directory {str(directory)!r}: {exc.strerror}"
        ) from None
    if os.name == "posix":
        os.chmod(directory, 0o700)


def _create_key_file(directory: Path, path: Path) -> None:
    make_private_dir(directory)
    key_id = f"local-{secrets.token_hex(4)}"
    content = json.dumps({"current": key_id, "keys": {key_id: generate_key()}}).encode()
    tmp = directory / f".{KEY_FILE_NAME}.{secrets.token_hex(8)}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(tmp, flags, 0o600)
        try:
            os.write(fd, content)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # atomic and exclusive: fails if another process won
        except FileExistsError:
            return
        except OSError:  # no hard links here: exclusive create, then write
            try:
                fd = os.open(path, flags, 0o600)
            except FileExistsError:
                return
            try:
                os.write(fd, content)
                os.fsync(fd)
            finally:
                os.close(fd)
    except OSError as exc:
        raise ConfigurationError(
            f"cannot create vault key file {str(path)!r}: {exc.strerror}"
        ) from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    logger.warning(
        "created a vault key file at %s, next to the vault database: anyone who can read "
        "both can decrypt the stored tokens. In production set %s or use a KMS-backed "
        "key provider.",
        path,
        ENV_VAR,
    )


class Cipher:
    """Seals and opens vault blobs with the keys of a :class:`KeyProvider`."""

    __slots__ = ("_aeads", "_keys")

    def __init__(self, keys: KeyProvider) -> None:
        self._keys = keys
        self._aeads: dict[str, tuple[bytes, AESGCM]] = {}

    def __repr__(self) -> str:
        return f"Cipher(keys={type(self._keys).__name__})"

    def _aead(self, key_id: str, key: bytes) -> AESGCM:
        cached = self._aeads.get(key_id)
        if cached is not None and cached[0] == key:
            return cached[1]
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        if not isinstance(key, bytes) or len(key) != KEY_SIZE:
            raise VaultKeyError(f"the key provider returned an invalid key for {key_id!r}")
        aead = AESGCM(key)
        self._aeads[key_id] = (key, aead)
        return aead

    @property
    def current_key_id(self) -> str:
        """The key id new blobs are sealed under."""
        return self._keys.current()[0]

    def encrypt(self, plaintext: bytes, aad: bytes) -> bytes:
        """Seal ``plaintext`` under the current key, bound to ``aad`` only (format AIV1;
        vault rows use :meth:`seal`)."""
        key_id, key = self._keys.current()
        kid = _check_key_id(key_id).encode("ascii")
        nonce = os.urandom(NONCE_SIZE)
        sealed = self._aead(key_id, key).encrypt(nonce, plaintext, aad)
        return b"".join((MAGIC, bytes((len(kid),)), kid, nonce, sealed))

    def decrypt(self, blob: bytes, aad: bytes) -> bytes:
        """Open an AIV1 ``blob`` sealed by :meth:`encrypt` with ``aad``; see the module
        docstring for the errors (an AIV2 blob is opened with :meth:`unseal`)."""
        key_id, stamp, nonce, sealed = _split(blob)
        if stamp is not None:
            raise VaultCorrupted("vault blob is bound to a row version: open it with unseal()")
        key = self._keys.get(key_id)
        if key is None:
            raise VaultKeyError(f"no vault key with id {key_id!r}")
        from cryptography.exceptions import InvalidTag

        try:
            return self._aead(key_id, key).decrypt(nonce, sealed, aad)
        except InvalidTag:
            raise VaultCorrupted(
                f"vault row does not authenticate under key {key_id!r} "
                "(tampered, moved to another key, or the wrong key for this id)"
            ) from None

    def seal(self, plaintext: bytes, storage_key: str, version: int) -> bytes:
        """Seal ``plaintext`` as the row ``storage_key`` at store ``version`` (format AIV2):
        it opens only under that storage key, and :meth:`unseal` reports ``version``."""
        key_id, key = self._keys.current()
        kid = _check_key_id(key_id).encode("ascii")
        stamp = _version_bytes(version)
        nonce = os.urandom(NONCE_SIZE)
        sealed = self._aead(key_id, key).encrypt(nonce, plaintext, _bound_aad(storage_key, stamp))
        return b"".join((MAGIC_BOUND, bytes((len(kid),)), kid, stamp, nonce, sealed))

    def unseal(self, blob: bytes, storage_key: str) -> tuple[bytes, int | None]:
        """Open a row of ``storage_key``: ``(plaintext, sealed version)``, the version
        ``None`` for an AIV1 blob (bound to its storage key only). The caller compares the
        sealed version with the row's version. Errors as for :meth:`decrypt`."""
        key_id, stamp, nonce, sealed = _split(blob)
        key = self._keys.get(key_id)
        if key is None:
            raise VaultKeyError(f"no vault key with id {key_id!r}")
        from cryptography.exceptions import InvalidTag

        aad = storage_key.encode("utf-8") if stamp is None else _bound_aad(storage_key, stamp)
        try:
            plaintext = self._aead(key_id, key).decrypt(nonce, sealed, aad)
        except InvalidTag:
            raise VaultCorrupted(
                f"vault row does not authenticate under key {key_id!r} "
                "(tampered, moved to another key, or the wrong key for this id)"
            ) from None
        return plaintext, None if stamp is None else int.from_bytes(stamp, "big")

    @staticmethod
    def key_id_of(blob: bytes) -> str:
        """The key id a blob was sealed under (no decryption)."""
        return _split(blob)[0]

    @staticmethod
    def sealed_version_of(blob: bytes) -> int | None:
        """The store version an AIV2 blob claims to be sealed at, ``None`` for AIV1 (no
        decryption: the claim is authenticated only by :meth:`unseal`)."""
        stamp = _split(blob)[1]
        return None if stamp is None else int.from_bytes(stamp, "big")


def _version_bytes(version: int) -> bytes:
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= MAX_VERSION:
        raise VaultCorrupted("the vault store issued an invalid row version")
    return version.to_bytes(VERSION_SIZE, "big")


def _bound_aad(storage_key: str, stamp: bytes) -> bytes:
    key = storage_key.encode("utf-8")
    return b"".join((MAGIC_BOUND, len(key).to_bytes(4, "big"), key, stamp))


def _split(blob: bytes) -> tuple[str, bytes | None, bytes, bytes]:
    """``(key id, version stamp or None for AIV1, nonce, ciphertext+tag)``."""
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise VaultCorrupted("vault blob is not bytes")
    blob = bytes(blob)
    magic = blob[: len(MAGIC)]
    if len(blob) < len(MAGIC) + 1 or magic not in (MAGIC, MAGIC_BOUND):
        raise VaultCorrupted("vault blob has an unknown format")
    stamp_size = VERSION_SIZE if magic == MAGIC_BOUND else 0
    kid_len = blob[len(MAGIC)]
    start = len(MAGIC) + 1
    if not 1 <= kid_len <= 64 or len(blob) < start + kid_len + stamp_size + NONCE_SIZE + TAG_SIZE:
        raise VaultCorrupted("vault blob is truncated or malformed")
    try:
        key_id = blob[start : start + kid_len].decode("ascii")
    except UnicodeDecodeError:
        raise VaultCorrupted("vault blob has an invalid key id") from None
    if _KEY_ID.fullmatch(key_id) is None:
        raise VaultCorrupted("vault blob has an invalid key id")
    stamp_at = start + kid_len
    stamp = blob[stamp_at : stamp_at + stamp_size] if stamp_size else None
    nonce_at = stamp_at + stamp_size
    return key_id, stamp, blob[nonce_at : nonce_at + NONCE_SIZE], blob[nonce_at + NONCE_SIZE :]
