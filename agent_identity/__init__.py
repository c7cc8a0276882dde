"""agent-identity: a first-class identity for AI agents.

The public API is what this module exports; everything else is internal and may change.
See the guide in docs/ of the repository.
"""

import importlib as _importlib
import logging as _logging
from typing import TYPE_CHECKING, Any

from agent_identity._version import __version__

# The error tree is light and is what callers catch: import it eagerly.
from agent_identity.errors import (
    AccessDenied,
    AgentIdentityError,
    ApprovalDenied,
    ApprovalError,
    ApprovalExpired,
    ApprovalMismatch,
    ApprovalPending,
    ApprovalUnavailable,
    AuthorizationResponseError,
    ConfigurationError,
    ConsentDenied,
    ConsentError,
    ConsentRequired,
    ConsentTimeout,
    ExpiredToken,
    InsecureURLError,
    InvalidClient,
    InvalidGrant,
    InvalidRequest,
    InvalidResponse,
    InvalidScope,
    InvalidTarget,
    InvalidTokenError,
    IssuerMismatch,
    MetadataError,
    OAuthError,
    ProtocolViolation,
    ReauthorizationRequired,
    RequestTimeout,
    ServerError,
    SSRFBlockedError,
    StateMismatch,
    StepUpLimitExceeded,
    TemporarilyUnavailable,
    TokenBindingError,
    TokenPolicyError,
    TransportError,
    UnauthorizedClient,
    UnsupportedGrantType,
    VaultCorrupted,
    VaultError,
    VaultKeyError,
    VaultRollback,
    VaultUnavailable,
    VersionConflict,
)

if TYPE_CHECKING:
    from agent_identity._resource_auth import TokenAuth
    from agent_identity.approval import Action, Approval, ApprovalPolicy
    from agent_identity.client import IdentityClient, UserIdentity
    from agent_identity.clock import Clock, SystemClock
    from agent_identity.consent import (
        ConsentFlow,
        ConsentHandler,
        ConsoleConsent,
        DeviceCodeConsent,
        LoopbackConsent,
        NotebookConsent,
        WebConsent,
        WebConsentResult,
    )
    from agent_identity.delegation import Actor, DelegationChain
    from agent_identity.mcp import McpAuth
    from agent_identity.models import (
        AccessToken,
        DeviceAuthorization,
        Grant,
        ServerMetadata,
        TokenResponse,
    )
    from agent_identity.oauth.dpop import DPoPKey, DPoPKeyProvider, SoftwareDPoPKeys
    from agent_identity.oauth.rar import AuthorizationDetail
    from agent_identity.providers import ProviderProfile
    from agent_identity.server import AuthorizationServer
    from agent_identity.settings import IdentitySettings
    from agent_identity.sync import BlockingIdentityClient
    from agent_identity.vault import KeyProvider, Keyring, TokenVault

# Everything else is imported on first use (PEP 562), so that `import agent_identity`
# stays cheap for code that only needs a part of the SDK.
_LAZY = {
    "Action": "agent_identity.approval",
    "Approval": "agent_identity.approval",
    "ApprovalPolicy": "agent_identity.approval",
    "IdentityClient": "agent_identity.client",
    "UserIdentity": "agent_identity.client",
    "Clock": "agent_identity.clock",
    "SystemClock": "agent_identity.clock",
    "ConsentFlow": "agent_identity.consent",
    "ConsentHandler": "agent_identity.consent",
    "ConsoleConsent": "agent_identity.consent",
    "DeviceCodeConsent": "agent_identity.consent",
    "LoopbackConsent": "agent_identity.consent",
    "NotebookConsent": "agent_identity.consent",
    "WebConsent": "agent_identity.consent",
    "WebConsentResult": "agent_identity.consent",
    "AccessToken": "agent_identity.models",
    "DeviceAuthorization": "agent_identity.models",
    "Grant": "agent_identity.models",
    "ServerMetadata": "agent_identity.models",
    "TokenResponse": "agent_identity.models",
    "IdentitySettings": "agent_identity.settings",
    "BlockingIdentityClient": "agent_identity.sync",
    "Actor": "agent_identity.delegation",
    "DelegationChain": "agent_identity.delegation",
    "McpAuth": "agent_identity.mcp",
    "ProviderProfile": "agent_identity.providers",
    "AuthorizationServer": "agent_identity.server",
    "DPoPKey": "agent_identity.oauth.dpop",
    "DPoPKeyProvider": "agent_identity.oauth.dpop",
    "SoftwareDPoPKeys": "agent_identity.oauth.dpop",
    "AuthorizationDetail": "agent_identity.oauth.rar",
    "TokenAuth": "agent_identity._resource_auth",
    "KeyProvider": "agent_identity.vault",
    "Keyring": "agent_identity.vault",
    "TokenVault": "agent_identity.vault",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'agent_identity' has no attribute {name!r}")
    value = getattr(_importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


_logging.getLogger("agent_identity").addHandler(_logging.NullHandler())

__all__ = [
    "AccessDenied",
    "AccessToken",
    "Action",
    "Actor",
    "AgentIdentityError",
    "Approval",
    "ApprovalDenied",
    "ApprovalError",
    "ApprovalExpired",
    "ApprovalMismatch",
    "ApprovalPending",
    "ApprovalPolicy",
    "ApprovalUnavailable",
    "AuthorizationDetail",
    "AuthorizationResponseError",
    "AuthorizationServer",
    "BlockingIdentityClient",
    "Clock",
    "ConfigurationError",
    "ConsentDenied",
    "ConsentError",
    "ConsentFlow",
    "ConsentHandler",
    "ConsentRequired",
    "ConsentTimeout",
    "ConsoleConsent",
    "DPoPKey",
    "DPoPKeyProvider",
    "DelegationChain",
    "DeviceAuthorization",
    "DeviceCodeConsent",
    "ExpiredToken",
    "Grant",
    "IdentityClient",
    "IdentitySettings",
    "InsecureURLError",
    "InvalidClient",
    "InvalidGrant",
    "InvalidRequest",
    "InvalidResponse",
    "InvalidScope",
    "InvalidTarget",
    "InvalidTokenError",
    "IssuerMismatch",
    "KeyProvider",
    "Keyring",
    "LoopbackConsent",
    "McpAuth",
    "MetadataError",
    "NotebookConsent",
    "OAuthError",
    "ProtocolViolation",
    "ProviderProfile",
    "ReauthorizationRequired",
    "RequestTimeout",
    "SSRFBlockedError",
    "ServerError",
    "ServerMetadata",
    "SoftwareDPoPKeys",
    "StateMismatch",
    "StepUpLimitExceeded",
    "SystemClock",
    "TemporarilyUnavailable",
    "TokenAuth",
    "TokenBindingError",
    "TokenPolicyError",
    "TokenResponse",
    "TokenVault",
    "TransportError",
    "UnauthorizedClient",
    "UnsupportedGrantType",
    "UserIdentity",
    "VaultCorrupted",
    "VaultError",
    "VaultKeyError",
    "VaultRollback",
    "VaultUnavailable",
    "VersionConflict",
    "WebConsent",
    "WebConsentResult",
    "__version__",
]
