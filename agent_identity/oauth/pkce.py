"""Proof Key for Code Exchange (RFC 7636), S256 only.

Security item 15: a fresh verifier per authorization request made of 32 CSPRNG octets,
base64url-encoded without padding (43 characters of the RFC 7636 §4.1 unreserved set);
the challenge method is always ``S256`` and never downgraded to ``plain`` (OAuth 2.1
§4.1.1, RFC 9700 §2.1.1).
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from dataclasses import dataclass

from pydantic import SecretStr

from agent_identity.errors import ConfigurationError

__all__ = ["PkcePair", "generate_pkce", "s256_challenge"]

_VERIFIER = re.compile(r"[A-Za-z0-9\-._~]{43,128}")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def s256_challenge(verifier: str) -> str:
    """``BASE64URL(SHA256(ASCII(code_verifier)))`` (RFC 7636 §4.2)."""
    if not _VERIFIER.fullmatch(verifier):
        raise ConfigurationError("code_verifier must be 43-128 characters of [A-Za-z0-9-._~]")
    return _b64url(hashlib.sha256(verifier.encode("ascii")).digest())


@dataclass(frozen=True, slots=True)
class PkcePair:
    """A code verifier (secret) and its S256 challenge."""

    verifier: SecretStr
    challenge: str
    method: str = "S256"


def generate_pkce() -> PkcePair:
    """Return a fresh verifier (32 random octets) and its S256 challenge."""
    verifier = _b64url(secrets.token_bytes(32))
    return PkcePair(verifier=SecretStr(verifier), challenge=s256_challenge(verifier))
