"""The consent handler protocol.

A consent handler decides *how a human is reached*: a browser on this machine
(:class:`~agent_identity.consent.LoopbackConsent`), a pasted redirect URL
(:class:`~agent_identity.consent.ConsoleConsent`), a code typed on another device
(:class:`~agent_identity.consent.DeviceCodeConsent`), a link in a notebook
(:class:`~agent_identity.consent.NotebookConsent`), or your own web app.

It never decides *what is valid*: every handler drives the same :class:`ConsentFlow`,
whose methods build the request (PKCE, ``state``, ``nonce``, ``resource``, PAR) and
validate the response (``state``, RFC 9207 ``iss``, PKCE redemption at the recorded
issuer, ID token) identically (security items 15-18). A handler implements one method::

    class MyWebAppConsent:
        async def obtain_consent(self, flow: ConsentFlow) -> None:
            url = await flow.authorization_url("https://app.example/callback")
            callback_url = await send_link_and_wait(flow.user, url)  # your app
            await flow.complete(callback_url)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from agent_identity.models import DeviceAuthorization

__all__ = ["ConsentFlow", "ConsentHandler"]


@runtime_checkable
class ConsentFlow(Protocol):
    """One consent, as seen by a handler. Provided by the identity client."""

    @property
    def tenant(self) -> str: ...

    @property
    def user(self) -> str: ...

    @property
    def issuer(self) -> str: ...

    @property
    def scopes(self) -> tuple[str, ...]: ...

    @property
    def resource(self) -> str | None: ...

    @property
    def allow_insecure_loopback(self) -> bool:
        """Whether ``http://127.0.0.1`` authorization URLs may be opened (dev/test opt-in)."""
        ...

    async def authorization_url(self, redirect_uri: str) -> str:
        """Record a new pending authorization (PKCE verifier, state, nonce, issuer) for
        ``redirect_uri`` and return the URL to show the user (pushed with PAR when the
        server offers it)."""
        ...

    async def complete(self, callback_url: str) -> None:
        """Validate the redirect back (or its query string) and redeem the code.

        Raises :class:`~agent_identity.errors.StateMismatch`,
        :class:`~agent_identity.errors.IssuerMismatch`,
        :class:`~agent_identity.errors.ConsentDenied`, ... before any token request when
        the response is not acceptable."""
        ...

    async def start_device_authorization(self) -> DeviceAuthorization:
        """RFC 8628: request a device code and user code for this consent."""
        ...

    async def wait_for_device_approval(self, authorization: DeviceAuthorization) -> None:
        """Poll the token endpoint per RFC 8628 §3.5 until the user approves (or denies, or
        the code expires)."""
        ...


@runtime_checkable
class ConsentHandler(Protocol):
    """Reaches the human and drives a :class:`ConsentFlow` to completion."""

    async def obtain_consent(self, flow: ConsentFlow) -> None: ...


def describe_scopes(scopes: Sequence[str]) -> str:
    return " ".join(scopes) if scopes else "(none)"
