"""Runs the store conformance suite (tests/vault_store_suite.py) against every backend."""

from __future__ import annotations

from vault_store_suite import VaultStoreSuite


class TestVaultStores(VaultStoreSuite):
    """Every test of the suite, once per entry of ``vault_store_suite.BACKENDS``."""
