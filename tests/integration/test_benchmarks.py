"""Every benchmark script runs to the end (tiny sizes): a benchmark that no longer runs
against the current API fails here, not when somebody needs its figures.

The figures themselves are not checked (no timed assertions); only that each section
printed its lines and that the checks the scripts make themselves (one refresh per
round, verified audit chains, tools that ran) held, which they assert.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import _postgres
import pytest

pytestmark = pytest.mark.idp

ROOT = Path(__file__).resolve().parents[2]


def _run(script: str, *args: str, timeout: float = 300) -> str:
    result = subprocess.run(
        [sys.executable, f"benchmarks/{script}", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )
    assert result.returncode == 0, (
        f"{script} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    return result.stdout


def test_run_token_and_import() -> None:
    out = _run("run.py", "--rounds", "5", "--import-runs", "2")
    assert "client_credentials token request" in out
    assert "from agent_identity import IdentityClient" in out


def test_dpop() -> None:
    out = _run("dpop.py", "--proofs", "50", "--rounds", "10")
    for line in ("1. DPoP proof generation alone", "2. warm http_auth request", "3. http_auth"):
        assert line in out


def test_approval() -> None:
    out = _run("approval.py", "--runs", "2")
    assert "ping is" in out
    assert "faster than polling" in out


def test_langchain() -> None:
    out = _run("langchain.py", "--calls", "30", "--records", "300")
    assert "ToolGuard.run, JSONL fsync on" in out
    assert "chain verified" in out


def test_vault() -> None:
    dsn = _postgres.postgres_dsn()  # skips, or fails under CI, without a server
    out = _run(
        "vault.py",
        "--rounds", "5",
        "--processes", "2",
        "--concurrency-rounds", "1",
        "--grants", "300",
        "--lookups", "50",
        "--postgres", dsn,
        "--pg-seconds", "0.5",
        "--takeover-rounds", "1",
        timeout=600,
    )  # fmt: skip
    for section in ("1. warm", "2. first token()", "3. 1,000", "4. 8 processes", "5. vault",
                    "6. PostgreSQL", "7. a lease holder"):  # fmt: skip
        assert section in out, section
