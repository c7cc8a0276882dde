"""Consent handlers: how the human is reached (see :mod:`agent_identity.consent.base`)."""

from agent_identity.consent.base import ConsentFlow, ConsentHandler
from agent_identity.consent.console import ConsoleConsent
from agent_identity.consent.device import DeviceCodeConsent
from agent_identity.consent.loopback import (
    BrowserEnvironment,
    LoopbackConsent,
    detect_browser_environment,
)
from agent_identity.consent.notebook import NotebookConsent
from agent_identity.consent.web import WebConsent, WebConsentCallback, WebConsentResult

__all__ = [
    "BrowserEnvironment",
    "ConsentFlow",
    "ConsentHandler",
    "ConsoleConsent",
    "DeviceCodeConsent",
    "LoopbackConsent",
    "NotebookConsent",
    "WebConsent",
    "WebConsentCallback",
    "WebConsentResult",
    "detect_browser_environment",
]
