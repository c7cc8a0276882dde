"""Pytest fixtures for the DEV ONLY local authorization server (``agent_identity.devidp``).

- ``dev_idp`` (session): one server with the default clients, accounts and resources;
- ``dev_idp_factory`` (function): ``dev_idp_factory(**DevIdP kwargs)`` starts a server with
  special settings (short TTLs, CIBA knobs, a ping endpoint, extra clients) and stops it
  at the end of the test;
- ``dev_browser``: a :class:`DevBrowser` signing in as ``alice`` and approving.

Without Node.js/npm the fixtures skip on a developer machine and fail when ``CI`` is set.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent_identity.devidp import DevBrowser, DevIdP, DevIdPError, ensure_installed

_SKIP_REASON = "needs Node.js and npm for the local authorization server"


def _install_or_skip() -> Path:
    if shutil.which("npm") is None or shutil.which("node") is None:
        if os.environ.get("CI"):
            pytest.fail(f"{_SKIP_REASON} (CI is set, so this is an error)")
        pytest.skip(_SKIP_REASON)
    try:
        return ensure_installed()
    except DevIdPError as exc:
        pytest.fail(f"could not install the dev authorization server: {exc}")


@pytest.fixture(scope="session")
def dev_idp() -> Iterator[DevIdP]:
    """A session-wide dev IdP with the default configuration."""
    _install_or_skip()
    idp = DevIdP()
    idp.start()
    try:
        yield idp
    finally:
        idp.stop()


@pytest.fixture
def dev_idp_factory() -> Iterator[Callable[..., DevIdP]]:
    """Start dev IdPs with special settings; each is stopped after the test."""
    _install_or_skip()
    started: list[DevIdP] = []

    def factory(**kwargs: Any) -> DevIdP:
        idp = DevIdP(**kwargs)
        idp.start()
        started.append(idp)
        return idp

    try:
        yield factory
    finally:
        for idp in started:
            idp.stop()


@pytest.fixture
def dev_browser() -> DevBrowser:
    """The user ``alice`` in a headless browser, approving what is asked."""
    return DevBrowser("alice")
