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


def test_quickstart_runs_end_to_end(dev_idp: DevIdP) -> None:
    result = _run("examples/quickstart.py", "--issuer", dev_idp.issuer)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "alice consented" in out
    assert "aud=https://calendar.example/api sub=alice scope='calendar.read'" in out
    assert "scope='calendar.write'" in out
    assert "aud=https://mail.example/api sub=bob scope='mail.read'" in out
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
