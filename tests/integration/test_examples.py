"""The examples and the command line run for real against the local authorization server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent_identity.devidp import DevIdP

pytestmark = pytest.mark.idp

ROOT = Path(__file__).resolve().parents[2]


def _run(
    *args: str, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=env,
    )


def _embedded_defaults(data_home: Path) -> dict[str, str]:
    """The environment of a fresh machine: no vault configured (so the SQLite default in
    the user data directory is used), that directory in a temporary place."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_IDENTITY_")}
    env["XDG_DATA_HOME"] = str(data_home)
    return env


def test_quickstart_runs_end_to_end(dev_idp: DevIdP, tmp_path: Path) -> None:
    result = _run(
        "examples/quickstart.py", "--issuer", dev_idp.issuer, env=_embedded_defaults(tmp_path)
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "alice consented" in out
    assert "aud=https://calendar.example/api sub=alice scope='calendar.read'" in out
    assert "scope='calendar.write'" in out
    assert "aud=https://mail.example/api sub=bob scope='mail.read'" in out
    assert "delegation chain: alice via agent-confidential" in out
    assert "approve? pay_invoice 120.00 EUR INV-7" in out
    assert "aud=https://payments.example/api sub=alice scope='payments.write'" in out
    assert "after a restart, alice's grant came from the encrypted vault" in out
    assert "alice disconnected" in out
    assert out.rstrip().endswith("Done.")


def test_quickstart_starts_its_own_server(tmp_path: Path) -> None:
    """The README's first command: no server running, the example starts one, and keeps
    its grants in the embedded SQLite vault (encrypted: no token in the file)."""
    result = _run("examples/quickstart.py", timeout=240, env=_embedded_defaults(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.rstrip().endswith("Done.")
    databases = list(tmp_path.rglob("vault.sqlite3"))
    assert len(databases) == 1
    assert b"calendar.read" not in databases[0].read_bytes()


def test_cli_discover(dev_idp: DevIdP) -> None:
    result = _run(
        "-m", "agent_identity.cli", "discover", dev_idp.issuer, "--allow-insecure-loopback"
    )
    assert result.returncode == 0, result.stderr
    metadata = json.loads(result.stdout)
    assert metadata["issuer"] == dev_idp.issuer
    assert "S256" in metadata["code_challenge_methods_supported"]


def test_cli_discover_refuses_http_without_opt_in(dev_idp: DevIdP) -> None:
    result = _run("-m", "agent_identity.cli", "discover", dev_idp.issuer)
    assert result.returncode == 1
    assert "InsecureURLError" in result.stderr


def test_cli_version() -> None:
    from agent_identity import __version__

    result = _run("-m", "agent_identity.cli", "version")
    assert result.stdout.strip() == __version__


def test_cli_vault_generate_key() -> None:
    import base64

    result = _run("-m", "agent_identity.cli", "vault", "generate-key")
    assert result.returncode == 0
    assert len(base64.b64decode(result.stdout.strip())) == 32


def test_cli_vault_rotate_keys(tmp_path: Path) -> None:
    import anyio

    from agent_identity.vault import GrantKey, GrantRecord, Keyring, TokenVault, generate_key

    old, new = generate_key(), generate_key()
    path = tmp_path / "vault.sqlite3"
    key = GrantKey("acme", "alice", "https://as.example")

    async def write() -> None:
        async with TokenVault.sqlite(path, keys=Keyring({"old": old}, "old")) as vault:
            record = GrantRecord("https://as.example", "alice", ("a",), (), None)
            await vault.save(key, record, expected_version=0)

    async def read_with_new_key_only() -> str | None:
        async with TokenVault.sqlite(path, keys=Keyring({"new": new}, "new")) as vault:
            loaded = await vault.load(key)
            return None if loaded is None else loaded.record.subject

    anyio.run(write)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_IDENTITY_")}
    env["AGENT_IDENTITY_VAULT_KEYS"] = f"new:{new},old:{old}"
    result = _run(
        "-m", "agent_identity.cli", "vault", "rotate-keys", "--url", f"sqlite://{path}", env=env
    )
    assert result.returncode == 0, result.stderr
    assert "re-encrypted 1 row" in result.stdout
    assert anyio.run(read_with_new_key_only) == "alice"
