"""Provider profiles: the documented endpoints and deviations of popular providers.

Pass a profile where an issuer goes::

    from agent_identity import IdentityClient
    from agent_identity.providers import github

    async with IdentityClient(github(), client_id="...", client_secret="...") as gh:
        token = await gh.user("alice").token(scopes=["repo"])

Each profile encodes what its provider documents (endpoints, response formats, scope
separators, error codes, refresh behaviour) and is tested against a local server that
reproduces those documented responses, not against the live service. See
``docs/providers.md``. A :class:`ProviderProfile` is a frozen dataclass: adapt one with
``dataclasses.replace``.

The factories (``github``, ``google``, ``entra``, ``entra_multi_tenant``, ``slack``,
``atlassian``, ``notion``) are imported on first use (PEP 562), so importing this package
costs only the profile type. Each lives in the module of its name
(``agent_identity.providers.github``...); the package attribute of that name is always the
factory, also after the module was imported (the import system would otherwise bind the
module there): ``from agent_identity.providers import github`` gives the function, and
``from agent_identity.providers.github import normalize_github_response`` the module's
other names.
"""

from __future__ import annotations

import importlib as _importlib
import sys as _sys
import types as _types
from typing import TYPE_CHECKING, Any

from agent_identity.providers._profile import STANDARD, ProviderProfile

if TYPE_CHECKING:
    from agent_identity.providers.atlassian import atlassian
    from agent_identity.providers.entra import entra, entra_multi_tenant
    from agent_identity.providers.github import github
    from agent_identity.providers.google import google
    from agent_identity.providers.notion import notion
    from agent_identity.providers.slack import slack

_LAZY = {
    "atlassian": "agent_identity.providers.atlassian",
    "entra": "agent_identity.providers.entra",
    "entra_multi_tenant": "agent_identity.providers.entra",
    "github": "agent_identity.providers.github",
    "google": "agent_identity.providers.google",
    "notion": "agent_identity.providers.notion",
    "slack": "agent_identity.providers.slack",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'agent_identity.providers' has no attribute {name!r}")
    value = getattr(_importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(_types.ModuleType):
    """This package, where importing ``agent_identity.providers.<name>`` binds the factory
    ``<name>``, not the module, to the package attribute ``<name>``."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _LAZY and isinstance(value, _types.ModuleType):
            value = getattr(value, name)
        super().__setattr__(name, value)


_sys.modules[__name__].__class__ = _Package


__all__ = [
    "STANDARD",
    "ProviderProfile",
    "atlassian",
    "entra",
    "entra_multi_tenant",
    "github",
    "google",
    "notion",
    "slack",
]
