"""Identifiers and checks shared by the client authentication modules (no dependencies)."""

from __future__ import annotations

from typing import Final

from agent_identity.errors import ConfigurationError

__all__ = ["CLIENT_ASSERTION_TYPE", "require_client_id"]

#: RFC 7523 §2.2 ``client_assertion_type`` for a JWT bearer client assertion.
CLIENT_ASSERTION_TYPE: Final = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def require_client_id(client_id: object) -> None:
    if not isinstance(client_id, str) or not client_id:
        raise ConfigurationError("client_id must be a non-empty string")
