"""Provider profiles: the documented endpoints and deviations of popular providers.

Pass a profile where an issuer goes::

    from agent_identity import IdentityClient
    from agent_identity.providers import github

    async with IdentityClient(github(), client_id="...", client_secret="...") as gh:
        token = await gh.user("alice").token(scopes=["repo"])

Each profile encodes what its provider documents (endpoints, response formats, scope
separators, error codes, refresh behaviour) and is tested against a local server that
reproduces those documented responses, not against the live service. See
``docs/interop.md``. A :class:`ProviderProfile` is a frozen dataclass: adapt one with
``dataclasses.replace``.
"""

from __future__ import annotations

from agent_identity.providers._profile import STANDARD, ProviderProfile

__all__ = ["STANDARD", "ProviderProfile"]
