"""Fixtures of the LangChain integration tests: the SDK's own test helpers (the local
authorization server, the in-process calendar API) are reused from the repository."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

_ROOT = Path(__file__).resolve().parents[3]
for _path in (_ROOT / "tests", _ROOT / "tests" / "integration"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

# As in the SDK's tests: a fresh in-memory vault per client, no real user data directory.
os.environ.setdefault("AGENT_IDENTITY_VAULT_URL", "memory://")
os.environ.setdefault("XDG_DATA_HOME", tempfile.mkdtemp(prefix="agent-identity-lc-tests-"))

from _idp import _install_or_skip, dev_browser, dev_idp, dev_idp_factory  # noqa: E402

from agent_identity.devidp import DevIdP  # noqa: E402

__all__ = ["anyio_backend", "ciba_idp", "dev_browser", "dev_idp", "dev_idp_factory"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def ciba_idp() -> Iterator[DevIdP]:
    """A dev IdP that asks CIBA clients to poll every second (the default is 5 s)."""
    _install_or_skip()
    idp = DevIdP(ciba_interval=1)
    idp.start()
    try:
        yield idp
    finally:
        idp.stop()
