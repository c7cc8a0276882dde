"""The I/O layer: the only module of agent_identity that imports httpx2.

(Being completed: TransportPolicy, HttpDriver.)
"""

from __future__ import annotations

from typing import Any

import httpx2

__all__ = ["create_client"]


def create_client(**kwargs: Any) -> httpx2.AsyncClient:
    """Return a new ``httpx2.AsyncClient`` with the SDK's defaults (no redirects followed)."""
    kwargs.setdefault("follow_redirects", False)
    kwargs.setdefault("timeout", 30.0)
    return httpx2.AsyncClient(**kwargs)
