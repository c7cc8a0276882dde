import os
import tempfile

import pytest
from _idp import dev_browser, dev_idp, dev_idp_factory

__all__ = ["dev_browser", "dev_idp", "dev_idp_factory"]

# Tests never touch the developer's real data directory: an IdentityClient without an
# explicit vault gets a fresh in-memory one (tests of the SQLite default pass their own
# path or environment), and anything that still resolves the user data directory lands in
# a throwaway one.
os.environ["AGENT_IDENTITY_VAULT_URL"] = "memory://"
os.environ["XDG_DATA_HOME"] = tempfile.mkdtemp(prefix="agent-identity-tests-data-")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
