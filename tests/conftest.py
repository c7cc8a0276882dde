import os
import tempfile

import pytest
from _dot import dot_server, dot_server_factory, dot_template_database
from _idp import dev_browser, dev_idp, dev_idp_factory
from _servers import server

pytest_plugins = ["_interop_matrix"]

__all__ = [
    "dev_browser",
    "dev_idp",
    "dev_idp_factory",
    "dot_server",
    "dot_server_factory",
    "dot_template_database",
    "server",
]

# Tests never touch the developer's real data directory: an IdentityClient without an
# explicit vault gets a fresh in-memory one (tests of the SQLite default pass their own
# path or environment), and anything that still resolves the user data directory lands in
# a throwaway one.
os.environ["AGENT_IDENTITY_VAULT_URL"] = "memory://"
os.environ["XDG_DATA_HOME"] = tempfile.mkdtemp(prefix="agent-identity-tests-data-")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "dot: needs the django-oauth-toolkit test server (tests/dot_server)"
    )


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
