"""agent-identity: a first-class identity for AI agents.

The public API is what this module exports; everything else is internal and may change.
See the guide in docs/ of the repository.
"""

import logging as _logging

from agent_identity.client import IdentityClient, UserIdentity
from agent_identity.clock import Clock, SystemClock
from agent_identity.consent import (
    ConsentFlow,
    ConsentHandler,
    ConsoleConsent,
    DeviceCodeConsent,
    LoopbackConsent,
    NotebookConsent,
)
from agent_identity.errors import (
    AccessDenied,
    AgentIdentityError,
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
    TemporarilyUnavailable,
    TransportError,
    UnauthorizedClient,
    UnsupportedGrantType,
)
from agent_identity.models import (
    AccessToken,
    DeviceAuthorization,
    Grant,
    ServerMetadata,
    TokenResponse,
)
from agent_identity.settings import IdentitySettings

__version__ = "0.1.0"

_logging.getLogger("agent_identity").addHandler(_logging.NullHandler())

__all__ = [
    "AccessDenied",
    "AccessToken",
    "AgentIdentityError",
    "AuthorizationResponseError",
    "Clock",
    "ConfigurationError",
    "ConsentDenied",
    "ConsentError",
    "ConsentFlow",
    "ConsentHandler",
    "ConsentRequired",
    "ConsentTimeout",
    "ConsoleConsent",
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
    "LoopbackConsent",
    "MetadataError",
    "NotebookConsent",
    "OAuthError",
    "ProtocolViolation",
    "ReauthorizationRequired",
    "RequestTimeout",
    "SSRFBlockedError",
    "ServerError",
    "ServerMetadata",
    "StateMismatch",
    "SystemClock",
    "TemporarilyUnavailable",
    "TokenResponse",
    "TransportError",
    "UnauthorizedClient",
    "UnsupportedGrantType",
    "UserIdentity",
    "__version__",
]
