"""Consent handlers: how the human is reached (see :mod:`agent_identity.consent.base`).

The handlers are imported on first use (PEP 562): importing the protocol in
:mod:`agent_identity.consent.base` does not load the browser, notebook or web handlers.
"""

import importlib as _importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

_LAZY = {
    "ConsentFlow": "agent_identity.consent.base",
    "ConsentHandler": "agent_identity.consent.base",
    "ConsoleConsent": "agent_identity.consent.console",
    "DeviceCodeConsent": "agent_identity.consent.device",
    "BrowserEnvironment": "agent_identity.consent.loopback",
    "LoopbackConsent": "agent_identity.consent.loopback",
    "detect_browser_environment": "agent_identity.consent.loopback",
    "NotebookConsent": "agent_identity.consent.notebook",
    "WebConsent": "agent_identity.consent.web",
    "WebConsentCallback": "agent_identity.consent.web",
    "WebConsentResult": "agent_identity.consent.web",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'agent_identity.consent' has no attribute {name!r}")
    value = getattr(_importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


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
