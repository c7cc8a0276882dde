"""Vault encryption (security item 25): blob format, tampering, key ids, keyrings."""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import stat
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_identity.errors import ConfigurationError, VaultCorrupted, VaultKeyError
from agent_identity.vault.crypto import (
    ENV_VAR,
    MAGIC,
    MAGIC_BOUND,
    Cipher,
    KeyProvider,
    Keyring,
    default_keyring,
    generate_key,
)

K1 = bytes(range(32))
K2 = bytes(range(1, 33))
AAD = b'grant:["t","u","c"]'
PLAIN = b"canary-plaintext-3b9f"

posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")


def cipher(current: str = "k1", **keys: bytes) -> Cipher:
    return Cipher(Keyring(keys or {"k1": K1}, current))


def test_round_trip_and_format() -> None:
    c = cipher()
    blob = c.encrypt(PLAIN, AAD)
    assert blob.startswith(MAGIC + bytes([2]) + b"k1")
    assert len(blob) == 4 + 1 + 2 + 12 + len(PLAIN) + 16
    assert PLAIN not in blob
    assert c.decrypt(blob, AAD) == PLAIN
    assert Cipher.key_id_of(blob) == "k1"


def test_fresh_nonce_per_write() -> None:
    c = cipher()
    blobs = {c.encrypt(PLAIN, AAD) for _ in range(50)}
    assert len(blobs) == 50
    assert len({b[7:19] for b in blobs}) == 50


def test_tamper_any_byte_is_corrupted() -> None:
    c = cipher()
    blob = c.encrypt(PLAIN, AAD)
    for i in range(len(blob)):
        tampered = bytearray(blob)
        tampered[i] ^= 0x01
        with pytest.raises(VaultCorrupted):  # VaultKeyError is a VaultCorrupted too
            c.decrypt(bytes(tampered), AAD)


def test_truncation_is_corrupted() -> None:
    c = cipher()
    blob = c.encrypt(PLAIN, AAD)
    for n in range(len(blob)):
        with pytest.raises(VaultCorrupted):
            c.decrypt(blob[:n], AAD)


def test_swapped_aad_is_corrupted_not_key_error() -> None:
    c = cipher()
    blob = c.encrypt(PLAIN, AAD)
    with pytest.raises(VaultCorrupted) as info:
        c.decrypt(blob, b'grant:["t","other","c"]')
    assert not isinstance(info.value, VaultKeyError)


def test_unknown_key_id_is_key_error() -> None:
    blob = cipher("k2", k2=K2).encrypt(PLAIN, AAD)
    with pytest.raises(VaultKeyError):
        cipher().decrypt(blob, AAD)


def test_wrong_key_under_same_id_is_an_error() -> None:
    blob = cipher("k1", k1=K1).encrypt(PLAIN, AAD)
    with pytest.raises(VaultCorrupted):
        cipher("k1", k1=K2).decrypt(blob, AAD)


def test_old_keys_decrypt_new_key_encrypts() -> None:
    old = cipher("k1", k1=K1).encrypt(PLAIN, AAD)
    rotated = cipher("k2", k1=K1, k2=K2)
    assert rotated.decrypt(old, AAD) == PLAIN
    assert Cipher.key_id_of(rotated.encrypt(PLAIN, AAD)) == "k2"


@given(st.binary(max_size=120))
@settings(max_examples=400)
def test_decrypt_arbitrary_bytes_only_typed_errors(data: bytes) -> None:
    c = cipher()
    for blob in (data, MAGIC + data, MAGIC + b"\x02k1" + data):
        with contextlib.suppress(VaultCorrupted):  # includes VaultKeyError
            c.decrypt(blob, AAD)


# -- rows sealed for their version (AIV2) ------------------------------------------------------

ROW = 'grant:["t","u","c"]'


def test_seal_round_trip_and_format() -> None:
    c = cipher()
    blob = c.seal(PLAIN, ROW, 42)
    assert blob.startswith(MAGIC_BOUND + bytes([2]) + b"k1" + (42).to_bytes(8, "big"))
    assert len(blob) == 4 + 1 + 2 + 8 + 12 + len(PLAIN) + 16
    assert PLAIN not in blob
    assert c.unseal(blob, ROW) == (PLAIN, 42)
    assert Cipher.key_id_of(blob) == "k1"
    assert Cipher.sealed_version_of(blob) == 42
    # the AIV1 format still opens, reported as not bound to a version
    legacy = c.encrypt(PLAIN, ROW.encode())
    assert c.unseal(legacy, ROW) == (PLAIN, None)
    assert Cipher.sealed_version_of(legacy) is None


def test_sealed_version_is_authenticated() -> None:
    """The version in the header is associated data: editing it (to make an old row look
    current) breaks the tag, whatever byte of the blob is changed."""
    c = cipher()
    blob = c.seal(PLAIN, ROW, 7)
    forged = blob.replace((7).to_bytes(8, "big"), (9).to_bytes(8, "big"), 1)
    assert Cipher.sealed_version_of(forged) == 9
    with pytest.raises(VaultCorrupted):
        c.unseal(forged, ROW)
    for i in range(len(blob)):
        tampered = bytearray(blob)
        tampered[i] ^= 0x01
        with pytest.raises(VaultCorrupted):
            c.unseal(bytes(tampered), ROW)


def test_sealed_row_is_bound_to_its_storage_key() -> None:
    c = cipher()
    blob = c.seal(PLAIN, ROW, 7)
    with pytest.raises(VaultCorrupted) as info:
        c.unseal(blob, 'grant:["t","other","c"]')
    assert not isinstance(info.value, VaultKeyError)
    with pytest.raises(VaultCorrupted):  # a sealed row is not an AIV1 blob
        c.decrypt(blob, ROW.encode())


def test_seal_refuses_versions_a_store_cannot_issue() -> None:
    c = cipher()
    for version in (0, -1, 1 << 63, True):
        with pytest.raises(VaultCorrupted):
            c.seal(PLAIN, ROW, version)


@given(st.binary(max_size=140))
@settings(max_examples=400)
def test_unseal_arbitrary_bytes_only_typed_errors(data: bytes) -> None:
    c = cipher()
    for blob in (data, MAGIC_BOUND + data, MAGIC_BOUND + b"\x02k1" + data):
        with contextlib.suppress(VaultCorrupted):
            c.unseal(blob, ROW)
        with contextlib.suppress(VaultCorrupted):
            Cipher.sealed_version_of(blob)


# -- Keyring ---------------------------------------------------------------------------------


def test_keyring_accepts_base64_and_bytes_and_validates() -> None:
    ring = Keyring({"a": base64.b64encode(K1).decode(), "b": K2}, "a")
    assert ring.current() == ("a", K1)
    assert ring.get("b") == K2
    assert ring.get("zz") is None
    assert isinstance(ring, KeyProvider)
    urlsafe = base64.urlsafe_b64encode(b"\xfb" * 32).decode().rstrip("=")
    assert Keyring({"a": urlsafe}, "a").current()[1] == b"\xfb" * 32
    for keys, current in [
        ({}, "a"),
        ({"a": K1[:31]}, "a"),
        ({"a": K1 + b"x"}, "a"),
        ({"a": "not base64!"}, "a"),
        ({"a": K1}, "b"),
        ({"bad id": K1}, "bad id"),
        ({"x" * 65: K1}, "x" * 65),
        ({"é": K1}, "é"),
    ]:
        with pytest.raises(ConfigurationError):
            Keyring(keys, current)  # type: ignore[arg-type]


def test_no_key_material_in_repr_or_errors() -> None:
    material = base64.b64encode(K1).decode()
    ring = Keyring({"a": material}, "a")
    assert material not in repr(ring)
    assert str(K1) not in repr(ring)
    assert "a" in repr(ring)
    assert material not in repr(Cipher(ring))
    with pytest.raises(ConfigurationError) as info:
        Keyring({"a": material[:-4]}, "a")
    assert material[:-4] not in str(info.value)


def test_from_env_first_is_current() -> None:
    a, b = generate_key(), generate_key()
    assert len(base64.b64decode(a)) == 32
    assert a != b
    ring = Keyring.from_env(environ={ENV_VAR: f" new:{a} , old:{b} "})
    assert ring.current() == ("new", base64.b64decode(a))
    assert ring.get("old") == base64.b64decode(b)
    assert ring.key_ids == ("new", "old")
    for bad in ["", "new", f"new:{a},new:{b}", "new:xyz", f":{a}"]:
        with pytest.raises(ConfigurationError):
            Keyring.from_env(environ={ENV_VAR: bad})
    with pytest.raises(ConfigurationError):
        Keyring.from_env(environ={})


def _write_key_file(path: Path, mode: int) -> None:
    path.write_text(json.dumps({"current": "f1", "keys": {"f1": generate_key()}}))
    path.chmod(mode)


@posix_only
def test_from_file_requires_private_mode(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    _write_key_file(path, 0o600)
    assert Keyring.from_file(path).current()[0] == "f1"
    for mode in (0o640, 0o604, 0o660):
        path.chmod(mode)
        with pytest.raises(ConfigurationError, match="chmod 600"):
            Keyring.from_file(path)


def test_from_file_rejects_bad_content(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    for content in ["", "[]", '{"current": "a"}', '{"current": "a", "keys": {"a": 1}}']:
        path.write_text(content)
        path.chmod(0o600)
        with pytest.raises(ConfigurationError):
            Keyring.from_file(path)
    with pytest.raises(ConfigurationError):
        Keyring.from_file(tmp_path / "missing.json")


@posix_only
def test_default_keyring_creates_private_file_and_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data_dir = tmp_path / "new" / "data"
    with caplog.at_level(logging.WARNING, logger="agent_identity.vault"):
        ring = default_keyring(data_dir, environ={})
    path = data_dir / "vault-keys.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    assert ENV_VAR in caplog.text
    material = json.loads(path.read_text())["keys"][ring.current()[0]]
    assert material not in caplog.text
    assert default_keyring(data_dir, environ={}).current() == ring.current()
    assert [p.name for p in data_dir.iterdir()] == ["vault-keys.json"]  # no temp files left


def test_default_keyring_prefers_env(tmp_path: Path) -> None:
    key = generate_key()
    ring = default_keyring(tmp_path, environ={ENV_VAR: f"env1:{key}"})
    assert ring.current() == ("env1", base64.b64decode(key))
    assert not (tmp_path / "vault-keys.json").exists()


def _create_concurrently(
    barrier: threading.Barrier,
    data_dir: Path,
    results: list[tuple[str, bytes]],
    errors: list[BaseException],
) -> None:
    barrier.wait()
    try:
        results.append(default_keyring(data_dir, environ={}).current())
    except BaseException as exc:
        errors.append(exc)


def test_default_keyring_concurrent_creation_agrees(tmp_path: Path) -> None:
    for round_ in range(5):
        data_dir = tmp_path / f"d{round_}"
        barrier = threading.Barrier(8)
        results: list[tuple[str, bytes]] = []
        errors: list[BaseException] = []
        threads = [
            threading.Thread(target=_create_concurrently, args=(barrier, data_dir, results, errors))
            for _ in range(8)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert len(results) == 8
        assert len(set(results)) == 1


# -- a vault that exists is never given a made-up key (issue 12, item 6) ---------------------


def test_default_keyring_refuses_an_existing_database_without_its_key_file(
    tmp_path: Path,
) -> None:
    database = tmp_path / "vault.sqlite3"
    database.write_bytes(b"SQLite format 3\x00")  # made with keys given some other way
    key_file = tmp_path / "vault-keys.json"
    with pytest.raises(ConfigurationError) as info:
        default_keyring(tmp_path, environ={}, database=database)
    message = str(info.value)
    for hint in (ENV_VAR, "keys=", str(key_file), str(database), "vault generate-key"):
        assert hint in message, hint
    assert not key_file.exists()
    assert list(tmp_path.iterdir()) == [database]  # no temporary file either
    # the keys it was made with still work
    key = generate_key()
    assert default_keyring(tmp_path, environ={ENV_VAR: f"e1:{key}"}, database=database)
    # and so does its own key file, once it is back
    made = default_keyring(tmp_path / "new", environ={}, database=tmp_path / "new" / "v.db")
    key_file.write_bytes((tmp_path / "new" / "vault-keys.json").read_bytes())
    key_file.chmod(0o600)
    assert default_keyring(tmp_path, environ={}, database=database).current() == made.current()


def test_default_keyring_of_a_vault_created_next_to_us_is_used_not_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process creates a new vault in the same directory while this one looks:
    it writes its key file, then its database, right after this process found no key file.
    This process must end up with that key, not refuse (nor make a second one)."""
    database = tmp_path / "vault.sqlite3"
    key_file = tmp_path / "vault-keys.json"
    theirs: list[tuple[str, bytes]] = []
    real_exists = Path.exists

    def exists(self: Path, **kwargs: bool) -> bool:
        found = real_exists(self, **kwargs)
        if self == key_file and not found and not theirs:
            theirs.append(("busy", b""))
            theirs[0] = default_keyring(tmp_path, environ={}, database=database).current()
            database.write_bytes(b"")  # the other process opens its new database
        return found

    monkeypatch.setattr(Path, "exists", exists)
    ours = default_keyring(tmp_path, environ={}, database=database)
    assert ours.current() == theirs[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vault-keys.json", "vault.sqlite3"]
