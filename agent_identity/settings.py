"""Configuration from the environment (``AGENT_IDENTITY_*``) with pydantic-settings.

Explicit arguments to :class:`~agent_identity.IdentityClient` always win; these settings
exist for :meth:`IdentityClient.from_env`. Secrets are ``SecretStr``.

======================================  ==================================================
variable                                meaning
======================================  ==================================================
``AGENT_IDENTITY_ISSUER``               authorization server issuer (discovered)
``AGENT_IDENTITY_CLIENT_ID``            the agent's client id
``AGENT_IDENTITY_CLIENT_SECRET``        client secret (confidential clients)
``AGENT_IDENTITY_PRIVATE_KEY``          private JWK (JSON) or PEM for private_key_jwt
``AGENT_IDENTITY_PRIVATE_KEY_FILE``     path to a private JWK (JSON) or PEM file
``AGENT_IDENTITY_CONSENT``              loopback (default), console, device or notebook
``AGENT_IDENTITY_ALLOW_INSECURE_LOOPBACK``  allow ``http://127.0.0.1`` issuers (dev/test)
``AGENT_IDENTITY_TIMEOUT``              per-request timeout in seconds (default 30)
======================================  ==================================================
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["IdentitySettings"]


class IdentitySettings(BaseSettings):
    """Settings read from ``AGENT_IDENTITY_*`` environment variables."""

    model_config = SettingsConfigDict(env_prefix="AGENT_IDENTITY_", extra="ignore")

    issuer: str
    client_id: str
    client_secret: SecretStr | None = None
    private_key: SecretStr | None = None
    private_key_file: Path | None = None
    consent: Literal["loopback", "console", "device", "notebook"] = "loopback"
    allow_insecure_loopback: bool = False
    timeout: float = 30.0
