import pytest
from _idp import dev_browser, dev_idp, dev_idp_factory

__all__ = ["dev_browser", "dev_idp", "dev_idp_factory"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
